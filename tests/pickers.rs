//! The load-balancing pickers, sans-IO: property tests for consistent hashing (deterministic,
//! order-free, minimal disruption), P2C least-request and peak-EWMA.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use sluice::core::time::Instant;
use sluice::core::upstream::affinity::{self, Mode};
use sluice::core::upstream::balance::{EndpointStats, Rng};
use sluice::core::upstream::hash::{
    BUCKETS, HashKey, KeySource, Part, Prepared, rendezvous, rendezvous_where, subset,
};

fn endpoints(n: usize) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::new([10, 0, (i / 250) as u8, (i % 250) as u8 + 1].into(), 8080))
        .collect()
}

struct Req<'a> {
    ip: IpAddr,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: &'a [(&'a str, &'a str)],
}

impl KeySource for Req<'_> {
    fn remote_ip(&self) -> IpAddr {
        self.ip
    }
    fn host(&self) -> &str {
        self.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }
}

fn req<'a>(path: &'a str, query: Option<&'a str>, headers: &'a [(&'a str, &'a str)]) -> Req<'a> {
    Req {
        ip: "192.0.2.7".parse().unwrap(),
        host: "Shop.Example",
        path,
        query,
        headers,
    }
}

#[test]
fn key_templates_parse_into_typed_parts() {
    let k = HashKey::parse("$host$request_uri").unwrap();
    assert_eq!(k.parts(), [Part::Host, Part::RequestUri]);
    let k = HashKey::parse("user-${arg_id}:$http_x_user_id/$cookie_sid").unwrap();
    assert_eq!(
        k.parts(),
        [
            Part::Text("user-".into()),
            Part::Arg("id".into()),
            Part::Text(":".into()),
            Part::Header("x-user-id".into()),
            Part::Text("/".into()),
            Part::Cookie("sid".into()),
        ]
    );
    for bad in ["", "$nope", "${host", "$http_", "$"] {
        assert!(HashKey::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn keys_read_the_request_as_nginx_variables_do() {
    let h = |t: &str, r: &Req| HashKey::parse(t).unwrap().hash(r);
    let headers = [("X-User-Id", "42"), ("Cookie", "a=1; sid=abc; b=2")];
    let r = req("/p", Some("x=1&id=7"), &headers);
    // Same text, same hash: a template hashes the key nginx would build.
    assert_eq!(h("$request_uri", &r), h("/p?x=1&id=7", &r));
    assert_eq!(h("$uri", &r), h("/p", &r));
    assert_eq!(h("$host", &r), h("shop.example", &r));
    assert_eq!(h("$remote_addr", &r), h("192.0.2.7", &r));
    assert_eq!(h("u$http_x_user_id", &r), h("u42", &r));
    assert_eq!(h("$cookie_sid", &r), h("abc", &r));
    assert_eq!(h("${arg_id}z", &r), h("7z", &r));
    assert_eq!(h("[$cookie_none]", &r), h("[]", &r));
    assert_ne!(h("$binary_remote_addr", &r), h("$remote_addr", &r));
}

/// `n` endpoints in random order (seeded).
fn shuffled(n: usize, seed: u64) -> Vec<SocketAddr> {
    let mut eps = endpoints(n);
    let mut rng = Rng::new(seed);
    for i in (1..eps.len()).rev() {
        eps.swap(i, rng.below(i + 1));
    }
    eps
}

/// Every bucket's winner over `eps` (by address), through a prepared set's table.
fn winners(eps: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut p = Prepared::new(eps);
    (0..=u16::MAX).map(|b| eps[p.winner(b).unwrap()]).collect()
}

proptest! {
    /// Same key and endpoint set → same endpoint, whatever the list order (every worker and
    /// every replica agree).
    #[test]
    fn hashing_is_deterministic_and_order_free(key in any::<u64>(), n in 1usize..40, seed in any::<u64>()) {
        let eps = endpoints(n);
        let chosen = eps[rendezvous(key, &eps).unwrap()];
        let shuffled = shuffled(n, seed);
        prop_assert_eq!(shuffled[rendezvous(key, &shuffled).unwrap()], chosen);
    }

    /// Adding one endpoint to N moves at most about 1/(N+1) of the keys, all to the new one;
    /// removing it moves them back and nothing else.
    #[test]
    fn adding_one_endpoint_moves_about_one_in_n_keys(n in 2usize..30, seed in any::<u64>()) {
        let before = endpoints(n);
        let mut after = before.clone();
        let new = SocketAddr::new([10, 9, 9, 9].into(), 8080);
        after.insert((seed as usize) % (n + 1), new);
        let keys = 4000u64;
        let mut moved = 0u64;
        for k in 0..keys {
            let key = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
            let a = before[rendezvous(key, &before).unwrap()];
            let b = after[rendezvous(key, &after).unwrap()];
            if a != b {
                prop_assert_eq!(b, new, "a key moved between old endpoints");
                moved += 1;
            }
        }
        // The new endpoint wins a share q of the 65,536 buckets, q about p = 1/(n+1) with
        // variance p(1-p)/65,536; each key moves with probability q. So the moved count has
        // mean keys·p and variance keys·p(1-p) + keys²·p(1-p)/65,536; allow five standard
        // deviations.
        let p = 1.0 / (n + 1) as f64;
        let expected = keys as f64 * p;
        let k = keys as f64;
        let sd = (k * p * (1.0 - p) + k * k * p * (1.0 - p) / BUCKETS as f64).sqrt();
        prop_assert!((moved as f64) <= expected + 5.0 * sd, "moved {} of {}, expected ~{}", moved, keys, expected);
        prop_assert!((moved as f64) >= expected - 5.0 * sd, "moved {} of {}, expected ~{}", moved, keys, expected);
    }

    /// The picker's prepared endpoints (hashes computed once per endpoint set, bucket tables
    /// of endpoints and of subset groups from TABLE_MIN of them on) choose exactly what plain
    /// rendezvous hashing and subsets choose, with or without left-out endpoints, cold and from the table.
    #[test]
    fn prepared_hashing_picks_what_rendezvous_picks(key in any::<u64>(), n in prop_oneof![1usize..60, 200usize..300], mask in any::<u64>(), size in 1usize..6) {
        let eps = endpoints(n);
        let mut p = Prepared::new(&eps);
        prop_assert!(p.check(&eps));
        prop_assert_eq!(p.rendezvous(key), rendezvous(key, &eps));
        prop_assert_eq!(p.rendezvous(key), rendezvous(key, &eps));
        let keep = |i: usize| mask >> (i % 64) & 1 == 1;
        for _ in 0..2 {
            prop_assert_eq!(
                p.rendezvous_where(key, keep),
                rendezvous_where(key, &eps, |ep| keep(eps.iter().position(|e| e == ep).unwrap()))
            );
        }
        // Cold, then from the group table; after a size change, and back.
        for size in [size, size % 5 + 1, size] {
            for _ in 0..2 {
                prop_assert_eq!(p.subset(key, size), subset(key, &eps, size));
            }
        }
        prop_assert!(!p.check(&eps[..n - 1]));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Two workers or two replicas with the same endpoints, listed in other orders and with
    /// tables filled by other traffic (one warmed by other keys, one cold), choose the same
    /// endpoint for every key, and the one plain (table-less) rendezvous chooses, with or
    /// without ejected endpoints; on both sides of the table threshold and both table widths.
    #[test]
    fn workers_and_replicas_agree_whatever_their_history(
        n in prop_oneof![1usize..16, 16usize..80, 250usize..300],
        seed in any::<u64>(),
        mask in any::<u64>(),
    ) {
        let a_eps = endpoints(n);
        let b_eps = shuffled(n, seed);
        let mut a = Prepared::new(&a_eps);
        let mut b = Prepared::new(&b_eps);
        // Worker A has served other keys (its table is partly filled), B has not.
        let mut rng = Rng::new(seed ^ 1);
        for _ in 0..5_000 {
            a.rendezvous(rng.next_u64());
        }
        // Ejected by address, so that both orders eject the same endpoints.
        let ejected = |ep: &SocketAddr| match ep.ip() {
            IpAddr::V4(v4) => mask >> (v4.octets()[3] % 64) & 1 == 1,
            IpAddr::V6(_) => false,
        };
        for _ in 0..2_000 {
            let key = rng.next_u64();
            let direct = a_eps[rendezvous(key, &a_eps).unwrap()];
            prop_assert_eq!(a_eps[a.rendezvous(key).unwrap()], direct);
            prop_assert_eq!(b_eps[b.rendezvous(key).unwrap()], direct);
            // The same, asked again (now from both tables).
            prop_assert_eq!(b_eps[b.rendezvous(key).unwrap()], direct);
            let kept = rendezvous_where(key, &a_eps, |ep| !ejected(ep)).map(|i| a_eps[i]);
            prop_assert_eq!(a.rendezvous_where(key, |i| !ejected(&a_eps[i])).map(|i| a_eps[i]), kept);
            prop_assert_eq!(b.rendezvous_where(key, |i| !ejected(&b_eps[i])).map(|i| b_eps[i]), kept);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Over every bucket (so exactly, not by sampling keys), on sets large enough for the
    /// table: adding one endpoint to N moves only buckets to the new one, about 1/(N+1) of
    /// them (Binomial(65,536, 1/(N+1)), five standard deviations); removing one moves only
    /// the buckets it held; ejecting one moves only its buckets, each to its second choice.
    #[test]
    fn bucket_moves_are_minimal(n in 16usize..120, seed in any::<u64>()) {
        let base = shuffled(n, seed);
        let new = SocketAddr::new([10, 9, 9, 9].into(), 8080);
        let mut grown = base.clone();
        grown.insert(seed as usize % (n + 1), new);
        let (w_base, w_grown) = (winners(&base), winners(&grown));
        let mut moved = 0usize;
        for (a, b) in w_base.iter().zip(&w_grown) {
            if a != b {
                prop_assert_eq!(*b, new, "a bucket moved between old endpoints");
                moved += 1;
            }
        }
        let p = 1.0 / (n + 1) as f64;
        let (mean, sd) = (BUCKETS as f64 * p, (BUCKETS as f64 * p * (1.0 - p)).sqrt());
        prop_assert!((moved as f64 - mean).abs() <= 5.0 * sd, "moved {} buckets, expected ~{}", moved, mean);
        // Removing one: only its buckets move.
        let gone = base[seed as usize % n];
        let rest: Vec<SocketAddr> = base.iter().copied().filter(|e| *e != gone).collect();
        let w_rest = winners(&rest);
        // Ejecting it (per worker, the set unchanged): the same as removing it.
        let mut p = Prepared::new(&base);
        for (bucket, (before, after)) in w_base.iter().zip(&w_rest).enumerate() {
            if *before == gone {
                prop_assert_ne!(*after, gone);
            } else {
                prop_assert_eq!(after, before);
            }
            let ejected = p.winner_where(bucket as u16, |i| base[i] != gone);
            prop_assert_eq!(ejected.map(|i| base[i]), Some(*after));
        }
    }
}

proptest! {
    /// P2C least-request never picks the busier of its two draws: with one busiest endpoint
    /// and any idler one, the busiest is never chosen; never out of range.
    #[test]
    fn least_request_prefers_fewer_in_flight(loads in prop::collection::vec(0u32..20, 2..12), seed in any::<u64>()) {
        let eps = endpoints(loads.len());
        let mut stats = EndpointStats::default();
        for (ep, l) in eps.iter().zip(&loads) {
            for _ in 0..*l { stats.started(*ep); }
        }
        let max = *loads.iter().max().unwrap();
        let unique_max = loads.iter().filter(|l| **l == max).count() == 1;
        let mut rng = Rng::new(seed);
        for _ in 0..200 {
            let i = stats.least_request(&eps, &mut rng).unwrap();
            prop_assert!(i < loads.len());
            if unique_max && loads.iter().any(|l| *l < max) {
                prop_assert!(loads[i] < max, "picked the busiest endpoint");
            }
        }
    }
}

#[test]
fn least_request_spreads_and_follows_completions() {
    let eps = endpoints(4);
    let mut stats = EndpointStats::default();
    let mut rng = Rng::new(1);
    // Requests that never finish: P2C keeps the spread within a small margin.
    for _ in 0..400 {
        let i = stats.least_request(&eps, &mut rng).unwrap();
        stats.started(eps[i]);
    }
    let loads: Vec<u32> = eps.iter().map(|e| stats.in_flight(e)).collect();
    let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
    assert!(max - min <= 3, "{loads:?}");
    stats.finished(&eps[2], None, Instant::ZERO);
    assert_eq!(stats.in_flight(&eps[2]), loads[2] - 1);
}

#[test]
fn ewma_avoids_the_slow_endpoint_and_forgets_in_time() {
    let eps = endpoints(3);
    let mut stats = EndpointStats::default();
    let mut now = Instant::from_millis(1_000);
    for (i, ms) in [(0, 10), (1, 500), (2, 12)] {
        stats.started(eps[i]);
        stats.finished(&eps[i], Some(Duration::from_millis(ms)), now);
    }
    let mut rng = Rng::new(7);
    let mut picks = [0u32; 3];
    for _ in 0..300 {
        picks[stats.ewma(&eps, &mut rng, now).unwrap()] += 1;
    }
    // The slow one only wins a draw against itself, which P2C never makes.
    assert_eq!(picks[1], 0, "{picks:?}");
    assert!(picks[0] > 0 && picks[2] > 0, "{picks:?}");
    // Peak: one slow answer counts at once.
    stats.started(eps[0]);
    stats.finished(&eps[0], Some(Duration::from_millis(900)), now);
    assert!(stats.cost(&eps[0], now) > stats.cost(&eps[1], now));
    // Idle for a long time: every cost decays towards zero (the endpoint is tried again).
    now = now + Duration::from_secs(120);
    assert!(stats.cost(&eps[0], now) < 1_000_000.0);
    // Endpoints gone from the snapshot are forgotten.
    stats.retain(|ep| *ep != eps[0]);
    assert_eq!(stats.cost(&eps[0], now), 0.0);
    assert_eq!(stats.len(), 2);
}

/// Where the cookie value `id` pins, for `mode`, over `eps` (no ejection).
fn pinned_by(mode: Mode, id: u64, eps: &[SocketAddr]) -> Option<SocketAddr> {
    match mode {
        Mode::Persistent => affinity::find(eps, id).map(|i| eps[i]),
        Mode::Balanced => rendezvous(id, eps).map(|i| eps[i]),
    }
}

/// Sessions spread over `eps` as the balancer would (round robin), one cookie value each,
/// drawn as one worker draws them (one prepared set, its table filling as sessions start).
fn sessions(mode: Mode, eps: &[SocketAddr], n: usize, seed: u64) -> Vec<(u64, SocketAddr)> {
    let mut rng = Rng::new(seed);
    let mut prepared = Prepared::new(eps);
    (0..n)
        .map(|s| {
            let target = s % eps.len();
            let id = match mode {
                Mode::Persistent => affinity::endpoint_id(&eps[target]),
                Mode::Balanced => {
                    affinity::session_key(&mut prepared, target, || rng.next_u64()).expect("a key")
                }
            };
            (id, eps[target])
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// `affinity-mode`: a new session's cookie lands on the chosen endpoint in both modes;
    /// removing an endpoint moves only its sessions; adding endpoints moves none in
    /// `persistent` and about added/total of them in `balanced` (the new pods' share).
    #[test]
    fn affinity_modes_move_sessions_as_ingress_nginx_describes(n in prop_oneof![2usize..12, 16usize..40], seed: u64) {
        let eps = endpoints(n);
        for mode in [Mode::Persistent, Mode::Balanced] {
            let all = sessions(mode, &eps, 600, seed);
            for (id, ep) in &all {
                prop_assert_eq!(pinned_by(mode, *id, &eps), Some(*ep));
            }
            // One endpoint leaves: exactly its sessions move.
            let gone = eps[seed as usize % n];
            let rest: Vec<SocketAddr> = eps.iter().copied().filter(|e| *e != gone).collect();
            for (id, ep) in &all {
                let now = pinned_by(mode, *id, &rest);
                if *ep == gone {
                    prop_assert_ne!(now, Some(gone));
                } else {
                    prop_assert_eq!(now, Some(*ep));
                }
            }
            // Scale up by half (at least one).
            let added = (n / 2).max(1);
            let grown = endpoints(n + added);
            let moved = all
                .iter()
                .filter(|(id, ep)| pinned_by(mode, *id, &grown) != Some(*ep))
                .count();
            match mode {
                Mode::Persistent => prop_assert_eq!(moved, 0),
                Mode::Balanced => {
                    // Every moved session went to a new endpoint.
                    for (id, ep) in &all {
                        let to = pinned_by(mode, *id, &grown).unwrap();
                        prop_assert!(to == *ep || !eps.contains(&to));
                    }
                    let share = added as f64 / (n + added) as f64;
                    let got = moved as f64 / all.len() as f64;
                    prop_assert!((got - share).abs() < 0.1, "moved {got}, share {share}");
                }
            }
        }
    }
}

/// A request whose key (`$remote_addr`) is a client address.
fn client(i: u32) -> Req<'static> {
    Req {
        ip: IpAddr::from((0xc0a8_0000_u32 + i).to_be_bytes()),
        host: "h",
        path: "/",
        query: None,
        headers: &[],
    }
}

/// The worker's picker on a backend large enough for the bucket table (40 endpoints), as the
/// request path calls it: `upstream-hash-by` picks what plain rendezvous picks on another
/// worker; an ejected endpoint's keys go to their second choice and the others stay; bounded
/// load moves only the overloaded endpoint's keys; a `balanced` cookie drawn on one worker
/// pins to its endpoint on another, and follows its key's second choice while that endpoint
/// is ejected.
#[test]
fn the_picker_hashes_through_its_table_as_rendezvous_does() {
    use sluice::core::route::{Backend, BackendId, RouteTableBuilder};
    use sluice::core::snapshot::Snapshot;
    use sluice::core::upstream::{Balance, Picker};
    let eps = endpoints(40);
    let backend = Backend {
        name: "default/app:80".into(),
        endpoints: eps.clone(),
    };
    let s = Snapshot::new(1, RouteTableBuilder::default().build(), vec![backend]);
    let b = BackendId(0);
    let now = Instant::from_millis(1_000);
    let key = HashKey::parse("$remote_addr").unwrap();
    let hash = Balance::Hash(key.clone());
    let (mut w1, mut w2) = (Picker::with_offset(0), Picker::with_offset(1));
    w1.reset_for(&s);
    w2.reset_for(&s);
    let clients: Vec<Req> = (0..3_000).map(client).collect();
    let first: Vec<SocketAddr> = clients
        .iter()
        .map(|r| eps[rendezvous(key.hash(r), &eps).unwrap()])
        .collect();
    for _ in 0..2 {
        for (r, ep) in clients.iter().zip(&first) {
            assert_eq!(w1.pick_by(&s, b, &hash, r, now), Some(*ep));
        }
    }
    // Eject one endpoint on worker 1.
    let out = eps[7];
    for _ in 0..5 {
        w1.outliers.failure(out, now);
    }
    let mut moved = 0;
    for (r, ep) in clients.iter().zip(&first) {
        let got = w1.pick_by(&s, b, &hash, r, now).unwrap();
        if *ep == out {
            let second = rendezvous_where(key.hash(r), &eps, |e| *e != out);
            assert_eq!(Some(got), second.map(|i| eps[i]));
            moved += 1;
        } else {
            assert_eq!(got, *ep, "a key of a healthy endpoint moved");
        }
    }
    assert!(moved > 20, "{moved} keys were on the ejected endpoint");
    // Bounded load on worker 2: only the loaded endpoint's keys move, to their second choice.
    let bounded = Balance::HashBounded(key.clone(), 125);
    // Ten in flight on eps[3], two on each of eps[10..40]: the bound is
    // ceil(1.25 × 71 / 40) = 3, so only eps[3] is over it (loaded endpoints under the bound
    // keep their keys, idle ones too).
    for _ in 0..10 {
        w2.stats.started(eps[3]);
    }
    for ep in &eps[10..] {
        w2.stats.started(*ep);
        w2.stats.started(*ep);
    }
    for (r, ep) in clients.iter().zip(&first) {
        let got = w2.pick_by(&s, b, &bounded, r, now).unwrap();
        if *ep == eps[3] {
            let second = rendezvous_where(key.hash(r), &eps, |e| *e != eps[3]);
            assert_eq!(Some(got), second.map(|i| eps[i]));
        } else {
            assert_eq!(got, *ep);
        }
    }
    // Balanced cookies: drawn on worker 2, read on worker 1 (and by plain rendezvous).
    for target in [eps[0], eps[7], eps[39]] {
        for _ in 0..20 {
            let id = w2.affinity_value(&s, b, Mode::Balanced, target).unwrap();
            assert_eq!(eps[rendezvous(id, &eps).unwrap()], target);
            assert_eq!(w2.pinned(&s, b, Mode::Balanced, id, now), Some(target));
            let on_w1 = w1.pinned(&s, b, Mode::Balanced, id, now).unwrap();
            if target == out {
                let second = rendezvous_where(id, &eps, |e| *e != out).unwrap();
                assert_eq!(on_w1, eps[second]);
            } else {
                assert_eq!(on_w1, target);
            }
        }
    }
}

/// Bounded-load hashing reads each endpoint's requests in flight by its index in the
/// backend: the counts follow requests that start and end after the first pick, and a
/// snapshot swap that moves every endpoint's index (a new endpoint sorted first) counts them
/// again at their new places.
#[test]
fn bounded_load_follows_requests_and_index_shifts() {
    use sluice::core::route::{Backend, BackendId, RouteTableBuilder};
    use sluice::core::snapshot::Snapshot;
    use sluice::core::upstream::{Balance, Picker};
    let eps = endpoints(40);
    let mut eps2 = vec![SocketAddr::new([9, 0, 0, 1].into(), 8080)];
    eps2.extend_from_slice(&eps);
    let snapshot = |version, endpoints: &[SocketAddr]| {
        let backend = Backend {
            name: "default/app:80".into(),
            endpoints: endpoints.to_vec(),
        };
        Snapshot::new(version, RouteTableBuilder::default().build(), vec![backend])
    };
    let (s1, s2) = (snapshot(1, &eps), snapshot(2, &eps2));
    let b = BackendId(0);
    let now = Instant::from_millis(1_000);
    let key = HashKey::parse("$remote_addr").unwrap();
    let bounded = Balance::HashBounded(key.clone(), 125);
    let x = eps[3];
    // A client whose first choice is `x` before and after the new endpoint comes.
    let r = (0..10_000)
        .map(client)
        .find(|r| {
            let k = key.hash(r);
            eps[rendezvous(k, &eps).unwrap()] == x && eps2[rendezvous(k, &eps2).unwrap()] == x
        })
        .expect("a client of x");
    let second =
        |set: &[SocketAddr]| set[rendezvous_where(key.hash(&r), set, |e| *e != x).unwrap()];
    let mut w = Picker::with_offset(0);
    w.reset_for(&s1);
    assert_eq!(w.pick_by(&s1, b, &bounded, &r, now), Some(x));
    // Two in flight on each of eps[10..]; ten on x: the bound is ceil(1.25 × 71 / 40) = 3.
    for ep in &eps[10..] {
        w.stats.started(*ep);
        w.stats.started(*ep);
    }
    for _ in 0..10 {
        w.stats.started(x);
    }
    assert_eq!(w.pick_by(&s1, b, &bounded, &r, now), Some(second(&eps)));
    // x's requests end: its keys come back.
    for _ in 0..10 {
        w.stats.finished(&x, None, now);
    }
    assert_eq!(w.pick_by(&s1, b, &bounded, &r, now), Some(x));
    for _ in 0..10 {
        w.stats.started(x);
    }
    assert_eq!(w.pick_by(&s1, b, &bounded, &r, now), Some(second(&eps)));
    // The swap: x is now at index 4, and still over its bound (ceil(1.25 × 71 / 41) = 3).
    w.reset_for(&s2);
    assert_eq!(w.pick_by(&s2, b, &bounded, &r, now), Some(second(&eps2)));
    for _ in 0..10 {
        w.stats.finished(&x, None, now);
    }
    assert_eq!(w.pick_by(&s2, b, &bounded, &r, now), Some(x));
}
