//! Which Ingresses are ours: the one implementation of the class rules, used by the compiler
//! and by the parts of the control plane that act per Ingress without compiling (status
//! updates, which TLS Secrets to cache). Pure functions over the objects.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use super::compile::CompileOptions;

/// Annotation marking the cluster's default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// The legacy class annotation, still widely used.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// The class facts an Ingress is judged against, computed once per set of IngressClasses.
pub struct Classes<'a> {
    opts: &'a CompileOptions,
    /// Names of IngressClasses whose controller is ours.
    ours: BTreeSet<&'a str>,
    /// Names of every IngressClass.
    all: BTreeSet<&'a str>,
    /// One of our IngressClasses carries the default-class annotation.
    default_is_ours: bool,
}

impl<'a> Classes<'a> {
    pub fn new(classes: &'a [Arc<IngressClass>], opts: &'a CompileOptions) -> Classes<'a> {
        let mut c = Classes {
            opts,
            ours: BTreeSet::new(),
            all: BTreeSet::new(),
            default_is_ours: false,
        };
        for class in classes {
            let Some(name) = class.metadata.name.as_deref() else {
                continue;
            };
            c.all.insert(name);
            let controller = class.spec.as_ref().and_then(|s| s.controller.as_deref());
            if controller != Some(opts.controller.as_str()) {
                continue;
            }
            c.ours.insert(name);
            c.default_is_ours |= class
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true");
        }
        c
    }

    /// True when this controller serves `ing` (see [`Classes::verdict`]).
    pub fn is_ours(&self, ing: &Ingress) -> bool {
        self.verdict(ing).0
    }

    /// Whether this controller serves `ing`: `spec.ingressClassName` first (one of our
    /// classes, or a class that does not exist but has our configured name), then the legacy
    /// annotation, then the default class or `watch_without_class`. With a diagnostic when
    /// the field and the annotation disagree.
    pub fn verdict(&self, ing: &Ingress) -> (bool, Option<&'static str>) {
        let opts = self.opts;
        let field_class = ing
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref());
        let annotation_class = ing
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
            .map(String::as_str);
        let field_ours = field_class.map(|class| {
            self.ours.contains(class) || (!self.all.contains(class) && class == opts.ingress_class)
        });
        let annotation_ours = annotation_class.map(|class| class == opts.ingress_class);
        match (field_ours, annotation_ours) {
            (Some(f), Some(a)) if f != a => (
                f,
                Some("disagrees with spec.ingressClassName; spec.ingressClassName wins"),
            ),
            (Some(f), _) => (f, None),
            (None, Some(a)) => (a, None),
            (None, None) => (self.default_is_ours || opts.watch_without_class, None),
        }
    }
}

/// `(namespace, name)` of every Secret that `ing` names in `spec.tls`.
pub fn tls_secrets(ing: &Ingress) -> impl Iterator<Item = (String, String)> + '_ {
    let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
    ing.spec
        .iter()
        .flat_map(|s| s.tls.iter().flatten())
        .filter_map(|t| t.secret_name.as_deref())
        .filter(|n| !n.is_empty())
        .map(move |n| (ns.to_string(), n.to_string()))
}
