//! Active HTTP health checks (`sluice.dev/health-check-*`): a control-side thread GETs a
//! backend's health path on each of its endpoints, and an endpoint that fails `unhealthy`
//! checks in a row leaves the backend's rotation, by a new snapshot published through the
//! update pipeline (never through worker state), so every worker serves the same set; it comes
//! back after `healthy` good checks in a row. A new endpoint starts healthy (a rollout is never
//! blackholed while its first checks run), and when every endpoint of a backend is unhealthy
//! they all stay in rotation (panic: the upstream's own errors beat an empty rotation).
//!
//! The pure parts (annotation values, the per-endpoint state machine, the panic rule) come
//! first; the checker thread ([`Checker`], a current-thread tokio runtime with non-blocking
//! sockets, no DNS: endpoints are IP addresses) last.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::compile::ServiceRef;

/// The check path (absolute, e.g. `/healthz`); with it set, the backend is checked.
pub const HEALTH_CHECK_PATH: &str = "health-check-path";
/// Time between two checks of one endpoint (default 5s, 1s to 300s).
pub const HEALTH_CHECK_INTERVAL: &str = "health-check-interval";
/// Time one check may take, connect to status line (default 1s, below the interval).
pub const HEALTH_CHECK_TIMEOUT: &str = "health-check-timeout";
/// Good checks in a row that bring an unhealthy endpoint back (default 2).
pub const HEALTH_CHECK_HEALTHY_THRESHOLD: &str = "health-check-healthy-threshold";
/// Failed checks in a row that take a healthy endpoint out (default 3).
pub const HEALTH_CHECK_UNHEALTHY_THRESHOLD: &str = "health-check-unhealthy-threshold";
/// The port checked on each endpoint's address (default: the endpoint's own port).
pub const HEALTH_CHECK_PORT: &str = "health-check-port";
/// The statuses that pass: `200` or a range `200-399` (the default).
pub const HEALTH_CHECK_EXPECTED_STATUS: &str = "health-check-expected-status";

/// Every `sluice.dev/health-check-*` annotation (ours only: ingress-nginx has none).
pub const ANNOTATIONS: [&str; 7] = [
    HEALTH_CHECK_PATH,
    HEALTH_CHECK_INTERVAL,
    HEALTH_CHECK_TIMEOUT,
    HEALTH_CHECK_HEALTHY_THRESHOLD,
    HEALTH_CHECK_UNHEALTHY_THRESHOLD,
    HEALTH_CHECK_PORT,
    HEALTH_CHECK_EXPECTED_STATUS,
];

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY: u32 = 2;
pub const DEFAULT_UNHEALTHY: u32 = 3;
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);
pub const MIN_TIMEOUT: Duration = Duration::from_millis(100);
pub const MAX_THRESHOLD: u32 = 100;
/// The `User-Agent` of every check.
pub const USER_AGENT: &str = "sluice-health-check";
/// The most of a response read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

/// One backend's active check, as its deciding Ingress's annotations say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Good checks in a row that bring an endpoint back.
    pub healthy: u32,
    /// Failed checks in a row that take an endpoint out.
    pub unhealthy: u32,
    pub port: Option<u16>,
    /// Passing statuses, inclusive.
    pub expect: (u16, u16),
    /// The `Host` sent: the deciding Ingress's first rule host that is not a wildcard (`None`:
    /// the endpoint's address). Not a setting of its own: two Ingresses that differ only
    /// here do not conflict ([`HealthCheck::same_settings`]).
    pub host: Option<String>,
}

impl HealthCheck {
    /// The defaults, for `path`.
    pub fn new(path: String) -> HealthCheck {
        HealthCheck {
            path,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            healthy: DEFAULT_HEALTHY,
            unhealthy: DEFAULT_UNHEALTHY,
            port: None,
            expect: (200, 399),
            host: None,
        }
    }

