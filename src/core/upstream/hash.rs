//! Consistent hashing for `upstream-hash-by`: rendezvous (highest-random-weight) hashing of
//! a route's key ([`crate::core::route::key`]) over a backend's endpoints, by bucket.
//!
//! A key falls in one of [`BUCKETS`] (65,536) buckets, the top 16 bits of its [`spread`]
//! hash, and goes to the rendezvous winner of its bucket. The bucket count is fixed, whatever
//! the endpoints, so adding one endpoint to N moves only the buckets the new one wins (about
//! 1/(N+1) of them), removing one moves only the buckets it held, and while one is ejected
//! only its buckets go to their second choice. Deterministic by construction: FNV-1a and
//! fixed mixers, no per-process seed, so every worker and every Sluice replica sends the same
//! key to the same endpoint for the same endpoint set, whatever order the endpoints are
//! listed in.
//!
//! Cost: each worker keeps a backend's endpoints [`Prepared`] (their hashes, computed once per
//! endpoint set) and, from [`TABLE_MIN`] endpoints on, a table bucket → endpoint filled
//! lazily: a bucket's first pick scores every endpoint (one multiply each) and stores the
//! winner, every later pick is one hash of the key and one load, whatever N. Below
//! [`TABLE_MIN`] a pick scores the endpoints directly: the same answer, so the threshold
//! moves no key.
//!
//! Evenness: an endpoint holds Binomial(65,536, 1/N) buckets, so its share of keys is off the
//! fair 1/N by about sqrt(N/65,536) relative (1.2% at 10 endpoints, 3.9% at 100), finer than
//! a consistent-hash ring of 160 points per server (about 1/sqrt(160), 8%).

use std::hint::select_unpredictable;
use std::net::{IpAddr, SocketAddr};

use crate::core::route::key::Fnv;
pub use crate::core::route::key::{HashKey, KeySource, Part};

/// How many buckets keys fall into (the top 16 bits of a spread key): fixed, so that the
/// endpoint set never changes which keys share a bucket.
pub const BUCKETS: usize = 1 << 16;

/// From this many endpoints on, [`Prepared`] keeps a bucket table (below, scoring the few
/// endpoints directly costs about as much as a table look-up and no memory).
pub const TABLE_MIN: usize = 16;

/// splitmix64's finaliser: spreads a hash over all 64 bits (FNV-1a's low bits are weak).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A key mixed over all 64 bits (the bucket is its top 16).
pub fn spread(key: u64) -> u64 {
    mix(key)
}

/// The bucket of `key`: the top 16 bits of [`spread`]`(key)`.
#[inline]
pub fn bucket(key: u64) -> u16 {
    (spread(key) >> 48) as u16
}

/// The point a bucket's endpoints are scored at: its number, mixed (after a fixed offset,
/// since `mix(0)` is 0).
#[inline]
pub fn bucket_point(bucket: u16) -> u64 {
    mix(u64::from(bucket) ^ 0x6a09_e667_f3bc_c908)
}

