//! Immutable route table with exact Kubernetes Ingress v1 semantics, and the snapshot that
//! carries it (with backends and their endpoints) from the control thread to every worker.
//!
//! Lookup by (host, path) allocates nothing: one hash lookup for the host (a second for the
//! wildcard only if the exact host misses) plus a walk over that host's paths.
//!
//! OWNER: helper "route+compile" fills this module in. The types named below are the contract
//! the connection machine and the engines rely on; keep their names and shapes.

use std::net::SocketAddr;

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
}
