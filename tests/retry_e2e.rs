//! Retries (`proxy-next-upstream`, `-tries`, `-timeout`) through real sockets: several
//! in-process upstream pods behind `sluice run`, each with one way of failing. A refused or
//! broken pod is invisible to GETs; a POST whose body reached a pod is never sent twice; a
//! response that started is never retried; tries and the time limit bound the attempts.
// The time-limit test measures the wall clock of a real process.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::{self, Sluice};

mod support;

/// How one pod behaves.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Pod {
    /// Answers `pod-<i>`.
    Ok,
    /// Nothing listens: connections are refused.
    Refuse,
    /// Reads the whole request (head and body), then closes without answering.
    Close,
    /// Reads the request and never answers.
    Hang,
    /// Answers with this status.
    Status(u16),
    /// Sends a 200 head promising 100 bytes, sends 5, and closes.
    Partial,
}

/// Pods on 127.0.0.1..=n, one port; `hits[i]` lists the `METHOD path` of each request pod
/// `i + 1` received.
struct Pods {
    port: u16,
    n: usize,
    hits: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Pods {
    fn start(kinds: &[Pod]) -> Pods {
        let n = kinds.len();
        let (port, listeners) = support::pods::bind(n);
        let hits: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(vec![Vec::new(); n]));
        for (i, listener) in listeners.into_iter().enumerate() {
            let kind = kinds[i];
            if kind == Pod::Refuse {
                // Closed: the address now refuses connections.
                drop(listener);
                continue;
            }
            let hits = hits.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let hits = hits.clone();
                    std::thread::spawn(move || serve(i, kind, stream, hits));
                }
            });
        }
        Pods { port, n, hits }
    }

    fn manifests(&self, ingresses: &str) -> String {
        support::pods::manifests(ingresses, self.port, 1..=self.n)
    }

    /// Requests received by each pod so far.
    fn counts(&self) -> Vec<usize> {
        self.hits.lock().unwrap().iter().map(Vec::len).collect()
    }

    fn total(&self) -> usize {
        self.counts().iter().sum()
    }
}

fn serve(i: usize, kind: Pod, mut stream: TcpStream, hits: Arc<Mutex<Vec<Vec<String>>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + length);
        let mut words = head.split(' ');
        let line = format!(
            "{} {}",
            words.next().unwrap_or(""),
            words.next().unwrap_or("")
        );
        hits.lock().unwrap()[i].push(line);
        let answer = match kind {
            Pod::Ok | Pod::Refuse => {
                let body = format!("pod-{}", i + 1);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            Pod::Status(status) => {
                format!("HTTP/1.1 {status} Oops\r\nContent-Length: 4\r\n\r\noops")
            }
            Pod::Partial => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello");
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
            Pod::Close => return,
            Pod::Hang => {
                // Keep the connection open until the proxy gives up on it.
                let _ = stream.read(&mut chunk);
                return;
            }
        };
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn ingress(name: &str, host: &str, annotations: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n"
    )
}

fn sluice(name: &str, yaml: &str, workers: u32) -> Sluice {
    binary::start(&format!("retry-{name}"), &[("app.yaml", yaml)], "", workers)
}

/// One request on a fresh connection: the status (0 when the connection closed without a
/// status line) and everything received.
fn request(s: &Sluice, method: &str, host: &str, path: &str, body: &str) -> (u16, String) {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let length = if method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    c.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}Connection: close\r\n\r\n{body}"
        )
        .as_bytes(),
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).to_string();
    let status = out
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn a_refused_endpoint_among_three_is_invisible_to_clients() {
    let pods = Pods::start(&[Pod::Ok, Pod::Refuse, Pod::Ok]);
    let s = sluice("refused", &pods.manifests(&ingress("r", "r.test", "")), 2);
    for i in 0..30 {
        let (status, out) = request(&s, "GET", "r.test", &format!("/g{i}"), "");
        assert_eq!(status, 200, "request {i}: {out}");
    }
    // POSTs too: a refused connection means nothing was sent, so a POST may go elsewhere.
    for i in 0..9 {
        let (status, out) = request(&s, "POST", "r.test", &format!("/p{i}"), "form=1");
        assert_eq!(status, 200, "post {i}: {out}");
    }
    assert_eq!(pods.total(), 39, "{:?}", pods.counts());
}

