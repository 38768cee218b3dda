//! The end-to-end engine suite (routing, framing, pooling, drain, publication, admin, and
//! TLS: SNI, certificate rotation, redirects and HSTS), run over EVERY engine so none can
//! drift:
//! `uring::*` runs Sluice's io_uring engine on loopback; `userspace::*` runs the smoltcp
//! engine on a multi-queue TAP inside a network namespace made by the test (root needed),
//! with the kernel on the other side of the TAP as client and as the upstream pods' host;
//! `af_packet::*` runs the same engine over AF_PACKET (PACKET_FANOUT) on one end of a veth
//! pair in such a namespace.
//! Every namespace and device a test makes is removed when it ends, also when it fails.
// The publication wait measures from a wall-clock instant (test code, not the core).
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice::control::certs;
use sluice::control::compile::{CompileOptions, Objects, compile};
use sluice::control::manifests::parse_documents;
use sluice::core::conn::ConnConfig;
use sluice::core::snapshot::Snapshot;
use sluice::demo::{DemoUpstream, spawn_upstream};
use sluice::engine::userspace::{DeviceKind, PollMode, UserspaceConfig};
use sluice::engine::{Engine, EngineConfig, HttpsConfig};

mod support;
use support::netns::{KERNEL_IP, Link, NetNs, SLUICE_IP};
use support::tls::{
    Cert, cert_for, client_config, compile_yaml, connect, get as tls_get, header, https_config,
    ingress, options, plain_get, presented, secret, upstream_yaml,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Uring,
    Userspace,
    /// The userspace engine over AF_PACKET (PACKET_FANOUT) on one end of a veth pair.
    Packet,
    /// The userspace engine on a TAP, busy-polling instead of sleeping.
    Busy,
}

/// One engine under test, with the addresses its peers use.
pub struct Harness {
    kind: Kind,
    /// `upstream_max_conns` of the engines it starts (0: no cap).
    max_conns: usize,
    // Dropped last (after anything a test holds): the namespace goes when the test ends.
    _ns: Option<NetNs>,
}

impl Harness {
    pub fn new(kind: Kind) -> Harness {
        let ns = match kind {
            Kind::Uring => None,
            Kind::Userspace | Kind::Busy => Some(NetNs::new(Link::Tap)),
            Kind::Packet => Some(NetNs::new(Link::Veth)),
        };
        Harness {
            kind,
            max_conns: 0,
            _ns: ns,
        }
    }

    /// Engines started from here cap their connections per endpoint at `n`.
    pub fn capped(mut self, n: usize) -> Harness {
        self.max_conns = n;
        self
    }

    /// Where upstream servers bind (the kernel side).
    fn host_ip(&self) -> IpAddr {
        match self.kind {
            Kind::Uring => IpAddr::from([127, 0, 0, 1]),
            _ => IpAddr::from(KERNEL_IP),
        }
    }

    /// The client address Sluice sees (for X-Forwarded-For).
    pub fn client_ip(&self) -> IpAddr {
        self.host_ip()
    }

    pub fn upstream(&self, name: &str) -> DemoUpstream {
        spawn_upstream(name, SocketAddr::new(self.host_ip(), 0)).unwrap()
    }

    pub fn closed_port(&self) -> SocketAddr {
        support::closed_port(self.host_ip())
    }

    pub fn start(&self, yaml: &str, workers: usize, conn: ConnConfig) -> Engine {
        self.start_with(
            snapshot(yaml, 1),
            workers,
            conn,
            Duration::from_secs(30),
            None,
        )
    }

    /// Where the HTTPS listener goes (in the userspace engine's stack: its own address).
    pub fn https_addr(&self) -> SocketAddr {
        match self.kind {
            Kind::Uring => "127.0.0.1:0".parse().unwrap(),
            _ => SocketAddr::new(IpAddr::from(SLUICE_IP), 443),
        }
    }

    /// One worker with an HTTPS listener next to the plain one.
    pub fn start_tls(
        &self,
        snapshot: sluice::core::snapshot::Snapshot,
        https: HttpsConfig,
    ) -> Engine {
        let conn = ConnConfig::default();
        let idle = Duration::from_secs(30);
        self.start_with(Arc::new(snapshot), 1, conn, idle, Some(https))
    }

