//! Response bandwidth per connection (`limit-rate`, `limit-rate-after`): a sans-IO pacer that
//! says how many response bytes may be handed to the engine at a given time, and when to
//! come back when none may.
//!
//! Guarantees: the bytes handed out by `now` never exceed `after + rate × (now − start)`
//! (nginx's `limit_rate` / `limit_rate_after` budget, counted from the response head); the
//! pacer never blocks and never reads a clock. It asks to be woken for at least a twentieth
//! of a second's worth of bytes (or what is left), so a slow rate does not turn into one
//! send per byte.

use std::fmt;
use std::time::Duration;

use crate::core::time::Instant;

/// A route's response bandwidth limit.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LimitRate {
    /// Bytes per second (`limit-rate`, given in KiB/s as nginx's `k`).
    pub bytes_per_sec: u64,
    /// Bytes sent at full speed first (`limit-rate-after`, KiB).
    pub after: u64,
}

impl fmt::Display for LimitRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "limit-rate={}k", self.bytes_per_sec / 1024)?;
        if self.after > 0 {
            write!(f, " limit-rate-after={}k", self.after / 1024)?;
        }
        Ok(())
    }
}

/// Largest chunk waited for before waking (bytes).
const MAX_CHUNK: u64 = 16 * 1024;

/// The pacing state of one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pacer {
    limit: LimitRate,
    start: Instant,
    /// Bytes handed out since `start`.
    sent: u64,
    /// The time of the connection's last event: what [`Pacer::allowance_now`] reads (the
    /// engine takes output without passing a time).
    now: Instant,
}

impl Pacer {
    pub fn new(limit: LimitRate, start: Instant) -> Pacer {
        Pacer {
            limit,
            start,
            sent: 0,
            now: start,
        }
    }

    /// The connection had an event at `now`.
    pub fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// [`Pacer::allowance`] at the last [`Pacer::tick`].
    pub fn allowance_now(&self, pending: usize) -> Result<usize, Instant> {
        self.allowance(pending, self.now)
    }

    /// Bytes the budget allows by `now` (saturating).
    fn budget(&self, now: Instant) -> u64 {
        let nanos = u128::from(now.saturating_since(self.start).as_nanos() as u64);
        let earned = u128::from(self.limit.bytes_per_sec) * nanos / 1_000_000_000;
        u64::try_from(earned)
            .unwrap_or(u64::MAX)
            .saturating_add(self.limit.after)
    }

    /// How many of `pending` bytes may be handed out at `now`: `Ok(n)` with `n > 0`, or
    /// `Err(when)` to come back.
    pub fn allowance(&self, pending: usize, now: Instant) -> Result<usize, Instant> {
        let pending = pending as u64;
        let open = self.budget(now).saturating_sub(self.sent);
        let chunk = (self.limit.bytes_per_sec / 20)
            .clamp(1, MAX_CHUNK)
            .min(pending);
        if open >= chunk.max(1) {
            return Ok(usize::try_from(open.min(pending)).unwrap_or(usize::MAX));
        }
        // When the budget reaches `sent + chunk`.
        let need = self.sent.saturating_add(chunk.max(1));
        let earned = need.saturating_sub(self.limit.after);
        let rate = self.limit.bytes_per_sec.max(1);
        let nanos = (u128::from(earned) * 1_000_000_000).div_ceil(u128::from(rate));
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
        Err(self.start + Duration::from_nanos(nanos))
    }

    /// `n` bytes were handed out.
    pub fn record(&mut self, n: usize) {
        self.sent = self.sent.saturating_add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn the_budget_is_after_plus_rate_times_time() {
        let limit = LimitRate {
            bytes_per_sec: 10_000,
            after: 3_000,
        };
        let mut p = Pacer::new(limit, ms(1_000));
        // At the start, `after` bytes go at once.
        assert_eq!(p.allowance(100_000, ms(1_000)), Ok(3_000));
        p.record(3_000);
        // Then 10,000 bytes a second, woken for at least 500 bytes (a twentieth).
        assert_eq!(p.allowance(100_000, ms(1_000)), Err(ms(1_050)));
        assert_eq!(p.allowance(100_000, ms(1_050)), Ok(500));
        assert_eq!(p.allowance(100_000, ms(1_200)), Ok(2_000));
        p.record(2_000);
        // Less pending than a chunk: woken for what is left.
        assert_eq!(
            p.allowance(10, ms(1_200)),
            Err(Instant::from_nanos(1_201_000_000))
        );
        assert_eq!(p.allowance(10, ms(1_201)), Ok(10));
        // Never more than pending.
        assert_eq!(p.allowance(7, ms(9_000)), Ok(7));
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        let limit = LimitRate {
            bytes_per_sec: 1024,
            after: 0,
        };
        let mut p = Pacer::new(limit, ms(0));
        let mut now = ms(0);
        let mut total = 0u64;
        while total < 10 * 1024 {
            match p.allowance(1 << 20, now) {
                Ok(n) => {
                    p.record(n);
                    total += n as u64;
                }
                Err(at) => {
                    assert!(at > now);
                    now = at;
                }
            }
        }
        // 10 KiB at 1 KiB/s: ten seconds, give or take one chunk.
        let secs = now.saturating_since(ms(0)).as_secs_f64();
        assert!((9.9..=10.1).contains(&secs), "{secs}");
    }
}
