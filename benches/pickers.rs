//! Cost of one pick for each load-balancing picker over a backend of 10 and of 100
//! endpoints: round robin, least_request and ewma (P2C), upstream-hash-by (rendezvous by
//! bucket over `$remote_addr`, keys from 10,000 client addresses in turn, so that the bucket
//! table is measured warm and honestly; with bounded load; and the first pick on a new
//! endpoint set, cold), upstream-hash-by-subset,
//! affinity cookie lookups (`persistent`, `balanced` over 10,000 session keys, and drawing a
//! new `balanced` session key), a retry's re-pick, and round robin while one endpoint is
//! ejected (outlier ejection). Goal: < 100 ns for the common sizes.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
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

/// How many distinct clients (and balanced sessions) the hashed cases cycle through.
const CLIENTS: u32 = 10_000;

fn bench_pickers(c: &mut Criterion) {
    let now = Instant::from_millis(1_000);
    let req = Req {
        ip: [192, 0, 2, 7].into(),
    };
    // 10,000 client addresses (100.64.0.0/10 and on), as many distinct keys.
    let clients: Vec<Req> = (0..CLIENTS)
        .map(|i| Req {
            ip: IpAddr::from((0x6440_0000_u32 + i * 7).to_be_bytes()),
        })
        .collect();
    let hash = Balance::Hash(HashKey::parse("$remote_addr").unwrap());
    for n in [10, 100] {
        let s = snapshot(n);
        let b = BackendId(0);
        let mut group = c.benchmark_group(format!("pick-{n}"));
        for (name, balance) in [
            ("round_robin", Balance::RoundRobin),
            ("least_request", Balance::LeastRequest),
            ("ewma", Balance::Ewma),
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
        // upstream-hash-by: the clients in turn, after one pass (the table filled as a
        // worker's is after its first requests).
        let mut picker = Picker::with_offset(1);
        for r in &clients {
            black_box(picker.pick_by(&s, b, &hash, r, now));
        }
        let mut next = 0;
        group.bench_function("hash_remote_addr", |bench| {
            bench.iter(|| {
                next = (next + 1) % clients.len();
                black_box(picker.pick_by(&s, b, &hash, &clients[next], black_box(now)))
            })
        });
        // With bounded load (1.25), one request in flight on every other endpoint (each at
        // its bound): a key whose endpoint is idle costs the table look-up; the others also
        // read the backend's running in-flight total and walk the bucket's ranked choices.
        for ep in s.backend(b).unwrap().endpoints.iter().step_by(2) {
            picker.stats.started(*ep);
        }
        let bounded = Balance::HashBounded(HashKey::parse("$remote_addr").unwrap(), 125);
        group.bench_function("hash_bounded_remote_addr", |bench| {
            bench.iter(|| {
                next = (next + 1) % clients.len();
                black_box(picker.pick_by(&s, b, &bounded, &clients[next], black_box(now)))
            })
        });
        // upstream-hash-by-subset (groups of 3, ingress-nginx's default size): the group by
        // rendezvous over the groups' first endpoints, then a random endpoint of it.
        let subset = Balance::HashSubset(HashKey::parse("$remote_addr").unwrap(), 3);
        group.bench_function("hash_subset_remote_addr", |bench| {
            bench.iter(|| {
                next = (next + 1) % clients.len();
                black_box(picker.pick_by(&s, b, &subset, &clients[next], black_box(now)))
            })
        });
        // The first hashed pick on a new endpoint set: endpoint hashes, the table's
        // allocation and one bucket scored over every endpoint.
        group.bench_function("hash_remote_addr_cold", |bench| {
            bench.iter_batched_ref(
                || Picker::with_offset(1),
                |fresh| black_box(fresh.pick_by(&s, b, &hash, &req, black_box(now))),
                BatchSize::SmallInput,
            )
        });
        let mut picker = Picker::with_offset(1);
        let last = *s.backend(b).unwrap().endpoints.last().unwrap();
        let id = endpoint_id(&last);
        group.bench_function("affinity_cookie_worst_case", |bench| {
            bench.iter(|| black_box(picker.pinned(&s, b, Mode::Persistent, black_box(id), now)))
        });
        // 10,000 balanced sessions spread over the endpoints, read in turn.
        let eps = s.backend(b).unwrap().endpoints.clone();
        let keys: Vec<u64> = (0..CLIENTS as usize)
            .map(|i| {
                let target = eps[i % eps.len()];
                picker
                    .affinity_value(&s, b, Mode::Balanced, target)
                    .expect("a session key")
            })
            .collect();
        let mut next = 0;
        group.bench_function("affinity_balanced_cookie", |bench| {
            bench.iter(|| {
                next = (next + 1) % keys.len();
                black_box(picker.pinned(&s, b, Mode::Balanced, black_box(keys[next]), now))
            })
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
