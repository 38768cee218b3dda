//! Typed reading of Ingress annotations: `sluice.dev/<name>` and
//! `nginx.ingress.kubernetes.io/<name>`, ours winning when both are set.
//!
//! A value is parsed once, here, into a typed value; nothing downstream ever sees the text.
//! A value that does not parse (or holds a CR or LF, whatever the annotation) rejects only
//! that field: the caller gets `None` and uses its default, and a [`Diagnostic`] naming the
//! annotation says why (it reaches the log, the Ingress's Events and `sluice check`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;

use super::compile::Diagnostic;
use super::health_check::HealthCheck;
use crate::core::http1::Upgrades;
use crate::core::route::RoutePolicy;
use crate::core::route::canary::{CanaryRule, HeaderMatch, Pattern};
use crate::core::upstream::Balance;
use crate::core::upstream::affinity::{self, Affinity};
use crate::core::upstream::hash::HashKey;
use crate::core::upstream::retry::{Conditions, NextUpstream};
use crate::core::upstream::vhost;

/// Our own prefix; wins over ingress-nginx's.
pub const OURS: &str = "sluice.dev/";
/// ingress-nginx's prefix, read for the annotations it defines.
pub const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// Upgrade protocols relayed on the Ingress's routes (ours only: ingress-nginx has none).
pub const UPGRADE_PROTOCOLS: &str = "upgrade-protocols";

/// Per-route timeouts (ingress-nginx: whole seconds) and the request body limit.
pub const PROXY_CONNECT_TIMEOUT: &str = "proxy-connect-timeout";
pub const PROXY_READ_TIMEOUT: &str = "proxy-read-timeout";
pub const PROXY_SEND_TIMEOUT: &str = "proxy-send-timeout";
pub const CLIENT_BODY_TIMEOUT: &str = "client-body-timeout";
pub const PROXY_BODY_SIZE: &str = "proxy-body-size";
/// Balancing: `round_robin`, `least_request`, `ewma`; a hash key wins over it.
pub const LOAD_BALANCE: &str = "load-balance";
pub const UPSTREAM_HASH_BY: &str = "upstream-hash-by";
pub const UPSTREAM_HASH_BY_SUBSET: &str = "upstream-hash-by-subset";
pub const UPSTREAM_HASH_BY_SUBSET_SIZE: &str = "upstream-hash-by-subset-size";
/// Ours only (`sluice.dev/`): bounded load for `upstream-hash-by`, a factor over the
/// average load such as `1.25`.
pub const UPSTREAM_HASH_BY_BOUNDED_LOAD: &str = "upstream-hash-by-bounded-load";
/// Retries to another endpoint: the failures retried, the attempts in all, the time limit.
pub const PROXY_NEXT_UPSTREAM: &str = "proxy-next-upstream";
pub const PROXY_NEXT_UPSTREAM_TRIES: &str = "proxy-next-upstream-tries";
pub const PROXY_NEXT_UPSTREAM_TIMEOUT: &str = "proxy-next-upstream-timeout";
/// Cookie session affinity and its cookie's attributes.
pub const AFFINITY: &str = "affinity";
pub const AFFINITY_MODE: &str = "affinity-mode";
pub const SESSION_COOKIE_NAME: &str = "session-cookie-name";
pub const SESSION_COOKIE_PATH: &str = "session-cookie-path";
pub const SESSION_COOKIE_DOMAIN: &str = "session-cookie-domain";
pub const SESSION_COOKIE_MAX_AGE: &str = "session-cookie-max-age";
pub const SESSION_COOKIE_EXPIRES: &str = "session-cookie-expires";
pub const SESSION_COOKIE_SAMESITE: &str = "session-cookie-samesite";
pub const SESSION_COOKIE_SECURE: &str = "session-cookie-secure";
pub const SESSION_COOKIE_CONDITIONAL_SAMESITE_NONE: &str =
    "session-cookie-conditional-samesite-none";
