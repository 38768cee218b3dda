//! One io_uring worker: its ring, its listen sockets (SO_REUSEPORT, plain and HTTPS), and the
//! engine-neutral [`Driver`] that owns the connections. [`UringNet`] is the transport: it
//! keeps one slot per socket (descriptor, multishot receive, operations in flight), turns
//! completions into driver events and the driver's sends, connects, shutdowns and closes
//! into submissions. A run-to-completion loop: the driver's quiescent point (snapshot swap,
//! graceful stop), arm accepts, submit and wait, hand the completions to the driver, fire
//! its timers, let it drive what was touched.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use super::batch::Batching;
use super::pass::{Pass, Pipes, Relay, RelayBuffers, RelayOp, Step};
use super::ring::{self as uring, Completion, Op, Ring, Target, Token};
use super::tuning::Tuning;
use crate::core::conn::ClientInfo;
use crate::core::time::Instant;
use crate::engine::EngineWorker;
use crate::engine::driver::{Driver, Flow, Owner, PassEnd, Sent, Slab, Transport, clock};

/// What an io_uring worker is given besides its driver's setup.
pub struct WorkerSetup {
    /// The core to pin to, if any.
    pub core: Option<usize>,
    pub listener: RawFd,
    /// The HTTPS listener, if any.
    pub https_listener: Option<RawFd>,
    /// Signalled when a snapshot or a stop request is waiting.
    pub wake: RawFd,
    /// How the loop's waits gather completions (off where the kernel lacks min-wait).
    pub batching: Batching,
    /// The ring's sizes and receive budget.
    pub tuning: Tuning,
}

/// The accept token's slot for the HTTPS listener (the plain one is 0).
const HTTPS_LISTENER: u32 = 1;
/// Direct accepts ([`Ring::accept_direct`]) kept armed per listener: each takes one new
/// connection and is armed again at the top of the next turn, so this is how many connections
/// one listener takes per turn that way (a multishot accept with descriptors takes the rest).
const DIRECT_ACCEPTS: u32 = 32;
/// Accepting is paused until this time after EMFILE/ENFILE, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The longest the loop sleeps without a timer, so stop requests and new snapshots are seen.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// Completions handled per turn (bounded work per turn).
const MAX_COMPLETIONS: usize = 1024;
/// Receive buffers. A receive takes a whole buffer whatever it carries, so the count is how
/// many receives can land between two reaps before one finds none (ENOBUFS: not an error,
/// the receive ends and is armed again, its data waits in the socket; none were seen at
/// 10,000 keep-alive connections). Without bundles a buffer is the most one completion
/// carries, so they are large (1,024 x 16 KiB). With bundles one completion carries as many
/// buffers as the waiting data fills, so they can be small (1,024 x 4 KiB): and they must be
/// few, because buffers come back only at the end of a batch, so the ring's size is what one
/// fast sender can hand the driver in one turn before backpressure cancels its receive (with
/// 16 MiB, a 100 MiB upload grew the peak RSS by 56 MiB; tests/cli.rs bounds it at 32).
pub(super) const RECV_BUFFERS: uring::RecvBuffers = uring::RecvBuffers {
    plain: (1024, 16 * 1024),
    bundled: (1024, 4 * 1024),
};

/// A socket's multishot receive: armed until a completion without `more`, cancelled while
/// the driver wants no input.
#[derive(Default)]
struct Receive {
    armed: bool,
    /// A cancel was asked for and the receive has not ended yet.
    cancelling: bool,
    /// It ended for want of a buffer and waits in [`UringNet::starved`] to be armed again
    /// (not before: arming it at once would find the ring as dry as it left it).
    starved: bool,
}

