//! The engine-neutral per-core driver: everything a worker does that is not moving bytes.
//! It owns the slab of `core::conn::Conn` machines, the TLS sessions between the transport
//! and those machines, the upstream connections and their keep-alive pool (with its expiry),
//! the connection deadlines, the route snapshot and picker (swapped and acknowledged at the
//! quiescent point), the dispatch of every [`Action`] a machine asks for, and the worker's
//! metrics. It is written once; the io_uring and the userspace (smoltcp) engines are thin
//! [`Transport`]s under it.
//! An idle keep-alive connection's machine is parked (`machine`): it holds no buffer.
//! Small response output a machine holds back for the rest of its response
//! (`postpone_output`) is released from a deadline-ordered queue when its time comes.
//!
//! From accept to upstream response: the transport accepts a socket and calls
//! [`Driver::accept`], which makes a `Conn` (and a `TlsSession` on the HTTPS listener).
//! Bytes the transport receives go in through [`Driver::received`] (decrypted first, for
//! HTTPS); the machine routes the head on the snapshot and asks for `Connect`, which the
//! driver serves from the pool or by [`Transport::connect`]; once [`Driver::connected`] says
//! so, the machine's request bytes go out through [`Transport::send`], the upstream's answer
//! comes back through [`Driver::received`], and the response goes to the client the same way
//! (encrypted for HTTPS). `ReleaseUpstream` puts the upstream connection back into the pool,
//! `CloseClient` ends with [`Transport::close`].
//!
//! Why the seam is here. smoltcp's `phy::Device` is the model: the device only hands over
//! and takes frames (with tokens that lend buffers), while everything that has state lives
//! above it, once. monoio splits its runtime the same way: drivers (io_uring, epoll) own the
//! buffers the kernel holds and complete operations; everything else is shared. Pingora
//! names its request phases and keeps them apart from the connectors underneath. Here the
//! transport owns sockets and buffers at the edge (io_uring's in-flight send buffers and
//! provided receive buffers; smoltcp's socket buffers and frames) and reports events
//! (accepted, received, sent, connected, EOF, error); the driver owns every decision. A
//! send is either completed at once (smoltcp copies into its socket buffer) or later (the
//! kernel owns an io_uring send buffer until its completion): [`Sent`] says which, so both
//! fit one interface without a per-event `dyn` call: the driver is generic over its
//! transport.

mod demand;
mod machine;
mod queue;
mod side;
mod slab;
mod upstream_tls;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use machine::Machine;
pub use slab::Slab;
use upstream_tls::PoolKey;

use crate::core::conn::{Action, ClientInfo, ConnConfig};
use crate::core::proxy_protocol;
use crate::core::route::upstream_tls::UpstreamTls;
use crate::core::snapshot::Snapshot;
use crate::core::time::Instant;
use crate::core::tls::{Received, TlsSession, TlsSettings};
use crate::core::tls_client::ClientTlsSession;
use crate::core::upstream::Picker;
use crate::core::upstream::SnapshotRouter;
use crate::engine::access_log::{Entry, WorkerLog};
use crate::engine::metrics::WorkerMetrics;
use crate::engine::publish::take_newer;

/// Wall-clock time for the access log's timestamps.
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

/// Seconds since the Unix epoch at the monotonic instant `now` (affinity cookies' `Expires`).
fn wall_at(now: Instant) -> Option<(Instant, u64)> {
    let secs = wall_clock()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some((now, secs))
}

/// The engine's one clock read: monotonic time as the core's `Instant`.
#[allow(clippy::disallowed_methods)]
pub fn clock() -> Instant {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    Instant::from_nanos(origin.elapsed().as_nanos() as u64)
}

/// Which driver object a transport socket belongs to. The transport keeps it with the socket
/// and hands it back with every event; a stale one (the slot was reused) is ignored.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Client {
        slot: u32,
        generation: u32,
    },
    Upstream {
        slot: u32,
        generation: u32,
    },
    /// An `auth-url` subrequest or a mirror copy (see `side`).
    Side {
        slot: u32,
        generation: u32,
    },
}

/// What became of a buffer handed to [`Transport::send`].
pub enum Sent {
    /// The transport holds it until the write completes, then reports [`Driver::sent`].
    Pending,
    /// Written (`written` bytes of it, maybe 0) at once; `closed`: the socket can take no
    /// more, ever (reported once).
    Done {
        buf: Vec<u8>,
        written: usize,
        closed: bool,
    },
}

/// What an engine implements under the driver: sockets and their bytes. Indexes are the
/// transport's own socket handles.
pub trait Transport {
    /// Hands `buf` to socket `sock` for writing (at most one send in flight per socket).
    fn send(&mut self, sock: usize, buf: Vec<u8>) -> Sent;
    /// Whether the driver wants input from `sock` now (backpressure when not).
    fn set_read(&mut self, sock: usize, wanted: bool);
    /// Opens a connection to `endpoint` for `owner`; reports [`Driver::connected`] later.
    fn connect(&mut self, endpoint: SocketAddr, owner: Owner) -> std::io::Result<usize>;
    /// Whether an upstream socket can go back to the keep-alive pool (nothing queued, nothing
    /// unread, still open).
    fn reusable(&mut self, sock: usize) -> bool;
    /// Half-closes the write side (FIN) after what was sent.
    fn shutdown_write(&mut self, sock: usize);
    /// Closes `sock` (after writing `last` if it can, best effort); no event for it follows.
    fn close(&mut self, sock: usize, last: Option<&[u8]>);
    /// Stops accepting and refuses new connections.
    fn stop_accepting(&mut self);
    /// The smallest body worth moving from socket `from` to socket `to` inside the kernel
    /// ([`Transport::pass`]), when the transport can do that for these two sockets now.
    /// `None` (what a transport without it says): the driver moves every byte itself.
    fn pass_min(&mut self, _from: usize, _to: usize) -> Option<u64> {
        None
    }
    /// Starts moving the next `len` bytes of `from` to `to` inside the kernel, for `owner`
    /// (the client): progress and the end come as [`Driver::passed`], and neither socket is
    /// read (`from`) or written (`to`) by the driver meanwhile. False: not yet, because
    /// `from`'s receive has not ended (the transport ends it, and touches the owner of `from`
    /// when it did).
    fn pass(&mut self, _from: usize, _to: usize, _len: u64, _owner: Owner) -> bool {
        false
    }
}

/// How a [`Transport::pass`] ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PassEnd {
    /// All its bytes moved.
    Done,
    /// The upstream closed first (the body is cut).
    UpstreamEof,
    UpstreamFailed,
    ClientFailed,
}

/// The HTTPS side of a worker: its connections' settings and the TLS settings (ticket keys and
/// session cache are shared by every worker).
pub struct HttpsSide {
    pub conn: Arc<ConnConfig>,
    pub settings: Arc<TlsSettings>,
}

