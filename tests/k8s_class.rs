//! `control::class` (used for status and Secret caching) decides "ours" exactly as the
//! compiler does, over every combination of class field, legacy annotation, IngressClasses
//! present, default-class annotation and `watch_without_class`.

use std::sync::Arc;

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::json;
use sluice::control::class::Classes;
use sluice::control::compile::{CompileOptions, Objects, compile};

fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
    let mut c = json!({"metadata": {"name": name}, "spec": {"controller": controller}});
    if default {
        c["metadata"]["annotations"] =
            json!({"ingressclass.kubernetes.io/is-default-class": "true"});
    }
    Arc::new(serde_json::from_value(c).unwrap())
}

#[test]
fn class_membership_matches_the_compiler() {
    let fields = [None, Some("sluice"), Some("nginx"), Some("missing")];
    let annotations = [None, Some("sluice"), Some("nginx")];
    let class_sets: Vec<Vec<Arc<IngressClass>>> = vec![
        vec![],
        vec![class("sluice", "sluice.dev/ingress-controller", false)],
        vec![class("sluice", "sluice.dev/ingress-controller", true)],
        vec![
            class("sluice", "sluice.dev/ingress-controller", false),
            class("nginx", "k8s.io/ingress-nginx", true),
        ],
        vec![class("sluice", "k8s.io/ingress-nginx", false)],
        vec![class("nginx", "sluice.dev/ingress-controller", false)],
    ];
    let mut checked = 0;
    let mut ours_seen = 0;
    for field in fields {
        for annotation in annotations {
            for classes in &class_sets {
                for without_class in [false, true] {
                    let mut ing = json!({"metadata": {"name": "i", "namespace": "default"},
                        "spec": {"rules": [{"host": "h.test", "http": {"paths": [{"path": "/",
                            "pathType": "Prefix", "backend": {"service": {"name": "s",
                            "port": {"number": 80}}}}]}}]}});
                    if let Some(f) = field {
                        ing["spec"]["ingressClassName"] = json!(f);
                    }
                    if let Some(a) = annotation {
                        ing["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class": a});
                    }
                    let ing: Arc<Ingress> = Arc::new(serde_json::from_value(ing).unwrap());
                    let opts = CompileOptions {
                        watch_without_class: without_class,
                        ..CompileOptions::default()
                    };
                    let objects = Objects {
                        ingresses: vec![ing.clone()],
                        classes: classes.clone(),
                        ..Objects::default()
                    };
                    let routed = compile(&objects, &opts, 1)
                        .snapshot
                        .lookup("h.test", "/")
                        .is_some();
                    let ours = Classes::new(classes, &opts).is_ours(&ing);
                    assert_eq!(
                        ours,
                        routed,
                        "field {field:?} annotation {annotation:?} classes {:?} without_class {without_class}",
                        classes
                            .iter()
                            .map(|c| (&c.metadata.name, &c.spec))
                            .collect::<Vec<_>>()
                    );
                    checked += 1;
                    ours_seen += usize::from(ours);
                }
            }
        }
    }
    assert_eq!(checked, 4 * 3 * 6 * 2);
    assert!(
        ours_seen > 10 && ours_seen < checked - 10,
        "both outcomes covered"
    );
}
