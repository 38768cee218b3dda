//! The connection machine driven in memory: bytes and an injected clock in, actions and bytes
//! out. No sockets; every timeout is exercised by moving the clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice::core::conn::{Action, ClientInfo, Conn, ConnConfig};
use sluice::core::route::{BackendId, RouteDecision, RoutePolicy, Router};
use sluice::core::time::Instant;

/// Routes `/missing…` to nothing (404), `/empty…` to a backend without endpoints (503), and
/// everything else to one endpoint.
struct TestRouter {
    endpoint: SocketAddr,
    seen: Vec<(String, String)>,
    /// The policy of the routes under `/p`.
    policy: Option<Arc<RoutePolicy>>,
}

impl Router for TestRouter {
    fn route(&mut self, host: &str, path: &str) -> RouteDecision {
        self.seen.push((host.to_string(), path.to_string()));
        if path.starts_with("/missing") {
            RouteDecision::NotFound
        } else if path.starts_with("/empty") {
            RouteDecision::NoEndpoints
        } else {
            RouteDecision::Forward {
                backend: BackendId(0),
                endpoint: self.endpoint,
                policy: if path.starts_with("/p") {
                    self.policy.clone()
                } else {
                    None
                },
            }
        }
    }
}

/// An engine stand-in: moves bytes between the machine and two byte sinks, records actions,
/// and (optionally) writes only `write_limit` bytes per send to exercise partial writes.
struct Harness {
    conn: Conn,
    router: TestRouter,
    now: Instant,
    to_client: Vec<u8>,
    to_upstream: Vec<u8>,
    actions: Vec<Action>,
    write_limit: usize,
    /// When false, client sends "block" (the buffer stays with the engine).
    client_writable: bool,
    held_client_buf: Option<Vec<u8>>,
}

const UPSTREAM: &str = "10.0.0.7:8080";

impl Harness {
    fn new() -> Harness {
        Harness::with_config(ConnConfig::default())
    }

    fn with_config(config: ConnConfig) -> Harness {
        let info = ClientInfo {
            peer: "192.0.2.10:50000".parse().unwrap(),
            local: "192.0.2.1:80".parse().unwrap(),
        };
        let now = Instant::from_millis(1_000);
        Harness {
            conn: Conn::new(info, Arc::new(config), now),
            router: TestRouter {
                endpoint: UPSTREAM.parse().unwrap(),
                seen: Vec::new(),
                policy: None,
            },
            now,
            to_client: Vec::new(),
            to_upstream: Vec::new(),
            actions: Vec::new(),
            write_limit: usize::MAX,
            client_writable: true,
            held_client_buf: None,
        }
    }

    fn pump(&mut self) {
        loop {
            while let Some(a) = self.conn.poll_action() {
                self.actions.push(a);
            }
            let mut moved = false;
            if self.client_writable {
                let buf = self
                    .held_client_buf
                    .take()
                    .or_else(|| self.conn.take_client_output());
                if let Some(buf) = buf {
                    let n = buf.len().min(self.write_limit);
                    self.to_client.extend_from_slice(&buf[..n]);
                    self.conn.client_sent(buf, n, self.now, &mut self.router);
                    moved = true;
                }
            } else if self.held_client_buf.is_none() {
                self.held_client_buf = self.conn.take_client_output();
            }
            if let Some(buf) = self.conn.take_upstream_output() {
                let n = buf.len().min(self.write_limit);
                self.to_upstream.extend_from_slice(&buf[..n]);
                self.conn.upstream_sent(buf, n, self.now, &mut self.router);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        while let Some(a) = self.conn.poll_action() {
            self.actions.push(a);
        }
    }

    fn client(&mut self, bytes: &[u8]) {
        assert!(
            self.conn.wants_client_read(),
            "machine does not want client bytes"
        );
        self.conn.client_data(bytes, self.now, &mut self.router);
        self.pump();
    }

    fn client_eof(&mut self) {
        self.conn.client_eof(self.now, &mut self.router);
        self.pump();
    }

    fn connected(&mut self, reused: bool) {
        self.conn
            .upstream_connected(self.now, reused, &mut self.router);
        self.pump();
    }

    fn connect_failed(&mut self) {
        self.conn
            .upstream_connect_failed(self.now, &mut self.router);
        self.pump();
    }

    fn upstream(&mut self, bytes: &[u8]) {
        assert!(
            self.conn.wants_upstream_read(),
            "machine does not want upstream bytes"
        );
        self.conn.upstream_data(bytes, self.now, &mut self.router);
        self.pump();
    }

    fn upstream_eof(&mut self) {
        self.conn.upstream_eof(self.now, &mut self.router);
        self.pump();
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.conn.timer(self.now, &mut self.router);
        self.pump();
    }

    /// Moves the clock to the machine's deadline and fires the timer.
    fn fire_deadline(&mut self) -> Instant {
        let deadline = self.conn.deadline().expect("a deadline");
        self.now = deadline;
        self.conn.timer(self.now, &mut self.router);
        self.pump();
        deadline
    }

    fn take_client(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.to_client)).unwrap()
    }

    fn take_upstream(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.to_upstream)).unwrap()
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }
}

fn connect_action(fresh: bool) -> Action {
    Action::Connect {
        endpoint: UPSTREAM.parse().unwrap(),
        fresh,
        tls: None,
    }
}

