//! `backend-protocol: HTTPS` through real sockets: `sluice run` in front of in-process rustls
//! upstream pods. The pods answer with what they saw of the TLS connection (the SNI, whether
//! a client certificate came, which connection it is), so each test checks what the
//! ingress-nginx e2e tests for `proxy-ssl-*` and `backend-protocol` assert: HTTPS to the
//! pods works; `proxy-ssl-verify: on` refuses an upstream whose certificate does not chain to
//! `ca.crt` (502) and accepts one that does; the client certificate of `proxy-ssl-secret` is
//! presented; SNI is sent with `proxy-ssl-server-name: on` (the Host, or `proxy-ssl-name`);
//! a keep-alive upstream TLS connection serves many requests with one handshake.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use support::binary::{self, Sluice};

mod support;

/// A CA and what it signed, as PEM.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        let pem = issuer.pem();
        Ca { issuer, pem }
    }

    /// A leaf for `names`, as (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn der_chain(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

fn der_key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

/// TLS upstream pods on 127.0.0.1..=n (one port), serving `cert`; with `client_ca`, a client
/// certificate signed by it is required. Each answer's body: `pod=<i> conn=<n> sni=<name or
/// -> client-cert=<yes|no>`, where `conn` numbers the TLS connections the pod accepted.
struct Pods {
    port: u16,
    handshakes: Arc<AtomicUsize>,
}

impl Pods {
    fn start(n: usize, cert: &(String, String), client_ca: Option<&Ca>) -> Pods {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in der_chain(&ca.pem) {
                    roots.add(c).unwrap();
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = Arc::new(
            builder
                .with_single_cert(der_chain(&cert.0), der_key(&cert.1))
                .unwrap(),
        );
        let (port, listeners) = support::pods::bind(n);
        let handshakes = Arc::new(AtomicUsize::new(0));
        for (i, listener) in listeners.into_iter().enumerate() {
            let config = config.clone();
            let handshakes = handshakes.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let config = config.clone();
                    let handshakes = handshakes.clone();
                    std::thread::spawn(move || serve(i + 1, stream, config, &handshakes));
                }
            });
        }
        Pods { port, handshakes }
    }

    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

fn serve(pod: usize, stream: TcpStream, config: Arc<ServerConfig>, handshakes: &AtomicUsize) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, stream);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut number = None;
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.clear();
        // Counted once the handshake is done (the first request came through it).
        let n = *number.get_or_insert_with(|| handshakes.fetch_add(1, Ordering::SeqCst) + 1);
        let sni = tls.conn.server_name().unwrap_or("-").to_string();
        let client_cert = match tls.conn.peer_certificates() {
            Some(c) if !c.is_empty() => "yes",
            _ => "no",
        };
        let body = format!("pod={pod} conn={n} sni={sni} client-cert={client_cert}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if tls.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// An Ingress for `host` to Service `service`:80, with `annotations` (`key: value` lines,
/// the prefix added).
fn ingress(name: &str, host: &str, service: &str, annotations: &[(&str, &str)]) -> String {
    let notes: Vec<String> = annotations
        .iter()
        .map(|(k, v)| format!("nginx.ingress.kubernetes.io/{k}: \"{v}\""))
        .collect();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: {name}, namespace: default, annotations: {{{}}}}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}]}}\n",
        notes.join(", ")
    )
}

/// Service `name`:80 with an EndpointSlice of 127.0.0.1 on `port`.
fn service(name: &str, port: u16) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
    )
}

/// A Secret `name` with the given keys (PEM text, stored base64 in `data`).
fn secret(name: &str, keys: &[(&str, &str)]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: Vec<String> = keys
        .iter()
        .map(|(k, v)| format!("  {k}: {}\n", b64.encode(v)))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ndata:\n{}",
        data.concat()
    )
}

/// `GET /` for `host` on a new connection: status and body.
fn get(s: &Sluice, host: &str) -> (u16, String) {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    let status = out
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The value of `key=` in a pod's answer.
fn field<'a>(body: &'a str, key: &str) -> &'a str {
    body.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {body:?}"))
}

