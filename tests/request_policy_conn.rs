//! The request-policy hook of the connection machine, driven in memory (no sockets): bytes
//! in, actions and bytes out, with a router that hands every request the same policy.

use std::sync::Arc;

use sluice::core::conn::{Action, ClientInfo, Conn, ConnConfig};
use sluice::core::route::request_policy::{
    CORS_HEADERS, CORS_MAX_AGE, CORS_METHODS, CidrSet, Cors, PathRegex, Redirect, RequestPolicy,
};
use sluice::core::route::{BackendId, RouteDecision, RoutePolicy, Router};
use sluice::core::time::Instant;

const UPSTREAM: &str = "10.0.0.7:8080";

/// Every path under `/empty` has no endpoints; everything else goes to `UPSTREAM`; all with
/// `policy`.
struct OneRoute {
    policy: Arc<RoutePolicy>,
}

impl Router for OneRoute {
    fn route(&mut self, _host: &str, path: &str) -> RouteDecision {
        if path.starts_with("/empty") {
            return RouteDecision::NoEndpoints;
        }
        RouteDecision::Forward {
            backend: BackendId(0),
            endpoint: UPSTREAM.parse().unwrap(),
            policy: Some(self.policy.clone()),
        }
    }

    fn policy_of(&mut self, _host: &str, _path: &str) -> Option<Arc<RoutePolicy>> {
        Some(self.policy.clone())
    }
}

struct Run {
    conn: Conn,
    router: OneRoute,
    now: Instant,
    to_client: Vec<u8>,
    to_upstream: Vec<u8>,
    actions: Vec<Action>,
}

impl Run {
    fn new(request: RequestPolicy) -> Run {
        let info = ClientInfo {
            peer: "192.0.2.10:50000".parse().unwrap(),
            local: "192.0.2.1:80".parse().unwrap(),
        };
        let now = Instant::from_millis(1_000);
        Run {
            conn: Conn::new(info, Arc::new(ConnConfig::default()), now),
            router: OneRoute {
                policy: Arc::new(RoutePolicy {
                    request: Some(Arc::new(request)),
                    ..RoutePolicy::default()
                }),
            },
            now,
            to_client: Vec::new(),
            to_upstream: Vec::new(),
            actions: Vec::new(),
        }
    }

    fn pump(&mut self) {
        loop {
            while let Some(a) = self.conn.poll_action() {
                self.actions.push(a);
            }
            let mut moved = false;
            if let Some(buf) = self.conn.take_client_output() {
                let n = buf.len();
                self.to_client.extend_from_slice(&buf);
                self.conn.client_sent(buf, n, self.now, &mut self.router);
                moved = true;
            }
            if let Some(buf) = self.conn.take_upstream_output() {
                let n = buf.len();
                self.to_upstream.extend_from_slice(&buf);
                self.conn.upstream_sent(buf, n, self.now, &mut self.router);
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }

    fn client(&mut self, bytes: &str) -> String {
        self.conn
            .client_data(bytes.as_bytes(), self.now, &mut self.router);
        self.pump();
        String::from_utf8(std::mem::take(&mut self.to_client)).unwrap()
    }

    fn upstream(&mut self, bytes: &str) -> String {
        self.conn
            .upstream_connected(self.now, false, &mut self.router);
        self.pump();
        self.conn
            .upstream_data(bytes.as_bytes(), self.now, &mut self.router);
        self.pump();
        String::from_utf8(std::mem::take(&mut self.to_client)).unwrap()
    }

    fn sent_upstream(&mut self) -> String {
        self.conn
            .upstream_connected(self.now, false, &mut self.router);
        self.pump();
        String::from_utf8(std::mem::take(&mut self.to_upstream)).unwrap()
    }

    fn connected(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, Action::Connect { .. }))
    }
}

#[test]
fn a_redirect_is_answered_without_an_upstream_even_with_no_endpoints() {
    let mut run = Run::new(RequestPolicy {
        redirect: Some(Redirect {
            code: 308,
            url: "https://new.example/".into(),
        }),
        ..RequestPolicy::default()
    });
    let out = run.client("GET /empty/x HTTP/1.1\r\nHost: old.example\r\n\r\n");
    assert!(
        out.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\nLocation: https://new.example/\r\n"),
        "{out}"
    );
    assert!(!run.connected());
    assert!(run.actions.contains(&Action::Completed { status: 308 }));
    // The connection stays open for the next request.
    let out = run.client("GET /x HTTP/1.1\r\nHost: old.example\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
}

#[test]
fn a_denied_client_gets_403_and_an_allowed_one_is_forwarded_rewritten() {
    let nets = ["192.0.2.0/24".parse().unwrap()];
    let mut run = Run::new(RequestPolicy {
        deny: Some(CidrSet::new(&nets)),
        ..RequestPolicy::default()
    });
    let out = run.client("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{out}");
    assert!(!run.connected());

    let mut run = Run::new(RequestPolicy {
        allow: Some(CidrSet::new(&nets)),
        rewrite_target: Some("/v2/$1".into()),
        path_regex: Some(PathRegex::compile("/api/(.*)").unwrap()),
        forwarded_prefix: Some("/api".into()),
        ..RequestPolicy::default()
    });
    run.client("GET /API/users?id=7 HTTP/1.1\r\nHost: a\r\nX-Forwarded-Prefix: x\r\n\r\n");
    assert!(run.connected());
    let up = run.sent_upstream();
    assert!(up.starts_with("GET /v2/users?id=7 HTTP/1.1\r\n"), "{up}");
    assert!(up.contains("\r\nX-Forwarded-Prefix: /api\r\n"), "{up}");
    assert!(!up.contains("X-Forwarded-Prefix: x"), "{up}");
}

#[test]
fn cors_preflight_is_local_and_responses_get_the_fields() {
    let cors = Cors::new(None, CORS_METHODS, CORS_HEADERS, true, None, CORS_MAX_AGE);
    let mut run = Run::new(RequestPolicy {
        cors: Some(cors),
        ..RequestPolicy::default()
    });
    let out = run.client(
        "OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: https://b\r\nAccess-Control-Request-Method: PUT\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 204 No Content\r\n"), "{out}");
    assert!(
        out.contains("\r\nAccess-Control-Allow-Origin: *\r\n"),
        "{out}"
    );
    assert!(out.contains("\r\nContent-Length: 0\r\n"), "{out}");
    assert!(!run.connected());

    run.client("GET /x HTTP/1.1\r\nHost: a\r\nOrigin: https://b\r\n\r\n");
    let out = run.upstream(
        "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: https://upstream\r\nContent-Length: 2\r\n\r\nok",
    );
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert_eq!(
        out.matches("Access-Control-Allow-Origin").count(),
        1,
        "{out}"
    );
    assert!(
        out.contains("\r\nAccess-Control-Allow-Origin: *\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\nAccess-Control-Max-Age: 1728000\r\n\r\nok"),
        "{out}"
    );
}

