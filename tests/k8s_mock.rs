//! The Kubernetes source end to end against a mock API server that speaks the real list and
//! watch protocol: Sluice's real engine (io_uring workers on loopback) serves what the cluster
//! says, through real sockets, to in-process upstreams standing in for pods. Covers initial
//! sync, add/modify/delete of every kind, a cut watch stream (resumed, no event lost), 410 Gone
//! (re-listed, never an empty moment), class filtering, endpoint transitions, leader-only
//! status writes, Events for rejected objects, and which Secrets are cached. The same
//! behaviours are tested against a real API server in `tests/k8s_real.rs`; the mock stays for
//! the faults a real one cannot produce on demand (see `support/mock_api.rs`).
// Wall-clock instants only bound waits; nothing here asserts on speed.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::admin::{self, AdminHandle};
use sluice::control::compile::CompileOptions;
use sluice::control::leader::LeaseSettings;
use sluice::control::watch::{KubeOptions, KubeSettings, KubeSource, KubeStats};
use sluice::demo::{DemoUpstream, spawn_upstream};
use sluice::engine::{Engine, EngineConfig};
use support::mock_api::{self, MockApi};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-k8s-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn class(name: &str, controller: &str, default: bool) -> Value {
    let mut c = json!({"metadata": {"name": name}, "spec": {"controller": controller}});
    if default {
        c["metadata"]["annotations"] =
            json!({"ingressclass.kubernetes.io/is-default-class": "true"});
    }
    c
}

pub fn service(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default"},
           "spec": {"ports": [{"name": "http", "port": 80}], "clusterIP": "10.0.0.1",
                    "selector": {"app": name}}})
}

/// An endpoint: address, ready, serving, terminating.
type Ep = (SocketAddr, bool, bool, bool);

pub fn ready(addr: SocketAddr) -> Ep {
    (addr, true, true, false)
}

fn slice(name: &str, svc: &str, endpoints: &[Ep]) -> Value {
    let port = endpoints.first().map_or(1, |e| e.0.port());
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(a, r, s, t)| {
            json!({"addresses": [a.ip().to_string()], "nodeName": "node-1",
                   "conditions": {"ready": r, "serving": s, "terminating": t},
                   "targetRef": {"kind": "Pod", "name": format!("pod-{}", a.port())}})
        })
        .collect();
    json!({"metadata": {"name": name, "namespace": "default",
                        "labels": {"kubernetes.io/service-name": svc, "other": "x"},
                        "managedFields": [{"manager": "kube-controller-manager"}]},
           "addressType": "IPv4", "ports": [{"name": "http", "port": port}], "endpoints": eps})
}

fn ingress(name: &str, host: &str, svc: &str, class: Option<&str>) -> Value {
    let mut i = json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}]}});
    if let Some(c) = class {
        i["spec"]["ingressClassName"] = json!(c);
    }
    i
}

/// Options for a test replica: the mock's kubeconfig, fast lease timings and backoff.
fn settings(mock: &MockApi, dir: &std::path::Path, identity: &str) -> KubeSettings {
    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(mock.kubeconfig(dir)),
        election_namespace: Some("sluice".into()),
        ..KubeOptions::default()
    };
    let mut s = KubeSettings::new(&options, &CompileOptions::default());
    s.identity = identity.to_string();
    s.lease = LeaseSettings {
        duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry: Duration::from_millis(100),
    };
    s.backoff_max = Duration::from_millis(200);
    s
}

struct Replica {
    source: KubeSource,
    engine: Engine,
    admin: AdminHandle,
    stats: Arc<KubeStats>,
}

impl Replica {
    fn addr(&self) -> SocketAddr {
        self.engine.local_addr()
    }

    fn stop(self) {
        self.source.stop();
        self.engine.stop();
        self.engine.join().unwrap();
        self.admin.join();
    }
}

fn start(settings: KubeSettings) -> Replica {
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
    let stats = source.stats();
    let s = stats.clone();
    engine
        .state()
        .extra_metrics
        .lock()
        .unwrap()
        .push(Box::new(move |out: &mut String| s.render(out)));
    source.attach(engine.publisher());
    let admin = admin::start("127.0.0.1:0".parse().unwrap(), engine.state().clone())
        .expect("admin server starts");
    Replica {
        source,
        engine,
        admin,
        stats,
    }
}

/// One request with `Connection: close`; returns (status, body).
fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

