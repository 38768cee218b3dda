//! `sluice migrate`: reads the Ingresses an ingress-nginx installation serves (from a directory
//! of manifests or from a cluster) and reports, per Ingress, what Sluice would serve (its
//! routes as the real compiler builds them, TLS, the route policy), the fate of every
//! ingress-nginx annotation from the compatibility table (`catalog`), the problems the compiler
//! found, and a summary. Reading is the only I/O; the report is a pure function of the objects.
//!
//! Exit status: [`EXIT_SAME`] when no Ingress would change behaviour, [`EXIT_CHANGES`] when
//! one would (an annotation ignored, or an annotation value rejected), [`EXIT_ERROR`] when the
//! input could not be read (as clap does for usage errors).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;

use super::catalog::{self, Fate};
use super::compile::{self, Classes, CompileOptions, Objects};

/// Nothing would change behaviour.
pub const EXIT_SAME: u8 = 0;
/// At least one Ingress would behave differently under Sluice.
pub const EXIT_CHANGES: u8 = 1;
/// The manifests or the cluster could not be read (clap also exits 2 on usage errors).
pub const EXIT_ERROR: u8 = 2;

/// ingress-nginx's IngressClass controller name.
pub const NGINX_CONTROLLER: &str = "k8s.io/ingress-nginx";

/// How the report is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// What to read and how to print it.
#[derive(Clone, Debug)]
pub struct Options {
    pub manifests: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    /// Only this namespace (cluster source).
    pub namespace: Option<String>,
    /// The class whose Ingresses are read (`spec.ingressClassName` or the legacy annotation).
    pub ingress_class: String,
    /// An IngressClass with this controller also selects its Ingresses.
    pub controller_class: String,
    pub format: Format,
}

/// The whole report (`--format json` prints it as is; the shape is documented in the README).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub ingress_class: String,
    pub controller_class: String,
    pub ingresses: Vec<IngressReport>,
    pub summary: Summary,
}

/// One Ingress of the class.
#[derive(Clone, Debug, Serialize)]
pub struct IngressReport {
    pub namespace: String,
    pub name: String,
    /// The routes Sluice compiles from this Ingress alone, as `sluice check` prints them
    /// (`host path kind -> backend (n endpoints) [policy]`, `tls host -> ...`).
    pub routes: Vec<String>,
    pub rules: Vec<Rule>,
    pub default_backend: Option<String>,
    pub tls: Vec<Tls>,
    /// Every ingress-nginx annotation, with its fate.
    pub annotations: Vec<Annotation>,
    /// What the compiler rejected (other than the ignored annotations above).
    pub problems: Vec<Problem>,
    pub changes_behaviour: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// `*` for a rule without host.
    pub host: String,
    pub paths: Vec<PathRule>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PathRule {
    pub path: String,
    pub path_type: String,
    /// `service:port` (number or name), or `resource:Kind/name`.
    pub backend: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Tls {
    pub hosts: Vec<String>,
    pub secret: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Annotation {
    pub key: String,
    pub value: String,
    /// `supported`, `differs`, `not-yet`, `refused` or `unknown`.
    pub fate: &'static str,
    pub note: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub object: String,
    pub field: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub ingresses: usize,
    pub changes_behaviour: usize,
    /// Annotations by fate, over all Ingresses (every fate present, zero or not).
    pub annotations: BTreeMap<&'static str, usize>,
    /// `namespace/name` of the Ingresses that would change behaviour.
    pub changing: Vec<String>,
}

/// Why the objects to report on could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Manifest files that do not parse, one line each (file, line and field).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Manifests(Vec<super::manifests::ManifestError>),
    #[error("give exactly one of --manifests DIR and --kubeconfig FILE")]
    Source,
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("cannot build the Kubernetes client: {0}")]
    Client(kube::Error),
    #[error("cannot list {what}: {reason}")]
    List { what: &'static str, reason: String },
    #[error("cannot encode the report as JSON: {0}")]
    Json(serde_json::Error),
}

/// Reads and reports: the report as text in the chosen format, and the exit status
/// ([`EXIT_SAME`] or [`EXIT_CHANGES`]). The caller prints it.
pub fn run(opts: &Options) -> Result<(String, u8), MigrateError> {
    let objects = load(opts)?;
    let report = report(&objects, &opts.ingress_class, &opts.controller_class);
    let out = match opts.format {
        Format::Text => text(&report),
        Format::Json => serde_json::to_string_pretty(&report).map_err(MigrateError::Json)? + "\n",
    };
    let status = if report.summary.changes_behaviour > 0 {
        EXIT_CHANGES
    } else {
        EXIT_SAME
    };
    Ok((out, status))
}

fn load(opts: &Options) -> Result<Objects, MigrateError> {
    match (&opts.manifests, &opts.kubeconfig) {
        (Some(dir), None) => {
            let (objects, errors) = super::manifests::load_dir(dir);
            if !errors.is_empty() {
                return Err(MigrateError::Manifests(errors));
            }
            Ok(Objects::from_objects(objects))
        }
        (None, Some(kubeconfig)) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(MigrateError::Runtime)?;
            runtime.block_on(load_cluster(kubeconfig, opts.namespace.as_deref()))
        }
        _ => Err(MigrateError::Source),
    }
}

/// Lists the objects the compiler reads from the cluster `kubeconfig` points at. TLS Secrets
/// that cannot be listed (RBAC) are reported and left out: their hosts show the default
/// certificate.
async fn load_cluster(
    kubeconfig: &std::path::Path,
    namespace: Option<&str>,
) -> Result<Objects, MigrateError> {
    // The client's TLS needs one process-wide rustls provider; ours is the listener's.
    let _ = super::certs::provider().as_ref().clone().install_default();
    let bad_kubeconfig = |reason: String| MigrateError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .map_err(|e| bad_kubeconfig(e.to_string()))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| bad_kubeconfig(e.to_string()))?;
    let client = Client::try_from(config).map_err(MigrateError::Client)?;
    let all = ListParams::default();
    let ingresses: Api<Ingress> = namespaced(&client, namespace);
    let services: Api<Service> = namespaced(&client, namespace);
    let slices: Api<EndpointSlice> = namespaced(&client, namespace);
    let secrets: Api<Secret> = namespaced(&client, namespace);
    let classes: Api<IngressClass> = Api::all(client.clone());
    let list_error = |what: &'static str, e: kube::Error| MigrateError::List {
        what,
        reason: super::watch::api_error(&e),
    };
    let mut objects = Objects {
        ingresses: arcs(
            ingresses
                .list(&all)
                .await
                .map_err(|e| list_error("Ingresses", e))?
                .items,
        ),
        classes: arcs(
            classes
                .list(&all)
                .await
                .map_err(|e| list_error("IngressClasses", e))?
                .items,
        ),
        services: arcs(
            services
                .list(&all)
                .await
                .map_err(|e| list_error("Services", e))?
                .items,
        ),
        slices: arcs(
            slices
                .list(&all)
                .await
                .map_err(|e| list_error("EndpointSlices", e))?
                .items,
        ),
        secrets: Vec::new(),
    };
    let tls = ListParams::default().fields("type=kubernetes.io/tls");
    match secrets.list(&tls).await {
        Ok(list) => objects.secrets = arcs(list.items),
        Err(e) => tracing::warn!(
            "sluice migrate: {}; the report is made without TLS Secrets",
            list_error("TLS Secrets", e)
        ),
    }
    Ok(objects)
}

