//! Balancing through real sockets: several in-process upstream pods behind `sluice run`.
//! `upstream-hash-by` sends a key to the same pod from every worker and from a second Sluice
//! process; `least_request` steers around a pod that is busy with a request.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::binary::{self, Sluice};

mod support;

/// Pods on 127.0.0.1..=n, one port: each answers `pod-<i>` to every request except
/// `/hang…` (never answered), and records the paths it got.
struct Pods {
    port: u16,
    n: usize,
    seen: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Pods {
    fn start(n: usize) -> Pods {
        let (port, listeners) = support::pods::bind(n);
        let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        for (i, listener) in listeners.into_iter().enumerate() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let seen = seen.clone();
                    std::thread::spawn(move || serve(i + 1, stream, seen));
                }
            });
        }
        Pods { port, n, seen }
    }

    fn manifests(&self, ingresses: &str) -> String {
        support::pods::manifests(ingresses, self.port, 1..=self.n)
    }

    /// Which pod received a request for `path`.
    fn who_got(&self, path: &str) -> Option<usize> {
        for _ in 0..500 {
            if let Some((pod, _)) = self.seen.lock().unwrap().iter().find(|(_, p)| p == path) {
                return Some(*pod);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

fn serve(pod: usize, mut stream: TcpStream, seen: Arc<Mutex<Vec<(usize, String)>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push((pod, path.clone()));
            if path.starts_with("/hang") {
                continue;
            }
            let body = format!("pod-{pod}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
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

fn sluice(name: &str, manifests_yaml: &str, workers: u32) -> Sluice {
    binary::start(
        &format!("bal-{name}"),
        &[("app.yaml", manifests_yaml)],
        "",
        workers,
    )
}

/// One request on a fresh connection (so that it may land on any worker); the body.
fn get(s: &Sluice, host: &str, path: &str, extra: &str) -> String {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

#[test]
fn a_hash_key_picks_the_same_pod_on_every_worker_and_every_replica() {
    let pods = Pods::start(3);
    // Balancing belongs to the backend: the rotating route has a Service of its own (`rr`,
    // the same pods).
    let yaml = pods.manifests(&format!(
        "{}---\n{}---\n{}",
        ingress(
            "hash",
            "hash.test",
            "nginx.ingress.kubernetes.io/upstream-hash-by: \"$http_x_user\""
        ),
        ingress("rr", "rr.test", "").replace("name: app,", "name: rr,"),
        support::pods::manifests("", pods.port, 1..=pods.n).replace("app", "rr")
    ));
    let a = sluice("hash-a", &yaml, 2);
    let b = sluice("hash-b", &yaml, 2);
    let mut used = std::collections::BTreeSet::new();
    for user in 0..24 {
        let header = format!("X-User: user-{user}\r\n");
        let first = get(&a, "hash.test", "/", &header);
        for s in [&a, &b, &a, &b] {
            assert_eq!(get(s, "hash.test", "/x", &header), first, "user {user}");
        }
        used.insert(first);
    }
    // Keys spread over the pods (24 keys over 3 pods all on one: a broken hash).
    assert!(used.len() >= 2, "{used:?}");
    // The route without the annotation still rotates.
    let rotated: std::collections::BTreeSet<String> =
        (0..6).map(|_| get(&a, "rr.test", "/", "")).collect();
    assert!(rotated.len() >= 2, "{rotated:?}");
}

#[test]
fn least_request_keeps_new_requests_off_a_busy_pod() {
    let pods = Pods::start(3);
    let yaml = pods.manifests(&ingress(
        "lr",
        "lr.test",
        "nginx.ingress.kubernetes.io/load-balance: least_request",
    ));
    let s = sluice("least-request", &yaml, 1);
    // A request that the pod never answers keeps one request in flight there.
    let mut hanging = TcpStream::connect(s.addr).unwrap();
    hanging
        .write_all(b"GET /hang HTTP/1.1\r\nHost: lr.test\r\n\r\n")
        .unwrap();
    let busy = pods
        .who_got("/hang")
        .expect("the hanging request reached a pod");
    // Each P2C draw of two distinct pods has an idle one: the busy pod never wins.
    for i in 0..24 {
        let body = get(&s, "lr.test", &format!("/n{i}"), "");
        assert_ne!(body, format!("pod-{busy}"), "request {i}");
    }
    drop(hanging);
}

#[test]
fn upstream_vhost_replaces_the_host_sent_upstream() {
    // One pod that answers with the Host and X-Forwarded-Host it received.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let field = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .unwrap_or("-")
                        .trim()
                        .to_string()
                };
                let body = format!("{}|{}", field("Host:"), field("X-Forwarded-Host:"));
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    let yaml = format!(
        "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        ingress(
            "vhost",
            "vhost.test",
            "nginx.ingress.kubernetes.io/upstream-vhost: upstreamvhost.bar.com"
        ),
        ingress(
            "bad",
            "bad.test",
            "nginx.ingress.kubernetes.io/upstream-vhost: \"$host\""
        ),
    );
    let s = sluice("vhost", &yaml, 1);
    assert_eq!(
        get(&s, "vhost.test", "/", ""),
        "upstreamvhost.bar.com|vhost.test"
    );
    // A value Sluice cannot honour is reported and the client's Host is sent.
    assert_eq!(get(&s, "bad.test", "/", ""), "bad.test|bad.test");
}

#[test]
fn a_hash_subset_keeps_a_key_within_one_group_of_pods_on_every_replica() {
    let pods = Pods::start(6);
    let yaml = pods.manifests(&ingress(
        "subset",
        "subset.test",
        "nginx.ingress.kubernetes.io/upstream-hash-by: \"$http_x_user\", \
         nginx.ingress.kubernetes.io/upstream-hash-by-subset: \"true\", \
         nginx.ingress.kubernetes.io/upstream-hash-by-subset-size: \"3\"",
    ));
    let a = sluice("subset-a", &yaml, 2);
    let b = sluice("subset-b", &yaml, 1);
    let mut spread = false;
    let mut groups = std::collections::BTreeSet::new();
    for user in 0..8 {
        let header = format!("X-User: user-{user}\r\n");
        let seen: std::collections::BTreeSet<usize> = (0..12)
            .map(|i| {
                let s = if i % 2 == 0 { &a } else { &b };
                let body = get(s, "subset.test", "/", &header);
                body.strip_prefix("pod-").unwrap().parse().unwrap()
            })
            .collect();
        // The endpoints sorted (127.0.0.1..6) in groups of three: {1,2,3} and {4,5,6}.
        let low = seen.iter().all(|p| *p <= 3);
        let high = seen.iter().all(|p| *p >= 4);
        assert!(low || high, "user {user}: {seen:?}");
        groups.insert(low);
        spread |= seen.len() >= 2;
    }
    // Within its group a key is spread; keys use both groups.
    assert!(spread);
    assert_eq!(groups.len(), 2, "8 keys all in one group");
}
