//! Custom errors in the connection machine, in memory (no sockets): when an upstream answer
//! is replaced by the error backend's, and when it is not (nothing of it may have reached the
//! client, the whole request must have been sent, the error backend's own answer passes).

use std::net::SocketAddr;
use std::sync::Arc;

use sluice::core::conn::{Action, ClientInfo, Conn, ConnConfig};
use sluice::core::route::custom_errors::CustomErrors;
use sluice::core::route::request_policy::RequestPolicy;
use sluice::core::route::{BackendId, RouteDecision, RoutePolicy, Router};
use sluice::core::time::Instant;

const APP: &str = "10.0.0.7:8080";
const ERRORS: &str = "10.0.0.9:8080";
const ERROR_BACKEND: BackendId = BackendId(5);

/// Every request goes to backend 0 (`APP`, `shop/app:80`) of Ingress `shop/web`; backend 5
/// (the error backend) has one endpoint, `ERRORS`.
struct Routes {
    policy: Arc<RoutePolicy>,
}

impl Router for Routes {
    fn route(&mut self, _host: &str, _path: &str) -> RouteDecision {
        RouteDecision::Forward {
            backend: BackendId(0),
            endpoint: APP.parse().unwrap(),
            policy: Some(self.policy.clone()),
        }
    }

    fn retry_pick(
        &mut self,
        backend: BackendId,
        tried: &[SocketAddr],
        _now: Instant,
    ) -> Option<SocketAddr> {
        let ep: SocketAddr = ERRORS.parse().unwrap();
        (backend == ERROR_BACKEND && !tried.contains(&ep)).then_some(ep)
    }

    fn backend_name(&self, backend: BackendId) -> Option<&str> {
        (backend == BackendId(0)).then_some("shop/app:80")
    }

    fn routed_ingress(&self) -> Option<&str> {
        Some("shop/web")
    }
}

struct Run {
    conn: Conn,
    router: Routes,
    now: Instant,
    to_client: Vec<u8>,
    to_upstream: Vec<u8>,
    actions: Vec<Action>,
}

impl Run {
    fn new(codes: &[u16]) -> Run {
        let info = ClientInfo {
            peer: "192.0.2.10:50000".parse().unwrap(),
            local: "192.0.2.1:80".parse().unwrap(),
        };
        let request = RequestPolicy {
            errors: Some(CustomErrors {
                codes: codes.to_vec(),
                backend: Some(ERROR_BACKEND),
                ..CustomErrors::default()
            }),
            ..RequestPolicy::default()
        };
        let now = Instant::from_millis(1_000);
        Run {
            conn: Conn::new(info, Arc::new(ConnConfig::default()), now),
            router: Routes {
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

    fn client(&mut self, bytes: &str) {
        self.conn
            .client_data(bytes.as_bytes(), self.now, &mut self.router);
        self.pump();
    }

    fn connected(&mut self) -> String {
        self.conn
            .upstream_connected(self.now, false, &mut self.router);
        self.pump();
        String::from_utf8(std::mem::take(&mut self.to_upstream)).unwrap()
    }

    fn upstream(&mut self, bytes: &str) -> String {
        self.conn
            .upstream_data(bytes.as_bytes(), self.now, &mut self.router);
        self.pump();
        String::from_utf8(std::mem::take(&mut self.to_client)).unwrap()
    }

    fn connects(&self) -> Vec<SocketAddr> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Connect { endpoint, .. } => Some(*endpoint),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_listed_status_is_replaced_by_the_error_backends_answer() {
    let mut run = Run::new(&[404]);
    run.client("GET /a/b?c=d HTTP/1.1\r\nHost: shop.example\r\nAccept: text/html\r\n\r\n");
    let up = run.connected();
    assert!(up.starts_with("GET /a/b?c=d HTTP/1.1\r\n"), "{up}");
    // The application's 404: nothing reaches the client; the error request goes out.
    let out = run.upstream("HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(out, "");
    assert_eq!(
        run.connects(),
        [APP.parse().unwrap(), ERRORS.parse().unwrap()]
    );
    assert!(
        run.actions
            .contains(&Action::ReleaseUpstream { reusable: false })
    );
    let err = run.connected();
    assert!(
        err.starts_with("GET / HTTP/1.1\r\nHost: shop.example\r\n"),
        "{err}"
    );
    for field in [
        "X-Format: text/html",
        "X-Original-URI: /a/b?c=d",
        "X-Namespace: shop",
        "X-Ingress-Name: web",
        "X-Service-Name: app",
        "X-Service-Port: 80",
        "X-Code: 404",
    ] {
        assert!(err.contains(&format!("\r\n{field}\r\n")), "{field}: {err}");
    }
    // The error backend's answer passes as it is, even with a listed status.
    let out = run.upstream("HTTP/1.1 404 Custom\r\nContent-Length: 4\r\n\r\npage");
    assert!(out.starts_with("HTTP/1.1 404 Custom\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\npage"), "{out}");
    assert!(
        run.actions
            .iter()
            .any(|a| matches!(a, Action::Completed { status: 404 }))
    );
    assert_eq!(run.connects().len(), 2);
    // The next request on the connection is intercepted again.
    run.client("GET /next HTTP/1.1\r\nHost: shop.example\r\n\r\n");
    run.connected();
    run.upstream("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(run.connects().len(), 4);
}

#[test]
fn other_statuses_and_answers_before_the_whole_request_pass() {
    let mut run = Run::new(&[404]);
    run.client("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    run.connected();
    let out = run.upstream("HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nno");
    assert!(out.starts_with("HTTP/1.1 500 Oops\r\n"), "{out}");
    assert_eq!(run.connects().len(), 1);

    // The answer comes while the request body is still arriving: it passes.
    let mut run = Run::new(&[404]);
    run.client("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello");
    run.connected();
    let out = run.upstream("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
    assert_eq!(run.connects().len(), 1);

    // Interim answers are not error statuses.
    let mut run = Run::new(&[404]);
    run.client("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    run.connected();
    let out = run
        .upstream("HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert_eq!(run.connects().len(), 1);
}

#[test]
fn a_failed_connect_goes_to_the_error_backend_when_502_is_listed() {
    let mut run = Run::new(&[502]);
    run.client("GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    run.conn.upstream_connect_failed(run.now, &mut run.router);
    run.pump();
    assert_eq!(
        run.connects(),
        [APP.parse().unwrap(), ERRORS.parse().unwrap()]
    );
    let err = run.connected();
    assert!(err.contains("\r\nX-Code: 502\r\n"), "{err}");
    let out = run.upstream("HTTP/1.1 502 Sorry\r\nContent-Length: 0\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 502 Sorry\r\n"), "{out}");
}
