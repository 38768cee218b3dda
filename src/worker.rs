//! One worker per core: its own ring, listen socket (SO_REUSEPORT), connection slab, receive
//! buffers, upstream keep-alive pool and replica of the route snapshot. A run-to-completion
//! loop: take a new snapshot at the top (the quiescent point), wait for completions, feed them
//! to the connection machines, carry out what they ask for, fire due timers. Nothing is shared
//! with other workers on the request path; metrics are per-worker atomics only this worker
//! writes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use crate::core::conn::{Action, ClientInfo, Conn, ConnConfig};
use crate::core::route::{Snapshot, SnapshotRouter};
use crate::core::time::Instant;
use crate::core::tls::{Received, TlsSession, TlsSettings};
use crate::core::upstream::Picker;
use crate::engine::uring::{self, Completion, Op, Ring, SockAddr, Token};

/// The engine's one clock read: monotonic time as the core's `Instant`.
#[allow(clippy::disallowed_methods)]
pub fn clock() -> Instant {
    use std::sync::OnceLock;
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(std::time::Instant::now);
    Instant::from_nanos(origin.elapsed().as_nanos() as u64)
}

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
    fn add(counter: &AtomicU64, n: u64) {
        // Single writer: a relaxed load+store is enough and cheaper than an RMW.
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// What a worker is given.
pub struct WorkerSetup {
    pub index: usize,
    /// The core to pin to, if any.
    pub core: Option<usize>,
    pub listener: RawFd,
    /// Signalled when a snapshot or a stop request is waiting.
    pub wake: RawFd,
    pub conn: Arc<ConnConfig>,
    pub snapshots: Receiver<Arc<Snapshot>>,
    /// Where a worker hands the snapshot it stops serving, so that freeing a large table
    /// happens on the control thread, never on a worker.
    pub retired: std::sync::mpsc::Sender<Arc<Snapshot>>,
    pub metrics: Arc<WorkerMetrics>,
    pub stopping: Arc<AtomicBool>,
    pub upstream_max_idle: usize,
    pub upstream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The HTTPS listener, if any.
    pub https: Option<WorkerHttps>,
}

/// A worker's HTTPS listener: its socket, its connections' settings and the TLS settings
/// (ticket keys and session cache are shared by every worker).
pub struct WorkerHttps {
    pub listener: RawFd,
    pub conn: Arc<ConnConfig>,
    pub settings: Arc<TlsSettings>,
}

/// The accept token's slot for the HTTPS listener (the plain one is 0).
const HTTPS_LISTENER: u32 = 1;

/// An accepted client connection.
struct Client {
    generation: u32,
    fd: RawFd,
    conn: Conn,
    upstream: Option<usize>,
    recv: Receive,
    /// The buffer of the send in flight (the kernel's until its completion).
    sending: Option<Vec<u8>>,
    /// Operations in flight; the slot is freed only when this is 0 after closing.
    inflight: u32,
    closed: bool,
    timer: Option<Instant>,
    /// HTTPS: the TLS session between the socket and `conn`.
    tls: Option<Box<TlsSession>>,
    /// HTTPS: shut the write side once close_notify is written.
    shut_after_flush: bool,
}

impl Client {
    /// The connection machine's deadline, or the handshake's if earlier.
    fn deadline(&self) -> Option<Instant> {
        let tls = self.tls.as_ref().and_then(|t| t.deadline());
        match (self.conn.deadline(), tls) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A socket's multishot receive: armed until a completion without `more`, cancelled while
/// the connection machine wants no input.
#[derive(Default)]
struct Receive {
    armed: bool,
    /// A cancel was asked for and the receive has not ended yet.
    cancelling: bool,
}

impl Receive {
    /// Arms or cancels the receive to match `wanted`. True when it armed one (one more
    /// operation in flight).
    fn want(&mut self, wanted: bool, ring: &mut Ring, fd: RawFd, token: Token) -> bool {
        if wanted && !self.armed {
            ring.recv_multi(fd, token);
            self.armed = true;
            return true;
        }
        if !wanted && self.armed && !self.cancelling {
            // Backpressure: the machine has enough buffered. What arrives before the cancel
            // takes effect (at most one turn's worth) is still handed to it.
            ring.cancel(token);
            self.cancelling = true;
        }
        false
    }

    /// One of its completions came. True when the receive ended (one fewer in flight).
    fn completed(&mut self, c: &Completion) -> bool {
        if c.more {
            return false;
        }
        *self = Receive::default();
        true
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum UpState {
    Connecting,
    Attached,
    Idle { since: Instant },
    Closed,
}

/// A connection to a pod endpoint: attached to one client, or idle in the pool.
struct Upstream {
    generation: u32,
    fd: RawFd,
    endpoint: SocketAddr,
    /// The connect address (the kernel's until the connect completes).
    addr: Box<SockAddr>,
    state: UpState,
    client: Option<usize>,
    recv: Receive,
    sending: Option<Vec<u8>>,
    inflight: u32,
}

/// A slab with generations: a freed index is reused with a new generation.
struct Slab<T> {
    items: Vec<Option<T>>,
    generations: Vec<u32>,
    free: Vec<usize>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            items: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
        }
    }

    fn insert(&mut self, make: impl FnOnce(u32) -> T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.generations[i] = (self.generations[i] + 1) & 0xff_ffff;
                self.items[i] = Some(make(self.generations[i]));
                i
            }
            None => {
                self.items.push(Some(make(0)));
                self.generations.push(0);
                self.items.len() - 1
            }
        }
    }

    fn get(&mut self, i: usize, generation: u32) -> Option<&mut T> {
        if self.generations.get(i) != Some(&generation) {
            return None;
        }
        self.items.get_mut(i)?.as_mut()
    }

    fn get_any(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }

    fn remove(&mut self, i: usize) {
        if let Some(slot) = self.items.get_mut(i)
            && slot.take().is_some()
        {
            self.free.push(i);
        }
    }

    fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }
}

