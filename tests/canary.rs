//! Canary Ingresses at the compiler and route-table level (the rules ingress-nginx's e2e
//! test/e2e/annotations/canary.go asserts, written as our own cases): which Ingress is the
//! main one, what a canary without one does, and the per-request choice.
//! Through real sockets: tests/canary_e2e.rs.

use std::net::{IpAddr, Ipv4Addr};

use sluice::control::compile::{CompileOptions, Compiled, Objects, compile};
use sluice::control::incremental::Incremental;
use sluice::control::manifests::parse_documents;
use sluice::core::route::BackendId;
use sluice::core::route::affinity::Affinity;
use sluice::core::route::canary::Context;
use sluice::core::route::key::KeySource;
use sluice::core::snapshot::Snapshot;

/// Services `main-svc` (pod 10.0.0.1) and `canary-svc` (pod 10.0.0.2), port 80 → 8080.
const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: main-svc, namespace: ns}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: main-svc-1, namespace: ns, labels: {kubernetes.io/service-name: main-svc}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.1]}]
---
apiVersion: v1
kind: Service
metadata: {name: canary-svc, namespace: ns}
spec: {ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: canary-svc-1, namespace: ns, labels: {kubernetes.io/service-name: canary-svc}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.0.0.2]}]
";

/// An Ingress of ours: `host` (empty: no host) `path` (Prefix) → `service`:80.
pub fn ingress(
    name: &str,
    host: &str,
    path: &str,
    service: &str,
    annotations: &[(&str, &str)],
) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("nginx.ingress.kubernetes.io/{k}: {v:?}"))
        .collect();
    let host = match host {
        "" => String::new(),
        h => format!("host: {h}\n    "),
    };
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: {name}, namespace: ns, creationTimestamp: \"2026-01-01T00:00:00Z\", annotations: {{{}}}}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - {host}http: {{paths: [{{path: {path}, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}]}}\n",
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

struct Req(Vec<(&'static str, &'static str)>);

impl KeySource for Req {
    fn remote_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
    fn host(&self) -> &str {
        "foo"
    }
    fn path(&self) -> &str {
        "/"
    }
    fn query(&self) -> Option<&str> {
        None
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}

/// The worker as a canary choice sees it: a fixed draw, every backend with endpoints usable,
/// and affinity cookies that pin when they name `pinned` backends.
struct Cx<'s> {
    snapshot: &'s Snapshot,
    draw: u32,
    pinned: Vec<&'static str>,
}

impl Context for Cx<'_> {
    fn roll(&mut self, n: u32) -> u32 {
        self.draw.min(n - 1)
    }
    fn usable(&self, b: BackendId) -> bool {
        self.snapshot
            .backend(b)
            .is_some_and(|b| !b.endpoints.is_empty())
    }
    fn pinned(&mut self, b: BackendId, _: &Affinity) -> bool {
        let name = &self.snapshot.backend(b).unwrap().name;
        self.pinned.iter().any(|p| name.contains(p))
    }
}

/// The Service a request with `fields` for `host` `path` goes to (`None`: 404); weights draw
/// `draw`.
fn service_with(
    s: &Snapshot,
    host: &str,
    path: &str,
    fields: &[(&'static str, &'static str)],
    draw: u32,
) -> Option<String> {
    let mut cx = Cx {
        snapshot: s,
        draw,
        pinned: Vec::new(),
    };
    let (backend, ..) = s
        .table
        .route_request(host, path, &Req(fields.to_vec()), &mut cx)?;
    let name = &s.backend(backend)?.name;
    Some(
        name.trim_start_matches("ns/")
            .trim_end_matches(":80")
            .to_string(),
    )
}

fn service(s: &Snapshot, fields: &[(&'static str, &'static str)]) -> Option<String> {
    service_with(s, "foo", "/", fields, 0)
}

fn main_and_canary(canary: &[(&str, &str)]) -> String {
    let mut all = vec![("canary", "true")];
    all.extend_from_slice(canary);
    format!(
        "{}{}",
        ingress("foo", "foo", "/", "main-svc", &[]),
        ingress("foo-canary", "foo", "/", "canary-svc", &all)
    )
}

