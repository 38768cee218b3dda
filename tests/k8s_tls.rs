//! Certificates from the cluster: a `kubernetes.io/tls` Secret on the mock API server, named
//! by an Ingress's `spec.tls`, is what Sluice presents for that host over a real TLS handshake
//! (rustls client, io_uring engine); when the Secret changes, the next handshake presents the
//! new certificate; when the reference goes, the default certificate answers.
// Wall-clock instants only bound waits; nothing here asserts on speed.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::json;
use sluice::control::certs::{self, TlsOptions};
use sluice::control::compile::CompileOptions;
use sluice::control::watch::{KubeOptions, KubeSettings, KubeSource};
use sluice::core::conn::{ConnConfig, Scheme};
use sluice::core::tls::TlsSettings;
use sluice::demo::spawn_upstream;
use sluice::engine::{Engine, EngineConfig, HttpsConfig};
use support::mock_api::{self, MockApi};
use support::tls::{self, Cert, cert_for};

fn secret(name: &str, c: &Cert) -> serde_json::Value {
    let s = Secret {
        metadata: serde_json::from_value(json!({"name": name, "namespace": "default"})).unwrap(),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                (
                    "tls.crt".to_string(),
                    ByteString(c.cert_pem.clone().into_bytes()),
                ),
                (
                    "tls.key".to_string(),
                    ByteString(c.key_pem.clone().into_bytes()),
                ),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    serde_json::to_value(s).unwrap()
}

/// The certificate presented for `sni`.
fn presented(addr: SocketAddr, sni: &str) -> Vec<u8> {
    let config = tls::client_config(rustls::DEFAULT_VERSIONS);
    tls::presented(&tls::connect(addr, Some(sni), &config))
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

#[test]
fn certificates_come_from_referenced_cluster_secrets() {
    let mock = MockApi::start();
    let up = spawn_upstream("pod-a", "127.0.0.1:0".parse().unwrap()).unwrap();
    mock.apply(
        mock_api::CLASSES,
        json!({"metadata": {"name": "sluice"}, "spec": {"controller": "sluice.dev/ingress-controller"}}),
    );
    mock.apply(
        mock_api::SERVICES,
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}),
    );
    mock.apply(
        mock_api::SLICES,
        json!({"metadata": {"name": "web-1", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"port": up.addr.port()}],
               "endpoints": [{"addresses": ["127.0.0.1"]}]}),
    );
    let first = cert_for(&["tls.test"]);
    mock.apply(mock_api::SECRETS, secret("tls-test", &first));
    let ingress = |tls: bool| {
        let mut i = json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"ingressClassName": "sluice", "rules": [{"host": "tls.test", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
        if tls {
            i["spec"]["tls"] = json!([{"hosts": ["tls.test"], "secretName": "tls-test"}]);
        }
        i
    };
    mock.apply(mock_api::INGRESSES, ingress(true));

    let dir = std::env::temp_dir().join(format!("sluice-k8s-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let default = certs::self_signed().unwrap();
    let compile = CompileOptions {
        tls: TlsOptions {
            default_cert: Some(default),
            ..TlsOptions::default()
        },
        ..CompileOptions::default()
    };
    let options = KubeOptions {
        enabled: true,
        kubeconfig: Some(mock.kubeconfig(&dir)),
        election_namespace: Some("sluice".into()),
        ..KubeOptions::default()
    };
    let mut source = KubeSource::start(KubeSettings::new(&options, &compile)).unwrap();
    let compiled = source
        .wait_synced(Duration::from_secs(20))
        .unwrap()
        .expect("synced");
    let settings = TlsSettings::new(
        certs::provider(),
        rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
        rustls::server::ServerSessionMemoryCache::new(256),
        Duration::from_secs(10),
    )
    .unwrap();
    let https = HttpsConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        conn: Arc::new(ConnConfig {
            scheme: Scheme::Https,
            ..ConnConfig::default()
        }),
        settings: Arc::new(settings),
    };
    let engine = Engine::start_with_https(
        EngineConfig {
            workers: vec![None; 2],
            http: "127.0.0.1:0".parse().unwrap(),
            upstream_max_idle: 4,
            upstream_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
            ..EngineConfig::default()
        },
        Some(https),
        Arc::new(compiled.snapshot),
    )
    .unwrap();
    source.attach(engine.publisher());
    let addr = engine.https_addr().unwrap();
    assert_eq!(
        presented(addr, "tls.test"),
        first.der,
        "from the first sync"
    );

    // The Secret is rotated: the next handshake presents the new certificate.
    let second = cert_for(&["tls.test"]);
    mock.apply(mock_api::SECRETS, secret("tls-test", &second));
    eventually("rotated certificate", || {
        presented(addr, "tls.test") == second.der
    });
    // The reference goes: the default certificate answers.
    mock.apply(mock_api::INGRESSES, ingress(false));
    eventually("default certificate", || {
        let got = presented(addr, "tls.test");
        got != first.der && got != second.der
    });
    assert_eq!(
        source
            .stats()
            .cached_secrets
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    source.stop();
    engine.stop();
    engine.join().unwrap();
}
