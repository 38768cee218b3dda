//! Upstream selection: load-balancing pickers over a snapshot's endpoints, and the worker's
//! router (snapshot + picker). Pickers hold per-worker state (cursors) and are never shared
//! between cores.

use std::net::SocketAddr;

pub mod affinity;
pub mod balance;
pub mod hash;
pub mod health;
pub mod retry;
pub mod vhost;

pub use crate::core::route::Balance;
use crate::core::route::{BackendId, RouteDecision, Router};
use crate::core::snapshot::Snapshot;
use crate::core::time::Instant;

use balance::{EndpointStats, Rng};
use hash::{KeySource, Prepared};
use health::{OutlierConfig, Outliers};

/// Round-robin over each backend's endpoints, one cursor per backend.
#[derive(Clone, Debug, Default)]
pub struct Picker {
    cursors: Vec<u32>,
    /// In-flight requests and latency per endpoint (least_request, ewma), fed by the driver.
    pub stats: EndpointStats,
    /// Passive health: endpoints left out after failures (fed by the connection machines
    /// through [`Router::report`]).
    pub outliers: Outliers,
    /// The wall clock at one monotonic instant (set by the driver), for affinity cookies'
    /// `Expires`: seconds since the Unix epoch at that instant.
    pub wall: Option<(Instant, u64)>,
    rng: Option<Rng>,
    /// Where every cursor starts: workers use their index, so N workers spread their first
    /// requests over N endpoints instead of all starting on the first.
    offset: u32,
    /// Hashing (`upstream-hash-by`, `balanced` cookies): per backend id, its endpoints
    /// prepared once ([`Prepared`]: their hashes and, from 16 endpoints on, this worker's
    /// lazily filled bucket table, 64 or 128 KiB), kept across snapshots while the backend's
    /// endpoints stay the same.
    prepared: Vec<Option<Box<Prepared>>>,
}