/// What a driver is given.
pub struct DriverSetup {
    pub index: usize,
    pub conn: Arc<ConnConfig>,
    pub https: Option<HttpsSide>,
    pub snapshots: Receiver<Arc<Snapshot>>,
    /// Where the driver hands the snapshot it stops serving, so that freeing a large table
    /// happens on the control thread, never on a worker.
    pub retired: Sender<Arc<Snapshot>>,
    pub metrics: Arc<WorkerMetrics>,
    pub stopping: Arc<AtomicBool>,
    /// Idle pooled connections kept per endpoint at least (more while recent demand was
    /// higher: [`demand`]).
    pub upstream_max_idle: usize,
    /// Upstream connections per endpoint (and TLS identity) this worker has in use at once
    /// at most, connecting included; a request that needs one more waits for one to be
    /// released ([`queue`]). 0: no cap.
    pub upstream_max_conns: usize,
    pub upstream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// This worker's side of the access log (`None`: off).
    pub access_log: Option<WorkerLog>,
}

/// Rounds of actions and output per connection per drive (a transport that writes at once
/// may let a machine make progress several times).
const MAX_ROUNDS: usize = 16;

/// An accepted client connection.
struct Client {
    sock: usize,
    /// Parked (no buffers) while the connection is idle between requests.
    conn: Machine,
    upstream: Option<usize>,
    /// A send of the transport is in flight.
    sending: bool,
    /// The transport moves a body from the upstream socket to this one ([`Transport::pass`]).
    passing: bool,
    timer: Option<Instant>,
    /// HTTPS: the TLS session between the socket and `conn`.
    tls: Option<Box<TlsSession>>,
    /// HTTPS: shut the write side once close_notify is written.
    shut_after_flush: bool,
    /// The endpoint of the request in flight and when it was sent there, for the picker's
    /// in-flight counts and latency averages (least_request, ewma).
    in_flight: Option<(SocketAddr, Instant)>,
    /// When the first byte of the current request was read (None between requests; a
    /// pipelined request already buffered counts from its predecessor's completion).
    request_start: Option<Instant>,
    /// When the current request asked for an upstream connection, and where to.
    upstream_start: Option<Instant>,
    upstream_addr: Option<SocketAddr>,
    /// A listener with `proxy_protocol`: the header being read (nothing else is, until it
    /// is complete) and when it must be complete by.
    proxy: Option<(Box<proxy_protocol::Reader>, Instant)>,
    /// The side connection of the `auth-url` subrequest this client waits for.
    auth_side: Option<usize>,
    /// Its machine's timer fired in this turn (a wait it gives up now timed out).
    timer_fired: bool,
}

impl Client {
    /// The connection machine's deadline, or the handshake's if earlier.
    fn deadline(&self) -> Option<Instant> {
        if let Some((_, at)) = &self.proxy {
            return Some(*at);
        }
        let tls = self.tls.as_ref().and_then(|t| t.deadline());
        match (self.conn.deadline(), tls) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum UpState {
    Connecting,
    /// Connected; the TLS handshake with the upstream runs (`backend-protocol: HTTPS`). The
    /// machine is told it is connected once it is done.
    Handshaking,
    Attached,
    Idle {
        since: Instant,
    },
}

/// A connection to a pod endpoint: attached to one client, or idle in the pool.
struct Upstream {
    sock: usize,
    endpoint: SocketAddr,
    /// The endpoint and TLS identity: where it goes in the keep-alive pool.
    key: PoolKey,
    /// `backend-protocol: HTTPS`: the TLS session over the socket, and the identity it was
    /// made for (config id, name).
    tls: Option<Box<ClientTlsSession>>,
    tls_identity: Option<(u64, Option<Box<str>>)>,
    state: UpState,
    client: Option<usize>,
    sending: bool,
    /// When the connect was started (the connect-time histogram).
    connect_start: Instant,
}

/// Whether the worker's loop goes on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    Run,
    /// Stopped and drained (or the grace period is over): leave the loop.
    Exit,
}

pub struct Driver {
    setup: DriverSetup,
    snapshot: Arc<Snapshot>,
    picker: Picker,
    clients: Slab<Client>,
    upstreams: Slab<Upstream>,
    /// Idle pooled upstream slots by endpoint and TLS identity, oldest first.
    pool: HashMap<PoolKey, Vec<usize>>,
    /// Upstream connections in use per pool key and their recent peak (the pool's size).
    demand: demand::Demand,
    /// When the oldest idle pooled connection reaches the idle timeout (the pool is scanned
    /// then, not on every loop turn).
    pool_expiry: Option<Instant>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Clients holding small response output back (`postpone_output`) and when the hold
    /// runs out, in deadline order. Holds of a listener all last `postpone_timeout`, so a new
    /// one goes at the back: a push and a pop per hold, where the timer heap would take two
    /// pushes and two pops of log(connections) each (the hold's entry, then re-arming the
    /// connection's own deadline when that entry fires). Entries of holds that ended early
    /// are dropped at the end of a drive once they are the oldest, else when they come due.
    held: VecDeque<(Instant, usize, u32)>,
    /// The rustls config for new HTTPS connections, bound to the snapshot's certificates.
    tls_config: Option<Arc<rustls::ServerConfig>>,
    accepting: bool,
    stop_deadline: Option<Instant>,
    /// Clients touched since the last drive.
    touched: Vec<usize>,
    /// Upstreams to close at the next drive (an event found them unusable).
    doomed: Vec<usize>,
    /// Backend name → its row in the per-backend counters (bounded: past 4× the cap,
    /// unknown names go to `other` without being remembered).
    backend_rows: HashMap<Box<str>, usize>,
    /// Auth subrequests and mirror copies.
    sides: side::Sides,
    /// Requests waiting for a connection to a capped endpoint (`upstream_max_conns`).
    queues: queue::Queues,
    /// Keys a connection in use was released or closed from since the last drive: their
    /// first waiters get it (capped endpoints only).
    freed: Vec<PoolKey>,
}

fn client_owner(slot: usize, generation: u32) -> Owner {
    Owner::Client {
        slot: slot as u32,
        generation,
    }
}

impl Driver {
    pub fn new(setup: DriverSetup, snapshot: Arc<Snapshot>) -> Driver {
        let mut picker = Picker::with_offset(setup.index as u32).with_outliers(setup.conn.outlier);
        picker.reset_for(&snapshot);
        picker.wall = wall_at(clock());
        setup
            .metrics
            .snapshot_version
            .store(snapshot.version, Ordering::Release);
        let tls_config = setup
            .https
            .as_ref()
            .map(|h| h.settings.server_config(snapshot.certs.clone()));
        Driver {
            setup,
            snapshot,
            picker,
            clients: Slab::default(),
            upstreams: Slab::default(),
            pool: HashMap::new(),
            demand: demand::Demand::default(),
            pool_expiry: None,
            timers: BinaryHeap::new(),
            held: VecDeque::new(),
            tls_config,
            accepting: true,
            stop_deadline: None,
            touched: Vec::new(),
            doomed: Vec::new(),
            backend_rows: HashMap::new(),
            sides: side::Sides::default(),
            queues: queue::Queues::default(),
            freed: Vec::new(),
        }
    }

