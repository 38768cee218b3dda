//! The admin server on its own thread (:10254 by default): `/healthz` (the process is alive),
//! `/readyz` (every worker serves a route snapshot), `/metrics` (Prometheus text, summed from
//! the per-worker counters, with per-worker labels) and `/routes` (the current route dump).
//! One request per connection; never on the data path.
//!
//! On an edge node the admin port is reachable from outside: the probe and scrape endpoints
//! answer everyone, `/routes` (hosts, Services, pod addresses) only loopback peers, or peers
//! that present the bearer token of [`AdminAccess::token_file`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::EngineState;
use crate::engine::metrics::WorkerMetrics;

pub struct AdminHandle {
    addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl AdminHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Who may read the endpoints that disclose the cluster (`/routes`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminAccess {
    /// A file holding the bearer token for peers that are not on loopback; `None`: loopback
    /// only. Read on every such request (a rotated Secret applies without a restart).
    pub token_file: Option<PathBuf>,
}

impl AdminAccess {
    /// Whether a request from `peer` with this `Authorization` value may read `/routes`.
    fn allows(&self, peer: SocketAddr, authorization: Option<&str>) -> bool {
        if peer.ip().is_loopback() {
            return true;
        }
        let (Some(file), Some(auth)) = (&self.token_file, authorization) else {
            return false;
        };
        let Some(given) = auth.trim().strip_prefix("Bearer ") else {
            return false;
        };
        match std::fs::read_to_string(file) {
            Ok(token) => {
                let token = token.trim();
                !token.is_empty() && constant_time_eq(token.as_bytes(), given.trim().as_bytes())
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the admin token file");
                false
            }
        }
    }
}

/// Compares without returning early on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Starts the admin server with `/routes` for loopback peers only.
pub fn start(addr: SocketAddr, state: Arc<EngineState>) -> io::Result<AdminHandle> {
    start_with(addr, state, AdminAccess::default())
}

pub fn start_with(
    addr: SocketAddr,
    state: Arc<EngineState>,
    access: AdminAccess,
) -> io::Result<AdminHandle> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("admin server cannot listen on {addr}: {e}"),
        )
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let thread = std::thread::Builder::new()
        .name("sluice-admin".into())
        .spawn(move || {
            while !state.stopping.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let _ = serve(stream, peer, &state, &access);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })?;
    Ok(AdminHandle { addr, thread })
}

fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &EngineState,
    access: &AdminAccess,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 2048];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let line = std::str::from_utf8(&buf[..len]).unwrap_or("");
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let authorization = line.split("\r\n").skip(1).find_map(|h| {
        let (name, value) = h.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then_some(value)
    });
    let (status, content_type, body) = match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" => {
            let ready = state
                .metrics
                .iter()
                .all(|m| m.serving.load(Ordering::Acquire));
            if ready {
                ("200 OK", "text/plain", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_string(),
                )
            }
        }
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics_text(state)),
        "/routes" if !access.allows(peer, authorization) => (
            "403 Forbidden",
            "text/plain",
            "forbidden: /routes answers loopback, or a bearer token (listen.admin_token_file)\n"
                .to_string(),
        ),
        "/routes" => {
            let dump = state
                .snapshot
                .read()
                .map(|s| s.to_string())
                .unwrap_or_default();
            ("200 OK", "text/plain", dump)
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nServer: sluice\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    Ok(())
}

/// Metric name, type, help, and how to read it from one worker's counters.
type Gauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerMetrics) -> i64,
);

