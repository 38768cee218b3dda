//! Immutable route table with exact Kubernetes Ingress v1 semantics. (The snapshot that
//! carries it to every worker is `core::snapshot`.)
//!
//! Lookup by (host, path) allocates nothing: one hash lookup for the host (a second, for the
//! wildcard, only if the exact host misses) plus a walk over that host's paths, which are
//! sorted so that the first match is the best one.
//!
//! Precedence, in order:
//! 1. the host: an exact host beats a `*.suffix` wildcard (which matches exactly one extra
//!    leading label); comparison is case-insensitive and ignores a port and a trailing dot;
//! 2. within the host, the longest matching path; on equal length `Exact` beats `Prefix`
//!    (`ImplementationSpecific` is compiled as `Prefix`);
//! 3. no path of the matched host fits → that host's default (the `spec.defaultBackend` of the
//!    oldest Ingress with rules for the host), then the table default;
//! 4. no host matches → rules without a host, then the table default (the oldest Ingress
//!    `spec.defaultBackend` of our class, else the controller's default backend);
//! 5. nothing → `None`, answered with 404.
//!
//! Regex paths (ingress-nginx's `use-regex` / `rewrite-target` on any Ingress of a host):
//! every path of that host becomes a case-insensitive regex anchored at the start, tried
//! longest path first, the first match winning (see `prepare`). A host that matches nothing
//! may still be the `www.` twin of a host with `from-to-www-redirect` (see `www_alias`).

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::core::host::{MAX_HOST, normalize_host};

pub mod affinity;
pub mod bandwidth;
pub mod basic_auth;
pub mod canary;
pub mod custom_errors;
pub mod ext_auth;
pub mod headers;
pub mod key;
pub mod mirror;
pub mod next_upstream;
mod policy;
pub mod rate_limit;
pub mod request_policy;
pub mod upstream_tls;
pub use policy::{Balance, RoutePolicy};
use request_policy::PathRegex;

/// Index of a backend inside one [`Snapshot`]. Only meaningful with the snapshot it came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

/// What the router decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Send the request to this pod endpoint, with the matched route's policy (`None`: the
    /// listener's settings apply).
    Forward {
        backend: BackendId,
        endpoint: SocketAddr,
        policy: Option<Arc<RoutePolicy>>,
    },
    /// No rule and no default backend matched: answer 404.
    NotFound,
    /// A backend matched but has no usable endpoint: answer 503.
    NoEndpoints,
}

/// What the connection machine asks of routing. The worker implements it over its replica of
/// the current snapshot and its own load-balancing state; tests implement it in memory.
pub trait Router {
    /// `host` is the request authority without port (not yet lower-cased); `path` is the path
    /// part of the target, without query.
    fn route(&mut self, host: &str, path: &str) -> RouteDecision;

    /// [`Router::route`] for a whole request: a route's balancing may read it (hash keys)
    /// and the time (latency averages). By default, the request is not looked at.
    fn route_request(
        &mut self,
        host: &str,
        path: &str,
        _req: &dyn key::KeySource,
        _now: crate::core::time::Instant,
    ) -> RouteDecision {
        self.route(host, path)
    }

    /// The policy of the route `host` `path` matches, asked only when [`Router::route`]
    /// answered [`RouteDecision::NoEndpoints`] (a route's redirects and other local answers
    /// apply without an endpoint: ingress-nginx answers them before proxying), and before
    /// redirecting a plain-HTTP request to HTTPS (they come first there too). By default
    /// none.
    fn policy_of(&mut self, _host: &str, _path: &str) -> Option<Arc<RoutePolicy>> {
        None
    }

    /// For a retry (`proxy-next-upstream`): another endpoint of `backend`, not one of
    /// `tried`; `None` when none is left (then there is no retry). By default there is none.
    fn retry_pick(
        &mut self,
        _backend: BackendId,
        _tried: &[std::net::SocketAddr],
        _now: crate::core::time::Instant,
    ) -> Option<std::net::SocketAddr> {
        None
    }

    /// How an exchange with `endpoint` went (passive health): `ok` for a response head that
    /// is not a 5xx; not for a connection that could not be made or broke before the head,
    /// a timeout, an unparsable head or a 5xx. By default nobody listens.
    fn report(
        &mut self,
        _endpoint: std::net::SocketAddr,
        _ok: bool,
        _now: crate::core::time::Instant,
    ) {
    }

