//! Passive health (outlier ejection), per worker: consecutive failures of an endpoint (no
//! connection, a connection broken before the response head, a timeout, an unparsable head,
//! a 5xx) eject it for a backoff that doubles with each ejection in a row, up to a cap. When
//! the backoff is over the endpoint is back in rotation on probation: one more failure ejects
//! it again (for longer), one success clears its record. Sans-IO: time is passed in.
//!
//! A panic threshold keeps a backend from losing its endpoints: when more of a backend's
//! endpoints are ejected than `max_ejected_percent` allows (at least one may always be), the
//! pickers ignore ejection for that backend and use them all — clients then see the
//! upstreams' own errors (502/504), never an empty rotation.
//!
//! State is by endpoint address and per worker (no sharing, no locks); it is advisory and
//! costs a pick nothing while no endpoint is ejected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::core::time::Instant;

/// The `[outlier]` section of the static config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    pub enabled: bool,
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// The first ejection's length; each ejection in a row doubles it.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// Of a backend's endpoints, at most this share (percent) is left out; at least one
    /// always may be. Beyond it, the backend's ejections are ignored (panic mode).
    pub max_ejected_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// What one worker knows of one endpoint's health.
#[derive(Clone, Copy, Debug, Default)]
struct Health {
    consecutive: u32,
    /// Ejections in a row without a success in between.
    ejections: u32,
    until: Option<Instant>,
}

/// One worker's passive health records.
#[derive(Clone, Debug, Default)]
pub struct Outliers {
    config: OutlierConfig,
    records: HashMap<SocketAddr, Health>,
    /// The endpoints ejected now (or until recently), with the end of their ejection: a
    /// short list, so that a pick checks it without hashing.
    ejected: Vec<(SocketAddr, Instant)>,
    /// The latest end of any ejection: while `now` is past it, nothing is ejected and picks
    /// skip every check.
    latest: Option<Instant>,
}

impl Outliers {
    pub fn new(config: OutlierConfig) -> Outliers {
        Outliers {
            config,
            records: HashMap::new(),
            ejected: Vec::new(),
            latest: None,
        }
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// An exchange with `ep` went well (a response head that is not a 5xx): its record is
    /// cleared, unless it is ejected (a request sent before the ejection).
    pub fn success(&mut self, ep: &SocketAddr, now: Instant) {
        // An endpoint that never failed (the common case) has no record: nothing to do.
        let Some(h) = self.records.get_mut(ep) else {
            return;
        };
        if h.until.is_some_and(|until| now < until) {
            h.consecutive = 0;
        } else {
            self.records.remove(ep);
        }
    }

    /// An exchange with `ep` failed. Returns true when this failure ejects it.
    pub fn failure(&mut self, ep: SocketAddr, now: Instant) -> bool {
        if !self.config.enabled || self.config.consecutive_failures == 0 {
            return false;
        }
        let c = self.config;
        let h = self.records.entry(ep).or_default();
        if h.until.is_some_and(|until| now < until) {
            // Already out (a request sent before the ejection failed too).
            return false;
        }
        h.consecutive = h.consecutive.saturating_add(1);
        // Back from an ejection, on probation: one failure is enough.
        let limit = if h.ejections > 0 {
            1
        } else {
            c.consecutive_failures
        };
        if h.consecutive < limit {
            return false;
        }
        let factor = 1u32 << h.ejections.min(16);
        let length = c.base_ejection.saturating_mul(factor).min(c.max_ejection);
        h.ejections = h.ejections.saturating_add(1);
        h.consecutive = 0;
        let until = now + length;
        h.until = Some(until);
        self.latest = Some(self.latest.map_or(until, |l| l.max(until)));
        self.ejected.retain(|(e, end)| *e != ep && now < *end);
        self.ejected.push((ep, until));
        true
    }

    /// Whether `ep` is ejected at `now`.
    pub fn is_ejected(&self, ep: &SocketAddr, now: Instant) -> bool {
        self.active(now)
            && self
                .ejected
                .iter()
                .any(|(e, until)| e == ep && now < *until)
    }

    /// Whether any endpoint may be ejected at `now` (cheap; false for a healthy worker).
    pub fn active(&self, now: Instant) -> bool {
        self.latest.is_some_and(|l| now < l)
    }

    /// Whether the pickers should skip the ejected ones among `endpoints` at `now`: some are
    /// ejected, and no more than the panic threshold allows.
    pub fn filters(&self, endpoints: &[SocketAddr], now: Instant) -> bool {
        if !self.active(now) || endpoints.len() < 2 {
            return false;
        }
        let ejected = self
            .ejected
            .iter()
            .filter(|(e, until)| now < *until && endpoints.contains(e))
            .count();
        let allowed = (endpoints.len() * usize::from(self.config.max_ejected_percent) / 100)
            .clamp(1, endpoints.len() - 1);
        ejected > 0 && ejected <= allowed
    }

    /// Forgets endpoints `keep` says are gone (snapshot swap).
    pub fn retain(&mut self, keep: impl Fn(&SocketAddr) -> bool) {
        self.records.retain(|ep, _| keep(ep));
        self.ejected.retain(|(ep, _)| keep(ep));
    }

    /// How many endpoints have a record (tests).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    fn at(secs: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(secs)
    }

