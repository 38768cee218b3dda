//! The compiler against YAML fixtures (tests/fixtures), read by the same manifest loader the
//! file route source uses.

use std::net::SocketAddr;
use std::path::Path;

use sluice::control::compile::{CompileOptions, Compiled, Objects, PortRef, ServiceRef, compile};
use sluice::control::manifests::{Object, load_dir, parse_documents};
use sluice::core::snapshot::Snapshot;

fn objects(fixtures: &[&str]) -> Vec<Object> {
    let mut all = Vec::new();
    for name in fixtures {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let (objects, errors) = parse_documents(&text, name);
        assert!(errors.is_empty(), "{name}: {errors:?}");
        all.extend(objects);
    }
    all
}

fn compile_fixtures(fixtures: &[&str], opts: &CompileOptions) -> Compiled {
    compile(&Objects::from_objects(objects(fixtures)), opts, 1)
}

/// The endpoints a request would be spread over, or None for 404.
fn endpoints(s: &Snapshot, host: &str, path: &str) -> Option<Vec<SocketAddr>> {
    let id = s.lookup(host, path)?;
    Some(s.backend(id).unwrap().endpoints.clone())
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn hosts_paths_and_ports_resolve_through_endpoint_slices() {
    let c = compile_fixtures(&["basic.yaml"], &CompileOptions::default());
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    let s = &c.snapshot;
    // Numbered port 80 → named "http" → slice port 8080, from both slices and both families;
    // not-ready and terminating endpoints are left out while ready ones exist.
    assert_eq!(
        endpoints(s, "shop.example.com", "/cart"),
        Some(addrs(&["10.1.0.1:8080", "10.1.0.3:8080", "[fd00::5]:8080"]))
    );
    // Named port "metrics" → 9100, only in the slice that has it.
    assert_eq!(
        endpoints(s, "shop.example.com", "/metrics"),
        Some(addrs(&["10.1.0.1:9100"]))
    );
    // Exact /metrics does not cover /metrics/x: that falls to the Prefix /.
    assert_eq!(
        endpoints(s, "shop.example.com", "/metrics/x")
            .unwrap()
            .len(),
        3
    );
    assert_eq!(endpoints(s, "eu.shop.example.com", "/").unwrap().len(), 3);
    assert_eq!(s.lookup("other.example.com", "/"), None);
}

#[test]
fn class_selection_by_field_and_legacy_annotation() {
    let c = compile_fixtures(&["classes.yaml"], &CompileOptions::default());
    let s = &c.snapshot;
    assert!(s.lookup("field.example", "/").is_some());
    assert!(s.lookup("legacy.example", "/").is_some());
    assert!(s.lookup("theirs.example", "/").is_none());
    assert!(s.lookup("legacy-theirs.example", "/").is_none());
    assert!(s.lookup("classless.example", "/").is_none());
    // Field and annotation disagree: the field wins, and we say so.
    assert!(s.lookup("disagree.example", "/").is_some());
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    assert_eq!(c.diagnostics[0].object, "Ingress default/disagree");
    assert!(
        c.diagnostics[0]
            .field
            .contains("kubernetes.io/ingress.class")
    );
}

#[test]
fn classless_ingresses_with_watch_without_class() {
    let opts = CompileOptions {
        watch_without_class: true,
        ..CompileOptions::default()
    };
    let c = compile_fixtures(&["classes.yaml"], &opts);
    assert!(c.snapshot.lookup("classless.example", "/").is_some());
    assert!(c.snapshot.lookup("theirs.example", "/").is_none());
}

#[test]
fn classless_ingresses_when_our_class_is_the_default() {
    let c = compile_fixtures(&["default-class.yaml"], &CompileOptions::default());
    assert!(c.snapshot.lookup("classless.example", "/").is_some());
}

#[test]
fn ingress_class_of_another_controller_with_our_name_is_not_ours() {
    let mut objs = objects(&["basic.yaml"]);
    for o in &mut objs {
        if let Object::IngressClass(class) = o {
            std::sync::Arc::make_mut(class)
                .spec
                .as_mut()
                .unwrap()
                .controller = Some("example.com/other".into());
        }
    }
    let c = compile(&Objects::from_objects(objs), &CompileOptions::default(), 1);
    assert_eq!(c.snapshot.lookup("shop.example.com", "/"), None);
}

#[test]
fn conflicts_go_to_the_oldest_ingress_and_are_reported() {
    let c = compile_fixtures(&["conflicts.yaml"], &CompileOptions::default());
    let s = &c.snapshot;
    // /v1 (newer, team-b) and /v1/ (older, team-a) are the same Prefix rule: team-a wins.
    assert_eq!(
        endpoints(s, "api.example.com", "/v1/x"),
        Some(addrs(&["10.3.0.1:8080"]))
    );
    assert_eq!(
        endpoints(s, "api.example.com", "/v2"),
        Some(addrs(&["10.3.0.2:9000"]))
    );
    assert_eq!(c.diagnostics.len(), 1, "{:?}", c.diagnostics);
    let d = &c.diagnostics[0];
    assert_eq!(d.object, "Ingress team-b/newer");
    assert_eq!(d.field, "spec.rules[0].http.paths[0].path");
    assert!(d.message.contains("Ingress team-a/older"), "{d}");
}

#[test]
fn invalid_rules_are_skipped_with_reasons_and_the_rest_serves() {
    let c = compile_fixtures(&["invalid.yaml"], &CompileOptions::default());
    let s = &c.snapshot;
    assert_eq!(
        endpoints(s, "good.example", "/"),
        Some(addrs(&["10.4.0.1:8080"]))
    );
    // Broken references stay routed and answer 503, never fall through to `/`.
    assert_eq!(endpoints(s, "good.example", "/missing-svc/x"), Some(vec![]));
    assert_eq!(endpoints(s, "good.example", "/missing-port"), Some(vec![]));
    // Skipped rules fall through to the host's other paths.
    assert_eq!(endpoints(s, "good.example", "/relative").unwrap().len(), 1);
    assert!(s.lookup("a.b.example", "/").is_none());
    let fields: Vec<String> = c
        .diagnostics
        .iter()
        .map(|d| format!("{} {}", d.object, d.field))
        .collect();
    for expected in [
        "Ingress default/mixed spec.rules[0].http.paths[1].path",
        "Ingress default/mixed spec.rules[0].http.paths[2].pathType",
        "Ingress default/mixed spec.rules[0].http.paths[3].backend.service",
        "Ingress default/mixed spec.rules[0].http.paths[4].backend.service",
        "Ingress default/mixed spec.rules[0].http.paths[5].backend.resource",
        "Ingress default/mixed spec.rules[1].host",
        "Ingress default/mixed spec.rules[2].host",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "missing {expected} in {fields:#?}"
        );
    }
    assert_eq!(c.diagnostics.len(), 7, "{:#?}", c.diagnostics);
    let missing = c
        .diagnostics
        .iter()
        .find(|d| d.field.ends_with("paths[3].backend.service"))
        .unwrap();
    assert!(
        missing
            .to_string()
            .contains("default/nope:80: Service not found"),
        "{missing}"
    );
}

