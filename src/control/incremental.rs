//! Incremental compilation: the control thread's compiler between two snapshots.
//!
//! A change to a few Ingresses recompiles only the hosts they have (or had) rules for, from
//! every Ingress with rules for those hosts, and publishes a table that shares the untouched
//! hosts with the previous snapshot ([`RouteTable::patched`]). Service and EndpointSlice
//! changes re-resolve endpoints and touch no host at all. The result routes exactly as a full
//! compile of the same objects would (tests/incremental.rs checks this with a proptest);
//! IngressClass changes, duplicate Ingress names and an overlay grown past
//! [`Incremental::compaction_due`] take the full path. This is the one compiler: a full
//! compile ([`super::compile::compile_at`]) is its first step, and every entry point takes the
//! time certificates are judged at (`*_at`; the others read the wall clock for tools and tests).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::networking::v1::Ingress;

use super::annotations::BackendPolicy;
use super::certs::wall_clock;
use super::compile::{
    BackendIds, Classes, CompileOptions, Compiled, Diagnostic, Known, Objects, Owners, Pass,
    SERVICE_NAME_LABEL, ServiceRef, backend_refs, certificates, has_tls, ingress_object, live_refs,
};
use super::health_check::{CheckTarget, HealthView, serving};
use crate::core::route::{Backend, BackendId, RouteTable};
use crate::core::snapshot::Snapshot;
use crate::core::tls::CertTable;

/// What one Ingress contributes to the host index.
struct Entry {
    ingress: Arc<Ingress>,
    ours: bool,
    /// Every rule host, lower-cased (`*.x` for wildcards): a superset of the hosts it routes.
    hosts: Vec<String>,
    /// Has rules without a host.
    any_host: bool,
    has_default: bool,
    /// The certificate table reads it.
    tls: bool,
}

impl Entry {
    fn new(ingress: Arc<Ingress>, classes: &Classes<'_>, opts: &CompileOptions) -> Entry {
        let ours = classes.is_ours(&ingress);
        let spec = ingress.spec.as_ref();
        let mut hosts = Vec::new();
        let mut any_host = false;
        for rule in spec.and_then(|s| s.rules.as_ref()).into_iter().flatten() {
            match rule.host.as_deref() {
                None | Some("") => any_host = true,
                Some(h) => hosts.push(h.to_ascii_lowercase()),
            }
        }
        hosts.sort();
        hosts.dedup();
        let has_default = spec.is_some_and(|s| s.default_backend.is_some());
        let tls = has_tls(&ingress, opts);
        Entry {
            ingress,
            ours,
            hosts,
            any_host,
            has_default,
            tls,
        }
    }

    /// The object's identity.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.ingress) as usize
    }
}

/// The compiler state kept between snapshots.
pub struct Incremental {
    opts: CompileOptions,
    ids: BackendIds,
    /// Who decides each backend's balancing and affinity (all our Ingresses).
    owners: Owners,
    table: RouteTable,
    /// Per backend id, how often the host maps of `table`'s base name it.
    base_refs: Vec<u32>,
    /// The IngressClasses the index was built with, by identity.
    classes: Vec<usize>,
    /// Every Ingress by `namespace/name`.
    ingresses: HashMap<String, Entry>,
    /// Every Ingress by identity, with the `update` call that last saw it.
    seen: HashMap<usize, u64>,
    /// The last full compile had two Ingresses of one name: the index cannot tell them
    /// apart, so every compile is a full one until that is gone.
    duplicates: bool,
    index: HostIndex,
    /// Backends that could not be resolved in the last snapshot, with why.
    broken: HashMap<BackendId, String>,
    /// Backend ids the last table routes to.
    live: usize,
    /// The last snapshot's backends (by id) and why the broken ones are broken, and the
    /// Services and EndpointSlices they were resolved from (by identity, with their
    /// `namespace/service`): a backend whose objects kept their identity is not resolved again.
    backends: Vec<Backend>,
    /// Which of `backends` were resolved (live) in the last snapshot.
    resolved: Vec<bool>,
    service_objects: HashMap<usize, (String, String)>,
    /// The last certificate table, and the Secrets it was built from (by identity).
    certs: Arc<CertTable>,
    secrets: Vec<usize>,
    calls: u64,
    /// The unhealthy endpoints of actively checked backends (`health_check`): `backends`
    /// keeps every endpoint; the snapshot serves those not in here ([`Incremental::served`]).
    health: Arc<HealthView>,
}

