//! The Kubernetes route source: kube-rs watchers over IngressClass, Ingress, Service,
//! EndpointSlice and (referenced, `kubernetes.io/tls`) Secret objects, on one control thread
//! running a tokio current-thread runtime. Objects are stripped to what the compiler reads,
//! kept in a store whose re-lists swap in whole (never an empty moment), and every burst of
//! changes is compiled by the same `compile` as the file source and published to the workers.
//! Losing the API server changes nothing that is served: the last good snapshot stays, and the
//! watchers back off (jittered, capped at a few seconds) and resume from their resourceVersion
//! (or re-list after 410 Gone); one cheap `/readyz` probe wakes them all as soon as the API
//! server answers again, so recovery takes about a second without hammering a dead server.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Debug, Write as _};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    LoadBalancerStatus, Secret, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch as signal};

use super::class::{Classes, tls_secrets};
use super::compile::{CompileOptions, Compiled, Diagnostic, Objects, SERVICE_NAME_LABEL};
use super::incremental::Incremental;
use super::leader::{self, LeaseSettings};
use super::pipeline::{Change, Pipeline, Report};
use super::status::{self, StatusPlan};
use crate::engine::Publisher;

pub use super::pipeline::MAX_HOLD;
/// Annotation `kubectl apply` stores the whole object in; never read, so never kept.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// How often the leader re-checks every status, retrying writes that failed.
const STATUS_RESYNC: Duration = Duration::from_secs(30);
/// Default cap of a watcher's backoff. It was 30 s: after a 20 s outage an Ingress created
/// once the server was back took 24.8 s to be served. With the `/readyz` probe waking the
/// watchers, the cap only bounds retries against a server that answers but refuses us.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The only Secret type we cache.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// The `[sources]` keys of the Kubernetes source, as configured (flags override the file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeOptions {
    /// Watch a cluster at all.
    pub enabled: bool,
    /// A kubeconfig file; without it: in-cluster when running in a pod, else the default
    /// kubeconfig (`$KUBECONFIG`, `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// Only this namespace's Ingresses, Services, EndpointSlices and Secrets.
    pub watch_namespace: Option<String>,
    /// Name of the coordination.k8s.io/v1 Lease the replicas elect a status writer with.
    pub election_id: String,
    /// Namespace of that Lease; default `$POD_NAMESPACE`, else `default`.
    pub election_namespace: Option<String>,
    /// `NAMESPACE/NAME` of a Service whose LoadBalancer ingress becomes our Ingresses' status.
    pub publish_service: Option<(String, String)>,
    /// Fixed addresses for our Ingresses' status (wins over `publish_service`).
    pub publish_status_address: Vec<String>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            enabled: false,
            kubeconfig: None,
            watch_namespace: None,
            election_id: "sluice-leader".to_string(),
            election_namespace: None,
            publish_service: None,
            publish_status_address: Vec::new(),
        }
    }
}

/// Parses `NAMESPACE/NAME`.
pub fn parse_namespaced_name(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("expected \"namespace/name\" (got {text:?})")),
    }
}

/// Everything the control thread needs, resolved (identity, namespaces, timings).
#[derive(Clone, Debug)]
pub struct KubeSettings {
    pub options: KubeOptions,
    pub compile: CompileOptions,
    /// This replica's name in the Lease (`$POD_NAME`, else the host name).
    pub identity: String,
    pub election_namespace: String,
    pub lease: LeaseSettings,
    /// Longest wait between two attempts after an API server error (starts at 100 ms, doubles,
    /// each wait jittered down to half its value).
    pub backoff_max: Duration,
    /// While a watcher is failing, how often `/readyz` is asked whether the API server is back
    /// (jittered down to half); its first answer wakes every waiting watcher at once.
    pub probe_interval: Duration,
    /// `timeoutSeconds` of each watch request (kube-rs's default, 290 s, when `None`): when it
    /// ends, the watcher resumes from its resourceVersion (or re-lists on 410 Gone).
    pub watch_timeout: Option<u32>,
}

