//! The `sluice` binary as a user runs it: `check`, config errors, `run` with a manifests
//! directory, bodies of 100 MiB both ways in bounded memory, and a graceful SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice::demo::spawn_upstream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn manifests(upstream: SocketAddr) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: app.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
        upstream.port(),
        upstream.ip()
    )
}

/// Starts `sluice run` and returns it with the address it serves on.
fn run_sluice(dir: &std::path::Path, extra: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["run", "--manifests"])
        .arg(dir)
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some(rest) = line.split_once("serving http on ").map(|(_, rest)| rest) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed mid-head");
        buf.push(byte[0]);
    }
    String::from_utf8(buf).unwrap()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn sigterm(child: &Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
}

#[test]
fn check_prints_routes_and_rejections() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = temp_dir("check");
    std::fs::write(dir.join("app.yaml"), manifests(up.addr)).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--manifests"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("app.test / Prefix -> default/app:80 (1 endpoints)"),
        "{stdout}"
    );
    // A broken file: named with its line, and the command fails.
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: 7}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--manifests"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("bad.yaml:4: Service:"), "{stderr}");
}

#[test]
fn config_errors_name_file_line_and_field() {
    let dir = temp_dir("config");
    let cfg = dir.join("sluice.toml");
    std::fs::write(
        &cfg,
        "[listen]\nhttp = \"127.0.0.1:8080\"\n\n[limits]\nmax_headers = 900\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr
            .contains("sluice.toml:5:15: limits.max_headers: must be between 1 and 256 (got 900)"),
        "{stderr}"
    );
    std::fs::write(&cfg, "[timeouts]\nkeep_alive = \"10 parsecs\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("sluice.toml:2:14: timeouts.keep_alive:"),
        "{stderr}"
    );
    std::fs::write(&cfg, "[listen]\nhtp = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("sluice.toml:2:1: unknown field `htp`"),
        "{stderr}"
    );
}

#[test]
fn the_example_config_is_the_default() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/sluice.toml");
    let parsed = sluice::config::Config::from_file(&path).unwrap();
    assert_eq!(parsed, sluice::config::Config::default());
}

