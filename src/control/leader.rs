//! Leader election over a coordination.k8s.io/v1 Lease, as client-go does it: the holder
//! renews `renewTime` every retry period; another replica takes over only after it has seen
//! the same holder and renewTime unchanged for a whole lease duration (its own clock, so clock
//! skew between nodes does not matter). Writes use the Lease's resourceVersion, so two
//! replicas can never both win. Leadership is reported on a watch channel.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

/// Timings of the election (client-go's defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a Lease is honoured without renewal.
    pub duration: Duration,
    /// A leader that could not renew for this long steps down (before others take over).
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    pub retry: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What we last saw of somebody else's Lease, and when (on our clock).
struct Observed {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    settings: LeaseSettings,
    observed: Option<Observed>,
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    /// One attempt: returns whether we hold the Lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let secs = i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() != Some(self.identity.as_str()) {
            let changed = self
                .observed
                .as_ref()
                .is_none_or(|o| o.holder != holder || o.renew != spec.renew_time);
            if changed {
                self.observed = Some(Observed {
                    holder: holder.clone(),
                    renew: spec.renew_time.clone(),
                    at: Instant::now(),
                });
            }
            let theirs = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(secs)).unwrap_or(0),
            );
            let expired = self
                .observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() >= theirs);
            if holder.is_some() && !expired {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(micro_now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.renew_time = Some(micro_now());
        spec.lease_duration_seconds = Some(secs);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Somebody else wrote the Lease first (resourceVersion moved on).
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown), so another replica need not wait for it to expire.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro_now());
        let _ = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await;
    }
}

/// Campaigns for Lease `name` until `stop`; sends `true` on `leading` while we hold it.
pub async fn run(
    api: Api<Lease>,
    name: String,
    identity: String,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let retry = settings.retry;
    let mut e = Elector {
        api,
        name,
        identity,
        settings,
        observed: None,
    };
    let mut last_renew: Option<Instant> = None;
    loop {
        let held = match e.try_acquire_or_renew().await {
            Ok(true) => {
                last_renew = Some(Instant::now());
                true
            }
            Ok(false) => false,
            Err(err) => {
                tracing::warn!(
                    lease = %e.name,
                    error = %super::watch::api_error(&err),
                    "kubernetes: cannot renew the status lease (not writing status past the renew deadline)"
                );
                // Keep leading through short API trouble, never past the renew deadline.
                last_renew.is_some_and(|t| t.elapsed() < e.settings.renew_deadline)
            }
        };
        if !held {
            last_renew = None;
        }
        leading.send_if_modified(|v| std::mem::replace(v, held) != held);
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = stop.changed() => break,
        }
    }
    if *leading.borrow() {
        let _ = leading.send(false);
        e.release().await;
    }
}