impl KubeSettings {
    pub fn new(options: &KubeOptions, compile: &CompileOptions) -> KubeSettings {
        let identity = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("sluice-{}", std::process::id()));
        let election_namespace = options
            .election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        KubeSettings {
            options: options.clone(),
            compile: compile.clone(),
            identity,
            election_namespace,
            lease: LeaseSettings::default(),
            backoff_max: BACKOFF_MAX,
            probe_interval: Duration::from_secs(1),
            watch_timeout: None,
        }
    }
}

/// Counters of the Kubernetes source, shown in `/metrics`.
#[derive(Default)]
pub struct KubeStats {
    /// Every watched kind listed at least once.
    pub synced: AtomicBool,
    /// This replica holds the Lease.
    pub leader: AtomicBool,
    pub snapshots: AtomicU64,
    /// Complete re-lists after the first (410 Gone, or a watch that could not resume).
    pub relists: AtomicU64,
    pub watch_errors: AtomicU64,
    /// Watches the API server expired (410 Gone); each is followed by a re-list.
    pub gone: AtomicU64,
    /// `/readyz` probes that failed while the API server was away.
    pub probe_failures: AtomicU64,
    /// Times the probe saw the API server back and woke the watchers.
    pub recoveries: AtomicU64,
    /// Objects or fields rejected by the last compile.
    pub rejected: AtomicU64,
    /// Rejections seen for the first time (each also gets a log line and, from the leader,
    /// an Event).
    pub rejections_total: AtomicU64,
    pub events_posted: AtomicU64,
    pub event_errors: AtomicU64,
    pub status_updates: AtomicU64,
    pub status_errors: AtomicU64,
    pub leader_transitions: AtomicU64,
    /// TLS Secrets cached with their data (the ones our Ingresses reference).
    pub cached_secrets: AtomicU64,
    /// The control thread's Linux thread id (`/proc/self/task/<id>`), to measure its CPU and
    /// memory from outside; 0 until it runs.
    pub control_thread: AtomicU64,
}

