//! The compiler: a pure function from Kubernetes objects to a route [`Snapshot`].
//!
//! Same input, same output, whatever the order the objects arrived in. Nothing is ever
//! dropped silently: every Ingress field we cannot honour produces a [`Diagnostic`] naming the
//! object and the field, that rule is skipped, and everything else compiles.
//!
//! Decisions where the Ingress spec leaves room (the ones ingress-nginx users know):
//! * class: `spec.ingressClassName` naming an IngressClass whose controller is ours (or, when
//!   no IngressClass of that name exists at all, equal to our `--ingress-class`); without it,
//!   the legacy `kubernetes.io/ingress.class` annotation; without either, ours if one of our
//!   IngressClasses is the cluster default or `watch_without_class` is set. When the field and
//!   the annotation disagree, the field wins and a diagnostic says so.
//! * conflicts: the same host, path and path type in two Ingresses → the oldest Ingress
//!   (creationTimestamp, then namespace/name) wins; the other gets a diagnostic.
//! * a backend whose Service or port does not exist stays routed and answers 503, so a typo
//!   never makes a path fall through to some other backend.
//! * `spec.defaultBackend`: the fallback for the Ingress's own hosts, and (from the oldest
//!   Ingress that has one) for requests nothing else matches; then the controller default.
//! * backend settings (`load-balance`, `upstream-hash-by*`, `affinity*`, `session-cookie-*`,
//!   `service-upstream`, `sluice.dev/health-check-*`) belong to the Service port, as in
//!   ingress-nginx: the oldest Ingress with a path rule to it decides them for every route to
//!   it ([`Owners`]); an Ingress that says otherwise gets a diagnostic naming the deciding one.
//! * canary Ingresses (`canary: "true"`) add no routes: each of their rules becomes the
//!   alternative backend of the main rule with the same host, path and path type (the
//!   oldest canary wins; one without a main rule is reported and routes nothing).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::annotations::BackendPolicy;
use super::manifests::Object;
use crate::core::route::{
    Backend, BackendId, CanaryMiss, PathKind, RoutePolicy, RouteTable, RouteTableBuilder,
};
use crate::core::snapshot::Snapshot;
use crate::core::tls::CertTable;

pub use super::class::{Classes, DEFAULT_CLASS_ANNOTATION, LEGACY_CLASS_ANNOTATION};
/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the compiler reads.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub ingresses: Vec<Arc<Ingress>>,
    pub classes: Vec<Arc<IngressClass>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
}

impl Objects {
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Objects {
        let mut all = Objects::default();
        for object in objects {
            match object {
                Object::Ingress(o) => all.ingresses.push(o),
                Object::IngressClass(o) => all.classes.push(o),
                Object::Service(o) => all.services.push(o),
                Object::EndpointSlice(o) => all.slices.push(o),
                Object::Secret(o) => all.secrets.push(o),
            }
        }
        all
    }
}

/// A Service port, by number or by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    Number(i32),
    Name(String),
    /// The Service's first port (`--default-backend-service ns/name`, the `default-backend`
    /// annotation), as ingress-nginx takes it.
    First,
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
            PortRef::First => Ok(()),
        }
    }
}

/// `namespace/service:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: PortRef,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            PortRef::First => write!(f, "{}/{}", self.namespace, self.name),
            _ => write!(f, "{}/{}:{}", self.namespace, self.name, self.port),
        }
    }
}

/// The controller's identity and fallbacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// `spec.controller` of IngressClasses that are ours.
    pub controller: String,
    /// Our class name (legacy annotation, and `ingressClassName` without an IngressClass).
    pub ingress_class: String,
    /// Take Ingresses that name no class at all.
    pub watch_without_class: bool,
    /// The controller's default backend, used when nothing else matches.
    pub default_backend: Option<ServiceRef>,
    /// Certificates and HTTPS redirects (see `certs`).
    pub tls: super::certs::TlsOptions,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            controller: "sluice.dev/ingress-controller".to_string(),
            ingress_class: "sluice".to_string(),
            watch_without_class: false,
            default_backend: None,
            tls: super::certs::TlsOptions::default(),
        }
    }
}

/// Something in the input that was not honoured as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// e.g. `Ingress shop/web`.
    pub object: String,
    /// e.g. `spec.rules[0].http.paths[1].path`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// The compiler's output.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    pub diagnostics: Vec<Diagnostic>,
}

