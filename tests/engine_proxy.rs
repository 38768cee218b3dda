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
    let cfg = EngineConfig {
        workers: vec![None; workers],
        http: "127.0.0.1:0".parse().unwrap(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        conn: Arc::new(conn),
        upstream_max_idle: 16,
        upstream_idle_timeout: Duration::from_secs(30),
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
