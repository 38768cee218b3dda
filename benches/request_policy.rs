//! Per-request cost of the connection machine (`src/core/conn.rs`, driven in memory, as
//! `tests/request_policy_conn.rs` does) on one keep-alive connection: a plain route vs a
//! route with a request policy — a regex rewrite, a 1,000-entry allowlist, basic auth with a
//! `{SHA}` hash, CORS, a rate limit — and, separately, basic auth with a bcrypt hash (slow
//! by design: its cost is the hash's cost factor). One iteration = request head in, routed,
//! head written upstream, response in, response written to the client.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::IpNet;
use sluice::core::conn::{Action, ClientInfo, Conn, ConnConfig};
use sluice::core::route::basic_auth::{BasicAuth, PasswordHash};
use sluice::core::route::rate_limit::{Rate, RateLimits};
use sluice::core::route::request_policy::{
    CORS_HEADERS, CORS_MAX_AGE, CORS_METHODS, CidrSet, Cors, PathRegex, RequestPolicy,
};
use sluice::core::route::{BackendId, RouteDecision, RoutePolicy, Router};
use sluice::core::time::Instant;

const CLIENT: &str = "192.0.2.10:50000";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Every request goes to one endpoint with `policy`.
struct OneRoute {
    policy: Option<Arc<RoutePolicy>>,
    endpoint: std::net::SocketAddr,
}

impl Router for OneRoute {
    fn route(&mut self, _host: &str, _path: &str) -> RouteDecision {
        RouteDecision::Forward {
            backend: BackendId(0),
            endpoint: self.endpoint,
            policy: self.policy.clone(),
        }
    }
}

struct Machine {
    conn: Conn,
    router: OneRoute,
    now: Instant,
    written: usize,
    last_output: Vec<u8>,
}

impl Machine {
    fn new(request: Option<RequestPolicy>) -> Machine {
        let info = ClientInfo {
            peer: CLIENT.parse().unwrap(),
            local: "192.0.2.1:80".parse().unwrap(),
        };
        let now = Instant::from_millis(1_000);
        Machine {
            conn: Conn::new(info, Arc::new(ConnConfig::default()), now),
            router: OneRoute {
                policy: request.map(|r| {
                    Arc::new(RoutePolicy {
                        request: Some(Arc::new(r)),
                        ..RoutePolicy::default()
                    })
                }),
                endpoint: "10.0.0.7:8080".parse().unwrap(),
            },
            now,
            written: 0,
            last_output: Vec::new(),
        }
    }