impl KubeStats {
    /// Prometheus text for these counters.
    pub fn render(&self, out: &mut String) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let b = |a: &AtomicBool| u64::from(a.load(Ordering::Relaxed));
        let rows: [(&str, &str, &str, u64); 16] = [
            (
                "sluice_kube_cached_secrets",
                "gauge",
                "TLS Secrets cached with their data (referenced by our Ingresses).",
                g(&self.cached_secrets),
            ),
            (
                "sluice_kube_synced",
                "gauge",
                "Every watched kind has been listed.",
                b(&self.synced),
            ),
            (
                "sluice_kube_leader",
                "gauge",
                "This replica holds the status Lease.",
                b(&self.leader),
            ),
            (
                "sluice_kube_snapshots_total",
                "counter",
                "Snapshots compiled from the cluster.",
                g(&self.snapshots),
            ),
            (
                "sluice_kube_relists_total",
                "counter",
                "Complete re-lists after the first list (410 Gone or lost watch).",
                g(&self.relists),
            ),
            (
                "sluice_kube_watch_errors_total",
                "counter",
                "Errors from the API server while listing or watching.",
                g(&self.watch_errors),
            ),
            (
                "sluice_kube_watch_expired_total",
                "counter",
                "Watches the API server expired with 410 Gone (each followed by a re-list).",
                g(&self.gone),
            ),
            (
                "sluice_kube_probe_failures_total",
                "counter",
                "Readiness probes of the API server that failed while it was away.",
                g(&self.probe_failures),
            ),
            (
                "sluice_kube_recoveries_total",
                "counter",
                "Times the API server answered again and the watchers were woken.",
                g(&self.recoveries),
            ),
            (
                "sluice_kube_rejected_objects",
                "gauge",
                "Objects or fields the last compile rejected.",
                g(&self.rejected),
            ),
            (
                "sluice_kube_rejections_total",
                "counter",
                "Rejections seen for the first time.",
                g(&self.rejections_total),
            ),
            (
                "sluice_kube_events_total",
                "counter",
                "Kubernetes Events posted for rejections.",
                g(&self.events_posted),
            ),
            (
                "sluice_kube_event_errors_total",
                "counter",
                "Events the API server refused.",
                g(&self.event_errors),
            ),
            (
                "sluice_kube_status_updates_total",
                "counter",
                "Ingress status updates written.",
                g(&self.status_updates),
            ),
            (
                "sluice_kube_status_errors_total",
                "counter",
                "Ingress status updates the API server refused.",
                g(&self.status_errors),
            ),
            (
                "sluice_kube_leader_transitions_total",
                "counter",
                "Times this replica gained or lost the Lease.",
                g(&self.leader_transitions),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

/// `(namespace, name)`; cluster-scoped objects have an empty namespace.
pub type Key = (String, String);

fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// One kind's objects. During a (re-)list the new set is built aside and swapped in whole at
/// `InitDone`, so the compiled routes never see a half-listed or empty world.
struct Kind<K> {
    live: BTreeMap<Key, Arc<K>>,
    pending: Option<BTreeMap<Key, Arc<K>>>,
    synced: bool,
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
    fn apply(
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

    fn values(&self) -> Vec<Arc<K>> {
        self.live.values().cloned().collect()
    }
}

/// Metadata the compiler reads: name, namespace, uid, creation time, annotations (without
/// kubectl's copy of the whole object). Labels only when `keep_label` names one.
fn strip_meta(meta: ObjectMeta, keep_label: Option<&str>) -> ObjectMeta {
    let annotations = meta.annotations.map(|mut a| {
        a.remove(LAST_APPLIED);
        a
    });
    let labels = keep_label.and_then(|wanted| {
        meta.labels.map(|l| {
            l.into_iter()
                .filter(|(k, _)| k == wanted)
                .collect::<BTreeMap<_, _>>()
        })
    });
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        creation_timestamp: meta.creation_timestamp,
        annotations: annotations.filter(|a| !a.is_empty()),
        labels: labels.filter(|l| !l.is_empty()),
        ..ObjectMeta::default()
    }
}

/// An Ingress keeps its spec and its status (read for status updates, ignored by the
/// compiler and by change detection).
fn strip_ingress(ing: Ingress) -> Ingress {
    Ingress {
        metadata: strip_meta(ing.metadata, None),
        spec: ing.spec,
        status: ing.status,
    }
}

fn same_ingress(a: &Ingress, b: &Ingress) -> bool {
    a.metadata == b.metadata && a.spec == b.spec
}

fn strip_class(class: IngressClass) -> IngressClass {
    IngressClass {
        metadata: strip_meta(class.metadata, None),
        spec: class.spec,
    }
}

/// A Service keeps its ports (name and number) and its LoadBalancer status.
fn strip_service(svc: Service) -> Service {
    let spec = svc.spec.map(|s| ServiceSpec {
        ports: s.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    ..ServicePort::default()
                })
                .collect()
        }),
        type_: s.type_,
        ..ServiceSpec::default()
    });
    let status = svc
        .status
        .and_then(|s| s.load_balancer)
        .filter(|lb| lb.ingress.as_ref().is_some_and(|i| !i.is_empty()))
        .map(|lb| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: lb.ingress,
            }),
            ..ServiceStatus::default()
        });
    Service {
        metadata: strip_meta(svc.metadata, None),
        spec,
        status,
    }
}

/// An EndpointSlice keeps its Service label, address type, ports, and per endpoint the
/// addresses and conditions (no topology, hints or pod references).
fn strip_slice(slice: EndpointSlice) -> EndpointSlice {
    EndpointSlice {
        metadata: strip_meta(slice.metadata, Some(SERVICE_NAME_LABEL)),
        address_type: slice.address_type,
        ports: slice.ports,
        endpoints: slice.endpoints.map(|eps| {
            eps.into_iter()
                .map(|e| Endpoint {
                    addresses: e.addresses,
                    conditions: e.conditions,
                    ..Endpoint::default()
                })
                .collect()
        }),
    }
}

