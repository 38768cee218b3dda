//! The io_uring engine end to end over real sockets on loopback: a real client (std
//! TcpStream), Sluice's workers, and in-process upstream servers standing in for pods.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice::control::compile::{CompileOptions, Objects, compile};
use sluice::control::manifests::parse_documents;
use sluice::core::conn::ConnConfig;
use sluice::core::route::Snapshot;
use sluice::demo::{DemoUpstream, spawn_upstream};
use sluice::engine::{Engine, EngineConfig};

fn snapshot(yaml: &str, version: u64) -> Arc<Snapshot> {
    let (objects, errors) = parse_documents(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    let compiled = compile(
        &Objects::from_objects(objects),
        &CompileOptions::default(),
        version,
    );
    Arc::new(compiled.snapshot)
}

fn start(yaml: &str, workers: usize, conn: ConnConfig) -> Engine {
    start_with_idle_timeout(yaml, workers, conn, Duration::from_secs(30))
}

fn start_with_idle_timeout(
    yaml: &str,
    workers: usize,
    conn: ConnConfig,
    upstream_idle_timeout: Duration,
) -> Engine {
    let cfg = EngineConfig {
        workers: vec![None; workers],
        http: "127.0.0.1:0".parse().unwrap(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        conn: Arc::new(conn),
        upstream_max_idle: 16,
        upstream_idle_timeout,
        shutdown_grace: Duration::from_secs(10),
    };
    Engine::start(cfg, snapshot(yaml, 1)).expect("engine starts (io_uring available)")
}

/// Routes `a.test` to upstream A, `b.test` to B, `b.test/empty` to a Service without
/// endpoints, and `refused.test` to a port nobody listens on.
fn routes(a: &DemoUpstream, b: &DemoUpstream, refused: SocketAddr) -> String {
    let svc = |name: &str, addr: Option<SocketAddr>| {
        let mut s = format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n"
        );
        if let Some(addr) = addr {
            s += &format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
                addr.port(),
                addr.ip()
            );
        }
        s
    };
    let rule = |host: &str, path: &str, svc: &str| {
        format!(
            "    - host: {host}\n      http: {{paths: [{{path: {path}, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}]}}\n"
        )
    };
    let mut y = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: t, namespace: default}\nspec:\n  ingressClassName: sluice\n  rules:\n",
    );
    y += &rule("a.test", "/", "a");
    y += &rule("b.test", "/", "b");
    y += &rule("empty.test", "/", "empty");
    y += &rule("refused.test", "/", "refused");
    y += &svc("a", Some(a.addr));
    y += &svc("b", Some(b.addr));
    y += &svc("empty", None);
    y += &svc("refused", Some(refused));
    y
}

fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Reads one response (head + Content-Length body) from `s`.
fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read head");
        assert!(
            n > 0,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
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
    (status, head, body)
}

fn client(engine: &Engine) -> TcpStream {
    let s = TcpStream::connect(engine.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn get(s: &mut TcpStream, host: &str, path: &str) -> (u16, String, Vec<u8>) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    read_response(s)
}

#[test]
fn routes_by_host_over_real_sockets_with_keep_alive_on_both_sides() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let engine = start(&routes(&a, &b, closed_port()), 1, ConnConfig::default());
    let mut s = client(&engine);
    for i in 0..20 {
        let (status, _, body) = get(&mut s, "a.test", &format!("/x/{i}"));
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("A GET /x/{i} body=0\n")
        );
        let (status, _, body) = get(&mut s, "B.TEST:80", "/y");
        assert_eq!(status, 200);
        assert!(String::from_utf8(body).unwrap().starts_with("B GET /y"));
    }
    // One client connection, and one pooled upstream connection per pod.
    assert_eq!(a.connections.load(Ordering::Relaxed), 1);
    assert_eq!(b.connections.load(Ordering::Relaxed), 1);
    assert_eq!(a.requests.load(Ordering::Relaxed), 20);
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn local_answers_404_503_502() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let engine = start(&routes(&a, &b, closed_port()), 1, ConnConfig::default());
    let mut s = client(&engine);
    let (status, head, _) = get(&mut s, "nowhere.test", "/");
    assert_eq!(status, 404, "{head}");
    assert!(head.contains("Server: sluice"));
    let (status, _, _) = get(&mut s, "empty.test", "/");
    assert_eq!(status, 503);
    let (status, _, _) = get(&mut s, "refused.test", "/");
    assert_eq!(status, 502);
    // The connection survived all three.
    let (status, _, _) = get(&mut s, "a.test", "/");
    assert_eq!(status, 200);
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn malformed_request_gets_400_over_a_real_socket() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let engine = start(&routes(&a, &b, closed_port()), 1, ConnConfig::default());
    let mut s = client(&engine);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 400);
    assert!(head.contains("Connection: close"));
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(
        a.requests.load(Ordering::Relaxed),
        0,
        "nothing smuggled upstream"
    );
    engine.stop();
    engine.join().unwrap();
}

