//! Side exchanges of the per-core driver: the `auth-url` subrequest a connection machine
//! waits for, and the `mirror-target` copies nobody waits for. Each is one more upstream
//! connection of the worker (`Connection: close`, never pooled), driven by the same
//! non-blocking transport events as any other: the worker never waits for one.
//!
//! Bounds: an auth exchange lives at most as long as its client's wait (the machine's
//! deadline cancels it); mirrors in flight are capped per worker (past the cap a copy is
//! dropped and counted) and each has a deadline of its own. Answers of auth services are
//! cached per worker when the route says so ([`AuthCache`], bounded).

use super::{Driver, Owner, Sent, Transport};
use crate::core::conn::{AuthCall, MirrorCall};
use crate::core::route::ext_auth::{
    AuthCache, AuthDecision, AuthReply, ReplyProgress, ReplyReader,
};
use crate::core::time::Instant;
use crate::core::upstream::SnapshotRouter;
use crate::engine::metrics::WorkerMetrics;

/// Mirror copies in flight per worker; past this a copy is dropped (and counted).
pub const MAX_MIRRORS_IN_FLIGHT: usize = 64;

/// Cached auth answers per worker.
pub const AUTH_CACHE_ENTRIES: usize = 10_000;

/// What a side connection is for.
enum Purpose {
    /// The client in `slot`/`generation` waits for the answer.
    Auth {
        slot: usize,
        generation: u32,
        call: Box<AuthCall>,
        reader: ReplyReader,
    },
    /// Nobody waits; the answer is discarded. Closed at `deadline` at the latest.
    Mirror { deadline: Instant },
}

pub(super) struct Side {
    sock: usize,
    connected: bool,
    /// Its read interest is on (set once connected).
    reading: bool,
    /// Finished: waiting in [`Sides::finished`] to be closed; later events are ignored.
    done: bool,
    /// What is still to be written.
    out: Vec<u8>,
    sending: bool,
    purpose: Purpose,
}

/// The driver's side exchanges and what they share.
pub(super) struct Sides {
    slab: super::Slab<Side>,
    cache: AuthCache,
    mirrors: usize,
    /// The earliest mirror deadline (scanned for only when it is due).
    mirror_expiry: Option<Instant>,
    /// Finished side connections and their answers, for the next drive (events come
    /// without the transport; closing needs it).
    finished: Vec<(usize, Option<AuthReply>)>,
    /// Side connections that may write now.
    touched: Vec<usize>,
}

impl Default for Sides {
    fn default() -> Self {
        Sides {
            slab: super::Slab::default(),
            cache: AuthCache::new(AUTH_CACHE_ENTRIES),
            mirrors: 0,
            mirror_expiry: None,
            finished: Vec::new(),
            touched: Vec::new(),
        }
    }
}

impl Sides {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.mirror_expiry
    }

    pub(super) fn has_work(&self) -> bool {
        !self.finished.is_empty() || !self.touched.is_empty()
    }

    /// Marks side `si` finished with `reply`.
    fn finish(&mut self, si: usize, reply: Option<AuthReply>) {
        if let Some(side) = self.slab.get_any(si)
            && !side.done
        {
            side.done = true;
            self.finished.push((si, reply));
        }
    }
}

fn side_owner(slot: usize, generation: u32) -> Owner {
    Owner::Side {
        slot: slot as u32,
        generation,
    }
}

impl Driver {
    /// [`crate::core::conn::Action::Authorize`] from the client in `slot`.
    pub(super) fn authorize<T: Transport>(
        &mut self,
        t: &mut T,
        slot: usize,
        call: Box<AuthCall>,
        now: Instant,
    ) {
        if let Some(key) = &call.cache_key
            && let Some(decision) = self.sides.cache.get(key, now).cloned()
        {
            WorkerMetrics::add(&self.setup.metrics.auth_cache_hits, 1);
            self.deliver(slot, self.clients.generation(slot), decision, now);
            return;
        }
        WorkerMetrics::add(&self.setup.metrics.auth_requests, 1);
        let generation = self.clients.generation(slot);
        let endpoint = call.endpoint;
        let out = call.request.clone();
        let purpose = Purpose::Auth {
            slot,
            generation,
            call,
            reader: ReplyReader::default(),
        };
        match self.open_side(t, endpoint, out, purpose) {
            Some(si) => {
                if let Some(client) = self.clients.get_any(slot) {
                    client.auth_side = Some(si);
                }
            }
            None => self.deliver(slot, generation, AuthDecision::Error, now),
        }
    }