    #[test]
    fn consecutive_failures_eject_with_a_growing_backoff() {
        let mut o = Outliers::new(OutlierConfig::default());
        for _ in 0..4 {
            assert!(!o.failure(ep(1), at(0)));
        }
        // A success in between starts the count again.
        o.success(&ep(1), at(0));
        for _ in 0..4 {
            assert!(!o.failure(ep(1), at(0)));
        }
        assert!(o.failure(ep(1), at(0)));
        assert!(o.is_ejected(&ep(1), at(9)));
        assert!(!o.is_ejected(&ep(1), at(10)));
        // On probation: one failure ejects again, for twice as long.
        assert!(o.failure(ep(1), at(10)));
        assert!(o.is_ejected(&ep(1), at(29)));
        assert!(!o.is_ejected(&ep(1), at(30)));
        assert!(o.failure(ep(1), at(30)));
        assert!(o.is_ejected(&ep(1), at(69)));
        // A success while ejected changes nothing; once back, it clears the record: five
        // failures again before the next ejection.
        o.success(&ep(1), at(69));
        assert!(o.is_ejected(&ep(1), at(69)));
        o.success(&ep(1), at(70));
        assert!(!o.failure(ep(1), at(70)));
    }

    #[test]
    fn the_backoff_is_capped() {
        let mut o = Outliers::new(OutlierConfig {
            consecutive_failures: 1,
            max_ejection: Duration::from_secs(25),
            ..OutlierConfig::default()
        });
        let mut t = 0;
        for _ in 0..10 {
            assert!(o.failure(ep(1), at(t)));
            t += 25;
        }
        assert!(o.is_ejected(&ep(1), at(t - 1)));
        assert!(!o.is_ejected(&ep(1), at(t)));
    }

    #[test]
    fn the_panic_threshold_keeps_endpoints_in_rotation() {
        let mut o = Outliers::new(OutlierConfig {
            consecutive_failures: 1,
            ..OutlierConfig::default()
        });
        let eps = [ep(1), ep(2), ep(3)];
        assert!(!o.filters(&eps, at(0)));
        o.failure(ep(1), at(0));
        assert!(o.filters(&eps, at(0)));
        // 50 % of three: one may be out; two out is panic, all are used.
        o.failure(ep(2), at(0));
        assert!(!o.filters(&eps, at(0)));
        // A lone endpoint is never left out.
        assert!(!o.filters(&eps[..1], at(0)));
        // Over by itself.
        assert!(!o.active(at(10)));
    }

    #[test]
    fn disabled_never_ejects() {
        let mut o = Outliers::new(OutlierConfig {
            enabled: false,
            ..OutlierConfig::default()
        });
        for _ in 0..100 {
            assert!(!o.failure(ep(1), at(0)));
        }
        assert!(o.is_empty());
    }
}
