//! The per-CPU work area of a packet (map `LB_WORK`).

use toa_common::lb::flow::{Flow, FlowKey, Reverse};

use crate::{
    forward::FibParams,
    nat::Rewrite,
    option::Insert,
    packet::{Ip, Tcp},
};

/// Everything a packet's processing keeps besides a few registers.
pub struct Work {
    /// Its IP header.
    pub ip: Ip,
    /// Its TCP header.
    pub tcp: Tcp,
    /// The flow key its direction looks up.
    pub key: FlowKey,
    /// The other direction's key.
    pub rkey: FlowKey,
    /// A flow being created.
    pub flow: Flow,
    /// A reverse entry being created.
    pub rev: Reverse,
    /// The address and port rewrite.
    pub rw: Rewrite,
    /// The FIB lookup.
    pub fib: FibParams,
    /// The option to insert (read by `toa_lb_option`).
    pub ins: Insert,
    /// Where the packet goes after the option (read by `toa_lb_option`).
    pub fwd_src: [u8; 16],
    /// As above.
    pub fwd_dst: [u8; 16],
    /// The backend's counters slot (read by `toa_lb_option`).
    pub slot: u32,
}