    pub fn start_with(
        &self,
        snapshot: Arc<Snapshot>,
        workers: usize,
        conn: ConnConfig,
        upstream_idle_timeout: Duration,
        https: Option<HttpsConfig>,
    ) -> Engine {
        let mut cfg = EngineConfig {
            workers: vec![None; workers],
            http: "127.0.0.1:0".parse().unwrap(),
            conn: Arc::new(conn),
            upstream_max_idle: 16,
            upstream_max_conns: self.max_conns,
            upstream_idle_timeout,
            shutdown_grace: Duration::from_secs(10),
            ..EngineConfig::default()
        };
        match self.kind {
            Kind::Uring => Engine::start_with_https(cfg, https, snapshot).expect("engine starts"),
            Kind::Userspace | Kind::Packet | Kind::Busy => {
                cfg.http = SocketAddr::new(IpAddr::from(SLUICE_IP), 80);
                let dev = UserspaceConfig {
                    device: if self.kind == Kind::Packet {
                        DeviceKind::AfPacket
                    } else {
                        DeviceKind::Tap
                    },
                    interface: if self.kind == Kind::Packet {
                        "s0"
                    } else {
                        "sl0"
                    }
                    .into(),
                    addresses: vec![(IpAddr::from(SLUICE_IP), 24)],
                    poll: if self.kind == Kind::Busy {
                        PollMode::Busy
                    } else {
                        PollMode::Sleep
                    },
                    ..UserspaceConfig::default()
                };
                Engine::start_userspace_with_https(cfg, https, dev, snapshot)
                    .expect("userspace engine starts")
            }
        }
    }
}

pub fn snapshot(yaml: &str, version: u64) -> Arc<Snapshot> {
    let (objects, errors) = parse_documents(yaml, "test.yaml");
    assert!(errors.is_empty(), "{errors:?}");
    let compiled = compile(
        &Objects::from_objects(objects),
        &CompileOptions::default(),
        version,
    );
    Arc::new(compiled.snapshot)
}

/// Routes `a.test` to upstream A, `b.test` to B, `empty.test` to a Service without
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

/// Reads one response (head + Content-Length body) from `s`.
fn read_response(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = match s.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("read head"),
        };
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
    let s = TcpStream::connect_timeout(&engine.local_addr(), Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn get(s: &mut TcpStream, host: &str, path: &str) -> (u16, String, Vec<u8>) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    read_response(s)
}

fn setup(
    kind: Kind,
    workers: usize,
    conn: ConnConfig,
) -> (Harness, DemoUpstream, DemoUpstream, Engine) {
    let h = Harness::new(kind);
    let a = h.upstream("A");
    let b = h.upstream("B");
    let engine = h.start(&routes(&a, &b, h.closed_port()), workers, conn);
    (h, a, b, engine)
}