/// A TLS Secret keeps `tls.crt` and `tls.key` only if one of our Ingresses references it;
/// otherwise only its name is remembered (so a later reference knows it exists).
fn strip_secret(secret: Secret, referenced: &BTreeSet<Key>) -> Secret {
    let meta = strip_meta(secret.metadata, None);
    let wanted = referenced.contains(&key_of(&meta));
    let data = if wanted {
        secret.data.map(|d| {
            d.into_iter()
                .filter(|(k, _)| k == "tls.crt" || k == "tls.key")
                .collect::<BTreeMap<String, ByteString>>()
        })
    } else {
        None
    };
    Secret {
        metadata: ObjectMeta {
            annotations: None,
            ..meta
        },
        type_: secret.type_,
        data,
        ..Secret::default()
    }
}

/// Messages from the watcher tasks (and secret fetches) to the control loop.
enum Msg {
    Ingress(Event<Ingress>),
    Class(Event<IngressClass>),
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Secret(Event<Secret>),
    PublishService(Event<Service>),
}

/// The cluster as the compiler needs it.
struct Store {
    opts: CompileOptions,
    ingresses: Kind<Ingress>,
    classes: Kind<IngressClass>,
    services: Kind<Service>,
    slices: Kind<EndpointSlice>,
    secrets: Kind<Secret>,
    publish: Kind<Service>,
    /// TLS Secrets our Ingresses reference.
    referenced: BTreeSet<Key>,
    /// Referenced Secrets known only by name, to be fetched.
    to_fetch: Vec<Key>,
    /// A status-relevant change (Ingress status, classes, published Service) happened.
    status_dirty: bool,
}

