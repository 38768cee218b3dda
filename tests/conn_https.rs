//! The connection machine's HTTPS behaviour in memory (no sockets, no TLS): plain-HTTP
//! requests for TLS hosts are redirected with 308, and HTTPS answers carry HSTS. The same
//! machine serves both listeners; only its `ConnConfig` differs.

use std::net::SocketAddr;
use std::sync::Arc;

use sluice::core::conn::{Action, ClientInfo, Conn, ConnConfig, Scheme};
use sluice::core::route::{BackendId, RouteDecision, Router};
use sluice::core::time::Instant;

/// `secure.test` (and `*.wild.test`) redirect; everything routes to one endpoint except
/// `/missing` (404).
struct TlsRouter {
    routed: Vec<String>,
}

impl Router for TlsRouter {
    fn route(&mut self, host: &str, path: &str) -> RouteDecision {
        self.routed.push(format!("{host}{path}"));
        if path == "/missing" {
            return RouteDecision::NotFound;
        }
        RouteDecision::Forward {
            backend: BackendId(0),
            endpoint: "10.0.0.7:8080".parse().unwrap(),
            policy: None,
        }
    }

    fn redirect_https(&mut self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        host == "secure.test" || host.ends_with(".wild.test")
    }
}

fn conn(scheme: Scheme, hsts: Option<&str>, https_port: u16) -> Conn {
    let config = ConnConfig {
        scheme,
        hsts: hsts.map(Into::into),
        https_port,
        ..ConnConfig::default()
    };
    let info = ClientInfo {
        peer: "192.0.2.10:50000".parse::<SocketAddr>().unwrap(),
        local: "192.0.2.1:80".parse().unwrap(),
    };
    Conn::new(info, Arc::new(config), Instant::from_millis(1))
}

/// Feeds `request`; returns what the machine wrote to the client and its actions.
fn exchange(c: &mut Conn, router: &mut TlsRouter, request: &str) -> (String, Vec<Action>) {
    let now = Instant::from_millis(2);
    c.client_data(request.as_bytes(), now, router);
    let mut out = Vec::new();
    let mut actions = Vec::new();
    while let Some(a) = c.poll_action() {
        actions.push(a);
    }
    if let Some(buf) = c.take_client_output() {
        out.extend_from_slice(&buf);
        let n = buf.len();
        c.client_sent(buf, n, now, router);
    }
    while let Some(a) = c.poll_action() {
        actions.push(a);
    }
    (String::from_utf8(out).unwrap(), actions)
}

#[test]
fn plain_http_to_a_tls_host_is_a_308_to_https_with_path_and_query() {
    let mut r = TlsRouter { routed: Vec::new() };
    let mut c = conn(Scheme::Http, Some("max-age=1"), 8443);
    let (out, actions) = exchange(
        &mut c,
        &mut r,
        "GET /a/b?x=1 HTTP/1.1\r\nHost: Secure.Test:80\r\n\r\n",
    );
    assert!(
        out.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\nLocation: https://secure.test:8443/a/b?x=1\r\n"),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\n308 Permanent Redirect\n"), "{out}");
    assert!(
        !out.contains("Strict-Transport-Security"),
        "never over plain HTTP"
    );
    assert!(!out.contains("Connection: close"), "keep-alive: {out}");
    assert_eq!(actions, [Action::Completed { status: 308 }]);
    assert!(r.routed.is_empty(), "not routed, no upstream");
    // Same connection, next request: a wildcard host on port 443 (left out), HEAD.
    let mut c = conn(Scheme::Http, None, 443);
    let (out, _) = exchange(
        &mut c,
        &mut r,
        "HEAD / HTTP/1.1\r\nHost: a.wild.test\r\n\r\n",
    );
    assert!(
        out.contains("\r\nLocation: https://a.wild.test/\r\n"),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\n"), "HEAD: no body: {out}");
    // A request with a body is answered and the connection closes (the body is not read).
    let mut c = conn(Scheme::Http, None, 443);
    let (out, actions) = exchange(
        &mut c,
        &mut r,
        "POST /form HTTP/1.1\r\nHost: secure.test\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    assert!(out.contains("Connection: close\r\n"), "{out}");
    assert!(
        actions.contains(&Action::ShutdownClientWrite),
        "{actions:?}"
    );
}

#[test]
fn hosts_without_tls_and_strange_hosts_are_routed_not_redirected() {
    let mut r = TlsRouter { routed: Vec::new() };
    let mut c = conn(Scheme::Http, None, 443);
    let (_, actions) = exchange(&mut c, &mut r, "GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n");
    assert!(matches!(actions[0], Action::Connect { .. }), "{actions:?}");
    // The router says "redirect" but the host is not a plain DNS name: it would be copied
    // into Location, so the machine routes instead.
    let mut c = conn(Scheme::Http, None, 443);
    let (out, actions) = exchange(
        &mut c,
        &mut r,
        "GET / HTTP/1.1\r\nHost: a_b.wild.test\r\n\r\n",
    );
    assert!(!out.contains("Location"), "{out}");
    assert!(matches!(actions[0], Action::Connect { .. }), "{actions:?}");
    // What the head parser already refuses never gets that far (400, no Location).
    let mut c = conn(Scheme::Http, None, 443);
    let (out, _) = exchange(
        &mut c,
        &mut r,
        "GET / HTTP/1.1\r\nHost: evil.com@x.wild.test\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(!out.contains("Location"), "{out}");
}

#[test]
fn https_is_never_redirected_and_its_own_answers_carry_hsts() {
    let mut r = TlsRouter { routed: Vec::new() };
    let mut c = conn(
        Scheme::Https,
        Some("max-age=31536000; includeSubDomains"),
        443,
    );
    let (out, actions) = exchange(
        &mut c,
        &mut r,
        "GET /missing HTTP/1.1\r\nHost: secure.test\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
    assert!(
        out.contains(
            "\r\nStrict-Transport-Security: max-age=31536000; includeSubDomains\r\n\r\n404"
        ),
        "{out}"
    );
    assert_eq!(actions, [Action::Completed { status: 404 }]);
    // A routed request is forwarded (no redirect on the HTTPS listener).
    let (_, actions) = exchange(
        &mut c,
        &mut r,
        "GET / HTTP/1.1\r\nHost: secure.test\r\n\r\n",
    );
    assert!(matches!(actions[0], Action::Connect { .. }), "{actions:?}");
}