    /// Equal but for the `Host` sent.
    pub fn same_settings(&self, other: &HealthCheck) -> bool {
        HealthCheck {
            host: None,
            ..self.clone()
        } == HealthCheck {
            host: None,
            ..other.clone()
        }
    }
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GET {} every {:?} (timeout {:?}, out after {}, back after {}, status {}-{}",
            self.path,
            self.interval,
            self.timeout,
            self.unhealthy,
            self.healthy,
            self.expect.0,
            self.expect.1
        )?;
        if let Some(p) = self.port {
            write!(f, ", port {p}")?;
        }
        f.write_str(")")
    }
}

/// `health-check-path`: absolute, visible ASCII only (no space, CR, LF or control
/// character; it is sent as the request target), no fragment, at most 1024 bytes.
pub fn parse_path(value: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err(format!(
            "expected an absolute path starting with /, got {value:?}"
        ));
    }
    if value.len() > 1024 {
        return Err("longer than 1024 bytes".to_string());
    }
    if let Some(b) = value
        .bytes()
        .find(|b| !(0x21..=0x7e).contains(b) || *b == b'#')
    {
        return Err(format!(
            "a request path may not contain {:?} (visible ASCII only, no fragment)",
            b as char
        ));
    }
    Ok(value.to_string())
}

/// A duration: digits with `ms`, `s` or `m`, or bare digits (seconds).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration such as 5s, 500ms or 1m, got {value:?}");
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    if number.is_empty() || number.len() > 9 {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(bad()),
    }
}

/// `health-check-interval`: from 1s to 300s.
pub fn parse_interval(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "the interval must be from 1s to 300s, got {value:?}"
        ))
    }
}

/// `health-check-timeout`: at least 100ms (and below the interval, checked by the caller).
pub fn parse_timeout(value: &str) -> Result<Duration, String> {
    let d = parse_duration(value)?;
    if d >= MIN_TIMEOUT && d < MAX_INTERVAL {
        Ok(d)
    } else {
        Err(format!(
            "the timeout must be from 100ms to below 300s, got {value:?}"
        ))
    }
}

/// A threshold: a count of checks in a row, 1 to 100.
pub fn parse_threshold(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_THRESHOLD).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a count from 1 to {MAX_THRESHOLD}, got {value:?}"
        )),
    }
}

/// `health-check-port`: 1 to 65535.
pub fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a port from 1 to 65535, got {value:?}")),
    }
}

/// `health-check-expected-status`: `200`, or a range such as `200-399`, within 100-599.
pub fn parse_expected_status(value: &str) -> Result<(u16, u16), String> {
    let bad =
        || format!("expected a status (200) or a range (200-399) within 100-599, got {value:?}");
    let (lo, hi) = value.split_once('-').unwrap_or((value, value));
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
    };
    match (status(lo), status(hi)) {
        (Some(lo), Some(hi)) if lo <= hi => Ok((lo, hi)),
        _ => Err(bad()),
    }
}

/// One endpoint's health: consecutive results against its current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracker {
    healthy: bool,
    /// Results in a row that disagree with `healthy`.
    streak: u32,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    /// A new endpoint starts healthy: it is served while its first checks run.
    pub const fn new() -> Tracker {
        Tracker {
            healthy: true,
            streak: 0,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check (`ok`: passed); `Some(healthy)` when the endpoint changes state:
    /// unhealthy after `unhealthy` failures in a row, healthy again after `healthy` passes in
    /// a row (a threshold of 0 counts as 1).
    pub fn record(&mut self, ok: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        if ok == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { healthy } else { unhealthy }.max(1);
        if self.streak < needed {
            return None;
        }
        self.healthy = ok;
        self.streak = 0;
        Some(ok)
    }
}

/// The endpoints to serve of `endpoints` given the unhealthy ones: all but `down`, or, when
/// that leaves none, all of them (panic: the upstream's own errors rather than an empty
/// rotation). Order is kept.
pub fn serving(endpoints: &[SocketAddr], down: &BTreeSet<SocketAddr>) -> Vec<SocketAddr> {
    let up: Vec<SocketAddr> = endpoints
        .iter()
        .filter(|e| !down.contains(e))
        .copied()
        .collect();
    if up.is_empty() {
        endpoints.to_vec()
    } else {
        up
    }
}

/// Whether every one of `endpoints` is in `down` (and there is at least one).
pub fn panicking(endpoints: &[SocketAddr], down: &BTreeSet<SocketAddr>) -> bool {
    !endpoints.is_empty() && endpoints.iter().all(|e| down.contains(e))
}

/// The unhealthy endpoints of each checked backend: the checker's input to the compiler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthView {
    pub down: BTreeMap<ServiceRef, BTreeSet<SocketAddr>>,
}

