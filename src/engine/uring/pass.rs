//! Large response bodies moved from the upstream socket to the client's inside the kernel
//! ([`Transport::pass`](crate::engine::driver::Transport::pass)): splice(2) from the upstream
//! socket into a pipe, then from the pipe into the client socket. The pages the upstream's
//! segments arrived in go to the client's socket by reference, so the worker copies none of
//! the body (the plain path copies each byte out of the kernel and back in, and once more in
//! user space when a send is already in flight).
//!
//! The splices are system calls made by the worker, without waiting (both sockets and the
//! pipe are nonblocking): io_uring's own splice is always handed to a kernel worker thread,
//! which would block a thread per waiting connection. When a socket has nothing to give or no
//! room, the pass waits on a one-shot poll on the ring ([`Step`]).
//!
//! A pass holds at most its pipe's capacity of the upstream's pages; pipes are pooled per
//! worker and capped in number (`[uring] splice_pipes`), so what passes hold is bounded too.
//!
//! Where splicing does not pay (an upstream in this kernel: see `Tuning::splice_local`), a
//! [`Relay`] moves the body through two buffers of the worker's own with ring operations: a
//! receive into one while the other is sent, no byte copied in user space.

use std::io;
use std::os::fd::RawFd;

use crate::engine::driver::{Owner, PassEnd};
use crate::engine::uring;

/// The pipe size asked for. Each splice moves at most this much; measured on loopback
/// (user CPU and kernel per MiB moved): 1 MiB pipes about 190 µs per MiB, 256 KiB about 250,
/// 64 KiB more than copying through user space (436).
pub const PIPE_SIZE: usize = 1024 * 1024;
/// A pipe the kernel keeps smaller than this (the per-user pipe limit) is not used: small
/// pipes cost more system calls per byte than copying saves.
const PIPE_MIN: usize = 256 * 1024;

/// A pipe's two ends; closed when dropped.
pub(super) struct Pipe {
    r: RawFd,
    w: RawFd,
    cap: usize,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        uring::close(self.r);
        uring::close(self.w);
    }
}

/// A worker's pipes: the idle ones, and how many exist (at most `max`).
pub(super) struct Pipes {
    idle: Vec<Pipe>,
    open: usize,
    max: usize,
}

impl Pipes {
    pub(super) fn new(max: usize) -> Pipes {
        Pipes {
            idle: Vec::new(),
            open: 0,
            max,
        }
    }

    /// Whether [`Pipes::take`] can give one now.
    pub(super) fn available(&self) -> bool {
        !self.idle.is_empty() || self.open < self.max
    }

    /// An idle pipe, or a new one. A pipe the kernel will not make large enough stops the
    /// worker from making more (passes end; bodies take the plain path).
    pub(super) fn take(&mut self) -> Option<Pipe> {
        if let Some(p) = self.idle.pop() {
            return Some(p);
        }
        if self.open >= self.max {
            return None;
        }
        match uring::pipe(PIPE_SIZE) {
            Ok((r, w, cap)) if cap >= PIPE_MIN => {
                self.open += 1;
                Some(Pipe { r, w, cap })
            }
            Ok((r, w, cap)) => {
                drop(Pipe { r, w, cap });
                tracing::warn!(cap, "pipes are too small to splice bodies; not splicing");
                self.max = self.open;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "no pipe to splice bodies; not splicing");
                self.max = self.open;
                None
            }
        }
    }

    /// A pipe back from a pass: kept if it is empty, else closed (what it holds is dropped
    /// with it).
    pub(super) fn give(&mut self, pipe: Pipe, empty: bool) {
        if empty {
            self.idle.push(pipe);
        } else {
            drop(pipe);
            self.open -= 1;
        }
    }
}

/// What a pass waits for after [`Pass::pump`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Data from the upstream socket.
    Readable,
    /// Room in the client socket.
    Writable,
    /// Nothing: it moved its share for this turn and goes on in the next one.
    Yield,
    End(PassEnd),
}

/// One body on its way: `left` bytes still to read from `from`, `in_pipe` read and not yet
/// written to `to`.
pub(super) struct Pass {
    /// Socket slots (the worker's) and their descriptors.
    pub(super) from: usize,
    pub(super) to: usize,
    from_fd: RawFd,
    to_fd: RawFd,
    /// Whose body it is (the driver's client).
    pub(super) owner: Owner,
    left: u64,
    in_pipe: usize,
    pipe: Pipe,
    /// Written to `to` since the driver was last told.
    pub(super) moved: u64,
    /// Read from `from` since last asked (what the pipe holds is the difference).
    pub(super) pulled: u64,
    /// Tells a pass from an earlier one in the same place (stale wake-ups).
    pub(super) serial: u64,
}

