//! Engines move bytes between the kernel and the protocol core. `uring` is the io_uring edge;
//! the per-core loop that drives connections lives in `crate::worker`. [`Engine`] starts one
//! worker per core, each with its own SO_REUSEPORT listener, and hands snapshots to them.

pub mod uring;
pub mod userspace;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::admin::{self, AdminHandle};
use crate::core::conn::ConnConfig;
use crate::core::route::Snapshot;
use crate::core::tls::TlsSettings;
use crate::worker::{Worker, WorkerHttps, WorkerMetrics, WorkerSetup};

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

/// The HTTPS listener: where, how its connections behave, and their TLS settings.
#[derive(Clone, Debug)]
pub struct HttpsConfig {
    pub addr: SocketAddr,
    /// Connection settings of HTTPS connections (`X-Forwarded-Proto: https`, HSTS).
    pub conn: Arc<ConnConfig>,
    pub settings: Arc<TlsSettings>,
}

/// Shared between the engine, its admin server and the control side.
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
    senders: Vec<Sender<Arc<Snapshot>>>,
    /// Snapshots the workers stopped serving, dropped here (on the control thread).
    retired: Arc<Mutex<Receiver<Arc<Snapshot>>>>,
    /// Closed when the last publisher (and so the engine) is gone.
    wakes: Arc<Vec<OwnedFd>>,
    state: Arc<EngineState>,
}

impl Publisher {
    /// Publishes `snapshot`; each worker swaps it in at the top of its next loop turn.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        if let Ok(mut current) = self.state.snapshot.write() {
            *current = snapshot.clone();
        }
        for (tx, wake) in self.senders.iter().zip(self.wakes.iter()) {
            let _ = tx.send(snapshot.clone());
            uring::eventfd_signal(wake.as_raw_fd());
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

/// Starts a worker thread named `name` that builds its worker with `build` and then runs
/// it, and waits until it is built: returns the thread, and whether building succeeded (the
/// thread has ended if not). Both engines start their workers this way.
pub(crate) fn spawn_worker<W>(
    name: String,
    build: impl FnOnce() -> io::Result<W> + Send + 'static,
    run: impl FnOnce(W) -> io::Result<()> + Send + 'static,
) -> io::Result<(JoinHandle<io::Result<()>>, io::Result<()>)> {
    let (ready_tx, ready_rx) = sync_channel(1);
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let worker = match build() {
            Ok(w) => w,
            Err(e) => {
                let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        };
        let _ = ready_tx.send(Ok(()));
        run(worker)
    })?;
    let started = match ready_rx.recv() {
        Ok(result) => result,
        Err(_) => Err(io::Error::other("worker died while starting")),
    };
    Ok((handle, started))
}

/// A running data plane.
pub struct Engine {
    workers: Vec<JoinHandle<io::Result<()>>>,
    publisher: Publisher,
    state: Arc<EngineState>,
    local_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    admin: Option<AdminHandle>,
}

impl Engine {
    /// Binds every worker's listener, starts the workers (each serving `snapshot`) and the
    /// admin server. Fails, with nothing left running, if io_uring is unavailable.
    pub fn start(cfg: EngineConfig, snapshot: Arc<Snapshot>) -> io::Result<Engine> {
        Engine::start_with_https(cfg, None, snapshot)
    }