#[test]
fn https_upstream_verification_sni_and_keep_alive() {
    let ca = Ca::new("upstream CA");
    let other = Ca::new("another CA");
    let pods = Pods::start(1, &ca.leaf(&["backend.test", "named.test"]), None);
    let yaml = [
        ingress("plain", "plain.test", "tls", &[]),
        ingress(
            "https",
            "https.test",
            "tls",
            &[("backend-protocol", "HTTPS")],
        ),
        ingress(
            "sni",
            "backend.test",
            "tls",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-server-name", "on"),
            ],
        ),
        ingress(
            "named",
            "named-front.test",
            "tls",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-server-name", "on"),
                ("proxy-ssl-name", "named.test"),
            ],
        ),
        ingress(
            "wrong-ca",
            "wrong-ca.test",
            "tls",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/other-ca"),
                ("proxy-ssl-name", "backend.test"),
            ],
        ),
        ingress(
            "right-ca",
            "right-ca.test",
            "tls",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/upstream-ca"),
                ("proxy-ssl-name", "backend.test"),
            ],
        ),
        ingress(
            "wrong-name",
            "wrong-name.test",
            "tls",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-secret", "default/upstream-ca"),
            ],
        ),
        service("tls", pods.port),
        secret("upstream-ca", &[("ca.crt", &ca.pem)]),
        secret("other-ca", &[("ca.crt", &other.pem)]),
    ]
    .concat();
    let s = binary::start("up-tls", &[("app.yaml", &yaml)], "", 1);

    // Plain HTTP to a TLS pod does not work (the pod answers nothing HTTP).
    assert_eq!(get(&s, "plain.test").0, 502);

    // HTTPS: works; no SNI unless proxy-ssl-server-name is on (ingress-nginx's default).
    let (status, body) = get(&s, "https.test");
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "sni"), "-");
    assert_eq!(field(&body, "client-cert"), "no");

    // Keep-alive: one handshake for many requests (one worker, one pooled connection).
    let before = pods.handshakes();
    let conn = field(&body, "conn").to_string();
    for _ in 0..10 {
        let (status, again) = get(&s, "https.test");
        assert_eq!(status, 200);
        assert_eq!(
            field(&again, "conn"),
            conn,
            "the pooled TLS connection is reused"
        );
    }
    assert_eq!(pods.handshakes(), before);

    // SNI: the Host, or proxy-ssl-name.
    let (status, body) = get(&s, "backend.test");
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "sni"), "backend.test");
    let (status, body) = get(&s, "named-front.test");
    assert_eq!(status, 200, "{body}");
    assert_eq!(field(&body, "sni"), "named.test");
    // A connection made for one name is not reused for another.
    assert_ne!(field(&body, "conn"), conn);

    // Verification: the wrong CA is refused, the right one accepted, and the name counts.
    assert_eq!(get(&s, "wrong-ca.test").0, 502);
    let (status, body) = get(&s, "right-ca.test");
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(&s, "wrong-name.test").0, 502);
}

#[test]
fn the_client_certificate_of_proxy_ssl_secret_is_presented() {
    let ca = Ca::new("upstream CA");
    let clients = Ca::new("client CA");
    let pods = Pods::start(1, &ca.leaf(&["backend.test"]), Some(&clients));
    let (crt, key) = clients.leaf(&["sluice.client"]);
    let (stranger_crt, stranger_key) = Ca::new("stranger CA").leaf(&["sluice.client"]);
    let yaml = [
        ingress(
            "no-cert",
            "no-cert.test",
            "mtls",
            &[("backend-protocol", "HTTPS")],
        ),
        ingress(
            "cert",
            "cert.test",
            "mtls",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-secret", "default/client"),
                ("proxy-ssl-verify", "on"),
                ("proxy-ssl-name", "backend.test"),
            ],
        ),
        ingress(
            "stranger",
            "stranger.test",
            "mtls",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-secret", "default/stranger"),
            ],
        ),
        service("mtls", pods.port),
        secret(
            "client",
            &[("ca.crt", &ca.pem), ("tls.crt", &crt), ("tls.key", &key)],
        ),
        secret(
            "stranger",
            &[("tls.crt", &stranger_crt), ("tls.key", &stranger_key)],
        ),
    ]
    .concat();
    let s = binary::start("up-mtls", &[("app.yaml", &yaml)], "", 2);
    // The upstream requires a client certificate: none, or an unknown one, is refused.
    assert_eq!(get(&s, "no-cert.test").0, 502);
    assert_eq!(get(&s, "stranger.test").0, 502);
    for _ in 0..4 {
        let (status, body) = get(&s, "cert.test");
        assert_eq!(status, 200, "{body}");
        assert_eq!(field(&body, "client-cert"), "yes");
    }
}

