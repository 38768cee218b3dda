//! Every host and path precedence rule of Kubernetes Ingress v1, one test each, through the
//! route table and the worker's router.

use std::net::SocketAddr;

use sluice::core::route::{Backend, BackendId, PathKind, RouteDecision, RouteTableBuilder, Router};
use sluice::core::snapshot::Snapshot;
use sluice::core::upstream::Picker;
use sluice::core::upstream::SnapshotRouter;

const A: BackendId = BackendId(0);
const B: BackendId = BackendId(1);
const C: BackendId = BackendId(2);
const D: BackendId = BackendId(3);

fn table(build: impl FnOnce(&mut RouteTableBuilder)) -> Snapshot {
    let mut builder = RouteTableBuilder::default();
    build(&mut builder);
    Snapshot::new(
        1,
        builder.build(),
        (0..4)
            .map(|i| Backend {
                name: format!("ns/svc{i}:80"),
                endpoints: vec![format!("10.0.0.{}:8080", i + 1).parse().unwrap()],
            })
            .collect(),
    )
}

#[test]
fn exact_host_beats_wildcard() {
    let s = table(|t| {
        t.add(Some("*.example.com"), "/", PathKind::Prefix, A);
        t.add(Some("foo.example.com"), "/", PathKind::Prefix, B);
    });
    assert_eq!(s.lookup("foo.example.com", "/x"), Some(B));
    assert_eq!(s.lookup("bar.example.com", "/x"), Some(A));
}

#[test]
fn wildcard_matches_exactly_one_label() {
    let s = table(|t| {
        t.add(Some("*.example.com"), "/", PathKind::Prefix, A);
    });
    assert_eq!(s.lookup("a.example.com", "/"), Some(A));
    assert_eq!(s.lookup("a.b.example.com", "/"), None);
    assert_eq!(s.lookup("example.com", "/"), None);
    assert_eq!(s.lookup(".example.com", "/"), None);
}

#[test]
fn host_is_case_insensitive_and_port_and_trailing_dot_are_ignored() {
    let s = table(|t| {
        t.add(Some("Shop.Example.com"), "/", PathKind::Prefix, A);
        t.add(Some("*.Example.ORG"), "/", PathKind::Prefix, B);
    });
    assert_eq!(s.lookup("SHOP.example.COM", "/"), Some(A));
    assert_eq!(s.lookup("shop.example.com:8443", "/"), Some(A));
    assert_eq!(s.lookup("shop.example.com.", "/"), Some(A));
    assert_eq!(s.lookup("X.example.org", "/"), Some(B));
}

#[test]
fn overlong_or_non_ascii_hosts_never_match() {
    let s = table(|t| {
        t.add(Some("a.example.com"), "/", PathKind::Prefix, A);
    });
    let long = format!("{}.example.com", "a".repeat(300));
    assert_eq!(s.lookup(&long, "/"), None);
    assert_eq!(s.lookup("ä.example.com", "/"), None);
}

#[test]
fn ipv6_literal_hosts_keep_their_brackets() {
    let s = table(|t| {
        t.add(None, "/", PathKind::Prefix, A);
        t.add(Some("v6.example"), "/", PathKind::Prefix, B);
    });
    assert_eq!(s.lookup("[2001:db8::1]", "/"), Some(A));
    assert_eq!(s.lookup("[2001:db8::1]:8080", "/"), Some(A));
}

#[test]
fn exact_path_is_whole_and_case_sensitive() {
    let s = table(|t| {
        t.add(Some("h"), "/foo", PathKind::Exact, A);
    });
    assert_eq!(s.lookup("h", "/foo"), Some(A));
    assert_eq!(s.lookup("h", "/foo/"), None);
    assert_eq!(s.lookup("h", "/Foo"), None);
    assert_eq!(s.lookup("h", "/foo/bar"), None);
}

#[test]
fn prefix_matches_element_wise() {
    let s = table(|t| {
        t.add(Some("h"), "/foo", PathKind::Prefix, A);
    });
    assert_eq!(s.lookup("h", "/foo"), Some(A));
    assert_eq!(s.lookup("h", "/foo/"), Some(A));
    assert_eq!(s.lookup("h", "/foo/bar"), Some(A));
    assert_eq!(s.lookup("h", "/foobar"), None);
    assert_eq!(s.lookup("h", "/fo"), None);
}

#[test]
fn prefix_trailing_slash_in_the_rule_is_ignored() {
    let s = table(|t| {
        t.add(Some("h"), "/foo/", PathKind::Prefix, A);
    });
    assert_eq!(s.lookup("h", "/foo"), Some(A));
    assert_eq!(s.lookup("h", "/foo/x"), Some(A));
    assert_eq!(s.lookup("h", "/foox"), None);
}

