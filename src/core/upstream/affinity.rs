//! Cookie session affinity (`affinity: cookie`, `session-cookie-*`): which endpoint a
//! request's cookie names, and the `Set-Cookie` field that pins a client to one.
//!
//! The cookie value is 16 hex digits, read in one of two ways (`affinity-mode`):
//!
//! * `persistent`: a keyed hash (FNV-1a 64 over a fixed key, then a mixer) of the endpoint's
//!   address and port. It names that endpoint for as long as it exists: adding endpoints
//!   never moves a session; only the sessions of an endpoint that is gone (or not ready, or
//!   ejected) move, and get a new cookie.
//! * `balanced` (ingress-nginx's default): a session key, placed on the backend's endpoints
//!   by rendezvous hashing of its bucket ([`super::hash`]; one table look-up per request on a
//!   large backend). A new session's key is drawn so that it lands on the endpoint the
//!   balancer chose. When an endpoint leaves, only its sessions move (each to its key's next
//!   choice, cookie unchanged); when endpoints are added, each session moves with probability
//!   about added/total, so new pods take their share of existing sessions (as ingress-nginx's
//!   consistent-hash `balanced` mode does).
//!
//! Both name the same endpoint on every worker and every Sluice replica and do not show the
//! pod's address. A value that names no usable endpoint is ignored: the balancer picks and a
//! new cookie is set. Sans-IO: wall-clock time for `Expires` is passed in.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::hash::Prepared;
use crate::core::route::key::Fnv;

pub use crate::core::route::affinity::{Affinity, Mode, SameSite, parse_attribute, parse_name};

/// The key of the endpoint ids: fixed, so that every replica computes the same ids.
const KEY: &[u8] = b"sluice affinity v1";

/// The id of `endpoint` in affinity cookies.
pub fn endpoint_id(endpoint: &SocketAddr) -> u64 {
    let mut h = Fnv::new();
    h.write(KEY);
    match endpoint.ip() {
        IpAddr::V4(v4) => h.write(&v4.octets()),
        IpAddr::V6(v6) => h.write(&v6.octets()),
    }
    h.write(&endpoint.port().to_be_bytes());
    // splitmix64's finaliser: FNV's low bits alone are weak.
    let mut z = h.finish();
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The endpoint among `endpoints` whose id is `id`.
pub fn find(endpoints: &[SocketAddr], id: u64) -> Option<usize> {
    endpoints.iter().position(|ep| endpoint_id(ep) == id)
}

/// `balanced`: a session key whose first rendezvous choice among the endpoints of
/// `prepared` is the one at `target`, drawn from `draw` (rejection sampling: about N draws,
/// each a bucket-table look-up once the worker has seen the bucket, else the bucket scored
/// once over every endpoint and stored; no allocation). `None` only when `target` is out of
/// range or after 64·N unlucky draws (probability e^-64 when the target holds its 1/N of
/// the buckets).
pub fn session_key(
    prepared: &mut Prepared,
    target: usize,
    mut draw: impl FnMut() -> u64,
) -> Option<u64> {
    let n = prepared.endpoints().len();
    if target >= n {
        return None;
    }
    (0..64 * n)
        .map(|_| draw())
        .find(|key| prepared.lands_on(*key, target))
}

/// What the `Set-Cookie` field depends on besides the affinity and the endpoint.
pub struct CookieContext<'a> {
    /// The matched rule's path, used when `session-cookie-path` is not set.
    pub rule_path: &'a str,
    pub https: bool,
    /// Seconds since the Unix epoch, for `Expires` (left out when unknown).
    pub unix_now: Option<u64>,
    /// The client cannot handle `SameSite=None` (see [`samesite_none_incompatible`]).
    pub old_client: bool,
}

/// The `Set-Cookie` value with the cookie value `id` (see the module doc), in ingress-nginx's
/// attribute order: `NAME=id; Expires=…; Max-Age=…; Domain=…; Path=…; Secure; HttpOnly;
/// SameSite=…`.
pub fn set_cookie(a: &Affinity, id: u64, ctx: &CookieContext<'_>) -> String {
    let mut v = String::with_capacity(96);
    let _ = write!(v, "{}={id:016x}", a.name);
    if let (Some(secs), Some(now)) = (a.expires, ctx.unix_now) {
        v.push_str("; Expires=");
        cookie_date(now.saturating_add(secs), &mut v);
    }
    if let Some(max_age) = a.max_age {
        let _ = write!(v, "; Max-Age={max_age}");
    }
    if let Some(domain) = &a.domain {
        let _ = write!(v, "; Domain={domain}");
    }
    let path = a.path.as_deref().unwrap_or(ctx.rule_path);
    let _ = write!(v, "; Path={path}");
    if a.secure || ctx.https {
        v.push_str("; Secure");
    }
    v.push_str("; HttpOnly");
    match a.samesite {
        Some(SameSite::None) if a.conditional_samesite_none && ctx.old_client => {}
        Some(s) => {
            let _ = write!(v, "; SameSite={}", s.as_str());
        }
        None => {}
    }
    v
}

