//! The cluster as the compiler needs it: one set of stripped objects per kind, whose
//! re-lists swap in whole (never an empty moment), and the TLS Secrets our Ingresses reference.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher::Event;

use super::KubeStats;
use super::strip::{
    same_ingress, strip_class, strip_ingress, strip_secret, strip_service, strip_slice,
};
use crate::control::class::{Classes, tls_secrets};
use crate::control::compile::{CompileOptions, Objects};

/// `(namespace, name)`; cluster-scoped objects have an empty namespace.
pub type Key = (String, String);

pub(super) fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// One kind's objects. During a (re-)list the new set is built aside and swapped in whole at
/// `InitDone`, so the compiled routes never see a half-listed or empty world.
pub(super) struct Kind<K> {
    pub(super) live: BTreeMap<Key, Arc<K>>,
    pub(super) pending: Option<BTreeMap<Key, Arc<K>>>,
    pub(super) synced: bool,
}

impl<K> Default for Kind<K> {
    fn default() -> Self {
        Kind {
            live: BTreeMap::new(),
            pending: None,
            synced: false,
        }
    }
}

impl<K: Resource<Scope: Sized> + PartialEq> Kind<K> {
    /// Applies one watcher event; returns whether the live set changed in a way `same`
    /// does not consider equal.
    pub(super) fn apply(
        &mut self,
        event: Event<K>,
        strip: impl Fn(K) -> K,
        same: impl Fn(&K, &K) -> bool,
    ) -> bool {
        match event {
            Event::Init => {
                self.pending = Some(BTreeMap::new());
                false
            }
            Event::InitApply(o) => {
                let o = strip(o);
                self.pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key_of(o.meta()), Arc::new(o));
                false
            }
            Event::InitDone => {
                let mut new = self.pending.take().unwrap_or_default();
                let changed = new.len() != self.live.len()
                    || new
                        .iter()
                        .zip(self.live.iter())
                        .any(|((ka, a), (kb, b))| ka != kb || !same(a, b));
                // Objects the re-list found exactly as they were keep their identity, so
                // the incremental compiler sees them as unchanged.
                for (key, object) in new.iter_mut() {
                    if let Some(old) = self.live.get(key)
                        && **old == **object
                    {
                        *object = old.clone();
                    }
                }
                self.live = new;
                self.synced = true;
                changed
            }
            Event::Apply(o) => {
                let o = strip(o);
                let key = key_of(o.meta());
                let old = self.live.get(&key);
                let changed = old.is_none_or(|old| !same(old, &o));
                // An object delivered again exactly as it is (a resync) keeps its identity.
                if old.is_none_or(|old| **old != o) {
                    self.live.insert(key, Arc::new(o));
                }
                changed
            }
            Event::Delete(o) => self.live.remove(&key_of(o.meta())).is_some(),
        }
    }

    pub(super) fn values(&self) -> Vec<Arc<K>> {
        self.live.values().cloned().collect()
    }
}

/// Messages from the watcher tasks (and secret fetches) to the control loop.
pub(super) enum Msg {
    Ingress(Event<Ingress>),
    Class(Event<IngressClass>),
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Secret(Event<Secret>),
    PublishService(Event<Service>),
}

/// The cluster as the compiler needs it.
pub(super) struct Store {
    pub(super) opts: CompileOptions,
    pub(super) ingresses: Kind<Ingress>,
    pub(super) classes: Kind<IngressClass>,
    pub(super) services: Kind<Service>,
    pub(super) slices: Kind<EndpointSlice>,
    pub(super) secrets: Kind<Secret>,
    pub(super) publish: Kind<Service>,
    /// TLS Secrets our Ingresses reference.
    pub(super) referenced: BTreeSet<Key>,
    /// Referenced Secrets known only by name, to be fetched.
    pub(super) to_fetch: Vec<Key>,
    /// A status-relevant change (Ingress status, classes, published Service) happened.
    pub(super) status_dirty: bool,
}

impl Store {
    pub(super) fn new(opts: CompileOptions) -> Store {
        Store {
            opts,
            ingresses: Kind::default(),
            classes: Kind::default(),
            services: Kind::default(),
            slices: Kind::default(),
            secrets: Kind::default(),
            publish: Kind::default(),
            referenced: BTreeSet::new(),
            to_fetch: Vec::new(),
            status_dirty: false,
        }
    }

