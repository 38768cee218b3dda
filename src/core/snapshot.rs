//! The published snapshot: everything a worker needs to route and terminate TLS (route table,
//! backends and their endpoints, certificates), immutable, built by the control thread and
//! shared by `Arc` between all workers. Depends on `route` and `tls`; nothing below it
//! depends on it except the upstream pickers.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::core::route::{Backend, BackendId, HostRoutes, PathKind, RouteTable};
use crate::core::tls::CertTable;

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
    pub fn with_certs(self, certs: CertTable) -> Snapshot {
        self.with_shared_certs(Arc::new(certs))
    }

    /// The same snapshot sharing the certificate table `certs` (with the previous snapshot,
    /// when no certificate changed: workers then keep their TLS configuration).
    pub fn with_shared_certs(mut self, certs: Arc<CertTable>) -> Snapshot {
        self.certs = certs;
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
            for r in routes.paths() {
                let kind = match r.kind {
                    PathKind::Exact => "Exact",
                    PathKind::Prefix => "Prefix",
                };
                let mut policy = match &r.policy {
                    Some(p) => format!(" [{p}]"),
                    None => String::new(),
                };
                if let Some(c) = &r.canary {
                    let b = describe(c.backend);
                    policy.push_str(&format!(" canary -> {b} [{}]", c.rule));
                }
                lines.push(format!(
                    "{host} {} {kind} -> {}{policy}",
                    r.path,
                    describe(r.backend)
                ));
            }
            if let Some(d) = routes.default_backend() {
                lines.push(format!("{host} (default) -> {}", describe(d)));
            }
        };
        for (host, routes) in self.table.hosts() {
            host_lines(host, routes);
        }
        host_lines("*".to_string(), self.table.any_host());
        lines.sort();
        writeln!(f, "snapshot version {}", self.version)?;
        for line in lines {
            writeln!(f, "{line}")?;
        }
        if let Some(d) = self.table.default_backend() {
            writeln!(f, "default -> {}", describe(d))?;
        }
        for line in self.certs.describe() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}
