//! The control loop: waits for the first complete list, then turns every change into
//! objects for the update pipeline, and (as leader) writes statuses and posts Events.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::{mpsc, oneshot, watch as signal};

use super::client::{Recovery, api, api_error, make_client, probe, spawn_watch};
use super::store::{Key, Msg, Store};
use super::{KubeError, KubeSettings, KubeStats, TLS_SECRET_TYPE};
use crate::control::class::Classes;
use crate::control::compile::{Compiled, Diagnostic};
use crate::control::incremental::Incremental;
use crate::control::leader::{self};
use crate::control::pipeline::{Change, Pipeline, Report};
use crate::control::status::{self, StatusPlan};
use crate::engine::Publisher;

/// How often the leader re-checks every status, retrying writes that failed.
const STATUS_RESYNC: Duration = Duration::from_secs(30);

/// The control loop.
pub(super) async fn run(
    settings: KubeSettings,
    first_tx: std::sync::mpsc::SyncSender<Result<Compiled, KubeError>>,
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
                let seen = crate::control::pipeline::now();
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
pub(super) fn fetch_secrets(client: &Client, store: &mut Store, tx: &mpsc::UnboundedSender<Msg>) {
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
pub(super) struct Rejections {
    current: BTreeSet<Diagnostic>,
}

impl Rejections {
    /// Logs new rejections and the ones that went away; returns the new ones.
    pub(super) fn update(
        &mut self,
        diagnostics: &[Diagnostic],
        stats: &KubeStats,
    ) -> Vec<Diagnostic> {
        let now: BTreeSet<Diagnostic> = diagnostics.iter().cloned().collect();
        let new: Vec<Diagnostic> = now.difference(&self.current).cloned().collect();
        for d in &new {
            crate::control::report::rejected(d);
        }
        for d in self.current.difference(&now) {
            crate::control::report::no_longer_rejected(d);
        }
        stats.rejected.store(now.len() as u64, Ordering::Relaxed);
        stats
            .rejections_total
            .fetch_add(new.len() as u64, Ordering::Relaxed);
        self.current = now;
        new
    }
}
