//! Everything per core that is not protocol. [`driver`] is the one engine-neutral per-core
//! driver (connections, TLS sessions, upstream pool, timers, snapshot swap, metrics); `uring`
//! (io_uring) and `userspace` (smoltcp over TAP or AF_PACKET) are the transports under it.
//! [`Engine`] starts one worker per core and hands snapshots to them ([`publish`]); `sys`
//! holds the system calls that are neither io_uring nor a packet device.

pub mod access_log;
pub mod driver;
pub mod metrics;
pub mod publish;
pub mod sys;
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

use crate::core::conn::ConnConfig;
use crate::core::snapshot::Snapshot;
use crate::core::tls::TlsSettings;
use driver::{Driver, DriverSetup, HttpsSide};
use metrics::WorkerMetrics;
pub use publish::{EngineState, MetricsFn, PublicationStats, Publisher};
use uring::worker::{Worker, WorkerSetup};

/// How to run the data plane.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// One worker per entry, pinned to that core (`None`: not pinned).
    pub workers: Vec<Option<usize>>,
    pub http: SocketAddr,
    pub conn: Arc<ConnConfig>,
    pub upstream_max_idle: usize,
    /// Upstream connections per endpoint each worker has in use at once at most (connecting
    /// included); more requests wait in a queue for one to be released. 0: no cap. Per
    /// worker: N workers may have N times this many to one endpoint.
    pub upstream_max_conns: usize,
    pub upstream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The io_uring loop's adaptive batching (ignored by the userspace engine).
    pub batching: uring::batch::Batching,
    /// The io_uring ring's sizes and receive budget (ignored by the userspace engine).
    pub uring: uring::tuning::Tuning,
}

/// The plain HTTP listener without a config: all addresses, port 80.
pub const DEFAULT_HTTP: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    80,
));
/// Keep-alive connections pooled per pod endpoint and worker, at least.
pub const DEFAULT_UPSTREAM_MAX_IDLE: usize = 64;
/// How long a pooled upstream connection may stay idle.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping worker lets its connections drain.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(240);

/// What `sluice run` uses without a config file (the config's own defaults are the same
/// constants): one pinned worker per core, plain HTTP on `0.0.0.0:80`, the default connection
/// settings, 64 pooled keep-alive connections per endpoint kept 60 s, 240 s to drain on stop,
/// the default batching and ring sizes.
impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: EngineConfig::all_cores(),
            http: DEFAULT_HTTP,
            conn: Arc::new(ConnConfig::default()),
            upstream_max_idle: DEFAULT_UPSTREAM_MAX_IDLE,
            upstream_max_conns: 0,
            upstream_idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            batching: uring::batch::Batching::default(),
            uring: uring::tuning::Tuning::default(),
        }
    }
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

/// A worker an engine can run: built on its thread from the engine's per-worker setup and the
/// driver, then run until stopped.
pub(crate) trait EngineWorker: Sized + 'static {
    type Setup: Send + 'static;
    fn build(setup: Self::Setup, driver: Driver) -> io::Result<Self>;
    fn run(self) -> io::Result<()>;
}

/// Workers started by [`launch`], with what publication needs.
pub(crate) struct Launched {
    workers: Vec<JoinHandle<io::Result<()>>>,
    senders: Vec<Sender<Arc<Snapshot>>>,
    retired: Receiver<Arc<Snapshot>>,
    wakes: Vec<OwnedFd>,
    state: Arc<EngineState>,
}

