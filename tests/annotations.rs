//! Ingress annotations compiled into typed route properties: ours (`sluice.dev/`) over
//! ingress-nginx's, a bad value rejecting only its own field (reported, default used), CR/LF
//! refused in any value.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::Ingress;
use sluice::control::annotations::Annotations;
use sluice::control::compile::{CompileOptions, Compiled, Diagnostic, Objects, compile};
use sluice::control::incremental::Incremental;
use sluice::control::manifests::{Object, parse_documents};
use sluice::core::http1::Upgrades;
use sluice::core::route::RoutePolicy;
use sluice::core::snapshot::Snapshot;

/// The Service `default/app` (port 80) and its one endpoint, 10.4.0.1:8080.
const BACKEND: &str = include_str!("fixtures/app-backend.yaml");

/// An Ingress `name` routing `host` `/` to `app:80`, with `annotations` (YAML flow map body).
fn ingress(name: &str, host: &str, annotations: &str) -> String {
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
  annotations: {{{annotations}}}
spec:
  ingressClassName: sluice
  rules:
    - host: {host}
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}
"#
    )
}

fn load(docs: &[String]) -> Vec<Object> {
    let text = docs.join("\n---\n");
    let (objects, errors) = parse_documents(&format!("{BACKEND}\n---\n{text}"), "test");
    assert!(errors.is_empty(), "{errors:?}");
    objects
}

/// `docs` with each Ingress routing to a Service of its own (`app-<name>`, the same pod):
/// balancing and affinity belong to the backend, so Ingresses that set them differently
/// need backends of their own.
fn own_backends(docs: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for doc in docs {
        let name = doc
            .split("name: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("x");
        out.push(doc.replace("name: app,", &format!("name: app-{name},")));
        out.push(BACKEND.replace("app", &format!("app-{name}")));
    }
    out
}

fn compile_docs(docs: &[String]) -> Compiled {
    compile(
        &Objects::from_objects(load(docs)),
        &CompileOptions::default(),
        1,
    )
}

/// The policy of the route serving `host` `/`, and that it is served at all.
fn policy(s: &Snapshot, host: &str) -> Option<RoutePolicy> {
    let (backend, policy, _) = s.table.route(host, "/").expect("routed");
    assert_eq!(s.backend(backend).unwrap().endpoints.len(), 1, "{host}");
    policy.map(|p| (**p).clone())
}

fn upgrades(names: &[&str]) -> Option<RoutePolicy> {
    Some(RoutePolicy {
        upgrades: Some(Upgrades::new(names).unwrap()),
        ..RoutePolicy::default()
    })
}

fn diagnostic_for<'a>(c: &'a Compiled, object: &str) -> Vec<&'a Diagnostic> {
    c.diagnostics
        .iter()
        .filter(|d| d.object == object)
        .collect()
}

#[test]
fn upgrade_protocols_become_a_route_property() {
    let c = compile_docs(&[
        ingress(
            "ws",
            "ws.example",
            r#"sluice.dev/upgrade-protocols: " echo, websocket""#,
        ),
        ingress(
            "none",
            "none.example",
            r#"sluice.dev/upgrade-protocols: """#,
        ),
        // ingress-nginx has no such annotation: its prefix is not read for ours.
        ingress(
            "nginx",
            "nginx.example",
            r#"nginx.ingress.kubernetes.io/upgrade-protocols: echo"#,
        ),
        ingress("plain", "plain.example", ""),
    ]);
    // ...and is reported as an annotation the Ingress is served without (catalog).
    let reported: Vec<String> = c.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        reported,
        [
            "Ingress default/nginx: metadata.annotations[nginx.ingress.kubernetes.io/upgrade-protocols]: \
          not documented by ingress-nginx: a Sluice annotation: only its sluice.dev/ form is read; \
          the Ingress is served without it"
        ],
    );
    let s = &c.snapshot;
    assert_eq!(policy(s, "ws.example"), upgrades(&["echo", "websocket"]));
    assert_eq!(policy(s, "none.example"), upgrades(&[]));
    assert_eq!(policy(s, "nginx.example"), None);
    assert_eq!(policy(s, "plain.example"), None);
    // `sluice check` shows it.
    let dump = s.to_string();
    assert!(
        dump.contains(
            "ws.example / Prefix -> default/app:80 (1 endpoints) [upgrade=echo,websocket]"
        ),
        "{dump}"
    );
}

