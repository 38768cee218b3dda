//! The incremental compiler against the full one: after any sequence of Ingress, Service,
//! EndpointSlice and IngressClass changes, the snapshot it builds routes exactly like a full
//! compile of the same objects, names the same endpoints, and reports the same diagnostics
//! for the Ingresses that changed.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use proptest::prelude::*;
use serde_json::{Value, json};
use sluice::control::compile::{CompileOptions, Compiled, Objects, compile};
use sluice::control::incremental::Incremental;

const SLOTS: usize = 10;
const HOSTS: [Option<&str>; 6] = [
    Some("x.test"),
    Some("y.test"),
    Some("*.test"),
    Some("X.Test"),
    Some("a.y.test"),
    None,
];
const PATHS: [&str; 5] = ["/", "/a", "/a/", "/a/b", "/b"];
const KINDS: [&str; 3] = ["Exact", "Prefix", "ImplementationSpecific"];
const SERVICES: [&str; 4] = ["s0", "s1", "s2", "missing"];

#[derive(Clone, Debug)]
struct PathSpec {
    path: usize,
    kind: usize,
    service: usize,
    named_port: bool,
}

#[derive(Clone, Debug)]
struct IngressSpec {
    namespace: bool,
    created: u8,
    class: u8,
    rules: Vec<(usize, Vec<PathSpec>)>,
    default: Option<usize>,
    /// `spec.tls`: a host and one of the Secrets `c0`, `c1`.
    tls: Option<(usize, usize)>,
    /// The `ssl-redirect` annotation.
    redirect: Option<bool>,
    /// Traffic annotations: 0 none, 1 a canary (by header), 2 `load-balance: ewma`,
    /// 3 `load-balance: least_request`, 4 `service-upstream: "true"`.
    traffic: u8,
}

#[derive(Clone, Debug)]
enum Change {
    Set(usize, IngressSpec),
    Delete(usize),
    /// Service `i`: toggles whether it exists.
    ToggleService(usize),
    /// Service `i`: a new set of endpoints (`n` ready, one terminating).
    Endpoints(usize, u8),
    /// Makes the IngressClass `sluice` the cluster default, or not.
    DefaultClass(bool),
    /// Secret `c{i}` (in both namespaces): a valid certificate, broken PEM, or gone.
    Secret(usize, u8),
    Nothing,
}

fn path_spec() -> impl Strategy<Value = PathSpec> {
    (
        0..PATHS.len(),
        0..KINDS.len(),
        0..SERVICES.len(),
        any::<bool>(),
    )
        .prop_map(|(path, kind, service, named_port)| PathSpec {
            path,
            kind,
            service,
            named_port,
        })
}

fn ingress_spec() -> impl Strategy<Value = IngressSpec> {
    (
        any::<bool>(),
        0u8..4,
        0u8..5,
        prop::collection::vec(
            (0..HOSTS.len(), prop::collection::vec(path_spec(), 0..3)),
            0..3,
        ),
        prop::option::of(0..SERVICES.len()),
        prop::option::of((0..HOSTS.len() - 1, 0..2usize)),
        prop::option::of(any::<bool>()),
        0u8..5,
    )
        .prop_map(
            |(namespace, created, class, rules, default, tls, redirect, traffic)| IngressSpec {
                namespace,
                created,
                class,
                rules,
                default,
                tls,
                redirect,
                traffic,
            },
        )
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0..SLOTS, ingress_spec()).prop_map(|(i, s)| Change::Set(i, s)),
        2 => (0..SLOTS).prop_map(Change::Delete),
        1 => (0..3usize).prop_map(Change::ToggleService),
        1 => (0..3usize, 0u8..3).prop_map(|(i, n)| Change::Endpoints(i, n)),
        1 => any::<bool>().prop_map(Change::DefaultClass),
        1 => (0..2usize, 0u8..3).prop_map(|(i, v)| Change::Secret(i, v)),
        1 => Just(Change::Nothing),
    ]
}

fn backend(service: usize, named_port: bool) -> Value {
    let port = if named_port {
        json!({"name": "http"})
    } else {
        json!({"number": 80})
    };
    json!({"service": {"name": SERVICES[service], "port": port}})
}

