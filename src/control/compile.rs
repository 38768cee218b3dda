//! The compiler: a pure function from Kubernetes objects to a route [`Snapshot`].
//!
//! Same input, same output, whatever the order the objects arrived in. Nothing is ever
//! dropped silently: every Ingress field we cannot honour produces a [`Diagnostic`] naming the
//! object and the field, that rule is skipped, and everything else compiles.
//!
//! Decisions where the Ingress spec leaves room (the ones ingress-nginx users know):
//! * class: `spec.ingressClassName` naming an IngressClass whose controller is ours (or, when
//!   no IngressClass of that name exists at all, equal to our `--ingress-class`); without it,
//!   the legacy `kubernetes.io/ingress.class` annotation; without either, ours if one of our
//!   IngressClasses is the cluster default or `watch_without_class` is set. When the field and
//!   the annotation disagree, the field wins and a diagnostic says so.
//! * conflicts: the same host, path and path type in two Ingresses → the oldest Ingress
//!   (creationTimestamp, then namespace/name) wins; the other gets a diagnostic.
//! * a backend whose Service or port does not exist stays routed and answers 503, so a typo
//!   never makes a path fall through to some other backend.
//! * `spec.defaultBackend`: the fallback for the Ingress's own hosts, and (from the oldest
//!   Ingress that has one) for requests nothing else matches; then the controller default.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::manifests::Object;
use crate::core::route::{Backend, BackendId, PathKind, RouteTableBuilder, Snapshot};

/// Annotation marking the cluster's default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The legacy class annotation, still widely used.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything the compiler reads.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub ingresses: Vec<Arc<Ingress>>,
    pub classes: Vec<Arc<IngressClass>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
}

impl Objects {
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Objects {
        let mut all = Objects::default();
        for object in objects {
            match object {
                Object::Ingress(o) => all.ingresses.push(o),
                Object::IngressClass(o) => all.classes.push(o),
                Object::Service(o) => all.services.push(o),
                Object::EndpointSlice(o) => all.slices.push(o),
                Object::Secret(o) => all.secrets.push(o),
            }
        }
        all
    }
}

/// A Service port, by number or by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

/// `namespace/service:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: PortRef,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// The controller's identity and fallbacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// `spec.controller` of IngressClasses that are ours.
    pub controller: String,
    /// Our class name (legacy annotation, and `ingressClassName` without an IngressClass).
    pub ingress_class: String,
    /// Take Ingresses that name no class at all.
    pub watch_without_class: bool,
    /// The controller's default backend, used when nothing else matches.
    pub default_backend: Option<ServiceRef>,
    /// Certificates and HTTPS redirects (see `certs`).
    pub tls: super::certs::TlsOptions,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            controller: "sluice.dev/ingress-controller".to_string(),
            ingress_class: "sluice".to_string(),
            watch_without_class: false,
            default_backend: None,
            tls: super::certs::TlsOptions::default(),
        }
    }
}

/// Something in the input that was not honoured as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// e.g. `Ingress shop/web`.
    pub object: String,
    /// e.g. `spec.rules[0].http.paths[1].path`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// The compiler's output.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub snapshot: Snapshot,
    pub diagnostics: Vec<Diagnostic>,
}

