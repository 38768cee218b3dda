//! `X-Request-ID` end to end through `sluice run`: a client's id reaches the upstream as it
//! was sent; without one, Sluice makes a 32-hex-digit id, a different one per request; a
//! client cannot smuggle a second one next to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An upstream that answers each request with the `X-Request-ID` lines it received.
fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut ids = Vec::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if line.to_ascii_lowercase().starts_with("x-request-id:") {
                            ids.push(line.trim_end().to_string());
                        }
                    }
                    let body = ids.join("\n");
                    let _ = write!(
                        w,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            });
        }
    });
    addr
}

fn manifests(upstream: SocketAddr) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: app.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        upstream.port()
    )
}

/// The upstream's body: the X-Request-ID lines it saw.
fn seen_ids(addr: SocketAddr, extra: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
fn request_ids_pass_through_or_are_generated_and_reach_the_upstream() {
    let up = echo_upstream();
    let dir = std::env::temp_dir().join(format!("sluice-reqid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.yaml"), manifests(up)).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--workers", "1", "--manifests"])
        .arg(&dir)
        .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let _running = Running(child);
    let http: SocketAddr = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some((_, rest)) = line.split_once("serving http on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    // Passed through as sent.
    assert_eq!(
        seen_ids(http, "X-Request-ID: client-id-42\r\n"),
        "X-Request-ID: client-id-42"
    );
    // Generated: 32 lowercase hex digits, one field, new for every request.
    let a = seen_ids(http, "");
    let b = seen_ids(http, "");
    for id in [&a, &b] {
        let v = id
            .strip_prefix("X-Request-ID: ")
            .unwrap_or_else(|| panic!("{id}"));
        assert_eq!(v.len(), 32, "{id}");
        assert!(
            v.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
    }
    assert_ne!(a, b);
    // Two ids from the client: neither is trusted, one generated id replaces both.
    let c = seen_ids(http, "X-Request-ID: one\r\nX-Request-ID: two\r\n");
    assert_eq!(c.lines().count(), 1, "{c}");
    assert!(!c.contains("one") && !c.contains("two"), "{c}");
    let _ = std::fs::remove_dir_all(&dir);
}