impl Pass {
    pub(super) fn new(
        (from, from_fd): (usize, RawFd),
        (to, to_fd): (usize, RawFd),
        len: u64,
        owner: Owner,
        pipe: Pipe,
        serial: u64,
    ) -> Pass {
        Pass {
            from,
            to,
            from_fd,
            to_fd,
            owner,
            left: len,
            in_pipe: 0,
            pipe,
            moved: 0,
            pulled: 0,
            serial,
        }
    }

    /// Moves bytes until a socket has nothing to give or no room, the body is through, or
    /// `budget` bytes were written (then [`Step::Yield`]).
    pub(super) fn pump(&mut self, budget: u64) -> Step {
        let mut written = 0u64;
        loop {
            if self.in_pipe > 0 {
                match uring::splice(self.pipe.r, self.to_fd, self.in_pipe) {
                    Ok(0) => return Step::Writable,
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.moved += n as u64;
                        written += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Writable,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::End(PassEnd::ClientFailed),
                }
                continue;
            }
            if self.left == 0 {
                return Step::End(PassEnd::Done);
            }
            if written >= budget {
                return Step::Yield;
            }
            let want = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(self.pipe.cap);
            match uring::splice(self.from_fd, self.pipe.w, want) {
                Ok(0) => return Step::End(PassEnd::UpstreamEof),
                Ok(n) => {
                    self.left -= n as u64;
                    self.pulled += n as u64;
                    self.in_pipe = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Readable,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::End(PassEnd::UpstreamFailed),
            }
        }
    }

    /// Ends the pass: its pipe (and whether it is empty).
    pub(super) fn into_pipe(self) -> (Pipe, bool) {
        (self.pipe, self.in_pipe == 0)
    }
}

/// The size of a relay's buffers, two per relay: a receive fills one while the other is
/// sent (a send of 128 KiB is what one plain receive's budget makes).
pub const RELAY_BUFFER: usize = 128 * 1024;
/// Idle relay buffers a worker keeps for the next relays.
const RELAY_SPARE: usize = 64;

/// A body on its way through two buffers of the worker's own ([`Relay`]): where splicing
/// does not pay (an upstream in this kernel), the bytes still skip the connection's buffers:
/// the kernel receives them into a relay buffer and sends them from it, so the worker copies
/// none (the plain path copies each received byte once more, into the connection's input).
///
/// While a send is in flight, what arrives is received behind what the filling buffer already
/// holds, so the next send takes all of it (as the plain path's output queue does): a receive
/// per send would make the sends as small as the receives, and wake the client per piece.
pub(super) struct Relay {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) owner: Owner,
    /// Bytes not yet asked of `from`.
    left: u64,
    /// Buffers free for the next receive.
    free: Vec<Vec<u8>>,
    /// The buffer receives land in, and how many bytes it holds (while `receiving`, the
    /// receive in flight writes behind them).
    filling: Option<(Vec<u8>, usize)>,
    /// What a partial send left: the buffer and its unsent range (sent before anything else).
    rest: Option<(Vec<u8>, usize, usize)>,
    pub(super) receiving: bool,
    /// The receive in flight was asked to end (so what it lands behind can be sent).
    cancelling: bool,
    /// The bytes the buffer of the receive in flight already holds (it lands behind them).
    behind: usize,
    pub(super) sending: bool,
    /// The range of its buffer the send in flight writes.
    send_range: (usize, usize),
    /// Written to `to` since the driver was last told.
    pub(super) moved: u64,
    /// How it ended (reported once nothing of it is in flight).
    pub(super) end: Option<PassEnd>,
    /// One of its sockets closed: nothing more is started or reported; it goes once its
    /// operations in flight complete.
    pub(super) abandoned: bool,
}

/// What a relay asks the ring for next ([`Relay::next`]).
pub(super) enum RelayOp {
    /// Receive into `buf[start..end]`.
    Recv(Vec<u8>, usize, usize),
    /// Send `buf[start..end]` to `to`.
    Send(Vec<u8>, usize, usize),
    /// End the receive in flight: it waits behind bytes that could go now (the upstream
    /// paused), and they must not wait for its next bytes.
    CancelRecv,
}

impl Relay {
    pub(super) fn new(from: usize, to: usize, len: u64, owner: Owner, bufs: [Vec<u8>; 2]) -> Relay {
        Relay {
            from,
            to,
            owner,
            left: len,
            free: bufs.into(),
            filling: None,
            rest: None,
            receiving: false,
            cancelling: false,
            behind: 0,
            sending: false,
            send_range: (0, 0),
            moved: 0,
            end: None,
            abandoned: false,
        }
    }