/// Our Ingresses by what they have rules for.
#[derive(Default)]
struct HostIndex {
    /// Rule host → our Ingresses with rules for it.
    by_host: HashMap<String, BTreeSet<String>>,
    /// Our Ingresses with host-less rules, and with a `spec.defaultBackend`.
    any_host: BTreeSet<String>,
    with_default: BTreeSet<String>,
}

impl HostIndex {
    fn add(&mut self, key: &str, entry: &Entry) {
        if !entry.ours {
            return;
        }
        for host in &entry.hosts {
            self.by_host
                .entry(host.clone())
                .or_default()
                .insert(key.to_string());
        }
        if entry.any_host {
            self.any_host.insert(key.to_string());
        }
        if entry.has_default {
            self.with_default.insert(key.to_string());
        }
    }

    fn remove(&mut self, key: &str, entry: &Entry) {
        if !entry.ours {
            return;
        }
        for host in &entry.hosts {
            if let Some(keys) = self.by_host.get_mut(host) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_host.remove(host);
                }
            }
        }
        self.any_host.remove(key);
        self.with_default.remove(key);
    }
}

fn identities<T>(objects: &[Arc<T>]) -> Vec<usize> {
    let mut ids: Vec<usize> = objects.iter().map(|c| Arc::as_ptr(c) as usize).collect();
    ids.sort_unstable();
    ids
}

fn key_of(ing: &Ingress, key: &mut String) {
    key.clear();
    key.push_str(ing.metadata.namespace.as_deref().unwrap_or("default"));
    key.push('/');
    key.push_str(ing.metadata.name.as_deref().unwrap_or(""));
}

impl Incremental {
    /// [`Incremental::new_at`] at the wall clock.
    pub fn new(objects: &Objects, opts: CompileOptions, version: u64) -> (Incremental, Compiled) {
        Incremental::new_at(objects, opts, version, wall_clock())
    }

    /// A full compile of `objects` as snapshot `version` at `now` (certificate expiry is judged
    /// against it), kept as the base of the next ones.
    pub fn new_at(
        objects: &Objects,
        opts: CompileOptions,
        version: u64,
        now: SystemTime,
    ) -> (Incremental, Compiled) {
        let mut inc = Incremental {
            opts,
            ids: BackendIds::default(),
            owners: Owners::default(),
            table: RouteTable::default(),
            base_refs: Vec::new(),
            classes: Vec::new(),
            ingresses: HashMap::new(),
            seen: HashMap::new(),
            duplicates: false,
            index: HostIndex::default(),
            broken: HashMap::new(),
            live: 0,
            backends: Vec::new(),
            resolved: Vec::new(),
            service_objects: HashMap::new(),
            certs: Arc::default(),
            secrets: Vec::new(),
            calls: 0,
            health: Arc::default(),
        };
        let compiled = inc.full_at(objects, version, now);
        (inc, compiled)
    }

    /// Whether the table carries so many changed hosts beside its base that the next change
    /// should rebuild the base (a full compile) once the current one is published.
    /// Also when most backend ids are no longer routed to (ids are only ever added between
    /// full compiles, and every compile walks all of them).
    pub fn compaction_due(&self) -> bool {
        self.table.overlay_len() > 1024.max(self.table.base_len() / 8)
            || self.ids.len() > 1024.max(2 * self.live)
    }

    /// What `backends` serve given the active health checks: an unhealthy endpoint of a
    /// backend that its deciding Ingress has checked is left out, unless that would leave
    /// none (panic: then all stay).
    fn served(&self, backends: &[Backend]) -> Vec<Backend> {
        let mut served = backends.to_vec();
        if self.health.is_empty() || !self.owners.any_checks() {
            return served;
        }
        for (target, down) in &self.health.down {
            let checked = self
                .owners
                .owner(target)
                .is_some_and(|(_, p)| p.health.is_some());
            let Some(id) = self.ids.get(target).filter(|_| checked) else {
                continue;
            };
            if let Some(b) = served.get_mut(id.0 as usize) {
                b.endpoints = serving(&b.endpoints, down);
            }
        }
        served
    }

    /// Takes the checker's view of which endpoints are unhealthy; the next compile (or
    /// [`Incremental::health_snapshot`]) serves by it.
    pub fn set_health(&mut self, health: Arc<HealthView>) {
        self.health = health;
    }

    /// The last compiled routes as snapshot `version`, with the backends served by the
    /// current health view: what a health change publishes (no object changed).
    pub fn health_snapshot(&self, version: u64) -> Snapshot {
        Snapshot::new(version, self.table.clone(), self.served(&self.backends))
            .with_shared_certs(self.certs.clone())
    }

