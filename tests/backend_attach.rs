//! Balancing and affinity belong to the backend (the Service port), as in ingress-nginx: the
//! oldest Ingress with a path rule to a backend (creationTimestamp, then namespace/name)
//! decides them for every route to it, and an Ingress that says otherwise gets a diagnostic
//! (log, Event, `sluice check`). Compile level, incremental against full, `sluice check`, and
//! through real sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use sluice::control::compile::{CompileOptions, Compiled, Objects, compile};
use sluice::control::incremental::Incremental;
use sluice::control::manifests::parse_documents;
use sluice::core::route::{Balance, RoutePolicy};
use sluice::core::snapshot::Snapshot;

mod support;

/// Services `one` and `two` (port 80), one pod each.
const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: one, namespace: ns}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: one-1, namespace: ns, labels: {kubernetes.io/service-name: one}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: two, namespace: ns}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: two-1, namespace: ns, labels: {kubernetes.io/service-name: two}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.2]}]
";

/// An Ingress created on day `day` of 2026 routing `host` `/` to `service`:80.
fn ingress(name: &str, day: u8, host: &str, service: &str, annotations: &[(&str, &str)]) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("nginx.ingress.kubernetes.io/{k}: {v:?}"))
        .collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: {name}, namespace: ns, creationTimestamp: \"2026-01-{day:02}T00:00:00Z\", annotations: {{{}}}}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}]}}\n",
        annotations.join(", ")
    )
}