#[test]
fn a_get_is_retried_elsewhere_but_a_post_whose_body_was_sent_is_not() {
    let pods = Pods::start(&[Pod::Close, Pod::Ok, Pod::Ok]);
    let s = sluice("post", &pods.manifests(&ingress("p", "p.test", "")), 1);
    // One worker, round robin over three: every third request lands on the closing pod.
    let mut failed = 0;
    for i in 0..6 {
        let (status, out) = request(&s, "POST", "p.test", &format!("/p{i}"), "order=1");
        match status {
            200 => {}
            502 => failed += 1,
            other => panic!("post {i}: {other}: {out}"),
        }
    }
    assert_eq!(failed, 2, "{:?}", pods.counts());
    // Each POST reached exactly one pod: none was sent twice.
    assert_eq!(pods.total(), 6, "{:?}", pods.hits.lock().unwrap());
    assert_eq!(pods.counts()[0], 2);
    for i in 0..6 {
        let (status, out) = request(&s, "GET", "p.test", &format!("/g{i}"), "");
        assert_eq!(status, 200, "get {i}: {out}");
    }
    // The GETs that hit the closing pod were sent once more, each to one other pod.
    assert_retried_once_elsewhere(&pods, "GET");
}

/// Every `method` request pod 1 (the failing one) got reached exactly one other pod, and the
/// others exactly one pod.
fn assert_retried_once_elsewhere(pods: &Pods, method: &str) {
    let hits = pods.hits.lock().unwrap();
    let failed: Vec<&String> = hits[0].iter().filter(|l| l.starts_with(method)).collect();
    assert!(!failed.is_empty(), "{hits:?}");
    let others: Vec<&String> = hits[1..]
        .iter()
        .flatten()
        .filter(|l| l.starts_with(method))
        .collect();
    assert_eq!(others.len(), 6, "{hits:?}");
    for line in failed {
        assert_eq!(others.iter().filter(|l| **l == line).count(), 1, "{hits:?}");
    }
}

#[test]
fn non_idempotent_lets_a_post_be_retried() {
    let pods = Pods::start(&[Pod::Close, Pod::Ok, Pod::Ok]);
    let yaml = pods.manifests(&ingress(
        "n",
        "n.test",
        "nginx.ingress.kubernetes.io/proxy-next-upstream: \"error timeout non_idempotent\"",
    ));
    let s = sluice("non-idempotent", &yaml, 1);
    for i in 0..6 {
        let (status, out) = request(&s, "POST", "n.test", &format!("/p{i}"), "order=1");
        assert_eq!(status, 200, "post {i}: {out}");
    }
    // The body was replayed: another pod got it whole (it reads Content-Length bytes).
    assert_retried_once_elsewhere(&pods, "POST");
    // A body larger than what is kept for a replay (buffer_size, 32 KiB by default) streamed
    // past it: such a request is not retried, even where it could be.
    let big = "x".repeat(64 * 1024);
    let before = pods.counts();
    let mut failed = 0;
    for i in 0..6 {
        match request(&s, "POST", "n.test", &format!("/big{i}"), &big).0 {
            200 => {}
            502 => failed += 1,
            other => panic!("big post {i}: {other}"),
        }
    }
    let after = pods.counts();
    assert!(failed > 0, "{after:?}");
    assert_eq!(after[0] - before[0], failed, "{after:?}");
    assert_eq!(pods.total() - before.iter().sum::<usize>(), 6, "{after:?}");
}

