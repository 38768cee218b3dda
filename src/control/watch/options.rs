//! The Kubernetes source's configuration: the `[sources]` keys as configured, and the
//! settings resolved from them (identity, election namespace, timings).

use std::fmt::Debug;
use std::path::PathBuf;
use std::time::Duration;

use crate::control::compile::CompileOptions;
use crate::control::leader::LeaseSettings;

/// Default cap of a watcher's backoff. It was 30 s: after a 20 s outage an Ingress created
/// once the server was back took 24.8 s to be served. With the `/readyz` probe waking the
/// watchers, the cap only bounds retries against a server that answers but refuses us.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

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

/// A `NAMESPACE/NAME` value that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected \"namespace/name\" (got {0:?})")]
pub struct BadNamespacedName(pub String);

/// Parses `NAMESPACE/NAME`.
pub fn parse_namespaced_name(text: &str) -> Result<(String, String), BadNamespacedName> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(BadNamespacedName(text.to_string())),
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
