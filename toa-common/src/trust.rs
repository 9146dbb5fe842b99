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
}
