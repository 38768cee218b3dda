//! The Kubernetes source at scale against a real API server (`../shared/k8s/`), for
//! bench/RESULTS.md (kept out of CI: creating the objects takes minutes on 2 cores):
//!
//! * creates 10,000 Ingresses, 2,000 Services and their 2,000 EndpointSlices in namespace
//!   `s13-scale2` (concurrently, 32 requests in flight; existing ones are kept, so a second run
//!   reuses them), every Ingress routed by Sluice (IngressClass `s13-scale`);
//! * time from Sluice's start (source and engine, 2 workers) to ready: the first complete
//!   list compiled and every worker serving it;
//! * memory of the control thread: a child process that runs only the Kubernetes source,
//!   growth of its resident set from before the start to after the first snapshot;
//! * time from an EndpointSlice change (the API server's answer to the write) to every worker
//!   serving it, 50 changes.
//!
//! ```sh
//! export SLUICE_TEST_KUBECONFIG=$(../shared/k8s/up.sh)
//! cargo run --release --example k8s_real_bench
//! ```
// Wall-clock time is what this measures.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice::control::compile::CompileOptions;
use sluice::control::watch::{KubeOptions, KubeSettings, KubeSource};
use sluice::engine::{Engine, EngineConfig};

const NS: &str = "s13-scale2";
const CLASS: &str = "s13-scale";
const CONTROLLER: &str = "sluice.dev/s13-scale";
const INGRESSES: usize = 10_000;
const SERVICES: usize = 2_000;
const IN_FLIGHT: usize = 32;

async fn client(kubeconfig: &Path) -> Client {
    let _ = sluice::control::certs::provider()
        .as_ref()
        .clone()
        .install_default();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    Client::try_from(config).unwrap()
}

fn slice(i: usize, generation: usize) -> Value {
    let ip = |k: usize| {
        format!(
            "10.232.{}.{}",
            (i * 3 + k) / 250 % 250,
            (i * 3 + k) % 250 + 1
        )
    };
    let addresses: Vec<Value> = (0..3)
        .map(|k| {
            json!({"addresses": [ip(k + generation % 2)], "conditions": {"ready": true},
                   "nodeName": format!("node-{}", k), "zone": "a",
                   "targetRef": {"kind": "Pod", "namespace": NS, "name": format!("svc-{i}-{k}")}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("svc-{i}-1"), "namespace": NS,
                        "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
           "endpoints": addresses})
}

/// Creates what is missing, `IN_FLIGHT` requests at a time; returns (created, requests,
/// seconds).
async fn populate(client: &Client) -> (usize, usize, f64) {
    let pp = PostParams::default();
    let start = Instant::now();
    let _ = Api::<Namespace>::all(client.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap(),
        )
        .await;
    let _ = Api::<IngressClass>::all(client.clone())
        .create(
            &pp,
            &serde_json::from_value(
                json!({"metadata": {"name": CLASS}, "spec": {"controller": CONTROLLER}}),
            )
            .unwrap(),
        )
        .await;
    let ings: Api<Ingress> = Api::namespaced(client.clone(), NS);
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let mut jobs: Vec<Value> = Vec::new();
    {
        for i in 0..SERVICES {
            jobs.push(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc-{i}"), "namespace": NS, "labels": {"app": format!("svc-{i}")}},
                // Headless: the test server's Service range (a /24) has no room for 2,000
                // ClusterIPs, and Sluice routes to the endpoints, never to a ClusterIP.
                "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                         "selector": {"app": format!("svc-{i}")}}}));
            jobs.push(slice(i, 0));
        }
        for i in 0..INGRESSES {
            jobs.push(json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": format!("ing-{i}"), "namespace": NS,
                    "labels": {"app": format!("svc-{}", i % SERVICES), "team": "web"},
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(600)}},
                "spec": {"ingressClassName": CLASS, "rules": [{"host": format!("h{i}.example.com"),
                    "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": format!("svc-{}", i % SERVICES), "port": {"number": 80}}}}]}}]}}));
        }
    }
    let total = jobs.len();
    let results: Vec<Option<bool>> = futures::stream::iter(jobs.into_iter().map(|o| {
        let (ings, svcs, slices) = (ings.clone(), svcs.clone(), slices.clone());
        async move {
            let pp = PostParams::default();
            let r = match o["kind"].as_str().unwrap() {
                "Service" => svcs
                    .create(&pp, &serde_json::from_value(o).unwrap())
                    .await
                    .map(drop),
                "EndpointSlice" => slices
                    .create(&pp, &serde_json::from_value(o).unwrap())
                    .await
                    .map(drop),
                _ => ings
                    .create(&pp, &serde_json::from_value(o).unwrap())
                    .await
                    .map(drop),
            };
            match r {
                Ok(()) => Some(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Some(false),
                Err(e) => {
                    eprintln!("create: {}", sluice::control::watch::api_error(&e));
                    None
                }
            }
        }
    }))
    .buffer_unordered(IN_FLIGHT)
    .collect()
    .await;
    let failed = results.iter().filter(|r| r.is_none()).count();
    let created = results.iter().filter(|r| **r == Some(true)).count();
    assert_eq!(failed, 0, "{failed} of {total} creates failed");
    (created, total, start.elapsed().as_secs_f64())
}