/// What every engine's start shares: the engine state and per-worker metrics, then one
/// thread per `(setup, wake-up eventfd)` named `name-N`, each with its driver (mailbox,
/// retirement channel, metrics, stop flag), waiting for each to be built. If one fails to
/// build, the ones started are stopped and joined and its error is returned.
pub(crate) fn launch<W: EngineWorker>(
    cfg: &EngineConfig,
    https: Option<&HttpsConfig>,
    snapshot: &Arc<Snapshot>,
    setups: Vec<(W::Setup, OwnedFd)>,
    name: &str,
) -> io::Result<Launched> {
    sys::raise_nofile_limit();
    let stopping = Arc::new(AtomicBool::new(false));
    // One set of per-backend series names for all workers (see `metrics::BackendNames`).
    let backend_names = Arc::new(metrics::BackendNames::default());
    let metrics: Vec<Arc<WorkerMetrics>> = setups
        .iter()
        .map(|_| Arc::new(WorkerMetrics::with_backends(backend_names.clone())))
        .collect();
    let state = Arc::new(EngineState {
        metrics: metrics.clone(),
        publication: Mutex::new(PublicationStats::default()),
        snapshot: RwLock::new(snapshot.clone()),
        stopping: stopping.clone(),
        extra_metrics: Mutex::new(Vec::new()),
    });
    let (retired_tx, retired) = channel();
    let mut launched = Launched {
        workers: Vec::new(),
        senders: Vec::new(),
        retired,
        wakes: Vec::new(),
        state,
    };
    for (index, (setup, wake)) in setups.into_iter().enumerate() {
        let (tx, rx) = channel();
        let driver = DriverSetup {
            index,
            conn: cfg.conn.clone(),
            https: https.map(|h| HttpsSide {
                conn: h.conn.clone(),
                settings: h.settings.clone(),
            }),
            snapshots: rx,
            retired: retired_tx.clone(),
            metrics: metrics[index].clone(),
            stopping: stopping.clone(),
            upstream_max_idle: cfg.upstream_max_idle,
            upstream_max_conns: cfg.upstream_max_conns,
            upstream_idle_timeout: cfg.upstream_idle_timeout,
            shutdown_grace: cfg.shutdown_grace,
            access_log: access_log::installed().map(access_log::AccessLog::worker),
        };
        let snapshot = snapshot.clone();
        let (handle, started) = spawn_worker(
            format!("{name}-{index}"),
            move || W::build(setup, Driver::new(driver, snapshot)),
            W::run,
        )?;
        launched.workers.push(handle);
        launched.senders.push(tx);
        launched.wakes.push(wake);
        if let Err(e) = started {
            stopping.store(true, Ordering::Release);
            for w in &launched.wakes {
                sys::eventfd_signal(w.as_raw_fd());
            }
            for w in launched.workers {
                let _ = w.join();
            }
            return Err(e);
        }
    }
    Ok(launched)
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
}

impl Engine {
    /// Binds every worker's listener and starts the workers (each serving `snapshot`); the
    /// admin server is `main`'s to start over [`Engine::state`]. Fails, with nothing left
    /// running, if io_uring is unavailable.
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
        let n = cfg.workers.len();
        let mut https_addr = None;
        let mut https_listeners = Vec::new();
        if let Some(h) = &https {
            let (fds, addr) = uring::listen_all(h.addr, n)?;
            https_listeners = fds;
            https_addr = Some(addr);
            // Redirects from the plain listener name the port really listened on.
            let mut plain = (*cfg.conn).clone();
            plain.https_port = addr.port();
            cfg.conn = Arc::new(plain);
        }
        let (listeners, addr) = uring::listen_all(cfg.http, n).inspect_err(|_| {
            for fd in &https_listeners {
                uring::close(*fd);
            }
        })?;
        let mut https_listeners = https_listeners.into_iter();
        let mut setups = Vec::new();
        for (core, listener) in cfg.workers.iter().zip(listeners) {
            let wake = sys::eventfd()?;
            let setup = WorkerSetup {
                core: *core,
                listener,
                https_listener: https_listeners.next(),
                wake: wake.as_raw_fd(),
                batching: cfg.batching,
                tuning: cfg.uring,
            };
            setups.push((setup, wake));
        }
        let workers = launch::<Worker>(&cfg, https.as_ref(), &snapshot, setups, "sluice-worker")?;
        Ok(Engine::assemble(workers, addr, https_addr))
    }

    /// A running engine from the workers [`launch`] started.
    pub(crate) fn assemble(
        w: Launched,
        local_addr: SocketAddr,
        https_addr: Option<SocketAddr>,
    ) -> Engine {
        Engine {
            workers: w.workers,
            publisher: Publisher {
                senders: w.senders,
                retired: Arc::new(Mutex::new(w.retired)),
                wakes: Arc::new(w.wakes),
                state: w.state.clone(),
            },
            state: w.state,
            local_addr,
            https_addr,
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
            sys::eventfd_signal(wake.as_raw_fd());
        }
    }

    /// Waits for every worker to finish.
    pub fn join(self) -> io::Result<()> {
        let mut result = Ok(());
        for w in self.workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a worker panicked")),
            }
        }
        result
    }
}