    /// The path of the rule `host` and `path` match (the affinity cookie's default `Path`);
    /// `None` for a default backend or when unknown.
    fn rule_path(&mut self, _host: &str, _path: &str) -> Option<&str> {
        None
    }

    /// Seconds since the Unix epoch at `now` (affinity cookies' `Expires`), when known.
    fn unix_time(&self, _now: crate::core::time::Instant) -> Option<u64> {
        None
    }

    /// Whether a plain-HTTP request for `host` must be redirected to HTTPS (asked only on
    /// plain listeners, before routing).
    fn redirect_https(&mut self, _host: &str) -> bool {
        false
    }

    /// A backend's `namespace/service:port` (for the access log and the per-backend
    /// counters); `None` when unknown.
    fn backend_name(&self, _backend: BackendId) -> Option<&str> {
        None
    }

    /// `namespace/name` of the Ingress whose rule the last [`Router::route`] or
    /// [`Router::route_request`] matched; `None` for a default backend or when unknown.
    fn routed_ingress(&self) -> Option<&str> {
        None
    }

    /// The backend of the rule the last [`Router::route`] or [`Router::route_request`]
    /// matched, also when it had no endpoints (custom errors name its Service); `None` when
    /// unknown.
    fn routed_backend(&self) -> Option<BackendId> {
        None
    }

    /// Cookie affinity: whether the cookie value `id` pins requests for `backend` to
    /// `endpoint` (`mode` says how a value names an endpoint). By default no.
    fn affinity_names(
        &mut self,
        _backend: BackendId,
        _mode: affinity::Mode,
        _id: u64,
        _endpoint: std::net::SocketAddr,
        _now: crate::core::time::Instant,
    ) -> bool {
        false
    }

    /// Cookie affinity: a cookie value that pins the client to `endpoint` of `backend`;
    /// `None`: no cookie is set. By default none.
    fn affinity_value(
        &mut self,
        _backend: BackendId,
        _mode: affinity::Mode,
        _endpoint: std::net::SocketAddr,
    ) -> Option<u64> {
        None
    }
}

/// A Service port resolved to pod endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `namespace/service:port`, for logs, metrics and the route dump.
    pub name: String,
    /// The usable endpoints: the ready ones; if none is ready, the serving-but-terminating
    /// ones; possibly none (→ 503).
    pub endpoints: Vec<SocketAddr>,
}

/// A matched route: its backend and, when its Ingress set any, its policy.
pub type Matched<'a> = (BackendId, Option<&'a Arc<RoutePolicy>>, Option<&'a str>);

/// Why [`RouteTableBuilder::add_canary`] refused a canary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CanaryMiss {
    /// No main rule has this host, path and path type.
    NoMain,
    /// The main rule already has a canary, from this Ingress.
    Taken(Arc<str>),
    /// The canary's backend is the main rule's own.
    SameBackend,
}

/// How a rule's path matches.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathKind {
    Exact,
    /// Element-wise prefix on `/` boundaries (also `ImplementationSpecific`).
    Prefix,
}

/// One path of one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRule {
    /// For `Prefix`, without trailing slashes (except the root `/`).
    pub path: String,
    pub kind: PathKind,
    pub backend: BackendId,
    /// The Ingress's per-route properties; `None` when its annotations set none.
    pub policy: Option<Arc<RoutePolicy>>,
    /// `namespace/name` of the Ingress that added the rule (the access log's route and the
    /// per-route counters); `None` for a rule added without one.
    pub ingress: Option<Arc<str>>,
    /// Who added the rule (the compiler's index of the Ingress), for conflict reports while
    /// the table is built; always 0 in a built table, so tables compare by routing alone.
    pub tag: u32,
    /// Set when the host's paths are regexes (`use-regex` or `rewrite-target` on any of its
    /// Ingresses, as in ingress-nginx): the path as a case-insensitive regex anchored at the
    /// start, whatever the path type. Compiled when the table is built.
    pub regex: Option<PathRegex>,
    /// The alternative backend of a `canary: "true"` Ingress for this host and path.
    pub canary: Option<Arc<canary::Canary>>,
}