fn objects(yaml: &str) -> Objects {
    let (objects, errors) = parse_documents(&format!("{SERVICES}{yaml}"), "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    Objects::from_objects(objects)
}

fn compiled(yaml: &str) -> Compiled {
    compile(&objects(yaml), &CompileOptions::default(), 1)
}

fn policy(s: &Snapshot, host: &str) -> Option<RoutePolicy> {
    let (_, policy, _) = s.table.route(host, "/").expect("routed");
    policy.map(|p| (**p).clone())
}

fn balance(s: &Snapshot, host: &str) -> Option<Balance> {
    policy(s, host).and_then(|p| p.balance)
}

#[test]
fn the_oldest_ingress_decides_the_backend_balancing_and_the_other_is_told() {
    let c = compiled(&format!(
        "{}{}",
        ingress(
            "newer",
            2,
            "b.test",
            "one",
            &[("load-balance", "least_request")]
        ),
        ingress("older", 1, "a.test", "one", &[("load-balance", "ewma")]),
    ));
    assert_eq!(balance(&c.snapshot, "a.test"), Some(Balance::Ewma));
    assert_eq!(balance(&c.snapshot, "b.test"), Some(Balance::Ewma));
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    let d = &c.diagnostics[0];
    assert_eq!(d.object, "Ingress ns/newer");
    assert_eq!(d.field, "spec.rules[0].http.paths[0].backend.service");
    assert!(
        d.message.starts_with(
            "ns/one:80: balancing least_request (the backend's: ewma) ignored: balancing, \
             affinity and health checks belong to the backend, and Ingress ns/older (older, also routing to it) \
             decides them"
        ),
        "{d}"
    );
    let dump = c.snapshot.to_string();
    assert!(
        dump.contains("a.test / Prefix -> ns/one:80 (1 endpoints) [balance=ewma]"),
        "{dump}"
    );
    assert!(
        dump.contains("b.test / Prefix -> ns/one:80 (1 endpoints) [balance=ewma]"),
        "{dump}"
    );
}

#[test]
fn on_equal_age_namespace_and_name_decide() {
    let c = compiled(&format!(
        "{}{}",
        ingress(
            "b",
            1,
            "b.test",
            "one",
            &[("load-balance", "least_request")]
        ),
        ingress("a", 1, "a.test", "one", &[("load-balance", "ewma")]),
    ));
    assert_eq!(balance(&c.snapshot, "b.test"), Some(Balance::Ewma));
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert_eq!(c.diagnostics[0].object, "Ingress ns/b");
}

#[test]
fn the_oldest_decides_even_when_it_sets_nothing_as_in_ingress_nginx() {
    // ingress-nginx builds the upstream from the first Ingress that names it: a newer
    // Ingress's load-balance on the same backend is ignored (and Sluice says so).
    let c = compiled(&format!(
        "{}{}",
        ingress("older", 1, "a.test", "one", &[]),
        ingress("newer", 2, "b.test", "one", &[("load-balance", "ewma")]),
    ));
    assert_eq!(balance(&c.snapshot, "a.test"), None);
    assert_eq!(balance(&c.snapshot, "b.test"), None);
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert!(
        c.diagnostics[0]
            .message
            .contains("balancing ewma (the backend's: round_robin)")
    );
    // Saying the same as the backend (round_robin is the default) is no conflict.
    let c = compiled(&format!(
        "{}{}",
        ingress("older", 1, "a.test", "one", &[]),
        ingress(
            "newer",
            2,
            "b.test",
            "one",
            &[("load-balance", "round_robin")]
        ),
    ));
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
}

#[test]
fn a_newer_ingress_without_settings_follows_the_backend_and_others_keep_theirs() {
    let c = compiled(&format!(
        "{}{}{}",
        ingress(
            "older",
            1,
            "a.test",
            "one",
            &[
                ("load-balance", "ewma"),
                ("affinity", "cookie"),
                ("proxy-read-timeout", "5")
            ]
        ),
        ingress("newer", 2, "b.test", "one", &[("proxy-read-timeout", "9")]),
        ingress(
            "other",
            3,
            "c.test",
            "two",
            &[("load-balance", "least_request")]
        ),
    ));
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let b = policy(&c.snapshot, "b.test").unwrap();
    assert_eq!(b.balance, Some(Balance::Ewma));
    assert!(b.affinity.is_some());
    // Route settings stay the Ingress's own.
    assert_eq!(b.read_timeout, Some(Duration::from_secs(9)));
    assert_eq!(balance(&c.snapshot, "c.test"), Some(Balance::LeastRequest));
}

#[test]
fn affinity_conflicts_are_reported_too() {
    let c = compiled(&format!(
        "{}{}",
        ingress(
            "older",
            1,
            "a.test",
            "one",
            &[("affinity", "cookie"), ("session-cookie-name", "A")]
        ),
        ingress(
            "newer",
            2,
            "b.test",
            "one",
            &[("affinity", "cookie"), ("session-cookie-name", "B")]
        ),
    ));
    let a = policy(&c.snapshot, "b.test").unwrap().affinity.unwrap();
    assert_eq!(&*a.name, "A");
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert!(
        c.diagnostics[0]
            .message
            .contains("affinity cookie(B,balanced)"),
        "{}",
        c.diagnostics[0]
    );
}

#[test]
fn a_canary_backend_keeps_its_own_balancing() {
    let c = compiled(&format!(
        "{}{}",
        ingress("main", 1, "a.test", "one", &[("load-balance", "ewma")]),
        ingress(
            "canary",
            2,
            "a.test",
            "two",
            &[
                ("canary", "true"),
                ("canary-weight", "100"),
                ("load-balance", "least_request")
            ]
        ),
    ));
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let dump = c.snapshot.to_string();
    assert!(
        dump.contains(
            "a.test / Prefix -> ns/one:80 (1 endpoints) [balance=ewma] canary -> ns/two:80"
        ),
        "{dump}"
    );
    let rule = &c.snapshot.table.host_routes("a.test").unwrap().paths()[0];
    let canary = rule.canary.as_ref().unwrap();
    assert_eq!(
        canary.policy.as_ref().unwrap().balance,
        Some(Balance::LeastRequest)
    );
}

#[test]
fn incremental_compiles_follow_a_change_of_the_deciding_ingress() {
    let older = |lb: &str| ingress("older", 1, "a.test", "one", &[("load-balance", lb)]);
    let newer = ingress(
        "newer",
        2,
        "b.test",
        "one",
        &[("load-balance", "least_request")],
    );
    let plain = ingress("plain", 3, "c.test", "one", &[]);
    let (mut inc, _) = Incremental::new(
        &objects(&format!("{}{newer}{plain}", older("ewma"))),
        CompileOptions::default(),
        1,
    );
    let steps = [
        // The deciding Ingress changes its mind: every route to the backend follows.
        format!("{}{newer}{plain}", older("round_robin")),
        // It goes away: the next oldest decides.
        format!("{newer}{plain}"),
        // It comes back.
        format!("{}{newer}{plain}", older("ewma")),
        // The newer one routes elsewhere: its own setting applies there.
        format!(
            "{}{}{plain}",
            older("ewma"),
            newer.replace("name: one,", "name: two,")
        ),
    ];
    let want = [
        (
            Some(Balance::RoundRobin),
            Some(Balance::RoundRobin),
            Some(Balance::RoundRobin),
        ),
        // a.test is gone with its Ingress.
        (
            None,
            Some(Balance::LeastRequest),
            Some(Balance::LeastRequest),
        ),
        (
            Some(Balance::Ewma),
            Some(Balance::Ewma),
            Some(Balance::Ewma),
        ),
        (
            Some(Balance::Ewma),
            Some(Balance::LeastRequest),
            Some(Balance::Ewma),
        ),
    ];
    for (i, yaml) in steps.iter().enumerate() {
        let o = objects(yaml);
        let step = inc.update(&o, i as u64 + 2);
        let full = compile(&o, &CompileOptions::default(), i as u64 + 2);
        assert_eq!(
            step.snapshot.to_string(),
            full.snapshot.to_string(),
            "step {i}"
        );
        let got = (
            step.snapshot
                .table
                .route("a.test", "/")
                .and_then(|_| balance(&step.snapshot, "a.test")),
            balance(&step.snapshot, "b.test"),
            balance(&step.snapshot, "c.test"),
        );
        assert_eq!(got, want[i], "step {i}");
        // The Ingress that loses (or wins back) is told again, though it did not change.
        let newer_told = step
            .diagnostics
            .iter()
            .any(|d| d.object == "Ingress ns/newer");
        assert_eq!(
            newer_told,
            i != 1 && i != 3,
            "step {i}: {:?}",
            step.diagnostics
        );
    }
}

#[test]
fn sluice_check_prints_the_conflict() {
    let dir = std::env::temp_dir().join(format!("sluice-backend-attach-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = format!(
        "{SERVICES}{}{}",
        ingress("older", 1, "a.test", "one", &[("load-balance", "ewma")]),
        ingress(
            "newer",
            2,
            "b.test",
            "one",
            &[("load-balance", "least_request")]
        ),
    );
    std::fs::write(dir.join("app.yaml"), yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--manifests"])
        .arg(&dir)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("Ingress ns/newer: spec.rules[0].http.paths[0].backend.service: ns/one:80: balancing least_request (the backend's: ewma) ignored"),
        "{all}"
    );
    assert!(
        all.contains("b.test / Prefix -> ns/one:80 (1 endpoints) [balance=ewma]"),
        "{all}"
    );
}

/// Pods on 127.0.0.1..=3 answering `pod-<i>`.
fn pods() -> u16 {
    let (port, listeners) = support::pods::bind(3);
    for (i, listener) in listeners.into_iter().enumerate() {
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = format!("pod-{}", i + 1);
                    let _ = stream.write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    );
                });
            }
        });
    }
    port
}

