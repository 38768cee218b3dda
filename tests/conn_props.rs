//! Property tests: arbitrary bytes and arbitrary event orders never panic the parser or the
//! connection machine, and the machine never buffers beyond its bounds.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice::core::conn::{Action, ClientInfo, Conn, ConnConfig, POSTPONE_BOUND};
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
        // A response head alone, and a piece of body: what postponed output waits on.
        Just(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n".to_vec()),
        Just(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()),
        Just(b"ab".to_vec()),
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
    fn conn_never_panics_and_stays_bounded(
        events in proptest::collection::vec(event(), 0..40),
        postpone in any::<bool>(),
    ) {
        // With `postpone_output`, the engine's side of a hold too: it is told once, releases
        // it when its time comes, and a hold never outlives that.
        let postpone_output = if postpone { 100 } else { 0 };
        let config = ConnConfig { buffer_size: 256, postpone_output, ..ConnConfig::default() };
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
                    conn.hold_expired(now);
                    if ms >= 1 {
                        prop_assert!(!conn.holding(), "a hold outlived its time");
                    }
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
            if let Some(until) = conn.new_hold() {
                prop_assert!(postpone && until <= now + POSTPONE_BOUND);
            }
            prop_assert_eq!(conn.is_closed(), closed_seen);
            if let Some(d) = conn.deadline() {
                prop_assert!(d >= Instant::from_millis(1));
            }
        }
    }
}

/// What happens between two pieces of a response from the upstream.
#[derive(Debug, Clone)]
enum Step {
    /// The engine takes client output and writes at most this much of it.
    Flush(usize),
    /// Time passes (µs); the engine fires the timer and releases a hold that is due.
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0usize..300).prop_map(Step::Flush),
        (0u64..1_500).prop_map(Step::Advance),
    ]
}

/// Upstream answers, whole: Content-Length (small and beyond the threshold), chunked,
/// server-sent events, close-delimited.
fn answer() -> impl Strategy<Value = Vec<u8>> {
    let mut large = b"HTTP/1.1 200 OK\r\nContent-Length: 600\r\n\r\n".to_vec();
    large.extend((0..600).map(|i| b'a' + (i % 26) as u8));
    prop_oneof![
        Just(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789".to_vec()),
        Just(large),
        Just(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
                .to_vec()
        ),
        Just(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
              8\r\ndata: a\n\r\n8\r\ndata: b\n\r\n0\r\n\r\n"
                .to_vec()
        ),
        Just(b"HTTP/1.0 200 OK\r\n\r\nuntil the end".to_vec()),
    ]
}

/// One machine serving one request whose answer arrives in `pieces`, with `steps` between
/// them; returns every byte the client got, once everything has settled.
fn serve(postpone_output: usize, pieces: &[&[u8]], steps: &[Step]) -> Vec<u8> {
    let config = ConnConfig {
        buffer_size: 256,
        postpone_output,
        ..ConnConfig::default()
    };
    let info = ClientInfo {
        peer: "127.0.0.2:4000".parse().unwrap(),
        local: "127.0.0.1:80".parse().unwrap(),
    };
    let mut now = Instant::from_millis(1);
    let mut conn = Conn::new(info, Arc::new(config), now);
    let mut router = CyclingRouter(1); // the first request is forwarded
    let mut client = Vec::new();
    conn.client_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", now, &mut router);
    conn.upstream_connected(now, false, &mut router);
    if let Some(buf) = conn.take_upstream_output() {
        let n = buf.len();
        conn.upstream_sent(buf, n, now, &mut router);
    }
    let flush = |conn: &mut Conn, now: Instant, limit: usize, client: &mut Vec<u8>| {
        if let Some(buf) = conn.take_client_output() {
            let n = buf.len().min(limit);
            client.extend_from_slice(&buf[..n]);
            conn.client_sent(buf, n, now, &mut CyclingRouter(0));
        }
    };
    for (i, piece) in pieces.iter().enumerate() {
        // Backpressure: the client reads until the machine wants upstream bytes again.
        for _ in 0..16 {
            if conn.wants_upstream_read() {
                break;
            }
            flush(&mut conn, now, usize::MAX, &mut client);
        }
        assert!(conn.wants_upstream_read(), "a flushed machine reads again");
        conn.upstream_data(piece, now, &mut router);
        match steps.get(i) {
            Some(Step::Flush(limit)) => flush(&mut conn, now, *limit, &mut client),
            Some(Step::Advance(us)) => {
                now = now + Duration::from_micros(*us);
                conn.timer(now, &mut router);
                conn.hold_expired(now);
            }
            None => {}
        }
    }
    conn.upstream_eof(now, &mut router);
    for _ in 0..64 {
        now = now + Duration::from_millis(2);
        conn.timer(now, &mut router);
        conn.hold_expired(now);
        flush(&mut conn, now, usize::MAX, &mut client);
    }
    client
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// `postpone_output` changes when bytes reach the client, never which: the same answer,
    /// cut anywhere and with any writes and waits between its pieces, gives the client the
    /// same bytes with and without it.
    #[test]
    fn postponing_changes_when_bytes_go_never_which(
        answer in answer(),
        cuts in proptest::collection::vec(0usize..700, 0..6),
        steps in proptest::collection::vec(step(), 0..7),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(answer.len())).collect();
        cuts.push(0);
        cuts.push(answer.len());
        cuts.sort_unstable();
        cuts.dedup();
        let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &answer[w[0]..w[1]]).collect();
        let plain = serve(0, &pieces, &steps);
        let held = serve(100, &pieces, &steps);
        let text = String::from_utf8_lossy(&plain);
        prop_assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{}", text);
        prop_assert_eq!(String::from_utf8_lossy(&held), String::from_utf8_lossy(&plain));
    }
}
