//! The io_uring edge: the ring, the provided-buffer ring that receives land in, typed
//! completion tokens, and the socket system calls the engine needs. All of the io_uring
//! engine's `unsafe` lives here, each block with the invariant that makes it sound.
//!
//! Ownership rule: memory the kernel reads or writes for an operation in flight (a send
//! buffer, a connect address, the eventfd read's buffer, the buffer ring) must outlive that
//! operation. The [`Ring`] owns all of it: a send takes its buffer and hands it back with
//! [`Ring::take_sent`] once it has completed (a zero-copy send's buffer stays until its
//! notification, and the caller gets a stand-in), a connect keeps its address until its
//! completion, a file-table install reads a descriptor array the ring owns, and the safe
//! methods cannot be used to let the kernel touch freed memory. When the worker stops with
//! zero-copy sends not yet notified, the ring goes first; the kernel keeps the pages it
//! pinned for them until the network is done with them.
//!
//! Optional kernel features, each probed at start with a fallback to the plain path:
//! registered descriptors ([`Ring::install`]), receive bundles ([`Ring::bundles`]), a byte
//! budget per multishot receive ([`Ring::recv_limit`]), zero-copy sends ([`ZC_MIN`]),
//! shutdowns on the ring ([`Ring::shutdown`]), accepts straight into the file table
//! ([`Ring::accept_direct`]) and closes that cancel on the ring ([`Ring::cancel_all`]). The
//! last three are off by default (see [`Features`]);
//! `SLUICE_URING_DISABLE` and `SLUICE_URING_ENABLE` turn features off and on for measurement.
#![allow(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::types::{BufRingEntry, SubmitArgs, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::engine::sys::check;

/// What a completion is for. Encoded in the 64-bit user data with a slot and a generation,
/// so a completion for a slot that has since been reused is recognised and dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Connect = 4,
    /// The worker's eventfd: a new snapshot (or a stop request) is waiting.
    Wake = 7,
    /// The completion of a cancel request (the cancelled operation completes on its own).
    Cancel = 8,
    /// A change to the registered file table (install or remove); posted only on failure
    /// where the kernel can skip successful completions.
    Files = 9,
    /// A half-close or close on the ring (IORING_OP_SHUTDOWN).
    Shutdown = 10,
    /// An accept straight into the registered file table ([`Ring::accept_direct`]).
    AcceptDirect = 11,
    /// A one-shot readiness poll ([`Ring::poll`]): a pass waits for its socket.
    Poll = 12,
    /// A one-shot receive into a buffer of the caller's ([`Ring::recv_into`]).
    RecvInto = 13,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Connect,
            7 => Op::Wake,
            8 => Op::Cancel,
            9 => Op::Files,
            10 => Op::Shutdown,
            11 => Op::AcceptDirect,
            12 => Op::Poll,
            13 => Op::RecvInto,
            _ => return None,
        })
    }
}

/// A completion token: operation, slot index, slot generation (24 bits).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub op: Op,
    pub slot: u32,
    pub generation: u32,
}

impl Token {
    /// The token of a cancel's own completion (the worker ignores [`Op::Cancel`]).
    pub const CANCEL: Token = Token {
        op: Op::Cancel,
        slot: 0,
        generation: 0,
    };
    /// The token of a receive the ring makes on a socket pair to probe the kernel at start
    /// (a slot no socket has; its completions are reaped by the probe, never by the worker).
    const PROBE: Token = Token {
        op: Op::Cancel,
        slot: u32::MAX,
        generation: 0,
    };

    pub fn encode(self) -> u64 {
        (self.op as u64) << 56
            | (u64::from(self.generation) & 0xff_ffff) << 32
            | u64::from(self.slot)
    }

    pub fn decode(data: u64) -> Option<Token> {
        Some(Token {
            op: Op::from_u8((data >> 56) as u8)?,
            slot: data as u32,
            generation: ((data >> 32) & 0xff_ffff) as u32,
        })
    }
}

/// One completion, copied out of the ring.
#[derive(Copy, Clone, Debug)]
pub struct Completion {
    pub token: Option<Token>,
    pub result: i32,
    /// The provided buffer this completion filled, if any.
    pub buffer: Option<u16>,
    /// A multishot operation stays armed.
    pub more: bool,
    /// A zero-copy send's notification (its send completed earlier): nothing to hand on.
    pub notif: bool,
}

/// Where an operation finds its socket: a plain descriptor (looked up in the process's
/// descriptor table, `fget`/`fput`, on every operation) or its entry in the ring's registered
/// file table (looked up in the ring, no reference counting per operation).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Fd(RawFd),
    Fixed(u32),
}

/// Builds `$op` on the socket of `$target` (`types::Fd` and `types::Fixed` are distinct types).
macro_rules! on_target {
    ($target:expr, |$f:ident| $build:expr) => {
        match $target {
            Target::Fd(fd) => {
                let $f = types::Fd(fd);
                $build
            }
            Target::Fixed(index) => {
                let $f = types::Fixed(index);
                $build
            }
        }
    };
}

/// The most entries of a ring's registered file table (it is also capped by RLIMIT_NOFILE,
/// which the kernel checks). A socket whose slot is past the table uses its descriptor.
const MAX_FIXED_FILES: u32 = 1 << 16;

/// The ring's registered file table (IORING_REGISTER_FILES, sparse): entry `i` belongs to the
/// worker's socket slot `i` while that socket is open. Installing and removing are ring
/// operations (IORING_OP_FILES_UPDATE, IORING_OP_CLOSE on a fixed file), so they cost no
/// system call of their own.
struct FixedFiles {
    size: u32,
    /// Entries below this one are the slots' ([`Ring::install`]); those from it on are the
    /// kernel's to hand to direct accepts ([`DirectAccepts`]), when there are any.
    installs: u32,
    /// The descriptor each install reads (by slot): the kernel reads it when it issues the
    /// update, which is no later than the submit that carries it; the array lives as long as
    /// the ring. A slot is written again only for its next socket, whose update comes after.
    fds: Box<[RawFd]>,
}

/// Accepting straight into the registered file table: the kernel picks a free entry of the
/// table's allocation range (IORING_REGISTER_FILE_ALLOC_RANGE, the entries from `base` on) for
/// each socket it accepts (IORING_FILE_INDEX_ALLOC), and the socket never has a descriptor:
/// no descriptor-table slot to find, no install, no close of a descriptor. Single-shot
/// accepts, each with an address buffer of its own, so every completion comes with its peer's
/// address (a multishot accept would write every peer into one buffer).
struct DirectAccepts {
    base: u32,
    len: u32,
    /// Entries held: accepted sockets whose entry is not closed yet, plus accepts armed. Kept
    /// within `len`, so an accept never finds the range full (the kernel would drop the
    /// connection it took).
    taken: u32,
    /// By accept slot: the peer address its accept writes (the kernel writes it while the
    /// accept is armed; it is read after the completion, before the slot is armed again).
    /// Boxed: the kernel holds a pointer into each while the vector grows.
    #[allow(clippy::vec_box)]
    addrs: Vec<Box<SockAddr>>,
    armed: Vec<bool>,
    /// Sockets accepted this way (for tests and diagnostics).
    accepted: u64,
}

/// Which optional kernel features a ring may use; each is also probed, and a ring whose
/// kernel refuses one falls back to the plain path.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// Registered (direct) descriptors for sockets.
    pub fixed_files: bool,
    /// Receive bundles (kernel 6.10+): one completion carries as many provided buffers as the
    /// data that was waiting fills, instead of one completion per buffer.
    pub bundles: bool,
    /// Zero-copy sends (IORING_OP_SEND_ZC, kernel 6.0+) for buffers of at least
    /// [`ZC_MIN`] bytes.
    pub send_zc: bool,
    /// A byte budget per multishot receive (IORING_RECV_MSHOT_LIM, kernel 6.17+): see
    /// [`Ring::recv_limit`].
    pub recv_limit: bool,
    /// Shutdowns as ring operations (IORING_OP_SHUTDOWN, kernel 5.11+) instead of
    /// shutdown(2); see [`Ring::shutdown`] for what that costs.
    pub ring_shutdown: bool,
    /// Accepting straight into the registered file table ([`Ring::accept_direct`]; needs
    /// the table and ring shutdowns, kernel 6.0+).
    pub accept_direct: bool,
    /// A socket with a descriptor closed with operations in flight has them cancelled on the
    /// ring ([`Ring::cancel_all`]) instead of woken by shutdown(2). Off by default: the kernel
    /// looks for a cancel-by-descriptor's operations through every armed operation of the
    /// ring, so with 1,000 connections open each close cost more than the system call it
    /// saves (bench/matrix.py, memory 1 KiB, `Connection: close`, 1,000 connections: proxy
    /// CPU 31 → 53 µs per request). A socket without a descriptor is always closed this way.
    pub close_cancel: bool,
}

/// Ring shutdowns and direct accepts are off by default: the kernel runs IORING_OP_SHUTDOWN on
/// an io-wq thread, and that hop costs a new connection more than the system calls the two
/// save. bench/conn_counts.py, 64 connections, `Connection: close`, per request, two rounds,
/// system calls only -> ring shutdowns -> both: system calls 3.0-3.2 -> 2.2-2.3 -> 0.22-0.26,
/// context switches 0.09-0.10 -> 0.27-0.34 -> 0.15-0.25, io-wq punts 0 -> 0.98 -> 0.98,
/// io_uring_enter 0.18 -> 0.25-0.31 -> 0.21-0.25, and the worker's CPU time (a loaded machine,
/// but the same way in every round) 25-26 -> 30-31 -> 33 µs. Direct accepts on top of ring
/// shutdowns lower the context switches and enters again (against ring shutdowns alone), but a
/// socket without a descriptor can only be half-closed on the ring, so they come together.
/// `SLUICE_URING_ENABLE=shutdown,direct` turns them on.
impl Default for Features {
    fn default() -> Self {
        Features {
            ring_shutdown: false,
            accept_direct: false,
            close_cancel: false,
            ..Features::all()
        }
    }
}

impl Features {
    /// Every optional feature (each still probed).
    pub fn all() -> Features {
        Features {
            fixed_files: true,
            bundles: true,
            send_zc: true,
            recv_limit: true,
            ring_shutdown: true,
            accept_direct: true,
            close_cancel: true,
        }
    }

