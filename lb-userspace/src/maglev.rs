//! Backend lookup tables, built in user space and programmed per service.
//!
//! - Maglev (Eisenbud et al., NSDI 2016) with weights: a prime-sized table where every backend
//!   fills slots along its own permutation, in turns proportional to its weight. The table is a
//!   pure function of (backend identities, weights, size, seed), so every node builds the same
//!   one, and a backend change moves few slots.
//! - Random: each backend listed in proportion to its weight; the datapath picks a random slot.
//!
//! Backend identity is its `address:port` text, never a node-local id.

/// Maglev table size of the benchmarks and fixtures that pin one (prime).
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;
/// Table sizes `MaglevSize::Auto` picks from: the largest prime below each power of two from
/// 1,024 on, so a table fills its 4 KiB chunks (`LUT_CHUNK_SLOTS`) with no chunk wasted.
pub const AUTO_SIZES: [u32; 8] = [1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071];
/// `MaglevSize::Auto` gives each backend at least this many slots (the Maglev paper's M ≥ 100·N
/// bound, under which every backend's share stays within about 1% of its weight's).
pub const AUTO_SLOTS_PER_BACKEND: u32 = 100;
/// Largest table size accepted.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// Largest random table (slots), after weight expansion.
pub const MAX_RANDOM_TABLE: usize = 65_536;
/// Largest pick list after a Maglev table (`ServiceValue::pick_len`, a u16).
pub const MAX_PICK_LIST: usize = 4_096;

/// Error building a table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// The size is not a prime in range.
    #[error("Maglev table size {0} must be a prime between 7 and {MAX_TABLE_SIZE}")]
    BadSize(u32),
}

/// How big each service's Maglev table is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevSize {
    /// Sized from the service's backend count: the smallest of `AUTO_SIZES` with
    /// `AUTO_SLOTS_PER_BACKEND` slots per backend. A pure function of the backend set, so every
    /// node still builds the same table; a change of size (crossing 10, 20, 40, … backends)
    /// moves more new flows than a change within one size.
    Auto,
    /// One size for every service (a prime).
    Fixed(u32),
}

impl MaglevSize {
    /// The table size for `backends` backends.
    pub fn for_backends(self, backends: usize) -> u32 {
        match self {
            MaglevSize::Fixed(m) => m,
            MaglevSize::Auto => {
                let want = (backends as u64).saturating_mul(u64::from(AUTO_SLOTS_PER_BACKEND));
                let last = AUTO_SIZES[AUTO_SIZES.len() - 1];
                AUTO_SIZES
                    .into_iter()
                    .find(|m| u64::from(*m) >= want)
                    .unwrap_or(last)
            }
        }
    }
}

impl std::fmt::Display for MaglevSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaglevSize::Auto => f.write_str("auto"),
            MaglevSize::Fixed(m) => write!(f, "{m}"),
        }
    }
}

impl std::str::FromStr for MaglevSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(MaglevSize::Auto);
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{s:?} is neither `auto` nor a number"))?;
        check_size(n)
            .map(MaglevSize::Fixed)
            .map_err(|e| e.to_string())
    }
}

/// True if `n` is prime.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Checks a Maglev table size.
pub fn check_size(m: u32) -> Result<u32, TableError> {
    if (7..=MAX_TABLE_SIZE).contains(&m) && is_prime(m) {
        Ok(m)
    } else {
        Err(TableError::BadSize(m))
    }
}