fn meta_name(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// Compiles `objects` into snapshot `version`, judging certificate expiry at `now`: the
/// first (full) compile of the incremental compiler ([`super::incremental::Incremental`]),
/// which is the one compiler. Pure: same input, same output.
pub fn compile_at(
    objects: &Objects,
    opts: &CompileOptions,
    version: u64,
    now: SystemTime,
) -> Compiled {
    super::incremental::Incremental::new_at(objects, opts.clone(), version, now).1
}

/// [`compile_at`] at the wall clock, for callers without a clock of their own (tools, tests).
pub fn compile(objects: &Objects, opts: &CompileOptions, version: u64) -> Compiled {
    compile_at(objects, opts, version, super::certs::wall_clock())
}

/// The certificate table of those of `ingresses` that are ours (oldest first: the first
/// certificate for a host wins) and the Secrets of `objects`, with its diagnostics.
pub(super) fn certificates<'a>(
    ingresses: impl Iterator<Item = &'a Ingress>,
    classes: &Classes<'_>,
    objects: &Objects,
    opts: &CompileOptions,
    now: SystemTime,
) -> (CertTable, Vec<Diagnostic>) {
    let mut ours: Vec<&Ingress> = ingresses.filter(|i| classes.is_ours(i)).collect();
    oldest_first(&mut ours);
    super::certs::build(&ours, &objects.secrets, &opts.tls, now)
}

/// Whether the certificate table reads anything of `ing` (its `spec.tls`, its redirect
/// annotations, or its rule hosts when redirects are forced everywhere).
pub(super) fn has_tls(ing: &Ingress, opts: &CompileOptions) -> bool {
    let annotated = ing.metadata.annotations.as_ref().is_some_and(|a| {
        super::certs::SSL_REDIRECT
            .iter()
            .chain(super::certs::FORCE_SSL_REDIRECT)
            .any(|k| a.contains_key(*k))
    });
    let tls = ing
        .spec
        .as_ref()
        .and_then(|s| s.tls.as_ref())
        .is_some_and(|t| !t.is_empty());
    tls || annotated || opts.tls.force_ssl_redirect
}

/// How often the host maps of `table`'s base name each of `count` backend ids.
pub(super) fn backend_refs(table: &RouteTable, count: usize) -> Vec<u32> {
    let mut refs = vec![0u32; count];
    let mut count_one = |id: BackendId| {
        if let Some(n) = refs.get_mut(id.0 as usize) {
            *n += 1;
        }
    };
    for routes in table.base_hosts() {
        routes.backends().for_each(&mut count_one);
    }
    refs
}

/// How often the whole of `table` names each backend id, from the counts of its base
/// ([`backend_refs`]): corrected by the overlay, plus the host-less rules and the fallback.
/// Costs time in the size of the overlay.
pub(super) fn live_refs(table: &RouteTable, base_refs: &[u32], count: usize) -> Vec<u32> {
    let mut refs = base_refs.to_vec();
    refs.resize(count.max(refs.len()), 0);
    let mut add = |id: BackendId, up: bool| {
        if let Some(n) = refs.get_mut(id.0 as usize) {
            *n = if up { *n + 1 } else { n.saturating_sub(1) };
        }
    };
    for (below, above) in table.overlaid() {
        for id in below.into_iter().flat_map(|r| r.backends()) {
            add(id, false);
        }
        for id in above.into_iter().flat_map(|r| r.backends()) {
            add(id, true);
        }
    }
    for id in table.any_host().backends().chain(table.fallback()) {
        add(id, true);
    }
    refs
}

/// Backend ids by the Service port they stand for. A fresh one per full compile; the
/// incremental compiler keeps one across compiles so that the ids in a shared route table
/// stay valid in the snapshots built on it.
#[derive(Clone, Debug, Default)]
pub(super) struct BackendIds {
    ids: HashMap<ServiceRef, BackendId>,
    refs: Vec<ServiceRef>,
}

