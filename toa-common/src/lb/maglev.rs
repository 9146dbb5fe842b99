//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016), with weights.
//!
//! Each service has a lookup table of `size` entries (a prime), each naming
//! one of its backends; a new flow goes to `table[slot(flow_hash, size)]`.
//! The table depends only on the backends' identities (address, port) and
//! weights, never on the order they are listed in or on which node computes
//! it, so several forwarders behind ECMP pick the same backend for a flow
//! without exchanging anything.
//!
//! Every backend has a permutation of the slots (`offset + j * skip mod
//! size`, both from hashes of its identity; `size` prime, so every skip
//! visits every slot). The table is filled in turns: a backend takes the
//! next slot of its permutation that is still free. With weights, a turn
//! costs the backend's credit: each round it earns its weight and takes a
//! slot for every `max_weight` earned, so shares follow the weights (equal
//! weights are the paper's algorithm exactly). Weight 0 takes no slot (a
//! drained backend: no new flows, its established flows go on).
//!
//! What the paper promises, and the tests check ([`tests`]): each backend
//! gets its share of the slots within a small bound when `size` is much
//! larger than the number of backends; removing a backend moves its own
//! slots and only a few others; adding one moves about `1/(N+1)` of them.

/// The table size used unless configured: the paper's and Katran's 65537.
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// The smallest table size accepted.
pub const MIN_TABLE_SIZE: u32 = 251;
/// The largest table size accepted.
pub const MAX_TABLE_SIZE: u32 = 1_048_573;
/// A table entry that names no backend (a service with none in rotation).
pub const NO_BACKEND: u32 = u32::MAX;
/// The largest weight.
pub const MAX_WEIGHT: u32 = 65_535;

/// Whether `n` is prime (trial division; table sizes are at most ~2^20).
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Whether `size` can be a table size: a prime within
/// [`MIN_TABLE_SIZE`]..=[`MAX_TABLE_SIZE`].
pub const fn valid_table_size(size: u32) -> bool {
    size >= MIN_TABLE_SIZE && size <= MAX_TABLE_SIZE && is_prime(size)
}

/// The slot of a flow with hash `hash` in a table of `size` entries
/// (multiply-shift: uniform, no division).
#[inline(always)]
pub const fn slot(hash: u32, size: u32) -> u32 {
    ((hash as u64 * size as u64) >> 32) as u32
}

/// FNV-1a over `bytes` from `seed`, then a 64-bit finaliser (SplitMix64):
/// the same on every host.
const fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A backend's identity as Maglev hashes it: its address (16 bytes,
/// network order, IPv4 in the first 4), port (network order) and family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId {
    /// Address bytes.
    pub addr: [u8; 16],
    /// Port, network order.
    pub port: [u8; 2],
    /// Family (4 or 6).
    pub family: u8,
}

impl BackendId {
    fn bytes(&self) -> [u8; 19] {
        let mut b = [0u8; 19];
        let mut i = 0;
        while i < 16 {
            b[i] = self.addr[i];
            i += 1;
        }
        b[16] = self.port[0];
        b[17] = self.port[1];
        b[18] = self.family;
        b
    }
}

/// One backend of a table: where its permutation starts and how it steps,
/// its weight, and the value its slots hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its identity (also the order members are taken in).
    pub id: BackendId,
    /// First slot of its permutation.
    pub offset: u32,
    /// Step of its permutation (1..size).
    pub skip: u32,
    /// Its weight (0: no slots).
    pub weight: u32,
    /// What its slots hold (the caller's backend index).
    pub value: u32,
}

impl Member {
    /// A member for a table of `size` entries (`size` a valid table size).
    pub fn new(id: BackendId, weight: u32, value: u32, size: u32) -> Member {
        let b = id.bytes();
        let offset = (hash64(&b, 0x6d61_676c_6576_3031) % size as u64) as u32;
        let skip = (hash64(&b, 0x6d61_676c_6576_3032) % (size as u64 - 1)) as u32 + 1;
        Member { id, offset, skip, weight: if weight > MAX_WEIGHT { MAX_WEIGHT } else { weight }, value }
    }
}

