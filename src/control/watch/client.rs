//! The API client and the watcher tasks: client configuration, one-line API errors, the
//! jittered backoff and the `/readyz` probe that wakes every watcher once the API server
//! answers again.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::store::Msg;
use super::{KubeError, KubeOptions, KubeStats};
use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch as signal};

pub(super) async fn make_client(options: &KubeOptions) -> Result<Client, KubeError> {
    // The API client's TLS uses the process-wide rustls provider; with more than one
    // provider built in, rustls cannot pick one by itself. Ours is the one the HTTPS listener
    // uses (an earlier install, by a test or a second source, is just as good).
    let _ = crate::control::certs::provider()
        .as_ref()
        .clone()
        .install_default();
    let config = match &options.kubeconfig {
        Some(path) => {
            let bad = |source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(bad)?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            kube::Config::incluster().map_err(KubeError::InCluster)?
        }
        None => kube::Config::infer()
            .await
            .map_err(KubeError::NoConfiguration)?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}

pub(super) fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
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
pub(super) fn watch_error(e: &watcher::Error) -> String {
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
pub(super) fn jitter(d: Duration) -> Duration {
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
pub(super) struct Recovery {
    pub(super) trouble: Arc<tokio::sync::Notify>,
    pub(super) recovered: signal::Receiver<u64>,
}

/// Waits for a watcher to report trouble, then asks `/readyz` every `interval` (jittered)
/// until it answers; if it failed at least once meanwhile, the API server was away: wake the
/// watchers so they retry now instead of at the end of their backoff. One cheap request per
/// interval while the server is down; nothing while it is up.
pub(super) async fn probe(
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
pub(super) fn spawn_watch<K>(
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