/// The prepared endpoints of backend `id` (made now if missing or made for other endpoints).
fn prepared<'p>(
    cache: &'p mut Vec<Option<Box<Prepared>>>,
    id: BackendId,
    endpoints: &[SocketAddr],
) -> &'p mut Prepared {
    let i = id.0 as usize;
    if i >= cache.len() {
        cache.resize_with(i + 1, || None);
    }
    let slot = &mut cache[i];
    if !slot.as_mut().is_some_and(|p| p.check(endpoints)) {
        *slot = Some(Box::new(Prepared::new(endpoints)));
    }
    slot.get_or_insert_with(|| Box::new(Prepared::new(endpoints)))
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
            outliers: Outliers::default(),
            wall: None,
            rng: Some(Rng::new(u64::from(offset))),
            prepared: Vec::new(),
        }
    }

    /// With outlier ejection as `config` says (else [`OutlierConfig::default`]).
    pub fn with_outliers(mut self, config: OutlierConfig) -> Picker {
        self.outliers = Outliers::new(config);
        self
    }

    /// Prepares for a new snapshot. Cursors are kept (they are only rotation offsets, and
    /// backend ids are per snapshot anyway) and grow on first use, so a snapshot swap costs
    /// a worker nothing proportional to the number of backends.
    /// Endpoint statistics are kept by address (the same endpoint keeps its history across
    /// snapshots); those of endpoints gone from `snapshot` are dropped once idle.
    pub fn reset_for(&mut self, snapshot: &Snapshot) {
        self.stats.retain(|ep| snapshot.has_endpoint(ep));
        self.outliers.retain(|ep| snapshot.has_endpoint(ep));
        // Prepared hashing stays for the backends whose endpoints did not change.
        for (i, slot) in self.prepared.iter_mut().enumerate() {
            let same = slot.as_mut().is_some_and(|p| {
                snapshot
                    .backend(BackendId(i as u32))
                    .is_some_and(|b| p.rebind(&b.endpoints))
            });
            if !same {
                *slot = None;
            }
        }
        self.prepared.truncate(snapshot.backends.len());
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
        // Ejected endpoints are skipped, unless too many are (panic threshold).
        let filter = self.outliers.filters(endpoints, now);
        let outliers = &self.outliers;
        let usable = |ep: &SocketAddr| !filter || !outliers.is_ejected(ep, now);
        let rng = self
            .rng
            .get_or_insert_with(|| Rng::new(u64::from(self.offset)));
        let i = match balance {
            Balance::RoundRobin => None,
            Balance::LeastRequest => self.stats.least_request(endpoints, rng),
            Balance::Ewma => self.stats.ewma(endpoints, rng, now),
            Balance::Hash(key) => {
                let p = prepared(&mut self.prepared, backend, endpoints);
                match filter {
                    false => p.rendezvous(key.hash(req)),
                    true => p.rendezvous_where(key.hash(req), |i| usable(&endpoints[i])),
                }
            }
            Balance::HashBounded(key, percent) => {
                // The key's first choice unless it already has more than its share of this
                // worker's requests in flight: then its next choice, and so on (each endpoint
                // takes at most ceil(percent × (in flight + 1) / n) requests). The loads are
                // kept by endpoint index: no address is hashed here.
                let p = prepared(&mut self.prepared, backend, endpoints);
                let b = hash::bucket(key.hash(req));
                let load = self.stats.backend_load(backend.0, endpoints);
                // Under the bound, without a division: in flight < ceil(x / 100n) exactly
                // when in flight × 100n < x, for x = percent × (in flight + 1).
                let limit = u64::from(*percent) * (load.total + 1);
                let per = 100 * endpoints.len() as u64;
                let under = |i: usize| u64::from(load.by_index[i]) * per < limit;
                let first = p.winner(b);
                match first {
                    // Usable with nothing in flight: under any bound (the bound is >= 1).
                    Some(f) if load.by_index[f] == 0 && usable(&endpoints[f]) => Some(f),
                    Some(f) => p
                        .next_where(b, f, |i| usable(&endpoints[i]) & under(i))
                        // Over the bound everywhere usable: the first usable choice.
                        .or_else(|| p.next_where(b, f, |i| usable(&endpoints[i]))),
                    None => None,
                }
            }
            Balance::HashSubset(key, size) => {
                // A random endpoint of the key's group; an ejected one gives way to the
                // next usable one of the group.
                let p = prepared(&mut self.prepared, backend, endpoints);
                p.subset(key.hash(req), *size as usize).and_then(|group| {
                    let n = group.len();
                    let first = rng.below(n);
                    (0..n)
                        .map(|k| group.start + (first + k) % n)
                        .find(|i| usable(&endpoints[*i]))
                })
            }
        };
        match i {
            Some(i) if usable(&endpoints[i]) => Some(endpoints[i]),
            // Round robin, or a P2C draw that landed on an ejected endpoint: the rotation,
            // past the ejected ones.
            _ if filter => self.pick_other(snapshot, backend, &[], now),
            _ => self.pick(snapshot, backend),
        }
    }

    /// The next endpoint of `backend` in its rotation that is not in `tried` and, unless too
    /// many are (panic threshold), not ejected; a retry's choice whatever the route's
    /// balancing (the balancer's choice already failed; rotating spreads retries). `None`
    /// when every endpoint was tried.
    pub fn pick_other(
        &mut self,
        snapshot: &Snapshot,
        backend: BackendId,
        tried: &[SocketAddr],
        now: Instant,
    ) -> Option<SocketAddr> {
        let endpoints = &snapshot.backend(backend)?.endpoints;
        let n = endpoints.len();
        let filter = self.outliers.filters(endpoints, now);
        let mut fallback = None;
        for _ in 0..n {
            let ep = self.pick(snapshot, backend)?;
            if tried.contains(&ep) {
                continue;
            }
            if filter && self.outliers.is_ejected(&ep, now) {
                fallback = fallback.or(Some(ep));
                continue;
            }
            return Some(ep);
        }
        fallback
    }

    /// The endpoint of `backend` the affinity cookie value `id` pins to, as `mode` reads it.
    /// `persistent`: the endpoint whose id it is, unless it is gone or ejected (then the
    /// balancer picks, and the client gets a new cookie). `balanced`: the first rendezvous
    /// choice of the key among the usable endpoints (an ejected one's sessions go to their
    /// next choice meanwhile, with the same cookie).
    pub fn pinned(
        &mut self,
        snapshot: &Snapshot,
        backend: BackendId,
        mode: affinity::Mode,
        id: u64,
        now: Instant,
    ) -> Option<SocketAddr> {
        let endpoints = &snapshot.backend(backend)?.endpoints;
        let filter = self.outliers.filters(endpoints, now);
        let usable = |ep: &SocketAddr| !filter || !self.outliers.is_ejected(ep, now);
        match mode {
            affinity::Mode::Persistent => {
                let p = prepared(&mut self.prepared, backend, endpoints);
                let endpoint = endpoints[p.find_id(id)?];
                usable(&endpoint).then_some(endpoint)
            }
            affinity::Mode::Balanced => {
                let p = prepared(&mut self.prepared, backend, endpoints);
                let i = match filter {
                    false => p.rendezvous(id),
                    true => p.rendezvous_where(id, |i| usable(&endpoints[i])),
                };
                i.map(|i| endpoints[i])
            }
        }
    }

    /// A cookie value pinning new requests to `endpoint` of `backend` (see [`Picker::pinned`]):
    /// its id (`persistent`), or a fresh session key that lands on it (`balanced`).
    pub fn affinity_value(
        &mut self,
        snapshot: &Snapshot,
        backend: BackendId,
        mode: affinity::Mode,
        endpoint: SocketAddr,
    ) -> Option<u64> {
        if mode == affinity::Mode::Persistent {
            return Some(affinity::endpoint_id(&endpoint));
        }
        let endpoints = &snapshot.backend(backend)?.endpoints;
        let target = endpoints.binary_search(&endpoint).ok().or_else(|| {
            // Snapshots keep endpoints sorted; a linear look is the safe fallback.
            endpoints.iter().position(|ep| *ep == endpoint)
        })?;
        let rng = self
            .rng
            .get_or_insert_with(|| Rng::new(u64::from(self.offset)));
        let p = prepared(&mut self.prepared, backend, endpoints);
        affinity::session_key(p, target, || rng.next_u64())
    }

    /// A uniform draw from `0..n` (`n > 0`) from this worker's generator (canary weights).
    pub fn roll(&mut self, n: u32) -> u32 {
        let rng = self
            .rng
            .get_or_insert_with(|| Rng::new(u64::from(self.offset)));
        rng.below(n as usize) as u32
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

/// What a route's canary choice asks of the worker (core::route::canary::Context): its
/// generator, and its snapshot and ejection state for endpoints and affinity cookies.
struct CanaryContext<'s, 'p> {
    snapshot: &'s Snapshot,
    picker: &'p mut Picker,
    cookie: Option<&'s [u8]>,
    now: Instant,
}

impl crate::core::route::canary::Context for CanaryContext<'_, '_> {
    fn roll(&mut self, n: u32) -> u32 {
        self.picker.roll(n)
    }

    fn usable(&self, backend: BackendId) -> bool {
        let endpoints = self.snapshot.backend(backend).map(|b| &b.endpoints);
        endpoints.is_some_and(|e| !e.is_empty())
    }

    fn pinned(
        &mut self,
        backend: BackendId,
        affinity: &crate::core::route::affinity::Affinity,
    ) -> bool {
        let (snapshot, now) = (self.snapshot, self.now);
        affinity
            .requested(self.cookie)
            .and_then(|id| {
                self.picker
                    .pinned(snapshot, backend, affinity.mode, id, now)
            })
            .is_some()
    }
}

/// The worker's router: the current snapshot plus its own load-balancing state.
pub struct SnapshotRouter<'a> {
    pub snapshot: &'a Snapshot,
    pub picker: &'a mut Picker,
    /// The Ingress of the rule the last routing matched (see [`Router::routed_ingress`]).
    routed: Option<&'a str>,
    /// The backend the last routing matched (see [`Router::routed_backend`]).
    routed_backend: Option<BackendId>,
}