/// The rendezvous score of an endpoint (its [`endpoint_hash`]) at a [`bucket_point`]: one
/// 64×64→128-bit multiply with the halves folded (as foldhash and wyhash mix), the cheapest
/// step that still makes every endpoint's score depend on every bit of both.
#[inline]
pub fn score(point: u64, endpoint_hash: u64) -> u64 {
    let p = u128::from(point ^ endpoint_hash) * u128::from(0x9e37_79b9_7f4a_7c15_u64);
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

/// The index of the highest score at `point` among the endpoints `keep` accepts (ties, at
/// 2^-64, to the lower address, so that the order they are listed in does not matter).
#[inline]
fn highest(
    point: u64,
    hashes: impl Iterator<Item = u64>,
    endpoints: &[SocketAddr],
    keep: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best = usize::MAX;
    let mut best_score = 0;
    for (i, h) in hashes.enumerate() {
        if !keep(i) {
            continue;
        }
        let s = score(point, h);
        if best == usize::MAX || s > best_score || s == best_score && endpoints[i] < endpoints[best]
        {
            best = i;
            best_score = s;
        }
    }
    (best != usize::MAX).then_some(best)
}

/// [`highest`] over every endpoint, without a branch on the scores: varied keys make every
/// "is this one higher?" a coin toss a branch predictor loses about once per pick per
/// endpoint, so the best is kept by selects, and ties on the best score (2^-64 a pair) are
/// counted on the way and settled by [`highest`]'s rule (the lower address): the same choice.
#[inline]
fn highest_all(point: u64, hashes: &[u64], endpoints: &[SocketAddr]) -> Option<usize> {
    let (&first, rest) = hashes.split_first()?;
    let mut best = 0usize;
    let mut best_score = score(point, first);
    let mut ties = 0u32;
    for (i, h) in rest.iter().enumerate() {
        let s = score(point, *h);
        let higher = s > best_score;
        ties = select_unpredictable(higher, 0, ties + u32::from(s == best_score));
        best = select_unpredictable(higher, i + 1, best);
        best_score = select_unpredictable(higher, s, best_score);
    }
    if ties > 0 {
        return highest(point, hashes.iter().copied(), endpoints, |_| true);
    }
    Some(best)
}

/// [`highest`] over the endpoints `keep` accepts, without a branch on the scores or on `keep`
/// (a next choice under bounded load or ejection, where about every other endpoint may be
/// left out, which a branch predictor cannot learn): the same choice. `keep` should not
/// branch either (`&`, not `&&`).
#[inline]
fn highest_kept(
    point: u64,
    hashes: &[u64],
    endpoints: &[SocketAddr],
    keep: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best = 0usize;
    let mut best_score = 0u64;
    let mut found = false;
    let mut ties = 0u32;
    for (i, h) in hashes.iter().enumerate() {
        let kept = keep(i);
        let s = score(point, *h);
        let higher = kept & (!found | (s > best_score));
        let tie = kept & found & (s == best_score);
        ties = select_unpredictable(higher, 0, ties + u32::from(tie));
        best = select_unpredictable(higher, i, best);
        best_score = select_unpredictable(higher, s, best_score);
        found |= kept;
    }
    if ties > 0 {
        return highest(point, hashes.iter().copied(), endpoints, keep);
    }
    found.then_some(best)
}

/// Rendezvous hashing by bucket: the index of the endpoint with the highest score for
/// `key`'s [`bucket`] (ties to the lower address), or `None` when there are none.
pub fn rendezvous(key: u64, endpoints: &[SocketAddr]) -> Option<usize> {
    rendezvous_where(key, endpoints, |_| true)
}

/// [`rendezvous`] over the endpoints `keep` accepts (outlier ejection, bounded load): the
/// keys of a left-out endpoint go to their bucket's second choice, the others stay where
/// they are.
pub fn rendezvous_where(
    key: u64,
    endpoints: &[SocketAddr],
    keep: impl Fn(&SocketAddr) -> bool,
) -> Option<usize> {
    let point = bucket_point(bucket(key));
    highest(point, endpoints.iter().map(endpoint_hash), endpoints, |i| {
        keep(&endpoints[i])
    })
}

/// `upstream-hash-by-subset`: the endpoints (sorted, as snapshots hold them) in groups of
/// `size`, the last one possibly smaller; the group whose first endpoint scores highest for
/// `key`'s bucket (rendezvous over groups). Every worker and replica picks the same group for
/// the same key and endpoint set. `None` when there are no endpoints.
pub fn subset(key: u64, endpoints: &[SocketAddr], size: usize) -> Option<std::ops::Range<usize>> {
    let size = size.max(1);
    let firsts: Vec<SocketAddr> = endpoints.iter().step_by(size).copied().collect();
    let best = rendezvous(key, &firsts)?;
    let start = best * size;
    Some(start..(start + size).min(endpoints.len()))
}

/// A [`Prepared`] set's bucket → endpoint table. Entries hold the endpoint's index + 1; 0 is
/// "not computed yet" (so a new table is zeroed memory, and nothing is computed up front).
#[derive(Clone, Default)]
enum Table {
    /// Not allocated (yet, or ever: fewer than [`TABLE_MIN`] or more than 65,535 endpoints).
    #[default]
    None,
    /// Up to 255 endpoints: 64 KiB.
    Narrow(Box<[u8; BUCKETS]>),
    /// Up to 65,535 endpoints: 128 KiB.
    Wide(Box<[u16; BUCKETS]>),
}

impl Table {
    /// Whether `n` endpoints get a table.
    fn fits(n: usize) -> bool {
        (TABLE_MIN..=usize::from(u16::MAX)).contains(&n)
    }

    /// A zeroed table for `n` endpoints, or none when `n` is outside the table's range.
    fn for_endpoints(n: usize) -> Table {
        if !Table::fits(n) {
            Table::None
        } else if n <= usize::from(u8::MAX) {
            let t: Result<Box<[u8; BUCKETS]>, _> = vec![0u8; BUCKETS].into_boxed_slice().try_into();
            t.map_or(Table::None, Table::Narrow)
        } else {
            let t: Result<Box<[u16; BUCKETS]>, _> =
                vec![0u16; BUCKETS].into_boxed_slice().try_into();
            t.map_or(Table::None, Table::Wide)
        }
    }

    /// The stored first choice of bucket `b`, if computed.
    #[inline]
    fn get(&self, b: u16) -> Option<usize> {
        let entry = match self {
            Table::None => 0,
            Table::Narrow(t) => usize::from(t[usize::from(b)]),
            Table::Wide(t) => usize::from(t[usize::from(b)]),
        };
        entry.checked_sub(1)
    }

    /// Stores `i` as bucket `b`'s first choice (`i` is below the table's endpoint count).
    fn set(&mut self, b: u16, i: usize) {
        match self {
            Table::None => {}
            Table::Narrow(t) => t[usize::from(b)] = u8::try_from(i + 1).unwrap_or(0),
            Table::Wide(t) => t[usize::from(b)] = u16::try_from(i + 1).unwrap_or(0),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Table::None => 0,
            Table::Narrow(_) => BUCKETS,
            Table::Wide(_) => 2 * BUCKETS,
        }
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let filled = (0..=u16::MAX).filter(|b| self.get(*b).is_some()).count();
        write!(f, "Table({} bytes, {filled} buckets filled)", self.bytes())
    }
}

/// How many choices of a bucket [`Ranked`] keeps, best first.
pub const RANKED: usize = 4;

/// A [`Prepared`] set's bucket → its [`RANKED`] best endpoints (first choice first), for the
/// keys whose first choice is left out (ejected, or at its bound under bounded-load hashing):
/// their next choice is then a look-up too, unless all of those are left out as well.
/// `u16::MAX` marks a bucket not computed yet, and ends a list shorter than [`RANKED`].
/// Allocated (512 KiB) only when a table exists and a first choice was left out.
#[derive(Clone, Default)]
struct Ranked(Option<Box<[[u16; RANKED]]>>);

impl std::fmt::Debug for Ranked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Ranked({})",
            if self.0.is_some() {
                "allocated"
            } else {
                "none"
            }
        )
    }
}