impl Store {
    fn new(opts: CompileOptions) -> Store {
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
    fn apply(&mut self, msg: Msg) -> bool {
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

    fn synced(&self, publish_service: bool) -> bool {
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
    fn refresh_references(&mut self) -> bool {
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

    fn objects(&self, stats: &KubeStats) -> Objects {
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
    fn reference(&self, object: &str) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
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

/// The Kubernetes source: a control thread that watches the cluster and publishes snapshots.
pub struct KubeSource {
    thread: Option<JoinHandle<()>>,
    first: Receiver<Result<Compiled, String>>,
    publisher: Option<oneshot::Sender<Publisher>>,
    stop: signal::Sender<bool>,
    stats: Arc<KubeStats>,
}

impl KubeSource {
    /// Starts the control thread. It connects, lists every watched kind, and offers the first
    /// snapshot through [`KubeSource::wait_synced`]; after [`KubeSource::attach`] it publishes
    /// every change.
    pub fn start(settings: KubeSettings) -> io::Result<KubeSource> {
        let (first_tx, first) = sync_channel(1);
        let (publisher_tx, publisher_rx) = oneshot::channel();
        let (stop, stop_rx) = signal::channel(false);
        let stats = Arc::new(KubeStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-kube".into())
            .spawn(move || {
                // "/proc/thread-self" links to "<pid>/task/<tid>".
                let tid = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|p| p.file_name()?.to_str()?.parse().ok())
                    .unwrap_or(0);
                thread_stats.control_thread.store(tid, Ordering::Relaxed);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ =
                            first_tx.send(Err(format!("cannot start the control runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(run(settings, first_tx, publisher_rx, stop_rx, thread_stats));
            })?;
        Ok(KubeSource {
            thread: Some(thread),
            first,
            publisher: Some(publisher_tx),
            stop,
            stats,
        })
    }

    /// Waits up to `timeout` for the first complete view of the cluster, compiled as
    /// snapshot version 1. `Ok(None)`: not yet (the API server may be unreachable; the
    /// control thread keeps trying). `Err`: the source cannot work (bad kubeconfig).
    pub fn wait_synced(&self, timeout: Duration) -> Result<Option<Compiled>, String> {
        match self.first.recv_timeout(timeout) {
            Ok(result) => result.map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err("the Kubernetes control thread stopped".into())
            }
        }
    }

    /// Hands the engine's publisher to the control thread: from now on every change is
    /// compiled and published.
    pub fn attach(&mut self, publisher: Publisher) {
        if let Some(tx) = self.publisher.take() {
            let _ = tx.send(publisher);
        }
    }

    pub fn stats(&self) -> Arc<KubeStats> {
        self.stats.clone()
    }

    /// Stops watching (releasing the Lease if held) and joins the control thread.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn make_client(options: &KubeOptions) -> Result<Client, String> {
    // The API client's TLS uses the process-wide rustls provider; with more than one
    // provider built in, rustls cannot pick one by itself. Ours is the one the HTTPS listener
    // uses (an earlier install, by a test or a second source, is just as good).
    let _ = super::certs::provider().as_ref().clone().install_default();
    let config = match &options.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            kube::Config::incluster().map_err(|e| format!("in-cluster configuration: {e}"))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no cluster configuration (in-cluster or kubeconfig): {e}"))?,
    };
    Client::try_from(config).map_err(|e| format!("cannot build the Kubernetes client: {e}"))
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One line for an API client error: the API server's answer as "403 Forbidden: <its
/// message>" (its message names the user, verb and resource), else the client's own error.
pub fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// One line for a watcher error (see [`api_error`]).
fn watch_error(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e) => format!("list failed: {}", api_error(e)),
        watcher::Error::WatchStartFailed(e) => format!("watch failed: {}", api_error(e)),
        watcher::Error::WatchFailed(e) => format!("watch stream failed: {}", api_error(e)),
        watcher::Error::WatchError(s) => {
            format!("watch error: {} {}: {}", s.code, s.reason, s.message)
        }
        other => other.to_string(),
    }
}

/// A random duration in `[d / 2, d]`, so replicas (and the watchers of one replica) that lost
/// the API server together do not come back in lockstep.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = d / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
}

/// Shared by the watchers of one control thread: a failing watcher asks the probe to watch
/// the API server (`trouble`); the probe bumps `recovered` when it answers again, which ends
/// every watcher's backoff at once.
#[derive(Clone)]
struct Recovery {
    trouble: Arc<tokio::sync::Notify>,
    recovered: signal::Receiver<u64>,
}

/// Waits for a watcher to report trouble, then asks `/readyz` every `interval` (jittered)
/// until it answers; if it failed at least once meanwhile, the API server was away: wake the
/// watchers so they retry now instead of at the end of their backoff. One cheap request per
/// interval while the server is down; nothing while it is up.
async fn probe(
    client: Client,
    trouble: Arc<tokio::sync::Notify>,
    recovered: signal::Sender<u64>,
    interval: Duration,
    stats: Arc<KubeStats>,
) {
    loop {
        trouble.notified().await;
        let mut failures = 0u64;
        loop {
            tokio::time::sleep(jitter(interval)).await;
            let request = http::Request::get("/readyz").body(Vec::new());
            let Ok(request) = request else { return };
            match client.request_text(request).await {
                Ok(_) => break,
                // It answers, but may not tell us whether it is ready (a cluster that does not
                // grant /readyz to every authenticated user): answering is enough.
                Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => break,
                Err(_) => {
                    failures += 1;
                    stats.probe_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if failures > 0 {
            stats.recoveries.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                failures,
                "kubernetes: the API server answers again; watchers retry now"
            );
            recovered.send_modify(|generation| *generation += 1);
        }
    }
}

/// Runs one kind's watcher forever, feeding `tx`. Errors are logged and counted, then retried
/// after a jittered exponential backoff (100 ms doubling to `backoff_max`) that the `/readyz`
/// probe cuts short once the API server answers again; the watcher resumes from its last
/// resourceVersion, or re-lists when the API server says 410 Gone (as a watch event or as the
/// HTTP status).
#[allow(clippy::too_many_arguments)]
fn spawn_watch<K>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::UnboundedSender<Msg>,
    wrap: fn(Event<K>) -> Msg,
    stats: Arc<KubeStats>,
    backoff_max: Duration,
    recovery: Recovery,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    const FIRST_DELAY: Duration = Duration::from_millis(100);
    let Recovery {
        trouble,
        mut recovered,
    } = recovery;
    tokio::spawn(async move {
        let mut listed_once = false;
        loop {
            let mut stream = watcher::watcher(api.clone(), config.clone()).boxed();
            let mut delay = FIRST_DELAY;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        delay = FIRST_DELAY;
                        if matches!(event, Event::Init) {
                            if listed_once {
                                stats.relists.fetch_add(1, Ordering::Relaxed);
                            }
                            listed_once = true;
                        }
                        if tx.send(wrap(event)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                        let gone = match &e {
                            watcher::Error::WatchStartFailed(kube::Error::Api(s))
                            | watcher::Error::InitialListFailed(kube::Error::Api(s)) => {
                                s.code == 410
                            }
                            watcher::Error::WatchError(s) => s.code == 410,
                            _ => false,
                        };
                        let wait = jitter(delay);
                        if gone {
                            stats.gone.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                watcher = %what,
                                "kubernetes: resourceVersion expired (410 Gone); re-listing (routes kept until the new list is complete)"
                            );
                        } else {
                            tracing::warn!(
                                watcher = %what,
                                error = %watch_error(&e),
                                retry_in = ?wait,
                                "kubernetes: watch failed; retrying (still serving the last good routes)"
                            );
                            trouble.notify_one();
                        }
                        recovered.borrow_and_update();
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {
                                delay = (delay * 2).min(backoff_max);
                            }
                            // The probe saw the API server answer again: retry now.
                            _ = recovered.changed() => delay = FIRST_DELAY,
                        }
                        if gone && matches!(e, watcher::Error::WatchStartFailed(_)) {
                            // kube's watcher retries a refused watch start with the same
                            // resourceVersion forever: start over with a fresh list instead.
                            break;
                        }
                    }
                }
            }
        }
    });
}

/// The control loop.
async fn run(
    settings: KubeSettings,
    first_tx: std::sync::mpsc::SyncSender<Result<Compiled, String>>,
    publisher_rx: oneshot::Receiver<Publisher>,
    mut stop: signal::Receiver<bool>,
    stats: Arc<KubeStats>,
) {
    let client = match make_client(&settings.options).await {
        Ok(c) => c,
        Err(e) => {
            let _ = first_tx.send(Err(e));
            return;
        }
    };
    let ns = settings.options.watch_namespace.as_deref();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let max = settings.backoff_max;
    let (recovered_tx, recovered) = signal::channel(0u64);
    let trouble = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(probe(
        client.clone(),
        trouble.clone(),
        recovered_tx,
        settings.probe_interval,
        stats.clone(),
    ));
    let recovery = Recovery { trouble, recovered };
    let watch_timeout = settings.watch_timeout;
    let default = || {
        let config = watcher::Config::default();
        match watch_timeout {
            Some(secs) => config.timeout(secs),
            None => config,
        }
    };
    spawn_watch(
        "IngressClass",
        Api::<IngressClass>::all(client.clone()),
        default(),
        tx.clone(),
        Msg::Class,
        stats.clone(),
        max,
        recovery.clone(),
    );
    spawn_watch(
        "Ingress",
        api::<Ingress>(&client, ns),
        default(),
        tx.clone(),
        Msg::Ingress,
        stats.clone(),
        max,
        recovery.clone(),
    );
    spawn_watch(
        "Service",
        api::<Service>(&client, ns),
        default(),
        tx.clone(),
        Msg::Service,
        stats.clone(),
        max,
        recovery.clone(),
    );
    spawn_watch(
        "EndpointSlice",
        api::<EndpointSlice>(&client, ns),
        default(),
        tx.clone(),
        Msg::Slice,
        stats.clone(),
        max,
        recovery.clone(),
    );
    spawn_watch(
        "Secret",
        api::<Secret>(&client, ns),
        default().fields(&format!("type={TLS_SECRET_TYPE}")),
        tx.clone(),
        Msg::Secret,
        stats.clone(),
        max,
        recovery.clone(),
    );
    let publish_service = settings.options.publish_service.clone();
    if let Some((pns, pname)) = &publish_service {
        spawn_watch(
            "published Service",
            Api::<Service>::namespaced(client.clone(), pns),
            default().fields(&format!("metadata.name={pname}")),
            tx.clone(),
            Msg::PublishService,
            stats.clone(),
            max,
            recovery.clone(),
        );
    }

    let mut store = Store::new(settings.compile.clone());
    // Phase 1: the first complete list of every kind.
    while !store.synced(publish_service.is_some()) {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => { store.apply(msg); }
                None => return,
            },
            _ = stop.changed() => return,
        }
    }
    // Referenced Secrets known only by name are read before the first snapshot, so it starts
    // with every certificate it can have.
    let keys: Vec<Key> = store.to_fetch.drain(..).collect();
    let fetched = futures::future::join_all(keys.iter().map(|(ns, name)| {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        async move { (ns, name, api.get_opt(name).await) }
    }))
    .await;
    for (ns, name, result) in fetched {
        match result {
            Ok(Some(secret)) if secret.type_.as_deref() == Some(TLS_SECRET_TYPE) => {
                store.apply(Msg::Secret(Event::Apply(secret)));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                kind = "Secret",
                namespace = %ns,
                name = %name,
                error = %api_error(&e),
                "kubernetes: cannot read a Secret"
            ),
        }
    }
    stats.synced.store(true, Ordering::Relaxed);
    let version = 1;
    let (compiler, compiled) =
        Incremental::new(&store.objects(&stats), settings.compile.clone(), version);
    stats.snapshots.fetch_add(1, Ordering::Relaxed);
    let mut rejections = Rejections::default();
    let new_rejections = rejections.update(&compiled.diagnostics, &stats);
    if first_tx.send(Ok(compiled)).is_err() {
        return;
    }
    let publisher = tokio::select! {
        p = publisher_rx => match p { Ok(p) => p, Err(_) => return },
        _ = stop.changed() => return,
    };