fn get(addr: std::net::SocketAddr, host: &str, fields: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n{fields}Connection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

#[test]
fn a_route_without_annotations_is_hashed_like_the_older_ingress_to_its_service() {
    let port = pods();
    let ing = |name: &str, day: u8, host: &str, annotations: &str| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
             metadata: {{name: {name}, namespace: default, creationTimestamp: \"2026-01-0{day}T00:00:00Z\", annotations: {{{annotations}}}}}\n\
             spec:\n  ingressClassName: sluice\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n"
        )
    };
    let yaml = support::pods::manifests(
        &format!(
            "{}{}",
            ing(
                "hashed",
                1,
                "hash.test",
                "nginx.ingress.kubernetes.io/upstream-hash-by: \"$http_x_user\""
            ),
            ing("plain", 2, "plain.test", "")
        ),
        port,
        1..=3,
    );
    let s = support::binary::start("backend-attach", &[("app.yaml", &yaml)], "", 2);
    // plain.test names the same Service: it is hashed on X-User too, so a user keeps a pod
    // on both hosts; without the header every request has the same (empty) key.
    for user in 0..12 {
        let header = format!("X-User: user-{user}\r\n");
        let first = get(s.addr, "hash.test", &header);
        for _ in 0..3 {
            assert_eq!(get(s.addr, "plain.test", &header), first, "user {user}");
        }
    }
    let plain: std::collections::BTreeSet<String> =
        (0..9).map(|_| get(s.addr, "plain.test", "")).collect();
    assert_eq!(plain.len(), 1, "{plain:?}");
}