impl PathRule {
    fn matches(&self, path: &str) -> bool {
        if let Some(regex) = &self.regex {
            return regex.is_match(path);
        }
        match self.kind {
            PathKind::Exact => path == self.path,
            PathKind::Prefix => {
                if self.path == "/" {
                    return true;
                }
                match path.strip_prefix(self.path.as_str()) {
                    Some(rest) => rest.is_empty() || rest.starts_with('/'),
                    None => false,
                }
            }
        }
    }
}

/// The paths of one host (or of the host-less rules), best first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostRoutes {
    paths: Vec<PathRule>,
    default: Option<BackendId>,
}

impl HostRoutes {
    fn lookup(&self, path: &str) -> Option<&PathRule> {
        self.paths.iter().find(|r| r.matches(path))
    }

    /// The host's default backend (when no path matches), if any.
    pub fn default_backend(&self) -> Option<BackendId> {
        self.default
    }

    pub fn paths(&self) -> &[PathRule] {
        &self.paths
    }

    /// Every backend these rules name (paths, their canaries, then the host default), with
    /// repeats; a path's error backend (`custom-http-errors`, `default-backend`) counts too.
    pub fn backends(&self) -> impl Iterator<Item = BackendId> + '_ {
        let errors = self.paths.iter().filter_map(|r| {
            r.policy
                .as_ref()?
                .request
                .as_ref()?
                .errors
                .as_ref()?
                .backend
        });
        self.paths
            .iter()
            .flat_map(|r| std::iter::once(r.backend).chain(r.canary.as_ref().map(|c| c.backend)))
            .chain(self.default)
            .chain(errors)
    }
}

/// Sorts a host's paths and, when any of its rules asks for regex paths, compiles every
/// path as a regex (ingress-nginx: "use-regex on any Ingress of a host enforces the
/// case-insensitive regex modifier on all paths of that host"). Regex locations are tried in
/// the same order, longest path first, and the first match wins, as nginx does with
/// ingress-nginx's length-sorted locations. A path that is not a valid regex (its Ingress
/// got a diagnostic) is matched literally, case-insensitively.
fn prepare(routes: &mut HostRoutes) {
    sort_paths(&mut routes.paths);
    let regex_host = routes.paths.iter().any(|r| {
        r.policy
            .as_ref()
            .and_then(|p| p.request.as_ref())
            .is_some_and(|q| q.regex_paths())
    });
    for rule in &mut routes.paths {
        if !regex_host {
            rule.regex = None;
            continue;
        }
        let regex = match &rule.regex {
            Some(r) => r.clone(),
            None => {
                PathRegex::compile(&rule.path).unwrap_or_else(|_| PathRegex::literal(&rule.path))
            }
        };
        if let Some(policy) = &rule.policy
            && let Some(request) = &policy.request
            && let Some(copy) = request.for_rule(&regex)
        {
            rule.policy = Some(Arc::new(RoutePolicy {
                request: Some(Arc::new(copy)),
                ..(**policy).clone()
            }));
            if let Some(c) = &rule.canary {
                rule.canary = Some(Arc::new((**c).clone().under(rule.policy.as_ref())));
            }
        }
        rule.regex = Some(regex);
    }
}

/// Longest path first; on equal length Exact first; then by path text for a stable order.
fn sort_paths(paths: &mut [PathRule]) {
    paths.sort_by(|a, b| {
        b.path
            .len()
            .cmp(&a.path.len())
            .then(a.kind.cmp(&b.kind))
            .then(a.path.cmp(&b.path))
    });
}

/// Lower-cased host names → `V`, hashed with a key shared by every map of one table lineage,
/// so that a lookup hashes the host once and probes the overlay and the base with that hash.
#[derive(Clone, Debug)]
struct Hosts<V> {
    state: RandomState,
    table: HashTable<(Box<str>, V)>,
}