pub const SESSION_COOKIE_CHANGE_ON_FAILURE: &str = "session-cookie-change-on-failure";
/// The `Host` field sent upstream.
pub const UPSTREAM_VHOST: &str = "upstream-vhost";
/// Send to the Service's ClusterIP and port instead of its endpoints.
pub const SERVICE_UPSTREAM: &str = "service-upstream";
/// The protocol spoken to the pods: `HTTP` or `HTTPS` (HTTP/1.1, over TLS for `HTTPS`).
pub const BACKEND_PROTOCOL: &str = "backend-protocol";
/// TLS towards the pods (read with `backend-protocol: HTTPS` only): the Secret with the CA
/// (`ca.crt`) and the client certificate (`tls.crt`, `tls.key`), verification, the name.
pub const PROXY_SSL_SECRET: &str = "proxy-ssl-secret";
pub const PROXY_SSL_VERIFY: &str = "proxy-ssl-verify";
pub const PROXY_SSL_VERIFY_DEPTH: &str = "proxy-ssl-verify-depth";
pub const PROXY_SSL_NAME: &str = "proxy-ssl-name";
pub const PROXY_SSL_SERVER_NAME: &str = "proxy-ssl-server-name";
pub const PROXY_SSL_PROTOCOLS: &str = "proxy-ssl-protocols";

/// Canary Ingresses: `canary: "true"` makes the Ingress an alternative backend for the
/// routes of the main Ingress with the same host, path and path type.
pub const CANARY: &str = "canary";
pub const CANARY_BY_HEADER: &str = "canary-by-header";
pub const CANARY_BY_HEADER_VALUE: &str = "canary-by-header-value";
pub const CANARY_BY_HEADER_PATTERN: &str = "canary-by-header-pattern";
pub const CANARY_BY_COOKIE: &str = "canary-by-cookie";
pub const CANARY_WEIGHT: &str = "canary-weight";
pub const CANARY_WEIGHT_TOTAL: &str = "canary-weight-total";
/// Every `canary-*` rule annotation (read only with `canary: "true"`).
pub const CANARY_RULES: [&str; 6] = [
    CANARY_BY_HEADER,
    CANARY_BY_HEADER_VALUE,
    CANARY_BY_HEADER_PATTERN,
    CANARY_BY_COOKIE,
    CANARY_WEIGHT,
    CANARY_WEIGHT_TOTAL,
];

/// The annotations of one Ingress, with the object name its diagnostics carry.
pub struct Annotations<'a> {
    map: Option<&'a BTreeMap<String, String>>,
    object: &'a str,
}

impl<'a> Annotations<'a> {
    pub fn of(ing: &'a Ingress, object: &'a str) -> Annotations<'a> {
        Annotations {
            map: ing.metadata.annotations.as_ref(),
            object,
        }
    }

    /// The key and value of `name`: ours if set, else ingress-nginx's (when `nginx`).
    fn raw(&self, name: &str, nginx: bool) -> Option<(String, &'a str)> {
        let map = self.map?;
        let prefixes: &[&str] = if nginx { &[OURS, NGINX] } else { &[OURS] };
        prefixes.iter().find_map(|prefix| {
            let key = format!("{prefix}{name}");
            let value = map.get(&key)?;
            Some((key, value.as_str()))
        })
    }

    /// `name` (either prefix) parsed by `parse`, or `None` when absent or invalid; an invalid
    /// value is reported, saying that `default` is used instead.
    pub fn get<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
        default: &dyn fmt::Display,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        self.read(name, true, parse, default, diags)
    }

    /// [`Annotations::get`] for an annotation of ours only (`sluice.dev/<name>`).
    pub fn get_ours<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
        default: &dyn fmt::Display,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        self.read(name, false, parse, default, diags)
    }

    /// Whether `name` is set under either prefix (whatever its value).
    pub fn has(&self, name: &str) -> bool {
        self.raw(name, true).is_some()
    }

    /// A diagnostic on `name` (under the prefix it is set with) saying `message`.
    pub fn note(&self, name: &str, message: impl Into<String>, diags: &mut Vec<Diagnostic>) {
        if let Some((key, _)) = self.raw(name, true) {
            diags.push(Diagnostic {
                object: self.object.to_string(),
                field: format!("metadata.annotations[{key}]"),
                message: message.into(),
            });
        }
    }

    /// A boolean, as ingress-nginx reads one (Go's `strconv.ParseBool`).
    pub fn bool(&self, name: &str, default: bool, diags: &mut Vec<Diagnostic>) -> bool {
        self.get(name, parse_bool, &default, diags)
            .unwrap_or(default)
    }

    fn read<T>(
        &self,
        name: &str,
        nginx: bool,
        parse: impl FnOnce(&str) -> Result<T, String>,
        default: &dyn fmt::Display,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        let (key, value) = self.raw(name, nginx)?;
        let parsed = if value.contains(['\r', '\n']) {
            Err("contains a CR or LF".to_string())
        } else {
            parse(value.trim())
        };
        match parsed {
            Ok(v) => Some(v),
            Err(why) => {
                diags.push(Diagnostic {
                    object: self.object.to_string(),
                    field: format!("metadata.annotations[{key}]"),
                    message: format!("{why}; using {default}"),
                });
                None
            }
        }
    }
}