    /// What the health checker is to check: every routed backend whose deciding Ingress asks
    /// for active checks, with all its endpoints (unhealthy ones included), by backend id.
    pub fn health_plan(&self) -> Vec<CheckTarget> {
        if !self.owners.any_checks() {
            return Vec::new();
        }
        let mut plan = Vec::new();
        for (i, target) in self.ids.refs().iter().enumerate() {
            if !self.resolved.get(i).copied().unwrap_or(false) {
                continue;
            }
            let Some((_, policy)) = self.owners.owner(target) else {
                continue;
            };
            let (Some(check), Some(backend)) = (&policy.health, self.backends.get(i)) else {
                continue;
            };
            if backend.endpoints.is_empty() {
                continue;
            }
            plan.push(CheckTarget {
                target: target.clone(),
                check: check.clone(),
                endpoints: backend.endpoints.clone(),
            });
        }
        plan
    }

    /// The `(namespace, service)` of every Service and EndpointSlice that is new, changed or
    /// gone since the last call, by identity; remembers the current ones.
    fn changed_services(&mut self, objects: &Objects) -> HashSet<(String, String)> {
        let mut dirty = HashSet::new();
        let mut current: HashSet<usize> = HashSet::new();
        let all = objects
            .services
            .iter()
            .map(|s| (Arc::as_ptr(s) as usize, &s.metadata, None))
            .chain(objects.slices.iter().map(|s| {
                let service = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL));
                (Arc::as_ptr(s) as usize, &s.metadata, Some(service))
            }));
        for (id, meta, slice_of) in all {
            current.insert(id);
            if self.service_objects.contains_key(&id) {
                continue;
            }
            let ns = meta.namespace.as_deref().unwrap_or("default").to_string();
            let name = match slice_of {
                None => meta.name.clone().unwrap_or_default(),
                Some(Some(service)) => service.clone(),
                Some(None) => continue, // a slice of no Service: no backend reads it
            };
            dirty.insert((ns.clone(), name.clone()));
            self.service_objects.insert(id, (ns, name));
        }
        self.service_objects.retain(|id, key| {
            let keep = current.contains(id);
            if !keep {
                dirty.insert(key.clone());
            }
            keep
        });
        dirty
    }

    /// [`Incremental::full_at`] at the wall clock.
    pub fn full(&mut self, objects: &Objects, version: u64) -> Compiled {
        self.full_at(objects, version, wall_clock())
    }

    /// Compiles everything from scratch at `now` (and rebuilds the base and the index).
    pub fn full_at(&mut self, objects: &Objects, version: u64, now: SystemTime) -> Compiled {
        self.calls += 1;
        let mut ids = BackendIds::default();
        let opts = self.opts.clone();
        let classes = Classes::new(&objects.classes, &opts);
        let mut owners = Owners::default();
        for ing in objects.ingresses.iter().filter(|i| classes.is_ours(i)) {
            owners.add(ing);
        }
        self.owners = owners;
        let (table, pass) = Pass::run(
            objects,
            &opts,
            &classes,
            &mut ids,
            &self.owners,
            objects.ingresses.iter().map(|i| &**i),
        );
        let count = pass.backend_count();
        let base_refs = backend_refs(&table, count);
        let refs = live_refs(&table, &base_refs, count);
        self.live = refs.iter().filter(|n| **n > 0).count();
        let (backends, broken, mut diagnostics) = pass.finish(&refs, None);
        diagnostics.sort();
        diagnostics.dedup();
        self.resolved = refs.iter().map(|n| *n > 0).collect();
        self.service_objects.clear();
        self.changed_services(objects);

        self.ingresses.clear();
        self.seen.clear();
        self.duplicates = false;
        self.index = HostIndex::default();
        let mut key = String::new();
        for ing in &objects.ingresses {
            key_of(ing, &mut key);
            let entry = Entry::new(ing.clone(), &classes, &opts);
            self.index.add(&key, &entry);
            self.seen.insert(entry.id(), self.calls);
            self.duplicates |= self.ingresses.insert(key.clone(), entry).is_some();
        }
        self.classes = identities(&objects.classes);
        self.base_refs = base_refs;
        self.broken = broken.into_iter().collect();
        self.ids = ids;
        let served = self.served(&backends);
        self.backends = backends;
        self.table = table.clone();
        let (certs, cert_diagnostics) = certificates(
            objects.ingresses.iter().map(|i| &**i),
            &classes,
            objects,
            &opts,
            now,
        );
        diagnostics.extend(cert_diagnostics);
        diagnostics.sort();
        diagnostics.dedup();
        self.certs = Arc::new(certs);
        self.secrets = identities(&objects.secrets);
        Compiled {
            snapshot: Snapshot::new(version, table, served).with_shared_certs(self.certs.clone()),
            diagnostics,
        }
    }

    /// Compiles `objects` as snapshot `version`, reusing what did not change since the last
    /// call. Diagnostics are those of the Ingresses that changed (and of backends that broke),
    /// not the whole set again.
    pub fn update(&mut self, objects: &Objects, version: u64) -> Compiled {
        self.update_at(objects, version, wall_clock())
    }

    /// [`Incremental::update`] at `now` (certificate expiry is judged against it whenever the
    /// certificate table is rebuilt).
    pub fn update_at(&mut self, objects: &Objects, version: u64, now: SystemTime) -> Compiled {
        if self.duplicates || identities(&objects.classes) != self.classes {
            return self.full_at(objects, version, now);
        }
        self.calls += 1;
        let calls = self.calls;
        let opts = self.opts.clone();
        let classes = Classes::new(&objects.classes, &opts);

        // Which Ingresses are new, changed or gone, by identity: sources keep the Arc of an
        // unchanged object, so the common case is one pointer lookup per Ingress.
        let mut changed: Vec<(String, Option<Entry>)> = Vec::new();
        let mut changed_keys: HashSet<String> = HashSet::new();
        let mut unchanged = 0usize;
        let mut key = String::new();
        for ing in &objects.ingresses {
            match self.seen.get_mut(&(Arc::as_ptr(ing) as usize)) {
                Some(seen) if *seen == calls => return self.full_at(objects, version, now),
                Some(seen) => {
                    *seen = calls;
                    unchanged += 1;
                }
                None => {
                    key_of(ing, &mut key);
                    if !changed_keys.insert(key.clone()) {
                        // Two objects of one name: only the full compiler merges those.
                        return self.full_at(objects, version, now);
                    }
                    changed.push((key.clone(), Some(Entry::new(ing.clone(), &classes, &opts))));
                }
            }
        }
        let mut replaced = 0usize;
        for (key, _) in &changed {
            if let Some(old) = self.ingresses.get(key) {
                if self.seen.get(&old.id()) == Some(&calls) {
                    // The old object of this name is still there beside the new one.
                    return self.full_at(objects, version, now);
                }
                replaced += 1;
            }
        }
        if unchanged + replaced < self.ingresses.len() {
            for (k, entry) in &self.ingresses {
                if self.seen.get(&entry.id()) != Some(&calls) && !changed_keys.contains(k) {
                    changed.push((k.clone(), None));
                }
            }
        }

        // The hosts to recompile, and whether the host-less rules or the fallback may move.
        let mut hosts: BTreeSet<String> = BTreeSet::new();
        let mut any_host = false;
        let mut fallback = false;
        let mut tls = false;
        let mut changed_objects: HashSet<String> = HashSet::new();
        let mut updated: Vec<String> = Vec::new();
        // The backends the changed Ingresses route (or routed) to, with who decided their
        // balancing and affinity before the change.
        type Owner = Option<(Arc<str>, BackendPolicy)>;
        let mut backends: HashMap<ServiceRef, Owner> = HashMap::new();
        let mut note = |owners: &Owners, ing: &Ingress| {
            for target in Owners::backends_of(ing) {
                let before = owners.owner(&target).map(|(o, p)| (o.clone(), p.clone()));
                backends.entry(target).or_insert(before);
            }
        };
        for (key, new) in changed {
            if let Some(old) = self.ingresses.remove(&key) {
                self.index.remove(&key, &old);
                self.seen.remove(&old.id());
                if old.ours {
                    note(&self.owners, &old.ingress);
                    self.owners.remove(&old.ingress);
                    hosts.extend(old.hosts.iter().cloned());
                    any_host |= old.any_host;
                    fallback |= old.has_default;
                    tls |= old.tls;
                }
            }
            if let Some(new) = new {
                changed_objects.insert(ingress_object(&new.ingress));
                if new.ours {
                    note(&self.owners, &new.ingress);
                    self.owners.add(&new.ingress);
                    hosts.extend(new.hosts.iter().cloned());
                    any_host |= new.any_host;
                    fallback |= new.has_default;
                    tls |= new.tls;
                }
                self.index.add(&key, &new);
                self.seen.insert(new.id(), calls);
                self.ingresses.insert(key.clone(), new);
                updated.push(key);
            }
        }

        // A backend whose deciding Ingress or settings changed: every rule to it changes, so
        // the hosts of every Ingress routing to it are compiled again (and its conflict
        // reports given again).
        let mut resettled: Vec<(String, String)> = Vec::new();
        for (target, before) in backends {
            let after = self
                .owners
                .owner(&target)
                .map(|(o, p)| (o.clone(), p.clone()));
            if after == before {
                continue;
            }
            // Its endpoints too (service-upstream is one of its settings).
            resettled.push((target.namespace.clone(), target.name.clone()));
            for key in self.owners.referrers(&target) {
                if let Some(e) = self.ingresses.get(&key) {
                    hosts.extend(e.hosts.iter().cloned());
                    any_host |= e.any_host;
                    changed_objects.insert(ingress_object(&e.ingress));
                }
            }
        }

        // Services whose Service or EndpointSlice objects changed: only their backends are
        // resolved again.
        let mut dirty_services = self.changed_services(objects);
        dirty_services.extend(resettled);

        // Every Ingress that can contribute to what is recompiled.
        let mut members: BTreeSet<&str> = BTreeSet::new();
        for host in &hosts {
            if let Some(keys) = self.index.by_host.get(host) {
                members.extend(keys.iter().map(String::as_str));
            }
        }
        if any_host {
            members.extend(self.index.any_host.iter().map(String::as_str));
        }
        if fallback {
            members.extend(self.index.with_default.iter().map(String::as_str));
        }
        // Changed Ingresses that are not ours still get their class diagnostics.
        members.extend(updated.iter().map(String::as_str));

        let ingresses = &self.ingresses;
        let (part, pass) = Pass::run(
            objects,
            &opts,
            &classes,
            &mut self.ids,
            &self.owners,
            members
                .iter()
                .filter_map(|k| ingresses.get(*k))
                .map(|e| &*e.ingress),
        );
        let changes = hosts
            .iter()
            .map(|h| (h.clone(), part.host_routes(h).cloned()));
        let any_routes = if any_host {
            part.any_host().clone()
        } else {
            self.table.any_host().clone()
        };
        let default = if fallback {
            part.fallback()
        } else {
            self.table.fallback()
        };
        let table = self.table.patched(changes, any_routes, default);

        // Backends the new table names: the base's counts, corrected by the overlay.
        let refs = live_refs(&table, &self.base_refs, pass.backend_count());
        self.live = refs.iter().filter(|n| **n > 0).count();
        let known = Known {
            backends: &self.backends,
            resolved: &self.resolved,
            broken: &self.broken,
            changed: &dirty_services,
        };
        let (backends, broken, pass_diagnostics) = pass.finish(&refs, Some(&known));
        self.resolved = refs.iter().map(|n| *n > 0).collect();

        let mut diagnostics: Vec<Diagnostic> = pass_diagnostics
            .into_iter()
            .filter(|d| changed_objects.contains(&d.object))
            .collect();
        let now_broken: HashMap<BackendId, String> = broken.iter().cloned().collect();
        for (id, why) in broken {
            if !self.broken.contains_key(&id) && refs[id.0 as usize] > 0 {
                diagnostics.push(Diagnostic {
                    object: format!("Backend {}", backends[id.0 as usize].name),
                    field: "service".to_string(),
                    message: format!("{why} (answers 503)"),
                });
            }
        }
        diagnostics.sort();
        diagnostics.dedup();
        self.broken = now_broken;
        let served = self.served(&backends);
        self.backends = backends;
        self.table = table.clone();

        // The certificate table: rebuilt only when a Secret or an Ingress it reads changed;
        // otherwise shared, so workers keep their TLS configuration.
        let secrets = identities(&objects.secrets);
        if tls || secrets != self.secrets {
            let (certs, cert_diagnostics) = certificates(
                self.ingresses.values().map(|e| &*e.ingress),
                &classes,
                objects,
                &opts,
                now,
            );
            self.certs = Arc::new(certs);
            self.secrets = secrets;
            diagnostics.extend(cert_diagnostics);
            diagnostics.sort();
            diagnostics.dedup();
        }
        Compiled {
            snapshot: Snapshot::new(version, table, served).with_shared_certs(self.certs.clone()),
            diagnostics,
        }
    }
}
