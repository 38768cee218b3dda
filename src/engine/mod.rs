//! Engines move bytes between the kernel and the protocol core. `uring` is the io_uring edge;
//! the per-core loop that drives connections lives in `crate::worker`. [`Engine`] starts one
//! worker per core, each with its own SO_REUSEPORT listener, and hands snapshots to them.

pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel, sync_channel};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::admin::{self, AdminHandle};
use crate::core::conn::ConnConfig;
use crate::core::route::Snapshot;
use crate::worker::{Worker, WorkerMetrics, WorkerSetup};

/// How to run the data plane.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// One worker per entry, pinned to that core (`None`: not pinned).
    pub workers: Vec<Option<usize>>,
    pub http: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub conn: Arc<ConnConfig>,
    pub upstream_max_idle: usize,
    pub upstream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

impl EngineConfig {
    /// One pinned worker per core of this machine.
    pub fn all_cores() -> Vec<Option<usize>> {
        match core_affinity::get_core_ids() {
            Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| Some(c.id)).collect(),
            _ => vec![None],
        }
    }
}

/// Shared between the engine, its admin server and the control side.
pub struct EngineState {
    pub metrics: Vec<Arc<WorkerMetrics>>,
    /// The newest published snapshot (for the admin route dump; workers have their own).
    pub snapshot: RwLock<Arc<Snapshot>>,
    pub stopping: Arc<AtomicBool>,
}

/// A running data plane.
pub struct Engine {
    workers: Vec<JoinHandle<io::Result<()>>>,
    senders: Vec<Sender<Arc<Snapshot>>>,
    state: Arc<EngineState>,
    local_addr: SocketAddr,
    admin: Option<AdminHandle>,
}

impl Engine {
    /// Binds every worker's listener, starts the workers (each serving `snapshot`) and the
    /// admin server. Fails, with nothing left running, if io_uring is unavailable.
    pub fn start(cfg: EngineConfig, snapshot: Arc<Snapshot>) -> io::Result<Engine> {
        uring::raise_nofile_limit();
        let stopping = Arc::new(AtomicBool::new(false));
        let mut addr = cfg.http;
        let mut listeners = Vec::new();
        for _ in &cfg.workers {
            let fd = uring::listen_reuseport(addr, 4096).map_err(|e| {
                for fd in &listeners {
                    uring::close(*fd);
                }
                io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            if addr.port() == 0 {
                // Port 0: the first worker picks it, the others share it.
                addr = uring::local_addr(fd).unwrap_or(addr);
            }
            listeners.push(fd);
        }
        let metrics: Vec<Arc<WorkerMetrics>> = cfg
            .workers
            .iter()
            .map(|_| Arc::new(WorkerMetrics::default()))
            .collect();
        let state = Arc::new(EngineState {
            metrics: metrics.clone(),
            snapshot: RwLock::new(snapshot.clone()),
            stopping: stopping.clone(),
        });
        let mut workers = Vec::new();
        let mut senders = Vec::new();
        let mut startup_error = None;
        for (index, (core, listener)) in cfg.workers.iter().zip(listeners).enumerate() {
            let (tx, rx) = channel();
            let setup = WorkerSetup {
                index,
                core: *core,
                listener,
                conn: cfg.conn.clone(),
                snapshots: rx,
                metrics: metrics[index].clone(),
                stopping: stopping.clone(),
                upstream_max_idle: cfg.upstream_max_idle,
                upstream_idle_timeout: cfg.upstream_idle_timeout,
                shutdown_grace: cfg.shutdown_grace,
            };
            let (ready_tx, ready_rx) = sync_channel(1);
            let snapshot = snapshot.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sluice-worker-{index}"))
                .spawn(move || {
                    let worker = match Worker::new(setup, snapshot) {
                        Ok(w) => w,
                        Err(e) => {
                            uring::close(listener);
                            let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    worker.run()
                })?;
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => startup_error = Some(e),
                Err(_) => startup_error = Some(io::Error::other("worker died while starting")),
            }
            workers.push(handle);
            senders.push(tx);
            if startup_error.is_some() {
                break;
            }
        }
        if let Some(e) = startup_error {
            stopping.store(true, Ordering::Release);
            for w in workers {
                let _ = w.join();
            }
            return Err(e);
        }
        let admin = match cfg.admin {
            Some(admin_addr) => Some(admin::start(admin_addr, state.clone())?),
            None => None,
        };
        Ok(Engine {
            workers,
            senders,
            state,
            local_addr: addr,
            admin,
        })
    }

    /// The address the workers listen on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminHandle::local_addr)
    }

    pub fn state(&self) -> &Arc<EngineState> {
        &self.state
    }

    /// Hands `snapshot` to every worker; each swaps it in at the top of its next loop turn.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        if let Ok(mut current) = self.state.snapshot.write() {
            *current = snapshot.clone();
        }
        for tx in &self.senders {
            let _ = tx.send(snapshot.clone());
        }
    }

    /// Graceful stop: workers stop accepting, finish what is in flight, close idle
    /// connections, and exit (at the latest after the grace period).
    pub fn stop(&self) {
        self.state.stopping.store(true, Ordering::Release);
    }

    /// Waits for every worker (and the admin server) to finish.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for w in self.workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a worker panicked")),
            }
        }
        if let Some(admin) = self.admin {
            admin.join();
        }
        result
    }
}