impl Receive {
    /// Arms or cancels the receive to match `wanted`. True when it armed one (one more
    /// operation in flight).
    fn want(&mut self, wanted: bool, ring: &mut Ring, target: Target, token: Token) -> bool {
        if wanted && !self.armed && !self.starved {
            ring.recv_multi(target, token);
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

/// A client or upstream socket.
struct Socket {
    /// Its descriptor, for the system calls that are not ring operations (shutdown, close,
    /// socket options, addresses); `None` for a socket accepted straight into the ring's file
    /// table, which has only its entry there (`target`) and is shut down and closed on the
    /// ring.
    fd: Option<RawFd>,
    /// How ring operations name it: its registered-file entry when the ring has a table.
    target: Target,
    /// Whose it is; `None` once the driver closed it.
    owner: Option<Owner>,
    recv: Receive,
    /// The driver's last word on input.
    read_wanted: bool,
    /// Operations in flight; the slot (and descriptor) is freed only when this is 0 after
    /// closing: closing it earlier would let the kernel hand its number to a new socket that
    /// a queued operation would then act on.
    inflight: u32,
    /// The pass (splice or relay) this socket is the source or destination of.
    moving: Option<Moving>,
    /// A pass waits for this socket's receive to end: its owner is touched then.
    pass_waiting: bool,
    /// Its descriptor was made nonblocking (for splice).
    nonblocking: bool,
}

/// A body moving between two sockets without the driver ([`Transport::pass`]): a splice in
/// [`UringNet::passes`] or a relay in [`UringNet::relays`], by index.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Moving {
    Splice(u32),
    Relay(u32),
}

/// The io_uring transport.
pub struct UringNet {
    ring: Ring,
    socks: Slab<Socket>,
    listeners: [Option<RawFd>; 2],
    /// Each listener's own address when it names one (not 0.0.0.0 or [::]): the local
    /// address of every connection it accepts, without a getsockname per connection.
    listener_addrs: [Option<SocketAddr>; 2],
    accept_armed: [bool; 2],
    /// Accepts go straight into the ring's file table ([`Ring::accept_direct`]); off where the
    /// ring has no range for them or a direct accept failed for a reason other than load.
    direct: bool,
    /// Per listener: a direct accept completed (or some could not be armed) since its direct
    /// accepts were last armed.
    direct_rearm: [bool; 2],
    /// Per listener: fewer than [`DIRECT_ACCEPTS`] are armed because the range was full, so
    /// the multishot accept with descriptors takes what they cannot.
    direct_short: [bool; 2],
    accepting: bool,
    accept_paused_until: Option<Instant>,
    /// Receives that ended for want of a free buffer (and were armed again).
    nobufs: u64,
    /// Sockets (slot, generation) whose receive ended for want of a buffer, in order: a few
    /// are armed again per turn ([`Ring::rearms_per_turn`]), after the turn gave its buffers
    /// back, instead of all at once into a dry ring (each of those ends with ENOBUFS again:
    /// 84 per 1 MiB answer at 1,000 connections before this queue).
    starved: std::collections::VecDeque<(usize, u32)>,
    /// Sockets whose receive spent its byte budget ([`Ring::recv_limit`]) this turn: armed
    /// again after the driver's drive if it still wants input (a client or upstream socket
    /// is normally armed by the drive itself).
    spent: Vec<(usize, u32)>,
    /// A receive found the ring dry this turn, or some still wait in the queue: receives
    /// to arm (the driver's, and those that spent their budget) join the queue instead of
    /// taking a turn's buffers ahead of it.
    dry: bool,
    /// Bytes received and bytes written (acknowledged by the kernel) on all sockets: their
    /// difference is what the worker holds for its connections (tests).
    bytes_received: u64,
    bytes_sent: u64,
    /// By slot: (generation, whether the socket's peer is on another host), asked once per
    /// socket at its first send large enough to go zero-copy (see [`Ring::send_with`]).
    remote: Vec<Option<(u32, bool)>>,
    /// Zero-copy sends to loopback peers too (tests, whose peers are all loopback).
    zc_loopback: bool,
    /// Closes that had operations in flight to cancel on the ring.
    close_wakes: u64,
    /// Bodies on their way from socket to socket in the kernel ([`Transport::pass`]), by id.
    passes: Vec<Option<Pass>>,
    /// Passes to pump this turn: (id, serial).
    runnable: Vec<(usize, u64)>,
    pipes: Pipes,
    /// The smallest body passed (0: none is).
    splice_min: u64,
    /// Bodies from an upstream on this host's loopback are passed too (see
    /// [`Tuning::splice_local`]).
    splice_local: bool,
    pass_serial: u64,
    /// Owners to touch after the drive (a pass that could not start after all).
    retouch: Vec<Owner>,
    /// Bodies on their way through the worker's own buffers, by id.
    relays: Vec<Option<Relay>>,
    /// Body bytes written by splices and by relays (tests and diagnostics).
    spliced: u64,
    relayed: u64,
    relay_buffers: RelayBuffers,
}

impl UringNet {
    fn token(&self, op: Op, slot: usize) -> Token {
        Token {
            op,
            slot: slot as u32,
            generation: self.socks.generation(slot),
        }
    }

    fn maybe_free(&mut self, slot: usize) {
        if let Some(s) = self.socks.get_any(slot)
            && s.owner.is_none()
            && s.inflight == 0
        {
            // The table's reference first (queued, so behind nothing of this socket: none is
            // in flight), then the descriptor, both in the next submission (no system call);
            // the slot's next install comes after both.
            self.ring.remove_fixed(s.target);
            if let Some(fd) = s.fd {
                self.ring.close_fd(fd);
            }
            self.socks.remove(slot);
        }
    }

    /// Arms the multishot accept of each listener that is not armed (unless paused).
    fn arm_accepts(&mut self, now: Instant) {
        if !self.accepting || self.accept_paused_until.is_some_and(|until| now < until) {
            return;
        }
        // Either listener's EMFILE pauses both; whichever re-arms first ends it.
        self.accept_paused_until = None;
        for (i, listener) in self.listeners.iter().enumerate() {
            let Some(fd) = *listener else {
                continue;
            };
            // Straight into the file table where the listener names its address (a wildcard
            // one would need getsockname per connection, which a socket without a descriptor
            // cannot do): the multishot accept below is armed only when the table's range has
            // no entry to spare.
            if self.direct && self.listener_addrs[i].is_some() {
                if self.direct_rearm[i] {
                    let mut short = false;
                    for k in 0..DIRECT_ACCEPTS {
                        let token = Token {
                            op: Op::AcceptDirect,
                            slot: i as u32 + 2 * k,
                            generation: 0,
                        };
                        // Refused while still armed (fine) or for a full range (short).
                        if !self.ring.accept_direct(fd, token)
                            && !self.ring.direct_armed(token.slot)
                        {
                            short = true;
                        }
                    }
                    self.direct_short[i] = short;
                    // While short, try again next turn (entries come back as sockets close).
                    self.direct_rearm[i] = short;
                }
                if !self.direct_short[i] {
                    continue;
                }
            }
            if !self.accept_armed[i] {
                let token = Token {
                    op: Op::Accept,
                    slot: i as u32,
                    generation: 0,
                };
                self.ring.accept_multi(fd, token);
                self.accept_armed[i] = true;
            }
        }
    }

    fn complete(&mut self, c: Completion, driver: &mut Driver, now: Instant) {
        let Some(token) = c.token else {
            return;
        };
        match token.op {
            Op::Accept => self.accepted(token, c, driver, now),
            Op::AcceptDirect => self.accepted_direct(token, c, driver, now),
            Op::Recv => self.received(token, c, driver, now),
            // A zero-copy send's notification: the ring took its buffer back.
            Op::Send if c.notif => {}
            Op::Send => {
                let slot = token.slot as usize;
                let buf = self.ring.take_sent(token.slot);
                let Some(s) = self.socks.get(slot, token.generation) else {
                    return;
                };
                s.inflight -= 1;
                if let Some(Moving::Relay(id)) = s.moving {
                    if let Some(Some(relay)) = self.relays.get_mut(id as usize) {
                        relay.sent(buf.unwrap_or_default(), c.result);
                        let written = u64::try_from(c.result.max(0)).unwrap_or(0);
                        self.bytes_sent += written;
                        self.relayed += written;
                    }
                    self.relay_step(id as usize, driver, now);
                    self.maybe_free(slot);
                    return;
                }
                self.bytes_sent += u64::try_from(c.result.max(0)).unwrap_or(0);
                if let Some(owner) = s.owner {
                    let written = usize::try_from(c.result).ok();
                    driver.sent(owner, buf.unwrap_or_default(), written, now);
                }
                self.maybe_free(slot);
            }
            Op::Shutdown => self.shut(token),
            Op::RecvInto => {
                let slot = token.slot as usize;
                let buf = self.ring.take_recv(token.slot).unwrap_or_default();
                let Some(s) = self.socks.get(slot, token.generation) else {
                    return;
                };
                s.inflight -= 1;
                match s.moving {
                    Some(Moving::Relay(id)) => {
                        let (buf, start) = buf;
                        if let Some(Some(relay)) = self.relays.get_mut(id as usize) {
                            self.bytes_received += u64::try_from(c.result.max(0)).unwrap_or(0);
                            relay.received(buf, start, c.result);
                        }
                        self.relay_step(id as usize, driver, now);
                    }
                    _ => self.relay_buffers.give(buf.0),
                }
                self.maybe_free(slot);
            }
            Op::Poll => {
                let slot = token.slot as usize;
                let Some(s) = self.socks.get(slot, token.generation) else {
                    return;
                };
                s.inflight -= 1;
                if let Some(Moving::Splice(id)) = s.moving
                    && let Some(Some(pass)) = self.passes.get(id as usize)
                {
                    self.runnable.push((id as usize, pass.serial));
                }
                self.maybe_free(slot);
            }
            Op::Connect => {
                let slot = token.slot as usize;
                let Some(s) = self.socks.get(slot, token.generation) else {
                    return;
                };
                s.inflight -= 1;
                if let Some(owner) = s.owner {
                    driver.connected(owner, c.result == 0, now);
                }
                self.maybe_free(slot);
            }
            // A table update failed (its socket's operations then fail on their own).
            Op::Wake | Op::Cancel | Op::Files => {}
        }
    }

    fn accepted(&mut self, token: Token, c: Completion, driver: &mut Driver, now: Instant) {
        let https = token.slot == HTTPS_LISTENER;
        if !c.more {
            self.accept_armed[token.slot as usize & 1] = false;
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
        // TCP_NODELAY came with the socket: it is set on the listener, and Linux copies it to
        // every connection accepted there.
        let unspecified: SocketAddr = ([0, 0, 0, 0], 0).into();
        let local = match self.listener_addrs[token.slot as usize & 1] {
            Some(addr) => addr,
            None => uring::local_addr(fd).unwrap_or(unspecified),
        };
        let info = ClientInfo {
            peer: uring::peer_addr(fd).unwrap_or(unspecified),
            local,
        };
        let slot = self.socks.insert(|_| Socket {
            fd: Some(fd),
            target: Target::Fd(fd),
            owner: None,
            recv: Receive::default(),
            read_wanted: false,
            inflight: 0,
            moving: None,
            pass_waiting: false,
            nonblocking: false,
        });
        let owner = driver.accept(slot, info, https, now);
        if owner.is_some() {
            // Installed before the driver's first operation on it is queued (at its drive).
            let target = self.ring.install(fd, slot as u32);
            if let Some(s) = self.socks.get_any(slot) {
                s.target = target;
            }
        }
        if let Some(s) = self.socks.get_any(slot) {
            s.owner = owner;
        }
        self.maybe_free(slot);
    }

    /// A direct accept completed: its result is the socket's entry in the ring's file table,
    /// its peer's address is in the accept's own buffer, and the local address is the
    /// listener's (direct accepts are armed only on listeners that name theirs).
    fn accepted_direct(&mut self, token: Token, c: Completion, driver: &mut Driver, now: Instant) {
        let listener = token.slot as usize & 1;
        self.direct_rearm[listener] = true;
        if c.result < 0 {
            let err = -c.result;
            if err == libc::EMFILE
                || err == libc::ENFILE
                || err == libc::ENOBUFS
                || err == libc::ENOMEM
            {
                self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
            } else if self.accepting
                && (err == libc::EINVAL || err == libc::EOPNOTSUPP || err == libc::EBADF)
            {
                // The kernel does not take them after all: descriptors from here on. (A
                // connection reset before it was accepted, ECONNABORTED, is no reason.)
                self.direct = false;
            }
            return;
        }
        let target = Target::Fixed(c.result as u32);
        let (Some(local), Some(peer)) = (
            self.listener_addrs[listener],
            self.ring.accepted_peer(token.slot),
        ) else {
            self.ring.remove_fixed(target);
            return;
        };
        if !self.accepting {
            self.ring.remove_fixed(target);
            return;
        }
        let slot = self.socks.insert(|_| Socket {
            fd: None,
            target,
            owner: None,
            recv: Receive::default(),
            read_wanted: false,
            inflight: 0,
            moving: None,
            pass_waiting: false,
            nonblocking: false,
        });
        let owner = driver.accept(slot, ClientInfo { peer, local }, listener == 1, now);
        if let Some(s) = self.socks.get_any(slot) {
            s.owner = owner;
        }
        self.maybe_free(slot);
    }

    /// A shutdown on the ring completed (whatever its result: a peer that already went makes
    /// it fail, which changes nothing).
    fn shut(&mut self, token: Token) {
        let slot = token.slot as usize;
        if let Some(s) = self.socks.get(slot, token.generation) {
            s.inflight -= 1;
            self.maybe_free(slot);
        }
    }

    fn received(&mut self, token: Token, c: Completion, driver: &mut Driver, now: Instant) {
        let slot = token.slot as usize;
        let len = c.result.max(0) as usize;
        let Some(s) = self.socks.get(slot, token.generation) else {
            if let Some(bid) = c.buffer {
                self.ring.recycle(bid, len);
            }
            return;
        };
        let ended = s.recv.completed(&c);
        if ended {
            s.inflight -= 1;
            if std::mem::take(&mut s.pass_waiting)
                && let Some(owner) = s.owner
            {
                // A pass waited for this receive to end.
                driver.touch(owner);
            }
        }
        if let Some(owner) = s.owner {
            match (c.result, c.buffer) {
                (n, Some(bid)) if n > 0 => {
                    if ended {
                        // Its budget is spent (the peer has not closed: that comes as 0).
                        self.spent.push((slot, token.generation));
                    }
                    self.bytes_received += len as u64;
                    // A bundle's buffers in order, each as received bytes.
                    for bytes in self.ring.received(bid, len) {
                        driver.received(owner, bytes, now);
                    }
                }
                (0, _) => driver.eof(owner, now),
                // Out of buffers: queued, armed again in a later turn ([`UringNet::rearm`]).
                (n, _) if n == -libc::ENOBUFS => {
                    self.nobufs += 1;
                    self.dry = true;
                    if ended && !s.recv.starved {
                        s.recv.starved = true;
                        self.starved.push_back((slot, token.generation));
                    }
                }
                // Our cancel: armed again if the driver wants input again.
                (n, _) if n == -libc::ECANCELED => {
                    let (target, wanted) = (s.target, s.read_wanted);
                    let token = self.token(Op::Recv, slot);
                    if let Some(s) = self.socks.get_any(slot)
                        && s.recv.want(wanted, &mut self.ring, target, token)
                    {
                        s.inflight += 1;
                    }
                }
                (n, _) if n < 0 => driver.failed(owner, now),
                _ => {}
            }
        }
        if let Some(bid) = c.buffer {
            self.ring.recycle(bid, len);
        }
        self.maybe_free(slot);
    }
}

impl UringNet {
    /// After the driver's drive: arms the receives that spent their budget if their socket
    /// still wants input, then as many starved ones as the buffer ring can serve this turn,
    /// oldest first. Their submissions go with the buffers the turn gave back.
    fn rearm(&mut self) {
        let mut spent = std::mem::take(&mut self.spent);
        for (slot, generation) in spent.drain(..) {
            if self.dry {
                self.queue(slot, generation);
            } else {
                self.arm_if_wanted(slot, generation);
            }
        }
        self.spent = spent;
        let mut budget = self.ring.rearms_per_turn();
        while budget > 0
            && let Some((slot, generation)) = self.starved.pop_front()
        {
            let Some(s) = self.socks.get(slot, generation) else {
                continue;
            };
            s.recv.starved = false;
            if self.arm_if_wanted(slot, generation) {
                budget -= 1;
            }
        }
        // The ring counts as dry until a turn sees no ENOBUFS and the queue is empty.
        self.dry = !self.starved.is_empty();
    }

    /// Whether the peer of `slot`'s socket is on another host (not loopback): sends to it may
    /// go zero-copy. Unknown (no descriptor to ask) counts as remote.
    fn remote_peer(&mut self, slot: usize) -> bool {
        let generation = self.socks.generation(slot);
        if let Some(Some((g, remote))) = self.remote.get(slot)
            && *g == generation
        {
            return *remote;
        }
        let Some(s) = self.socks.get_any(slot) else {
            return false;
        };
        // A socket accepted straight into the file table has no descriptor to ask: remote.
        let remote =
            s.fd.and_then(uring::peer_addr)
                .is_none_or(|a| !a.ip().to_canonical().is_loopback());
        if self.remote.len() <= slot {
            self.remote.resize(slot + 1, None);
        }
        self.remote[slot] = Some((generation, remote));
        remote
    }

    /// Puts the receive of `slot` in the queue of those armed a few per turn.
    fn queue(&mut self, slot: usize, generation: u32) {
        if let Some(s) = self.socks.get(slot, generation)
            && !s.recv.armed
            && !s.recv.starved
        {
            s.recv.starved = true;
            self.starved.push_back((slot, generation));
        }
    }

    /// Arms the receive of `slot` if it is open, not armed and wanted. True when it did.
    fn arm_if_wanted(&mut self, slot: usize, generation: u32) -> bool {
        let token = self.token(Op::Recv, slot);
        let Some(s) = self.socks.get(slot, generation) else {
            return false;
        };
        if s.owner.is_none() || !s.read_wanted {
            return false;
        }
        let armed = s.recv.want(true, &mut self.ring, s.target, token);
        if armed {
            s.inflight += 1;
        }
        armed
    }
}

impl UringNet {
    /// The descriptors of `from` and `to` when a body between them should be spliced: a pipe
    /// is free, both have descriptors (made nonblocking here, once), and the upstream is on
    /// another host or `splice_local` says splice anyway.
    fn splice_fds(&mut self, from: usize, to: usize) -> Option<((usize, RawFd), (usize, RawFd))> {
        if !self.pipes.available() || !(self.splice_local || self.remote_peer(from)) {
            return None;
        }
        let mut fds = [0; 2];
        for (i, slot) in [from, to].into_iter().enumerate() {
            let s = self.socks.get_any(slot)?;
            let fd = s.fd?;
            if !s.nonblocking {
                // splice(2) waits unless the descriptor says not to.
                uring::set_nonblocking(fd).ok()?;
                s.nonblocking = true;
            }
            fds[i] = fd;
        }
        Some(((from, fds[0]), (to, fds[1])))
    }

    fn start_splice(
        &mut self,
        (from, to): ((usize, RawFd), (usize, RawFd)),
        len: u64,
        owner: Owner,
    ) {
        let Some(pipe) = self.pipes.take() else {
            // No pipe after all (the kernel refused one): the relay.
            return self.start_relay(from.0, to.0, len, owner);
        };
        self.pass_serial += 1;
        let pass = Pass::new(from, to, len, owner, pipe, self.pass_serial);
        let id = free_index(&mut self.passes);
        self.passes[id] = Some(pass);
        for slot in [from.0, to.0] {
            if let Some(s) = self.socks.get_any(slot) {
                s.moving = Some(Moving::Splice(id as u32));
            }
        }
        self.runnable.push((id, self.pass_serial));
    }

    fn start_relay(&mut self, from: usize, to: usize, len: u64, owner: Owner) {
        let relay = Relay::new(from, to, len, owner, self.relay_buffers.take());
        let id = free_index(&mut self.relays);
        self.relays[id] = Some(relay);
        for slot in [from, to] {
            if let Some(s) = self.socks.get_any(slot) {
                s.moving = Some(Moving::Relay(id as u32));
            }
        }
        self.start_relay_ops(id);
    }

    /// Submits what relay `id` can start now.
    fn start_relay_ops(&mut self, id: usize) {
        let Some(Some(relay)) = self.relays.get_mut(id) else {
            return;
        };
        let (from, to) = (relay.from, relay.to);
        for op in relay.next() {
            match op {
                RelayOp::Recv(buf, start, end) => {
                    let token = self.token(Op::RecvInto, from);
                    if let Some(s) = self.socks.get_any(from) {
                        s.inflight += 1;
                        if let Err(buf) = self.ring.recv_into(s.target, buf, (start, end), token) {
                            // Never: one receive per relay at a time.
                            s.inflight -= 1;
                            if let Some(Some(r)) = self.relays.get_mut(id) {
                                r.received(buf, start, -libc::EBUSY);
                            }
                        }
                    }
                }
                RelayOp::CancelRecv => {
                    let token = self.token(Op::RecvInto, from);
                    self.ring.cancel(token);
                }
                RelayOp::Send(buf, start, end) => {
                    let token = self.token(Op::Send, to);
                    if let Some(s) = self.socks.get_any(to) {
                        s.inflight += 1;
                        if let Err(buf) = self.ring.send_part(s.target, buf, (start, end), token) {
                            s.inflight -= 1;
                            if let Some(Some(r)) = self.relays.get_mut(id) {
                                r.sent(buf, -libc::EBUSY);
                            }
                        }
                    }
                }
            }
        }
    }

    /// After a completion of relay `id`: tells the driver what moved, starts what can go on,
    /// and ends the relay once it is through (or failed, or abandoned) and idle.
    fn relay_step(&mut self, id: usize, driver: &mut Driver, now: Instant) {
        let Some(Some(relay)) = self.relays.get_mut(id) else {
            return;
        };
        let (owner, abandoned) = (relay.owner, relay.abandoned);
        let moved = std::mem::take(&mut relay.moved);
        let ended = if abandoned {
            (!relay.receiving && !relay.sending).then_some(PassEnd::ClientFailed)
        } else {
            relay.ended()
        };
        if ended.is_none() {
            self.start_relay_ops(id);
        }
        if let Some(end) = ended {
            self.end_relay(id);
            if !abandoned {
                driver.passed(owner, moved, Some(end), now);
            }
        } else if moved > 0 && !abandoned {
            driver.passed(owner, moved, None, now);
        }
    }

    /// One of relay `id`'s sockets closed: nothing more is started or reported, and it goes
    /// now if nothing of it is in flight (else at its last completion).
    fn abandon_relay(&mut self, id: usize) {
        let Some(Some(relay)) = self.relays.get_mut(id) else {
            return;
        };
        relay.abandoned = true;
        if !relay.receiving && !relay.sending {
            self.end_relay(id);
        }
    }

    fn end_relay(&mut self, id: usize) {
        let Some(relay) = self.relays.get_mut(id).and_then(Option::take) else {
            return;
        };
        for slot in [relay.from, relay.to] {
            if let Some(s) = self.socks.get_any(slot)
                && s.moving == Some(Moving::Relay(id as u32))
            {
                s.moving = None;
            }
        }
        for buf in relay.into_buffers() {
            self.relay_buffers.give(buf);
        }
    }
}

/// The first free place of `v`, made if there is none.
fn free_index<T>(v: &mut Vec<Option<T>>) -> usize {
    match v.iter().position(Option::is_none) {
        Some(i) => i,
        None => {
            v.push(None);
            v.len() - 1
        }
    }
}

/// Bytes one pass writes per turn at most before the others get theirs.
const PASS_TURN_BYTES: u64 = 4 << 20;

impl UringNet {
    /// Pumps the passes that can move (started, or woken by their poll) and tells the driver
    /// what moved; a pass that waits gets a poll on its socket. True when the driver was told
    /// something (its touched connections want a drive).
    fn run_passes(&mut self, driver: &mut Driver, now: Instant) -> bool {
        let mut told = false;
        for owner in self.retouch.drain(..) {
            driver.touch(owner);
            told = true;
        }
        let mut runnable = std::mem::take(&mut self.runnable);
        for (id, serial) in runnable.drain(..) {
            let Some(Some(pass)) = self.passes.get_mut(id) else {
                continue;
            };
            if pass.serial != serial {
                continue;
            }
            let step = pass.pump(PASS_TURN_BYTES);
            let (moved, owner) = (std::mem::take(&mut pass.moved), pass.owner);
            let (from, to) = (pass.from, pass.to);
            // What the pipe holds counts as held by the worker (tests).
            self.bytes_received += std::mem::take(&mut pass.pulled);
            self.bytes_sent += moved;
            self.spliced += moved;
            let wait = match step {
                Step::Readable => Some((from, libc::POLLIN)),
                Step::Writable => Some((to, libc::POLLOUT)),
                Step::Yield => {
                    self.runnable.push((id, serial));
                    None
                }
                Step::End(_) => None,
            };
            if let Some((slot, events)) = wait {
                let token = self.token(Op::Poll, slot);
                if let Some(s) = self.socks.get_any(slot) {
                    self.ring.poll(s.target, events as u32, token);
                    s.inflight += 1;
                }
            }
            let end = match step {
                Step::End(end) => {
                    self.end_pass(id);
                    Some(end)
                }
                _ => None,
            };
            if moved > 0 || end.is_some() {
                driver.passed(owner, moved, end, now);
                told = true;
            }
        }
        runnable.append(&mut self.runnable);
        self.runnable = runnable;
        told
    }

    /// Forgets pass `id` (it ended, or one of its sockets closed): its sockets are the
    /// driver's again, its pipe goes back to the pool (closed if it still holds bytes).
    fn end_pass(&mut self, id: usize) {
        let Some(pass) = self.passes.get_mut(id).and_then(Option::take) else {
            return;
        };
        for slot in [pass.from, pass.to] {
            if let Some(s) = self.socks.get_any(slot)
                && s.moving == Some(Moving::Splice(id as u32))
            {
                s.moving = None;
            }
        }
        let (pipe, empty) = pass.into_pipe();
        self.pipes.give(pipe, empty);
    }
}

impl Drop for UringNet {
    /// Closes the descriptors of sockets whose last operations never completed (the worker
    /// stopped first); the ring, and the memory those operations use, goes after them.
    fn drop(&mut self) {
        for i in 0..self.socks.capacity() {
            // A socket without a descriptor goes with the ring's file table.
            if let Some(fd) = self.socks.remove(i).and_then(|s| s.fd) {
                uring::close(fd);
            }
        }
    }
}

impl Transport for UringNet {
    fn send(&mut self, sock: usize, buf: Vec<u8>) -> Sent {
        let token = self.token(Op::Send, sock);
        let Some(s) = self.socks.get_any(sock) else {
            return Sent::Done {
                buf,
                written: 0,
                closed: true,
            };
        };
        let target = s.target;
        // Only a send large enough to go zero-copy asks who the peer is (once per socket).
        let zc = buf.len() >= uring::ZC_MIN && (self.zc_loopback || self.remote_peer(sock));
        let Some(s) = self.socks.get_any(sock) else {
            return Sent::Done {
                buf,
                written: 0,
                closed: true,
            };
        };
        match self.ring.send_with(target, buf, token, zc) {
            Ok(()) => {
                s.inflight += 1;
                Sent::Pending
            }
            Err(buf) => Sent::Done {
                buf,
                written: 0,
                closed: true,
            },
        }
    }

    fn set_read(&mut self, sock: usize, wanted: bool) {
        let token = self.token(Op::Recv, sock);
        let generation = self.socks.generation(sock);
        if let Some(s) = self.socks.get_any(sock) {
            s.read_wanted = wanted;
            if wanted && self.dry && !s.recv.armed {
                self.queue(sock, generation);
                return;
            }
            if s.recv.want(wanted, &mut self.ring, s.target, token) {
                s.inflight += 1;
            }
        }
    }

    fn connect(&mut self, endpoint: SocketAddr, owner: Owner) -> std::io::Result<usize> {
        let fd = uring::upstream_socket(endpoint)?;
        let slot = self.socks.insert(|_| Socket {
            fd: Some(fd),
            target: Target::Fd(fd),
            owner: Some(owner),
            recv: Receive::default(),
            read_wanted: false,
            inflight: 1,
            moving: None,
            pass_waiting: false,
            // Made so (`uring::upstream_socket`).
            nonblocking: true,
        });
        let target = self.ring.install(fd, slot as u32);
        if let Some(s) = self.socks.get_any(slot) {
            s.target = target;
        }
        let token = self.token(Op::Connect, slot);
        self.ring.connect(target, endpoint, token);
        Ok(slot)
    }

    fn reusable(&mut self, _sock: usize) -> bool {
        // Nothing is queued in user space (the driver checked that no send is in flight);
        // a peer that closed says so on the watching receive.
        true
    }

    /// On the ring where it can (queued behind the socket's last send: the driver half-closes
    /// only once its sends have completed), else shutdown(2).
    fn shutdown_write(&mut self, sock: usize) {
        let token = self.token(Op::Shutdown, sock);
        if let Some(s) = self.socks.get_any(sock) {
            if self.ring.shutdown(s.target, libc::SHUT_WR, token) {
                s.inflight += 1;
            } else if let Some(fd) = s.fd {
                uring::shutdown(fd, libc::SHUT_WR);
            }
        }
    }

    fn close(&mut self, sock: usize, last: Option<&[u8]>) {
        let Some(s) = self.socks.get_any(sock) else {
            return;
        };
        if s.owner.take().is_none() {
            return;
        }
        let (target, fd, moving) = (s.target, s.fd, s.moving);
        match moving {
            Some(Moving::Splice(id)) => self.end_pass(id as usize),
            Some(Moving::Relay(id)) => self.abandon_relay(id as usize),
            None => {}
        }
        match (fd, last) {
            (Some(fd), Some(bytes)) => uring::send_now(fd, bytes),
            // No descriptor: the last bytes on the ring (no send is in flight when the driver
            // hands them).
            (None, Some(bytes)) => {
                let token = self.token(Op::Send, sock);
                if self.ring.send(target, bytes.to_vec(), token).is_ok()
                    && let Some(s) = self.socks.get_any(sock)
                {
                    s.inflight += 1;
                }
            }
            (_, None) => {}
        }
        // What is in flight (the receive a `Connection: close` answer leaves armed, a send
        // waiting for room) is ended, and the socket closed on the ring once nothing is: by
        // shutdown(2) when it has a descriptor (the default: O(1), where the kernel looks for
        // a cancel's operations through every armed one of the ring, see
        // `Features::close_cancel`), else by a cancel on the ring. On the wire the same (after a
        // half-close the FIN is out; a close with unread data sends a reset either way).
        let fd = self
            .socks
            .get_any(sock)
            .filter(|s| s.inflight > 0)
            .map(|s| s.fd);
        match fd {
            Some(Some(fd)) if !self.ring.close_cancel() => uring::shutdown(fd, libc::SHUT_RDWR),
            Some(_) => {
                self.ring.cancel_all(target);
                self.close_wakes += 1;
            }
            None => {}
        }
        self.maybe_free(sock);
    }

    fn pass_min(&mut self, from: usize, to: usize) -> Option<u64> {
        if self.splice_min == 0 {
            return None;
        }
        for slot in [from, to] {
            if self.socks.get_any(slot)?.moving.is_some() {
                return None;
            }
        }
        // Where splicing does not pay, or cannot be done, the relay can.
        Some(self.splice_min)
    }

    fn pass(&mut self, from: usize, to: usize, len: u64, owner: Owner) -> bool {
        let token = self.token(Op::Recv, from);
        let Some(s) = self.socks.get_any(from) else {
            return false;
        };
        s.read_wanted = false;
        if s.recv.armed {
            // Its receive ends first (what it still brings goes the plain way).
            s.recv.want(false, &mut self.ring, s.target, token);
            s.pass_waiting = true;
            return false;
        }
        if self.socks.get_any(to).is_none() {
            self.retouch.push(owner);
            return false;
        }
        match self.splice_fds(from, to) {
            Some(fds) => self.start_splice(fds, len, owner),
            None => self.start_relay(from, to, len, owner),
        }
        true
    }

    fn stop_accepting(&mut self) {
        if self.accepting {
            self.accepting = false;
            // Wakes the multishot accept (it completes with an error) and refuses new
            // connections from here on.
            for fd in self.listeners.iter().flatten() {
                uring::shutdown(*fd, libc::SHUT_RD);
            }
        }
    }
}

pub struct Worker {
    net: UringNet,
    driver: Driver,
    core: Option<usize>,
    wake: RawFd,
    wake_armed: bool,
    completions: Vec<Completion>,
    batching: Batching,
}

impl EngineWorker for Worker {
    type Setup = WorkerSetup;

    /// Makes the ring; if that fails, the listeners are closed (nothing else owns them yet).
    fn build(setup: WorkerSetup, driver: Driver) -> std::io::Result<Worker> {
        let t = &setup.tuning;
        let ring = Ring::with_budget(t.sq_entries, t.recv_buffers, t.features(), t.budget())
            .inspect_err(|_| {
                for fd in [Some(setup.listener), setup.https_listener]
                    .into_iter()
                    .flatten()
                {
                    uring::close(fd);
                }
            })?;
        Ok(Worker::with_ring(setup, driver, ring))
    }

    /// Runs until stopped and drained (or the grace period ends).
    fn run(mut self) -> std::io::Result<()> {
        if let Some(core) = self.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        self.driver.serving(true);
        while self.turn()? == Flow::Run {}
        self.driver.finish(&mut self.net);
        for fd in self.net.listeners.iter().flatten() {
            uring::close(*fd);
        }
        // The eventfd stays open (the engine owns it); a read still armed ends with the ring.
        Ok(())
    }
}

impl Worker {
    fn with_ring(setup: WorkerSetup, driver: Driver, ring: Ring) -> Worker {
        let has_min_wait = ring.has_min_wait();
        let direct = ring.direct_accepts().0;
        Worker {
            net: UringNet {
                ring,
                socks: Slab::default(),
                listeners: [Some(setup.listener), setup.https_listener],
                listener_addrs: [Some(setup.listener), setup.https_listener].map(|l| {
                    l.and_then(uring::local_addr)
                        .filter(|a| !a.ip().is_unspecified())
                }),
                accept_armed: [false; 2],
                direct,
                direct_rearm: [true; 2],
                direct_short: [false; 2],
                accepting: true,
                accept_paused_until: None,
                nobufs: 0,
                starved: Default::default(),
                spent: Vec::new(),
                dry: false,
                bytes_received: 0,
                bytes_sent: 0,
                remote: Vec::new(),
                zc_loopback: false,
                close_wakes: 0,
                passes: Vec::new(),
                runnable: Vec::new(),
                pipes: Pipes::new(setup.tuning.splice_pipes),
                splice_min: setup.tuning.splice_min,
                splice_local: setup.tuning.splice_local,
                pass_serial: 0,
                retouch: Vec::new(),
                relays: Vec::new(),
                spliced: 0,
                relayed: 0,
                relay_buffers: RelayBuffers::default(),
            },
            driver,
            core: setup.core,
            wake: setup.wake,
            wake_armed: false,
            completions: Vec::with_capacity(MAX_COMPLETIONS),
            batching: setup.batching.for_kernel(has_min_wait),
        }
    }

    /// One turn of the loop: the quiescent point, arm, submit and wait, hand the completions
    /// to the driver, its timers, its drive.
    fn turn(&mut self) -> std::io::Result<Flow> {
        let now = clock();
        // Quiescent point: no request is mid-routing here.
        if self.driver.quiescent(&mut self.net, now) == Flow::Exit {
            return Ok(Flow::Exit);
        }
        if !self.wake_armed {
            let token = Token {
                op: Op::Wake,
                slot: 0,
                generation: 0,
            };
            self.net.ring.read_eventfd(self.wake, token);
            self.wake_armed = true;
        }
        self.net.arm_accepts(now);
        let wait = self.next_wait(now);
        let (want, window_us) = self.batching.next_wait();
        self.net.ring.submit_and_gather(wait, want, window_us)?;
        let now = clock();
        let mut completions = std::mem::take(&mut self.completions);
        self.net.ring.completions(&mut completions, MAX_COMPLETIONS);
        self.batching.turn(completions.len());
        for c in &completions {
            if c.token.is_some_and(|t| t.op == Op::Wake) {
                // Re-armed at the top of the loop, where the snapshot is taken.
                self.wake_armed = false;
                continue;
            }
            self.net.complete(*c, &mut self.driver, now);
        }
        self.completions = completions;
        // The batch's receive buffers go back to the kernel before the next wait.
        self.net.ring.release_buffers();
        self.driver.timers(&mut self.net, now);
        self.driver.drive(&mut self.net, now);
        // Bodies moving in the kernel: what they moved completes responses, which the drive
        // carries on (and may start more passes, pumped in the next turn).
        if self.net.run_passes(&mut self.driver, now) {
            self.driver.drive(&mut self.net, now);
        }
        self.net.rearm();
        Ok(Flow::Run)
    }

    fn next_wait(&self, now: Instant) -> Duration {
        let mut wait = MAX_WAIT;
        if let Some(at) = self.driver.next_deadline() {
            wait = wait.min(at.saturating_since(now));
        }
        if let Some(until) = self.net.accept_paused_until {
            wait = wait.min(until.saturating_since(now));
        }
        if !self.net.runnable.is_empty() {
            // Passes to pump: look for completions, do not wait for them.
            wait = Duration::ZERO;
        }
        wait.max(Duration::from_micros(1))
    }
}

#[cfg(test)]
mod tests {
    //! A worker with a real ring, a real listener and a real upstream, but a tiny buffer ring,
    //! so receives run out of buffers (ENOBUFS) and must be armed again.

    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;
    use crate::core::conn::ConnConfig;
    use crate::core::route::{Backend, BackendId, PathKind, RouteTableBuilder};
    use crate::core::snapshot::Snapshot;
    use crate::engine::uring::Features;

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// An upstream that answers every request of a connection (keep-alive) with what
    /// `answer` makes of the request's head.
    fn answering(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let answer = std::sync::Arc::new(answer);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end);
                        if s.write_all(&answer(&head)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Answers every request on a connection with `len` bytes (keep-alive).
    fn upstream(len: usize) -> SocketAddr {
        answering(move |_| {
            let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
            out.extend_from_slice(&body(len));
            out
        })
    }

    fn driver(upstream: SocketAddr) -> Driver {
        driver_with(upstream, ConnConfig::default())
    }

    fn driver_with(upstream: SocketAddr, conn: ConnConfig) -> Driver {
        let mut routes = RouteTableBuilder::default();
        routes.add(Some("a.test"), "/", PathKind::Prefix, BackendId(0));
        let backends = vec![Backend {
            name: "default/a:80".into(),
            endpoints: vec![upstream],
        }];
        crate::engine::driver::test_driver(conn, Snapshot::new(1, routes.build(), backends))
    }

    /// Reads one response: the head, then Content-Length bytes.
    fn response(s: &mut TcpStream) -> (String, Vec<u8>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before the head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("a content length");
        let mut body = buf[end..].to_vec();
        while body.len() < len {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed in the body");
            body.extend_from_slice(&chunk[..n]);
        }
        (head, body)
    }

    /// `clients` clients, three requests each for `len`-byte answers, through a worker with
    /// `features` and receive buffers `sizing`: every response arrives whole and in order.
    fn serve(clients: usize, len: usize, sizing: uring::RecvBuffers, features: Features) -> Worker {
        serve_with(
            clients,
            3,
            len,
            sizing,
            features,
            ConnConfig::default(),
            |_| {},
        )
    }

    /// [`serve`] with `requests` requests per client; `each_turn` sees the worker before each
    /// of its turns.
    fn serve_with(
        clients: usize,
        requests: usize,
        len: usize,
        sizing: uring::RecvBuffers,
        features: Features,
        conn: ConnConfig,
        mut each_turn: impl FnMut(&mut Worker),
    ) -> Worker {
        let up = upstream(len);
        let listener = uring::listen_reuseport("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let addr = uring::local_addr(listener).unwrap();
        let wake = crate::engine::sys::eventfd().unwrap();
        let setup = WorkerSetup {
            core: None,
            listener,
            https_listener: None,
            wake: std::os::fd::AsRawFd::as_raw_fd(&wake),
            batching: Default::default(),
            tuning: Default::default(),
        };
        let ring = Ring::with_features(256, sizing, features).unwrap();
        assert_eq!(ring.bundles(), features.bundles);
        assert_eq!(ring.fixed_files() > 0, features.fixed_files);
        let mut worker = Worker::with_ring(setup, driver_with(up, conn), ring);
        worker.driver.serving(true);
        let clients: Vec<_> = (0..clients)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    for _ in 0..requests {
                        s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                            .unwrap();
                        let (head, got) = response(&mut s);
                        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                        assert!(got == body(len), "the body arrives whole and in order");
                    }
                })
            })
            .collect();
        for _ in 0..200_000 {
            if clients.iter().all(|c| c.is_finished()) {
                break;
            }
            each_turn(&mut worker);
            assert_eq!(worker.turn().unwrap(), Flow::Run);
        }
        for c in clients {
            c.join().expect("every client got its answers");
        }
        uring::close(listener);
        worker
    }

    /// Answers every request with the value of its X-Forwarded-For field.
    fn echo_forwarded_for() -> SocketAddr {
        answering(|head| {
            let xff = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("x-forwarded-for:")
                        .map(|v| v.trim().to_string())
                })
                .unwrap_or_default();
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{xff}",
                xff.len()
            )
            .into_bytes()
        })
    }

    /// A worker whose ring has `features` (256 entries, the engine's receive buffers),
    /// serving an upstream that echoes X-Forwarded-For: the worker, its address and its
    /// listener.
    fn worker_on(features: Features) -> (Worker, SocketAddr, RawFd) {
        let ring = Ring::with_features(256, RECV_BUFFERS, features).unwrap();
        let up = echo_forwarded_for();
        let listener = uring::listen_reuseport("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let addr = uring::local_addr(listener).unwrap();
        let wake = crate::engine::sys::eventfd().unwrap();
        let setup = WorkerSetup {
            core: None,
            listener,
            https_listener: None,
            wake: std::os::fd::AsRawFd::as_raw_fd(&wake),
            batching: Default::default(),
            tuning: Default::default(),
        };
        // The eventfd outlives the test's worker (nothing signals it).
        std::mem::forget(wake);
        let worker = Worker::with_ring(setup, driver(up), ring);
        worker.driver.serving(true);
        (worker, addr, listener)
    }

    /// Turns the worker until `done` finished.
    fn turn_until<T>(worker: &mut Worker, done: &std::thread::JoinHandle<T>) {
        for _ in 0..20_000 {
            if done.is_finished() {
                return;
            }
            assert_eq!(worker.turn().unwrap(), Flow::Run);
        }
    }

    /// One keep-alive client that sends `requests` requests, reads each answer (the echoed
    /// X-Forwarded-For: its own address) and goes away; then a few more turns, so that its
    /// socket is closed and what was in flight on it ends.
    fn keep_alive_requests(worker: &mut Worker, addr: SocketAddr, requests: usize) {
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            for _ in 0..requests {
                s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                    .unwrap();
                let (_, got) = response(&mut s);
                assert_eq!(got, b"127.0.0.1");
            }
        });
        turn_until(worker, &client);
        client.join().unwrap();
        for _ in 0..50 {
            worker.turn().unwrap();
        }
    }

    /// `n` clients, each one `Connection: close` request on a connection of its own: each gets
    /// its answer, then the proxy's FIN (EOF), and the proxy's socket is freed.
    fn close_requests(worker: &mut Worker, addr: SocketAddr, n: usize) {
        let client = std::thread::spawn(move || {
            for _ in 0..n {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let (head, got) = response(&mut s);
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                assert_eq!(got, b"127.0.0.1", "X-Forwarded-For: the client's address");
                let mut rest = [0u8; 16];
                assert_eq!(s.read(&mut rest).unwrap(), 0, "the proxy half-closed");
            }
        });
        turn_until(worker, &client);
        client
            .join()
            .expect("every client got its answer and the FIN");
        // The clients' own FINs end the lingering connections.
        for _ in 0..50 {
            worker.turn().unwrap();
        }
    }

    #[test]
    fn a_connection_close_answer_is_half_closed_on_the_ring() {
        let (mut worker, addr, listener) = worker_on(Features::all());
        close_requests(&mut worker, addr, 3);
        assert_eq!(
            worker.net.ring.ring_shutdown(),
            (true, 3),
            "one shutdown on the ring per connection"
        );
        assert!(
            worker.net.socks.len() <= 1,
            "the clients' sockets are freed (the pooled upstream may stay)"
        );
        uring::close(listener);
    }

    #[test]
    fn without_ring_shutdowns_a_connection_close_answer_is_half_closed_by_the_system_call() {
        let features = Features {
            ring_shutdown: false,
            ..Features::all()
        };
        let (mut worker, addr, listener) = worker_on(features);
        close_requests(&mut worker, addr, 3);
        assert_eq!(worker.net.ring.ring_shutdown(), (false, 0));
        assert_eq!(
            worker.net.close_wakes, 3,
            "each close cancelled the receive left armed on the ring (no shutdown(2))"
        );
        assert_eq!(
            worker.net.ring.direct_accepts(),
            (false, 0),
            "a socket without a descriptor needs ring shutdowns"
        );
        assert!(worker.net.socks.len() <= 1);
        uring::close(listener);
    }

    /// The pooled upstream connection is closed while its watching receive is in flight: by
    /// default shutdown(2) wakes that receive, with `close_cancel` the close cancels it on the
    /// ring; either way the socket is freed once it has ended.
    #[test]
    fn a_close_with_a_receive_in_flight_wakes_it_and_frees_the_socket() {
        for cancel in [false, true] {
            let features = Features {
                close_cancel: cancel,
                ..Features::default()
            };
            let (mut worker, addr, listener) = worker_on(features);
            keep_alive_requests(&mut worker, addr, 1);
            assert_eq!(worker.net.socks.len(), 1, "the pooled upstream connection");
            let before = worker.net.close_wakes;
            worker.driver.finish(&mut worker.net);
            assert_eq!(
                worker.net.close_wakes,
                before + u64::from(cancel),
                "its receive was cancelled on the ring only with close_cancel"
            );
            for _ in 0..50 {
                if worker.net.socks.is_empty() {
                    break;
                }
                worker.turn().unwrap();
            }
            assert!(
                worker.net.socks.is_empty(),
                "freed once the receive ended (cancel {cancel})"
            );
            uring::close(listener);
        }
    }

    /// Clients on connections of their own through a worker that accepts straight into the
    /// file table: no accepted socket has a descriptor, each request reaches the upstream with
    /// the client's address, each answer ends with the FIN sent on the ring, and every
    /// socket and table entry is given back.
    #[test]
    fn accepted_sockets_have_only_a_table_entry_and_their_peer_address() {
        let (mut worker, addr, listener) = worker_on(Features::all());
        assert!(
            worker.net.direct,
            "this kernel (6.0+) accepts into the file table"
        );
        close_requests(&mut worker, addr, 5);
        assert_eq!(worker.net.ring.direct_accepts(), (true, 5));
        assert!(
            !worker.net.accept_armed[0],
            "no accept with descriptors was needed"
        );
        assert!(worker.net.socks.len() <= 1);
        // A keep-alive client that goes away after three requests: its socket is closed with
        // its operations cancelled on the ring.
        keep_alive_requests(&mut worker, addr, 3);
        assert_eq!(worker.net.ring.direct_accepts(), (true, 6));
        assert!(worker.net.socks.len() <= 1, "the client's socket was freed");
        uring::close(listener);
    }

    #[test]
    fn without_direct_accepts_sockets_come_with_descriptors() {
        let features = Features {
            accept_direct: false,
            close_cancel: false,
            ..Features::all()
        };
        let (mut worker, addr, listener) = worker_on(features);
        close_requests(&mut worker, addr, 2);
        assert_eq!(worker.net.ring.direct_accepts(), (false, 0));
        assert!(
            worker.net.accept_armed[0],
            "the multishot accept with descriptors"
        );
        uring::close(listener);
    }

    /// Sixteen clients through a worker whose buffer ring has four buffers: receives run
    /// dry and are armed again.
    fn many_clients_through_a_tiny_buffer_ring(features: Features) {
        let sizing = uring::RecvBuffers {
            plain: (4, 512),
            bundled: (4, 512),
        };
        let worker = serve(16, 64 * 1024, sizing, features);
        assert!(
            worker.net.nobufs > 0,
            "the receives ran out of buffers and were armed again"
        );
    }

    /// With buffers large enough for sends of [`uring::ZC_MIN`] bytes (`buffers.size`; the
    /// default 32 KiB and the receive budget keep most sends below it), they go zero-copy to
    /// a peer on another host (here: loopback peers counted as remote).
    #[test]
    fn large_answers_go_to_the_client_zero_copy_whole_and_in_order() {
        let conn = ConnConfig {
            buffer_size: 256 * 1024,
            ..ConnConfig::default()
        };
        let (len, features) = (1 << 20, Features::default());
        let worker = serve_with(4, 3, len, RECV_BUFFERS, features, conn, |w| {
            w.net.zc_loopback = true;
            // The plain path (splicing would take the bodies past the sends).
            w.net.splice_min = 0;
        });
        let (on, sends) = worker.net.ring.send_zc();
        assert!(on, "this kernel has SEND_ZC");
        assert!(sends > 0, "some sends were large enough to go zero-copy");
    }

    /// The same answers to a client on this host copy: the kernel copies zero-copy data for a
    /// local receiver anyway (15 % more proxy CPU per 1 MiB answer at 1,000 connections).
    #[test]
    fn large_answers_to_a_loopback_client_copy_whole_and_in_order() {
        let conn = ConnConfig {
            buffer_size: 256 * 1024,
            ..ConnConfig::default()
        };
        let (len, features) = (1 << 20, Features::default());
        let worker = serve_with(4, 3, len, RECV_BUFFERS, features, conn, |w| {
            w.net.splice_min = 0;
        });
        let (on, sends) = worker.net.ring.send_zc();
        assert!(on, "this kernel has SEND_ZC");
        assert_eq!(sends, 0, "no send to a loopback peer went zero-copy");
        let peers: Vec<bool> = worker.net.remote.iter().flatten().map(|p| p.1).collect();
        assert!(
            !peers.is_empty() && peers.iter().all(|remote| !remote),
            "{peers:?}"
        );
    }

    #[test]
    fn receives_that_run_out_of_buffers_are_armed_again_with_bundles_and_a_file_table() {
        many_clients_through_a_tiny_buffer_ring(Features::default());
    }

    #[test]
    fn receives_that_run_out_of_buffers_are_armed_again_without_any_optional_feature() {
        many_clients_through_a_tiny_buffer_ring(Features {
            fixed_files: false,
            bundles: false,
            send_zc: false,
            recv_limit: false,
            ring_shutdown: false,
            accept_direct: false,
            close_cancel: false,
        });
    }

    /// Reads a message's head from `s`, then the `len` bytes of its body 16 KiB at a time with
    /// a pause between (slower than the other side sends); checks they are `body(len)`.
    fn read_slowly(s: &mut TcpStream, len: usize) {
        let mut got = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let end = loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before the head");
            got.extend_from_slice(&chunk[..n]);
            if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        while got.len() < end + len {
            std::thread::sleep(Duration::from_micros(300));
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed in the body");
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(
            got[end..] == body(len)[..],
            "the body arrives whole and in order"
        );
    }

    /// A worker built as the engine builds it, with `tuning` (the receive budget among it),
    /// for `up`, on a listener of its own; the wake descriptor must live as long as the worker.
    fn budget_worker(
        up: SocketAddr,
        tuning: Tuning,
    ) -> (Worker, SocketAddr, RawFd, std::os::fd::OwnedFd) {
        let listener = uring::listen_reuseport("127.0.0.1:0".parse().unwrap(), 128).unwrap();
        let addr = uring::local_addr(listener).unwrap();
        let wake = crate::engine::sys::eventfd().unwrap();
        let setup = WorkerSetup {
            core: None,
            listener,
            https_listener: None,
            wake: std::os::fd::AsRawFd::as_raw_fd(&wake),
            batching: Default::default(),
            tuning,
        };
        let worker = Worker::build(setup, driver(up)).unwrap();
        assert_eq!(
            worker.net.ring.recv_limit(),
            tuning.recv_budget,
            "this kernel (6.17+) keeps the budget"
        );
        worker.driver.serving(true);
        (worker, addr, listener, wake)
    }

    /// Turns `worker` until `client` is done: the most bytes it held at once (received and not
    /// yet written).
    fn turn_watching_held<T>(worker: &mut Worker, client: &std::thread::JoinHandle<T>) -> u64 {
        let mut peak = 0;
        for _ in 0..1_000_000 {
            if client.is_finished() {
                break;
            }
            assert_eq!(worker.turn().unwrap(), Flow::Run);
            peak = peak.max(
                worker
                    .net
                    .bytes_received
                    .saturating_sub(worker.net.bytes_sent),
            );
        }
        peak
    }

    /// The most bytes of a 4 MiB answer a worker with `tuning` held at once (received and not
    /// yet written, in user space or in a pipe) while its client read the answer slowly.
    fn peak_held_for_a_slow_client(tuning: Tuning) -> u64 {
        const LEN: usize = 4 << 20;
        let (mut worker, addr, listener, _wake) = budget_worker(upstream(LEN), tuning);
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                .unwrap();
            read_slowly(&mut s, LEN);
        });
        let peak = turn_watching_held(&mut worker, &client);
        client.join().expect("the client got the whole answer");
        uring::close(listener);
        peak
    }

    /// A client that reads a 4 MiB answer slowly: the worker holds a bounded number of its
    /// bytes (received and not yet written), because each receive ends after its budget and
    /// the upstream socket is armed again only while the connection wants more. Without the
    /// budget one receive took what the upstream's socket held, megabytes, in one turn.
    #[test]
    fn a_slow_client_of_a_large_answer_holds_a_bounded_number_of_bytes_in_the_worker() {
        let peak = peak_held_for_a_slow_client(plain());
        assert!(
            peak <= 512 * 1024,
            "the worker held at most 512 KiB of the answer at once, not {peak} bytes"
        );
    }

    /// `[uring] recv_budget` reaches the worker's ring: with a budget of 16 KiB instead of the
    /// default 128 KiB, the same slow client of a 4 MiB answer is held fewer bytes at once
    /// (about the budget: 16 KiB against 128 KiB).
    #[test]
    fn a_configured_smaller_budget_holds_fewer_bytes_per_slow_connection() {
        let mut small = plain();
        small.set_recv_budget(16 * 1024).unwrap();
        let default = peak_held_for_a_slow_client(plain());
        let configured = peak_held_for_a_slow_client(small);
        // What a connection holds at most: one receive's budget in its input, and its output
        // (a send in flight and the next one queued, each at most `buffer_size`).
        let bound = |budget: u64| budget + 2 * ConnConfig::default().buffer_size as u64;
        let most = bound(u64::from(uring::RECV_LIMIT));
        assert!(
            configured <= bound(16 * 1024) && configured < default && default <= most,
            "a 16 KiB budget held {configured} bytes at once (at most {}), the default {default} \
             (at most {most})",
            bound(16 * 1024)
        );
    }

    /// The engine's tuning without splicing: the plain path, which the budget bounds.
    fn plain() -> Tuning {
        Tuning {
            splice_min: 0,
            ..Tuning::default()
        }
    }

    /// The engine's tuning with passes on, splicing bodies from loopback upstreams too (as
    /// every test's).
    fn spliced() -> Tuning {
        Tuning {
            splice_local: true,
            ..relayed()
        }
    }

    /// The engine's tuning with passes on: bodies from loopback upstreams are relayed.
    fn relayed() -> Tuning {
        Tuning {
            splice_min: super::super::tuning::SPLICE_MIN,
            ..Tuning::default()
        }
    }

    /// Answers above `splice_min` go from the upstream socket to the client's in the kernel:
    /// whole and in order, the upstream connection back in the pool after each (three
    /// answers per client on one upstream connection each), every pass ended and its pipe
    /// kept for the next.
    #[test]
    fn large_answers_are_spliced_whole_and_in_order_on_reused_upstream_connections() {
        let len = 1 << 20;
        let conn = ConnConfig::default();
        let worker = serve_with(4, 3, len, RECV_BUFFERS, Features::default(), conn, |w| {
            w.net.splice_min = relayed().splice_min;
            w.net.splice_local = true;
        });
        let least = 12 * (len as u64 - u64::from(uring::RECV_LIMIT));
        assert_passed(&worker, least, 4);
        assert!(
            worker.net.spliced >= least,
            "{} spliced",
            worker.net.spliced
        );
        assert_eq!(worker.net.relayed, 0);
        assert!(worker.net.pipes.available());
    }

    /// Each answer's head comes with up to one receive (128 KiB) of its body, which takes
    /// the plain path; at least `least` bytes of the rest were passed (and counted by the
    /// driver), on at most `connections` upstream connections, and every pass ended.
    fn assert_passed(worker: &Worker, least: u64, connections: u64) {
        let m = worker.driver.metrics();
        let passed = m.bytes_passed.load(std::sync::atomic::Ordering::Relaxed);
        assert!(passed >= least, "{passed} bytes passed, at least {least}");
        let connects = m.upstream_connect.read().count();
        assert!(connects <= connections, "{connects} upstream connections");
        assert!(worker.net.passes.iter().all(Option::is_none));
        assert!(worker.net.relays.iter().all(Option::is_none));
    }

    /// From an upstream on loopback (by default not spliced: its sender shares this kernel,
    /// see `Tuning::splice_local`) the same answers are relayed through the worker's own
    /// buffers: whole and in order, upstream connections reused.
    #[test]
    fn large_answers_from_a_loopback_upstream_are_relayed_whole_and_in_order() {
        let len = 1 << 20;
        let conn = ConnConfig::default();
        let worker = serve_with(4, 3, len, RECV_BUFFERS, Features::default(), conn, |w| {
            w.net.splice_min = relayed().splice_min;
        });
        let least = 12 * (len as u64 - u64::from(uring::RECV_LIMIT));
        assert_passed(&worker, least, 4);
        assert!(
            worker.net.relayed >= least,
            "{} relayed",
            worker.net.relayed
        );
        assert_eq!(worker.net.spliced, 0);
    }

    /// By default (`splice_min = 0`) the same answers take the plain path (the counts above
    /// are not made up).
    #[test]
    fn by_default_no_body_is_passed() {
        let conn = ConnConfig::default();
        let worker = serve_with(
            2,
            2,
            1 << 20,
            RECV_BUFFERS,
            Features::default(),
            conn,
            |_| {},
        );
        assert_eq!(worker.net.spliced + worker.net.relayed, 0);
        let m = worker.driver.metrics();
        assert_eq!(m.bytes_passed.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(m.bytes_out.load(std::sync::atomic::Ordering::Relaxed) > 4 << 20);
    }

    /// A slow client of a spliced 4 MiB answer: the worker holds at most a pipe's worth of
    /// it (in the pipe) and the receive that came with the head.
    #[test]
    fn a_slow_client_of_a_spliced_answer_holds_at_most_a_pipe() {
        let peak = peak_held_for_a_slow_client(spliced());
        let bound = super::super::pass::PIPE_SIZE as u64 + u64::from(uring::RECV_LIMIT) * 2;
        assert!(peak <= bound, "held {peak} bytes at once, at most {bound}");
    }

    /// A slow client of a relayed 4 MiB answer: the worker holds at most the relay's two
    /// buffers and the receive that came with the head.
    #[test]
    fn a_slow_client_of_a_relayed_answer_holds_at_most_two_buffers() {
        let peak = peak_held_for_a_slow_client(relayed());
        let bound = 2 * super::super::pass::RELAY_BUFFER as u64 + u64::from(uring::RECV_LIMIT) * 2;
        assert!(peak <= bound, "held {peak} bytes at once, at most {bound}");
    }

    /// An upstream that answers its first request with a head for 4 MiB, 1.5 MiB of body,
    /// then closes.
    fn cut_upstream() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut head = Vec::new();
            let mut chunk = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                head.extend_from_slice(&chunk[..n]);
            }
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 4194304\r\n\r\n".to_vec();
            out.extend_from_slice(&body(3 << 19));
            s.write_all(&out).unwrap();
        });
        addr
    }

    /// Turns `worker` until every socket of its is freed (or gives up).
    fn turn_until_freed(worker: &mut Worker) {
        for _ in 0..20_000 {
            if worker.net.socks.is_empty() {
                return;
            }
            assert_eq!(worker.turn().unwrap(), Flow::Run);
        }
        panic!("{} sockets left", worker.net.socks.len());
    }

    /// The upstream closes in the middle of a spliced body: the client's connection is cut
    /// (it never sees a complete answer), the pass ends, and both sockets are freed.
    #[test]
    fn an_upstream_that_closes_mid_body_cuts_the_spliced_answer() {
        upstream_closes_mid_body(spliced());
    }

    /// As above, relayed.
    #[test]
    fn an_upstream_that_closes_mid_body_cuts_the_relayed_answer() {
        upstream_closes_mid_body(relayed());
    }

    fn upstream_closes_mid_body(tuning: Tuning) {
        let (mut worker, addr, listener, _wake) = budget_worker(cut_upstream(), tuning);
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                .unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            got
        });
        turn_until(&mut worker, &client);
        let got = client.join().unwrap();
        let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(
            got.len() - end,
            3 << 19,
            "what the upstream sent, then the cut"
        );
        assert!(got[end..] == body(3 << 19)[..]);
        let passed = worker
            .driver
            .metrics()
            .bytes_passed
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(passed > 1 << 20, "the body was spliced ({passed} bytes)");
        turn_until_freed(&mut worker);
        assert!(worker.net.passes.iter().all(Option::is_none));
        assert!(worker.net.relays.iter().all(Option::is_none));
        uring::close(listener);
    }

    /// The client leaves in the middle of a spliced 64 MiB body: the pass ends with its
    /// sockets, which are freed, and its pipe (holding bytes) is closed.
    #[test]
    fn a_client_that_leaves_mid_body_ends_the_pass_and_frees_its_sockets() {
        client_leaves_mid_body(spliced());
    }

    /// As above, relayed.
    #[test]
    fn a_client_that_leaves_mid_body_ends_the_relay_and_frees_its_sockets() {
        client_leaves_mid_body(relayed());
    }

    fn client_leaves_mid_body(tuning: Tuning) {
        let (mut worker, addr, listener, _wake) = budget_worker(upstream(64 << 20), tuning);
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                .unwrap();
            let mut got = vec![0u8; 2 << 20];
            s.read_exact(&mut got).unwrap();
        });
        turn_until(&mut worker, &client);
        client.join().unwrap();
        let passed = worker
            .driver
            .metrics()
            .bytes_passed
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(passed > 0, "the body was being spliced");
        turn_until_freed(&mut worker);
        assert!(worker.net.passes.iter().all(Option::is_none));
        assert!(worker.net.relays.iter().all(Option::is_none));
        uring::close(listener);
    }

    /// `[uring]` feature keys reach the worker's ring: direct accepts (off by default) are on
    /// when the config turns them and ring shutdowns on.
    #[test]
    fn configured_features_reach_the_ring() {
        let up = upstream(1);
        let (worker, _, listener, _wake) = budget_worker(up, Tuning::default());
        assert!(!worker.net.direct, "off by default");
        uring::close(listener);
        let mut tuning = Tuning::default();
        tuning.features.ring_shutdown = true;
        tuning.features.accept_direct = true;
        let (worker, _, listener, _wake) = budget_worker(up, tuning);
        assert!(
            worker.net.direct,
            "this kernel (6.0+) accepts into the file table"
        );
        uring::close(listener);
    }

    /// The other direction: a client uploads 4 MiB to an upstream that reads slowly. The
    /// worker holds a bounded number of the body's bytes, and the upstream gets all of them in
    /// order. Without the budget one receive took what the client's socket held.
    #[test]
    fn a_large_upload_to_a_slow_upstream_holds_a_bounded_number_of_bytes_in_the_worker() {
        const LEN: usize = 4 << 20;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = l.local_addr().unwrap();
        let upstream = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            read_slowly(&mut s, LEN);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        });
        let (mut worker, addr, listener, _wake) = budget_worker(up, Tuning::default());
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let head = format!("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: {LEN}\r\n\r\n");
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(&body(LEN)).unwrap();
            let (head, got) = response(&mut s);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert_eq!(got, b"ok");
        });
        let peak = turn_watching_held(&mut worker, &client);
        client.join().expect("the client got its answer");
        upstream.join().expect("the upstream got the whole body");
        uring::close(listener);
        assert!(
            peak <= 512 * 1024,
            "the worker held at most 512 KiB of the body at once, not {peak} bytes"
        );
    }

    /// 200 clients download 1 MiB each at once through a worker whose buffer ring is 16
    /// buffers of 4 KiB: every answer arrives whole, and receives that found the ring dry are
    /// armed again a few per turn, so ENOBUFS completions stay a small multiple of the
    /// receives that carried data (before the queue, every dry receive was armed again at
    /// once and most of them met a dry ring again).
    #[test]
    fn many_large_downloads_through_a_small_buffer_ring_rearm_without_a_storm() {
        let sizing = uring::RecvBuffers {
            plain: (16, 4096),
            bundled: (16, 4096),
        };
        let mut receives = 0u64;
        let mut last = 0u64;
        let conn = ConnConfig::default();
        let worker = serve_with(200, 1, 1 << 20, sizing, Features::default(), conn, |w| {
            w.net.splice_min = 0;
            // Receives with data, counted by the bytes they brought (each at most a budget).
            let got = w.net.bytes_received;
            receives += (got - last).div_ceil(u64::from(w.net.ring.recv_limit().max(1)));
            last = got;
        });
        let nobufs = worker.net.nobufs;
        assert!(worker.net.ring.recv_limit() > 0);
        assert!(
            nobufs * 10 <= receives,
            "{nobufs} receives found no buffer for about {receives} that carried data"
        );
    }
}