/// Who answers `host`: the upstream's name, or the status code when Sluice answers.
fn who(addr: SocketAddr, host: &str) -> String {
    let (status, body) = get(addr, host, "/");
    if status == 200 {
        body.split_whitespace().next().unwrap_or("").to_string()
    } else {
        status.to_string()
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for: {what}");
}

fn expect_who(r: &Replica, host: &str, want: &str) {
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        last = who(r.addr(), host);
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{host}: wanted {want}, still {last}");
}

fn upstreams(names: &[&str]) -> Vec<DemoUpstream> {
    names
        .iter()
        .map(|n| spawn_upstream(n, "127.0.0.1:0".parse().unwrap()).unwrap())
        .collect()
}

/// The usual world: our IngressClass, Service `web` with endpoint `a`, Ingress a.test → web.
fn basic(mock: &MockApi, a: SocketAddr) {
    mock.apply(
        mock_api::CLASSES,
        class("sluice", "sluice.dev/ingress-controller", false),
    );
    mock.apply(mock_api::SERVICES, service("web"));
    mock.apply(mock_api::SLICES, slice("web-1", "web", &[ready(a)]));
    mock.apply(
        mock_api::INGRESSES,
        ingress("web", "a.test", "web", Some("sluice")),
    );
}

#[test]
fn initial_sync_then_every_kind_changes_are_followed() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a", "pod-b", "pod-c"]);
    basic(&mock, up[0].addr);
    let dir = temp_dir("follow");
    let r = start(settings(&mock, &dir, "one"));
    assert_eq!(
        who(r.addr(), "a.test"),
        "pod-a",
        "served from the initial list"
    );
    assert!(r.stats.synced.load(Ordering::Relaxed));

    // EndpointSlice modified: a → b.
    mock.apply(
        mock_api::SLICES,
        slice("web-1", "web", &[ready(up[1].addr)]),
    );
    expect_who(&r, "a.test", "pod-b");
    // A second slice of the same Service: both slices' endpoints merge.
    mock.apply(
        mock_api::SLICES,
        slice("web-2", "web", &[ready(up[2].addr)]),
    );
    eventually("both slices serve", || {
        let seen: std::collections::BTreeSet<String> =
            (0..8).map(|_| who(r.addr(), "a.test")).collect();
        seen.contains("pod-b") && seen.contains("pod-c")
    });
    // EndpointSlice deleted: only the other slice is left.
    mock.delete(mock_api::SLICES, "default", "web-1");
    eventually("only pod-c", || {
        (0..6).all(|_| who(r.addr(), "a.test") == "pod-c")
    });
    // Ingress added.
    mock.apply(
        mock_api::INGRESSES,
        ingress("second", "b.test", "web", Some("sluice")),
    );
    expect_who(&r, "b.test", "pod-c");
    // Ingress modified: its host moves.
    mock.apply(
        mock_api::INGRESSES,
        ingress("second", "c.test", "web", Some("sluice")),
    );
    expect_who(&r, "c.test", "pod-c");
    expect_who(&r, "b.test", "404");
    // Ingress deleted.
    mock.delete(mock_api::INGRESSES, "default", "second");
    expect_who(&r, "c.test", "404");
    // Service modified (port renamed: the slice port no longer matches) → 503; back → served.
    let mut renamed = service("web");
    renamed["spec"]["ports"][0]["name"] = json!("other");
    mock.apply(mock_api::SERVICES, renamed);
    expect_who(&r, "a.test", "503");
    mock.apply(mock_api::SERVICES, service("web"));
    expect_who(&r, "a.test", "pod-c");
    // Service deleted → 503 (the path stays routed).
    mock.delete(mock_api::SERVICES, "default", "web");
    expect_who(&r, "a.test", "503");
    mock.apply(mock_api::SERVICES, service("web"));
    expect_who(&r, "a.test", "pod-c");
    // IngressClass deleted: `ingressClassName: sluice` still names our class by name, so the
    // Ingress stays ours; a class of that name with another controller takes it away.
    mock.apply(
        mock_api::CLASSES,
        class("sluice", "example.com/other", false),
    );
    expect_who(&r, "a.test", "404");
    mock.delete(mock_api::CLASSES, "", "sluice");
    expect_who(&r, "a.test", "pod-c");
    r.stop();
}