const MAIN: Option<&str> = Some("main-svc");
const CANARY: Option<&str> = Some("canary-svc");

fn s(v: Option<&str>) -> Option<String> {
    v.map(str::to_string)
}

#[test]
fn the_main_ingress_serves_and_the_header_keywords_pick_the_canary() {
    let c = compiled(&main_and_canary(&[("canary-by-header", "CanaryByHeader")]));
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let snap = &c.snapshot;
    assert_eq!(service(snap, &[]), s(MAIN));
    assert_eq!(service(snap, &[("CanaryByHeader", "always")]), s(CANARY));
    assert_eq!(service(snap, &[("CanaryByHeader", "never")]), s(MAIN));
    assert_eq!(
        service(snap, &[("CanaryByHeader", "badheadervalue")]),
        s(MAIN)
    );
    // Without the request (the plain lookup) the main Ingress serves.
    let main = snap.lookup("foo", "/").unwrap();
    assert_eq!(snap.backend(main).unwrap().name, "ns/main-svc:80");
    // The route dump shows the canary.
    assert!(
        snap.to_string()
            .contains("foo / Prefix -> ns/main-svc:80 (1 endpoints) canary -> ns/canary-svc:80 (1 endpoints) [header=CanaryByHeader:always/never weight=0/100]"),
        "{snap}"
    );
}

#[test]
fn the_main_ingress_is_the_one_without_the_annotation_whatever_the_order() {
    // The canary is older (and first by name): it still does not become the main one.
    let yaml = format!(
        "{}{}",
        ingress(
            "a-canary",
            "foo",
            "/",
            "canary-svc",
            &[("canary", "true"), ("canary-by-header", "C")]
        ),
        ingress("z-main", "foo", "/", "main-svc", &[])
    )
    .replace(
        "name: a-canary, namespace: ns, creationTimestamp: \"2026-01-01T00:00:00Z\"",
        "name: a-canary, namespace: ns, creationTimestamp: \"2025-01-01T00:00:00Z\"",
    );
    let c = compiled(&yaml);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    assert_eq!(service(&c.snapshot, &[]), s(MAIN));
    assert_eq!(service(&c.snapshot, &[("C", "always")]), s(CANARY));
}

#[test]
fn a_header_value_or_pattern_replaces_the_keywords() {
    let c = compiled(&main_and_canary(&[
        ("canary-by-header", "CanaryByHeader"),
        ("canary-by-header-value", "DoCanary"),
    ]));
    let snap = &c.snapshot;
    assert_eq!(service(snap, &[("CanaryByHeader", "DoCanary")]), s(CANARY));
    assert_eq!(service(snap, &[("CanaryByHeader", "always")]), s(MAIN));
    assert_eq!(service(snap, &[("CanaryByHeader", "never")]), s(MAIN));
    assert_eq!(
        service(snap, &[("CanaryByHeader", "otherheadervalue")]),
        s(MAIN)
    );

    let c = compiled(&main_and_canary(&[
        ("canary-by-header", "CanaryByHeader"),
        ("canary-by-header-pattern", "^(Do|Try)Canary$"),
    ]));
    let snap = &c.snapshot;
    assert_eq!(service(snap, &[("CanaryByHeader", "DoCanary")]), s(CANARY));
    assert_eq!(service(snap, &[("CanaryByHeader", "TryCanary")]), s(CANARY));
    assert_eq!(service(snap, &[("CanaryByHeader", "DoCanary!")]), s(MAIN));
    assert_eq!(service(snap, &[("CanaryByHeader", "always")]), s(MAIN));

    // Both set: the value wins and the pattern is reported as ignored.
    let c = compiled(&main_and_canary(&[
        ("canary-by-header", "H"),
        ("canary-by-header-value", "v"),
        ("canary-by-header-pattern", ".*"),
    ]));
    assert_eq!(service(&c.snapshot, &[("H", "v")]), s(CANARY));
    assert_eq!(service(&c.snapshot, &[("H", "w")]), s(MAIN));
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert!(
        c.diagnostics[0]
            .field
            .ends_with("canary-by-header-pattern]")
    );
}