#[test]
fn a_bad_value_rejects_only_its_field_and_is_reported() {
    let c = compile_docs(&[
        ingress(
            "h2c",
            "h2c.example",
            r#"sluice.dev/upgrade-protocols: "websocket, h2c""#,
        ),
        ingress(
            "junk",
            "junk.example",
            r#"sluice.dev/upgrade-protocols: "a b""#,
        ),
        ingress(
            "crlf",
            "crlf.example",
            r#"sluice.dev/upgrade-protocols: "echo\r\nX-Evil: 1", sluice.dev/ssl-redirect: "true\n""#,
        ),
        ingress(
            "good",
            "good.example",
            r#"sluice.dev/upgrade-protocols: echo"#,
        ),
    ]);
    let s = &c.snapshot;
    // Served, with the default for the bad field.
    for host in ["h2c.example", "junk.example", "crlf.example"] {
        assert_eq!(policy(s, host), None, "{host}");
    }
    assert_eq!(policy(s, "good.example"), upgrades(&["echo"]));

    let h2c = diagnostic_for(&c, "Ingress default/h2c");
    assert_eq!(h2c.len(), 1, "{h2c:#?}");
    assert_eq!(
        h2c[0].field,
        "metadata.annotations[sluice.dev/upgrade-protocols]"
    );
    assert!(h2c[0].message.contains("h2c smuggling"), "{}", h2c[0]);
    assert!(
        h2c[0].message.contains("using the listener's"),
        "{}",
        h2c[0]
    );
    assert_eq!(diagnostic_for(&c, "Ingress default/junk").len(), 1);
    let crlf = diagnostic_for(&c, "Ingress default/crlf");
    let fields: Vec<&str> = crlf.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "metadata.annotations[sluice.dev/ssl-redirect]",
            "metadata.annotations[sluice.dev/upgrade-protocols]",
        ],
        "{crlf:#?}"
    );
    assert!(crlf.iter().all(|d| d.message.contains("CR or LF")));
    assert!(diagnostic_for(&c, "Ingress default/good").is_empty());
}

#[test]
fn ours_wins_over_ingress_nginx() {
    let docs = [ingress(
        "both",
        "both.example",
        r#"sluice.dev/ssl-redirect: "false", nginx.ingress.kubernetes.io/ssl-redirect: "yes", nginx.ingress.kubernetes.io/force-ssl-redirect: "nope""#,
    )];
    let objects = load(&docs);
    let ing: Arc<Ingress> = objects
        .iter()
        .find_map(|o| match o {
            Object::Ingress(i) => Some(i.clone()),
            _ => None,
        })
        .unwrap();
    let mut diags = Vec::new();
    let a = Annotations::of(&ing, "Ingress default/both");
    // Ours is read; ingress-nginx's invalid "yes" is never looked at.
    assert!(!a.bool("ssl-redirect", true, &mut diags));
    assert!(diags.is_empty(), "{diags:?}");
    // Only ingress-nginx's set: read, and its bad value reported with the default used.
    assert!(a.bool("force-ssl-redirect", true, &mut diags));
    assert_eq!(diags.len(), 1);
    assert_eq!(
        diags[0].to_string(),
        "Ingress default/both: metadata.annotations[nginx.ingress.kubernetes.io/force-ssl-redirect]: expected true or false, got \"nope\"; using true"
    );
}

