//! One userspace worker: a smoltcp `Interface` over its own device queue, one small socket
//! set per TCP connection behind a 4-tuple demultiplexer, and the engine-neutral [`Driver`]
//! that owns the connections (the same as the io_uring worker's). [`SmolNet`] is the
//! transport: it reads frames, hands each to its socket, turns what the sockets did into
//! driver events (accepted, connected, received, EOF, reset) and the driver's sends, connects
//! and closes into socket calls; it transmits at the end of the turn. A run-to-completion
//! loop: the driver's quiescent point, read a bounded batch of frames, service the touched
//! sockets and let the driver drive, transmit, fire due timers, then sleep (or busy-poll)
//! until the earliest of the driver's deadlines, smoltcp's `poll_at`, a frame or a wake-up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::Socket;
use smoltcp::socket::tcp::{self, RecvError, State as TcpState};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use super::demux::{Class, FlowKey, classify};
use super::device::{Link, Port};
use super::{DeviceKind, PollMode, UserspaceConfig, packet};
use crate::core::conn::ClientInfo;
use crate::core::time::Instant;
use crate::engine::EngineWorker;
use crate::engine::driver::{Driver, Flow, Owner, Sent, Slab, Transport, clock};
use crate::engine::sys;

/// What a userspace worker is given besides its driver.
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
    /// The HTTPS port in the same stack, if HTTPS is served.
    pub https_port: Option<u16>,
    pub dev: UserspaceConfig,
    /// How long a closed connection may take to finish its FIN exchange.
    pub linger: Duration,
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
/// Rounds of socket service and driving per turn.
const MAX_ROUNDS: usize = 4;
/// Segments one socket may emit per egress call sequence.
const MAX_EGRESS: usize = 1024;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum SockOwner {
    /// A client (accepted) or upstream (connected) socket of the driver's.
    Driver(Owner),
    /// Closed by the driver: kept until the stack is done with it (FIN exchanged, reset
    /// sent) or `until`, whichever is first; then freed.
    Closing { until: Instant },
}

/// One TCP connection of the stack, alone in its socket set.
struct Sock {
    set: SocketSet<'static>,
    handle: SocketHandle,
    key: FlowKey,
    owner: SockOwner,
    /// The smoltcp deadline armed in the heap for this socket.
    timer: Option<Instant>,
    /// EOF or an error was reported to the driver; nothing more is read.
    input_done: bool,
    /// An upstream connect not yet reported to the driver.
    connecting: bool,
    /// The driver's last word on input.
    read_wanted: bool,
}

impl Sock {
    fn tcp(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket>(self.handle)
    }
}

/// The smoltcp transport of one worker.
pub struct SmolNet {
    setup: UserspaceWorkerSetup,
    iface: Interface,
    link: Link,
    rx: Vec<u8>,
    /// Listening sockets waiting for a SYN (with whether they are HTTPS's); a socket that
    /// takes one moves to its own set.
    listen: SocketSet<'static>,
    listen_handles: Vec<(SocketHandle, u16, bool)>,
    /// Sockets with nothing in view: frames smoltcp must answer without a connection.
    empty: SocketSet<'static>,
    socks: Slab<Sock>,
    flows: HashMap<FlowKey, usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Sockets that received something, whose timer fired, or whose input is wanted again.
    touched: Vec<usize>,
    /// Sockets to transmit for at the end of the turn.
    egress: Vec<usize>,
    accepting: bool,
    /// The time of this turn (for the transport calls the driver makes).
    now: Instant,
    frames_in: u64,
    handed_over: u64,
    port_base: u16,
    port_span: u16,
    next_port: u16,
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

fn std_addr(e: IpEndpoint) -> SocketAddr {
    let ip = match e.addr {
        IpAddress::Ipv4(v4) => IpAddr::V4(v4),
        IpAddress::Ipv6(v6) => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, e.port)
}

impl SmolNet {
    fn new(setup: UserspaceWorkerSetup) -> std::io::Result<SmolNet> {
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
        for gw in [dev.gateway, dev.gateway6].into_iter().flatten() {
            let ok = match gw {
                IpAddr::V4(v4) => routes.add_default_ipv4_route(v4).is_ok(),
                IpAddr::V6(v6) => routes.add_default_ipv6_route(v6).is_ok(),
            };
            if !ok {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("bad gateway {gw}"),
                ));
            }
        }
        // Ephemeral ports for upstream connections, a disjoint range per worker.
        let span = (16384 / setup.count.max(1)).max(64) as u16;
        let port_base = EPHEMERAL_BASE.saturating_add(span.saturating_mul(setup.index as u16));
        let mut net = SmolNet {
            iface,
            link,
            rx: vec![0u8; 65536 + 14],
            listen: SocketSet::new(Vec::new()),
            listen_handles: Vec::new(),
            empty: SocketSet::new(Vec::new()),
            socks: Slab::default(),
            flows: HashMap::new(),
            timers: BinaryHeap::new(),
            touched: Vec::new(),
            egress: Vec::new(),
            accepting: true,
            now,
            frames_in: 0,
            handed_over: 0,
            port_base,
            port_span: span,
            next_port: 0,
            setup,
        };
        let ports = [Some(net.setup.listen_port), net.setup.https_port];
        for port in ports.into_iter().flatten() {
            let https = Some(port) == net.setup.https_port;
            for _ in 0..net.setup.dev.backlog.max(1) {
                let s = net.listening_socket(port)?;
                let h = net.listen.add(s);
                net.listen_handles.push((h, port, https));
            }
        }
        Ok(net)
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