#[test]
fn a_cut_watch_resumes_from_its_resource_version_without_losing_an_event() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a", "pod-b"]);
    basic(&mock, up[0].addr);
    let dir = temp_dir("resume");
    let r = start(settings(&mock, &dir, "one"));
    assert_eq!(who(r.addr(), "a.test"), "pod-a");
    eventually("watches open", || mock.watches(mock_api::SLICES) >= 1);
    let lists = mock.lists(mock_api::SLICES);
    let watches = mock.watches(mock_api::SLICES);

    // The connection drops; while the client is away, the slice changes.
    mock.hold_watches(true);
    mock.cut_watches();
    eventually("the client tries to watch again", || {
        mock.watches(mock_api::SLICES) > watches
    });
    mock.apply(
        mock_api::SLICES,
        slice("web-1", "web", &[ready(up[1].addr)]),
    );
    // While disconnected nothing changes for clients.
    assert_eq!(who(r.addr(), "a.test"), "pod-a");
    mock.hold_watches(false);
    expect_who(&r, "a.test", "pod-b");
    assert_eq!(
        mock.lists(mock_api::SLICES),
        lists,
        "resumed with resourceVersion, not re-listed"
    );
    // A BOOKMARK moves the resume point without changing anything.
    mock.bookmark();
    mock.cut_watches();
    mock.apply(
        mock_api::SLICES,
        slice("web-1", "web", &[ready(up[0].addr)]),
    );
    expect_who(&r, "a.test", "pod-a");
    assert_eq!(mock.lists(mock_api::SLICES), lists);
    r.stop();
}

/// Hammers `host` until stopped; counts answers that are not from `allowed` upstreams.
fn hammer(
    addr: SocketAddr,
    host: &'static str,
    allowed: &'static [&'static str],
) -> (
    Arc<AtomicBool>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    std::thread::JoinHandle<Vec<String>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let (s, o, b) = (stop.clone(), ok.clone(), bad.clone());
    let t = std::thread::spawn(move || {
        let mut wrong = Vec::new();
        while !s.load(Ordering::Relaxed) {
            let w = who(addr, host);
            if allowed.contains(&w.as_str()) {
                o.fetch_add(1, Ordering::Relaxed);
            } else {
                b.fetch_add(1, Ordering::Relaxed);
                wrong.push(w);
            }
        }
        wrong
    });
    (stop, ok, bad, t)
}

fn gone_relists_without_an_empty_moment(http_status: bool) {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a", "pod-b"]);
    basic(&mock, up[0].addr);
    mock.apply(
        mock_api::INGRESSES,
        ingress("old", "old.test", "web", Some("sluice")),
    );
    let dir = temp_dir(if http_status {
        "gone-http"
    } else {
        "gone-event"
    });
    let r = start(settings(&mock, &dir, "one"));
    assert_eq!(who(r.addr(), "old.test"), "pod-a");
    eventually("watches open", || {
        mock.watches(mock_api::INGRESSES) >= 1 && mock.watches(mock_api::SLICES) >= 1
    });
    let lists = mock.lists(mock_api::INGRESSES);
    let (stop, ok, bad, t) = hammer(r.addr(), "a.test", &["pod-a", "pod-b"]);

    // Away long enough for history to be compacted: resuming is impossible.
    mock.hold_watches(true);
    mock.cut_watches();
    mock.delete(mock_api::INGRESSES, "default", "old");
    mock.apply(
        mock_api::SLICES,
        slice("web-1", "web", &[ready(up[1].addr)]),
    );
    mock.compact();
    if http_status {
        mock.gone_http(100);
    }
    // Slow lists: the re-list takes a while, and traffic keeps flowing meanwhile.
    mock.set_list_delay(Duration::from_millis(300));
    mock.hold_watches(false);
    eventually("re-listed", || mock.lists(mock_api::INGRESSES) > lists);
    if http_status {
        mock.gone_http(0);
    }
    expect_who(&r, "a.test", "pod-b");
    expect_who(&r, "old.test", "404");
    stop.store(true, Ordering::Relaxed);
    let wrong = t.join().unwrap();
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "answers during the re-list (first 10): {:?}",
        &wrong[..wrong.len().min(10)]
    );
    assert!(r.stats.relists.load(Ordering::Relaxed) >= 1);
    r.stop();
}

#[test]
fn gone_as_a_watch_event_relists_without_an_empty_moment() {
    gone_relists_without_an_empty_moment(false);
}

#[test]
fn gone_as_an_http_status_relists_without_an_empty_moment() {
    gone_relists_without_an_empty_moment(true);
}

