//! `X-Request-ID` and the access log end to end through `sluice run`: a client's id reaches
//! the upstream as it was sent; without one, Sluice makes a 32-hex-digit id, a different one
//! per request; a client cannot smuggle a second one next to it. Each request's access log
//! line (stdout; text and JSON) carries the same id and the request's fields.

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

/// `sluice run` with `config_toml`: the process, its HTTP address, and its
/// access log lines (stdout) as they come.
fn start(
    name: &str,
    config_toml: &str,
    up: SocketAddr,
) -> (Running, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let (running, http, _, log) = start_https(name, config_toml, up);
    (running, http, log)
}

/// [`start`], also returning the HTTPS address.
fn start_https(
    name: &str,
    config_toml: &str,
    up: SocketAddr,
) -> (
    Running,
    SocketAddr,
    SocketAddr,
    std::sync::mpsc::Receiver<String>,
) {
    let dir = std::env::temp_dir().join(format!("sluice-reqid-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.yaml"), manifests(up)).unwrap();
    // dead.test: a port nothing listens on (502).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let dead_yaml = manifests(SocketAddr::from(([127, 0, 0, 1], dead_port)))
        .replace("name: t,", "name: dead,")
        .replace("app.test", "dead.test")
        .replace("name: app", "name: dead")
        .replace("service-name: app", "service-name: dead");
    std::fs::write(dir.join("dead.yaml"), dead_yaml).unwrap();
    // slow.test: accepts and never answers (504 with a short upstream_response timeout).
    let slow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_port = slow.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in slow.incoming() {
            held.push(s);
        }
    });
    let slow_yaml = manifests(SocketAddr::from(([127, 0, 0, 1], slow_port)))
        .replace("name: t,", "name: slow,")
        .replace("app.test", "slow.test")
        .replace("name: app", "name: slow")
        .replace("service-name: app", "service-name: slow");
    std::fs::write(dir.join("slow.yaml"), slow_yaml).unwrap();
    let config =
        std::env::temp_dir().join(format!("sluice-reqid-{}-{name}.toml", std::process::id()));
    std::fs::write(&config, config_toml).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--workers", "1", "--manifests"])
        .arg(&dir)
        .arg("--config")
        .arg(&config)
        .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let running = Running(child);
    let mut http: Option<SocketAddr> = None;
    let https: SocketAddr = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some((_, rest)) = line.split_once("serving http on ") {
            http = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some((_, rest)) = line.split_once("serving https on ") {
            break rest.trim().parse().unwrap();
        }
    };
    let http = http.expect("http before https");
    std::thread::spawn(move || for _ in lines {});
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (running, http, https, rx)
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("an access log line")
}

#[test]
fn request_ids_pass_through_or_are_generated_and_reach_the_upstream() {
    let up = echo_upstream();
    let (_running, http, log) = start("text", "[log]\nformat = \"text\"\n", up);

    // Passed through as sent.
    assert_eq!(
        seen_ids(http, "X-Request-ID: client-id-42\r\n"),
        "X-Request-ID: client-id-42"
    );
    // Its access log line, field by field (text: upstreaminfo-like).
    let line = next_line(&log);
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[0], "127.0.0.1", "{line}");
    assert_eq!(f[1], "-", "{line}");
    assert!(f[2].starts_with('[') && f[2].ends_with("Z]"), "{line}");
    assert_eq!(f[3], "\"GET", "{line}");
    assert_eq!(f[4], "app.test/\"", "{line}");
    assert_eq!(f[5], "200", "{line}");
    assert!(f[6].parse::<f64>().is_ok(), "{line}");
    assert_eq!(f[7], up.to_string(), "{line}");
    assert!(f[8].parse::<f64>().is_ok(), "{line}");
    assert_eq!(f[9], "client-id-42", "{line}");
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
    // The generated ids are the ones logged.
    for id in [&a, &b] {
        let line = next_line(&log);
        assert!(
            line.ends_with(id.strip_prefix("X-Request-ID: ").unwrap()),
            "{line} {id}"
        );
    }
    // Two ids from the client: neither is trusted, one generated id replaces both.
    let c = seen_ids(http, "X-Request-ID: one\r\nX-Request-ID: two\r\n");
    assert_eq!(c.lines().count(), 1, "{c}");
    assert!(!c.contains("one") && !c.contains("two"), "{c}");
}

