//! TLS termination end to end over real sockets: in-process rustls clients, Sluice's io_uring
//! workers with an HTTPS listener, certificates from `kubernetes.io/tls` Secrets, and
//! in-process upstream servers. Certificates are generated per test with rcgen. (SNI,
//! rotation and redirects run on every engine in `tests/engines.rs`.)
// The publication wait measures from a wall-clock instant (test code, not the core).
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use sluice::control::certs;
use sluice::control::compile::{Compiled, Objects, compile};
use sluice::control::manifests::parse_documents;
use sluice::core::snapshot::Snapshot;
use sluice::core::tls::TlsSettings;
use sluice::demo::{DemoUpstream, spawn_upstream};
use sluice::engine::{Engine, EngineConfig, HttpsConfig};

mod support;
use support::tls::*;

/// The HTTPS listener on loopback, any port.
const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

fn start(snapshot: Snapshot, https: HttpsConfig) -> Engine {
    let cfg = EngineConfig {
        workers: vec![None; 1],
        http: "127.0.0.1:0".parse().unwrap(),
        upstream_max_idle: 16,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    Engine::start_with_https(cfg, Some(https), Arc::new(snapshot))
        .expect("engine starts (io_uring available)")
}

fn stop(engine: Engine) {
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn secret_with_base64_data_is_used() {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let default = certs::self_signed().unwrap();
    let c = cert_for(&["data.test"]);
    let s = Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("d".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
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
        ..Default::default()
    };
    let secret_doc = format!("---\n{}", serde_yaml::to_string(&s).unwrap());
    assert!(secret_doc.contains("data:") && !secret_doc.contains("stringData"));
    let yaml = upstream_yaml(&up)
        + &ingress("web", "", &["data.test"], &[(&["data.test"], Some("d"))])
        + &secret_doc;
    let compiled = compile_yaml(&yaml, &options(&default), 1);
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        compiled.diagnostics
    );
    let engine = start(compiled.snapshot, https_config(LOOPBACK, None));
    let tls = connect(
        engine.https_addr().unwrap(),
        Some("data.test"),
        &client_config(&[&rustls::version::TLS13]),
    );
    assert_eq!(presented(&tls), c.der);
    drop(tls);
    stop(engine);
}

fn cert_with_expiry(hosts: &[&str], year: i32) -> Cert {
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Cert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

/// broken PEM, a key of another certificate, an expired certificate, a missing Secret.
fn bad_material_yaml(up: &DemoUpstream, good: &Cert) -> String {
    let other = cert_for(&["other.test"]);
    let expired = cert_with_expiry(&["expired.test"], 2001);
    // Base64 damaged in the middle of the certificate.
    let mut lines: Vec<String> = good.cert_pem.lines().map(String::from).collect();
    lines[2] = "!!!! not base64 !!!!".to_string();
    let broken = lines.join("\n") + "\n";
    let hosts = [
        "good.test",
        "broken.test",
        "mismatch.test",
        "expired.test",
        "missing.test",
    ];
    upstream_yaml(up)
        + &ingress(
            "web",
            "",
            &hosts,
            &[
                (&["good.test"], Some("good")),
                (&["broken.test"], Some("broken")),
                (&["mismatch.test"], Some("mismatch")),
                (&["expired.test"], Some("expired")),
                (&["missing.test"], Some("missing")),
            ],
        )
        + &secret("good", good)
        + &secret_yaml("broken", &broken, &good.key_pem)
        + &secret_yaml("mismatch", &good.cert_pem, &other.key_pem)
        + &secret("expired", &expired)
}

#[test]
fn bad_material_is_rejected_on_its_own_and_falls_back_to_the_default() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let default = certs::self_signed().unwrap();
    let good = cert_for(&["good.test"]);
    let compiled = compile_yaml(&bad_material_yaml(&up, &good), &options(&default), 1);
    let diags: Vec<String> = compiled.diagnostics.iter().map(|d| d.to_string()).collect();
    let has = |needle: &str| diags.iter().any(|d| d.contains(needle));
    assert!(
        has("Secret default/broken: data[tls.crt]: broken PEM"),
        "{diags:#?}"
    );
    assert!(
        has(
            "Secret default/mismatch: data[tls.key]: the private key does not match the certificate"
        ),
        "{diags:#?}"
    );
    assert!(
        has("Secret default/expired: data[tls.crt]: certificate expired"),
        "{diags:#?}"
    );
    // Each diagnostic names a real object (for Events) and the field.
    assert!(
        has("Ingress default/web: spec.tls[4].secretName: Secret default/missing not found"),
        "{diags:#?}"
    );
    assert_eq!(diags.len(), 4, "{diags:#?}");
    // Routing is untouched by bad certificates.
    assert!(compiled.snapshot.lookup("broken.test", "/").is_some());

    let engine = start(compiled.snapshot, https_config(LOOPBACK, None));
    let addr = engine.https_addr().unwrap();
    let config = client_config(&[&rustls::version::TLS13]);
    let default_der = default.key.cert[0].to_vec();
    let mut tls = connect(addr, Some("good.test"), &config);
    assert_eq!(presented(&tls), good.der);
    assert_eq!(get(&mut tls, "good.test", "/").0, 200);
    for host in [
        "broken.test",
        "mismatch.test",
        "expired.test",
        "missing.test",
    ] {
        let mut tls = connect(addr, Some(host), &config);
        assert_eq!(presented(&tls), default_der, "{host}");
        assert_eq!(get(&mut tls, host, "/").0, 200, "{host} still serves");
    }
    stop(engine);
}

#[test]
fn sluice_check_logs_why_a_secret_is_rejected() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-tls-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = cert_for(&["good.test"]);
    std::fs::write(dir.join("all.yaml"), bad_material_yaml(&up, &good)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--manifests"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stderr.contains("rejected: Secret default/broken: data[tls.crt]: broken PEM"),
        "{stderr}"
    );
    assert!(stderr.contains("Secret default/expired: data[tls.crt]: certificate expired"));
    assert!(
        stdout.contains("tls good.test -> own certificate, http redirects to https"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tls broken.test -> default certificate"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hsts_value_follows_the_config() {
    let c = sluice::config::Config::parse("[tls]\nhsts_include_subdomains = false\n", "t.toml")
        .unwrap();
    assert_eq!(c.hsts_value().as_deref(), Some("max-age=31536000"));
    let c = sluice::config::Config::parse("[tls]\nhsts = false\n", "t.toml").unwrap();
    assert_eq!(c.hsts_value(), None);
    let c = sluice::config::Config::default();
    assert_eq!(
        c.hsts_value().as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    assert!(c.compile.tls.ssl_redirect && !c.compile.tls.force_ssl_redirect);
    let c = sluice::config::Config::parse(
        "[tls]\ndefault_certificate = \"ingress/default-tls\"\n[[tls.certificates]]\nhosts = [\"a.test\", \"*.b.test\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.compile.tls.default_secret,
        Some(("ingress".to_string(), "default-tls".to_string()))
    );
    assert_eq!(c.tls.certificates[0].hosts, ["a.test", "*.b.test"]);
    let bad = |text: &str| {
        sluice::config::Config::parse(text, "t.toml")
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad("[tls]\ndefault_certificate = \"nonamespace\"\n").contains("tls.default_certificate")
    );
    let e = bad("[[tls.certificates]]\nhosts = [\"a..test\"]\ncert = \"c\"\nkey = \"k\"\n");
    assert!(
        e.contains("tls.certificates[0].hosts") && e.contains("a..test"),
        "{e}"
    );
    let e = bad("[[tls.certificates]]\nhosts = []\ncert = \"c\"\nkey = \"k\"\n");
    assert!(e.contains("names no host"), "{e}");
}

#[test]
fn second_handshake_is_resumed_on_any_worker() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let default = certs::self_signed().unwrap();
    let c = cert_for(&["res.test"]);
    let yaml = upstream_yaml(&up)
        + &ingress("web", "", &["res.test"], &[(&["res.test"], Some("c"))])
        + &secret("c", &c);
    let snapshot = compile_yaml(&yaml, &options(&default), 1).snapshot;
    let cfg = EngineConfig {
        workers: vec![None; 2],
        http: "127.0.0.1:0".parse().unwrap(),
        upstream_max_idle: 16,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let engine =
        Engine::start_with_https(cfg, Some(https_config(LOOPBACK, None)), Arc::new(snapshot))
            .unwrap();
    let addr = engine.https_addr().unwrap();
    let tls12 = &[&rustls::version::TLS12][..];
    let tls13 = &[&rustls::version::TLS13][..];
    let session_id_only = {
        let mut c = (*client_config(tls12)).clone();
        c.resumption = rustls::client::Resumption::in_memory_sessions(16)
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
        Arc::new(c)
    };
    for (what, config) in [
        ("TLS 1.3 ticket", client_config(tls13)),
        ("TLS 1.2 ticket", client_config(tls12)),
        ("TLS 1.2 session id (server cache)", session_id_only),
    ] {
        let mut first = connect(addr, Some("res.test"), &config);
        assert_eq!(
            first.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "{what}"
        );
        // Reading a response also takes in the TLS 1.3 tickets sent after the handshake.
        assert_eq!(get(&mut first, "res.test", "/").0, 200);
        drop(first);
        // Several connections: SO_REUSEPORT spreads them over both workers, and every one
        // resumes (the ticket keys and the session cache are shared).
        for i in 0..6 {
            let mut again = connect(addr, Some("res.test"), &config);
            assert_eq!(
                again.conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed),
                "{what}, reconnection {i}"
            );
            assert_eq!(get(&mut again, "res.test", "/").0, 200);
        }
    }
    let sum = |f: fn(&sluice::engine::metrics::WorkerMetrics) -> u64| -> u64 {
        engine.state().metrics.iter().map(|m| f(m)).sum()
    };
    assert_eq!(
        sum(|m| m.tls_full.load(std::sync::atomic::Ordering::Relaxed)),
        3
    );
    assert_eq!(
        sum(|m| m.tls_resumed.load(std::sync::atomic::Ordering::Relaxed)),
        18
    );
    assert_eq!(
        sum(|m| m.tls_failed.load(std::sync::atomic::Ordering::Relaxed)),
        0
    );
    stop(engine);
}

#[test]
fn a_handshake_that_does_not_finish_in_time_is_closed() {
    let default = certs::self_signed().unwrap();
    let snapshot = compile_yaml("", &options(&default), 1).snapshot;
    let mut https = https_config(LOOPBACK, None);
    let settings = TlsSettings::new(
        certs::provider(),
        rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
        rustls::server::ServerSessionMemoryCache::new(16),
        Duration::from_millis(300),
    )
    .unwrap();
    https.settings = Arc::new(settings);
    let engine = start(snapshot, https);
    let mut s = TcpStream::connect(engine.https_addr().unwrap()).unwrap();
    // The first bytes of a ClientHello record, and nothing more. The request-head timeout
    // (10 s) is far beyond the read timeout: only the handshake timeout can close this.
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x80]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
    // A garbage "ClientHello" gets an alert and a close, and nothing else is affected.
    let mut s = TcpStream::connect(engine.https_addr().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.is_empty() || got[0] == 0x15,
        "an alert record or nothing: {got:?}"
    );
    let failed: u64 = engine
        .state()
        .metrics
        .iter()
        .map(|m| m.tls_failed.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(failed, 2, "the timed-out handshake and the garbage");
    stop(engine);
}

#[test]
fn certificates_from_files_serve_their_hosts_before_secrets() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-tls-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (file_cert, secret_cert) = (cert_for(&["file.test"]), cert_for(&["file.test"]));
    std::fs::write(dir.join("c.pem"), &file_cert.cert_pem).unwrap();
    std::fs::write(dir.join("k.pem"), &file_cert.key_pem).unwrap();
    let now = certs::wall_clock();
    let loaded = certs::load_files(&dir.join("c.pem"), &dir.join("k.pem"), now).unwrap();
    let missing = certs::load_files(&dir.join("nope.pem"), &dir.join("k.pem"), now).unwrap_err();
    assert!(
        matches!(missing, certs::CertFileError::Read { .. }),
        "{missing:?}"
    );
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    // A key file holding a certificate is refused with a reason.
    let wrong = certs::load_files(&dir.join("c.pem"), &dir.join("c.pem"), now).unwrap_err();
    assert!(
        matches!(wrong, certs::CertFileError::Invalid { .. }),
        "{wrong:?}"
    );
    assert!(wrong.to_string().contains("private key"), "{wrong}");
    let default = certs::self_signed().unwrap();
    let mut opts = options(&default);
    opts.tls.files = vec![(vec!["file.test".to_string()], loaded)];
    // An Ingress also names a Secret for the same host: the file, configured by the
    // operator, comes first.
    let yaml = upstream_yaml(&up)
        + &ingress("web", "", &["file.test"], &[(&["file.test"], Some("s"))])
        + &secret("s", &secret_cert);
    let compiled = compile_yaml(&yaml, &opts, 1);
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        compiled.diagnostics
    );
    let engine = start(compiled.snapshot, https_config(LOOPBACK, None));
    let mut tls = connect(
        engine.https_addr().unwrap(),
        Some("file.test"),
        &client_config(&[&rustls::version::TLS13]),
    );
    assert_eq!(presented(&tls), file_cert.der);
    assert_eq!(get(&mut tls, "file.test", "/").0, 200);
    stop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn default_ssl_certificate_secret_and_its_fallback() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let fallback = certs::self_signed().unwrap();
    let def = cert_for(&["default.test"]);
    let mut opts = options(&fallback);
    opts.tls.default_secret = Some(("default".to_string(), "def".to_string()));
    let yaml = upstream_yaml(&up) + &secret("def", &def);
    let compiled = compile_yaml(&yaml, &opts, 1);
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        compiled.diagnostics
    );
    let chosen = compiled
        .snapshot
        .certs
        .select(Some("anything.test"))
        .unwrap();
    assert_eq!(chosen.cert[0].to_vec(), def.der);
    assert_eq!(
        compiled.snapshot.certs.select(None).unwrap().cert[0].to_vec(),
        def.der
    );
    // The Secret gone: reported, and the fallback (file or self-signed) answers.
    let compiled = compile_yaml(&upstream_yaml(&up), &opts, 2);
    let diags: Vec<String> = compiled.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        diags,
        [
            "Secret default/def: --default-ssl-certificate: Secret default/def not found; the default certificate answers"
        ]
    );
    let chosen = compiled.snapshot.certs.select(None).unwrap();
    assert!(Arc::ptr_eq(&chosen, &fallback.key));
}

