//! The Kubernetes route source: kube-rs watchers over IngressClass, Ingress, Service,
//! EndpointSlice and (referenced, `kubernetes.io/tls`) Secret objects, on one control thread
//! running a tokio current-thread runtime. Objects are stripped to what the compiler reads,
//! kept in a store whose re-lists swap in whole (never an empty moment), and every change is
//! handed to the update pipeline ([`super::pipeline`]) that the file source feeds too.
//! Losing the API server changes nothing that is served: the last good snapshot stays, and the
//! watchers back off (jittered, capped at a few seconds) and resume from their resourceVersion
//! (or re-list after 410 Gone); one cheap `/readyz` probe wakes them all as soon as the API
//! server answers again, so recovery takes about a second without hammering a dead server.
//!
//! Parts: `options` (configuration), `client` (API client, watcher tasks, backoff, probe),
//! `strip` (what is kept of each object), `store` (the objects by kind), `stats` (metrics),
//! `run` (the control loop), and here the [`KubeSource`] handle.

mod client;
mod options;
mod run;
mod stats;
mod store;
mod strip;

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{oneshot, watch as signal};

use crate::control::compile::Compiled;
use crate::engine::Publisher;

pub use super::pipeline::MAX_HOLD;
pub use client::api_error;
pub use options::{
    BACKOFF_MAX, BadNamespacedName, KubeOptions, KubeSettings, parse_namespaced_name,
};
use run::run;
pub use stats::KubeStats;
pub use store::Key;

/// Why the Kubernetes source cannot work (as opposed to an API server that is away, which it
/// waits out).
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: std::path::PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster configuration: {0}")]
    InCluster(kube::config::InClusterError),
    #[error("no cluster configuration (in-cluster or kubeconfig): {0}")]
    NoConfiguration(kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(kube::Error),
    #[error("cannot start the control runtime: {0}")]
    Runtime(io::Error),
    #[error("the Kubernetes control thread stopped")]
    Stopped,
}

/// The only Secret type we cache.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The Kubernetes source: a control thread that watches the cluster and publishes snapshots.
pub struct KubeSource {
    thread: Option<JoinHandle<()>>,
    first: Receiver<Result<Compiled, KubeError>>,
    publisher: Option<oneshot::Sender<Publisher>>,
    stop: signal::Sender<bool>,
    stats: Arc<KubeStats>,
}

impl KubeSource {
    /// Starts the control thread. It connects, lists every watched kind, and offers the first
    /// snapshot through [`KubeSource::wait_synced`]; after [`KubeSource::attach`] it publishes
    /// every change.
    pub fn start(settings: KubeSettings) -> io::Result<KubeSource> {
        let (first_tx, first) = sync_channel(1);
        let (publisher_tx, publisher_rx) = oneshot::channel();
        let (stop, stop_rx) = signal::channel(false);
        let stats = Arc::new(KubeStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-kube".into())
            .spawn(move || {
                // "/proc/thread-self" links to "<pid>/task/<tid>".
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| p.file_name()?.to_str()?.parse().ok())
                    .unwrap_or(0);
                thread_stats.control_thread.store(tid, Ordering::Relaxed);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = first_tx.send(Err(KubeError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(run(settings, first_tx, publisher_rx, stop_rx, thread_stats));
            })?;
        Ok(KubeSource {
            thread: Some(thread),
            first,
            publisher: Some(publisher_tx),
            stop,
            stats,
        })
    }

    /// Waits up to `timeout` for the first complete view of the cluster, compiled as
    /// snapshot version 1. `Ok(None)`: not yet (the API server may be unreachable; the
    /// control thread keeps trying). `Err`: the source cannot work (bad kubeconfig).
    pub fn wait_synced(&self, timeout: Duration) -> Result<Option<Compiled>, KubeError> {
        match self.first.recv_timeout(timeout) {
            Ok(result) => result.map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(KubeError::Stopped),
        }
    }

    /// Hands the engine's publisher to the control thread: from now on every change is
    /// compiled and published.
    pub fn attach(&mut self, publisher: Publisher) {
        if let Some(tx) = self.publisher.take() {
            let _ = tx.send(publisher);
        }
    }

    pub fn stats(&self) -> Arc<KubeStats> {
        self.stats.clone()
    }

    /// Stops watching (releasing the Lease if held) and joins the control thread.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