#[test]
fn json_access_log_lines_for_a_proxied_request_a_404_a_502_a_504_and_tls() {
    let get = |http: SocketAddr, host: &str, path: &str| {
        let mut s = TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let up = echo_upstream();
    let (_running, http, https, log) = start_https(
        "json",
        "[log]\nformat = \"json\"\n[timeouts]\nupstream_response = \"300ms\"\n",
        up,
    );
    seen_ids(http, "X-Request-ID: j-1\r\n");
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["client"], "127.0.0.1", "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["host"], "app.test", "{v}");
    assert_eq!(v["path"], "/", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert!(v["request_time"].as_f64().is_some(), "{v}");
    assert_eq!(v["upstream"], up.to_string(), "{v}");
    assert!(v["upstream_time"].as_f64().is_some(), "{v}");
    assert_eq!(v["request_id"], "j-1", "{v}");
    assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
    // A 404 answered locally: no upstream.
    let mut s = TcpStream::connect(http).unwrap();
    write!(
        s,
        "GET /x?q=1 HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["status"], 404, "{v}");
    assert_eq!(v["host"], "nowhere.test", "{v}");
    assert_eq!(v["path"], "/x", "{v}");
    assert_eq!(v["upstream"], serde_json::Value::Null, "{v}");
    // A 502: the upstream refused the connection; the address tried is logged.
    let out = get(http, "dead.test", "/d");
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["status"], 502, "{v}");
    assert_eq!(v["host"], "dead.test", "{v}");
    assert!(
        v["upstream"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{v}"
    );
    assert_eq!(v["request_id"].as_str().unwrap().len(), 32, "{v}");
    // A 504: the upstream took the request and never answered.
    let out = get(http, "slow.test", "/s");
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["status"], 504, "{v}");
    assert_eq!(v["host"], "slow.test", "{v}");
    assert!(v["request_time"].as_f64().unwrap() >= 0.3, "{v}");
    assert!(v["upstream_time"].as_f64().unwrap() >= 0.3, "{v}");
    // Over TLS (the self-signed default certificate), with the client's id.
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-H", "X-Request-ID: tls-7"])
        .arg("--resolve")
        .arg(format!("app.test:{}:127.0.0.1", https.port()))
        .arg(format!("https://app.test:{}/t", https.port()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "X-Request-ID: tls-7");
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["scheme"], "https", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["path"], "/t", "{v}");
    assert_eq!(v["request_id"], "tls-7", "{v}");
}

#[test]
fn sigusr1_reopens_the_access_log_file_after_logrotate_moved_it() {
    let up = echo_upstream();
    let path = std::env::temp_dir().join(format!("sluice-reqid-{}-access.log", std::process::id()));
    let rotated = path.with_extension("log.1");
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
    let config = format!("[log]\naccess_path = \"{}\"\n", path.display());
    let (running, http, stdout) = start("file", &config, up);
    let lines = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map(|t| t.lines().map(String::from).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let wait_for = |p: &std::path::Path, n: usize| {
        for _ in 0..200 {
            if lines(p).len() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("{} has {:?}", p.display(), lines(p));
    };
    seen_ids(http, "X-Request-ID: before\r\n");
    wait_for(&path, 1);
    std::fs::rename(&path, &rotated).unwrap();
    Command::new("kill")
        .args(["-USR1", &running.0.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    seen_ids(http, "X-Request-ID: after\r\n");
    wait_for(&path, 1);
    assert!(running_alive(&running), "SIGUSR1 does not end the process");
    let old = lines(&rotated);
    let new = lines(&path);
    assert_eq!(old.len(), 1, "{old:?}");
    assert!(old[0].ends_with(" before"), "{old:?}");
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].ends_with(" after"), "{new:?}");
    assert!(stdout.try_recv().is_err(), "nothing on stdout with a file");
    drop(running);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
}

fn running_alive(r: &Running) -> bool {
    std::path::Path::new(&format!("/proc/{}", r.0.id())).exists()
}

#[test]
fn access_false_switches_the_access_log_off() {
    let up = echo_upstream();
    let (_running, http, log) = start("off", "[log]\naccess = false\n", up);
    seen_ids(http, "");
    assert!(
        log.recv_timeout(Duration::from_millis(500)).is_err(),
        "no access log line with log.access = false"
    );
}