    /// The operations to start now, marked in flight: a send of what a partial send left,
    /// else of what the filling buffer holds (when no receive writes into it); a receive while
    /// bytes are left, behind what the filling buffer holds, or into a free one.
    pub(super) fn next(&mut self) -> Vec<RelayOp> {
        let mut ops = Vec::new();
        if self.end.is_some() || self.abandoned {
            return ops;
        }
        if !self.sending {
            let out = match self.rest.take() {
                Some(rest) => Some(rest),
                None if !self.receiving => match self.filling.take() {
                    Some((buf, n)) if n > 0 => Some((buf, 0, n)),
                    other => {
                        self.filling = other;
                        None
                    }
                },
                None => None,
            };
            if let Some((buf, start, end)) = out {
                self.sending = true;
                self.send_range = (start, end);
                ops.push(RelayOp::Send(buf, start, end));
            } else if self.receiving && !self.cancelling && self.behind > 0 {
                self.cancelling = true;
                ops.push(RelayOp::CancelRecv);
            }
        }
        if !self.receiving && self.left > 0 {
            if self.filling.is_none() {
                self.filling = self.free.pop().map(|b| (b, 0));
            }
            if let Some((buf, n)) = self.filling.take() {
                let room = buf.len() - n;
                if room > 0 {
                    let len = usize::try_from(self.left).unwrap_or(usize::MAX).min(room);
                    self.receiving = true;
                    self.behind = n;
                    ops.push(RelayOp::Recv(buf, n, n + len));
                } else {
                    // Full: it waits for the send in flight.
                    self.filling = Some((buf, n));
                }
            }
        }
        ops
    }

    /// The receive into `buf[start..]` completed with `result` (bytes, 0 at the end of the
    /// stream, or -errno).
    pub(super) fn received(&mut self, buf: Vec<u8>, start: usize, result: i32) {
        self.receiving = false;
        self.behind = 0;
        let cancelled = std::mem::take(&mut self.cancelling) && result == -libc::ECANCELED;
        let got = usize::try_from(result).unwrap_or(0);
        self.left -= got as u64;
        match result {
            _ if cancelled => {}
            0 => {
                self.end.get_or_insert(PassEnd::UpstreamEof);
            }
            r if r < 0 => {
                self.end.get_or_insert(PassEnd::UpstreamFailed);
            }
            _ => {}
        }
        self.filling = Some((buf, start + got));
    }

    /// The send completed with `result` (bytes written, or -errno).
    pub(super) fn sent(&mut self, buf: Vec<u8>, result: i32) {
        self.sending = false;
        let (start, end) = self.send_range;
        match usize::try_from(result) {
            Ok(n) if start + n < end => {
                self.moved += n as u64;
                self.rest = Some((buf, start + n, end));
            }
            Ok(n) => {
                self.moved += n as u64;
                self.free.push(buf);
            }
            Err(_) => {
                self.free.push(buf);
                self.end.get_or_insert(PassEnd::ClientFailed);
            }
        }
    }

    /// How it ended, once nothing of it is in flight: the end it met, or done when every
    /// byte was sent.
    pub(super) fn ended(&self) -> Option<PassEnd> {
        if self.receiving || self.sending {
            return None;
        }
        let unsent = self.rest.is_some() || self.filling.as_ref().is_some_and(|(_, n)| *n > 0);
        match self.end {
            Some(end) => Some(end),
            None if self.left == 0 && !unsent => Some(PassEnd::Done),
            None => None,
        }
    }

    /// Its buffers, for the next relays.
    pub(super) fn into_buffers(self) -> impl Iterator<Item = Vec<u8>> {
        self.free
            .into_iter()
            .chain(self.filling.map(|(b, _)| b))
            .chain(self.rest.map(|(b, _, _)| b))
    }
}

/// Idle relay buffers of a worker.
#[derive(Default)]
pub(super) struct RelayBuffers {
    spare: Vec<Vec<u8>>,
}

impl RelayBuffers {
    /// Two buffers for a relay (made when none are spare; made once, so never zeroed again).
    pub(super) fn take(&mut self) -> [Vec<u8>; 2] {
        let mut one = || self.spare.pop().unwrap_or_else(|| vec![0u8; RELAY_BUFFER]);
        [one(), one()]
    }

