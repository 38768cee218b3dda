//! TLS termination end to end over real sockets: in-process rustls clients, Sluice's io_uring
//! workers with an HTTPS listener, certificates from `kubernetes.io/tls` Secrets, and
//! in-process upstream servers. Certificates are generated per test with rcgen.
// The publication wait measures from a wall-clock instant (test code, not the core).
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sluice::control::certs::{self, TlsOptions};
use sluice::control::compile::{CompileOptions, Compiled, Objects, compile};
use sluice::control::manifests::parse_documents;
use sluice::core::conn::{ConnConfig, Scheme};
use sluice::core::route::Snapshot;
use sluice::core::tls::TlsSettings;
use sluice::demo::{DemoUpstream, spawn_upstream};
use sluice::engine::{Engine, EngineConfig, HttpsConfig};

/// A generated certificate: PEM for the Secret, DER to recognise it on the wire.
struct Cert {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

fn cert_for(hosts: &[&str]) -> Cert {
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Cert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().to_vec(),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

fn secret_yaml(name: &str, cert_pem: &str, key_pem: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert_pem),
        indent(key_pem)
    )
}

fn secret(name: &str, c: &Cert) -> String {
    secret_yaml(name, &c.cert_pem, &c.key_pem)
}

fn upstream_yaml(up: &DemoUpstream) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        up.addr.port(),
        up.addr.ip()
    )
}

/// An Ingress routing `hosts` to the upstream, with `tls` entries (hosts, secret).
fn ingress(
    name: &str,
    annotations: &str,
    hosts: &[&str],
    tls: &[(&[&str], Option<&str>)],
) -> String {
    let mut y = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations: {{{annotations}}}\nspec:\n  ingressClassName: sluice\n  rules:\n"
    );
    for h in hosts {
        y += &format!(
            "  - host: \"{h}\"\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n"
        );
    }
    if !tls.is_empty() {
        y += "  tls:\n";
        for (hosts, secret) in tls {
            let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
            y += &format!("  - hosts: [{}]\n", list.join(", "));
            if let Some(s) = secret {
                y += &format!("    secretName: {s}\n");
            }
        }
    }
    y
}

fn compile_yaml(yaml: &str, opts: &CompileOptions, version: u64) -> Compiled {
    let (objects, errors) = parse_documents(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    compile(&Objects::from_objects(objects), opts, version)
}

fn options(default: &certs::StaticCert) -> CompileOptions {
    CompileOptions {
        tls: TlsOptions {
            default_cert: Some(default.clone()),
            ..TlsOptions::default()
        },
        ..CompileOptions::default()
    }
}

fn https_config(hsts: Option<&str>) -> HttpsConfig {
    let settings = TlsSettings::new(
        certs::provider(),
        rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
        rustls::server::ServerSessionMemoryCache::new(256),
        Duration::from_secs(10),
    )
    .unwrap();
    let conn = ConnConfig {
        scheme: Scheme::Https,
        hsts: hsts.map(Into::into),
        ..ConnConfig::default()
    };
    HttpsConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        conn: Arc::new(conn),
        settings: Arc::new(settings),
    }
}

fn start(snapshot: Snapshot, https: HttpsConfig) -> Engine {
    let cfg = EngineConfig {
        workers: vec![None; 1],
        http: "127.0.0.1:0".parse().unwrap(),
        admin: None,
        conn: Arc::new(ConnConfig::default()),
        upstream_max_idle: 16,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
    };
    Engine::start_with_https(cfg, Some(https), Arc::new(snapshot))
        .expect("engine starts (io_uring available)")
}

