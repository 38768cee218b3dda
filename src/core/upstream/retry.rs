//! Per-request retry decisions (`proxy-next-upstream`, `-tries`, `-timeout`): whether a failed
//! attempt may be passed to another endpoint. Sans-IO: the connection machine describes the
//! failure and what it knows of the request, this module answers; the machine (and through it
//! the driver) carries the retry out.
//!
//! The rules, all of which must hold for a retry:
//! * the failure is one the route lists (ingress-nginx's default: `error timeout`);
//! * nothing of the response has reached the client (not even its head);
//! * the method is idempotent, or `non_idempotent` is listed, or the request was never sent
//!   (the connection to the endpoint could not be made);
//! * the machine still holds every byte it sent upstream (see [`REPLAY_NOTE`]);
//! * fewer than `tries` attempts were made (0: no limit) and the first attempt started less
//!   than `timeout` ago (none: no limit);
//! * an endpoint not tried yet for this request is left (the router picks it).

use std::net::SocketAddr;

use crate::core::time::Instant;

/// How much of a request is kept for a retry, and why (also in the README): the machine keeps
/// a copy of the upstream request head and body up to the connection's `buffer_size`
/// (`[limits] buffer_size`, 32 KiB by default). That is the same bound as the upstream output
/// buffer, so a connection never holds more than twice what it already may; it covers the
/// usual API bodies (forms, JSON) while large uploads stream through without being held in
/// memory. A request whose body grows past that bound is not retried once any of it is sent.
pub const REPLAY_NOTE: &str = "request head and body kept up to buffer_size for a retry";

pub use crate::core::route::next_upstream::{Conditions, Failure, NextUpstream};

/// What the machine knows of the request when an attempt fails.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// GET, HEAD, PUT, DELETE, OPTIONS, … (nginx counts POST, LOCK and PATCH as not).
    pub idempotent: bool,
    /// Some of the request may have reached the upstream (the connection was made).
    pub sent: bool,
    /// A response head (or more) was queued for the client.
    pub response_started: bool,
    /// The machine holds every byte of the request sent upstream so far.
    pub replayable: bool,
}

/// Whether a method is idempotent for retrying, as nginx decides it.
pub fn idempotent(method: &str) -> bool {
    !matches!(method, "POST" | "LOCK" | "PATCH")
}

/// The attempts made for one request: when the first started and the endpoints tried.
#[derive(Clone, Debug, Default)]
pub struct Attempts {
    first: Option<Instant>,
    tried: Vec<SocketAddr>,
}

impl Attempts {
    /// Starts over for a new request whose first attempt goes to `endpoint` (keeps the
    /// allocation).
    pub fn start(&mut self, endpoint: SocketAddr, now: Instant) {
        self.first = Some(now);
        self.tried.clear();
        self.tried.push(endpoint);
    }

    /// A further attempt goes to `endpoint`.
    pub fn add(&mut self, endpoint: SocketAddr) {
        self.tried.push(endpoint);
    }

    /// The endpoints tried so far, first first.
    pub fn tried(&self) -> &[SocketAddr] {
        &self.tried
    }

    pub fn count(&self) -> usize {
        self.tried.len()
    }
}

/// Why a failed attempt is not retried (for tests and logs).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NoRetry {
    NotListed,
    ResponseStarted,
    NonIdempotent,
    NotReplayable,
    Tries,
    Timeout,
}