    /// These features plus what `SLUICE_URING_ENABLE` names and minus what
    /// `SLUICE_URING_DISABLE` names (comma-separated: `fixed`, `bundle`, `zc`, `limit`,
    /// `shutdown`, `direct`, `cancel`), so one build can be measured with and without each.
    pub fn with_env(self) -> Features {
        self.with_names(
            std::env::var("SLUICE_URING_ENABLE").ok().as_deref(),
            std::env::var("SLUICE_URING_DISABLE").ok().as_deref(),
        )
    }

    /// These features with those named in `enable` turned on, then those named in `disable`
    /// turned off (comma-separated names; unknown names are ignored).
    pub fn with_names(mut self, enable: Option<&str>, disable: Option<&str>) -> Features {
        for (names, on) in [(enable, true), (disable, false)] {
            for name in names.unwrap_or_default().split(',').map(str::trim) {
                match name {
                    "fixed" => self.fixed_files = on,
                    "bundle" => self.bundles = on,
                    "zc" => self.send_zc = on,
                    "limit" => self.recv_limit = on,
                    "shutdown" => self.ring_shutdown = on,
                    "direct" => self.accept_direct = on,
                    "cancel" => self.close_cancel = on,
                    _ => {}
                }
            }
        }
        self
    }
}

/// How many receive buffers of what size a ring provides, `(count, bytes)`: `bundled` when
/// its receives take bundles, `plain` otherwise. The count is a power of two (at most 32,768).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RecvBuffers {
    pub plain: (u16, usize),
    pub bundled: (u16, usize),
}

/// Buffer group id of the worker's receive buffers.
const BUFFER_GROUP: u16 = 7;

/// Receive buffers the kernel picks from (IORING_REGISTER_PBUF_RING): a receive holds no
/// memory while it waits, so idle connections cost nothing here.
///
/// The kernel takes buffers in ring order. A bundle's completion names only its first buffer
/// and its byte count; the others are the ones pushed after it (each full but the last), so
/// the ring remembers where each buffer was pushed and what each position holds. Buffers
/// given back during a batch of completions are published only at its end
/// ([`BufRing::release`]), so no position a completion of the batch still names is
/// overwritten.
struct BufRing {
    /// Page-aligned ring of `entries` descriptors (mmap'd).
    ring: *mut BufRingEntry,
    ring_bytes: usize,
    entries: u16,
    buf_size: usize,
    data: Vec<u8>,
    tail: u16,
    /// By ring position (masked): the buffer pushed there last.
    at: Vec<u16>,
    /// By buffer: the (unmasked) tail it was pushed at last.
    pos: Vec<u16>,
    /// Buffers given back since the last release.
    returned: Vec<u16>,
}

impl BufRing {
    fn new(ring: &IoUring, entries: u16, buf_size: usize) -> io::Result<BufRing> {
        assert!(
            entries.is_power_of_two(),
            "buffer ring size must be a power of two"
        );
        let ring_bytes = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut bufs = BufRing {
            ring: mem.cast::<BufRingEntry>(),
            ring_bytes,
            entries,
            buf_size,
            data: vec![0u8; usize::from(entries) * buf_size],
            tail: 0,
            at: vec![0; usize::from(entries)],
            pos: vec![0; usize::from(entries)],
            returned: Vec::with_capacity(usize::from(entries)),
        };
        // SAFETY: `ring` is a page-aligned mapping of exactly `entries` descriptors that lives
        // until `Drop`, which runs after the IoUring it is registered with is dropped (the
        // worker declares the ring field before the buffer ring).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(mem as u64, entries, BUFFER_GROUP, 0)?;
        }
        for bid in 0..entries {
            bufs.push(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    /// Writes descriptor `bid` at the tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let mask = self.entries - 1;
        let index = usize::from(self.tail & mask);
        let addr = self.data[usize::from(bid) * self.buf_size..].as_ptr() as u64;
        // SAFETY: `index < entries`, so the entry is inside the mapping; the kernel only reads
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.ring.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.at[index] = bid;
        self.pos[usize::from(bid)] = self.tail;
        self.tail = self.tail.wrapping_add(1);
    }

    /// The buffers (and their byte counts, in order) of a completion of `len` bytes whose
    /// first buffer is `bid`: one without bundles, as many as `len` fills with them.
    fn parts(&self, bid: u16, len: usize) -> impl Iterator<Item = (u16, usize)> + '_ {
        let n = len
            .div_ceil(self.buf_size)
            .clamp(1, usize::from(self.entries));
        let first = self.pos.get(usize::from(bid)).copied().unwrap_or(0);
        let mask = self.entries - 1;
        (0..n).map(move |k| {
            let at = first.wrapping_add(k as u16) & mask;
            let len = len.saturating_sub(k * self.buf_size).min(self.buf_size);
            (self.at[usize::from(at)], len)
        })
    }

    /// Gives the buffers of a completion back (at the next [`BufRing::release`]).
    fn recycle(&mut self, bid: u16, len: usize) {
        let n = len
            .div_ceil(self.buf_size)
            .clamp(1, usize::from(self.entries));
        let first = self.pos.get(usize::from(bid)).copied().unwrap_or(0);
        let mask = self.entries - 1;
        for k in 0..n {
            let at = first.wrapping_add(k as u16) & mask;
            self.returned.push(self.at[usize::from(at)]);
        }
    }

    /// Pushes and publishes the buffers given back since the last release.
    fn release(&mut self) {
        if self.returned.is_empty() {
            return;
        }
        let returned = std::mem::take(&mut self.returned);
        for bid in &returned {
            self.push(*bid);
        }
        self.returned = returned;
        self.returned.clear();
        self.publish();
    }

    /// Makes every pushed descriptor visible to the kernel.
    fn publish(&self) {
        // SAFETY: `ring` points at the first entry of the registered ring; the tail shares
        // the first entry's reserved field and is written with release ordering, as the
        // kernel reads it with acquire ordering.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.buf_size;
        &self.data[start..start + len.min(self.buf_size)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and is not used after.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_bytes);
        }
    }
}

/// The most bytes one multishot receive takes before it ends (its completion comes without
/// `more`, and the socket is armed again only if the driver still wants input): without a
/// budget, one receive takes everything its socket holds (a 1 MiB answer in one turn, up to
/// the whole buffer ring), so the driver's backpressure comes too late to bound what a
/// connection holds, and a few sockets run the ring dry for every other one. The ring's own
/// budget is smaller when the buffer ring is small ([`Ring::recv_limit`]). 128 KiB: per 1 MiB
/// answer at 1,000 connections, 31 submissions (10 receives, 19 sends of 59 KB) against 54
/// with 64 KiB (18 receives, 35 sends of 31 KB) and 22 with 256 KiB, whose sends go
/// zero-copy more often (bench/uring_large_counts.py); a connection holds about the budget
/// plus its `buffers.size` twice.
pub const RECV_LIMIT: u32 = 128 * 1024;
/// Offset of the `optlen` field (the multishot receive's byte budget) in the kernel's
/// 64-byte submission entry (`struct io_uring_sqe`).
const SQE_OPTLEN: usize = 44;
const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);