#[test]
fn losing_the_api_server_changes_nothing_that_is_served() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a", "pod-b"]);
    basic(&mock, up[0].addr);
    let dir = temp_dir("errors");
    let r = start(settings(&mock, &dir, "one"));
    // The API server goes away: every list and watch is refused for a while.
    mock.set_down(true);
    eventually("the watchers keep retrying", || {
        mock.refused() >= 10 && r.stats.watch_errors.load(Ordering::Relaxed) >= 5
    });
    for _ in 0..20 {
        assert_eq!(who(r.addr(), "a.test"), "pod-a");
    }
    let (status, _) = get(r.admin.local_addr(), "admin", "/readyz");
    assert_eq!(status, 200, "ready stays true while the API server is away");
    // Back, with changes made meanwhile (written while "down", as by another client of a
    // recovering control plane): they arrive.
    mock.apply(
        mock_api::SLICES,
        slice("web-1", "web", &[ready(up[1].addr)]),
    );
    mock.apply(
        mock_api::INGRESSES,
        ingress("later", "later.test", "web", Some("sluice")),
    );
    mock.set_down(false);
    expect_who(&r, "later.test", "pod-b");
    expect_who(&r, "a.test", "pod-b");
    r.stop();
}

#[test]
fn the_first_sync_waits_for_the_api_server() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a"]);
    basic(&mock, up[0].addr);
    mock.set_down(true);
    let dir = temp_dir("late");
    let source = KubeSource::start(settings(&mock, &dir, "one")).unwrap();
    assert!(
        source
            .wait_synced(Duration::from_millis(700))
            .unwrap()
            .is_none(),
        "no snapshot without a complete list"
    );
    assert!(!source.stats().synced.load(Ordering::Relaxed));
    mock.set_down(false);
    let compiled = source
        .wait_synced(Duration::from_secs(15))
        .unwrap()
        .expect("synced once the API server answers");
    assert!(compiled.snapshot.lookup("a.test", "/").is_some());
    source.stop();
}

#[test]
fn a_broken_kubeconfig_is_a_clear_error() {
    let dir = temp_dir("broken");
    let path = dir.join("kubeconfig");
    std::fs::write(&path, "this: [is not a kubeconfig").unwrap();
    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(path),
        ..KubeOptions::default()
    };
    let source =
        KubeSource::start(KubeSettings::new(&options, &CompileOptions::default())).unwrap();
    let err = source
        .wait_synced(Duration::from_secs(10))
        .expect_err("a broken kubeconfig is an error");
    assert!(
        matches!(err, sluice::control::watch::KubeError::Kubeconfig { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("kubeconfig"), "{err}");
    source.stop();
}

#[test]
fn classes_decide_which_ingresses_are_served() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a"]);
    basic(&mock, up[0].addr);
    mock.apply(
        mock_api::CLASSES,
        class("nginx", "k8s.io/ingress-nginx", false),
    );
    mock.apply(
        mock_api::INGRESSES,
        ingress("theirs", "theirs.test", "web", Some("nginx")),
    );
    mock.apply(
        mock_api::INGRESSES,
        ingress("none", "none.test", "web", None),
    );
    let mut legacy = ingress("legacy", "legacy.test", "web", None);
    legacy["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": "sluice"});
    mock.apply(mock_api::INGRESSES, legacy);
    let mut legacy_other = ingress("legacy-other", "legacy-other.test", "web", None);
    legacy_other["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": "nginx"});
    mock.apply(mock_api::INGRESSES, legacy_other);
    let dir = temp_dir("classes");
    let r = start(settings(&mock, &dir, "one"));
    assert_eq!(who(r.addr(), "a.test"), "pod-a");
    assert_eq!(who(r.addr(), "legacy.test"), "pod-a");
    assert_eq!(who(r.addr(), "theirs.test"), "404");
    assert_eq!(who(r.addr(), "legacy-other.test"), "404");
    assert_eq!(who(r.addr(), "none.test"), "404");
    // Our class becomes the cluster default: class-less Ingresses become ours.
    mock.apply(
        mock_api::CLASSES,
        class("sluice", "sluice.dev/ingress-controller", true),
    );
    expect_who(&r, "none.test", "pod-a");
    assert_eq!(who(r.addr(), "theirs.test"), "404");
    mock.apply(
        mock_api::CLASSES,
        class("sluice", "sluice.dev/ingress-controller", false),
    );
    expect_who(&r, "none.test", "404");
    r.stop();

    // --watch-ingress-without-class and another --ingress-class / --controller-class.
    let mut s = settings(&mock, &dir, "two");
    s.compile.watch_without_class = true;
    let r = start(s);
    assert_eq!(who(r.addr(), "none.test"), "pod-a");
    r.stop();
    let mut s = settings(&mock, &dir, "three");
    s.compile.controller = "k8s.io/ingress-nginx".into();
    s.compile.ingress_class = "nginx".into();
    let r = start(s);
    assert_eq!(who(r.addr(), "theirs.test"), "pod-a");
    assert_eq!(who(r.addr(), "legacy-other.test"), "pod-a");
    assert_eq!(who(r.addr(), "a.test"), "404");
    r.stop();
}

