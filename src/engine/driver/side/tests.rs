//! Side exchanges without a kernel: an in-memory transport that records what the driver asks
//! of it (and writes everything at once), typed events in.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::*;
use super::MAX_MIRRORS_IN_FLIGHT;
use crate::core::conn::{ClientInfo, ConnConfig};
use crate::core::route::ext_auth::{AuthTarget, ExtAuth, Template};
use crate::core::route::mirror::Mirror;
use crate::core::route::request_policy::RequestPolicy;
use crate::core::route::{Backend, BackendId, PathKind, RoutePolicy, RouteTableBuilder};

const POD: &str = "10.0.0.1:8080";
const AUTH: &str = "10.0.0.9:80";
const SHADOW: &str = "10.0.0.8:80";

#[derive(Default)]
struct MemNet {
    written: HashMap<usize, Vec<u8>>,
    connects: Vec<(SocketAddr, Owner)>,
    closed: Vec<usize>,
    next: usize,
}

impl Transport for MemNet {
    fn send(&mut self, sock: usize, buf: Vec<u8>) -> Sent {
        self.written
            .entry(sock)
            .or_default()
            .extend_from_slice(&buf);
        let written = buf.len();
        Sent::Done {
            buf,
            written,
            closed: false,
        }
    }
    fn set_read(&mut self, _sock: usize, _wanted: bool) {}
    fn connect(&mut self, endpoint: SocketAddr, owner: Owner) -> std::io::Result<usize> {
        self.connects.push((endpoint, owner));
        self.next += 1;
        Ok(1000 + self.next)
    }
    fn reusable(&mut self, _sock: usize) -> bool {
        true
    }
    fn shutdown_write(&mut self, _sock: usize) {}
    fn close(&mut self, sock: usize, _last: Option<&[u8]>) {
        self.closed.push(sock);
    }
    fn stop_accepting(&mut self) {}
}

impl MemNet {
    fn text(&self, sock: usize) -> String {
        String::from_utf8_lossy(self.written.get(&sock).map_or(&[][..], |v| v)).to_string()
    }
    /// The socket the driver got for the `i`th connect.
    fn sock(i: usize) -> usize {
        1001 + i
    }
}

fn driver(request: RequestPolicy) -> Driver {
    let policy = Arc::new(RoutePolicy {
        read_timeout: Some(Duration::from_secs(2)),
        request: Some(Arc::new(request)),
        ..RoutePolicy::default()
    });
    let mut routes = RouteTableBuilder::default();
    routes
        .add_tagged(
            Some("a.test"),
            "/",
            PathKind::Prefix,
            BackendId(0),
            Some(policy),
            None,
            0,
        )
        .unwrap();
    let backends = vec![Backend {
        name: "default/a:80".into(),
        endpoints: vec![POD.parse().unwrap()],
    }];
    crate::engine::driver::test_driver(
        ConnConfig::default(),
        Snapshot::new(1, routes.build(), backends),
    )
}

fn auth_policy() -> RequestPolicy {
    RequestPolicy {
        ext_auth: Some(Arc::new(ExtAuth {
            scope: "default/a".into(),
            target: Some(AuthTarget {
                endpoint: AUTH.parse().unwrap(),
                authority: "auth".into(),
                target: "/check".into(),
            }),
            method: None,
            response_headers: vec!["x-user".into()],
            request_redirect: None,
            signin: None,
            redirect_param: "rd".into(),
            cache: None,
        })),
        ..RequestPolicy::default()
    }
}

fn info(port: u16) -> ClientInfo {
    ClientInfo {
        peer: SocketAddr::new("192.0.2.1".parse().unwrap(), port),
        local: "192.0.2.2:80".parse().unwrap(),
    }
}

fn at(secs: u64) -> Instant {
    Instant::from_nanos(secs * 1_000_000_000)
}