#[test]
fn a_response_that_started_is_never_retried() {
    let pods = Pods::start(&[Pod::Partial, Pod::Ok, Pod::Ok]);
    let yaml = pods.manifests(&ingress(
        "s",
        "s.test",
        "nginx.ingress.kubernetes.io/proxy-next-upstream: \"error timeout invalid_header http_500 http_502\"",
    ));
    let s = sluice("started", &yaml, 1);
    let mut cut = 0;
    for i in 0..6 {
        let (status, out) = request(&s, "GET", "s.test", &format!("/g{i}"), "");
        assert_eq!(status, 200, "get {i}: {out}");
        if out.ends_with("hello") {
            // The client got the head and five bytes, then the connection was cut.
            cut += 1;
        } else {
            assert!(out.ends_with("pod-2") || out.ends_with("pod-3"), "{out}");
        }
    }
    assert_eq!(cut, 2);
    assert_eq!(pods.total(), 6, "{:?}", pods.hits.lock().unwrap());
}

#[test]
fn a_listed_status_is_retried_and_an_unlisted_one_is_passed_on() {
    let pods = Pods::start(&[Pod::Status(502), Pod::Ok, Pod::Ok]);
    let yaml = pods.manifests(&format!(
        "{}---\n{}",
        ingress(
            "listed",
            "listed.test",
            "nginx.ingress.kubernetes.io/proxy-next-upstream: \"error timeout http_502\""
        ),
        ingress("plain", "plain.test", "")
    ));
    let s = sluice("status", &yaml, 1);
    for i in 0..6 {
        let (status, out) = request(&s, "GET", "listed.test", &format!("/l{i}"), "");
        assert_eq!(status, 200, "get {i}: {out}");
    }
    let passed_on = (0..6)
        .filter(|i| request(&s, "GET", "plain.test", &format!("/p{i}"), "").0 == 502)
        .count();
    assert_eq!(passed_on, 2);
}

#[test]
fn tries_bound_the_attempts() {
    let pods = Pods::start(&[Pod::Close, Pod::Close, Pod::Close]);
    let yaml = pods.manifests(&format!(
        "{}---\n{}---\n{}",
        ingress(
            "two",
            "two.test",
            "nginx.ingress.kubernetes.io/proxy-next-upstream-tries: \"2\""
        ),
        ingress("default", "default.test", ""),
        ingress(
            "off",
            "off.test",
            "nginx.ingress.kubernetes.io/proxy-next-upstream: \"off\""
        )
    ));
    let s = sluice("tries", &yaml, 1);
    let (status, _) = request(&s, "GET", "two.test", "/", "");
    assert_eq!(status, 502);
    assert_eq!(pods.total(), 2, "{:?}", pods.hits.lock().unwrap());
    // The default is 3 tries, each to a different pod.
    let (status, _) = request(&s, "GET", "default.test", "/", "");
    assert_eq!(status, 502);
    assert_eq!(pods.total(), 5, "{:?}", pods.hits.lock().unwrap());
    let (status, _) = request(&s, "GET", "off.test", "/", "");
    assert_eq!(status, 502);
    assert_eq!(pods.total(), 6, "{:?}", pods.hits.lock().unwrap());
}

#[test]
fn the_time_limit_bounds_the_attempts() {
    let pods = Pods::start(&[Pod::Hang, Pod::Hang, Pod::Hang]);
    let yaml = pods.manifests(&format!(
        "{}---\n{}",
        ingress(
            "limited",
            "limited.test",
            "nginx.ingress.kubernetes.io/proxy-read-timeout: \"1\", \
             nginx.ingress.kubernetes.io/proxy-next-upstream-timeout: \"1500ms\""
        ),
        ingress(
            "unlimited",
            "unlimited.test",
            "nginx.ingress.kubernetes.io/proxy-read-timeout: \"1\""
        )
    ));
    let s = sluice("timeout", &yaml, 1);
    // Attempt 1 times out at 1 s (a retry may still start), attempt 2 at 2 s (too late).
    let start = Instant::now();
    let (status, _) = request(&s, "GET", "limited.test", "/", "");
    assert_eq!(status, 504);
    assert!(start.elapsed() < Duration::from_millis(2900));
    assert_eq!(pods.total(), 2, "{:?}", pods.hits.lock().unwrap());
    let (status, _) = request(&s, "GET", "unlimited.test", "/", "");
    assert_eq!(status, 504);
    assert_eq!(pods.total(), 5, "{:?}", pods.hits.lock().unwrap());
}
