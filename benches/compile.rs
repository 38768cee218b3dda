//! Compiling 10,000 Ingresses (one host and three paths each, 2,000 Services with two
//! EndpointSlices of 3 endpoints): the whole snapshot, from typed objects.

use std::hint::black_box;

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::json;
use sluice::control::compile::{CompileOptions, Objects, compile};

fn objects() -> Objects {
    let mut classes: Vec<IngressClass> = Vec::new();
    let mut services: Vec<Service> = Vec::new();
    let mut slices: Vec<EndpointSlice> = Vec::new();
    let mut ingresses: Vec<Ingress> = Vec::new();
    classes.push(
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "sluice"},
            "spec": {"controller": "sluice.dev/ingress-controller"}
        }))
        .unwrap(),
    );
    for s in 0..2_000 {
        let ns = format!("team-{}", s % 50);
        services.push(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc-{s}"), "namespace": ns},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
            }))
            .unwrap(),
        );
        for part in 0..2 {
            slices.push(
                serde_json::from_value(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("svc-{s}-{part}"), "namespace": ns,
                                 "labels": {"kubernetes.io/service-name": format!("svc-{s}")}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": (0..3).map(|e| json!({
                        "addresses": [format!("10.{}.{}.{}", s / 250, s % 250, part * 3 + e + 1)],
                        "conditions": {"ready": true}
                    })).collect::<Vec<_>>()
                }))
                .unwrap(),
            );
        }
    }
    for i in 0..10_000 {
        let s = i % 2_000;
        ingresses.push(
            serde_json::from_value(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": format!("ing-{i}"), "namespace": format!("team-{}", s % 50),
                             "creationTimestamp": format!("2026-01-01T00:{:02}:{:02}Z", (i / 60) % 60, i % 60)},
                "spec": {
                    "ingressClassName": "sluice",
                    "rules": [{
                        "host": format!("app-{i}.example.com"),
                        "http": {"paths": [
                            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": format!("svc-{s}"), "port": {"number": 80}}}},
                            {"path": "/api", "pathType": "Prefix", "backend": {"service": {"name": format!("svc-{s}"), "port": {"name": "http"}}}},
                            {"path": "/healthz", "pathType": "Exact", "backend": {"service": {"name": format!("svc-{s}"), "port": {"number": 80}}}}
                        ]}
                    }]
                }
            }))
            .unwrap(),
        );
    }
    Objects {
        ingresses: ingresses.into_iter().map(Arc::new).collect(),
        classes: classes.into_iter().map(Arc::new).collect(),
        services: services.into_iter().map(Arc::new).collect(),
        slices: slices.into_iter().map(Arc::new).collect(),
        secrets: Vec::new(),
    }
}

fn bench_compile(c: &mut Criterion) {
    let o = objects();
    let opts = CompileOptions::default();
    let compiled = compile(&o, &opts, 1);
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        &compiled.diagnostics[..3.min(compiled.diagnostics.len())]
    );
    assert_eq!(compiled.snapshot.table.host_count(), 10_000);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("10k-ingresses", |b| {
        b.iter(|| black_box(compile(black_box(&o), &opts, 2)))
    });
    group.finish();
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
