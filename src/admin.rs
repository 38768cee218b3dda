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
use crate::engine::metrics::{BUCKETS_US, Histogram, HistogramValues, WorkerMetrics};

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

/// Reads one of a worker's histograms.
type HistogramOf = fn(&WorkerMetrics) -> &Histogram;

/// Upper bounds (µs) of the propagation histogram's buckets (finer than request latency:
/// a change usually reaches every core in well under a millisecond).
const PROPAGATION_BUCKETS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000,
];

/// Prometheus text exposition (format 0.0.4), one family at a time: `# HELP`, `# TYPE`,
/// then its samples. Histograms get cumulative `_bucket{le}` lines, `_sum` and `_count`.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write as _;
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        use std::fmt::Write as _;
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// One histogram's samples: `per_bucket` counts (not cumulative) for each bound in µs and
    /// a last one for +Inf; `sum_us` in µs.
    fn histogram(
        &mut self,
        name: &str,
        labels: &str,
        bounds_us: &[u64],
        per_bucket: &[u64],
        sum_us: u64,
    ) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, n) in per_bucket.iter().enumerate() {
            cumulative += n;
            let le = match bounds_us.get(i) {
                Some(us) => (*us as f64 / 1e6).to_string(),
                None => "+Inf".to_string(),
            };
            self.sample(
                &format!("{name}_bucket"),
                &format!("{labels}{sep}le=\"{le}\""),
                cumulative,
            );
        }
        self.sample(&format!("{name}_sum"), labels, sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, cumulative);
    }

    fn latency(&mut self, name: &str, labels: &str, v: &HistogramValues) {
        self.histogram(name, labels, &BUCKETS_US, &v.counts, v.sum_us);
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// A label value as the text format wants it (`\\`, `\"` and `\n` escaped).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `sluice_ingress_requests_total{namespace, ingress, service, class}` summed over the workers
/// (slots claimed twice for one route are summed too), `ingress="other"` past the cap, and how
/// many requests went there. A worker names a route `namespace/ingress/service:port`, or
/// `namespace/service:port` for a default backend without an Ingress (`ingress=""`).
fn route_series(x: &mut Exposition, m: &[std::sync::Arc<WorkerMetrics>]) {
    let Some(first) = m.first() else {
        return;
    };
    let names = &first.backends.names;
    let mut by_name: std::collections::BTreeMap<&str, [u64; 5]> = Default::default();
    let mut other = [0u64; 5];
    for wm in m {
        for slot in 0..names.cap() {
            let Some(name) = names.name(slot) else {
                continue;
            };
            let counts = wm.backends.read(slot);
            let row = by_name.entry(name).or_default();
            for (a, b) in row.iter_mut().zip(counts) {
                *a += b;
            }
        }
        for (a, b) in other.iter_mut().zip(wm.backends.read(wm.backends.other())) {
            *a += b;
        }
    }
    let name = "sluice_ingress_requests_total";
    x.family(
        name,
        "counter",
        "Completed requests by Ingress, Service port and status class; past the cap (log.backend_metrics_cap) routes share ingress=\"other\".",
    );
    let labels = |route: &str| {
        let (namespace, rest) = route.split_once('/').unwrap_or(("", route));
        let (ingress, service) = rest.split_once('/').unwrap_or(("", rest));
        format!(
            "namespace=\"{}\",ingress=\"{}\",service=\"{}\"",
            label_value(namespace),
            label_value(ingress),
            label_value(service)
        )
    };
    let rows = by_name
        .iter()
        .map(|(n, c)| (labels(n), c))
        .chain(std::iter::once((
            "namespace=\"\",ingress=\"other\",service=\"\"".to_string(),
            &other,
        )));
    for (route, counts) in rows {
        for (c, class) in CLASSES.iter().enumerate() {
            x.sample(name, &format!("{route},class=\"{class}\""), counts[c]);
        }
    }
    x.family(
        "sluice_ingress_series_overflow_requests_total",
        "counter",
        "Requests counted under ingress=\"other\" because every per-route series was taken.",
    );
    x.sample(
        "sluice_ingress_series_overflow_requests_total",
        "",
        other.iter().sum::<u64>(),
    );
}

/// Prometheus text exposition of every worker's counters, read and summed at scrape time.
pub fn metrics_text(state: &EngineState) -> String {
    let mut x = Exposition { out: String::new() };
    let m = &state.metrics;
    x.family(
        "sluice_responses_total",
        "counter",
        "Completed exchanges by status class and worker.",
    );
    for (w, wm) in m.iter().enumerate() {
        for (c, class) in CLASSES.iter().enumerate() {
            x.sample(
                "sluice_responses_total",
                &format!("worker=\"{w}\",class=\"{class}\""),
                wm.responses[c].load(Ordering::Relaxed),
            );
        }
    }
    // Request duration: per status class over all workers, and per worker.
    let per_worker: Vec<[HistogramValues; 5]> = m
        .iter()
        .map(|wm| std::array::from_fn(|c| wm.request_duration[c].read()))
        .collect();
    x.family(
        "sluice_request_duration_seconds",
        "histogram",
        "From the request's first byte to its response's completion, by status class (all workers).",
    );
    for (c, class) in CLASSES.iter().enumerate() {
        let mut all = HistogramValues::default();
        for w in &per_worker {
            all.merge(&w[c]);
        }
        x.latency(
            "sluice_request_duration_seconds",
            &format!("class=\"{class}\""),
            &all,
        );
    }
    x.family(
        "sluice_worker_request_duration_seconds",
        "histogram",
        "From the request's first byte to its response's completion, by worker and status class.",
    );
    for (w, hs) in per_worker.iter().enumerate() {
        for (c, class) in CLASSES.iter().enumerate() {
            x.latency(
                "sluice_worker_request_duration_seconds",
                &format!("worker=\"{w}\",class=\"{class}\""),
                &hs[c],
            );
        }
    }
    let upstream: [(&str, &str, HistogramOf); 2] = [
        (
            "sluice_upstream_connect_duration_seconds",
            "Connects of new upstream connections, from the connect to established (all workers).",
            |wm| &wm.upstream_connect,
        ),
        (
            "sluice_upstream_response_duration_seconds",
            "From asking for an upstream connection (pooled or new) to the response's completion (all workers).",
            |wm| &wm.upstream_response,
        ),
    ];
    for (name, help, get) in upstream {
        let mut all = HistogramValues::default();
        for wm in m.iter() {
            all.merge(&get(wm).read());
        }
        x.family(name, "histogram", help);
        x.latency(name, "", &all);
    }
    let simple: [Gauge; 19] = [
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
            "sluice_tls_handshakes_timed_out_total",
            "counter",
            "Of the failed TLS handshakes, those that did not finish in time (the others broke the protocol).",
            |m| m.tls_failed_timeout.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_proxy_protocol_errors_total",
            "counter",
            "Connections closed for a missing, malformed or late PROXY protocol header.",
            |m| m.proxy_protocol_errors.load(Ordering::Relaxed) as i64,
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
            "sluice_upstream_queued_total",
            "counter",
            "Requests that waited for an upstream connection (endpoint at max_connections_per_endpoint).",
            |m| m.upstream_queued.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_upstream_queue_timeouts_total",
            "counter",
            "Requests whose wait for an upstream connection ran into the connect timeout.",
            |m| m.upstream_queue_timeouts.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_auth_requests_total",
            "counter",
            "auth-url subrequests sent to auth services.",
            |m| m.auth_requests.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_auth_cache_hits_total",
            "counter",
            "auth-url decisions taken from a worker's cache of answers.",
            |m| m.auth_cache_hits.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_auth_errors_total",
            "counter",
            "auth-url subrequests without a usable answer (connect error, reset, bad head).",
            |m| m.auth_errors.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_mirror_requests_total",
            "counter",
            "mirror-target copies sent.",
            |m| m.mirror_sent.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_mirror_dropped_total",
            "counter",
            "mirror-target copies dropped (too many in flight, or a body not at hand whole).",
            |m| m.mirror_dropped.load(Ordering::Relaxed) as i64,
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
            "sluice_client_bytes_passed_total",
            "counter",
            "Of the bytes written to clients: response body bytes moved from the upstream socket to the client's by the engine, past the connection's buffers (spliced, or relayed without a copy).",
            |m| m.bytes_passed.load(Ordering::Relaxed) as i64,
        ),
        (
            "sluice_snapshot_version",
            "gauge",
            "Route snapshot version each worker serves.",
            |m| m.snapshot_version.load(Ordering::Relaxed) as i64,
        ),
    ];
    for (name, kind, help, get) in simple {
        x.family(name, kind, help);
        for (w, wm) in m.iter().enumerate() {
            x.sample(name, &format!("worker=\"{w}\""), get(wm));
        }
    }
    if let Ok(p) = state.publication.lock() {
        x.family(
            "sluice_snapshots_published_total",
            "counter",
            "Route snapshots published to the workers.",
        );
        x.sample("sluice_snapshots_published_total", "", p.published);
        x.family(
            "sluice_snapshots_unacknowledged_total",
            "counter",
            "Snapshots some worker did not take within 5 s.",
        );
        x.sample(
            "sluice_snapshots_unacknowledged_total",
            "",
            p.unacknowledged,
        );
        let h = &p.propagation_us;
        let mut per_bucket = [0u64; PROPAGATION_BUCKETS_US.len() + 1];
        let mut below = 0u64;
        for (i, bound) in PROPAGATION_BUCKETS_US.iter().enumerate() {
            let upto = if h.is_empty() {
                0
            } else {
                h.count_between(0, *bound)
            };
            per_bucket[i] = upto.saturating_sub(below);
            below = below.max(upto);
        }
        per_bucket[PROPAGATION_BUCKETS_US.len()] = h.len().saturating_sub(below);
        // hdrhistogram keeps no exact sum: its mean (3 significant digits) times the count.
        let sum_us = (h.mean() * h.len() as f64).round() as u64;
        x.family(
            "sluice_snapshot_propagation_seconds",
            "histogram",
            "From a source change to every worker serving it.",
        );
        x.histogram(
            "sluice_snapshot_propagation_seconds",
            "",
            &PROPAGATION_BUCKETS_US,
            &per_bucket,
            sum_us,
        );
        // The same measurements as exact quantiles (hdrhistogram), for the churn benchmarks.
        let name = "sluice_snapshot_propagation_quantile_seconds";
        x.family(
            name,
            "summary",
            "From a source change to every worker serving it (quantiles).",
        );
        for q in [0.5, 0.9, 0.99, 1.0] {
            let v = if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            };
            x.sample(name, &format!("quantile=\"{q}\""), v as f64 / 1e6);
        }
        x.sample(&format!("{name}_sum"), "", sum_us as f64 / 1e6);
        x.sample(&format!("{name}_count"), "", h.len());
    }
    route_series(&mut x, m);
    let mut out = x.out;
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