impl BackendIds {
    fn intern(&mut self, target: &ServiceRef) -> BackendId {
        if let Some(id) = self.ids.get(target) {
            return *id;
        }
        let id = BackendId(self.refs.len() as u32);
        self.refs.push(target.clone());
        self.ids.insert(target.clone(), id);
        id
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    /// The id of `target`, if it has one.
    pub fn get(&self, target: &ServiceRef) -> Option<BackendId> {
        self.ids.get(target).copied()
    }

    /// Every target, by id.
    pub fn refs(&self) -> &[ServiceRef] {
        &self.refs
    }
}

/// An Ingress's place in the oldest-first order: creationTimestamp, namespace, name.
pub(super) type Age = (Option<Time>, String, String);

fn age(ing: &Ingress) -> Age {
    let (ns, name) = meta_name(&ing.metadata);
    (
        ing.metadata.creation_timestamp.clone(),
        ns.to_string(),
        name.to_string(),
    )
}

/// The Service port an Ingress backend names, as written (`None`: not a Service port).
fn service_ref(namespace: &str, backend: &IngressBackend) -> Option<ServiceRef> {
    let service = backend
        .service
        .as_ref()
        .filter(|_| backend.resource.is_none())?;
    if service.name.is_empty() {
        return None;
    }
    let port = match service.port.as_ref().map(|p| (p.number, p.name.as_deref())) {
        Some((Some(n), _)) => PortRef::Number(n),
        Some((None, Some(name))) if !name.is_empty() => PortRef::Name(name.to_string()),
        _ => return None,
    };
    Some(ServiceRef {
        namespace: namespace.to_string(),
        name: service.name.clone(),
        port,
    })
}

/// Which of our Ingresses route to each backend, oldest first, and what each says about the
/// backends it routes to ([`BackendPolicy`]): as in ingress-nginx, balancing and affinity
/// belong to the backend (the Service port), and the oldest Ingress (creationTimestamp,
/// then namespace/name) with a path rule to it decides them for every route to it. The
/// compiler applies that to every rule; an Ingress whose own annotations say otherwise is
/// told so. Kept by the incremental compiler across compiles.
#[derive(Clone, Debug, Default)]
pub(super) struct Owners {
    by_backend: HashMap<ServiceRef, BTreeSet<Age>>,
    settings: BTreeMap<Age, (Arc<str>, BackendPolicy)>,
    /// How many of `settings` ask for active health checks (none: nothing to plan).
    checks: usize,
}

impl Owners {
    /// The Service ports the path rules of `ing` name.
    pub fn backends_of(ing: &Ingress) -> Vec<ServiceRef> {
        let ns = meta_name(&ing.metadata).0;
        let mut refs: Vec<ServiceRef> = ing
            .spec
            .iter()
            .flat_map(|s| s.rules.iter().flatten())
            .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
            .filter_map(|p| service_ref(ns, &p.backend))
            .collect();
        refs.sort();
        refs.dedup();
        refs
    }

    pub fn add(&mut self, ing: &Ingress) {
        let age = age(ing);
        for target in Owners::backends_of(ing) {
            self.by_backend
                .entry(target)
                .or_default()
                .insert(age.clone());
        }
        let object: Arc<str> = ingress_object(ing).into();
        let policy = super::annotations::backend_policy(ing);
        self.checks += usize::from(policy.health.is_some());
        if let Some((_, old)) = self.settings.insert(age, (object, policy)) {
            self.checks -= usize::from(old.health.is_some());
        }
    }

    pub fn remove(&mut self, ing: &Ingress) {
        let age = age(ing);
        for target in Owners::backends_of(ing) {
            if let Some(set) = self.by_backend.get_mut(&target) {
                set.remove(&age);
                if set.is_empty() {
                    self.by_backend.remove(&target);
                }
            }
        }
        if let Some((_, old)) = self.settings.remove(&age) {
            self.checks -= usize::from(old.health.is_some());
        }
    }

    /// Whether some Ingress asks for active health checks.
    pub fn any_checks(&self) -> bool {
        self.checks > 0
    }

    /// The Ingress that decides `target`'s settings (its object name) and those settings.
    pub fn owner(&self, target: &ServiceRef) -> Option<(&Arc<str>, &BackendPolicy)> {
        let first = self.by_backend.get(target)?.first()?;
        self.settings.get(first).map(|(o, p)| (o, p))
    }

    /// `namespace/name` of every Ingress with a path rule to `target`.
    pub fn referrers(&self, target: &ServiceRef) -> impl Iterator<Item = String> + '_ {
        self.by_backend
            .get(target)
            .into_iter()
            .flatten()
            .map(|(_, ns, name)| format!("{ns}/{name}"))
    }
}

/// Oldest first (creationTimestamp, then namespace/name): the order that decides conflicts,
/// and makes the output independent of the order objects arrived in.
pub(super) fn oldest_first(ingresses: &mut [&Ingress]) {
    ingresses.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| meta_name(&a.metadata).cmp(&meta_name(&b.metadata)))
    });
}

/// `Ingress namespace/name`, as diagnostics name it.
pub(super) fn ingress_object(ing: &Ingress) -> String {
    let (ns, name) = meta_name(&ing.metadata);
    format!("Ingress {ns}/{name}")
}

/// What the incremental compiler still knows from its last snapshot, handed down to
/// [`Pass::finish`] as data: a backend that was resolved then and whose Service and
/// EndpointSlices did not change since keeps its endpoints (or why it is broken) instead of
/// being resolved again.
pub(super) struct Known<'a> {
    /// The last snapshot's backends, by id.
    pub backends: &'a [Backend],
    /// Which of them were resolved (routed to).
    pub resolved: &'a [bool],
    /// Why the broken ones are broken.
    pub broken: &'a HashMap<BackendId, String>,
    /// `(namespace, service)` of every Service whose objects changed since.
    pub changed: &'a HashSet<(String, String)>,
}

