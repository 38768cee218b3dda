//! Request-policy annotations compiled into the snapshot: typed values, a bad value (CR/LF,
//! a path that is not a regex, a malformed range) rejects only its field and is reported,
//! regexes are compiled once, when the table is built.

use sluice::control::compile::{CompileOptions, Compiled, Objects, compile};
use sluice::control::manifests::parse_documents;
use sluice::core::route::request_policy::RequestPolicy;

/// The Service `default/app` (port 80) and its one endpoint, 10.4.0.1:8080.
const BACKEND: &str = include_str!("fixtures/app-backend.yaml");

/// An Ingress `name` for `host` `path` with `annotations` as JSON (so any value fits).
fn ingress(name: &str, host: &str, path: &str, annotations: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| (format!("nginx.ingress.kubernetes.io/{k}"), (*v).into()))
        .collect();
    format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: default
  annotations: {}
spec:
  ingressClassName: sluice
  rules:
    - host: {host}
      http:
        paths:
          - {{path: {}, pathType: ImplementationSpecific, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}
"#,
        serde_json::Value::Object(map),
        serde_json::to_string(path).unwrap()
    )
}

fn compile_docs(docs: &[String]) -> Compiled {
    let text = docs.join("\n---\n");
    let (objects, errors) = parse_documents(&format!("{BACKEND}\n---\n{text}"), "test");
    assert!(errors.is_empty(), "{errors:?}");
    compile(
        &Objects::from_objects(objects),
        &CompileOptions::default(),
        1,
    )
}

fn request(c: &Compiled, host: &str, path: &str) -> Option<RequestPolicy> {
    let (_, policy, _) = c.snapshot.table.route(host, path).expect("routed");
    policy.and_then(|p| p.request.as_deref()).cloned()
}

#[test]
fn cr_lf_in_any_value_is_refused_at_compile_time() {
    let c = compile_docs(&[ingress(
        "inject",
        "inject.test",
        "/",
        &[
            ("permanent-redirect", "http://a.example\r\nSet-Cookie: x=1"),
            ("x-forwarded-prefix", "/p\r\nX-Evil: 1"),
            ("rewrite-target", "/\nx"),
            ("cors-allow-origin", "https://a.example\r\nX: y"),
            ("enable-cors", "true"),
            ("app-root", "/ok"),
        ],
    )]);
    let p = request(&c, "inject.test", "/x").expect("app-root and CORS survive");
    assert_eq!(p.redirect, None);
    assert_eq!(p.forwarded_prefix, None);
    assert_eq!(p.rewrite_target, None);
    assert_eq!(p.app_root.as_deref(), Some("/ok"));
    // The bad origin list falls back to the default: any origin.
    assert_eq!(p.cors.as_ref().unwrap().origins, None);
    let fields: Vec<&str> = c.diagnostics.iter().map(|d| d.field.as_str()).collect();
    for name in [
        "permanent-redirect",
        "x-forwarded-prefix",
        "rewrite-target",
        "cors-allow-origin",
    ] {
        let field = format!("metadata.annotations[nginx.ingress.kubernetes.io/{name}]");
        assert!(fields.contains(&field.as_str()), "{field} in {fields:?}");
    }
    assert!(
        c.diagnostics.iter().all(|d| d.message.contains("CR or LF")),
        "{:?}",
        c.diagnostics
    );
}

#[test]
fn bad_values_reject_only_their_field() {
    let c = compile_docs(&[ingress(
        "bad",
        "bad.test",
        "/v1(",
        &[
            ("use-regex", "true"),
            ("denylist-source-range", "10.0.0.0/8, 300.1.1.1"),
            ("allowlist-source-range", "10.0.0.0/8"),
            ("permanent-redirect", "ftp://x.example"),
            ("temporal-redirect", "https://x.example$request_uri"),
            ("cors-max-age", "soon"),
            ("enable-cors", "true"),
        ],
    )]);
    let p = request(&c, "bad.test", "/V1(").expect("a policy");
    assert!(p.use_regex);
    assert!(p.deny.is_none());
    assert!(p.allow.is_some());
    assert!(p.redirect.is_none());
    assert!(
        p.cors
            .unwrap()
            .fields
            .contains("Access-Control-Max-Age: 1728000\r\n")
    );
    let mut fields: Vec<&str> = c.diagnostics.iter().map(|d| d.field.as_str()).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "metadata.annotations[nginx.ingress.kubernetes.io/cors-max-age]",
            "metadata.annotations[nginx.ingress.kubernetes.io/denylist-source-range]",
            "metadata.annotations[nginx.ingress.kubernetes.io/permanent-redirect]",
            "metadata.annotations[nginx.ingress.kubernetes.io/temporal-redirect]",
            "spec.rules[0].http.paths[0].path",
        ]
    );
}

#[test]
fn regexes_are_compiled_with_the_table_and_shared() {
    let c = compile_docs(&[ingress(
        "rw",
        "rw.test",
        "/api(/|$)(.*)",
        &[("rewrite-target", "/$2")],
    )]);
    let a = request(&c, "rw.test", "/api/x").unwrap();
    let b = request(&c, "rw.test", "/API").unwrap();
    let (ra, rb) = (a.path_regex.unwrap(), b.path_regex.unwrap());
    assert!(std::sync::Arc::ptr_eq(&ra.0, &rb.0), "one compiled regex");
    let (_, policy, _) = c.snapshot.table.route("rw.test", "/api/v2/users").unwrap();
    let p = policy.unwrap().request.clone().unwrap();
    assert_eq!(
        p.rewrite("/api/v2/users", Some("a=1")).as_deref(),
        Some("/v2/users?a=1")
    );
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
}