fn namespaced<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn arcs<T>(items: Vec<T>) -> Vec<Arc<T>> {
    items.into_iter().map(Arc::new).collect()
}

/// The report for the Ingresses of `objects` that class `ingress_class` (or an IngressClass of
/// `controller`) selects, each compiled alone against all Services, EndpointSlices and Secrets
/// (its routes), and all of them together (the conflicts between them).
pub fn report(objects: &Objects, ingress_class: &str, controller: &str) -> Report {
    let opts = CompileOptions {
        controller: controller.to_string(),
        ingress_class: ingress_class.to_string(),
        watch_without_class: false,
        ..CompileOptions::default()
    };
    let classes = Classes::new(&objects.classes, &opts);
    let mut selected: Vec<&Arc<Ingress>> = objects
        .ingresses
        .iter()
        .filter(|i| classes.is_ours(i))
        .collect();
    selected.sort_by_key(|i| key(i));
    // All of them together too: what only shows between Ingresses (the same host and path in
    // two of them: the older wins) is added to each one's problems.
    let together = compile::compile(
        &Objects {
            ingresses: selected.iter().map(|i| Arc::clone(i)).collect(),
            ..objects.clone()
        },
        &opts,
        1,
    );
    let ingresses: Vec<IngressReport> = selected
        .into_iter()
        .map(|ing| {
            let mut r = one(ing, objects, &opts);
            let object = compile::ingress_object(ing);
            for d in together.diagnostics.iter().filter(|d| d.object == object) {
                let known = r
                    .problems
                    .iter()
                    .any(|p| p.field == d.field && p.message == d.message);
                let ignored = r.annotations.iter().any(|a| {
                    a.fate != "supported"
                        && a.fate != "differs"
                        && d.field == format!("metadata.annotations[{}]", a.key)
                });
                if !known && !ignored {
                    r.problems.push(Problem {
                        object: d.object.clone(),
                        field: d.field.clone(),
                        message: d.message.clone(),
                    });
                }
            }
            r
        })
        .collect();
    let mut annotations: BTreeMap<&'static str, usize> =
        Fate::ALL.iter().map(|f| (f.as_str(), 0)).collect();
    for a in ingresses.iter().flat_map(|i| &i.annotations) {
        *annotations.entry(a.fate).or_default() += 1;
    }
    let changing: Vec<String> = ingresses
        .iter()
        .filter(|i| i.changes_behaviour)
        .map(|i| format!("{}/{}", i.namespace, i.name))
        .collect();
    Report {
        ingress_class: ingress_class.to_string(),
        controller_class: controller.to_string(),
        summary: Summary {
            ingresses: ingresses.len(),
            changes_behaviour: changing.len(),
            annotations,
            changing,
        },
        ingresses,
    }
}

