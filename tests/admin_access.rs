//! The admin port on an edge node: `/healthz`, `/readyz` and `/metrics` answer any peer;
//! `/routes` answers loopback peers, and other peers only with the bearer token of
//! `listen.admin_token_file`. The binary runs in a network namespace made by the test
//! (`s15-<pid>`) with a veth interface whose address is the non-loopback peer.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const EDGE_IP: &str = "10.115.0.1";

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespace and the Sluice in it; dropping kills Sluice and deletes the namespace.
struct Edge {
    ns: String,
    child: Option<Child>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// `curl` inside the namespace: (status code, body).
fn curl(ns: &str, url: &str, token: Option<&str>) -> (String, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5"])
        .args(["-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_string(), body.to_string())
}

#[test]
fn routes_answer_loopback_or_a_bearer_token_and_probes_answer_everyone() {
    let ns = format!("s15-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    ip(&["netns", "add", &ns]);
    let mut edge = Edge {
        ns: ns.clone(),
        child: None,
    };
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &ns, "link", "add", "edge0", "type", "veth", "peer", "name", "edge1",
    ]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{EDGE_IP}/24"),
        "dev",
        "edge0",
    ]);
    ip(&["-n", &ns, "link", "set", "edge0", "up"]);
    ip(&["-n", &ns, "link", "set", "edge1", "up"]);

    let dir = std::env::temp_dir().join(format!("sluice-s15-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "edge-secret\n").unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!("[listen]\nadmin_token_file = \"{}\"\n", token.display()),
    )
    .unwrap();

    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            BIN,
            "run",
            "--workers",
            "1",
            "--config",
        ])
        .arg(&config)
        .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
        .args(["--admin", "0.0.0.0:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    edge.child = Some(child);
    let admin: SocketAddr = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if line.contains("serving http on ") {
            break line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("admin="))
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let port = admin.port();
    let outside = |path: &str, token: Option<&str>| {
        curl(&ns, &format!("http://{EDGE_IP}:{port}{path}"), token)
    };

    // Probes and the scrape answer a peer that is not on loopback.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(outside(path, None).0, "200", "{path}");
    }
    // /routes: not without the token, not with a wrong one; yes with it, and on loopback.
    let (code, body) = outside("/routes", None);
    assert_eq!(code, "403", "{body}");
    assert_eq!(outside("/routes", Some("guess")).0, "403");
    assert_eq!(outside("/routes", Some("edge-secret")).0, "200");
    let (code, _) = curl(&ns, &format!("http://127.0.0.1:{port}/routes"), None);
    assert_eq!(code, "200");
    // A rotated Secret applies without a restart.
    std::fs::write(&token, "rotated\n").unwrap();
    assert_eq!(outside("/routes", Some("edge-secret")).0, "403");
    assert_eq!(outside("/routes", Some("rotated")).0, "200");
    drop(edge);
    let _ = std::fs::remove_dir_all(&dir);
}
