//! Parking: an idle keep-alive connection gives its machine (and buffers) away and keeps only
//! a `Parked`; woken on another connection's spare machine, it carries on exactly as a
//! machine that was never parked (same deadlines, same request-id sequence), and nothing of
//! the spare's previous connection shows through. In memory, with an injected clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice::core::conn::{Action, ClientInfo, Conn, ConnConfig, Parked};
use sluice::core::route::{BackendId, RouteDecision, Router};
use sluice::core::time::Instant;

const UPSTREAM: &str = "10.0.0.7:8080";

/// Every request goes to one endpoint.
struct OneEndpoint;

impl Router for OneEndpoint {
    fn route(&mut self, _host: &str, _path: &str) -> RouteDecision {
        RouteDecision::Forward {
            backend: BackendId(0),
            endpoint: UPSTREAM.parse().unwrap(),
            policy: None,
        }
    }
}

fn info(peer: &str) -> ClientInfo {
    ClientInfo {
        peer: peer.parse().unwrap(),
        local: "192.0.2.1:80".parse().unwrap(),
    }
}

fn config() -> Arc<ConnConfig> {
    Arc::new(ConnConfig {
        request_id_seed: Some(7),
        record_requests: true,
        ..ConnConfig::default()
    })
}

/// One exchange on `conn`, everything written at once; returns what went upstream and what
/// came back to the client.
fn exchange(conn: &mut Conn, request: &str, now: Instant) -> (String, String) {
    let r = &mut OneEndpoint;
    conn.client_data(request.as_bytes(), now, r);
    let mut actions = Vec::new();
    while let Some(a) = conn.poll_action() {
        actions.push(a);
    }
    assert!(
        matches!(actions[..], [Action::Connect { .. }]),
        "{actions:?}"
    );
    conn.upstream_connected(now, false, r);
    let up = conn
        .take_upstream_output()
        .expect("the request goes upstream");
    let upstream = String::from_utf8(up.clone()).unwrap();
    conn.upstream_sent(up, upstream.len(), now, r);
    conn.upstream_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", now, r);
    let out = conn.take_client_output().expect("a response");
    let client = String::from_utf8(out.clone()).unwrap();
    conn.client_sent(out, client.len(), now, r);
    while conn.poll_action().is_some() {}
    (upstream, client)
}

fn request_id(upstream_head: &str) -> &str {
    upstream_head
        .lines()
        .find_map(|l| l.strip_prefix("X-Request-ID: "))
        .expect("an X-Request-ID")
}

const GET: &str = "GET /x HTTP/1.1\r\nHost: app.test\r\n\r\n";

#[test]
fn a_parked_connection_wakes_on_a_spare_machine_and_carries_on_as_if_never_parked() {
    let start = Instant::from_millis(1_000);
    let peer = "192.0.2.10:50000";
    // The control: the same connection, never parked.
    let mut control = Conn::new(info(peer), config(), start);
    let mut parked = Parked::new(info(peer), config(), start);
    let mut conn = parked.wake(None);

    let (up1, resp1) = exchange(&mut conn, GET, start);
    let (ctl1, _) = exchange(&mut control, GET, start);
    assert_eq!(up1, ctl1);
    assert!(resp1.ends_with("\r\n\r\nok"), "{resp1}");
    assert!(conn.park(&mut parked), "idle after a complete exchange");
    assert_eq!(
        parked.deadline().saturating_since(start),
        Duration::from_secs(60),
        "the keep-alive timeout runs from when it went idle"
    );
    assert_eq!(Some(parked.deadline()), control.deadline());

    // Another connection used the machine meanwhile and closed.
    let mut other = Parked::new(info("198.51.100.5:40000"), config(), start).wake(Some(conn));
    exchange(
        &mut other,
        "GET /other HTTP/1.1\r\nHost: secret.test\r\n\r\n",
        start,
    );
    other.retire();

    let later = start + Duration::from_secs(5);
    let mut conn = parked.wake(Some(other));
    assert_eq!(conn.peer_addr(), peer.parse::<SocketAddr>().unwrap());
    assert_eq!(
        conn.request_record().host,
        "",
        "nothing of the other connection"
    );
    let (up2, resp2) = exchange(&mut conn, GET, later);
    let (ctl2, _) = exchange(&mut control, GET, later);
    assert_eq!(up2, ctl2, "the second request goes out as without parking");
    assert_ne!(
        request_id(&up1),
        request_id(&up2),
        "the id sequence went on"
    );
    assert!(resp2.ends_with("\r\n\r\nok"), "{resp2}");
    assert_eq!(conn.request_record().path, "/x");
    assert_eq!(conn.request_record().host, "app.test");
}

#[test]
fn a_machine_with_anything_in_progress_does_not_park() {
    let now = Instant::from_millis(1_000);
    let r = &mut OneEndpoint;
    let mut parked = Parked::new(info("192.0.2.10:50000"), config(), now);
    let mut conn = parked.wake(None);
    assert_eq!(
        parked.deadline().saturating_since(now),
        Duration::from_secs(10),
        "a connection that never spoke: the request-head timeout"
    );

    conn.client_data(b"GET / HTTP/1.1\r\nHo", now, r);
    assert!(!conn.park(&mut parked), "half a head");
    conn.client_data(b"st: a\r\n\r\n", now, r);
    assert!(!conn.park(&mut parked), "an action waits");
    while conn.poll_action().is_some() {}
    assert!(!conn.park(&mut parked), "waiting for the upstream");
    conn.upstream_connected(now, false, r);
    let up = conn.take_upstream_output().unwrap();
    let n = up.len();
    conn.upstream_sent(up, n, now, r);
    conn.upstream_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", now, r);
    while conn.poll_action().is_some() {}
    let out = conn.take_client_output().unwrap();
    assert!(!conn.park(&mut parked), "the response is being written");
    let n = out.len();
    conn.client_sent(out, n, now, r);
    assert!(conn.park(&mut parked), "idle");

    // A client that half-closed is closing, not idle.
    let mut conn = parked.wake(Some(conn));
    conn.client_eof(now, r);
    assert!(!conn.park(&mut parked));
}

#[test]
fn a_proxy_protocol_source_set_while_parked_is_the_peer_once_woken() {
    let now = Instant::from_millis(1_000);
    let mut parked = Parked::new(info("192.0.2.10:50000"), config(), now);
    let source: SocketAddr = "203.0.113.9:1234".parse().unwrap();
    parked.set_proxied(source);
    assert_eq!(parked.peer_addr(), source);
    let mut conn = parked.wake(None);
    assert_eq!(conn.peer_addr(), source);
    assert_eq!(conn.client_addr(), source.ip());
    let (up, _) = exchange(&mut conn, GET, now);
    assert!(up.contains("X-Forwarded-For: 203.0.113.9\r\n"), "{up}");
}