fn routes_by_host_with_keep_alive_on_both_sides(kind: Kind) {
    let (_h, a, b, engine) = setup(kind, 1, ConnConfig::default());
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

fn local_answers_404_503_502(kind: Kind) {
    let (_h, _a, _b, engine) = setup(kind, 1, ConnConfig::default());
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

fn malformed_request_gets_400_and_nothing_is_smuggled(kind: Kind) {
    let (_h, a, _b, engine) = setup(kind, 1, ConnConfig::default());
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

fn pipelined_requests_are_answered_in_order(kind: Kind) {
    let (_h, _a, _b, engine) = setup(kind, 1, ConnConfig::default());
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

fn chunked_and_content_length_bodies_reach_the_upstream(kind: Kind) {
    let (_h, _a, _b, engine) = setup(kind, 1, ConnConfig::default());
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

fn large_bodies_stream_both_ways(kind: Kind) {
    let (_h, _a, _b, engine) = setup(kind, 1, ConnConfig::default());
    let mut s = client(&engine);
    // A body many times the socket buffers, up; and a response body as large, down.
    let body = vec![b'x'; 3 << 20];
    write!(
        s,
        "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let (status, _, reply) = read_response(&mut s);
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("A POST /up body={}\n", body.len())
    );
    let (status, _, reply) = get(&mut s, "a.test", &format!("/big/{}", 5 << 20));
    assert_eq!(status, 200);
    assert_eq!(reply.len(), 5 << 20);
    engine.stop();
    engine.join().unwrap();
}

fn forwarding_headers_reach_the_upstream(kind: Kind) {
    let (h, _a, _b, engine) = setup(kind, 1, ConnConfig::default());
    let mut s = client(&engine);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
        .unwrap();
    let (_, head, _) = read_response(&mut s);
    let expect = format!("X-Seen-X-Forwarded-For: 203.0.113.9, {}", h.client_ip());
    assert!(head.contains(&expect), "{head}");
    engine.stop();
    engine.join().unwrap();
}

fn slow_upstream_is_504_and_slow_client_head_is_408(kind: Kind) {
    let mut conn = ConnConfig::default();
    conn.timeouts.upstream_response = Duration::from_millis(300);
    conn.timeouts.request_head = Duration::from_millis(300);
    let (_h, _a, _b, engine) = setup(kind, 1, conn);
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

fn two_workers_both_receive_connections(kind: Kind) {
    let (_h, _a, _b, engine) = setup(kind, 2, ConnConfig::default());
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
        "connections are spread over the workers: {per_worker:?}"
    );
    engine.stop();
    engine.join().unwrap();
}

fn admin_endpoints_answer(kind: Kind) {
    let (_h, _a, _b, engine) = setup(kind, 1, ConnConfig::default());
    let mut s = client(&engine);
    get(&mut s, "a.test", "/");
    get(&mut s, "nowhere.test", "/");
    let admin = sluice::admin::start("127.0.0.1:0".parse().unwrap(), engine.state().clone())
        .expect("admin server starts");
    let admin_addr = admin.local_addr();
    let fetch = |path: &str| {
        let mut c = TcpStream::connect(admin_addr).unwrap();
        write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
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
    engine.stop();
    engine.join().unwrap();
    admin.join();
}

fn a_new_snapshot_reaches_every_worker_without_dropping_connections(kind: Kind) {
    let h = Harness::new(kind);
    let a = h.upstream("A");
    let b = h.upstream("B");
    let refused = h.closed_port();
    let engine = h.start(&routes(&a, &b, refused), 2, ConnConfig::default());
    let mut s = client(&engine);
    assert_eq!(get(&mut s, "a.test", "/").0, 200);
    // Swap A and B: the same keep-alive connection routes its next request on the new table.
    engine.publish(snapshot(&routes(&b, &a, refused), 2));
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

fn many_concurrent_clients(kind: Kind) {
    let (_h, a, _b, engine) = setup(kind, 1, ConnConfig::default());
    let addr = engine.local_addr();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                for i in 0..25 {
                    let (status, _, body) = get(&mut s, "a.test", &format!("/{t}/{i}"));
                    assert_eq!(status, 200);
                    assert_eq!(body, format!("A GET /{t}/{i} body=0\n").into_bytes());
                }
            })
        })
        .collect();
    // The client threads were born in this thread's namespace.
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(a.requests.load(Ordering::Relaxed), 200);
    engine.stop();
    engine.join().unwrap();
}

fn stop_lets_the_request_in_flight_finish_and_refuses_new_connections(kind: Kind) {
    let (_h, _a, _b, engine) = setup(kind, 1, ConnConfig::default());
    let addr = engine.local_addr();
    let mut slow = client(&engine);
    write!(slow, "GET /slow/800 HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
    let mut idle = client(&engine);
    assert_eq!(get(&mut idle, "b.test", "/").0, 200);
    std::thread::sleep(Duration::from_millis(200));
    engine.stop();
    std::thread::sleep(Duration::from_millis(200));
    // New connections are refused while the slow request drains.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
        "still accepting after stop"
    );
    let (status, head, body) = read_response(&mut slow);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    assert_eq!(body, b"A GET /slow/800 body=0\n");
    // The idle keep-alive connection was closed at once.
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap_or(0), 0);
    engine.join().unwrap();
}

/// Every status the core answers for a malformed request, over a real socket: the exact code,
/// a `Connection: close` answer, and nothing forwarded upstream.
fn malformed_requests_get_the_core_statuses(kind: Kind) {
    let h = Harness::new(kind);
    let a = h.upstream("A");
    let b = h.upstream("B");
    let mut conn = ConnConfig::default();
    conn.limits.max_body_bytes = Some(16);
    let engine = h.start(&routes(&a, &b, h.closed_port()), 1, conn);
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

fn idle_pooled_upstream_connections_are_closed_after_the_idle_timeout(kind: Kind) {
    let h = Harness::new(kind);
    // A hand-written upstream that counts its connections and reports when one is closed.
    let listener = TcpListener::bind(SocketAddr::new(h.host_ip(), 0)).unwrap();
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
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\nspec:\n  ingressClassName: sluice\n  defaultBackend: {{service: {{name: a, port: {{number: 80}}}}}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: a, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: a-1, namespace: default, labels: {{kubernetes.io/service-name: a}}}}\naddressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        addr.port(),
        addr.ip()
    );
    let idle = Duration::from_millis(300);
    let engine = h.start_with(snapshot(&yaml, 1), 1, ConnConfig::default(), idle, None);
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
    engine.join().unwrap();
}

// TLS: the same certificates, SNI, redirects and HSTS on every engine.

fn sni_picks_exact_then_wildcard_then_default(kind: Kind) {
    let h = Harness::new(kind);
    let up = h.upstream("A");
    let default = certs::self_signed().unwrap();
    let (a, w, x) = (
        cert_for(&["a.test"]),
        cert_for(&["*.w.test"]),
        cert_for(&["x.w.test"]),
    );
    let yaml = upstream_yaml(&up)
        + &ingress(
            "web",
            "",
            &["a.test", "*.w.test", "x.w.test", "plain.test"],
            &[
                (&["a.test"], Some("a")),
                (&["*.w.test"], Some("w")),
                (&["x.w.test"], Some("x")),
            ],
        )
        + &secret("a", &a)
        + &secret("w", &w)
        + &secret("x", &x);
    let compiled = compile_yaml(&yaml, &options(&default), 1);
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        compiled.diagnostics
    );
    let engine = h.start_tls(compiled.snapshot, https_config(h.https_addr(), None));
    let addr = engine.https_addr().unwrap();
    let default_der = default.key.cert[0].to_vec();
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = client_config(versions);
        let cases: [(Option<&str>, &[u8]); 6] = [
            (Some("a.test"), &a.der),
            (Some("A.TEST"), &a.der),
            (Some("y.w.test"), &w.der),
            (Some("x.w.test"), &x.der),
            (Some("other.test"), &default_der),
            (None, &default_der),
        ];
        for (sni, want) in cases {
            let mut tls = connect(addr, sni, &config);
            assert_eq!(presented(&tls), want, "SNI {sni:?}");
            assert_eq!(
                tls.conn.alpn_protocol(),
                Some(&b"http/1.1"[..]),
                "no h2 yet"
            );
            let host = "a.test";
            let (status, head, body) = tls_get(&mut tls, host, "/hello");
            assert_eq!(status, 200, "{head}");
            assert!(body.starts_with("A GET /hello"), "{body}");
            assert!(head.contains("X-Seen-X-Forwarded-Proto: https"), "{head}");
            // Keep-alive over TLS.
            let (status, _, _) = tls_get(&mut tls, host, "/again");
            assert_eq!(status, 200);
        }
    }
    engine.stop();
    engine.join().unwrap();
}