impl Known<'_> {
    /// The endpoints of `id` (standing for `target`) as last resolved, if still valid.
    fn endpoints(
        &self,
        id: BackendId,
        target: &ServiceRef,
    ) -> Option<Result<Vec<SocketAddr>, String>> {
        let i = id.0 as usize;
        if !self.resolved.get(i).copied().unwrap_or(false)
            || self
                .changed
                .contains(&(target.namespace.clone(), target.name.clone()))
        {
            return None;
        }
        Some(match self.broken.get(&id) {
            Some(why) => Err(why.clone()),
            None => Ok(self.backends.get(i)?.endpoints.clone()),
        })
    }
}

/// One compilation pass over a set of Ingresses: resolves their backends (interning ids in
/// the given [`BackendIds`]) and builds their route table.
pub(super) struct Pass<'a> {
    c: Compiler<'a>,
}

impl<'a> Pass<'a> {
    /// Compiles those of `ingresses` that are ours (any order) against the Services and
    /// EndpointSlices of `objects`.
    pub fn run(
        objects: &'a Objects,
        opts: &CompileOptions,
        classes: &Classes<'_>,
        ids: &'a mut BackendIds,
        owners: &'a Owners,
        ingresses: impl Iterator<Item = &'a Ingress>,
    ) -> (RouteTable, Pass<'a>) {
        let mut c = Compiler {
            owners,
            services: objects
                .services
                .iter()
                .map(|s| (meta_name(&s.metadata), &**s))
                .collect(),
            slices: index_slices(&objects.slices),
            seen: HashMap::new(),
            ids,
            resolved: Vec::new(),
            broken: HashMap::new(),
            diagnostics: Vec::new(),
        };
        let mut ingresses: Vec<&Ingress> = ingresses.collect();
        oldest_first(&mut ingresses);
        let mut table = RouteTableBuilder::default();
        // Rule tag → the Ingress that added it, for conflict reports.
        let mut owners: Vec<String> = Vec::new();
        let mut fallback_set = false;
        let mut canaries = Vec::new();
        for ing in ingresses {
            let object = ingress_object(ing);
            let (ours, disagreement) = classes.verdict(ing);
            if let Some(why) = disagreement {
                c.diag(
                    &object,
                    "metadata.annotations[kubernetes.io/ingress.class]",
                    why,
                );
            }
            if !ours {
                continue;
            }
            let Some(spec) = ing.spec.as_ref() else {
                continue;
            };
            let ns = meta_name(&ing.metadata).0;
            if let Some(rule) = super::annotations::canary(ing, &object, &mut c.diagnostics) {
                // Added once every main rule is in (ingress-nginx merges canaries last).
                canaries.push((ing, object, rule));
                continue;
            }
            let tag = owners.len() as u32;
            owners.push(object.clone());
            let policy = super::annotations::route_policy(ing, &object, &mut c.diagnostics);
            let policy = super::request_annotations::with_basic_auth(
                policy,
                ing,
                &object,
                &objects.secrets,
                &mut c.diagnostics,
            );
            let policy = super::request_annotations::with_external_auth(
                policy,
                ing,
                &object,
                &objects.services,
                &mut c.diagnostics,
            );
            let policy = c.error_backend(policy, ns, &object, opts);
            let policy = super::annotations::with_upstream_tls(
                policy,
                ing,
                &object,
                &objects.secrets,
                &mut c.diagnostics,
            );
            let ingress: Arc<str> = format!("{ns}/{}", meta_name(&ing.metadata).1).into();
            let added_by = AddedBy {
                tag,
                policy,
                backend: super::annotations::backend_policy(ing),
                ingress,
            };
            let own_hosts = c.rules(&mut table, ns, spec, &object, &added_by, &owners);
            if let Some(default) = &spec.default_backend
                && let Some(backend) =
                    c.backend(ns, default, &object, &|| "spec.defaultBackend".to_string())
            {
                for host in &own_hosts {
                    table.host_default(host, backend);
                }
                if !fallback_set {
                    table.fallback(backend);
                    fallback_set = true;
                }
            }
        }
        for (ing, object, rule) in canaries {
            c.canary(&mut table, ing, &object, rule);
        }
        if let Some(default) = &opts.default_backend {
            let backend = c.service_backend(default, "controller", "--default-backend");
            table.fallback(backend);
        }
        (table.build(), Pass { c })
    }

    /// How many backend ids exist so far (in this pass's [`BackendIds`]).
    pub fn backend_count(&self) -> usize {
        self.c.ids.len()
    }