#[test]
fn large_bodies_both_ways_over_tls() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let default = certs::self_signed().unwrap();
    let yaml = upstream_yaml(&up) + &ingress("web", "", &["big.test"], &[]);
    let engine = start(
        compile_yaml(&yaml, &options(&default), 1).snapshot,
        https_config(LOOPBACK, None),
    );
    let config = client_config(&[&rustls::version::TLS13]);
    let mut tls = connect(engine.https_addr().unwrap(), Some("big.test"), &config);
    // 5 MB down: many TLS records, short socket writes, the machine's backpressure.
    let n = 5_000_000;
    let (status, _, body) = get(&mut tls, "big.test", &format!("/big/{n}"));
    assert_eq!(status, 200);
    assert_eq!(body.len(), n);
    assert!(body.bytes().all(|b| b == b'x'));
    // 3 MB up (chunked), then the same connection is still good.
    write!(
        tls,
        "POST /upload HTTP/1.1\r\nHost: big.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'y'; 64 * 1024];
    let mut sent = 0;
    while sent < 3_000_000 {
        write!(tls, "{:x}\r\n", chunk.len()).unwrap();
        tls.write_all(&chunk).unwrap();
        tls.write_all(b"\r\n").unwrap();
        sent += chunk.len();
    }
    tls.write_all(b"0\r\n\r\n").unwrap();
    tls.flush().unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut byte).unwrap(), 1);
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!("A POST /upload body={sent}\n")
    );
    assert_eq!(get(&mut tls, "big.test", "/after").0, 200);
    stop(engine);
}