const FWD: &str = "X-Forwarded-For: 192.0.2.10\r\nX-Forwarded-Proto: http\r\n\
                   X-Forwarded-Host: example.com\r\nX-Forwarded-Port: 80\r\nX-Real-IP: 192.0.2.10\r\n";

fn upstream_get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: example.com\r\n{FWD}\r\n")
}

#[test]
fn get_is_forwarded_and_answered_with_keep_alive() {
    let mut h = Harness::new();
    h.client(b"GET /a?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n");
    assert_eq!(h.take_actions(), vec![connect_action(false)]);
    assert_eq!(h.router.seen, vec![("example.com".into(), "/a".into())]);
    assert!(
        h.to_upstream.is_empty(),
        "nothing is written before the connection exists"
    );
    h.connected(false);
    assert_eq!(
        h.take_upstream(),
        format!("GET /a?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n{FWD}\r\n")
    );
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n\r\nhello");
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 200 OK\r\nServer: sluice\r\nX-App: 1\r\nContent-Length: 5\r\n\r\nhello"
    );
    assert_eq!(
        h.take_actions(),
        vec![
            Action::ReleaseUpstream { reusable: true },
            Action::Completed { status: 200 }
        ]
    );
    assert!(h.conn.is_idle());
    assert!(h.conn.wants_client_read());
}

#[test]
fn second_request_on_the_same_connection_is_routed_again() {
    let mut h = Harness::new();
    h.client(b"GET /one HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 204 No Content\r\n\r\n");
    h.take_actions();
    h.take_upstream();
    h.client(b"GET /two HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(h.take_actions(), vec![connect_action(false)]);
    h.connected(true);
    assert_eq!(h.take_upstream(), upstream_get("/two"));
    assert_eq!(h.router.seen.len(), 2);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut h = Harness::new();
    h.client(
        b"GET /1 HTTP/1.1\r\nHost: example.com\r\n\r\nGET /2 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    );
    assert_eq!(h.take_actions(), vec![connect_action(false)]);
    h.connected(false);
    assert_eq!(h.take_upstream(), upstream_get("/1"));
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1");
    // The first answer is out and the second request already went to a new exchange.
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 200 OK\r\nServer: sluice\r\nContent-Length: 1\r\n\r\n1"
    );
    assert_eq!(
        h.take_actions(),
        vec![
            Action::ReleaseUpstream { reusable: true },
            Action::Completed { status: 200 },
            connect_action(false)
        ]
    );
    h.connected(true);
    assert_eq!(h.take_upstream(), upstream_get("/2"));
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2");
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 200 OK\r\nServer: sluice\r\nContent-Length: 1\r\n\r\n2"
    );
}

#[test]
fn unknown_route_gets_404_and_connection_stays_open() {
    let mut h = Harness::new();
    h.client(b"GET /missing HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
    assert!(out.contains("Server: sluice\r\n"));
    assert!(out.ends_with("\r\n\r\n404 Not Found\n"));
    assert!(!out.contains("Connection: close"));
    assert_eq!(h.take_actions(), vec![Action::Completed { status: 404 }]);
    assert!(h.conn.is_idle());
}

#[test]
fn backend_without_endpoints_gets_503() {
    let mut h = Harness::new();
    h.client(b"GET /empty HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert!(
        h.take_client()
            .starts_with("HTTP/1.1 503 Service Unavailable\r\n")
    );
    assert_eq!(h.take_actions(), vec![Action::Completed { status: 503 }]);
}

#[test]
fn local_answer_to_a_request_with_a_body_closes() {
    let mut h = Harness::new();
    h.client(b"POST /missing HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 404"));
    assert!(out.contains("Connection: close\r\n"));
    assert_eq!(
        h.take_actions(),
        vec![
            Action::Completed { status: 404 },
            Action::ShutdownClientWrite
        ]
    );
}

#[test]
fn malformed_request_gets_400_and_close_with_linger() {
    let mut h = Harness::new();
    h.client(
        b"GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("Connection: close\r\n"));
    assert_eq!(
        h.take_actions(),
        vec![
            Action::Completed { status: 400 },
            Action::ShutdownClientWrite
        ]
    );
    assert!(
        h.conn.wants_client_read(),
        "lingering: keep reading and discarding"
    );
    h.client(b"more garbage");
    assert!(h.to_client.is_empty());
    let linger = h.fire_deadline();
    assert_eq!(h.take_actions(), vec![Action::CloseClient]);
    assert!(h.conn.is_closed());
    assert!(linger.saturating_since(Instant::from_millis(1_000)) <= Duration::from_secs(5));
}

#[test]
fn lingering_ends_when_the_client_closes() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 505"));
    h.take_actions();
    h.client_eof();
    assert_eq!(h.take_actions(), vec![Action::CloseClient]);
}

#[test]
fn connect_failure_is_502() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.take_actions();
    h.connect_failed();
    assert!(h.take_client().starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
    let actions = h.take_actions();
    assert!(actions.contains(&Action::ReleaseUpstream { reusable: false }));
    assert!(actions.contains(&Action::Completed { status: 502 }));
    // A bodiless request was fully read: the client connection survives the upstream's failure.
    assert!(h.conn.is_idle());
}

#[test]
fn connect_timeout_is_504() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let start = h.now;
    let deadline = h.fire_deadline();
    assert_eq!(deadline.saturating_since(start), Duration::from_secs(5));
    assert!(
        h.take_client()
            .starts_with("HTTP/1.1 504 Gateway Timeout\r\n")
    );
    assert!(
        h.take_actions()
            .contains(&Action::ReleaseUpstream { reusable: false })
    );
}

