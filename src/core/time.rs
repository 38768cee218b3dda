//! Caller-supplied monotonic time. The core never reads a clock: every entry point takes a
//! `now: Instant` and deadlines come back as `Instant`s for the engine to turn into timers.

use std::ops::Add;
use std::time::Duration;

/// A point on the engine's monotonic clock, in nanoseconds from an origin the engine chooses.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    pub const ZERO: Instant = Instant(0);

    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis.saturating_mul(1_000_000))
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_saturates_instead_of_wrapping() {
        let t = Instant::from_nanos(u64::MAX - 1) + Duration::from_secs(1);
        assert_eq!(t.as_nanos(), u64::MAX);
        assert_eq!(
            Instant::from_millis(5).saturating_since(Instant::from_millis(7)),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_millis(7).saturating_since(Instant::from_millis(5)),
            Duration::from_millis(2)
        );
    }
}