fn rotated_secret_is_used_by_the_next_handshake_while_open_connections_keep_working(kind: Kind) {
    let h = Harness::new(kind);
    let up = h.upstream("A");
    let default = certs::self_signed().unwrap();
    let opts = options(&default);
    let (first, second) = (cert_for(&["rot.test"]), cert_for(&["rot.test"]));
    let yaml = |c: &Cert| {
        upstream_yaml(&up)
            + &ingress("web", "", &["rot.test"], &[(&["rot.test"], Some("rot"))])
            + &secret("rot", c)
    };
    let engine = h.start_tls(
        compile_yaml(&yaml(&first), &opts, 1).snapshot,
        https_config(h.https_addr(), None),
    );
    let addr = engine.https_addr().unwrap();
    let config = client_config(&[&rustls::version::TLS13]);
    let mut open = connect(addr, Some("rot.test"), &config);
    assert_eq!(presented(&open), first.der);
    assert_eq!(tls_get(&mut open, "rot.test", "/before").0, 200);

    engine.publish(Arc::new(compile_yaml(&yaml(&second), &opts, 2).snapshot));
    let acked =
        engine
            .publisher()
            .wait_acknowledged(2, std::time::Instant::now(), Duration::from_secs(10));
    assert!(acked.is_some(), "the worker took the new snapshot");

    // A client without the old session (resuming it would not show a certificate at all).
    let mut fresh = connect(
        addr,
        Some("rot.test"),
        &client_config(&[&rustls::version::TLS13]),
    );
    assert_eq!(
        fresh.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(
        presented(&fresh),
        second.der,
        "next handshake: new certificate"
    );
    assert_eq!(tls_get(&mut fresh, "rot.test", "/new").0, 200);
    // The connection made before the rotation is untouched.
    let (status, _, body) = tls_get(&mut open, "rot.test", "/after");
    assert_eq!(status, 200);
    assert!(body.starts_with("A GET /after"));
    assert_eq!(presented(&open), first.der);
    engine.stop();
    engine.join().unwrap();
}

fn http_redirects_to_https_for_tls_hosts_and_https_carries_hsts(kind: Kind) {
    let h = Harness::new(kind);
    let up = h.upstream("A");
    let default = certs::self_signed().unwrap();
    let c = cert_for(&["secure.test"]);
    let yaml = upstream_yaml(&up)
        + &ingress(
            "secure",
            "",
            &["secure.test", "*.wild.test"],
            &[(&["secure.test", "*.wild.test"], Some("c"))],
        )
        + &ingress(
            "optout",
            "nginx.ingress.kubernetes.io/ssl-redirect: \"false\"",
            &["optout.test"],
            &[(&["optout.test"], Some("c"))],
        )
        + &ingress(
            "forced",
            "sluice.dev/force-ssl-redirect: \"true\"",
            &["forced.test"],
            &[],
        )
        + &ingress(
            "typo",
            "nginx.ingress.kubernetes.io/ssl-redirect: \"yes\"",
            &["typo.test"],
            &[(&["typo.test"], None)],
        )
        + &ingress("plain", "", &["plain.test"], &[])
        + &secret("c", &c);
    let compiled = compile_yaml(&yaml, &options(&default), 1);
    let diags: Vec<String> = compiled.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        diags,
        [
            "Ingress default/typo: metadata.annotations[nginx.ingress.kubernetes.io/ssl-redirect]: expected true or false, got \"yes\"; using true"
        ]
    );
    let engine = h.start_tls(
        compiled.snapshot,
        https_config(h.https_addr(), Some("max-age=31536000; includeSubDomains")),
    );
    let http = engine.local_addr();
    // The port is named in redirects unless it is 443 (the userspace engines listen there).
    let port = match engine.https_addr().unwrap().port() {
        443 => String::new(),
        port => format!(":{port}"),
    };

    let (status, head, _) = plain_get(http, "Secure.Test", "/a/b?x=1&y=2");
    assert_eq!(status, 308, "{head}");
    assert_eq!(
        header(&head, "location"),
        Some(format!("https://secure.test{port}/a/b?x=1&y=2").as_str())
    );
    let (status, head, _) = plain_get(http, "x.wild.test", "/");
    assert_eq!(status, 308, "wildcard TLS host: {head}");
    assert_eq!(
        header(&head, "location"),
        Some(format!("https://x.wild.test{port}/").as_str())
    );
    let (status, head, _) = plain_get(http, "forced.test", "/f");
    assert_eq!(status, 308, "force-ssl-redirect without TLS: {head}");
    let (status, _, _) = plain_get(http, "typo.test", "/");
    assert_eq!(status, 308, "a bad annotation value keeps the default");
    for host in ["optout.test", "plain.test"] {
        let (status, head, _) = plain_get(http, host, "/");
        assert_eq!(status, 200, "{host}: {head}");
        assert_eq!(
            header(&head, "strict-transport-security"),
            None,
            "no HSTS over http"
        );
        assert_eq!(header(&head, "x-seen-x-forwarded-proto"), Some("http"));
    }
    // A host that only routes by wildcard with a strange label is not redirected to it.
    let (status, _, _) = plain_get(http, "a/b@x.wild.test", "/");
    assert_ne!(status, 308);

    let config = client_config(&[&rustls::version::TLS13]);
    let mut tls = connect(engine.https_addr().unwrap(), Some("secure.test"), &config);
    let (status, head, _) = tls_get(&mut tls, "secure.test", "/");
    assert_eq!(status, 200, "no redirect over https");
    assert_eq!(
        header(&head, "strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(header(&head, "x-seen-x-forwarded-proto"), Some("https"));
    // Sluice's own answers over HTTPS carry it too.
    let (status, head, _) = tls_get(&mut tls, "nowhere.test", "/");
    assert_eq!(status, 404);
    assert_eq!(
        header(&head, "strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    engine.stop();
    engine.join().unwrap();
}

/// An upstream bound here, on the kernel side of the engine, that answers each request of a
/// connection (keep-alive) by calling `answer` on its socket once the request's head is in.
fn answering_upstream(
    ip: IpAddr,
    answer: impl Fn(&mut TcpStream) -> std::io::Result<()> + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                s.set_nodelay(true).unwrap();
                let mut have = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while !have.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => have.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = have.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    have.drain(..end);
                    if answer(&mut s).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Answers as a Go or Node handler that writes its body after its head does: the head, then
/// 20 ms later the 5-byte body, in two writes (TCP_NODELAY: two segments).
fn split_upstream(ip: IpAddr) -> SocketAddr {
    answering_upstream(ip, |s| {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")?;
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(b"hello")
    })
}

/// An Ingress routing `<name>.test` to a Service `name` whose one endpoint is `upstream`.
fn one_route(name: &str, upstream: SocketAddr) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: {name}.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        upstream.port(),
        upstream.ip()
    )
}

/// `postpone_output` over real sockets: the response head waits in Sluice for its body, which
/// the upstream writes 20 ms later, and the client's first read returns both (one send; without
/// the hold the head arrives alone, 20 ms before the body). The hold's bound is set to 1 s
/// here so that the 20 ms pause is well within it (the default is 1 ms).
fn a_head_and_a_body_written_apart_reach_the_client_in_one_read(kind: Kind) {
    let h = Harness::new(kind);
    let yaml = one_route("split", split_upstream(h.host_ip()));
    let conn = ConnConfig {
        postpone_output: 1460,
        postpone_timeout: Duration::from_secs(1),
        ..ConnConfig::default()
    };
    let engine = h.start(&yaml, 1, conn);
    let mut s = client(&engine);
    // Twice: on a new upstream connection, then on the pooled one.
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: split.test\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = loop {
            match s.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.expect("a response"),
            }
        };
        let first = String::from_utf8_lossy(&buf[..n]);
        assert!(
            first.starts_with("HTTP/1.1 200 OK\r\n") && first.ends_with("\r\n\r\nhello"),
            "the first read holds the whole response: {first:?}"
        );
    }
    engine.stop();
    engine.join().unwrap();
}

/// Answers every request of a connection with `answer`, in one write.
fn fixed_upstream(ip: IpAddr, answer: &'static [u8]) -> SocketAddr {
    answering_upstream(ip, move |s| s.write_all(answer))
}

/// Fields an upstream addresses to the proxy (nginx's `proxy_hide_header` defaults:
/// `X-Accel-Buffering`, `X-Accel-Redirect`, ...) do not reach the client through a real
/// socket; the other fields and the body do.
fn x_accel_fields_from_the_upstream_do_not_reach_the_client(kind: Kind) {
    let h = Harness::new(kind);
    let upstream = fixed_upstream(
        h.host_ip(),
        b"HTTP/1.1 200 OK\r\nX-Accel-Buffering: no\r\nX-Accel-Redirect: /x\r\n\
          X-Kept: yes\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    );
    let engine = h.start(&one_route("accel", upstream), 1, ConnConfig::default());
    let mut s = client(&engine);
    let (status, head, body) = get(&mut s, "accel.test", "/");
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("x-accel"), "{head}");
    assert!(lower.contains("\r\nx-kept: yes\r\n"), "{head}");
    assert!(lower.contains("\r\ncontent-type: text/plain\r\n"), "{head}");
    engine.stop();
    engine.join().unwrap();
}

/// An upstream bound on `ip` that answers each request of a connection (keep-alive) `delay`
/// after its head is in, and keeps the most connections it had open at once.
fn counting_upstream(
    ip: IpAddr,
    delay: Duration,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::AtomicUsize;
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let peak = most.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now_open, Ordering::SeqCst);
            let open = open.clone();
            std::thread::spawn(move || {
                let mut have = Vec::new();
                let mut buf = [0u8; 4096];
                'conn: loop {
                    while !have.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break 'conn,
                            Ok(n) => have.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = have.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    have.drain(..end);
                    std::thread::sleep(delay);
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow";
                    if s.write_all(answer).is_err() {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, most)
}

/// `[upstream] max_connections_per_endpoint = 2` over real sockets: ten clients at once ask a
/// slow upstream (50 ms per answer, keep-alive) that counts the connections it has open. All
/// ten get their 200, and the upstream never had more than two connections at once: the
/// other requests waited in Sluice's queue and took the released connections in turn.
fn a_capped_endpoint_never_sees_more_connections_than_its_cap(kind: Kind) {
    let h = Harness::new(kind).capped(2);
    let (upstream, most) = counting_upstream(h.host_ip(), Duration::from_millis(50));
    let engine = h.start(&one_route("capped", upstream), 1, ConnConfig::default());
    let addr = engine.local_addr();
    let clients: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                get(&mut s, "capped.test", &format!("/{i}"))
            })
        })
        .collect();
    for c in clients {
        let (status, head, body) = c.join().unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"slow"[..]), "{head}");
    }
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "the upstream had {} connections open at once",
        most.load(Ordering::SeqCst)
    );
    let m = &engine.state().metrics[0];
    assert_eq!(m.responses[1].load(Ordering::Relaxed), 10);
    assert!(
        m.upstream_queued.load(Ordering::Relaxed) >= 1,
        "requests waited in the queue"
    );
    assert_eq!(m.upstream_queue_timeouts.load(Ordering::Relaxed), 0);
    engine.stop();
    engine.join().unwrap();
}

