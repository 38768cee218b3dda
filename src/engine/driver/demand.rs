//! How many upstream connections to each endpoint a worker's requests have needed at once
//! lately: the keep-alive pool's size follows it.
//!
//! A fixed cap on idle connections per endpoint (ingress-nginx's `upstream-keepalive-
//! connections`, 320; ours `max_idle_per_endpoint`, 64) churns as soon as more requests than
//! the cap are in flight to one endpoint: a burst of responses releases more connections than
//! the pool keeps, they are closed, and the next burst of requests opens them again (a
//! connect, a TIME_WAIT socket and the pod's accept for each; at 1,000 and 10,000 client
//! connections nearly every request paid one). HAProxy keeps every idle connection and purges
//! the excess slowly; this keeps as many idle as the endpoint's recent peak of connections in
//! use (the peak of this window or the one before, [`WINDOW`] each), never fewer than the
//! configured cap. When demand falls, the surplus is no longer pooled as it is released, and
//! what is idle expires after the idle timeout as before. Sans-IO: time is passed in.

use std::collections::HashMap;
use std::time::Duration;

use super::upstream_tls::PoolKey;
use crate::core::time::Instant;

/// How long a peak of use counts: this window and the one before.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
struct Use {
    /// Connections to the key attached to a client now (connecting or exchanging).
    in_use: u32,
    /// The most in use at once in the current window, and in the one before.
    peak: u32,
    previous: u32,
    since: Instant,
}

/// Connections in use per pool key, and their recent peaks.
#[derive(Debug, Default)]
pub struct Demand {
    by_key: HashMap<PoolKey, Use>,
}

impl Demand {
    /// A connection to `key` was attached to a client (taken from the pool or connected).
    pub fn attach(&mut self, key: PoolKey, now: Instant) {
        let u = self.by_key.entry(key).or_insert(Use {
            in_use: 0,
            peak: 0,
            previous: 0,
            since: now,
        });
        roll(u, now);
        u.in_use += 1;
        u.peak = u.peak.max(u.in_use);
    }

    /// A connection to `key` stopped serving a client (released or closed).
    pub fn detach(&mut self, key: PoolKey) {
        if let Some(u) = self.by_key.get_mut(&key) {
            u.in_use = u.in_use.saturating_sub(1);
        }
    }

    /// [`Demand::detach`] for a connection being released, and how many idle connections to
    /// `key` the pool keeps for it: the most in use at once lately (one look-up for both).
    pub fn release(&mut self, key: PoolKey, now: Instant) -> usize {
        self.by_key.get_mut(&key).map_or(0, |u| {
            u.in_use = u.in_use.saturating_sub(1);
            roll(u, now);
            u.peak.max(u.previous) as usize
        })
    }

    /// The most connections to `key` in use at once lately (this window and the last).
    #[cfg(test)]
    pub fn recent_peak(&mut self, key: PoolKey, now: Instant) -> usize {
        self.by_key.get_mut(&key).map_or(0, |u| {
            roll(u, now);
            u.peak.max(u.previous) as usize
        })
    }

    /// Forgets the keys `keep` refuses that have nothing in use (endpoints gone).
    pub fn retain(&mut self, keep: impl Fn(&PoolKey) -> bool) {
        self.by_key.retain(|k, u| u.in_use > 0 || keep(k));
    }

    /// Connections to `key` attached to a client now (connecting, handshaking or exchanging):
    /// what `max_connections_per_endpoint` caps.
    pub fn in_use(&self, key: PoolKey) -> u32 {
        self.by_key.get(&key).map_or(0, |u| u.in_use)
    }
}

/// Starts a new window when the current one is over (two windows ago counts for nothing).
fn roll(u: &mut Use, now: Instant) {
    let age = now.saturating_since(u.since);
    if age < WINDOW {
        return;
    }
    u.previous = if age < 2 * WINDOW { u.peak } else { 0 };
    u.peak = u.in_use;
    u.since = now;
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

    #[test]
    fn the_peak_outlives_a_burst_of_releases_for_two_windows() {
        let mut d = Demand::default();
        let t0 = Instant::from_nanos(1_000_000_000);
        for _ in 0..8 {
            d.attach(key(), t0);
        }
        for _ in 0..8 {
            // Every release of the burst still sees the peak of 8.
            assert_eq!(d.release(key(), t0), 8);
        }
        assert_eq!(d.in_use(key()), 0);
        // The next window remembers it; the one after does not.
        assert_eq!(d.recent_peak(key(), t0 + WINDOW), 8);
        assert_eq!(d.recent_peak(key(), t0 + WINDOW * 2), 0);
        // Long idle: both windows are forgotten at once.
        d.attach(key(), t0 + WINDOW * 2);
        d.detach(key());
        assert_eq!(d.recent_peak(key(), t0 + WINDOW * 10), 0);
    }

    #[test]
    fn unknown_keys_need_nothing_and_gone_keys_are_forgotten() {
        let mut d = Demand::default();
        let t0 = Instant::from_nanos(1);
        assert_eq!(d.recent_peak(key(), t0), 0);
        d.detach(key());
        d.attach(key(), t0);
        d.retain(|_| false);
        assert_eq!(d.in_use(key()), 1, "a key in use is kept");
        d.detach(key());
        d.retain(|_| false);
        assert_eq!(d.recent_peak(key(), t0), 0);
    }
}