#[test]
fn terminating_endpoints_only_when_nothing_else_is_left() {
    let c = compile_fixtures(&["terminating.yaml"], &CompileOptions::default());
    let s = &c.snapshot;
    assert_eq!(
        endpoints(s, "mixed.example", "/"),
        Some(addrs(&["10.5.0.1:8080"]))
    );
    assert_eq!(
        endpoints(s, "draining.example", "/"),
        Some(addrs(&["10.6.0.1:8080"]))
    );
    // Not serving at all: no endpoint (503).
    assert_eq!(endpoints(s, "gone.example", "/api"), Some(vec![]));
}

#[test]
fn default_backends_chain() {
    let opts = CompileOptions {
        default_backend: Some(ServiceRef {
            namespace: "default".into(),
            name: "mixed".into(),
            port: PortRef::Number(80),
        }),
        ..CompileOptions::default()
    };
    let c = compile_fixtures(&["terminating.yaml"], &opts);
    let s = &c.snapshot;
    // A host of the Ingress, unmatched path → that Ingress's defaultBackend (`gone`).
    let gone = s.lookup("gone.example", "/other").unwrap();
    assert_eq!(s.backend(gone).unwrap().name, "default/gone:80");
    // Unknown host → the oldest Ingress defaultBackend, before the controller default.
    assert_eq!(s.lookup("unknown.example", "/"), Some(gone));
    // Without any Ingress default, the controller default answers.
    let c = compile_fixtures(
        &["basic.yaml", "terminating.yaml"],
        &CompileOptions {
            default_backend: opts.default_backend.clone(),
            ..CompileOptions::default()
        },
    );
    assert!(c.snapshot.lookup("unknown.example", "/").is_some());
    let c = compile_fixtures(&["basic.yaml"], &opts);
    // basic.yaml has no Service `mixed`: the controller default is reported and answers 503.
    let id = c.snapshot.lookup("unknown.example", "/").unwrap();
    assert!(c.snapshot.backend(id).unwrap().endpoints.is_empty());
    assert!(c.diagnostics.iter().any(|d| d.object == "controller"));
}