#[test]
fn response_timeout_is_504() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    let sent = h.now;
    h.advance(Duration::from_secs(59));
    assert!(h.to_client.is_empty(), "not yet");
    let deadline = h.fire_deadline();
    assert_eq!(deadline.saturating_since(sent), Duration::from_secs(60));
    assert!(h.take_client().starts_with("HTTP/1.1 504"));
}

/// A harness whose routes under `/p` carry `policy`.
fn with_route_policy(config: ConnConfig, policy: RoutePolicy) -> Harness {
    let mut h = Harness::with_config(config);
    h.router.policy = Some(Arc::new(policy));
    h
}

#[test]
fn a_routes_timeouts_replace_the_listeners() {
    let policy = RoutePolicy {
        connect_timeout: Some(Duration::from_secs(1)),
        read_timeout: Some(Duration::from_secs(2)),
        client_body_timeout: Some(Duration::from_secs(3)),
        ..RoutePolicy::default()
    };
    // proxy-connect-timeout.
    let mut h = with_route_policy(ConnConfig::default(), policy.clone());
    h.client(b"GET /p HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let start = h.now;
    assert_eq!(
        h.fire_deadline().saturating_since(start),
        Duration::from_secs(1)
    );
    assert!(h.take_client().starts_with("HTTP/1.1 504"));
    // proxy-read-timeout: for the response head, then between reads of the body.
    let mut h = with_route_policy(ConnConfig::default(), policy.clone());
    h.client(b"GET /p HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    let sent = h.now;
    assert_eq!(
        h.fire_deadline().saturating_since(sent),
        Duration::from_secs(2)
    );
    assert!(h.take_client().starts_with("HTTP/1.1 504"));
    let mut h = with_route_policy(ConnConfig::default(), policy.clone());
    h.client(b"GET /p HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    let read = h.now;
    assert_eq!(
        h.conn.deadline().unwrap().saturating_since(read),
        Duration::from_secs(2)
    );
    // client-body-timeout, while the request body streams.
    let mut h = with_route_policy(ConnConfig::default(), policy.clone());
    h.client(b"POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 10\r\n\r\nab");
    h.connected(false);
    let read = h.now;
    assert_eq!(
        h.fire_deadline().saturating_since(read),
        Duration::from_secs(3)
    );
    // The client stalled, not the upstream: 408.
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    // Other routes keep the listener's.
    let mut h = with_route_policy(ConnConfig::default(), policy);
    h.client(b"GET /other HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let start = h.now;
    assert_eq!(
        h.fire_deadline().saturating_since(start),
        Duration::from_secs(5)
    );
}

#[test]
fn a_routes_read_timeout_keeps_its_upgraded_tunnels_open() {
    let ws = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
    };
    let policy = RoutePolicy {
        read_timeout: Some(Duration::from_secs(3600)),
        ..RoutePolicy::default()
    };
    for (path, idle) in [("/p", 3600), ("/other", 60)] {
        let mut h = with_route_policy(ConnConfig::default(), policy.clone());
        h.client(ws(path).as_bytes());
        h.connected(false);
        h.upstream(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(h.take_client().starts_with("HTTP/1.1 101"));
        let quiet = h.now;
        assert_eq!(
            h.conn.deadline().unwrap().saturating_since(quiet),
            Duration::from_secs(idle),
            "{path}"
        );
    }
}

#[test]
fn a_routes_body_size_replaces_the_listeners() {
    let small = RoutePolicy {
        max_body_bytes: Some(Some(4)),
        ..RoutePolicy::default()
    };
    // Content-Length over the route's limit: 413 before anything goes upstream.
    let mut h = with_route_policy(ConnConfig::default(), small.clone());
    h.client(b"POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(h.to_upstream.is_empty());
    // Chunked: cut when the decoded body passes it.
    let mut h = with_route_policy(ConnConfig::default(), small.clone());
    h.client(b"POST /p HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    h.connected(false);
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // Another route: the listener's (unlimited by default).
    let mut h = with_route_policy(ConnConfig::default(), small);
    h.client(b"POST /q HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
    h.connected(false);
    assert!(h.take_upstream().ends_with("\r\n\r\nhello"));
    // A route may also lift the listener's limit ("0": unlimited).
    let mut config = ConnConfig::default();
    config.limits.max_body_bytes = Some(4);
    let unlimited = RoutePolicy {
        max_body_bytes: Some(None),
        ..RoutePolicy::default()
    };
    let mut h = with_route_policy(config.clone(), unlimited.clone());
    h.client(b"POST /p HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
    h.connected(false);
    assert!(h.take_upstream().ends_with("\r\n\r\nhello"));
    let mut h = with_route_policy(config, unlimited);
    h.client(b"POST /q HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello");
    assert!(h.take_client().starts_with("HTTP/1.1 413"));
}

#[test]
fn slow_request_head_is_408() {
    let mut h = Harness::new();
    h.advance(Duration::from_secs(2));
    h.client(b"GET / HTTP/1.1\r\nHost: exa");
    let first_byte = h.now;
    h.advance(Duration::from_secs(9));
    h.client(b"mple.com\r\n");
    let deadline = h.fire_deadline();
    assert_eq!(
        deadline.saturating_since(first_byte),
        Duration::from_secs(10)
    );
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
    assert!(out.contains("Connection: close"));
}

#[test]
fn idle_keep_alive_connection_closes_quietly_after_60s() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    h.take_client();
    h.take_actions();
    let idle_from = h.now;
    let deadline = h.fire_deadline();
    assert_eq!(
        deadline.saturating_since(idle_from),
        Duration::from_secs(60)
    );
    assert!(h.to_client.is_empty(), "no response for an idle close");
    // Nothing unread from the client: no lingering, FIN and close at once.
    assert_eq!(
        h.take_actions(),
        vec![Action::ShutdownClientWrite, Action::CloseClient]
    );
}

#[test]
fn connection_that_never_speaks_is_closed_after_the_head_timeout() {
    let mut h = Harness::new();
    let deadline = h.conn.deadline().unwrap();
    assert_eq!(deadline.saturating_since(h.now), Duration::from_secs(10));
    h.fire_deadline();
    assert_eq!(
        h.take_actions(),
        vec![Action::ShutdownClientWrite, Action::CloseClient]
    );
}

#[test]
fn content_length_body_streams_with_backpressure() {
    let config = ConnConfig {
        buffer_size: 1024,
        ..ConnConfig::default()
    };
    let mut h = Harness::with_config(config);
    let total = 10_000usize;
    h.client(
        format!("PUT /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: {total}\r\n\r\n")
            .as_bytes(),
    );
    h.connected(false);
    h.take_upstream();
    // Stall the upstream: its output buffer fills, then the client is no longer read.
    let mut fed = 0;
    let chunk = vec![b'x'; 512];
    while fed < total && h.conn.wants_client_read() {
        let n = chunk.len().min(total - fed);
        h.conn.client_data(&chunk[..n], h.now, &mut h.router);
        fed += n;
        // Take the upstream buffer but do not hand it back: the send is "in flight".
        if fed == 512 {
            let inflight = h.conn.take_upstream_output().unwrap();
            assert!(!inflight.is_empty());
            std::mem::forget(inflight);
        }
    }
    assert!(
        fed < total,
        "reading must stop while the upstream does not drain"
    );
    assert!(fed <= 4 * 1024, "bounded buffering, got {fed}");
}

#[test]
fn large_body_flows_both_ways_through_small_buffers() {
    let config = ConnConfig {
        buffer_size: 1000,
        ..ConnConfig::default()
    };
    let mut h = Harness::with_config(config);
    h.write_limit = 333; // partial writes everywhere
    let total = 50_000usize;
    h.client(
        format!("POST /up HTTP/1.1\r\nHost: example.com\r\nContent-Length: {total}\r\n\r\n")
            .as_bytes(),
    );
    h.connected(false);
    let body: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    for piece in body.chunks(700) {
        h.client(piece);
    }
    let up = std::mem::take(&mut h.to_upstream);
    let head_end = up.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&up[head_end..], &body[..]);
    let resp_head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n");
    h.upstream(resp_head.as_bytes());
    for piece in body.chunks(900) {
        h.upstream(piece);
    }
    let down = std::mem::take(&mut h.to_client);
    let head_end = down.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&down[head_end..], &body[..]);
    assert!(
        h.take_actions()
            .contains(&Action::ReleaseUpstream { reusable: true })
    );
}

#[test]
fn chunked_request_body_is_reframed() {
    let mut h = Harness::new();
    h.client(b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n");
    h.connected(false);
    h.client(b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    let up = h.take_upstream();
    assert!(up.contains("Transfer-Encoding: chunked\r\n"), "{up}");
    assert!(
        up.ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
        "{up}"
    );
}

#[test]
fn bad_chunk_in_request_body_is_400_and_upstream_is_dropped() {
    let mut h = Harness::new();
    h.client(b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n");
    h.connected(false);
    h.take_actions();
    h.client(b"zz\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 400"));
    let actions = h.take_actions();
    assert_eq!(actions[0], Action::ReleaseUpstream { reusable: false });
    assert!(actions.contains(&Action::Completed { status: 400 }));
}

#[test]
fn chunked_response_goes_to_a_10_client_close_delimited() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nhello"), "{out}");
    let actions = h.take_actions();
    assert!(actions.contains(&Action::ReleaseUpstream { reusable: true }));
    assert!(actions.contains(&Action::ShutdownClientWrite));
}

#[test]
fn close_delimited_response_is_chunked_for_11_clients() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome");
    h.upstream(b" bytes");
    h.upstream_eof();
    let out = h.take_client();
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    assert!(
        out.ends_with("\r\n\r\n4\r\nsome\r\n6\r\n bytes\r\n0\r\n\r\n"),
        "{out}"
    );
    let actions = h.take_actions();
    assert!(actions.contains(&Action::ReleaseUpstream { reusable: false }));
    assert!(h.conn.is_idle(), "client keeps its connection: {actions:?}");
}

#[test]
fn truncated_response_body_cuts_the_client_connection() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    h.upstream_eof();
    let out = h.take_client();
    assert!(out.ends_with("abc"));
    let actions = h.take_actions();
    assert!(actions.contains(&Action::ReleaseUpstream { reusable: false }));
    assert!(actions.contains(&Action::ShutdownClientWrite));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Completed { .. }))
    );
}

#[test]
fn invalid_upstream_response_is_502_and_not_reused() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.take_actions();
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 502"));
    let actions = h.take_actions();
    assert_eq!(actions[0], Action::ReleaseUpstream { reusable: false });
}