/// One EndpointSlice per endpoint (every test pod listens on its own port).
fn endpoints(mock: &MockApi, eps: &[Ep]) {
    for (i, ep) in eps.iter().enumerate() {
        mock.apply(
            mock_api::SLICES,
            slice(&format!("web-{}", i + 1), "web", &[*ep]),
        );
    }
}

#[test]
fn endpoints_follow_ready_and_terminating_conditions() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a", "pod-b"]);
    let (a, b) = (up[0].addr, up[1].addr);
    basic(&mock, a);
    // a ready, b serving but terminating: only a.
    endpoints(&mock, &[ready(a), (b, false, true, true)]);
    let dir = temp_dir("endpoints");
    let r = start(settings(&mock, &dir, "one"));
    for _ in 0..10 {
        assert_eq!(who(r.addr(), "a.test"), "pod-a");
    }
    // a starts terminating too (not ready, still serving): nothing ready is left, so the
    // serving-but-terminating endpoints get traffic.
    endpoints(&mock, &[(a, false, true, true), (b, false, true, true)]);
    eventually("both terminating endpoints serve", || {
        let seen: std::collections::BTreeSet<String> =
            (0..8).map(|_| who(r.addr(), "a.test")).collect();
        seen.contains("pod-a") && seen.contains("pod-b")
    });
    // Slow requests in flight to b; then b vanishes. They finish; new ones go to a.
    let addr = r.addr();
    let slow: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || get(addr, "a.test", "/slow/800")))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    mock.delete(mock_api::SLICES, "default", "web-2");
    eventually("only a", || {
        (0..6).all(|_| who(r.addr(), "a.test") == "pod-a")
    });
    let answers: Vec<(u16, String)> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "requests in flight finish: {answers:?}"
    );
    assert!(
        answers.iter().any(|(_, body)| body.starts_with("pod-b")),
        "one of them was in flight to the vanished endpoint: {answers:?}"
    );
    // Neither ready nor serving: no endpoints at all → 503.
    endpoints(&mock, &[(a, false, false, true)]);
    expect_who(&r, "a.test", "503");
    // Ready again.
    endpoints(&mock, &[ready(b)]);
    expect_who(&r, "a.test", "pod-b");
    r.stop();
}

fn lb_status(mock: &MockApi, name: &str) -> Value {
    mock.get(mock_api::INGRESSES, "default", name)
        .and_then(|i| i.pointer("/status/loadBalancer/ingress").cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn only_the_leader_writes_status() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a"]);
    basic(&mock, up[0].addr);
    mock.apply(
        mock_api::CLASSES,
        class("nginx", "k8s.io/ingress-nginx", false),
    );
    mock.apply(
        mock_api::INGRESSES,
        ingress("theirs", "theirs.test", "web", Some("nginx")),
    );
    let dir = temp_dir("status");
    let with_address = |id: &str| {
        let mut s = settings(&mock, &dir, id);
        s.options.publish_status_address = vec!["203.0.113.7".into(), "lb.example.com".into()];
        s
    };
    let one = start(with_address("one"));
    let two = start(with_address("two"));
    eventually("a leader", || {
        one.stats.leader.load(Ordering::Relaxed) || two.stats.leader.load(Ordering::Relaxed)
    });
    let want = json!([{"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}]);
    let sorted = |v: Value| {
        let mut l: Vec<String> = v
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|x| x.to_string())
            .collect();
        l.sort();
        l
    };
    eventually("status written", || {
        sorted(lb_status(&mock, "web")) == sorted(want.clone())
    });
    assert_eq!(
        lb_status(&mock, "theirs"),
        Value::Null,
        "not ours: untouched"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (leader, follower) = if one.stats.leader.load(Ordering::Relaxed) {
        (one, two)
    } else {
        (two, one)
    };
    assert!(
        !follower.stats.leader.load(Ordering::Relaxed),
        "exactly one leader"
    );
    assert!(leader.stats.status_updates.load(Ordering::Relaxed) >= 1);
    assert_eq!(follower.stats.status_updates.load(Ordering::Relaxed), 0);
    let lease = mock
        .get(mock_api::LEASES, "sluice", "sluice-leader")
        .expect("lease exists");
    let holder = lease
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    assert!(holder == "one" || holder == "two");

    // Ingresses come: a new one gets the status.
    mock.apply(
        mock_api::INGRESSES,
        ingress("new", "new.test", "web", Some("sluice")),
    );
    eventually("new Ingress status", || {
        sorted(lb_status(&mock, "new")) == sorted(want.clone())
    });
    // An Ingress that stops being ours has our status cleared.
    mock.apply(
        mock_api::INGRESSES,
        ingress("new", "new.test", "web", Some("nginx")),
    );
    eventually("status cleared", || lb_status(&mock, "new") == Value::Null);
    // Somebody overwrites the status of ours: corrected.
    let mut wrong = mock.get(mock_api::INGRESSES, "default", "web").unwrap();
    wrong["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.99"}]}});
    mock.apply(mock_api::INGRESSES, wrong);
    eventually("status corrected", || {
        sorted(lb_status(&mock, "web")) == sorted(want.clone())
    });

    // The leader goes away (releasing the Lease): the other replica takes over and writes.
    let writes_before = follower.stats.status_updates.load(Ordering::Relaxed);
    assert_eq!(writes_before, 0);
    leader.stop();
    eventually("follower leads", || {
        follower.stats.leader.load(Ordering::Relaxed)
    });
    mock.apply(
        mock_api::INGRESSES,
        ingress("third", "third.test", "web", Some("sluice")),
    );
    eventually("third Ingress status", || {
        sorted(lb_status(&mock, "third")) == sorted(want.clone())
    });
    eventually("the new leader counted its write", || {
        follower.stats.status_updates.load(Ordering::Relaxed) >= 1
    });
    follower.stop();
}