#[test]
fn basic_auth_reports_bad_secrets_without_their_hashes() {
    let secret = r#"
apiVersion: v1
kind: Secret
metadata: {name: users, namespace: default}
type: Opaque
data:
  auth: Zm9vOiRhcHIxJGFiY2RlZmdoJGg5RldnVXozbjlZeHlsS0xsUjVTUS8Kc2VjcmV0bGluZTpodW50ZXIyCg==
"#;
    let c = compile_docs(&[
        secret.to_string(),
        ingress(
            "auth",
            "auth.test",
            "/",
            &[
                ("auth-type", "basic"),
                ("auth-secret", "users"),
                ("auth-realm", "bad \" realm"),
            ],
        ),
        ingress(
            "other-ns",
            "other.test",
            "/",
            &[("auth-type", "basic"), ("auth-secret", "kube-system/users")],
        ),
    ]);
    let p = request(&c, "auth.test", "/").unwrap();
    let auth = p.auth.unwrap();
    assert_eq!(auth.realm, "");
    assert_eq!(auth.users.unwrap().len(), 1);
    let other = request(&c, "other.test", "/").unwrap().auth.unwrap();
    assert_eq!(other.users, None, "503: the Secret is not read");
    let messages: Vec<String> = c.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(messages.len(), 3, "{messages:#?}");
    assert!(
        messages.iter().all(|m| !m.contains("hunter2")),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("line 2")),
        "{messages:#?}"
    );
}

#[test]
fn server_alias_is_resolved_by_the_table_and_follows_incremental_updates() {
    use sluice::control::incremental::Incremental;
    let objects = |alias: &str| {
        let docs = [
            ingress("foo", "foo.test", "/", &[("server-alias", alias)]),
            ingress("other", "other.test", "/", &[]),
        ];
        let (objects, errors) =
            parse_documents(&format!("{BACKEND}\n---\n{}", docs.join("\n---\n")), "t");
        assert!(errors.is_empty(), "{errors:?}");
        Objects::from_objects(objects)
    };
    let (mut inc, first) =
        Incremental::new(&objects("a.test, b.test"), CompileOptions::default(), 1);
    let t = &first.snapshot.table;
    assert_eq!(t.lookup("A.test", "/x"), t.lookup("foo.test", "/x"));
    assert!(t.lookup("b.test", "/").is_some());
    assert!(t.lookup("c.test", "/").is_none());
    // Only foo's host is recompiled: the alias map follows it.
    let next = inc.update(&objects("c.test"), 2);
    let t = &next.snapshot.table;
    assert!(t.lookup("a.test", "/").is_none());
    assert!(t.lookup("c.test", "/").is_some());
    let full = compile(&objects("c.test"), &CompileOptions::default(), 3);
    assert!(
        full.snapshot.table == *t,
        "incremental and full compiles route alike"
    );
}

#[test]
fn limit_values_are_checked_one_by_one() {
    let c = compile_docs(&[ingress(
        "lim",
        "lim.test",
        "/",
        &[
            ("limit-rps", "-1"),
            ("limit-rpm", "120"),
            ("limit-connections", "1.5"),
            ("limit-burst-multiplier", "0"),
            ("limit-whitelist", "10.0.0.0/8, nope"),
        ],
    )]);
    let mut fields: Vec<&str> = c.diagnostics.iter().map(|d| d.field.as_str()).collect();
    fields.sort();
    assert_eq!(fields.len(), 4, "{:?}", c.diagnostics);
    assert!(fields.iter().all(|f| f.contains("limit-")), "{fields:?}");
    let limits = request(&c, "lim.test", "/").unwrap().limits.unwrap();
    assert!(limits.rps.is_none() && limits.connections.is_none());
    assert_eq!(limits.rpm.unwrap().count, 120);
    assert_eq!(limits.burst_multiplier, 5);
    assert!(limits.whitelist.is_none());
    // Zero is "no limit", as in ingress-nginx.
    let c = compile_docs(&[ingress("z", "z.test", "/", &[("limit-rps", "0")])]);
    assert!(c.diagnostics.is_empty());
    assert!(request(&c, "z.test", "/").is_none_or(|p| p.limits.is_none()));
}

#[test]
fn a_contested_alias_goes_to_the_oldest_ingress_then_to_the_next_claimant() {
    use sluice::control::incremental::Incremental;
    let objects = |a1_alias: &str| {
        // No creation times: the older is the first by namespace/name (a1).
        let docs = [
            ingress("a1", "a1.test", "/a", &[("server-alias", a1_alias)]),
            ingress("b1", "b1.test", "/b", &[("server-alias", "x.test")]),
        ];
        let (objects, errors) =
            parse_documents(&format!("{BACKEND}\n---\n{}", docs.join("\n---\n")), "t");
        assert!(errors.is_empty(), "{errors:?}");
        Objects::from_objects(objects)
    };
    let (mut inc, first) = Incremental::new(&objects("x.test"), CompileOptions::default(), 1);
    let t = &first.snapshot.table;
    assert!(t.lookup("x.test", "/a").is_some());
    assert!(t.lookup("x.test", "/b").is_none());
    // a1 lets the alias go: b1's claim takes over, in an incremental compile too.
    let next = inc.update(&objects("y.test"), 2);
    let t = &next.snapshot.table;
    assert!(t.lookup("x.test", "/b").is_some());
    assert!(t.lookup("x.test", "/a").is_none());
    assert!(t.lookup("y.test", "/a").is_some());
    let full = compile(&objects("y.test"), &CompileOptions::default(), 3);
    assert!(full.snapshot.table == *t);
}