/// A stable 64-bit hash of `data` (FNV-1a, then a splitmix64 finish for avalanche). Part of
/// the cross-node contract: changing it changes every node's tables.
pub fn hash64(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A backend as the table builders see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableBackend {
    /// Identity hashed into the permutation (`address:port`).
    pub key: String,
    /// Relative weight, at least 1.
    pub weight: u16,
}

/// Builds a weighted Maglev table of size `m` (prime). Entries index `backends`.
/// Returns an empty table when there are no backends.
///
/// Backends take turns (in proportion to their weights) claiming the next free slot along
/// their own permutation `(offset + j * skip) mod m`. The hot loop walks each permutation
/// incrementally (no multiplication or division) and tests a bitmap that stays in L1 cache.
pub fn maglev(backends: &[TableBackend], m: u32, seed: u32) -> Vec<u32> {
    let n = backends.len();
    if n == 0 {
        return Vec::new();
    }
    let m64 = u64::from(m);
    let mut table = vec![0u32; m as usize];
    let mut taken = vec![0u64; (m as usize).div_ceil(64)];
    let mut pos: Vec<u32> = Vec::with_capacity(n);
    let mut skip: Vec<u32> = Vec::with_capacity(n);
    for b in backends {
        let s = u64::from(seed);
        pos.push((hash64(s, b.key.as_bytes()) % m64) as u32);
        skip.push((hash64(s ^ 0x5bd1_e995, b.key.as_bytes()) % (m64 - 1) + 1) as u32);
    }
    // Claims the next free slot on backend i's permutation.
    let mut claim = |i: usize, pos: &mut [u32]| {
        let (mut p, s) = (pos[i], skip[i]);
        loop {
            let c = p as usize;
            // p + s < 2m <= 2^32 for every accepted table size.
            p += s;
            if p >= m {
                p -= m;
            }
            let (word, bit) = (c / 64, 1u64 << (c % 64));
            if taken[word] & bit == 0 {
                taken[word] |= bit;
                table[c] = i as u32;
                break;
            }
        }
        pos[i] = p;
    };
    let weights: Vec<u64> = backends
        .iter()
        .map(|b| u64::from(b.weight.max(1)))
        .collect();
    let wmax = weights.iter().copied().max().unwrap_or(1);
    let uniform = weights.iter().all(|w| *w == wmax);
    let mut filled = 0u32;
    let mut round = 0u64;
    loop {
        for (i, w) in weights.iter().enumerate() {
            // Turns in this round, so that after r rounds backend i had floor(r*w/wmax).
            let turns = if uniform {
                1
            } else {
                (round + 1) * w / wmax - round * w / wmax
            };
            for _ in 0..turns {
                claim(i, &mut pos);
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
        round += 1;
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Builds a random-selection table: backend `i` appears in proportion to its weight (weights
/// reduced by their gcd, and scaled down if the table would exceed `MAX_RANDOM_TABLE`).
pub fn random(backends: &[TableBackend]) -> Vec<u32> {
    random_capped(backends, MAX_RANDOM_TABLE)
}

/// `random`, scaled down to about `cap` slots at most.
pub fn random_capped(backends: &[TableBackend], cap: usize) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    let g = backends
        .iter()
        .fold(0u32, |g, b| gcd(g, u32::from(b.weight.max(1))));
    let total: usize = backends
        .iter()
        .map(|b| (u32::from(b.weight.max(1)) / g) as usize)
        .sum();
    let scale = if total > cap {
        total as f64 / cap as f64
    } else {
        1.0
    };
    let mut table = Vec::with_capacity(total.min(cap));
    for (i, b) in backends.iter().enumerate() {
        let reps = ((f64::from(u32::from(b.weight.max(1)) / g) / scale).round() as usize).max(1);
        table.extend(std::iter::repeat_n(i as u32, reps));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<TableBackend> {
        (0..n)
            .map(|i| TableBackend {
                key: format!("10.0.{}.{}:8080", i / 250, i % 250 + 1),
                weight: 1,
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for e in table {
            c[*e as usize] += 1;
        }
        c
    }

    #[test]
    fn auto_size_follows_the_backend_count() {
        let auto = |n| MaglevSize::Auto.for_backends(n);
        assert_eq!([auto(1), auto(3), auto(10)], [1_021; 3]);
        assert_eq!([auto(11), auto(20), auto(21)], [2_039, 2_039, 4_093]);
        assert_eq!(auto(163), 16_381);
        assert_eq!(auto(100_000), 131_071);
        assert_eq!(MaglevSize::Fixed(16_381).for_backends(1), 16_381);
        assert_eq!("auto".parse(), Ok(MaglevSize::Auto));
        assert_eq!("65537".parse(), Ok(MaglevSize::Fixed(65_537)));
        assert!("65536".parse::<MaglevSize>().unwrap_err().contains("prime"));
        assert!("big".parse::<MaglevSize>().unwrap_err().contains("auto"));
        // At the largest count of each auto size every backend's share is within 2% of 1/N.
        for n in [10, 20, 40, 81] {
            let m = auto(n);
            let c = counts(&maglev(&backends(n), m, 0), n);
            let ideal = f64::from(m) / n as f64;
            for k in c {
                assert!(
                    (k as f64 / ideal - 1.0).abs() < 0.02,
                    "n={n} m={m}: {k} vs {ideal}"
                );
            }
        }
    }

    #[test]
    fn sizes_must_be_prime() {
        assert_eq!(check_size(16_381), Ok(16_381));
        assert_eq!(check_size(65_537), Ok(65_537));
        assert_eq!(check_size(16_384), Err(TableError::BadSize(16_384)));
        for (i, m) in AUTO_SIZES.into_iter().enumerate() {
            let cap = (lb_common::LUT_CHUNK_SLOTS as u32) << i;
            assert_eq!(check_size(m), Ok(m));
            assert!(
                m < cap && !(m + 1..cap).any(is_prime),
                "{m}: largest prime below {cap}"
            );
        }
        assert_eq!(check_size(5), Err(TableError::BadSize(5)));
    }

    #[test]
    fn every_slot_is_filled_and_spread_is_even() {
        for n in [1usize, 3, 10, 100] {
            let t = maglev(&backends(n), DEFAULT_TABLE_SIZE, 0);
            assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
            let c = counts(&t, n);
            let ideal = f64::from(DEFAULT_TABLE_SIZE) / n as f64;
            for (i, k) in c.iter().enumerate() {
                let dev = (*k as f64 - ideal).abs() / ideal;
                assert!(
                    dev < 0.03,
                    "n={n} backend {i}: {k} slots vs ideal {ideal:.0}"
                );
            }
        }
    }

    #[test]
    fn weights_are_respected() {
        let mut b = backends(3);
        b[0].weight = 1;
        b[1].weight = 2;
        b[2].weight = 5;
        let t = maglev(&b, 65_537, 0);
        let c = counts(&t, 3);
        for (i, w) in [1.0, 2.0, 5.0].iter().enumerate() {
            let ideal = 65_537.0 * w / 8.0;
            let dev = (c[i] as f64 - ideal).abs() / ideal;
            assert!(
                dev < 0.03,
                "backend {i}: {} slots vs ideal {ideal:.0}",
                c[i]
            );
        }
    }

    #[test]
    fn same_input_same_table_and_seed_matters() {
        let a = maglev(&backends(10), DEFAULT_TABLE_SIZE, 7);
        assert_eq!(a, maglev(&backends(10), DEFAULT_TABLE_SIZE, 7));
        assert_ne!(a, maglev(&backends(10), DEFAULT_TABLE_SIZE, 8));
        // Order of the input list does not change which backend a slot maps to.
        let mut rev = backends(10);
        rev.reverse();
        let b = maglev(&rev, DEFAULT_TABLE_SIZE, 7);
        let keys = |t: &[u32], list: &[TableBackend]| -> Vec<String> {
            t.iter().map(|i| list[*i as usize].key.clone()).collect()
        };
        let same = keys(&a, &backends(10))
            .iter()
            .zip(keys(&b, &rev))
            .filter(|(x, y)| **x == *y)
            .count();
        // Maglev's round-robin order depends on list order; xlb always sorts backends, so this
        // only documents that a different order is a (mostly) different table.
        assert!(same > 0);
    }

    /// Removing one backend moves its own slots and few others. Maglev is not strictly minimal
    /// (a table must not depend on history, or nodes would disagree): surviving backends trade
    /// about 0.5% of the slots. Established flows are unaffected either way (conntrack).
    #[test]
    fn removing_a_backend_moves_little_more_than_its_share() {
        for (n, m) in [(10usize, DEFAULT_TABLE_SIZE), (100, 65_537)] {
            let all = backends(n);
            let before = maglev(&all, m, 0);
            let removed = n / 2;
            let rest: Vec<TableBackend> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, b)| b.clone())
                .collect();
            let after = maglev(&rest, m, 0);
            let key_before = |s: usize| &all[before[s] as usize].key;
            let key_after = |s: usize| &rest[after[s] as usize].key;
            let share = before.iter().filter(|e| **e as usize == removed).count();
            let moved_others = (0..m as usize)
                .filter(|s| before[*s] as usize != removed && key_before(*s) != key_after(*s))
                .count();
            let extra = moved_others as f64 / f64::from(m);
            println!(
                "n={n} m={m}: removed backend owned {share} slots; {moved_others} other slots \
                 moved ({:.2}% of the table)",
                extra * 100.0
            );
            assert!(
                moved_others <= m as usize / 100,
                "n={n}: {moved_others} slots of surviving backends moved (share {share})"
            );
            // Every slot of the removed backend moved to a survivor.
            assert!((0..m as usize).all(|s| rest.iter().any(|b| b.key == *key_after(s))));
        }
    }

    #[test]
    fn random_table_follows_weights() {
        let mut b = backends(3);
        b[1].weight = 2;
        b[2].weight = 4;
        let t = random(&b);
        assert_eq!(counts(&t, 3), vec![1, 2, 4]);
        assert!(random(&[]).is_empty());
    }
}