/// Accepting is paused until this time after EMFILE/ENFILE, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The longest the loop sleeps without a timer, so stop requests and new snapshots are seen.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Completions handled per turn (bounded work per turn).
const MAX_COMPLETIONS: usize = 1024;

pub struct Worker {
    ring: Ring,
    setup: WorkerSetup,
    snapshot: Arc<Snapshot>,
    picker: Picker,
    clients: Slab<Client>,
    upstreams: Slab<Upstream>,
    /// Idle pooled upstream slots by endpoint, oldest first.
    pool: HashMap<SocketAddr, Vec<usize>>,
    /// When the oldest idle pooled connection reaches the idle timeout (the pool is scanned
    /// then, not on every loop turn).
    pool_expiry: Option<Instant>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    accepting: bool,
    accept_armed: bool,
    https_accept_armed: bool,
    /// The rustls config for new HTTPS connections, bound to the snapshot's certificates.
    tls_config: Option<Arc<rustls::ServerConfig>>,
    accept_paused_until: Option<Instant>,
    completions: Vec<Completion>,
    /// Clients touched this turn, to drive once.
    touched: Vec<usize>,
    /// The eventfd read's buffer (the kernel's while the read is armed).
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
}

impl Worker {
    pub fn new(setup: WorkerSetup, snapshot: Arc<Snapshot>) -> std::io::Result<Worker> {
        let ring = Ring::new(4096, 1024, 16 * 1024)?;
        let mut picker = Picker::with_offset(setup.index as u32);
        picker.reset_for(&snapshot);
        setup
            .metrics
            .snapshot_version
            .store(snapshot.version, Ordering::Release);
        let tls_config = setup
            .https
            .as_ref()
            .map(|h| h.settings.server_config(snapshot.certs.clone()));
        Ok(Worker {
            ring,
            setup,
            snapshot,
            picker,
            clients: Slab::new(),
            upstreams: Slab::new(),
            pool: HashMap::new(),
            pool_expiry: None,
            timers: BinaryHeap::new(),
            accepting: true,
            accept_armed: false,
            https_accept_armed: false,
            tls_config,
            accept_paused_until: None,
            completions: Vec::with_capacity(MAX_COMPLETIONS),
            touched: Vec::new(),
            wake_buf: Box::new([0; 8]),
            wake_armed: false,
        })
    }