    fn listening_socket(&self, port: u16) -> std::io::Result<tcp::Socket<'static>> {
        let mut s = self.new_socket();
        s.listen(port).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("listen: {e}"))
        })?;
        Ok(s)
    }

    fn is_listen_port(&self, port: u16) -> bool {
        port == self.setup.listen_port || Some(port) == self.setup.https_port
    }

    /// Hands the frame in `self.rx[..n]` to the one socket set it belongs to.
    fn ingress(&mut self, n: usize, driver: &mut Driver, now: Instant) {
        let t = smol_now(now);
        let frame = &self.rx[..n];
        let class = classify(frame);
        let owner = match class {
            Class::Tcp { key, .. } => self.port_owner(key.local.port),
            _ => None,
        };
        let listen_port = match class {
            Class::Tcp { key, .. } => self.is_listen_port(key.local.port),
            _ => false,
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
                        self.touched.push(si);
                    }
                } else if syn && self.accepting && listen_port {
                    self.iface
                        .poll_ingress_single(t, &mut port, &mut self.listen);
                    self.accept_new(driver, now);
                } else if let Some(owner) = owner
                    && owner != self.setup.index
                {
                    // The device chose this queue by its own hash, but the local port says
                    // whose upstream connection this is: hand it over.
                    if let Some((tx, wake)) = self.setup.peers.get(owner)
                        && tx.send(Shared::Flow(frame.to_vec())).is_ok()
                    {
                        sys::eventfd_signal(*wake);
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
                        sys::eventfd_signal(*wake);
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
    fn shared_frames(&mut self, driver: &mut Driver, now: Instant) {
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
                        self.ingress(n, driver, now);
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
        for i in 0..self.socks.capacity() {
            if self.socks.peek(i).is_some_and(|s| s.timer.is_some()) {
                self.egress.push(i);
            }
        }
    }

    /// Gives `tcp` a socket set of its own, a slot, and its entry in the flow table (an accepted
    /// connection, or an upstream connect when `connecting`).
    fn adopt(
        &mut self,
        tcp: tcp::Socket<'static>,
        key: FlowKey,
        owner: SockOwner,
        connecting: bool,
    ) -> usize {
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(tcp);
        let si = self.socks.insert(|_| Sock {
            set,
            handle,
            key,
            owner,
            timer: None,
            input_done: false,
            connecting,
            read_wanted: false,
        });
        self.flows.insert(key, si);
        si
    }

    /// Moves listening sockets that took a SYN into their own sets, each given to the driver.
    fn accept_new(&mut self, driver: &mut Driver, now: Instant) {
        for i in 0..self.listen_handles.len() {
            let (h, port, https) = self.listen_handles[i];
            if self.listen.get::<tcp::Socket>(h).state() == TcpState::Listen {
                continue;
            }
            let Socket::Tcp(tcp) = self.listen.remove(h);
            match self.listening_socket(port) {
                Ok(s) => self.listen_handles[i] = (self.listen.add(s), port, https),
                Err(_) => continue,
            }
            let (Some(local), Some(remote)) = (tcp.local_endpoint(), tcp.remote_endpoint()) else {
                continue;
            };
            if tcp.state() != TcpState::SynReceived {
                continue;
            }
            let key = FlowKey { local, remote };
            let si = self.adopt(tcp, key, SockOwner::Closing { until: now }, false);
            let info = ClientInfo {
                peer: std_addr(remote),
                local: std_addr(local),
            };
            let owner = driver.accept(si, info, https, now);
            if let Some(sock) = self.socks.get_any(si) {
                match owner {
                    Some(owner) => sock.owner = SockOwner::Driver(owner),
                    None => sock.tcp().abort(),
                }
            }
            self.egress.push(si);
        }
    }

    /// Turns what the touched sockets did into driver events: connects completed or failed,
    /// input (while the driver wants it), EOF and resets, room to send.
    fn service(&mut self, driver: &mut Driver, now: Instant) {
        let mut list = std::mem::take(&mut self.touched);
        list.sort_unstable();
        list.dedup();
        for &si in &list {
            let Some(sock) = self.socks.get_any(si) else {
                continue;
            };
            self.egress.push(si);
            let owner = match sock.owner {
                SockOwner::Driver(owner) => owner,
                SockOwner::Closing { .. } => {
                    // What a closed connection still receives is read and dropped.
                    let tcp = sock.tcp();
                    while let Ok(n) = tcp.recv(|b| (b.len(), b.len())) {
                        if n == 0 {
                            break;
                        }
                    }
                    continue;
                }
            };
            let state = sock.tcp().state();
            if sock.connecting {
                match state {
                    TcpState::SynSent | TcpState::SynReceived => continue,
                    TcpState::Established => {
                        sock.connecting = false;
                        driver.connected(owner, true, now);
                    }
                    _ => {
                        sock.connecting = false;
                        sock.input_done = true;
                        driver.connected(owner, false, now);
                        continue;
                    }
                }
            }
            if !sock.input_done && state != TcpState::SynReceived {
                while driver.wants_read(owner) {
                    match sock.tcp().recv(|b| {
                        driver.received(owner, b, now);
                        (b.len(), b.len())
                    }) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(RecvError::Finished) => {
                            sock.input_done = true;
                            driver.eof(owner, now);
                            break;
                        }
                        Err(RecvError::InvalidState) => {
                            sock.input_done = true;
                            driver.failed(owner, now);
                            break;
                        }
                    }
                }
            }
            driver.touch(owner);
        }
        list.clear();
        if self.touched.is_empty() {
            self.touched = list;
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
            if let SockOwner::Closing { until } = sock.owner {
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
            if let SockOwner::Closing { until } = sock.owner {
                at = Some(at.map_or(until, |a| a.min(until)));
            }
            if let Some(at) = at
                && sock.timer.is_none_or(|armed| at < armed || armed <= now)
            {
                sock.timer = Some(at);
                let generation = self.socks.generation(si);
                self.timers.push(Reverse((at, si, generation)));
            }
        }
        list.clear();
        if self.egress.is_empty() {
            self.egress = list;
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, si, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(sock) = self.socks.get(si, generation) else {
                continue;
            };
            if sock.timer != Some(at) {
                continue;
            }
            sock.timer = None;
            self.touched.push(si);
        }
    }
}

impl Transport for SmolNet {
    fn send(&mut self, sock: usize, buf: Vec<u8>) -> Sent {
        let Some(s) = self.socks.get_any(sock) else {
            return Sent::Done {
                buf,
                written: 0,
                closed: true,
            };
        };
        let tcp = s.tcp();
        let written = if tcp.may_send() {
            tcp.send_slice(&buf).unwrap_or(0)
        } else {
            0
        };
        let gone = !tcp.may_send() && tcp.state() != TcpState::SynReceived;
        // The peer can no longer take what we have for it: said once, as EOF/errors are.
        let closed = gone && !s.input_done;
        if closed {
            s.input_done = true;
        }
        if written > 0 {
            self.egress.push(sock);
        }
        Sent::Done {
            buf,
            written,
            closed,
        }
    }

    fn set_read(&mut self, sock: usize, wanted: bool) {
        if let Some(s) = self.socks.get_any(sock) {
            if wanted && !s.read_wanted {
                // Input is wanted again: look at what the socket holds.
                self.touched.push(sock);
            }
            s.read_wanted = wanted;
        }
    }

    fn connect(&mut self, endpoint: SocketAddr, owner: Owner) -> std::io::Result<usize> {
        let failed = || std::io::Error::other("no route or no free local port");
        let remote = IpEndpoint::new(IpAddress::from(endpoint.ip()), endpoint.port());
        let local_ip = self
            .iface
            .get_source_address(&remote.addr)
            .ok_or_else(failed)?;
        let port = self.local_port(local_ip, remote).ok_or_else(failed)?;
        let mut tcp = self.new_socket();
        tcp.connect(
            self.iface.context(),
            remote,
            IpEndpoint::new(local_ip, port),
        )
        .map_err(|_| failed())?;
        let local = tcp.local_endpoint().ok_or_else(failed)?;
        let key = FlowKey { local, remote };
        let si = self.adopt(tcp, key, SockOwner::Driver(owner), true);
        self.egress.push(si);
        Ok(si)
    }

    fn reusable(&mut self, sock: usize) -> bool {
        self.socks.get_any(sock).is_some_and(|s| {
            let input_done = s.input_done;
            let t = s.tcp();
            !input_done
                && t.state() == TcpState::Established
                && t.send_queue() == 0
                && !t.can_recv()
        })
    }

    fn shutdown_write(&mut self, sock: usize) {
        if let Some(s) = self.socks.get_any(sock) {
            s.tcp().close();
            self.egress.push(sock);
        }
    }

    fn close(&mut self, sock: usize, last: Option<&[u8]>) {
        let until = self.now + self.setup.linger;
        let Some(s) = self.socks.get_any(sock) else {
            return;
        };
        let SockOwner::Driver(owner) = s.owner else {
            return;
        };
        let tcp = s.tcp();
        if let Some(bytes) = last
            && tcp.may_send()
        {
            let _ = tcp.send_slice(bytes);
        }
        match owner {
            // FIN after whatever is still queued for the client.
            Owner::Client { .. } => tcp.close(),
            // The upstream finished: answer its FIN with ours; otherwise reset.
            Owner::Upstream { .. } if tcp.state() == TcpState::CloseWait => tcp.close(),
            Owner::Upstream { .. } | Owner::Side { .. } => tcp.abort(),
        }
        s.owner = SockOwner::Closing { until };
        // Its delayed ACK or FIN still has to go out.
        self.egress.push(sock);
    }

    fn stop_accepting(&mut self) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        for &(h, _, _) in &self.listen_handles {
            self.listen.get_mut::<tcp::Socket>(h).abort();
        }
    }
}