/// Clients known to reject or misread `SameSite=None` (Chrome 51 to 66, iOS 12, Safari on
/// macOS 10.14), from their `User-Agent`.
pub fn samesite_none_incompatible(user_agent: &[u8]) -> bool {
    let Ok(ua) = std::str::from_utf8(user_agent) else {
        return false;
    };
    if ua.contains("iPhone OS 12_") || ua.contains("iPad; CPU OS 12_") {
        return true;
    }
    if ua.contains("Macintosh; Intel Mac OS X 10_14") && ua.contains("Version/") {
        return true;
    }
    for marker in ["Chrome/", "Chromium/"] {
        if let Some(at) = ua.find(marker) {
            let major: String = ua[at + marker.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if major.parse::<u32>().is_ok_and(|m| (51..=66).contains(&m)) {
                return true;
            }
        }
    }
    false
}

/// A cookie date as nginx writes one: `Thu, 18-Nov-10 11:27:35 GMT`.
fn cookie_date(unix: u64, out: &mut String) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{}, {:02}-{}-{:02} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year.rem_euclid(100),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// Inserts `name: value` as the last field of the response head that starts at `head_start`
/// in `out` (the head is complete there).
pub fn insert_field(out: &mut Vec<u8>, head_start: usize, name: &str, value: &str) {
    let Some(end) = out
        .get(head_start..)
        .and_then(|head| memchr::memmem::find(head, b"\r\n\r\n"))
    else {
        return;
    };
    let at = head_start + end + 2;
    let field = [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"].concat();
    out.splice(at..at, field);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 8080))
    }

    #[test]
    fn ids_are_stable_distinct_and_found_again() {
        let eps = [ep(1), ep(2), ep(3)];
        let ids: Vec<u64> = eps.iter().map(endpoint_id).collect();
        assert_ne!(ids[0], ids[1]);
        assert_eq!(find(&eps, ids[2]), Some(2));
        assert_eq!(find(&eps[..2], ids[2]), None);
        // Fixed across processes and versions: cookies outlive a restart.
        assert_eq!(
            endpoint_id(&ep(1)),
            endpoint_id(&"10.0.0.1:8080".parse().unwrap())
        );
        let a = Affinity::new();
        let field = format!("a=b; INGRESSCOOKIE={:016x}; c=d", ids[1]);
        assert_eq!(a.requested(Some(field.as_bytes())), Some(ids[1]));
        assert_eq!(a.requested(Some(b"INGRESSCOOKIE=zz")), None);
        assert_eq!(a.requested(None), None);
    }

    #[test]
    fn set_cookie_has_ingress_nginx_attributes() {
        let a = Affinity {
            name: parse_name("SERVERID").unwrap(),
            expires: Some(172_800),
            max_age: Some(259_200),
            samesite: Some(SameSite::None),
            conditional_samesite_none: true,
            ..Affinity::new()
        };
        let ctx = CookieContext {
            rule_path: "/something",
            https: false,
            // 2010-11-18 11:27:35 UTC, minus the two days of Expires.
            unix_now: Some(1_290_079_655 - 172_800),
            old_client: false,
        };
        let v = set_cookie(&a, endpoint_id(&ep(1)), &ctx);
        let id = format!("{:016x}", endpoint_id(&ep(1)));
        assert_eq!(
            v,
            format!(
                "SERVERID={id}; Expires=Thu, 18-Nov-10 11:27:35 GMT; Max-Age=259200; \
                 Path=/something; HttpOnly; SameSite=None"
            )
        );
        let old = CookieContext {
            old_client: true,
            https: true,
            ..ctx
        };
        assert_eq!(
            set_cookie(&a, endpoint_id(&ep(1)), &old),
            format!(
                "SERVERID={id}; Expires=Thu, 18-Nov-10 11:27:35 GMT; Max-Age=259200; \
                 Path=/something; Secure; HttpOnly"
            )
        );
    }

    #[test]
    fn cookie_dates() {
        let mut s = String::new();
        cookie_date(0, &mut s);
        assert_eq!(s, "Thu, 01-Jan-70 00:00:00 GMT");
        s.clear();
        cookie_date(951_782_400, &mut s);
        assert_eq!(s, "Tue, 29-Feb-00 00:00:00 GMT");
    }

    #[test]
    fn old_clients() {
        assert!(samesite_none_incompatible(
            b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/60.0.3112.113 Safari/537.36"
        ));
        assert!(!samesite_none_incompatible(
            b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0.0.0 Safari/537.36"
        ));
        assert!(samesite_none_incompatible(
            b"Mozilla/5.0 (iPhone; CPU iPhone OS 12_0 like Mac OS X) Version/12.0 Mobile Safari"
        ));
    }

    #[test]
    fn names_and_attributes_are_checked() {
        assert!(parse_name("SERVERID").is_ok());
        assert!(parse_name("a b").is_err());
        assert!(parse_name("a;b").is_err());
        assert!(parse_attribute("/foo/bar").is_ok());
        assert!(parse_attribute("/x; Domain=evil").is_err());
        assert!(parse_attribute("/x\r\n").is_err());
    }

    #[test]
    fn a_field_goes_at_the_end_of_the_head() {
        let mut out = b"xxHTTP/1.1 200 OK\r\nA: b\r\n\r\nbody".to_vec();
        insert_field(&mut out, 2, "Set-Cookie", "n=v");
        assert_eq!(
            out,
            b"xxHTTP/1.1 200 OK\r\nA: b\r\nSet-Cookie: n=v\r\n\r\nbody".to_vec()
        );
    }
}
