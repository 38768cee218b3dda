//! Typed reading of Ingress annotations: `sluice.dev/<name>` and
//! `nginx.ingress.kubernetes.io/<name>`, ours winning when both are set.
//!
//! A value is parsed once, here, into a typed value; nothing downstream ever sees the text.
//! A value that does not parse (or holds a CR or LF, whatever the annotation) rejects only
//! that field: the caller gets `None` and uses its default, and a [`Diagnostic`] naming the
//! annotation says why (it reaches the log, the Ingress's Events and `sluice check`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::Ingress;

use super::compile::Diagnostic;
use crate::core::http1::Upgrades;
use crate::core::route::RoutePolicy;

/// Our own prefix; wins over ingress-nginx's.
pub const OURS: &str = "sluice.dev/";
/// ingress-nginx's prefix, read for the annotations it defines.
pub const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// Upgrade protocols relayed on the Ingress's routes (ours only: ingress-nginx has none).
pub const UPGRADE_PROTOCOLS: &str = "upgrade-protocols";

/// The annotations of one Ingress, with the object name its diagnostics carry.
pub struct Annotations<'a> {
    map: Option<&'a BTreeMap<String, String>>,
    object: &'a str,
}

impl<'a> Annotations<'a> {
    pub fn of(ing: &'a Ingress, object: &'a str) -> Annotations<'a> {
        Annotations {
            map: ing.metadata.annotations.as_ref(),
            object,
        }
    }

    /// The key and value of `name`: ours if set, else ingress-nginx's (when `nginx`).
    fn raw(&self, name: &str, nginx: bool) -> Option<(String, &'a str)> {
        let map = self.map?;
        let prefixes: &[&str] = if nginx { &[OURS, NGINX] } else { &[OURS] };
        prefixes.iter().find_map(|prefix| {
            let key = format!("{prefix}{name}");
            let value = map.get(&key)?;
            Some((key, value.as_str()))
        })
    }

    /// `name` (either prefix) parsed by `parse`, or `None` when absent or invalid; an invalid
    /// value is reported, saying that `default` is used instead.
    pub fn get<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
        default: &dyn fmt::Display,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        self.read(name, true, parse, default, diags)
    }

    /// [`Annotations::get`] for an annotation of ours only (`sluice.dev/<name>`).
    pub fn get_ours<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
        default: &dyn fmt::Display,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        self.read(name, false, parse, default, diags)
    }

    /// A boolean, as ingress-nginx reads one (Go's `strconv.ParseBool`).
    pub fn bool(&self, name: &str, default: bool, diags: &mut Vec<Diagnostic>) -> bool {
        self.get(name, parse_bool, &default, diags)
            .unwrap_or(default)
    }

    fn read<T>(
        &self,
        name: &str,
        nginx: bool,
        parse: impl FnOnce(&str) -> Result<T, String>,
        default: &dyn fmt::Display,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<T> {
        let (key, value) = self.raw(name, nginx)?;
        let parsed = if value.contains(['\r', '\n']) {
            Err("contains a CR or LF".to_string())
        } else {
            parse(value.trim())
        };
        match parsed {
            Ok(v) => Some(v),
            Err(why) => {
                diags.push(Diagnostic {
                    object: self.object.to_string(),
                    field: format!("metadata.annotations[{key}]"),
                    message: format!("{why}; using {default}"),
                });
                None
            }
        }
    }
}

/// Go's `strconv.ParseBool`, which ingress-nginx uses.
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// A comma-separated list of upgrade protocol names (empty: none may be relayed).
pub fn parse_upgrades(value: &str) -> Result<Upgrades, String> {
    let names: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    Upgrades::new(&names)
}

/// The per-route properties of `ing`'s annotations, `None` when it sets none (or none
/// parsed); problems go to `diags`.
pub fn route_policy(
    ing: &Ingress,
    object: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Arc<RoutePolicy>> {
    let a = Annotations::of(ing, object);
    let policy = RoutePolicy {
        upgrades: a.get_ours(
            UPGRADE_PROTOCOLS,
            parse_upgrades,
            &"the listener's [http] upgrade_protocols",
            diags,
        ),
    };
    (!policy.is_empty()).then(|| Arc::new(policy))
}
