//! Request-side policies of a route, compiled from ingress-nginx annotations: redirects,
//! `app-root`, `from-to-www-redirect`, rewrites, `x-forwarded-prefix`, source-address allow
//! and deny lists and CORS. Typed values only; evaluated sans-IO on a routed request.
//!
//! Guarantees: every pattern is a `regex` crate regex (linear time in the input), compiled
//! when the snapshot is built and shared by workers; an address list is looked up by binary
//! search over merged ranges, whatever its length.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use regex::Regex;

use super::basic_auth::{AuthOutcome, BasicAuth};
use super::custom_errors::CustomErrors;
use super::headers::{ConnectionHeader, HeaderSet};

/// What one Ingress's request-policy annotations say. `None` / `false`: not set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestPolicy {
    /// `temporal-redirect` (wins, as in ingress-nginx) or `permanent-redirect`.
    pub redirect: Option<Redirect>,
    /// `app-root`: a request for `/` is answered 302 to this path.
    pub app_root: Option<String>,
    /// `from-to-www-redirect`: the hosts of the Ingress's rules (lower-case); a request that
    /// reached them through the `www.` alias (or its absence) is answered 308 to the host.
    pub from_to_www: Option<Vec<String>>,
    /// `x-forwarded-prefix`: sent upstream as `X-Forwarded-Prefix`.
    pub forwarded_prefix: Option<String>,
    /// `use-regex`: the paths of every rule of the Ingress's hosts are case-insensitive
    /// regexes anchored at the start (ingress-nginx's `location ~* "^path"`).
    pub use_regex: bool,
    /// `rewrite-target`: the target sent upstream, `$1`… replaced by the path's captures.
    /// Also turns the host's paths into regexes, as in ingress-nginx.
    pub rewrite_target: Option<String>,
    /// The matched rule's path regex, set by the route table on the rule's copy of the policy
    /// (a rewrite needs the captures of the rule that matched).
    pub path_regex: Option<PathRegex>,
    /// `allowlist-source-range` / `whitelist-source-range`: only these clients (else 403).
    pub allow: Option<CidrSet>,
    /// `denylist-source-range`: these clients get 403.
    pub deny: Option<CidrSet>,
    /// `enable-cors` and the `cors-*` settings.
    pub cors: Option<Cors>,
    /// `auth-type: basic` with `auth-secret`, `auth-secret-type`, `auth-realm`.
    pub auth: Option<BasicAuth>,
    /// `server-alias`: more host names (lower-case, exact) that reach the hosts of the
    /// Ingress's rules; resolved by the route table, never over a host some rule names.
    pub aliases: Option<Vec<String>>,
    /// `limit-rps`, `limit-rpm`, `limit-connections` (with `limit-burst-multiplier` and
    /// `limit-whitelist`): checked by the connection machine before the address lists.
    pub limits: Option<super::rate_limit::RateLimits>,
    /// `auth-url` and its settings: a subrequest decides (after every check above).
    pub ext_auth: Option<Arc<super::ext_auth::ExtAuth>>,
    /// `mirror-target` and its settings: a copy of each request goes there.
    pub mirror: Option<Arc<super::mirror::Mirror>>,
    // Custom errors, headers and `satisfy` (src/core/route/custom_errors.rs, headers.rs).
    /// `custom-http-errors`, `default-backend`, `disable-proxy-intercept-errors`.
    pub errors: Option<CustomErrors>,
    /// `sluice.dev/request-headers`: set on the request sent upstream.
    pub request_headers: Option<HeaderSet>,
    /// `sluice.dev/response-headers`: set on the proxied response.
    pub response_headers: Option<HeaderSet>,
    /// `connection-proxy-header`: the `Connection` value sent upstream.
    pub connection: Option<ConnectionHeader>,
    /// `satisfy: any`: the address lists or basic authentication, either one, lets a request
    /// through (nginx's `satisfy any`); `false`: both must.
    pub satisfy_any: bool,
    /// `limit-rate`, `limit-rate-after`: response bandwidth per connection.
    pub limit_rate: Option<super::bandwidth::LimitRate>,
}

