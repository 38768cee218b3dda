//! The load-balancing pickers, sans-IO: property tests for consistent hashing (deterministic,
//! order-free, minimal disruption), P2C least-request and peak-EWMA.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use sluice::core::time::Instant;
use sluice::core::upstream::affinity::{self, Mode};
use sluice::core::upstream::balance::{EndpointStats, Rng};
use sluice::core::upstream::hash::{
    HashKey, KeySource, Part, Prepared, rendezvous, rendezvous_where, subset,
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

proptest! {
    /// Same key and endpoint set → same endpoint, whatever the list order (every worker and
    /// every replica agree).
    #[test]
    fn hashing_is_deterministic_and_order_free(key in any::<u64>(), n in 1usize..40, seed in any::<u64>()) {
        let eps = endpoints(n);
        let chosen = eps[rendezvous(key, &eps).unwrap()];
        let mut shuffled = eps.clone();
        let mut rng = Rng::new(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i + 1));
        }
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
        let expected = keys as f64 / (n + 1) as f64;
        // Binomial: mean keys/(n+1); allow five standard deviations.
        let sd = (expected * (1.0 - 1.0 / (n + 1) as f64)).sqrt();
        prop_assert!((moved as f64) <= expected + 5.0 * sd, "moved {} of {}, expected ~{}", moved, keys, expected);
        prop_assert!((moved as f64) >= expected - 5.0 * sd, "moved {} of {}, expected ~{}", moved, keys, expected);
    }

    /// The picker's prepared endpoints (hashes computed once per endpoint set) choose exactly
    /// what plain rendezvous hashing and subsets choose, with or without left-out endpoints.
    #[test]
    fn prepared_hashing_picks_what_rendezvous_picks(key in any::<u64>(), n in 1usize..60, mask in any::<u64>(), size in 1usize..6) {
        let eps = endpoints(n);
        let mut p = Prepared::new(&eps);
        prop_assert!(p.check(&eps));
        prop_assert_eq!(p.rendezvous(key), rendezvous(key, &eps));
        let keep = |i: usize| mask >> (i % 64) & 1 == 1;
        prop_assert_eq!(
            p.rendezvous_where(key, keep),
            rendezvous_where(key, &eps, |ep| keep(eps.iter().position(|e| e == ep).unwrap()))
        );
        prop_assert_eq!(p.subset(key, size), subset(key, &eps, size));
        prop_assert!(!p.check(&eps[..n - 1]));
    }

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

/// Sessions spread over `eps` as the balancer would (round robin), one cookie value each.
fn sessions(mode: Mode, eps: &[SocketAddr], n: usize, seed: u64) -> Vec<(u64, SocketAddr)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|s| {
            let target = s % eps.len();
            let id = match mode {
                Mode::Persistent => affinity::endpoint_id(&eps[target]),
                Mode::Balanced => {
                    affinity::session_key(&Prepared::new(eps), target, || rng.next_u64())
                        .expect("a key")
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
    fn affinity_modes_move_sessions_as_ingress_nginx_describes(n in 2usize..12, seed: u64) {
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
