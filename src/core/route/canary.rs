//! Canary routing (ingress-nginx's `canary: "true"` Ingress): an alternative backend on a
//! route and the per-request choice between it and the route's own backend.
//!
//! The choice is sans-IO and lock-free: it reads the request (a field, a cookie) and, for a
//! weight, one draw from the worker's own generator passed in by the caller. Precedence as
//! ingress-nginx's: the field, then the cookie, then the weight.

use std::sync::Arc;

use regex::bytes::Regex;

use super::BackendId;
use super::key::KeySource;
use super::policy::{Balance, RoutePolicy};
use crate::core::route::affinity::Affinity;

/// Largest compiled program of one `canary-by-header-pattern`.
const PATTERN_SIZE: usize = 1 << 20;

/// A `canary-by-header-pattern`: a regex searched in the field's value (unanchored, as
/// ingress-nginx's `ngx.re.match`). Compares by its source.
#[derive(Clone, Debug)]
pub struct Pattern(Arc<Regex>);

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, String> {
        if source.is_empty() {
            return Err("empty pattern".to_string());
        }
        regex::bytes::RegexBuilder::new(source)
            .size_limit(PATTERN_SIZE)
            .build()
            .map(|r| Pattern(Arc::new(r)))
            .map_err(|e| format!("not a regular expression: {e}"))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Pattern {}

/// How the `canary-by-header` field's value is judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderMatch {
    /// `always` → canary, `never` → main, anything else → the next rule.
    Keywords,
    /// `canary-by-header-value`: this exact value → canary, anything else → the next rule.
    Value(Box<str>),
    /// `canary-by-header-pattern` (ignored when a value is set): a match → canary, no match
    /// → the next rule.
    Pattern(Pattern),
}

/// The request rules of one canary Ingress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryRule {
    /// `canary-by-header`: the field's name and how its value is judged.
    pub header: Option<(Box<str>, HeaderMatch)>,
    /// `canary-by-cookie`: a cookie whose value `always` / `never` decides.
    pub cookie: Option<Box<str>>,
    /// `canary-weight` out of `canary-weight-total`: the share of the remaining requests.
    pub weight: u32,
    pub weight_total: u32,
}

/// What one rule said about a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Say {
    Canary,
    Main,
    Pass,
}

impl CanaryRule {
    /// ingress-nginx's `canary-weight-total` default.
    pub const DEFAULT_TOTAL: u32 = 100;

    /// No request rule and weight 0: nothing ever goes to the canary.
    pub fn new() -> CanaryRule {
        CanaryRule {
            header: None,
            cookie: None,
            weight: 0,
            weight_total: CanaryRule::DEFAULT_TOTAL,
        }
    }

    /// Whether `req` goes to the canary. `roll(n)` draws uniformly from `0..n` (the worker's
    /// generator); it is called only when the weight decides and is neither 0 nor all.
    pub fn choose(&self, req: &dyn KeySource, roll: &mut dyn FnMut(u32) -> u32) -> bool {
        match self.by_header(req) {
            Say::Canary => return true,
            Say::Main => return false,
            Say::Pass => {}
        }
        match self.by_cookie(req) {
            Say::Canary => return true,
            Say::Main => return false,
            Say::Pass => {}
        }
        if self.weight == 0 {
            return false;
        }
        if self.weight >= self.weight_total {
            return true;
        }
        roll(self.weight_total) < self.weight
    }

    fn by_header(&self, req: &dyn KeySource) -> Say {
        let Some((name, how)) = &self.header else {
            return Say::Pass;
        };
        let Some(value) = req.header(name) else {
            return Say::Pass;
        };
        match how {
            HeaderMatch::Value(want) if value == want.as_bytes() => Say::Canary,
            HeaderMatch::Pattern(p) if p.0.is_match(value) => Say::Canary,
            HeaderMatch::Keywords if value == b"always" => Say::Canary,
            HeaderMatch::Keywords if value == b"never" => Say::Main,
            _ => Say::Pass,
        }
    }

    fn by_cookie(&self, req: &dyn KeySource) -> Say {
        let Some(name) = &self.cookie else {
            return Say::Pass;
        };
        let cookies = req.header("cookie").unwrap_or(b"");
        match cookie(cookies, name.as_bytes()) {
            Some(b"always") => Say::Canary,
            Some(b"never") => Say::Main,
            _ => Say::Pass,
        }
    }
}

