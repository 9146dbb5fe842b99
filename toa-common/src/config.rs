//! Receiver settings the agent writes and the capture program reads.
//!
//! Every settings map has [`SLOTS`] slots: the one in force, named by the
//! word in `TOA_ACTIVE`, and a spare. The agent writes a new configuration
//! into the spare slot completely (formats and flags, ports, trusted
//! prefixes) and then switches the word: the programs see either the old
//! configuration or the new one, never a mixture, and a configuration that
//! fails part-way never comes into force.

use crate::format::Formats;

/// Settings slots per map: the one in force and the one being written.
pub const SLOTS: u32 = 2;

/// The other slot.
#[inline(always)]
pub const fn other_slot(slot: u32) -> u32 {
    (slot + 1) % SLOTS
}

/// Flag: also take the option from the SYN (saved SYN on listeners created
/// after the agent started).
pub const CAPTURE_SYN: u32 = 1;
/// Flag: when the handshake ACK had no option, look at the next packets up to
/// the first data packet.
pub const CAPTURE_DATA: u32 = 2;
/// Flag: honour options from every transport peer (no trusted prefixes set).
pub const TRUST_ALL: u32 = 4;
/// Flag: act only on the local ports in the `TOA_PORTS` set.
pub const PORT_FILTER: u32 = 8;

/// Value of the `TOA_CONFIG` array at each slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Accepted option formats.
    pub formats: Formats,
    /// Bit set of the flags above.
    pub flags: u32,
    /// The slot this configuration is written in (host order): its ports
    /// and its trusted prefixes are in the same slot of their maps.
    pub slot: u32,
}

const _: () = assert!(core::mem::size_of::<ReceiverConfig>() == 264);

impl ReceiverConfig {
    /// Whether `flag` is set.
    #[inline(always)]
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// Number of 64-bit words in the local-port set (65536 bits).
pub const PORT_WORDS: usize = 1024;

/// The set of local ports the receiver acts on: value of `TOA_PORTS` at each slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSet {
    /// Bit `p % 64` of word `p / 64` is set for port `p`.
    pub words: [u64; PORT_WORDS],
}

impl PortSet {
    /// The empty set.
    pub const EMPTY: PortSet = PortSet { words: [0; PORT_WORDS] };

    /// Adds a port.
    pub fn insert(&mut self, port: u16) {
        self.words[(port >> 6) as usize] |= 1 << (port & 63);
    }

    /// Whether `port` (host order) is in the set.
    #[inline(always)]
    pub fn contains(&self, port: u32) -> bool {
        let word = self.words[((port >> 6) as usize) & (PORT_WORDS - 1)];
        word & (1u64 << (port & 63)) != 0
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, plain integers.
unsafe impl aya::Pod for ReceiverConfig {}
#[cfg(feature = "user")]
// SAFETY: plain integers.
unsafe impl aya::Pod for PortSet {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_slot_alternates() {
        assert_eq!((other_slot(0), other_slot(1)), (1, 0));
        assert_eq!(other_slot(other_slot(1)), 1);
    }

    #[test]
    fn port_set() {
        let mut s = PortSet::EMPTY;
        for p in [0u16, 63, 64, 80, 443, 65535] {
            s.insert(p);
        }
        for p in [0u32, 63, 64, 80, 443, 65535] {
            assert!(s.contains(p), "{p}");
        }
        for p in [1u32, 62, 65, 81, 8080, 65534] {
            assert!(!s.contains(p), "{p}");
        }
    }
}