    /// A buffer back from a relay (or the ring): kept while few are spare.
    pub(super) fn give(&mut self, buf: Vec<u8>) {
        if self.spare.len() < RELAY_SPARE && buf.len() == RELAY_BUFFER {
            self.spare.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    const OWNER: Owner = Owner::Client {
        slot: 0,
        generation: 0,
    };

    /// Pumps until the pass ends; waits (sleeps) whenever it asks to.
    fn run(pass: &mut Pass) -> (PassEnd, u64) {
        let mut moved = 0;
        loop {
            let step = pass.pump(64 * 1024);
            moved += std::mem::take(&mut pass.moved);
            match step {
                Step::End(end) => return (end, moved),
                Step::Yield => {}
                Step::Readable | Step::Writable => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
            }
        }
    }

    #[test]
    fn a_pass_moves_exactly_its_bytes_and_leaves_the_rest_in_the_socket() {
        let (mut up_peer, up) = pair();
        let (to, mut client) = pair();
        up.set_nonblocking(true).unwrap();
        to.set_nonblocking(true).unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let writer = {
            let body = body.clone();
            std::thread::spawn(move || {
                up_peer.write_all(&body).unwrap();
                up_peer.write_all(b"NEXT").unwrap();
                up_peer
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; 3_000_000];
            client.read_exact(&mut got).unwrap();
            got
        });
        let mut pipes = Pipes::new(1);
        let pipe = pipes.take().expect("a pipe");
        assert!(!pipes.available(), "capped at one");
        let mut pass = Pass::new(
            (1, up.as_raw_fd()),
            (2, to.as_raw_fd()),
            body.len() as u64,
            OWNER,
            pipe,
            0,
        );
        assert_eq!(run(&mut pass), (PassEnd::Done, body.len() as u64));
        assert!(
            reader.join().unwrap() == body,
            "the body arrives whole, in order"
        );
        let _peer = writer.join().unwrap();
        // The bytes after the body were not taken.
        let mut rest = [0u8; 4];
        up.set_nonblocking(false).unwrap();
        (&up).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"NEXT");
        let (pipe, empty) = pass.into_pipe();
        assert!(empty);
        pipes.give(pipe, empty);
        assert!(pipes.available(), "an empty pipe is kept for the next pass");
    }

    #[test]
    fn an_upstream_that_closes_early_ends_the_pass_as_cut() {
        let (mut up_peer, up) = pair();
        let (to, mut client) = pair();
        up.set_nonblocking(true).unwrap();
        to.set_nonblocking(true).unwrap();
        up_peer.write_all(&[7u8; 1000]).unwrap();
        drop(up_peer);
        let mut pipes = Pipes::new(1);
        let mut pass = Pass::new(
            (1, up.as_raw_fd()),
            (2, to.as_raw_fd()),
            5000,
            OWNER,
            pipes.take().unwrap(),
            0,
        );
        assert_eq!(run(&mut pass), (PassEnd::UpstreamEof, 1000));
        let mut got = [0u8; 1000];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, [7u8; 1000]);
    }