fn key(ing: &Ingress) -> (String, String) {
    (
        ing.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        ing.metadata.name.clone().unwrap_or_default(),
    )
}

fn one(ing: &Arc<Ingress>, objects: &Objects, opts: &CompileOptions) -> IngressReport {
    let (namespace, name) = key(ing);
    let alone = Objects {
        ingresses: vec![ing.clone()],
        ..objects.clone()
    };
    let compiled = compile::compile(&alone, opts, 1);
    let routes: Vec<String> = compiled
        .snapshot
        .to_string()
        .lines()
        .filter(|l| !l.starts_with("snapshot version"))
        .map(str::to_string)
        .collect();
    let judged = catalog::judge_all(ing);
    let ignored_fields: Vec<String> = judged
        .iter()
        .filter(|j| j.fate.is_ignored())
        .map(|j| format!("metadata.annotations[{}]", j.key))
        .collect();
    // A canary Ingress compiled alone has no main Ingress: whether it has one shows in the
    // compile of all of them together (added by `report`).
    let canary_alone = |d: &compile::Diagnostic| d.message.contains("no main Ingress routes");
    let problems: Vec<Problem> = compiled
        .diagnostics
        .iter()
        .filter(|d| !ignored_fields.contains(&d.field) && !canary_alone(d))
        .map(|d| Problem {
            object: d.object.clone(),
            field: d.field.clone(),
            message: d.message.clone(),
        })
        .collect();
    let changes_behaviour = !ignored_fields.is_empty()
        || problems
            .iter()
            .any(|p| p.field.starts_with("metadata.annotations["));
    let spec = ing.spec.as_ref();
    let rules = spec
        .iter()
        .flat_map(|s| s.rules.iter().flatten())
        .map(|r| Rule {
            host: r.host.clone().unwrap_or_else(|| "*".to_string()),
            paths: r
                .http
                .iter()
                .flat_map(|h| &h.paths)
                .map(|p| PathRule {
                    path: p.path.clone().unwrap_or_else(|| "/".to_string()),
                    path_type: p.path_type.clone(),
                    backend: backend(&p.backend),
                })
                .collect(),
        })
        .collect();
    let tls = spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .map(|t| Tls {
            hosts: t.hosts.clone().unwrap_or_default(),
            secret: t.secret_name.clone(),
        })
        .collect();
    IngressReport {
        namespace,
        name,
        routes,
        rules,
        default_backend: spec.and_then(|s| s.default_backend.as_ref()).map(backend),
        tls,
        annotations: judged
            .into_iter()
            .map(|j| Annotation {
                key: j.key,
                value: j.value,
                fate: j.fate.as_str(),
                note: j.note,
            })
            .collect(),
        problems,
        changes_behaviour,
    }
}

fn backend(b: &IngressBackend) -> String {
    if let Some(s) = &b.service {
        let port = s.port.as_ref().map_or_else(String::new, |p| {
            p.number
                .map(|n| n.to_string())
                .or_else(|| p.name.clone())
                .unwrap_or_default()
        });
        return format!("{}:{port}", s.name);
    }
    match &b.resource {
        Some(r) => format!("resource:{}/{}", r.kind, r.name),
        None => String::new(),
    }
}

/// A value as the text report shows it: one line, at most 60 characters, quoted.
fn short(value: &str) -> String {
    let first = value.lines().next().unwrap_or("");
    let mut cut: String = first.chars().take(60).collect();
    if cut.len() < value.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// The text report.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sluice migrate: Ingresses of class {:?} (or of an IngressClass with controller {:?})\n",
        r.ingress_class, r.controller_class
    );
    for i in &r.ingresses {
        let verdict = if i.changes_behaviour {
            "CHANGES BEHAVIOUR"
        } else {
            "same behaviour"
        };
        let _ = writeln!(out, "Ingress {}/{}: {verdict}", i.namespace, i.name);
        let _ = writeln!(out, "  serves:");
        if i.routes.is_empty() {
            let _ = writeln!(out, "    (nothing)");
        }
        for route in &i.routes {
            let _ = writeln!(out, "    {route}");
        }
        if !i.annotations.is_empty() {
            let _ = writeln!(out, "  annotations:");
        }
        for a in &i.annotations {
            let _ = writeln!(
                out,
                "    {:<9} {} = {}: {}",
                a.fate,
                a.key,
                short(&a.value),
                a.note
            );
        }
        if !i.problems.is_empty() {
            let _ = writeln!(out, "  rejected:");
        }
        for p in &i.problems {
            let _ = writeln!(out, "    {}: {}: {}", p.object, p.field, p.message);
        }
        out.push('\n');
    }
    let s = &r.summary;
    let counts: Vec<String> = s
        .annotations
        .iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "summary: {} Ingress(es), {} would change behaviour; annotations: {}",
        s.ingresses,
        s.changes_behaviour,
        counts.join(", ")
    );
    for name in &s.changing {
        let _ = writeln!(out, "  changes behaviour: {name}");
    }
    out
}