#[test]
fn header_then_cookie_then_weight() {
    let c = compiled(&main_and_canary(&[
        ("canary-by-header", "CanaryByHeader"),
        ("canary-by-header-value", "DoCanary"),
        ("canary-by-cookie", "CanaryByCookie"),
        ("canary-weight", "100"),
    ]));
    let snap = &c.snapshot;
    // The header value does not match: the cookie decides.
    assert_eq!(
        service(
            snap,
            &[
                ("CanaryByHeader", "other"),
                ("Cookie", "CanaryByCookie=never")
            ]
        ),
        s(MAIN)
    );
    assert_eq!(
        service(
            snap,
            &[
                ("CanaryByHeader", "DoCanary"),
                ("Cookie", "CanaryByCookie=never")
            ]
        ),
        s(CANARY)
    );
    assert_eq!(
        service(snap, &[("Cookie", "x=1; CanaryByCookie=always")]),
        s(CANARY)
    );
    // Another cookie value: the weight (100 of 100) decides.
    assert_eq!(
        service(snap, &[("Cookie", "CanaryByCookie=bad")]),
        s(CANARY)
    );
    assert_eq!(service(snap, &[]), s(CANARY));
}

#[test]
fn weights_split_by_the_draw() {
    let c = compiled(&main_and_canary(&[("canary-weight", "0")]));
    assert_eq!(service_with(&c.snapshot, "foo", "/", &[], 0), s(MAIN));
    let c = compiled(&main_and_canary(&[("canary-weight", "100")]));
    assert_eq!(service_with(&c.snapshot, "foo", "/", &[], 99), s(CANARY));
    let c = compiled(&main_and_canary(&[
        ("canary-weight", "30"),
        ("canary-weight-total", "1000"),
    ]));
    assert_eq!(service_with(&c.snapshot, "foo", "/", &[], 29), s(CANARY));
    assert_eq!(service_with(&c.snapshot, "foo", "/", &[], 30), s(MAIN));
}

#[test]
fn a_canary_without_a_main_ingress_routes_nothing() {
    let c = compiled(&ingress(
        "foo-canary",
        "foo",
        "/",
        "canary-svc",
        &[("canary", "true"), ("canary-by-header", "CanaryByHeader")],
    ));
    assert_eq!(service(&c.snapshot, &[("CanaryByHeader", "always")]), None);
    assert_eq!(c.snapshot.table.host_count(), 0);
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert!(
        c.diagnostics[0]
            .message
            .contains("no main Ingress routes foo /"),
        "{:?}",
        c.diagnostics
    );

    // A host-less canary is never a catch-all either; the other host keeps its own backend.
    let c = compiled(&format!(
        "{}{}",
        ingress(
            "any-canary",
            "",
            "/",
            "canary-svc",
            &[("canary", "true"), ("canary-weight", "100")]
        ),
        ingress("bar", "bar", "/", "main-svc", &[])
    ));
    assert_eq!(service_with(&c.snapshot, "bar", "/", &[], 0), s(MAIN));
    assert_eq!(service_with(&c.snapshot, "other", "/", &[], 0), None);
}

#[test]
fn a_canary_for_another_path_is_ignored_and_the_main_one_is_untouched() {
    let c = compiled(&format!(
        "{}{}",
        ingress("foo", "foo", "/", "main-svc", &[]),
        ingress(
            "foo-canary",
            "foo",
            "/bar",
            "canary-svc",
            &[("canary", "true"), ("canary-weight", "100")]
        ),
    ));
    assert_eq!(service_with(&c.snapshot, "foo", "/bar", &[], 0), s(MAIN));
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
}