/// `limit-connections`: two connections of one client, one route; the unit is held while
/// the first request is in flight and given back when its response is done. A limit
/// answer keeps the connection (and uses the configured status), and a redirect comes
/// before the limits (nginx's rewrite phase precedes limit_conn's preaccess phase).
#[test]
fn limit_connections_holds_a_unit_per_request_in_flight() {
    use sluice::core::route::rate_limit::RateLimits;
    let limits = RateLimits::new(None, None, Some(1), 5, None).unwrap();
    let policy = RequestPolicy {
        limits: Some(limits),
        ..RequestPolicy::default()
    };
    let mut a = Run::new(policy.clone());
    let mut b = Run::new(policy);
    // b shares a's route (one policy, one table of counters), with a 429 config.
    b.router.policy = a.router.policy.clone();
    b.conn = Conn::new(
        ClientInfo {
            peer: "192.0.2.10:50001".parse().unwrap(),
            local: "192.0.2.1:80".parse().unwrap(),
        },
        Arc::new(ConnConfig {
            limit_status: 429,
            ..ConnConfig::default()
        }),
        b.now,
    );
    a.client("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(a.connected());
    let out = b.client("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(
        out.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{out}"
    );
    assert!(!b.connected());
    assert!(b.actions.contains(&Action::Completed { status: 429 }));
    let out = a.upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    // a's request is over: b's next request (same connection) passes.
    b.client("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(b.connected());

    // A redirect is answered before any limit is looked at.
    use sluice::core::route::rate_limit::Rate;
    let mut r = Run::new(RequestPolicy {
        redirect: Some(Redirect {
            code: 302,
            url: "https://elsewhere.example/".into(),
        }),
        limits: RateLimits::new(None, Some(Rate::per_minute(1)), None, 1, None),
        ..RequestPolicy::default()
    });
    for _ in 0..5 {
        let out = r.client("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 302"), "{out}");
    }
}

// limit-rate / limit-rate-after (ingress-nginx's nginx `limit_rate` budget): the machine hands
// the engine no more response bytes than `after + rate × elapsed`, and says when to come back
// through its deadline, which the engine turns into a timer; a timer that only paces changes
// nothing else. Time is injected: the test steps it from deadline to deadline.
#[test]
fn limit_rate_paces_the_response_by_the_injected_clock() {
    use sluice::core::route::bandwidth::LimitRate;
    let mut run = Run::new(RequestPolicy {
        limit_rate: Some(LimitRate {
            bytes_per_sec: 10_000,
            after: 2_000,
        }),
        ..RequestPolicy::default()
    });
    run.client("GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    run.sent_upstream();
    let body = "x".repeat(12_000);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    let start = run.now;
    let first = run.upstream(&format!("{head}{body}"));
    // At once: the `after` budget only.
    assert_eq!(first.len(), 2_000, "{first}");
    let mut all = first.clone();
    let mut steps = 0;
    while !run.conn.is_idle() {
        let at = run.conn.deadline().expect("a wake-up while output waits");
        assert!(at > run.now, "a deadline in the past");
        run.now = at;
        run.conn.timer(run.now, &mut run.router);
        run.pump();
        let more = std::mem::take(&mut run.to_client);
        assert!(!more.is_empty(), "woken for nothing at {at:?}");
        all.push_str(std::str::from_utf8(&more).unwrap());
        let elapsed = run.now.saturating_since(start).as_secs_f64();
        // Never over the budget.
        assert!(
            all.len() as f64 <= 2_000.0 + 10_000.0 * elapsed + 1.0,
            "{} at {elapsed}",
            all.len()
        );
        steps += 1;
        assert!(steps < 1_000);
    }
    let (client_head, client_body) = all.split_once("\r\n\r\n").unwrap();
    assert!(
        client_head.starts_with("HTTP/1.1 200 OK\r\n"),
        "{client_head}"
    );
    assert_eq!(client_body, body);
    // The rest (10,000 + head bytes) at 10,000 B/s: about a second, in ~20 sends.
    let took = run.now.saturating_since(start).as_secs_f64();
    assert!((1.0..1.1).contains(&took), "{took}");
    assert!((15..=25).contains(&steps), "{steps}");
    assert!(
        run.actions
            .iter()
            .any(|a| matches!(a, Action::Completed { status: 200 }))
    );
    // The next request on the connection starts unpaced until its own response.
    run.client("GET /again HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(run.conn.deadline().is_some());
}