/// Go's `strconv.ParseBool`, which ingress-nginx uses.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// A timeout as ingress-nginx writes one: whole seconds (`"120"`); also with nginx's units
/// (`"500ms"`, `"30s"`, `"2m"`, `"1h"`). Zero is refused (nginx would time out at once).
pub fn parse_timeout(value: &str) -> Result<Duration, String> {
    let bad =
        || format!("expected seconds like \"60\" (or \"500ms\", \"30s\", \"2m\"), got {value:?}");
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (num, unit) = value.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(bad()),
    }
    .filter(|ms| *ms <= 24 * 3_600_000)
    .ok_or_else(|| format!("{value:?} is longer than a day"))?;
    if ms == 0 {
        return Err(format!("{value:?}: a timeout must be positive"));
    }
    Ok(Duration::from_millis(ms))
}

/// A size as nginx writes one (`client_max_body_size`): bytes, or with `k`, `m` or `g`
/// (either case). `0` means unlimited (`None`).
pub fn parse_body_size(value: &str) -> Result<Option<u64>, String> {
    let bad =
        || format!("expected a size like \"8m\", \"512k\" or \"0\" (unlimited), got {value:?}");
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (num, unit) = value.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(mult).ok_or_else(bad)?;
    Ok((bytes > 0).then_some(bytes))
}

/// A `load-balance` value.
pub fn parse_balance(value: &str) -> Result<Balance, String> {
    match value {
        "round_robin" => Ok(Balance::RoundRobin),
        "least_request" => Ok(Balance::LeastRequest),
        "ewma" => Ok(Balance::Ewma),
        other => Err(format!(
            "expected round_robin, least_request or ewma, got {other:?}"
        )),
    }
}

/// `upstream-hash-by-subset-size`: endpoints per subset (ingress-nginx's default: 3).
pub fn parse_subset_size(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=1000).contains(n))
        .ok_or_else(|| format!("expected a subset size from 1 to 1000, got {value:?}"))
}

/// `proxy-next-upstream-tries`: attempts in all, the first included; `0`: no limit.
pub fn parse_tries(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= 100)
        .ok_or_else(|| {
            format!("expected a number of attempts (0: no limit, at most 100), got {value:?}")
        })
}

/// `proxy-next-upstream-timeout`: as [`parse_timeout`], but `0` means no limit (`None`).
pub fn parse_retry_timeout(value: &str) -> Result<Option<Duration>, String> {
    if value == "0" {
        return Ok(None);
    }
    parse_timeout(value).map(Some)
}

/// The retry annotations together, `None` when none is set (or none parsed): each one that
/// is absent or invalid keeps ingress-nginx's default.
fn next_upstream(a: &Annotations<'_>, diags: &mut Vec<Diagnostic>) -> Option<NextUpstream> {
    let conditions = a.get(
        PROXY_NEXT_UPSTREAM,
        Conditions::parse,
        &"error timeout",
        diags,
    );
    let tries = a.get(PROXY_NEXT_UPSTREAM_TRIES, parse_tries, &"3", diags);
    let timeout = a.get(
        PROXY_NEXT_UPSTREAM_TIMEOUT,
        parse_retry_timeout,
        &"0 (no limit)",
        diags,
    );
    if conditions.is_none() && tries.is_none() && timeout.is_none() {
        return None;
    }
    let d = NextUpstream::DEFAULT;
    Some(NextUpstream {
        conditions: conditions.unwrap_or(d.conditions),
        tries: tries.unwrap_or(d.tries),
        timeout: timeout.unwrap_or(d.timeout),
    })
}

/// `backend-protocol`: `HTTP` and `HTTPS` are what Sluice speaks to pods; every other
/// ingress-nginx value is refused with the reason (the route is then served over HTTP/1.1,
/// and reported). `true`: HTTPS.
pub fn parse_backend_protocol(value: &str) -> Result<bool, String> {
    let why = match value.to_ascii_uppercase().as_str() {
        "HTTP" => return Ok(false),
        "HTTPS" => return Ok(true),
        "GRPC" | "GRPCS" | "H2C" => {
            "gRPC and HTTP/2 to pods need HTTP/2, which Sluice does not speak yet"
        }
        "AJP" | "FCGI" => "AJP and FastCGI are not supported",
        _ => {
            return Err(format!(
                "expected HTTP, HTTPS, GRPC, GRPCS, H2C, AJP or FCGI, got {value:?}"
            ));
        }
    };
    Err(format!("{value:?}: {why}"))
}