/// For the route dump: `header=X-Canary:always/never cookie=c weight=10/100`.
impl std::fmt::Display for CanaryRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((name, how)) = &self.header {
            match how {
                HeaderMatch::Keywords => write!(f, "header={name}:always/never ")?,
                HeaderMatch::Value(v) => write!(f, "header={name}={v:?} ")?,
                HeaderMatch::Pattern(p) => write!(f, "header={name}~{:?} ", p.as_str())?,
            }
        }
        if let Some(c) = &self.cookie {
            write!(f, "cookie={c} ")?;
        }
        write!(f, "weight={}/{}", self.weight, self.weight_total)
    }
}

impl Default for CanaryRule {
    fn default() -> Self {
        CanaryRule::new()
    }
}

/// The value of cookie `name` in a `Cookie` field (`a=1; b=2`).
fn cookie<'a>(field: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    field.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// What the choice asks of the worker: its own generator, and what its snapshot and
/// health state say about backends and affinity cookies.
pub trait Context {
    /// A uniform draw from `0..n` (`n > 0`).
    fn roll(&mut self, n: u32) -> u32;
    /// Whether `backend` has an endpoint to send to.
    fn usable(&self, backend: BackendId) -> bool;
    /// Whether the request's `affinity` cookie names a usable endpoint of `backend`.
    fn pinned(&mut self, backend: BackendId, affinity: &Affinity) -> bool;
}

/// A canary on a route: its backend, its rule, and the policy requests sent to it carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    pub backend: BackendId,
    pub rule: CanaryRule,
    /// `namespace/name` of the canary Ingress (the access log's route for its requests).
    pub ingress: Arc<str>,
    /// The canary backend's own balancing: as in ingress-nginx, the only setting of a
    /// canary Ingress besides its canary rules that is honoured.
    pub balance: Option<Balance>,
    /// The main route's affinity, set by [`Canary::under`] (ingress-nginx's default canary
    /// behaviour copies the main backend's session affinity to the canary).
    pub affinity: Option<Affinity>,
    /// The main route's policy with `balance` in place of its own (see [`Canary::under`]);
    /// `None` when that leaves nothing set.
    pub policy: Option<Arc<RoutePolicy>>,
}

impl Canary {
    /// Whether a request for the route whose backend is `main` (with affinity `sticky`, if
    /// any) goes to this canary. As ingress-nginx's default (`affinity-canary-behavior:
    /// sticky`): a request whose affinity cookie pins it to the main backend stays there, one
    /// pinned to the canary goes there, the others follow [`CanaryRule::choose`]; a canary
    /// without endpoints takes nothing.
    pub fn takes(
        &self,
        main: BackendId,
        sticky: Option<&Affinity>,
        req: &dyn KeySource,
        cx: &mut dyn Context,
    ) -> bool {
        if !cx.usable(self.backend) {
            return false;
        }
        if sticky.is_some_and(|a| cx.pinned(main, a)) {
            return false;
        }
        if self
            .affinity
            .as_ref()
            .is_some_and(|a| cx.pinned(self.backend, a))
        {
            return true;
        }
        self.rule.choose(req, &mut |n| cx.roll(n))
    }