impl HealthView {
    pub fn is_empty(&self) -> bool {
        self.down.is_empty()
    }
}

/// One backend to check: its settings and every endpoint it has (unhealthy ones included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckTarget {
    pub target: ServiceRef,
    pub check: HealthCheck,
    pub endpoints: Vec<SocketAddr>,
}

/// Where the first check of an endpoint falls within its interval: a hash of the backend
/// and the address (FNV-1a), so checks are spread out and the same on every run.
pub fn stagger(target: &ServiceRef, addr: SocketAddr, interval: Duration) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let text = format!("{target}|{addr}");
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h % ms)
}

/// The request of one check: typed values only (the path and host are validated).
pub fn request(check: &HealthCheck, addr: SocketAddr) -> String {
    let host = match &check.host {
        Some(h) => h.clone(),
        None => addr.to_string(),
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        check.path
    )
}

/// The status of a response's first line (`HTTP/1.x NNN ...`), once it is complete.
pub fn status_of(head: &[u8]) -> Option<Result<u16, String>> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = &head[..end];
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "));
    let code = rest
        .filter(|r| r.len() >= 3 && r[..3].iter().all(u8::is_ascii_digit))
        .map(|r| {
            u16::from(r[0] - b'0') * 100 + u16::from(r[1] - b'0') * 10 + u16::from(r[2] - b'0')
        });
    Some(code.ok_or_else(|| "not an HTTP/1 status line".to_string()))
}

// ---- metrics ----

static CHECKS_PASSED: AtomicU64 = AtomicU64::new(0);
static CHECKS_FAILED: AtomicU64 = AtomicU64::new(0);
static MARKED_UNHEALTHY: AtomicU64 = AtomicU64::new(0);
static MARKED_HEALTHY: AtomicU64 = AtomicU64::new(0);
static UNHEALTHY_NOW: AtomicU64 = AtomicU64::new(0);

/// The checker's counters, in Prometheus text (an `extra_metrics` hook of the admin server).
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP sluice_health_checks_total Active health checks run, by result.\n\
         # TYPE sluice_health_checks_total counter\n\
         sluice_health_checks_total{{result=\"pass\"}} {}\n\
         sluice_health_checks_total{{result=\"fail\"}} {}\n\
         # HELP sluice_health_check_transitions_total Endpoints that changed state by active health checks.\n\
         # TYPE sluice_health_check_transitions_total counter\n\
         sluice_health_check_transitions_total{{to=\"unhealthy\"}} {}\n\
         sluice_health_check_transitions_total{{to=\"healthy\"}} {}\n\
         # HELP sluice_health_check_unhealthy_endpoints Endpoints currently unhealthy by active health checks.\n\
         # TYPE sluice_health_check_unhealthy_endpoints gauge\n\
         sluice_health_check_unhealthy_endpoints {}",
        load(&CHECKS_PASSED),
        load(&CHECKS_FAILED),
        load(&MARKED_UNHEALTHY),
        load(&MARKED_HEALTHY),
        load(&UNHEALTHY_NOW),
    );
}

// ---- the checker thread ----

type Key = (ServiceRef, SocketAddr);

/// The checker thread: takes plans (what to check), hands back health views (what is down).
/// Dropping it stops the thread (within one check's timeout).
pub struct Checker {
    plans: tokio::sync::mpsc::UnboundedSender<Vec<CheckTarget>>,
    views: mpsc::Receiver<Arc<HealthView>>,
}

impl Checker {
    pub fn spawn() -> io::Result<Checker> {
        let (plans, plan_rx) = tokio::sync::mpsc::unbounded_channel();
        let (view_tx, views) = mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("sluice-health".into())
            .spawn(move || runtime.block_on(run(plan_rx, view_tx)))?;
        Ok(Checker { plans, views })
    }

