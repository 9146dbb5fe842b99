//! Choosing the forwarder's local port for a new flow.
//!
//! Every flow must be unique as (local address, local port, backend address,
//! backend port): that tuple is what the backend's replies are looked up by.
//! The data path tries up to [`ATTEMPTS`] candidates and takes the first
//! whose reverse entry it can create (an atomic insert-if-absent, so two CPUs
//! never take the same one); an entry that belongs to an expired or evicted
//! flow may be taken over.
//!
//! Candidates start at a position given by the flow's hash and move on by a
//! stride that is odd and so coprime to any even span, so consecutive
//! attempts spread over the range instead of probing neighbours that a busy
//! flow of the same client may hold.

/// Candidates tried before a new flow is refused (`port_exhausted`).
pub const ATTEMPTS: u32 = 8;

/// A range of local ports, inclusive, host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

/// The default range: below Linux's default ephemeral range (32768–60999),
/// so the forwarder's own outgoing connections from the same address never
/// collide with a translated flow.
pub const DEFAULT_RANGE: PortRange = PortRange { lo: 1024, hi: 32767 };

impl PortRange {
    /// Number of ports in the range (0 if inverted).
    #[inline(always)]
    pub const fn span(&self) -> u32 {
        if self.hi < self.lo { 0 } else { self.hi as u32 - self.lo as u32 + 1 }
    }
}

/// The `attempt`-th candidate (from 0) for a flow with hash `hash`; `None`
/// when the range is empty.
#[inline(always)]
pub fn candidate(range: &PortRange, hash: u32, attempt: u32) -> Option<u16> {
    let span = range.span();
    if span == 0 {
        return None;
    }
    // An odd stride near the golden ratio of the span.
    let stride = ((span as u64 * 40503) >> 16) as u32 | 1;
    let off = (hash % span).wrapping_add(attempt.wrapping_mul(stride)) % span;
    Some((range.lo as u32 + off) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_stay_in_range_and_differ() {
        for range in [PortRange { lo: 1024, hi: 32767 }, PortRange { lo: 40000, hi: 40009 }, PortRange { lo: 7, hi: 7 }]
        {
            for hash in [0u32, 1, 12345, u32::MAX] {
                let mut seen = [0u16; ATTEMPTS as usize];
                for a in 0..ATTEMPTS {
                    let p = candidate(&range, hash, a).expect("non-empty");
                    assert!(p >= range.lo && p <= range.hi, "{p} outside {range:?}");
                    seen[a as usize] = p;
                }
                seen.sort_unstable();
                let distinct = 1 + seen.windows(2).filter(|w| w[0] != w[1]).count();
                let want = (ATTEMPTS as usize).min(range.span() as usize);
                assert_eq!(distinct, want, "{range:?} hash {hash}: {seen:?}");
            }
        }
    }

    #[test]
    fn every_port_is_reachable_by_some_flow() {
        let range = PortRange { lo: 100, hi: 131 };
        let mut hit = [false; 32];
        for hash in 0..64 {
            hit[(candidate(&range, hash, 0).expect("non-empty") - 100) as usize] = true;
        }
        assert!(hit.iter().all(|&h| h));
    }

    #[test]
    fn an_empty_range_has_no_candidate() {
        assert_eq!(candidate(&PortRange { lo: 10, hi: 9 }, 5, 0), None);
        assert_eq!(DEFAULT_RANGE.span(), 31744);
    }
}