#[test]
fn status_follows_the_published_service() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a"]);
    basic(&mock, up[0].addr);
    let mut lb = service("sluice-lb");
    lb["metadata"]["namespace"] = json!("sluice");
    lb["spec"]["type"] = json!("LoadBalancer");
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}});
    mock.apply(mock_api::SERVICES, lb.clone());
    let dir = temp_dir("publish");
    let mut s = settings(&mock, &dir, "one");
    s.options.publish_service = Some(("sluice".into(), "sluice-lb".into()));
    s.options.watch_namespace = Some("default".into());
    // Outside the watched namespace: not served.
    let mut elsewhere = ingress("elsewhere", "elsewhere.test", "web", Some("sluice"));
    elsewhere["metadata"]["namespace"] = json!("other");
    mock.apply(mock_api::INGRESSES, elsewhere);
    let r = start(s);
    assert_eq!(who(r.addr(), "a.test"), "pod-a");
    assert_eq!(who(r.addr(), "elsewhere.test"), "404", "--watch-namespace");
    eventually("status from the Service", || {
        lb_status(&mock, "web") == json!([{"ip": "198.51.100.1"}])
    });
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.2"}]}});
    mock.apply(mock_api::SERVICES, lb);
    eventually("status follows the Service", || {
        lb_status(&mock, "web") == json!([{"ip": "198.51.100.2"}])
    });
    r.stop();
}

#[test]
fn a_rejected_ingress_gets_an_event_a_log_line_and_a_metric_and_nothing_else_changes() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a"]);
    basic(&mock, up[0].addr);
    let dir = temp_dir("events");
    let r = start(settings(&mock, &dir, "one"));
    eventually("leader", || r.stats.leader.load(Ordering::Relaxed));
    let mut bad = ingress("bad", "good.test", "web", Some("sluice"));
    bad["spec"]["rules"][0]["http"]["paths"][0]["path"] = json!("no-slash");
    bad["spec"]["rules"].as_array_mut().unwrap().push(
        json!({"host": "also-good.test", "http": {"paths": [{"path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}),
    );
    mock.apply(mock_api::INGRESSES, bad);
    expect_who(&r, "also-good.test", "pod-a");
    assert_eq!(who(r.addr(), "a.test"), "pod-a", "the rest keeps serving");
    eventually("event posted", || {
        mock.list(mock_api::EVENTS).iter().any(|e| {
            e["reason"] == "Rejected"
                && e["type"] == "Warning"
                && e["regarding"]["name"] == "bad"
                && e["regarding"]["kind"] == "Ingress"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("spec.rules[0].http.paths[0].path"))
        })
    });
    assert_eq!(r.stats.rejected.load(Ordering::Relaxed), 1);
    eventually("the event counted", || {
        r.stats.events_posted.load(Ordering::Relaxed) == 1
    });
    let (_, metrics) = get(r.admin.local_addr(), "admin", "/metrics");
    assert!(
        metrics.contains("sluice_kube_rejected_objects 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_kube_rejections_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_kube_events_total 1\n"),
        "{metrics}"
    );
    // Fixed: the rejection goes away.
    mock.apply(
        mock_api::INGRESSES,
        ingress("bad", "good.test", "web", Some("sluice")),
    );
    expect_who(&r, "good.test", "pod-a");
    eventually("no rejection", || {
        r.stats.rejected.load(Ordering::Relaxed) == 0
    });
    r.stop();
}

fn tls_secret(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default"}, "type": "kubernetes.io/tls",
           "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5", "extra": "eA=="}})
}

