//! A client connection's state machine as the driver keeps it: awake (a boxed
//! [`Conn`] with its buffers) while the connection has work, parked (a
//! [`Parked`], a few words) while it is an idle keep-alive connection, so that an idle
//! connection owns no buffer. The boxes of parked and closed machines go to the worker's free
//! list, and the next connection that wakes takes one from it, buffers and all: no allocator
//! call per request once the worker is warm (freeing and reallocating the buffers on every
//! request cost 7-10 % CPU per request, see bench/RESULTS.md), nothing held while idle.
//!
//! [`Machine`] has the methods of [`Conn`] the driver calls, so the driver reads as if it
//! held the machine itself: the ones that feed an event wake a parked machine first, the
//! ones that only look answer from the parked state. [`Machine::awake`] reaches any other.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::core::conn::{Action, ClientInfo, Conn, ConnConfig, Parked, RequestRecord};
use crate::core::route::Router;
use crate::core::time::Instant;

/// Spare machines kept per worker thread. Each holds buffers of at most 4 KiB (larger ones
/// are freed when it is parked or retired), about 20 KiB in all: at most about 20 MiB per
/// worker, reached only after that many connections were busy at once.
const MAX_SPARE: usize = 1024;

thread_local! {
    /// The worker's free list of machines. One per thread: a driver runs on its worker's
    /// thread, and a thread-local keeps every call site of the driver unchanged.
    // Boxed: a machine moves between this list and a connection without being copied.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Conn>>> = const { RefCell::new(Vec::new()) };
}

/// What a parked machine reports as its request.
static NO_REQUEST: RequestRecord = RequestRecord::EMPTY;

fn take_spare() -> Option<Box<Conn>> {
    SPARE.with(|spare| spare.borrow_mut().pop())
}

fn give_spare(conn: Box<Conn>) {
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < MAX_SPARE {
            spare.push(conn);
        }
    });
}

/// Spare machines on this thread's free list (tests).
#[cfg(test)]
pub(super) fn spare_count() -> usize {
    SPARE.with(|spare| spare.borrow().len())
}

/// One client connection's machine, awake or parked.
pub(super) struct Machine {
    /// What the connection keeps; up to date whenever `awake` is `None`.
    parked: Parked,
    awake: Option<Box<Conn>>,
}

impl Machine {
    /// A connection just accepted starts parked: a machine is taken when its first bytes come.
    pub(super) fn new(info: ClientInfo, config: Arc<ConnConfig>, now: Instant) -> Machine {
        Machine {
            parked: Parked::new(info, config, now),
            awake: None,
        }
    }

    /// The machine, woken if it was parked.
    pub(super) fn awake(&mut self) -> &mut Conn {
        self.awake
            .get_or_insert_with(|| self.parked.wake(take_spare()))
    }

    #[cfg(test)]
    pub(super) fn is_parked(&self) -> bool {
        self.awake.is_none()
    }

    /// Parks the machine if it is idle ([`Conn::park`]); its box goes to the free list.
    pub(super) fn park(&mut self) {
        if let Some(conn) = &mut self.awake
            && conn.park(&mut self.parked)
            && let Some(conn) = self.awake.take()
        {
            give_spare(conn);
        }
    }

