//! Per-CPU counters: the classic `toa_stats` names plus ours.

/// Index of a counter in the `TOA_COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Connections established with an accepted TOA option.
    SynRecvSockToa = 0,
    /// Connections established without one (at the handshake's final ACK).
    SynRecvSockNoToa,
    /// getpeername()/accept() answered with the real client.
    GetnameToaOk,
    /// A stored record could not be presented (unknown family).
    GetnameToaMismatch,
    /// An IPv6 client on an IPv4 socket: left untouched.
    GetnameToaBypass,
    /// getpeername()/accept() on a socket without a real client.
    GetnameToaEmpty,
    /// IPv6 real client addresses stored.
    Ip6AddressAlloc,
    /// IPv6 real client addresses released (their connection closed).
    Ip6AddressFree,
    /// Options refused by the codec: broken option list, or a TOA kind with a wrong length.
    ToaMalformed,
    /// Real client addresses stored, any family.
    ToaEntryAlloc,
    /// Real client addresses released, any family.
    ToaEntryFree,
    /// Storage for a real client could not be allocated.
    ToaStoreFailed,
    /// Options written by the client-side writer.
    InjectWritten,
    /// Packets the writer meant to mark but found no option space in.
    InjectNoRoom,
    /// Valid options from transport peers outside the trusted prefixes, ignored.
    ToaUntrusted,
    /// A later valid option that differed from the one already taken, ignored.
    ToaConflict,
    /// Real clients taken from the SYN.
    ToaFromSyn,
    /// Real clients taken from a data packet after the handshake.
    ToaFromData,
    /// SYN capture on, but no saved SYN (listener older than the agent, or syncookies).
    ToaSynUnavailable,
    /// Vendor getsockopt calls (1348, 4096) answered with the real client.
    GetsockoptToaOk,
    /// Vendor getsockopt calls refused (no real client, short buffer).
    GetsockoptToaFail,
}

/// Number of counters (the size of the per-CPU array).
pub const COUNTER_COUNT: u32 = 21;

/// Every counter with its name, in index order.
pub const COUNTERS: [(Counter, &str); COUNTER_COUNT as usize] = [
    (Counter::SynRecvSockToa, "syn_recv_sock_toa"),
    (Counter::SynRecvSockNoToa, "syn_recv_sock_no_toa"),
    (Counter::GetnameToaOk, "getname_toa_ok"),
    (Counter::GetnameToaMismatch, "getname_toa_mismatch"),
    (Counter::GetnameToaBypass, "getname_toa_bypass"),
    (Counter::GetnameToaEmpty, "getname_toa_empty"),
    (Counter::Ip6AddressAlloc, "ip6_address_alloc"),
    (Counter::Ip6AddressFree, "ip6_address_free"),
    (Counter::ToaMalformed, "toa_malformed"),
    (Counter::ToaEntryAlloc, "toa_entry_alloc"),
    (Counter::ToaEntryFree, "toa_entry_free"),
    (Counter::ToaStoreFailed, "toa_store_failed"),
    (Counter::InjectWritten, "inject_written"),
    (Counter::InjectNoRoom, "inject_no_room"),
    (Counter::ToaUntrusted, "toa_untrusted"),
    (Counter::ToaConflict, "toa_conflict"),
    (Counter::ToaFromSyn, "toa_from_syn"),
    (Counter::ToaFromData, "toa_from_data"),
    (Counter::ToaSynUnavailable, "toa_syn_unavailable"),
    (Counter::GetsockoptToaOk, "getsockopt_toa_ok"),
    (Counter::GetsockoptToaFail, "getsockopt_toa_fail"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_index_order() {
        for (i, (c, _)) in COUNTERS.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
