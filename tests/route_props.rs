//! Property test of the route table against a brute-force reference: for random rule sets
//! and requests, the chosen rule matches the request and no matching rule beats it under the
//! Ingress precedence (exact host over wildcard, longer path, Exact over Prefix).

use proptest::prelude::*;
use sluice::core::route::{BackendId, PathKind, RouteTableBuilder};
use sluice::core::snapshot::Snapshot;

#[derive(Clone, Debug)]
struct Rule {
    host: Option<String>,
    path: String,
    kind: PathKind,
}

fn host() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("a.example".to_string())),
        Just(Some("b.example".to_string())),
        Just(Some("*.example".to_string())),
        Just(Some("x.a.example".to_string())),
        Just(Some("*.a.example".to_string())),
    ]
}

fn path() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just("a"), Just("b"), Just("ab"), Just("")],
        0..4,
    )
    .prop_map(|segs| format!("/{}", segs.join("/")))
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        host(),
        path(),
        prop_oneof![Just(PathKind::Exact), Just(PathKind::Prefix)],
    )
        .prop_map(|(host, path, kind)| Rule { host, path, kind })
}

fn request_host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a.example"),
        Just("b.example"),
        Just("c.example"),
        Just("x.a.example"),
        Just("y.a.example"),
        Just("A.EXAMPLE:8080"),
        Just("other.test"),
    ]
    .prop_map(str::to_string)
}

/// Brute force: does the path of `rule` match `path`? (Hosts are bucketed separately.)
fn matches(rule: &Rule, path: &str) -> bool {
    let norm = |p: &str| {
        let t = p.trim_end_matches('/');
        if t.is_empty() {
            "/".to_string()
        } else {
            t.to_string()
        }
    };
    match rule.kind {
        PathKind::Exact => path == rule.path,
        PathKind::Prefix => {
            let p = norm(&rule.path);
            p == "/" || path == p || path.starts_with(&format!("{p}/"))
        }
    }
}

fn host_bucket(rules: &[Rule], host: &str) -> Option<Option<String>> {
    let host = host.split(':').next().unwrap().to_ascii_lowercase();
    if rules
        .iter()
        .any(|r| r.host.as_deref() == Some(host.as_str()))
    {
        return Some(Some(host));
    }
    if let Some((label, rest)) = host.split_once('.')
        && !label.is_empty()
    {
        let wild = format!("*.{rest}");
        if rules
            .iter()
            .any(|r| r.host.as_deref() == Some(wild.as_str()))
        {
            return Some(Some(wild));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn lookup_agrees_with_brute_force(rules in proptest::collection::vec(rule(), 0..12),
                                      host in request_host(), req in path()) {
        let mut builder = RouteTableBuilder::default();
        let mut kept: Vec<(Rule, BackendId)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if builder.add(r.host.as_deref(), &r.path, r.kind, BackendId(i as u32)) {
                kept.push((r.clone(), BackendId(i as u32)));
            }
        }
        let snapshot = Snapshot::new(1, builder.build(), Vec::new());
        let got = snapshot.lookup(&host, &req);
        let kept_rules: Vec<Rule> = kept.iter().map(|(r, _)| r.clone()).collect();
        // The bucket a request lands in: its exact host, else its wildcard, else host-less.
        let bucket = host_bucket(&kept_rules, &host);
        let candidates: Vec<&(Rule, BackendId)> = kept
            .iter()
            .filter(|(r, _)| match &bucket {
                Some(b) => r.host.as_deref() == b.as_deref(),
                None => r.host.is_none(),
            })
            .filter(|(r, _)| matches(r, &req))
            .collect();
        let len = |r: &Rule| match r.kind {
            PathKind::Exact => r.path.len(),
            PathKind::Prefix => {
                let t = r.path.trim_end_matches('/');
                if t.is_empty() { 1 } else { t.len() }
            }
        };
        match got {
            None => prop_assert!(candidates.is_empty(), "missed {candidates:?}"),
            Some(id) => {
                let chosen = candidates.iter().find(|(_, b)| *b == id);
                prop_assert!(chosen.is_some(), "chose {id:?}, which does not match");
                let (cr, _) = chosen.unwrap();
                for (r, _) in &candidates {
                    let better = len(r) > len(cr)
                        || (len(r) == len(cr) && r.kind == PathKind::Exact && cr.kind == PathKind::Prefix);
                    prop_assert!(!better, "{r:?} beats chosen {cr:?}");
                }
            }
        }
    }
}