fn meta_name(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// Compiles `objects` into snapshot `version`.
pub fn compile(objects: &Objects, opts: &CompileOptions, version: u64) -> Compiled {
    let mut c = Compiler {
        services: objects
            .services
            .iter()
            .map(|s| (meta_name(&s.metadata), &**s))
            .collect(),
        slices: index_slices(&objects.slices),
        seen: HashMap::new(),
        backend_ids: HashMap::new(),
        backends: Vec::new(),
        diagnostics: Vec::new(),
    };

    // Our IngressClasses by name, with whether one of that name is marked the default.
    let mut our_classes: BTreeMap<&str, bool> = BTreeMap::new();
    for class in &objects.classes {
        let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
        let Some(name) = class.metadata.name.as_deref() else {
            continue;
        };
        if controller != Some(opts.controller.as_str()) {
            continue;
        }
        let is_default = class
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
            .is_some_and(|v| v == "true");
        *our_classes.entry(name).or_default() |= is_default;
    }
    let default_class_is_ours = our_classes.values().any(|d| *d);
    let class_exists = |name: &str| {
        objects
            .classes
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(name))
    };

    // Oldest first: that order decides conflicts, and makes the output independent of the
    // order objects arrived in.
    let mut ingresses: Vec<&Ingress> = objects.ingresses.iter().map(|i| &**i).collect();
    ingresses.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| meta_name(&a.metadata).cmp(&meta_name(&b.metadata)))
    });

    let mut table = RouteTableBuilder::default();
    // Rule tag → the Ingress that added it, for conflict reports.
    let mut owners: Vec<String> = Vec::new();
    let mut fallback_set = false;
    let mut ours_tls: Vec<&Ingress> = Vec::new();

    for ing in ingresses {
        let (ns, name) = meta_name(&ing.metadata);
        let object = format!("Ingress {ns}/{name}");
        let spec = ing.spec.as_ref();
        let field_class = spec.and_then(|s| s.ingress_class_name.as_deref());
        let annotation_class = ing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .map(String::as_str);
        let field_ours = field_class.map(|class| {
            our_classes.contains_key(class) || (!class_exists(class) && class == opts.ingress_class)
        });
        let annotation_ours = annotation_class.map(|class| class == opts.ingress_class);
        let ours = match (field_ours, annotation_ours) {
            (Some(f), Some(a)) => {
                if f != a {
                    c.diag(
                        &object,
                        "metadata.annotations[kubernetes.io/ingress.class]",
                        "disagrees with spec.ingressClassName; spec.ingressClassName wins",
                    );
                }
                f
            }
            (Some(f), None) => f,
            (None, Some(a)) => a,
            (None, None) => default_class_is_ours || opts.watch_without_class,
        };
        if !ours {
            continue;
        }
        ours_tls.push(ing);
        let Some(spec) = spec else {
            continue;
        };
        let tag = owners.len() as u32;
        owners.push(object.clone());

        let mut own_hosts: Vec<String> = Vec::new();
        for (i, rule) in spec.rules.iter().flatten().enumerate() {
            let host = match rule.host.as_deref() {
                None | Some("") => None,
                Some(h) => {
                    if let Err(why) = check_host(h) {
                        c.diag(&object, &format!("spec.rules[{i}].host"), why);
                        continue;
                    }
                    Some(h.to_ascii_lowercase())
                }
            };
            let Some(http) = &rule.http else {
                continue;
            };
            for (j, p) in http.paths.iter().enumerate() {
                let field = || format!("spec.rules[{i}].http.paths[{j}]");
                let kind = match p.path_type.as_str() {
                    "Exact" => PathKind::Exact,
                    "Prefix" | "ImplementationSpecific" => PathKind::Prefix,
                    other => {
                        c.diag(
                            &object,
                            &format!("{}.pathType", field()),
                            format!("unknown path type {other:?}"),
                        );
                        continue;
                    }
                };
                let path = p.path.as_deref().unwrap_or("/");
                if !path.starts_with('/') {
                    c.diag(&object, &format!("{}.path", field()), "must start with '/'");
                    continue;
                }
                let backend_field = || format!("{}.backend", field());
                let Some(backend) = c.backend(ns, &p.backend, &object, &backend_field) else {
                    continue;
                };
                if let Err(first) = table.add_tagged(host.as_deref(), path, kind, backend, tag) {
                    let owner = owners.get(first as usize).cloned().unwrap_or_default();
                    let shown = host.as_deref().unwrap_or("*");
                    c.diag(
                        &object,
                        &format!("{}.path", field()),
                        format!("{shown} {path} is already routed by {owner} (older); ignored"),
                    );
                }
            }
            if let Some(h) = host
                && !own_hosts.contains(&h)
            {
                own_hosts.push(h);
            }
        }

        if let Some(default) = &spec.default_backend
            && let Some(backend) =
                c.backend(ns, default, &object, &|| "spec.defaultBackend".to_string())
        {
            for host in &own_hosts {
                table.host_default(host, backend);
            }
            if !fallback_set {
                table.fallback(backend);
                fallback_set = true;
            }
        }
    }

    if let Some(default) = &opts.default_backend {
        let backend = c.service_backend(default, "controller", "--default-backend");
        table.fallback(backend);
    }

    let (certs, cert_diagnostics) = super::certs::build(
        &ours_tls,
        &objects.secrets,
        &opts.tls,
        super::certs::wall_clock(),
    );
    let mut diagnostics = c.diagnostics;
    diagnostics.extend(cert_diagnostics);
    diagnostics.sort();
    diagnostics.dedup();
    Compiled {
        snapshot: Snapshot::new(version, table.build(), c.backends).with_certs(certs),
        diagnostics,
    }
}

/// A rule host: a DNS name (any case), optionally `*.` followed by one; never an IP address.
pub(crate) fn check_host(host: &str) -> Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.parse::<IpAddr>().is_ok() {
        return Err("must be a DNS name, not an IP address");
    }
    if name.is_empty() || name.len() > 253 {
        return Err("invalid host name length");
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("invalid host name (wildcards are allowed only as a leading '*.' label)");
        }
    }
    Ok(())
}

/// EndpointSlices by (namespace, service name).
fn index_slices(slices: &[Arc<EndpointSlice>]) -> HashMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut index: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = slice.metadata.namespace.as_deref().unwrap_or("default");
        index.entry((ns, service.as_str())).or_default().push(slice);
    }
    index
}

