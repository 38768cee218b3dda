//! Cost of one pick for each load-balancing picker over a backend of 10 and of 100
//! endpoints: round robin, least_request and ewma (P2C), upstream-hash-by (rendezvous over
//! `$remote_addr`), affinity cookie lookups (`persistent`, `balanced`, and drawing a new
//! `balanced` session key), and a retry's re-pick. Goal: < 100 ns for the common sizes. Also round robin while one endpoint is ejected (outlier ejection).

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::core::route::{Backend, BackendId, RouteTableBuilder};
use sluice::core::snapshot::Snapshot;
use sluice::core::time::Instant;
use sluice::core::upstream::affinity::{Mode, endpoint_id};
use sluice::core::upstream::hash::{HashKey, KeySource};
use sluice::core::upstream::{Balance, Picker};

struct Req {
    ip: IpAddr,
}

impl KeySource for Req {
    fn remote_ip(&self) -> IpAddr {
        self.ip
    }
    fn host(&self) -> &str {
        "app.example.com"
    }
    fn path(&self) -> &str {
        "/api/v1/items"
    }
    fn query(&self) -> Option<&str> {
        None
    }
    fn header(&self, _name: &str) -> Option<&[u8]> {
        None
    }
}

fn snapshot(n: usize) -> Snapshot {
    let endpoints = (0..n)
        .map(|i| SocketAddr::new([10, 1, (i / 250) as u8, (i % 250) as u8 + 1].into(), 8080))
        .collect();
    let backend = Backend {
        name: "default/app:80".into(),
        endpoints,
    };
    Snapshot::new(1, RouteTableBuilder::default().build(), vec![backend])
}

fn bench_pickers(c: &mut Criterion) {
    let now = Instant::from_millis(1_000);
    let req = Req {
        ip: [192, 0, 2, 7].into(),
    };
    let hash = Balance::Hash(HashKey::parse("$remote_addr").unwrap());
    for n in [10, 100] {
        let s = snapshot(n);
        let b = BackendId(0);
        let mut group = c.benchmark_group(format!("pick-{n}"));
        for (name, balance) in [
            ("round_robin", Balance::RoundRobin),
            ("least_request", Balance::LeastRequest),
            ("ewma", Balance::Ewma),
            ("hash_remote_addr", hash.clone()),
        ] {
            let mut picker = Picker::with_offset(1);
            // Some history, as a worker has.
            for ep in &s.backend(b).unwrap().endpoints {
                picker.stats.started(*ep);
                picker
                    .stats
                    .finished(ep, Some(std::time::Duration::from_millis(3)), now);
            }
            group.bench_function(name, |bench| {
                bench.iter(|| black_box(picker.pick_by(&s, b, &balance, &req, black_box(now))))
            });
        }
        let mut picker = Picker::with_offset(1);
        let last = *s.backend(b).unwrap().endpoints.last().unwrap();
        let id = endpoint_id(&last);
        group.bench_function("affinity_cookie_worst_case", |bench| {
            bench.iter(|| black_box(picker.pinned(&s, b, Mode::Persistent, black_box(id), now)))
        });
        let key = picker
            .affinity_value(&s, b, Mode::Balanced, last)
            .expect("a session key");
        group.bench_function("affinity_balanced_cookie", |bench| {
            bench.iter(|| black_box(picker.pinned(&s, b, Mode::Balanced, black_box(key), now)))
        });
        // A new balanced session: drawing a key that lands on the chosen endpoint.
        group.bench_function("affinity_balanced_new_session", |bench| {
            bench.iter(|| black_box(picker.affinity_value(&s, b, Mode::Balanced, black_box(last))))
        });
        let tried = [s.backend(b).unwrap().endpoints[0]];
        group.bench_function("retry_pick_other", |bench| {
            bench.iter(|| black_box(picker.pick_other(&s, b, black_box(&tried), now)))
        });
        let mut ejected = Picker::with_offset(1);
        for _ in 0..5 {
            ejected.outliers.failure(tried[0], now);
        }
        group.bench_function("round_robin_one_ejected", |bench| {
            bench.iter(|| {
                black_box(ejected.pick_by(&s, b, &Balance::RoundRobin, &req, black_box(now)))
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_pickers);
criterion_main!(benches);
