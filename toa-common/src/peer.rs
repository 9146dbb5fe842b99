//! The real client address as stored per socket.

/// Address family of a real client address.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4: the first 4 bytes of the address are used.
    V4 = 4,
    /// IPv6: all 16 bytes.
    V6 = 6,
}

/// Which packet of the connection the option was taken from.
pub mod source {
    /// No packet: the record is empty (or, in a decision, nothing is stored).
    pub const NONE: u8 = 0;
    /// The client's SYN (saved SYN on the listener).
    pub const SYN: u8 = 1;
    /// The ACK that completes the three-way handshake.
    pub const ACK: u8 = 2;
    /// A data packet after the handshake.
    pub const DATA: u8 = 3;
}

/// The real client of one connection: value of the `TOA_PEERS` socket storage.
///
/// Written by the capture program when an accepted option arrives, read by the
/// getpeername programs and by `toa table`; freed by the kernel with the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerRecord {
    /// Client address, network byte order; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
    /// Client port, network byte order as on the wire; 0 when the format has none.
    pub port: [u8; 2],
    /// [`Family`] as `u8`; 0 means the record is empty.
    pub family: u8,
    /// Option kind the address came in.
    pub kind: u8,
    /// Packet it came from (see [`source`]).
    pub source: u8,
    /// When it was stored: seconds since boot (`bpf_ktime_get_boot_ns()`),
    /// modulo 2^24 (194 days), little endian; see [`PeerRecord::stored_s`].
    pub stored: [u8; 3],
}

/// 24 bytes: behind the kernel's 72-byte element header (5.10 to 6.18) an
/// element of socket storage fits kmalloc-96; 25 to 56 bytes would take
/// kmalloc-128 (32 bytes more per connection).
const _: () = assert!(core::mem::size_of::<PeerRecord>() == 24);

/// The range of [`PeerRecord::stored`]: 2^24 seconds (194 days).
pub const STORED_WRAP_S: u32 = 1 << 24;

impl PeerRecord {
    /// An empty record.
    pub const EMPTY: PeerRecord =
        PeerRecord { addr: [0; 16], port: [0; 2], family: 0, kind: 0, source: 0, stored: [0; 3] };

    /// `stored` for `secs` seconds since boot (taken modulo [`STORED_WRAP_S`]).
    #[inline(always)]
    pub const fn stored_at(secs: u32) -> [u8; 3] {
        let b = secs.to_le_bytes();
        [b[0], b[1], b[2]]
    }

    /// Seconds since boot when it was stored, modulo [`STORED_WRAP_S`].
    pub fn stored_s(&self) -> u32 {
        u32::from_le_bytes([self.stored[0], self.stored[1], self.stored[2], 0])
    }

    /// How long ago it was stored, `now_s` being seconds since boot. Exact
    /// for records younger than 194 days; older ones show their age modulo
    /// that.
    pub fn age_s(&self, now_s: u64) -> u32 {
        ((now_s as u32).wrapping_sub(self.stored_s())) % STORED_WRAP_S
    }

    /// The record's family, if it holds an address.
    #[inline(always)]
    pub fn family(&self) -> Option<Family> {
        match self.family {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }

    /// The IPv4 address as the kernel's `__be32` (the raw bytes in memory order).
    #[inline(always)]
    pub fn ip4_be(&self) -> u32 {
        u32::from_ne_bytes([self.addr[0], self.addr[1], self.addr[2], self.addr[3]])
    }

    /// The address as four `__be32` words, IPv4 mapped to `::ffff:a.b.c.d`.
    #[inline(always)]
    pub fn ip6_be_words(&self) -> [u32; 4] {
        let a = &self.addr;
        if self.family == Family::V4 as u8 {
            [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), self.ip4_be()]
        } else {
            [
                u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
                u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
                u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
                u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
            ]
        }
    }

    /// The port as the kernel's `user_port` wants it: network order in the low 16 bits.
    #[inline(always)]
    pub fn port_be(&self) -> u32 {
        u16::from_ne_bytes(self.port) as u32
    }

    /// The port in host order.
    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, plain integers.
unsafe impl aya::Pod for PeerRecord {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_words_for_ipv4() {
        let mut r = PeerRecord::EMPTY;
        r.family = Family::V4 as u8;
        r.addr[..4].copy_from_slice(&[203, 0, 113, 7]);
        r.port = 4242u16.to_be_bytes();
        let w = r.ip6_be_words();
        let mut bytes = [0u8; 16];
        for (i, word) in w.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 203, 0, 113, 7]);
        assert_eq!(r.port(), 4242);
        assert_eq!(u16::from_be(r.port_be() as u16), 4242);
    }

    #[test]
    fn the_time_of_storing_wraps_after_194_days() {
        let mut r = PeerRecord::EMPTY;
        r.stored = PeerRecord::stored_at(1_000);
        assert_eq!((r.stored_s(), r.age_s(1_012)), (1_000, 12));
        // Stored shortly before the 24-bit counter wraps, read shortly after.
        r.stored = PeerRecord::stored_at(STORED_WRAP_S * 3 - 5);
        assert_eq!(r.age_s(u64::from(STORED_WRAP_S) * 3 + 7), 12);
        assert_eq!(r.stored_s(), STORED_WRAP_S - 5);
    }

    #[test]
    fn ipv6_words_are_the_address() {
        let mut r = PeerRecord::EMPTY;
        r.family = Family::V6 as u8;
        r.addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];
        let w = r.ip6_be_words();
        assert_eq!(w[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(w[3].to_ne_bytes(), [0, 0, 0, 0x42]);
        assert_eq!(r.family(), Some(Family::V6));
        assert_eq!(PeerRecord::EMPTY.family(), None);
    }
}