    #[test]
    fn a_full_client_socket_makes_the_pass_wait_with_the_rest_in_its_pipe() {
        let (mut up_peer, up) = pair();
        let (to, client) = pair();
        up.set_nonblocking(true).unwrap();
        to.set_nonblocking(true).unwrap();
        let len = 32 * 1024 * 1024;
        let writer = std::thread::spawn(move || {
            let _ = up_peer.write_all(&vec![1u8; len]);
            up_peer
        });
        let mut pipes = Pipes::new(1);
        let mut pass = Pass::new(
            (1, up.as_raw_fd()),
            (2, to.as_raw_fd()),
            len as u64,
            OWNER,
            pipes.take().unwrap(),
            0,
        );
        // Nobody reads the client socket: the pass stops when it is full.
        let mut step = pass.pump(u64::MAX);
        for _ in 0..1000 {
            if step == Step::Writable {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
            step = pass.pump(u64::MAX);
        }
        assert_eq!(step, Step::Writable);
        assert!(pass.moved < len as u64);
        let (pipe, empty) = pass.into_pipe();
        assert!(
            !empty,
            "what the client could not take is still in the pipe"
        );
        pipes.give(pipe, empty);
        assert!(
            pipes.available(),
            "a pipe that held bytes is closed, not kept"
        );
        assert_eq!(pipes.open, 0);
        drop(client);
        drop(writer);
    }

    fn kinds(ops: &[RelayOp]) -> Vec<(char, usize, usize)> {
        ops.iter()
            .map(|op| match op {
                RelayOp::Recv(_, a, b) => ('r', *a, *b),
                RelayOp::Send(_, a, b) => ('s', *a, *b),
                RelayOp::CancelRecv => ('c', 0, 0),
            })
            .collect()
    }

    fn bufs(ops: Vec<RelayOp>) -> Vec<Vec<u8>> {
        ops.into_iter()
            .filter_map(|op| match op {
                RelayOp::Recv(b, ..) | RelayOp::Send(b, ..) => Some(b),
                RelayOp::CancelRecv => None,
            })
            .collect()
    }

    /// What arrives while a send is in flight lands behind what the filling buffer holds, and
    /// the next send takes all of it; bytes that could go while the upstream pauses do not
    /// wait for its next bytes (the receive behind them is cancelled); the relay is done once
    /// every byte of its length went out.
    #[test]
    fn a_relay_gathers_while_a_send_is_in_flight_and_never_holds_bytes_for_the_next() {
        const K: usize = 1024;
        let mut r = Relay::new(
            1,
            2,
            200 * 1024,
            OWNER,
            [vec![0; 128 * K], vec![0; 128 * K]],
        );
        let ops = r.next();
        assert_eq!(kinds(&ops), [('r', 0, 128 * K)]);
        let b = bufs(ops).pop().unwrap();
        r.received(b, 0, 50 * K as i32);
        // The 50 KiB go; the other buffer receives.
        let ops = r.next();
        assert_eq!(kinds(&ops), [('s', 0, 50 * K), ('r', 0, 128 * K)]);
        let mut b = bufs(ops);
        let (recv_buf, send_buf) = (b.pop().unwrap(), b.pop().unwrap());
        r.received(recv_buf, 0, 10 * K as i32);
        // The send is in flight: the next receive lands behind the 10 KiB.
        let ops = r.next();
        assert_eq!(kinds(&ops), [('r', 10 * K, 128 * K)]);
        let filling = bufs(ops).pop().unwrap();
        r.received(filling, 10 * K, 30 * K as i32);
        let ops = r.next();
        assert_eq!(kinds(&ops), [('r', 40 * K, 128 * K)]);
        let filling = bufs(ops).pop().unwrap();
        r.sent(send_buf, 50 * K as i32);
        assert_eq!(r.moved, 50 * K as u64);
        // The send completed while a receive waits behind 40 KiB: it is cancelled, then the
        // 40 KiB go in one send.
        assert_eq!(kinds(&r.next()), [('c', 0, 0)]);
        assert!(r.next().is_empty(), "one cancel");
        r.received(filling, 40 * K, -libc::ECANCELED);
        assert_eq!(
            r.ended(),
            None,
            "a cancel of ours is not an upstream failure"
        );
        let ops = r.next();
        assert_eq!(kinds(&ops), [('s', 0, 40 * K), ('r', 0, 110 * K)]);
        let mut b = bufs(ops);
        let (recv_buf, send_buf) = (b.pop().unwrap(), b.pop().unwrap());
        // A partial write: the rest goes first.
        r.sent(send_buf, 15 * K as i32);
        r.received(recv_buf, 0, 110 * K as i32);
        let ops = r.next();
        assert_eq!(kinds(&ops), [('s', 15 * K, 40 * K)]);
        r.sent(bufs(ops).pop().unwrap(), 25 * K as i32);
        let ops = r.next();
        assert_eq!(kinds(&ops), [('s', 0, 110 * K)]);
        assert_eq!(r.ended(), None);
        r.sent(bufs(ops).pop().unwrap(), 110 * K as i32);
        assert!(r.next().is_empty());
        assert_eq!(r.ended(), Some(PassEnd::Done));
        assert_eq!(r.moved, 200 * K as u64);
        assert_eq!(r.into_buffers().count(), 2, "both buffers come back");
    }

    #[test]
    fn a_relay_ends_on_the_first_failure_once_nothing_is_in_flight() {
        let mut r = Relay::new(1, 2, 1 << 20, OWNER, [vec![0; 1024], vec![0; 1024]]);
        let b = bufs(r.next()).pop().unwrap();
        r.received(b, 0, 0);
        assert!(r.next().is_empty(), "nothing starts after the end");
        assert_eq!(r.ended(), Some(PassEnd::UpstreamEof));
        let mut r = Relay::new(1, 2, 1 << 20, OWNER, [vec![0; 1024], vec![0; 1024]]);
        let b = bufs(r.next()).pop().unwrap();
        r.received(b, 0, 1000);
        let mut b = bufs(r.next());
        let (recv_buf, send_buf) = (b.pop().unwrap(), b.pop().unwrap());
        r.sent(send_buf, -libc::EPIPE);
        assert_eq!(r.ended(), None, "a receive is still in flight");
        r.received(recv_buf, 0, 500);
        assert_eq!(r.ended(), Some(PassEnd::ClientFailed));
    }
}