#[test]
fn incremental_compile_follows_annotation_changes() {
    let before = load(&[
        ingress("ws", "ws.example", r#"sluice.dev/upgrade-protocols: echo"#),
        ingress("other", "other.example", ""),
    ]);
    let opts = CompileOptions::default();
    let (mut inc, first) =
        Incremental::new(&Objects::from_objects(before.clone()), opts.clone(), 1);
    assert_eq!(policy(&first.snapshot, "ws.example"), upgrades(&["echo"]));
    // The same objects, the annotated Ingress replaced by a new version.
    let changed = load(&[ingress(
        "ws",
        "ws.example",
        r#"sluice.dev/upgrade-protocols: "h2c""#,
    )]);
    let new_ws = changed
        .into_iter()
        .find(|o| matches!(o, Object::Ingress(_)))
        .unwrap();
    let after: Vec<Object> = before
        .into_iter()
        .map(|o| match &o {
            Object::Ingress(i) if i.metadata.name.as_deref() == Some("ws") => new_ws.clone(),
            _ => o,
        })
        .collect();
    let objects = Objects::from_objects(after);
    let next = inc.update(&objects, 2);
    assert_eq!(policy(&next.snapshot, "ws.example"), None);
    assert_eq!(next.diagnostics.len(), 1, "{:#?}", next.diagnostics);
    assert_eq!(next.snapshot, compile(&objects, &opts, 2).snapshot);
}

#[test]
fn timeouts_and_body_size_parse_as_ingress_nginx_writes_them() {
    use std::time::Duration;
    let c = compile_docs(&[
        ingress(
            "t",
            "t.example",
            r#"nginx.ingress.kubernetes.io/proxy-connect-timeout: "3", nginx.ingress.kubernetes.io/proxy-read-timeout: "120", sluice.dev/proxy-send-timeout: 500ms, nginx.ingress.kubernetes.io/client-body-timeout: "2m", nginx.ingress.kubernetes.io/proxy-body-size: 8m"#,
        ),
        ingress(
            "unlimited",
            "unlimited.example",
            r#"nginx.ingress.kubernetes.io/proxy-body-size: "0""#,
        ),
        // Each bad value loses only its own field; the good one next to it is kept.
        ingress(
            "bad",
            "bad.example",
            r#"nginx.ingress.kubernetes.io/proxy-read-timeout: abc, nginx.ingress.kubernetes.io/proxy-connect-timeout: "0", nginx.ingress.kubernetes.io/proxy-body-size: 8mb, nginx.ingress.kubernetes.io/proxy-send-timeout: "7""#,
        ),
    ]);
    let s = &c.snapshot;
    assert_eq!(
        policy(s, "t.example"),
        Some(RoutePolicy {
            connect_timeout: Some(Duration::from_secs(3)),
            read_timeout: Some(Duration::from_secs(120)),
            send_timeout: Some(Duration::from_millis(500)),
            client_body_timeout: Some(Duration::from_secs(120)),
            max_body_bytes: Some(Some(8 << 20)),
            ..RoutePolicy::default()
        })
    );
    assert_eq!(
        policy(s, "unlimited.example"),
        Some(RoutePolicy {
            max_body_bytes: Some(None),
            ..RoutePolicy::default()
        })
    );
    assert_eq!(
        policy(s, "bad.example"),
        Some(RoutePolicy {
            send_timeout: Some(Duration::from_secs(7)),
            ..RoutePolicy::default()
        })
    );
    let fields: Vec<&str> = c.diagnostics.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "metadata.annotations[nginx.ingress.kubernetes.io/proxy-body-size]",
            "metadata.annotations[nginx.ingress.kubernetes.io/proxy-connect-timeout]",
            "metadata.annotations[nginx.ingress.kubernetes.io/proxy-read-timeout]",
        ],
        "{:#?}",
        c.diagnostics
    );
    assert!(
        c.diagnostics
            .iter()
            .all(|d| d.object == "Ingress default/bad"),
        "{:#?}",
        c.diagnostics
    );
}