#[test]
fn an_unchanged_secret_is_parsed_once_a_changed_one_again() {
    let default = certs::self_signed().unwrap();
    let opts = options(&default);
    let (first, second) = (cert_for(&["cache.test"]), cert_for(&["cache.test"]));
    let yaml = |c: &Cert| {
        ingress("web", "", &["cache.test"], &[(&["cache.test"], Some("s"))]) + &secret("s", c)
    };
    let (objects, errors) = parse_documents(&yaml(&first), "a.yaml");
    assert!(errors.is_empty());
    let objects = Objects::from_objects(objects);
    let pick = |c: &Compiled| c.snapshot.certs.select(Some("cache.test")).unwrap();
    let a = compile(&objects, &opts, 1);
    let b = compile(&objects, &opts, 2);
    // The same shared Secret object: the same parsed key, no second parse.
    assert!(Arc::ptr_eq(&pick(&a), &pick(&b)));
    assert_eq!(pick(&a).cert[0].to_vec(), first.der);
    // A new version of the Secret (a new object) is parsed.
    let c = compile_yaml(&yaml(&second), &opts, 3);
    assert_eq!(pick(&c).cert[0].to_vec(), second.der);
    // Equal text but a new object is parsed again (identity, not content, is the key).
    let d = compile_yaml(&yaml(&first), &opts, 4);
    assert!(!Arc::ptr_eq(&pick(&a), &pick(&d)));
    assert_eq!(pick(&d).cert[0].to_vec(), first.der);
}