/// Whether the failed attempt may be passed to another endpoint (the router then picks one
/// not in [`Attempts::tried`]; none left also means no retry).
pub fn decide(
    policy: &NextUpstream,
    attempts: &Attempts,
    failure: Failure,
    facts: Facts,
    now: Instant,
) -> Result<(), NoRetry> {
    if !policy.conditions.covers(failure) {
        return Err(NoRetry::NotListed);
    }
    if facts.response_started {
        return Err(NoRetry::ResponseStarted);
    }
    if facts.sent && !facts.idempotent && !policy.conditions.non_idempotent() {
        return Err(NoRetry::NonIdempotent);
    }
    if !facts.replayable {
        return Err(NoRetry::NotReplayable);
    }
    if policy.tries != 0 && attempts.count() >= policy.tries as usize {
        return Err(NoRetry::Tries);
    }
    if let (Some(limit), Some(first)) = (policy.timeout, attempts.first)
        && now.saturating_since(first) >= limit
    {
        return Err(NoRetry::Timeout);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ep(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    const SAFE: Facts = Facts {
        idempotent: true,
        sent: true,
        response_started: false,
        replayable: true,
    };

    #[test]
    fn parses_the_ingress_nginx_lists() {
        let c = Conditions::parse("error timeout http_502").unwrap();
        assert!(c.covers(Failure::Error) && c.covers(Failure::Status(502)));
        assert!(!c.covers(Failure::Status(500)) && !c.covers(Failure::InvalidHeader));
        assert!(c.covers_a_status() && !c.non_idempotent());
        assert_eq!(Conditions::parse("off").unwrap(), Conditions::OFF);
        assert!(Conditions::parse("off error").is_err());
        assert!(Conditions::parse("error http_418").is_err());
        assert!(Conditions::parse("  ").is_err());
        assert!(!Conditions::DEFAULT.covers_a_status());
        assert_eq!(Conditions::DEFAULT.to_string(), "error,timeout");
    }

    #[test]
    fn each_rule_stops_a_retry() {
        let p = NextUpstream::DEFAULT;
        let t0 = Instant::ZERO;
        let mut a = Attempts::default();
        a.start(ep(1), t0);
        assert_eq!(decide(&p, &a, Failure::Error, SAFE, t0), Ok(()));
        assert_eq!(
            decide(&p, &a, Failure::Status(502), SAFE, t0),
            Err(NoRetry::NotListed)
        );
        let started = Facts {
            response_started: true,
            ..SAFE
        };
        assert_eq!(
            decide(&p, &a, Failure::Error, started, t0),
            Err(NoRetry::ResponseStarted)
        );
        let post = Facts {
            idempotent: false,
            ..SAFE
        };
        assert_eq!(
            decide(&p, &a, Failure::Error, post, t0),
            Err(NoRetry::NonIdempotent)
        );
        // Never sent (connect refused): a POST may go elsewhere.
        let unsent = Facts {
            sent: false,
            ..post
        };
        assert_eq!(decide(&p, &a, Failure::Error, unsent, t0), Ok(()));
        let listed = NextUpstream {
            conditions: Conditions::parse("error non_idempotent").unwrap(),
            ..p
        };
        assert_eq!(decide(&listed, &a, Failure::Error, post, t0), Ok(()));
        let big = Facts {
            replayable: false,
            ..SAFE
        };
        assert_eq!(
            decide(&p, &a, Failure::Error, big, t0),
            Err(NoRetry::NotReplayable)
        );
        a.add(ep(2));
        assert_eq!(decide(&p, &a, Failure::Timeout, SAFE, t0), Ok(()));
        a.add(ep(3));
        assert_eq!(
            decide(&p, &a, Failure::Timeout, SAFE, t0),
            Err(NoRetry::Tries)
        );
        let unlimited = NextUpstream { tries: 0, ..p };
        assert_eq!(decide(&unlimited, &a, Failure::Error, SAFE, t0), Ok(()));
        let timed = NextUpstream {
            timeout: Some(Duration::from_secs(2)),
            tries: 0,
            ..p
        };
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            decide(&timed, &a, Failure::Error, SAFE, later),
            Err(NoRetry::Timeout)
        );
        assert_eq!(
            decide(
                &timed,
                &a,
                Failure::Error,
                SAFE,
                t0 + Duration::from_secs(1)
            ),
            Ok(())
        );
    }

    #[test]
    fn nginx_idempotency() {
        for m in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"] {
            assert!(idempotent(m), "{m}");
        }
        for m in ["POST", "PATCH", "LOCK"] {
            assert!(!idempotent(m), "{m}");
        }
    }
}