/// Prometheus text exposition of every worker's counters.
pub fn metrics_text(state: &EngineState) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, values: &mut dyn Iterator<Item = (String, i64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in values {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
    let m = &state.metrics;
    family(
        "sluice_responses_total",
        "counter",
        "Completed exchanges by status class and worker.",
        &mut m.iter().enumerate().flat_map(|(w, m)| {
            (0..5).map(move |c| {
                (
                    format!("worker=\"{w}\",class=\"{}xx\"", c + 1),
                    m.responses[c].load(Ordering::Relaxed) as i64,
                )
            })
        }),
    );
    let simple: [Gauge; 9] = [
        (
            "sluice_tls_handshakes_full_total",
            "counter",
            "TLS handshakes completed in full.",
            |m| m.tls_full.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_tls_handshakes_resumed_total",
            "counter",
            "TLS handshakes completed by resumption (ticket or session id).",
            |m| m.tls_resumed.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_tls_handshakes_failed_total",
            "counter",
            "TLS handshakes that failed or timed out.",
            |m| m.tls_failed.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_connections_active",
            "gauge",
            "Open client connections.",
            |m| m.active.load(Ordering::Relaxed),
        ),
        (
            "sluice_connections_accepted_total",
            "counter",
            "Accepted client connections.",
            |m| m.accepted.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_upstream_connect_errors_total",
            "counter",
            "Failed upstream connects.",
            |m| m.upstream_connect_errors.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_client_bytes_received_total",
            "counter",
            "Bytes read from clients.",
            |m| m.bytes_in.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_client_bytes_sent_total",
            "counter",
            "Bytes written to clients.",
            |m| m.bytes_out.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_snapshot_version",
            "gauge",
            "Route snapshot version each worker serves.",
            |m| m.snapshot_version.load(Ordering::Relaxed) as i64,
        ),
    ];
    for (name, kind, help, get) in simple {
        family(
            name,
            kind,
            help,
            &mut m
                .iter()
                .enumerate()
                .map(|(w, m)| (format!("worker=\"{w}\""), get(m))),
        );
    }
    if let Ok(p) = state.publication.lock() {
        let _ = writeln!(
            out,
            "# HELP sluice_snapshots_published_total Route snapshots published to the workers."
        );
        let _ = writeln!(out, "# TYPE sluice_snapshots_published_total counter");
        let _ = writeln!(out, "sluice_snapshots_published_total {}", p.published);
        let _ = writeln!(
            out,
            "# HELP sluice_snapshots_unacknowledged_total Snapshots some worker did not take within 5 s."
        );
        let _ = writeln!(out, "# TYPE sluice_snapshots_unacknowledged_total counter");
        let _ = writeln!(
            out,
            "sluice_snapshots_unacknowledged_total {}",
            p.unacknowledged
        );
        let h = &p.propagation_us;
        let _ = writeln!(
            out,
            "# HELP sluice_snapshot_propagation_seconds From a source change to every worker serving it."
        );
        let _ = writeln!(out, "# TYPE sluice_snapshot_propagation_seconds summary");
        for q in [0.5, 0.9, 0.99, 1.0] {
            let v = if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            };
            let _ = writeln!(
                out,
                "sluice_snapshot_propagation_seconds{{quantile=\"{q}\"}} {}",
                v as f64 / 1e6
            );
        }
        let _ = writeln!(out, "sluice_snapshot_propagation_seconds_count {}", h.len());
    }
    if let Ok(extra) = state.extra_metrics.lock() {
        for f in extra.iter() {
            f(&mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::AdminAccess;

    #[test]
    fn routes_need_loopback_or_the_token_from_the_file() {
        let local = "127.0.0.1:5000".parse().unwrap();
        let local6 = "[::1]:5000".parse().unwrap();
        let edge = "203.0.113.7:5000".parse().unwrap();
        let closed = AdminAccess::default();
        assert!(closed.allows(local, None));
        assert!(closed.allows(local6, None));
        assert!(!closed.allows(edge, None));
        assert!(!closed.allows(edge, Some(" Bearer anything")));

        let file = std::env::temp_dir().join(format!("sluice-admin-token-{}", std::process::id()));
        std::fs::write(&file, "s3cret\n").unwrap();
        let open = AdminAccess {
            token_file: Some(file.clone()),
        };
        assert!(open.allows(edge, Some(" Bearer s3cret")));
        assert!(!open.allows(edge, Some(" Bearer s3cre")));
        assert!(!open.allows(edge, Some(" Basic s3cret")));
        assert!(!open.allows(edge, None));
        // Rotated: the new token applies at once, the old one no longer.
        std::fs::write(&file, "rotated").unwrap();
        assert!(!open.allows(edge, Some(" Bearer s3cret")));
        assert!(open.allows(edge, Some(" Bearer rotated")));
        // An empty or missing file opens nothing.
        std::fs::write(&file, "\n").unwrap();
        assert!(!open.allows(edge, Some(" Bearer ")));
        std::fs::remove_file(&file).unwrap();
        assert!(!open.allows(edge, Some(" Bearer rotated")));
    }
}