#[test]
fn root_prefix_matches_everything() {
    let s = table(|t| {
        t.add(Some("h"), "/", PathKind::Prefix, A);
    });
    for p in ["/", "/a", "/a/b/c", "/?"] {
        assert_eq!(s.lookup("h", p), Some(A), "{p}");
    }
}

#[test]
fn longest_path_wins() {
    let s = table(|t| {
        t.add(Some("h"), "/", PathKind::Prefix, A);
        t.add(Some("h"), "/api", PathKind::Prefix, B);
        t.add(Some("h"), "/api/v2", PathKind::Prefix, C);
    });
    assert_eq!(s.lookup("h", "/api/v2/users"), Some(C));
    assert_eq!(s.lookup("h", "/api/v1/users"), Some(B));
    assert_eq!(s.lookup("h", "/apix"), Some(A));
}

#[test]
fn exact_beats_prefix_on_equal_length() {
    let s = table(|t| {
        t.add(Some("h"), "/login", PathKind::Prefix, A);
        t.add(Some("h"), "/login", PathKind::Exact, B);
    });
    assert_eq!(s.lookup("h", "/login"), Some(B));
    assert_eq!(s.lookup("h", "/login/x"), Some(A));
}

#[test]
fn longer_prefix_beats_shorter_exact() {
    let s = table(|t| {
        t.add(Some("h"), "/a", PathKind::Exact, A);
        t.add(Some("h"), "/a/b", PathKind::Prefix, B);
    });
    assert_eq!(s.lookup("h", "/a/b"), Some(B));
    assert_eq!(s.lookup("h", "/a"), Some(A));
}

#[test]
fn duplicate_rule_keeps_the_first() {
    let mut t = RouteTableBuilder::default();
    assert!(t.add(Some("h"), "/x", PathKind::Prefix, A));
    assert!(!t.add(Some("h"), "/x/", PathKind::Prefix, B));
    assert!(t.add(Some("h"), "/x", PathKind::Exact, B));
}

#[test]
fn unmatched_path_of_a_known_host_uses_the_host_default_then_the_table_default() {
    let s = table(|t| {
        t.add(Some("h"), "/api", PathKind::Prefix, A);
        t.host_default("h", B);
        t.add(Some("g"), "/api", PathKind::Prefix, A);
        t.add(None, "/", PathKind::Prefix, D);
        t.fallback(C);
    });
    assert_eq!(s.lookup("h", "/other"), Some(B));
    // A matched host does not fall through to host-less rules (its server block answers).
    assert_eq!(s.lookup("g", "/other"), Some(C));
}

#[test]
fn unknown_host_uses_hostless_rules_then_the_default() {
    let s = table(|t| {
        t.add(Some("h"), "/", PathKind::Prefix, A);
        t.add(None, "/public", PathKind::Prefix, B);
        t.fallback(C);
    });
    assert_eq!(s.lookup("other", "/public/x"), Some(B));
    assert_eq!(s.lookup("other", "/private"), Some(C));
    assert_eq!(s.lookup("", "/public"), Some(B));
}

#[test]
fn nothing_matches_is_none() {
    let s = table(|t| {
        t.add(Some("h"), "/a", PathKind::Prefix, A);
    });
    assert_eq!(s.lookup("h", "/b"), None);
    assert_eq!(s.lookup("x", "/a"), None);
    assert_eq!(Snapshot::empty().lookup("h", "/"), None);
}

#[test]
fn router_answers_not_found_no_endpoints_and_forward() {
    let mut s = table(|t| {
        t.add(Some("h"), "/a", PathKind::Prefix, A);
        t.add(Some("h"), "/b", PathKind::Prefix, B);
    });
    s.backends[1].endpoints.clear();
    let mut picker = Picker::new();
    picker.reset_for(&s);
    let mut router = SnapshotRouter::new(&s, &mut picker);
    assert_eq!(router.route("h", "/zzz"), RouteDecision::NotFound);
    assert_eq!(router.route("h", "/b"), RouteDecision::NoEndpoints);
    assert_eq!(
        router.route("h", "/a"),
        RouteDecision::Forward {
            backend: A,
            endpoint: "10.0.0.1:8080".parse().unwrap(),
            policy: None,
        }
    );
}

