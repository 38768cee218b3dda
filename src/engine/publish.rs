//! Snapshot publication (RCU): the control thread hands the same `Arc<Snapshot>` to every
//! worker's mailbox and wakes it; each worker swaps it in at its quiescent point
//! ([`take_newer`]), hands the old one back to be freed on the control thread, and
//! acknowledges by storing the version in its metrics. [`EngineState`] is what the engine
//! shares with the admin server and the control side.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::core::snapshot::Snapshot;
use crate::engine::metrics::WorkerMetrics;
use crate::engine::sys;

/// The worker's side of publication, run at its quiescent point: drains every snapshot
/// waiting in its mailbox and returns the newest one if it is newer than `current`. Older ones
/// (superseded while waiting, or sent late by a slower publisher) are dropped here, so a
/// worker never goes back to an older version and never holds more than one snapshot.
pub fn take_newer(mailbox: &Receiver<Arc<Snapshot>>, current: u64) -> Option<Arc<Snapshot>> {
    let mut newest: Option<Arc<Snapshot>> = None;
    while let Ok(snapshot) = mailbox.try_recv() {
        if snapshot.version > newest.as_ref().map_or(current, |n| n.version) {
            newest = Some(snapshot);
        }
    }
    newest
}

/// Shared between the engine, the admin server and the control side.
pub struct EngineState {
    pub metrics: Vec<Arc<WorkerMetrics>>,
    /// How publication went: counts and change → all-workers propagation times.
    pub publication: Mutex<PublicationStats>,
    /// The newest published snapshot (for the admin route dump; workers have their own).
    pub snapshot: RwLock<Arc<Snapshot>>,
    pub stopping: Arc<AtomicBool>,
    /// More `/metrics` text, from the control side (e.g. the Kubernetes source's counters).
    pub extra_metrics: Mutex<Vec<MetricsFn>>,
}

/// Appends Prometheus text to `/metrics`.
pub type MetricsFn = Box<dyn Fn(&mut String) + Send + Sync>;

/// Publication metrics (control side only, never touched by a worker).
pub struct PublicationStats {
    pub published: u64,
    /// Microseconds from a source event to every worker serving the resulting snapshot.
    pub propagation_us: hdrhistogram::Histogram<u64>,
    /// Snapshots not acknowledged by every worker within the wait (should stay 0).
    pub unacknowledged: u64,
}

impl Default for PublicationStats {
    fn default() -> Self {
        PublicationStats {
            published: 0,
            propagation_us: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds"),
            unacknowledged: 0,
        }
    }
}

/// Hands snapshots to every worker: the same `Arc` to each, then a wake-up through its
/// eventfd. Cheap to clone; used by the control thread.
#[derive(Clone)]
pub struct Publisher {
    pub(crate) senders: Vec<Sender<Arc<Snapshot>>>,
    /// Snapshots the workers stopped serving, dropped here (on the control thread).
    pub(crate) retired: Arc<Mutex<Receiver<Arc<Snapshot>>>>,
    /// Closed when the last publisher (and so the engine) is gone.
    pub(crate) wakes: Arc<Vec<OwnedFd>>,
    pub(crate) state: Arc<EngineState>,
}

impl Publisher {
    /// Publishes `snapshot`; each worker swaps it in at the top of its next loop turn.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        if let Ok(mut current) = self.state.snapshot.write() {
            *current = snapshot.clone();
        }
        for (tx, wake) in self.senders.iter().zip(self.wakes.iter()) {
            let _ = tx.send(snapshot.clone());
            sys::eventfd_signal(wake.as_raw_fd());
        }
        if let Ok(mut stats) = self.state.publication.lock() {
            stats.published += 1;
        }
    }

    /// Waits (polling, on the control thread) until every worker serves `version` or later,
    /// and records the time since `since` (the source event). Returns that time, or `None`
    /// if `timeout` passed first.
    pub fn wait_acknowledged(
        &self,
        version: u64,
        since: std::time::Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        loop {
            let acked = self
                .state
                .metrics
                .iter()
                .all(|m| m.snapshot_version.load(Ordering::Acquire) >= version);
            let elapsed = since.elapsed();
            if acked {
                if let Ok(mut stats) = self.state.publication.lock() {
                    let us = u64::try_from(elapsed.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1);
                    let _ = stats.propagation_us.record(us);
                }
                // After the measurement: freeing a large old table is the control thread's
                // time, not part of getting the change to the workers.
                self.free_retired();
                return Some(elapsed);
            }
            if elapsed >= timeout {
                if let Ok(mut stats) = self.state.publication.lock() {
                    stats.unacknowledged += 1;
                }
                return None;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    pub fn state(&self) -> &Arc<EngineState> {
        &self.state
    }

    /// Drops the snapshots workers have handed back (freeing the last copies of old tables).
    pub fn free_retired(&self) {
        if let Ok(retired) = self.retired.lock() {
            while let Ok(old) = retired.try_recv() {
                drop(old);
            }
        }
    }
}
