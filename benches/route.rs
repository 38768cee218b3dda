//! Route lookup with 10,000 hosts x 10 paths (plus 1,000 wildcard hosts): an exact-host hit
//! deep in the path list, a wildcard hit, and a miss that falls to the default.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::core::route::{BackendId, PathKind, RouteTableBuilder};
use sluice::core::snapshot::Snapshot;

fn snapshot() -> Snapshot {
    let mut t = RouteTableBuilder::default();
    for h in 0..10_000u32 {
        let host = format!("svc-{h}.apps.example.com");
        for p in 0..10u32 {
            let kind = if p % 3 == 0 {
                PathKind::Exact
            } else {
                PathKind::Prefix
            };
            t.add(
                Some(&host),
                &format!("/api/v{p}/resource"),
                kind,
                BackendId(h * 10 + p),
            );
        }
        t.add(Some(&host), "/", PathKind::Prefix, BackendId(h));
    }
    for h in 0..1_000u32 {
        t.add(
            Some(&format!("*.tenant-{h}.example.org")),
            "/",
            PathKind::Prefix,
            BackendId(h),
        );
    }
    t.fallback(BackendId(0));
    Snapshot::new(1, t.build(), Vec::new())
}

fn bench_lookup(c: &mut Criterion) {
    let s = snapshot();
    assert_eq!(s.table.host_count(), 11_000);
    let mut group = c.benchmark_group("route");
    group.bench_function("exact-host-hit", |b| {
        b.iter(|| {
            black_box(s.lookup(
                black_box("svc-7342.apps.example.com"),
                black_box("/api/v8/resource/42"),
            ))
        })
    });
    group.bench_function("exact-host-mixed-case", |b| {
        b.iter(|| {
            black_box(s.lookup(
                black_box("SVC-7342.Apps.Example.com"),
                black_box("/index.html"),
            ))
        })
    });
    group.bench_function("wildcard-hit", |b| {
        b.iter(|| black_box(s.lookup(black_box("shop.tenant-512.example.org"), black_box("/cart"))))
    });
    group.bench_function("miss-to-default", |b| {
        b.iter(|| black_box(s.lookup(black_box("unknown.example.net"), black_box("/"))))
    });
    // The same table after a change to 1,000 hosts: they live in the overlay, which every
    // lookup consults first.
    let changed = {
        let mut t = RouteTableBuilder::default();
        for h in 0..1_000u32 {
            t.add(
                Some(&format!("new-{h}.apps.example.com")),
                "/",
                PathKind::Prefix,
                BackendId(h),
            );
        }
        t.build()
    };
    let changes = (0..1_000u32).map(|h| {
        let host = format!("new-{h}.apps.example.com");
        let routes = changed.host_routes(&host).cloned();
        (host, routes)
    });
    let patched = Snapshot::new(
        2,
        s.table
            .patched(changes, s.table.any_host().clone(), s.table.fallback()),
        Vec::new(),
    );
    assert_eq!(patched.table.overlay_len(), 1_000);
    group.bench_function("overlay/base-host-hit", |b| {
        b.iter(|| {
            black_box(patched.lookup(
                black_box("svc-7342.apps.example.com"),
                black_box("/api/v8/resource/42"),
            ))
        })
    });
    group.bench_function("overlay/changed-host-hit", |b| {
        b.iter(|| black_box(patched.lookup(black_box("new-512.apps.example.com"), black_box("/x"))))
    });
    group.finish();
}

criterion_group!(benches, bench_lookup);
criterion_main!(benches);