#[test]
fn hundred_mib_bodies_stream_both_ways_in_bounded_memory() {
    const SIZE: usize = 100 << 20;
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = temp_dir("big");
    std::fs::write(dir.join("app.yaml"), manifests(up.addr)).unwrap();
    let (mut child, addr) = run_sluice(&dir, &[]);
    let baseline = peak_rss_kib(child.id());

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // Upload: 100 MiB with Content-Length.
    write!(
        s,
        "PUT /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {SIZE}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'u'; 1 << 20];
    for _ in 0..100 {
        s.write_all(&chunk).unwrap();
    }
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = String::new();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    (&mut s).take(len as u64).read_to_string(&mut body).unwrap();
    assert_eq!(body, format!("A PUT /up body={SIZE}\n"));

    // Upload again, chunked (1 MiB chunks): decoded and re-framed on the way.
    write!(
        s,
        "POST /up-chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    for _ in 0..100 {
        write!(s, "{:x}\r\n", chunk.len()).unwrap();
        s.write_all(&chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = String::new();
    (&mut s).take(len as u64).read_to_string(&mut body).unwrap();
    assert_eq!(body, format!("A POST /up-chunked body={SIZE}\n"));

    // Download: 100 MiB, read slowly at first so backpressure has to hold it.
    write!(s, "GET /big/{SIZE} HTTP/1.1\r\nHost: app.test\r\n\r\n").unwrap();
    let head = read_head(&mut s);
    assert!(head.contains(&format!("Content-Length: {SIZE}")), "{head}");
    std::thread::sleep(Duration::from_millis(500));
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while got < SIZE {
        let n = s.read(&mut buf[..(SIZE - got).min(1 << 16)]).unwrap();
        assert!(n > 0, "truncated at {got}");
        got += n;
    }
    let peak = peak_rss_kib(child.id());
    assert!(
        peak < baseline + 32 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB while streaming 300 MiB"
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_refuses_new_ones() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = temp_dir("term");
    std::fs::write(dir.join("app.yaml"), manifests(up.addr)).unwrap();
    let (mut child, addr) = run_sluice(&dir, &[]);
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(slow, "GET /slow/1500 HTTP/1.1\r\nHost: app.test\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let idle = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    sigterm(&child);
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused while the slow request drains.
    assert!(
        TcpStream::connect(addr).is_err(),
        "listener still open after SIGTERM"
    );
    let head = read_head(&mut slow);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    drop(idle);
}

#[test]
fn help_version_and_bad_flags_behave_as_clap_users_expect() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for sub in ["run", "check", "demo", "help"] {
        assert!(help.contains(&format!("  {sub} ")), "{help}");
    }
    let out = Command::new(BIN)
        .args(["help", "run"])
        .env_remove("POD_NAMESPACE")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--manifests <DIR>",
        "--http <ADDR>",
        "--log-format",
        "[env: POD_NAMESPACE=]",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BIN).args(["run", "--bogus"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("unexpected argument '--bogus'"), "{stderr}");
    let out = Command::new(BIN)
        .args(["run", "--http", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("invalid value 'nope' for '--http <ADDR>'"),
        "{stderr}"
    );
}

#[test]
fn json_logs_carry_the_rejections_fields() {
    let dir = temp_dir("json-log");
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: shop}\n\
         spec:\n  ingressClassName: sluice\n  rules:\n  - host: app.test\n    http: {paths: [{path: nope, pathType: Prefix, backend: {service: {name: app, port: {number: 80}}}}]}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--log-format", "json", "--manifests"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let event: serde_json::Value = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "Ingress")
        .unwrap_or_else(|| panic!("no JSON rejection event in {stderr}"));
    assert_eq!(event["level"], "WARN", "{event}");
    assert_eq!(event["namespace"], "shop", "{event}");
    assert_eq!(event["name"], "web", "{event}");
    assert!(event["field"].as_str().unwrap().contains("path"), "{event}");
    assert!(!event["reason"].as_str().unwrap().is_empty(), "{event}");
    // --log-level error hides the warning.
    let out = Command::new(BIN)
        .args(["check", "--log-level", "error", "--manifests"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!stderr.contains("rejected: Ingress"), "{stderr}");
    assert!(
        stderr.contains("1 object(s) or field(s) rejected"),
        "{stderr}"
    );
}

/// Values that do not parse are typed errors (a variant per mistake) whose text keeps what
/// was given; the config file wraps them with file, line and field.
#[test]
fn value_errors_are_typed_and_keep_their_text() {
    use sluice::config::{Config, EngineKind, ValueError, parse_duration, parse_service_ref};
    use sluice::control::watch::{BadNamespacedName, parse_namespaced_name};

    assert_eq!(
        parse_duration("10x"),
        Err(ValueError::DurationUnit("10x".into()))
    );
    assert_eq!(
        parse_duration("soon").unwrap_err().to_string(),
        "expected a duration like \"10s\" or \"500ms\" (got \"soon\")"
    );
    assert_eq!(
        EngineKind::parse("dpdk"),
        Err(ValueError::Engine("dpdk".into()))
    );
    assert_eq!(
        parse_service_ref("web:80"),
        Err(ValueError::ServiceRef("web:80".into()))
    );
    assert_eq!(
        parse_namespaced_name("a/b/c"),
        Err(BadNamespacedName("a/b/c".into()))
    );
    let e = Config::parse("[timeouts]\nshutdown_grace = \"3 weeks\"\n", "sluice.toml").unwrap_err();
    assert_eq!((e.file.as_str(), e.line), ("sluice.toml", 2));
    assert_eq!(e.field, "timeouts.shutdown_grace");
    assert!(e.message.contains("\"3 weeks\""), "{e}");
}
