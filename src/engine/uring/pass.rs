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
pub(super) struct Relay {
    pub(super) from: usize,
    pub(super) to: usize,
    pub(super) owner: Owner,
    /// Bytes not yet asked of `from`.
    left: u64,
    /// Buffers free for the next receive.
    free: Vec<Vec<u8>>,
    /// Received bytes waiting to be sent: a buffer and its unsent range, in order.
    filled: std::collections::VecDeque<(Vec<u8>, usize, usize)>,
    pub(super) receiving: bool,
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
    /// Receive up to `len` bytes from `from` into the buffer.
    Recv(Vec<u8>, usize),
    /// Send `buf[start..end]` to `to`.
    Send(Vec<u8>, usize, usize),
}

impl Relay {
    pub(super) fn new(from: usize, to: usize, len: u64, owner: Owner, bufs: [Vec<u8>; 2]) -> Relay {
        Relay {
            from,
            to,
            owner,
            left: len,
            free: bufs.into(),
            filled: Default::default(),
            receiving: false,
            sending: false,
            send_range: (0, 0),
            moved: 0,
            end: None,
            abandoned: false,
        }
    }

    /// The operations to start now (a receive while a buffer is free and bytes are left, a
    /// send while one is filled), marked in flight.
    pub(super) fn next(&mut self) -> Vec<RelayOp> {
        let mut ops = Vec::new();
        if self.end.is_some() || self.abandoned {
            return ops;
        }
        if !self.receiving
            && self.left > 0
            && let Some(buf) = self.free.pop()
        {
            let len = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            self.receiving = true;
            ops.push(RelayOp::Recv(buf, len));
        }
        if !self.sending
            && let Some((buf, start, end)) = self.filled.pop_front()
        {
            self.sending = true;
            self.send_range = (start, end);
            ops.push(RelayOp::Send(buf, start, end));
        }
        ops
    }

    /// The receive completed with `result` (bytes, 0 at the end of the stream, or -errno).
    pub(super) fn received(&mut self, buf: Vec<u8>, result: i32) {
        self.receiving = false;
        match usize::try_from(result) {
            Ok(0) => {
                self.free.push(buf);
                self.end.get_or_insert(PassEnd::UpstreamEof);
            }
            Ok(n) => {
                self.left -= n as u64;
                self.filled.push_back((buf, 0, n));
            }
            Err(_) => {
                self.free.push(buf);
                self.end.get_or_insert(PassEnd::UpstreamFailed);
            }
        }
    }

    /// The send completed with `result` (bytes written, or -errno).
    pub(super) fn sent(&mut self, buf: Vec<u8>, result: i32) {
        self.sending = false;
        let (start, end) = self.send_range;
        match usize::try_from(result) {
            Ok(n) if start + n < end => {
                // The rest goes first, next.
                self.moved += n as u64;
                self.filled.push_front((buf, start + n, end));
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
        match self.end {
            Some(end) => Some(end),
            None if self.left == 0 && self.filled.is_empty() => Some(PassEnd::Done),
            None => None,
        }
    }

    /// Its buffers, for the next relays.
    pub(super) fn into_buffers(self) -> impl Iterator<Item = Vec<u8>> {
        self.free
            .into_iter()
            .chain(self.filled.into_iter().map(|(b, _, _)| b))
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
}