/// `affinity`: only `cookie` exists.
fn parse_affinity_kind(value: &str) -> Result<(), String> {
    match value {
        "cookie" => Ok(()),
        other => Err(format!("expected cookie, got {other:?}")),
    }
}

fn parse_affinity_mode(value: &str) -> Result<affinity::Mode, String> {
    match value {
        "balanced" => Ok(affinity::Mode::Balanced),
        "persistent" => Ok(affinity::Mode::Persistent),
        other => Err(format!("expected balanced or persistent, got {other:?}")),
    }
}

/// Whole seconds (`session-cookie-max-age`, `-expires`).
fn parse_seconds(value: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .map_err(|_| format!("expected whole seconds like \"172800\", got {value:?}"))
}

/// The affinity annotations together; `None` unless `affinity: cookie`. Each cookie
/// attribute that is invalid keeps its default.
fn affinity(a: &Annotations<'_>, diags: &mut Vec<Diagnostic>) -> Option<Affinity> {
    a.get(AFFINITY, parse_affinity_kind, &"no affinity", diags)?;
    let d = Affinity::new();
    let flag = |name: &str, diags: &mut Vec<Diagnostic>| a.bool(name, false, diags);
    Some(Affinity {
        mode: a
            .get(AFFINITY_MODE, parse_affinity_mode, &"balanced", diags)
            .unwrap_or(d.mode),
        name: a
            .get(
                SESSION_COOKIE_NAME,
                affinity::parse_name,
                &Affinity::DEFAULT_NAME,
                diags,
            )
            .unwrap_or(d.name),
        path: a.get(
            SESSION_COOKIE_PATH,
            affinity::parse_attribute,
            &"the rule's path",
            diags,
        ),
        domain: a.get(
            SESSION_COOKIE_DOMAIN,
            affinity::parse_attribute,
            &"no Domain",
            diags,
        ),
        max_age: a.get(SESSION_COOKIE_MAX_AGE, parse_seconds, &"no Max-Age", diags),
        expires: a.get(SESSION_COOKIE_EXPIRES, parse_seconds, &"no Expires", diags),
        samesite: a.get(
            SESSION_COOKIE_SAMESITE,
            affinity::SameSite::parse,
            &"no SameSite",
            diags,
        ),
        secure: flag(SESSION_COOKIE_SECURE, diags),
        conditional_samesite_none: flag(SESSION_COOKIE_CONDITIONAL_SAMESITE_NONE, diags),
        change_on_failure: flag(SESSION_COOKIE_CHANGE_ON_FAILURE, diags),
    })
}

/// An HTTP field or cookie name: a token (RFC 9110), at most 256 bytes.
fn parse_token(value: &str) -> Result<Box<str>, String> {
    let ok = !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    match ok {
        true => Ok(value.into()),
        false => Err(format!(
            "expected a field or cookie name (letters, digits, -_.!#$%&'*+^`|~), got {value:?}"
        )),
    }
}

/// `canary-weight`: a share of `canary-weight-total`.
fn parse_weight(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= 1_000_000)
        .ok_or_else(|| format!("expected a whole number from 0, got {value:?}"))
}

/// `canary-weight-total`: ingress-nginx uses 100 for any total below 100, so such a value is
/// refused (and 100 used).
fn parse_weight_total(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (100..=1_000_000).contains(n))
        .ok_or_else(|| format!("expected a whole number from 100 to 1000000, got {value:?}"))
}

