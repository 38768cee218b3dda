//! Request-rate and concurrency limits of a route (`limit-rps`, `limit-rpm`,
//! `limit-connections`, `limit-burst-multiplier`, `limit-whitelist`), keyed by client address.
//!
//! Node-wide, as ingress-nginx documents it: nginx keeps `limit_req` / `limit_conn` zones in
//! shared memory, so one client's limit holds across all worker processes. Here every worker
//! holds the same [`RateLimits`] (it lives in the route's policy, in the snapshot's `Arc`), so
//! the limit is per node, not per core, and it is never split between cores.
//!
//! State is a fixed table of atomics per limited Ingress, never a lock:
//! * a rate is a GCRA ("generic cell rate algorithm"): one `AtomicU64` per slot holds the
//!   client's theoretical arrival time (TAT, in the engine's nanoseconds), updated with a
//!   compare-and-swap. With the rate's interval `T` and a burst of `b` requests, a request is
//!   admitted when `max(TAT, now) - now <= b·T`, which lets `b + 1` requests through at once
//!   and then one per `T` — nginx's `limit_req … burst=b nodelay`;
//! * concurrency is one `AtomicU32` per slot counting the client's requests in flight on the
//!   routes of this Ingress (nginx's `limit_conn` counts a connection only while a request of
//!   it is processed); a [`ConnTicket`] gives its unit back when dropped.
//!
//! A client address picks its slot by a keyed hash (a random key per table, so a client
//! cannot aim at another's slot). Two clients sharing a slot share one budget: a collision
//! only ever makes the limit stricter for that pair, never looser.
//!
//! What resets the state: it belongs to one compiled policy. Publications that do not
//! recompile the Ingress's hosts keep it (the route table shares unchanged hosts, and a table
//! that routes alike keeps the old rules); recompiling them (a change to one of those hosts'
//! Ingresses, or a full compile) starts from empty counters, as an nginx reload does.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::request_policy::CidrSet;
use crate::core::time::Instant;

/// Slots per limited Ingress and kind of limit (rps, rpm, connections): 128 KiB per rate.
pub const SLOTS: usize = 16 * 1024;

/// ingress-nginx's default `limit-burst-multiplier`.
pub const DEFAULT_BURST_MULTIPLIER: u32 = 5;

/// One request rate: `per_interval` requests per `interval_nanos`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second (`limit-rps`) or per minute (`limit-rpm`).
    pub count: u32,
    /// 1 s or 60 s, in nanoseconds.
    pub window_nanos: u64,
}

impl Rate {
    pub fn per_second(count: u32) -> Rate {
        Rate {
            count,
            window_nanos: 1_000_000_000,
        }
    }

    pub fn per_minute(count: u32) -> Rate {
        Rate {
            count,
            window_nanos: 60_000_000_000,
        }
    }

    /// Time between two requests at this rate (at least 1 ns).
    fn interval(&self) -> u64 {
        (self.window_nanos / u64::from(self.count.max(1))).max(1)
    }
}

/// The limits of one Ingress, with their shared state.
#[derive(Clone, Debug)]
pub struct RateLimits {
    pub rps: Option<Rate>,
    pub rpm: Option<Rate>,
    /// Requests in flight per client address.
    pub connections: Option<u32>,
    /// Burst = rate × this (nginx `burst=`), `limit-burst-multiplier`.
    pub burst_multiplier: u32,
    /// `limit-whitelist`: addresses never limited.
    pub whitelist: Option<CidrSet>,
    state: Arc<State>,
}

/// Two policies compare by their settings (tables compare by routing), not their counters.
impl PartialEq for RateLimits {
    fn eq(&self, other: &Self) -> bool {
        self.rps == other.rps
            && self.rpm == other.rpm
            && self.connections == other.connections
            && self.burst_multiplier == other.burst_multiplier
            && self.whitelist == other.whitelist
    }
}

impl Eq for RateLimits {}

#[derive(Debug)]
struct State {
    key: RandomState,
    rps: Box<[AtomicU64]>,
    rpm: Box<[AtomicU64]>,
    conns: Box<[AtomicU32]>,
}

fn table<T: Default>(on: bool) -> Box<[T]> {
    if on {
        (0..SLOTS).map(|_| T::default()).collect()
    } else {
        Box::new([])
    }
}

/// Why a request was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Limited {
    /// `limit-rps` or `limit-rpm` exceeded.
    Rate,
    /// `limit-connections` exceeded.
    Connections,
}