/// Waiting counts towards the connect timeout: with a cap of 1 and the one connection busy
/// for a second, a second request that waits longer than its connect timeout (300 ms here)
/// is answered 504 (its only endpoint is tried), the first still gets its 200, and the wait
/// is counted as a queue timeout.
fn a_wait_for_a_capped_endpoint_times_out_as_a_connect_does(kind: Kind) {
    let h = Harness::new(kind).capped(1);
    let (upstream, most) = counting_upstream(h.host_ip(), Duration::from_secs(1));
    let mut conn = ConnConfig::default();
    conn.timeouts.upstream_connect = Duration::from_millis(300);
    let engine = h.start(&one_route("capped", upstream), 1, conn);
    let mut first = client(&engine);
    write!(first, "GET /first HTTP/1.1\r\nHost: capped.test\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut second = client(&engine);
    let (status, head, _) = get(&mut second, "capped.test", "/second");
    assert_eq!(status, 504, "{head}");
    let (status, head, body) = read_response(&mut first);
    assert_eq!((status, body.as_slice()), (200, &b"slow"[..]), "{head}");
    assert_eq!(most.load(Ordering::SeqCst), 1);
    let m = &engine.state().metrics[0];
    assert_eq!(m.upstream_queued.load(Ordering::Relaxed), 1);
    assert_eq!(m.upstream_queue_timeouts.load(Ordering::Relaxed), 1);
    // The connection is free again: the second client's next request is served on it.
    let (status, _, body) = get(&mut second, "capped.test", "/again");
    assert_eq!((status, body.as_slice()), (200, &b"slow"[..]));
    assert_eq!(most.load(Ordering::SeqCst), 1);
    engine.stop();
    engine.join().unwrap();
}

macro_rules! suite {
    ($kind:ident: $($name:ident),* $(,)?) => {
        $( #[test] fn $name() { super::$name(super::Kind::$kind) } )*
    };
}

macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod uring { suite!(Uring: $($name),*); }
        mod userspace { suite!(Userspace: $($name),*); }
        mod af_packet { suite!(Packet: $($name),*); }
    };
}

