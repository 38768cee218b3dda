//! A `sluice run` process for end-to-end tests: manifests and a config written to a fresh
//! directory, listeners on loopback ephemeral ports, the HTTP address read from its log line,
//! killed when dropped. One starter, so a change in how Sluice announces itself is followed
//! in one place.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A running `sluice run`; killed when dropped.
pub struct Sluice {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `sluice run` with `workers` workers over the manifest `files` (file name, YAML), and
/// `config` (TOML) after request-head and body timeouts of 30 s, so that an answer within a
/// test client's few seconds is never one of those timeouts. `name` keeps the directories of
/// tests running at the same time apart.
pub fn start(name: &str, files: &[(&str, &str)], config: &str, workers: u32) -> Sluice {
    start_with(name, files, config, workers, &[])
}

/// [`start`] with more command-line flags.
pub fn start_with(
    name: &str,
    files: &[(&str, &str)],
    config: &str,
    workers: u32,
    flags: &[&str],
) -> Sluice {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    for (file, yaml) in files {
        std::fs::write(manifests.join(file), yaml).unwrap();
    }
    let config_path = dir.join("sluice.toml");
    std::fs::write(
        &config_path,
        format!("[timeouts]\nrequest_head = \"30s\"\nbody_idle = \"30s\"\n{config}"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--manifests"])
        .arg(&manifests)
        .arg("--config")
        .arg(&config_path)
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            &workers.to_string(),
        ])
        .args(flags)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("sluice exited early").unwrap();
        if let Some((_, rest)) = line.split_once("serving http on ") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Sluice { child, addr }
}

/// A parsed answer: status, header fields (names lower-cased) and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first field named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// How many fields are named `name` (lower case).
    pub fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
}

impl Sluice {
    /// One request (`method target`, `Host`, `extra` fields, each ending in CRLF) on a fresh
    /// connection that asks to be closed; the whole answer, parsed.
    pub fn send(&self, method: &str, target: &str, host: &str, extra: &str) -> Answer {
        let mut c = TcpStream::connect(self.addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        c.write_all(
            format!(
                "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        Answer {
            status,
            headers,
            body: body.to_string(),
        }
    }
}