    /// Runs until stopped and drained (or the grace period ends).
    pub fn run(mut self) -> std::io::Result<()> {
        if let Some(core) = self.setup.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        let mut stop_deadline: Option<Instant> = None;
        self.setup.metrics.serving.store(true, Ordering::Release);
        loop {
            let now = clock();
            // Quiescent point: no request is mid-routing here.
            if let Some(snapshot) = take_newer(&self.setup.snapshots, self.snapshot.version) {
                self.swap_snapshot(snapshot);
            }
            if !self.wake_armed {
                let token = Token {
                    op: Op::Wake,
                    slot: 0,
                    generation: 0,
                };
                self.ring
                    .read_eventfd(self.setup.wake, &mut self.wake_buf, token);
                self.wake_armed = true;
            }
            if self.setup.stopping.load(Ordering::Acquire) && stop_deadline.is_none() {
                stop_deadline = Some(now + self.setup.shutdown_grace);
                self.stop_accepting();
                for i in 0..self.clients.items.len() {
                    if let Some(c) = self.clients.get_any(i)
                        && !c.closed
                    {
                        c.conn.begin_shutdown(now);
                        self.touched.push(i);
                    }
                }
                self.drive_touched(now);
            }
            if let Some(deadline) = stop_deadline {
                if self.clients.len() == 0 {
                    break;
                }
                if now >= deadline {
                    for i in 0..self.clients.items.len() {
                        if self.clients.get_any(i).is_some_and(|c| !c.closed) {
                            self.close_client(i);
                        }
                    }
                    if self.clients.len() == 0 {
                        break;
                    }
                }
            }
            if self.accepting && !self.accept_armed {
                match self.accept_paused_until {
                    Some(until) if now < until => {}
                    _ => {
                        self.accept_paused_until = None;
                        self.ring.accept_multi(
                            self.setup.listener,
                            Token {
                                op: Op::Accept,
                                slot: 0,
                                generation: 0,
                            },
                        );
                        self.accept_armed = true;
                    }
                }
            }
            if self.accepting
                && !self.https_accept_armed
                && self.accept_paused_until.is_none_or(|until| now >= until)
                && let Some(https) = &self.setup.https
            {
                // Either listener's EMFILE pauses both; whichever re-arms first ends it.
                self.accept_paused_until = None;
                self.ring.accept_multi(
                    https.listener,
                    Token {
                        op: Op::Accept,
                        slot: HTTPS_LISTENER,
                        generation: 0,
                    },
                );
                self.https_accept_armed = true;
            }
            let wait = self.next_wait(now);
            self.ring.submit_and_wait(wait)?;
            let now = clock();
            let mut completions = std::mem::take(&mut self.completions);
            self.ring.completions(&mut completions, MAX_COMPLETIONS);
            for c in &completions {
                self.complete(*c, now);
            }
            self.completions = completions;
            self.fire_timers(now);
            self.expire_pool(now);
            self.drive_touched(now);
        }
        self.close_pool();
        uring::close(self.setup.listener);
        if let Some(https) = &self.setup.https {
            uring::close(https.listener);
        }
        // The eventfd stays open (the engine owns it); a read still armed ends with the ring.
        self.setup.metrics.serving.store(false, Ordering::Release);
        Ok(())
    }

    /// The quiescent-point swap: new requests route on `snapshot`; requests already routed
    /// keep their endpoint; pooled idle connections to endpoints that are gone are closed.
    fn swap_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        self.picker.reset_for(&snapshot);
        let mut gone = Vec::new();
        self.pool.retain(|endpoint, idle| {
            if snapshot.has_endpoint(endpoint) {
                true
            } else {
                gone.append(idle);
                false
            }
        });
        for ui in gone {
            self.close_upstream(ui);
        }
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

