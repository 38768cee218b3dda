//! Zero-reload updates under traffic: keep-alive clients hammer Sluice while the manifests
//! directory is rewritten hundreds of times (endpoint sets change, hosts come and go). Every
//! request must succeed, and every response must come from a backend that was valid for the
//! configuration in force while it ran. A WebSocket-style tunnel stays open and echoes across
//! 100 snapshot changes.
// Wall-clock instants only order events (which configuration was in force when); nothing
// here asserts on speed.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice::control::compile::{CompileOptions, compile};
use sluice::control::files::{FileSource, FileWatcher};
use sluice::control::incremental::Incremental;
use sluice::demo::spawn_upstream;
use sluice::engine::{Engine, EngineConfig};

/// When each configuration was written, and its endpoint set.
type History = Vec<(Duration, Vec<usize>)>;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-churn-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `churn.test` → the upstreams in `set`; plus `extra-<n>.test` hosts when `extra` is set.
fn routes(upstreams: &[SocketAddr], set: &[usize], extra: Option<usize>) -> String {
    let mut y = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: churn, namespace: default}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n\
         \x20 - host: churn.test\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: pool, port: {number: 80}}}}]}\n",
    );
    if let Some(n) = extra {
        for h in 0..n {
            y += &format!(
                "  - host: extra-{h}.test\n    http: {{paths: [{{path: /x{h}, pathType: Exact, backend: {{service: {{name: pool, port: {{number: 80}}}}}}}}]}}\n"
            );
        }
    }
    y += "---\napiVersion: v1\nkind: Service\nmetadata: {name: pool, namespace: default}\nspec: {ports: [{port: 80, name: http}]}\n";
    for &i in set {
        let a = upstreams[i];
        y += &format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: pool-{i}, namespace: default, labels: {{kubernetes.io/service-name: pool}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
            a.port(),
            a.ip()
        );
    }
    y
}