#[test]
fn balancing_and_hash_keys_compile_into_the_route() {
    use sluice::core::upstream::Balance;
    use sluice::core::upstream::hash::HashKey;
    let c = compile_docs(&own_backends(&[
        ingress(
            "lr",
            "lr.example",
            r#"nginx.ingress.kubernetes.io/load-balance: least_request"#,
        ),
        ingress(
            "ewma",
            "ewma.example",
            r#"nginx.ingress.kubernetes.io/load-balance: ewma"#,
        ),
        // The hash key wins over load-balance, as in ingress-nginx.
        ingress(
            "hash",
            "hash.example",
            r#"nginx.ingress.kubernetes.io/load-balance: ewma, nginx.ingress.kubernetes.io/upstream-hash-by: "$host$request_uri""#,
        ),
        ingress(
            "bad",
            "bad.example",
            r#"nginx.ingress.kubernetes.io/load-balance: random, nginx.ingress.kubernetes.io/upstream-hash-by: "$nope""#,
        ),
    ]));
    let balance = |host: &str| policy(&c.snapshot, host).and_then(|p| p.balance);
    assert_eq!(balance("lr.example"), Some(Balance::LeastRequest));
    assert_eq!(balance("ewma.example"), Some(Balance::Ewma));
    assert_eq!(
        balance("hash.example"),
        Some(Balance::Hash(HashKey::parse("$host$request_uri").unwrap()))
    );
    assert_eq!(balance("bad.example"), None);
    let dump = c.snapshot.to_string();
    assert!(
        dump.contains("hash.example / Prefix -> default/app-hash:80 (1 endpoints) [balance=hash($host$request_uri)]"),
        "{dump}"
    );
    let bad = diagnostic_for(&c, "Ingress default/bad");
    assert_eq!(bad.len(), 2, "{bad:#?}");
    assert!(
        bad.iter()
            .any(|d| d.message.contains("unknown variable $nope"))
    );
    assert!(bad.iter().any(|d| d.message.contains("got \"random\"")));
    assert_eq!(c.diagnostics.len(), 2, "{:#?}", c.diagnostics);
}

#[test]
fn retry_annotations_compile_into_the_route() {
    use sluice::core::upstream::retry::{Conditions, Failure, NextUpstream};
    let c = compile_docs(&[
        ingress(
            "list",
            "list.example",
            r#"nginx.ingress.kubernetes.io/proxy-next-upstream: "error http_502 non_idempotent", nginx.ingress.kubernetes.io/proxy-next-upstream-tries: "5", nginx.ingress.kubernetes.io/proxy-next-upstream-timeout: "10""#,
        ),
        // One key alone keeps the other two at ingress-nginx's defaults.
        ingress(
            "tries",
            "tries.example",
            r#"nginx.ingress.kubernetes.io/proxy-next-upstream-tries: "0""#,
        ),
        ingress(
            "off",
            "off.example",
            r#"sluice.dev/proxy-next-upstream: "off", nginx.ingress.kubernetes.io/proxy-next-upstream: "error""#,
        ),
        ingress(
            "bad",
            "bad.example",
            r#"nginx.ingress.kubernetes.io/proxy-next-upstream: "error http_418", nginx.ingress.kubernetes.io/proxy-next-upstream-tries: "-1", nginx.ingress.kubernetes.io/proxy-next-upstream-timeout: "soon""#,
        ),
    ]);
    let retry = |host: &str| policy(&c.snapshot, host).and_then(|p| p.next_upstream);
    let list = retry("list.example").unwrap();
    assert!(list.conditions.covers(Failure::Status(502)));
    assert!(list.conditions.non_idempotent());
    assert!(!list.conditions.covers(Failure::Timeout));
    assert_eq!(list.tries, 5);
    assert_eq!(list.timeout, Some(std::time::Duration::from_secs(10)));
    assert_eq!(
        retry("tries.example"),
        Some(NextUpstream {
            tries: 0,
            ..NextUpstream::DEFAULT
        })
    );
    assert_eq!(retry("off.example").unwrap().conditions, Conditions::OFF);
    assert_eq!(retry("bad.example"), None);
    let dump = c.snapshot.to_string();
    assert!(
        dump.contains("[next-upstream=error,http_502,non_idempotent/tries=5/timeout=10s]"),
        "{dump}"
    );
    let bad = diagnostic_for(&c, "Ingress default/bad");
    assert_eq!(bad.len(), 3, "{bad:#?}");
    assert!(bad.iter().any(|d| d.message.contains("\"http_418\"")));
    assert_eq!(c.diagnostics.len(), 3, "{:#?}", c.diagnostics);
}