/// The [`RANKED`] best endpoints at `point` (score, then the lower address), best first;
/// `u16::MAX` past the last when there are fewer.
fn top(point: u64, hashes: &[u64], endpoints: &[SocketAddr]) -> [u16; RANKED] {
    let mut best: [(u64, usize); RANKED] = [(0, usize::MAX); RANKED];
    for (i, h) in hashes.iter().enumerate() {
        let s = score(point, *h);
        let better = |(bs, bi): (u64, usize)| {
            bi == usize::MAX || s > bs || s == bs && endpoints[i] < endpoints[bi]
        };
        if !better(best[RANKED - 1]) {
            continue;
        }
        let mut at = RANKED - 1;
        while at > 0 && better(best[at - 1]) {
            best[at] = best[at - 1];
            at -= 1;
        }
        best[at] = (s, i);
    }
    best.map(|(_, i)| u16::try_from(i).unwrap_or(u16::MAX))
}

/// A backend's endpoints prepared for hashing and cookie affinity, by one worker: each
/// endpoint's [`endpoint_hash`] and affinity id, computed once per endpoint set, and the
/// bucket table that makes a pick O(1). Picks with it choose exactly what
/// [`rendezvous_where`], [`subset`] and `affinity::find` choose.
///
/// Memory per hashed backend per worker: the endpoints, their hashes and ids (48 bytes an
/// endpoint), plus the table from [`TABLE_MIN`] endpoints on: 64 KiB (1 byte a bucket) up to
/// 255 endpoints, 128 KiB (2 bytes) above. The table is allocated zeroed at the worker's first
/// hashed pick (or `balanced` cookie) on the endpoint set, filled one bucket per first pick
/// of that bucket, and dropped with the set when the backend's endpoints change: nothing is
/// built at a snapshot swap, on the worker or on the control thread. With a table, once a
/// key's first choice is left out (ejected, or at its bound under bounded-load hashing), a
/// second cache of each bucket's [`RANKED`] best endpoints (512 KiB) makes its next choice a
/// look-up as well. `upstream-hash-by-subset` keeps its own table of bucket → group the same
/// way, from [`TABLE_MIN`] groups on (64 KiB up to 255 groups).
#[derive(Clone, Debug, Default)]
pub struct Prepared {
    /// The endpoint set it was made for (a picker keeps it while the set is the same).
    endpoints: Vec<SocketAddr>,
    hashes: Vec<u64>,
    /// `persistent` affinity ids (`affinity::endpoint_id`).
    ids: Vec<u64>,
    /// Bucket → first choice among all the endpoints, filled lazily.
    table: Table,
    /// Bucket → its best few, filled lazily once a first choice is left out.
    ranked: Ranked,
    /// The first endpoint of each group of `subset_size` (`upstream-hash-by-subset`): their
    /// hashes, for the size they were taken for.
    subset_size: usize,
    subset_hashes: Vec<u64>,
    subset_firsts: Vec<SocketAddr>,
    /// Bucket → group, for the same size, filled lazily from [`TABLE_MIN`] groups on (as
    /// [`Prepared::table`] is for endpoints; below that, scoring the groups is as cheap).
    subset_table: Table,
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
            table: Table::None,
            ranked: Ranked::default(),
            subset_size: 0,
            subset_hashes: Vec::new(),
            subset_firsts: Vec::new(),
            subset_table: Table::None,
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