    /// Replaces what is checked.
    pub fn plan(&self, targets: Vec<CheckTarget>) {
        let _ = self.plans.send(targets);
    }

    /// The newest health view handed back since the last call, if any.
    pub fn latest(&self) -> Option<Arc<HealthView>> {
        let mut latest = None;
        while let Ok(view) = self.views.try_recv() {
            latest = Some(view);
        }
        latest
    }
}

struct Probe {
    check: HealthCheck,
    task: tokio::task::JoinHandle<()>,
    state: Tracker,
}

async fn run(
    mut plans: tokio::sync::mpsc::UnboundedReceiver<Vec<CheckTarget>>,
    views: mpsc::Sender<Arc<HealthView>>,
) {
    let (results_tx, mut results) =
        tokio::sync::mpsc::unbounded_channel::<(Key, Result<(), String>)>();
    let mut probes: HashMap<Key, Probe> = HashMap::new();
    let mut plan: Vec<CheckTarget> = Vec::new();
    let mut view = HealthView::default();
    loop {
        tokio::select! {
            next = plans.recv() => {
                let Some(next) = next else { break };
                let mut wanted: HashMap<Key, &HealthCheck> = HashMap::new();
                for t in &next {
                    for e in &t.endpoints {
                        wanted.insert((t.target.clone(), *e), &t.check);
                    }
                }
                // Endpoints gone, or whose settings changed, start over (a new endpoint
                // starts healthy).
                probes.retain(|key, p| {
                    let keep = wanted.get(key).is_some_and(|c| **c == p.check);
                    if !keep {
                        p.task.abort();
                    }
                    keep
                });
                for (key, check) in wanted {
                    if probes.contains_key(&key) {
                        continue;
                    }
                    let task = tokio::spawn(probe_loop(key.clone(), check.clone(), results_tx.clone()));
                    probes.insert(key, Probe { check: check.clone(), task, state: Tracker::new() });
                }
                plan = next;
            }
            Some((key, result)) = results.recv() => {
                let Some(p) = probes.get_mut(&key) else { continue };
                let ok = result.is_ok();
                let counter = if ok { &CHECKS_PASSED } else { &CHECKS_FAILED };
                counter.fetch_add(1, Ordering::Relaxed);
                match p.state.record(ok, p.check.healthy, p.check.unhealthy) {
                    Some(true) => {
                        MARKED_HEALTHY.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(backend = %key.0, endpoint = %key.1, "health check: endpoint healthy again after {} passing checks; back in rotation", p.check.healthy);
                    }
                    Some(false) => {
                        MARKED_UNHEALTHY.fetch_add(1, Ordering::Relaxed);
                        let why = result.err().unwrap_or_default();
                        tracing::warn!(backend = %key.0, endpoint = %key.1, reason = %why, "health check: endpoint unhealthy after {} failed checks; out of rotation", p.check.unhealthy);
                    }
                    None => {}
                }
            }
        }
        let next_view = down_view(&probes);
        if next_view != view {
            report_panics(&plan, &view, &next_view);
            UNHEALTHY_NOW.store(
                next_view.down.values().map(|s| s.len() as u64).sum(),
                Ordering::Relaxed,
            );
            view = next_view;
            if views.send(Arc::new(view.clone())).is_err() {
                break;
            }
        }
    }
    for p in probes.values() {
        p.task.abort();
    }
    UNHEALTHY_NOW.store(0, Ordering::Relaxed);
}

fn down_view(probes: &HashMap<Key, Probe>) -> HealthView {
    let mut view = HealthView::default();
    for ((target, addr), p) in probes {
        if !p.state.is_healthy() {
            view.down.entry(target.clone()).or_default().insert(*addr);
        }
    }
    view
}

/// Logs a backend entering or leaving panic (every endpoint unhealthy).
fn report_panics(plan: &[CheckTarget], before: &HealthView, after: &HealthView) {
    let empty = BTreeSet::new();
    for t in plan {
        let was = panicking(&t.endpoints, before.down.get(&t.target).unwrap_or(&empty));
        let is = panicking(&t.endpoints, after.down.get(&t.target).unwrap_or(&empty));
        if is && !was {
            tracing::warn!(backend = %t.target, endpoints = t.endpoints.len(), "health check: every endpoint is unhealthy; keeping them all in rotation (panic) rather than none");
        } else if was && !is {
            tracing::info!(backend = %t.target, "health check: out of panic, unhealthy endpoints leave the rotation again");
        }
    }
}