#[test]
fn only_referenced_tls_secrets_are_cached() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a"]);
    basic(&mock, up[0].addr);
    mock.apply(mock_api::SECRETS, tls_secret("used"));
    mock.apply(mock_api::SECRETS, tls_secret("unused"));
    mock.apply(
        mock_api::SECRETS,
        json!({"metadata": {"name": "opaque", "namespace": "default"}, "type": "Opaque",
               "data": {"password": "eA=="}}),
    );
    let mut tls = ingress("tls", "tls.test", "web", Some("sluice"));
    tls["spec"]["tls"] = json!([{"hosts": ["tls.test"], "secretName": "used"}]);
    mock.apply(mock_api::INGRESSES, tls.clone());
    let dir = temp_dir("secrets");
    let r = start(settings(&mock, &dir, "one"));
    eventually("one cached", || {
        r.stats.cached_secrets.load(Ordering::Relaxed) == 1
    });
    // Only TLS Secrets are even listed.
    // A second reference: the Secret (known so far by name only) is fetched.
    tls["spec"]["tls"] = json!([{"secretName": "used"}, {"secretName": "unused"}]);
    mock.apply(mock_api::INGRESSES, tls.clone());
    eventually("two cached", || {
        r.stats.cached_secrets.load(Ordering::Relaxed) == 2
    });
    // A referenced Secret modified, deleted, created again.
    let mut renewed = tls_secret("unused");
    renewed["data"]["tls.crt"] = json!("bmV3");
    mock.apply(mock_api::SECRETS, renewed);
    mock.delete(mock_api::SECRETS, "default", "used");
    eventually("deleted Secret dropped", || {
        r.stats.cached_secrets.load(Ordering::Relaxed) == 1
    });
    mock.apply(mock_api::SECRETS, tls_secret("used"));
    eventually("re-created Secret cached", || {
        r.stats.cached_secrets.load(Ordering::Relaxed) == 2
    });
    // Only TLS Secrets were ever listed or watched; single Secrets were read by name; no
    // Secret was ever written.
    for (path, query) in mock.reads() {
        if path.ends_with("/secrets") {
            assert_eq!(
                query.get("fieldSelector").map(String::as_str),
                Some("type=kubernetes.io/tls"),
                "{path} {query:?}"
            );
        }
    }
    assert!(
        mock.reads()
            .iter()
            .any(|(p, _)| p == "/api/v1/namespaces/default/secrets/unused"),
        "the newly referenced Secret was read by name"
    );
    assert!(!mock.writes().iter().any(|w| w.path.contains("/secrets")));
    // References dropped: data dropped.
    tls["spec"]["tls"] = json!([]);
    mock.apply(mock_api::INGRESSES, tls);
    eventually("none cached", || {
        r.stats.cached_secrets.load(Ordering::Relaxed) == 0
    });
    r.stop();
}

