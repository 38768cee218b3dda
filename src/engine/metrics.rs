//! Per-worker metrics: atomics that only their worker writes (relaxed load + store, no
//! read-modify-write) and that the admin thread reads and sums. Engine-neutral: the driver
//! counts for every engine.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

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
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// TLS handshakes completed in full, completed by resumption, and failed (bad
    /// messages, no certificate, timed out).
    pub tls_full: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub tls_failed: AtomicU64,
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
}

impl WorkerMetrics {
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