/// The canary rule of `ing`: `Some` when it is a canary Ingress (`canary: "true"`). Each
/// rule annotation that does not parse is reported and left out (a bad weight counts as 0).
/// On an Ingress that is not a canary the rule annotations are reported as ignored.
pub fn canary(ing: &Ingress, object: &str, diags: &mut Vec<Diagnostic>) -> Option<CanaryRule> {
    let a = Annotations::of(ing, object);
    if !a.bool(CANARY, false, diags) {
        for name in CANARY_RULES {
            a.note(
                name,
                "ignored: the Ingress is not a canary (canary: \"true\")",
                diags,
            );
        }
        return None;
    }
    let mut rule = CanaryRule::new();
    let name = a.get(CANARY_BY_HEADER, parse_token, &"no header rule", diags);
    let value = a.get(
        CANARY_BY_HEADER_VALUE,
        |v| match v.is_empty() {
            true => Err("empty value".to_string()),
            false => Ok(Box::<str>::from(v)),
        },
        &"always/never",
        diags,
    );
    let pattern = if value.is_some() {
        a.note(
            CANARY_BY_HEADER_PATTERN,
            "ignored: canary-by-header-value is set (as in ingress-nginx)",
            diags,
        );
        None
    } else {
        a.get(
            CANARY_BY_HEADER_PATTERN,
            Pattern::new,
            &"always/never",
            diags,
        )
    };
    rule.header = match (name, value, pattern) {
        (Some(name), Some(v), _) => Some((name, HeaderMatch::Value(v))),
        (Some(name), None, Some(p)) => Some((name, HeaderMatch::Pattern(p))),
        (Some(name), None, None) => Some((name, HeaderMatch::Keywords)),
        (None, v, p) => {
            if v.is_some() || p.is_some() {
                for n in [CANARY_BY_HEADER_VALUE, CANARY_BY_HEADER_PATTERN] {
                    a.note(n, "ignored: canary-by-header is not set", diags);
                }
            }
            None
        }
    };
    rule.cookie = a.get(CANARY_BY_COOKIE, parse_token, &"no cookie rule", diags);
    rule.weight = a
        .get(CANARY_WEIGHT, parse_weight, &"weight 0", diags)
        .unwrap_or(0);
    rule.weight_total = a
        .get(CANARY_WEIGHT_TOTAL, parse_weight_total, &"100", diags)
        .unwrap_or(CanaryRule::DEFAULT_TOTAL);
    Some(rule)
}

/// `load-balance` and the `upstream-hash-by*` annotations together (a hash key wins).
fn balancing(a: &Annotations<'_>, diags: &mut Vec<Diagnostic>) -> Option<Balance> {
    let balance = a.get(LOAD_BALANCE, parse_balance, &"round_robin", diags);
    let hash = a.get(
        UPSTREAM_HASH_BY,
        HashKey::parse,
        &"no hashing (load-balance)",
        diags,
    );
    let subset = hash.is_some() && a.bool(UPSTREAM_HASH_BY_SUBSET, false, diags);
    let subset_size = match subset {
        true => a
            .get(UPSTREAM_HASH_BY_SUBSET_SIZE, parse_subset_size, &"3", diags)
            .unwrap_or(3),
        false => 3,
    };
    let bound = match hash.is_some() && !subset {
        true => a.get_ours(
            UPSTREAM_HASH_BY_BOUNDED_LOAD,
            parse_load_bound,
            &"no bound",
            diags,
        ),
        false => None,
    };
    let hash = hash.map(|key| match (subset, bound) {
        (true, _) => Balance::HashSubset(key, subset_size),
        (false, Some(percent)) => Balance::HashBounded(key, percent),
        (false, None) => Balance::Hash(key),
    });
    hash.or(balance)
}

/// `sluice.dev/upstream-hash-by-bounded-load`: a factor over the average load, from 1.01 to
/// 10 with at most two decimals (`1.25`: an endpoint takes a key while it has fewer than 125 %
/// of the average requests in flight); as a percentage.
pub fn parse_load_bound(value: &str) -> Result<u32, String> {
    let bad =
        || format!("expected a load factor from 1.01 to 10 (for example 1.25), got {value:?}");
    let (whole, frac) = value.split_once('.').unwrap_or((value, ""));
    if whole.is_empty()
        || frac.len() > 2
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u32 = whole.parse().map_err(|_| bad())?;
    let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    let percent = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)?;
    if (101..=1000).contains(&percent) {
        Ok(percent)
    } else {
        Err(bad())
    }
}

/// The settings of `ing` that belong to the backends it routes to rather than to its routes
/// (`load-balance`, `upstream-hash-by*`, `affinity*`, `session-cookie-*`), read as
/// [`route_policy`] reads them; problems are not reported here ([`route_policy`] does).
pub fn backend_policy(ing: &Ingress) -> BackendPolicy {
    let a = Annotations::of(ing, "");
    let mut scratch = Vec::new();
    BackendPolicy {
        balance: balancing(&a, &mut scratch),
        affinity: affinity(&a, &mut scratch),
        service_upstream: a.get(SERVICE_UPSTREAM, parse_bool, &false, &mut scratch),
        health: health_check(&a, ing, &mut scratch),
    }
}