    // Leader election, status writes and Events run beside the watch loop.
    let (leader_tx, mut leader_rx) = signal::channel(false);
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &settings.election_namespace);
    let lease = tokio::spawn(leader::run(
        lease_api,
        settings.options.election_id.clone(),
        settings.identity.clone(),
        settings.lease.clone(),
        leader_tx,
        stop.clone(),
    ));
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    tokio::spawn(status::write_statuses(
        client.clone(),
        status_rx,
        stats.clone(),
    ));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    tokio::spawn(status::post_events(
        client.clone(),
        settings.identity.clone(),
        events_rx,
        stats.clone(),
    ));
    let mut plan = StatusPlan::new(settings.options.publish_status_address.clone());
    let mut leading = false;
    // Rejections found before we lead are posted when we do.
    let mut unposted: Vec<Diagnostic> = new_rejections;

    // Phase 2: every change → the update pipeline, which coalesces, compiles, publishes and
    // waits for the workers on its own thread (never blocking this runtime: the watchers and
    // the Lease renewal keep running), and reports full compiles back for the rejections.
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let pipeline_stats = stats.clone();
    let pipeline = match Pipeline::spawn(compiler, publisher, version, move |report| {
        pipeline_stats.snapshots.fetch_add(1, Ordering::Relaxed);
        if let Report::Full { diagnostics, .. } = report {
            let _ = reports_tx.send(diagnostics);
        }
    }) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "kubernetes: cannot start the update pipeline");
            return;
        }
    };
    let feed = pipeline.feed();
    let mut resync = tokio::time::interval(STATUS_RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                let seen = super::pipeline::now();
                // Everything already queued is one change.
                let mut dirty = false;
                // Something other than EndpointSlices changed: the set of rejected objects
                // may have too.
                let mut recheck = false;
                let mut next = Some(msg);
                while let Some(msg) = next {
                    let slice = matches!(msg, Msg::Slice(_));
                    let changed = store.apply(msg);
                    dirty |= changed;
                    recheck |= changed && !slice;
                    next = rx.try_recv().ok();
                }
                fetch_secrets(&client, &mut store, &tx);
                if dirty {
                    let objects = store.objects(&stats);
                    if !feed.send(Change { objects, seen, recheck }) {
                        break;
                    }
                }
            }
            Some(diagnostics) = reports.recv() => {
                unposted.extend(rejections.update(&diagnostics, &stats));
            }
            changed = leader_rx.changed() => {
                if changed.is_err() { break; }
                let now_leading = *leader_rx.borrow_and_update();
                if now_leading != leading {
                    leading = now_leading;
                    stats.leader.store(leading, Ordering::Relaxed);
                    stats.leader_transitions.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(leading, namespace = %settings.election_namespace, lease = %settings.options.election_id, "kubernetes: {} the status lease", if leading { "acquired" } else { "lost" });
                    plan.reset();
                    store.status_dirty = true;
                    if leading {
                        unposted = rejections.current.iter().cloned().collect();
                    }
                }
            }
            _ = resync.tick() => {
                // Writes that failed are forgotten here and planned again.
                plan.reset();
                store.status_dirty = true;
            }
            _ = stop.changed() => break,
        }
        if leading {
            for d in unposted.drain(..) {
                if let Some(reference) = store.reference(&d.object) {
                    let _ = events_tx.send((reference, d));
                }
            }
            if store.status_dirty {
                store.status_dirty = false;
                let addresses = plan.addresses(
                    store.publish.live.values().next().map(|s| &**s),
                    publish_service.is_some(),
                );
                let classes = store.classes.values();
                let judge = Classes::new(&classes, &settings.compile);
                for write in plan.writes(
                    &addresses,
                    store
                        .ingresses
                        .live
                        .values()
                        .map(|i| (i.as_ref(), judge.is_ours(i))),
                ) {
                    let _ = status_tx.send(write);
                }
            }
        } else {
            unposted.clear();
        }
    }
    drop(status_tx);
    drop(events_tx);
    drop(feed);
    let _ = tokio::task::spawn_blocking(move || pipeline.finish()).await;
    // Give the Lease back so another replica takes over at once.
    let _ = tokio::time::timeout(Duration::from_secs(3), lease).await;
}