    fn drain(&mut self) {
        loop {
            let mut moved = false;
            while let Some(action) = self.conn.poll_action() {
                if let Action::Connect { .. } = action {
                    self.conn
                        .upstream_connected(self.now, true, &mut self.router);
                    moved = true;
                }
            }
            if let Some(buf) = self.conn.take_client_output() {
                let n = buf.len();
                self.written += n;
                self.last_output.clear();
                self.last_output.extend_from_slice(&buf);
                self.conn.client_sent(buf, n, self.now, &mut self.router);
                moved = true;
            }
            if let Some(buf) = self.conn.take_upstream_output() {
                let n = buf.len();
                self.conn.upstream_sent(buf, n, self.now, &mut self.router);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    /// One exchange; time moves 10 µs per request (so a rate limit of 1,000,000 per second
    /// never refuses).
    fn exchange(&mut self, request: &[u8]) {
        self.now = self.now + Duration::from_micros(10);
        self.conn.client_data(request, self.now, &mut self.router);
        self.drain();
        self.conn
            .upstream_data(RESPONSE, self.now, &mut self.router);
        self.drain();
    }
}

fn allowlist() -> CidrSet {
    // 1,000 disjoint /24s (every other one, so none merge), the client's among them.
    let mut nets: Vec<IpNet> = (0..999u32)
        .map(|i| {
            format!("10.{}.{}.0/24", i / 128, (i % 128) * 2)
                .parse()
                .unwrap()
        })
        .collect();
    nets.push("192.0.2.0/24".parse().unwrap());
    let set = CidrSet::new(&nets);
    assert_eq!(set.len(), 1_000);
    assert!(set.contains(CLIENT.parse::<std::net::SocketAddr>().unwrap().ip()));
    set
}

fn basic_auth(hash: &str) -> BasicAuth {
    BasicAuth {
        realm: "bench".into(),
        users: Some(vec![("user".into(), PasswordHash::parse(hash).unwrap())]),
    }
}

const GET: &[u8] = b"GET /api/v1/users?page=2 HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n";
// user:secret
const GET_AUTH: &[u8] = b"GET /api/v1/users?page=2 HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\nAuthorization: Basic dXNlcjpzZWNyZXQ=\r\n\r\n";
const GET_ORIGIN: &[u8] = b"GET /api/v1/users?page=2 HTTP/1.1\r\nHost: app.example.com\r\nUser-Agent: bench\r\nAccept: */*\r\nOrigin: https://web.example.com\r\n\r\n";

fn cases() -> Vec<(&'static str, Option<RequestPolicy>, &'static [u8])> {
    let client: IpAddr = CLIENT.parse::<std::net::SocketAddr>().unwrap().ip();
    let limits = RateLimits::new(Some(Rate::per_second(1_000_000)), None, None, 5, None).unwrap();
    assert!(limits.admit(client, Instant::from_millis(1)).is_ok());
    vec![
        ("plain", None, GET),
        (
            "regex-rewrite",
            Some(RequestPolicy {
                use_regex: true,
                rewrite_target: Some("/v2/$1".into()),
                path_regex: Some(PathRegex::compile("/api/v1/(.*)").unwrap()),
                ..RequestPolicy::default()
            }),
            GET,
        ),
        (
            "allowlist-1000",
            Some(RequestPolicy {
                allow: Some(allowlist()),
                ..RequestPolicy::default()
            }),
            GET,
        ),
        (
            "basic-auth-sha",
            Some(RequestPolicy {
                auth: Some(basic_auth("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=")),
                ..RequestPolicy::default()
            }),
            GET_AUTH,
        ),
        (
            "cors",
            Some(RequestPolicy {
                cors: Some(Cors::new(
                    None,
                    CORS_METHODS,
                    CORS_HEADERS,
                    true,
                    None,
                    CORS_MAX_AGE,
                )),
                ..RequestPolicy::default()
            }),
            GET_ORIGIN,
        ),
        (
            "limit-rps",
            Some(RequestPolicy {
                limits: Some(limits),
                ..RequestPolicy::default()
            }),
            GET,
        ),
    ]
}

fn bench_policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_policy");
    for (name, policy, request) in cases() {
        let mut m = Machine::new(policy);
        m.exchange(request);
        assert!(
            m.last_output.starts_with(b"HTTP/1.1 200"),
            "{name}: {}",
            String::from_utf8_lossy(&m.last_output)
        );
        group.bench_function(name, |b| {
            b.iter(|| m.exchange(black_box(request)));
        });
        assert!(m.last_output.starts_with(b"HTTP/1.1 200"), "{name}");
    }
    group.finish();
}

/// bcrypt at cost 5 (htpasswd -B uses 5 by default; 10 or more is common and 32 times
/// slower): the hash's cost, by design, dominates the request.
fn bench_bcrypt(c: &mut Criterion) {
    let hash = bcrypt::hash("secret", 5).unwrap();
    let mut m = Machine::new(Some(RequestPolicy {
        auth: Some(basic_auth(&hash)),
        ..RequestPolicy::default()
    }));
    m.exchange(GET_AUTH);
    assert!(m.last_output.starts_with(b"HTTP/1.1 200"));
    let mut group = c.benchmark_group("request_policy_bcrypt");
    group.sample_size(10);
    group.bench_function("basic-auth-bcrypt-cost5", |b| {
        b.iter(|| m.exchange(black_box(GET_AUTH)));
    });
    group.finish();
}

criterion_group!(benches, bench_policies, bench_bcrypt);
criterion_main!(benches);
