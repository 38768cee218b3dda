//! Active HTTP health checks (`sluice.dev/health-check-*`) through real sockets: three
//! in-process pods behind `sluice run`; a pod whose health path answers 503 leaves the
//! rotation after the unhealthy threshold (no client request reaches it any more), comes back
//! after it recovers, and when all three fail all three stay in rotation (panic). Plus the
//! compiler side without sockets: the annotations, the conflict report, and the health view
//! applied to a snapshot; and the cluster source (a mock API server) the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::control::compile::{CompileOptions, Objects, PortRef, ServiceRef, compile};
use sluice::control::health_check::HealthView;
use sluice::control::incremental::Incremental;
use sluice::control::manifests::parse_documents;
use support::binary;

mod support;

/// Pods on 127.0.0.1..=n, one port. `GET /healthz` answers 200 while `healthy[i]`, else 503
/// (and records the `Host` and `User-Agent` it was sent); any other request answers
/// `pod-<i+1>` and counts in `hits[i]`.
struct Pods {
    port: u16,
    n: usize,
    healthy: Vec<Arc<AtomicBool>>,
    hits: Vec<Arc<AtomicUsize>>,
    checks: Arc<Mutex<Vec<(String, String)>>>,
}

impl Pods {
    fn start(n: usize) -> Pods {
        let (port, listeners) = support::pods::bind(n);
        let healthy: Vec<_> = (0..n).map(|_| Arc::new(AtomicBool::new(true))).collect();
        let hits: Vec<_> = (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        let checks = Arc::new(Mutex::new(Vec::new()));
        for (i, listener) in listeners.into_iter().enumerate() {
            let (healthy, hits, checks) = (healthy[i].clone(), hits[i].clone(), checks.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (healthy, hits, checks) = (healthy.clone(), hits.clone(), checks.clone());
                    std::thread::spawn(move || serve(i, stream, &healthy, &hits, &checks));
                }
            });
        }
        Pods {
            port,
            n,
            healthy,
            hits,
            checks,
        }
    }

    fn manifests(&self) -> String {
        let annotations = "sluice.dev/health-check-path: /healthz, \
             sluice.dev/health-check-interval: 1s, \
             sluice.dev/health-check-timeout: 500ms, \
             sluice.dev/health-check-unhealthy-threshold: \"2\", \
             sluice.dev/health-check-healthy-threshold: \"2\"";
        let ingress = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\n\
             metadata: {{name: app, namespace: default, annotations: {{{annotations}}}}}\n\
             spec:\n  ingressClassName: sluice\n  rules:\n  - host: app.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n"
        );
        support::pods::manifests(&ingress, self.port, 1..=self.n)
    }

    fn hits(&self) -> Vec<usize> {
        self.hits.iter().map(|h| h.load(Ordering::SeqCst)).collect()
    }
}