fn write_atomically(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, String), String> {
    let mut status_line = String::new();
    r.read_line(&mut status_line).map_err(|e| e.to_string())?;
    let status: u16 = status_line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {status_line:?}"))?;
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn hundreds_of_rewrites_under_keep_alive_traffic_fail_no_request() {
    let upstreams: Vec<_> = (0..4)
        .map(|i| spawn_upstream(&format!("u{i}"), "127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = upstreams.iter().map(|u| u.addr).collect();
    // The endpoint set of rewrite `i` (never empty).
    let set_of = |i: usize| -> Vec<usize> {
        match i % 4 {
            0 => vec![0, 1],
            1 => vec![1, 2],
            2 => vec![2, 3],
            _ => vec![3, 0],
        }
    };
    let dir = temp_dir("traffic");
    std::fs::write(dir.join("routes.yaml"), routes(&addrs, &set_of(0), None)).unwrap();

    let mut source = FileSource::new(&dir);
    assert!(source.refresh().is_empty());
    let (compiler, first) = Incremental::new(&source.objects(), CompileOptions::default(), 1);
    let cfg = EngineConfig {
        workers: vec![None, None],
        http: "127.0.0.1:0".parse().unwrap(),
        upstream_max_idle: 16,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, Arc::new(first.snapshot)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher =
        FileWatcher::spawn(source, compiler, engine.publisher(), 1, stop.clone()).unwrap();

    // (time written, endpoint set) of every configuration.
    let epoch = Instant::now();
    let history: Arc<Mutex<History>> = Arc::new(Mutex::new(vec![(Duration::ZERO, set_of(0))]));
    let done = Arc::new(AtomicBool::new(false));
    let addr = engine.local_addr();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut seen = Vec::new();
                while !done.load(Ordering::Acquire) {
                    let start = epoch.elapsed();
                    w.write_all(b"GET / HTTP/1.1\r\nHost: churn.test\r\n\r\n")
                        .unwrap();
                    let (status, body) = read_response(&mut r).expect("response");
                    seen.push((start, epoch.elapsed(), status, body));
                }
                seen
            })
        })
        .collect();

    // Each rewrite waits until every worker serves it, so the window in which each
    // configuration can be in force is known exactly: from its write until every worker has
    // taken the next one.
    const REWRITES: usize = 300;
    let versions = |engine: &Engine| -> u64 {
        engine
            .state()
            .metrics
            .iter()
            .map(|m| m.snapshot_version.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    };
    let mut in_force_until: Vec<Duration> = Vec::new();
    for i in 1..=REWRITES {
        let extra = if i % 3 == 0 { Some(i % 7 + 1) } else { None };
        let before = versions(&engine);
        history.lock().unwrap().push((epoch.elapsed(), set_of(i)));
        write_atomically(&dir, "routes.yaml", &routes(&addrs, &set_of(i), extra));
        let deadline = Instant::now() + Duration::from_secs(5);
        while versions(&engine) <= before {
            assert!(
                Instant::now() < deadline,
                "rewrite {i} never reached every worker"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        // Configuration i-1 can no longer be picked by a new request from here on.
        in_force_until.push(epoch.elapsed());
    }
    std::thread::sleep(Duration::from_millis(100));
    done.store(true, Ordering::Release);
    let results: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    stop.store(true, Ordering::Release);
    watcher.join();

    let history = history.lock().unwrap().clone();
    assert!(results.len() > 500, "too little traffic: {}", results.len());
    for (start, end, status, body) in &results {
        assert_eq!(*status, 200, "failed request: {body}");
        let upstream: usize = body[1..2].parse().unwrap();
        // Valid: in the set in force when the request started (the last one written before
        // it, allowing for propagation) or in any set written while it ran.
        let allowed: BTreeSet<usize> = history
            .iter()
            .enumerate()
            .filter(|(k, (written, _))| {
                let until = in_force_until.get(*k).copied().unwrap_or(Duration::MAX);
                *written <= *end && until >= *start
            })
            .flat_map(|(_, (_, set))| set.iter().copied())
            .collect();
        assert!(
            allowed.contains(&upstream),
            "u{upstream} answered at {start:?}..{end:?}, allowed {allowed:?}"
        );
    }
    let stats = engine.state().publication.lock().unwrap();
    assert!(stats.published >= 10, "published {}", stats.published);
    assert_eq!(stats.unacknowledged, 0);
    drop(stats);
    engine.stop();
    engine.join().unwrap();
}

/// Answers an Upgrade request with 101 and then echoes every byte.
fn spawn_echo_upgrade_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut w = stream;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .unwrap();
                let mut buf = [0u8; 4096];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn an_upgraded_tunnel_survives_100_snapshot_changes() {
    let echo = spawn_echo_upgrade_server();
    let other = spawn_upstream("other", "127.0.0.1:0".parse().unwrap()).unwrap();
    let snapshot = |version: u64, target: SocketAddr| {
        let yaml = routes(&[target], &[0], Some((version % 5) as usize));
        let (objects, errors) = sluice::control::manifests::parse_documents(&yaml, "t");
        assert!(errors.is_empty());
        let objects = sluice::control::compile::Objects::from_objects(objects);
        Arc::new(compile(&objects, &CompileOptions::default(), version).snapshot)
    };
    let cfg = EngineConfig {
        workers: vec![None],
        http: "127.0.0.1:0".parse().unwrap(),
        upstream_max_idle: 4,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, snapshot(1, echo)).unwrap();
    let mut s = TcpStream::connect(engine.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: churn.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let publisher = engine.publisher();
    for v in 2..102u64 {
        // Alternate the route's target away from the echo server and back: the tunnel is
        // already established and must not notice.
        let target = if v % 2 == 0 { other.addr } else { echo };
        publisher.publish(snapshot(v, target));
        assert!(
            publisher
                .wait_acknowledged(v, Instant::now(), Duration::from_secs(2))
                .is_some()
        );
        let msg = format!("message {v}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    engine.stop();
    drop(s);
    engine.join().unwrap();
}

#[test]
fn every_worker_ends_on_the_newest_snapshot_and_old_ones_are_freed() {
    let up = spawn_upstream("u", "127.0.0.1:0".parse().unwrap()).unwrap();
    let snapshot = |version: u64| {
        let yaml = routes(&[up.addr], &[0], Some((version % 4) as usize));
        let (objects, _) = sluice::control::manifests::parse_documents(&yaml, "t");
        let objects = sluice::control::compile::Objects::from_objects(objects);
        Arc::new(compile(&objects, &CompileOptions::default(), version).snapshot)
    };
    let cfg = EngineConfig {
        workers: vec![None, None],
        http: "127.0.0.1:0".parse().unwrap(),
        upstream_max_idle: 4,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, snapshot(1)).unwrap();
    let publisher = engine.publisher();
    // Publish in bursts faster than the workers' loop turns: some versions are never seen
    // by a worker (coalesced), none may be lost at the end, and none may leak.
    let mut weak = Vec::new();
    for v in 2..=500u64 {
        let s = snapshot(v);
        weak.push(Arc::downgrade(&s));
        publisher.publish(s);
        if v % 50 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(
        publisher
            .wait_acknowledged(500, Instant::now(), Duration::from_secs(5))
            .is_some()
    );
    for m in &engine.state().metrics {
        assert_eq!(
            m.snapshot_version.load(Ordering::Acquire),
            500,
            "lost update"
        );
    }
    // Every superseded snapshot is gone; only the newest (held by the workers and the
    // admin's copy) is alive.
    let alive: Vec<usize> = weak
        .iter()
        .enumerate()
        .filter(|(_, w)| w.strong_count() > 0)
        .map(|(i, _)| i + 2)
        .collect();
    assert_eq!(alive, vec![500], "snapshots still alive: {alive:?}");
    engine.stop();
    engine.join().unwrap();
}

/// A file written in two parts (its first Ingress complete and valid on its own) is read once
/// it is closed: the workers never serve the half-written file, and the whole file is one new
/// snapshot.
#[test]
fn a_file_being_written_is_read_once_it_is_closed() {
    let up = spawn_upstream("u", "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = temp_dir("half-written");
    let mut source = FileSource::new(&dir);
    assert!(source.refresh().is_empty());
    let (compiler, first) = Incremental::new(&source.objects(), CompileOptions::default(), 1);
    let cfg = EngineConfig {
        workers: vec![None],
        http: "127.0.0.1:0".parse().unwrap(),
        upstream_max_idle: 4,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
        ..EngineConfig::default()
    };
    let engine = Engine::start(cfg, Arc::new(first.snapshot)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher =
        FileWatcher::spawn(source, compiler, engine.publisher(), 1, stop.clone()).unwrap();
    let version = || {
        engine.state().metrics[0]
            .snapshot_version
            .load(Ordering::Acquire)
    };

    let whole = routes(&[up.addr], &[0], Some(2));
    // The first part ends after the Ingress and the Service: valid YAML on its own.
    let cut = whole.find("---\napiVersion: discovery").unwrap();
    let mut file = std::fs::File::create(dir.join("routes.yaml")).unwrap();
    file.write_all(&whole.as_bytes()[..cut]).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(version(), 1, "a file still being written was read");
    file.write_all(&whole.as_bytes()[cut..]).unwrap();
    drop(file);
    let deadline = Instant::now() + Duration::from_secs(5);
    while version() == 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // One snapshot for the whole file (no second one follows).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(version(), 2);
    let mut s = TcpStream::connect(engine.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: churn.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A symbolic link created in the directory is complete at once (no writer closes it).
    let outside = temp_dir("half-written-target").join("more.yaml");
    std::fs::write(&outside, whole.replace("churn.test", "linked.test")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("linked.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while version() == 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(version(), 3, "the symbolic link was not read");

    stop.store(true, Ordering::Release);
    watcher.join();
    engine.stop();
    engine.join().unwrap();
}
