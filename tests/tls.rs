//! TLS termination end to end over real sockets: in-process rustls clients, Sluice's io_uring
//! workers with an HTTPS listener, certificates from `kubernetes.io/tls` Secrets, and
//! in-process upstream servers. Certificates are generated per test with rcgen.

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
        rustls::crypto::ring::Ticketer::new().unwrap(),
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
