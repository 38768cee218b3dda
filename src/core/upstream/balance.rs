//! Load-balancing pickers that keep per-worker state: least-request and peak-EWMA, both with
//! power-of-two choices (P2C). Sans-IO: the caller passes time in and reports each request's
//! start and end. Nothing allocates per pick; state grows only when a backend gains endpoints.
//!
//! Statistics are kept by endpoint address, so they survive snapshot swaps; a swap drops
//! those of endpoints no longer in the snapshot ([`EndpointStats::retain`]). State is
//! advisory: it steers, it never pins.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::core::time::Instant;

/// A small, fast, seedable generator (xorshift64*): P2C needs two cheap random indices, not
/// cryptographic quality. Each worker seeds its own.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // Zero is xorshift's fixed point.
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (no modulo bias worth the name).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// Two distinct indices in `0..n` (`n >= 2`).
fn two(rng: &mut Rng, n: usize) -> (usize, usize) {
    let a = rng.below(n);
    let b = rng.below(n - 1);
    (a, if b >= a { b + 1 } else { b })
}

/// Decay time of the latency average, as ingress-nginx's ewma balancer (10 s).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// What one worker knows of one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Stat {
    /// Requests sent and not yet finished.
    in_flight: u32,
    /// Peak-EWMA of the response latency, in nanoseconds (0: nothing measured yet).
    ewma_ns: f64,
    /// When `ewma_ns` was last updated.
    stamp: Instant,
}

/// A fast hasher for the statistics' endpoint addresses (multiply and rotate per word, as
/// FxHash does, and a final mix): a look-up costs a few nanoseconds instead of SipHash's
/// tens, which counts where a pick reads every endpoint's load (bounded-load hashing). Not
/// flooding-resistant, and need not be: the keys are the backend's endpoint addresses, from
/// the cluster's EndpointSlices, never from a client.
#[derive(Clone, Copy, Debug, Default)]
pub struct AddrHasher(u64);

impl std::hash::Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // hashbrown takes the top 7 bits as a tag and the low ones as the slot: spread both.
        let z = (self.0 ^ (self.0 >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z ^ (z >> 29)
    }
}

/// Requests in flight to one backend's endpoints, as one worker counts them: by the endpoint's
/// index in the backend's (sorted) endpoint list, and all together. Bounded-load hashing reads
/// both on every pick whose first choice is busy; kept here, a read is an array index instead
/// of a hash look-up of the endpoint's address.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendLoad {
    /// The sum of `by_index`.
    pub total: u64,
    /// In flight to `endpoints[i]`.
    pub by_index: Vec<u32>,
}

/// Per-worker statistics of endpoints, and the two P2C pickers over a backend's endpoints.
#[derive(Clone, Debug, Default)]
pub struct EndpointStats {
    stats: HashMap<SocketAddr, Stat, std::hash::BuildHasherDefault<AddrHasher>>,
    /// Backends whose requests in flight are kept per endpoint index (bounded-load hashing):
    /// endpoint → (backend, index of the endpoint in that backend's list).
    watched: HashMap<SocketAddr, Vec<(u32, u32)>, std::hash::BuildHasherDefault<AddrHasher>>,
    /// By backend index: its [`BackendLoad`], once [`EndpointStats::backend_load`] asked for
    /// it (until the next [`EndpointStats::retain`]).
    loads: Vec<Option<BackendLoad>>,
}

impl EndpointStats {
    /// Keeps only the endpoints `keep` says are still there. Backend loads are dropped
    /// (a backend's endpoints and their indexes may have changed; they are counted again when
    /// next asked for).
    pub fn retain(&mut self, keep: impl Fn(&SocketAddr) -> bool) {
        self.stats.retain(|ep, s| s.in_flight > 0 || keep(ep));
        self.watched.clear();
        self.loads.clear();
    }

    /// The requests in flight to `endpoints` (backend `backend`'s, in the snapshot's order),
    /// by index and all together: counted at the first call, then kept up to date as requests
    /// start and end (one look-up per start and end of a request to a watched endpoint),
    /// until [`EndpointStats::retain`].
    pub fn backend_load(&mut self, backend: u32, endpoints: &[SocketAddr]) -> &BackendLoad {
        let b = backend as usize;
        if self.loads.len() <= b {
            self.loads.resize(b + 1, None);
        }
        if self.loads[b].is_none() {
            let by_index: Vec<u32> = endpoints.iter().map(|ep| self.in_flight(ep)).collect();
            for (i, ep) in endpoints.iter().enumerate() {
                let at = (backend, i as u32);
                let watchers = self.watched.entry(*ep).or_default();
                if !watchers.contains(&at) {
                    watchers.push(at);
                }
            }
            self.loads[b] = Some(BackendLoad {
                total: by_index.iter().map(|n| u64::from(*n)).sum(),
                by_index,
            });
        }
        self.loads[b].as_ref().expect("filled above")
    }

