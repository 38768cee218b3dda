//! `X-Request-ID` and the access log end to end through `sluice run`: a client's id reaches
//! the upstream as it was sent; without one, Sluice makes a 32-hex-digit id, a different one
//! per request; a client cannot smuggle a second one next to it. Each request's access log
//! line (stdout; text and JSON) carries the same id and the request's fields, checked field
//! by field. Also: the real client address (a trusted proxy's `X-Forwarded-For`, the PROXY
//! protocol over plain and TLS connections), sampling, the log switched off, and a log
//! destination nobody reads (lines dropped and counted, requests unharmed).

mod support;

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

/// An upstream that answers each request with the `X-Request-ID`, `X-Real-IP` and
/// `X-Forwarded-For` lines it received.
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
                        let lower = line.to_ascii_lowercase();
                        if lower.starts_with("x-request-id:")
                            || lower.starts_with("x-real-ip:")
                            || lower.starts_with("x-forwarded-for:")
                        {
                            ids.push(line.trim_end().to_string());
                        }
                    }
                    let body = ids.join("\n");
                    // One write: a response in pieces meets Nagle and delayed ACKs.
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = w.write_all(response.as_bytes());
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

/// Sends `request` on a new connection; the whole response.
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The upstream's body: the forwarding lines it saw.
fn seen(addr: SocketAddr, extra: &str) -> String {
    let out = exchange(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n"),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The upstream's body: the X-Request-ID lines it saw.
fn seen_ids(addr: SocketAddr, extra: &str) -> String {
    seen(addr, extra)
        .lines()
        .filter(|l| l.starts_with("X-Request-ID"))
        .collect::<Vec<_>>()
        .join("\n")
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
    let s = start_full(name, config_toml, up, true);
    (s.running, s.http, s.https, s.log)
}

struct Started {
    running: Running,
    http: SocketAddr,
    https: SocketAddr,
    admin: SocketAddr,
    /// The access log lines (empty when stdout is left unread).
    log: std::sync::mpsc::Receiver<String>,
}

/// `sluice run` with `config_toml` and one worker; with `read_stdout` false its stdout is a
/// pipe nobody reads (it fills up and blocks the logger).
fn start_full(name: &str, config_toml: &str, up: SocketAddr, read_stdout: bool) -> Started {
    let dir = std::env::temp_dir().join(format!("sluice-reqid-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("app.yaml"), manifests(up)).unwrap();
    // dead.test: a port nothing listens on (502).
    let dead_port = support::closed_port([127, 0, 0, 1].into()).port();
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
    let mut admin: Option<SocketAddr> = None;
    let https: SocketAddr = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some((_, rest)) = line.split_once("serving http on ") {
            http = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            admin = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("admin="))
                .and_then(|a| a.parse().ok());
        }
        if let Some((_, rest)) = line.split_once("serving https on ") {
            break rest.trim().parse().unwrap();
        }
    };
    let http = http.expect("http before https");
    std::thread::spawn(move || for _ in lines {});
    let (tx, rx) = std::sync::mpsc::channel();
    if read_stdout {
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    } else {
        // Held open, never read: the pipe fills up and the logger's writes block.
        std::thread::spawn(move || {
            let _held = stdout;
            std::thread::sleep(Duration::from_secs(3600));
        });
    }
    Started {
        running,
        http,
        https,
        admin: admin.expect("admin address"),
        log: rx,
    }
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
    let request = "GET /p?x=1 HTTP/1.1\r\nHost: app.test\r\nX-Request-ID: client-id-42\r\n\
                   User-Agent: test-agent/1\r\nReferer: http://r.test/\r\nConnection: close\r\n\r\n";
    let response = exchange(http, request);
    assert!(
        response.ends_with(
            "X-Forwarded-For: 127.0.0.1\nX-Real-IP: 127.0.0.1\nX-Request-ID: client-id-42"
        ),
        "{response}"
    );
    // Its access log line, field by field (text: ingress-nginx's upstreaminfo order).
    let line = next_line(&log);
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 23, "{line}");
    assert_eq!(f[0], "127.0.0.1", "{line}"); // the real client
    assert_eq!(&f[1..3], ["-", "-"], "{line}");
    // [04/Dec/2026:20:10:00 +0000]
    assert!(f[3].starts_with('[') && f[3].len() == 21, "{line}");
    assert_eq!(f[4], "+0000]", "{line}");
    assert_eq!(&f[5..8], ["\"GET", "/p?x=1", "HTTP/1.1\""], "{line}");
    assert_eq!(f[8], "200", "{line}");
    assert_eq!(f[9], response.len().to_string(), "bytes out: {line}");
    assert_eq!(f[10], "\"http://r.test/\"", "{line}");
    assert_eq!(f[11], "\"test-agent/1\"", "{line}");
    assert_eq!(f[12], request.len().to_string(), "bytes in: {line}");
    assert!(f[13].parse::<f64>().is_ok(), "{line}");
    assert_eq!(f[14], "[default/t/app:80]", "{line}");
    assert_eq!(f[15], "[]", "{line}");
    assert_eq!(f[16], up.to_string(), "{line}");
    let body = response.split_once("\r\n\r\n").unwrap().1;
    assert!(
        f[17].parse::<usize>().unwrap() > body.len(),
        "upstream bytes (head and body): {line}"
    );
    assert!(f[18].parse::<f64>().is_ok(), "{line}");
    assert_eq!(f[19], "200", "upstream status: {line}");
    assert_eq!(f[20], "client-id-42", "{line}");
    assert_eq!(f[21], "app.test", "{line}");
    assert!(f[22].starts_with("127.0.0.1:"), "the peer: {line}");
    // A 404 of ours: no route, no upstream fields.
    let out = exchange(
        http,
        "GET /x HTTP/1.1\r\nHost: nowhere.test\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    let line = next_line(&log);
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[8], "404", "{line}");
    assert_eq!(f[9], out.len().to_string(), "{line}");
    assert_eq!(&f[14..21], ["[-]", "[]", "-", "-", "-", "-", "-"], "{line}");
    assert_eq!(f[21], "nowhere.test", "{line}");
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
        assert_eq!(
            line.split(' ').nth(20),
            id.strip_prefix("X-Request-ID: "),
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
    assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    assert_eq!(v["scheme"], "http", "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["host"], "app.test", "{v}");
    assert_eq!(v["path"], "/", "{v}");
    assert_eq!(v["query"], serde_json::Value::Null, "{v}");
    assert_eq!(v["protocol"], "HTTP/1.1", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    let sent = "GET / HTTP/1.1\r\nHost: app.test\r\nX-Request-ID: j-1\r\nConnection: close\r\n\r\n";
    assert_eq!(v["bytes_in"], sent.len(), "{v}");
    assert!(v["bytes_out"].as_u64().unwrap() > 60, "{v}");
    assert_eq!(v["referer"], serde_json::Value::Null, "{v}");
    assert_eq!(v["user_agent"], serde_json::Value::Null, "{v}");
    assert!(v["request_time"].as_f64().is_some(), "{v}");
    assert_eq!(v["route"], "default/t/app:80", "{v}");
    assert_eq!(v["upstream_addr"], up.to_string(), "{v}");
    assert_eq!(v["upstream_status"], 200, "{v}");
    assert!(v["upstream_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["upstream_response_time"].as_f64().is_some(), "{v}");
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
    assert_eq!(v["query"], "q=1", "{v}");
    assert_eq!(v["bytes_out"], out.len(), "{v}");
    for key in [
        "route",
        "upstream_addr",
        "upstream_status",
        "upstream_bytes",
        "upstream_response_time",
    ] {
        assert_eq!(v[key], serde_json::Value::Null, "{key}: {v}");
    }
    // A 502: the upstream refused the connection; the address tried is logged.
    let out = get(http, "dead.test", "/d");
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["status"], 502, "{v}");
    assert_eq!(v["host"], "dead.test", "{v}");
    assert_eq!(v["route"], "default/dead/dead:80", "{v}");
    assert!(
        v["upstream_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "the address tried: {v}"
    );
    assert_eq!(v["upstream_status"], serde_json::Value::Null, "ours: {v}");
    assert_eq!(v["request_id"].as_str().unwrap().len(), 32, "{v}");
    // A 504: the upstream took the request and never answered.
    let out = get(http, "slow.test", "/s");
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["status"], 504, "{v}");
    assert_eq!(v["host"], "slow.test", "{v}");
    assert!(v["request_time"].as_f64().unwrap() >= 0.3, "{v}");
    assert!(v["upstream_response_time"].as_f64().unwrap() >= 0.3, "{v}");
    assert_eq!(v["upstream_status"], serde_json::Value::Null, "ours: {v}");
    assert_eq!(v["route"], "default/slow/slow:80", "{v}");
    // Over TLS (the self-signed default certificate), with the client's id.
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-H", "X-Request-ID: tls-7"])
        .arg("--resolve")
        .arg(format!("app.test:{}:127.0.0.1", https.port()))
        .arg(format!("https://app.test:{}/t", https.port()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with("\nX-Request-ID: tls-7"),
        "{out:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["scheme"], "https", "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["path"], "/t", "{v}");
    assert_eq!(v["request_id"], "tls-7", "{v}");
    assert_eq!(v["upstream_status"], 200, "{v}");
    assert!(
        v["user_agent"].as_str().unwrap().starts_with("curl/"),
        "{v}"
    );
    // Head and body (before TLS); curl printed the body.
    assert!(
        v["bytes_out"].as_u64().unwrap() > out.stdout.len() as u64 + 30,
        "{v}"
    );
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
    assert!(old[0].contains(" before "), "{old:?}");
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains(" after "), "{new:?}");
    assert!(stdout.try_recv().is_err(), "nothing on stdout with a file");
    drop(running);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&rotated);
}

/// The `[http] trusted_proxies` list decides whether a peer's `X-Forwarded-For` is believed:
/// from a trusted peer (loopback here) the right-most untrusted address is the client, in the
/// log and in `X-Real-IP`; from an untrusted one it is ignored. `X-Forwarded-For` upstream
/// keeps the chain and ends with the peer either way.
#[test]
fn x_forwarded_for_names_the_client_only_from_a_trusted_peer() {
    let up = echo_upstream();
    let xff = "X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n";
    let (_trusting, http, log) = start(
        "xff-trusted",
        "[log]\nformat = \"json\"\n[http]\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n",
        up,
    );
    let body = seen(http, xff);
    assert!(body.contains("X-Real-IP: 203.0.113.9"), "{body}");
    assert!(
        body.contains("X-Forwarded-For: 198.51.100.1, 203.0.113.9, 127.0.0.1"),
        "{body}"
    );
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["client"], "203.0.113.9", "{v}");
    assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");

    let (_untrusting, http, log) = start(
        "xff-untrusted",
        "[log]\nformat = \"json\"\n[http]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        up,
    );
    let body = seen(http, xff);
    assert!(body.contains("X-Real-IP: 127.0.0.1"), "{body}");
    let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
    assert_eq!(v["client"], "127.0.0.1", "{v}");
}

/// `[listen] proxy_protocol = true`: the PROXY header's source is the client (log, the peer
/// field, `X-Real-IP`, the end of `X-Forwarded-For`), over plain HTTP (v1 and v2, written by
/// hand) and TLS (curl's `--haproxy-protocol`); a connection without the header is closed
/// unanswered, and so is one with a malformed header or one that does not finish in time.
#[test]
fn the_proxy_protocol_names_the_client_and_is_required() {
    let up = echo_upstream();
    let started = start_full(
        "proxy",
        "[log]\nformat = \"json\"\n[listen]\nproxy_protocol = true\n[timeouts]\nrequest_head = \"1s\"\n",
        up,
        true,
    );
    let (http, https, log) = (started.http, started.https, &started.log);
    let request = "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let out = exchange(
        http,
        &format!("PROXY TCP4 203.0.113.5 192.0.2.1 40000 80\r\n{request}"),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("X-Real-IP: 203.0.113.5"), "{out}");
    assert!(out.contains("X-Forwarded-For: 203.0.113.5"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&next_line(log)).unwrap();
    assert_eq!(v["client"], "203.0.113.5", "{v}");
    assert_eq!(v["peer"], "203.0.113.5:40000", "{v}");
    assert_eq!(
        v["bytes_in"],
        request.len(),
        "the header is not request bytes: {v}"
    );

    // Version 2, IPv6, in two writes.
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    header.extend_from_slice(
        &"2001:db8::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    header.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    header.extend_from_slice(&[0x9c, 0x40, 0, 80]);
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&header[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(&header[10..]).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains("X-Real-IP: 2001:db8::5"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&next_line(log)).unwrap();
    assert_eq!(v["client"], "2001:db8::5", "{v}");
    assert_eq!(v["peer"], "[2001:db8::5]:40000", "{v}");

    // TLS behind the header.
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--haproxy-protocol"])
        .arg("--resolve")
        .arg(format!("app.test:{}:127.0.0.1", https.port()))
        .arg(format!("https://app.test:{}/t", https.port()))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    // curl states its own connection's addresses: loopback.
    assert!(body.contains("X-Real-IP: 127.0.0.1"), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&next_line(log)).unwrap();
    assert_eq!(v["scheme"], "https", "{v}");
    assert_eq!(v["status"], 200, "{v}");

    // No header, or a broken one: closed without a response, nothing logged.
    for bad in [
        request.to_string(),
        format!("PROXY TCP4 203.0.113.5 192.0.2.1 040000 80\r\n{request}"),
        format!("PROXY TCP6 203.0.113.5 192.0.2.1 4 80\r\n{request}"),
    ] {
        let out = exchange(http, &bad);
        assert_eq!(out, "", "{bad:?}");
    }
    let curl = Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .arg(format!("https://127.0.0.1:{}/", https.port()))
        .output()
        .unwrap();
    assert!(!curl.status.success(), "TLS without the header fails");
    // A header that never completes: closed after `timeouts.request_head`.
    let mut s = TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.5 ").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "{out:?}");
    assert!(log.recv_timeout(Duration::from_millis(300)).is_err());
    let metrics = exchange(
        started.admin,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let errors: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_proxy_protocol_errors_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(errors, 5, "{metrics}");
}

/// `log.access_sample = 0.25` logs one request in four (the 4th, 8th, ...: deterministic);
/// `log.access = false` logs none. Both still serve every request.
#[test]
fn sampling_logs_a_share_and_the_switch_turns_the_log_off() {
    let up = echo_upstream();
    let (_sampled, http, log) = start(
        "sampled",
        "[log]\nformat = \"json\"\naccess_sample = 0.25\n",
        up,
    );
    for i in 0..12 {
        seen(http, &format!("X-Request-ID: s-{i}\r\n"));
    }
    for want in ["s-3", "s-7", "s-11"] {
        let v: serde_json::Value = serde_json::from_str(&next_line(&log)).unwrap();
        assert_eq!(v["request_id"], want, "{v}");
    }
    assert!(log.recv_timeout(Duration::from_millis(300)).is_err());

    let (_off, http, log) = start("off", "[log]\naccess = false\n", up);
    for _ in 0..5 {
        seen(http, "");
    }
    assert!(
        log.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing is logged"
    );
}

/// The access log's destination blocks (stdout is a pipe nobody reads): the worker keeps
/// serving at full speed, the lines that do not fit are dropped and counted in
/// `sluice_access_log_dropped_lines_total`.
#[test]
#[allow(clippy::disallowed_methods)] // a test's own stopwatch
fn a_blocked_log_destination_drops_and_counts_lines_and_requests_go_on() {
    let up = echo_upstream();
    let started = start_full("flood", "[log]\nformat = \"json\"\n", up, false);
    // Keep-alive requests, many more lines than a pipe (64 KiB) and the logger's queue hold.
    let mut s = TcpStream::connect(started.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let begun = std::time::Instant::now();
    let n = 3000;
    s.set_nodelay(true).unwrap();
    for i in 0..n {
        let request = format!(
            "GET /{i} HTTP/1.1\r\nHost: app.test\r\nUser-Agent: {}\r\n\r\n",
            "f".repeat(2000)
        );
        s.write_all(request.as_bytes()).unwrap();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "response {i}");
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
    }
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(30), "{n} requests took {took:?}");
    let metrics = exchange(
        started.admin,
        "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    let dropped = value("sluice_access_log_dropped_lines_total ");
    let written = value("sluice_access_log_written_lines_total ");
    assert!(dropped > 0, "dropped {dropped}, written {written}");
    // The pipe holds 64 KiB of ~2 KiB lines, the queue 64 buffers of 32 KiB: 6 MiB of lines
    // do not fit; the logger is stuck on its next write.
    assert!(written < 1000, "dropped {dropped}, written {written}");
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