/// A backend reference as an Ingress writes it, borrowed: namespace, service, port number,
/// port name.
type BorrowedRef<'a> = (&'a str, &'a str, Option<i32>, Option<&'a str>);

struct Compiler<'a> {
    services: HashMap<(&'a str, &'a str), &'a Service>,
    /// Backends already resolved, by the reference as written (no allocation to look up).
    seen: HashMap<BorrowedRef<'a>, BackendId>,
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    backend_ids: HashMap<ServiceRef, BackendId>,
    backends: Vec<Backend>,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Compiler<'a> {
    fn diag(&mut self, object: &str, field: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            object: object.to_string(),
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// The backend of an Ingress path or default, or `None` (with a diagnostic) when it
    /// names something we cannot route to at all.
    fn backend(
        &mut self,
        namespace: &'a str,
        backend: &'a IngressBackend,
        object: &str,
        field: &dyn Fn() -> String,
    ) -> Option<BackendId> {
        if let Some(service) = &backend.service
            && backend.resource.is_none()
        {
            let port = service.port.as_ref();
            let key = (
                namespace,
                service.name.as_str(),
                port.and_then(|p| p.number),
                port.and_then(|p| p.name.as_deref()),
            );
            if let Some(id) = self.seen.get(&key) {
                return Some(*id);
            }
            let id = self.resolve(namespace, backend, object, field)?;
            self.seen.insert(key, id);
            return Some(id);
        }
        self.resolve(namespace, backend, object, field)
    }

    fn resolve(
        &mut self,
        namespace: &str,
        backend: &IngressBackend,
        object: &str,
        field: &dyn Fn() -> String,
    ) -> Option<BackendId> {
        let field = field();
        if backend.resource.is_some() {
            self.diag(
                object,
                &format!("{field}.resource"),
                "resource backends are not supported",
            );
            return None;
        }
        let Some(service) = &backend.service else {
            self.diag(object, &format!("{field}.service"), "missing");
            return None;
        };
        if service.name.is_empty() {
            self.diag(object, &format!("{field}.service.name"), "empty");
            return None;
        }
        let port = match service.port.as_ref().map(|p| (p.number, p.name.as_deref())) {
            Some((Some(n), _)) => PortRef::Number(n),
            Some((None, Some(name))) if !name.is_empty() => PortRef::Name(name.to_string()),
            _ => {
                self.diag(
                    object,
                    &format!("{field}.service.port"),
                    "needs a number or a name",
                );
                return None;
            }
        };
        let target = ServiceRef {
            namespace: namespace.to_string(),
            name: service.name.clone(),
            port,
        };
        Some(self.service_backend(&target, object, &format!("{field}.service")))
    }

    /// Resolves a Service port to endpoints (once per distinct reference). Problems are
    /// reported, and the backend then has no endpoints (503).
    fn service_backend(&mut self, target: &ServiceRef, object: &str, field: &str) -> BackendId {
        if let Some(id) = self.backend_ids.get(target) {
            return *id;
        }
        let endpoints = match self.endpoints(target) {
            Ok(endpoints) => endpoints,
            Err(why) => {
                self.diag(object, field, format!("{target}: {why} (answers 503)"));
                Vec::new()
            }
        };
        let id = BackendId(self.backends.len() as u32);
        self.backends.push(Backend {
            name: target.to_string(),
            endpoints,
        });
        self.backend_ids.insert(target.clone(), id);
        id
    }

    fn endpoints(&self, target: &ServiceRef) -> Result<Vec<SocketAddr>, String> {
        let service = self
            .services
            .get(&(target.namespace.as_str(), target.name.as_str()))
            .ok_or("Service not found")?;
        let ports = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_deref())
            .unwrap_or(&[]);
        let port = ports
            .iter()
            .find(|p| match &target.port {
                PortRef::Number(n) => p.port == *n,
                PortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
            })
            .ok_or("the Service has no such port")?;
        // EndpointSlice ports carry the Service port's name ("" and absent are the same).
        let port_name = port.name.as_deref().unwrap_or("");

        let mut ready = Vec::new();
        let mut terminating = Vec::new();
        let slices = self
            .slices
            .get(&(target.namespace.as_str(), target.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for slice in slices {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            let Some(pod_port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for endpoint in slice.endpoints.iter().flatten() {
                let conditions = endpoint.conditions.as_ref();
                let is_ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let is_serving = conditions.and_then(|c| c.serving).unwrap_or(is_ready);
                let is_terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                let bucket = if is_ready && !is_terminating {
                    &mut ready
                } else if is_serving && is_terminating {
                    &mut terminating
                } else {
                    continue;
                };
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        bucket.push(SocketAddr::new(ip, pod_port));
                    }
                }
            }
        }
        // Serving-but-terminating endpoints only when nothing else is left.
        let mut chosen = if ready.is_empty() { terminating } else { ready };
        chosen.sort();
        chosen.dedup();
        Ok(chosen)
    }
}