    /// The bucket table's size in bytes: 0 until the first hashed pick, and always below
    /// [`TABLE_MIN`] endpoints.
    pub fn table_bytes(&self) -> usize {
        self.table.bytes()
    }

    /// Bucket `b`'s first choice among all the endpoints (`None` when there are none): from
    /// the table, or computed (one multiply per endpoint) and stored there.
    #[inline]
    pub fn winner(&mut self, b: u16) -> Option<usize> {
        if let Some(i) = self.table.get(b) {
            return Some(i);
        }
        self.fill(b)
    }

    /// [`Prepared::winner`] on a table miss (or without a table).
    fn fill(&mut self, b: u16) -> Option<usize> {
        let i = highest_all(bucket_point(b), &self.hashes, &self.endpoints)?;
        self.store(b, i);
        Some(i)
    }

    fn store(&mut self, b: u16, i: usize) {
        if matches!(self.table, Table::None) {
            if !Table::fits(self.endpoints.len()) {
                return;
            }
            self.table = Table::for_endpoints(self.endpoints.len());
        }
        self.table.set(b, i);
    }

    /// [`rendezvous`]: the index of `key`'s endpoint, `None` when there are none.
    #[inline]
    pub fn rendezvous(&mut self, key: u64) -> Option<usize> {
        self.winner(bucket(key))
    }

    /// [`rendezvous_where`]: only the endpoints `keep` accepts (by index).
    #[inline]
    pub fn rendezvous_where(&mut self, key: u64, keep: impl Fn(usize) -> bool) -> Option<usize> {
        self.winner_where(bucket(key), keep)
    }

    /// Bucket `b`'s best endpoint among those `keep` accepts: its first choice when `keep`
    /// accepts it (a table look-up), else the accepted endpoints scored in full (only the
    /// keys of left-out endpoints pay for that).
    pub fn winner_where(&mut self, b: u16, keep: impl Fn(usize) -> bool) -> Option<usize> {
        let first = self.winner(b)?;
        self.next_where(b, first, keep)
    }

    /// [`Prepared::winner_where`] for a caller that already has bucket `b`'s first choice
    /// among all the endpoints, `first` (from [`Prepared::winner`]).
    pub fn next_where(
        &mut self,
        b: u16,
        first: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if keep(first) {
            return Some(first);
        }
        // With a table, the bucket's next few choices are a look-up too.
        if let Some(choices) = self.ranked(b) {
            for i in choices.into_iter().skip(1) {
                if i == u16::MAX {
                    // Fewer endpoints than RANKED, all seen: none is accepted.
                    return None;
                }
                if keep(usize::from(i)) {
                    return Some(usize::from(i));
                }
            }
        }
        highest_kept(bucket_point(b), &self.hashes, &self.endpoints, keep)
    }