both_engines!(
    routes_by_host_with_keep_alive_on_both_sides,
    local_answers_404_503_502,
    malformed_request_gets_400_and_nothing_is_smuggled,
    pipelined_requests_are_answered_in_order,
    chunked_and_content_length_bodies_reach_the_upstream,
    large_bodies_stream_both_ways,
    forwarding_headers_reach_the_upstream,
    slow_upstream_is_504_and_slow_client_head_is_408,
    two_workers_both_receive_connections,
    admin_endpoints_answer,
    a_new_snapshot_reaches_every_worker_without_dropping_connections,
    many_concurrent_clients,
    stop_lets_the_request_in_flight_finish_and_refuses_new_connections,
    malformed_requests_get_the_core_statuses,
    idle_pooled_upstream_connections_are_closed_after_the_idle_timeout,
    sni_picks_exact_then_wildcard_then_default,
    rotated_secret_is_used_by_the_next_handshake_while_open_connections_keep_working,
    http_redirects_to_https_for_tls_hosts_and_https_carries_hsts,
    a_head_and_a_body_written_apart_reach_the_client_in_one_read,
    x_accel_fields_from_the_upstream_do_not_reach_the_client,
    a_capped_endpoint_never_sees_more_connections_than_its_cap,
    a_wait_for_a_capped_endpoint_times_out_as_a_connect_does,
);