    /// Every backend id known so far with its endpoints, for the ids `refs` counts as routed
    /// to (resolved by this pass, taken from `known`, or resolved now); the others (no rule
    /// routes to them) get no endpoints, so that no worker keeps pooled connections to them.
    /// Also returns the ids whose Service port could not be resolved, with why, and this
    /// pass's diagnostics.
    pub fn finish(
        self,
        refs: &[u32],
        known: Option<&Known<'_>>,
    ) -> (Vec<Backend>, Vec<(BackendId, String)>, Vec<Diagnostic>) {
        let live = |id: BackendId| refs.get(id.0 as usize).is_some_and(|n| *n > 0);
        let mut c = self.c;
        let mut backends = Vec::with_capacity(c.ids.len());
        let mut broken = Vec::new();
        for (i, target) in c.ids.refs.iter().enumerate() {
            let id = BackendId(i as u32);
            let done = c.resolved.get_mut(i).and_then(Option::take);
            let backend = match done {
                Some(backend) if live(id) => {
                    if let Some(why) = c.broken.get(&id) {
                        broken.push((id, why.clone()));
                    }
                    backend
                }
                _ => {
                    let endpoints = if !live(id) {
                        Vec::new()
                    } else {
                        known
                            .and_then(|k| k.endpoints(id, target))
                            .unwrap_or_else(|| c.endpoints(target))
                            .unwrap_or_else(|why| {
                                broken.push((id, why));
                                Vec::new()
                            })
                    };
                    Backend {
                        name: target.to_string(),
                        endpoints,
                    }
                }
            };
            backends.push(backend);
        }
        (backends, broken, c.diagnostics)
    }
}

/// A rule host: a DNS name (any case), optionally `*.` followed by one; never an IP address.
pub(crate) fn check_host(host: &str) -> Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.parse::<IpAddr>().is_ok() {
        return Err("must be a DNS name, not an IP address");
    }
    if name.is_empty() || name.len() > 253 {
        return Err("invalid host name length");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("invalid host name (wildcards are allowed only as a leading '*.' label)");
        }
    }
    Ok(())
}

/// The ClusterIP of `service`, if it has one (not headless, not ExternalName).
fn cluster_ip(service: &Service) -> Option<IpAddr> {
    service
        .spec
        .as_ref()?
        .cluster_ip
        .as_deref()?
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| !ip.is_unspecified())
}

/// EndpointSlices by (namespace, service name).
fn index_slices(slices: &[Arc<EndpointSlice>]) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut index: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
        index.entry((ns, service.as_str())).or_default().push(slice);
    }
    index
}

/// A backend reference as an Ingress writes it, borrowed: namespace, service, port number,
/// port name.
type BorrowedRef<'a> = (&'a str, &'a str, Option<i32>, Option<&'a str>);

/// What every rule of one Ingress carries: the Ingress's index (for conflict reports) and
/// the route policy of its annotations.
struct AddedBy {
    tag: u32,
    policy: Option<Arc<RoutePolicy>>,
    /// What the Ingress's annotations say about its backends (see [`Owners`]).
    backend: BackendPolicy,
    /// `namespace/name`, carried by each rule for the access log and the counters.
    ingress: Arc<str>,
}