    /// [`Engine::start`] with an HTTPS listener next to the plain one (each worker has its
    /// own SO_REUSEPORT socket for both).
    pub fn start_with_https(
        mut cfg: EngineConfig,
        https: Option<HttpsConfig>,
        snapshot: Arc<Snapshot>,
    ) -> io::Result<Engine> {
        uring::raise_nofile_limit();
        let mut https_addr = https.as_ref().map(|h| h.addr);
        let mut https_listeners = Vec::new();
        if let Some(h) = &https {
            let mut addr = h.addr;
            for _ in &cfg.workers {
                let fd = uring::listen_reuseport(addr, 4096).map_err(|e| {
                    for fd in &https_listeners {
                        uring::close(*fd);
                    }
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                if addr.port() == 0 {
                    addr = uring::local_addr(fd).unwrap_or(addr);
                }
                https_listeners.push(fd);
            }
            https_addr = Some(addr);
            // Redirects from the plain listener name the port really listened on.
            let mut plain = (*cfg.conn).clone();
            plain.https_port = addr.port();
            cfg.conn = Arc::new(plain);
        }
        let mut https_listeners = https_listeners.into_iter();
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
            publication: Mutex::new(PublicationStats::default()),
            snapshot: RwLock::new(snapshot.clone()),
            stopping: stopping.clone(),
            extra_metrics: Mutex::new(Vec::new()),
        });
        let mut workers = Vec::new();
        let mut senders = Vec::new();
        let mut wakes = Vec::new();
        let (retired_tx, retired_rx) = channel();
        let mut startup_error = None;
        for (index, (core, listener)) in cfg.workers.iter().zip(listeners).enumerate() {
            let (tx, rx) = channel();
            let wake = uring::eventfd()?;
            let wake_fd = wake.as_raw_fd();
            wakes.push(wake);
            let setup = WorkerSetup {
                index,
                core: *core,
                listener,
                wake: wake_fd,
                conn: cfg.conn.clone(),
                snapshots: rx,
                retired: retired_tx.clone(),
                metrics: metrics[index].clone(),
                stopping: stopping.clone(),
                upstream_max_idle: cfg.upstream_max_idle,
                upstream_idle_timeout: cfg.upstream_idle_timeout,
                shutdown_grace: cfg.shutdown_grace,
                https: https.as_ref().and_then(|h| {
                    Some(WorkerHttps {
                        listener: https_listeners.next()?,
                        conn: h.conn.clone(),
                        settings: h.settings.clone(),
                    })
                }),
            };
            let snapshot = snapshot.clone();
            let (handle, started) = spawn_worker(
                format!("sluice-worker-{index}"),
                move || Worker::new(setup, snapshot).inspect_err(|_| uring::close(listener)),
                Worker::run,
            )?;
            startup_error = started.err();
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
            publisher: Publisher {
                senders,
                retired: Arc::new(Mutex::new(retired_rx)),
                wakes: Arc::new(wakes),
                state: state.clone(),
            },
            state,
            local_addr: addr,
            https_addr,
            admin,
        })
    }

    /// Assembles a running engine from workers another engine module started (the userspace
    /// engine): the same publication, state, stop and join as the io_uring engine.
    pub(crate) fn from_parts(
        workers: Vec<JoinHandle<io::Result<()>>>,
        senders: Vec<Sender<Arc<Snapshot>>>,
        retired: Receiver<Arc<Snapshot>>,
        wakes: Vec<OwnedFd>,
        state: Arc<EngineState>,
        local_addr: SocketAddr,
        admin: Option<AdminHandle>,
    ) -> Engine {
        Engine {
            workers,
            publisher: Publisher {
                senders,
                retired: Arc::new(Mutex::new(retired)),
                wakes: Arc::new(wakes),
                state: state.clone(),
            },
            state,
            local_addr,
            // The userspace engine serves plain HTTP only (no TLS on it yet).
            https_addr: None,
            admin,
        }
    }

    /// The address the workers listen on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The HTTPS listener's address (with the real port), if there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminHandle::local_addr)
    }

    pub fn state(&self) -> &Arc<EngineState> {
        &self.state
    }

    /// Hands `snapshot` to every worker; each swaps it in at the top of its next loop turn.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        self.publisher.publish(snapshot);
    }

    /// A handle for the control thread to publish with.
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Graceful stop: workers stop accepting, finish what is in flight, close idle
    /// connections, and exit (at the latest after the grace period).
    pub fn stop(&self) {
        self.state.stopping.store(true, Ordering::Release);
        for wake in self.publisher.wakes.iter() {
            uring::eventfd_signal(wake.as_raw_fd());
        }
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