    pub fn metrics(&self) -> &WorkerMetrics {
        &self.setup.metrics
    }

    pub fn index(&self) -> usize {
        self.setup.index
    }

    pub fn accepting(&self) -> bool {
        self.accepting
    }

    /// The loop is running: the worker serves (readiness).
    pub fn serving(&self, on: bool) {
        self.setup.metrics.serving.store(on, Ordering::Release);
    }

    /// The quiescent point, at the top of every loop turn: takes a newer snapshot if one is
    /// waiting, and runs the graceful stop (stop accepting, let machines finish, close what is
    /// left at the end of the grace period). Returns [`Flow::Exit`] once no client is left.
    pub fn quiescent<T: Transport>(&mut self, t: &mut T, now: Instant) -> Flow {
        if let Some(log) = &mut self.setup.access_log {
            // Lines that have waited long enough go to the logger thread (never waiting for it).
            log.flush_if_due(now);
        }
        if let Some(snapshot) = take_newer(&self.setup.snapshots, self.snapshot.version) {
            self.swap_snapshot(t, snapshot);
        }
        if self.setup.stopping.load(Ordering::Acquire) && self.stop_deadline.is_none() {
            self.stop_deadline = Some(now + self.setup.shutdown_grace);
            if self.accepting {
                self.accepting = false;
                t.stop_accepting();
            }
            for i in 0..self.clients.capacity() {
                if let Some(c) = self.clients.get_any(i) {
                    c.conn.begin_shutdown(now);
                    self.touched.push(i);
                }
            }
            self.drive(t, now);
        }
        let Some(deadline) = self.stop_deadline else {
            return Flow::Run;
        };
        if now >= deadline {
            for i in 0..self.clients.capacity() {
                self.close_client(t, i);
            }
        }
        if self.clients.is_empty() {
            Flow::Exit
        } else {
            Flow::Run
        }
    }

    /// The quiescent-point swap: new requests route on `snapshot`; requests already routed
    /// keep their endpoint; pooled idle connections to endpoints that are gone are closed.
    fn swap_snapshot<T: Transport>(&mut self, t: &mut T, snapshot: Arc<Snapshot>) {
        self.picker.reset_for(&snapshot);
        // Re-anchored now and then, so that wall-clock steps reach affinity cookies' Expires.
        self.picker.wall = wall_at(clock());
        let mut gone = Vec::new();
        self.pool.retain(|key, idle| {
            if snapshot.has_endpoint(&key.endpoint) {
                true
            } else {
                gone.append(idle);
                false
            }
        });
        for ui in gone {
            self.close_upstream(t, ui);
        }
        self.demand
            .retain(|key| snapshot.has_endpoint(&key.endpoint));
        if let Some(https) = &self.setup.https
            && !Arc::ptr_eq(&snapshot.certs, &self.snapshot.certs)
        {
            // New handshakes use the new certificates; established sessions keep theirs.
            self.tls_config = Some(https.settings.server_config(snapshot.certs.clone()));
        }
        let version = snapshot.version;
        let old = std::mem::replace(&mut self.snapshot, snapshot);
        // Freed by the control thread (if this was the last worker holding it); if the
        // engine is gone, dropping it here is all that is left to do. Handed back before the
        // acknowledgement, so whoever sees the acknowledgement can free it.
        let _ = self.setup.retired.send(old);
        self.setup
            .metrics
            .snapshot_version
            .store(version, Ordering::Release);
    }