// Busy polling changes only how the loop waits: a few of the suite prove it still serves,
// times out and streams.
mod busy_poll {
    suite!(
        Busy: routes_by_host_with_keep_alive_on_both_sides,
        large_bodies_stream_both_ways,
        slow_upstream_is_504_and_slow_client_head_is_408,
        a_new_snapshot_reaches_every_worker_without_dropping_connections,
    );
}

#[test]
fn userspace_engine_serves_ipv6_clients_and_ipv6_upstreams() {
    let _ns = NetNs::new(Link::Tap);
    let up = spawn_upstream("V6", "[fd99::1]:0".parse().unwrap()).unwrap();
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: v6.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv6\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"fd99::1\"]}}]\n",
        up.addr.port()
    );
    let cfg = EngineConfig {
        workers: vec![None; 2],
        upstream_max_idle: 16,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(10),
        ..EngineConfig::default()
    };
    let dev = UserspaceConfig {
        interface: "sl0".into(),
        addresses: vec![
            (IpAddr::from(SLUICE_IP), 24),
            ("fd99::2".parse().unwrap(), 64),
        ],
        ..UserspaceConfig::default()
    };
    let engine = Engine::start_userspace(cfg, dev, snapshot(&yaml, 1)).unwrap();
    for i in 0..10 {
        let mut s =
            TcpStream::connect_timeout(&"[fd99::2]:80".parse().unwrap(), Duration::from_secs(10))
                .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!("GET /{i} HTTP/1.1\r\nHost: v6.test\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let (status, head, body) = read_response(&mut s);
        assert_eq!(status, 200, "{head}");
        assert_eq!(body, format!("V6 GET /{i} body=0\n").into_bytes());
        assert!(
            head.contains("X-Seen-X-Forwarded-For: 203.0.113.9, fd99::1"),
            "{head}"
        );
    }
    engine.stop();
    engine.join().unwrap();
}