#[test]
fn bad_canary_values_reject_only_their_field() {
    let c = compiled(&main_and_canary(&[
        ("canary-by-header", "Bad Header"),
        ("canary-by-cookie", "CanaryByCookie"),
        ("canary-weight", "-5"),
        ("canary-weight-total", "50"),
    ]));
    let fields: Vec<&str> = c.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(c.diagnostics.len(), 3, "{:?}", c.diagnostics);
    for name in [
        "canary-by-header]",
        "canary-weight]",
        "canary-weight-total]",
    ] {
        assert!(
            fields.iter().any(|f| f.ends_with(name)),
            "{name}: {fields:?}"
        );
    }
    let snap = &c.snapshot;
    // The cookie rule still works; the weight counts as 0.
    assert_eq!(
        service(snap, &[("Cookie", "CanaryByCookie=always")]),
        s(CANARY)
    );
    assert_eq!(service(snap, &[("Bad Header", "always")]), s(MAIN));
    assert_eq!(service_with(snap, "foo", "/", &[], 0), s(MAIN));

    // A bad pattern: reported, and the header falls back to always/never.
    let c = compiled(&main_and_canary(&[
        ("canary-by-header", "H"),
        ("canary-by-header-pattern", "(unclosed"),
    ]));
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert_eq!(service(&c.snapshot, &[("H", "always")]), s(CANARY));
    assert_eq!(service(&c.snapshot, &[("H", "(unclosed")]), s(MAIN));

    // canary: "yes" is not a boolean: reported, and the Ingress is an ordinary one, which
    // loses the conflict with the older main Ingress.
    let c = compiled(&format!(
        "{}{}",
        ingress("foo", "foo", "/", "main-svc", &[]),
        ingress("foo-canary", "foo", "/", "canary-svc", &[("canary", "yes")]),
    ));
    assert_eq!(service(&c.snapshot, &[]), s(MAIN));
    assert!(
        c.diagnostics.iter().any(|d| d.field.ends_with("/canary]")),
        "{:?}",
        c.diagnostics
    );
}

#[test]
fn canary_rules_on_an_ordinary_ingress_are_reported_as_ignored() {
    let c = compiled(&ingress(
        "foo",
        "foo",
        "/",
        "main-svc",
        &[("canary-weight", "100")],
    ));
    assert_eq!(service(&c.snapshot, &[]), s(MAIN));
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert!(c.diagnostics[0].message.contains("not a canary"));
}

#[test]
fn other_annotations_of_a_canary_follow_the_main_ingress_except_balancing() {
    let c = compiled(&format!(
        "{}{}",
        ingress(
            "foo",
            "foo",
            "/",
            "main-svc",
            &[("proxy-read-timeout", "7")]
        ),
        ingress(
            "foo-canary",
            "foo",
            "/",
            "canary-svc",
            &[
                ("canary", "true"),
                ("canary-weight", "100"),
                ("proxy-read-timeout", "99"),
                ("load-balance", "ewma")
            ]
        ),
    ));
    let snap = &c.snapshot;
    let mut cx = Cx {
        snapshot: snap,
        draw: 0,
        pinned: Vec::new(),
    };
    let (_, policy, ingress) = snap
        .table
        .route_request("foo", "/", &Req(vec![]), &mut cx)
        .unwrap();
    let policy = policy.unwrap();
    assert_eq!(policy.read_timeout, Some(std::time::Duration::from_secs(7)));
    assert_eq!(policy.balance, Some(sluice::core::route::Balance::Ewma));
    assert_eq!(ingress, Some("ns/foo-canary"));
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert!(
        c.diagnostics[0]
            .message
            .contains("ignored on a canary Ingress: read-timeout=99s"),
        "{:?}",
        c.diagnostics
    );
}

#[test]
fn a_canary_without_endpoints_leaves_requests_to_the_main_backend() {
    let yaml = main_and_canary(&[("canary-weight", "100")])
        .replace("name: canary-svc,", "name: gone-svc,");
    let c = compiled(&yaml);
    // The canary names a Service that does not exist (reported): the main one serves.
    assert_eq!(service(&c.snapshot, &[]), s(MAIN));
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.message.contains("Service not found")),
        "{:?}",
        c.diagnostics
    );
}

#[test]
fn two_canaries_for_one_route_the_oldest_wins() {
    let c = compiled(&format!(
        "{}{}{}",
        ingress("foo", "foo", "/", "main-svc", &[]),
        ingress(
            "c1",
            "foo",
            "/",
            "canary-svc",
            &[("canary", "true"), ("canary-weight", "100")]
        ),
        ingress(
            "c2",
            "foo",
            "/",
            "main-svc",
            &[("canary", "true"), ("canary-weight", "0")]
        ),
    ));
    assert_eq!(service(&c.snapshot, &[]), s(CANARY));
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert!(
        c.diagnostics[0]
            .message
            .contains("already has the canary Ingress ns/c1")
    );
}