/// One unit of a client's `limit-connections` budget, given back when dropped (when the
/// request is over).
#[derive(Debug)]
pub struct ConnTicket {
    state: Arc<State>,
    slot: usize,
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        if let Some(counter) = self.state.conns.get(self.slot) {
            counter.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl RateLimits {
    /// Limits with empty counters; `None` when no limit is set.
    pub fn new(
        rps: Option<Rate>,
        rpm: Option<Rate>,
        connections: Option<u32>,
        burst_multiplier: u32,
        whitelist: Option<CidrSet>,
    ) -> Option<RateLimits> {
        let rps = rps.filter(|r| r.count > 0);
        let rpm = rpm.filter(|r| r.count > 0);
        let connections = connections.filter(|c| *c > 0);
        if rps.is_none() && rpm.is_none() && connections.is_none() {
            return None;
        }
        let state = Arc::new(State {
            key: RandomState::new(),
            rps: table(rps.is_some()),
            rpm: table(rpm.is_some()),
            conns: table(connections.is_some()),
        });
        Some(RateLimits {
            rps,
            rpm,
            connections,
            burst_multiplier: burst_multiplier.max(1),
            whitelist,
            state,
        })
    }

    fn slot(&self, client: IpAddr) -> usize {
        let canonical = match client.to_canonical() {
            IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
            IpAddr::V6(v6) => u128::from(v6),
        };
        (self.state.key.hash_one(canonical) as usize) % SLOTS
    }

    /// Admits a request of `client` at `now`, or says which limit refuses it. `Ok(Some)`:
    /// hold the ticket while the request is in flight.
    pub fn admit(&self, client: IpAddr, now: Instant) -> Result<Option<ConnTicket>, Limited> {
        if self.whitelist.as_ref().is_some_and(|w| w.contains(client)) {
            return Ok(None);
        }
        let slot = self.slot(client);
        // The connection count first: a refused request must not spend rate budget.
        let ticket = match self.connections {
            Some(max) => {
                let counter = &self.state.conns[slot];
                if counter.fetch_add(1, Ordering::AcqRel) >= max {
                    counter.fetch_sub(1, Ordering::AcqRel);
                    return Err(Limited::Connections);
                }
                Some(ConnTicket {
                    state: self.state.clone(),
                    slot,
                })
            }
            None => None,
        };
        // Each cell is checked and spent in one compare-and-swap. When rps admits and rpm
        // refuses, the rps unit stays spent: stricter, never looser.
        let now = now.as_nanos();
        for (rate, cells) in [(self.rps, &self.state.rps), (self.rpm, &self.state.rpm)] {
            if let Some(rate) = rate
                && !gcra_take(&cells[slot], rate, self.burst_multiplier, now)
            {
                return Err(Limited::Rate);
            }
        }
        Ok(ticket)
    }
}

fn tolerance(rate: Rate, multiplier: u32) -> u64 {
    let burst = u64::from(rate.count).saturating_mul(u64::from(multiplier));
    burst.saturating_mul(rate.interval())
}

/// Admits and spends one request at `now`, or refuses it (spending nothing). Lock-free:
/// retried only when another worker moved the same cell in between.
fn gcra_take(cell: &AtomicU64, rate: Rate, multiplier: u32, now: u64) -> bool {
    let interval = rate.interval();
    let tolerance = tolerance(rate, multiplier);
    let mut seen = cell.load(Ordering::Acquire);
    loop {
        let tat = seen.max(now);
        if tat - now > tolerance {
            return false;
        }
        match cell.compare_exchange_weak(
            seen,
            tat.saturating_add(interval),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
            Err(actual) => seen = actual,
        }
    }
}

/// For the route dump.
impl fmt::Display for RateLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(r) = self.rps {
            parts.push(format!("limit-rps={}", r.count));
        }
        if let Some(r) = self.rpm {
            parts.push(format!("limit-rpm={}", r.count));
        }
        if let Some(c) = self.connections {
            parts.push(format!("limit-connections={c}"));
        }
        parts.push(format!("burst-multiplier={}", self.burst_multiplier));
        if let Some(w) = &self.whitelist {
            parts.push(format!("limit-whitelist={}ranges", w.len()));
        }
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::IpNet;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Instant {
        Instant::from_nanos(s * 1_000_000_000)
    }

    #[test]
    fn rps_lets_the_burst_through_then_the_rate() {
        let l = RateLimits::new(Some(Rate::per_second(2)), None, None, 3, None).unwrap();
        let t = secs(100);
        // burst = 2 × 3 = 6: 7 at once, then refused.
        for _ in 0..7 {
            assert!(l.admit(ip("10.0.0.1"), t).is_ok());
        }
        assert_eq!(l.admit(ip("10.0.0.1"), t).unwrap_err(), Limited::Rate);
        // Another client has its own budget.
        assert!(l.admit(ip("10.0.0.2"), t).is_ok());
        // Half a second later, one more (2 per second).
        let later = Instant::from_nanos(t.as_nanos() + 500_000_000);
        assert!(l.admit(ip("10.0.0.1"), later).is_ok());
        assert!(l.admit(ip("10.0.0.1"), later).is_err());
        // Refused requests did not spend anything: long after, the full burst again.
        for _ in 0..7 {
            assert!(l.admit(ip("10.0.0.1"), secs(200)).is_ok());
        }
    }

    #[test]
    fn rpm_and_whitelist() {
        let wl = CidrSet::new(&["10.9.0.0/16".parse::<IpNet>().unwrap()]);
        let l = RateLimits::new(None, Some(Rate::per_minute(1)), None, 1, Some(wl)).unwrap();
        assert!(l.admit(ip("10.0.0.1"), secs(10)).is_ok());
        assert!(l.admit(ip("10.0.0.1"), secs(10)).is_ok());
        assert!(l.admit(ip("10.0.0.1"), secs(11)).is_err());
        assert!(l.admit(ip("10.0.0.1"), secs(70)).is_ok());
        for _ in 0..100 {
            assert!(l.admit(ip("10.9.3.4"), secs(10)).is_ok());
        }
    }

    #[test]
    fn connections_are_given_back() {
        let l = RateLimits::new(None, None, Some(2), 5, None).unwrap();
        let a = l.admit(ip("::1"), secs(1)).unwrap();
        let b = l.admit(ip("::1"), secs(1)).unwrap();
        assert_eq!(
            l.admit(ip("::1"), secs(1)).unwrap_err(),
            Limited::Connections
        );
        drop(a);
        let c = l.admit(ip("::1"), secs(1)).unwrap();
        assert!(b.is_some() && c.is_some());
    }

    #[test]
    fn nothing_set_is_no_limit() {
        assert!(RateLimits::new(Some(Rate::per_second(0)), None, Some(0), 5, None).is_none());
    }
}