    fn next_wait(&self, now: Instant) -> Duration {
        let mut wait = MAX_WAIT;
        if let Some(Reverse((at, _, _))) = self.timers.peek() {
            wait = wait.min(at.saturating_since(now));
        }
        if let Some(until) = self.accept_paused_until {
            wait = wait.min(until.saturating_since(now));
        }
        wait.max(Duration::from_micros(1))
    }

    fn stop_accepting(&mut self) {
        if self.accepting {
            self.accepting = false;
            // Wakes the multishot accept (it completes with an error) and refuses new
            // connections from here on.
            uring::shutdown(self.setup.listener, libc::SHUT_RD);
            if let Some(https) = &self.setup.https {
                uring::shutdown(https.listener, libc::SHUT_RD);
            }
        }
    }

    fn complete(&mut self, c: Completion, now: Instant) {
        let Some(token) = c.token else {
            return;
        };
        match token.op {
            Op::Accept => self.accepted(token, c, now),
            Op::ClientRecv => self.client_recv(token, c, now),
            Op::ClientSend => self.client_send(token, c, now),
            Op::UpstreamConnect => self.upstream_connect(token, c, now),
            Op::UpstreamRecv => self.upstream_recv(token, c, now),
            Op::UpstreamSend => self.upstream_send(token, c, now),
            // Re-armed at the top of the loop, where the snapshot is taken.
            Op::Wake => self.wake_armed = false,
            Op::Cancel => {}
        }
    }

    fn accepted(&mut self, token: Token, c: Completion, now: Instant) {
        let https = token.slot == HTTPS_LISTENER;
        if !c.more {
            if https {
                self.https_accept_armed = false;
            } else {
                self.accept_armed = false;
            }
        }
        if c.result < 0 {
            let err = -c.result;
            if err == libc::EMFILE
                || err == libc::ENFILE
                || err == libc::ENOBUFS
                || err == libc::ENOMEM
            {
                self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
            }
            return;
        }
        let fd = c.result;
        if !self.accepting {
            uring::close(fd);
            return;
        }
        uring::set_nodelay(fd);
        let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
        let info = ClientInfo {
            peer: uring::peer_addr(fd).unwrap_or(unspecified),
            local: uring::local_addr(fd).unwrap_or(unspecified),
        };
        let (config, tls) = match (&self.setup.https, &self.tls_config) {
            (Some(h), Some(tls_config)) if https => {
                match TlsSession::new(tls_config.clone(), &h.settings, now) {
                    Ok(session) => (h.conn.clone(), Some(Box::new(session))),
                    Err(_) => {
                        uring::close(fd);
                        return;
                    }
                }
            }
            _ => (self.setup.conn.clone(), None),
        };
        let conn = Conn::new(info, config, now);
        let slot = self.clients.insert(|generation| Client {
            generation,
            fd,
            conn,
            upstream: None,
            recv: Receive::default(),
            sending: None,
            inflight: 0,
            closed: false,
            timer: None,
            tls,
            shut_after_flush: false,
        });
        let m = &self.setup.metrics;
        WorkerMetrics::add(&m.accepted, 1);
        m.active.fetch_add(1, Ordering::Relaxed);
        self.touched.push(slot);
    }