    /// [`crate::core::conn::Action::CancelAuth`] from the client in `slot`.
    pub(super) fn cancel_auth<T: Transport>(&mut self, t: &mut T, slot: usize) {
        if let Some(si) = self.clients.get_any(slot).and_then(|c| c.auth_side.take()) {
            self.close_side(t, si);
        }
    }

    /// [`crate::core::conn::Action::Mirror`]: sent unless too many are in flight.
    #[allow(clippy::boxed_local)] // the action carries it boxed
    pub(super) fn mirror<T: Transport>(&mut self, t: &mut T, call: Box<MirrorCall>, now: Instant) {
        let call = *call;
        let m = &self.setup.metrics;
        let Some(request) = call.request else {
            WorkerMetrics::add(&m.mirror_dropped, 1);
            return;
        };
        if self.sides.mirrors >= MAX_MIRRORS_IN_FLIGHT {
            WorkerMetrics::add(&m.mirror_dropped, 1);
            return;
        }
        let timeouts = &self.setup.conn.timeouts;
        let deadline = now + timeouts.upstream_connect + timeouts.upstream_response;
        if self
            .open_side(t, call.endpoint, request, Purpose::Mirror { deadline })
            .is_some()
        {
            WorkerMetrics::add(&self.setup.metrics.mirror_sent, 1);
            self.sides.mirrors += 1;
            self.sides.mirror_expiry = Some(
                self.sides
                    .mirror_expiry
                    .map_or(deadline, |e| e.min(deadline)),
            );
        } else {
            WorkerMetrics::add(&self.setup.metrics.mirror_dropped, 1);
        }
    }

    fn open_side<T: Transport>(
        &mut self,
        t: &mut T,
        endpoint: std::net::SocketAddr,
        out: Vec<u8>,
        purpose: Purpose,
    ) -> Option<usize> {
        let si = self.sides.slab.insert(|_| Side {
            sock: usize::MAX,
            connected: false,
            reading: false,
            done: false,
            out,
            sending: false,
            purpose,
        });
        match t.connect(endpoint, side_owner(si, self.sides.slab.generation(si))) {
            Ok(sock) => {
                if let Some(side) = self.sides.slab.get_any(si) {
                    side.sock = sock;
                }
                Some(si)
            }
            Err(_) => {
                WorkerMetrics::add(&self.setup.metrics.upstream_connect_errors, 1);
                self.sides.slab.remove(si);
                None
            }
        }
    }

    /// Closes a side connection (no event for it follows).
    fn close_side<T: Transport>(&mut self, t: &mut T, si: usize) {
        let Some(side) = self.sides.slab.remove(si) else {
            return;
        };
        if let Purpose::Mirror { .. } = side.purpose {
            self.sides.mirrors -= 1;
        }
        if side.sock != usize::MAX {
            t.close(side.sock, None);
        }
    }

    /// Hands `decision` to the client in `slot` if it is still the one that asked.
    fn deliver(&mut self, slot: usize, generation: u32, decision: AuthDecision, now: Instant) {
        let mut router = SnapshotRouter::new(&self.snapshot, &mut self.picker);
        if let Some(client) = self.clients.get(slot, generation) {
            client.auth_side = None;
            client.conn.awake().auth_done(decision, now, &mut router);
            self.touched.push(slot);
        }
    }

    /// The side connection ends with `reply` (`None`: no usable answer).
    fn side_done<T: Transport>(
        &mut self,
        t: &mut T,
        si: usize,
        reply: Option<AuthReply>,
        now: Instant,
    ) {
        let Some(side) = self.sides.slab.remove(si) else {
            return;
        };
        if side.sock != usize::MAX {
            t.close(side.sock, None);
        }
        match side.purpose {
            Purpose::Mirror { .. } => self.sides.mirrors -= 1,
            Purpose::Auth {
                slot,
                generation,
                call,
                ..
            } => {
                let decision = call.auth.decide(reply.as_ref());
                if reply.is_none() {
                    WorkerMetrics::add(&self.setup.metrics.auth_errors, 1);
                }
                if let (Some(key), Some(rule), Some(reply)) =
                    (call.cache_key, call.auth.cache.as_ref(), &reply)
                {
                    self.sides
                        .cache
                        .put(rule, key, reply.status, &decision, now);
                }
                self.deliver(slot, generation, decision, now);
            }
        }
    }