    /// One more (`up`) or one fewer request in flight on `ep`, in the loads of the backends
    /// watching it.
    fn count(&mut self, ep: &SocketAddr, up: bool) {
        if self.watched.is_empty() {
            return;
        }
        let Some(watchers) = self.watched.get(ep) else {
            return;
        };
        for (b, i) in watchers {
            let Some(Some(load)) = self.loads.get_mut(*b as usize) else {
                continue;
            };
            if let Some(n) = load.by_index.get_mut(*i as usize) {
                if up {
                    *n += 1;
                    load.total += 1;
                } else if *n > 0 {
                    *n -= 1;
                    load.total -= 1;
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.stats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }

    /// Requests in flight to `ep`.
    pub fn in_flight(&self, ep: &SocketAddr) -> u32 {
        self.stats.get(ep).map_or(0, |s| s.in_flight)
    }

    /// A request to `ep` starts.
    pub fn started(&mut self, ep: SocketAddr) {
        let s = self.stats.entry(ep).or_default();
        if s.in_flight == u32::MAX {
            return;
        }
        s.in_flight += 1;
        self.count(&ep, true);
    }

    /// A request to `ep` ended after `latency` (`None`: failed, not measured).
    pub fn finished(&mut self, ep: &SocketAddr, latency: Option<Duration>, now: Instant) {
        let Some(s) = self.stats.get_mut(ep) else {
            return;
        };
        let was = s.in_flight;
        s.in_flight = was.saturating_sub(1);
        if let Some(latency) = latency {
            let rtt = latency.as_nanos() as f64;
            if s.ewma_ns == 0.0 || rtt > s.ewma_ns {
                // Peak: a slower response counts at once; recovery is gradual.
                s.ewma_ns = rtt;
            } else {
                let dt = now.saturating_since(s.stamp).as_secs_f64();
                let w = (-dt / EWMA_DECAY.as_secs_f64()).exp();
                s.ewma_ns = s.ewma_ns * w + rtt * (1.0 - w);
            }
            s.stamp = now;
        }
        if was > 0 {
            self.count(ep, false);
        }
    }

    /// The peak-EWMA cost of `ep`: its latency average, decayed towards zero while it is
    /// idle, times its in-flight requests plus one. An unmeasured endpoint costs the least,
    /// so new endpoints are tried.
    pub fn cost(&self, ep: &SocketAddr, now: Instant) -> f64 {
        let Some(s) = self.stats.get(ep) else {
            return 0.0;
        };
        let dt = now.saturating_since(s.stamp).as_secs_f64();
        let decayed = s.ewma_ns * (-dt / EWMA_DECAY.as_secs_f64()).exp();
        decayed * f64::from(s.in_flight + 1)
    }

    /// `least_request`: of two of `eps` drawn at random, the one with fewer requests in
    /// flight (the first on a tie). `None` when there are none.
    pub fn least_request(&self, eps: &[SocketAddr], rng: &mut Rng) -> Option<usize> {
        self.p2c(eps, rng, |ep| f64::from(self.in_flight(ep)))
    }

    /// `ewma`: of two of `eps` drawn at random, the one with the lower
    /// [`cost`](Self::cost).
    pub fn ewma(&self, eps: &[SocketAddr], rng: &mut Rng, now: Instant) -> Option<usize> {
        self.p2c(eps, rng, |ep| self.cost(ep, now))
    }

    fn p2c(
        &self,
        eps: &[SocketAddr],
        rng: &mut Rng,
        score: impl Fn(&SocketAddr) -> f64,
    ) -> Option<usize> {
        match eps.len() {
            0 => None,
            1 => Some(0),
            n => {
                let (a, b) = two(rng, n);
                Some(if score(&eps[b]) < score(&eps[a]) {
                    b
                } else {
                    a
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;
    use std::net::IpAddr;

    /// A backend's load is always its endpoints' requests in flight, index by index, and its
    /// total their sum: through starts and ends in any order, an end on an idle endpoint, an
    /// endpoint in two backends (at different indexes), and a reset.
    #[test]
    fn a_backend_total_runs_as_the_sum_of_its_endpoints() {
        let eps: Vec<SocketAddr> = (1..=6)
            .map(|i| SocketAddr::from(([10, 3, 0, i], 80)))
            .collect();
        let (a, b) = (&eps[..4], &eps[2..]);
        let mut st = EndpointStats::default();
        st.started(eps[0]);
        let each = |st: &EndpointStats, set: &[SocketAddr]| -> BackendLoad {
            let by_index: Vec<u32> = set.iter().map(|e| st.in_flight(e)).collect();
            BackendLoad {
                total: by_index.iter().map(|n| u64::from(*n)).sum(),
                by_index,
            }
        };
        assert_eq!(st.backend_load(0, a).total, 1);
        assert_eq!(st.backend_load(0, a).by_index, [1, 0, 0, 0]);
        assert_eq!(st.backend_load(1, b).total, 0);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ep = eps[(x % 6) as usize];
            if x & 64 == 0 {
                st.started(ep);
            } else {
                st.finished(&ep, None, Instant::ZERO);
            }
            let (want_a, want_b) = (each(&st, a), each(&st, b));
            assert_eq!(*st.backend_load(0, a), want_a);
            assert_eq!(*st.backend_load(1, b), want_b);
        }
        st.retain(|_| true);
        st.started(eps[5]);
        let want_b = each(&st, b);
        assert_eq!(*st.backend_load(1, b), want_b);
    }

    /// Endpoint addresses hash apart, and over both the slot bits and the tag bits hashbrown
    /// reads (a weak finish would crowd the statistics into few slots).
    #[test]
    fn addresses_hash_apart_over_slot_and_tag_bits() {
        let build = std::hash::BuildHasherDefault::<AddrHasher>::default();
        let mut hashes = std::collections::HashSet::new();
        let mut slots = [0u32; 256];
        let mut tags = [0u32; 128];
        for i in 0..20_000u32 {
            let ep = SocketAddr::new(
                IpAddr::from((0x0a00_0000 + i / 4).to_be_bytes()),
                8080 + (i % 4) as u16,
            );
            let h = build.hash_one(ep);
            assert!(hashes.insert(h), "{ep}");
            slots[(h & 255) as usize] += 1;
            tags[(h >> 57) as usize] += 1;
        }
        // 20,000 over 256 slots: about 78 each; over 128 tags: about 156.
        assert!(slots.iter().all(|c| (30..=140).contains(c)), "{slots:?}");
        assert!(tags.iter().all(|c| (80..=240).contains(c)), "{tags:?}");
    }
}
