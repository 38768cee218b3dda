//! One userspace worker: a smoltcp `Interface` over its own device queue, one small socket
//! set per TCP connection behind a 4-tuple demultiplexer, and the same `Conn` machines,
//! router, picker, upstream pool and snapshot swap as the io_uring worker. A run-to-completion
//! loop: swap the snapshot, read a bounded batch of frames, hand each to its socket, service
//! the connections they touched, transmit, fire due timers, then sleep (or busy-poll) until
//! the earliest of the core's deadlines, smoltcp's `poll_at`, a frame or a wake-up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::Socket;
use smoltcp::socket::tcp::{self, RecvError, State as TcpState};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use super::demux::{Class, FlowKey, classify};
use super::device::{Link, Port};
use super::{DeviceKind, PollMode, UserspaceConfig, sys};
use crate::core::conn::{Action, ClientInfo, Conn, ConnConfig};
use crate::core::route::{Snapshot, SnapshotRouter};
use crate::core::time::Instant;
use crate::core::upstream::Picker;
use crate::worker::{WorkerMetrics, clock, take_newer};

/// What a userspace worker is given.
pub struct UserspaceWorkerSetup {
    pub index: usize,
    pub count: usize,
    pub core: Option<usize>,
    /// This worker's device queue (TAP queue or AF_PACKET fanout member).
    pub queue: OwnedFd,
    pub wake: RawFd,
    /// Every worker (this one's entry unused): where to hand it frames, and its wake-up.
    pub peers: Vec<(Sender<Shared>, RawFd)>,
    /// Frames other workers received for this one.
    pub inbox: Receiver<Shared>,
    pub listen_port: u16,
    pub dev: UserspaceConfig,
    pub conn: Arc<ConnConfig>,
    pub snapshots: Receiver<Arc<Snapshot>>,
    pub retired: Sender<Arc<Snapshot>>,
    pub metrics: Arc<WorkerMetrics>,
    pub stopping: Arc<AtomicBool>,
    pub upstream_max_idle: usize,
    pub upstream_idle_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// A frame one worker hands another.
pub enum Shared {
    /// A copy of an ARP/NDP frame: learnt from, not answered (the receiver answered it).
    Neighbor(Vec<u8>),
    /// A segment of the other worker's upstream connection that the device delivered here.
    Flow(Vec<u8>),
}

/// Upstream connections' local ports start here; each worker has `16384 / workers` of them,
/// so a segment's destination port says which worker's connection it is.
const EPHEMERAL_BASE: u16 = 49152;
/// Frames read per turn (bounded work per turn).
const MAX_FRAMES: usize = 256;
/// The longest the loop sleeps without a deadline, so stop requests are seen.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Rounds of input/actions/output per connection per turn.
const MAX_ROUNDS: usize = 16;
/// Segments one socket may emit per egress call sequence.
const MAX_EGRESS: usize = 1024;

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
                self.generations[i] = self.generations[i].wrapping_add(1);
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

    fn generation(&self, i: usize) -> u32 {
        self.generations.get(i).copied().unwrap_or(0)
    }

    fn remove(&mut self, i: usize) -> Option<T> {
        let item = self.items.get_mut(i)?.take();
        if item.is_some() {
            self.free.push(i);
        }
        item
    }

    fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Owner {
    Client(usize),
    Upstream(usize),
    /// Closed by us: kept until the stack is done with it (FIN exchanged, reset sent) or
    /// `until`, whichever is first; then freed.
    Closing {
        until: Instant,
    },
}

/// One TCP connection of the stack, alone in its socket set.
struct Sock {
    set: SocketSet<'static>,
    handle: SocketHandle,
    key: FlowKey,
    owner: Owner,
    /// The smoltcp deadline armed in the heap for this socket.
    timer: Option<Instant>,
}

impl Sock {
    fn tcp(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket>(self.handle)
    }
}

struct Client {
    sock: usize,
    conn: Conn,
    upstream: Option<usize>,
    /// EOF or an error was reported to the machine; nothing more is read.
    input_done: bool,
    timer: Option<Instant>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum UpState {
    Connecting,
    Attached,
    Idle { since: Instant },
}

struct Upstream {
    sock: usize,
    endpoint: SocketAddr,
    state: UpState,
    client: Option<usize>,
    input_done: bool,
}

pub struct UserspaceWorker {
    setup: UserspaceWorkerSetup,
    snapshot: Arc<Snapshot>,
    picker: Picker,
    iface: Interface,
    link: Link,
    rx: Vec<u8>,
    /// Listening sockets waiting for a SYN; a socket that takes one moves to its own set.
    listen: SocketSet<'static>,
    listen_handles: Vec<SocketHandle>,
    /// Sockets with nothing in view: frames smoltcp must answer without a connection.
    empty: SocketSet<'static>,
    socks: Slab<Sock>,
    flows: HashMap<FlowKey, usize>,
    clients: Slab<Client>,
    upstreams: Slab<Upstream>,
    pool: HashMap<SocketAddr, Vec<usize>>,
    conn_timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    sock_timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Clients to service this turn.
    touched: Vec<usize>,
    /// Sockets that received something or whose timer fired.
    touched_socks: Vec<usize>,
    /// Sockets to transmit for at the end of the turn.
    egress: Vec<usize>,
    accepting: bool,
    frames_in: u64,
    handed_over: u64,
    port_base: u16,
    port_span: u16,
    next_port: u16,
}

/// Single writer: a relaxed load+store is enough and cheaper than an RMW.
fn bump(counter: &std::sync::atomic::AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

fn smol_now(now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((now.as_nanos() / 1000) as i64)
}

fn from_smol(t: smoltcp::time::Instant) -> Instant {
    Instant::from_nanos(
        u64::try_from(t.total_micros())
            .unwrap_or(0)
            .saturating_mul(1000),
    )
}

fn std_ip(a: IpAddress) -> IpAddr {
    match a {
        IpAddress::Ipv4(v4) => IpAddr::V4(v4),
        IpAddress::Ipv6(v6) => IpAddr::V6(v6),
    }
}

fn std_addr(e: IpEndpoint) -> SocketAddr {
    SocketAddr::new(std_ip(e.addr), e.port)
}

impl UserspaceWorker {
    pub fn new(setup: UserspaceWorkerSetup, snapshot: Arc<Snapshot>) -> std::io::Result<Self> {
        let dev = &setup.dev;
        let mut link = Link::new(setup.queue.as_raw_fd(), dev.mtu);
        link.verify_rx_checksums = dev.device == DeviceKind::Tap;
        let now = clock();
        let mut config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(dev.mac)));
        config.random_seed = now.as_nanos() ^ ((setup.index as u64) << 48) ^ 0x5eed_51c3;
        let mut iface = Interface::new(config, &mut Port::tx(&mut link), smol_now(now));
        let mut too_many = false;
        iface.update_ip_addrs(|addrs| {
            for (ip, len) in &dev.addresses {
                if addrs.push(IpCidr::new(IpAddress::from(*ip), *len)).is_err() {
                    too_many = true;
                }
            }
        });
        if too_many {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "userspace engine: at most 2 addresses (one IPv4, one IPv6)",
            ));
        }
        let routes = iface.routes_mut();
        let bad_gateway = |g: &IpAddr| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad gateway {g}"))
        };
        for gw in [dev.gateway, dev.gateway6].into_iter().flatten() {
            let ok = match gw {
                IpAddr::V4(v4) => routes.add_default_ipv4_route(v4).is_ok(),
                IpAddr::V6(v6) => routes.add_default_ipv6_route(v6).is_ok(),
            };
            if !ok {
                return Err(bad_gateway(&gw));
            }
        }
        // Ephemeral ports for upstream connections, a disjoint range per worker.
        let span = (16384 / setup.count.max(1)).max(64) as u16;
        let port_base = EPHEMERAL_BASE.saturating_add(span.saturating_mul(setup.index as u16));
        let mut picker = Picker::with_offset(setup.index as u32);
        picker.reset_for(&snapshot);
        setup
            .metrics
            .snapshot_version
            .store(snapshot.version, Ordering::Release);
        let rx = vec![0u8; 65536 + 14];
        let mut worker = UserspaceWorker {
            snapshot,
            picker,
            iface,
            link,
            rx,
            listen: SocketSet::new(Vec::new()),
            listen_handles: Vec::new(),
            empty: SocketSet::new(Vec::new()),
            socks: Slab::new(),
            flows: HashMap::new(),
            clients: Slab::new(),
            upstreams: Slab::new(),
            pool: HashMap::new(),
            conn_timers: BinaryHeap::new(),
            sock_timers: BinaryHeap::new(),
            touched: Vec::new(),
            touched_socks: Vec::new(),
            egress: Vec::new(),
            accepting: true,
            frames_in: 0,
            handed_over: 0,
            port_base,
            port_span: span,
            next_port: 0,
            setup,
        };
        for _ in 0..worker.setup.dev.backlog.max(1) {
            let s = worker.listening_socket()?;
            let h = worker.listen.add(s);
            worker.listen_handles.push(h);
        }
        Ok(worker)
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let n = self.setup.dev.tcp_buffer;
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; n]),
            tcp::SocketBuffer::new(vec![0u8; n]),
        );
        // As TCP_NODELAY on the io_uring engine's sockets: the core writes whole messages.
        s.set_nagle_enabled(false);
        s
    }

    fn listening_socket(&self) -> std::io::Result<tcp::Socket<'static>> {
        let mut s = self.new_socket();
        s.listen(self.setup.listen_port).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("listen: {e}"))
        })?;
        Ok(s)
    }

    /// Runs until stopped and drained (or the grace period ends).
    pub fn run(mut self) -> std::io::Result<()> {
        if let Some(core) = self.setup.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        let fd = self.setup.queue.as_raw_fd();
        let mut stop_deadline: Option<Instant> = None;
        self.setup.metrics.serving.store(true, Ordering::Release);
        loop {
            let now = clock();
            // Quiescent point: no request is mid-routing here.
            if let Some(snapshot) = take_newer(&self.setup.snapshots, self.snapshot.version) {
                self.swap_snapshot(snapshot);
            }
            if self.setup.stopping.load(Ordering::Acquire) && stop_deadline.is_none() {
                stop_deadline = Some(now + self.setup.shutdown_grace);
                self.stop_accepting();
                for i in 0..self.clients.items.len() {
                    if let Some(c) = self.clients.get_any(i) {
                        c.conn.begin_shutdown(now);
                        self.touched.push(i);
                    }
                }
            }
            if let Some(deadline) = stop_deadline {
                if self.clients.len() == 0 {
                    break;
                }
                if now >= deadline {
                    for i in 0..self.clients.items.len() {
                        if self.clients.get_any(i).is_some() {
                            self.close_client(i, now);
                        }
                    }
                    self.flush_egress(now);
                    break;
                }
            }
            for _ in 0..MAX_FRAMES {
                match sys::read_frame(fd, &mut self.rx)? {
                    None => break,
                    Some(0) => continue,
                    Some(n) => {
                        self.frames_in += 1;
                        self.ingress(n, now);
                    }
                }
            }
            self.shared_frames(now);
            self.fire_timers(now);
            self.expire_pool(now);
            self.process(now);
            let wait = self.next_wait(clock());
            match self.setup.dev.poll {
                PollMode::Busy => {}
                PollMode::Sleep => {
                    let ready = sys::wait_readable(&[fd, self.setup.wake], wait)?;
                    if ready & 2 != 0 {
                        sys::drain_eventfd(self.setup.wake);
                    }
                }
            }
        }
        self.close_pool(clock());
        self.flush_egress(clock());
        self.setup.metrics.serving.store(false, Ordering::Release);
        eprintln!(
            "sluice: userspace worker {}: {} frames in, {} out, {} lost on write, {} handed to other workers",
            self.setup.index,
            self.frames_in,
            self.link.frames_out,
            self.link.write_errors,
            self.handed_over
        );
        Ok(())
    }

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
        let now = clock();
        for ui in gone {
            self.close_upstream(ui, now);
        }
        let version = snapshot.version;
        let old = std::mem::replace(&mut self.snapshot, snapshot);
        let _ = self.setup.retired.send(old);
        self.setup
            .metrics
            .snapshot_version
            .store(version, Ordering::Release);
    }

    fn stop_accepting(&mut self) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        for &h in &self.listen_handles {
            self.listen.get_mut::<tcp::Socket>(h).abort();
        }
    }

    fn next_wait(&self, now: Instant) -> Duration {
        let mut wait = MAX_WAIT;
        for heap in [&self.conn_timers, &self.sock_timers] {
            if let Some(Reverse((at, _, _))) = heap.peek() {
                wait = wait.min(at.saturating_since(now));
            }
        }
        wait
    }

    /// Hands the frame in `self.rx[..n]` to the one socket set it belongs to.
    fn ingress(&mut self, n: usize, now: Instant) {
        let t = smol_now(now);
        let frame = &self.rx[..n];
        let class = classify(frame);
        let owner = match class {
            Class::Tcp { key, .. } => self.port_owner(key.local.port),
            _ => None,
        };
        let mut port = Port {
            link: &mut self.link,
            frame: Some(frame),
        };
        match class {
            Class::Tcp { key, syn } => {
                if let Some(&si) = self.flows.get(&key) {
                    if let Some(sock) = self.socks.get_any(si) {
                        self.iface.poll_ingress_single(t, &mut port, &mut sock.set);
                        self.touched_socks.push(si);
                    }
                } else if syn && self.accepting && key.local.port == self.setup.listen_port {
                    self.iface
                        .poll_ingress_single(t, &mut port, &mut self.listen);
                    self.accept_new(now);
                } else if let Some(owner) = owner
                    && owner != self.setup.index
                {
                    // The device chose this queue by its own hash, but the local port says
                    // whose upstream connection this is: hand it over.
                    if let Some((tx, wake)) = self.setup.peers.get(owner)
                        && tx.send(Shared::Flow(frame.to_vec())).is_ok()
                    {
                        crate::engine::uring::eventfd_signal(*wake);
                        self.handed_over += 1;
                    }
                } else {
                    // Unknown flow: smoltcp answers with a reset (never to a reset).
                    self.iface
                        .poll_ingress_single(t, &mut port, &mut self.empty);
                }
            }
            Class::Other => {
                self.iface
                    .poll_ingress_single(t, &mut port, &mut self.empty);
            }
            Class::Neighbor => {
                self.iface
                    .poll_ingress_single(t, &mut port, &mut self.empty);
                // The device spreads frames over queues by hash, so an answer to this
                // worker's ARP/NDP request may land on another queue, and the other way
                // round: every worker learns from every neighbour frame.
                for (i, (tx, wake)) in self.setup.peers.iter().enumerate() {
                    if i != self.setup.index && tx.send(Shared::Neighbor(frame.to_vec())).is_ok() {
                        crate::engine::uring::eventfd_signal(*wake);
                    }
                }
                self.neighbor_learned();
            }
        }
    }

    /// The worker whose ephemeral range `port` is in, if any.
    fn port_owner(&self, port: u16) -> Option<usize> {
        let offset = port.checked_sub(EPHEMERAL_BASE)?;
        let owner = usize::from(offset / self.port_span);
        (owner < self.setup.count).then_some(owner)
    }

    /// Takes the frames other workers handed over: segments of this worker's upstream
    /// connections, and neighbour frames to learn from (without answering them).
    fn shared_frames(&mut self, now: Instant) {
        let mut learned = false;
        for _ in 0..MAX_FRAMES {
            let Ok(shared) = self.setup.inbox.try_recv() else {
                break;
            };
            match shared {
                Shared::Flow(frame) => {
                    let n = frame.len().min(self.rx.len());
                    self.rx[..n].copy_from_slice(&frame[..n]);
                    if let Class::Tcp { key, .. } = classify(&self.rx[..n])
                        && self.flows.contains_key(&key)
                    {
                        self.ingress(n, now);
                    }
                }
                Shared::Neighbor(frame) => {
                    self.link.mute = true;
                    let mut port = Port {
                        link: &mut self.link,
                        frame: Some(&frame),
                    };
                    self.iface
                        .poll_ingress_single(smol_now(now), &mut port, &mut self.empty);
                    self.link.mute = false;
                    learned = true;
                }
            }
        }
        if learned {
            self.neighbor_learned();
        }
    }

    /// A neighbour answer may be what a waiting socket needs: every socket with a pending
    /// transmission tries again (O(sockets), once per neighbour frame: rare).
    fn neighbor_learned(&mut self) {
        for i in 0..self.socks.items.len() {
            if self.socks.items[i]
                .as_ref()
                .is_some_and(|s| s.timer.is_some())
            {
                self.egress.push(i);
            }
        }
    }

    /// Moves listening sockets that took a SYN into their own sets, each with a `Conn`.
    fn accept_new(&mut self, now: Instant) {
        for i in 0..self.listen_handles.len() {
            let h = self.listen_handles[i];
            if self.listen.get::<tcp::Socket>(h).state() == TcpState::Listen {
                continue;
            }
            let Socket::Tcp(tcp) = self.listen.remove(h);
            match self.listening_socket() {
                Ok(s) => self.listen_handles[i] = self.listen.add(s),
                Err(_) => continue,
            }
            let (Some(local), Some(remote)) = (tcp.local_endpoint(), tcp.remote_endpoint()) else {
                continue;
            };
            if tcp.state() != TcpState::SynReceived {
                continue;
            }
            let key = FlowKey { local, remote };
            let mut set = SocketSet::new(Vec::with_capacity(1));
            let handle = set.add(tcp);
            let si = self.socks.insert(|_| Sock {
                set,
                handle,
                key,
                owner: Owner::Closing { until: now },
                timer: None,
            });
            self.flows.insert(key, si);
            let info = ClientInfo {
                peer: std_addr(remote),
                local: std_addr(local),
            };
            let conn = Conn::new(info, self.setup.conn.clone(), now);
            let ci = self.clients.insert(|_| Client {
                sock: si,
                conn,
                upstream: None,
                input_done: false,
                timer: None,
            });
            if let Some(sock) = self.socks.get_any(si) {
                sock.owner = Owner::Client(ci);
            }
            let m = &self.setup.metrics;
            bump(&m.accepted, 1);
            m.active.fetch_add(1, Ordering::Relaxed);
            self.egress.push(si);
            self.touched.push(ci);
        }
    }

    /// Resolves touched sockets to their owners, services the touched clients, transmits.
    fn process(&mut self, now: Instant) {
        let mut socks = std::mem::take(&mut self.touched_socks);
        socks.sort_unstable();
        socks.dedup();
        for &si in &socks {
            let Some(sock) = self.socks.get_any(si) else {
                continue;
            };
            self.egress.push(si);
            match sock.owner {
                Owner::Client(ci) => self.touched.push(ci),
                Owner::Upstream(ui) => match self.upstreams.get_any(ui) {
                    Some(Upstream {
                        client: Some(ci), ..
                    }) => self.touched.push(*ci),
                    Some(Upstream {
                        state: UpState::Idle { .. },
                        ..
                    }) => {
                        let tcp = sock.tcp();
                        // An idle pooled connection that says anything (data, FIN, reset)
                        // is no longer usable.
                        if tcp.can_recv() || tcp.state() != TcpState::Established {
                            self.close_upstream(ui, now);
                        }
                    }
                    _ => {}
                },
                Owner::Closing { .. } => {
                    // What a closed connection still receives is read and dropped.
                    let tcp = sock.tcp();
                    while let Ok(n) = tcp.recv(|b| (b.len(), b.len())) {
                        if n == 0 {
                            break;
                        }
                    }
                }
            }
        }
        socks.clear();
        self.touched_socks = socks;
        for _ in 0..4 {
            if self.touched.is_empty() {
                break;
            }
            let mut touched = std::mem::take(&mut self.touched);
            touched.sort_unstable();
            touched.dedup();
            for &ci in &touched {
                self.service(ci, now);
            }
            touched.clear();
            if self.touched.is_empty() {
                self.touched = touched;
            }
        }
        self.flush_egress(now);
    }

    /// Moves bytes and events between a client's sockets and its machine until nothing
    /// changes (bounded), then queues the sockets for transmission and arms its timer.
    fn service(&mut self, ci: usize, now: Instant) {
        for _ in 0..MAX_ROUNDS {
            let mut progress = false;
            let mut upstream_failed = None;
            {
                let Self {
                    clients,
                    socks,
                    upstreams,
                    snapshot,
                    picker,
                    setup,
                    ..
                } = self;
                let Some(client) = clients.get_any(ci) else {
                    return;
                };
                let mut router = SnapshotRouter { snapshot, picker };
                // Client input.
                if let Some(sock) = socks.get_any(client.sock) {
                    let tcp = sock.tcp();
                    let state = tcp.state();
                    if !client.input_done && state != TcpState::SynReceived {
                        while client.conn.wants_client_read() {
                            let conn = &mut client.conn;
                            match tcp.recv(|b| {
                                conn.client_data(b, now, &mut router);
                                (b.len(), b.len())
                            }) {
                                Ok(0) => break,
                                Ok(n) => {
                                    bump(&setup.metrics.bytes_in, n as u64);
                                    progress = true;
                                }
                                Err(RecvError::Finished) => {
                                    client.input_done = true;
                                    client.conn.client_eof(now, &mut router);
                                    progress = true;
                                    break;
                                }
                                Err(RecvError::InvalidState) => {
                                    client.input_done = true;
                                    client.conn.client_error(now);
                                    progress = true;
                                    break;
                                }
                            }
                        }
                    }
                }
                // Upstream events and input.
                if let Some(ui) = client.upstream
                    && let Some(up) = upstreams.get_any(ui)
                    && let Some(sock) = socks.get_any(up.sock)
                {
                    let tcp = sock.tcp();
                    match up.state {
                        UpState::Connecting => match tcp.state() {
                            TcpState::SynSent | TcpState::SynReceived => {}
                            TcpState::Established => {
                                up.state = UpState::Attached;
                                client.conn.upstream_connected(now, false, &mut router);
                                progress = true;
                            }
                            _ => {
                                bump(&setup.metrics.upstream_connect_errors, 1);
                                client.upstream = None;
                                client.conn.upstream_connect_failed(now, &mut router);
                                upstream_failed = Some(ui);
                                progress = true;
                            }
                        },
                        UpState::Attached if !up.input_done => {
                            while client.conn.wants_upstream_read() {
                                let conn = &mut client.conn;
                                match tcp.recv(|b| {
                                    conn.upstream_data(b, now, &mut router);
                                    (b.len(), b.len())
                                }) {
                                    Ok(0) => break,
                                    Ok(_) => progress = true,
                                    Err(RecvError::Finished) => {
                                        up.input_done = true;
                                        client.conn.upstream_eof(now, &mut router);
                                        progress = true;
                                        break;
                                    }
                                    Err(RecvError::InvalidState) => {
                                        up.input_done = true;
                                        client.conn.upstream_error(now, &mut router);
                                        progress = true;
                                        break;
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            if let Some(ui) = upstream_failed {
                self.close_upstream(ui, now);
            }
            // What the machine asks for.
            loop {
                let Some(client) = self.clients.get_any(ci) else {
                    return;
                };
                let Some(action) = client.conn.poll_action() else {
                    break;
                };
                progress = true;
                match action {
                    Action::Connect { endpoint, fresh } => self.connect(ci, endpoint, fresh, now),
                    Action::ReleaseUpstream { reusable } => {
                        self.release_upstream(ci, reusable, now)
                    }
                    Action::Completed { status } => {
                        let class = usize::from(status / 100).clamp(1, 5) - 1;
                        bump(&self.setup.metrics.responses[class], 1);
                    }
                    Action::ShutdownClientWrite => {
                        let si = client.sock;
                        if let Some(sock) = self.socks.get_any(si) {
                            sock.tcp().close();
                            self.egress.push(si);
                        }
                    }
                    Action::CloseClient => {
                        self.close_client(ci, now);
                        return;
                    }
                }
            }
            // Output.
            {
                let Self {
                    clients,
                    socks,
                    upstreams,
                    snapshot,
                    picker,
                    setup,
                    egress,
                    ..
                } = self;
                let Some(client) = clients.get_any(ci) else {
                    return;
                };
                let mut router = SnapshotRouter { snapshot, picker };
                if let Some(sock) = socks.get_any(client.sock)
                    && let Some(buf) = client.conn.take_client_output()
                {
                    let tcp = sock.tcp();
                    let n = if tcp.may_send() {
                        tcp.send_slice(&buf).unwrap_or(0)
                    } else {
                        0
                    };
                    let gone = !tcp.may_send() && tcp.state() != TcpState::SynReceived;
                    if n > 0 {
                        bump(&setup.metrics.bytes_out, n as u64);
                        egress.push(client.sock);
                        progress = true;
                    }
                    client.conn.client_sent(buf, n, now, &mut router);
                    if gone && !client.input_done {
                        // The client can no longer take what we have for it.
                        client.input_done = true;
                        client.conn.client_error(now);
                        progress = true;
                    }
                }
                if let Some(ui) = client.upstream
                    && let Some(up) = upstreams.get_any(ui)
                    && up.state == UpState::Attached
                    && let Some(sock) = socks.get_any(up.sock)
                    && let Some(buf) = client.conn.take_upstream_output()
                {
                    let tcp = sock.tcp();
                    let n = if tcp.may_send() {
                        tcp.send_slice(&buf).unwrap_or(0)
                    } else {
                        0
                    };
                    let gone = !tcp.may_send();
                    if n > 0 {
                        egress.push(up.sock);
                        progress = true;
                    }
                    client.conn.upstream_sent(buf, n, now, &mut router);
                    if gone && !up.input_done {
                        up.input_done = true;
                        client.conn.upstream_error(now, &mut router);
                        progress = true;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        let Some(client) = self.clients.get_any(ci) else {
            return;
        };
        self.egress.push(client.sock);
        if let Some(ui) = client.upstream
            && let Some(up) = self.upstreams.get_any(ui)
        {
            self.egress.push(up.sock);
        }
        // One heap entry per connection at most (see the io_uring worker).
        if let Some(at) = client.conn.deadline()
            && client.timer.is_none_or(|armed| at < armed)
        {
            client.timer = Some(at);
            let generation = self.clients.generation(ci);
            self.conn_timers.push(Reverse((at, ci, generation)));
        }
    }

    /// A free local port for a connection to `remote`, from this worker's range.
    fn local_port(&mut self, local: IpAddress, remote: IpEndpoint) -> Option<u16> {
        for _ in 0..self.port_span {
            let port = self.port_base + self.next_port;
            self.next_port = (self.next_port + 1) % self.port_span;
            let key = FlowKey {
                local: IpEndpoint::new(local, port),
                remote,
            };
            if !self.flows.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    fn connect(&mut self, ci: usize, endpoint: SocketAddr, fresh: bool, now: Instant) {
        if !fresh && let Some(ui) = self.pool.get_mut(&endpoint).and_then(Vec::pop) {
            if let Some(up) = self.upstreams.get_any(ui) {
                up.state = UpState::Attached;
                up.client = Some(ci);
            }
            if let Some(client) = self.clients.get_any(ci) {
                client.upstream = Some(ui);
                let mut router = SnapshotRouter {
                    snapshot: &self.snapshot,
                    picker: &mut self.picker,
                };
                client.conn.upstream_connected(now, true, &mut router);
            }
            return;
        }
        let remote = IpEndpoint::new(IpAddress::from(endpoint.ip()), endpoint.port());
        let local_ip = self.iface.get_source_address(&remote.addr);
        let port = local_ip.and_then(|ip| self.local_port(ip, remote));
        let mut tcp = self.new_socket();
        let connected = match (local_ip, port) {
            (Some(ip), Some(port)) => tcp
                .connect(self.iface.context(), remote, IpEndpoint::new(ip, port))
                .is_ok(),
            _ => false,
        };
        let key = match (connected, tcp.local_endpoint()) {
            (true, Some(local)) => FlowKey { local, remote },
            _ => {
                bump(&self.setup.metrics.upstream_connect_errors, 1);
                if let Some(client) = self.clients.get_any(ci) {
                    let mut router = SnapshotRouter {
                        snapshot: &self.snapshot,
                        picker: &mut self.picker,
                    };
                    client.conn.upstream_connect_failed(now, &mut router);
                    self.touched.push(ci);
                }
                return;
            }
        };
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(tcp);
        let si = self.socks.insert(|_| Sock {
            set,
            handle,
            key,
            owner: Owner::Closing { until: now },
            timer: None,
        });
        self.flows.insert(key, si);
        let ui = self.upstreams.insert(|_| Upstream {
            sock: si,
            endpoint,
            state: UpState::Connecting,
            client: Some(ci),
            input_done: false,
        });
        if let Some(sock) = self.socks.get_any(si) {
            sock.owner = Owner::Upstream(ui);
        }
        if let Some(client) = self.clients.get_any(ci) {
            client.upstream = Some(ui);
        }
        self.egress.push(si);
    }

    fn release_upstream(&mut self, ci: usize, reusable: bool, now: Instant) {
        let Some(client) = self.clients.get_any(ci) else {
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
        let sock_ok = self.socks.get_any(up.sock).is_some_and(|s| {
            let t = s.tcp();
            t.state() == TcpState::Established && t.send_queue() == 0 && !t.can_recv()
        });
        let poolable = reusable
            && up.state == UpState::Attached
            && !up.input_done
            && sock_ok
            && list_len < self.setup.upstream_max_idle
            && self.accepting;
        if poolable {
            up.state = UpState::Idle { since: now };
            let endpoint = up.endpoint;
            // Its delayed ACK (and any other pending segment) still has to go out: without a
            // turn through egress, an idle pooled connection would sit on it until reused.
            self.egress.push(up.sock);
            self.pool.entry(endpoint).or_default().push(ui);
        } else {
            self.close_upstream(ui, now);
        }
    }

    fn close_upstream(&mut self, ui: usize, now: Instant) {
        let Some(up) = self.upstreams.remove(ui) else {
            return;
        };
        if let UpState::Idle { .. } = up.state
            && let Some(list) = self.pool.get_mut(&up.endpoint)
        {
            list.retain(|&i| i != ui);
        }
        let linger = self.setup.conn.timeouts.linger;
        if let Some(sock) = self.socks.get_any(up.sock) {
            let tcp = sock.tcp();
            if tcp.state() == TcpState::CloseWait {
                // The upstream finished: answer its FIN with ours.
                tcp.close();
            } else {
                tcp.abort();
            }
            sock.owner = Owner::Closing {
                until: now + linger,
            };
            self.egress.push(up.sock);
        }
    }

    fn close_client(&mut self, ci: usize, now: Instant) {
        if let Some(ui) = self.clients.get_any(ci).and_then(|c| c.upstream.take()) {
            self.close_upstream(ui, now);
        }
        let Some(client) = self.clients.remove(ci) else {
            return;
        };
        self.setup.metrics.active.fetch_sub(1, Ordering::Relaxed);
        let linger = self.setup.conn.timeouts.linger;
        if let Some(sock) = self.socks.get_any(client.sock) {
            // FIN after whatever is still queued for the client.
            sock.tcp().close();
            sock.owner = Owner::Closing {
                until: now + linger,
            };
            self.egress.push(client.sock);
        }
    }

    /// Transmits what the queued sockets have, frees sockets the stack is done with, and arms
    /// each remaining socket's smoltcp deadline.
    fn flush_egress(&mut self, now: Instant) {
        let t = smol_now(now);
        let mut list = std::mem::take(&mut self.egress);
        list.sort_unstable();
        list.dedup();
        for &si in &list {
            let Some(sock) = self.socks.get_any(si) else {
                continue;
            };
            for _ in 0..MAX_EGRESS {
                let mut port = Port::tx(&mut self.link);
                match self.iface.poll_egress(t, &mut port, &mut sock.set) {
                    smoltcp::iface::PollResult::None => break,
                    smoltcp::iface::PollResult::SocketStateChanged => {}
                }
            }
            let state = sock.tcp().state();
            if let Owner::Closing { until } = sock.owner {
                let done = matches!(
                    state,
                    TcpState::Closed | TcpState::TimeWait | TcpState::Listen
                );
                if done || now >= until {
                    if !done {
                        sock.tcp().abort();
                        let mut port = Port::tx(&mut self.link);
                        self.iface.poll_egress(t, &mut port, &mut sock.set);
                    }
                    let key = sock.key;
                    self.flows.remove(&key);
                    self.socks.remove(si);
                    continue;
                }
            }
            let mut at = self.iface.poll_at(t, &sock.set).map(from_smol);
            if let Owner::Closing { until } = sock.owner {
                at = Some(at.map_or(until, |a| a.min(until)));
            }
            if let Some(at) = at
                && sock.timer.is_none_or(|armed| at < armed || armed <= now)
            {
                sock.timer = Some(at);
                let generation = self.socks.generation(si);
                self.sock_timers.push(Reverse((at, si, generation)));
            }
        }
        list.clear();
        if self.egress.is_empty() {
            self.egress = list;
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, si, generation))) = self.sock_timers.peek().copied() {
            if at > now {
                break;
            }
            self.sock_timers.pop();
            let Some(sock) = self.socks.get(si, generation) else {
                continue;
            };
            if sock.timer != Some(at) {
                continue;
            }
            sock.timer = None;
            self.touched_socks.push(si);
        }
        while let Some(Reverse((at, ci, generation))) = self.conn_timers.peek().copied() {
            if at > now {
                break;
            }
            self.conn_timers.pop();
            let Some(client) = self.clients.get(ci, generation) else {
                continue;
            };
            if client.timer != Some(at) {
                continue;
            }
            client.timer = None;
            match client.conn.deadline() {
                Some(deadline) if deadline > now => {
                    client.timer = Some(deadline);
                    self.conn_timers.push(Reverse((deadline, ci, generation)));
                }
                Some(_) => {
                    let mut router = SnapshotRouter {
                        snapshot: &self.snapshot,
                        picker: &mut self.picker,
                    };
                    client.conn.timer(now, &mut router);
                    self.touched.push(ci);
                }
                None => {}
            }
        }
    }

    fn expire_pool(&mut self, now: Instant) {
        let timeout = self.setup.upstream_idle_timeout;
        let mut expired = Vec::new();
        for list in self.pool.values() {
            for &ui in list {
                if let Some(Some(Upstream {
                    state: UpState::Idle { since },
                    ..
                })) = self.upstreams.items.get(ui)
                    && now.saturating_since(*since) >= timeout
                {
                    expired.push(ui);
                }
            }
        }
        for ui in expired {
            self.close_upstream(ui, now);
        }
    }

    fn close_pool(&mut self, now: Instant) {
        let all: Vec<usize> = self.pool.drain().flat_map(|(_, v)| v).collect();
        for ui in all {
            self.close_upstream(ui, now);
        }
    }
}
