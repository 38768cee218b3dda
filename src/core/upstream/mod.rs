//! Upstream selection: load-balancing pickers over a snapshot's endpoints, and the worker's
//! router (snapshot + picker). Pickers hold per-worker state (cursors) and are never shared
//! between cores.

use std::net::SocketAddr;

pub mod balance;
pub mod hash;

pub use crate::core::route::Balance;
use crate::core::route::{BackendId, RouteDecision, Router};
use crate::core::snapshot::Snapshot;
use crate::core::time::Instant;

use balance::{EndpointStats, Rng};
use hash::{KeySource, rendezvous};

/// Round-robin over each backend's endpoints, one cursor per backend.
#[derive(Clone, Debug, Default)]
pub struct Picker {
    cursors: Vec<u32>,
    /// In-flight requests and latency per endpoint (least_request, ewma), fed by the driver.
    pub stats: EndpointStats,
    rng: Option<Rng>,
    /// Where every cursor starts: workers use their index, so N workers spread their first
    /// requests over N endpoints instead of all starting on the first.
    offset: u32,
}

impl Picker {
    pub fn new() -> Picker {
        Picker::default()
    }

    /// A picker whose cursors start at `offset` (a worker's index).
    pub fn with_offset(offset: u32) -> Picker {
        Picker {
            cursors: Vec::new(),
            offset,
            stats: EndpointStats::default(),
            rng: Some(Rng::new(u64::from(offset))),
        }
    }

    /// Prepares for a new snapshot. Cursors are kept (they are only rotation offsets, and
    /// backend ids are per snapshot anyway) and grow on first use, so a snapshot swap costs
    /// a worker nothing proportional to the number of backends.
    /// Endpoint statistics are kept by address (the same endpoint keeps its history across
    /// snapshots); those of endpoints gone from `snapshot` are dropped once idle.
    pub fn reset_for(&mut self, snapshot: &Snapshot) {
        self.stats.retain(|ep| snapshot.has_endpoint(ep));
    }

    /// An endpoint of `backend` chosen by `balance` for the request `req`.
    pub fn pick_by(
        &mut self,
        snapshot: &Snapshot,
        backend: BackendId,
        balance: &Balance,
        req: &dyn KeySource,
        now: Instant,
    ) -> Option<SocketAddr> {
        let endpoints = &snapshot.backend(backend)?.endpoints;
        let rng = self
            .rng
            .get_or_insert_with(|| Rng::new(u64::from(self.offset)));
        let i = match balance {
            Balance::RoundRobin => return self.pick(snapshot, backend),
            Balance::LeastRequest => self.stats.least_request(endpoints, rng),
            Balance::Ewma => self.stats.ewma(endpoints, rng, now),
            Balance::Hash(key) => rendezvous(key.hash(req), endpoints),
        }?;
        Some(endpoints[i])
    }

    /// The next endpoint of `backend`, or `None` when it has none (or is unknown).
    pub fn pick(&mut self, snapshot: &Snapshot, backend: BackendId) -> Option<SocketAddr> {
        let endpoints = &snapshot.backend(backend)?.endpoints;
        if endpoints.is_empty() {
            return None;
        }
        let i = backend.0 as usize;
        if i >= self.cursors.len() {
            self.cursors
                .resize(snapshot.backends.len().max(i + 1), self.offset);
        }
        let cursor = &mut self.cursors[i];
        let endpoint = endpoints[*cursor as usize % endpoints.len()];
        *cursor = cursor.wrapping_add(1);
        Some(endpoint)
    }
}

/// The worker's router: the current snapshot plus its own load-balancing state.
pub struct SnapshotRouter<'a> {
    pub snapshot: &'a Snapshot,
    pub picker: &'a mut Picker,
}

impl Router for SnapshotRouter<'_> {
    fn route(&mut self, host: &str, path: &str) -> RouteDecision {
        let Some((backend, policy)) = self.snapshot.table.route(host, path) else {
            return RouteDecision::NotFound;
        };
        match self.picker.pick(self.snapshot, backend) {
            Some(endpoint) => RouteDecision::Forward {
                backend,
                endpoint,
                // A reference count, only for routes whose Ingress set a policy.
                policy: policy.cloned(),
            },
            None => RouteDecision::NoEndpoints,
        }
    }

    fn route_request(
        &mut self,
        host: &str,
        path: &str,
        req: &dyn KeySource,
        now: Instant,
    ) -> RouteDecision {
        let Some((backend, policy)) = self.snapshot.table.route(host, path) else {
            return RouteDecision::NotFound;
        };
        let balance = policy.and_then(|p| p.balance.as_ref());
        let picked = match balance {
            None => self.picker.pick(self.snapshot, backend),
            Some(b) => self.picker.pick_by(self.snapshot, backend, b, req, now),
        };
        match picked {
            Some(endpoint) => RouteDecision::Forward {
                backend,
                endpoint,
                policy: policy.cloned(),
            },
            None => RouteDecision::NoEndpoints,
        }
    }

    fn redirect_https(&mut self, host: &str) -> bool {
        self.snapshot.certs.redirects(host)
    }

    fn backend_name(&self, backend: BackendId) -> Option<&str> {
        self.snapshot
            .backends
            .get(backend.0 as usize)
            .map(|b| b.name.as_str())
    }
}
