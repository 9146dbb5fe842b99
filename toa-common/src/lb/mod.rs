//! `toa lb`: a packet-level FullNAT forwarder that inserts the option. The
//! decisions its eBPF programs take, as plain functions shared with user
//! space and tested on the host:
//!
//! - [`flow`]: the map types (services, backends, flows both ways), the flow
//!   hash and the backend choice;
//! - [`csum`]: incremental Internet checksum arithmetic (RFC 1624);
//! - [`insert`]: where the option goes in a TCP header, and what compaction
//!   drops when the 40 option bytes are full;
//! - [`mss`]: lowering the MSS of a backend's SYN-ACK by the option length;
//! - [`carry`]: which client packets carry the option;
//! - [`maglev`]: the backend choice, Maglev consistent hashing with weights;
//! - [`ports`]: the local port allocation;
//! - [`conntrack`]: TCP states and their idle timeouts;
//! - [`counters`]: the counters.

pub mod carry;
pub mod conntrack;
pub mod counters;
pub mod csum;
pub mod flow;
pub mod insert;
pub mod maglev;
pub mod mss;
pub mod ports;

/// Names of the programs in the forwarder's eBPF object (`toa-lb`).
pub mod programs {
    /// tc ingress on every forwarding interface (both directions of every
    /// flow) and on the segmenter's receiving end (the option into each
    /// segment of a GSO packet).
    pub const INGRESS: &str = "toa_lb_ingress";
    /// Tail-called by [`INGRESS`]: inserts the option and forwards.
    pub const OPTION: &str = "toa_lb_option";
}

/// Names of the maps in the forwarder's eBPF object.
pub mod maps {
    /// Services ([`super::flow::ServiceKey`] → [`super::flow::Service`]).
    pub const SERVICES: &str = "LB_SERVICES";
    /// Backends by index ([`super::flow::Backend`]).
    pub const BACKENDS: &str = "LB_BACKENDS";
    /// Flows by client tuple ([`super::flow::FlowKey`] → [`super::flow::Flow`]).
    pub const FLOWS: &str = "LB_FLOWS";
    /// Flows by backend tuple ([`super::flow::FlowKey`] → [`super::flow::Reverse`]).
    pub const REVERSE: &str = "LB_REVERSE";
    /// Addresses acted on ([`super::flow::AddrKey`] → role bits).
    pub const ADDRS: &str = "LB_ADDRS";
    /// Settings ([`super::flow::LbConfig`]) at index 0.
    pub const CONFIG: &str = "LB_CONFIG";
    /// Per-CPU counters by [`super::counters::LbCounter`].
    pub const COUNTERS: &str = "LB_COUNTERS";
    /// Per-CPU per-backend counters ([`super::flow::BackendStats`]).
    pub const BACKEND_STATS: &str = "LB_BACKEND_STATS";
    /// The services' Maglev tables, one after the other (`u32` backend
    /// indices, [`super::maglev::NO_BACKEND`] for none); sized at load.
    pub const MAGLEV: &str = "LB_MAGLEV";
    /// Tail-call targets (the option program).
    pub const JUMP: &str = "LB_JUMP";
    /// Per-CPU scratch memory of the programs.
    pub const SCRATCH: &str = "LB_SCRATCH";
    /// Per-CPU work area of the programs.
    pub const WORK: &str = "LB_WORK";

    /// Every map, in the order they are pinned.
    pub const ALL: [&str; 12] =
        [SERVICES, BACKENDS, FLOWS, REVERSE, ADDRS, CONFIG, COUNTERS, BACKEND_STATS, MAGLEV, JUMP, SCRATCH, WORK];
}
