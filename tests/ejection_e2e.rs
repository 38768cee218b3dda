//! Outlier ejection (passive health, per worker) through real sockets: in-process pods behind
//! `sluice run`. A pod that refuses connections stops costing client errors after the first
//! failures; when all refuse, clients get 502 (the panic threshold keeps them in rotation);
//! an ejected pod comes back by itself. Plus the `[outlier]` config keys.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sluice::config::Config;
use support::binary::{self, Sluice};

mod support;

/// Pods on 127.0.0.1..=n, one port. Pod `i` refuses connections when `refuse[i]`; otherwise
/// it answers `pod-<i+1>` while `healthy[i]`, and closes without answering when not.
struct Pods {
    port: u16,
    n: usize,
    healthy: Vec<Arc<AtomicBool>>,
    hits: Vec<Arc<AtomicUsize>>,
}

impl Pods {
    fn start(refuse: &[bool]) -> Pods {
        let n = refuse.len();
        let (port, listeners) = support::pods::bind(n);
        let healthy: Vec<_> = (0..n).map(|_| Arc::new(AtomicBool::new(true))).collect();
        let hits: Vec<_> = (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect();
        for (i, listener) in listeners.into_iter().enumerate() {
            if refuse[i] {
                drop(listener);
                continue;
            }
            let (healthy, hits) = (healthy[i].clone(), hits[i].clone());
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (healthy, hits) = (healthy.clone(), hits.clone());
                    std::thread::spawn(move || serve(i, stream, &healthy, &hits));
                }
            });
        }
        Pods {
            port,
            n,
            healthy,
            hits,
        }
    }

    fn manifests(&self, annotations: &str) -> String {
        let ingress = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\n\
             metadata: {{name: app, namespace: default, annotations: {{{annotations}}}}}\n\
             spec:\n  ingressClassName: sluice\n  rules:\n  - host: app.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n"
        );
        support::pods::manifests(&ingress, self.port, 1..=self.n)
    }
}

fn serve(i: usize, mut stream: TcpStream, healthy: &AtomicBool, hits: &AtomicUsize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.clear();
        hits.fetch_add(1, Ordering::SeqCst);
        if !healthy.load(Ordering::SeqCst) {
            return;
        }
        let body = format!("pod-{}", i + 1);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Retries off: every failure reaches the client, so what ejection spares it shows.
const NO_RETRIES: &str = "nginx.ingress.kubernetes.io/proxy-next-upstream: \"off\"";

fn sluice(name: &str, yaml: &str, config: &str) -> Sluice {
    binary::start(&format!("eject-{name}"), &[("app.yaml", yaml)], config, 1)
}

/// The status of one GET on a fresh connection (0: closed without a status line).
fn get(s: &Sluice, path: &str) -> u16 {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    out.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Errors (non-200) among `n` requests.
fn errors(s: &Sluice, n: usize) -> usize {
    (0..n).filter(|i| get(s, &format!("/{i}")) != 200).count()
}

#[test]
fn a_refusing_endpoint_stops_costing_errors_after_the_first_failures() {
    let pods = Pods::start(&[false, true, false]);
    let yaml = pods.manifests(NO_RETRIES);
    let s = sluice("one-refuses", &yaml, "");
    // Default: 5 failures in a row eject it (round robin: within the first 15 requests).
    let first = errors(&s, 15);
    assert!((1..=5).contains(&first), "{first}");
    assert_eq!(errors(&s, 30), 0);
    // The same without ejection: every third request keeps failing.
    let off = sluice("one-refuses-off", &yaml, "[outlier]\nenabled = false\n");
    errors(&off, 15);
    assert!(errors(&off, 30) >= 9);
}

#[test]
fn when_all_refuse_clients_get_502_not_an_empty_rotation() {
    let pods = Pods::start(&[true, true, true]);
    let s = sluice(
        "all-refuse",
        &pods.manifests(""),
        "[outlier]\nconsecutive_failures = 1\n",
    );
    for i in 0..20 {
        assert_eq!(get(&s, &format!("/{i}")), 502, "request {i}");
    }
}

#[test]
fn an_ejected_endpoint_comes_back_by_itself() {
    let pods = Pods::start(&[false, false, false]);
    pods.healthy[1].store(false, Ordering::SeqCst);
    let config = "[outlier]\nconsecutive_failures = 2\nbase_ejection = \"1s\"\n";
    let s = sluice("recovers", &pods.manifests(NO_RETRIES), config);
    let first = errors(&s, 9);
    assert!((1..=2).contains(&first), "{first}");
    let seen = pods.hits[1].load(Ordering::SeqCst);
    assert_eq!(errors(&s, 12), 0);
    // Left out: not even tried.
    assert_eq!(pods.hits[1].load(Ordering::SeqCst), seen);
    pods.healthy[1].store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(errors(&s, 12), 0);
    assert!(pods.hits[1].load(Ordering::SeqCst) >= seen + 3);
}

#[test]
fn outlier_config_keys_are_checked() {
    let c = Config::parse(
        "[outlier]\nconsecutive_failures = 3\nbase_ejection = \"2s\"\nmax_ejection = \"1m\"\nmax_ejected_percent = 30\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.outlier.consecutive_failures, 3);
    assert_eq!(c.outlier.base_ejection, Duration::from_secs(2));
    assert_eq!(c.outlier.max_ejection, Duration::from_secs(60));
    assert_eq!(c.outlier.max_ejected_percent, 30);
    assert!(c.outlier.enabled);
    for (bad, field) in [
        ("consecutive_failures = 0", "outlier.consecutive_failures"),
        ("max_ejected_percent = 101", "outlier.max_ejected_percent"),
        ("base_ejection = \"soon\"", "outlier.base_ejection"),
        ("base_ejection = \"10m\"", "outlier.max_ejection"),
        ("ejection = true", ""),
    ] {
        let err = Config::parse(&format!("[outlier]\n{bad}\n"), "t.toml").unwrap_err();
        assert_eq!(err.field, field, "{bad}: {err}");
    }
}