/// Every status the core answers for a malformed request, over a real socket: the exact code,
/// a `Connection: close` answer, and nothing forwarded upstream.
#[test]
fn malformed_requests_get_the_core_statuses_over_real_sockets() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut conn = ConnConfig::default();
    conn.limits.max_body_bytes = Some(16);
    let engine = start(&routes(&a, &b, closed_port()), 1, conn);
    let long_target = format!("/{}", "x".repeat(9000));
    let many_fields: String = (0..101).map(|i| format!("X-F{i}: v\r\n")).collect();
    let huge_field = format!("X-Big: {}\r\n", "v".repeat(33 * 1024));
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "body over max_body_bytes",
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 17\r\n\r\n".to_string(),
            413,
        ),
        (
            "request line over 8 KiB",
            format!("GET {long_target} HTTP/1.1\r\nHost: a.test\r\n\r\n"),
            414,
        ),
        (
            "more than 100 header fields",
            format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many_fields}\r\n"),
            431,
        ),
        (
            "head over 32 KiB",
            format!("GET / HTTP/1.1\r\nHost: a.test\r\n{huge_field}\r\n"),
            431,
        ),
        (
            "unknown transfer coding",
            "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked2\r\n\r\n"
                .to_string(),
            501,
        ),
        (
            "HTTP/2.0 request line",
            "GET / HTTP/2.0\r\nHost: a.test\r\n\r\n".to_string(),
            505,
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: 1\r\n  folded\r\n\r\n".to_string(),
            400,
        ),
        (
            "two Host fields",
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n".to_string(),
            400,
        ),
    ];
    for (what, request, want) in cases {
        let mut s = client(&engine);
        // The server may answer and close before reading all of a large head.
        let _ = s.write_all(request.as_bytes());
        let (status, head, _) = read_response(&mut s);
        assert_eq!(status, want, "{what}: {head}");
        assert!(head.contains("Connection: close"), "{what}: {head}");
        assert!(head.contains("Server: sluice"), "{what}: {head}");
    }
    assert_eq!(a.requests.load(Ordering::Relaxed), 0, "nothing forwarded");
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let engine = start(&routes(&a, &b, closed_port()), 1, ConnConfig::default());
    let mut s = client(&engine);
    let mut batch = String::new();
    for i in 0..10 {
        let host = if i % 2 == 0 { "a.test" } else { "b.test" };
        batch += &format!("GET /p{i} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    }
    s.write_all(batch.as_bytes()).unwrap();
    for i in 0..10 {
        let (status, _, body) = read_response(&mut s);
        assert_eq!(status, 200);
        let who = if i % 2 == 0 { "A" } else { "B" };
        assert_eq!(
            String::from_utf8(body).unwrap(),
            format!("{who} GET /p{i} body=0\n")
        );
    }
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn chunked_and_content_length_bodies_reach_the_upstream() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let engine = start(&routes(&a, &b, closed_port()), 1, ConnConfig::default());
    let mut s = client(&engine);
    s.write_all(b"POST /cl HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nhello world")
        .unwrap();
    let (_, _, body) = read_response(&mut s);
    assert_eq!(String::from_utf8(body).unwrap(), "A POST /cl body=11\n");
    s.write_all(b"POST /ch HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .unwrap();
    let (_, _, body) = read_response(&mut s);
    assert_eq!(String::from_utf8(body).unwrap(), "A POST /ch body=11\n");
    // 100-continue: Sluice answers it once the upstream is there, then the body flows.
    s.write_all(
        b"PUT /e HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut cont = [0u8; 25];
    s.read_exact(&mut cont).unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"data").unwrap();
    let (status, _, body) = read_response(&mut s);
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap(), "A PUT /e body=4\n");
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn forwarding_headers_reach_the_upstream() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let engine = start(&routes(&a, &b, closed_port()), 1, ConnConfig::default());
    let mut s = client(&engine);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
        .unwrap();
    let (_, head, _) = read_response(&mut s);
    assert!(
        head.contains("X-Seen-X-Forwarded-For: 203.0.113.9, 127.0.0.1"),
        "{head}"
    );
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn slow_upstream_is_504_and_slow_client_head_is_408() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut conn = ConnConfig::default();
    conn.timeouts.upstream_response = Duration::from_millis(300);
    conn.timeouts.request_head = Duration::from_millis(300);
    let engine = start(&routes(&a, &b, closed_port()), 1, conn);
    let mut s = client(&engine);
    let (status, _, _) = get(&mut s, "a.test", "/slow/2000");
    assert_eq!(status, 504);
    let mut s = client(&engine);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.t").unwrap();
    let (status, head, _) = read_response(&mut s);
    assert_eq!(status, 408);
    assert!(head.contains("Connection: close"));
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn two_workers_both_receive_connections() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let engine = start(&routes(&a, &b, closed_port()), 2, ConnConfig::default());
    for i in 0..64 {
        let mut s = client(&engine);
        let (status, _, _) = get(&mut s, "a.test", &format!("/{i}"));
        assert_eq!(status, 200);
    }
    let per_worker: Vec<u64> = engine
        .state()
        .metrics
        .iter()
        .map(|m| m.accepted.load(Ordering::Relaxed))
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 64);
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "SO_REUSEPORT spreads connections: {per_worker:?}"
    );
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn admin_endpoints_answer() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let engine = start(&routes(&a, &b, closed_port()), 1, ConnConfig::default());
    let mut s = client(&engine);
    get(&mut s, "a.test", "/");
    get(&mut s, "nowhere.test", "/");
    let admin = engine.admin_addr().unwrap();
    let fetch = |path: &str| {
        let mut c = TcpStream::connect(admin).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    assert!(fetch("/healthz").starts_with("HTTP/1.1 200"));
    // Workers flag themselves serving once their loop runs.
    let mut ready = fetch("/readyz");
    for _ in 0..50 {
        if ready.starts_with("HTTP/1.1 200") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        ready = fetch("/readyz");
    }
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let metrics = fetch("/metrics");
    assert!(
        metrics.contains("sluice_responses_total{worker=\"0\",class=\"2xx\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_responses_total{worker=\"0\",class=\"4xx\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE sluice_connections_active gauge"));
    assert!(fetch("/routes").contains("a.test / Prefix -> default/a:80 (1 endpoints)"));
    assert!(fetch("/nope").starts_with("HTTP/1.1 404"));
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn a_new_snapshot_reaches_every_worker_without_dropping_connections() {
    let a = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let b = spawn_upstream("B", "127.0.0.1:0".parse().unwrap()).unwrap();
    let engine = start(&routes(&a, &b, closed_port()), 2, ConnConfig::default());
    let mut s = client(&engine);
    assert_eq!(get(&mut s, "a.test", "/").0, 200);
    // Swap A and B: the same keep-alive connection routes its next request on the new table.
    let swapped = routes(&b, &a, closed_port());
    engine.publish(snapshot(&swapped, 2));
    let mut seen_b = false;
    for _ in 0..50 {
        let (status, _, body) = get(&mut s, "a.test", "/");
        assert_eq!(status, 200);
        if body.starts_with(b"B ") {
            seen_b = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen_b, "the new snapshot never took effect");
    // Every worker acknowledges the new version at its next quiescent point (an idle
    // worker within its maximum wait).
    let acked = |engine: &Engine| {
        engine
            .state()
            .metrics
            .iter()
            .all(|m| m.snapshot_version.load(Ordering::Acquire) == 2)
    };
    for _ in 0..100 {
        if acked(&engine) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(acked(&engine));
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn idle_pooled_upstream_connections_are_closed_after_the_idle_timeout() {
    // A hand-written upstream that counts its connections and reports when one is closed.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (events, seen) = std::sync::mpsc::channel::<&'static str>();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut s = stream.unwrap();
            let events = events.clone();
            std::thread::spawn(move || {
                let _ = events.send("accepted");
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = events.send("closed");
                            return;
                        }
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .unwrap();
                    }
                }
            });
        }
    });
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\nspec:\n  ingressClassName: sluice\n  defaultBackend: {{service: {{name: a, port: {{number: 80}}}}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: a, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: a-1, namespace: default, labels: {{kubernetes.io/service-name: a}}}}\naddressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"127.0.0.1\"]}}]\n",
        addr.port()
    );
    let engine =
        start_with_idle_timeout(&yaml, 1, ConnConfig::default(), Duration::from_millis(300));
    let wait = |what: &str| {
        let got = seen
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no '{what}' from the upstream within 10 s"));
        assert_eq!(got, what);
    };

    let mut s = client(&engine);
    assert_eq!(get(&mut s, "x.test", "/").0, 200);
    wait("accepted");
    // Well inside the idle timeout: the pooled connection is reused.
    assert_eq!(get(&mut s, "x.test", "/").0, 200);
    assert!(
        seen.try_recv().is_err(),
        "a second upstream connection for a request that could reuse the first"
    );
    // Left idle, the pooled connection is closed by Sluice ...
    wait("closed");
    // ... and the next request opens a new one.
    assert_eq!(get(&mut s, "x.test", "/").0, 200);
    wait("accepted");
    engine.stop();
}