    /// Bucket `b`'s [`RANKED`] best endpoints, from the ranked cache (computed and stored on
    /// a miss); `None` without a table (few endpoints: scoring them all is as cheap).
    fn ranked(&mut self, b: u16) -> Option<[u16; RANKED]> {
        if matches!(self.table, Table::None) {
            return None;
        }
        let cache = self
            .ranked
            .0
            .get_or_insert_with(|| vec![[u16::MAX; RANKED]; BUCKETS].into_boxed_slice());
        let slot = &mut cache[usize::from(b)];
        if slot[0] == u16::MAX {
            *slot = top(bucket_point(b), &self.hashes, &self.endpoints);
        }
        Some(*slot)
    }

    /// Whether `key`'s first choice is the endpoint at `target` (the test a new `balanced`
    /// session key must pass). With a table: a look-up once the bucket is known; a bucket not
    /// known yet is scored in full and stored, whichever endpoint wins it, so that the
    /// worker's later draws (about N per new session) find the table filled. Without one
    /// (fewer than [`TABLE_MIN`] endpoints): the endpoints scored until one beats the target.
    pub fn lands_on(&mut self, key: u64, target: usize) -> bool {
        let b = bucket(key);
        if Table::fits(self.endpoints.len()) {
            return self.winner(b) == Some(target);
        }
        let (Some(want), Some(mine)) = (self.endpoints.get(target), self.hashes.get(target)) else {
            return false;
        };
        let point = bucket_point(b);
        let score_mine = score(point, *mine);
        let beaten = self
            .hashes
            .iter()
            .zip(&self.endpoints)
            .enumerate()
            .any(|(i, (h, ep))| {
                let s = score(point, *h);
                i != target && (s > score_mine || s == score_mine && ep < want)
            });
        !beaten
    }

    /// [`subset`]: the group of `size` endpoints for `key` (the groups' first endpoints are
    /// gathered once per size; a pick scores one endpoint per group).
    pub fn subset(&mut self, key: u64, size: usize) -> Option<std::ops::Range<usize>> {
        let size = size.max(1);
        if self.subset_size != size {
            self.subset_size = size;
            self.subset_firsts = self.endpoints.iter().step_by(size).copied().collect();
            self.subset_hashes = self.hashes.iter().step_by(size).copied().collect();
            self.subset_table = Table::None;
        }
        let b = bucket(key);
        let best = match self.subset_table.get(b) {
            Some(group) => group,
            None => {
                let group = highest_all(bucket_point(b), &self.subset_hashes, &self.subset_firsts)?;
                if matches!(self.subset_table, Table::None) {
                    self.subset_table = Table::for_endpoints(self.subset_firsts.len());
                }
                self.subset_table.set(b, group);
                group
            }
        };
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

    /// Keys as real ones are made (FNV-1a of client addresses, consecutive) spread evenly,
    /// within what 65,536 buckets allow. An endpoint's share of the keys, relative to the fair
    /// 1/n, varies by two independent draws: the buckets it wins, Binomial(65,536, 1/n), of
    /// relative variance (n-1)/65,536, and the keys landing in those buckets, 20,000 per
    /// endpoint on average, of relative variance about 1/20,000. Every endpoint must be within
    /// five standard deviations of the sum (for n = 100: sigma 4.0%, bound 20%; plain
    /// rendezvous without buckets would have sigma 0.7%).
    #[test]
    fn keys_spread_evenly() {
        for n in [3usize, 10, 37, 100] {
            let eps: Vec<SocketAddr> = (0..n)
                .map(|i| SocketAddr::from(([10, 1, 0, i as u8 + 1], 8080)))
                .collect();
            let mut p = Prepared::new(&eps);
            let mut counts = vec![0usize; n];
            let per = 20_000;
            for i in 0..per * n {
                let mut h = Fnv::new();
                h.write(format!("192.168.{}.{}", i / 256, i % 256).as_bytes());
                counts[p.rendezvous(h.finish()).unwrap()] += 1;
            }
            let sigma = ((n - 1) as f64 / BUCKETS as f64 + 1.0 / per as f64).sqrt();
            for c in counts {
                let share = c as f64 / per as f64;
                assert!(
                    (share - 1.0).abs() < 5.0 * sigma,
                    "n={n}: {share}, sigma {sigma}"
                );
            }
        }
    }

    fn eps(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::new([10, 2, (i / 250) as u8, (i % 250) as u8 + 1].into(), 80))
            .collect()
    }

