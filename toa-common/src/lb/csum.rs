//! Internet checksum arithmetic (RFC 1071) and its incremental update
//! (RFC 1624), for the forwarder's address, port and header rewrites.
//!
//! A one's-complement sum is carried unfolded in a `u32` (a "partial sum", as
//! the kernel's `__wsum`), folded to 16 bits only when it is stored. All
//! 16-bit words are read big-endian (network order): the arithmetic is
//! byte-order independent as long as the words are read and written the same
//! way, and big-endian matches what the packet holds.
//!
//! The update rule: when 16-bit words `m` of a checksummed area become `m'`,
//! the stored checksum `HC` becomes `HC' = ~(~HC + ~m + m')` (RFC 1624 eqn. 3),
//! which never produces the `0x0000`/`0xFFFF` ambiguity of eqn. 2.

/// Adds two partial sums with end-around carry.
#[inline(always)]
pub const fn add(a: u32, b: u32) -> u32 {
    let (s, carry) = a.overflowing_add(b);
    s.wrapping_add(carry as u32)
}

/// Folds a partial sum to 16 bits (one's complement, not inverted).
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The partial sum of a 16-bit word.
#[inline(always)]
pub const fn word(w: u16) -> u32 {
    w as u32
}

/// The partial sum of a 32-bit value read as two big-endian 16-bit words.
#[inline(always)]
pub const fn word32(v: u32) -> u32 {
    add(v >> 16, v & 0xffff)
}

/// The partial sum of `bytes` read as big-endian 16-bit words; an odd last
/// byte is padded with a zero byte on the right (RFC 1071).
pub fn sum_bytes(bytes: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum = add(sum, u16::from_be_bytes([c[0], c[1]]) as u32);
    }
    if let [last] = chunks.remainder() {
        sum = add(sum, (*last as u32) << 8);
    }
    sum
}

/// The partial sum of the first `len` bytes (at most 64, rounded down to
/// even) of a 64-byte buffer, with masked indices for the eBPF verifier.
#[inline(never)]
pub fn sum_prefix(buf: &[u8; 64], len: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0usize;
    while i + 1 < 64 {
        if i + 1 >= len {
            break;
        }
        sum = add(sum, ((buf[i & 63] as u32) << 8) | buf[(i + 1) & 63] as u32);
        i += 2;
    }
    sum
}

/// The partial sum of a 16-byte address (IPv4 uses only the first 4 bytes).
/// Not inlined: a BPF function call is cheaper than the registers a fully
/// unrolled sum of several addresses spills to the 512-byte stack.
#[inline(never)]
pub fn sum_addr(addr: &[u8; 16], v6: bool) -> u32 {
    let n = if v6 { 16 } else { 4 };
    let mut sum = 0u32;
    let mut i = 0;
    while i < n {
        sum = add(sum, u16::from_be_bytes([addr[i], addr[i + 1]]) as u32);
        i += 2;
    }
    sum
}

/// The delta that turns a checksum over `old` into one over `new`: `~old + new`,
/// as a partial sum (what `bpf_csum_diff` returns, and what the kernel's
/// `bpf_l4_csum_replace` takes in its by-difference mode).
#[inline(always)]
pub const fn delta(old_sum: u32, new_sum: u32) -> u32 {
    add(!old_sum, new_sum)
}

/// Applies a delta to a stored (inverted, folded) checksum: RFC 1624 eqn. 3.
#[inline(always)]
pub const fn apply(check: u16, delta: u32) -> u16 {
    !fold(add(!check as u32 & 0xffff, delta))
}

/// The stored checksum of an area whose words sum to `sum` (`~fold(sum)`).
#[inline(always)]
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// A delta as the kernel's checksum helpers take it (`bpf_l3_csum_replace`,
/// `bpf_l4_csum_replace` by difference): they add 16-bit words in memory
/// order, which on the little-endian eBPF targets is the byte-swapped view of
/// the big-endian words summed here. One's-complement sums commute with the
/// swap (RFC 1071 §2(B)), so folding and swapping converts exactly.
#[inline(always)]
pub const fn for_kernel(delta: u32) -> u32 {
    fold(delta).swap_bytes() as u32
}

/// The partial sum of the TCP/UDP pseudo-header over IPv4 (RFC 793): source,
/// destination, protocol and the transport length.
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    let mut s = sum_bytes(&src);
    s = add(s, sum_bytes(&dst));
    s = add(s, proto as u32);
    add(s, len as u32)
}

/// The partial sum of the IPv6 pseudo-header (RFC 8200 §8.1).
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, len: u32) -> u32 {
    let mut s = sum_bytes(src);
    s = add(s, sum_bytes(dst));
    s = add(s, word32(len));
    add(s, proto as u32)
}

