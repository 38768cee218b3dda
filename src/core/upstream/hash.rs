//! Consistent hashing for `upstream-hash-by`: rendezvous (highest-random-weight) hashing of
//! a route's key ([`crate::core::route::key`]) over a backend's endpoints.
//!
//! Deterministic by construction: FNV-1a and fixed mixers, no per-process seed, so every
//! worker and every Sluice replica sends the same key to the same endpoint for the same
//! endpoint set, whatever order the endpoints are listed in. Adding one endpoint to N moves
//! only the keys the new one wins (about 1/(N+1) of them); removing one moves only its own.
//! A pick costs one hash of the key plus one multiply per endpoint, and allocates nothing:
//! the endpoints' own hashes are computed once per endpoint set ([`Prepared`], kept by each
//! worker's picker until the backend's endpoints change), not on every pick.

use std::net::{IpAddr, SocketAddr};

use crate::core::route::key::Fnv;
pub use crate::core::route::key::{HashKey, KeySource, Part};

/// splitmix64's finaliser: spreads a hash over all 64 bits (FNV-1a's low bits are weak).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A key as scores use it: mixed once per pick, not once per endpoint.
pub fn spread(key: u64) -> u64 {
    mix(key)
}

/// The rendezvous score of an endpoint (its [`endpoint_hash`]) for a [`spread`] key: one
/// 64×64→128-bit multiply with the halves folded (as foldhash and wyhash mix), the cheapest
/// step that still makes every endpoint's score depend on every bit of both.
#[inline]
pub fn score(spread_key: u64, endpoint_hash: u64) -> u64 {
    let p = u128::from(spread_key ^ endpoint_hash) * u128::from(0x9e37_79b9_7f4a_7c15_u64);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The hash of an endpoint's address and port (its identity on every replica).
pub fn endpoint_hash(endpoint: &SocketAddr) -> u64 {
    let mut h = Fnv::new();
    match endpoint.ip() {
        IpAddr::V4(v4) => h.write(&v4.octets()),
        IpAddr::V6(v6) => h.write(&v6.octets()),
    }
    h.write(&endpoint.port().to_be_bytes());
    mix(h.finish())
}

/// The index of the highest score among the endpoints `keep` accepts (ties, at 2^-64, to
/// the lower address, so that the order they are listed in does not matter).
#[inline]
fn highest(
    key: u64,
    hashes: impl Iterator<Item = u64>,
    endpoints: &[SocketAddr],
    keep: impl Fn(usize) -> bool,
) -> Option<usize> {
    let k = spread(key);
    let mut best = usize::MAX;
    let mut best_score = 0;
    for (i, h) in hashes.enumerate() {
        if !keep(i) {
            continue;
        }
        let s = score(k, h);
        if best == usize::MAX || s > best_score || s == best_score && endpoints[i] < endpoints[best]
        {
            best = i;
            best_score = s;
        }
    }
    (best != usize::MAX).then_some(best)
}

/// [`highest`] over every endpoint, in four interleaved lanes: each lane keeps its own best,
/// so consecutive scores do not wait on one another's comparison, and the lanes' bests are
/// merged by the same rule (score, then the lower address): the same choice as one lane.
#[inline]
fn highest_all(key: u64, hashes: &[u64], endpoints: &[SocketAddr]) -> Option<usize> {
    if hashes.len() < 8 {
        return highest(key, hashes.iter().copied(), endpoints, |_| true);
    }
    let k = spread(key);
    let mut best = [0usize, 1, 2, 3];
    let mut best_score = [0u64; 4];
    for (lane, b) in best_score.iter_mut().enumerate() {
        *b = score(k, hashes[lane]);
    }
    let chunks = hashes[4..].chunks_exact(4);
    let done = 4 + chunks.len() * 4;
    for (c, chunk) in chunks.enumerate() {
        let base = 4 + c * 4;
        let scores = [
            score(k, chunk[0]),
            score(k, chunk[1]),
            score(k, chunk[2]),
            score(k, chunk[3]),
        ];
        for lane in 0..4 {
            let s = scores[lane];
            if s > best_score[lane]
                || s == best_score[lane] && endpoints[base + lane] < endpoints[best[lane]]
            {
                best[lane] = base + lane;
                best_score[lane] = s;
            }
        }
    }
    for (i, h) in hashes.iter().enumerate().skip(done) {
        let s = score(k, *h);
        if s > best_score[0] || s == best_score[0] && endpoints[i] < endpoints[best[0]] {
            best[0] = i;
            best_score[0] = s;
        }
    }
    let mut winner = 0;
    for lane in 1..4 {
        let (s, w) = (best_score[lane], best_score[winner]);
        if s > w || s == w && endpoints[best[lane]] < endpoints[best[winner]] {
            winner = lane;
        }
    }
    Some(best[winner])
}

/// Rendezvous hashing: the index of the endpoint with the highest score for `key` (ties to
/// the lower address), or `None` when there are none.
pub fn rendezvous(key: u64, endpoints: &[SocketAddr]) -> Option<usize> {
    rendezvous_where(key, endpoints, |_| true)
}

/// [`rendezvous`] over the endpoints `keep` accepts (outlier ejection): the keys of a left-out
/// endpoint go to their second choice, the others stay where they are.
pub fn rendezvous_where(
    key: u64,
    endpoints: &[SocketAddr],
    keep: impl Fn(&SocketAddr) -> bool,
) -> Option<usize> {
    highest(key, endpoints.iter().map(endpoint_hash), endpoints, |i| {
        keep(&endpoints[i])
    })
}

/// `upstream-hash-by-subset`: the endpoints (sorted, as snapshots hold them) in groups of
/// `size`, the last one possibly smaller; the group whose first endpoint scores highest for
/// `key` (rendezvous over groups). Every worker and replica picks the same group for the
/// same key and endpoint set. `None` when there are no endpoints.
pub fn subset(key: u64, endpoints: &[SocketAddr], size: usize) -> Option<std::ops::Range<usize>> {
    let size = size.max(1);
    let firsts: Vec<SocketAddr> = endpoints.iter().step_by(size).copied().collect();
    let best = rendezvous(key, &firsts)?;
    let start = best * size;
    Some(start..(start + size).min(endpoints.len()))
}

/// A backend's endpoints prepared for hashing and cookie affinity: each endpoint's
/// [`endpoint_hash`] and affinity id, computed once per endpoint set. Picks with it choose
/// exactly what [`rendezvous_where`], [`subset`] and `affinity::find` choose, at the cost of
/// one multiply per endpoint (one comparison for an id).
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    /// The endpoint set it was made for (a picker keeps it while the set is the same).
    endpoints: Vec<SocketAddr>,
    hashes: Vec<u64>,
    /// `persistent` affinity ids (`affinity::endpoint_id`).
    ids: Vec<u64>,
    /// The first endpoint of each group of `subset_size` (`upstream-hash-by-subset`): their
    /// hashes, for the size they were taken for.
    subset_size: usize,
    subset_hashes: Vec<u64>,
    subset_firsts: Vec<SocketAddr>,
    /// Where the slice it was last checked against lives (address, length): the same slice
    /// of the same snapshot is not compared again on every pick.
    seen: (usize, usize),
}