#[test]
fn userspace_engine_reaches_off_link_upstreams_through_the_gateway() {
    let ns = NetNs::new(Link::Tap);
    // An upstream address that is not on the TAP's subnet: reachable only via the gateway
    // (the kernel side of the TAP, which owns it).
    support::netns::ip(&["-n", &ns.name, "addr", "add", "10.98.0.1/32", "dev", "lo"]).unwrap();
    let up = spawn_upstream("GW", "10.98.0.1:0".parse().unwrap()).unwrap();
    let yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: gw.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"10.98.0.1\"]}}]\n",
        up.addr.port()
    );
    let mut conn = ConnConfig::default();
    conn.timeouts.upstream_connect = Duration::from_millis(500);
    let start = |gateway: Option<IpAddr>| {
        let cfg = EngineConfig {
            workers: vec![None; 1],
            http: SocketAddr::new(IpAddr::from(SLUICE_IP), 80),
            conn: Arc::new(conn.clone()),
            upstream_max_idle: 16,
            upstream_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            ..EngineConfig::default()
        };
        let dev = UserspaceConfig {
            interface: "sl0".into(),
            addresses: vec![(IpAddr::from(SLUICE_IP), 24)],
            gateway,
            ..UserspaceConfig::default()
        };
        Engine::start_userspace(cfg, dev, snapshot(&yaml, 1)).unwrap()
    };
    // Without a gateway the upstream is unreachable: 502 (or 504), never a hang.
    let engine = start(None);
    let mut s = client(&engine);
    let (status, _, _) = get(&mut s, "gw.test", "/");
    assert!(status == 502 || status == 504, "{status}");
    engine.stop();
    engine.join().unwrap();
    // With the gateway configured it is reached through it.
    let engine = start(Some(IpAddr::from(KERNEL_IP)));
    let mut s = client(&engine);
    let (status, _, body) = get(&mut s, "gw.test", "/via");
    assert_eq!(status, 200);
    assert_eq!(body, b"GW GET /via body=0\n");
    engine.stop();
    engine.join().unwrap();
}