    /// A left-out first choice: the next accepted one comes from the bucket's ranked
    /// choices when one of them is accepted, else from scoring; either way what scoring the
    /// accepted endpoints answers (ejection, bounded load), on both table widths and without.
    #[test]
    fn next_choices_from_the_ranked_cache_are_what_scoring_answers() {
        for n in [3usize, 15, 16, 40, 300] {
            let eps = eps(n);
            let mut p = Prepared::new(&eps);
            for b in (0..=u16::MAX).step_by(97) {
                let point = bucket_point(b);
                let first = p.winner(b).unwrap();
                // Leave out the first choice, then more and more of the best ones.
                for out in 1..=RANKED + 2 {
                    let order = top(point, &p.hashes, &eps);
                    let mut left_out: Vec<usize> = vec![first];
                    left_out.extend(
                        order
                            .iter()
                            .filter(|i| **i != u16::MAX)
                            .map(|i| usize::from(*i))
                            .skip(1)
                            .take(out - 1),
                    );
                    let keep = |i: usize| !left_out.contains(&i);
                    let want = highest(point, p.hashes.iter().copied(), &eps, keep);
                    assert_eq!(p.winner_where(b, keep), want, "n={n} b={b} out={out}");
                    // The free function agrees (it scores in full).
                    if b < 200 {
                        let key_in_b = (0u64..).find(|k| bucket(*k) == b).unwrap();
                        let free = rendezvous_where(key_in_b, &eps, |e| {
                            keep(eps.iter().position(|x| x == e).unwrap())
                        });
                        assert_eq!(free, want);
                    }
                }
            }
            // Every endpoint left out: none, with the ranked list or without.
            assert_eq!(p.winner_where(5, |_| false), None);
        }
    }