impl Prepared {
    pub fn new(endpoints: &[SocketAddr]) -> Prepared {
        Prepared {
            endpoints: endpoints.to_vec(),
            hashes: endpoints.iter().map(endpoint_hash).collect(),
            ids: endpoints.iter().map(super::affinity::endpoint_id).collect(),
            subset_size: 0,
            subset_hashes: Vec::new(),
            subset_firsts: Vec::new(),
            seen: (endpoints.as_ptr() as usize, endpoints.len()),
        }
    }

    /// Made for exactly `endpoints` (compared element by element).
    pub fn is_for(&self, endpoints: &[SocketAddr]) -> bool {
        self.endpoints == endpoints
    }

    /// [`Prepared::is_for`], cheap when asked again about the slice it last saw (the
    /// snapshot's, which is immutable; at a snapshot swap the picker calls
    /// [`Prepared::rebind`], since a new snapshot's slice may reuse a freed one's address).
    pub fn check(&mut self, endpoints: &[SocketAddr]) -> bool {
        if (endpoints.as_ptr() as usize, endpoints.len()) == self.seen {
            return true;
        }
        self.rebind(endpoints)
    }

    /// [`Prepared::is_for`], compared in full; remembers the slice when it is the same.
    pub fn rebind(&mut self, endpoints: &[SocketAddr]) -> bool {
        let same = self.is_for(endpoints);
        if same {
            self.seen = (endpoints.as_ptr() as usize, endpoints.len());
        }
        same
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Each endpoint's [`endpoint_hash`], in the endpoints' order.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// [`rendezvous`]: the index of `key`'s endpoint, `None` when there are none.
    pub fn rendezvous(&self, key: u64) -> Option<usize> {
        highest_all(key, &self.hashes, &self.endpoints)
    }

    /// [`rendezvous_where`]: only the endpoints `keep` accepts (by index).
    pub fn rendezvous_where(&self, key: u64, keep: impl Fn(usize) -> bool) -> Option<usize> {
        highest(key, self.hashes.iter().copied(), &self.endpoints, keep)
    }

    /// [`subset`]: the group of `size` endpoints for `key` (the groups' first endpoints are
    /// gathered once per size).
    pub fn subset(&mut self, key: u64, size: usize) -> Option<std::ops::Range<usize>> {
        let size = size.max(1);
        if self.subset_size != size {
            self.subset_size = size;
            self.subset_firsts = self.endpoints.iter().step_by(size).copied().collect();
            self.subset_hashes = self.hashes.iter().step_by(size).copied().collect();
        }
        let best = highest(
            key,
            self.subset_hashes.iter().copied(),
            &self.subset_firsts,
            |_| true,
        )?;
        let start = best * size;
        Some(start..(start + size).min(self.endpoints.len()))
    }

    /// `affinity::find`: the endpoint whose `persistent` affinity id is `id`.
    pub fn find_id(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|x| *x == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_groups_of_the_sorted_endpoints() {
        let eps: Vec<SocketAddr> = (1..=7)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for key in 0..200u64 {
            let g = subset(key, &eps, 3).unwrap();
            assert!([0..3, 3..6, 6..7].contains(&g), "{g:?}");
            // Deterministic, and the same as prepared.
            assert_eq!(subset(key, &eps, 3), Some(g.clone()));
            assert_eq!(Prepared::new(&eps).subset(key, 3), Some(g.clone()));
            seen.insert(g.start);
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(subset(1, &[], 3), None);
    }

    /// Keys as real ones are made (FNV-1a of client addresses, consecutive) spread evenly.
    #[test]
    fn keys_spread_evenly() {
        for n in [3usize, 10, 37] {
            let eps: Vec<SocketAddr> = (0..n)
                .map(|i| SocketAddr::from(([10, 1, 0, i as u8 + 1], 8080)))
                .collect();
            let p = Prepared::new(&eps);
            let mut counts = vec![0usize; n];
            let keys = 20_000 * n;
            for i in 0..keys {
                let mut h = Fnv::new();
                h.write(format!("192.168.{}.{}", i / 256, i % 256).as_bytes());
                counts[p.rendezvous(h.finish()).unwrap()] += 1;
            }
            for c in counts {
                let share = c as f64 / 20_000.0;
                assert!((0.95..1.05).contains(&share), "n={n}: {share}");
            }
        }
    }
}
