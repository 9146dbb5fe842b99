//! Trusted forwarders: options are honoured only from transport peers in a
//! configured set of prefixes. IPv4 prefixes live in the same LPM trie as
//! IPv6 ones, mapped into `::ffff:0:0/96`.

/// Key data of the `TOA_TRUSTED` LPM trie: an IPv6 (or IPv4-mapped) address.
pub type TrustKey = [u8; 16];

/// `::ffff:a.b.c.d` for an IPv4 address given as raw network-order bytes.
#[inline(always)]
pub const fn mapped(v4: [u8; 4]) -> TrustKey {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
}

/// Prefix length of a single address in the trie (a lookup key).
pub const KEY_BITS: u32 = 128;

/// `AF_INET`, as sock_ops reports the socket's family.
pub const AF_INET: u32 = 2;

/// The trie key of a connection's transport peer as sock_ops shows it: the
/// socket's family, its IPv4 address and its IPv6 address words, each as the
/// kernel loads them (network order in memory). An IPv4 peer is looked up
/// mapped, so one trie holds both families.
#[inline(always)]
pub fn peer_key(family: u32, ip4: u32, ip6: [u32; 4]) -> TrustKey {
    if family == AF_INET {
        return mapped(ip4.to_ne_bytes());
    }
    let mut key = [0u8; 16];
    key[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
    key[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
    key[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
    key[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
    key
}

/// The trie key and prefix length of an IPv4 prefix.
pub const fn v4_prefix(v4: [u8; 4], len: u8) -> (TrustKey, u32) {
    (mapped(v4), 96 + len as u32)
}

/// The trie key and prefix length of an IPv6 prefix.
pub const fn v6_prefix(v6: [u8; 16], len: u8) -> (TrustKey, u32) {
    (v6, len as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_prefixes_are_mapped() {
        let (key, len) = v4_prefix([198, 51, 100, 0], 24);
        assert_eq!(len, 120);
        assert_eq!(&key[10..], &[0xff, 0xff, 198, 51, 100, 0]);
        assert_eq!(v6_prefix([0x20; 16], 48).1, 48);
    }

    #[test]
    fn peer_keys() {
        const AF_INET6: u32 = 10;
        let ip4 = u32::from_ne_bytes([192, 0, 2, 1]);
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let words = [0, 4, 8, 12].map(|i| u32::from_ne_bytes([v6[i], v6[i + 1], v6[i + 2], v6[i + 3]]));
        assert_eq!(peer_key(AF_INET, ip4, words), mapped([192, 0, 2, 1]), "IPv4: mapped, IPv6 words ignored");
        assert_eq!(peer_key(AF_INET6, ip4, words), v6, "IPv6: the address, IPv4 ignored");
        // An IPv4-mapped peer on an IPv6 socket meets the IPv4 prefixes.
        let mapped_words = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip4];
        assert_eq!(peer_key(AF_INET6, 0, mapped_words), v4_prefix([192, 0, 2, 1], 32).0);
    }
}