    /// The branch-free scoring of the accepted endpoints chooses what [`highest`] chooses:
    /// random subsets, none, and equal scores (two endpoints with the same hash: the tie goes
    /// to the lower address, whichever is listed first).
    #[test]
    fn branch_free_scoring_of_the_accepted_is_highest() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for n in [1usize, 2, 7, 40, 100] {
            let eps = eps(n);
            let mut hashes: Vec<u64> = eps.iter().map(endpoint_hash).collect();
            for round in 0..200 {
                if round == 100 && n > 1 {
                    // From here on the last endpoint scores as the first does.
                    hashes[n - 1] = hashes[0];
                }
                let mask = next();
                let keep = |i: usize| mask >> (i % 64) & 1 == 1 || round % 7 == 0;
                let point = bucket_point(next() as u16);
                let want = highest(point, hashes.iter().copied(), &eps, keep);
                assert_eq!(highest_kept(point, &hashes, &eps, keep), want, "n={n}");
                if n > 1 && round >= 100 {
                    let both = |i: usize| i == 0 || i == n - 1;
                    assert_eq!(highest_kept(point, &hashes, &eps, both), Some(0));
                    let mut reversed = eps.clone();
                    reversed.swap(0, n - 1);
                    assert_eq!(highest_kept(point, &hashes, &reversed, both), Some(n - 1));
                }
            }
            assert_eq!(highest_kept(1, &hashes, &eps, |_| false), None);
        }
    }

    /// The ranked choices are in rendezvous order: the first is the table's winner.
    #[test]
    fn the_ranked_first_choice_is_the_winner() {
        let eps = eps(64);
        let mut p = Prepared::new(&eps);
        for b in (0..=u16::MAX).step_by(31) {
            let w = p.winner(b).unwrap();
            assert_eq!(usize::from(top(bucket_point(b), &p.hashes, &eps)[0]), w);
        }
    }

    /// A key's endpoint is its bucket's: keys of one bucket go together, whatever else.
    #[test]
    fn keys_of_one_bucket_go_to_one_endpoint() {
        let eps = eps(50);
        let mut p = Prepared::new(&eps);
        let mut by_bucket = std::collections::HashMap::new();
        let mut shared = 0;
        for key in 0..200_000u64 {
            let i = p.rendezvous(key).unwrap();
            assert_eq!(rendezvous(key, &eps), Some(i));
            if let Some(prev) = by_bucket.insert(bucket(key), i) {
                assert_eq!(prev, i, "key {key}");
                shared += 1;
            }
        }
        // 200,000 keys in 65,536 buckets: most buckets are shared by several keys.
        assert!(shared > 100_000, "{shared}");
    }

    /// The table exists only from TABLE_MIN endpoints on, is allocated at the first pick,
    /// and is sized for the endpoint count (one byte a bucket up to 255, two above).
    #[test]
    fn the_table_is_lazy_and_sized_for_the_endpoints() {
        for (n, bytes) in [
            (1, 0),
            (TABLE_MIN - 1, 0),
            (TABLE_MIN, BUCKETS),
            (255, BUCKETS),
        ] {
            let mut p = Prepared::new(&eps(n));
            assert_eq!(p.table_bytes(), 0);
            p.rendezvous(7);
            assert_eq!(p.table_bytes(), bytes, "n={n}");
        }
        let mut p = Prepared::new(&eps(256));
        p.rendezvous_where(7, |_| true);
        assert_eq!(p.table_bytes(), 2 * BUCKETS);
    }

    /// Every bucket, asked twice (computed, then from the table), on both table widths and
    /// without one: the table answers what scoring every endpoint answers.
    #[test]
    fn the_table_answers_what_scoring_answers() {
        for n in [TABLE_MIN - 1, TABLE_MIN, 255, 256] {
            let eps = eps(n);
            let hashes: Vec<u64> = eps.iter().map(endpoint_hash).collect();
            let mut p = Prepared::new(&eps);
            let mut seen = vec![0u32; n];
            for round in 0..2 {
                for b in 0..=u16::MAX {
                    let direct = highest(bucket_point(b), hashes.iter().copied(), &eps, |_| true);
                    assert_eq!(p.winner(b), direct, "n={n} bucket {b} round {round}");
                    if round == 0 {
                        seen[direct.unwrap()] += 1;
                    }
                }
            }
            // Every endpoint holds some buckets (the table's indices reach the last ones).
            assert!(seen.iter().all(|c| *c > 0), "n={n}");
        }
    }

    /// A tie on the best score goes to the lower address, in the branch-free pass as in
    /// `highest` (equal hashes force one; between real endpoints it is a 2^-64 event).
    #[test]
    fn ties_go_to_the_lower_address() {
        let eps = eps(12);
        let mut hashes: Vec<u64> = eps.iter().map(endpoint_hash).collect();
        for b in 0..200u16 {
            let point = bucket_point(b);
            let best = highest_all(point, &hashes, &eps).unwrap();
            // Give a higher-addressed endpoint placed earlier the winner's hash: a tie.
            let mut tied = hashes.clone();
            let mut reordered = eps.clone();
            reordered.swap(0, best);
            tied.swap(0, best);
            reordered[0] = SocketAddr::from(([10, 9, 9, 9], 80));
            tied[0] = hashes[best];
            // Endpoint 0 is now 10.9.9.9 with the winning hash; endpoint `best` (if not 0)
            // has whatever was at 0. Put the original winner back, tied, at the end.
            reordered.push(eps[best]);
            tied.push(hashes[best]);
            let got = highest_all(point, &tied, &reordered).unwrap();
            assert_eq!(reordered[got], eps[best], "bucket {b}");
            assert_eq!(
                Some(got),
                highest(point, tied.iter().copied(), &reordered, |_| true)
            );
        }
        hashes.clear();
        assert_eq!(highest_all(1, &hashes, &[]), None);
    }

    /// `balanced` session keys: `lands_on` agrees with the pick, cold (the bucket
    /// scored and stored) and warm (from the table).
    #[test]
    fn lands_on_agrees_with_the_pick() {
        for n in [5, 40, 300] {
            let eps = eps(n);
            let mut cold = Prepared::new(&eps);
            let mut warm = Prepared::new(&eps);
            for key in 0..20_000u64 {
                let key = key.wrapping_mul(0x2545_f491_4f6c_dd1d);
                let target = (key % n as u64) as usize;
                let first = warm.rendezvous(key).unwrap();
                assert_eq!(warm.lands_on(key, target), first == target);
                assert_eq!(cold.lands_on(key, target), first == target);
                assert_eq!(cold.rendezvous(key), Some(first));
            }
            assert!(!cold.lands_on(1, n));
        }
    }
}