    /// The earliest deadline the driver has (a connection timer or the pool's expiry).
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let log = self.setup.access_log.as_ref().and_then(WorkerLog::due);
        let held = self.held.front().map(|(at, _, _)| *at);
        [
            timer,
            held,
            self.pool_expiry,
            log,
            self.sides.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Work is waiting for the next [`Driver::drive`] (the caller should not sleep).
    pub fn has_work(&self) -> bool {
        !self.touched.is_empty()
            || !self.doomed.is_empty()
            || !self.freed.is_empty()
            || self.sides.has_work()
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// A new connection on a listener (`https`: the HTTPS one). Returns its owner for the
    /// transport to keep, or `None` when it is refused (the transport closes it).
    pub fn accept(
        &mut self,
        sock: usize,
        info: ClientInfo,
        https: bool,
        now: Instant,
    ) -> Option<Owner> {
        if !self.accepting {
            return None;
        }
        let (config, tls) = match (&self.setup.https, &self.tls_config) {
            (Some(h), Some(tls_config)) if https => {
                let session = TlsSession::new(tls_config.clone(), &h.settings, now).ok()?;
                (h.conn.clone(), Some(Box::new(session)))
            }
            _ if https => return None,
            _ => (self.setup.conn.clone(), None),
        };
        let proxy = config
            .proxy_protocol
            .then(|| (Box::default(), now + config.timeouts.request_head));
        let conn = Machine::new(info, config, now);
        let slot = self.clients.insert(|_| Client {
            sock,
            conn,
            upstream: None,
            sending: false,
            passing: false,
            timer: None,
            tls,
            shut_after_flush: false,
            in_flight: None,
            request_start: None,
            upstream_start: None,
            upstream_addr: None,
            proxy,
            auth_side: None,
            timer_fired: false,
        });
        let m = &self.setup.metrics;
        WorkerMetrics::add(&m.accepted, 1);
        m.active.fetch_add(1, Ordering::Relaxed);
        self.touched.push(slot);
        Some(client_owner(slot, self.clients.generation(slot)))
    }

    /// Whether `owner` wants input now (for transports that pull what they received).
    pub fn wants_read(&mut self, owner: Owner) -> bool {
        match owner {
            Owner::Client { slot, generation } => self
                .clients
                .get(slot as usize, generation)
                .is_some_and(|c| c.conn.wants_client_read()),
            Owner::Upstream { slot, generation } => {
                let Some(up) = self.upstreams.get(slot as usize, generation) else {
                    return false;
                };
                match (up.state, up.client) {
                    // Watched: anything from an idle connection means it is gone.
                    (UpState::Idle { .. }, _) => true,
                    (UpState::Handshaking, _) => true,
                    (UpState::Attached, Some(ci)) => self
                        .clients
                        .get_any(ci)
                        .is_some_and(|c| c.conn.wants_upstream_read()),
                    _ => false,
                }
            }
            // An auth answer is read as it comes; a mirror's first bytes end it.
            Owner::Side { .. } => true,
        }
    }

    /// Something happened on `owner`'s socket that may let it make progress (room to send).
    pub fn touch(&mut self, owner: Owner) {
        match owner {
            Owner::Client { slot, generation } => {
                if self.clients.get(slot as usize, generation).is_some() {
                    self.touched.push(slot as usize);
                }
            }
            Owner::Upstream { slot, generation } => {
                if let Some(up) = self.upstreams.get(slot as usize, generation)
                    && let Some(ci) = up.client
                {
                    self.touched.push(ci);
                }
            }
            Owner::Side { slot, generation } => self.side_touch(slot, generation),
        }
    }

    /// The attached client of upstream `slot`/`generation`, or `None` (after dooming an idle
    /// one that spoke: it is no longer usable).
    fn upstream_client(&mut self, slot: u32, generation: u32) -> Option<usize> {
        let up = self.upstreams.get(slot as usize, generation)?;
        match up.state {
            UpState::Attached => up.client,
            UpState::Idle { .. } => {
                // An idle pooled connection said something (data, EOF, an error): drop it.
                let key = up.key;
                if let Some(list) = self.pool.get_mut(&key) {
                    list.retain(|&i| i != slot as usize);
                }
                self.doomed.push(slot as usize);
                None
            }
            UpState::Connecting | UpState::Handshaking => None,
        }
    }

    /// Bytes received on `owner`'s socket (none: nothing happens).
    pub fn received(&mut self, owner: Owner, data: &[u8], now: Instant) {
        if data.is_empty() {
            return;
        }
        match owner {
            Owner::Client { slot, generation } => {
                let Some(client) = self.clients.get(slot as usize, generation) else {
                    return;
                };
                let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
                let m = &self.setup.metrics;
                WorkerMetrics::add(&m.bytes_in, data.len() as u64);
                self.touched.push(slot as usize);
                let after_header;
                let data = match &mut client.proxy {
                    None => data,
                    Some((reader, _)) => match reader.feed(data) {
                        Ok(None) => return,
                        Ok(Some((header, rest))) => {
                            client.proxy = None;
                            if let Some(source) = header.source {
                                client.conn.set_proxied(source);
                            }
                            if rest.is_empty() {
                                return;
                            }
                            after_header = rest;
                            &after_header[..]
                        }
                        Err(e) => {
                            tracing::debug!(peer = %client.conn.peer_addr(), error = %e, "connection closed");
                            WorkerMetrics::add(&m.proxy_protocol_errors, 1);
                            client.proxy = None;
                            client.conn.client_error(now);
                            return;
                        }
                    },
                };
                client.request_start.get_or_insert(now);
                let conn = &mut client.conn;
                let Some(tls) = &mut client.tls else {
                    conn.client_data(data, now, &mut router);
                    return;
                };
                let handshaking = tls.is_handshaking();
                let mut deliver = |plain: &[u8]| conn.client_data(plain, now, &mut router);
                let result = tls.receive(data, &mut deliver);
                if handshaking && result.is_err() {
                    WorkerMetrics::add(&m.tls_failed, 1);
                } else if handshaking && !tls.is_handshaking() {
                    let kind = if tls.resumed() {
                        &m.tls_resumed
                    } else {
                        &m.tls_full
                    };
                    WorkerMetrics::add(kind, 1);
                }
                match result {
                    Ok(Received::Open) => {}
                    Ok(Received::Closed) => conn.client_eof(now, &mut router),
                    // The alert rustls queued is written by `close_client`.
                    Err(_) => conn.client_error(now),
                }
            }
            Owner::Upstream { slot, generation } => {
                if self.upstream_tls_received(slot, generation, data, now) {
                    return;
                }
                let Some(ci) = self.upstream_client(slot, generation) else {
                    return;
                };
                let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
                if let Some(client) = self.clients.get_any(ci) {
                    client.conn.upstream_data(data, now, &mut router);
                    self.touched.push(ci);
                }
            }
            Owner::Side { slot, generation } => self.side_received(slot, generation, data),
        }
    }

    /// The peer of `owner`'s socket finished sending (FIN).
    pub fn eof(&mut self, owner: Owner, now: Instant) {
        self.ended(owner, true, now);
    }

    /// `owner`'s socket failed (reset, or a receive error).
    pub fn failed(&mut self, owner: Owner, now: Instant) {
        self.ended(owner, false, now);
    }

    fn ended(&mut self, owner: Owner, eof: bool, now: Instant) {
        match owner {
            Owner::Client { slot, generation } => {
                let Some(client) = self.clients.get(slot as usize, generation) else {
                    return;
                };
                let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
                if eof {
                    client.conn.client_eof(now, &mut router);
                } else {
                    client.conn.client_error(now);
                }
                self.touched.push(slot as usize);
            }
            Owner::Upstream { slot, generation } => {
                if self.handshake_ended(slot, generation, now) {
                    return;
                }
                let Some(ci) = self.upstream_client(slot, generation) else {
                    return;
                };
                let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
                if let Some(client) = self.clients.get_any(ci) {
                    if eof {
                        client.conn.upstream_eof(now, &mut router);
                    } else {
                        client.conn.upstream_error(now, &mut router);
                    }
                    self.touched.push(ci);
                }
            }
            Owner::Side { slot, generation } => self.side_ended(slot, generation),
        }
    }

    /// A send the transport held ([`Sent::Pending`]) completed: `written` bytes of `buf`, or
    /// it failed (`None`).
    pub fn sent(&mut self, owner: Owner, buf: Vec<u8>, written: Option<usize>, now: Instant) {
        match owner {
            Owner::Client { slot, generation } => {
                if let Some(client) = self.clients.get(slot as usize, generation) {
                    client.sending = false;
                    self.client_written(slot as usize, buf, written.unwrap_or(0), now);
                    if written.is_none() {
                        self.ended(owner, false, now);
                    }
                }
            }
            Owner::Upstream { slot, generation } => {
                if let Some(up) = self.upstreams.get(slot as usize, generation) {
                    up.sending = false;
                    if matches!(up.state, UpState::Attached | UpState::Handshaking)
                        && let Some(ci) = up.client
                    {
                        self.upstream_written(ci, buf, written, now);
                    }
                }
            }
            Owner::Side { slot, generation } => self.side_sent(slot, generation, buf, written),
        }
    }

    /// A pass ([`Transport::pass`]) for `owner` moved `moved` more bytes, and ended (`end`)
    /// or goes on.
    pub fn passed(&mut self, owner: Owner, moved: u64, end: Option<PassEnd>, now: Instant) {
        let Owner::Client { slot, generation } = owner else {
            return;
        };
        let Some(client) = self.clients.get(slot as usize, generation) else {
            return;
        };
        WorkerMetrics::add(&self.setup.metrics.bytes_out, moved);
        WorkerMetrics::add(&self.setup.metrics.bytes_passed, moved);
        let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
        client.conn.passed(moved, now, &mut router);
        if let Some(end) = end {
            client.passing = false;
            match end {
                PassEnd::Done => {}
                PassEnd::UpstreamEof => client.conn.upstream_eof(now, &mut router),
                PassEnd::UpstreamFailed => client.conn.upstream_error(now, &mut router),
                PassEnd::ClientFailed => client.conn.client_error(now),
            }
        }
        self.touched.push(slot as usize);
    }

    fn client_written(&mut self, slot: usize, buf: Vec<u8>, written: usize, now: Instant) {
        let Some(client) = self.clients.get_any(slot) else {
            return;
        };
        WorkerMetrics::add(&self.setup.metrics.bytes_out, written as u64);
        let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
        match &mut client.tls {
            None => client.conn.client_sent(buf, written, now, &mut router),
            Some(tls) => {
                // The machine's buffer comes back once all of its ciphertext is out.
                if let Some((plain, len)) = tls.sent(buf, written) {
                    client.conn.client_sent(plain, len, now, &mut router);
                }
            }
        }
        self.touched.push(slot);
    }

    fn upstream_written(&mut self, ci: usize, buf: Vec<u8>, written: Option<usize>, now: Instant) {
        let Some((buf, written)) = self.upstream_tls_written(ci, buf, written, now) else {
            return;
        };
        let Some(client) = self.clients.get_any(ci) else {
            return;
        };
        let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
        match written {
            Some(n) => client.conn.upstream_sent(buf, n, now, &mut router),
            None => client.conn.upstream_error(now, &mut router),
        }
        self.touched.push(ci);
    }

    /// An upstream connection this driver asked for is established (`ok`) or failed.
    pub fn connected(&mut self, owner: Owner, ok: bool, now: Instant) {
        let (slot, generation) = match owner {
            Owner::Upstream { slot, generation } => (slot, generation),
            Owner::Side { slot, generation } => return self.side_connected(slot, generation, ok),
            Owner::Client { .. } => return,
        };
        let ui = slot as usize;
        let Some(up) = self.upstreams.get(ui, generation) else {
            return;
        };
        if up.state != UpState::Connecting {
            return;
        }
        let client = up.client;
        if ok && up.tls.is_some() {
            // The handshake's first flight goes out when the client is driven.
            up.state = UpState::Handshaking;
            let took = now.saturating_since(up.connect_start);
            self.setup.metrics.upstream_connect.observe(took);
            self.touched.extend(client);
            return;
        }
        if ok {
            up.state = UpState::Attached;
            let took = now.saturating_since(up.connect_start);
            self.setup.metrics.upstream_connect.observe(took);
        } else {
            WorkerMetrics::add(&self.setup.metrics.upstream_connect_errors, 1);
            self.doomed.push(ui);
        }
        let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
        if let Some(ci) = client
            && let Some(cl) = self.clients.get_any(ci)
        {
            if ok {
                cl.conn.upstream_connected(now, false, &mut router);
            } else {
                cl.upstream = None;
                cl.conn.upstream_connect_failed(now, &mut router);
            }
            self.touched.push(ci);
        }
    }

    /// Fires due connection timers and expires idle pooled connections.
    pub fn timers<T: Transport>(&mut self, t: &mut T, now: Instant) {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(client) = self.clients.get(slot, generation) else {
                continue;
            };
            if client.timer != Some(at) {
                continue; // superseded by an earlier entry
            }
            client.timer = None;
            if client.proxy.as_ref().is_some_and(|(_, at)| *at <= now) {
                // No complete PROXY header in time.
                WorkerMetrics::add(&self.setup.metrics.proxy_protocol_errors, 1);
                self.close_client(t, slot);
                continue;
            }
            if client
                .tls
                .as_ref()
                .and_then(|t| t.deadline())
                .is_some_and(|d| d <= now)
            {
                // The TLS handshake did not finish in time.
                WorkerMetrics::add(&self.setup.metrics.tls_failed, 1);
                WorkerMetrics::add(&self.setup.metrics.tls_failed_timeout, 1);
                self.close_client(t, slot);
                continue;
            }
            match client.deadline() {
                Some(deadline) if deadline > now => {
                    // The deadline moved on since this entry was armed: re-arm.
                    client.timer = Some(deadline);
                    self.timers.push(Reverse((deadline, slot, generation)));
                }
                Some(_) => {
                    let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
                    client.timer_fired = true;
                    client.conn.timer(now, &mut router);
                    self.touched.push(slot);
                }
                None => {}
            }
        }
        self.expire_holds(now);
        self.expire_pool(t, now);
        self.expire_mirrors(t, now);
    }

    /// Releases held response output whose time has come (the upstream sent a head, or a
    /// small piece, and then nothing more for `postpone_timeout`).
    fn expire_holds(&mut self, now: Instant) {
        while let Some(&(at, slot, generation)) = self.held.front() {
            if at > now {
                break;
            }
            self.held.pop_front();
            if let Some(client) = self.clients.get(slot, generation)
                && client.conn.hold_expired(now)
            {
                self.touched.push(slot);
            }
        }
    }

    fn expire_pool<T: Transport>(&mut self, t: &mut T, now: Instant) {
        if self.pool_expiry.is_none_or(|at| now < at) {
            return;
        }
        let timeout = self.setup.upstream_idle_timeout;
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for list in self.pool.values_mut() {
            list.retain(|&ui| {
                let idle_since = match self.upstreams.peek(ui) {
                    Some(Upstream {
                        state: UpState::Idle { since },
                        ..
                    }) => *since,
                    _ => return false,
                };
                if now.saturating_since(idle_since) >= timeout {
                    expired.push(ui);
                    false
                } else {
                    let at = idle_since + timeout;
                    next = Some(next.map_or(at, |n| n.min(at)));
                    true
                }
            });
        }
        self.pool_expiry = next;
        for ui in expired {
            self.close_upstream(t, ui);
        }
    }

    /// Carries out what the touched machines ask for and hands their output to the transport.
    pub fn drive<T: Transport>(&mut self, t: &mut T, now: Instant) {
        for ui in std::mem::take(&mut self.doomed) {
            self.close_upstream(t, ui);
        }
        self.drive_sides(t, now);
        // Driving may touch more (a pooled connection handed over completes at once): a few
        // passes, the rest waits for the next turn.
        for pass in 0..4 {
            if !self.touched.is_empty() {
                let mut touched = std::mem::take(&mut self.touched);
                touched.sort_unstable();
                touched.dedup();
                for &slot in &touched {
                    self.drive_one(t, slot, now);
                }
                touched.clear();
                if self.touched.is_empty() {
                    self.touched = touched;
                }
                for ui in std::mem::take(&mut self.doomed) {
                    self.close_upstream(t, ui);
                }
            }
            // Connections released to capped endpoints go to their waiters only now, with
            // every touched machine's actions carried out: a waiter that gave up in this turn
            // (its timer fired, it retries elsewhere) has left its queue and is not served.
            let before = self.touched.len();
            self.serve_waiters(t, now);
            if pass == 3 {
                // The last pass: the waiters just served are driven now, not at the next
                // event (a worker may sleep until then).
                let served: Vec<usize> = self.touched.drain(before..).collect();
                for slot in served {
                    self.drive_one(t, slot, now);
                }
            }
            if self.touched.is_empty() {
                break;
            }
        }
        // Holds that ended (the rest of the response came) need no wake-up: the oldest go,
        // so that the next deadline is a real one (most holds end within microseconds).
        while let Some(&(_, slot, generation)) = self.held.front() {
            let live = self.clients.generation(slot) == generation
                && self.clients.peek(slot).is_some_and(|c| c.conn.holding());
            if live {
                break;
            }
            self.held.pop_front();
        }
    }

    /// Carries out what one machine asks for, then moves its output, until nothing changes
    /// (bounded); then sets its read interest and arms its timer.
    fn drive_one<T: Transport>(&mut self, t: &mut T, slot: usize, now: Instant) {
        for _ in 0..MAX_ROUNDS {
            let mut progress = false;
            loop {
                let Some(client) = self.clients.get_any(slot) else {
                    return;
                };
                let Some(action) = client.conn.poll_action() else {
                    break;
                };
                progress = true;
                match action {
                    Action::Connect {
                        endpoint,
                        fresh,
                        tls,
                    } => {
                        if let Some((previous, _)) = client.in_flight.replace((endpoint, now)) {
                            self.picker.stats.finished(&previous, None, now);
                        }
                        self.picker.stats.started(endpoint);
                        self.connect(t, slot, endpoint, fresh, tls, now)
                    }
                    Action::ReleaseUpstream { reusable } => {
                        if let Some((endpoint, since)) = client.in_flight.take() {
                            // A clean end measures the exchange; a failed one only ends it.
                            let latency = reusable.then(|| now.saturating_since(since));
                            self.picker.stats.finished(&endpoint, latency, now);
                        }
                        self.release_upstream(t, slot, reusable, now)
                    }
                    Action::Completed { status } => {
                        let class = usize::from(status / 100).clamp(1, 5) - 1;
                        let m = &self.setup.metrics;
                        WorkerMetrics::add(&m.responses[class], 1);
                        let start = client.request_start.take().unwrap_or(now);
                        let request_time = now.saturating_since(start);
                        m.request_duration[class].observe(request_time);
                        let upstream_time = client
                            .upstream_start
                            .take()
                            .map(|at| now.saturating_since(at));
                        if let Some(d) = upstream_time {
                            m.upstream_response.observe(d);
                        }
                        let r = client.conn.request_record();
                        if !r.route.is_empty() {
                            let row = match self.backend_rows.get(r.route.as_str()) {
                                Some(&row) => row,
                                None => {
                                    let b = &m.backends;
                                    let row = b.names.slot(&r.route).unwrap_or(b.other());
                                    if self.backend_rows.len() < 4 * b.names.cap() {
                                        self.backend_rows.insert(r.route.as_str().into(), row);
                                    }
                                    row
                                }
                            };
                            m.backends.count(row, class);
                        }
                        let upstream = client.upstream_addr.take();
                        if let Some(log) = &mut self.setup.access_log
                            && log.sampled()
                        {
                            log.record(
                                &Entry {
                                    time: wall_clock(),
                                    peer: client.conn.peer_addr(),
                                    client: client.conn.client_addr(),
                                    tls: client.tls.is_some(),
                                    method: &r.method,
                                    host: &r.host,
                                    path: &r.path,
                                    query: &r.query,
                                    protocol: r.protocol,
                                    status,
                                    bytes_in: r.bytes_in,
                                    bytes_out: r.bytes_out,
                                    referer: &r.referer,
                                    user_agent: &r.user_agent,
                                    request_time,
                                    route: &r.route,
                                    upstream,
                                    upstream_status: r.upstream_status,
                                    upstream_bytes: r.upstream_bytes,
                                    upstream_time,
                                    request_id: &r.request_id,
                                },
                                now,
                            );
                        }
                    }
                    Action::ShutdownClientWrite => match &mut client.tls {
                        None => t.shutdown_write(client.sock),
                        Some(tls) => {
                            // close_notify first; the FIN follows once it is written.
                            tls.close_notify();
                            client.shut_after_flush = true;
                        }
                    },
                    Action::CloseClient => {
                        self.close_client(t, slot);
                        return;
                    }
                    Action::Authorize(call) => self.authorize(t, slot, call, now),
                    Action::CancelAuth => self.cancel_auth(t, slot),
                    Action::Mirror(call) => self.mirror(t, call, now),
                }
            }
            progress |= self.client_output(t, slot, now);
            progress |= self.upstream_output(t, slot, now);
            if !progress {
                break;
            }
        }
        let Some(client) = self.clients.get_any(slot) else {
            return;
        };
        t.set_read(client.sock, client.conn.wants_client_read());
        // One heap entry per connection at most: a later deadline is left to the armed
        // entry, which re-arms itself when it fires early (deadlines move on every event, and
        // pushing each move would grow the heap with the request rate).
        if let Some(at) = client.deadline()
            && client.timer.is_none_or(|armed| at < armed)
        {
            client.timer = Some(at);
            self.timers
                .push(Reverse((at, slot, self.clients.generation(slot))));
        }
        let generation = self.clients.generation(slot);
        let Some(client) = self.clients.get_any(slot) else {
            return;
        };
        let wants = client.conn.wants_upstream_read();
        if let Some(ui) = client.upstream
            && let Some(up) = self.upstreams.get_any(ui)
        {
            match up.state {
                // The transport reads it.
                UpState::Attached if client.passing => {}
                UpState::Attached => {
                    // A large body goes peer to peer where the transport can move it: reading
                    // stops until the bytes already here are written, then the pass starts.
                    // The transport first: with passes off (the default) it says no at once,
                    // and the machine is not asked on every drive.
                    let pass = (client.tls.is_none() && up.tls.is_none())
                        .then(|| t.pass_min(up.sock, client.sock))
                        .flatten()
                        .and_then(|min| client.conn.passable().filter(|&n| n >= min))
                        .filter(|_| !client.conn.holding());
                    match pass {
                        None => t.set_read(up.sock, wants),
                        Some(n) => {
                            let owner = client_owner(slot, generation);
                            if client.conn.pass_ready() && t.pass(up.sock, client.sock, n, owner) {
                                client.passing = true;
                            } else {
                                t.set_read(up.sock, false);
                            }
                        }
                    }
                }
                UpState::Handshaking => t.set_read(up.sock, true),
                _ => {}
            }
        }
        if let Some(client) = self.clients.get_any(slot) {
            client.timer_fired = false;
        }
        // Idle between requests, nothing in flight: the machine and its buffers go back to
        // the worker's free list until the connection speaks again.
        if let Some(client) = self.clients.get_any(slot)
            && !client.sending
            && !client.passing
            && !client.shut_after_flush
            && client.upstream.is_none()
        {
            client.conn.park();
        }
    }

    /// Hands the client's next output to the transport. True when something was written at
    /// once (the machine may go on).
    fn client_output<T: Transport>(&mut self, t: &mut T, slot: usize, now: Instant) -> bool {
        let Some(client) = self.clients.get_any(slot) else {
            return false;
        };
        if client.sending || client.passing {
            return false;
        }
        let out = match &mut client.tls {
            None => client.conn.take_client_output(),
            Some(tls) => {
                if tls.wants_plain()
                    && let Some(plain) = client.conn.take_client_output()
                {
                    tls.push_plain(plain);
                }
                tls.take_output()
            }
        };
        if let Some(until) = client.conn.new_hold() {
            // Small output waits for the rest of the response, for a bounded time.
            let generation = self.clients.generation(slot);
            let at = self.held.iter().rposition(|&(a, _, _)| a <= until);
            self.held
                .insert(at.map_or(0, |i| i + 1), (until, slot, generation));
        }
        let Some(client) = self.clients.get_any(slot) else {
            return false;
        };
        let Some(buf) = out else {
            if client.shut_after_flush {
                client.shut_after_flush = false;
                t.shutdown_write(client.sock);
            }
            return false;
        };
        match t.send(client.sock, buf) {
            Sent::Pending => {
                client.sending = true;
                false
            }
            Sent::Done {
                buf,
                written,
                closed,
            } => {
                self.client_written(slot, buf, written, now);
                if closed {
                    // The client can no longer take what we have for it.
                    if let Some(client) = self.clients.get_any(slot) {
                        client.conn.client_error(now);
                    }
                }
                written > 0 || closed
            }
        }
    }

    /// Hands the machine's next upstream output to the transport (as [`Self::client_output`]).
    fn upstream_output<T: Transport>(&mut self, t: &mut T, slot: usize, now: Instant) -> bool {
        let Some(client) = self.clients.get_any(slot) else {
            return false;
        };
        let Some(ui) = client.upstream else {
            return false;
        };
        let Some(up) = self.upstreams.get_any(ui) else {
            return false;
        };
        if !matches!(up.state, UpState::Attached | UpState::Handshaking) || up.sending {
            return false;
        }
        let out = match &mut up.tls {
            None => client.conn.take_upstream_output(),
            Some(tls) => {
                if up.state == UpState::Attached
                    && tls.wants_plain()
                    && let Some(plain) = client.conn.take_upstream_output()
                {
                    tls.push_plain(plain);
                }
                tls.take_output()
            }
        };
        let Some(buf) = out else {
            return false;
        };
        match t.send(up.sock, buf) {
            Sent::Pending => {
                up.sending = true;
                false
            }
            Sent::Done {
                buf,
                written,
                closed,
            } => {
                self.upstream_written(slot, buf, Some(written), now);
                if closed {
                    self.upstream_written(slot, Vec::new(), None, now);
                }
                written > 0 || closed
            }
        }
    }

    /// Serves a machine's `Connect`: from the pool, by a new connection, or, when the
    /// endpoint is capped and at its cap (or others already wait for it), by waiting in its
    /// queue until a connection is released.
    fn connect<T: Transport>(
        &mut self,
        t: &mut T,
        slot: usize,
        endpoint: SocketAddr,
        fresh: bool,
        tls: Option<Arc<UpstreamTls>>,
        now: Instant,
    ) {
        if let Some(client) = self.clients.get_any(slot) {
            // A retry on a fresh connection keeps the first attempt's start.
            client.upstream_start.get_or_insert(now);
            client.upstream_addr = Some(endpoint);
        }
        let cap = self.setup.upstream_max_conns;
        if cap == 0 {
            return self.open(t, slot, endpoint, fresh, tls, now);
        }
        let key = self.pool_key_for(slot, endpoint, tls.as_deref());
        let waiting = self.queues.waiting(key);
        let in_use = self.demand.in_use(key) as usize;
        let idle = self.pool.get(&key).map_or(0, Vec::len);
        let full = in_use >= cap && (fresh || idle == 0);
        if waiting == 0 && !full {
            if fresh && idle > 0 && in_use + idle >= cap {
                // A new connection beside idle ones would pass the cap: the oldest idle goes.
                let oldest = self.pool.get_mut(&key).map(|list| list.remove(0));
                if let Some(ui) = oldest {
                    self.close_upstream(t, ui);
                }
            }
            return self.open(t, slot, endpoint, fresh, tls, now);
        }
        // Others came first, or all the cap allows are in use: wait for a release.
        let waiter = queue::Waiter {
            slot,
            generation: self.clients.generation(slot),
            endpoint,
            fresh,
            tls,
        };
        self.queues.push(key, waiter);
        WorkerMetrics::add(&self.setup.metrics.upstream_queued, 1);
        if in_use < cap {
            // Room already: the queue is served at the end of this pass.
            self.freed.push(key);
        }
    }

    /// The pool key of a connection for client `slot` to `endpoint` (with `tls`).
    fn pool_key_for(
        &self,
        slot: usize,
        endpoint: SocketAddr,
        tls: Option<&UpstreamTls>,
    ) -> PoolKey {
        let host = self
            .clients
            .peek(slot)
            .map_or("", |c| c.conn.upstream_tls_host());
        let identity = tls.map(|tls| (tls.id, tls.pool_name(host)));
        upstream_tls::pool_key(endpoint, identity)
    }

    /// Gives the first waiters of each key in `freed` the connections released to them
    /// (from the pool) or new ones, while their key is under its cap.
    fn serve_waiters<T: Transport>(&mut self, t: &mut T, now: Instant) {
        if self.freed.is_empty() {
            return;
        }
        let cap = self.setup.upstream_max_conns;
        let mut freed = std::mem::take(&mut self.freed);
        freed.sort_unstable_by_key(|k| (k.endpoint, k.tls));
        freed.dedup();
        for key in freed {
            while (self.demand.in_use(key) as usize) < cap {
                let Some(w) = self.queues.pop(key) else {
                    break;
                };
                if self.clients.generation(w.slot) != w.generation {
                    continue; // closed without leaving (never: `close_client` leaves)
                }
                self.touched.push(w.slot);
                self.open(t, w.slot, w.endpoint, w.fresh, w.tls, now);
            }
        }
    }

    /// A connection for client `slot`: an idle pooled one (unless `fresh`), else a new one.
    fn open<T: Transport>(
        &mut self,
        t: &mut T,
        slot: usize,
        endpoint: SocketAddr,
        fresh: bool,
        tls: Option<Arc<UpstreamTls>>,
        now: Instant,
    ) {
        // The TLS identity the connection needs (`None`: plain): its config and name.
        let host = self
            .clients
            .peek(slot)
            .map_or("", |c| c.conn.upstream_tls_host());
        let identity = tls.as_deref().map(|tls| (tls.id, tls.pool_name(host)));
        let key = upstream_tls::pool_key(endpoint, identity);
        let pooled = match fresh {
            true => None,
            false => upstream_tls::take_pooled(&mut self.pool, &self.upstreams, key, identity),
        };
        let identity = identity.map(|(id, name)| (id, name.map(Box::<str>::from)));
        let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
        if let Some(ui) = pooled {
            if let Some(up) = self.upstreams.get_any(ui) {
                up.state = UpState::Attached;
                up.client = Some(slot);
                self.demand.attach(key, now);
            }
            if let Some(client) = self.clients.get_any(slot) {
                client.upstream = Some(ui);
                client.conn.upstream_connected(now, true, &mut router);
            }
            return;
        }
        let session = match tls.as_deref().map(|tls| {
            let host = self
                .clients
                .peek(slot)
                .map_or("", |c| c.conn.upstream_tls_host());
            ClientTlsSession::new(tls, tls.name_for(host))
        }) {
            None => None,
            Some(Ok(session)) => Some(Box::new(session)),
            Some(Err(e)) => {
                tracing::debug!(%endpoint, error = %e, "upstream TLS");
                WorkerMetrics::add(&self.setup.metrics.upstream_connect_errors, 1);
                if let Some(client) = self.clients.get_any(slot) {
                    client.conn.upstream_connect_failed(now, &mut router);
                }
                return;
            }
        };
        // The slot is taken first so that the transport can be told its owner.
        let ui = self.upstreams.insert(|_| Upstream {
            sock: usize::MAX,
            endpoint,
            key,
            tls: session,
            tls_identity: identity,
            state: UpState::Connecting,
            client: Some(slot),
            sending: false,
            connect_start: now,
        });
        let owner = Owner::Upstream {
            slot: ui as u32,
            generation: self.upstreams.generation(ui),
        };
        match t.connect(endpoint, owner) {
            Ok(sock) => {
                if let Some(up) = self.upstreams.get_any(ui) {
                    up.sock = sock;
                    self.demand.attach(key, now);
                }
                if let Some(client) = self.clients.get_any(slot) {
                    client.upstream = Some(ui);
                }
            }
            Err(_) => {
                self.upstreams.remove(ui);
                WorkerMetrics::add(&self.setup.metrics.upstream_connect_errors, 1);
                if let Some(client) = self.clients.get_any(slot) {
                    client.conn.upstream_connect_failed(now, &mut router);
                }
            }
        }
    }

    fn release_upstream<T: Transport>(
        &mut self,
        t: &mut T,
        slot: usize,
        reusable: bool,
        now: Instant,
    ) {
        let Some(client) = self.clients.get_any(slot) else {
            return;
        };
        if self.queues.leave(slot) && client.timer_fired {
            // The machine gave up waiting on its connect timeout (retried elsewhere, or 504).
            WorkerMetrics::add(&self.setup.metrics.upstream_queue_timeouts, 1);
        }
        let Some(ui) = client.upstream.take() else {
            return;
        };
        let Some(up) = self.upstreams.get_any(ui) else {
            return;
        };
        up.client = None;
        if self.setup.upstream_max_conns > 0 {
            // Pooled or closed below, it makes room for the key's first waiter.
            self.freed.push(up.key);
        }
        let list_len = self.pool.get(&up.key).map_or(0, Vec::len);
        // As many idle as were in use at once lately, at least the configured cap.
        let keep = (self.setup.upstream_max_idle).max(self.demand.release(up.key, now));
        let poolable = reusable
            && up.state == UpState::Attached
            && !up.sending
            && up.tls.as_ref().is_none_or(|tls| tls.idle())
            && list_len < keep
            && self.accepting
            && t.reusable(up.sock);
        if !poolable {
            self.close_upstream(t, ui);
            return;
        }
        up.state = UpState::Idle { since: now };
        let at = now + self.setup.upstream_idle_timeout;
        self.pool_expiry = Some(self.pool_expiry.map_or(at, |e| e.min(at)));
        self.pool.entry(up.key).or_default().push(ui);
        // Watch the idle connection: data or EOF from it means it is gone.
        t.set_read(up.sock, true);
    }

    fn close_upstream<T: Transport>(&mut self, t: &mut T, ui: usize) {
        let Some(up) = self.upstreams.remove(ui) else {
            return;
        };
        if let UpState::Idle { .. } = up.state
            && let Some(list) = self.pool.get_mut(&up.key)
        {
            list.retain(|&i| i != ui);
        }
        if up.client.is_some() {
            self.demand.detach(up.key);
            if self.setup.upstream_max_conns > 0 {
                self.freed.push(up.key);
            }
        }
        if let Some(ci) = up.client
            && let Some(client) = self.clients.get_any(ci)
            && client.upstream == Some(ui)
        {
            client.upstream = None;
            // Closing the upstream socket ends a pass from it (the transport drops it).
            client.passing = false;
        }
        if up.sock != usize::MAX {
            // TLS: close_notify, best effort, when nothing else is being written.
            let mut last = None;
            if let Some(mut tls) = up.tls
                && !up.sending
                && !tls.is_handshaking()
            {
                tls.close_notify();
                last = tls.take_output();
            }
            t.close(up.sock, last.as_deref());
        }
    }

    fn close_client<T: Transport>(&mut self, t: &mut T, slot: usize) {
        if let Some((endpoint, _)) = self.clients.get_any(slot).and_then(|c| c.in_flight.take()) {
            self.picker.stats.finished(&endpoint, None, Instant::ZERO);
        }
        if let Some(ui) = self.clients.get_any(slot).and_then(|c| c.upstream.take()) {
            self.close_upstream(t, ui);
        }
        self.cancel_auth(t, slot);
        self.queues.leave(slot);
        let Some(mut client) = self.clients.remove(slot) else {
            return;
        };
        client.conn.retire();
        // TLS: what is still queued (an alert, close_notify) is written now if no send is in
        // flight, best effort and without waiting.
        let mut last = None;
        if !client.sending
            && let Some(tls) = &mut client.tls
        {
            if !tls.is_handshaking() {
                tls.close_notify();
            }
            last = tls.take_output();
        }
        t.close(client.sock, last.as_deref());
        self.setup.metrics.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// At the end: closes the idle pooled connections and says the worker no longer serves.
    pub fn finish<T: Transport>(&mut self, t: &mut T) {
        let all: Vec<usize> = self.pool.drain().flat_map(|(_, v)| v).collect();
        for ui in all {
            self.close_upstream(t, ui);
        }
        self.close_sides(t);
        self.serving(false);
    }
}

/// A driver for the in-memory tests (here, the side exchanges' and the io_uring worker's):
/// worker 0 with `conn`, a pool of 4 idle connections per endpoint, serving `snapshot`.
#[cfg(test)]
pub(crate) fn test_driver(conn: ConnConfig, snapshot: Snapshot) -> Driver {
    let (_tx, snapshots) = std::sync::mpsc::channel();
    let (retired, _rx) = std::sync::mpsc::channel();
    let setup = DriverSetup {
        access_log: None,
        index: 0,
        conn: Arc::new(conn),
        https: None,
        snapshots,
        retired,
        metrics: Arc::new(WorkerMetrics::default()),
        stopping: Arc::new(AtomicBool::new(false)),
        upstream_max_idle: 4,
        upstream_max_conns: 0,
        upstream_idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
    };
    Driver::new(setup, Arc::new(snapshot))
}

#[cfg(test)]
mod tests;