fn ingress(slot: usize, spec: &IngressSpec) -> Arc<Ingress> {
    let mut annotations = json!({});
    if let Some(r) = spec.redirect {
        annotations["nginx.ingress.kubernetes.io/ssl-redirect"] = json!(r.to_string());
    }
    let nginx = |name: &str| format!("nginx.ingress.kubernetes.io/{name}");
    match spec.traffic {
        1 => {
            annotations[nginx("canary")] = json!("true");
            annotations[nginx("canary-by-header")] = json!(format!("x-canary-{slot}"));
        }
        2 => annotations[nginx("load-balance")] = json!("ewma"),
        3 => annotations[nginx("load-balance")] = json!("least_request"),
        4 => annotations[nginx("service-upstream")] = json!("true"),
        _ => {}
    }
    let mut class_name = Value::Null;
    match spec.class {
        0 | 1 => class_name = json!("sluice"),
        2 => class_name = json!("other"),
        3 => annotations["kubernetes.io/ingress.class"] = json!("sluice"),
        _ => {} // no class: ours only while `sluice` is the default class
    }
    let rules: Vec<Value> = spec
        .rules
        .iter()
        .map(|(host, paths)| {
            let paths: Vec<Value> = paths
                .iter()
                .map(|p| {
                    json!({"path": PATHS[p.path], "pathType": KINDS[p.kind],
                           "backend": backend(p.service, p.named_port)})
                })
                .collect();
            let mut rule = json!({"http": {"paths": paths}});
            if let Some(h) = HOSTS[*host] {
                rule["host"] = json!(h);
            }
            rule
        })
        .collect();
    let mut body = json!({"rules": rules});
    if !class_name.is_null() {
        body["ingressClassName"] = class_name;
    }
    if let Some(d) = spec.default {
        body["defaultBackend"] = backend(d, false);
    }
    if let Some((host, secret)) = spec.tls {
        body["tls"] =
            json!([{"hosts": [HOSTS[host].unwrap()], "secretName": format!("c{secret}")}]);
    }
    let value = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {
            "name": format!("i{slot}"),
            "namespace": if spec.namespace { "default" } else { "other" },
            "creationTimestamp": format!("2026-01-0{}T00:00:00Z", spec.created + 1),
            "annotations": annotations,
        },
        "spec": body,
    });
    Arc::new(serde_json::from_value(value).expect("valid Ingress"))
}

fn service(i: usize, namespace: &str) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": SERVICES[i], "namespace": namespace},
            // s2 is headless (service-upstream keeps its endpoints).
            "spec": {"ports": [{"port": 80, "name": "http"}],
                     "clusterIP": if i == 2 { "None".to_string() } else { format!("10.96.0.{i}") }},
        }))
        .unwrap(),
    )
}

fn slice(i: usize, namespace: &str, ready: u8) -> Arc<EndpointSlice> {
    let mut endpoints: Vec<Value> = (0..ready)
        .map(|n| json!({"addresses": [format!("10.0.{i}.{}", n + 1)]}))
        .collect();
    endpoints.push(json!({"addresses": [format!("10.0.{i}.9")],
        "conditions": {"ready": false, "serving": true, "terminating": true}}));
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("{}-1", SERVICES[i]), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": SERVICES[i]}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080 + i}],
            "endpoints": endpoints,
        }))
        .unwrap(),
    )
}

fn class(default: bool) -> Arc<IngressClass> {
    let annotations = if default {
        json!({"ingressclass.kubernetes.io/is-default-class": "true"})
    } else {
        json!({})
    };
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "sluice", "annotations": annotations},
            "spec": {"controller": "sluice.dev/ingress-controller"},
        }))
        .unwrap(),
    )
}

/// One certificate and key for every valid test Secret (generated once).
fn pem() -> &'static (String, String) {
    static PEM: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    })
}

fn secret(i: usize, namespace: &str, valid: bool) -> Arc<Secret> {
    let (cert, key) = if valid {
        pem().clone()
    } else {
        ("not a certificate".to_string(), "not a key".to_string())
    };
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": format!("c{i}"), "namespace": namespace},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": cert, "tls.key": key},
        }))
        .unwrap(),
    )
}

/// A Service in two namespaces, with its EndpointSlices.
type ServiceObjects = (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>);

/// The world, keeping the `Arc` of every object that did not change (as sources do).
struct World {
    ingresses: Vec<Option<Arc<Ingress>>>,
    services: Vec<Option<ServiceObjects>>,
    secrets: Vec<Vec<Arc<Secret>>>,
    class: Arc<IngressClass>,
}

impl World {
    fn new() -> World {
        World {
            ingresses: vec![None; SLOTS],
            services: (0..3).map(|i| Some(Self::service_objects(i, 1))).collect(),
            secrets: (0..2)
                .map(|i| vec![secret(i, "default", true), secret(i, "other", true)])
                .collect(),
            class: class(false),
        }
    }

