//! Upstream selection: load-balancing pickers over a snapshot's endpoints, and the worker's
//! router (snapshot + picker). Pickers hold per-worker state (cursors) and are never shared
//! between cores.

use std::net::SocketAddr;

pub mod balance;
pub mod hash;

use crate::core::route::{BackendId, RouteDecision, Router};
use crate::core::snapshot::Snapshot;

/// Round-robin over each backend's endpoints, one cursor per backend.
#[derive(Clone, Debug, Default)]
pub struct Picker {
    cursors: Vec<u32>,
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
        }
    }

    /// Prepares for a new snapshot. Cursors are kept (they are only rotation offsets, and
    /// backend ids are per snapshot anyway) and grow on first use, so a snapshot swap costs
    /// a worker nothing proportional to the number of backends.
    pub fn reset_for(&mut self, _snapshot: &Snapshot) {}

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

    fn redirect_https(&mut self, host: &str) -> bool {
        self.snapshot.certs.redirects(host)
    }
}
