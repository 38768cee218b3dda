//! Mirroring (`mirror-target`, `mirror-request-body`, `mirror-host`) through real sockets: a
//! `sluice run` process, an in-process upstream, and an in-process shadow service that
//! records the copies it gets. ingress-nginx's test/e2e/annotations/mirror.go only checks its
//! generated nginx.conf (`mirror`, `mirror_request_body on|off`); these tests check what
//! that configuration does: a copy with (or without) the body, the real request unaffected.

// Wall-clock instants only bound waits; the one upper bound (5 s) is far below what a copy
// that delayed the real request would cost (the shadow hangs for 60 s).
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::{self, Sluice};

mod support;

/// Reads one request (head, then a `Content-Length` body) from `stream`.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some(format!("{head}{}", String::from_utf8_lossy(&body)))
}

/// A server answering 200 with `tag`; every request it got is recorded. With `hang`, it
/// accepts and never reads nor answers.
fn server(tag: &'static str, hang: bool) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                if hang {
                    std::thread::sleep(Duration::from_secs(60));
                    return;
                }
                while let Some(req) = read_request(&mut stream) {
                    seen.lock().unwrap().push(req);
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{tag}",
                        tag.len()
                    );
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

fn ingress(name: &str, host: &str, annotations: &[(&str, String)]) -> String {
    let annotations: Vec<String> = annotations
        .iter()
        .map(|(k, v)| {
            format!(
                "    nginx.ingress.kubernetes.io/{k}: {}\n",
                serde_json::to_string(v).unwrap()
            )
        })
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n{}\
         spec:\n  ingressClassName: sluice\n  rules:\n    - host: {host}\n      http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend: {{service: {{name: app, port: {{number: 80}}}}}}\n---\n",
        annotations.concat()
    )
}

fn sluice(name: &str, ingresses: &[String], upstream: u16) -> Sluice {
    let yaml = format!(
        "{}apiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {upstream}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        ingresses.concat()
    );
    binary::start(&format!("mirror-{name}"), &[("app.yaml", &yaml)], "", 1)
}