#[test]
fn stale_pooled_connection_is_retried_once_on_a_fresh_one() {
    let mut h = Harness::new();
    h.client(b"GET /r HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.take_actions();
    h.connected(true);
    let first = h.take_upstream();
    h.upstream_eof();
    assert_eq!(
        h.take_actions(),
        vec![
            Action::ReleaseUpstream { reusable: false },
            connect_action(true)
        ]
    );
    h.connected(false);
    assert_eq!(h.take_upstream(), first, "same request replayed");
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn fresh_connection_failing_before_a_response_is_502_not_retried() {
    let mut h = Harness::new();
    h.client(b"GET /r HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.take_actions();
    h.upstream_eof();
    assert!(h.take_client().starts_with("HTTP/1.1 502"));
    assert!(
        !h.take_actions()
            .iter()
            .any(|a| matches!(a, Action::Connect { .. }))
    );
}

#[test]
fn request_with_body_is_not_replayed() {
    let mut h = Harness::new();
    h.client(b"POST /r HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi");
    h.connected(true);
    h.take_actions();
    h.upstream_eof();
    assert!(h.take_client().starts_with("HTTP/1.1 502"));
}

#[test]
fn expect_100_continue_is_answered_once_connected() {
    let mut h = Harness::new();
    h.client(b"PUT /e HTTP/1.1\r\nHost: example.com\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    assert!(
        h.to_client.is_empty(),
        "no 100 before the upstream is there"
    );
    h.connected(false);
    assert_eq!(h.take_client(), "HTTP/1.1 100 Continue\r\n\r\n");
    let up = h.take_upstream();
    assert!(!up.to_ascii_lowercase().contains("expect"), "{up}");
    h.client(b"data");
    assert!(h.take_upstream().ends_with("data"));
    // An upstream 100 is interim and swallowed: the client already had ours.
    h.upstream(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 201 Created\r\nServer: sluice\r\nContent-Length: 0\r\n\r\n"
    );
}

#[test]
fn upgrade_becomes_a_tunnel() {
    let mut h = Harness::new();
    h.client(b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    h.connected(false);
    let up = h.take_upstream();
    assert!(up.contains("Connection: upgrade\r\n"), "{up}");
    assert!(up.contains("Upgrade: websocket\r\n"), "{up}");
    h.upstream(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nserver-hello");
    let out = h.take_client();
    assert!(
        out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\nserver-hello"), "{out}");
    h.client(b"\x81\x05hello");
    assert_eq!(std::mem::take(&mut h.to_upstream), b"\x81\x05hello");
    h.upstream(b"\x81\x02ok");
    assert_eq!(std::mem::take(&mut h.to_client), b"\x81\x02ok");
    h.upstream_eof();
    let actions = h.take_actions();
    assert!(actions.contains(&Action::ReleaseUpstream { reusable: false }));
    assert!(actions.contains(&Action::ShutdownClientWrite));
}

#[test]
fn head_response_has_no_body() {
    let mut h = Harness::new();
    h.client(b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
    assert_eq!(
        h.take_client(),
        "HTTP/1.1 200 OK\r\nServer: sluice\r\nContent-Length: 1234\r\n\r\n"
    );
    assert!(
        h.take_actions()
            .contains(&Action::ReleaseUpstream { reusable: true })
    );
    assert!(h.conn.is_idle());
}

#[test]
fn http10_without_keep_alive_closes_after_the_response() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.0\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.0 200 OK\r\n"));
    assert!(out.contains("Connection: close\r\n"));
    assert!(h.take_actions().contains(&Action::ShutdownClientWrite));
}

#[test]
fn client_connection_close_is_honoured() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.take_client().contains("Connection: close\r\n"));
    assert!(h.take_actions().contains(&Action::ShutdownClientWrite));
}

#[test]
fn half_closed_client_still_gets_its_answer() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.client_eof();
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert!(h.take_client().ends_with("ok"));
    assert!(h.take_actions().contains(&Action::CloseClient));
}

#[test]
fn graceful_shutdown_finishes_the_request_in_flight_then_closes() {
    let mut h = Harness::new();
    h.client(b"GET /slow HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.conn.begin_shutdown(h.now);
    h.pump();
    assert!(!h.conn.is_closed());
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let out = h.take_client();
    assert!(out.contains("Connection: close\r\n"), "{out}");
    assert!(out.ends_with("ok"));
    assert!(h.take_actions().contains(&Action::ShutdownClientWrite));
}

#[test]
fn graceful_shutdown_closes_an_idle_connection_at_once() {
    let mut h = Harness::new();
    h.conn.begin_shutdown(h.now);
    h.pump();
    assert_eq!(
        h.take_actions(),
        vec![Action::ShutdownClientWrite, Action::CloseClient]
    );
}

#[test]
fn client_reset_drops_everything() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.take_actions();
    h.conn.client_error(h.now);
    h.pump();
    assert_eq!(
        h.take_actions(),
        vec![
            Action::ReleaseUpstream { reusable: false },
            Action::CloseClient
        ]
    );
    assert!(h.conn.is_closed());
    assert_eq!(h.conn.deadline(), None);
}

#[test]
fn slow_reader_stops_upstream_reads() {
    let config = ConnConfig {
        buffer_size: 1024,
        ..ConnConfig::default()
    };
    let mut h = Harness::with_config(config);
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.client_writable = false;
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
    let mut fed = 0;
    while h.conn.wants_upstream_read() && fed < 100_000 {
        h.conn.upstream_data(&[b'z'; 500], h.now, &mut h.router);
        h.pump();
        fed += 500;
    }
    assert!(fed < 10_000, "upstream reading must stop, fed {fed}");
    // The client never reads: the body-idle timeout cuts the exchange.
    h.fire_deadline();
    assert!(
        h.take_actions()
            .contains(&Action::ReleaseUpstream { reusable: false })
    );
}

#[test]
fn early_response_before_the_body_is_sent_closes_both_sides() {
    let mut h = Harness::new();
    h.client(b"POST /big HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100\r\n\r\nabc");
    h.connected(false);
    h.take_actions();
    h.upstream(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 413"));
    assert!(out.contains("Connection: close"), "{out}");
    let actions = h.take_actions();
    assert!(actions.contains(&Action::ReleaseUpstream { reusable: false }));
    assert!(actions.contains(&Action::ShutdownClientWrite));
}

// ---- issue 11: Server, h2c and other upgrades, request lines, chunked framing ----

fn with(f: impl FnOnce(&mut ConnConfig)) -> Harness {
    let mut config = ConnConfig::default();
    f(&mut config);
    Harness::with_config(config)
}

fn field_count(out: &str, name: &str) -> usize {
    out.split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .count()
}

#[test]
fn server_is_added_to_proxied_answers_unless_the_upstream_sent_one() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let out = h.take_client();
    assert!(
        out.starts_with("HTTP/1.1 200 OK\r\nServer: sluice\r\n"),
        "{out}"
    );
    assert_eq!(field_count(&out, "server"), 1, "{out}");
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(true);
    h.upstream(b"HTTP/1.1 200 OK\r\nServer: echo-pod\r\nContent-Length: 0\r\n\r\n");
    let out = h.take_client();
    assert_eq!(field_count(&out, "server"), 1, "{out}");
    assert!(out.contains("Server: echo-pod\r\n"), "{out}");
}

#[test]
fn configured_server_value_is_on_every_answer() {
    let mut h = with(|c| c.server = Some("edge".into()));
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.take_client().contains("\r\nServer: edge\r\n"));
    h.client(b"GET /missing HTTP/1.1\r\nHost: example.com\r\n\r\n");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(out.contains("\r\nServer: edge\r\n"), "{out}");
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connect_failed();
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(out.contains("\r\nServer: edge\r\n"), "{out}");
    assert_eq!(field_count(&out, "server"), 1);

    let mut h = with(|c| c.server = None);
    h.client(b"GET /missing HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(!h.take_client().contains("Server:"));
}

#[test]
fn h2c_upgrade_is_forwarded_as_plain_http11() {
    let mut h = Harness::new();
    h.client(b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n");
    h.connected(false);
    assert_eq!(h.take_upstream(), upstream_get("/h"));
    // An h2c-capable upstream would switch only if it had seen the Upgrade: answered plainly,
    // the exchange is an ordinary one and the connection stays HTTP/1.1.
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    assert!(h.conn.is_idle());
    assert!(
        h.take_actions()
            .contains(&Action::ReleaseUpstream { reusable: true })
    );
    // And if it switches anyway, that is refused: 502, and its connection is dropped.
    h.client(
        b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    );
    h.connected(true);
    assert_eq!(h.take_upstream(), upstream_get("/h"));
    h.upstream(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    assert!(!out.contains("PRI"), "{out}");
    assert!(
        h.take_actions()
            .contains(&Action::ReleaseUpstream { reusable: false })
    );
}

#[test]
fn unlisted_upgrade_is_not_tunnelled_unless_configured() {
    let req =
        b"GET /e HTTP/1.1\r\nHost: example.com\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n";
    let mut h = Harness::new();
    h.client(req);
    h.connected(false);
    assert_eq!(h.take_upstream(), upstream_get("/e"));
    h.upstream(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 502"));

    let mut h = with(|c| c.upgrades = sluice::core::http1::Upgrades::new(&["echo"]).unwrap());
    h.client(req);
    h.connected(false);
    let up = h.take_upstream();
    assert!(
        up.ends_with("Connection: upgrade\r\nUpgrade: echo\r\n\r\n"),
        "{up}"
    );
    h.upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhi",
    );
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    h.client(b"raw");
    assert_eq!(h.take_upstream(), "raw");
}

#[test]
fn a_routes_upgrade_list_replaces_the_listeners() {
    let echo = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
        )
    };
    let policy = RoutePolicy {
        upgrades: Some(sluice::core::http1::Upgrades::new(&["echo"]).unwrap()),
        ..RoutePolicy::default()
    };
    let routed = || {
        let mut h = Harness::new();
        h.router.policy = Some(Arc::new(policy.clone()));
        h
    };
    // The route allows echo: tunnelled.
    let mut h = routed();
    h.client(echo("/p").as_bytes());
    h.connected(false);
    let up = h.take_upstream();
    assert!(
        up.ends_with("Connection: upgrade\r\nUpgrade: echo\r\n\r\n"),
        "{up}"
    );
    h.upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhi",
    );
    assert!(h.take_client().starts_with("HTTP/1.1 101"));
    h.client(b"raw");
    assert_eq!(h.take_upstream(), "raw");

    // Another route of the same listener: plain HTTP/1.1, Upgrade stripped.
    let mut h = routed();
    h.client(echo("/e").as_bytes());
    h.connected(false);
    assert_eq!(h.take_upstream(), upstream_get("/e"));

    // The route's list replaces the default: websocket is not relayed on it.
    let mut h = routed();
    h.client(b"GET /p HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    h.connected(false);
    assert_eq!(h.take_upstream(), upstream_get("/p"));
    h.upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert!(h.take_client().starts_with("HTTP/1.1 502"));
}

#[test]
fn switching_to_a_protocol_not_asked_for_is_502() {
    let mut h = Harness::new();
    h.client(b"GET /ws HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    h.connected(false);
    h.take_actions();
    h.upstream(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    let actions = h.take_actions();
    assert_eq!(actions[0], Action::ReleaseUpstream { reusable: false });
    assert!(actions.contains(&Action::Completed { status: 502 }));
}

#[test]
fn request_line_without_a_version_is_400_at_once() {
    for line in [&b"GET /\r\n"[..], b"GET /index.html?q=1\r\n", b"GET\r\n"] {
        let mut h = Harness::new();
        h.client(line);
        let out = h.take_client();
        assert!(
            out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{line:?}: {out}"
        );
        assert!(out.contains("Connection: close\r\n"), "{out}");
        assert_eq!(
            h.take_actions(),
            vec![
                Action::Completed { status: 400 },
                Action::ShutdownClientWrite
            ],
            "{line:?}: answered and closing without waiting, nothing connected"
        );
    }
    // Byte by byte: the answer comes with the line's LF, not later.
    let mut h = Harness::new();
    for &b in b"GET /" {
        h.client(&[b]);
        assert!(h.to_client.is_empty());
    }
    h.client(b"\r");
    assert!(h.to_client.is_empty());
    h.client(b"\n");
    assert!(h.take_client().starts_with("HTTP/1.1 400"));
}

#[test]
fn whitespace_in_the_target_is_400_not_505() {
    for req in [
        &b"GET /a b HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
        b"GET /a b HTTP/2.0\r\nHost: example.com\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n",
    ] {
        let mut h = Harness::new();
        h.client(req);
        let out = h.take_client();
        assert!(
            out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{req:?}: {out}"
        );
        assert!(h.router.seen.is_empty());
    }
    let mut h = Harness::new();
    h.client(b"GET / HTTP/2.0\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 505"));
}

/// Sends a chunked request's head (and connects), then `body` in one piece; returns the
/// harness with what the upstream got so far.
fn chunked_then(first: &[u8], body: &[u8]) -> Harness {
    let mut h = Harness::new();
    h.client(b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n");
    h.connected(false);
    h.client(first);
    h.take_actions();
    h.client(body);
    h
}

/// The request failed with a 400: the client is told and its connection closes, and the
/// upstream connection is dropped without having been sent a last chunk.
fn assert_rejected_and_upstream_dropped(h: &mut Harness) {
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("Connection: close\r\n"), "{out}");
    let actions = h.take_actions();
    assert_eq!(actions[0], Action::ReleaseUpstream { reusable: false });
    assert!(actions.contains(&Action::Completed { status: 400 }));
    assert!(actions.contains(&Action::ShutdownClientWrite));
    let up = h.take_upstream();
    assert!(!up.contains("\r\n0\r\n"), "{up:?}");
}

#[test]
fn malformed_chunk_extension_is_400_and_nothing_completes_upstream() {
    for bad in [
        &b"0;a=b c\r\n\r\n"[..],
        b"3;\r\nabc\r\n0\r\n\r\n",
        b"3;a=\"x\r\nabc\r\n0\r\n\r\n",
        b"3 \r\nabc\r\n0\r\n\r\n",
        b"3;a\x01\r\nabc\r\n0\r\n\r\n",
        b"3;a\nabc\r\n0\r\n\r\n",
    ] {
        let mut h = chunked_then(b"2\r\nhi\r\n", bad);
        assert_rejected_and_upstream_dropped(&mut h);
    }
    // Head and body in one read, before the upstream connection exists: nothing is sent.
    let mut h = Harness::new();
    h.client(b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n2;a b\r\nhi\r\n0\r\n\r\n");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        h.take_actions(),
        vec![
            connect_action(false),
            Action::ReleaseUpstream { reusable: false },
            Action::Completed { status: 400 },
            Action::ShutdownClientWrite
        ]
    );
    assert!(h.to_upstream.is_empty());
}

#[test]
fn chunk_extensions_are_never_forwarded() {
    let mut h = chunked_then(b"", b"3;a=b;c=\"d e\"\r\nabc\r\n0;z\r\nX-T: 1\r\n\r\n");
    let up = h.take_upstream();
    assert!(
        up.ends_with("\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
        "{up:?}"
    );
}

#[test]
fn bare_lf_in_chunked_framing_is_400_at_once() {
    for (first, bad) in [
        // After the last chunk.
        (&b"2\r\nhi\r\n0\r\n"[..], &b"\n"[..]),
        (b"2\r\nhi\r\n", b"0\r\n\n"),
        // Ending the trailer section, or a trailer line.
        (b"2\r\nhi\r\n0\r\nX-T: 1\r\n", b"\n"),
        (b"2\r\nhi\r\n0\r\n", b"X-T: 1\n"),
        // Ending the last chunk's size line.
        (b"2\r\nhi\r\n", b"0\n"),
    ] {
        let mut h = chunked_then(first, bad);
        assert_rejected_and_upstream_dropped(&mut h);
        assert!(h.conn.deadline().is_some());
    }
}

#[test]
fn malformed_upstream_chunk_is_502_while_the_head_has_not_left() {
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.take_actions();
    h.upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n2\r\nhi\r\n3;a=b c\r\nabc\r\n0\r\n\r\n");
    let out = h.take_client();
    assert!(out.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{out}");
    assert!(!out.contains("X-A") && !out.contains("hi"), "{out}");
    let actions = h.take_actions();
    assert_eq!(actions[0], Action::ReleaseUpstream { reusable: false });
    assert!(actions.contains(&Action::Completed { status: 502 }));
    assert!(
        h.conn.is_idle(),
        "the client's stream is intact: keep-alive"
    );

    // Once the head is out, the client connection can only be cut.
    let mut h = Harness::new();
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert!(h.take_client().starts_with("HTTP/1.1 200"));
    h.take_actions();
    h.upstream(b"0\r\n\n");
    assert!(h.to_client.is_empty());
    let actions = h.take_actions();
    assert!(actions.contains(&Action::ReleaseUpstream { reusable: false }));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Completed { .. }))
    );
}

/// `postpone_output` in the machine alone: the engine is told of a hold once, with the time it
/// runs out, and releases it with `hold_expired` at that time (not before); a piece that follows
/// a hold that ran out is not held again, and the next response is held afresh.
#[test]
fn small_output_is_held_until_the_rest_comes_or_its_time_runs_out() {
    use sluice::core::conn::POSTPONE_BOUND;
    let mut h = Harness::with_config(ConnConfig {
        postpone_output: 1460,
        ..ConnConfig::default()
    });
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.take_upstream();
    let start = h.now;
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(h.take_client(), "", "the head waits");
    assert!(h.conn.holding());
    assert_eq!(h.conn.new_hold(), Some(start + POSTPONE_BOUND));
    assert_eq!(h.conn.new_hold(), None, "told once");
    h.upstream(b"hello");
    assert_eq!(h.take_client(), "", "head and half the body still wait");
    assert!(!h.conn.hold_expired(start + POSTPONE_BOUND / 2));
    assert!(h.conn.hold_expired(start + POSTPONE_BOUND));
    h.pump();
    assert!(h.take_client().ends_with("\r\n\r\nhello"));
    h.upstream(b"world");
    assert_eq!(h.take_client(), "world", "the rest streams unheld");
    assert!(!h.conn.holding());
    // The next response on the connection: head and body in one piece of output.
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(true);
    h.take_upstream();
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(h.take_client(), "");
    assert!(h.conn.new_hold().is_some(), "a new hold");
    h.upstream(b"again");
    assert!(h.take_client().ends_with("\r\n\r\nagain"));
    assert!(!h.conn.holding());
}

/// A body that fails to frame while its head is still held becomes a 502: nothing of the bad
/// response has reached the client.
#[test]
fn a_held_head_whose_body_breaks_becomes_a_502() {
    let mut h = Harness::with_config(ConnConfig {
        postpone_output: 1460,
        ..ConnConfig::default()
    });
    h.client(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.take_upstream();
    h.upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: 1\r\n\r\n");
    assert_eq!(h.take_client(), "");
    h.upstream(b"zz\r\n");
    let answer = h.take_client();
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    assert!(!answer.contains("X-App"), "{answer}");
}

/// A Content-Length body the engine can move peer to peer: offered once the head and what
/// came with it are written, counted as written by `passed`, and the exchange completes
/// (upstream reusable, access-log bytes include the passed ones) when the last byte moved.
#[test]
fn the_rest_of_a_content_length_body_can_pass_peer_to_peer_and_completes_the_exchange() {
    let mut h = Harness::new();
    h.client(b"GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.take_actions();
    assert_eq!(h.conn.passable(), None, "no response yet");
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
    assert!(h.take_client().ends_with("\r\n\r\n0123456789"));
    assert_eq!(h.conn.passable(), Some(990));
    assert!(h.conn.pass_ready(), "all received is written");
    h.conn.passed(400, h.now, &mut h.router);
    h.pump();
    assert_eq!(h.conn.passable(), Some(590));
    assert!(h.take_actions().is_empty(), "not complete yet");
    h.conn.passed(590, h.now, &mut h.router);
    h.pump();
    assert_eq!(h.conn.passable(), None);
    assert_eq!(
        h.take_actions(),
        vec![
            Action::ReleaseUpstream { reusable: true },
            Action::Completed { status: 200 }
        ]
    );
    assert!(h.conn.request_record().bytes_out >= 1000);
    // The 41-byte head and the whole body.
    assert_eq!(h.conn.request_record().upstream_bytes, 41 + 1000);
    assert!(h.conn.is_idle());
}

/// Bytes received and not yet written make a passable body wait; a chunked body, whose
/// framing the machine checks, is never offered.
#[test]
fn a_body_passes_only_once_what_came_before_is_written_and_never_when_chunked() {
    let mut h = Harness::new();
    h.client_writable = false;
    h.client(b"GET /big HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nabc");
    assert_eq!(h.conn.passable(), Some(99_997));
    assert!(!h.conn.pass_ready(), "the head is not written yet");
    h.client_writable = true;
    h.pump();
    assert!(h.conn.pass_ready());

    let mut h = Harness::new();
    h.client(b"GET /c HTTP/1.1\r\nHost: example.com\r\n\r\n");
    h.connected(false);
    h.upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    assert_eq!(h.conn.passable(), None);
}