impl<'a> SnapshotRouter<'a> {
    pub fn new(snapshot: &'a Snapshot, picker: &'a mut Picker) -> SnapshotRouter<'a> {
        SnapshotRouter {
            snapshot,
            picker,
            routed: None,
            routed_backend: None,
        }
    }
}

impl Router for SnapshotRouter<'_> {
    fn route(&mut self, host: &str, path: &str) -> RouteDecision {
        let Some((backend, policy, ingress)) = self.snapshot.table.route(host, path) else {
            self.routed = None;
            self.routed_backend = None;
            return RouteDecision::NotFound;
        };
        self.routed = ingress;
        self.routed_backend = Some(backend);
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
        // A route's canary (core::route::canary) may take the request.
        let snapshot = self.snapshot;
        let mut cx = CanaryContext {
            snapshot,
            picker: self.picker,
            cookie: req.header("cookie"),
            now,
        };
        let routed = snapshot.table.route_request(host, path, req, &mut cx);
        let Some((backend, policy, ingress)) = routed else {
            self.routed = None;
            self.routed_backend = None;
            return RouteDecision::NotFound;
        };
        self.routed = ingress;
        self.routed_backend = Some(backend);
        // A cookie that names a usable endpoint of the backend pins the request to it.
        if let Some(affinity) = policy.and_then(|p| p.affinity.as_ref())
            && let Some(id) = affinity.requested(req.header("cookie"))
            && let Some(endpoint) =
                self.picker
                    .pinned(self.snapshot, backend, affinity.mode, id, now)
        {
            return RouteDecision::Forward {
                backend,
                endpoint,
                policy: policy.cloned(),
            };
        }
        let balance = policy.and_then(|p| p.balance.as_ref());
        let balance = balance.unwrap_or(&Balance::RoundRobin);
        let picked = self
            .picker
            .pick_by(self.snapshot, backend, balance, req, now);
        match picked {
            Some(endpoint) => RouteDecision::Forward {
                backend,
                endpoint,
                policy: policy.cloned(),
            },
            None => RouteDecision::NoEndpoints,
        }
    }

    fn policy_of(
        &mut self,
        host: &str,
        path: &str,
    ) -> Option<std::sync::Arc<crate::core::route::RoutePolicy>> {
        self.snapshot.table.route(host, path)?.1.cloned()
    }

    fn retry_pick(
        &mut self,
        backend: BackendId,
        tried: &[SocketAddr],
        now: Instant,
    ) -> Option<SocketAddr> {
        self.picker.pick_other(self.snapshot, backend, tried, now)
    }

    fn report(&mut self, endpoint: SocketAddr, ok: bool, now: Instant) {
        if ok {
            self.picker.outliers.success(&endpoint, now);
        } else {
            self.picker.outliers.failure(endpoint, now);
        }
    }

    fn rule_path(&mut self, host: &str, path: &str) -> Option<&str> {
        self.snapshot.table.rule_path(host, path)
    }

    fn unix_time(&self, now: Instant) -> Option<u64> {
        let (at, secs) = self.picker.wall?;
        Some(secs + now.saturating_since(at).as_secs())
    }

    fn redirect_https(&mut self, host: &str) -> bool {
        self.snapshot.certs.redirects(host)
    }

    fn routed_ingress(&self) -> Option<&str> {
        self.routed
    }

    fn routed_backend(&self) -> Option<BackendId> {
        self.routed_backend
    }

    fn affinity_names(
        &mut self,
        backend: BackendId,
        mode: affinity::Mode,
        id: u64,
        endpoint: SocketAddr,
        now: Instant,
    ) -> bool {
        self.picker
            .pinned(self.snapshot, backend, mode, id, now)
            .is_some_and(|ep| ep == endpoint)
    }

    fn affinity_value(
        &mut self,
        backend: BackendId,
        mode: affinity::Mode,
        endpoint: SocketAddr,
    ) -> Option<u64> {
        self.picker
            .affinity_value(self.snapshot, backend, mode, endpoint)
    }

    fn backend_name(&self, backend: BackendId) -> Option<&str> {
        self.snapshot
            .backends
            .get(backend.0 as usize)
            .map(|b| b.name.as_str())
    }
}