/// A checksum from scratch: `~fold(pseudo + sum(bytes))`, the reference the
/// incremental updates are tested against.
pub fn checksum(pseudo: u32, bytes: &[u8]) -> u16 {
    finish(add(pseudo, sum_bytes(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift) for table-free cases.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes<const N: usize>(&mut self) -> [u8; N] {
            let mut b = [0u8; N];
            for x in &mut b {
                *x = self.next() as u8;
            }
            b
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        let b = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_bytes(&b)), 0xddf2);
        assert_eq!(checksum(0, &b), !0xddf2);
        // Odd length: the last byte is the high half of a word.
        assert_eq!(fold(sum_bytes(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn an_ipv4_header_checksum_verifies_to_zero() {
        // A real header (from a capture) with its checksum 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(fold(sum_bytes(&h)), 0xffff);
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(checksum(0, &z), 0xb861);
    }

    #[test]
    fn incremental_updates_equal_a_checksum_from_scratch() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..2000 {
            // A 60-byte "segment": change a random even-aligned stretch of words.
            let mut seg: [u8; 60] = rng.bytes();
            let pseudo = (rng.next() as u32) & 0x3ffff;
            let check = checksum(pseudo, &seg);
            let at = (rng.next() as usize % 28) * 2;
            let n = 2 + (rng.next() as usize % 2) * 2; // 2 or 4 bytes
            let old = sum_bytes(&seg[at..at + n]);
            for b in &mut seg[at..at + n] {
                *b = rng.next() as u8;
            }
            let new = sum_bytes(&seg[at..at + n]);
            let updated = apply(check, delta(old, new));
            let scratch = checksum(pseudo, &seg);
            // 0x0000 and 0xffff both stand for zero in one's complement; the
            // receiver accepts either, so compare what it verifies.
            assert_eq!(
                fold(add(add(pseudo, sum_bytes(&seg)), updated as u32)),
                0xffff,
                "round {round}: incremental {updated:#06x} does not verify (from scratch {scratch:#06x})"
            );
            if scratch != 0 && scratch != 0xffff {
                assert_eq!(updated, scratch, "round {round}");
            }
        }
    }

    #[test]
    fn pseudo_header_changes_update_like_a_recomputation() {
        let mut rng = Rng(42);
        for _ in 0..500 {
            let (s4, d4, s4b, d4b): ([u8; 4], [u8; 4], [u8; 4], [u8; 4]) =
                (rng.bytes(), rng.bytes(), rng.bytes(), rng.bytes());
            let seg: [u8; 40] = rng.bytes();
            let c = checksum(pseudo_v4(s4, d4, 6, 40), &seg);
            let d = delta(pseudo_v4(s4, d4, 6, 40), pseudo_v4(s4b, d4b, 6, 48));
            let c2 = apply(c, d);
            assert_eq!(fold(add(add(pseudo_v4(s4b, d4b, 6, 48), sum_bytes(&seg)), c2 as u32)), 0xffff);

            let (s6, d6, s6b): ([u8; 16], [u8; 16], [u8; 16]) = (rng.bytes(), rng.bytes(), rng.bytes());
            let c = checksum(pseudo_v6(&s6, &d6, 6, 40), &seg);
            let d = delta(pseudo_v6(&s6, &d6, 6, 40), pseudo_v6(&s6b, &d6, 6, 60));
            let c2 = apply(c, d);
            assert_eq!(fold(add(add(pseudo_v6(&s6b, &d6, 6, 60), sum_bytes(&seg)), c2 as u32)), 0xffff);
            assert_eq!(sum_addr(&s6, true), sum_bytes(&s6));
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&s4);
            assert_eq!(sum_addr(&a, false), sum_bytes(&s4));
        }
    }

    #[test]
    fn moving_bytes_by_an_even_offset_keeps_the_sum() {
        let mut rng = Rng(7);
        let data: [u8; 33] = rng.bytes();
        let mut shifted = [0u8; 41];
        shifted[8..].copy_from_slice(&data);
        assert_eq!(fold(sum_bytes(&data)), fold(sum_bytes(&shifted)));
    }

    #[test]
    fn prefix_sums() {
        let mut rng = Rng(3);
        let b: [u8; 64] = rng.bytes();
        for len in [0, 1, 2, 20, 40, 63, 64, 100] {
            assert_eq!(sum_prefix(&b, len), sum_bytes(&b[..len.min(64) & !1]), "len {len}");
        }
    }

    #[test]
    fn kernel_deltas_are_the_little_endian_view() {
        // The kernel's by-difference update, emulated with little-endian words.
        let le_sum = |b: &[u8]| b.chunks(2).fold(0u32, |s, c| add(s, u16::from_le_bytes([c[0], c[1]]) as u32));
        let mut rng = Rng(11);
        for _ in 0..200 {
            let mut seg: [u8; 20] = rng.bytes();
            seg[10] = 0;
            seg[11] = 0;
            let c = checksum(0, &seg);
            seg[10..12].copy_from_slice(&c.to_be_bytes());
            let old = sum_bytes(&seg[12..20]);
            let new_bytes: [u8; 8] = rng.bytes();
            let d = delta(old, sum_bytes(&new_bytes));
            seg[12..20].copy_from_slice(&new_bytes);
            // csum_replace_by_diff: *sum = ~fold(diff + ~*sum), on the raw (LE) field.
            let field = u16::from_le_bytes([seg[10], seg[11]]);
            let patched = !fold(add(for_kernel(d), !field as u32 & 0xffff));
            seg[10..12].copy_from_slice(&patched.to_le_bytes());
            assert_eq!(fold(le_sum(&seg)), 0xffff);
            assert_eq!(fold(sum_bytes(&seg)), 0xffff);
        }
    }

    #[test]
    fn helpers_agree() {
        assert_eq!(word32(0x1234_5678), 0x1234 + 0x5678);
        assert_eq!(add(0xffff_ffff, 1), 1);
        assert_eq!(fold(0x0001_fffe), 0xffff);
        assert_eq!(word(7), 7);
    }
}