/// `entry` (a multishot receive) with a budget of `limit` bytes (0: none). io-uring 0.7.16
/// builds the entry but has no setter for this field.
fn with_recv_limit(entry: squeue::Entry, limit: u32) -> squeue::Entry {
    if limit == 0 {
        return entry;
    }
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's `io_uring_sqe`, 64 bytes of
    // plain integers (checked above), so it and `[u8; 64]` can be transmuted both ways; bytes
    // 44..48 are the `optlen` member of the union that a receive does not otherwise use.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    raw[SQE_OPTLEN..SQE_OPTLEN + 4].copy_from_slice(&limit.to_ne_bytes());
    // SAFETY: as above; any bit pattern is a valid entry for the compiler (the kernel checks
    // the fields).
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// The smallest send that goes zero-copy: below it, copying into the socket costs less than
/// pinning the pages and the notification's extra completion.
pub const ZC_MIN: usize = 64 * 1024;
/// The most bytes of stand-in buffers kept for zero-copy sends (see `Ring::zc_held`).
const ZC_POOL_BYTES: usize = 8 << 20;

/// Memory an operation of one slot (a socket of the worker) lends the kernel: at most one
/// send and one connect in flight per slot.
#[derive(Default)]
struct Lent {
    send: Option<Vec<u8>>,
    sending: bool,
    /// The send in flight is zero-copy.
    zc: bool,
    addr: Option<Box<SockAddr>>,
}

/// A worker's ring: submission helpers, the wait, and the memory operations in flight use.
pub struct Ring {
    // Field order matters: the ring (which the kernel uses the buffers through) drops first.
    ring: IoUring,
    bufs: BufRing,
    /// By token slot: send buffers and connect addresses of operations in flight.
    lent: Vec<Lent>,
    /// The eventfd read's buffer.
    wake_buf: Box<[u8; 8]>,
    pending: Vec<squeue::Entry>,
    /// The registered file table, when the kernel took it.
    fixed: Option<FixedFiles>,
    /// Flags for table updates: skip the completion of one that succeeded, where supported.
    files_flags: squeue::Flags,
    /// Multishot receives take bundles of buffers.
    bundles: bool,
    /// Large sends are zero-copy.
    send_zc: bool,
    /// Bytes a multishot receive takes before it ends (0: no budget, the kernel lacks it).
    recv_limit: u32,
    /// Shutdowns go on the ring ([`Ring::shutdown`]); shutdowns issued there (for tests).
    ring_shutdown: bool,
    ring_shutdowns: u64,
    /// Accepts straight into the file table, when the kernel took the allocation range.
    direct: Option<DirectAccepts>,
    /// Closes cancel what is in flight on the ring ([`Features::close_cancel`]).
    close_cancel: bool,
    /// By slot: a zero-copy send's buffer after its completion and until its notification:
    /// the kernel may still read it (a retransmission). The driver got a stand-in of the same
    /// length with the unsent tail at the same offsets, so it can go on at once. One at a time
    /// per slot: while one is held, large sends of the slot copy. (A map, not a field of
    /// [`Lent`], which every connection has.)
    zc_held: std::collections::HashMap<u32, Vec<u8>>,
    /// Buffers whose zero-copy send has been notified, reused as stand-ins.
    zc_pool: Vec<Vec<u8>>,
    zc_pool_bytes: usize,
    /// Zero-copy sends issued (for tests and diagnostics).
    zc_sends: u64,
    /// Descriptors to close at the next flush ([`Ring::close_fd`]).
    closing: Vec<RawFd>,
    /// By slot: the buffer of a receive into the caller's memory ([`Ring::recv_into`]) in
    /// flight or completed and not yet taken (a map: few sockets ever have one).
    recv_lent: std::collections::HashMap<u32, (Vec<u8>, usize)>,
}

impl Drop for Ring {
    fn drop(&mut self) {
        for fd in self.closing.drain(..) {
            close(fd);
        }
    }
}

impl Ring {
    /// `entries` submission slots; `buffers` receive buffers of `buffer_size` bytes; every
    /// optional feature the kernel has (those off by default too) but the receive budget
    /// (receives run until EOF, an error, ENOBUFS or a cancel).
    pub fn new(entries: u32, buffers: u16, buffer_size: usize) -> io::Result<Ring> {
        let sizing = RecvBuffers {
            plain: (buffers, buffer_size),
            bundled: (buffers, buffer_size),
        };
        let features = Features {
            recv_limit: false,
            ..Features::all()
        };
        Ring::with_features(entries, sizing, features)
    }

    /// [`Ring::new`] using at most `features`.
    pub fn with_features(
        entries: u32,
        sizing: RecvBuffers,
        features: Features,
    ) -> io::Result<Ring> {
        Ring::with_budget(entries, sizing, features, RECV_LIMIT)
    }

    /// [`Ring::with_features`] whose receives get a budget of `budget` bytes where the kernel
    /// keeps one ([`Ring::recv_limit`] says what it became).
    pub fn with_budget(
        entries: u32,
        sizing: RecvBuffers,
        features: Features,
        budget: u32,
    ) -> io::Result<Ring> {
        // One thread submits and reaps (thread-per-core), so completions' task work can wait
        // until we ask for events instead of interrupting the worker with an IPI each time
        // (DEFER_TASKRUN, Linux 6.1+); older kernels get the cooperative mode, then plain.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .build(entries)
            .or_else(|_| {
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_submit_all()
                    .build(entries)
            })
            .or_else(|_| IoUring::new(entries))
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "io_uring is not available on this kernel or sandbox: {e} (needs \
                         Linux 5.19+; in a container the likely cause is a seccomp profile \
                         that blocks io_uring_setup, io_uring_enter and io_uring_register, \
                         as podman's, Docker's and containerd's defaults do: run it under \
                         Sluice's profile manifests/seccomp/sluice-io-uring.json, see the \
                         README's \"io_uring and seccomp\")"
                    ),
                )
            })?;
        let bundles = features.bundles && ring.params().is_feature_recvsend_bundle();
        let (buffers, buffer_size) = if bundles {
            sizing.bundled
        } else {
            sizing.plain
        };
        let bufs = BufRing::new(&ring, buffers, buffer_size).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "io_uring provided buffer rings are not supported (needs Linux 5.19+): {e}"
                ),
            )
        })?;
        let files_flags = if ring.params().is_feature_skip_cqe_on_success() {
            squeue::Flags::SKIP_SUCCESS
        } else {
            squeue::Flags::empty()
        };
        let mut ring = Ring {
            ring,
            bufs,
            lent: Vec::new(),
            wake_buf: Box::new([0; 8]),
            pending: Vec::new(),
            fixed: None,
            files_flags,
            bundles: false,
            send_zc: false,
            recv_limit: 0,
            ring_shutdown: false,
            ring_shutdowns: 0,
            direct: None,
            close_cancel: features.close_cancel,
            zc_held: std::collections::HashMap::new(),
            zc_pool: Vec::new(),
            zc_pool_bytes: 0,
            zc_sends: 0,
            closing: Vec::new(),
            recv_lent: std::collections::HashMap::new(),
        };
        let mut probe = io_uring::Probe::new();
        if ring.ring.submitter().register_probe(&mut probe).is_ok() {
            ring.send_zc = features.send_zc && probe.is_supported(opcode::SendZc::CODE);
            ring.ring_shutdown =
                features.ring_shutdown && probe.is_supported(opcode::Shutdown::CODE);
        }
        if features.fixed_files {
            ring.register_fixed_files();
        }
        ring.bundles = bundles;
        // The probe runs with every feature on; on a failure, the newest feature goes (the
        // kernel says it has it but the receive fails with it) and it runs again.
        while let Err(e) = ring.probe_multishot_recv() {
            if ring.bundles {
                ring.bundles = false;
            } else if ring.fixed.is_some() {
                ring.fixed = None;
                let _ = ring.ring.submitter().unregister_files();
            } else {
                return Err(io::Error::new(
                    e.kind(),
                    format!("io_uring multishot receive is not supported (needs Linux 6.0+): {e}"),
                ));
            }
        }
        if features.recv_limit {
            ring.probe_recv_limit(budget);
        }
        // A socket without a descriptor can only be shut down on the ring.
        if features.accept_direct && ring.ring_shutdown {
            ring.register_direct_accepts();
        }
        Ok(ring)
    }

    /// The budget a receive gets, if the kernel keeps it: an older kernel refuses the field
    /// (it shares the entry with `file_index`, which receives had to leave 0) or ignores it,
    /// so it is checked on a socket pair (a receive with a budget of one byte must end after
    /// it with data still waiting). The budget is `wanted` ([`RECV_LIMIT`] by default), or a
    /// sixteenth of the buffer ring when that is smaller (at least one buffer), so a turn
    /// always serves several sockets.
    fn probe_recv_limit(&mut self, wanted: u32) {
        let mut pair = [0; 2];
        // SAFETY: socketpair writes two descriptors into `pair`; the result is checked.
        if check(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        })
        .is_err()
        {
            return;
        }
        let token = Token::PROBE;
        send_now(pair[1], b"xy");
        self.recv_limit = 1;
        self.recv_multi(Target::Fd(pair[0]), token);
        self.recv_limit = 0;
        let mut out = Vec::new();
        let mut first = None;
        for _ in 0..8 {
            if self.submit_and_wait(Duration::from_secs(1)).is_err() {
                break;
            }
            self.completions(&mut out, 4);
            let mut ended = out.is_empty();
            for c in &out {
                if let Some(bid) = c.buffer {
                    self.recycle(bid, c.result.max(0) as usize);
                }
                first.get_or_insert(*c);
                if c.more {
                    // The kernel ignored the budget: end the receive.
                    shutdown(pair[0], libc::SHUT_RDWR);
                }
                ended |= !c.more;
            }
            if ended {
                break;
            }
        }
        self.release_buffers();
        close(pair[0]);
        close(pair[1]);
        if first.is_some_and(|c| c.result > 0 && !c.more) {
            let ring_bytes = usize::from(self.bufs.entries) * self.bufs.buf_size;
            // For measurement, `SLUICE_URING_RECV_BUDGET` (bytes) replaces the configured one.
            let wanted = std::env::var("SLUICE_URING_RECV_BUDGET")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(wanted as usize);
            let limit = (ring_bytes / 16).min(wanted).max(self.bufs.buf_size);
            self.recv_limit = u32::try_from(limit).unwrap_or(RECV_LIMIT);
        }
    }

    /// Bytes one multishot receive takes before it ends without `more` (0: no budget, it
    /// takes what arrives until EOF, an error, ENOBUFS or a cancel).
    pub fn recv_limit(&self) -> u32 {
        self.recv_limit
    }

    /// How many receives that found no buffer to arm again per turn: as many as the buffer
    /// ring can fill with one budget each (a receive without a budget can take the whole
    /// ring, so then a sixteenth of it).
    pub fn rearms_per_turn(&self) -> usize {
        let ring_bytes = usize::from(self.bufs.entries) * self.bufs.buf_size;
        let per_receive = if self.recv_limit > 0 {
            self.recv_limit as usize
        } else {
            ring_bytes / 16
        };
        (ring_bytes / per_receive.max(1)).max(1)
    }

    /// Gives the upper half of the file table to direct accepts (IORING_REGISTER_FILE_ALLOC_RANGE,
    /// kernel 6.0+); the slots' installs keep the lower half. Without a table, or where the
    /// kernel refuses, accepts make descriptors as before.
    fn register_direct_accepts(&mut self) {
        let Some(fixed) = self.fixed.as_mut() else {
            return;
        };
        let base = fixed.size / 2;
        let len = fixed.size - base;
        if len == 0 {
            return;
        }
        /// struct io_uring_file_index_range.
        #[repr(C)]
        struct Range {
            off: u32,
            len: u32,
            resv: u64,
        }
        let range = Range {
            off: base,
            len,
            resv: 0,
        };
        // SAFETY: io_uring_register on this ring's descriptor with a live, correctly laid out
        // io_uring_file_index_range (the kernel copies it); nr_args must be 0.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                std::os::fd::AsRawFd::as_raw_fd(&self.ring),
                25, // IORING_REGISTER_FILE_ALLOC_RANGE
                (&raw const range).cast::<libc::c_void>(),
                0,
            )
        };
        if ret != 0 {
            return;
        }
        fixed.installs = base;
        self.direct = Some(DirectAccepts {
            base,
            len,
            taken: 0,
            addrs: Vec::new(),
            armed: Vec::new(),
            accepted: 0,
        });
    }

    /// Arms a single-shot accept on `listener` straight into the file table ([`Op::AcceptDirect`]
    /// with `token`'s slot, which also names its address buffer). Its completion's result is the
    /// socket's table entry (`Target::Fixed`), [`Ring::accepted_peer`] its peer. False (nothing
    /// armed) without direct accepts, while `token`'s slot is still armed, or while the
    /// allocation range has no entry to spare: the caller accepts with a descriptor then.
    pub fn accept_direct(&mut self, listener: RawFd, token: Token) -> bool {
        let Some(d) = self.direct.as_mut() else {
            return false;
        };
        let i = token.slot as usize;
        if d.taken >= d.len || d.armed.get(i).copied().unwrap_or(false) {
            return false;
        }
        while d.addrs.len() <= i {
            d.addrs
                .push(SockAddr::new(SocketAddr::from(([0, 0, 0, 0], 0))));
            d.armed.push(false);
        }
        let addr = &mut d.addrs[i];
        addr.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let (ptr, len) = (
            (&raw mut addr.storage).cast::<libc::sockaddr>(),
            &raw mut addr.len,
        );
        d.armed[i] = true;
        d.taken += 1;
        let e = opcode::Accept::new(types::Fd(listener), ptr, len)
            .file_index(Some(types::DestinationSlot::auto_target()))
            // No SOCK_CLOEXEC: there is no descriptor (the kernel refuses the flag here).
            .build()
            .user_data(
                Token {
                    op: Op::AcceptDirect,
                    ..token
                }
                .encode(),
            );
        self.push(e);
        true
    }

    /// The peer address of accept slot `slot`'s last completed direct accept (read it before
    /// the slot is armed again).
    pub fn accepted_peer(&self, slot: u32) -> Option<SocketAddr> {
        let d = self.direct.as_ref()?;
        d.addrs.get(slot as usize)?.to_socket_addr()
    }

    /// Whether direct accept slot `slot` is armed.
    pub fn direct_armed(&self, slot: u32) -> bool {
        self.direct
            .as_ref()
            .and_then(|d| d.armed.get(slot as usize).copied())
            .unwrap_or(false)
    }

    /// Whether accepts can go straight into the file table, and how many did.
    pub fn direct_accepts(&self) -> (bool, u64) {
        self.direct
            .as_ref()
            .map_or((false, 0), |d| (true, d.accepted))
    }

    /// Asks the kernel to cancel every operation on the socket of `target` (IORING_ASYNC_CANCEL_FD
    /// | ALL, kernel 5.19+), in the next submission, without a system call of its own: the
    /// cancelled operations complete with ECANCELED (one already running completes on its
    /// own). Its own completion is posted only where success cannot be skipped.
    pub fn cancel_all(&mut self, target: Target) {
        let builder = on_target!(target, |f| types::CancelBuilder::fd(f).all());
        let e = opcode::AsyncCancel2::new(builder)
            .build()
            .flags(self.files_flags)
            .user_data(Token::CANCEL.encode());
        self.push(e);
    }

    /// Registers a sparse file table (kernel 5.19+), as large as the descriptor limit allows
    /// up to [`MAX_FIXED_FILES`]; without it, every socket uses its descriptor.
    fn register_fixed_files(&mut self) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into a live struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return;
        }
        let size = u32::try_from(lim.rlim_cur)
            .unwrap_or(u32::MAX)
            .min(MAX_FIXED_FILES);
        if size == 0 || self.ring.submitter().register_files_sparse(size).is_err() {
            return;
        }
        self.fixed = Some(FixedFiles {
            size,
            installs: size,
            fds: vec![-1; size as usize].into_boxed_slice(),
        });
    }

    /// The size of the registered file table (0: sockets use their descriptors).
    pub fn fixed_files(&self) -> u32 {
        self.fixed.as_ref().map_or(0, |f| f.size)
    }

    /// Puts socket `fd` of slot `slot` into the registered file table and says how operations
    /// should name it from now on: `Target::Fixed(slot)`, or `Target::Fd(fd)` without a table
    /// (or with a slot past it). The descriptor stays open and valid for plain system calls
    /// (shutdown, socket options, addresses); the table holds its own reference to the
    /// socket, released by [`Ring::remove_fixed`], which the slot's owner calls before the
    /// slot is reused.
    pub fn install(&mut self, fd: RawFd, slot: u32) -> Target {
        let flags = self.files_flags;
        let Some(fixed) = self.fixed.as_mut().filter(|f| slot < f.installs) else {
            return Target::Fd(fd);
        };
        fixed.fds[slot as usize] = fd;
        let ptr: *const RawFd = &fixed.fds[slot as usize];
        let e = opcode::FilesUpdate::new(ptr, 1)
            .offset(slot as i32)
            .build()
            .flags(flags)
            .user_data(Self::files_token(slot));
        self.push(e);
        Target::Fixed(slot)
    }

    /// Releases the table's reference to the socket of `target` (nothing for a descriptor).
    /// Queued behind everything queued for it, and ahead of any later install of the slot.
    pub fn remove_fixed(&mut self, target: Target) {
        if let Target::Fixed(slot) = target {
            if let Some(d) = self.direct.as_mut()
                && slot >= d.base
            {
                // Queued now, so it runs before any accept armed from here on.
                d.taken = d.taken.saturating_sub(1);
            }
            let e = opcode::Close::new(types::Fixed(slot))
                .build()
                .flags(self.files_flags)
                .user_data(Self::files_token(slot));
            self.push(e);
        }
    }

    fn files_token(slot: u32) -> u64 {
        Token {
            op: Op::Files,
            slot,
            generation: 0,
        }
        .encode()
    }

    /// Checks, on a socket pair, that a multishot receive delivers data and stays armed, so a
    /// kernel without it fails at start instead of failing every connection. With a file
    /// table, the receive names its socket through the table (slot 0), which checks that too.
    /// The ring is idle afterwards (the probe's receive has ended and its buffer is back; the
    /// table is empty again).
    fn probe_multishot_recv(&mut self) -> io::Result<()> {
        let mut pair = [0; 2];
        // SAFETY: socketpair writes two descriptors into `pair`; the result is checked.
        check(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        })?;
        let token = Token::PROBE;
        let target = self.install(pair[0], 0);
        self.recv_multi(target, token);
        send_now(pair[1], b"x");
        let mut first = None;
        let mut out = Vec::new();
        let result = loop {
            if let Err(e) = self.submit_and_wait(Duration::from_secs(1)) {
                break Err(e);
            }
            self.completions(&mut out, 4);
            if out.is_empty() {
                break Err(io::Error::new(io::ErrorKind::TimedOut, "no completion"));
            }
            let mut ended = false;
            for c in &out {
                if let Some(bid) = c.buffer {
                    self.recycle(bid, c.result.max(0) as usize);
                }
                if first.is_none() {
                    first = Some(*c);
                    // End it: the final completion (EOF) comes next.
                    shutdown(pair[0], libc::SHUT_RDWR);
                }
                ended |= !c.more;
            }
            if ended {
                break match first {
                    Some(c) if c.result == 1 && c.more => Ok(()),
                    Some(c) if c.result < 0 => Err(io::Error::from_raw_os_error(-c.result)),
                    _ => Err(io::Error::other("the receive did not stay armed")),
                };
            }
        };
        self.remove_fixed(target);
        close(pair[0]);
        close(pair[1]);
        // Let the removal run now: the table is empty when the ring goes to work.
        self.flush();
        let _ = self.ring.submitter().submit();
        self.completions(&mut out, 16);
        result
    }

    fn push(&mut self, entry: squeue::Entry) {
        self.pending.push(entry);
    }

    /// Moves queued entries into the submission queue (as many as fit).
    fn flush(&mut self) {
        let mut sq = self.ring.submission();
        let mut taken = 0;
        for entry in &self.pending {
            // SAFETY: every entry was built by the methods below; the memory it points to is
            // owned by this ring (`lent`, `wake_buf`, `bufs`, the direct accepts' addresses,
            // which are boxed and never freed before the ring) until its completion is reaped
            // (sends, connects) or for the ring's life (the others).
            if unsafe { sq.push(entry) }.is_err() {
                break;
            }
            taken += 1;
        }
        self.pending.drain(..taken);
        let mut closed = 0;
        for fd in &self.closing {
            let e = opcode::Close::new(types::Fd(*fd))
                .build()
                .flags(self.files_flags)
                .user_data(Self::files_token(0));
            // SAFETY: a close borrows no memory.
            if unsafe { sq.push(&e) }.is_err() {
                break;
            }
            closed += 1;
        }
        drop(sq);
        self.closing.drain(..closed);
    }

    /// Closes `fd` with IORING_OP_CLOSE in the next submission instead of a system call of its
    /// own; the caller forgets it now (no operation of it may be in flight or queued). One
    /// still waiting when the ring goes is closed with close(2) then.
    pub fn close_fd(&mut self, fd: RawFd) {
        self.closing.push(fd);
    }

    /// Queues shutdown(2) of the socket of `target` as a ring operation ([`Op::Shutdown`] with
    /// `token`'s slot), behind everything queued before it; false (nothing queued) where the
    /// ring does not do it, and the caller makes the system call. Its completion always comes:
    /// the caller keeps the socket (and its table entry) until then, because the kernel runs
    /// a shutdown on an io-wq thread (it may block), where it looks a registered descriptor up
    /// only when it runs. That thread hop is its cost: a context switch on the worker's core
    /// where the system call has none, so a socket with a descriptor is better served by the
    /// system call, and a socket with only a table entry has no other way.
    pub fn shutdown(&mut self, target: Target, how: libc::c_int, token: Token) -> bool {
        if !self.ring_shutdown {
            return false;
        }
        let e = on_target!(target, |f| opcode::Shutdown::new(f, how).build()).user_data(
            Token {
                op: Op::Shutdown,
                ..token
            }
            .encode(),
        );
        self.push(e);
        self.ring_shutdowns += 1;
        true
    }

    /// Whether shutdowns can go on the ring, and how many did.
    /// Whether a socket with a descriptor closed with operations in flight has them cancelled
    /// on the ring rather than woken by shutdown(2) ([`Features::close_cancel`]).
    pub fn close_cancel(&self) -> bool {
        self.close_cancel
    }

    pub fn ring_shutdown(&self) -> (bool, u64) {
        (self.ring_shutdown, self.ring_shutdowns)
    }

    pub fn accept_multi(&mut self, listener: RawFd, token: Token) {
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// A multishot receive: every time data (or EOF, or an error) arrives, a completion with
    /// a buffer the kernel picked from the buffer ring; it stays armed (`Completion::more`)
    /// until EOF, an error, no free buffer (ENOBUFS), [`Ring::cancel`], or [`Ring::recv_limit`]
    /// bytes (then its last completion carries data and no `more`). One submission per
    /// connection instead of one per read: about 0.5 µs of kernel time per proxied request
    /// (bench/RESULTS.md).
    pub fn recv_multi(&mut self, target: Target, token: Token) {
        let e = if self.bundles {
            on_target!(target, |f| opcode::RecvMultiBundle::new(f, BUFFER_GROUP)
                .build())
        } else {
            on_target!(target, |f| opcode::RecvMulti::new(f, BUFFER_GROUP).build())
        };
        let e = with_recv_limit(e, self.recv_limit).user_data(token.encode());
        self.push(e);
    }

    /// Asks the kernel to cancel the operation submitted with `target`; that operation then
    /// completes with ECANCELED (or with what it had already done). The cancel's own
    /// completion carries [`Op::Cancel`].
    pub fn cancel(&mut self, target: Token) {
        let e = opcode::AsyncCancel::new(target.encode())
            .build()
            .user_data(Token::CANCEL.encode());
        self.push(e);
    }

    fn lent(&mut self, slot: u32) -> &mut Lent {
        let i = slot as usize;
        if self.lent.len() <= i {
            self.lent.resize_with(i + 1, Lent::default);
        }
        &mut self.lent[i]
    }

    /// A send of `buf` ([`Op::Send`] with `token.slot`). The ring keeps the buffer until the
    /// send completes; [`Ring::take_sent`] hands it back then. A slot has one send in flight
    /// at most: a second one is refused and its buffer returned. A buffer of [`ZC_MIN`] bytes
    /// or more goes zero-copy where the kernel has it (see `Ring::zc_held`); its notification
    /// is a completion with [`Completion::notif`], which carries nothing for the caller.
    pub fn send(&mut self, target: Target, buf: Vec<u8>, token: Token) -> Result<(), Vec<u8>> {
        self.send_with(target, buf, token, true)
    }

    /// [`Ring::send`]; with `zc` false it copies whatever its size. For a peer on this host:
    /// the kernel copies zero-copy data when a local socket receives it, so zero-copy would
    /// only add the page pinning and the notification.
    pub fn send_with(
        &mut self,
        target: Target,
        buf: Vec<u8>,
        token: Token,
        zc: bool,
    ) -> Result<(), Vec<u8>> {
        let zc =
            zc && self.send_zc && buf.len() >= ZC_MIN && !self.zc_held.contains_key(&token.slot);
        let len = buf.len();
        self.lend_send(target, buf, (0, len), token, zc)
    }

    /// A send of `buf[start..end]` ([`Op::Send`] with `token.slot`), copied by the kernel
    /// (never zero-copy); otherwise as [`Ring::send`], which hands the whole buffer back.
    pub fn send_part(
        &mut self,
        target: Target,
        buf: Vec<u8>,
        range: (usize, usize),
        token: Token,
    ) -> Result<(), Vec<u8>> {
        self.lend_send(target, buf, range, token, false)
    }

    /// Lends `buf` to a send of `buf[start..end]`, zero-copy if `zc`.
    fn lend_send(
        &mut self,
        target: Target,
        buf: Vec<u8>,
        (start, end): (usize, usize),
        token: Token,
        zc: bool,
    ) -> Result<(), Vec<u8>> {
        let lent = self.lent(token.slot);
        if lent.sending || start > end || end > buf.len() {
            return Err(buf);
        }
        let part = &buf[start..end];
        let (ptr, len) = (part.as_ptr(), u32::try_from(part.len()).unwrap_or(u32::MAX));
        // The heap block does not move when the Vec does.
        lent.send = Some(buf);
        lent.sending = true;
        lent.zc = zc;
        let e = if zc {
            self.zc_sends += 1;
            on_target!(target, |f| opcode::SendZc::new(f, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build())
        } else {
            on_target!(target, |f| opcode::Send::new(f, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build())
        };
        let e = e.user_data(
            Token {
                op: Op::Send,
                ..token
            }
            .encode(),
        );
        self.push(e);
        Ok(())
    }

    /// A one-shot receive into `buf[start..end]`: the bytes the socket has now, or the first
    /// that come ([`Op::RecvInto`] with `token.slot`). The ring keeps the buffer until
    /// [`Ring::take_recv`]. One per slot: a second is refused.
    pub fn recv_into(
        &mut self,
        target: Target,
        buf: Vec<u8>,
        (start, end): (usize, usize),
        token: Token,
    ) -> Result<(), Vec<u8>> {
        if self.recv_lent.contains_key(&token.slot) || start > end || end > buf.len() {
            return Err(buf);
        }
        let mut buf = buf;
        let len = (end - start).min(u32::MAX as usize) as u32;
        let ptr = buf[start..end].as_mut_ptr();
        // The heap block does not move when the Vec moves into the map.
        self.recv_lent.insert(token.slot, (buf, start));
        let e = on_target!(target, |f| opcode::Recv::new(f, ptr, len).build()).user_data(
            Token {
                op: Op::RecvInto,
                ..token
            }
            .encode(),
        );
        self.push(e);
        Ok(())
    }

    /// The buffer of slot `slot`'s completed [`Ring::recv_into`] and where the receive wrote
    /// (the completion's result counts the bytes from there).
    pub fn take_recv(&mut self, slot: u32) -> Option<(Vec<u8>, usize)> {
        self.recv_lent.remove(&slot)
    }

    /// The buffer of slot `slot`'s completed send (call on its [`Op::Send`] completion).
    pub fn take_sent(&mut self, slot: u32) -> Option<Vec<u8>> {
        let lent = self.lent.get_mut(slot as usize)?;
        if lent.sending {
            return None;
        }
        lent.send.take()
    }

    /// A connect to `addr` ([`Op::Connect`] with `token.slot`); the ring keeps the address
    /// until the completion.
    pub fn connect(&mut self, target: Target, addr: SocketAddr, token: Token) {
        let addr = SockAddr::new(addr);
        let (ptr, len) = (addr.as_ptr(), addr.len);
        // The boxed address does not move when the Box does; a connect still in flight for
        // this slot (none: one socket per slot) would keep its own.
        let lent = self.lent(token.slot);
        if lent.addr.is_some() {
            return;
        }
        lent.addr = Some(addr);
        let e = on_target!(target, |f| opcode::Connect::new(f, ptr, len).build()).user_data(
            Token {
                op: Op::Connect,
                ..token
            }
            .encode(),
        );
        self.push(e);
    }

    /// A one-shot poll of `target` for `events` (`libc::POLLIN`, `libc::POLLOUT`): completes
    /// once the socket is ready (or failed, or the poll was cancelled).
    pub fn poll(&mut self, target: Target, events: u32, token: Token) {
        let e = on_target!(target, |f| opcode::PollAdd::new(f, events).build()).user_data(
            Token {
                op: Op::Poll,
                ..token
            }
            .encode(),
        );
        self.push(e);
    }

    /// An 8-byte read of an eventfd into the ring's own buffer (one at a time).
    pub fn read_eventfd(&mut self, fd: RawFd, token: Token) {
        let e = opcode::Read::new(types::Fd(fd), self.wake_buf.as_mut_ptr(), 8)
            .build()
            .user_data(token.encode());
        self.push(e);
    }

    /// Whether large sends go zero-copy, and how many did.
    pub fn send_zc(&self) -> (bool, u64) {
        (self.send_zc, self.zc_sends)
    }

    /// Whether multishot receives take bundles (the kernel has them and the probe passed).
    pub fn bundles(&self) -> bool {
        self.bundles
    }

    /// The bytes of a completed receive of `len` bytes whose first buffer is `bid`, in order:
    /// one slice, or one per buffer of a bundle.
    pub fn received(&self, bid: u16, len: usize) -> impl Iterator<Item = &[u8]> + '_ {
        self.bufs
            .parts(bid, len)
            .map(|(bid, len)| self.bufs.buffer(bid, len))
    }

    /// Gives the buffers of a completed receive of `len` bytes (whose first buffer is `bid`)
    /// back to the kernel, at the end of the batch ([`Ring::release_buffers`]).
    pub fn recycle(&mut self, bid: u16, len: usize) {
        self.bufs.recycle(bid, len);
    }

    /// Publishes the buffers given back since the last call (also done by
    /// [`Ring::completions`] before it reaps): call after handling a batch.
    pub fn release_buffers(&mut self) {
        self.bufs.release();
    }

    /// Submits what is queued and waits for at least one completion or `timeout`.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.submit_and_gather(timeout, 1, 0)
    }

    /// True when the kernel has min-wait (Linux 6.12+), which [`Ring::submit_and_gather`]
    /// needs to ask for more than one completion without risking the whole timeout.
    pub fn has_min_wait(&self) -> bool {
        self.ring.params().is_feature_min_timeout()
    }

    /// Submits what is queued and waits for `want` completions, but for at most `window_us`
    /// microseconds once one is ready (min-wait; `window_us` 0 waits for one), and at most
    /// `timeout` in all. Without min-wait (see [`Ring::has_min_wait`]) it waits for one.
    pub fn submit_and_gather(
        &mut self,
        timeout: Duration,
        want: u32,
        window_us: u32,
    ) -> io::Result<()> {
        self.flush();
        let ts = Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let (want, window_us) = if window_us == 0 || want <= 1 || !self.has_min_wait() {
            (1, 0)
        } else {
            (want as usize, window_us)
        };
        let args = SubmitArgs::new().timespec(&ts).min_wait_usec(window_us);
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Copies up to `max` completions into `out`.
    pub fn completions(&mut self, out: &mut Vec<Completion>, max: usize) {
        self.bufs.release();
        out.clear();
        for cqe in self.ring.completion().take(max) {
            let token = Token::decode(cqe.user_data());
            // The kernel is done with what the operation borrowed.
            let notif = cqueue::notif(cqe.flags());
            match token {
                Some(Token {
                    op: Op::Send, slot, ..
                }) => {
                    if let Some(lent) = self.lent.get_mut(slot as usize) {
                        if notif {
                            // The kernel is done with the zero-copy buffer.
                            if let Some(buf) = self.zc_held.remove(&slot)
                                && self.zc_pool_bytes + buf.capacity() <= ZC_POOL_BYTES
                            {
                                self.zc_pool_bytes += buf.capacity();
                                self.zc_pool.push(buf);
                            }
                        } else {
                            lent.sending = false;
                            if lent.zc && cqueue::more(cqe.flags()) {
                                // A notification follows: keep the buffer, lend a stand-in.
                                let written = usize::try_from(cqe.result()).unwrap_or(0);
                                let stand_in = self.zc_pool.pop().inspect(|b| {
                                    self.zc_pool_bytes -= b.capacity();
                                });
                                if let Some(buf) = lent.send.take() {
                                    lent.send = Some(stand_in_for(&buf, written, stand_in));
                                    self.zc_held.insert(slot, buf);
                                }
                            }
                        }
                    }
                }
                Some(Token {
                    op: Op::Connect,
                    slot,
                    ..
                }) => {
                    if let Some(lent) = self.lent.get_mut(slot as usize) {
                        lent.addr = None;
                    }
                }
                Some(Token {
                    op: Op::AcceptDirect,
                    slot,
                    ..
                }) => {
                    if let Some(d) = self.direct.as_mut() {
                        if let Some(armed) = d.armed.get_mut(slot as usize) {
                            *armed = false;
                        }
                        if cqe.result() < 0 {
                            // No entry was taken.
                            d.taken = d.taken.saturating_sub(1);
                        } else {
                            d.accepted += 1;
                        }
                    }
                }
                _ => {}
            }
            out.push(Completion {
                token,
                result: cqe.result(),
                buffer: cqueue::buffer_select(cqe.flags()),
                more: cqueue::more(cqe.flags()),
                notif,
            });
        }
    }
}

/// A buffer the driver can take back in place of `sent` after `written` of its bytes went
/// out: the same length, the unsent tail at the same offsets (the driver sends it again), the
/// written part whatever `reuse` held (the driver does not read it). Only the tail is copied
/// (nothing after a whole write); a new stand-in is zeroed once.
fn stand_in_for(sent: &[u8], written: usize, reuse: Option<Vec<u8>>) -> Vec<u8> {
    let mut b = reuse.unwrap_or_default();
    if b.len() >= sent.len() {
        b.truncate(sent.len());
    } else {
        b.resize(sent.len(), 0);
    }
    let written = written.min(sent.len());
    b[written..].copy_from_slice(&sent[written..]);
    b
}

/// A socket address in the C layout, for connect.
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    pub fn new(addr: SocketAddr) -> Box<SockAddr> {
        // SAFETY: sockaddr_storage is plain data for which all-zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: v4.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(v4.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: v6.port().to_be(),
                    sin6_flowinfo: v6.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: v6.ip().octets(),
                    },
                    sin6_scope_id: v6.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Box::new(SockAddr {
            storage,
            len: len as libc::socklen_t,
        })
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    fn to_socket_addr(&self) -> Option<SocketAddr> {
        match i32::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin = unsafe { &*(self.as_ptr().cast::<libc::sockaddr_in>()) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(self.as_ptr().cast::<libc::sockaddr_in6>()) };
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
            }
            _ => None,
        }
    }
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// A listening socket with SO_REUSEADDR and SO_REUSEPORT, so each worker has its own and the
/// kernel spreads connections across them.
pub fn listen_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<RawFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; the result is checked.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    let setup = || -> io::Result<()> {
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        // Inherited by every accepted connection (Linux copies it at accept), so the worker
        // does not set it once per connection.
        set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        let sa = SockAddr::new(addr);
        // SAFETY: `sa` is a valid address of `sa.len` bytes.
        check(unsafe { libc::bind(fd, sa.as_ptr(), sa.len) })?;
        // SAFETY: listen on a bound socket we own.
        check(unsafe { libc::listen(fd, backlog) })?;
        Ok(())
    };
    if let Err(e) = setup() {
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// `n` listening sockets on `addr` (see [`listen_reuseport`]), one per worker, and the
/// address they listen on: with port 0, the first picks a port and the others share it. On
/// an error, those already made are closed.
pub fn listen_all(addr: SocketAddr, n: usize) -> io::Result<(Vec<RawFd>, SocketAddr)> {
    let mut addr = addr;
    let mut fds = Vec::with_capacity(n);
    for _ in 0..n {
        let fd = listen_reuseport(addr, 4096).map_err(|e| {
            for fd in &fds {
                close(*fd);
            }
            io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
        })?;
        if addr.port() == 0 {
            addr = local_addr(fd).unwrap_or(addr);
        }
        fds.push(fd);
    }
    Ok((fds, addr))
}

/// A nonblocking TCP socket for an upstream connection, with TCP_NODELAY.
pub fn upstream_socket(addr: SocketAddr) -> io::Result<RawFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; the result is checked.
    let fd = check(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    if let Err(e) = set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1) {
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

fn name_of(
    fd: RawFd,
    f: unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data for which all-zero is a valid value.
    let mut sa = SockAddr {
        storage: unsafe { std::mem::zeroed() },
        len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    };
    // SAFETY: the kernel writes at most `len` bytes into the storage.
    let ret = unsafe {
        f(
            fd,
            (&mut sa.storage as *mut libc::sockaddr_storage).cast(),
            &mut sa.len,
        )
    };
    if ret < 0 {
        return None;
    }
    sa.to_socket_addr()
}

pub fn local_addr(fd: RawFd) -> Option<SocketAddr> {
    name_of(fd, libc::getsockname)
}

pub fn peer_addr(fd: RawFd) -> Option<SocketAddr> {
    name_of(fd, libc::getpeername)
}

pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown on an fd we own; errors (already closed by the peer) are harmless.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Writes what the socket takes now, without waiting (a last TLS alert before closing).
pub fn send_now(fd: RawFd, bytes: &[u8]) {
    // SAFETY: sends from a live slice of `bytes.len()` bytes on an fd we own; the result is
    // ignored (best effort).
    unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}

/// Makes `fd`'s reads and writes return EAGAIN instead of waiting (splice(2) follows the
/// descriptor's flag, not only `SPLICE_F_NONBLOCK`).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only; the results are checked.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    }
    Ok(())
}

/// A nonblocking pipe, `(read end, write end)`, holding `size` bytes if the kernel lets it
/// (F_SETPIPE_SZ; its capacity is returned as the third value, which may be smaller).
pub fn pipe(size: usize) -> io::Result<(RawFd, RawFd, usize)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array; the result is checked.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    let wanted = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: fcntl on the pipe just made, integer arguments only. A refusal (EPERM past the
    // per-user limit) leaves the default size, which F_GETPIPE_SZ reports.
    let cap = unsafe {
        libc::fcntl(fds[1], libc::F_SETPIPE_SZ, wanted);
        libc::fcntl(fds[1], libc::F_GETPIPE_SZ)
    };
    match usize::try_from(cap) {
        Ok(cap) => Ok((fds[0], fds[1], cap)),
        Err(_) => {
            let e = io::Error::last_os_error();
            close(fds[0]);
            close(fds[1]);
            Err(e)
        }
    }
}

/// splice(2) of up to `len` bytes from `from` to `to` (one of them a pipe), without waiting:
/// the bytes moved (0: `from` is at its end), or the error (EAGAIN: nothing to move now).
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between descriptors we own, with null offsets (sockets and pipes have
    // none); no memory of ours is passed. The result is checked.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

pub fn close(fd: RawFd) {
    // SAFETY: closes an fd we own exactly once (callers forget it afterwards).
    unsafe {
        libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker no longer sets TCP_NODELAY per connection: the listener's is inherited.
    #[test]
    fn accepted_connections_come_with_nodelay_from_the_listener() {
        let listener = listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = local_addr(listener).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        // SAFETY: accept on a listening socket we own; null address arguments are allowed.
        let fd =
            check(unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) })
                .unwrap();
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `on` and `len` are valid for writes of an int and its length.
        check(unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw mut on).cast(),
                &mut len,
            )
        })
        .unwrap();
        assert_eq!(on, 1);
        close(fd);
        close(listener);
    }

    fn pair() -> (RawFd, RawFd) {
        let mut p = [0; 2];
        // SAFETY: socketpair writes two descriptors into `p`; the result is checked.
        check(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                p.as_mut_ptr(),
            )
        })
        .unwrap();
        (p[0], p[1])
    }

    fn token(op: Op, slot: u32) -> Token {
        Token {
            op,
            slot,
            generation: 0,
        }
    }

    /// The ring's own tokens (cancels, start-up probes) are cancels that survive a
    /// completion's user data, and the two are told apart by their slot.
    #[test]
    fn the_rings_own_tokens_round_trip_as_cancels() {
        for t in [Token::CANCEL, Token::PROBE] {
            assert_eq!(Token::decode(t.encode()), Some(t));
            assert_eq!(t.op, Op::Cancel);
        }
        assert_ne!(Token::CANCEL, Token::PROBE);
    }

    /// Submits and reaps for up to `wait`, recycling receive buffers; returns the completions
    /// with the bytes each receive carried.
    fn reap(ring: &mut Ring, wait: Duration) -> Vec<(Completion, Vec<u8>)> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        for _ in 0..wait.as_millis().div_ceil(10) {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.completions(&mut out, 64);
            for c in &out {
                let bytes = match c.buffer {
                    Some(bid) => {
                        let len = c.result.max(0) as usize;
                        let b = ring.received(bid, len).flatten().copied().collect();
                        ring.recycle(bid, len);
                        b
                    }
                    None => Vec::new(),
                };
                got.push((*c, bytes));
            }
        }
        got
    }

    fn received_on(got: &[(Completion, Vec<u8>)], slot: u32) -> Vec<u8> {
        got.iter()
            .filter(|(c, _)| c.token == Some(token(Op::Recv, slot)) && c.result > 0)
            .flat_map(|(_, b)| b.clone())
            .collect()
    }

    fn eof_on(got: &[(Completion, Vec<u8>)], slot: u32) -> bool {
        got.iter()
            .any(|(c, _)| c.token == Some(token(Op::Recv, slot)) && c.result == 0)
    }

    #[test]
    fn registered_sockets_carry_receives_and_sends_and_the_table_holds_them_open() {
        let mut ring = Ring::new(64, 8, 4096).unwrap();
        assert!(
            ring.fixed_files() > 4,
            "this kernel (6.x) takes a file table"
        );
        let (a, b) = pair();
        let ta = ring.install(a, 3);
        let tb = ring.install(b, 4);
        assert_eq!((ta, tb), (Target::Fixed(3), Target::Fixed(4)));
        ring.recv_multi(ta, token(Op::Recv, 3));
        ring.send(tb, b"hello".to_vec(), token(Op::Send, 4))
            .unwrap();
        let got = reap(&mut ring, Duration::from_millis(100));
        assert_eq!(received_on(&got, 3), b"hello");
        let sent = got
            .iter()
            .find(|(c, _)| c.token == Some(token(Op::Send, 4)))
            .expect("the send completed");
        assert_eq!(sent.0.result, 5);
        assert_eq!(ring.take_sent(4).as_deref(), Some(&b"hello"[..]));
        // Closing b's descriptor does not close the socket: the table still holds it.
        close(b);
        let got = reap(&mut ring, Duration::from_millis(50));
        assert!(!eof_on(&got, 3), "the table keeps the peer open");
        ring.remove_fixed(tb);
        let got = reap(&mut ring, Duration::from_millis(100));
        assert!(eof_on(&got, 3), "removing the entry closes it");
        // No table update failed (a failure would post an Op::Files completion).
        assert!(
            got.iter()
                .all(|(c, _)| c.token.map(|t| t.op) != Some(Op::Files))
        );
        ring.remove_fixed(ta);
        close(a);
    }

    #[test]
    fn a_slot_reused_for_a_new_socket_names_the_new_one() {
        let mut ring = Ring::new(64, 8, 4096).unwrap();
        let (a, b) = pair();
        let t = ring.install(a, 2);
        ring.remove_fixed(t);
        close(a);
        close(b);
        let (c, d) = pair();
        // Queued behind the removal, in the same submission.
        let t = ring.install(c, 2);
        ring.recv_multi(t, token(Op::Recv, 2));
        send_now(d, b"new");
        let got = reap(&mut ring, Duration::from_millis(100));
        assert_eq!(received_on(&got, 2), b"new");
        ring.remove_fixed(t);
        close(c);
        close(d);
    }

    #[test]
    fn without_a_file_table_sockets_use_their_descriptors() {
        let features = Features {
            fixed_files: false,
            bundles: false,
            send_zc: true,
            recv_limit: true,
            ring_shutdown: true,
            accept_direct: true,
            close_cancel: true,
        };
        let sizing = RecvBuffers {
            plain: (8, 4096),
            bundled: (8, 4096),
        };
        let mut ring = Ring::with_features(64, sizing, features).unwrap();
        assert_eq!(ring.fixed_files(), 0);
        let (a, b) = pair();
        assert_eq!(ring.install(a, 1), Target::Fd(a));
        ring.recv_multi(Target::Fd(a), token(Op::Recv, 1));
        ring.send(Target::Fd(b), b"plain".to_vec(), token(Op::Send, 2))
            .unwrap();
        let got = reap(&mut ring, Duration::from_millis(100));
        assert_eq!(received_on(&got, 1), b"plain");
        close(a);
        close(b);
    }

    #[test]
    fn a_slot_past_the_table_uses_its_descriptor() {
        let mut ring = Ring::new(64, 8, 4096).unwrap();
        let past = ring.fixed_files();
        assert_eq!(ring.install(9, past), Target::Fd(9));
    }

    /// Reaps without giving buffers back: (completion, its bytes in order, its buffers).
    fn reap_keep(ring: &mut Ring, turns: usize) -> Vec<(Completion, Vec<u8>)> {
        let mut got = Vec::new();
        let mut out = Vec::new();
        for _ in 0..turns {
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.completions(&mut out, 64);
            for c in &out {
                let bytes = match c.buffer {
                    Some(bid) => ring
                        .received(bid, c.result.max(0) as usize)
                        .flatten()
                        .copied()
                        .collect(),
                    None => Vec::new(),
                };
                got.push((*c, bytes));
            }
        }
        got
    }

    #[test]
    fn a_bundle_carries_several_buffers_in_ring_order_not_buffer_order() {
        // Four 16-byte buffers.
        let mut ring = Ring::new(64, 4, 16).unwrap();
        assert!(ring.bundles(), "this kernel (6.10+) has receive bundles");
        let socks: Vec<(RawFd, RawFd)> = (0..3).map(|_| pair()).collect();
        let mut taken = Vec::new();
        for (i, (a, b)) in socks.iter().enumerate() {
            ring.recv_multi(Target::Fd(*a), token(Op::Recv, i as u32));
            send_now(*b, &[b'a' + i as u8; 16]);
            // One at a time: each takes the next buffer in ring order.
            let got = reap_keep(&mut ring, 3);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].1, [b'a' + i as u8; 16]);
            taken.push(got[0].0.buffer.unwrap());
        }
        let left = (0..4u16).find(|b| !taken.contains(b)).unwrap();
        // Given back in reverse: the ring now holds `left`, then the taken ones reversed.
        for bid in taken.iter().rev() {
            ring.recycle(*bid, 16);
        }
        ring.release_buffers();
        let mut expected = vec![(left, 16)];
        expected.extend(taken.iter().rev().map(|b| (*b, 16)));
        assert!(
            !expected.windows(2).all(|w| w[1].0 == w[0].0 + 1),
            "the ring order differs from the buffer order"
        );
        let message: Vec<u8> = (0..64u8).collect();
        send_now(socks[0].1, &message);
        let got = reap_keep(&mut ring, 5);
        let on_0: Vec<&(Completion, Vec<u8>)> = got
            .iter()
            .filter(|(c, _)| c.token == Some(token(Op::Recv, 0)) && c.result > 0)
            .collect();
        let bytes: Vec<u8> = on_0.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(bytes, message, "the bytes in order across the bundle");
        assert!(
            on_0.iter().any(|(c, _)| c.result > 16),
            "one completion carried more than one buffer: {:?}",
            on_0.iter().map(|(c, _)| c.result).collect::<Vec<_>>()
        );
        let mut bids: Vec<(u16, usize)> = ring.bufs.parts(on_0[0].0.buffer.unwrap(), 64).collect();
        bids.truncate(4);
        assert_eq!(bids, expected);
        for (a, b) in socks {
            close(a);
            close(b);
        }
    }

    #[test]
    fn without_bundles_a_completion_carries_one_buffer() {
        let features = Features {
            fixed_files: true,
            bundles: false,
            send_zc: true,
            recv_limit: false,
            ring_shutdown: true,
            accept_direct: true,
            close_cancel: true,
        };
        let sizing = RecvBuffers {
            plain: (8, 16),
            bundled: (8, 16),
        };
        let mut ring = Ring::with_features(64, sizing, features).unwrap();
        assert!(!ring.bundles());
        let (a, b) = pair();
        let t = ring.install(a, 1);
        ring.recv_multi(t, token(Op::Recv, 1));
        let message: Vec<u8> = (0..64u8).collect();
        send_now(b, &message);
        let got = reap(&mut ring, Duration::from_millis(60));
        assert_eq!(received_on(&got, 1), message);
        assert!(got.iter().all(|(c, _)| c.result <= 16));
        ring.remove_fixed(t);
        close(a);
        close(b);
    }

    /// A connected loopback TCP pair (zero-copy sends need TCP): (ours, the peer's stream).
    fn tcp_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn read_all(mut s: std::net::TcpStream, n: usize) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut got = vec![0u8; n];
            s.read_exact(&mut got).unwrap();
            got
        })
    }

    #[test]
    fn a_large_send_goes_zero_copy_and_its_buffer_is_kept_until_the_notification() {
        use std::os::fd::AsRawFd;
        let mut ring = Ring::new(64, 8, 4096).unwrap();
        assert!(ring.send_zc().0, "this kernel (6.0+) has SEND_ZC");
        let (ours, theirs) = tcp_pair();
        let message: Vec<u8> = (0..ZC_MIN * 4).map(|i| (i % 253) as u8).collect();
        let reader = read_all(theirs, message.len());
        let target = ring.install(ours.as_raw_fd(), 6);
        let mut sent = 0;
        let mut notifs = 0;
        let mut out = Vec::new();
        while sent < message.len() {
            let buf = message[sent..].to_vec();
            let len = buf.len();
            ring.send(target, buf, token(Op::Send, 6)).unwrap();
            let mut done = None;
            for _ in 0..500 {
                ring.submit_and_wait(Duration::from_millis(10)).unwrap();
                ring.completions(&mut out, 16);
                for c in &out {
                    if c.notif {
                        notifs += 1;
                    } else if c.token == Some(token(Op::Send, 6)) {
                        done = Some(*c);
                    }
                }
                if done.is_some() {
                    break;
                }
            }
            let c = done.expect("the send completed");
            assert!(c.result > 0, "{}", c.result);
            let written = c.result as usize;
            // The driver gets a buffer of the same length whose unsent tail is the message's.
            let back = ring.take_sent(6).expect("a buffer back");
            assert_eq!(back.len(), len);
            assert_eq!(back[written..], message[sent + written..]);
            sent += written;
        }
        // The first send was zero-copy; its notification comes once the kernel is done.
        assert!(ring.send_zc().1 >= 1);
        assert_eq!(reader.join().unwrap(), message, "every byte, in order");
        for _ in 0..100 {
            if notifs >= ring.send_zc().1 {
                break;
            }
            ring.submit_and_wait(Duration::from_millis(10)).unwrap();
            ring.completions(&mut out, 16);
            notifs += out.iter().filter(|c| c.notif).count() as u64;
        }
        assert_eq!(
            notifs,
            ring.send_zc().1,
            "one notification per zero-copy send"
        );
        assert!(ring.zc_held.is_empty(), "the held buffer went to the pool");
        ring.remove_fixed(target);
    }

    /// A receive with a budget takes that many bytes, ends without `more` although more is
    /// waiting, and the rest stays in the socket for the next one; without the budget one
    /// receive takes all of it and stays armed.
    #[test]
    fn a_receive_with_a_budget_ends_after_it_and_leaves_the_rest_in_the_socket() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let sizing = RecvBuffers {
            plain: (64, 4096),
            bundled: (64, 4096),
        };
        let message: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for budget in [true, false] {
            let features = Features {
                recv_limit: budget,
                ..Features::default()
            };
            let mut ring = Ring::with_features(64, sizing, features).unwrap();
            // A sixteenth of the 256 KiB ring.
            let limit = if budget { 16 * 1024 } else { 0 };
            assert_eq!(
                ring.recv_limit(),
                limit,
                "this kernel (6.17+) keeps the budget"
            );
            let (ours, mut theirs) = tcp_pair();
            theirs.write_all(&message).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            let mut got = Vec::new();
            let mut receives = 0;
            loop {
                ring.recv_multi(Target::Fd(ours.as_raw_fd()), token(Op::Recv, 1));
                receives += 1;
                let done = reap(&mut ring, Duration::from_millis(50));
                let mut ended = false;
                let mut bytes = 0;
                for (c, b) in &done {
                    assert!(c.result > 0, "{c:?}");
                    bytes += b.len();
                    got.extend_from_slice(b);
                    ended |= !c.more;
                }
                if budget {
                    assert!(ended, "the receive ended after its budget");
                    assert_eq!(bytes, 16 * 1024, "a receive takes its budget, no more");
                }
                if !ended || got.len() == message.len() {
                    break;
                }
            }
            assert_eq!(got, message, "every byte, in order");
            assert_eq!(receives, if budget { 4 } else { 1 });
        }
    }

    #[test]
    fn a_small_send_copies() {
        use std::os::fd::AsRawFd;
        let mut ring = Ring::new(64, 8, 4096).unwrap();
        let (ours, theirs) = tcp_pair();
        let message = vec![7u8; ZC_MIN - 1];
        let reader = read_all(theirs, message.len());
        let mut sent = 0;
        let mut out = Vec::new();
        while sent < message.len() {
            ring.send(
                Target::Fd(ours.as_raw_fd()),
                message[sent..].to_vec(),
                token(Op::Send, 1),
            )
            .unwrap();
            let mut done = false;
            while !done {
                ring.submit_and_wait(Duration::from_millis(10)).unwrap();
                ring.completions(&mut out, 16);
                for c in &out {
                    assert!(!c.notif && !c.more, "a plain send has no notification");
                    sent += c.result.max(0) as usize;
                    done = true;
                }
            }
            ring.take_sent(1).unwrap();
        }
        assert_eq!(ring.send_zc().1, 0);
        assert_eq!(reader.join().unwrap(), message);
    }

    #[test]
    fn a_stand_in_has_the_unsent_tail_at_the_same_offsets() {
        let sent: Vec<u8> = (0..10).collect();
        assert_eq!(stand_in_for(&sent, 10, None), vec![0; 10]);
        let b = stand_in_for(&sent, 6, Some(vec![9; 20]));
        assert_eq!(b, [9, 9, 9, 9, 9, 9, 6, 7, 8, 9]);
        let b = stand_in_for(&sent, 3, Some(vec![9; 2]));
        assert_eq!(b, [9, 9, 0, 3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_shutdown_on_the_ring_half_closes_a_registered_socket_after_its_send() {
        let mut ring = Ring::new(64, 8, 4096).unwrap();
        assert!(
            ring.ring_shutdown().0,
            "this kernel (5.11+) has IORING_OP_SHUTDOWN"
        );
        let (a, b) = pair();
        let ta = ring.install(a, 5);
        ring.send(ta, b"last".to_vec(), token(Op::Send, 5)).unwrap();
        let mut got = reap(&mut ring, Duration::from_millis(50));
        assert!(ring.shutdown(ta, libc::SHUT_WR, token(Op::Shutdown, 5)));
        // The peer's receive sees the bytes, then the FIN (EOF); the shutdown completes.
        ring.recv_multi(Target::Fd(b), token(Op::Recv, 6));
        got.extend(reap(&mut ring, Duration::from_millis(200)));
        assert_eq!(received_on(&got, 6), b"last");
        assert!(eof_on(&got, 6), "the FIN came");
        let shut = got
            .iter()
            .find(|(c, _)| c.token == Some(token(Op::Shutdown, 5)))
            .expect("a shutdown's completion always comes");
        assert_eq!(shut.0.result, 0);
        assert_eq!(ring.ring_shutdown().1, 1);
        // Only the write side: a is still readable.
        send_now(b, b"back");
        ring.recv_multi(ta, token(Op::Recv, 5));
        let got = reap(&mut ring, Duration::from_millis(100));
        assert_eq!(received_on(&got, 5), b"back");
        ring.remove_fixed(ta);
        close(a);
        close(b);
    }

    #[test]
    fn without_ring_shutdowns_the_caller_is_told_to_make_the_system_call() {
        let features = Features {
            ring_shutdown: false,
            ..Features::all()
        };
        let sizing = RecvBuffers {
            plain: (8, 4096),
            bundled: (8, 4096),
        };
        let mut ring = Ring::with_features(64, sizing, features).unwrap();
        assert!(!ring.shutdown(Target::Fd(0), libc::SHUT_WR, token(Op::Shutdown, 1)));
        assert_eq!(ring.ring_shutdown(), (false, 0));
    }

    #[test]
    fn a_direct_accept_gives_a_table_entry_and_the_peer_address_without_a_descriptor() {
        let mut ring = Ring::new(64, 8, 4096).unwrap();
        assert!(
            ring.direct_accepts().0,
            "this kernel (6.0+) accepts into the file table"
        );
        let listener = listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = local_addr(listener).unwrap();
        for k in 0..2 {
            assert!(ring.accept_direct(listener, token(Op::AcceptDirect, k)));
        }
        assert!(
            !ring.accept_direct(listener, token(Op::AcceptDirect, 0)),
            "one accept per slot at a time"
        );
        let clients: Vec<std::net::TcpStream> = (0..2)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let got = reap(&mut ring, Duration::from_millis(100));
        let accepts: Vec<&Completion> = got
            .iter()
            .map(|(c, _)| c)
            .filter(|c| c.token.map(|t| t.op) == Some(Op::AcceptDirect))
            .collect();
        assert_eq!(accepts.len(), 2);
        let half = ring.fixed_files() / 2;
        for c in &accepts {
            let index = u32::try_from(c.result).expect("a table entry");
            assert!(index >= half, "from the accept range: {index}");
            let slot = c.token.unwrap().slot;
            let peer = ring.accepted_peer(slot).expect("the peer's address");
            let client = clients
                .iter()
                .find(|s| s.local_addr().unwrap() == peer)
                .expect("the peer is one of the clients, port and all");
            // The entry is the socket: a receive through it gets the client's bytes.
            use std::io::Write;
            (&*client).write_all(b"hi").unwrap();
            ring.recv_multi(Target::Fixed(index), token(Op::Recv, slot));
            let got = reap(&mut ring, Duration::from_millis(50));
            assert_eq!(received_on(&got, slot), b"hi");
            ring.cancel_all(Target::Fixed(index));
            let got = reap(&mut ring, Duration::from_millis(50));
            assert!(
                got.iter()
                    .any(|(c, _)| c.token == Some(token(Op::Recv, slot))
                        && c.result == -libc::ECANCELED
                        && !c.more),
                "cancel_all ends the socket's receive"
            );
            ring.remove_fixed(Target::Fixed(index));
        }
        assert_eq!(ring.direct_accepts(), (true, 2));
        ring.submit_and_wait(Duration::from_millis(1)).unwrap();
        // Closing the entries closed the sockets: the clients read EOF.
        for mut c in clients {
            use std::io::Read;
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(c.read(&mut [0u8; 4]).unwrap(), 0);
        }
        close(listener);
    }

    #[test]
    fn installs_keep_below_the_accept_range() {
        let mut ring = Ring::new(64, 8, 4096).unwrap();
        let half = ring.fixed_files() / 2;
        assert_eq!(ring.install(9, half), Target::Fd(9));
        let off = Features {
            accept_direct: false,
            close_cancel: false,
            ..Features::all()
        };
        let sizing = RecvBuffers {
            plain: (8, 4096),
            bundled: (8, 4096),
        };
        let mut ring = Ring::with_features(64, sizing, off).unwrap();
        assert_eq!(ring.direct_accepts(), (false, 0));
        assert!(!ring.accept_direct(0, token(Op::AcceptDirect, 0)));
        let (a, b) = pair();
        assert_eq!(ring.install(a, half), Target::Fixed(half));
        ring.remove_fixed(Target::Fixed(half));
        ring.submit_and_wait(Duration::from_millis(1)).unwrap();
        close(a);
        close(b);
    }

    #[test]
    fn ring_shutdowns_direct_accepts_and_close_cancels_are_off_unless_enabled_by_name() {
        let d = Features::default();
        assert!(d.fixed_files && d.bundles && d.send_zc && d.recv_limit);
        assert!(!d.ring_shutdown && !d.accept_direct && !d.close_cancel);
        assert_eq!(d.with_names(None, None), d);
        assert_eq!(
            d.with_names(Some("shutdown, direct,cancel"), None),
            Features::all()
        );
        let f = d.with_names(Some("direct"), Some("zc,bundle,nonsense"));
        assert!(f.accept_direct && !f.ring_shutdown && !f.send_zc && !f.bundles && f.fixed_files);
        // Disabling wins over enabling.
        assert!(
            !d.with_names(Some("shutdown"), Some("shutdown"))
                .ring_shutdown
        );
    }

    /// Whether the other end of socket pair end `peer` is closed (EOF waiting), judged from
    /// the peer so that a descriptor number reused by a test running beside it cannot fool it.
    fn other_end_closed(peer: RawFd) -> bool {
        let mut byte = 0u8;
        // SAFETY: receives at most one byte into a live byte, without waiting.
        let n = unsafe {
            libc::recv(
                peer,
                (&raw mut byte).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_PEEK,
            )
        };
        n == 0
    }

    #[test]
    fn a_descriptor_closed_through_the_ring_closes_at_the_next_submit_or_when_the_ring_goes() {
        let mut ring = Ring::new(64, 8, 4096).unwrap();
        let (a, b) = pair();
        ring.close_fd(a);
        assert!(
            !other_end_closed(b),
            "nothing happens before the submission"
        );
        ring.submit_and_wait(Duration::from_millis(1)).unwrap();
        assert!(other_end_closed(b), "closed by the submission");
        let mut out = Vec::new();
        ring.completions(&mut out, 16);
        assert!(out.is_empty(), "a successful close posts no completion");
        close(b);
        let (c, d) = pair();
        ring.close_fd(c);
        drop(ring);
        assert!(other_end_closed(d), "closed when the ring goes");
        close(d);
    }
}