fn serve(
    i: usize,
    mut stream: TcpStream,
    healthy: &AtomicBool,
    hits: &AtomicUsize,
    checks: &Mutex<Vec<(String, String)>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let field = |name: &str| {
            head.lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let answer = if head.starts_with("GET /healthz ") {
            checks
                .lock()
                .unwrap()
                .push((field("host"), field("user-agent")));
            if healthy.load(Ordering::SeqCst) {
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string()
            } else {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown".to_string()
            }
        } else {
            hits.fetch_add(1, Ordering::SeqCst);
            let body = format!("pod-{}", i + 1);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The status of one GET on a fresh connection (0: closed without a status line).
fn get(addr: SocketAddr, path: &str) -> u16 {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    out.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `n` requests, each of which must answer 200; the hits each pod got from them.
fn round(addr: SocketAddr, pods: &Pods, n: usize) -> Vec<usize> {
    let before = pods.hits();
    for i in 0..n {
        assert_eq!(get(addr, &format!("/r{i}")), 200, "request {i}");
    }
    let after = pods.hits();
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

#[allow(clippy::disallowed_methods)] // a test's own stopwatch, for a generous deadline
/// Waits (generously) until a round of requests satisfies `done`; the last round.
fn until(addr: SocketAddr, pods: &Pods, what: &str, done: impl Fn(&[usize]) -> bool) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = round(addr, pods, 30);
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: still {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_endpoint_failing_its_health_check_leaves_the_rotation_and_comes_back() {
    let pods = Pods::start(3);
    let s = binary::start(
        "health-one",
        &[("app.yaml", &pods.manifests())],
        "[outlier]\nenabled = false\n",
        2,
    );
    // All healthy: round robin reaches every pod.
    let first = round(s.addr, &pods, 30);
    assert!(first.iter().all(|n| *n > 0), "{first:?}");

    // Pod 2's health path answers 503 (its other answers stay 200: only the check sees it).
    pods.healthy[1].store(false, Ordering::SeqCst);
    let out = until(s.addr, &pods, "pod 2 leaves the rotation", |got| {
        got[1] == 0
    });
    assert!(out[0] > 0 && out[2] > 0, "{out:?}");
    // And stays out: no client request reaches it.
    std::thread::sleep(Duration::from_millis(1500));
    let still = round(s.addr, &pods, 30);
    assert_eq!(still[1], 0, "{still:?}");

    // It recovers: back in rotation after the healthy threshold.
    pods.healthy[1].store(true, Ordering::SeqCst);
    until(s.addr, &pods, "pod 2 back in rotation", |got| {
        got.iter().all(|n| *n > 0)
    });

    // The checks carry the Ingress host and our User-Agent.
    let checks = pods.checks.lock().unwrap().clone();
    assert!(!checks.is_empty());
    for (host, agent) in &checks {
        assert_eq!(host, "app.test");
        assert_eq!(agent, "sluice-health-check");
    }
}

#[test]
fn when_every_endpoint_fails_its_health_check_all_stay_in_rotation() {
    let pods = Pods::start(3);
    let s = binary::start(
        "health-all",
        &[("app.yaml", &pods.manifests())],
        "[outlier]\nenabled = false\n",
        2,
    );
    pods.healthy[0].store(false, Ordering::SeqCst);
    pods.healthy[1].store(false, Ordering::SeqCst);
    // Two fail first: only pod 3 is served.
    until(s.addr, &pods, "only pod 3 served", |got| {
        got[0] == 0 && got[1] == 0
    });
    // Then the last one fails too: panic, all three are served again (the upstreams' own
    // answers rather than an empty rotation).
    pods.healthy[2].store(false, Ordering::SeqCst);
    until(s.addr, &pods, "all three served in panic", |got| {
        got.iter().all(|n| *n > 0)
    });
    // It holds: the checks keep failing and requests keep reaching all three.
    std::thread::sleep(Duration::from_millis(2500));
    let got = round(s.addr, &pods, 30);
    assert!(got.iter().all(|n| *n > 0), "{got:?}");
}

// ---- the cluster source ----

/// The same through the Kubernetes source (a mock API server speaking list and watch): the
/// checker runs beside its update pipeline and feeds it the same way.
#[test]
fn the_cluster_source_takes_an_unhealthy_endpoint_out_and_back() {
    use serde_json::json;
    use sluice::control::watch::{KubeOptions, KubeSettings, KubeSource};
    use sluice::engine::{Engine, EngineConfig};
    use support::mock_api::{self, MockApi};

    let pods = Pods::start(3);
    let mock = MockApi::start();
    let dir = std::env::temp_dir().join(format!("sluice-health-k8s-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    mock.apply(
        mock_api::CLASSES,
        json!({"metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress-controller"}}),
    );
    mock.apply(
        mock_api::SERVICES,
        json!({"metadata": {"name": "app", "namespace": "default"},
               "spec": {"ports": [{"name": "http", "port": 80}], "clusterIP": "10.0.0.1"}}),
    );
    let eps: Vec<_> = (1..=3)
        .map(|i| json!({"addresses": [format!("127.0.0.{i}")], "conditions": {"ready": true}}))
        .collect();
    mock.apply(
        mock_api::SLICES,
        json!({"metadata": {"name": "app-1", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "app"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": pods.port}], "endpoints": eps}),
    );
    mock.apply(
        mock_api::INGRESSES,
        json!({"metadata": {"name": "app", "namespace": "default", "annotations": {
                   "sluice.dev/health-check-path": "/healthz",
                   "sluice.dev/health-check-interval": "1s",
                   "sluice.dev/health-check-unhealthy-threshold": "2",
                   "sluice.dev/health-check-healthy-threshold": "2"}},
               "spec": {"ingressClassName": "sluice", "rules": [{"host": "app.test", "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "app", "port": {"number": 80}}}}]}}]}}),
    );
    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(mock.kubeconfig(&dir)),
        ..KubeOptions::default()
    };
    let settings = KubeSettings::new(&options, &CompileOptions::default());
    let mut source = KubeSource::start(settings).unwrap();
    let compiled = source
        .wait_synced(Duration::from_secs(20))
        .expect("source works")
        .expect("initial sync within 20 s");
    let cfg = EngineConfig {
        workers: vec![None; 2],
        http: "127.0.0.1:0".parse().unwrap(),
        upstream_max_idle: 4,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, Arc::new(compiled.snapshot)).expect("engine starts");
    source.attach(engine.publisher());
    let addr = engine.local_addr();

    let first = round(addr, &pods, 30);
    assert!(first.iter().all(|n| *n > 0), "{first:?}");
    pods.healthy[0].store(false, Ordering::SeqCst);
    until(addr, &pods, "pod 1 leaves the rotation", |got| {
        got[0] == 0 && got[1] > 0 && got[2] > 0
    });
    pods.healthy[0].store(true, Ordering::SeqCst);
    until(addr, &pods, "pod 1 back in rotation", |got| {
        got.iter().all(|n| *n > 0)
    });

    source.stop();
    engine.stop();
    engine.join().unwrap();
}

// ---- the compiler side ----

const SERVICES: &str = "\
apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: ns}\nspec: {ports: [{port: 80}]}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: app-1, namespace: ns, labels: {kubernetes.io/service-name: app}}\n\
addressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [\"10.0.0.1\", \"10.0.0.2\", \"10.0.0.3\"]}]\n";

fn ingress(name: &str, day: u32, host: &str, annotations: &[&str]) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: {name}, namespace: ns, creationTimestamp: \"2026-01-{day:02}T00:00:00Z\", annotations: {{{}}}}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n",
        annotations.join(", ")
    )
}

fn objects(yaml: &str) -> Objects {
    let (objects, errors) = parse_documents(&format!("{SERVICES}{yaml}"), "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    Objects::from_objects(objects)
}

fn app() -> ServiceRef {
    ServiceRef {
        namespace: "ns".into(),
        name: "app".into(),
        port: PortRef::Number(80),
    }
}

fn ep(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 8080))
}

fn view(down: &[u8]) -> Arc<HealthView> {
    let mut v = HealthView::default();
    v.down
        .insert(app(), down.iter().map(|d| ep(*d)).collect::<BTreeSet<_>>());
    Arc::new(v)
}

#[test]
fn the_plan_names_the_checked_backend_with_its_settings_and_every_endpoint() {
    let yaml = ingress(
        "web",
        1,
        "shop.test",
        &[
            "sluice.dev/health-check-path: /ready",
            "sluice.dev/health-check-interval: 10s",
            "sluice.dev/health-check-expected-status: \"200-204\"",
            "sluice.dev/health-check-port: \"9090\"",
        ],
    );
    let (inc, compiled) = Incremental::new(&objects(&yaml), CompileOptions::default(), 1);
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        compiled.diagnostics
    );
    let plan = inc.health_plan();
    assert_eq!(plan.len(), 1);
    let p = &plan[0];
    assert_eq!(p.target, app());
    assert_eq!(p.endpoints, vec![ep(1), ep(2), ep(3)]);
    assert_eq!(p.check.path, "/ready");
    assert_eq!(p.check.interval, Duration::from_secs(10));
    assert_eq!(p.check.timeout, Duration::from_secs(1));
    assert_eq!((p.check.healthy, p.check.unhealthy), (2, 3));
    assert_eq!(p.check.expect, (200, 204));
    assert_eq!(p.check.port, Some(9090));
    assert_eq!(p.check.host.as_deref(), Some("shop.test"));

    // Without the annotation nothing is planned; ingress-nginx's prefix is not read for it.
    let plain = ingress(
        "web",
        1,
        "shop.test",
        &["nginx.ingress.kubernetes.io/health-check-path: /ready"],
    );
    let (inc, _) = Incremental::new(&objects(&plain), CompileOptions::default(), 1);
    assert!(inc.health_plan().is_empty());
}

#[test]
fn unhealthy_endpoints_leave_the_snapshot_unless_all_are_unhealthy() {
    let yaml = ingress(
        "web",
        1,
        "shop.test",
        &["sluice.dev/health-check-path: /ready"],
    );
    let objects = objects(&yaml);
    let (mut inc, compiled) = Incremental::new(&objects, CompileOptions::default(), 1);
    let endpoints = |s: &sluice::core::snapshot::Snapshot| s.backends[0].endpoints.clone();
    assert_eq!(endpoints(&compiled.snapshot), vec![ep(1), ep(2), ep(3)]);

    inc.set_health(view(&[2]));
    let s = inc.health_snapshot(2);
    assert_eq!(endpoints(&s), vec![ep(1), ep(3)]);
    assert!(!s.has_endpoint(&ep(2)));
    // The plan still checks the unhealthy one (to see it recover).
    assert_eq!(inc.health_plan()[0].endpoints, vec![ep(1), ep(2), ep(3)]);
    // A later compile of the objects keeps serving by the view.
    let c = inc.update(&objects, 3);
    assert_eq!(endpoints(&c.snapshot), vec![ep(1), ep(3)]);

    // Panic: all unhealthy → all served.
    inc.set_health(view(&[1, 2, 3]));
    assert_eq!(
        endpoints(&inc.health_snapshot(4)),
        vec![ep(1), ep(2), ep(3)]
    );

    // Recovered.
    inc.set_health(Arc::new(HealthView::default()));
    assert_eq!(
        endpoints(&inc.health_snapshot(5)),
        vec![ep(1), ep(2), ep(3)]
    );

    // A backend nobody asks to check is never filtered, whatever the view says.
    let unchecked = ingress("web", 1, "shop.test", &[]);
    let (mut inc, _) = Incremental::new(&self::objects(&unchecked), CompileOptions::default(), 1);
    inc.set_health(view(&[2]));
    assert_eq!(
        endpoints(&inc.health_snapshot(2)),
        vec![ep(1), ep(2), ep(3)]
    );
}

#[test]
fn bad_values_are_reported_and_reject_only_their_field() {
    let yaml = ingress(
        "web",
        1,
        "shop.test",
        &[
            "sluice.dev/health-check-path: /ready",
            "sluice.dev/health-check-interval: 500ms",
            "sluice.dev/health-check-unhealthy-threshold: \"0\"",
            "sluice.dev/health-check-expected-status: 2xx",
        ],
    );
    let compiled = compile(&objects(&yaml), &CompileOptions::default(), 1);
    let fields: BTreeMap<String, String> = compiled
        .diagnostics
        .iter()
        .map(|d| (d.field.clone(), d.message.clone()))
        .collect();
    for key in [
        "health-check-interval",
        "health-check-unhealthy-threshold",
        "health-check-expected-status",
    ] {
        let field = format!("metadata.annotations[sluice.dev/{key}]");
        assert!(fields.contains_key(&field), "{field} not in {fields:?}");
    }
    // The route is served, and the check runs with the defaults for those fields.
    assert!(compiled.snapshot.table.route("shop.test", "/").is_some());
    let (inc, _) = Incremental::new(&objects(&yaml), CompileOptions::default(), 1);
    let check = &inc.health_plan()[0].check;
    assert_eq!(check.path, "/ready");
    assert_eq!(check.interval, Duration::from_secs(5));
    assert_eq!(check.unhealthy, 3);
    assert_eq!(check.expect, (200, 399));

    // A path that could smuggle a second request line is refused: no check at all.
    let smuggle = ingress(
        "web",
        1,
        "shop.test",
        &["sluice.dev/health-check-path: \"/a HTTP/1.1\""],
    );
    let compiled = compile(&objects(&smuggle), &CompileOptions::default(), 1);
    assert!(
        compiled
            .diagnostics
            .iter()
            .any(|d| d.field == "metadata.annotations[sluice.dev/health-check-path]"),
        "{:?}",
        compiled.diagnostics
    );
    let (inc, _) = Incremental::new(&objects(&smuggle), CompileOptions::default(), 1);
    assert!(inc.health_plan().is_empty());

    // A timeout not below the interval is reported.
    let slow = ingress(
        "web",
        1,
        "shop.test",
        &[
            "sluice.dev/health-check-path: /ready",
            "sluice.dev/health-check-interval: 2s",
            "sluice.dev/health-check-timeout: 3s",
        ],
    );
    let compiled = compile(&objects(&slow), &CompileOptions::default(), 1);
    assert!(
        compiled
            .diagnostics
            .iter()
            .any(|d| d.field == "metadata.annotations[sluice.dev/health-check-timeout]"),
        "{:?}",
        compiled.diagnostics
    );
    let (inc, _) = Incremental::new(&objects(&slow), CompileOptions::default(), 1);
    assert_eq!(inc.health_plan()[0].check.timeout, Duration::from_secs(1));
}

#[test]
fn two_ingresses_that_disagree_on_the_check_get_the_conflict_report() {
    let older = ingress(
        "first",
        1,
        "a.test",
        &["sluice.dev/health-check-path: /ready"],
    );
    let newer = ingress(
        "second",
        2,
        "b.test",
        &["sluice.dev/health-check-path: /other"],
    );
    let yaml = format!("{older}{newer}");
    let compiled = compile(&objects(&yaml), &CompileOptions::default(), 1);
    let conflict: Vec<_> = compiled
        .diagnostics
        .iter()
        .filter(|d| d.message.contains("health check"))
        .collect();
    assert_eq!(conflict.len(), 1, "{:?}", compiled.diagnostics);
    assert_eq!(conflict[0].object, "Ingress ns/second");
    assert!(
        conflict[0].message.contains("ns/first"),
        "{}",
        conflict[0].message
    );
    // The oldest decides.
    let (inc, _) = Incremental::new(&objects(&yaml), CompileOptions::default(), 1);
    assert_eq!(inc.health_plan()[0].check.path, "/ready");

    // The same settings on two hosts are no conflict (only the Host sent differs).
    let same = format!(
        "{older}{}",
        ingress(
            "second",
            2,
            "b.test",
            &["sluice.dev/health-check-path: /ready"]
        )
    );
    let compiled = compile(&objects(&same), &CompileOptions::default(), 1);
    assert!(
        !compiled
            .diagnostics
            .iter()
            .any(|d| d.message.contains("health check")),
        "{:?}",
        compiled.diagnostics
    );
}