async fn probe_loop(
    key: Key,
    check: HealthCheck,
    results: tokio::sync::mpsc::UnboundedSender<(Key, Result<(), String>)>,
) {
    let start = tokio::time::Instant::now() + stagger(&key.0, key.1, check.interval);
    let mut ticks = tokio::time::interval_at(start, check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = match tokio::time::timeout(check.timeout, probe(key.1, &check)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no status within {:?}", check.timeout)),
        };
        if results.send((key.clone(), result)).is_err() {
            return;
        }
    }
}

/// One check: connect, send the GET, read the status line, judge it.
async fn probe(endpoint: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let addr = SocketAddr::new(endpoint.ip(), check.port.unwrap_or(endpoint.port()));
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = request(check, addr);
    let mut sent = 0;
    while sent < request.len() {
        stream.writable().await.map_err(|e| format!("send: {e}"))?;
        match stream.try_write(&request.as_bytes()[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("send: {e}")),
        }
    }
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        stream.readable().await.map_err(|e| format!("read: {e}"))?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Err("closed before a status line".to_string()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
        match status_of(&head) {
            Some(Ok(status)) if (check.expect.0..=check.expect.1).contains(&status) => {
                return Ok(());
            }
            Some(Ok(status)) => return Err(format!("status {status}")),
            Some(Err(why)) => return Err(why),
            None if head.len() > MAX_STATUS_LINE => return Err("status line too long".to_string()),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::compile::PortRef;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 8080))
    }

    #[test]
    fn an_endpoint_goes_down_after_the_unhealthy_threshold_and_back_after_the_healthy_one() {
        let mut t = Tracker::new();
        assert!(t.is_healthy(), "a new endpoint starts healthy");
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None);
        assert!(t.is_healthy());
        assert_eq!(t.record(false, 2, 3), Some(false));
        assert!(!t.is_healthy());
        // Further failures change nothing; one pass is not enough to come back.
        assert_eq!(t.record(false, 2, 3), None);
        assert_eq!(t.record(true, 2, 3), None);
        assert!(!t.is_healthy());
        assert_eq!(t.record(true, 2, 3), Some(true));
        assert!(t.is_healthy());
    }

    #[test]
    fn a_broken_streak_starts_over() {
        let mut t = Tracker::new();
        t.record(false, 2, 3);
        t.record(false, 2, 3);
        assert_eq!(t.record(true, 2, 3), None, "a pass resets the failures");
        t.record(false, 2, 3);
        t.record(false, 2, 3);
        assert!(t.is_healthy(), "two failures after the reset are below 3");
        assert_eq!(t.record(false, 2, 3), Some(false));
        assert_eq!(t.record(true, 2, 3), None);
        assert_eq!(t.record(false, 2, 3), None, "a failure resets the passes");
        assert_eq!(t.record(true, 2, 3), None);
        assert!(!t.is_healthy());
        assert_eq!(t.record(true, 2, 3), Some(true));
    }

    #[test]
    fn thresholds_of_one_flip_at_once() {
        let mut t = Tracker::new();
        assert_eq!(t.record(false, 1, 1), Some(false));
        assert_eq!(t.record(true, 1, 1), Some(true));
        // 0 counts as 1.
        assert_eq!(t.record(false, 0, 0), Some(false));
    }

    #[test]
    fn unhealthy_endpoints_leave_the_rotation_unless_all_are_unhealthy() {
        let all = [addr(1), addr(2), addr(3)];
        let mut down = BTreeSet::new();
        assert_eq!(serving(&all, &down), all.to_vec());
        down.insert(addr(2));
        assert_eq!(serving(&all, &down), vec![addr(1), addr(3)]);
        assert!(!panicking(&all, &down));
        down.insert(addr(1));
        down.insert(addr(3));
        // Panic: all unhealthy → all served.
        assert!(panicking(&all, &down));
        assert_eq!(serving(&all, &down), all.to_vec());
        // An endpoint unknown to the checker (a new one) is served: it starts healthy.
        let with_new = [addr(1), addr(2), addr(3), addr(4)];
        assert_eq!(serving(&with_new, &down), vec![addr(4)]);
        assert!(!panicking(&[], &down));
    }

    #[test]
    fn annotation_values_parse_strictly() {
        assert_eq!(parse_path("/healthz?full=1").unwrap(), "/healthz?full=1");
        for bad in ["healthz", "/a b", "/a\tb", "/a#b", "/é", ""] {
            assert!(parse_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_interval("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_interval("1500ms"), Ok(Duration::from_millis(1500)));
        for bad in [
            "500ms",
            "301s",
            "0",
            "5h",
            "-1s",
            "s",
            "1.5s",
            "99999999999",
        ] {
            assert!(parse_interval(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_timeout("50ms").is_err());
        assert_eq!(parse_threshold("3"), Ok(3));
        for bad in ["0", "101", "x", "-1"] {
            assert!(parse_threshold(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_port("8081"), Ok(8081));
        assert!(parse_port("0").is_err() && parse_port("65536").is_err());
        assert_eq!(parse_expected_status("200"), Ok((200, 200)));
        assert_eq!(parse_expected_status("200-399"), Ok((200, 399)));
        for bad in ["399-200", "99", "600", "2xx", "200-"] {
            assert!(parse_expected_status(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_stagger_is_within_the_interval_and_stable() {
        let target = ServiceRef {
            namespace: "shop".into(),
            name: "web".into(),
            port: PortRef::Number(80),
        };
        let i = Duration::from_secs(5);
        let offsets: BTreeSet<Duration> = (1..=20).map(|n| stagger(&target, addr(n), i)).collect();
        assert!(offsets.iter().all(|d| *d < i));
        assert!(offsets.len() > 10, "endpoints are spread out: {offsets:?}");
        assert_eq!(stagger(&target, addr(1), i), stagger(&target, addr(1), i));
    }

    /// One check against a real socket: a listener answering `answer` (`None`: it accepts
    /// and never answers).
    fn check_against(answer: Option<&'static str>) -> Result<(), String> {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            match answer {
                Some(a) => {
                    let _ = s.write_all(a.as_bytes());
                }
                None => std::thread::sleep(Duration::from_secs(2)),
            }
        });
        let mut check = HealthCheck::new("/healthz".into());
        check.timeout = Duration::from_millis(300);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            match tokio::time::timeout(check.timeout, probe(addr, &check)).await {
                Ok(r) => r,
                Err(_) => Err("timeout".to_string()),
            }
        })
    }

    #[test]
    fn a_check_passes_on_an_expected_status_and_fails_otherwise() {
        assert_eq!(
            check_against(Some("HTTP/1.1 204 No Content\r\n\r\n")),
            Ok(())
        );
        assert_eq!(
            check_against(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n")),
            Err("status 503".to_string())
        );
        assert!(check_against(Some("")).is_err(), "closed without a status");
        assert!(check_against(Some("garbage\r\n")).is_err());
        assert_eq!(check_against(None), Err("timeout".to_string()));
        // Nobody listening.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let check = HealthCheck::new("/".into());
        let r = rt.block_on(probe(addr, &check));
        assert!(r.as_ref().is_err_and(|e| e.starts_with("connect")), "{r:?}");
    }

    #[test]
    fn the_request_and_the_status_line() {
        let mut check = HealthCheck::new("/healthz".into());
        let r = request(&check, addr(1));
        assert!(r.starts_with("GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n"));
        assert!(r.contains("\r\nUser-Agent: sluice-health-check\r\n"));
        check.host = Some("shop.example".into());
        assert!(request(&check, addr(1)).contains("\r\nHost: shop.example\r\n"));
        assert_eq!(
            status_of(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(Ok(503))
        );
        assert_eq!(status_of(b"HTTP/1.0 200 OK\r\n\r\n"), Some(Ok(200)));
        assert_eq!(status_of(b"HTTP/1.1 200 O"), None);
        assert!(matches!(status_of(b"SSH-2.0\r\n"), Some(Err(_))));
    }
}
