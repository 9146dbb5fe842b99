//! Trusted forwarders: options are honoured only from transport peers in a
//! configured set of prefixes. IPv4 prefixes live in the same LPM trie as
//! IPv6 ones, mapped into `::ffff:0:0/96`.
//!
//! The trie holds the prefixes of both settings slots (see
//! [`crate::config`]): each key starts with its slot's byte, so a lookup
//! made with the slot in force matches that slot's prefixes only.

use crate::config::SLOTS;

/// Most trusted prefixes one configuration may list.
pub const MAX_TRUSTED: u32 = 4096;

/// Entries of the `TOA_TRUSTED` trie: room for a full configuration in each slot.
pub const TRUST_ENTRIES: u32 = MAX_TRUSTED * SLOTS;

/// Key data of the `TOA_TRUSTED` LPM trie: the slot, then an IPv6 (or
/// IPv4-mapped) address in network order.
pub type TrustKey = [u8; 17];

/// Bits of a key taken by the slot byte (always matched in full).
pub const SLOT_BITS: u32 = 8;

/// Prefix length of a single address in the trie (a lookup key).
pub const KEY_BITS: u32 = SLOT_BITS + 128;

/// `AF_INET`, as sock_ops reports the socket's family.
pub const AF_INET: u32 = 2;

/// The key of `addr` (16 bytes, network order) in `slot`.
#[inline(always)]
const fn key(slot: u32, addr: [u8; 16]) -> TrustKey {
    let mut key = [0u8; 17];
    key[0] = slot as u8;
    let mut i = 0;
    while i < 16 {
        key[1 + i] = addr[i];
        i += 1;
    }
    key
}

/// `::ffff:a.b.c.d` for an IPv4 address given as raw network-order bytes.
#[inline(always)]
pub const fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
}

/// The trie key, in `slot`, of a connection's transport peer as sock_ops
/// shows it: the socket's family, its IPv4 address and its IPv6 address
/// words, each as the kernel loads them (network order in memory). An IPv4
/// peer is looked up mapped, so one trie holds both families.
#[inline(always)]
pub fn peer_key(slot: u32, family: u32, ip4: u32, ip6: [u32; 4]) -> TrustKey {
    if family == AF_INET {
        return key(slot, mapped(ip4.to_ne_bytes()));
    }
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
    addr[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
    key(slot, addr)
}

/// The trie key and prefix length, in `slot`, of an IPv4 prefix.
pub const fn v4_prefix(slot: u32, v4: [u8; 4], len: u8) -> (TrustKey, u32) {
    (key(slot, mapped(v4)), SLOT_BITS + 96 + len as u32)
}

/// The trie key and prefix length, in `slot`, of an IPv6 prefix.
pub const fn v6_prefix(slot: u32, v6: [u8; 16], len: u8) -> (TrustKey, u32) {
    (key(slot, v6), SLOT_BITS + len as u32)
}

/// The slot a trie key belongs to.
pub const fn slot_of(key: &TrustKey) -> u32 {
    key[0] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_prefixes_are_mapped() {
        let (key, len) = v4_prefix(1, [198, 51, 100, 0], 24);
        assert_eq!(len, 8 + 120);
        assert_eq!(key[0], 1, "the slot comes first");
        assert_eq!(&key[11..], &[0xff, 0xff, 198, 51, 100, 0]);
        assert_eq!(v6_prefix(0, [0x20; 16], 48).1, 8 + 48);
        assert_eq!(slot_of(&key), 1);
    }

    #[test]
    fn peer_keys() {
        const AF_INET6: u32 = 10;
        let ip4 = u32::from_ne_bytes([192, 0, 2, 1]);
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let words = [0, 4, 8, 12].map(|i| u32::from_ne_bytes([v6[i], v6[i + 1], v6[i + 2], v6[i + 3]]));
        assert_eq!(peer_key(0, AF_INET, ip4, words), key(0, mapped([192, 0, 2, 1])), "IPv4: mapped, IPv6 ignored");
        assert_eq!(peer_key(1, AF_INET6, ip4, words), key(1, v6), "IPv6: the address, IPv4 ignored");
        // An IPv4-mapped peer on an IPv6 socket meets the IPv4 prefixes.
        let mapped_words = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip4];
        assert_eq!(peer_key(0, AF_INET6, 0, mapped_words), v4_prefix(0, [192, 0, 2, 1], 32).0);
    }

    /// Longest-prefix match as the kernel's trie does it: the first `bits`
    /// bits of `key` equal the prefix's.
    fn matches(prefix: &(TrustKey, u32), key: &TrustKey) -> bool {
        let (data, bits) = prefix;
        (0..*bits as usize).all(|b| (data[b / 8] ^ key[b / 8]) & (0x80 >> (b % 8)) == 0)
    }

    #[test]
    fn a_lookup_in_one_slot_never_matches_the_other_slots_prefixes() {
        let ip4 = u32::from_ne_bytes([198, 51, 100, 7]);
        for slot in 0..SLOTS {
            let other = crate::config::other_slot(slot);
            let peer = peer_key(slot, AF_INET, ip4, [0; 4]);
            assert!(matches(&v4_prefix(slot, [198, 51, 100, 0], 24), &peer));
            assert!(!matches(&v4_prefix(other, [198, 51, 100, 0], 24), &peer), "slot {other} seen from {slot}");
            // Even the widest prefix stays in its slot.
            assert!(matches(&v4_prefix(slot, [0; 4], 0), &peer) && matches(&v6_prefix(slot, [0; 16], 0), &peer));
            assert!(!matches(&v6_prefix(other, [0; 16], 0), &peer));
        }
        assert_eq!(TRUST_ENTRIES, 8192);
    }
}