    /// The connection is gone: its machine goes to the free list, emptied.
    pub(super) fn retire(&mut self) {
        if let Some(mut conn) = self.awake.take() {
            conn.retire();
            give_spare(conn);
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.awake {
            Some(conn) => conn.deadline(),
            None => Some(self.parked.deadline()),
        }
    }

    pub(super) fn wants_client_read(&self) -> bool {
        self.awake.as_ref().is_none_or(|c| c.wants_client_read())
    }

    pub(super) fn wants_upstream_read(&self) -> bool {
        self.awake.as_ref().is_some_and(|c| c.wants_upstream_read())
    }

    pub(super) fn peer_addr(&self) -> SocketAddr {
        match &self.awake {
            Some(conn) => conn.peer_addr(),
            None => self.parked.peer_addr(),
        }
    }

    /// As [`Conn::client_addr`]; parked, the peer (the next request works it out again).
    pub(super) fn client_addr(&self) -> IpAddr {
        match &self.awake {
            Some(conn) => conn.client_addr(),
            None => self.parked.peer_addr().ip().to_canonical(),
        }
    }

    /// As [`Conn::upstream_tls_host`]; parked, none (a parked machine has no upstream).
    pub(super) fn upstream_tls_host(&self) -> &str {
        self.awake.as_ref().map_or("", |c| c.upstream_tls_host())
    }

    pub(super) fn request_record(&self) -> &RequestRecord {
        match &self.awake {
            Some(conn) => conn.request_record(),
            None => &NO_REQUEST,
        }
    }

    pub(super) fn set_proxied(&mut self, source: SocketAddr) {
        match &mut self.awake {
            Some(conn) => conn.set_proxied(source),
            None => self.parked.set_proxied(source),
        }
    }

    /// A parked machine has nothing to ask for.
    pub(super) fn poll_action(&mut self) -> Option<Action> {
        self.awake.as_mut()?.poll_action()
    }

    pub(super) fn take_client_output(&mut self) -> Option<Vec<u8>> {
        self.awake.as_mut()?.take_client_output()
    }

    /// As [`Conn::new_hold`]; a parked machine holds nothing.
    pub(super) fn new_hold(&mut self) -> Option<Instant> {
        self.awake.as_mut()?.new_hold()
    }

    /// As [`Conn::holding`]; a parked machine holds nothing.
    pub(super) fn holding(&self) -> bool {
        self.awake.as_ref().is_some_and(|c| c.holding())
    }

    /// As [`Conn::hold_expired`]; a parked machine holds nothing.
    pub(super) fn hold_expired(&mut self, now: Instant) -> bool {
        self.awake.as_mut().is_some_and(|c| c.hold_expired(now))
    }

    pub(super) fn take_upstream_output(&mut self) -> Option<Vec<u8>> {
        self.awake.as_mut()?.take_upstream_output()
    }

    pub(super) fn begin_shutdown(&mut self, now: Instant) {
        self.awake().begin_shutdown(now);
    }

    pub(super) fn client_data(&mut self, data: &[u8], now: Instant, router: &mut dyn Router) {
        self.awake().client_data(data, now, router);
    }

    pub(super) fn client_eof(&mut self, now: Instant, router: &mut dyn Router) {
        self.awake().client_eof(now, router);
    }

    pub(super) fn client_error(&mut self, now: Instant) {
        self.awake().client_error(now);
    }

    pub(super) fn client_sent(
        &mut self,
        buf: Vec<u8>,
        written: usize,
        now: Instant,
        router: &mut dyn Router,
    ) {
        self.awake().client_sent(buf, written, now, router);
    }

    pub(super) fn upstream_connected(&mut self, now: Instant, reused: bool, r: &mut dyn Router) {
        self.awake().upstream_connected(now, reused, r);
    }

    pub(super) fn upstream_connect_failed(&mut self, now: Instant, router: &mut dyn Router) {
        self.awake().upstream_connect_failed(now, router);
    }

    pub(super) fn upstream_data(&mut self, data: &[u8], now: Instant, router: &mut dyn Router) {
        self.awake().upstream_data(data, now, router);
    }

    /// As [`Conn::passable`]; a parked machine has no response.
    pub(super) fn passable(&self) -> Option<u64> {
        self.awake.as_ref()?.passable()
    }

    pub(super) fn pass_ready(&self) -> bool {
        self.awake.as_ref().is_some_and(|c| c.pass_ready())
    }

    pub(super) fn passed(&mut self, n: u64, now: Instant, router: &mut dyn Router) {
        self.awake().passed(n, now, router);
    }

    pub(super) fn upstream_eof(&mut self, now: Instant, router: &mut dyn Router) {
        self.awake().upstream_eof(now, router);
    }

    pub(super) fn upstream_error(&mut self, now: Instant, router: &mut dyn Router) {
        self.awake().upstream_error(now, router);
    }

    pub(super) fn upstream_sent(
        &mut self,
        buf: Vec<u8>,
        written: usize,
        now: Instant,
        router: &mut dyn Router,
    ) {
        self.awake().upstream_sent(buf, written, now, router);
    }

    pub(super) fn timer(&mut self, now: Instant, router: &mut dyn Router) {
        self.awake().timer(now, router);
    }
}