#[test]
fn affinity_annotations_compile_into_the_route() {
    use sluice::core::upstream::affinity::{Mode, SameSite};
    let c = compile_docs(&own_backends(&[
        ingress(
            "sticky",
            "sticky.example",
            r#"nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/affinity-mode: persistent, nginx.ingress.kubernetes.io/session-cookie-name: SERVERID, nginx.ingress.kubernetes.io/session-cookie-max-age: "60", nginx.ingress.kubernetes.io/session-cookie-samesite: Lax, nginx.ingress.kubernetes.io/session-cookie-change-on-failure: "true""#,
        ),
        // Cookie attributes without `affinity: cookie` mean nothing.
        ingress(
            "none",
            "none.example",
            r#"nginx.ingress.kubernetes.io/session-cookie-name: SERVERID"#,
        ),
        ingress(
            "bad",
            "bad.example",
            r#"nginx.ingress.kubernetes.io/affinity: cookie, nginx.ingress.kubernetes.io/session-cookie-name: "a b", nginx.ingress.kubernetes.io/session-cookie-path: "/x; Domain=evil", nginx.ingress.kubernetes.io/session-cookie-samesite: Sometimes, nginx.ingress.kubernetes.io/affinity-mode: sticky"#,
        ),
        ingress(
            "wrong",
            "wrong.example",
            r#"nginx.ingress.kubernetes.io/affinity: ip"#,
        ),
    ]));
    let aff = |host: &str| policy(&c.snapshot, host).and_then(|p| p.affinity);
    let a = aff("sticky.example").unwrap();
    assert_eq!(a.mode, Mode::Persistent);
    assert_eq!(&*a.name, "SERVERID");
    assert_eq!(a.max_age, Some(60));
    assert_eq!(a.samesite, Some(SameSite::Lax));
    assert!(a.change_on_failure && !a.secure);
    assert_eq!(aff("none.example"), None);
    // Each bad attribute keeps its default; affinity itself stays on.
    let b = aff("bad.example").unwrap();
    assert_eq!(&*b.name, "INGRESSCOOKIE");
    assert_eq!((b.path, b.samesite, b.mode), (None, None, Mode::Balanced));
    assert_eq!(aff("wrong.example"), None);
    assert_eq!(diagnostic_for(&c, "Ingress default/bad").len(), 4);
    assert_eq!(diagnostic_for(&c, "Ingress default/wrong").len(), 1);
    let dump = c.snapshot.to_string();
    assert!(
        dump.contains("affinity=cookie(SERVERID,persistent)"),
        "{dump}"
    );
}

#[test]
fn backend_protocols_other_than_http_and_https_are_refused_with_a_reason() {
    let mut docs = vec![
        ingress(
            "http",
            "http.example",
            r#"nginx.ingress.kubernetes.io/backend-protocol: HTTP"#,
        ),
        ingress(
            "https",
            "https.example",
            r#"nginx.ingress.kubernetes.io/backend-protocol: HTTPS"#,
        ),
    ];
    for (i, proto) in ["GRPC", "GRPCS", "H2C", "AJP", "FCGI", "SPDY"]
        .iter()
        .enumerate()
    {
        docs.push(ingress(
            &format!("p{i}"),
            &format!("p{i}.example"),
            &format!("nginx.ingress.kubernetes.io/backend-protocol: {proto}"),
        ));
    }
    let c = compile_docs(&docs);
    assert!(diagnostic_for(&c, "Ingress default/http").is_empty());
    assert!(diagnostic_for(&c, "Ingress default/https").is_empty());
    let https = policy(&c.snapshot, "https.example").expect("a policy");
    assert!(https.upstream_tls.is_some());
    for (i, why) in [
        "need HTTP/2",
        "need HTTP/2",
        "need HTTP/2",
        "AJP and FastCGI",
        "AJP and FastCGI",
        "expected HTTP, HTTPS",
    ]
    .iter()
    .enumerate()
    {
        let d = diagnostic_for(&c, &format!("Ingress default/p{i}"));
        assert_eq!(d.len(), 1, "{d:#?}");
        assert!(d[0].message.contains(why), "{}", d[0].message);
        assert!(d[0].message.ends_with("; using HTTP"), "{}", d[0].message);
        // Still served (over HTTP/1.1).
        assert_eq!(policy(&c.snapshot, &format!("p{i}.example")), None);
    }
}