    fn service_objects(i: usize, ready: u8) -> ServiceObjects {
        (
            vec![service(i, "default"), service(i, "other")],
            vec![slice(i, "default", ready), slice(i, "other", ready + 1)],
        )
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Set(i, spec) => self.ingresses[*i] = Some(ingress(*i, spec)),
            Change::Delete(i) => self.ingresses[*i] = None,
            Change::ToggleService(i) => {
                self.services[*i] = match self.services[*i] {
                    Some(_) => None,
                    None => Some(Self::service_objects(*i, 1)),
                }
            }
            Change::Endpoints(i, n) => {
                // New EndpointSlices, the same Service objects.
                let services = match &self.services[*i] {
                    Some((services, _)) => services.clone(),
                    None => Self::service_objects(*i, *n).0,
                };
                let slices = Self::service_objects(*i, *n).1;
                self.services[*i] = Some((services, slices));
            }
            Change::DefaultClass(d) => self.class = class(*d),
            Change::Secret(i, v) => {
                self.secrets[*i] = match v {
                    0 => vec![secret(*i, "default", true), secret(*i, "other", true)],
                    1 => vec![secret(*i, "default", false), secret(*i, "other", true)],
                    _ => Vec::new(),
                }
            }
            Change::Nothing => {}
        }
    }

    fn objects(&self) -> Objects {
        let mut o = Objects {
            ingresses: self.ingresses.iter().flatten().cloned().collect(),
            classes: vec![self.class.clone()],
            ..Objects::default()
        };
        o.secrets = self.secrets.iter().flatten().cloned().collect();
        for (services, slices) in self.services.iter().flatten() {
            o.services.extend(services.iter().cloned());
            o.slices.extend(slices.iter().cloned());
        }
        o
    }
}

fn options() -> CompileOptions {
    CompileOptions {
        default_backend: Some(sluice::control::compile::ServiceRef {
            namespace: "default".into(),
            name: "s2".into(),
            port: sluice::control::compile::PortRef::Number(80),
        }),
        ..CompileOptions::default()
    }
}

/// Every address a backend of these tests can have.
fn all_endpoints() -> Vec<std::net::SocketAddr> {
    let mut all = Vec::new();
    for i in 0..3u16 {
        for n in [1, 2, 3, 9] {
            let port = 8080 + i;
            all.push(format!("10.0.{i}.{n}:{port}").parse().unwrap());
        }
        // service-upstream: the ClusterIP.
        all.push(format!("10.96.0.{i}:80").parse().unwrap());
    }
    all
}

fn assert_same(incremental: &Compiled, full: &Compiled, changed: &[String], step: usize) {
    assert_eq!(
        incremental.snapshot.to_string(),
        full.snapshot.to_string(),
        "step {step}: route dumps differ"
    );
    for host in ["x.test", "y.test", "b.test", "a.y.test", "q.other", ""] {
        for path in ["/", "/a", "/a/", "/a/b", "/ab", "/b/c"] {
            let name = |c: &Compiled| {
                c.snapshot
                    .lookup(host, path)
                    .and_then(|id| c.snapshot.backend(id))
                    .map(|b| (b.name.clone(), b.endpoints.clone()))
            };
            assert_eq!(
                name(incremental),
                name(full),
                "step {step}: {host}{path} routes differently"
            );
        }
    }
    for e in all_endpoints() {
        assert_eq!(
            incremental.snapshot.has_endpoint(&e),
            full.snapshot.has_endpoint(&e),
            "step {step}: endpoint {e} (pooled connections to it would be kept or closed wrongly)"
        );
    }
    let of_changed = |c: &Compiled| {
        let mut d: Vec<String> = c
            .diagnostics
            .iter()
            .filter(|d| changed.contains(&d.object))
            .map(|d| d.to_string())
            .collect();
        d.sort();
        d
    };
    assert_eq!(
        of_changed(incremental),
        of_changed(full),
        "step {step}: diagnostics of the changed Ingresses differ"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn incremental_routes_exactly_like_a_full_compile(
        changes in prop::collection::vec(change(), 1..25)
    ) {
        let mut world = World::new();
        let opts = options();
        let (mut inc, first) = Incremental::new(&world.objects(), opts.clone(), 1);
        assert_same(&first, &compile(&world.objects(), &opts, 1), &[], 0);
        for (step, change) in changes.iter().enumerate() {
            world.apply(change);
            let objects = world.objects();
            let version = step as u64 + 2;
            let incremental = inc.update(&objects, version);
            let full = compile(&objects, &opts, version);
            let changed: Vec<String> = match change {
                Change::Set(i, spec) => vec![format!(
                    "Ingress {}/i{i}",
                    if spec.namespace { "default" } else { "other" }
                )],
                _ => Vec::new(),
            };
            assert_same(&incremental, &full, &changed, step + 1);
        }
    }
}

/// Many changed hosts make the overlay large; the compaction that follows is a full compile
/// with an empty overlay, and routes the same.
#[test]
fn a_large_overlay_asks_for_compaction_and_compacts() {
    let mk = |name: &str, hosts: std::ops::Range<usize>| -> Arc<Ingress> {
        let rules: Vec<Value> = hosts
            .map(|h| {
                json!({"host": format!("h{h}.test"), "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": backend(0, false)}]}})
            })
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"ingressClassName": "sluice", "rules": rules},
            }))
            .unwrap(),
        )
    };
    let mut objects = World::new().objects();
    objects.ingresses = vec![mk("big", 0..10_000)];
    let opts = CompileOptions::default();
    let (mut inc, _) = Incremental::new(&objects, opts.clone(), 1);
    assert!(!inc.compaction_due());

    // One small change: carried in the overlay, no compaction needed.
    objects.ingresses.push(mk("small", 20_000..20_010));
    let c = inc.update(&objects, 2);
    assert_eq!(c.snapshot.table.overlay_len(), 10);
    assert_eq!(c.snapshot.table.base_len(), 10_000);
    assert!(!inc.compaction_due());

    // 2,000 hosts replaced: past the threshold.
    objects.ingresses[1] = mk("small", 30_000..32_000);
    let c = inc.update(&objects, 3);
    assert_eq!(c.snapshot.table.host_count(), 12_000);
    assert!(inc.compaction_due());
    let compacted = inc.full(&objects, 4);
    assert_eq!(compacted.snapshot.table.overlay_len(), 0);
    assert_eq!(compacted.snapshot.table.host_count(), 12_000);
    assert_eq!(
        compacted
            .snapshot
            .to_string()
            .replace("version 4", "version 3"),
        c.snapshot.to_string()
    );
    assert!(!inc.compaction_due());
}