/// Why a table could not be filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The table's length is not a valid table size.
    BadSize(usize),
    /// The working buffer is shorter than the member list.
    ShortBuffer,
    /// A member was made for another table size.
    BadMember,
}

/// Fills `table` (its length a valid table size) from `members`, whatever
/// their order (they are sorted by identity first). `work` is the caller's
/// buffer of at least `members.len()` entries. With no member of positive
/// weight, every entry is [`NO_BACKEND`].
pub fn populate(members: &mut [Member], work: &mut [Turn], table: &mut [u32]) -> Result<(), MaglevError> {
    let size = table.len();
    if size > u32::MAX as usize || !valid_table_size(size as u32) {
        return Err(MaglevError::BadSize(size));
    }
    if work.len() < members.len() {
        return Err(MaglevError::ShortBuffer);
    }
    if members.iter().any(|m| m.offset as usize >= size || m.skip == 0 || m.skip as usize >= size) {
        return Err(MaglevError::BadMember);
    }
    members.sort_unstable_by_key(|m| m.id);
    for e in table.iter_mut() {
        *e = NO_BACKEND;
    }
    let max_weight = members.iter().map(|m| m.weight).max().unwrap_or(0);
    if max_weight == 0 {
        return Ok(());
    }
    let work = &mut work[..members.len()];
    for t in work.iter_mut() {
        *t = Turn::default();
    }
    let (size64, max64) = (size as u64, max_weight as u64);
    let mut filled = 0usize;
    loop {
        for (m, t) in members.iter().zip(work.iter_mut()) {
            if m.weight == 0 {
                continue;
            }
            t.credit += m.weight as u64;
            if t.credit < max64 {
                continue;
            }
            t.credit -= max64;
            // The next free slot of this member's permutation; one exists
            // while the table is not full (the permutation visits them all).
            loop {
                let c = ((m.offset as u64 + t.next * m.skip as u64) % size64) as usize;
                t.next += 1;
                if table[c] == NO_BACKEND {
                    table[c] = m.value;
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                return Ok(());
            }
        }
    }
}

/// A member's progress while a table is filled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    /// Position in its permutation.
    pub next: u64,
    /// Weight earned and not yet spent.
    pub credit: u64,
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    fn id(i: u32) -> BackendId {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 9, (i >> 8) as u8, i as u8]);
        BackendId { addr, port: 8080u16.to_be_bytes(), family: 4 }
    }

    fn table(ids: &[(u32, u32)], size: u32) -> Vec<u32> {
        let mut members: Vec<Member> = ids.iter().map(|&(i, w)| Member::new(id(i), w, i, size)).collect();
        let mut work = vec![Turn::default(); members.len()];
        let mut t = vec![0u32; size as usize];
        populate(&mut members, &mut work, &mut t).expect("fills");
        t
    }

    fn shares(t: &[u32], values: &[u32]) -> Vec<usize> {
        values.iter().map(|v| t.iter().filter(|e| *e == v).count()).collect()
    }

    #[test]
    fn primes_and_sizes() {
        for p in [2, 3, 5, 251, 65_537, 1_048_573] {
            assert!(is_prime(p), "{p}");
        }
        for n in [0, 1, 4, 9, 65_535, 65_539 * 3, 1_048_575] {
            assert!(!is_prime(n), "{n}");
        }
        assert!(valid_table_size(DEFAULT_TABLE_SIZE));
        assert!(!valid_table_size(65_536) && !valid_table_size(241) && !valid_table_size(2_097_143));
    }

    #[test]
    fn every_slot_is_filled_and_shares_are_balanced() {
        // The paper's bound: with size >> N, the largest share is within a
        // few percent of the mean (Figure 9: <= 1.05 at N=1000 and M=65537).
        for (n, size, bound) in [
            (2u32, 65_537u32, 0.005),
            (3, 65_537, 0.005),
            (10, 65_537, 0.01),
            (100, 65_537, 0.04),
            (1000, 65_537, 0.25),
        ] {
            let ids: Vec<(u32, u32)> = (0..n).map(|i| (i, 1)).collect();
            let t = table(&ids, size);
            assert!(t.iter().all(|&e| e < n), "every slot names a backend");
            let s = shares(&t, &(0..n).collect::<Vec<_>>());
            let mean = size as f64 / n as f64;
            let worst = s.iter().map(|&c| (c as f64 - mean).abs() / mean).fold(0.0, f64::max);
            assert!(
                worst <= bound,
                "N={n}: worst share off the mean by {worst:.4} > {bound}: {:?}",
                &s[..s.len().min(10)]
            );
        }
    }

    #[test]
    fn the_order_backends_are_listed_in_does_not_matter() {
        let a = table(&[(1, 1), (2, 1), (3, 1), (4, 2)], 4099);
        let b = table(&[(4, 2), (2, 1), (3, 1), (1, 1)], 4099);
        assert_eq!(a, b);
    }

    #[test]
    fn weights_set_the_shares() {
        let t = table(&[(0, 1), (1, 2), (2, 3), (3, 0)], 65_537);
        let s = shares(&t, &[0, 1, 2, 3]);
        assert_eq!(s[3], 0, "weight 0 takes no slot");
        let unit = 65_537.0 / 6.0;
        for (i, w) in [(0usize, 1.0), (1, 2.0), (2, 3.0)] {
            let off = (s[i] as f64 - unit * w).abs() / (unit * w);
            assert!(off < 0.01, "backend {i} weight {w}: {} slots, {off:.4} off: {s:?}", s[i]);
        }
    }

    #[test]
    fn no_backend_in_rotation_fills_nothing() {
        assert!(table(&[(0, 0), (1, 0)], 251).iter().all(|&e| e == NO_BACKEND));
        assert!(table(&[], 251).iter().all(|&e| e == NO_BACKEND));
    }

    #[test]
    fn removing_a_backend_moves_its_slots_and_few_others() {
        for n in [3u32, 10, 50] {
            let all: Vec<(u32, u32)> = (0..n).map(|i| (i, 1)).collect();
            let before = table(&all, 65_537);
            let after = table(&all[1..], 65_537);
            let others = before.iter().filter(|&&e| e != 0).count();
            let moved = before.iter().zip(&after).filter(|(b, a)| **b != 0 && b != a).count();
            // The paper (Figure 10) measures a few percent at most.
            let frac = moved as f64 / others as f64;
            assert!(frac < 0.03, "N={n}: {frac:.4} of the other backends' slots moved");
            assert!(after.iter().all(|&e| e != 0), "the removed backend is gone");
        }
    }

    #[test]
    fn adding_a_backend_moves_about_one_in_n_plus_one() {
        for n in [2u32, 4, 9] {
            let old: Vec<(u32, u32)> = (0..n).map(|i| (i, 1)).collect();
            let mut new = old.clone();
            new.push((n, 1));
            let before = table(&old, 65_537);
            let after = table(&new, 65_537);
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / 65_537.0;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(moved >= ideal * 0.97 && moved <= ideal * 1.03 + 0.01, "N={n}: {moved:.4} moved, ideal {ideal:.4}");
            let to_new = after.iter().filter(|&&e| e == n).count() as f64 / 65_537.0;
            assert!((to_new - ideal).abs() < 0.01, "N={n}: the new backend got {to_new:.4}");
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let mut m = [Member::new(id(1), 1, 1, 251)];
        let mut work = [Turn::default()];
        assert_eq!(populate(&mut m, &mut work, &mut [0u32; 250]), Err(MaglevError::BadSize(250)));
        assert_eq!(populate(&mut m, &mut [], &mut [0u32; 251]), Err(MaglevError::ShortBuffer));
        let mut big = [Member::new(id(1), 1, 1, 65_537)];
        big[0].offset = 300;
        assert_eq!(populate(&mut big, &mut work, &mut [0u32; 251]), Err(MaglevError::BadMember));
    }

    #[test]
    fn slots_stay_below_the_size() {
        for h in [0u32, 1, 0x8000_0000, u32::MAX] {
            assert!(slot(h, 65_537) < 65_537);
        }
        assert_eq!(slot(u32::MAX, 251), 250);
    }
}
