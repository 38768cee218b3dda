//! What is kept of each watched object: only the fields the compiler and the status writer
//! read (no managed fields, no kubectl copy of the whole object, Secret data only when
//! referenced), so a large cluster costs little memory.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    LoadBalancerStatus, Secret, Service, ServicePort, ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::store::{Key, key_of};
use crate::control::compile::SERVICE_NAME_LABEL;

/// Annotation `kubectl apply` stores the whole object in; never read, so never kept.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Metadata the compiler reads: name, namespace, uid, creation time, annotations (without
/// kubectl's copy of the whole object). Labels only when `keep_label` names one.
pub(super) fn strip_meta(meta: ObjectMeta, keep_label: Option<&str>) -> ObjectMeta {
    let annotations = meta.annotations.map(|mut a| {
        a.remove(LAST_APPLIED);
        a
    });
    let labels = keep_label.and_then(|wanted| {
        meta.labels.map(|l| {
            l.into_iter()
                .filter(|(k, _)| k == wanted)
                .collect::<BTreeMap<_, _>>()
        })
    });
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        creation_timestamp: meta.creation_timestamp,
        annotations: annotations.filter(|a| !a.is_empty()),
        labels: labels.filter(|l| !l.is_empty()),
        ..ObjectMeta::default()
    }
}

/// An Ingress keeps its spec and its status (read for status updates, ignored by the
/// compiler and by change detection).
pub(super) fn strip_ingress(ing: Ingress) -> Ingress {
    Ingress {
        metadata: strip_meta(ing.metadata, None),
        spec: ing.spec,
        status: ing.status,
    }
}

pub(super) fn same_ingress(a: &Ingress, b: &Ingress) -> bool {
    a.metadata == b.metadata && a.spec == b.spec
}

pub(super) fn strip_class(class: IngressClass) -> IngressClass {
    IngressClass {
        metadata: strip_meta(class.metadata, None),
        spec: class.spec,
    }
}

/// A Service keeps its ports (name and number) and its LoadBalancer status.
pub(super) fn strip_service(svc: Service) -> Service {
    let spec = svc.spec.map(|s| ServiceSpec {
        ports: s.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    ..ServicePort::default()
                })
                .collect()
        }),
        type_: s.type_,
        ..ServiceSpec::default()
    });
    let status = svc
        .status
        .and_then(|s| s.load_balancer)
        .filter(|lb| lb.ingress.as_ref().is_some_and(|i| !i.is_empty()))
        .map(|lb| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: lb.ingress,
            }),
            ..ServiceStatus::default()
        });
    Service {
        metadata: strip_meta(svc.metadata, None),
        spec,
        status,
    }
}

/// An EndpointSlice keeps its Service label, address type, ports, and per endpoint the
/// addresses and conditions (no topology, hints or pod references).
pub(super) fn strip_slice(slice: EndpointSlice) -> EndpointSlice {
    EndpointSlice {
        metadata: strip_meta(slice.metadata, Some(SERVICE_NAME_LABEL)),
        address_type: slice.address_type,
        ports: slice.ports,
        endpoints: slice.endpoints.map(|eps| {
            eps.into_iter()
                .map(|e| Endpoint {
                    addresses: e.addresses,
                    conditions: e.conditions,
                    ..Endpoint::default()
                })
                .collect()
        }),
    }
}

/// A TLS Secret keeps `tls.crt` and `tls.key` only if one of our Ingresses references it;
/// otherwise only its name is remembered (so a later reference knows it exists).
pub(super) fn strip_secret(secret: Secret, referenced: &BTreeSet<Key>) -> Secret {
    let meta = strip_meta(secret.metadata, None);
    let wanted = referenced.contains(&key_of(&meta));
    let data = if wanted {
        secret.data.map(|d| {
            d.into_iter()
                .filter(|(k, _)| k == "tls.crt" || k == "tls.key")
                .collect::<BTreeMap<String, ByteString>>()
        })
    } else {
        None
    };
    Secret {
        metadata: ObjectMeta {
            annotations: None,
            ..meta
        },
        type_: secret.type_,
        data,
        ..Secret::default()
    }
}
