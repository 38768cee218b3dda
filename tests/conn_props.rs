//! Property tests: arbitrary bytes and arbitrary event orders never panic the parser or the
//! connection machine, and the machine never buffers beyond its bounds.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice::core::conn::{Action, ClientInfo, Conn, ConnConfig};
use sluice::core::http1::scan::{HeadScanner, Scan};
use sluice::core::http1::{Limits, MAX_HEADERS_CAP, parse_request_head};
use sluice::core::route::{BackendId, RouteDecision, Router};
use sluice::core::time::Instant;

struct CyclingRouter(u32);

impl Router for CyclingRouter {
    fn route(&mut self, _host: &str, _path: &str) -> RouteDecision {
        self.0 = self.0.wrapping_add(1);
        match self.0 % 4 {
            0 => RouteDecision::NotFound,
            1 => RouteDecision::NoEndpoints,
            _ => RouteDecision::Forward {
                backend: BackendId(0),
                endpoint: "127.0.0.1:9".parse().unwrap(),
                policy: None,
            },
        }
    }
}

#[derive(Debug, Clone)]
enum Event {
    Client(Vec<u8>),
    Upstream(Vec<u8>),
    Connected(bool),
    ConnectFailed,
    UpstreamEof,
    UpstreamError,
    ClientEof,
    Advance(u64),
    Flush(usize),
    Shutdown,
}

/// Bytes that look like HTTP more often than not, so the machine gets past the head.
fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        Just(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        Just(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
        Just(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".to_vec()),
        Just(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec()),
        Just(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec()),
        Just(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec()),
        Just(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_vec()),
        Just(b"HTTP/1.0 200 OK\r\n\r\nclose-delimited".to_vec()),
        Just(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => http_ish().prop_map(Event::Client),
        3 => http_ish().prop_map(Event::Upstream),
        1 => any::<bool>().prop_map(Event::Connected),
        1 => Just(Event::ConnectFailed),
        1 => Just(Event::UpstreamEof),
        1 => Just(Event::UpstreamError),
        1 => Just(Event::ClientEof),
        1 => (0u64..120_000).prop_map(Event::Advance),
        2 => (0usize..200).prop_map(Event::Flush),
        1 => Just(Event::Shutdown),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let limits = Limits::default();
        let mut scanner = HeadScanner::new();
        if let Ok(Scan::Complete(len)) = scanner.scan_request(&data, &limits) {
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
            let _ = parse_request_head(&data[..len], &limits, &mut storage[..limits.max_headers]);
        }
    }

    #[test]
    fn conn_never_panics_and_stays_bounded(events in proptest::collection::vec(event(), 0..40)) {
        let config = ConnConfig { buffer_size: 256, ..ConnConfig::default() };
        let info = ClientInfo {
            peer: "127.0.0.2:4000".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
        };
        let mut now = Instant::from_millis(1);
        let mut conn = Conn::new(info, Arc::new(config), now);
        let mut router = CyclingRouter(0);
        let mut closed_seen = false;
        let mut upstream_held = false;
        for ev in events {
            match ev {
                Event::Client(b) if conn.wants_client_read() => conn.client_data(&b, now, &mut router),
                Event::Upstream(b) if conn.wants_upstream_read() => conn.upstream_data(&b, now, &mut router),
                Event::Client(_) | Event::Upstream(_) => {}
                Event::Connected(reused) => conn.upstream_connected(now, reused, &mut router),
                Event::ConnectFailed => conn.upstream_connect_failed(now, &mut router),
                Event::UpstreamEof => conn.upstream_eof(now, &mut router),
                Event::UpstreamError => conn.upstream_error(now, &mut router),
                Event::ClientEof => conn.client_eof(now, &mut router),
                Event::Advance(ms) => {
                    now = now + Duration::from_millis(ms);
                    conn.timer(now, &mut router);
                }
                Event::Flush(limit) => {
                    if let Some(buf) = conn.take_client_output() {
                        let n = buf.len().min(limit);
                        conn.client_sent(buf, n, now, &mut router);
                    }
                    if let Some(buf) = conn.take_upstream_output() {
                        let n = buf.len().min(limit);
                        conn.upstream_sent(buf, n, now, &mut router);
                    }
                }
                Event::Shutdown => conn.begin_shutdown(now),
            }
            while let Some(action) = conn.poll_action() {
                prop_assert!(!closed_seen, "no action after CloseClient: {:?}", action);
                match action {
                    Action::CloseClient => {
                        prop_assert!(!upstream_held, "closed while still holding an upstream");
                        closed_seen = true;
                    }
                    Action::Connect { .. } => {
                        prop_assert!(!upstream_held, "Connect while holding an upstream");
                        upstream_held = true;
                    }
                    Action::ReleaseUpstream { .. } => {
                        prop_assert!(upstream_held, "Release without an upstream");
                        upstream_held = false;
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(conn.is_closed(), closed_seen);
            if let Some(d) = conn.deadline() {
                prop_assert!(d >= Instant::from_millis(1));
            }
        }
    }
}