/// Accepts any server certificate (the tests check which one was presented) but verifies
/// the handshake signatures with it.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let provider = certs::provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake; `sni` None sends no SNI (an IP server name).
fn connect(addr: SocketAddr, sni: Option<&str>, config: &Arc<ClientConfig>) -> Tls {
    let name: ServerName<'static> = match sni {
        Some(h) => ServerName::try_from(h.to_string()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls
}

fn presented(tls: &Tls) -> Vec<u8> {
    tls.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

/// Sends a GET and reads one Content-Length response: (status, head, body).
fn get(s: &mut impl ReadWrite, host: &str, path: &str) -> (u16, String, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    s.flush().unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head");
        assert!(
            n > 0,
            "closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn stop(engine: Engine) {
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn sni_picks_exact_then_wildcard_then_default() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let default = certs::self_signed().unwrap();
    let (a, w, x) = (
        cert_for(&["a.test"]),
        cert_for(&["*.w.test"]),
        cert_for(&["x.w.test"]),
    );
    let yaml = upstream_yaml(&up)
        + &ingress(
            "web",
            "",
            &["a.test", "*.w.test", "x.w.test", "plain.test"],
            &[
                (&["a.test"], Some("a")),
                (&["*.w.test"], Some("w")),
                (&["x.w.test"], Some("x")),
            ],
        )
        + &secret("a", &a)
        + &secret("w", &w)
        + &secret("x", &x);
    let compiled = compile_yaml(&yaml, &options(&default), 1);
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        compiled.diagnostics
    );
    let engine = start(compiled.snapshot, https_config(None));
    let addr = engine.https_addr().unwrap();
    let default_der = default.key.cert[0].to_vec();
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = client_config(versions);
        let cases: [(Option<&str>, &[u8]); 6] = [
            (Some("a.test"), &a.der),
            (Some("A.TEST"), &a.der),
            (Some("y.w.test"), &w.der),
            (Some("x.w.test"), &x.der),
            (Some("other.test"), &default_der),
            (None, &default_der),
        ];
        for (sni, want) in cases {
            let mut tls = connect(addr, sni, &config);
            assert_eq!(presented(&tls), want, "SNI {sni:?}");
            assert_eq!(
                tls.conn.alpn_protocol(),
                Some(&b"http/1.1"[..]),
                "no h2 yet"
            );
            let host = "a.test";
            let (status, head, body) = get(&mut tls, host, "/hello");
            assert_eq!(status, 200, "{head}");
            assert!(body.starts_with("A GET /hello"), "{body}");
            assert!(head.contains("X-Seen-X-Forwarded-Proto: https"), "{head}");
            // Keep-alive over TLS.
            let (status, _, _) = get(&mut tls, host, "/again");
            assert_eq!(status, 200);
        }
    }
    stop(engine);
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
    let engine = start(compiled.snapshot, https_config(None));
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

    let engine = start(compiled.snapshot, https_config(None));
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
        stderr.contains("sluice: rejected: Secret default/broken: data[tls.crt]: broken PEM"),
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
fn rotated_secret_is_used_by_the_next_handshake_while_open_connections_keep_working() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let default = certs::self_signed().unwrap();
    let opts = options(&default);
    let (first, second) = (cert_for(&["rot.test"]), cert_for(&["rot.test"]));
    let yaml = |c: &Cert| {
        upstream_yaml(&up)
            + &ingress("web", "", &["rot.test"], &[(&["rot.test"], Some("rot"))])
            + &secret("rot", c)
    };
    let engine = start(
        compile_yaml(&yaml(&first), &opts, 1).snapshot,
        https_config(None),
    );
    let addr = engine.https_addr().unwrap();
    let config = client_config(&[&rustls::version::TLS13]);
    let mut open = connect(addr, Some("rot.test"), &config);
    assert_eq!(presented(&open), first.der);
    assert_eq!(get(&mut open, "rot.test", "/before").0, 200);

    engine.publish(Arc::new(compile_yaml(&yaml(&second), &opts, 2).snapshot));
    let acked =
        engine
            .publisher()
            .wait_acknowledged(2, std::time::Instant::now(), Duration::from_secs(10));
    assert!(acked.is_some(), "the worker took the new snapshot");

    // A client without the old session (resuming it would not show a certificate at all).
    let mut fresh = connect(
        addr,
        Some("rot.test"),
        &client_config(&[&rustls::version::TLS13]),
    );
    assert_eq!(
        fresh.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(
        presented(&fresh),
        second.der,
        "next handshake: new certificate"
    );
    assert_eq!(get(&mut fresh, "rot.test", "/new").0, 200);
    // The connection made before the rotation is untouched.
    let (status, _, body) = get(&mut open, "rot.test", "/after");
    assert_eq!(status, 200);
    assert!(body.starts_with("A GET /after"));
    assert_eq!(presented(&open), first.der);
    stop(engine);
}

fn plain_get(addr: SocketAddr, host: &str, target: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    get(&mut s, host, target)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn http_redirects_to_https_for_tls_hosts_and_https_carries_hsts() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let default = certs::self_signed().unwrap();
    let c = cert_for(&["secure.test"]);
    let yaml = upstream_yaml(&up)
        + &ingress(
            "secure",
            "",
            &["secure.test", "*.wild.test"],
            &[(&["secure.test", "*.wild.test"], Some("c"))],
        )
        + &ingress(
            "optout",
            "nginx.ingress.kubernetes.io/ssl-redirect: \"false\"",
            &["optout.test"],
            &[(&["optout.test"], Some("c"))],
        )
        + &ingress(
            "forced",
            "sluice.dev/force-ssl-redirect: \"true\"",
            &["forced.test"],
            &[],
        )
        + &ingress(
            "typo",
            "nginx.ingress.kubernetes.io/ssl-redirect: \"yes\"",
            &["typo.test"],
            &[(&["typo.test"], None)],
        )
        + &ingress("plain", "", &["plain.test"], &[])
        + &secret("c", &c);
    let compiled = compile_yaml(&yaml, &options(&default), 1);
    let diags: Vec<String> = compiled.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        diags,
        [
            "Ingress default/typo: metadata.annotations[nginx.ingress.kubernetes.io/ssl-redirect]: expected true or false, got \"yes\"; using true"
        ]
    );
    let engine = start(
        compiled.snapshot,
        https_config(Some("max-age=31536000; includeSubDomains")),
    );
    let http = engine.local_addr();
    let port = engine.https_addr().unwrap().port();

    let (status, head, _) = plain_get(http, "Secure.Test", "/a/b?x=1&y=2");
    assert_eq!(status, 308, "{head}");
    assert_eq!(
        header(&head, "location"),
        Some(format!("https://secure.test:{port}/a/b?x=1&y=2").as_str())
    );
    let (status, head, _) = plain_get(http, "x.wild.test", "/");
    assert_eq!(status, 308, "wildcard TLS host: {head}");
    assert_eq!(
        header(&head, "location"),
        Some(format!("https://x.wild.test:{port}/").as_str())
    );
    let (status, head, _) = plain_get(http, "forced.test", "/f");
    assert_eq!(status, 308, "force-ssl-redirect without TLS: {head}");
    let (status, _, _) = plain_get(http, "typo.test", "/");
    assert_eq!(status, 308, "a bad annotation value keeps the default");
    for host in ["optout.test", "plain.test"] {
        let (status, head, _) = plain_get(http, host, "/");
        assert_eq!(status, 200, "{host}: {head}");
        assert_eq!(
            header(&head, "strict-transport-security"),
            None,
            "no HSTS over http"
        );
        assert_eq!(header(&head, "x-seen-x-forwarded-proto"), Some("http"));
    }
    // A host that only routes by wildcard with a strange label is not redirected to it.
    let (status, _, _) = plain_get(http, "a/b@x.wild.test", "/");
    assert_ne!(status, 308);

    let config = client_config(&[&rustls::version::TLS13]);
    let mut tls = connect(engine.https_addr().unwrap(), Some("secure.test"), &config);
    let (status, head, _) = get(&mut tls, "secure.test", "/");
    assert_eq!(status, 200, "no redirect over https");
    assert_eq!(
        header(&head, "strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(header(&head, "x-seen-x-forwarded-proto"), Some("https"));
    // Sluice's own answers over HTTPS carry it too.
    let (status, head, _) = get(&mut tls, "nowhere.test", "/");
    assert_eq!(status, 404);
    assert_eq!(
        header(&head, "strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    stop(engine);
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
        admin: None,
        conn: Arc::new(ConnConfig::default()),
        upstream_max_idle: 16,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
    };
    let engine =
        Engine::start_with_https(cfg, Some(https_config(None)), Arc::new(snapshot)).unwrap();
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
    let sum = |f: fn(&sluice::worker::WorkerMetrics) -> u64| -> u64 {
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
    let mut https = https_config(None);
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
    assert!(missing.contains("nope.pem"), "{missing}");
    // A key file holding a certificate is refused with a reason.
    let wrong = certs::load_files(&dir.join("c.pem"), &dir.join("c.pem"), now).unwrap_err();
    assert!(wrong.contains("private key"), "{wrong}");
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
    let engine = start(compiled.snapshot, https_config(None));
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
        https_config(None),
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