/// A redirect answered by Sluice: status and `Location` as written in the annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub code: u16,
    pub url: String,
}

/// A compiled path regex, compared by its pattern (tables compare by routing).
#[derive(Clone, Debug)]
pub struct PathRegex(pub Arc<Regex>);

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for PathRegex {}

/// Largest compiled program of one path regex (the `regex` crate's own default is 10 MiB).
const PATH_REGEX_SIZE: usize = 1 << 20;

impl PathRegex {
    /// `path` as ingress-nginx writes a regex location: case-insensitive, anchored at the
    /// start only.
    pub fn compile(path: &str) -> Result<PathRegex, String> {
        regex::RegexBuilder::new(&format!("^(?:{path})"))
            .case_insensitive(true)
            .size_limit(PATH_REGEX_SIZE)
            .build()
            .map(|r| PathRegex(Arc::new(r)))
            .map_err(|e| format!("not a regular expression: {e}"))
    }

    /// `path` matched literally (a path of a regex host that is not a valid regex).
    pub fn literal(path: &str) -> PathRegex {
        Self::compile(&regex::escape(path)).expect("an escaped path is a valid regex")
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.0.is_match(path)
    }
}

/// A set of IPv4 and IPv6 networks: sorted, merged, inclusive ranges of 128-bit addresses
/// (IPv4 mapped into `::ffff:0:0/96`), so a lookup is one binary search.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrSet {
    ranges: Vec<(u128, u128)>,
}

fn key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl CidrSet {
    pub fn new(nets: &[IpNet]) -> CidrSet {
        let mut ranges: Vec<(u128, u128)> = nets
            .iter()
            .map(|net| {
                let net = net.trunc();
                let (lo, prefix) = match net {
                    IpNet::V4(n) => (key(IpAddr::V4(n.network())), 96 + n.prefix_len()),
                    IpNet::V6(n) => (key(IpAddr::V6(n.network())), n.prefix_len()),
                };
                let host_bits = 128 - u32::from(prefix);
                let span = if host_bits == 128 {
                    u128::MAX
                } else {
                    (1u128 << host_bits) - 1
                };
                (lo, lo | span)
            })
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        CidrSet { ranges: merged }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let k = key(ip);
        let after = self.ranges.partition_point(|r| r.0 <= k);
        after > 0 && self.ranges[after - 1].1 >= k
    }

    /// Merged ranges (for the route dump).
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// CORS as ingress-nginx configures it (`enable-cors` and the `cors-*` annotations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    /// `None`: any origin (`*`).
    pub origins: Option<Vec<OriginPattern>>,
    /// The fields after `Access-Control-Allow-Origin`, rendered once:
    /// `Access-Control-Allow-Credentials` (when true), `-Allow-Methods`, `-Allow-Headers`,
    /// `-Expose-Headers` (when set), `-Max-Age`, each ending in CRLF.
    pub fields: String,
}

/// ingress-nginx's defaults.
pub const CORS_METHODS: &str = "GET, PUT, POST, DELETE, PATCH, OPTIONS";
pub const CORS_HEADERS: &str = "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization";
pub const CORS_MAX_AGE: u64 = 1_728_000;

/// The CORS response fields a route may set (upstream copies are replaced).
pub const CORS_FIELDS: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-expose-headers",
    "access-control-max-age",
];

impl Cors {
    /// Values must already be checked for CR/LF (the annotation reader does).
    pub fn new(
        origins: Option<Vec<OriginPattern>>,
        methods: &str,
        headers: &str,
        credentials: bool,
        expose: Option<&str>,
        max_age: u64,
    ) -> Cors {
        let mut fields = String::new();
        if credentials {
            fields.push_str("Access-Control-Allow-Credentials: true\r\n");
        }
        fields.push_str(&format!("Access-Control-Allow-Methods: {methods}\r\n"));
        fields.push_str(&format!("Access-Control-Allow-Headers: {headers}\r\n"));
        if let Some(expose) = expose.filter(|e| !e.is_empty()) {
            fields.push_str(&format!("Access-Control-Expose-Headers: {expose}\r\n"));
        }
        fields.push_str(&format!("Access-Control-Max-Age: {max_age}\r\n"));
        Cors { origins, fields }
    }