pub struct UserspaceWorker {
    net: SmolNet,
    driver: Driver,
}

impl EngineWorker for UserspaceWorker {
    type Setup = UserspaceWorkerSetup;

    fn build(setup: UserspaceWorkerSetup, driver: Driver) -> std::io::Result<Self> {
        Ok(UserspaceWorker {
            net: SmolNet::new(setup)?,
            driver,
        })
    }

    /// Runs until stopped and drained (or the grace period ends).
    fn run(mut self) -> std::io::Result<()> {
        let Self { net, driver } = &mut self;
        if let Some(core) = net.setup.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        let fd = net.setup.queue.as_raw_fd();
        let wake = net.setup.wake;
        driver.serving(true);
        loop {
            let now = clock();
            net.now = now;
            // Quiescent point: no request is mid-routing here.
            if driver.quiescent(net, now) == Flow::Exit {
                break;
            }
            for _ in 0..MAX_FRAMES {
                match packet::read_frame(fd, &mut net.rx)? {
                    None => break,
                    Some(0) => continue,
                    Some(n) => {
                        net.frames_in += 1;
                        net.ingress(n, driver, now);
                    }
                }
            }
            net.shared_frames(driver, now);
            net.fire_timers(now);
            driver.timers(net, now);
            for _ in 0..MAX_ROUNDS {
                net.service(driver, now);
                driver.drive(net, now);
                if net.touched.is_empty() && !driver.has_work() {
                    break;
                }
            }
            net.flush_egress(now);
            let now = clock();
            let mut wait = MAX_WAIT;
            if let Some(at) = driver.next_deadline() {
                wait = wait.min(at.saturating_since(now));
            }
            if let Some(Reverse((at, _, _))) = net.timers.peek() {
                wait = wait.min(at.saturating_since(now));
            }
            if !net.touched.is_empty() || driver.has_work() {
                wait = Duration::ZERO;
            }
            match net.setup.dev.poll {
                PollMode::Busy => {}
                PollMode::Sleep => {
                    let ready = sys::wait_readable(&[fd, wake], wait)?;
                    if ready & 2 != 0 {
                        sys::drain_eventfd(wake);
                    }
                }
            }
        }
        driver.finish(net);
        net.now = clock();
        net.flush_egress(net.now);
        tracing::info!(
            worker = net.setup.index,
            frames_in = net.frames_in,
            frames_out = net.link.frames_out,
            lost_on_write = net.link.write_errors,
            handed_over = net.handed_over,
            "userspace worker stopped"
        );
        Ok(())
    }
}