/// Two objects of one name (two manifest files defining the same Ingress): the full compiler
/// keeps both, and so does the incremental one, whichever of them is the older object.
#[test]
fn two_objects_of_one_name_compile_like_the_full_compiler() {
    let spec = |host: usize| IngressSpec {
        namespace: true,
        created: 0,
        class: 0,
        rules: vec![(
            host,
            vec![PathSpec {
                path: 0,
                kind: 1,
                service: 0,
                named_port: false,
            }],
        )],
        default: None,
        tls: None,
        redirect: None,
        traffic: 0,
    };
    let opts = CompileOptions::default();
    let mut objects = World::new().objects();
    let first = ingress(0, &spec(0));
    objects.ingresses = vec![first.clone()];
    let (mut inc, _) = Incremental::new(&objects, opts.clone(), 1);
    for (version, ingresses) in [
        (2, vec![first.clone(), ingress(0, &spec(1))]),
        (3, vec![ingress(0, &spec(4)), first.clone()]),
        (4, vec![first.clone()]),
    ] {
        objects.ingresses = ingresses;
        let incremental = inc.update(&objects, version);
        let full = compile(&objects, &opts, version);
        assert_eq!(
            incremental.snapshot.to_string(),
            full.snapshot.to_string(),
            "version {version}"
        );
    }
}

/// An Ingress that keeps pointing at new Services (hosts unchanged) leaves unused backend ids
/// behind; past a bound the compiler asks for the full compile that drops them.
#[test]
fn unused_backend_ids_ask_for_compaction() {
    let mk = |service: usize| -> Arc<Ingress> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"ingressClassName": "sluice", "rules": [{"host": "x.test", "http": {
                    "paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {
                        "name": format!("svc-{service}"), "port": {"number": 80}}}}]}}]},
            }))
            .unwrap(),
        )
    };
    let mut objects = Objects {
        ingresses: vec![mk(0)],
        ..Objects::default()
    };
    let (mut inc, _) = Incremental::new(&objects, CompileOptions::default(), 1);
    let mut due_at = None;
    for n in 1..2_000 {
        objects.ingresses = vec![mk(n)];
        let c = inc.update(&objects, n as u64 + 1);
        assert_eq!(c.snapshot.table.overlay_len(), 1);
        if inc.compaction_due() {
            due_at = Some(n);
            let compacted = inc.full(&objects, n as u64 + 1);
            assert_eq!(compacted.snapshot.backends.len(), 1);
            break;
        }
    }
    assert_eq!(due_at, Some(1024), "1,025 ids of which one is used");
}
