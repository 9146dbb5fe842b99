//! Per-CPU counters: the classic `toa_stats` names plus ours.

/// Declares [`Counter`] and [`COUNTERS`] from one list, so that a counter
/// cannot exist without its name or sit at another index than its entry.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)+) => {
        /// Index of a counter in the `TOA_COUNTERS` per-CPU array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)+
        }

        /// Every counter with its name, in index order.
        pub const COUNTERS: [(Counter, &str); COUNTER_COUNT as usize] = [$((Counter::$variant, $name),)+];
    };
}

counters! {
    /// Connections established with an accepted TOA option.
    SynRecvSockToa => "syn_recv_sock_toa",
    /// Connections established without one (at the handshake's final ACK).
    SynRecvSockNoToa => "syn_recv_sock_no_toa",
    /// getpeername()/accept() answered with the real client.
    GetnameToaOk => "getname_toa_ok",
    /// A stored record could not be presented (unknown family).
    GetnameToaMismatch => "getname_toa_mismatch",
    /// An IPv6 client on an IPv4 socket: left untouched.
    GetnameToaBypass => "getname_toa_bypass",
    /// getpeername()/accept() on a socket without a real client.
    GetnameToaEmpty => "getname_toa_empty",
    /// IPv6 real client addresses stored.
    Ip6AddressAlloc => "ip6_address_alloc",
    /// IPv6 real client addresses released (their connection closed).
    Ip6AddressFree => "ip6_address_free",
    /// Options refused by the codec: broken option list, or a TOA kind with a wrong length.
    ToaMalformed => "toa_malformed",
    /// Real client addresses stored, any family.
    ToaEntryAlloc => "toa_entry_alloc",
    /// Real client addresses released, any family.
    ToaEntryFree => "toa_entry_free",
    /// Storage for a real client could not be allocated.
    ToaStoreFailed => "toa_store_failed",
    /// Options written by the client-side writer.
    InjectWritten => "inject_written",
    /// Packets the writer meant to mark but found no option space in.
    InjectNoRoom => "inject_no_room",
    /// Valid options from transport peers outside the trusted prefixes, ignored.
    ToaUntrusted => "toa_untrusted",
    /// A later valid option that differed from the one already taken, ignored.
    ToaConflict => "toa_conflict",
    /// Real clients taken from the SYN.
    ToaFromSyn => "toa_from_syn",
    /// Real clients taken from a data packet after the handshake.
    ToaFromData => "toa_from_data",
    /// SYN capture on, but no saved SYN (listener older than the agent, or syncookies).
    ToaSynUnavailable => "toa_syn_unavailable",
    /// Vendor getsockopt calls (1348, 4096) answered with the real client.
    GetsockoptToaOk => "getsockopt_toa_ok",
    /// Vendor getsockopt calls refused (no real client, short buffer).
    GetsockoptToaFail => "getsockopt_toa_fail",
}

/// Number of counters (the size of the per-CPU array). A counter added to the
/// list without raising this fails to build ([`COUNTERS`] has this length).
pub const COUNTER_COUNT: u32 = 21;

// The last counter's index + 1 is the array size: indices are dense and none is out of range.
const _: () = assert!(COUNTERS[COUNTERS.len() - 1].0 as u32 + 1 == COUNTER_COUNT);
/// Counters to add one to, in no particular order; `None` slots are unused.
///
/// What the decision functions return: a fixed number of slots, each set
/// on its own path, which compiles to plain stores the eBPF verifier follows
/// (a growing list would need stores at a computed stack offset).
pub type Tally<const N: usize> = [Option<Counter>; N];

/// How many times `counter` appears in `tally`.
pub fn times<const N: usize>(tally: &Tally<N>, counter: Counter) -> usize {
    tally.iter().filter(|c| **c == Some(counter)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_index_order() {
        for (i, (c, _)) in COUNTERS.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn names_are_unique_and_lowercase() {
        for (i, (_, a)) in COUNTERS.iter().enumerate() {
            assert!(a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{a}");
            for (_, b) in &COUNTERS[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