/// The `sluice.dev/health-check-*` annotations (ours only; a backend setting): `None`
/// without a valid `health-check-path`. A bad value of another of them is reported and its
/// default used; a timeout not below the interval is reported and half the interval used
/// when the default 1s is not below it either.
pub fn health_check(
    a: &Annotations<'_>,
    ing: &Ingress,
    diags: &mut Vec<Diagnostic>,
) -> Option<HealthCheck> {
    use super::health_check as hc;
    let path = a.get_ours(
        hc::HEALTH_CHECK_PATH,
        hc::parse_path,
        &"no active health checks",
        diags,
    )?;
    let mut check = HealthCheck::new(path);
    if let Some(i) = a.get_ours(hc::HEALTH_CHECK_INTERVAL, hc::parse_interval, &"5s", diags) {
        check.interval = i;
    }
    let timeout = a.get_ours(hc::HEALTH_CHECK_TIMEOUT, hc::parse_timeout, &"1s", diags);
    check.timeout = match timeout {
        Some(t) if t < check.interval => t,
        Some(_) => {
            a.note(
                hc::HEALTH_CHECK_TIMEOUT,
                format!(
                    "must be below the interval ({:?}); using the default",
                    check.interval
                ),
                diags,
            );
            hc::DEFAULT_TIMEOUT.min(check.interval / 2)
        }
        None => hc::DEFAULT_TIMEOUT.min(check.interval / 2),
    };
    if let Some(n) = a.get_ours(
        hc::HEALTH_CHECK_HEALTHY_THRESHOLD,
        hc::parse_threshold,
        &hc::DEFAULT_HEALTHY,
        diags,
    ) {
        check.healthy = n;
    }
    if let Some(n) = a.get_ours(
        hc::HEALTH_CHECK_UNHEALTHY_THRESHOLD,
        hc::parse_threshold,
        &hc::DEFAULT_UNHEALTHY,
        diags,
    ) {
        check.unhealthy = n;
    }
    check.port = a.get_ours(
        hc::HEALTH_CHECK_PORT,
        hc::parse_port,
        &"the endpoint's port",
        diags,
    );
    if let Some(range) = a.get_ours(
        hc::HEALTH_CHECK_EXPECTED_STATUS,
        hc::parse_expected_status,
        &"200-399",
        diags,
    ) {
        check.expect = range;
    }
    // The Host sent: the Ingress's first rule host that is a name (not a wildcard).
    check.host = ing
        .spec
        .iter()
        .flat_map(|s| s.rules.iter().flatten())
        .filter_map(|r| r.host.as_deref())
        .find(|h| !h.is_empty() && !h.starts_with('*') && super::compile::check_host(h).is_ok())
        .map(str::to_ascii_lowercase);
    Some(check)
}

/// The settings that attach to a backend (a Service port), as in ingress-nginx.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendPolicy {
    pub balance: Option<Balance>,
    pub affinity: Option<Affinity>,
    /// `service-upstream`: the Service's ClusterIP and port as the one endpoint (`None`:
    /// not set, which means false).
    pub service_upstream: Option<bool>,
    /// `sluice.dev/health-check-*`: active HTTP checks of the backend's endpoints.
    pub health: Option<HealthCheck>,
}

impl BackendPolicy {
    /// Whether the backend is reached through its Service's ClusterIP.
    pub fn service_upstream(&self) -> bool {
        self.service_upstream == Some(true)
    }

    /// What of `self` (one Ingress's own settings) `owner` (the backend's) overrides: the
    /// annotations set here that the backend does not follow, for the conflict report.
    pub fn overridden_by(&self, owner: &BackendPolicy) -> Vec<String> {
        let mut lost = Vec::new();
        let effective = |b: &Option<Balance>| b.clone().unwrap_or_default();
        if let Some(b) = &self.balance
            && effective(&owner.balance) != *b
        {
            lost.push(format!(
                "balancing {b} (the backend's: {})",
                effective(&owner.balance)
            ));
        }
        if let Some(a) = &self.affinity
            && owner.affinity.as_ref() != Some(a)
        {
            let theirs = match &owner.affinity {
                Some(o) => o.to_string(),
                None => "none".to_string(),
            };
            lost.push(format!("affinity {a} (the backend's: {theirs})"));
        }
        if let Some(s) = self.service_upstream
            && s != owner.service_upstream()
        {
            let theirs = owner.service_upstream();
            lost.push(format!("service-upstream {s} (the backend's: {theirs})"));
        }
        if let Some(h) = &self.health
            && !owner.health.as_ref().is_some_and(|o| o.same_settings(h))
        {
            let theirs = match &owner.health {
                Some(o) => o.to_string(),
                None => "none".to_string(),
            };
            lost.push(format!("health check {h} (the backend's: {theirs})"));
        }
        lost
    }