fn settings(kubeconfig: &Path) -> KubeSettings {
    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(kubeconfig.to_path_buf()),
        watch_namespace: Some(NS.into()),
        election_id: "s13-scale".into(),
        election_namespace: Some(NS.into()),
        publish_status_address: Vec::new(),
        ..KubeOptions::default()
    };
    let compile = CompileOptions {
        controller: CONTROLLER.into(),
        ingress_class: CLASS.into(),
        ..CompileOptions::default()
    };
    KubeSettings::new(&options, &compile)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The child half of the memory measurement: only the Kubernetes source, in its own process.
fn memory_child(kubeconfig: PathBuf) {
    let before = status_kib("VmRSS:");
    let source = KubeSource::start(settings(&kubeconfig)).unwrap();
    let compiled = source
        .wait_synced(Duration::from_secs(600))
        .unwrap()
        .expect("synced");
    std::thread::sleep(Duration::from_millis(500));
    let after = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    let hosts = compiled
        .snapshot
        .to_string()
        .lines()
        .filter(|l| l.contains("example.com"))
        .count();
    println!(
        "memory: control thread with {hosts} routed hosts: resident set grew {:.1} MiB after the first sync (store + first snapshot), peak resident set {:.1} MiB (process started at {:.1} MiB)",
        (after.saturating_sub(before)) as f64 / 1024.0,
        peak as f64 / 1024.0,
        before as f64 / 1024.0,
    );
    source.stop();
}

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("memory-child") {
        memory_child(args.next().expect("kubeconfig path").into());
        return;
    }
    let kubeconfig = PathBuf::from(
        std::env::var_os("SLUICE_TEST_KUBECONFIG")
            .expect("SLUICE_TEST_KUBECONFIG=$(../shared/k8s/up.sh)"),
    );
    println!(
        "load average at start: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(client(&kubeconfig));
    let (created, requests, secs) = rt.block_on(populate(&client));
    println!(
        "{requests} creates ({created} new, the rest existed) in {secs:.1} s ({:.0}/s, {IN_FLIGHT} in flight)",
        requests as f64 / secs
    );

    // Start → ready: the first complete list compiled, the engine up, every worker serving.
    let start = Instant::now();
    let mut source = KubeSource::start(settings(&kubeconfig)).unwrap();
    let compiled = source
        .wait_synced(Duration::from_secs(600))
        .unwrap()
        .expect("synced");
    let synced = start.elapsed();
    let engine = Engine::start(
        EngineConfig {
            workers: vec![None; 2],
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
    while min_version() < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let ready = start.elapsed();
    println!(
        "start -> ready ({INGRESSES} Ingresses, {SERVICES} Services + EndpointSlices, lists paged at 500): first sync compiled after {:.2} s, every worker serving after {:.2} s",
        synced.as_secs_f64(),
        ready.as_secs_f64()
    );

    // EndpointSlice change → every worker.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    std::thread::sleep(Duration::from_secs(2));
    let mut times = Vec::new();
    for i in 1..=50 {
        let before = min_version();
        rt.block_on(slices.patch(
            "svc-0-1",
            &PatchParams::apply("s13-bench").force(),
            &Patch::Apply(slice(0, i)),
        ))
        .unwrap();
        let written = Instant::now();
        while min_version() <= before {
            std::thread::sleep(Duration::from_micros(100));
            if written.elapsed() > Duration::from_secs(30) {
                panic!("change {i} never reached the workers");
            }
        }
        times.push(written.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    times.sort();
    println!(
        "propagation, EndpointSlice change on the real API server (from its answer to the write) -> all 2 workers serving, {INGRESSES} Ingresses, 50 changes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
    );
    source.stop();
    engine.stop();
    engine.join().unwrap();

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("memory-child")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find(|l| l.starts_with("memory:")) {
        Some(line) => println!("{line}"),
        None => panic!(
            "child said: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
