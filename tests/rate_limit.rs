//! Rate and connection limits (`limit-rps`, `limit-rpm`, `limit-connections`,
//! `limit-burst-multiplier`, `limit-whitelist`) through real sockets: a `sluice run` process
//! over a manifests directory, an in-process upstream. Expectations from ingress-nginx's
//! test/e2e/annotations/limit*.go and its docs: requests beyond the burst get 503 (or the
//! `limit-req-status-code`), a whitelisted address is never limited, and the limit is per
//! node (nginx's zones are shared memory across worker processes).
//!
//! No wall-clock assertions: rates are per minute with burst sizes such that a whole test
//! runs far faster than one more request's refill, and the bounds still allow one refill.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::binary::{self, Sluice};

mod support;

/// Upstream state: requests for `/hold…` wait until `release` is set.
#[derive(Default)]
struct Upstream {
    held: AtomicUsize,
    release: AtomicBool,
}

fn upstream() -> (u16, Arc<Upstream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = Arc::new(Upstream::default());
    let shared = state.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let state = shared.clone();
            std::thread::spawn(move || serve(stream, &state));
        }
    });
    (port, state)
}

fn serve(mut stream: TcpStream, state: &Upstream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            buf.drain(..end + 4);
            if head.split(' ').nth(1).unwrap_or("").starts_with("/hold") {
                state.held.fetch_add(1, Ordering::SeqCst);
                while !state.release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// An Ingress `name` for `host` `/` to `app:80` with ingress-nginx annotations.
fn ingress(name: &str, host: &str, annotations: &[(&str, &str)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| (format!("nginx.ingress.kubernetes.io/{k}"), (*v).into()))
        .collect();
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations: {}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n    - host: {host}\n      http:\n        paths:\n\
         \x20         - {{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}\n---\n",
        serde_json::Value::Object(map)
    )
}

fn sluice(name: &str, ingresses: &[String], config: &str, workers: u32) -> (Sluice, Arc<Upstream>) {
    let (port, state) = upstream();
    let backend = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n"
    );
    let yaml = format!("{}{backend}", ingresses.concat());
    let s = binary::start(
        &format!("ratelimit-{name}"),
        &[("app.yaml", &yaml)],
        config,
        workers,
    );
    (s, state)
}

fn connect(s: &Sluice) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// Sends one `GET path` for `host` on `c` and reads the whole answer (the request says
/// `Connection: close`); returns the status.
fn exchange(mut c: TcpStream, host: &str, path: &str) -> u16 {
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

fn get(s: &Sluice, host: &str) -> u16 {
    exchange(connect(s), host, "/")
}

/// Statuses of `n` requests in a row, each on a fresh connection.
fn burst(s: &Sluice, host: &str, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(s, host)).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// limit-rpm 3 × burst multiplier 1 = burst 3: four requests at once, then one per 20 s.
#[test]
fn requests_beyond_the_burst_get_503_and_other_hosts_are_not_limited() {
    let (s, _) = sluice(
        "burst",
        &[
            ingress(
                "lim",
                "lim.test",
                &[("limit-rpm", "3"), ("limit-burst-multiplier", "1")],
            ),
            ingress("free", "free.test", &[]),
        ],
        "",
        1,
    );
    let statuses = burst(&s, "lim.test", 20);
    let ok = count(&statuses, 200);
    assert!((4..=5).contains(&ok), "{statuses:?}");
    assert_eq!(ok + count(&statuses, 503), 20, "{statuses:?}");
    // The first ones pass, the rest are refused.
    assert!(statuses[..4].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses[19], 503);
    assert!(burst(&s, "free.test", 20).iter().all(|s| *s == 200));
}

/// `[http] limit_req_status_code` (ingress-nginx's `limit-req-status-code` ConfigMap key),
/// and `limit-rps` (1 per second × 2 = burst 2): at most 3 plus one per elapsed second.
#[test]
#[allow(clippy::disallowed_methods)] // Elapsed time only widens the upper bound.
fn the_status_comes_from_the_config() {
    let (s, _) = sluice(
        "status",
        &[ingress(
            "lim",
            "lim.test",
            &[("limit-rps", "1"), ("limit-burst-multiplier", "2")],
        )],
        "[http]\nlimit_req_status_code = 429\n",
        1,
    );
    let started = std::time::Instant::now();
    let statuses = burst(&s, "lim.test", 30);
    let allowed = 3 + started.elapsed().as_secs() as usize + 1;
    let ok = count(&statuses, 200);
    assert!((3..=allowed).contains(&ok), "{statuses:?}");
    assert!(count(&statuses, 429) >= 30 - allowed, "{statuses:?}");
    assert_eq!(count(&statuses, 503), 0, "{statuses:?}");
}

/// `limit-whitelist` (and its newer name `limit-allowlist`): our client (127.0.0.1) is in one
/// host's list and not in the other's.
#[test]
fn a_whitelisted_address_is_never_limited() {
    let (s, _) = sluice(
        "whitelist",
        &[
            ingress(
                "listed",
                "listed.test",
                &[
                    ("limit-rpm", "1"),
                    ("limit-connections", "1"),
                    ("limit-whitelist", "10.0.0.0/8, 127.0.0.0/8"),
                ],
            ),
            ingress(
                "unlisted",
                "unlisted.test",
                &[("limit-rpm", "1"), ("limit-whitelist", "10.0.0.0/8")],
            ),
            // The newer name wins over the older one.
            ingress(
                "allowed",
                "allowed.test",
                &[
                    ("limit-rpm", "1"),
                    ("limit-allowlist", "127.0.0.1"),
                    ("limit-whitelist", "10.0.0.0/8"),
                ],
            ),
        ],
        "",
        1,
    );
    assert!(burst(&s, "listed.test", 30).iter().all(|s| *s == 200));
    assert!(burst(&s, "allowed.test", 30).iter().all(|s| *s == 200));
    let statuses = burst(&s, "unlisted.test", 30);
    assert!(count(&statuses, 503) >= 20, "{statuses:?}");
}

/// A bad value rejects only its field: the good limit of the same Ingress still holds.
#[test]
fn bad_values_reject_only_their_field() {
    let (s, _) = sluice(
        "bad",
        &[ingress(
            "lim",
            "lim.test",
            &[
                ("limit-rps", "ten"),
                ("limit-connections", "-3"),
                ("limit-rpm", "2"),
                ("limit-burst-multiplier", "1"),
            ],
        )],
        "",
        1,
    );
    let statuses = burst(&s, "lim.test", 20);
    let ok = count(&statuses, 200);
    assert!((3..=4).contains(&ok), "{statuses:?}");
}

/// One limit per node: two workers, many client connections spread over both by
/// SO_REUSEPORT, one shared budget. With a per-worker limit, both workers would each let the
/// burst through (about twice as many 200s).
#[test]
fn two_workers_share_one_limit() {
    let (s, _) = sluice(
        "workers",
        &[ingress(
            "lim",
            "lim.test",
            &[("limit-rpm", "6"), ("limit-burst-multiplier", "1")],
        )],
        "",
        2,
    );
    // All connections are open before any request is sent, so the kernel spreads them.
    let conns: Vec<TcpStream> = (0..60).map(|_| connect(&s)).collect();
    let threads: Vec<_> = conns
        .into_iter()
        .map(|c| std::thread::spawn(move || exchange(c, "lim.test", "/")))
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = count(&statuses, 200);
    // burst 6: 7 at once, one more per 10 s.
    assert!((7..=8).contains(&ok), "{ok} admitted: {statuses:?}");
    assert_eq!(ok + count(&statuses, 503), 60, "{statuses:?}");
}

/// `limit-connections`: requests in flight per client address (nginx's limit_conn counts a
/// connection while a request of it is processed). Two held requests use the budget; a
/// third is refused; once they finish, requests pass again.
#[test]
fn connections_in_flight_are_limited() {
    let (s, up) = sluice(
        "conns",
        &[ingress("lim", "lim.test", &[("limit-connections", "2")])],
        "",
        2,
    );
    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = connect(&s);
            std::thread::spawn(move || exchange(c, "lim.test", "/hold"))
        })
        .collect();
    while up.held.load(Ordering::SeqCst) < 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(get(&s, "lim.test"), 503);
    assert_eq!(get(&s, "lim.test"), 503);
    up.release.store(true, Ordering::SeqCst);
    for h in held {
        assert_eq!(h.join().unwrap(), 200);
    }
    // Given back when the requests ended (each on a closed connection; the close may still
    // be under way in the worker: retry a little).
    let mut status = 0;
    for _ in 0..200 {
        status = get(&s, "lim.test");
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status, 200);
    assert!(burst(&s, "lim.test", 10).iter().all(|s| *s == 200));
}

/// `[http] limit_req_status_code` takes an error status only; the example config documents
/// the default.
#[test]
fn the_status_key_is_checked() {
    let dir = std::env::temp_dir().join(format!("sluice-ratelimit-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    std::fs::write(&path, "[http]\nlimit_req_status_code = 200\n").unwrap();
    let err = sluice::config::Config::from_file(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("http.limit_req_status_code"), "{err}");
    std::fs::write(&path, "[http]\nlimit_req_status_code = 429\n").unwrap();
    let c = sluice::config::Config::from_file(&path).unwrap();
    assert_eq!(c.conn_config().limit_status, 429);
    assert_eq!(sluice::config::Config::default().limit_status, 503);
}