#[test]
fn round_robin_spreads_evenly() {
    let mut s = table(|t| {
        t.add(Some("h"), "/", PathKind::Prefix, A);
    });
    let eps: Vec<SocketAddr> = (1..=3)
        .map(|i| format!("10.1.0.{i}:80").parse().unwrap())
        .collect();
    s.backends[0].endpoints = eps.clone();
    let mut picker = Picker::new();
    picker.reset_for(&s);
    let mut counts = [0usize; 3];
    for _ in 0..300 {
        let ep = picker.pick(&s, A).unwrap();
        counts[eps.iter().position(|e| *e == ep).unwrap()] += 1;
    }
    assert_eq!(counts, [100, 100, 100]);
    assert_eq!(picker.pick(&s, BackendId(99)), None);
}

#[test]
fn dump_lists_every_route() {
    let s = table(|t| {
        t.add(Some("h"), "/a", PathKind::Exact, A);
        t.add(Some("*.w.example"), "/", PathKind::Prefix, B);
        t.fallback(C);
    });
    let dump = s.to_string();
    assert!(
        dump.contains("h /a Exact -> ns/svc0:80 (1 endpoints)"),
        "{dump}"
    );
    assert!(
        dump.contains("*.w.example / Prefix -> ns/svc1:80"),
        "{dump}"
    );
    assert!(dump.contains("default -> ns/svc2:80"), "{dump}");
}

/// A request whose only hashed part is its path.
struct PathOnly(String);

impl sluice::core::route::key::KeySource for PathOnly {
    fn remote_ip(&self) -> std::net::IpAddr {
        std::net::Ipv4Addr::LOCALHOST.into()
    }
    fn host(&self) -> &str {
        "h"
    }
    fn path(&self) -> &str {
        &self.0
    }
    fn query(&self) -> Option<&str> {
        None
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

/// `sluice.dev/upstream-hash-by-bounded-load`: a key stays on its endpoint while that endpoint
/// is under the bound, moves to its next rendezvous choice (not anywhere) once it is over, and
/// comes back when the load is gone; unloaded, the choice is plain rendezvous hashing's.
#[test]
fn bounded_load_hashing_moves_keys_off_an_overloaded_endpoint_only() {
    use sluice::core::route::key::HashKey;
    use sluice::core::time::Instant;
    use sluice::core::upstream::Balance;
    let mut s = table(|t| {
        t.add(Some("h"), "/", PathKind::Prefix, A);
    });
    let eps: Vec<SocketAddr> = (1..=4)
        .map(|i| format!("10.2.0.{i}:80").parse().unwrap())
        .collect();
    s.backends[0].endpoints = eps.clone();
    let key = HashKey::parse("$uri").unwrap();
    let plain = Balance::Hash(key.clone());
    let bounded = Balance::HashBounded(key, 125);
    let mut picker = Picker::new();
    picker.reset_for(&s);
    let now = Instant::ZERO;
    let keys: Vec<PathOnly> = (0..200).map(|i| PathOnly(format!("/k{i}"))).collect();
    let first: Vec<SocketAddr> = keys
        .iter()
        .map(|k| picker.pick_by(&s, A, &plain, k, now).unwrap())
        .collect();
    // Unloaded: the same choices.
    for (k, ep) in keys.iter().zip(&first) {
        assert_eq!(picker.pick_by(&s, A, &bounded, k, now).unwrap(), *ep);
    }
    // Ten requests in flight on eps[0], none elsewhere: its bound is ceil(1.25 × 11 / 4) = 4.
    for _ in 0..10 {
        picker.stats.started(eps[0]);
    }
    let mut moved = 0;
    for (k, ep) in keys.iter().zip(&first) {
        let now_ep = picker.pick_by(&s, A, &bounded, k, now).unwrap();
        assert_ne!(now_ep, eps[0], "a key stayed on the overloaded endpoint");
        if *ep == eps[0] {
            moved += 1;
            // Its second choice: where plain hashing sends it once eps[0] is gone.
            let mut without = s.clone();
            without.backends[0].endpoints = eps[1..].to_vec();
            let mut p2 = Picker::new();
            p2.reset_for(&without);
            assert_eq!(now_ep, p2.pick_by(&without, A, &plain, k, now).unwrap());
        } else {
            assert_eq!(now_ep, *ep, "a key of an unloaded endpoint moved");
        }
    }
    assert!(moved > 20, "{moved} keys were on eps[0]");
    // The load is gone: every key is back.
    for _ in 0..10 {
        picker.stats.finished(&eps[0], None, now);
    }
    for (k, ep) in keys.iter().zip(&first) {
        assert_eq!(picker.pick_by(&s, A, &bounded, k, now).unwrap(), *ep);
    }
}