/// `request` on a fresh connection; the whole answer.
fn exchange(s: &Sluice, request: &str) -> String {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// Waits (up to 5 s) until `seen` has `n` entries.
fn wait_for(seen: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < n && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    seen.lock().unwrap().clone()
}

// mirror.go "should set mirror-target to https://test.env.com/$request_uri" (here over
// http: there is no upstream TLS client yet) with `mirror_request_body on` (the default):
// the copy has the original method, target and body, and the `mirror-host` as `Host`.
#[test]
fn copies_carry_the_request_and_its_body() {
    let (upstream, real) = server("real", false);
    let (shadow, copies) = server("shadow", false);
    let s = sluice(
        "body",
        &[ingress(
            "m",
            "mirror.foo.com",
            &[
                (
                    "mirror-target",
                    format!("http://127.0.0.1:{shadow}/$request_uri"),
                ),
                ("mirror-host", "shadow.example".into()),
            ],
        )],
        upstream,
    );
    let out = exchange(
        &s,
        "POST /p?q=1 HTTP/1.1\r\nHost: mirror.foo.com\r\nX-A: 1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("real"),
        "{out}"
    );
    assert_eq!(real.lock().unwrap().len(), 1);
    let copies = wait_for(&copies, 1);
    assert_eq!(copies.len(), 1, "one copy");
    let copy = &copies[0];
    assert!(
        copy.starts_with("POST /p?q=1 HTTP/1.1\r\nHost: shadow.example\r\n"),
        "{copy}"
    );
    assert!(copy.contains("X-A: 1\r\n") && copy.contains("X-Original-URI: /p?q=1\r\n"));
    assert!(
        copy.contains("Content-Length: 5\r\n") && copy.ends_with("\r\n\r\nhello"),
        "{copy}"
    );
}

// mirror.go "should disable mirror-request-body": the copy goes without the body.
#[test]
fn mirror_request_body_off_sends_the_head_only() {
    let (upstream, _) = server("real", false);
    let (shadow, copies) = server("shadow", false);
    let s = sluice(
        "nobody",
        &[ingress(
            "m",
            "mirror.foo.com",
            &[
                ("mirror-target", format!("http://127.0.0.1:{shadow}/mirror")),
                ("mirror-request-body", "off".into()),
            ],
        )],
        upstream,
    );
    let out = exchange(
        &s,
        "POST /p HTTP/1.1\r\nHost: mirror.foo.com\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert!(out.ends_with("real"), "{out}");
    let copies = wait_for(&copies, 1);
    let copy = &copies[0];
    assert!(copy.starts_with("POST /mirror HTTP/1.1\r\n"), "{copy}");
    assert!(
        copy.contains(&format!("Host: 127.0.0.1:{shadow}\r\n")),
        "{copy}"
    );
    assert!(
        !copy.contains("Content-Length") && !copy.contains("hello"),
        "{copy}"
    );
}

// The issue: a copy never delays or fails the real request: a shadow that never answers,
// or one that refuses connections, leaves the real requests as they were.
#[test]
fn a_dead_or_hanging_mirror_never_delays_the_real_request() {
    let (upstream, real) = server("real", false);
    let (hanging, _) = server("shadow", true);
    let closed = support::closed_port([127, 0, 0, 1].into()).port();
    let s = sluice(
        "hang",
        &[
            ingress(
                "hang",
                "hang",
                &[(
                    "mirror-target",
                    format!("http://127.0.0.1:{hanging}$request_uri"),
                )],
            ),
            ingress(
                "dead",
                "dead",
                &[(
                    "mirror-target",
                    format!("http://127.0.0.1:{closed}$request_uri"),
                )],
            ),
        ],
        upstream,
    );
    for host in ["hang", "dead", "hang", "dead", "hang"] {
        let t = Instant::now();
        let out = exchange(
            &s,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("real"),
            "{out}"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    assert_eq!(real.lock().unwrap().len(), 5);
}

// nginx mirrors in the precontent phase, after access checks: with `auth-url` on the route,
// a request the auth service refuses is not copied; one it allows is.
#[test]
fn only_requests_the_auth_service_allows_are_copied() {
    let (upstream, _) = server("real", false);
    let (shadow, copies) = server("shadow", false);
    // An auth service allowing requests with `X-Allow: yes`.
    let auth = TcpListener::bind("127.0.0.1:0").unwrap();
    let auth_port = auth.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in auth.incoming().flatten() {
            let mut stream = stream;
            let Some(head) = read_request(&mut stream) else {
                continue;
            };
            let status = if head.contains("X-Allow: yes\r\n") {
                "200 OK"
            } else {
                "401 Unauthorized"
            };
            let _ = stream
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes());
        }
    });
    let s = sluice(
        "auth",
        &[ingress(
            "m",
            "mirror.foo.com",
            &[
                (
                    "mirror-target",
                    format!("http://127.0.0.1:{shadow}$request_uri"),
                ),
                ("auth-url", format!("http://127.0.0.1:{auth_port}/check")),
            ],
        )],
        upstream,
    );
    let denied = exchange(
        &s,
        "GET /denied HTTP/1.1\r\nHost: mirror.foo.com\r\nConnection: close\r\n\r\n",
    );
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let allowed = exchange(
        &s,
        "GET /allowed HTTP/1.1\r\nHost: mirror.foo.com\r\nX-Allow: yes\r\nConnection: close\r\n\r\n",
    );
    assert!(allowed.ends_with("real"), "{allowed}");
    let seen = wait_for(&copies, 1);
    std::thread::sleep(Duration::from_millis(200));
    let seen_now = copies.lock().unwrap().clone();
    assert_eq!(seen_now.len(), 1, "{seen:?}");
    assert!(
        seen_now[0].starts_with("GET /allowed HTTP/1.1\r\n"),
        "{seen_now:?}"
    );
}
