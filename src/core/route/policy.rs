//! Per-route properties compiled from an Ingress's annotations: typed values, never text
//! that is interpreted later. A route without any carries no policy at all (`None` in its
//! [`super::PathRule`]), so the common route costs nothing extra per request.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::affinity::Affinity;
use super::key::HashKey;
use super::next_upstream::NextUpstream;
use super::request_policy::RequestPolicy;
use super::upstream_tls::UpstreamTls;
use crate::core::http1::upgrade::Upgrades;

/// What one Ingress's annotations say about the routes it adds. Every field is `None` when
/// the annotation is absent (or did not parse): the listener's setting applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Upgrade protocols relayed as tunnels on this route (`sluice.dev/upgrade-protocols`);
    /// replaces the listener's `[http] upgrade_protocols` for the route.
    pub upgrades: Option<Upgrades>,
    /// Establishing the upstream connection (`proxy-connect-timeout`) → 504.
    pub connect_timeout: Option<Duration>,
    /// Waiting for the response head, and between two reads of the response body
    /// (`proxy-read-timeout`) → 504 / cut.
    pub read_timeout: Option<Duration>,
    /// Between two writes of the request body to the upstream (`proxy-send-timeout`).
    pub send_timeout: Option<Duration>,
    /// Between two reads of the request body from the client (`client-body-timeout`).
    pub client_body_timeout: Option<Duration>,
    /// Largest request body (`proxy-body-size`) → 413; `Some(None)`: unlimited.
    pub max_body_bytes: Option<Option<u64>>,
    /// How requests spread over the backend's endpoints (`load-balance`, `upstream-hash-by`).
    pub balance: Option<Balance>,
    /// Retries to another endpoint (`proxy-next-upstream`, `-tries`, `-timeout`); `None`:
    /// ingress-nginx's defaults ([`NextUpstream::DEFAULT`]).
    pub next_upstream: Option<NextUpstream>,
    /// Cookie session affinity (`affinity: cookie`, `session-cookie-*`).
    pub affinity: Option<Affinity>,
    /// `Host` sent upstream instead of the client's (`upstream-vhost`).
    pub upstream_vhost: Option<Arc<str>>,
    /// TLS towards the pods (`backend-protocol: HTTPS`, `proxy-ssl-*`): the rustls client
    /// config built once per compile, shared by every worker.
    pub upstream_tls: Option<Arc<UpstreamTls>>,
    /// Redirects, rewrites, address lists and CORS (`src/core/route/request_policy.rs`).
    pub request: Option<Arc<RequestPolicy>>,
}

impl RoutePolicy {
    /// True when nothing is set: such a route carries no policy.
    pub fn is_empty(&self) -> bool {
        *self == RoutePolicy::default()
    }
}

/// For the route dump: `upgrade=websocket,foo` and so on, space-separated.
impl fmt::Display for RoutePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        let mut item = |f: &mut fmt::Formatter<'_>, args: fmt::Arguments<'_>| {
            let r = write!(f, "{sep}{args}");
            sep = " ";
            r
        };
        if let Some(u) = &self.upgrades {
            item(f, format_args!("upgrade={u}"))?;
        }
        let timeouts = [
            ("connect", self.connect_timeout),
            ("read", self.read_timeout),
            ("send", self.send_timeout),
            ("client-body", self.client_body_timeout),
        ];
        for (name, t) in timeouts {
            if let Some(t) = t {
                item(f, format_args!("{name}-timeout={t:?}"))?;
            }
        }
        if let Some(b) = &self.balance {
            item(f, format_args!("balance={b}"))?;
        }
        if let Some(a) = &self.affinity {
            item(f, format_args!("affinity={a}"))?;
        }
        if let Some(h) = &self.upstream_vhost {
            item(f, format_args!("upstream-vhost={h}"))?;
        }
        if let Some(t) = &self.upstream_tls {
            item(f, format_args!("{t}"))?;
        }
        if let Some(n) = &self.next_upstream {
            item(f, format_args!("next-upstream={n}"))?;
        }
        match self.max_body_bytes {
            Some(Some(n)) => item(f, format_args!("body-size={n}"))?,
            Some(None) => item(f, format_args!("body-size=unlimited"))?,
            None => {}
        }
        if let Some(r) = &self.request {
            item(f, format_args!("{r}"))?;
        }
        Ok(())
    }
}

/// How a route spreads its requests over its backend's endpoints (`load-balance`,
/// `upstream-hash-by`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    /// P2C on the worker's in-flight requests per endpoint.
    LeastRequest,
    /// P2C on peak-EWMA latency times in-flight requests.
    Ewma,
    /// Rendezvous hashing of the key: the same endpoint on every worker and replica.
    Hash(HashKey),
    /// Rendezvous hashing with bounded load (`sluice.dev/upstream-hash-by-bounded-load`): a
    /// key's endpoint takes it only while that endpoint's requests in flight (on this worker)
    /// stay under this many percent of the average; past that the key goes to its next
    /// rendezvous choice (consistent hashing with bounded loads, Mirrokni et al.).
    HashBounded(HashKey, u32),
    /// `upstream-hash-by-subset`: the key picks a subset of this many endpoints (the same on
    /// every worker and replica), then a random endpoint of it.
    HashSubset(HashKey, u32),
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Balance::RoundRobin => f.write_str("round_robin"),
            Balance::LeastRequest => f.write_str("least_request"),
            Balance::Ewma => f.write_str("ewma"),
            Balance::Hash(key) => write!(f, "hash({key})"),
            Balance::HashBounded(key, percent) => write!(f, "hash({key}) bounded={percent}%"),
            Balance::HashSubset(key, size) => write!(f, "hash-subset({key},{size})"),
        }
    }
}
