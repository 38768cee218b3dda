//! Per-worker metrics: atomics that only their worker writes (relaxed load + store, no
//! read-modify-write) and that the admin thread reads and sums. Engine-neutral: the driver
//! counts for every engine.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How many backends get series of their own (`log.backend_metrics_cap`), read when the
/// workers' metrics are made; `main` sets it from the config before the engine starts.
static BACKEND_CAP: AtomicUsize = AtomicUsize::new(200);

pub fn set_backend_cap(cap: usize) {
    BACKEND_CAP.store(cap.max(1), Ordering::Relaxed);
}

/// The names of the per-backend series, shared by every worker. A worker that meets a
/// backend for the first time looks for its name here and, if missing, claims the next slot
/// (one atomic increment, once per backend and worker; never on later requests, which find
/// the slot in the worker's own map). Slots are never reused, so a series never changes
/// meaning; once all are claimed, further backends count under `backend="other"`.
#[derive(Debug)]
pub struct BackendNames {
    names: Box<[OnceLock<Box<str>>]>,
    next: AtomicUsize,
}

impl BackendNames {
    pub fn new(cap: usize) -> BackendNames {
        BackendNames {
            names: (0..cap.max(1)).map(|_| OnceLock::new()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn cap(&self) -> usize {
        self.names.len()
    }

    /// The slot of `name`, claiming one if it has none; `None` when all are taken. (Two
    /// workers meeting a new backend at once may claim two slots for it: the exposition
    /// sums slots by name.)
    pub fn slot(&self, name: &str) -> Option<usize> {
        let claimed = self.next.load(Ordering::Acquire).min(self.cap());
        if let Some(i) = (0..claimed).find(|&i| self.name(i) == Some(name)) {
            return Some(i);
        }
        let i = self.next.fetch_add(1, Ordering::AcqRel);
        let cell = self.names.get(i)?;
        let _ = cell.set(name.into());
        Some(i)
    }

    /// The name of slot `i`, once claimed.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.names.get(i)?.get().map(|s| &**s)
    }
}

impl Default for BackendNames {
    fn default() -> Self {
        BackendNames::new(BACKEND_CAP.load(Ordering::Relaxed))
    }
}

/// One worker's per-backend request counts by status class: one row per slot of its
/// [`BackendNames`], and a last row for `other`.
#[derive(Debug)]
pub struct BackendCounts {
    pub names: Arc<BackendNames>,
    rows: Box<[[AtomicU64; 5]]>,
}

impl BackendCounts {
    pub fn new(names: Arc<BackendNames>) -> BackendCounts {
        let rows = (0..=names.cap()).map(|_| Default::default()).collect();
        BackendCounts { names, rows }
    }

    /// The row of `other`.
    pub fn other(&self) -> usize {
        self.names.cap()
    }

    /// Counts one response of status class `class` (0 = 1xx … 4 = 5xx) in `row` (single
    /// writer).
    pub fn count(&self, row: usize, class: usize) {
        if let Some(c) = self.rows.get(row).and_then(|r| r.get(class)) {
            WorkerMetrics::add(c, 1);
        }
    }

    /// Row `row`'s counts.
    pub fn read(&self, row: usize) -> [u64; 5] {
        match self.rows.get(row) {
            Some(r) => std::array::from_fn(|c| r[c].load(Ordering::Relaxed)),
            None => [0; 5],
        }
    }
}

impl Default for BackendCounts {
    fn default() -> Self {
        BackendCounts::new(Arc::new(BackendNames::default()))
    }
}

/// Upper bounds (µs) of the latency histograms' buckets: 0.5 ms … 10 s, then +Inf.
pub const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with fixed buckets, written by one worker (relaxed load + store),
/// read at scrape time. Counts are per bucket (not cumulative); the last one is +Inf.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation (single writer).
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        WorkerMetrics::add(&self.counts[i], 1);
        WorkerMetrics::add(&self.sum_us, us);
    }

    /// What it holds now, to be summed with other workers' and rendered.
    pub fn read(&self) -> HistogramValues {
        let mut v = HistogramValues::default();
        for (c, a) in v.counts.iter_mut().zip(&self.counts) {
            *c = a.load(Ordering::Relaxed);
        }
        v.sum_us = self.sum_us.load(Ordering::Relaxed);
        v
    }
}

