//! `timeouts.shutdown_delay`: after SIGTERM, `/readyz` fails at once while Sluice still
//! accepts and proxies new connections for the delay; then it drains and exits 0. This is
//! what lets a balancer health-checking `/readyz` take the node out before connections fail
//! (`lab/ha_lab.py` measures it through a director).
// The test measures a real process's timing against the wall clock.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice::demo::spawn_upstream;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.lines().next().unwrap_or("").to_string())
}

#[test]
fn readyz_fails_first_while_new_connections_are_still_served() {
    let up = spawn_upstream("A", "127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-test-{}-delay", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.yaml"),
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: t, namespace: default}}\n\
             spec:\n  ingressClassName: sluice\n  rules:\n  - host: app.test\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: app, port: {{number: 80}}}}}}}}]}}\n\
             ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
             addressType: IPv4\nports: [{{port: {}}}]\nendpoints: [{{addresses: [\"{}\"]}}]\n",
            up.addr.port(),
            up.addr.ip()
        ),
    )
    .unwrap();
    let config = dir.with_extension("toml");
    std::fs::write(&config, "[timeouts]\nshutdown_delay = \"1500ms\"\n").unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--manifests")
        .arg(&dir)
        .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--workers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (http, admin): (SocketAddr, SocketAddr) = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some(rest) = line.split_once("serving http on ").map(|(_, rest)| rest) {
            let mut words = rest.split_whitespace();
            let http = words.next().unwrap().parse().unwrap();
            let admin = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("admin="))
                .unwrap()
                .parse()
                .unwrap();
            break (http, admin);
        }
    };
    std::thread::spawn(move || for _ in lines {});
    // Ready once every worker has acknowledged the first snapshot, which may come just after
    // the "serving" line.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(admin, "x", "/readyz").unwrap() != "HTTP/1.1 200 OK" {
        assert!(Instant::now() < deadline, "/readyz never turned 200");
        std::thread::sleep(Duration::from_millis(20));
    }

    let sent = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    // /readyz turns 503 at once...
    let mut unready = false;
    while sent.elapsed() < Duration::from_millis(1000) {
        if get(admin, "x", "/readyz").unwrap() == "HTTP/1.1 503 Service Unavailable" {
            unready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(unready, "/readyz still 200 after SIGTERM");
    // ...while new connections are still proxied, until the delay ends.
    assert_eq!(get(http, "app.test", "/").unwrap(), "HTTP/1.1 200 OK");
    assert!(sent.elapsed() < Duration::from_millis(1500));
    // Then the listeners close and the process exits 0.
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(sent.elapsed() >= Duration::from_millis(1500));
    assert!(
        get(http, "app.test", "/").is_err(),
        "still accepting after the drain"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&config);
}