#[test]
fn incremental_compiles_agree_when_the_main_or_the_canary_changes() {
    let main = ingress("foo", "foo", "/", "main-svc", &[]);
    let canary = |h: &str| {
        ingress(
            "foo-canary",
            "foo",
            "/",
            "canary-svc",
            &[("canary", "true"), ("canary-by-header", h)],
        )
    };
    let (mut inc, _) = Incremental::new(&objects(&canary("A")), CompileOptions::default(), 1);
    let steps = [
        format!("{main}{}", canary("A")),
        format!(
            "{}{}",
            main.replace("annotations: {}", "annotations: {foo: bar}"),
            canary("A")
        ),
        format!("{main}{}", canary("B")),
        main.clone(),
        canary("B"),
    ];
    for (v, yaml) in steps.iter().enumerate() {
        let o = objects(yaml);
        let step = inc.update(&o, v as u64 + 2).snapshot;
        let full = compile(&o, &CompileOptions::default(), v as u64 + 2).snapshot;
        // Backend ids differ between the two; the route dumps name Services.
        assert_eq!(step.to_string(), full.to_string(), "step {v}");
    }
    // The last step: only the canary, so nothing routes.
    let o = objects(&format!("{main}{}", canary("B")));
    let s2 = inc.update(&o, 10).snapshot;
    assert_eq!(service(&s2, &[("B", "always")]), s(CANARY));
    assert_eq!(service(&s2, &[("A", "always")]), s(MAIN));
}

#[test]
fn a_request_pinned_by_affinity_stays_where_it_is_pinned() {
    let yaml = format!(
        "{}{}",
        ingress("foo", "foo", "/", "main-svc", &[("affinity", "cookie")]),
        ingress(
            "foo-canary",
            "foo",
            "/",
            "canary-svc",
            // No affinity of its own: the main route's applies to it.
            &[("canary", "true"), ("canary-weight", "50")]
        ),
    );
    let c = compiled(&yaml);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let snap = &c.snapshot;
    let go = |draw: u32, pinned: Vec<&'static str>| {
        let mut cx = Cx {
            snapshot: snap,
            draw,
            pinned,
        };
        let (b, ..) = snap
            .table
            .route_request("foo", "/", &Req(vec![]), &mut cx)
            .unwrap();
        snap.backend(b).unwrap().name.clone()
    };
    // Unpinned: the weight decides.
    assert_eq!(go(0, vec![]), "ns/canary-svc:80");
    assert_eq!(go(99, vec![]), "ns/main-svc:80");
    // Pinned to the main backend: stays there whatever the draw; pinned to the canary: goes
    // there whatever the draw.
    assert_eq!(go(0, vec!["main-svc"]), "ns/main-svc:80");
    assert_eq!(go(99, vec!["canary-svc"]), "ns/canary-svc:80");
}

#[test]
fn a_canary_takes_the_main_affinity_and_its_own_is_reported_as_ignored() {
    let c = compiled(&format!(
        "{}{}",
        ingress(
            "foo",
            "foo",
            "/",
            "main-svc",
            &[("affinity", "cookie"), ("session-cookie-name", "main")]
        ),
        ingress(
            "foo-canary",
            "foo",
            "/",
            "canary-svc",
            &[
                ("canary", "true"),
                ("canary-weight", "100"),
                ("affinity", "cookie"),
                ("session-cookie-name", "other")
            ]
        ),
    ));
    let rule = &c.snapshot.table.host_routes("foo").unwrap().paths()[0];
    let canary = rule.canary.as_ref().unwrap();
    let affinity = canary.policy.as_ref().unwrap().affinity.as_ref().unwrap();
    assert_eq!(&*affinity.name, "main");
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert!(
        c.diagnostics[0]
            .message
            .contains("ignored on a canary Ingress: affinity=cookie(other"),
        "{:?}",
        c.diagnostics
    );
}
