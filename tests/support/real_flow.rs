//! The end-to-end flow of `tests/k8s_real.rs`, against whatever API server a kubeconfig points
//! at: applies an IngressClass, Service, EndpointSlice and Ingress in a throw-away namespace,
//! runs Sluice's Kubernetes source and engine, sends traffic through it to an in-process
//! upstream on loopback (the EndpointSlice points there), changes the endpoints, and checks
//! the status Sluice writes. `tests/k8s_mock.rs` runs it against the mock API server too, so
//! the flow itself is known to work before it meets a real cluster.
#![allow(dead_code, clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use sluice::control::compile::CompileOptions;
use sluice::control::watch::{KubeOptions, KubeSettings, KubeSource};
use sluice::core::conn::ConnConfig;
use sluice::demo::spawn_upstream;
use sluice::engine::{Engine, EngineConfig};

fn who(addr: SocketAddr, host: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return "connect failed".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => {
            body.split_whitespace().next().unwrap_or("").to_string()
        }
        _ => out.lines().next().unwrap_or("").to_string(),
    }
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for: {what}");
}

fn slice(ns: &str, addr: SocketAddr) -> EndpointSlice {
    serde_json::from_value(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": addr.port()}],
        "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}]}))
    .unwrap()
}

/// The whole flow against the API server `kubeconfig` points at; panics on any failure.
pub fn run(kubeconfig: &std::path::Path) {
    let kubeconfig = kubeconfig.to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let id = std::process::id();
    let ns = format!("sluice-test-{id}");
    let class_name = format!("sluice-test-{id}");
    let controller = format!("sluice.dev/test-{id}");
    let a = spawn_upstream("pod-a", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("pod-b", "127.0.0.1:0".parse().unwrap()).unwrap();

    let client = rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        Client::try_from(config).unwrap()
    });
    let pp = PostParams::default();
    rt.block_on(async {
        let nss: Api<Namespace> = Api::all(client.clone());
        nss.create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
        let classes: Api<IngressClass> = Api::all(client.clone());
        classes
            .create(
                &pp,
                &serde_json::from_value(json!({"metadata": {"name": class_name},
                    "spec": {"controller": controller}}))
                .unwrap(),
            )
            .await
            .unwrap();
        let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
        svcs.create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "web"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
        slices.create(&pp, &slice(&ns, a.addr)).await.unwrap();
        let ings: Api<Ingress> = Api::namespaced(client.clone(), &ns);
        ings.create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "web"},
                "spec": {"ingressClassName": class_name, "rules": [{"host": "real.test",
                    "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    });

    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(kubeconfig.clone()),
        watch_namespace: Some(ns.clone()),
        election_id: "sluice-test-leader".into(),
        election_namespace: Some(ns.clone()),
        publish_status_address: vec!["192.0.2.10".into()],
        ..KubeOptions::default()
    };
    let compile = CompileOptions {
        controller: controller.clone(),
        ingress_class: class_name.clone(),
        ..CompileOptions::default()
    };
    let mut source = KubeSource::start(KubeSettings::new(&options, &compile)).unwrap();
    let compiled = source
        .wait_synced(Duration::from_secs(60))
        .unwrap()
        .expect("synced within 60 s");
    let engine = Engine::start(
        EngineConfig {
            workers: vec![None; 2],
            http: "127.0.0.1:0".parse().unwrap(),
            conn: Arc::new(ConnConfig::default()),
            upstream_max_idle: 4,
            upstream_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        },
        Arc::new(compiled.snapshot),
    )
    .unwrap();
    source.attach(engine.publisher());
    let addr = engine.local_addr();
    eventually("traffic reaches pod-a", || {
        who(addr, "real.test") == "pod-a"
    });
    let ings: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    eventually("status written", || {
        rt.block_on(ings.get("web"))
            .ok()
            .and_then(|i| i.status?.load_balancer?.ingress)
            .is_some_and(|l| l.iter().any(|x| x.ip.as_deref() == Some("192.0.2.10")))
    });
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    rt.block_on(slices.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(serde_json::to_value(slice(&ns, b.addr)).unwrap()),
    ))
    .unwrap();
    eventually("traffic follows the EndpointSlice", || {
        who(addr, "real.test") == "pod-b"
    });

    source.stop();
    engine.stop();
    engine.join().unwrap();
    rt.block_on(async {
        let classes: Api<IngressClass> = Api::all(client.clone());
        let _ = classes.delete(&class_name, &DeleteParams::default()).await;
        let nss: Api<Namespace> = Api::all(client.clone());
        let _ = nss.delete(&ns, &DeleteParams::default()).await;
    });
}
