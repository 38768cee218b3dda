//! Measurements for bench/RESULTS.md (ignored by default; they assert nothing about speed):
//!
//! * EndpointSlice change on the mock API server → every worker serving it: the time from the
//!   mock committing the change (the moment a real API server would send the watch event) to
//!   the last worker acknowledging the snapshot, with 1 and with 10,000 Ingresses in the world.
//! * Memory of the control thread holding 10,000 Ingresses (plus their Services and
//!   EndpointSlices): measured in a child process that runs only the Kubernetes source, as the
//!   growth of its resident set from before the source starts to after the first snapshot.
//!
//! For context it also times `compile` alone on the same 10,000-Ingress world.
//!
//! ```sh
//! cargo run --release --example k8s_bench
//! ```
// Wall-clock time is what this measures.
#![allow(clippy::disallowed_methods)]

#[path = "../tests/support/mock_api.rs"]
mod mock_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mock_api::MockApi;
use serde_json::{Value, json};
use sluice::control::compile::CompileOptions;
use sluice::control::compile::{Objects, compile};
use sluice::control::watch::{KubeOptions, KubeSettings, KubeSource};
use sluice::demo::spawn_upstream;
use sluice::engine::{Engine, EngineConfig};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-k8sbench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn slice(name: &str, svc: &str, addr: SocketAddr) -> Value {
    json!({"metadata": {"name": name, "namespace": "default",
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": addr.port()}],
           "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true},
                          "nodeName": "node-1", "zone": "a",
                          "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("{svc}-pod")}}]})
}

/// `n` Ingresses (one host each), each with its own Service and EndpointSlice, as a typical
/// cluster object looks (labels, annotations, kubectl's last-applied copy, managed fields).
fn populate(mock: &MockApi, n: usize, addr: SocketAddr) {
    mock.apply(
        mock_api::CLASSES,
        json!({"metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress-controller"}}),
    );
    for i in 0..n {
        let svc = format!("svc-{i}");
        let ing = json!({"metadata": {"name": format!("ing-{i}"), "namespace": "default",
            "labels": {"app": svc, "team": "web"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(600)},
            "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"ingressClassName": "sluice", "rules": [{"host": format!("h{i}.example.com"),
                "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}]}});
        mock.apply(mock_api::INGRESSES, ing);
        mock.apply(
            mock_api::SERVICES,
            json!({"metadata": {"name": svc, "namespace": "default", "labels": {"app": svc}},
                   "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                            "clusterIP": "10.0.0.1", "selector": {"app": svc}}}),
        );
        mock.apply(mock_api::SLICES, slice(&format!("{svc}-1"), &svc, addr));
    }
}

fn settings(mock: &MockApi, dir: &std::path::Path) -> KubeSettings {
    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(mock.kubeconfig(dir)),
        election_namespace: Some("sluice".into()),
        ..KubeOptions::default()
    };
    KubeSettings::new(&options, &CompileOptions::default())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn propagation(ingresses: usize, changes: usize) {
    let mock = MockApi::start();
    let a = spawn_upstream("pod-a", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("pod-b", "127.0.0.1:0".parse().unwrap()).unwrap();
    populate(&mock, ingresses, a.addr);
    if ingresses > 1 {
        compile_time(&mock);
    }
    let dir = temp_dir(&format!("prop-{ingresses}"));
    let mut source = KubeSource::start(settings(&mock, &dir)).unwrap();
    let compiled = source
        .wait_synced(Duration::from_secs(120))
        .unwrap()
        .expect("synced");
    let workers = 2;
    let engine = Engine::start(
        EngineConfig {
            workers: vec![None; workers],
            http: "127.0.0.1:0".parse().unwrap(),
            upstream_max_idle: 4,
            upstream_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            ..EngineConfig::default()
        },
        Arc::new(compiled.snapshot),
    )
    .unwrap();
    source.attach(engine.publisher());
    let state = engine.state().clone();
    let min_version = || {
        state
            .metrics
            .iter()
            .map(|m| m.snapshot_version.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    };
    let mut times = Vec::new();
    for i in 0..changes {
        let before = min_version();
        let target = if i % 2 == 0 { b.addr } else { a.addr };
        let start = Instant::now();
        mock.apply(mock_api::SLICES, slice("svc-0-1", "svc-0", target));
        while min_version() <= before {
            std::hint::spin_loop();
            if start.elapsed() > Duration::from_secs(30) {
                panic!("change {i} never reached the workers");
            }
        }
        times.push(start.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    times.sort();
    let internal = state.publication.lock().unwrap().propagation_us.clone();
    println!(
        "propagation, EndpointSlice change on the mock API server -> all {workers} workers serving, {ingresses} Ingress(es), {changes} changes: \
         p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (of which control loop -> workers: p50 {:.2} ms, p99 {:.2} ms)",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
        internal.value_at_quantile(0.5) as f64 / 1e3,
        internal.value_at_quantile(0.99) as f64 / 1e3,
    );
    source.stop();
    engine.stop();
    engine.join().unwrap();
}

fn parse<T: serde::de::DeserializeOwned>(mock: &MockApi, r: mock_api::Res) -> Vec<Arc<T>> {
    mock.list(r)
        .into_iter()
        .map(|v| Arc::new(serde_json::from_value(v).unwrap()))
        .collect()
}

/// `compile` alone on the objects the mock holds (parsed from its JSON into k8s types).
fn compile_time(mock: &MockApi) {
    let objects = Objects {
        ingresses: parse(mock, mock_api::INGRESSES),
        classes: parse(mock, mock_api::CLASSES),
        services: parse(mock, mock_api::SERVICES),
        slices: parse(mock, mock_api::SLICES),
        secrets: Vec::new(),
    };
    let mut times: Vec<Duration> = (0..20)
        .map(|v| {
            let start = Instant::now();
            let c = compile(&objects, &CompileOptions::default(), v);
            let t = start.elapsed();
            drop(c);
            t
        })
        .collect();
    times.sort();
    println!(
        "compile alone, {} Ingresses: p50 {:.2} ms, max {:.2} ms",
        objects.ingresses.len(),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("memory-child") {
        memory_child(args.next().expect("kubeconfig path").into());
        return;
    }
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    propagation(1, 200);
    propagation(10_000, 50);
    control_thread_memory_with_10k_ingresses();
}

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn control_thread_memory_with_10k_ingresses() {
    let n = 10_000;
    let mock = MockApi::start();
    let a = spawn_upstream("pod-a", "127.0.0.1:0".parse().unwrap()).unwrap();
    populate(&mock, n, a.addr);
    let json_bytes: usize = [mock_api::INGRESSES, mock_api::SERVICES, mock_api::SLICES]
        .iter()
        .map(|r| {
            mock.list(*r)
                .iter()
                .map(|o| o.to_string().len())
                .sum::<usize>()
        })
        .sum();
    let dir = temp_dir("memory");
    let kubeconfig = mock.kubeconfig(&dir);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("memory-child")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("memory:"))
        .unwrap_or_else(|| {
            panic!(
                "child said: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!(
        "{line}; the same objects as JSON from the API server: {:.1} MiB",
        json_bytes as f64 / (1 << 20) as f64
    );
}

/// The child half of the memory measurement: only the Kubernetes source, in its own process.
fn memory_child(kubeconfig: std::path::PathBuf) {
    let before = status_kib("VmRSS:");
    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(kubeconfig),
        election_namespace: Some("sluice".into()),
        ..KubeOptions::default()
    };
    let source =
        KubeSource::start(KubeSettings::new(&options, &CompileOptions::default())).unwrap();
    let compiled = source
        .wait_synced(Duration::from_secs(120))
        .unwrap()
        .expect("synced");
    // Let the list buffers go back to the allocator.
    std::thread::sleep(Duration::from_millis(500));
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    println!(
        "memory: control thread with {} routed hosts: resident set grew {:.1} MiB after the first sync (store + first snapshot), peak resident set {:.1} MiB (process started at {:.1} MiB)",
        compiled
            .snapshot
            .to_string()
            .lines()
            .filter(|l| l.contains("example.com"))
            .count(),
        (after.saturating_sub(before)) as f64 / 1024.0,
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
    );
    drop(compiled);
    source.stop();
}