    /// Applies a message; returns whether the routes may have changed.
    pub(super) fn apply(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Ingress(e) => {
                self.status_dirty = true;
                let changed = self.ingresses.apply(e, strip_ingress, same_ingress);
                changed | self.refresh_references()
            }
            Msg::Class(e) => {
                self.status_dirty = true;
                let changed = self.classes.apply(e, strip_class, |a, b| a == b);
                changed | self.refresh_references()
            }
            Msg::Service(e) => self.services.apply(e, strip_service, |a, b| a == b),
            Msg::Slice(e) => self.slices.apply(e, strip_slice, |a, b| a == b),
            Msg::Secret(e) => {
                let referenced = &self.referenced;
                self.secrets
                    .apply(e, |s| strip_secret(s, referenced), |a, b| a == b)
            }
            Msg::PublishService(e) => {
                self.status_dirty = true;
                self.publish.apply(e, strip_service, |a, b| a == b);
                false
            }
        }
    }

    pub(super) fn synced(&self, publish_service: bool) -> bool {
        self.ingresses.synced
            && self.classes.synced
            && self.services.synced
            && self.slices.synced
            && self.secrets.synced
            && (!publish_service || self.publish.synced)
    }

    /// Recomputes which Secrets our Ingresses reference. Cached Secrets that lost their last
    /// reference drop their data at once; newly referenced ones known only by name are queued
    /// in `to_fetch`. Returns whether cached Secret data changed.
    pub(super) fn refresh_references(&mut self) -> bool {
        let classes = self.classes.values();
        let judge = Classes::new(&classes, &self.opts);
        let referenced: BTreeSet<Key> = self
            .ingresses
            .live
            .values()
            .filter(|i| judge.is_ours(i))
            .flat_map(|i| tls_secrets(i).collect::<Vec<_>>())
            .chain(self.opts.tls.default_secret.clone())
            .collect();
        if referenced == self.referenced {
            return false;
        }
        let mut changed = false;
        for (key, secret) in self.secrets.live.iter_mut() {
            let wanted = referenced.contains(key);
            if !wanted && secret.data.is_some() {
                *secret = Arc::new(Secret {
                    data: None,
                    ..(**secret).clone()
                });
                changed = true;
            } else if wanted && secret.data.is_none() && !self.referenced.contains(key) {
                self.to_fetch.push(key.clone());
            }
        }
        self.referenced = referenced;
        changed
    }

    pub(super) fn objects(&self, stats: &KubeStats) -> Objects {
        let objects = Objects {
            ingresses: self.ingresses.values(),
            classes: self.classes.values(),
            services: self.services.values(),
            slices: self.slices.values(),
            secrets: self
                .secrets
                .live
                .values()
                .filter(|s| s.data.is_some())
                .cloned()
                .collect(),
        };
        stats
            .cached_secrets
            .store(objects.secrets.len() as u64, Ordering::Relaxed);
        objects
    }

    /// The object a diagnostic names (`Ingress ns/name`, ...), as an Event can refer to it.
    pub(super) fn reference(
        &self,
        object: &str,
    ) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
        let (kind, rest) = object.split_once(' ')?;
        let (ns, name) = rest.split_once('/').unwrap_or(("", rest));
        let key = (ns.to_string(), name.to_string());
        let (api_version, uid) = match kind {
            "Ingress" => (
                "networking.k8s.io/v1",
                self.ingresses.live.get(&key)?.metadata.uid.clone(),
            ),
            "IngressClass" => (
                "networking.k8s.io/v1",
                self.classes.live.get(&key)?.metadata.uid.clone(),
            ),
            "Service" => ("v1", self.services.live.get(&key)?.metadata.uid.clone()),
            "Secret" => ("v1", self.secrets.live.get(&key)?.metadata.uid.clone()),
            _ => return None,
        };
        Some(k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(api_version.to_string()),
            kind: Some(kind.to_string()),
            namespace: (!ns.is_empty()).then(|| ns.to_string()),
            name: Some(name.to_string()),
            uid,
            ..Default::default()
        })
    }
}