struct Compiler<'a> {
    /// Who decides each backend's balancing and affinity.
    owners: &'a Owners,
    services: HashMap<(&'a str, &'a str), &'a Service>,
    /// Backends already resolved, by the reference as written (no allocation to look up).
    seen: HashMap<BorrowedRef<'a>, BackendId>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    ids: &'a mut BackendIds,
    /// Backends resolved by this pass, by id.
    resolved: Vec<Option<Backend>>,
    /// Backends of this pass whose Service port could not be resolved, with why.
    broken: HashMap<BackendId, String>,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Compiler<'a> {
    fn diag(&mut self, object: &str, field: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            object: object.to_string(),
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// Adds the rules of one Ingress (tag `tag`) to `table`; returns the hosts it has rules for.
    fn rules(
        &mut self,
        table: &mut RouteTableBuilder,
        ns: &'a str,
        spec: &'a k8s_openapi::api::networking::v1::IngressSpec,
        object: &str,
        added_by: &AddedBy,
        owners: &[String],
    ) -> Vec<String> {
        let mut own_hosts: Vec<String> = Vec::new();
        // The policy of this Ingress's rules to each backend (its balancing and affinity
        // are the backend's).
        let mut policies: HashMap<BackendId, Option<Arc<RoutePolicy>>> = HashMap::new();
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            let host = match rule.host.as_deref() {
                None | Some("") => None,
                Some(h) => {
                    if let Err(why) = check_host(h) {
                        self.diag(object, &format!("spec.rules[{i}].host"), why);
                        continue;
                    }
                    Some(h.to_ascii_lowercase())
                }
            };
            let Some(http) = &rule.http else {
                continue;
            };
            for (j, p) in http.paths.iter().enumerate() {
                let field = || format!("spec.rules[{i}].http.paths[{j}]");
                let kind = match p.path_type.as_str() {
                    "Exact" => PathKind::Exact,
                    "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                    other => {
                        self.diag(
                            object,
                            &format!("{}.pathType", field()),
                            format!("unknown path type {other:?}"),
                        );
                        continue;
                    }
                };
                let path = p.path.as_deref().unwrap_or("/");
                if !path.starts_with('/') {
                    self.diag(object, &format!("{}.path", field()), "must start with '/'");
                    continue;
                }
                let backend_field = || format!("{}.backend", field());
                let Some(backend) = self.backend(ns, &p.backend, object, &backend_field) else {
                    continue;
                };
                let policy = match policies.get(&backend) {
                    Some(p) => p.clone(),
                    None => {
                        let own = (added_by.policy.as_deref(), &added_by.backend);
                        let p = self.backend_policy(backend, own, object, &backend_field);
                        policies.insert(backend, p.clone());
                        p
                    }
                };
                if let Err(first) = table.add_tagged(
                    host.as_deref(),
                    path,
                    kind,
                    backend,
                    policy,
                    Some(added_by.ingress.clone()),
                    added_by.tag,
                ) {
                    let owner = owners.get(first as usize).cloned().unwrap_or_default();
                    let shown = host.as_deref().unwrap_or("*");
                    self.diag(
                        object,
                        &format!("{}.path", field()),
                        format!("{shown} {path} is already routed by {owner} (older); ignored"),
                    );
                }
            }
            if let Some(h) = host
                && !own_hosts.contains(&h)
            {
                own_hosts.push(h);
            }
        }
        own_hosts
    }

    /// The policy of a rule of `object` (whose own policy is `own`) to `backend`: `own`
    /// with the backend's balancing and affinity ([`Owners`]); when `object`'s annotations
    /// set them otherwise, it is told which Ingress decides them.
    fn backend_policy(
        &mut self,
        backend: BackendId,
        (own, mine): (Option<&RoutePolicy>, &BackendPolicy),
        object: &str,
        field: &dyn Fn() -> String,
    ) -> Option<Arc<RoutePolicy>> {
        let target = self.ids.refs[backend.0 as usize].clone();
        let owners = self.owners;
        let Some((owner, theirs)) = owners.owner(&target) else {
            return own.map(|p| Arc::new(p.clone()));
        };
        if theirs.service_upstream()
            && let Some(service) = self
                .services
                .get(&(target.namespace.as_str(), target.name.as_str()))
            && cluster_ip(service).is_none()
        {
            let message = format!(
                "{target}: service-upstream: the Service has no ClusterIP (headless or \
                 ExternalName); its endpoints are used"
            );
            self.diag(object, &format!("{}.service", field()), message);
        }
        if **owner != *object {
            let lost = mine.overridden_by(theirs);
            if !lost.is_empty() {
                let message = format!(
                    "{target}: {} ignored: balancing, affinity and health checks belong to \
                     the backend, and {owner} (older, also routing to it) decides them",
                    lost.join(", ")
                );
                self.diag(object, &format!("{}.service", field()), message);
            }
        }
        theirs.applied_to(own)
    }

    /// Puts the rules of the canary Ingress `ing` on the main rules with the same host, path
    /// and path type (oldest canary first; a rule with no such main rule is reported and
    /// ignored, as ingress-nginx drops it). Its `spec.defaultBackend` is ignored, as are its
    /// annotations other than the canary rules, balancing and affinity (reported when set):
    /// requests it takes get the main rule's policy with its balancing and affinity.
    fn canary(
        &mut self,
        table: &mut RouteTableBuilder,
        ing: &'a Ingress,
        object: &str,
        rule: crate::core::route::canary::CanaryRule,
    ) {
        let Some(spec) = ing.spec.as_ref() else {
            return;
        };
        let (ns, name) = meta_name(&ing.metadata);
        let policy = super::annotations::route_policy(ing, object, &mut self.diagnostics);
        let balance = match policy.as_deref() {
            Some(p) => {
                let rest = RoutePolicy {
                    balance: None,
                    ..p.clone()
                };
                if !rest.is_empty() {
                    self.diag(
                        object,
                        "metadata.annotations",
                        format!(
                            "ignored on a canary Ingress: {rest} (requests it takes follow the \
                             main Ingress's settings, session affinity included, as \
                             ingress-nginx's default affinity-canary-behavior: sticky; only \
                             canary-*, load-balance and upstream-hash-by annotations apply)"
                        ),
                    );
                }
                p.balance.clone()
            }
            None => None,
        };
        if spec.default_backend.is_some() {
            self.diag(
                object,
                "spec.defaultBackend",
                "ignored on a canary Ingress (a canary is never a catch-all)",
            );
        }
        let ingress: Arc<str> = format!("{ns}/{name}").into();
        for (i, r) in spec.rules.iter().flatten().enumerate() {
            let host = match r.host.as_deref() {
                None | Some("") => None,
                Some(h) => {
                    if let Err(why) = check_host(h) {
                        self.diag(object, &format!("spec.rules[{i}].host"), why);
                        continue;
                    }
                    Some(h)
                }
            };
            for (j, p) in r.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let field = || format!("spec.rules[{i}].http.paths[{j}]");
                let kind = match p.path_type.as_str() {
                    "Exact" => PathKind::Exact,
                    "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                    other => {
                        let message = format!("unknown path type {other:?}");
                        self.diag(object, &format!("{}.pathType", field()), message);
                        continue;
                    }
                };
                let path = p.path.as_deref().unwrap_or("/");
                let backend_field = || format!("{}.backend", field());
                let Some(backend) = self.backend(ns, &p.backend, object, &backend_field) else {
                    continue;
                };
                let own = RoutePolicy {
                    balance: balance.clone(),
                    ..RoutePolicy::default()
                };
                // Its affinity is the main route's (Canary::under): not compared here.
                let mine = BackendPolicy {
                    affinity: None,
                    ..super::annotations::backend_policy(ing)
                };
                let settings =
                    self.backend_policy(backend, (Some(&own), &mine), object, &backend_field);
                let canary = crate::core::route::canary::Canary {
                    backend,
                    rule: rule.clone(),
                    ingress: ingress.clone(),
                    balance: settings.as_ref().and_then(|p| p.balance.clone()),
                    affinity: None,
                    policy: None,
                };
                let shown = host.unwrap_or("*");
                let why = match table.add_canary(host, path, kind, canary) {
                    Ok(()) => continue,
                    Err(CanaryMiss::NoMain) => format!(
                        "no main Ingress routes {shown} {path} ({kind:?}); the canary is ignored"
                    ),
                    Err(CanaryMiss::Taken(first)) => format!(
                        "{shown} {path} already has the canary Ingress {first} (older); ignored"
                    ),
                    Err(CanaryMiss::SameBackend) => format!(
                        "{shown} {path}: the canary's backend is the main Ingress's own; ignored"
                    ),
                };
                self.diag(object, &format!("{}.path", field()), why);
            }
        }
    }

    /// The backend of an Ingress path or default, or `None` (with a diagnostic) when it
    /// names something we cannot route to at all.
    fn backend(
        &mut self,
        namespace: &'a str,
        backend: &'a IngressBackend,
        object: &str,
        field: &dyn Fn() -> String,
    ) -> Option<BackendId> {
        if let Some(service) = &backend.service
            && backend.resource.is_none()
        {
            let port = service.port.as_ref();
            let key = (
                namespace,
                service.name.as_str(),
                port.and_then(|p| p.number),
                port.and_then(|p| p.name.as_deref()),
            );
            if let Some(id) = self.seen.get(&key).copied() {
                // Every Ingress that names a broken backend is told, not just the first.
                if let Some(why) = self.broken.get(&id).cloned() {
                    let target = &self.ids.refs[id.0 as usize];
                    let message = format!("{target}: {why} (answers 503)");
                    self.diag(object, &format!("{}.service", field()), message);
                }
                return Some(id);
            }
            let id = self.resolve(namespace, backend, object, field)?;
            self.seen.insert(key, id);
            return Some(id);
        }
        self.resolve(namespace, backend, object, field)
    }

    fn resolve(
        &mut self,
        namespace: &str,
        backend: &IngressBackend,
        object: &str,
        field: &dyn Fn() -> String,
    ) -> Option<BackendId> {
        let field = field();
        if backend.resource.is_some() {
            self.diag(
                object,
                &format!("{field}.resource"),
                "resource backends are not supported",
            );
            return None;
        }
        let Some(service) = &backend.service else {
            self.diag(object, &format!("{field}.service"), "missing");
            return None;
        };
        if service.name.is_empty() {
            self.diag(object, &format!("{field}.service.name"), "empty");
            return None;
        }
        let port = match service.port.as_ref().map(|p| (p.number, p.name.as_deref())) {
            Some((Some(n), _)) => PortRef::Number(n),
            Some((None, Some(name))) if !name.is_empty() => PortRef::Name(name.to_string()),
            _ => {
                self.diag(
                    object,
                    &format!("{field}.service.port"),
                    "needs a number or a name",
                );
                return None;
            }
        };
        let target = ServiceRef {
            namespace: namespace.to_string(),
            name: service.name.clone(),
            port,
        };
        Some(self.service_backend(&target, object, &format!("{field}.service")))
    }

    /// Custom errors (`custom-http-errors`, `default-backend`): the backend error requests go
    /// to, set in the policy: the annotation's Service (first port), else the controller's
    /// default backend. Without either, the responses pass unchanged (reported).
    fn error_backend(
        &mut self,
        policy: Option<Arc<RoutePolicy>>,
        ns: &str,
        object: &str,
        opts: &CompileOptions,
    ) -> Option<Arc<RoutePolicy>> {
        use super::request_annotations::{CUSTOM_HTTP_ERRORS, DEFAULT_BACKEND};
        let errors = policy
            .as_ref()
            .and_then(|p| p.request.as_ref())
            .and_then(|r| r.errors.as_ref());
        let Some(errors) = errors.filter(|e| e.backend.is_none()) else {
            return policy;
        };
        let (target, field) = match &errors.service {
            Some(name) => (
                ServiceRef {
                    namespace: ns.to_string(),
                    name: name.clone(),
                    port: PortRef::First,
                },
                DEFAULT_BACKEND,
            ),
            None => match &opts.default_backend {
                Some(default) => (default.clone(), CUSTOM_HTTP_ERRORS),
                None => {
                    self.diag(
                        object,
                        &format!("metadata.annotations[{CUSTOM_HTTP_ERRORS}]"),
                        "no default-backend annotation and no controller default backend \
                         (--default-backend-service): upstream answers pass unchanged",
                    );
                    return policy;
                }
            },
        };
        let id = self.service_backend(&target, object, &format!("metadata.annotations[{field}]"));
        let mut route = policy.as_deref().cloned().unwrap_or_default();
        let mut request = route.request.as_deref().cloned().unwrap_or_default();
        if let Some(e) = &mut request.errors {
            e.backend = Some(id);
        }
        route.request = Some(Arc::new(request));
        Some(Arc::new(route))
    }

    /// Resolves a Service port to endpoints (once per distinct reference and pass).
    /// Problems are reported, and the backend then has no endpoints (503).
    fn service_backend(&mut self, target: &ServiceRef, object: &str, field: &str) -> BackendId {
        let id = self.ids.intern(target);
        let i = id.0 as usize;
        if self.resolved.get(i).is_some_and(Option::is_some) {
            if let Some(why) = self.broken.get(&id) {
                let message = format!("{target}: {why} (answers 503)");
                self.diag(object, field, message);
            }
            return id;
        }
        let endpoints = match self.endpoints(target) {
            Ok(endpoints) => endpoints,
            Err(why) => {
                self.diag(object, field, format!("{target}: {why} (answers 503)"));
                self.broken.insert(id, why);
                Vec::new()
            }
        };
        if self.resolved.len() <= i {
            self.resolved.resize(i + 1, None);
        }
        self.resolved[i] = Some(Backend {
            name: target.to_string(),
            endpoints,
        });
        id
    }

    fn endpoints(&self, target: &ServiceRef) -> Result<Vec<SocketAddr>, String> {
        let service = self
            .services
            .get(&(target.namespace.as_str(), target.name.as_str()))
            .ok_or("Service not found")?;
        let ports = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_deref())
            .unwrap_or(&[]);
        let port = ports
            .iter()
            .find(|p| match &target.port {
                PortRef::Number(n) => p.port == *n,
                PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
                PortRef::First => true,
            })
            .ok_or("the Service has no such port")?;
        // service-upstream: the ClusterIP and the Service port, one endpoint (kube-proxy
        // spreads); without a ClusterIP the endpoints are used (reported per Ingress).
        if self
            .owners
            .owner(target)
            .is_some_and(|(_, p)| p.service_upstream())
            && let Some(ip) = cluster_ip(service)
        {
            let port = u16::try_from(port.port).map_err(|_| "the Service port is out of range")?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        // EndpointSlice ports carry the Service port's name ("" and absent are the same).
        let port_name = port.name.as_deref().unwrap_or("");

        let mut ready = Vec::new();
        let mut terminating = Vec::new();
        let slices = self
            .slices
            .get(&(target.namespace.as_str(), target.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for slice in slices {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            let Some(pod_port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in slice.endpoints.iter().flatten() {
                let conditions = endpoint.conditions.as_ref();
                let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let is_serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
                let is_terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                let bucket = if is_ready && !is_terminating {
                    &mut ready
                } else if is_serving && is_terminating {
                    &mut terminating
                } else {
                    continue;
                };
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        bucket.push(SocketAddr::new(ip, pod_port));
                    }
                }
            }
        }
        // Serving-but-terminating endpoints only when nothing else is left.
        let mut chosen = if ready.is_empty() { terminating } else { ready };
        chosen.sort();
        chosen.dedup();
        Ok(chosen)
    }
}
