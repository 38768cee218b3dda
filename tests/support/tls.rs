//! TLS test helpers: certificates generated with rcgen, Secrets and Ingresses as YAML, the
//! HTTPS listener's settings, and an in-process rustls client that accepts any certificate
//! (the tests check which one was presented) and speaks HTTP/1.1 over it.

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
use sluice::core::tls::TlsSettings;
use sluice::demo::DemoUpstream;
use sluice::engine::HttpsConfig;

/// A generated certificate: PEM for the Secret, DER to recognise it on the wire.
pub struct Cert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

pub fn cert_for(hosts: &[&str]) -> Cert {
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

pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

pub fn secret_yaml(name: &str, cert_pem: &str, key_pem: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert_pem),
        indent(key_pem)
    )
}

pub fn secret(name: &str, c: &Cert) -> String {
    secret_yaml(name, &c.cert_pem, &c.key_pem)
}

pub fn upstream_yaml(up: &DemoUpstream) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        up.addr.port(),
        up.addr.ip()
    )
}

/// An Ingress routing `hosts` to the upstream, with `tls` entries (hosts, secret).
pub fn ingress(
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

pub fn compile_yaml(yaml: &str, opts: &CompileOptions, version: u64) -> Compiled {
    let (objects, errors) = parse_documents(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    compile(&Objects::from_objects(objects), opts, version)
}

pub fn options(default: &certs::StaticCert) -> CompileOptions {
    CompileOptions {
        tls: TlsOptions {
            default_cert: Some(default.clone()),
            ..TlsOptions::default()
        },
        ..CompileOptions::default()
    }
}

pub fn https_config(addr: SocketAddr, hsts: Option<&str>) -> HttpsConfig {
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
        addr,
        conn: Arc::new(conn),
        settings: Arc::new(settings),
    }
}

/// Accepts any server certificate (the tests check which one was presented) but verifies
/// the handshake signatures with it.
#[derive(Debug)]
pub struct AnyCert(pub Arc<rustls::crypto::CryptoProvider>);

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

pub fn client_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
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

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the handshake; `sni` None sends no SNI (an IP server name).
pub fn connect(addr: SocketAddr, sni: Option<&str>, config: &Arc<ClientConfig>) -> Tls {
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

pub fn presented(tls: &Tls) -> Vec<u8> {
    tls.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

/// Sends a GET and reads one Content-Length response: (status, head, body).
pub fn get(s: &mut impl ReadWrite, host: &str, path: &str) -> (u16, String, String) {
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

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

pub fn plain_get(addr: SocketAddr, host: &str, target: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    get(&mut s, host, target)
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
