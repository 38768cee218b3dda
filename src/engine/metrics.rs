//! Per-worker metrics: atomics that only their worker writes (relaxed load + store, no
//! read-modify-write) and that the admin thread reads and sums. Engine-neutral: the driver
//! counts for every engine.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

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
}

impl WorkerMetrics {
    /// Adds `n` to a counter of this worker's (single writer).
    pub fn add(counter: &AtomicU64, n: u64) {
        // Single writer: a relaxed load+store is enough and cheaper than an RMW.
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}