impl<V> Hosts<V> {
    fn with_state(state: &RandomState) -> Hosts<V> {
        Hosts {
            state: state.clone(),
            table: HashTable::new(),
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.state.hash_one(key)
    }

    fn get_hashed(&self, hash: u64, key: &str) -> Option<&V> {
        self.table.find(hash, |(k, _)| **k == *key).map(|(_, v)| v)
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.get_hashed(self.hash(key), key)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let hash = self.hash(key);
        self.table
            .find_mut(hash, |(k, _)| **k == *key)
            .map(|(_, v)| v)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces.
    fn insert(&mut self, key: &str, value: V) {
        if let Some(slot) = self.get_mut(key) {
            *slot = value;
            return;
        }
        let state = &self.state;
        self.table
            .insert_unique(state.hash_one(key), (key.into(), value), |(k, _)| {
                state.hash_one(&**k)
            });
    }

    fn remove(&mut self, key: &str) {
        if let Ok(entry) = self.table.find_entry(self.hash(key), |(k, _)| **k == *key) {
            entry.remove();
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.table.iter().map(|(k, v)| (&**k, v))
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.table.iter().map(|(_, v)| v)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.table.iter_mut().map(|(_, v)| v)
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Exact and wildcard hosts (wildcards keyed by the suffix after `*.`), all lower-cased.
#[derive(Clone, Debug)]
struct HostMap {
    exact: Hosts<HostRoutes>,
    wildcard: Hosts<HostRoutes>,
}

impl Default for HostMap {
    fn default() -> Self {
        let state = RandomState::new();
        HostMap {
            exact: Hosts::with_state(&state),
            wildcard: Hosts::with_state(&state),
        }
    }
}

/// Hosts changed since a [`HostMap`] was built: `Some` replaces or adds the host, `None`
/// removes it. Small by construction: the compiler rebuilds the base when it grows. Hashed
/// with its base's key.
#[derive(Clone, Debug)]
struct Overlay {
    exact: Hosts<Option<HostRoutes>>,
    wildcard: Hosts<Option<HostRoutes>>,
}

impl Overlay {
    fn over(base: &HostMap) -> Overlay {
        Overlay {
            exact: Hosts::with_state(&base.exact.state),
            wildcard: Hosts::with_state(&base.exact.state),
        }
    }

    fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// Host → paths, with the defaults.
///
/// The host maps are shared (`Arc`) between the tables of successive snapshots: a change to a
/// few hosts makes a new table that keeps the old base and carries the changed hosts in a
/// small overlay consulted first ([`RouteTable::patched`]), so publishing it costs time in the
/// size of the change, not of the table.
#[derive(Clone, Debug)]
pub struct RouteTable {
    base: Arc<HostMap>,
    overlay: Overlay,
    /// Rules without a host.
    any_host: HostRoutes,
    default: Option<BackendId>,
    /// `server-alias`: alias → the host (as a rule writes it) whose rules it reaches.
    aliases: Arc<Aliases>,
}

/// `server-alias` names, alias → target host as a rule writes it (`*.suffix` for a wildcard).
type Aliases = std::collections::HashMap<Box<str>, Box<str>>;

/// The aliases the rules of one host ask for (on any of their Ingresses' policies).
fn aliases_of(routes: &HostRoutes) -> impl Iterator<Item = &str> {
    routes
        .paths
        .iter()
        .filter_map(|r| r.policy.as_ref()?.request.as_ref()?.aliases.as_ref())
        .flatten()
        .map(String::as_str)
}

/// Adds `host`'s aliases to `map`; an alias already taken keeps its first host (the oldest
/// Ingress's, since the compiler adds rules oldest first).
fn add_aliases(map: &mut Aliases, host: &str, routes: &HostRoutes) {
    for alias in aliases_of(routes) {
        if alias != host {
            map.entry(alias.into()).or_insert_with(|| host.into());
        }
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTableBuilder::default().build()
    }
}

/// Two tables are equal when they route alike: same hosts with the same rules and defaults,
/// however they are split between base and overlay.
impl PartialEq for RouteTable {
    fn eq(&self, other: &Self) -> bool {
        if self.any_host != other.any_host
            || self.default != other.default
            || self.aliases != other.aliases
            || self.host_count() != other.host_count()
        {
            return false;
        }
        self.hosts()
            .all(|(host, routes)| other.host_routes(&host) == Some(routes))
    }
}

impl Eq for RouteTable {}

impl RouteTable {
    pub fn lookup(&self, host: &str, path: &str) -> Option<BackendId> {
        self.route(host, path).map(|(backend, ..)| backend)
    }

    /// The path of the rule that [`RouteTable::route`] matches for `host` and `path` (`None`
    /// when a default backend answers, or nothing).
    pub fn rule_path(&self, host: &str, path: &str) -> Option<&str> {
        let mut buf = [0u8; MAX_HOST];
        let host = normalize_host(host, &mut buf);
        let bucket = host.and_then(|host| {
            self.exact(host).or_else(|| {
                let (label, suffix) = host.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                self.wildcard(suffix)
            })
        });
        let routes = bucket.unwrap_or(&self.any_host);
        routes
            .paths
            .iter()
            .find(|r| r.matches(path))
            .map(|r| r.path.as_str())
    }

    /// [`RouteTable::lookup`], with the matched path rule's policy (`None` for defaults).
    pub fn route(&self, host: &str, path: &str) -> Option<Matched<'_>> {
        self.hit(host, path).map(|hit| match hit {
            Ok(r) => (r.backend, r.policy.as_ref(), r.ingress.as_deref()),
            Err(b) => (b, None, None),
        })
    }

    /// [`RouteTable::route`] for one request: when the matched rule has a canary that takes
    /// `req` ([`canary::Canary::takes`], asking the worker through `cx`), the canary's
    /// backend, policy and Ingress.
    pub fn route_request(
        &self,
        host: &str,
        path: &str,
        req: &dyn key::KeySource,
        cx: &mut dyn canary::Context,
    ) -> Option<Matched<'_>> {
        Some(match self.hit(host, path)? {
            Ok(r) => match &r.canary {
                Some(c)
                    if c.takes(
                        r.backend,
                        r.policy.as_ref().and_then(|p| p.affinity.as_ref()),
                        req,
                        cx,
                    ) =>
                {
                    (c.backend, c.policy.as_ref(), Some(&*c.ingress))
                }
                _ => (r.backend, r.policy.as_ref(), r.ingress.as_deref()),
            },
            Err(b) => (b, None, None),
        })
    }

    /// The rule `host` and `path` match, or the default backend that answers instead.
    fn hit(&self, host: &str, path: &str) -> Option<Result<&PathRule, BackendId>> {
        let mut buf = [0u8; MAX_HOST];
        let host = normalize_host(host, &mut buf);
        let bucket = host.and_then(|host| {
            self.exact(host).or_else(|| self.alias(host)).or_else(|| {
                let (label, suffix) = host.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                self.wildcard(suffix)
            })
        });
        if bucket.is_none()
            && let Some(aliased) = host.and_then(|h| self.www_alias(h))
        {
            return Some(aliased);
        }
        match bucket {
            Some(routes) => routes.lookup(path).map(Ok).or(routes.default.map(Err)),
            None => self.any_host.lookup(path).map(Ok),
        }
        .or(self.default.map(Err))
    }

    /// `server-alias`: the rules of the host `host` is an alias of. Asked only when no rule
    /// names `host` exactly, so an alias never hides a host another Ingress defines (as in
    /// ingress-nginx, where a server of that name takes precedence over an alias); it beats a
    /// wildcard, as an exact `server_name` does in nginx.
    fn alias(&self, host: &str) -> Option<&HostRoutes> {
        if self.aliases.is_empty() {
            return None;
        }
        let target = self.aliases.get(host)?;
        match target.strip_prefix("*.") {
            Some(suffix) => self.wildcard(suffix),
            None => self.exact(target),
        }
    }

    /// `from-to-www-redirect`: a host we do not serve whose `www.` twin (or bare name) is
    /// served by an Ingress with the annotation matches that Ingress's first rule; its
    /// request policy answers 308 to the twin. Asked only when the host matched nothing.
    fn www_alias(&self, host: &str) -> Option<Result<&PathRule, BackendId>> {
        let mut buf = [0u8; MAX_HOST + 4];
        let twin = match host.strip_prefix("www.") {
            Some(bare) => bare,
            None => {
                let with = buf.get_mut(..host.len() + 4)?;
                with[..4].copy_from_slice(b"www.");
                with[4..].copy_from_slice(host.as_bytes());
                std::str::from_utf8(with).ok()?
            }
        };
        self.exact(twin)?
            .paths
            .iter()
            .find(|r| {
                r.policy
                    .as_ref()
                    .and_then(|p| p.request.as_ref())
                    .is_some_and(|q| q.from_to_www.is_some())
            })
            .map(Ok)
    }

    /// One hash of the host serves the overlay and the base.
    fn exact(&self, host: &str) -> Option<&HostRoutes> {
        let hash = self.base.exact.hash(host);
        if !self.overlay.exact.is_empty()
            && let Some(changed) = self.overlay.exact.get_hashed(hash, host)
        {
            return changed.as_ref();
        }
        self.base.exact.get_hashed(hash, host)
    }

    fn wildcard(&self, suffix: &str) -> Option<&HostRoutes> {
        let hash = self.base.wildcard.hash(suffix);
        if !self.overlay.wildcard.is_empty()
            && let Some(changed) = self.overlay.wildcard.get_hashed(hash, suffix)
        {
            return changed.as_ref();
        }
        self.base.wildcard.get_hashed(hash, suffix)
    }

    /// Number of exact and wildcard hosts.
    pub fn host_count(&self) -> usize {
        let base = self.base.exact.len() + self.base.wildcard.len();
        let changes = |overlay: &Hosts<Option<HostRoutes>>, base: &Hosts<HostRoutes>| {
            overlay.iter().fold(0isize, |n, (host, routes)| {
                match (routes.is_some(), base.contains_key(host)) {
                    (true, false) => n + 1,
                    (false, true) => n - 1,
                    _ => n,
                }
            })
        };
        let delta = changes(&self.overlay.exact, &self.base.exact)
            + changes(&self.overlay.wildcard, &self.base.wildcard);
        (base as isize + delta) as usize
    }

    /// The rules of one host exactly as written in a rule (`*.example.com` for a wildcard;
    /// any case), or `None` when the table has no such host.
    pub fn host_routes(&self, host: &str) -> Option<&HostRoutes> {
        let host = host.to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(suffix) => self.wildcard(suffix),
            None => self.exact(&host),
        }
    }

    /// Every host with its rules, wildcards written `*.suffix`, in no particular order.
    pub fn hosts(&self) -> impl Iterator<Item = (String, &HostRoutes)> {
        let base_exact = self
            .base
            .exact
            .iter()
            .filter(|(h, _)| !self.overlay.exact.contains_key(h))
            .map(|(h, r)| (h.to_string(), r));
        let base_wild = self
            .base
            .wildcard
            .iter()
            .filter(|(s, _)| !self.overlay.wildcard.contains_key(s))
            .map(|(s, r)| (format!("*.{s}"), r));
        let over_exact = self
            .overlay
            .exact
            .iter()
            .filter_map(|(h, r)| Some((h.to_string(), r.as_ref()?)));
        let over_wild = self
            .overlay
            .wildcard
            .iter()
            .filter_map(|(s, r)| Some((format!("*.{s}"), r.as_ref()?)));
        base_exact
            .chain(base_wild)
            .chain(over_exact)
            .chain(over_wild)
    }

    /// The rules without a host.
    /// The table's default backend (no host matches), if any.
    pub fn default_backend(&self) -> Option<BackendId> {
        self.default
    }

    pub fn any_host(&self) -> &HostRoutes {
        &self.any_host
    }

    /// What a request that matches no host (and no host-less rule) goes to.
    pub fn fallback(&self) -> Option<BackendId> {
        self.default
    }

    /// Hosts carried in the overlay rather than the shared base.
    pub fn overlay_len(&self) -> usize {
        self.overlay.len()
    }

    /// Hosts in the shared base.
    pub fn base_len(&self) -> usize {
        self.base.exact.len() + self.base.wildcard.len()
    }

    /// The rules of every host in the shared base (the overlay may hide some of them).
    pub fn base_hosts(&self) -> impl Iterator<Item = &HostRoutes> {
        self.base.exact.values().chain(self.base.wildcard.values())
    }

    /// Rules the overlay replaces: for each overlaid host, what the base had (if anything)
    /// and what the overlay has instead (if anything).
    pub fn overlaid(&self) -> impl Iterator<Item = (Option<&HostRoutes>, Option<&HostRoutes>)> {
        let exact = self
            .overlay
            .exact
            .iter()
            .map(|(h, r)| (self.base.exact.get(h), r.as_ref()));
        let wild = self
            .overlay
            .wildcard
            .iter()
            .map(|(s, r)| (self.base.wildcard.get(s), r.as_ref()));
        exact.chain(wild)
    }

    /// A table sharing this one's base, with `changes` applied on top of this one's overlay
    /// (host as written in a rule → its new rules, or `None` to remove it), and the given
    /// host-less rules and fallback. Costs time in the size of the overlay, not the table.
    pub fn patched(
        &self,
        changes: impl IntoIterator<Item = (String, Option<HostRoutes>)>,
        any_host: HostRoutes,
        default: Option<BackendId>,
    ) -> RouteTable {
        let mut overlay = self.overlay.clone();
        let mut aliases = self.aliases.clone();
        // Aliases whose host changed: another host may claim them too.
        let mut released: Vec<Box<str>> = Vec::new();
        for (host, routes) in changes {
            let host = host.to_ascii_lowercase();
            let before = self.host_routes(&host);
            let had = before.is_some_and(|r| aliases_of(r).next().is_some());
            let has = routes
                .as_ref()
                .is_some_and(|r| aliases_of(r).next().is_some());
            if had || has {
                let map = Arc::make_mut(&mut aliases);
                map.retain(|alias, target| {
                    let keep = **target != *host;
                    if !keep {
                        released.push(alias.clone());
                    }
                    keep
                });
                if let Some(r) = &routes {
                    add_aliases(map, &host, r);
                }
            }
            let (map, base, key) = match host.strip_prefix("*.") {
                Some(suffix) => (&mut overlay.wildcard, &self.base.wildcard, suffix),
                None => (&mut overlay.exact, &self.base.exact, host.as_str()),
            };
            let routes = routes.map(|mut r| {
                prepare(&mut r);
                r
            });
            if base.get(key) == routes.as_ref() {
                // Back to what the base has: no need to carry it.
                map.remove(key);
            } else {
                map.insert(key, routes);
            }
        }
        let mut any_host = any_host;
        prepare(&mut any_host);
        let mut table = RouteTable {
            base: self.base.clone(),
            overlay,
            any_host,
            default,
            aliases,
        };
        released.retain(|alias| !table.aliases.contains_key(alias));
        if !released.is_empty() {
            // Rare (an alias lost its host): one pass over the table for other claimants,
            // the smaller host name winning (the ages of Ingresses are not known here).
            let mut claims: Vec<(Box<str>, String)> = Vec::new();
            for (host, routes) in table.hosts() {
                for alias in aliases_of(routes) {
                    if alias != host && released.iter().any(|r| **r == *alias) {
                        claims.push((alias.into(), host.clone()));
                    }
                }
            }
            claims.sort();
            let map = Arc::make_mut(&mut table.aliases);
            for (alias, host) in claims {
                map.entry(alias).or_insert_with(|| host.into());
            }
        }
        table
    }
}

/// Builds a [`RouteTable`]; the compiler feeds it rules in any order.
#[derive(Debug, Default)]
pub struct RouteTableBuilder {
    hosts: HostMap,
    any_host: HostRoutes,
    default: Option<BackendId>,
}

impl RouteTableBuilder {
    fn bucket(&mut self, host: Option<&str>) -> &mut HostRoutes {
        let Some(host) = host else {
            return &mut self.any_host;
        };
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let (map, key) = match host.strip_prefix("*.") {
            Some(suffix) => (&mut self.hosts.wildcard, suffix),
            None => (&mut self.hosts.exact, host),
        };
        if !map.contains_key(key) {
            map.insert(key, HostRoutes::default());
        }
        map.get_mut(key).expect("just inserted")
    }

    /// Adds a path for `host` (`None`: any host; `*.example.com`: wildcard). A `Prefix` path
    /// loses its trailing slashes (`/foo/` behaves as `/foo`). Returns false, adding nothing,
    /// when the same host already has this path and kind (the first one added wins).
    pub fn add(
        &mut self,
        host: Option<&str>,
        path: &str,
        kind: PathKind,
        backend: BackendId,
    ) -> bool {
        self.add_tagged(host, path, kind, backend, None, None, 0)
            .is_ok()
    }

    /// [`RouteTableBuilder::add`] with the rule's policy, the Ingress that adds it and a tag
    /// naming who adds the rule; a duplicate is refused with the tag of the rule that was
    /// there first.
    #[allow(clippy::too_many_arguments)]
    pub fn add_tagged(
        &mut self,
        host: Option<&str>,
        path: &str,
        kind: PathKind,
        backend: BackendId,
        policy: Option<Arc<RoutePolicy>>,
        ingress: Option<Arc<str>>,
        tag: u32,
    ) -> Result<(), u32> {
        let path = match kind {
            PathKind::Prefix => {
                let trimmed = path.trim_end_matches('/');
                if trimmed.is_empty() { "/" } else { trimmed }
            }
            PathKind::Exact => path,
        };
        let bucket = self.bucket(host);
        if let Some(existing) = bucket
            .paths
            .iter()
            .find(|r| r.kind == kind && r.path == path)
        {
            return Err(existing.tag);
        }
        bucket.paths.push(PathRule {
            path: path.to_string(),
            kind,
            backend,
            policy,
            ingress,
            tag,
            regex: None,
            canary: None,
        });
        Ok(())
    }

    /// Puts `canary` on the rule of `host` (`None`: the host-less rules) with this path and
    /// kind, under that rule's policy ([`canary::Canary::under`]). Never adds a host or a
    /// rule: a canary without its main rule is refused ([`CanaryMiss::NoMain`]); so is a
    /// second canary for one rule ([`CanaryMiss::Taken`], the first one kept) and one whose
    /// backend is the main rule's own ([`CanaryMiss::SameBackend`]).
    pub fn add_canary(
        &mut self,
        host: Option<&str>,
        path: &str,
        kind: PathKind,
        canary: canary::Canary,
    ) -> Result<(), CanaryMiss> {
        let path = match kind {
            PathKind::Prefix => {
                let trimmed = path.trim_end_matches('/');
                if trimmed.is_empty() { "/" } else { trimmed }
            }
            PathKind::Exact => path,
        };
        let routes = match host {
            None => Some(&mut self.any_host),
            Some(host) => {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix("*.") {
                    Some(suffix) => self.hosts.wildcard.get_mut(suffix),
                    None => self.hosts.exact.get_mut(&host),
                }
            }
        };
        let rule = routes
            .and_then(|r| {
                r.paths
                    .iter_mut()
                    .find(|r| r.kind == kind && r.path == path)
            })
            .ok_or(CanaryMiss::NoMain)?;
        if let Some(first) = &rule.canary {
            return Err(CanaryMiss::Taken(first.ingress.clone()));
        }
        if rule.backend == canary.backend {
            return Err(CanaryMiss::SameBackend);
        }
        // A `balanced` cookie holds a session key that every backend places somewhere, so it
        // could not tell which side of the canary a session belongs to: with a canary, the
        // route's cookie names the pod (`persistent`), for the main route and the canary both.
        if let Some(policy) = &mut rule.policy
            && let Some(a) = &policy.affinity
            && a.mode == affinity::Mode::Balanced
        {
            let p = Arc::make_mut(policy);
            if let Some(a) = &mut p.affinity {
                a.mode = affinity::Mode::Persistent;
            }
        }
        rule.canary = Some(Arc::new(canary.under(rule.policy.as_ref())));
        Ok(())
    }

    /// Sets the fallback of `host` when none of its paths match (first one set wins).
    pub fn host_default(&mut self, host: &str, backend: BackendId) {
        let bucket = self.bucket(Some(host));
        bucket.default.get_or_insert(backend);
    }

    /// Sets the fallback for everything (first one set wins).
    pub fn fallback(&mut self, backend: BackendId) {
        self.default.get_or_insert(backend);
    }

    pub fn build(mut self) -> RouteTable {
        // Aliases before the tags are cleared: on a conflict the oldest Ingress's host wins
        // (the smallest tag), then the smaller host name.
        let mut claims: Vec<(String, u32, String)> = Vec::new();
        let exact = self.hosts.exact.iter().map(|(h, r)| (h.to_string(), r));
        let wild = self
            .hosts
            .wildcard
            .iter()
            .map(|(s, r)| (format!("*.{s}"), r));
        for (host, routes) in exact.chain(wild) {
            for rule in &routes.paths {
                let Some(list) = rule
                    .policy
                    .as_ref()
                    .and_then(|p| p.request.as_ref())
                    .and_then(|q| q.aliases.as_ref())
                else {
                    continue;
                };
                for alias in list {
                    if *alias != host {
                        claims.push((alias.clone(), rule.tag, host.clone()));
                    }
                }
            }
        }
        claims.sort();
        let mut aliases = Aliases::new();
        for (alias, _, host) in claims {
            aliases.entry(alias.into()).or_insert_with(|| host.into());
        }
        for routes in self
            .hosts
            .exact
            .values_mut()
            .chain(self.hosts.wildcard.values_mut())
            .chain(std::iter::once(&mut self.any_host))
        {
            prepare(routes);
            for rule in &mut routes.paths {
                rule.tag = 0;
            }
        }
        RouteTable {
            aliases: Arc::new(aliases),
            overlay: Overlay::over(&self.hosts),
            base: Arc::new(self.hosts),
            any_host: self.any_host,
            default: self.default,
        }
    }
}