    /// This canary under a main route whose policy is `main`: requests sent to the canary
    /// get the main route's policy (timeouts, rewrites, address lists, affinity...), with
    /// the canary's balancing.
    pub fn under(mut self, main: Option<&Arc<RoutePolicy>>) -> Canary {
        let mut policy = main.map(|p| (**p).clone()).unwrap_or_default();
        policy.balance = self.balance.clone();
        self.affinity = policy.affinity.clone();
        self.policy = (!policy.is_empty()).then(|| Arc::new(policy));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    struct Req(Vec<(&'static str, &'static str)>);

    impl KeySource for Req {
        fn remote_ip(&self) -> IpAddr {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
        fn host(&self) -> &str {
            "foo"
        }
        fn path(&self) -> &str {
            "/"
        }
        fn query(&self) -> Option<&str> {
            None
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        }
    }

    fn never_rolls(_: u32) -> u32 {
        panic!("the weight was not supposed to decide")
    }

    fn rule(header: Option<HeaderMatch>, cookie: Option<&str>, weight: u32) -> CanaryRule {
        CanaryRule {
            header: header.map(|h| ("CanaryByHeader".into(), h)),
            cookie: cookie.map(Into::into),
            weight,
            weight_total: 100,
        }
    }

    fn go(r: &CanaryRule, fields: &[(&'static str, &'static str)]) -> bool {
        r.choose(&Req(fields.to_vec()), &mut never_rolls)
    }

    #[test]
    fn header_keywords_then_cookie_then_weight() {
        let r = rule(Some(HeaderMatch::Keywords), Some("CanaryByCookie"), 0);
        assert!(go(&r, &[("canarybyheader", "always")]));
        assert!(!go(&r, &[("CanaryByHeader", "never")]));
        assert!(!go(&r, &[("CanaryByHeader", "badheadervalue")]));
        // The field decides before the cookie.
        assert!(!go(
            &r,
            &[
                ("CanaryByHeader", "never"),
                ("Cookie", "CanaryByCookie=always")
            ]
        ));
        // Another value passes to the cookie.
        assert!(go(
            &r,
            &[
                ("CanaryByHeader", "other"),
                ("Cookie", "a=b; CanaryByCookie=always")
            ]
        ));
        assert!(!go(&r, &[("Cookie", "CanaryByCookie=never")]));
        assert!(!go(&r, &[("Cookie", "CanaryByCookie=badcookievalue")]));
    }

    #[test]
    fn a_header_value_replaces_the_keywords() {
        let r = rule(
            Some(HeaderMatch::Value("DoCanary".into())),
            Some("CanaryByCookie"),
            0,
        );
        assert!(go(&r, &[("CanaryByHeader", "DoCanary")]));
        assert!(!go(&r, &[("CanaryByHeader", "always")]));
        assert!(!go(&r, &[("CanaryByHeader", "docanary")]));
        // "never" is just another value: the cookie still decides.
        assert!(go(
            &r,
            &[
                ("CanaryByHeader", "never"),
                ("Cookie", "CanaryByCookie=always")
            ]
        ));
    }

    #[test]
    fn a_header_pattern_is_searched() {
        let r = rule(
            Some(HeaderMatch::Pattern(
                Pattern::new("^(Do|Try)Canary$").unwrap(),
            )),
            None,
            0,
        );
        assert!(go(&r, &[("CanaryByHeader", "DoCanary")]));
        assert!(go(&r, &[("CanaryByHeader", "TryCanary")]));
        assert!(!go(&r, &[("CanaryByHeader", "DoCanary2")]));
        assert!(!go(&r, &[("CanaryByHeader", "always")]));
        assert!(Pattern::new("(").is_err());
        assert!(Pattern::new("").is_err());
    }

    #[test]
    fn weights_0_and_all_never_draw_and_others_follow_the_draw() {
        assert!(!go(&rule(None, None, 0), &[]));
        assert!(go(&rule(None, None, 100), &[]));
        let mut r = rule(None, None, 30);
        r.weight_total = 1000;
        let mut draws = 0u32;
        let mut roll = |n: u32| {
            assert_eq!(n, 1000);
            draws += 1;
            (draws * 7) % n
        };
        let canary = (0..1000)
            .filter(|_| r.choose(&Req(vec![]), &mut roll))
            .count();
        assert_eq!(draws, 1000);
        // 7 is coprime with 1000: every residue once, 30 of them below 30.
        assert_eq!(canary, 30);
    }

    #[test]
    fn the_canary_policy_is_the_main_one_with_the_canary_balancing() {
        let main = Arc::new(RoutePolicy {
            balance: Some(Balance::Ewma),
            affinity: Some(Affinity::new()),
            connect_timeout: Some(std::time::Duration::from_secs(3)),
            ..RoutePolicy::default()
        });
        let c = Canary {
            backend: BackendId(1),
            rule: CanaryRule::new(),
            ingress: "ns/canary".into(),
            balance: None,
            affinity: None,
            policy: None,
        };
        let under = c.clone().under(Some(&main));
        let p = under.policy.unwrap();
        assert_eq!(p.balance, None);
        // The main route's affinity, for the policy and for the sticky choice.
        assert_eq!(p.affinity, Some(Affinity::new()));
        assert_eq!(under.affinity, Some(Affinity::new()));
        assert_eq!(p.connect_timeout, main.connect_timeout);
        assert_eq!(c.under(None).policy, None);
    }
}