    fn client_recv(&mut self, token: Token, c: Completion, now: Instant) {
        let slot = token.slot as usize;
        let Some(client) = self.clients.get(slot, token.generation) else {
            if let Some(bid) = c.buffer {
                self.ring.recycle(bid);
            }
            return;
        };
        if client.recv.completed(&c) {
            client.inflight -= 1;
        }
        let mut router = SnapshotRouter {
            snapshot: &self.snapshot,
            picker: &mut self.picker,
        };
        if !client.closed {
            match (c.result, c.buffer) {
                (n, Some(bid)) if n > 0 => {
                    let data = self.ring.received(bid, n as usize);
                    WorkerMetrics::add(&self.setup.metrics.bytes_in, n as u64);
                    match &mut client.tls {
                        None => client.conn.client_data(data, now, &mut router),
                        Some(tls) => {
                            let conn = &mut client.conn;
                            let handshaking = tls.is_handshaking();
                            let mut deliver =
                                |plain: &[u8]| conn.client_data(plain, now, &mut router);
                            let result = tls.receive(data, &mut deliver);
                            let m = &self.setup.metrics;
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
                    }
                }
                (0, _) => client.conn.client_eof(now, &mut router),
                // Re-armed by `submit_io` when buffers return or input is wanted again.
                (n, _) if n == -libc::ENOBUFS || n == -libc::ECANCELED => {}
                (n, _) if n < 0 => client.conn.client_error(now),
                _ => {}
            }
        }
        if let Some(bid) = c.buffer {
            self.ring.recycle(bid);
        }
        self.touched.push(slot);
    }

    fn client_send(&mut self, token: Token, c: Completion, now: Instant) {
        let slot = token.slot as usize;
        let Some(client) = self.clients.get(slot, token.generation) else {
            return;
        };
        client.inflight -= 1;
        let buf = client.sending.take().unwrap_or_default();
        if !client.closed {
            let mut router = SnapshotRouter {
                snapshot: &self.snapshot,
                picker: &mut self.picker,
            };
            if c.result >= 0 {
                WorkerMetrics::add(&self.setup.metrics.bytes_out, c.result as u64);
                match &mut client.tls {
                    None => client
                        .conn
                        .client_sent(buf, c.result as usize, now, &mut router),
                    Some(tls) => {
                        // The machine's buffer comes back once all of its ciphertext is out.
                        if let Some((plain, len)) = tls.sent(buf, c.result as usize) {
                            client.conn.client_sent(plain, len, now, &mut router);
                        }
                    }
                }
            } else {
                client.conn.client_error(now);
            }
        }
        self.touched.push(slot);
    }

    fn upstream_connect(&mut self, token: Token, c: Completion, now: Instant) {
        let slot = token.slot as usize;
        let Some(up) = self.upstreams.get(slot, token.generation) else {
            return;
        };
        up.inflight -= 1;
        let client = up.client;
        if up.state != UpState::Connecting {
            self.maybe_free_upstream(slot);
            return;
        }
        let ok = c.result == 0;
        if ok {
            up.state = UpState::Attached;
        } else {
            WorkerMetrics::add(&self.setup.metrics.upstream_connect_errors, 1);
        }
        if let Some(ci) = client
            && let Some(cl) = self.clients.get_any(ci)
            && !cl.closed
        {
            let mut router = SnapshotRouter {
                snapshot: &self.snapshot,
                picker: &mut self.picker,
            };
            if ok {
                cl.conn.upstream_connected(now, false, &mut router);
            } else {
                cl.upstream = None;
                cl.conn.upstream_connect_failed(now, &mut router);
            }
            self.touched.push(ci);
        }
        if !ok {
            self.close_upstream(slot);
        }
    }

    fn upstream_recv(&mut self, token: Token, c: Completion, now: Instant) {
        let slot = token.slot as usize;
        let Some(up) = self.upstreams.get(slot, token.generation) else {
            if let Some(bid) = c.buffer {
                self.ring.recycle(bid);
            }
            return;
        };
        if up.recv.completed(&c) {
            up.inflight -= 1;
        }
        let rearm = c.result == -libc::ENOBUFS || c.result == -libc::ECANCELED;
        match up.state {
            UpState::Attached => {
                let ci = up.client;
                if let Some(ci) = ci
                    && let Some(cl) = self.clients.get_any(ci)
                    && !cl.closed
                {
                    let mut router = SnapshotRouter {
                        snapshot: &self.snapshot,
                        picker: &mut self.picker,
                    };
                    match (c.result, c.buffer) {
                        (n, Some(bid)) if n > 0 => {
                            let data = self.ring.received(bid, n as usize);
                            cl.conn.upstream_data(data, now, &mut router);
                        }
                        (0, _) => cl.conn.upstream_eof(now, &mut router),
                        _ if rearm => {}
                        _ => cl.conn.upstream_error(now, &mut router),
                    }
                    self.touched.push(ci);
                }
            }
            UpState::Idle { .. } => {
                // An idle pooled connection said something (data or EOF): it is no longer
                // usable. Drop it from the pool. (A cancel asked for while it was attached
                // may end here: that is no news from the peer.)
                if !rearm {
                    let endpoint = up.endpoint;
                    if let Some(list) = self.pool.get_mut(&endpoint) {
                        list.retain(|&i| i != slot);
                    }
                    self.close_upstream(slot);
                } else {
                    self.arm_upstream_recv(slot);
                }
            }
            UpState::Connecting | UpState::Closed => {}
        }
        if let Some(bid) = c.buffer {
            self.ring.recycle(bid);
        }
        self.maybe_free_upstream(slot);
    }

    fn upstream_send(&mut self, token: Token, c: Completion, now: Instant) {
        let slot = token.slot as usize;
        let Some(up) = self.upstreams.get(slot, token.generation) else {
            return;
        };
        up.inflight -= 1;
        let buf = up.sending.take().unwrap_or_default();
        if up.state == UpState::Attached
            && let Some(ci) = up.client
            && let Some(cl) = self.clients.get_any(ci)
            && !cl.closed
        {
            let mut router = SnapshotRouter {
                snapshot: &self.snapshot,
                picker: &mut self.picker,
            };
            if c.result >= 0 {
                cl.conn
                    .upstream_sent(buf, c.result as usize, now, &mut router);
            } else {
                cl.conn.upstream_error(now, &mut router);
            }
            self.touched.push(ci);
        }
        self.maybe_free_upstream(slot);
    }

    fn drive_touched(&mut self, now: Instant) {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        for &slot in &touched {
            self.drive(slot, now);
        }
        touched.clear();
        // Driving may touch more (a pooled connection handed over completes at once).
        if self.touched.is_empty() {
            self.touched = touched;
        }
    }

    /// Carries out what a connection machine asks for, then submits its I/O.
    fn drive(&mut self, slot: usize, now: Instant) {
        loop {
            let Some(client) = self.clients.get_any(slot) else {
                return;
            };
            if client.closed {
                self.maybe_free_client(slot);
                return;
            }
            let Some(action) = client.conn.poll_action() else {
                break;
            };
            match action {
                Action::Connect { endpoint, fresh } => self.connect(slot, endpoint, fresh, now),
                Action::ReleaseUpstream { reusable } => self.release_upstream(slot, reusable, now),
                Action::Completed { status } => {
                    let class = usize::from(status / 100).clamp(1, 5) - 1;
                    WorkerMetrics::add(&self.setup.metrics.responses[class], 1);
                }
                Action::ShutdownClientWrite => match &mut client.tls {
                    None => uring::shutdown(client.fd, libc::SHUT_WR),
                    Some(tls) => {
                        // close_notify first; the FIN follows once it is written.
                        tls.close_notify();
                        client.shut_after_flush = true;
                    }
                },
                Action::CloseClient => {
                    self.close_client(slot);
                    return;
                }
            }
        }
        self.submit_io(slot);
    }

    fn submit_io(&mut self, slot: usize) {
        let Some(client) = self.clients.get_any(slot) else {
            return;
        };
        let token = |op| Token {
            op,
            slot: slot as u32,
            generation: client.generation,
        };
        if client.sending.is_none() {
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
            if let Some(buf) = out {
                self.ring.send(client.fd, &buf, token(Op::ClientSend));
                client.sending = Some(buf);
                client.inflight += 1;
            } else if client.shut_after_flush {
                client.shut_after_flush = false;
                uring::shutdown(client.fd, libc::SHUT_WR);
            }
        }
        let wants_read = client.conn.wants_client_read();
        if client
            .recv
            .want(wants_read, &mut self.ring, client.fd, token(Op::ClientRecv))
        {
            client.inflight += 1;
        }
        // One heap entry per connection at most: a later deadline is left to the armed
        // entry, which re-arms itself when it fires early (deadlines move on every event, and
        // pushing each move would grow the heap with the request rate).
        if let Some(at) = client.deadline()
            && client.timer.is_none_or(|armed| at < armed)
        {
            client.timer = Some(at);
            self.timers.push(Reverse((at, slot, client.generation)));
        }
        let Some(ui) = client.upstream else {
            return;
        };
        let wants_read = client.conn.wants_upstream_read();
        let out = match self.upstreams.get_any(ui) {
            Some(up) if up.state == UpState::Attached && up.sending.is_none() => {
                client.conn.take_upstream_output()
            }
            _ => None,
        };
        let Some(up) = self.upstreams.get_any(ui) else {
            return;
        };
        if up.state != UpState::Attached {
            return;
        }
        let utoken = |op| Token {
            op,
            slot: ui as u32,
            generation: up.generation,
        };
        if let Some(buf) = out {
            self.ring.send(up.fd, &buf, utoken(Op::UpstreamSend));
            up.sending = Some(buf);
            up.inflight += 1;
        }
        if up
            .recv
            .want(wants_read, &mut self.ring, up.fd, utoken(Op::UpstreamRecv))
        {
            up.inflight += 1;
        }
    }

    fn connect(&mut self, slot: usize, endpoint: SocketAddr, fresh: bool, now: Instant) {
        if !fresh && let Some(ui) = self.pool.get_mut(&endpoint).and_then(Vec::pop) {
            if let Some(up) = self.upstreams.get_any(ui) {
                up.state = UpState::Attached;
                up.client = Some(slot);
            }
            if let Some(client) = self.clients.get_any(slot) {
                client.upstream = Some(ui);
                let mut router = SnapshotRouter {
                    snapshot: &self.snapshot,
                    picker: &mut self.picker,
                };
                client.conn.upstream_connected(now, true, &mut router);
            }
            return;
        }
        let fd = match uring::upstream_socket(endpoint) {
            Ok(fd) => fd,
            Err(_) => {
                WorkerMetrics::add(&self.setup.metrics.upstream_connect_errors, 1);
                if let Some(client) = self.clients.get_any(slot) {
                    let mut router = SnapshotRouter {
                        snapshot: &self.snapshot,
                        picker: &mut self.picker,
                    };
                    client.conn.upstream_connect_failed(now, &mut router);
                }
                return;
            }
        };
        let ui = self.upstreams.insert(|generation| Upstream {
            generation,
            fd,
            endpoint,
            addr: SockAddr::new(endpoint),
            state: UpState::Connecting,
            client: Some(slot),
            recv: Receive::default(),
            sending: None,
            inflight: 1,
        });
        let up = self.upstreams.get_any(ui).expect("just inserted");
        let token = Token {
            op: Op::UpstreamConnect,
            slot: ui as u32,
            generation: up.generation,
        };
        self.ring.connect(fd, &up.addr, token);
        if let Some(client) = self.clients.get_any(slot) {
            client.upstream = Some(ui);
        }
    }

    fn release_upstream(&mut self, slot: usize, reusable: bool, now: Instant) {
        let Some(client) = self.clients.get_any(slot) else {
            return;
        };
        let Some(ui) = client.upstream.take() else {
            return;
        };
        let Some(up) = self.upstreams.get_any(ui) else {
            return;
        };
        up.client = None;
        let list_len = self.pool.get(&up.endpoint).map_or(0, Vec::len);
        let poolable = reusable
            && up.state == UpState::Attached
            && up.sending.is_none()
            && list_len < self.setup.upstream_max_idle
            && self.accepting;
        if poolable {
            up.state = UpState::Idle { since: now };
            let at = now + self.setup.upstream_idle_timeout;
            self.pool_expiry = Some(self.pool_expiry.map_or(at, |e| e.min(at)));
            let endpoint = up.endpoint;
            self.pool.entry(endpoint).or_default().push(ui);
            // Watch the idle connection: data or EOF from it means it is gone.
            self.arm_upstream_recv(ui);
        } else {
            self.close_upstream(ui);
        }
    }

    fn arm_upstream_recv(&mut self, ui: usize) {
        if let Some(up) = self.upstreams.get_any(ui) {
            let token = Token {
                op: Op::UpstreamRecv,
                slot: ui as u32,
                generation: up.generation,
            };
            if up.recv.want(true, &mut self.ring, up.fd, token) {
                up.inflight += 1;
            }
        }
    }

    fn close_upstream(&mut self, ui: usize) {
        if let Some(up) = self.upstreams.get_any(ui)
            && up.state != UpState::Closed
        {
            up.state = UpState::Closed;
            up.client = None;
            // Wakes a pending receive. The descriptor itself is closed only when nothing of
            // it is in flight or queued: closing it earlier would let the kernel hand its
            // number to a new socket that a queued operation would then act on.
            uring::shutdown(up.fd, libc::SHUT_RDWR);
        }
        self.maybe_free_upstream(ui);
    }

    fn maybe_free_upstream(&mut self, ui: usize) {
        if let Some(up) = self.upstreams.get_any(ui)
            && up.state == UpState::Closed
            && up.inflight == 0
        {
            uring::close(up.fd);
            self.upstreams.remove(ui);
        }
    }

    fn close_client(&mut self, slot: usize) {
        if let Some(ui) = self.clients.get_any(slot).and_then(|c| c.upstream.take()) {
            self.close_upstream(ui);
        }
        if let Some(client) = self.clients.get_any(slot)
            && !client.closed
        {
            client.closed = true;
            // TLS: what is still queued (an alert, close_notify) is written now if no send
            // is in flight, best effort and without waiting.
            if client.sending.is_none()
                && let Some(tls) = &mut client.tls
            {
                if !tls.is_handshaking() {
                    tls.close_notify();
                }
                if let Some(out) = tls.take_output() {
                    uring::send_now(client.fd, &out);
                }
            }
            // As for upstreams: close the descriptor once nothing of it is in flight.
            uring::shutdown(client.fd, libc::SHUT_RDWR);
            self.setup.metrics.active.fetch_sub(1, Ordering::Relaxed);
        }
        self.maybe_free_client(slot);
    }

    fn maybe_free_client(&mut self, slot: usize) {
        if let Some(client) = self.clients.get_any(slot)
            && client.closed
            && client.inflight == 0
        {
            uring::close(client.fd);
            self.clients.remove(slot);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(client) = self.clients.get(slot, generation) else {
                continue;
            };
            if client.closed || client.timer != Some(at) {
                continue; // superseded by an earlier entry
            }
            client.timer = None;
            if client
                .tls
                .as_ref()
                .and_then(|t| t.deadline())
                .is_some_and(|d| d <= now)
            {
                // The TLS handshake did not finish in time.
                WorkerMetrics::add(&self.setup.metrics.tls_failed, 1);
                self.close_client(slot);
                continue;
            }
            match client.deadline() {
                Some(deadline) if deadline > now => {
                    // The deadline moved on since this entry was armed: re-arm.
                    client.timer = Some(deadline);
                    self.timers.push(Reverse((deadline, slot, generation)));
                }
                Some(_) => {
                    let mut router = SnapshotRouter {
                        snapshot: &self.snapshot,
                        picker: &mut self.picker,
                    };
                    client.conn.timer(now, &mut router);
                    self.touched.push(slot);
                }
                None => {}
            }
        }
    }

    fn expire_pool(&mut self, now: Instant) {
        if self.pool_expiry.is_none_or(|at| now < at) {
            return;
        }
        let timeout = self.setup.upstream_idle_timeout;
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for list in self.pool.values_mut() {
            list.retain(|&ui| {
                let idle_since = match self.upstreams.items.get(ui) {
                    Some(Some(Upstream {
                        state: UpState::Idle { since },
                        ..
                    })) => *since,
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
            self.close_upstream(ui);
        }
    }

    fn close_pool(&mut self) {
        let all: Vec<usize> = self.pool.drain().flat_map(|(_, v)| v).collect();
        for ui in all {
            self.close_upstream(ui);
        }
    }
}