/// Starts a GET for every referenced Secret that is known only by name.
fn fetch_secrets(client: &Client, store: &mut Store, tx: &mpsc::UnboundedSender<Msg>) {
    for (ns, name) in store.to_fetch.drain(..) {
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let tx = tx.clone();
        tokio::spawn(async move {
            match api.get_opt(&name).await {
                Ok(Some(secret)) if secret.type_.as_deref() == Some(TLS_SECRET_TYPE) => {
                    let _ = tx.send(Msg::Secret(Event::Apply(secret)));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    kind = "Secret",
                    namespace = %ns,
                    name = %name,
                    error = %api_error(&e),
                    "kubernetes: cannot read a Secret"
                ),
            }
        });
    }
}

/// The rejections of the last compile, to report each one once.
#[derive(Default)]
struct Rejections {
    current: BTreeSet<Diagnostic>,
}

impl Rejections {
    /// Logs new rejections and the ones that went away; returns the new ones.
    fn update(&mut self, diagnostics: &[Diagnostic], stats: &KubeStats) -> Vec<Diagnostic> {
        let now: BTreeSet<Diagnostic> = diagnostics.iter().cloned().collect();
        let new: Vec<Diagnostic> = now.difference(&self.current).cloned().collect();
        for d in &new {
            super::report::rejected(d);
        }
        for d in self.current.difference(&now) {
            super::report::no_longer_rejected(d);
        }
        stats.rejected.store(now.len() as u64, Ordering::Relaxed);
        stats
            .rejections_total
            .fetch_add(new.len() as u64, Ordering::Relaxed);
        self.current = now;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_all_of_the_wait_and_varies() {
        let d = Duration::from_secs(8);
        let waits: BTreeSet<Duration> = (0..64).map(|_| jitter(d)).collect();
        assert!(waits.iter().all(|w| *w >= d / 2 && *w <= d), "{waits:?}");
        assert!(waits.len() > 32, "not random: {waits:?}");
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn api_errors_are_one_line_with_the_servers_reason() {
        let status = kube::core::Status::failure(
            "secrets is forbidden: User \"x\" cannot list resource \"secrets\"",
            "Forbidden",
        )
        .with_code(403);
        let line = watch_error(&watcher::Error::InitialListFailed(kube::Error::Api(
            Box::new(status),
        )));
        assert_eq!(
            line,
            "list failed: 403 Forbidden: secrets is forbidden: User \"x\" cannot list resource \"secrets\""
        );
    }
}
