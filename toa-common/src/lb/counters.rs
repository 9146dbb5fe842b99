//! The forwarder's per-CPU counters (`LB_COUNTERS`, index = [`LbCounter`]).

/// Index of a counter in `LB_COUNTERS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbCounter {
    /// Client → backend packets translated.
    PacketsIn = 0,
    /// Backend → client packets translated.
    PacketsOut,
    /// Flows created (client SYNs with a backend and a local port).
    FlowsCreated,
    /// Packets that got the option, room as it was.
    OptionsInserted,
    /// Packets that got the option after compaction.
    OptionsCompacted,
    /// Packets that should have got it but had no room even after compaction.
    OptionsNoRoom,
    /// Packets that should have got it but whose option list was broken.
    OptionsMalformed,
    /// GSO packets that needed the option, sent through the segmenter.
    OptionsSegmented,
    /// GSO packets that needed the option with no segmenter: forwarded without.
    OptionsGsoSkipped,
    /// Packets that should have got it but the kernel refused the resize.
    OptionsFailed,
    /// SYN-ACKs whose MSS was lowered.
    MssLowered,
    /// SYN-ACKs without an MSS option (or one too small to lower).
    MssUnchanged,
    /// ICMP errors about a flow translated back to the client.
    IcmpTranslated,
    /// Dropped: an IP or TCP length that does not match the packet.
    DropBadLength,
    /// Dropped: a fragment to a virtual address.
    DropFragment,
    /// Dropped: neither TCP nor ICMP to a virtual address.
    DropNonTcp,
    /// Dropped: IPv4 options or IPv6 extension headers to a virtual address.
    DropIpOptions,
    /// Dropped: a non-SYN packet for a flow that is not (or no longer) known.
    DropNoFlow,
    /// Dropped: a SYN to a service with no backend.
    DropNoBackend,
    /// Dropped: a SYN for which no local port was free.
    DropPortsExhausted,
    /// Dropped: the flow could not be stored.
    DropFlowTable,
    /// Dropped: no route to the destination, or the neighbour is unknown.
    DropNoRoute,
    /// Dropped: the packet would exceed the egress MTU.
    DropTooBig,
    /// Dropped: a packet rewrite failed.
    DropRewrite,
    /// Flows replaced by a new SYN after they closed.
    FlowsRestarted,
}

/// Number of counters.
pub const LB_COUNTER_COUNT: u32 = LbCounter::FlowsRestarted as u32 + 1;

/// Counter names, in index order (`toa lb`'s summary, JSON, Prometheus).
pub const LB_COUNTER_NAMES: [&str; LB_COUNTER_COUNT as usize] = [
    "packets_in",
    "packets_out",
    "flows_created",
    "options_inserted",
    "options_compacted",
    "options_no_room",
    "options_malformed",
    "options_segmented",
    "options_gso_skipped",
    "options_failed",
    "mss_lowered",
    "mss_unchanged",
    "icmp_translated",
    "drop_bad_length",
    "drop_fragment",
    "drop_non_tcp",
    "drop_ip_options",
    "drop_no_flow",
    "drop_no_backend",
    "drop_ports_exhausted",
    "drop_flow_table",
    "drop_no_route",
    "drop_too_big",
    "drop_rewrite",
    "flows_restarted",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_indices() {
        assert_eq!(LB_COUNTER_NAMES[LbCounter::PacketsIn as usize], "packets_in");
        assert_eq!(LB_COUNTER_NAMES[LbCounter::OptionsNoRoom as usize], "options_no_room");
        assert_eq!(LB_COUNTER_NAMES[LbCounter::DropTooBig as usize], "drop_too_big");
        assert_eq!(LB_COUNTER_NAMES[LbCounter::FlowsRestarted as usize], "flows_restarted");
    }
}
