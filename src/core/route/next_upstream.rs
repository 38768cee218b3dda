//! A route's retry settings (`proxy-next-upstream`, `-tries`, `-timeout`) as typed values;
//! the decisions that use them live in `core::upstream::retry`.

use std::fmt;
use std::time::Duration;

/// One kind of failure `proxy-next-upstream` can list.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made, or broke before a response head arrived.
    Error,
    /// Connecting, or waiting for the response head, took too long.
    Timeout,
    /// The upstream's response head did not parse.
    InvalidHeader,
    /// A complete response head with this status.
    Status(u16),
}

/// The set of failures a route retries (`proxy-next-upstream`), plus `non_idempotent`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conditions(u16);

/// The names ingress-nginx accepts, in its order, with their bits (`off` is the empty set).
const NAMES: [(&str, u16); 11] = [
    ("error", 1),
    ("timeout", 1 << 1),
    ("invalid_header", 1 << 2),
    ("http_500", 1 << 3),
    ("http_502", 1 << 4),
    ("http_503", 1 << 5),
    ("http_504", 1 << 6),
    ("http_403", 1 << 7),
    ("http_404", 1 << 8),
    ("http_429", 1 << 9),
    ("non_idempotent", 1 << 10),
];

const NON_IDEMPOTENT: u16 = 1 << 10;

impl Conditions {
    /// Nothing is retried (`off`).
    pub const OFF: Conditions = Conditions(0);
    /// ingress-nginx's default: `error timeout`.
    pub const DEFAULT: Conditions = Conditions(1 | 1 << 1);

    /// A space-separated list as in `proxy-next-upstream` (`"error timeout http_502"`, or
    /// `"off"` alone).
    pub fn parse(value: &str) -> Result<Conditions, String> {
        let mut bits = 0;
        let mut off = false;
        let mut any = false;
        for word in value.split_ascii_whitespace() {
            any = true;
            if word == "off" {
                off = true;
                continue;
            }
            match NAMES.iter().find(|(name, _)| *name == word) {
                Some((_, bit)) => bits |= bit,
                None => {
                    return Err(format!(
                        "{word:?} is not one of off, error, timeout, invalid_header, http_500, \
                         http_502, http_503, http_504, http_403, http_404, http_429, non_idempotent"
                    ));
                }
            }
        }
        if !any {
            return Err("expected a list like \"error timeout\" or \"off\"".into());
        }
        if off && bits != 0 {
            return Err("\"off\" cannot be combined with other values".into());
        }
        Ok(Conditions(bits))
    }

    /// Whether `failure` is listed.
    pub fn covers(self, failure: Failure) -> bool {
        let name = match failure {
            Failure::Error => "error",
            Failure::Timeout => "timeout",
            Failure::InvalidHeader => "invalid_header",
            Failure::Status(500) => "http_500",
            Failure::Status(502) => "http_502",
            Failure::Status(503) => "http_503",
            Failure::Status(504) => "http_504",
            Failure::Status(403) => "http_403",
            Failure::Status(404) => "http_404",
            Failure::Status(429) => "http_429",
            Failure::Status(_) => return false,
        };
        NAMES.iter().any(|(n, bit)| *n == name && self.0 & bit != 0)
    }

    /// Whether any response status is listed (the machine then looks at each head first).
    pub fn covers_a_status(self) -> bool {
        self.0 & (0b11_1111_1000) != 0
    }

    pub fn non_idempotent(self) -> bool {
        self.0 & NON_IDEMPOTENT != 0
    }

    pub fn is_off(self) -> bool {
        self.0 & !NON_IDEMPOTENT == 0
    }
}

impl fmt::Display for Conditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("off");
        }
        let mut sep = "";
        for (name, bit) in NAMES {
            if self.0 & bit != 0 {
                write!(f, "{sep}{name}")?;
                sep = ",";
            }
        }
        Ok(())
    }
}

/// A route's retry settings (`proxy-next-upstream`, `-tries`, `-timeout`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct NextUpstream {
    pub conditions: Conditions,
    /// Attempts in all, the first included; 0: no limit (as nginx).
    pub tries: u32,
    /// How long after the first attempt started a new one may still start; `None`: no limit.
    pub timeout: Option<Duration>,
}

impl NextUpstream {
    /// ingress-nginx's defaults: `error timeout`, 3 tries, no time limit.
    pub const DEFAULT: NextUpstream = NextUpstream {
        conditions: Conditions::DEFAULT,
        tries: 3,
        timeout: None,
    };
}

impl Default for NextUpstream {
    fn default() -> Self {
        NextUpstream::DEFAULT
    }
}

impl fmt::Display for NextUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/tries={}", self.conditions, self.tries)?;
        if let Some(t) = self.timeout {
            write!(f, "/timeout={t:?}")?;
        }
        Ok(())
    }
}
