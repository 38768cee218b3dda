//! What the leader writes back to the cluster: `.status.loadBalancer.ingress` of our Ingresses
//! (from `--publish-status-address` or the published Service's LoadBalancer ingress), and a
//! Warning Event for every rejected object or field. Planning is pure ([`StatusPlan`]); the
//! writers are tasks on the control thread that log and count every refusal.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::compile::Diagnostic;
use super::watch::{Key, KubeStats, api_error};

/// One address of the status: an IP or a host name.
pub type Address = (Option<String>, Option<String>);

/// Set `.status.loadBalancer.ingress` of one Ingress to `addresses` (empty clears it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusWrite {
    pub namespace: String,
    pub name: String,
    pub addresses: Vec<Address>,
}

/// Decides which Ingresses need a status write.
pub struct StatusPlan {
    fixed: Vec<Address>,
    /// Writes sent and not yet seen back in a watch event.
    sent: HashMap<Key, Vec<Address>>,
    /// Ingresses we have set a status on (to clear it if they stop being ours).
    written: BTreeSet<Key>,
}

fn address(text: &str) -> Address {
    if text.parse::<IpAddr>().is_ok() {
        (Some(text.to_string()), None)
    } else {
        (None, Some(text.to_string()))
    }
}

fn current(ing: &Ingress) -> Vec<Address> {
    let mut list: Vec<Address> = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|l| {
            l.iter()
                .map(|i| (i.ip.clone(), i.hostname.clone()))
                .collect()
        })
        .unwrap_or_default();
    list.sort();
    list
}

impl StatusPlan {
    pub fn new(fixed: Vec<String>) -> StatusPlan {
        let mut fixed: Vec<Address> = fixed.iter().map(|a| address(a)).collect();
        fixed.sort();
        fixed.dedup();
        StatusPlan {
            fixed,
            sent: HashMap::new(),
            written: BTreeSet::new(),
        }
    }

    /// Forgets writes in flight (after a leadership change everything is checked again).
    pub fn reset(&mut self) {
        self.sent.clear();
    }

    /// The addresses our Ingresses should show, or `None` when neither a fixed address nor a
    /// published Service is configured (then status is left alone).
    pub fn addresses(
        &self,
        published: Option<&Service>,
        publish_configured: bool,
    ) -> Option<Vec<Address>> {
        if !self.fixed.is_empty() {
            return Some(self.fixed.clone());
        }
        if !publish_configured {
            return None;
        }
        let mut list: Vec<Address> = published
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|l| {
                l.iter()
                    .map(|i| (i.ip.clone(), i.hostname.clone()))
                    .collect()
            })
            .unwrap_or_default();
        list.sort();
        list.dedup();
        Some(list)
    }

    /// The writes that make every Ingress's status right: ours show `addresses`; ones we wrote
    /// that are no longer ours are cleared (if they still show our addresses).
    pub fn writes<'a>(
        &mut self,
        addresses: &Option<Vec<Address>>,
        ingresses: impl Iterator<Item = (&'a Ingress, bool)>,
    ) -> Vec<StatusWrite> {
        let Some(addresses) = addresses else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (ing, ours) in ingresses {
            let key = (
                ing.metadata.namespace.clone().unwrap_or_default(),
                ing.metadata.name.clone().unwrap_or_default(),
            );
            let now = current(ing);
            if self.sent.get(&key) == Some(&now) {
                self.sent.remove(&key); // our write came back
            }
            let want = if ours {
                addresses.clone()
            } else if self.written.contains(&key) && now == *addresses {
                Vec::new()
            } else {
                self.written.remove(&key);
                continue;
            };
            if now == want || self.sent.get(&key) == Some(&want) {
                if !ours && want.is_empty() {
                    self.written.remove(&key);
                }
                continue;
            }
            if ours {
                self.written.insert(key.clone());
            }
            self.sent.insert(key.clone(), want.clone());
            out.push(StatusWrite {
                namespace: key.0,
                name: key.1,
                addresses: want,
            });
        }
        out
    }
}

/// Writes statuses as they come, one at a time (merge patch of the status subresource).
pub async fn write_statuses(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<StatusWrite>,
    stats: Arc<KubeStats>,
) {
    while let Some(w) = rx.recv().await {
        let api: Api<Ingress> = Api::namespaced(client.clone(), &w.namespace);
        let list: Vec<IngressLoadBalancerIngress> = w
            .addresses
            .iter()
            .map(|(ip, hostname)| IngressLoadBalancerIngress {
                ip: ip.clone(),
                hostname: hostname.clone(),
                ports: None,
            })
            .collect();
        let ingress = if list.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::to_value(&list).unwrap_or(serde_json::Value::Null)
        };
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
        match api
            .patch_status(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                stats.status_updates.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.status_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    kind = "Ingress",
                    namespace = %w.namespace,
                    name = %w.name,
                    error = %api_error(&e),
                    "kubernetes: cannot update the status of an Ingress"
                );
            }
        }
    }
}

/// Posts a Warning Event (reason `Rejected`, the field and why in the note) per rejection.
pub async fn post_events(
    client: Client,
    identity: String,
    mut rx: mpsc::UnboundedReceiver<(ObjectReference, Diagnostic)>,
    stats: Arc<KubeStats>,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "sluice.dev/ingress-controller".to_string(),
            instance: Some(identity),
        },
    );
    while let Some((reference, d)) = rx.recv().await {
        let mut note = format!("{}: {}", d.field, d.message);
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "Rejected".to_string(),
            note: Some(note),
            action: "Compile".to_string(),
            secondary: None,
        };
        match recorder.publish(&event, &reference).await {
            Ok(()) => {
                stats.events_posted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.event_errors.fetch_add(1, Ordering::Relaxed);
                let (kind, namespace, name) = super::report::object_parts(&d.object);
                tracing::warn!(
                    kind,
                    namespace,
                    name,
                    error = %api_error(&e),
                    "kubernetes: cannot post an Event"
                );
            }
        }
    }
}