    /// Writes what a side connection still has to send (one send in flight at most).
    fn side_output<T: Transport>(&mut self, t: &mut T, si: usize, now: Instant) {
        for _ in 0..super::MAX_ROUNDS {
            let Some(side) = self.sides.slab.get_any(si) else {
                return;
            };
            if !side.connected || side.sending || side.out.is_empty() {
                return;
            }
            let buf = std::mem::take(&mut side.out);
            match t.send(side.sock, buf) {
                Sent::Pending => {
                    side.sending = true;
                    return;
                }
                Sent::Done {
                    mut buf,
                    written,
                    closed,
                } => {
                    buf.drain(..written.min(buf.len()));
                    side.out = buf;
                    if closed {
                        self.side_done(t, si, None, now);
                        return;
                    }
                    if written == 0 {
                        return; // no room now: a later touch goes on
                    }
                }
            }
        }
    }

    /// Finishes what side events left for the transport: closes finished side connections
    /// (handing auth answers to their clients) and writes what others may write now.
    pub(super) fn drive_sides<T: Transport>(&mut self, t: &mut T, now: Instant) {
        for (si, reply) in std::mem::take(&mut self.sides.finished) {
            self.side_done(t, si, reply, now);
        }
        for si in std::mem::take(&mut self.sides.touched) {
            let Some(side) = self.sides.slab.get_any(si) else {
                continue;
            };
            if side.done || !side.connected {
                continue;
            }
            if !side.reading {
                side.reading = true;
                t.set_read(side.sock, true);
            }
            self.side_output(t, si, now);
        }
    }

    /// Transport events of side connections, dispatched from the driver's own.
    pub(super) fn side_connected(&mut self, slot: u32, generation: u32, ok: bool) {
        let si = slot as usize;
        let Some(side) = self.sides.slab.get(si, generation) else {
            return;
        };
        if ok {
            side.connected = true;
            self.sides.touched.push(si);
        } else {
            WorkerMetrics::add(&self.setup.metrics.upstream_connect_errors, 1);
            self.sides.finish(si, None);
        }
    }

    pub(super) fn side_received(&mut self, slot: u32, generation: u32, data: &[u8]) {
        let si = slot as usize;
        let Some(side) = self.sides.slab.get(si, generation) else {
            return;
        };
        if side.done {
            return;
        }
        let progress = match &mut side.purpose {
            // The answer of a mirror is not wanted: its first bytes end the exchange.
            Purpose::Mirror { .. } => ReplyProgress::Bad,
            Purpose::Auth { reader, .. } => reader.feed(data),
        };
        match progress {
            ReplyProgress::NeedMore => {}
            ReplyProgress::Done(reply) => self.sides.finish(si, Some(reply)),
            ReplyProgress::Bad => self.sides.finish(si, None),
        }
    }

    pub(super) fn side_ended(&mut self, slot: u32, generation: u32) {
        if self.sides.slab.get(slot as usize, generation).is_some() {
            self.sides.finish(slot as usize, None);
        }
    }

    pub(super) fn side_sent(
        &mut self,
        slot: u32,
        generation: u32,
        mut buf: Vec<u8>,
        written: Option<usize>,
    ) {
        let si = slot as usize;
        let Some(side) = self.sides.slab.get(si, generation) else {
            return;
        };
        side.sending = false;
        let Some(written) = written else {
            self.sides.finish(si, None);
            return;
        };
        buf.drain(..written.min(buf.len()));
        buf.extend_from_slice(&side.out);
        side.out = buf;
        self.sides.touched.push(si);
    }

    pub(super) fn side_touch(&mut self, slot: u32, generation: u32) {
        if self.sides.slab.get(slot as usize, generation).is_some() {
            self.sides.touched.push(slot as usize);
        }
    }

    /// Closes mirrors past their deadline.
    pub(super) fn expire_mirrors<T: Transport>(&mut self, t: &mut T, now: Instant) {
        if self.sides.mirror_expiry.is_none_or(|at| now < at) {
            return;
        }
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for si in 0..self.sides.slab.capacity() {
            if let Some(Side {
                purpose: Purpose::Mirror { deadline },
                ..
            }) = self.sides.slab.peek(si)
            {
                if *deadline <= now {
                    expired.push(si);
                } else {
                    next = Some(next.map_or(*deadline, |n| n.min(*deadline)));
                }
            }
        }
        self.sides.mirror_expiry = next;
        for si in expired {
            self.close_side(t, si);
        }
    }

    /// At the end: closes every side connection (mirrors still in flight).
    pub(super) fn close_sides<T: Transport>(&mut self, t: &mut T) {
        for si in 0..self.sides.slab.capacity() {
            self.close_side(t, si);
        }
    }

    /// Side connections open now (for tests and the route dump).
    pub fn side_count(&self) -> usize {
        self.sides.slab.len()
    }
}

#[cfg(test)]
mod tests;