#[test]
fn hash_subset_annotations_compile_into_the_route() {
    use sluice::core::upstream::Balance;
    use sluice::core::upstream::hash::HashKey;
    let c = compile_docs(&own_backends(&[
        ingress(
            "subset",
            "subset.example",
            r#"nginx.ingress.kubernetes.io/upstream-hash-by: "$remote_addr", nginx.ingress.kubernetes.io/upstream-hash-by-subset: "true", nginx.ingress.kubernetes.io/upstream-hash-by-subset-size: "5""#,
        ),
        ingress(
            "default-size",
            "default.example",
            r#"nginx.ingress.kubernetes.io/upstream-hash-by: "$remote_addr", nginx.ingress.kubernetes.io/upstream-hash-by-subset: "true", nginx.ingress.kubernetes.io/upstream-hash-by-subset-size: "0""#,
        ),
    ]));
    let key = HashKey::parse("$remote_addr").unwrap();
    let balance = |host: &str| policy(&c.snapshot, host).and_then(|p| p.balance);
    assert_eq!(
        balance("subset.example"),
        Some(Balance::HashSubset(key.clone(), 5))
    );
    assert_eq!(
        balance("default.example"),
        Some(Balance::HashSubset(key, 3))
    );
    assert_eq!(diagnostic_for(&c, "Ingress default/default-size").len(), 1);
}

#[test]
fn bounded_load_is_our_annotation_on_top_of_upstream_hash_by() {
    use sluice::core::upstream::Balance;
    use sluice::core::upstream::hash::HashKey;
    let hash = r#"nginx.ingress.kubernetes.io/upstream-hash-by: "$remote_addr""#;
    let c = compile_docs(&own_backends(&[
        ingress(
            "bounded",
            "bounded.example",
            &format!(r#"{hash}, sluice.dev/upstream-hash-by-bounded-load: "1.25""#),
        ),
        ingress(
            "bad",
            "bad.example",
            &format!(r#"{hash}, sluice.dev/upstream-hash-by-bounded-load: "0.9""#),
        ),
        // Not an ingress-nginx annotation: under its prefix it is not read.
        ingress(
            "theirs",
            "theirs.example",
            &format!(r#"{hash}, nginx.ingress.kubernetes.io/upstream-hash-by-bounded-load: "2""#),
        ),
    ]));
    let key = HashKey::parse("$remote_addr").unwrap();
    let balance = |host: &str| policy(&c.snapshot, host).and_then(|p| p.balance);
    assert_eq!(
        balance("bounded.example"),
        Some(Balance::HashBounded(key.clone(), 125))
    );
    assert!(
        c.snapshot
            .to_string()
            .contains("[balance=hash($remote_addr) bounded=125%]")
    );
    // A bad factor is reported; the route still hashes, unbounded.
    assert_eq!(balance("bad.example"), Some(Balance::Hash(key.clone())));
    let d = diagnostic_for(&c, "Ingress default/bad");
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(
        d[0].message.contains("load factor from 1.01 to 10"),
        "{}",
        d[0].message
    );
    assert_eq!(balance("theirs.example"), Some(Balance::Hash(key)));
    for (value, want) in [("1.5", Ok(150)), ("10", Ok(1000)), ("1.01", Ok(101))] {
        assert_eq!(sluice::control::annotations::parse_load_bound(value), want);
    }
    for bad in [
        "1",
        "1.001",
        "10.5",
        "",
        ".5",
        "1.2x",
        "-1.5",
        "99999999999",
    ] {
        assert!(
            sluice::control::annotations::parse_load_bound(bad).is_err(),
            "{bad}"
        );
    }
}
