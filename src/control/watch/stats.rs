//! Counters of the Kubernetes source, rendered for `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters of the Kubernetes source, shown in `/metrics`.
#[derive(Default)]
pub struct KubeStats {
    /// Every watched kind listed at least once.
    pub synced: AtomicBool,
    /// This replica holds the Lease.
    pub leader: AtomicBool,
    pub snapshots: AtomicU64,
    /// Complete re-lists after the first (410 Gone, or a watch that could not resume).
    pub relists: AtomicU64,
    pub watch_errors: AtomicU64,
    /// Watches the API server expired (410 Gone); each is followed by a re-list.
    pub gone: AtomicU64,
    /// `/readyz` probes that failed while the API server was away.
    pub probe_failures: AtomicU64,
    /// Times the probe saw the API server back and woke the watchers.
    pub recoveries: AtomicU64,
    /// Objects or fields rejected by the last compile.
    pub rejected: AtomicU64,
    /// Rejections seen for the first time (each also gets a log line and, from the leader,
    /// an Event).
    pub rejections_total: AtomicU64,
    pub events_posted: AtomicU64,
    pub event_errors: AtomicU64,
    pub status_updates: AtomicU64,
    pub status_errors: AtomicU64,
    pub leader_transitions: AtomicU64,
    /// TLS Secrets cached with their data (the ones our Ingresses reference).
    pub cached_secrets: AtomicU64,
    /// The control thread's Linux thread id (`/proc/self/task/<id>`), to measure its CPU and
    /// memory from outside; 0 until it runs.
    pub control_thread: AtomicU64,
}

impl KubeStats {
    /// Prometheus text for these counters.
    pub fn render(&self, out: &mut String) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let b = |a: &AtomicBool| u64::from(a.load(Ordering::Relaxed));
        let rows: [(&str, &str, &str, u64); 16] = [
            (
                "sluice_kube_cached_secrets",
                "gauge",
                "TLS Secrets cached with their data (referenced by our Ingresses).",
                g(&self.cached_secrets),
            ),
            (
                "sluice_kube_synced",
                "gauge",
                "Every watched kind has been listed.",
                b(&self.synced),
            ),
            (
                "sluice_kube_leader",
                "gauge",
                "This replica holds the status Lease.",
                b(&self.leader),
            ),
            (
                "sluice_kube_snapshots_total",
                "counter",
                "Snapshots compiled from the cluster.",
                g(&self.snapshots),
            ),
            (
                "sluice_kube_relists_total",
                "counter",
                "Complete re-lists after the first list (410 Gone or lost watch).",
                g(&self.relists),
            ),
            (
                "sluice_kube_watch_errors_total",
                "counter",
                "Errors from the API server while listing or watching.",
                g(&self.watch_errors),
            ),
            (
                "sluice_kube_watch_expired_total",
                "counter",
                "Watches the API server expired with 410 Gone (each followed by a re-list).",
                g(&self.gone),
            ),
            (
                "sluice_kube_probe_failures_total",
                "counter",
                "Readiness probes of the API server that failed while it was away.",
                g(&self.probe_failures),
            ),
            (
                "sluice_kube_recoveries_total",
                "counter",
                "Times the API server answered again and the watchers were woken.",
                g(&self.recoveries),
            ),
            (
                "sluice_kube_rejected_objects",
                "gauge",
                "Objects or fields the last compile rejected.",
                g(&self.rejected),
            ),
            (
                "sluice_kube_rejections_total",
                "counter",
                "Rejections seen for the first time.",
                g(&self.rejections_total),
            ),
            (
                "sluice_kube_events_total",
                "counter",
                "Kubernetes Events posted for rejections.",
                g(&self.events_posted),
            ),
            (
                "sluice_kube_event_errors_total",
                "counter",
                "Events the API server refused.",
                g(&self.event_errors),
            ),
            (
                "sluice_kube_status_updates_total",
                "counter",
                "Ingress status updates written.",
                g(&self.status_updates),
            ),
            (
                "sluice_kube_status_errors_total",
                "counter",
                "Ingress status updates the API server refused.",
                g(&self.status_errors),
            ),
            (
                "sluice_kube_leader_transitions_total",
                "counter",
                "Times this replica gained or lost the Lease.",
                g(&self.leader_transitions),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}