    /// `policy` with these settings in place of its own; `None` when nothing is left set.
    pub fn applied_to(&self, policy: Option<&RoutePolicy>) -> Option<Arc<RoutePolicy>> {
        let mut p = policy.cloned().unwrap_or_default();
        p.balance = self.balance.clone();
        p.affinity = self.affinity.clone();
        (!p.is_empty()).then(|| Arc::new(p))
    }
}

/// A comma-separated list of upgrade protocol names (empty: none may be relayed).
pub fn parse_upgrades(value: &str) -> Result<Upgrades, String> {
    let names: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    Upgrades::new(&names)
}

/// The per-route properties of `ing`'s annotations, `None` when it sets none (or none
/// parsed); problems go to `diags`.
pub fn route_policy(
    ing: &Ingress,
    object: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<RoutePolicy>> {
    super::catalog::report_ignored(ing, object, diags);
    let a = Annotations::of(ing, object);
    // A backend setting (compile::Owners reads it): read here to report a bad value.
    a.get(SERVICE_UPSTREAM, parse_bool, &false, diags);
    health_check(&a, ing, diags);
    let policy = RoutePolicy {
        balance: balancing(&a, diags),
        next_upstream: next_upstream(&a, diags),
        affinity: affinity(&a, diags),
        upstream_vhost: a.get(UPSTREAM_VHOST, vhost::parse, &"the client's Host", diags),
        upstream_tls: None,
        upgrades: a.get_ours(
            UPGRADE_PROTOCOLS,
            parse_upgrades,
            &"the listener's [http] upgrade_protocols",
            diags,
        ),
        connect_timeout: a.get(
            PROXY_CONNECT_TIMEOUT,
            parse_timeout,
            &"the listener's timeouts.upstream_connect",
            diags,
        ),
        read_timeout: a.get(
            PROXY_READ_TIMEOUT,
            parse_timeout,
            &"the listener's timeouts",
            diags,
        ),
        send_timeout: a.get(
            PROXY_SEND_TIMEOUT,
            parse_timeout,
            &"the listener's timeouts.body_idle",
            diags,
        ),
        client_body_timeout: a.get(
            CLIENT_BODY_TIMEOUT,
            parse_timeout,
            &"the listener's timeouts.body_idle",
            diags,
        ),
        max_body_bytes: a.get(
            PROXY_BODY_SIZE,
            parse_body_size,
            &"the listener's limits.max_body_bytes",
            diags,
        ),
        request: super::request_annotations::request_policy(&a, ing, object, diags),
    };
    (!policy.is_empty()).then(|| Arc::new(policy))
}

/// `on` or `off`, as nginx writes a flag (`proxy-ssl-verify`, `proxy-ssl-server-name`);
/// Go's booleans are taken too.
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => parse_bool(other).map_err(|_| format!("expected on or off, got {other:?}")),
    }
}

/// `proxy-ssl-verify-depth`: certificates in the upstream's chain, 1 to 10.
fn parse_verify_depth(value: &str) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=10).contains(n))
        .ok_or_else(|| format!("expected a depth from 1 to 10, got {value:?}"))
}

/// `proxy-ssl-name`: a DNS name or an IP address (no nginx variables).
fn parse_ssl_name(value: &str) -> Result<String, String> {
    if value.contains('$') {
        return Err(format!(
            "nginx variables are not interpreted, got {value:?}"
        ));
    }
    rustls::pki_types::ServerName::try_from(value)
        .map(|_| value.to_ascii_lowercase())
        .map_err(|_| format!("expected a DNS name or an IP address, got {value:?}"))
}

/// `proxy-ssl-secret`: `namespace/name` (the namespace must be the Ingress's own) or `name`.
fn parse_ssl_secret(value: &str, ns: &str) -> Result<String, String> {
    let name = match value.split_once('/') {
        Some((other, _)) if other != ns => {
            return Err(format!(
                "a Secret of another namespace ({other}) is not read"
            ));
        }
        Some((_, name)) => name,
        None => value,
    };
    if name.is_empty() || name.contains('/') {
        return Err(format!("expected namespace/name, got {value:?}"));
    }
    Ok(name.to_string())
}