#[test]
fn the_request_waits_for_the_auth_answer_then_goes_upstream_with_its_fields() {
    let mut d = driver(auth_policy());
    let mut net = MemNet::default();
    let now = at(1);
    let client = d.accept(1, info(1), false, now).unwrap();
    d.received(
        client,
        b"GET /x HTTP/1.1\r\nHost: a.test\r\nX-User: forged\r\n\r\n",
        now,
    );
    d.drive(&mut net, now);
    assert_eq!(net.connects.len(), 1, "only the auth service is asked");
    let (endpoint, side) = net.connects[0];
    assert_eq!(endpoint, AUTH.parse().unwrap());
    assert!(matches!(side, Owner::Side { .. }));
    d.connected(side, true, now);
    d.drive(&mut net, now);
    assert!(
        net.text(MemNet::sock(0))
            .starts_with("GET /check HTTP/1.1\r\nHost: auth\r\n")
    );
    d.received(
        side,
        b"HTTP/1.1 200 OK\r\nX-User: alice\r\nContent-Length: 0\r\n\r\n",
        now,
    );
    d.drive(&mut net, now);
    assert!(
        net.closed.contains(&MemNet::sock(0)),
        "the auth connection is closed"
    );
    assert_eq!(d.side_count(), 0);
    assert_eq!(net.connects.len(), 2, "then the pod");
    let (endpoint, upstream) = net.connects[1];
    assert_eq!(endpoint, POD.parse().unwrap());
    d.connected(upstream, true, now);
    d.drive(&mut net, now);
    let sent = net.text(MemNet::sock(1));
    assert!(
        sent.contains("X-User: alice\r\n") && !sent.contains("forged"),
        "{sent}"
    );
}

#[test]
fn a_timed_out_wait_answers_500_and_drops_the_auth_connection() {
    let mut d = driver(auth_policy());
    let mut net = MemNet::default();
    let client = d.accept(1, info(1), false, at(1)).unwrap();
    d.received(client, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", at(1));
    d.drive(&mut net, at(1));
    let (_, side) = net.connects[0];
    d.connected(side, true, at(1));
    d.drive(&mut net, at(1));
    assert_eq!(
        d.next_deadline(),
        Some(at(3)),
        "the route's proxy-read-timeout"
    );
    d.timers(&mut net, at(3));
    d.drive(&mut net, at(3));
    assert!(net.text(1).starts_with("HTTP/1.1 500 "), "{}", net.text(1));
    assert!(net.closed.contains(&MemNet::sock(0)));
    assert_eq!(d.side_count(), 0);
    // A late answer is ignored (its connection is gone).
    d.received(side, b"HTTP/1.1 200 OK\r\n\r\n", at(3));
    d.drive(&mut net, at(3));
    assert_eq!(net.connects.len(), 1, "nothing goes upstream");
}

#[test]
fn mirrors_in_flight_are_bounded_and_dropped_copies_counted() {
    let shadow = Mirror {
        endpoint: SHADOW.parse().unwrap(),
        authority: "shadow".into(),
        target: Template::parse("$request_uri", &["request_uri"]).unwrap(),
        host: None,
        request_body: true,
    };
    let mut d = driver(RequestPolicy {
        mirror: Some(Arc::new(shadow)),
        ..RequestPolicy::default()
    });
    let mut net = MemNet::default();
    let now = at(1);
    let n = MAX_MIRRORS_IN_FLIGHT + 3;
    for i in 0..n {
        let client = d.accept(i, info(1000 + i as u16), false, now).unwrap();
        d.received(client, b"GET /m HTTP/1.1\r\nHost: a.test\r\n\r\n", now);
        d.drive(&mut net, now);
    }
    let to_shadow = net
        .connects
        .iter()
        .filter(|(e, _)| *e == SHADOW.parse().unwrap())
        .count();
    assert_eq!(to_shadow, MAX_MIRRORS_IN_FLIGHT);
    let m = d.metrics();
    assert_eq!(
        m.mirror_sent.load(Ordering::Relaxed),
        MAX_MIRRORS_IN_FLIGHT as u64
    );
    assert_eq!(m.mirror_dropped.load(Ordering::Relaxed), 3);
    // Past their deadline (connect + response timeouts) the copies are closed.
    let later = now + Duration::from_secs(66);
    d.timers(&mut net, later);
    assert_eq!(d.side_count(), 0);
}