/// The annotations compile into a typed route property; a bad value rejects only its field
/// and is reported; GRPC stays refused with its reason.
#[test]
fn proxy_ssl_annotations_are_typed_and_a_bad_value_rejects_only_its_field() {
    use sluice::control::compile::{CompileOptions, Objects, compile};
    use sluice::control::manifests::parse_documents;

    let yaml = [
        ingress(
            "mixed",
            "mixed.test",
            "tls",
            &[
                ("backend-protocol", "HTTPS"),
                ("proxy-ssl-server-name", "on"),
                ("proxy-ssl-verify", "maybe"),
                ("proxy-ssl-protocols", "TLSv1 TLSv1.2"),
                ("proxy-ssl-name", "$host"),
                ("proxy-ssl-secret", "elsewhere/ca"),
                ("proxy-ssl-verify-depth", "0"),
            ],
        ),
        ingress(
            "tls13",
            "tls13.test",
            "tls",
            &[
                ("backend-protocol", "https"),
                ("proxy-ssl-protocols", "TLSv1.2 TLSv1.3"),
                ("proxy-ssl-name", "Backend.Test"),
            ],
        ),
        ingress("grpc", "grpc.test", "tls", &[("backend-protocol", "GRPC")]),
        ingress(
            "no-ca",
            "no-ca.test",
            "tls",
            &[("backend-protocol", "HTTPS"), ("proxy-ssl-verify", "on")],
        ),
        service("tls", 8443),
    ]
    .concat();
    let (objects, errors) = parse_documents(&yaml, "test");
    assert!(errors.is_empty(), "{errors:?}");
    let c = compile(
        &Objects::from_objects(objects),
        &CompileOptions::default(),
        1,
    );
    let tls_of = |host: &str| {
        let (_, policy, _) = c.snapshot.table.route(host, "/").expect("routed");
        policy.and_then(|p| p.upstream_tls.as_ref().map(|t| t.to_string()))
    };
    let diags = |object: &str| -> Vec<String> {
        c.diagnostics
            .iter()
            .filter(|d| d.object == format!("Ingress default/{object}"))
            .map(|d| d.to_string())
            .collect()
    };
    // Every bad field falls back to its default; the rest stands.
    assert_eq!(
        tls_of("mixed.test").as_deref(),
        Some("https verify=off sni=on protocols=TLSv1.2")
    );
    let mixed = diags("mixed");
    for key in [
        "proxy-ssl-verify]",
        "proxy-ssl-protocols]",
        "proxy-ssl-name]",
        "proxy-ssl-secret]",
        "proxy-ssl-verify-depth]",
    ] {
        assert!(mixed.iter().any(|d| d.contains(key)), "{key}: {mixed:#?}");
    }
    assert_eq!(mixed.len(), 5, "{mixed:#?}");
    assert_eq!(
        tls_of("tls13.test").as_deref(),
        Some("https verify=off sni=off protocols=TLSv1.2,TLSv1.3 name=backend.test")
    );
    assert!(diags("tls13").is_empty(), "{:#?}", diags("tls13"));
    assert_eq!(tls_of("grpc.test"), None);
    let grpc = diags("grpc");
    assert!(grpc.len() == 1 && grpc[0].contains("HTTP/2"), "{grpc:#?}");
    // Verification without a CA: reported, and it fails closed (every handshake refused).
    assert!(tls_of("no-ca.test").is_some_and(|t| t.contains("verify=on")));
    assert!(
        diags("no-ca").iter().any(|d| d.contains("no CA")),
        "{:#?}",
        diags("no-ca")
    );
}