    /// The `Access-Control-Allow-Origin` value for a request with this `Origin` field, or
    /// `None` when CORS does not apply to it.
    pub fn allow_origin(&self, origin: Option<&[u8]>) -> Option<Box<str>> {
        let Some(list) = &self.origins else {
            return Some("*".into());
        };
        let origin = std::str::from_utf8(origin?).ok()?.trim();
        list.iter()
            .any(|p| p.matches(origin))
            .then(|| origin.into())
    }
}

/// One `cors-allow-origin` entry: `https://app.example.com[:port]`, or with a wildcard first
/// label `https://*.example.com` (one or more labels of letters, digits and `-`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    /// Lower-case; for a wildcard, what comes before `*`.
    pub before: String,
    /// Lower-case; for a wildcard, what comes after `*` (starts with `.`).
    pub after: Option<String>,
}

impl OriginPattern {
    /// An entry as ingress-nginx accepts it: optional `http(s)://`, optional `*.`, then
    /// letters, digits, `-` and `.`, then an optional `:port`.
    pub fn parse(entry: &str) -> Result<OriginPattern, String> {
        let bad = || {
            format!(
                "{entry:?} is not an origin like https://app.example.com or https://*.example.com"
            )
        };
        let lower = entry.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"))
            .unwrap_or(&lower);
        let scheme = &lower[..lower.len() - rest.len()];
        let (wild, host_port) = match rest.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let (host, port) = match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !host_ok || !port_ok {
            return Err(bad());
        }
        Ok(if wild {
            OriginPattern {
                before: scheme.to_string(),
                after: Some(format!(".{host_port}")),
            }
        } else {
            OriginPattern {
                before: lower,
                after: None,
            }
        })
    }

    /// Case-insensitive; the whole origin must match (ingress-nginx anchors only the end).
    /// Allocates nothing.
    pub fn matches(&self, origin: &str) -> bool {
        let Some(after) = &self.after else {
            return origin.eq_ignore_ascii_case(&self.before);
        };
        let (b, a) = (self.before.len(), after.len());
        if origin.len() < b + a
            || !origin.is_char_boundary(b)
            || !origin.is_char_boundary(origin.len() - a)
            || !origin[..b].eq_ignore_ascii_case(&self.before)
            || !origin[origin.len() - a..].eq_ignore_ascii_case(after)
        {
            return false;
        }
        let middle = &origin[b..origin.len() - a];
        // With no scheme in the pattern, the origin's scheme is part of `middle`.
        let middle = if self.before.is_empty() {
            let lower_start = |p: &str| {
                middle
                    .get(..p.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(p))
            };
            if lower_start("https://") {
                &middle[8..]
            } else if lower_start("http://") {
                &middle[7..]
            } else {
                middle
            }
        } else {
            middle
        };
        !middle.is_empty()
            && middle
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !middle.starts_with('.')
            && !middle.ends_with('.')
    }
}

/// The parts of a routed request a policy reads.
#[derive(Copy, Clone, Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The `Host` without port, as sent.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `http` or `https`: how the client reached us.
    pub scheme: &'a str,
    /// The `Origin` field, if any.
    pub origin: Option<&'a [u8]>,
    /// The client's address (see `Conn`'s one accessor for it).
    pub client: IpAddr,
    /// The `Authorization` field, if any.
    pub authorization: Option<&'a [u8]>,
}

