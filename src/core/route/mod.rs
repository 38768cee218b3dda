//! Immutable route table with exact Kubernetes Ingress v1 semantics, and the snapshot that
//! carries it (with backends and their endpoints) from the control thread to every worker.
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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::core::tls::CertTable;

use crate::core::upstream::Picker;

/// Index of a backend inside one [`Snapshot`]. Only meaningful with the snapshot it came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u32);

/// What the router decided for one request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Send the request to this pod endpoint.
    Forward {
        backend: BackendId,
        endpoint: SocketAddr,
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

    /// Whether a plain-HTTP request for `host` must be redirected to HTTPS (asked only on
    /// plain listeners, before routing).
    fn redirect_https(&mut self, _host: &str) -> bool {
        false
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
    /// Who added the rule (the compiler's index of the Ingress), for conflict reports.
    pub tag: u32,
}

impl PathRule {
    fn matches(&self, path: &str) -> bool {
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
    fn lookup(&self, path: &str) -> Option<BackendId> {
        self.paths
            .iter()
            .find(|r| r.matches(path))
            .map(|r| r.backend)
    }

    pub fn paths(&self) -> &[PathRule] {
        &self.paths
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

/// Host → paths, with the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Lower-cased exact hosts.
    exact: HashMap<Box<str>, HostRoutes>,
    /// Wildcards by the suffix after `*.` (lower-cased).
    wildcard: HashMap<Box<str>, HostRoutes>,
    /// Rules without a host.
    any_host: HostRoutes,
    default: Option<BackendId>,
}

/// Longest DNS name.
pub(crate) const MAX_HOST: usize = 253;

impl RouteTable {
    pub fn lookup(&self, host: &str, path: &str) -> Option<BackendId> {
        let mut buf = [0u8; MAX_HOST];
        let host = normalize_host(host, &mut buf);
        let bucket = host.and_then(|host| {
            self.exact.get(host).or_else(|| {
                let (label, suffix) = host.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                self.wildcard.get(suffix)
            })
        });
        match bucket {
            Some(routes) => routes.lookup(path).or(routes.default),
            None => self.any_host.lookup(path),
        }
        .or(self.default)
    }

    /// Number of exact and wildcard hosts.
    pub fn host_count(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// Lower-cases `host` into `buf`, dropping a `:port` and one trailing dot. `None` when it
/// cannot be a host we route (too long, not ASCII).
pub(crate) fn normalize_host<'a>(host: &str, buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let host = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.split_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() > MAX_HOST || !host.is_ascii() {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// Builds a [`RouteTable`]; the compiler feeds it rules in any order.
#[derive(Debug, Default)]
pub struct RouteTableBuilder {
    table: RouteTable,
}

impl RouteTableBuilder {
    fn bucket(&mut self, host: Option<&str>) -> &mut HostRoutes {
        let Some(host) = host else {
            return &mut self.table.any_host;
        };
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let (map, key) = match host.strip_prefix("*.") {
            Some(suffix) => (&mut self.table.wildcard, suffix),
            None => (&mut self.table.exact, host),
        };
        // Look up before inserting: the entry API would allocate the key every time.
        if !map.contains_key(key) {
            map.insert(key.into(), HostRoutes::default());
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
        self.add_tagged(host, path, kind, backend, 0).is_ok()
    }

    /// [`RouteTableBuilder::add`] with a tag naming who adds the rule; a duplicate is refused
    /// with the tag of the rule that was there first.
    pub fn add_tagged(
        &mut self,
        host: Option<&str>,
        path: &str,
        kind: PathKind,
        backend: BackendId,
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
            tag,
        });
        Ok(())
    }

    /// Sets the fallback of `host` when none of its paths match (first one set wins).
    pub fn host_default(&mut self, host: &str, backend: BackendId) {
        let bucket = self.bucket(Some(host));
        bucket.default.get_or_insert(backend);
    }

    /// Sets the fallback for everything (first one set wins).
    pub fn fallback(&mut self, backend: BackendId) {
        self.table.default.get_or_insert(backend);
    }

    pub fn build(mut self) -> RouteTable {
        for routes in self
            .table
            .exact
            .values_mut()
            .chain(self.table.wildcard.values_mut())
            .chain(std::iter::once(&mut self.table.any_host))
        {
            sort_paths(&mut routes.paths);
        }
        self.table
    }
}

/// Everything a worker needs to route, immutable and shared by `Arc` between all workers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub version: u64,
    pub table: RouteTable,
    /// Indexed by [`BackendId`].
    pub backends: Vec<Backend>,
    /// Every endpoint of every backend, built once with the snapshot: a worker checks its
    /// pooled connections against it at the swap without walking all backends.
    endpoints: HashSet<SocketAddr>,
    /// SNI host → certificate, and which hosts redirect plain HTTP to HTTPS.
    pub certs: Arc<CertTable>,
}

impl Snapshot {
    pub fn new(version: u64, table: RouteTable, backends: Vec<Backend>) -> Snapshot {
        let endpoints = backends
            .iter()
            .flat_map(|b| b.endpoints.iter().copied())
            .collect();
        Snapshot {
            version,
            table,
            backends,
            endpoints,
            certs: Arc::default(),
        }
    }

    /// The same snapshot with `certs` as its certificate table.
    pub fn with_certs(mut self, certs: CertTable) -> Snapshot {
        self.certs = Arc::new(certs);
        self
    }

    /// Whether any backend of this snapshot has `endpoint`.
    pub fn has_endpoint(&self, endpoint: &SocketAddr) -> bool {
        self.endpoints.contains(endpoint)
    }

    /// Routes nothing: every request gets 404.
    pub fn empty() -> Snapshot {
        Snapshot::default()
    }

    pub fn lookup(&self, host: &str, path: &str) -> Option<BackendId> {
        self.table.lookup(host, path)
    }

    pub fn backend(&self, id: BackendId) -> Option<&Backend> {
        self.backends.get(id.0 as usize)
    }
}

/// The route dump (`sluice check`, `/routes`): one line per host and path, sorted.
impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let describe = |id: BackendId| match self.backend(id) {
            Some(b) => format!("{} ({} endpoints)", b.name, b.endpoints.len()),
            None => format!("backend #{}", id.0),
        };
        let mut lines = Vec::new();
        let mut host_lines = |host: String, routes: &HostRoutes| {
            for r in &routes.paths {
                let kind = match r.kind {
                    PathKind::Exact => "Exact",
                    PathKind::Prefix => "Prefix",
                };
                lines.push(format!(
                    "{host} {} {kind} -> {}",
                    r.path,
                    describe(r.backend)
                ));
            }
            if let Some(d) = routes.default {
                lines.push(format!("{host} (default) -> {}", describe(d)));
            }
        };
        for (host, routes) in &self.table.exact {
            host_lines(host.to_string(), routes);
        }
        for (suffix, routes) in &self.table.wildcard {
            host_lines(format!("*.{suffix}"), routes);
        }
        host_lines("*".to_string(), &self.table.any_host);
        lines.sort();
        writeln!(f, "snapshot version {}", self.version)?;
        for line in lines {
            writeln!(f, "{line}")?;
        }
        if let Some(d) = self.table.default {
            writeln!(f, "default -> {}", describe(d))?;
        }
        for line in self.certs.describe() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// The worker's router: the current snapshot plus its own load-balancing state.
pub struct SnapshotRouter<'a> {
    pub snapshot: &'a Snapshot,
    pub picker: &'a mut Picker,
}

impl Router for SnapshotRouter<'_> {
    fn route(&mut self, host: &str, path: &str) -> RouteDecision {
        let Some(backend) = self.snapshot.lookup(host, path) else {
            return RouteDecision::NotFound;
        };
        match self.picker.pick(self.snapshot, backend) {
            Some(endpoint) => RouteDecision::Forward { backend, endpoint },
            None => RouteDecision::NoEndpoints,
        }
    }

    fn redirect_https(&mut self, host: &str) -> bool {
        self.snapshot.certs.redirects(host)
    }
}