#[test]
fn output_does_not_depend_on_input_order() {
    let objs = objects(&[
        "basic.yaml",
        "classes.yaml",
        "conflicts.yaml",
        "invalid.yaml",
        "terminating.yaml",
    ]);
    let reference = compile(
        &Objects::from_objects(objs.clone()),
        &CompileOptions::default(),
        7,
    );
    let mut shuffled = objs;
    // A deterministic shuffle: several rotations and reversals.
    for round in 0..6 {
        shuffled.reverse();
        let n = shuffled.len();
        shuffled.rotate_left((round * 7) % n);
        let c = compile(
            &Objects::from_objects(shuffled.clone()),
            &CompileOptions::default(),
            7,
        );
        assert_eq!(c.snapshot, reference.snapshot, "round {round}");
        assert_eq!(c.diagnostics, reference.diagnostics, "round {round}");
    }
}

#[test]
fn broken_documents_are_reported_with_their_line_and_the_rest_loads() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken.yaml"),
    )
    .unwrap();
    let (objects, errors) = parse_documents(&text, "broken.yaml");
    assert_eq!(
        objects.len(),
        1,
        "only the first Service is whole; the Deployment is not ours"
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(errors[0].line, 10, "{}", errors[0]);
    assert!(
        errors[0]
            .to_string()
            .starts_with("broken.yaml:10: Ingress: "),
        "{}",
        errors[0]
    );
    assert!(errors[0].message.contains("spec.rules"), "{}", errors[0]);
    assert_eq!(errors[1].line, 15, "{}", errors[1]);
}

#[test]
fn a_directory_loads_every_yaml_file_in_name_order() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (objects, errors) = load_dir(&dir);
    assert!(objects.len() > 20);
    // Only broken.yaml has errors.
    assert!(
        errors.iter().all(|e| e.file.ends_with("broken.yaml")),
        "{errors:?}"
    );
}

/// The compiler reads no clock: certificate expiry is judged at the `now` it is given, and the
/// same objects at the same `now` compile to the same result.
#[test]
fn certificate_expiry_is_judged_at_the_time_the_compiler_is_given() {
    use sluice::control::compile::compile_at;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    let mut params = rcgen::CertificateParams::new(vec!["dated.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2030, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  tls: [{{hosts: [dated.test], secretName: dated}}]\n  rules:\n\
         \x20 - host: dated.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: dated, namespace: default}}\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert.pem()),
        indent(&key.serialize_pem())
    );
    let (parsed, errors) = parse_documents(&yaml, "dated.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    let objects = Objects::from_objects(parsed);
    let at = |year: u64| UNIX_EPOCH + Duration::from_secs((year - 1970) * 365 * 86_400);
    let expired = |now: SystemTime| {
        compile_at(&objects, &CompileOptions::default(), 1, now)
            .diagnostics
            .iter()
            .any(|d| d.to_string().contains("certificate expired"))
    };
    assert!(!expired(at(2025)));
    assert!(expired(at(2031)));
    let once = compile_at(&objects, &CompileOptions::default(), 1, at(2031)).diagnostics;
    let again = compile_at(&objects, &CompileOptions::default(), 1, at(2031)).diagnostics;
    assert_eq!(once, again);
}