/// `policy` with TLS towards the pods when `ing` says `backend-protocol: HTTPS`, read with the
/// `proxy-ssl-*` annotations and `proxy-ssl-secret` among `secrets`. The rustls client config
/// is built here, once per compile, and shared by every worker. A `backend-protocol` other than
/// HTTP and HTTPS is reported and the routes stay HTTP. A missing Secret, or one without a
/// usable `ca.crt` while `proxy-ssl-verify` is on, is reported; verification then fails every
/// handshake (502) rather than accept an unverified upstream.
///
/// Not done: as for basic authentication, a change to the Secret alone is picked up when the
/// Ingress changes or at the next full compile.
pub fn with_upstream_tls(
    policy: Option<Arc<RoutePolicy>>,
    ing: &Ingress,
    object: &str,
    secrets: &[Arc<k8s_openapi::api::core::v1::Secret>],
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<RoutePolicy>> {
    use crate::core::route::upstream_tls::{Protocols, UpstreamTls, UpstreamTlsSpec};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let a = Annotations::of(ing, object);
    let https = a.get(BACKEND_PROTOCOL, parse_backend_protocol, &"HTTP", diags);
    if https != Some(true) {
        return policy;
    }
    let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
    let mut spec = UpstreamTlsSpec {
        verify: a
            .get(PROXY_SSL_VERIFY, parse_on_off, &"off", diags)
            .unwrap_or(false),
        verify_depth: a.get(
            PROXY_SSL_VERIFY_DEPTH,
            parse_verify_depth,
            &"no limit",
            diags,
        ),
        send_sni: a
            .get(PROXY_SSL_SERVER_NAME, parse_on_off, &"off", diags)
            .unwrap_or(false),
        name: a.get(
            PROXY_SSL_NAME,
            parse_ssl_name,
            &"the Host sent upstream",
            diags,
        ),
        protocols: a.get(PROXY_SSL_PROTOCOLS, Protocols::parse, &"TLSv1.2", diags),
        ..UpstreamTlsSpec::default()
    };
    let secret_name = a.get(
        PROXY_SSL_SECRET,
        |v| parse_ssl_secret(v, ns),
        &"no CA and no client certificate",
        diags,
    );
    let mut report = |field: &str, message: String| {
        diags.push(Diagnostic {
            object: object.to_string(),
            field: format!("metadata.annotations[{NGINX}{field}]"),
            message,
        })
    };
    if let Some(name) = &secret_name {
        let found = secrets.iter().find(|s| {
            s.metadata.name.as_deref() == Some(name.as_str())
                && s.metadata.namespace.as_deref().unwrap_or("default") == ns
        });
        match found {
            None => report(
                PROXY_SSL_SECRET,
                format!("Secret {ns}/{name} not found; no CA and no client certificate"),
            ),
            Some(secret) => {
                let data = secret.data.as_ref();
                let key = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
                // The material's identity: part of the pooled connections' key.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for k in ["ca.crt", "tls.crt", "tls.key"] {
                    for b in key(k).unwrap_or_default().iter().chain(b"\0") {
                        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
                    }
                }
                spec.material_id = h;
                if let Some(ca) = key("ca.crt") {
                    for item in CertificateDer::pem_slice_iter(ca) {
                        match item {
                            Ok(der) => spec.roots.push(der),
                            Err(e) => report(
                                PROXY_SSL_SECRET,
                                format!("Secret {ns}/{name} ca.crt: broken PEM ({e}); skipped"),
                            ),
                        }
                    }
                }
                if let (Some(crt), Some(k)) = (key("tls.crt"), key("tls.key")) {
                    let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(crt).collect();
                    match (chain, PrivateKeyDer::from_pem_slice(k)) {
                        (Ok(chain), Ok(k)) if !chain.is_empty() => {
                            spec.client_cert = Some((chain, k));
                        }
                        _ => report(
                            PROXY_SSL_SECRET,
                            format!(
                                "Secret {ns}/{name}: tls.crt/tls.key do not parse; no client certificate"
                            ),
                        ),
                    }
                }
            }
        }
    }
    if spec.verify && spec.roots.is_empty() {
        report(
            PROXY_SSL_VERIFY,
            "on, but no CA (ca.crt of proxy-ssl-secret): every upstream handshake fails (502)"
                .to_string(),
        );
    }
    let tls = match UpstreamTls::new(&spec, super::certs::provider()) {
        Ok(tls) => tls,
        Err(why) => {
            report(
                PROXY_SSL_SECRET,
                format!("{why}; no client certificate is presented"),
            );
            spec.client_cert = None;
            match UpstreamTls::new(&spec, super::certs::provider()) {
                Ok(tls) => tls,
                Err(why) => {
                    report(BACKEND_PROTOCOL, format!("{why}; using HTTP"));
                    return policy;
                }
            }
        }
    };
    let mut p = policy.map(|p| (*p).clone()).unwrap_or_default();
    p.upstream_tls = Some(Arc::new(tls));
    Some(Arc::new(p))
}
