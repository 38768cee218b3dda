//! Per-route properties compiled from an Ingress's annotations: typed values, never text
//! that is interpreted later. A route without any carries no policy at all (`None` in its
//! [`super::PathRule`]), so the common route costs nothing extra per request.

use std::fmt;

use crate::core::http1::upgrade::Upgrades;

/// What one Ingress's annotations say about the routes it adds. Every field is `None` when
/// the annotation is absent (or did not parse): the listener's setting applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Upgrade protocols relayed as tunnels on this route (`sluice.dev/upgrade-protocols`);
    /// replaces the listener's `[http] upgrade_protocols` for the route.
    pub upgrades: Option<Upgrades>,
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
        if let Some(u) = &self.upgrades {
            write!(f, "upgrade={u}")?;
        }
        Ok(())
    }
}
