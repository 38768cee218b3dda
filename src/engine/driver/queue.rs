//! Requests waiting for an upstream connection to a capped endpoint
//! (`[upstream] max_connections_per_endpoint`, per worker): HAProxy's per-server `maxconn`
//! and its queue. When every connection the cap allows to a pool key is in use, a request
//! that needs one waits here, first come first served, instead of opening another (a burst
//! of 10,000 clients otherwise opens 10,000 connections to one pod, overflows its accept
//! queue and turns into 502s). A connection released to that key goes to the first waiter.
//!
//! An entry names its client by slot, generation and a ticket, and the queue keeps each
//! waiting client's ticket beside. A client that stops waiting (its machine gave up: the
//! connect timeout, which waiting counts towards; or it closed) loses its ticket, so its
//! entry can never be handed a connection: it is skipped when reached, and stale entries are
//! dropped in bulk once they outnumber the live ones (the queue stays within about twice
//! the waiters).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use super::upstream_tls::PoolKey;
use crate::core::route::upstream_tls::UpstreamTls;

/// What a waiting client asked for (its `Action::Connect`), and who it is.
pub(super) struct Waiter {
    pub slot: usize,
    pub generation: u32,
    pub endpoint: SocketAddr,
    pub fresh: bool,
    pub tls: Option<Arc<UpstreamTls>>,
}

/// A wait as its client holds it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ticket {
    key: PoolKey,
    generation: u32,
    number: u64,
}

/// One key's waiters in arrival order (with their ticket numbers), and how many still wait.
#[derive(Default)]
struct Line {
    waiters: VecDeque<(u64, Waiter)>,
    live: usize,
}

/// The waiting requests of one worker, per pool key.
#[derive(Default)]
pub(super) struct Queues {
    by_key: HashMap<PoolKey, Line>,
    /// The wait of each waiting client, by slot.
    by_client: HashMap<usize, Ticket>,
    next_ticket: u64,
}

/// Stale entries tolerated beyond the live ones before a line is compacted.
const SLACK: usize = 16;

impl Queues {
    /// Clients still waiting for `key`.
    pub fn waiting(&self, key: PoolKey) -> usize {
        self.by_key.get(&key).map_or(0, |l| l.live)
    }

    /// Whether client `slot` waits (tests).
    #[cfg(test)]
    pub fn is_waiting(&self, slot: usize) -> bool {
        self.by_client.contains_key(&slot)
    }

    /// `waiter` waits for `key`, at the back (a wait it had before is given up).
    pub fn push(&mut self, key: PoolKey, waiter: Waiter) {
        self.leave(waiter.slot);
        self.next_ticket += 1;
        let ticket = Ticket {
            key,
            generation: waiter.generation,
            number: self.next_ticket,
        };
        self.by_client.insert(waiter.slot, ticket);
        let line = self.by_key.entry(key).or_default();
        line.waiters.push_back((ticket.number, waiter));
        line.live += 1;
        if line.waiters.len() > 2 * line.live + SLACK {
            let by_client = &self.by_client;
            line.waiters
                .retain(|(number, w)| holds(by_client, key, *number, w));
        }
    }

    /// Client `slot` stops waiting without being served (its entry goes stale). False when
    /// it was not waiting.
    pub fn leave(&mut self, slot: usize) -> bool {
        if self.by_client.is_empty() {
            // Nobody waits (always, without a cap): no lookup on every release and close.
            return false;
        }
        let Some(ticket) = self.by_client.remove(&slot) else {
            return false;
        };
        if let Some(line) = self.by_key.get_mut(&ticket.key) {
            line.live = line.live.saturating_sub(1);
            if line.live == 0 {
                // Only stale entries are left.
                self.by_key.remove(&ticket.key);
            }
        }
        true
    }

    /// The first client still waiting for `key`, taken out of the queue.
    pub fn pop(&mut self, key: PoolKey) -> Option<Waiter> {
        let line = self.by_key.get_mut(&key)?;
        let mut found = None;
        while let Some((number, w)) = line.waiters.pop_front() {
            if holds(&self.by_client, key, number, &w) {
                self.by_client.remove(&w.slot);
                line.live = line.live.saturating_sub(1);
                found = Some(w);
                break;
            }
        }
        if line.live == 0 || line.waiters.is_empty() {
            self.by_key.remove(&key);
        }
        found
    }

    /// Entries held for `key`, live or stale (tests).
    #[cfg(test)]
    pub fn entries(&self, key: PoolKey) -> usize {
        self.by_key.get(&key).map_or(0, |l| l.waiters.len())
    }
}

/// Whether entry `number` of `w` for `key` is still its client's wait (not one it gave up,
/// nor one of an earlier connection in the same slot).
fn holds(by_client: &HashMap<usize, Ticket>, key: PoolKey, number: u64, w: &Waiter) -> bool {
    by_client.get(&w.slot)
        == Some(&Ticket {
            key,
            generation: w.generation,
            number,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PoolKey {
        PoolKey {
            endpoint: "10.0.0.1:80".parse().unwrap(),
            tls: 0,
        }
    }

    fn waiter(slot: usize, generation: u32) -> Waiter {
        Waiter {
            slot,
            generation,
            endpoint: key().endpoint,
            fresh: false,
            tls: None,
        }
    }

    #[test]
    fn first_come_first_served_and_stale_entries_are_skipped() {
        let mut q = Queues::default();
        for slot in 1..=3 {
            q.push(key(), waiter(slot, 0));
        }
        assert!(q.leave(2), "slot 2 stops waiting");
        assert!(!q.leave(2));
        assert_eq!(q.waiting(key()), 2);
        // Its slot is reused and the new client waits too: at the back, not in 2's place.
        q.push(key(), waiter(2, 1));
        assert_eq!(q.pop(key()).map(|w| w.slot), Some(1));
        assert_eq!(
            q.pop(key()).map(|w| w.slot),
            Some(3),
            "2's old entry was skipped"
        );
        let w = q.pop(key()).expect("the newcomer");
        assert_eq!((w.slot, w.generation), (2, 1));
        assert!(q.pop(key()).is_none());
        assert!(!q.is_waiting(2));
        assert_eq!(q.entries(key()), 0);
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let mut q = Queues::default();
        // One client waits for ever; a thousand come and go behind it.
        q.push(key(), waiter(0, 0));
        for i in 1..1000u32 {
            q.push(key(), waiter(1, i));
            q.leave(1);
        }
        assert_eq!(q.waiting(key()), 1);
        assert!(q.entries(key()) <= 2 + SLACK + 1, "{}", q.entries(key()));
        assert_eq!(q.pop(key()).map(|w| w.slot), Some(0));
    }
}
