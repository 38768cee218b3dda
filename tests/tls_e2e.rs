//! TLS end to end with real clients: the `sluice` binary serving a manifests directory with a
//! `kubernetes.io/tls` Secret, checked by `curl --resolve` (verifying the chain against a test
//! CA) and `openssl s_client -servername`. Both tools are required: a missing one fails the
//! test with a message (CI installs them in `.ci/run`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sluice::demo::spawn_upstream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn require(tool: &str) {
    let found = Command::new(tool)
        .arg(if tool == "openssl" {
            "version"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is not installed: the TLS end-to-end test needs it (apt-get install {tool}; \
         .ci/run installs it)"
    );
}

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A test CA and a leaf for `e2e.test` and `*.wild.e2e` (common name `cn`) signed by it.
fn make_pki(cn: &str) -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let mut leaf =
        rcgen::CertificateParams::new(vec!["e2e.test".to_string(), "*.wild.e2e".to_string()])
            .unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}\n")).collect()
}

fn manifests(dir: &Path, upstream: SocketAddr, pki: &Pki) {
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  tls:\n  - hosts: [e2e.test, \"*.wild.e2e\"]\n    secretName: web-tls\n  rules:\n\
         \x20 - host: e2e.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
         \x20 - host: \"*.wild.e2e\"\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: web-tls, namespace: default}}\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        upstream.port(),
        upstream.ip(),
        indent(&pki.cert_pem),
        indent(&pki.key_pem),
    );
    std::fs::write(dir.join("web.yaml"), yaml).unwrap();
}

/// Starts `sluice run`; returns it with its HTTP and HTTPS addresses.
fn run_sluice(dir: &Path) -> (Child, SocketAddr, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["run", "--manifests"])
        .arg(dir)
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut http = None;
    let https = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some(rest) = line.split_once("serving http on ").map(|(_, rest)| rest) {
            http = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.split_once("serving https on ").map(|(_, rest)| rest) {
            break rest.trim().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, http.expect("http address printed first"), https)
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn curl_and_openssl_s_client_against_the_binary() {
    require("curl");
    require("openssl");
    let dir = Dir(std::env::temp_dir().join(format!("sluice-tls-e2e-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let pki = make_pki("e2e.test");
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let routes = dir.0.join("routes");
    std::fs::create_dir_all(&routes).unwrap();
    manifests(&routes, up.addr, &pki);
    let (mut child, http, https) = run_sluice(&routes);
    let port = https.port();

    // curl verifies the chain against the CA and the name against SNI/Host.
    for host in ["e2e.test", "api.wild.e2e"] {
        let out = output(Command::new("curl").args([
            "-sS",
            "-i",
            "--resolve",
            &format!("{host}:{port}:127.0.0.1"),
            "--cacert",
            ca.to_str().unwrap(),
            "-w",
            "\nversion=%{http_version} verify=%{ssl_verify_result}\n",
            &format!("https://{host}:{port}/hello"),
        ]));
        assert!(out.starts_with("HTTP/1.1 200"), "{host}: {out}");
        assert!(out.contains("A GET /hello body=0"), "{out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("strict-transport-security: max-age=31536000; includesubdomains"),
            "{out}"
        );
        assert!(out.contains("X-Seen-X-Forwarded-Proto: https"), "{out}");
        assert!(out.contains("version=1.1 verify=0"), "{out}");
    }
    // HTTP/2 is not offered yet: curl asking for it gets HTTP/1.1.
    let out = output(Command::new("curl").args([
        "-sS",
        "--http2",
        "-o",
        "/dev/null",
        "--resolve",
        &format!("e2e.test:{port}:127.0.0.1"),
        "--cacert",
        ca.to_str().unwrap(),
        "-w",
        "%{http_version}",
        &format!("https://e2e.test:{port}/"),
    ]));
    assert_eq!(out.trim(), "1.1");
    // Plain HTTP to a TLS host: 308 to https.
    let out = output(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "--resolve",
        &format!("e2e.test:{}:127.0.0.1", http.port()),
        "-w",
        "%{http_code} %{redirect_url}",
        &format!("http://e2e.test:{}/p?q=1", http.port()),
    ]));
    assert_eq!(out.trim(), format!("308 https://e2e.test:{port}/p?q=1"));
    // ... and curl following it ends at the upstream over TLS.
    let out = output(Command::new("curl").args([
        "-sS",
        "-L",
        "--resolve",
        &format!("e2e.test:{}:127.0.0.1", http.port()),
        "--resolve",
        &format!("e2e.test:{port}:127.0.0.1"),
        "--cacert",
        ca.to_str().unwrap(),
        &format!("http://e2e.test:{}/followed", http.port()),
    ]));
    assert!(out.starts_with("A GET /followed"), "{out}");

    // openssl s_client: SNI picks the Secret's certificate, TLS 1.3 and 1.2 both verify.
    let connect = format!("127.0.0.1:{port}");
    for version in ["-tls1_3", "-tls1_2"] {
        let out = output(Command::new("openssl").args([
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "e2e.test",
            "-CAfile",
            ca.to_str().unwrap(),
            "-verify_return_error",
            "-verify_hostname",
            "e2e.test",
            version,
            "-alpn",
            "h2,http/1.1",
        ]));
        assert!(
            out.contains("Verify return code: 0 (ok)"),
            "{version}: {out}"
        );
        assert!(
            out.contains("CN=e2e.test") || out.contains("CN = e2e.test"),
            "{out}"
        );
        assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
        let proto = if version == "-tls1_3" {
            "TLSv1.3"
        } else {
            "TLSv1.2"
        };
        assert!(out.contains(proto), "{out}");
    }
    // Unknown SNI: the self-signed default certificate, which the test CA does not verify.
    let out = output(Command::new("openssl").args([
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "unknown.test",
    ]));
    assert!(out.contains("CN = Sluice self-signed certificate"), "{out}");
    assert!(
        !out.contains("CN=e2e.test") && !out.contains("CN = e2e.test"),
        "{out}"
    );
    // TLS 1.2 session resumption as openssl sees it.
    let sess = dir.0.join("session.pem");
    let sess = sess.to_str().unwrap();
    let base = [
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "e2e.test",
        "-tls1_2",
    ];
    let out = output(Command::new("openssl").args(base).args(["-sess_out", sess]));
    assert!(out.contains("New, TLSv1.2"), "{out}");
    let out = output(Command::new("openssl").args(base).args(["-sess_in", sess]));
    assert!(out.contains("Reused, TLSv1.2"), "{out}");

    // Rotation through the manifests directory: the Secret file is replaced (atomic rename);
    // the next handshake presents the new certificate, with no reload.
    let rotated = make_pki("rotated.e2e.test");
    let staging = dir.0.join("web.yaml");
    manifests(&dir.0, up.addr, &rotated);
    std::fs::rename(&staging, routes.join("web.yaml")).unwrap();
    let mut seen = String::new();
    for _ in 0..100 {
        seen = output(Command::new("openssl").args([
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "e2e.test",
        ]));
        if seen.contains("rotated.e2e.test") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        seen.contains("rotated.e2e.test"),
        "the new certificate is served: {seen}"
    );

    // Graceful stop: SIGTERM through kill(1), then wait for a clean exit.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
