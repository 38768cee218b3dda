//! Custom errors in the compiler: which backend a route's error requests go to, that its
//! endpoints are resolved like any routed backend's, and that the incremental compiler keeps
//! them right when the error Service appears, changes or goes (compared with a full compile).

use std::net::SocketAddr;

use sluice::control::compile::{CompileOptions, Compiled, Objects, PortRef, ServiceRef, compile};
use sluice::control::incremental::Incremental;
use sluice::control::manifests::parse_documents;
use sluice::core::route::custom_errors::CustomErrors;

fn objects(yaml: &str) -> Objects {
    let (objects, errors) = parse_documents(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    Objects::from_objects(objects)
}

const INGRESS: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/custom-http-errors: \"404,503\"
    nginx.ingress.kubernetes.io/default-backend: error-pages
spec:
  ingressClassName: sluice
  rules:
    - host: shop.example.com
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: plain
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/custom-http-errors: \"500\"
spec:
  ingressClassName: sluice
  rules:
    - host: plain.example.com
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
";

/// A Service `name` in `shop` whose ports are `ports` (`name:port`), with one endpoint
/// 10.0.0.`ip` on each port + 8000.
fn service(name: &str, ports: &[(&str, u16)], ip: u8) -> String {
    let svc_ports: Vec<String> = ports
        .iter()
        .map(|(n, p)| format!("{{name: {n}, port: {p}}}"))
        .collect();
    let slice_ports: Vec<String> = ports
        .iter()
        .map(|(n, p)| format!("{{name: {n}, port: {}}}", p + 8000))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{ports: [{}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{}]\nendpoints: [{{addresses: [\"10.0.0.{ip}\"]}}]\n---\n",
        svc_ports.join(", "),
        slice_ports.join(", ")
    )
}

fn errors_of(c: &Compiled, host: &str) -> CustomErrors {
    let (_, policy, _) = c.snapshot.table.route(host, "/").expect("routed");
    policy
        .and_then(|p| p.request.as_ref())
        .and_then(|r| r.errors.clone())
        .expect("custom errors")
}

/// The endpoints and name of the backend `host`'s error requests go to.
fn error_backend(c: &Compiled, host: &str) -> Option<(String, Vec<SocketAddr>)> {
    let id = errors_of(c, host).backend?;
    let b = c.snapshot.backend(id)?;
    Some((b.name.clone(), b.endpoints.clone()))
}

fn options() -> CompileOptions {
    CompileOptions {
        default_backend: Some(ServiceRef {
            namespace: "shop".into(),
            name: "fallback".into(),
            port: PortRef::First,
        }),
        ..CompileOptions::default()
    }
}

#[test]
fn the_annotation_service_else_the_controller_default_first_port_resolved() {
    let yaml = [
        INGRESS.to_string(),
        service("web", &[("http", 80)], 1),
        // Two ports: the first one receives the error requests, as in ingress-nginx.
        service("error-pages", &[("http", 80), ("metrics", 9100)], 2),
        service("fallback", &[("http", 8080)], 3),
    ]
    .concat();
    let c = compile(&objects(&yaml), &options(), 1);
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
    assert_eq!(errors_of(&c, "shop.example.com").codes, [404, 503]);
    assert_eq!(
        error_backend(&c, "shop.example.com"),
        Some((
            "shop/error-pages".to_string(),
            vec!["10.0.0.2:8080".parse().unwrap()]
        ))
    );
    assert_eq!(
        error_backend(&c, "plain.example.com"),
        Some((
            "shop/fallback".to_string(),
            vec!["10.0.0.3:16080".parse().unwrap()]
        ))
    );
    // Without a controller default backend, the plain Ingress has none (reported).
    let c = compile(&objects(&yaml), &CompileOptions::default(), 1);
    assert_eq!(error_backend(&c, "plain.example.com"), None);
    assert!(
        c.diagnostics
            .iter()
            .any(|d| d.object == "Ingress shop/plain" && d.message.contains("pass unchanged")),
        "{:?}",
        c.diagnostics
    );
}

#[test]
fn the_incremental_compiler_follows_the_error_service() {
    let base = [INGRESS.to_string(), service("web", &[("http", 80)], 1)].concat();
    let steps = [
        // The error Service does not exist yet: reported, no endpoints.
        base.clone(),
        // It appears.
        [base.clone(), service("error-pages", &[("http", 80)], 2)].concat(),
        // Its endpoints move.
        [base.clone(), service("error-pages", &[("http", 80)], 7)].concat(),
        // It goes again.
        base.clone(),
    ];
    let opts = CompileOptions::default();
    let (mut inc, first) = Incremental::new(&objects(&steps[0]), opts.clone(), 1);
    let mut outputs = vec![first];
    for (i, yaml) in steps.iter().enumerate().skip(1) {
        outputs.push(inc.update(&objects(yaml), i as u64 + 1));
    }
    let want = [None, Some("10.0.0.2:8080"), Some("10.0.0.7:8080"), None];
    for (i, (out, want)) in outputs.iter().zip(want).enumerate() {
        let full = compile(&objects(&steps[i]), &opts, i as u64 + 1);
        for c in [out, &full] {
            let (name, endpoints) = error_backend(c, "shop.example.com").expect("interned");
            assert_eq!(name, "shop/error-pages", "step {i}");
            let want: Vec<SocketAddr> = want.iter().map(|a| a.parse().unwrap()).collect();
            assert_eq!(endpoints, want, "step {i}");
        }
        assert_eq!(
            out.snapshot.to_string(),
            full.snapshot.to_string(),
            "step {i}"
        );
    }
    assert!(
        outputs[0]
            .diagnostics
            .iter()
            .any(|d| d.message.contains("Service not found")),
        "{:?}",
        outputs[0].diagnostics
    );
}