/// What a policy decides for a request before it is forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it (with [`RequestPolicy::rewrite`] and CORS fields, if any), after the
    /// external authentication (`auth-url`), if any.
    Pass,
    /// Forward it as [`Verdict::Pass`], without asking the external authentication: under
    /// `satisfy: any` the address lists or basic authentication already let it through.
    Satisfied,
    /// Answer with a redirect.
    Redirect { code: u16, location: String },
    /// A CORS preflight: answer 204 with the CORS fields and this allowed origin.
    Preflight { allow_origin: Box<str> },
    /// The client's address is not allowed: 403.
    Forbidden,
    /// Basic authentication failed: 401 with `WWW-Authenticate: Basic realm="<realm>"`.
    Unauthorized,
    /// Basic authentication cannot be checked (its Secret is missing): 503.
    Unavailable,
}

/// True when `host` is a plain DNS name (so it may be copied into a `Location`).
fn dns_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl RequestPolicy {
    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == RequestPolicy::default()
    }

    /// Whether the route's host matches its paths as regexes.
    pub fn regex_paths(&self) -> bool {
        self.use_regex || self.rewrite_target.is_some()
    }

    /// The decision, in the order nginx takes them: the `www` alias and `app-root` (server
    /// level), the redirect, the CORS preflight (rewrite phase), then the address lists
    /// (access phase), then basic authentication.
    pub fn verdict(&self, req: &RequestView<'_>) -> Verdict {
        let host = req.host.strip_suffix('.').unwrap_or(req.host);
        if let Some(hosts) = &self.from_to_www
            && dns_name(host)
        {
            let lower = host.to_ascii_lowercase();
            if !hosts.contains(&lower) {
                let target = match lower.strip_prefix("www.") {
                    Some(bare) => bare.to_string(),
                    None => format!("www.{lower}"),
                };
                if hosts.contains(&target) {
                    let mut location = format!("{}://{target}{}", req.scheme, req.path);
                    if let Some(q) = req.query {
                        location.push('?');
                        location.push_str(q);
                    }
                    return Verdict::Redirect {
                        code: 308,
                        location,
                    };
                }
            }
        }
        if let Some(root) = &self.app_root
            && req.path == "/"
        {
            let location = if dns_name(host) {
                format!("{}://{}{root}", req.scheme, host.to_ascii_lowercase())
            } else {
                root.clone()
            };
            return Verdict::Redirect {
                code: 302,
                location,
            };
        }
        if let Some(r) = &self.redirect {
            return Verdict::Redirect {
                code: r.code,
                location: r.url.clone(),
            };
        }
        if let Some(cors) = &self.cors
            && req.method == "OPTIONS"
            && let Some(allow_origin) = cors.allow_origin(req.origin)
        {
            return Verdict::Preflight { allow_origin };
        }
        let listed = self.deny.is_some() || self.allow.is_some();
        let address_ok = !(self.deny.as_ref().is_some_and(|d| d.contains(req.client))
            || self.allow.as_ref().is_some_and(|a| !a.contains(req.client)));
        // An `auth-url` that cannot be used denies the location (ingress-nginx: 503).
        let ext_auth = self.ext_auth.as_ref().map(|e| e.target.is_some());
        if ext_auth == Some(false) {
            return Verdict::Unavailable;
        }
        // nginx's `satisfy any` (with two or more access checks: address lists, basic
        // authentication, `auth-url`): the first check that passes lets the request through;
        // when all fail, authentication's answer (401) wins over the address lists' 403.
        let checks = usize::from(listed)
            + usize::from(self.auth.is_some())
            + usize::from(ext_auth.is_some());
        let any = self.satisfy_any && checks >= 2;
        if any {
            if listed && address_ok {
                return Verdict::Satisfied;
            }
        } else if !address_ok {
            return Verdict::Forbidden;
        }
        match self.auth.as_ref().map(|a| a.check(req.authorization)) {
            Some(AuthOutcome::Allowed) if any => Verdict::Satisfied,
            // Under `satisfy any` the external authentication still may let it through.
            Some(AuthOutcome::Challenge | AuthOutcome::Unavailable)
                if any && ext_auth.is_some() =>
            {
                Verdict::Pass
            }
            Some(AuthOutcome::Challenge) => Verdict::Unauthorized,
            Some(AuthOutcome::Unavailable) => Verdict::Unavailable,
            // Only address lists and `auth-url` under `satisfy any`, the lists failed: the
            // external authentication decides.
            Some(AuthOutcome::Allowed) | None => Verdict::Pass,
        }
    }

    /// The target to send upstream instead of the request's (`rewrite-target`), or `None` to
    /// keep it. As nginx's `rewrite … break`: the whole path is replaced by the target with
    /// `$1`…`$9` taken from the rule's path regex; the query is kept (after the target's own
    /// arguments, joined by `&`).
    pub fn rewrite(&self, path: &str, query: Option<&str>) -> Option<String> {
        let target = self.rewrite_target.as_deref()?;
        let regex = self.path_regex.as_ref()?;
        let caps = regex.0.captures(path)?;
        let mut out = String::with_capacity(target.len() + path.len());
        let mut rest = target;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            match after.as_bytes().first() {
                Some(d @ b'1'..=b'9') => {
                    let group = usize::from(d - b'0');
                    if let Some(m) = caps.get(group) {
                        out.push_str(m.as_str());
                    }
                    rest = &after[1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        if !out.starts_with('/') {
            out.insert(0, '/');
        }
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(q);
        }
        Some(out)
    }

    /// This policy as the copy a rule of a regex host carries: with the rule's path regex
    /// when it rewrites (`None`: the policy as is will do).
    pub fn for_rule(&self, regex: &PathRegex) -> Option<RequestPolicy> {
        self.rewrite_target.as_ref()?;
        if self.path_regex.as_ref() == Some(regex) {
            return None;
        }
        Some(RequestPolicy {
            path_regex: Some(regex.clone()),
            ..self.clone()
        })
    }
}

/// For the route dump.
impl fmt::Display for RequestPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(r) = &self.redirect {
            parts.push(format!("redirect={} {}", r.code, r.url));
        }
        if let Some(root) = &self.app_root {
            parts.push(format!("app-root={root}"));
        }
        if self.from_to_www.is_some() {
            parts.push("from-to-www".into());
        }
        if let Some(p) = &self.forwarded_prefix {
            parts.push(format!("x-forwarded-prefix={p}"));
        }
        if self.use_regex {
            parts.push("use-regex".into());
        }
        if let Some(t) = &self.rewrite_target {
            parts.push(format!("rewrite={t}"));
        }
        if let Some(a) = &self.allow {
            parts.push(format!("allow={}ranges", a.len()));
        }
        if let Some(d) = &self.deny {
            parts.push(format!("deny={}ranges", d.len()));
        }
        if self.cors.is_some() {
            parts.push("cors".into());
        }
        if self.auth.is_some() {
            parts.push("basic-auth".into());
        }
        if let Some(aliases) = &self.aliases {
            parts.push(format!("server-alias={}", aliases.join(",")));
        }
        if let Some(l) = &self.limits {
            parts.push(l.to_string());
        }
        if let Some(e) = &self.ext_auth {
            match &e.target {
                Some(t) => parts.push(format!("auth-url=http://{}{}", t.authority, t.target)),
                None => parts.push("auth-url=denied".into()),
            }
        }
        if let Some(m) = &self.mirror {
            parts.push(format!("mirror={}", m.authority));
        }
        if let Some(e) = &self.errors {
            parts.push(e.to_string());
        }
        if let Some(h) = &self.request_headers {
            parts.push(format!("request-headers={h}"));
        }
        if let Some(h) = &self.response_headers {
            parts.push(format!("response-headers={h}"));
        }
        if let Some(c) = &self.connection {
            parts.push(format!("connection={}", c.as_str()));
        }
        if self.satisfy_any {
            parts.push("satisfy=any".into());
        }
        if let Some(l) = &self.limit_rate {
            parts.push(l.to_string());
        }
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> CidrSet {
        let nets: Vec<IpNet> = list.iter().map(|s| s.parse().unwrap()).collect();
        CidrSet::new(&nets)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_sets_merge_and_find() {
        let set = nets(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.168.1.7/32",
            "2001:db8::/32",
        ]);
        assert_eq!(set.len(), 3);
        assert!(set.contains(ip("10.255.0.1")));
        assert!(set.contains(ip("192.168.1.7")));
        assert!(!set.contains(ip("192.168.1.8")));
        assert!(!set.contains(ip("11.0.0.0")));
        assert!(set.contains(ip("2001:db8:ffff::1")));
        assert!(!set.contains(ip("2001:db9::1")));
        // An IPv4 client seen on an IPv6 socket.
        assert!(set.contains(ip("::ffff:10.2.3.4")));
        let all = nets(&["0.0.0.0/0", "::/0"]);
        assert!(all.contains(ip("1.2.3.4")) && all.contains(ip("::1")));
        // Adjacent ranges merge; host bits are ignored.
        assert_eq!(nets(&["10.0.0.0/25", "10.0.0.128/25"]).len(), 1);
        assert!(nets(&["10.0.0.9/24"]).contains(ip("10.0.0.200")));
    }

    #[test]
    fn ten_thousand_entries_stay_exact() {
        let list: Vec<IpNet> = (0..10_000u32)
            .map(|i| {
                format!("10.{}.{}.0/24", i / 256 % 256, i % 256)
                    .parse()
                    .unwrap()
            })
            .chain((0..100u32).map(|i| format!("2001:db8:{i:x}::/48").parse().unwrap()))
            .collect();
        let set = CidrSet::new(&list);
        assert!(set.contains(ip("10.39.15.1")));
        assert!(!set.contains(ip("11.0.0.1")));
        assert!(set.contains(ip("2001:db8:63::5")));
        assert!(!set.contains(ip("2001:db8:64::5")));
    }

    #[test]
    fn origins() {
        let p = OriginPattern::parse("https://*.foo.com").unwrap();
        assert!(p.matches("https://a.foo.com"));
        assert!(p.matches("HTTPS://a.b.FOO.com"));
        assert!(!p.matches("https://foo.com"));
        assert!(!p.matches("http://a.foo.com"));
        assert!(!p.matches("https://evil.com/.foo.com"));
        let p = OriginPattern::parse("*.bar.com").unwrap();
        assert!(p.matches("http://a.bar.com") && p.matches("a.BAR.com"));
        assert!(!p.matches("https://.bar.com") && !p.matches("https://a.bar.com.x"));
        let p = OriginPattern::parse("https://origin.cors.com:8080").unwrap();
        assert!(p.matches("https://origin.cors.com:8080"));
        assert!(!p.matches("https://origin.cors.com"));
        assert!(!p.matches("https://xorigin.cors.com:8080"));
        assert!(OriginPattern::parse("https://a b").is_err());
        assert!(OriginPattern::parse("https://a.com:x").is_err());
    }

    fn view<'a>(method: &'a str, path: &'a str) -> RequestView<'a> {
        RequestView {
            method,
            host: "App.example.com",
            path,
            query: Some("a=1"),
            scheme: "http",
            origin: None,
            client: ip("10.0.0.1"),
            authorization: None,
        }
    }

    #[test]
    fn verdict_order() {
        let mut p = RequestPolicy {
            app_root: Some("/app".into()),
            redirect: Some(Redirect {
                code: 301,
                url: "https://elsewhere.example/".into(),
            }),
            deny: Some(nets(&["10.0.0.0/8"])),
            ..RequestPolicy::default()
        };
        assert_eq!(
            p.verdict(&view("GET", "/")),
            Verdict::Redirect {
                code: 302,
                location: "http://app.example.com/app".into()
            }
        );
        assert_eq!(
            p.verdict(&view("GET", "/x")),
            Verdict::Redirect {
                code: 301,
                location: "https://elsewhere.example/".into()
            }
        );
        p.redirect = None;
        assert_eq!(p.verdict(&view("GET", "/x")), Verdict::Forbidden);
        p.deny = None;
        p.allow = Some(nets(&["10.0.0.1/32"]));
        assert_eq!(p.verdict(&view("GET", "/x")), Verdict::Pass);
    }

    #[test]
    fn satisfy_any_needs_one_access_check() {
        use crate::core::route::basic_auth::PasswordHash;
        let auth = BasicAuth {
            realm: "r".into(),
            users: Some(vec![(
                "sha".into(),
                PasswordHash::parse("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=").unwrap(),
            )]),
        };
        let mut p = RequestPolicy {
            allow: Some(nets(&["192.168.0.0/16"])),
            auth: Some(auth),
            satisfy_any: true,
            ..RequestPolicy::default()
        };
        let mut v = view("GET", "/x");
        assert_eq!(p.verdict(&v), Verdict::Unauthorized);
        v.authorization = Some(b"Basic c2hhOnNlY3JldA==");
        assert_eq!(p.verdict(&v), Verdict::Satisfied);
        p.satisfy_any = false;
        assert_eq!(p.verdict(&v), Verdict::Forbidden);
        p.satisfy_any = true;
        v.authorization = None;
        v.client = ip("192.168.3.4");
        assert_eq!(p.verdict(&v), Verdict::Satisfied);
        // With `auth-url` too: a failed basic authentication leaves the decision to it.
        p.ext_auth = Some(Arc::new(crate::core::route::ext_auth::ExtAuth {
            scope: "ns/ing".into(),
            target: Some(crate::core::route::ext_auth::AuthTarget {
                authority: "auth:80".into(),
                endpoint: "10.0.0.9:80".parse().unwrap(),
                target: "/check".into(),
            }),
            method: None,
            response_headers: vec![],
            request_redirect: None,
            signin: None,
            redirect_param: "rd".into(),
            cache: None,
        }));
        v.client = ip("10.0.0.1");
        assert_eq!(p.verdict(&v), Verdict::Pass);
        v.client = ip("192.168.3.4");
        assert_eq!(p.verdict(&v), Verdict::Satisfied);
        // Without `satisfy any`, every check applies and the address list fails first.
        p.satisfy_any = false;
        v.client = ip("10.0.0.1");
        assert_eq!(p.verdict(&v), Verdict::Forbidden);
    }

    #[test]
    fn www_alias() {
        let p = RequestPolicy {
            from_to_www: Some(vec!["example.com".into()]),
            ..RequestPolicy::default()
        };
        let mut v = view("GET", "/x");
        v.host = "www.Example.com";
        assert_eq!(
            p.verdict(&v),
            Verdict::Redirect {
                code: 308,
                location: "http://example.com/x?a=1".into()
            }
        );
        v.host = "example.com";
        assert_eq!(p.verdict(&v), Verdict::Pass);
    }

    #[test]
    fn rewrites_use_the_rules_captures() {
        let p = RequestPolicy {
            rewrite_target: Some("/$2".into()),
            path_regex: Some(PathRegex::compile("/something(/|$)(.*)").unwrap()),
            ..RequestPolicy::default()
        };
        assert_eq!(p.rewrite("/something/new", None).as_deref(), Some("/new"));
        assert_eq!(p.rewrite("/SomeThing", None).as_deref(), Some("/"));
        assert_eq!(
            p.rewrite("/something/a/b", Some("q=1")).as_deref(),
            Some("/a/b?q=1")
        );
        let p = RequestPolicy {
            rewrite_target: Some("/new?x=$1".into()),
            path_regex: Some(PathRegex::compile("/(a+)").unwrap()),
            ..RequestPolicy::default()
        };
        assert_eq!(
            p.rewrite("/aaa", Some("q=1")).as_deref(),
            Some("/new?x=aaa&q=1")
        );
    }

    #[test]
    fn catastrophic_patterns_are_linear() {
        let re = PathRegex::compile("/(a+)+$").unwrap();
        let long = format!("/{}b", "a".repeat(100_000));
        assert!(!re.is_match(&long));
        assert!(PathRegex::compile("/(unclosed").is_err());
        assert!(PathRegex::literal("/(unclosed").is_match("/(UNCLOSED/x"));
    }
}