#[test]
fn the_binary_runs_and_checks_from_a_kubeconfig() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    const BIN: &str = env!("CARGO_BIN_EXE_sluice");
    let mock = MockApi::start();
    let up = upstreams(&["pod-a"]);
    basic(&mock, up[0].addr);
    let dir = temp_dir("binary");
    let kubeconfig = mock.kubeconfig(&dir);
    let out = Command::new(BIN)
        .arg("check")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("a.test"), "{stdout}");

    let mut child = Command::new(BIN)
        .args([
            "run",
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .env("POD_NAMESPACE", "sluice")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some(rest) = line.split_once("serving http on ").map(|(_, rest)| rest) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(who(addr, "a.test"), "pod-a");
    mock.apply(
        mock_api::INGRESSES,
        ingress("more", "more.test", "web", Some("sluice")),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while who(addr, "more.test") != "pod-a" {
        assert!(Instant::now() < deadline, "the binary follows the cluster");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM drains and exits 0: {status:?}");
}

#[test]
fn the_real_api_server_flow_passes_against_the_mock() {
    let mock = MockApi::start();
    let dir = temp_dir("real-flow");
    support::real_flow::run(&mock.kubeconfig(&dir));
    // It cleaned up after itself.
    assert!(mock.list(mock_api::NAMESPACES).is_empty());
    assert!(mock.list(mock_api::CLASSES).is_empty());
}

#[test]
fn a_live_lease_is_respected_and_an_abandoned_one_taken_over() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a"]);
    basic(&mock, up[0].addr);
    let ghost = |renew: u32| {
        json!({"metadata": {"name": "sluice-leader", "namespace": "sluice"},
               "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 1,
                        "renewTime": format!("2026-01-01T00:00:{:02}.000000Z", renew % 60),
                        "leaseTransitions": 3}})
    };
    mock.apply(mock_api::LEASES, ghost(0));
    let dir = temp_dir("lease");
    let mut s = settings(&mock, &dir, "one");
    s.options.publish_status_address = vec!["203.0.113.7".into()];
    let r = start(s);
    // Another replica (the "ghost") keeps renewing for 3 s: never taken over, no status.
    for i in 1..=15 {
        mock.apply(mock_api::LEASES, ghost(i));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!r.stats.leader.load(Ordering::Relaxed), "took a live lease");
    }
    assert_eq!(lb_status(&mock, "web"), Value::Null);
    // It stops renewing (crashed): after a lease duration without change, taken over.
    eventually("took over the abandoned lease", || {
        r.stats.leader.load(Ordering::Relaxed)
    });
    let lease = mock
        .get(mock_api::LEASES, "sluice", "sluice-leader")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "one");
    assert_eq!(lease["spec"]["leaseTransitions"], 4);
    eventually("status written by the new leader", || {
        lb_status(&mock, "web") == json!([{"ip": "203.0.113.7"}])
    });
    r.stop();
    let lease = mock
        .get(mock_api::LEASES, "sluice", "sluice-leader")
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released on stop: {lease}"
    );
}

/// Waiting for the workers to acknowledge a snapshot never stalls the watchers, the Lease
/// renewal or the status writer: with workers that never acknowledge (a stopped engine), a
/// change's publication waits the whole acknowledgement timeout, and meanwhile the
/// published Service's new address still reaches the Ingress status and the Lease is kept.
/// (Before the update pipeline, that wait blocked the source's tokio runtime.)
#[test]
fn an_unacknowledged_snapshot_stalls_neither_watchers_nor_lease_nor_status() {
    let mock = MockApi::start();
    let up = upstreams(&["pod-a"]);
    basic(&mock, up[0].addr);
    let mut lb = service("sluice-lb");
    lb["metadata"]["namespace"] = json!("sluice");
    lb["spec"]["type"] = json!("LoadBalancer");
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}});
    mock.apply(mock_api::SERVICES, lb.clone());
    let dir = temp_dir("unacknowledged");
    let mut s = settings(&mock, &dir, "one");
    s.options.publish_service = Some(("sluice".into(), "sluice-lb".into()));
    let mut source = KubeSource::start(s).unwrap();
    let compiled = source
        .wait_synced(Duration::from_secs(20))
        .unwrap()
        .expect("initial sync");
    let cfg = EngineConfig {
        workers: vec![None],
        http: "127.0.0.1:0".parse().unwrap(),
        upstream_max_idle: 4,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, Arc::new(compiled.snapshot)).unwrap();
    let publisher = engine.publisher();
    let state = engine.state().clone();
    engine.stop();
    engine.join().unwrap();
    // Nobody will ever acknowledge what this publisher publishes.
    source.attach(publisher);
    let stats = source.stats();
    eventually("leader", || stats.leader.load(Ordering::Relaxed));
    eventually("first status", || {
        lb_status(&mock, "web") == json!([{"ip": "198.51.100.1"}])
    });
    let transitions = stats.leader_transitions.load(Ordering::Relaxed);
    let unacknowledged = || state.publication.lock().unwrap().unacknowledged;
    let published = || state.publication.lock().unwrap().published;
    let before = published();

    mock.apply(
        mock_api::INGRESSES,
        ingress("more", "more.test", "web", Some("sluice")),
    );
    eventually("the change published", || published() > before);
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.2"}]}});
    mock.apply(mock_api::SERVICES, lb);
    eventually("status follows the Service", || {
        lb_status(&mock, "web") == json!([{"ip": "198.51.100.2"}])
    });
    // All of that happened while the publication was still waiting for its workers.
    assert_eq!(
        unacknowledged(),
        0,
        "the status waited for the acknowledgement"
    );
    assert!(stats.leader.load(Ordering::Relaxed));
    assert_eq!(
        stats.leader_transitions.load(Ordering::Relaxed),
        transitions,
        "the Lease was lost meanwhile"
    );
    eventually("the wait gives up", || unacknowledged() == 1);
    source.stop();
}