/// A histogram's values at one moment (per bucket, not cumulative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistogramValues {
    pub counts: [u64; BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl HistogramValues {
    pub fn merge(&mut self, other: &HistogramValues) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Per-worker counters, written only by their worker, read by the admin thread.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerMetrics {
    /// Completed exchanges by status class: 1xx … 5xx.
    pub responses: [AtomicU64; 5],
    pub accepted: AtomicU64,
    pub active: AtomicI64,
    pub upstream_connect_errors: AtomicU64,
    /// Requests that waited for a connection to an endpoint at its
    /// `max_connections_per_endpoint` cap, and those of them whose wait ran into their
    /// connect timeout (retried elsewhere or answered 504).
    pub upstream_queued: AtomicU64,
    pub upstream_queue_timeouts: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Of `bytes_out`: response body bytes the transport moved from the upstream socket to
    /// the client's past the connection's buffers (`Transport::pass`: spliced, or relayed
    /// through the engine's own buffers without a copy).
    pub bytes_passed: AtomicU64,
    /// TLS handshakes completed in full, completed by resumption, and failed (bad
    /// messages, no certificate, timed out).
    pub tls_full: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub tls_failed: AtomicU64,
    /// Of `tls_failed`, the handshakes that did not finish in time (the rest broke the
    /// protocol: bad messages, no certificate for the name, an alert).
    pub tls_failed_timeout: AtomicU64,
    /// Connections closed for a missing, malformed or late PROXY protocol header.
    pub proxy_protocol_errors: AtomicU64,
    /// Requests by backend and status class.
    pub backends: BackendCounts,
    /// Version of the snapshot this worker serves.
    pub snapshot_version: AtomicU64,
    /// The worker's loop is running with its first snapshot.
    pub serving: AtomicBool,
    /// Request duration by status class (1xx … 5xx): from the first byte of the request
    /// read from the client to the response's completion (nginx's `$request_time`).
    pub request_duration: [Histogram; 5],
    /// Connect of a new upstream connection: from the connect to established.
    pub upstream_connect: Histogram,
    /// From the upstream connection asked for (pooled or new) to the response's completion
    /// (nginx's `$upstream_response_time`).
    pub upstream_response: Histogram,
    /// `auth-url` subrequests sent, answered from the worker's cache, and failed (no
    /// usable answer: connect error, reset, bad head; timeouts are the client's 500s).
    pub auth_requests: AtomicU64,
    pub auth_cache_hits: AtomicU64,
    pub auth_errors: AtomicU64,
    /// `mirror-target` copies sent, and dropped (too many in flight, body not at hand).
    pub mirror_sent: AtomicU64,
    pub mirror_dropped: AtomicU64,
}

impl WorkerMetrics {
    /// A worker's metrics whose per-backend series share `names` with the other workers'.
    pub fn with_backends(names: Arc<BackendNames>) -> WorkerMetrics {
        WorkerMetrics {
            backends: BackendCounts::new(names),
            ..WorkerMetrics::default()
        }
    }

    /// Adds `n` to a counter of this worker's (single writer).
    pub fn add(counter: &AtomicU64, n: u64) {
        // Single writer: a relaxed load+store is enough and cheaper than an RMW.
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_slots_are_claimed_once_shared_and_capped() {
        let names = Arc::new(BackendNames::new(2));
        let a = WorkerMetrics::with_backends(names.clone());
        let b = WorkerMetrics::with_backends(names.clone());
        assert_eq!(names.slot("ns/a:80"), Some(0));
        assert_eq!(names.slot("ns/b:80"), Some(1));
        assert_eq!(names.slot("ns/a:80"), Some(0), "found, not claimed again");
        assert_eq!(names.slot("ns/c:80"), None, "full: other");
        assert_eq!(names.name(1), Some("ns/b:80"));
        a.backends.count(0, 1);
        b.backends.count(0, 1);
        b.backends.count(b.backends.other(), 4);
        assert_eq!(a.backends.read(0), [0, 1, 0, 0, 0]);
        assert_eq!(b.backends.read(2), [0, 0, 0, 0, 1]);
    }

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // on a bound: that bucket (le is inclusive)
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_secs(11)); // past the last bound: +Inf
        let v = h.read();
        assert_eq!(v.counts[0], 1);
        assert_eq!(v.counts[1], 1);
        assert_eq!(v.counts[BUCKETS_US.len()], 1);
        assert_eq!(v.count(), 3);
        assert_eq!(v.sum_us, 500 + 501 + 11_000_000);
        let mut all = v;
        all.merge(&v);
        assert_eq!(all.count(), 6);
        assert_eq!(all.sum_us, 2 * v.sum_us);
    }
}
