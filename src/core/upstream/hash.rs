//! Consistent hashing for `upstream-hash-by`: rendezvous (highest-random-weight) hashing of
//! a route's key ([`crate::core::route::key`]) over a backend's endpoints.
//!
//! Deterministic by construction: FNV-1a and a fixed mixer, no per-process seed, so every
//! worker and every Sluice replica sends the same key to the same endpoint for the same
//! endpoint set, whatever order the endpoints are listed in. Adding one endpoint to N moves
//! only the keys the new one wins (about 1/(N+1) of them); removing one moves only its own.
//! A pick costs one hash of the key plus one mix per endpoint, and allocates nothing: the
//! endpoints' own hashes are computed once per endpoint set ([`Prepared`], kept by each
//! worker's picker until the backend's endpoints change), not on every pick.

use std::net::{IpAddr, SocketAddr};

use crate::core::route::key::Fnv;
pub use crate::core::route::key::{HashKey, KeySource, Part};

/// splitmix64's finaliser: spreads a combined hash over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of an endpoint's address and port (its identity on every replica).
pub fn endpoint_hash(endpoint: &SocketAddr) -> u64 {
    let mut h = Fnv::new();
    match endpoint.ip() {
        IpAddr::V4(v4) => h.write(&v4.octets()),
        IpAddr::V6(v6) => h.write(&v6.octets()),
    }
    h.write(&endpoint.port().to_be_bytes());
    h.finish()
}

/// The rendezvous score of an endpoint (its [`endpoint_hash`]) for `key`.
pub fn score(key: u64, endpoint_hash: u64) -> u64 {
    mix(key ^ endpoint_hash)
}

/// Rendezvous hashing: the index of the endpoint with the highest score for `key` (ties to
/// the lower address), or `None` when there are none.
pub fn rendezvous(key: u64, endpoints: &[SocketAddr]) -> Option<usize> {
    rendezvous_where(key, endpoints, |_| true)
}

/// `upstream-hash-by-subset`: the endpoints (sorted, as snapshots hold them) in groups of
/// `size`, the last one possibly smaller; the group whose first endpoint scores highest for
/// `key` (rendezvous over groups). Every worker and replica picks the same group for the
/// same key and endpoint set. `None` when there are no endpoints.
pub fn subset(key: u64, endpoints: &[SocketAddr], size: usize) -> Option<std::ops::Range<usize>> {
    let size = size.max(1);
    let groups = endpoints.len().div_ceil(size);
    let best = (0..groups).max_by_key(|g| mix(key ^ endpoint_hash(&endpoints[g * size])))?;
    let start = best * size;
    Some(start..(start + size).min(endpoints.len()))
}

/// A backend's endpoints prepared for hashing: each endpoint's [`endpoint_hash`], computed
/// once per endpoint set. Picks with it choose exactly what [`rendezvous_where`] and
/// [`subset`] choose, at the cost of one mix per endpoint.
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    /// The endpoint set it was made for (a picker keeps it while the set is the same).
    endpoints: Vec<SocketAddr>,
    hashes: Vec<u64>,
    /// Where the slice it was last checked against lives (address, length): the same slice
    /// of the same snapshot is not compared again on every pick.
    seen: (usize, usize),
}

impl Prepared {
    pub fn new(endpoints: &[SocketAddr]) -> Prepared {
        Prepared {
            endpoints: endpoints.to_vec(),
            hashes: endpoints.iter().map(endpoint_hash).collect(),
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
        // Scores are compared as (score, endpoint) so that a tie (2^-64) still resolves the
        // same way on every worker; the address is only looked at on a tie.
        let mut best: Option<(u64, usize)> = None;
        for (i, h) in self.hashes.iter().enumerate() {
            let s = mix(key ^ h);
            match best {
                Some((b, j)) if s < b || s == b && self.endpoints[i] > self.endpoints[j] => {}
                _ => best = Some((s, i)),
            }
        }
        best.map(|(_, i)| i)
    }

    /// [`rendezvous_where`]: only the endpoints `keep` accepts (by index).
    pub fn rendezvous_where(&self, key: u64, keep: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, h) in self.hashes.iter().enumerate() {
            if !keep(i) {
                continue;
            }
            let s = mix(key ^ h);
            match best {
                Some((b, j)) if s < b || s == b && self.endpoints[i] > self.endpoints[j] => {}
                _ => best = Some((s, i)),
            }
        }
        best.map(|(_, i)| i)
    }

    /// [`subset`]: the group of `size` endpoints for `key`.
    pub fn subset(&self, key: u64, size: usize) -> Option<std::ops::Range<usize>> {
        let size = size.max(1);
        let n = self.hashes.len();
        let groups = n.div_ceil(size);
        let best = (0..groups).max_by_key(|g| mix(key ^ self.hashes[g * size]))?;
        let start = best * size;
        Some(start..(start + size).min(n))
    }
}

/// [`rendezvous`] over the endpoints `keep` accepts (outlier ejection): the keys of a left-out
/// endpoint go to their second choice, the others stay where they are.
pub fn rendezvous_where(
    key: u64,
    endpoints: &[SocketAddr],
    keep: impl Fn(&SocketAddr) -> bool,
) -> Option<usize> {
    // One score per endpoint (not one per comparison).
    let mut best: Option<(u64, usize)> = None;
    for (i, ep) in endpoints.iter().enumerate() {
        if !keep(ep) {
            continue;
        }
        let score = mix(key ^ endpoint_hash(ep));
        let wins = match best {
            None => true,
            Some((s, b)) => score > s || score == s && *ep < endpoints[b],
        };
        if wins {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
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
            let g = subset(mix(key), &eps, 3).unwrap();
            assert!([0..3, 3..6, 6..7].contains(&g), "{g:?}");
            // Deterministic.
            assert_eq!(subset(mix(key), &eps, 3), Some(g.clone()));
            seen.insert(g.start);
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(subset(1, &[], 3), None);
    }
}
