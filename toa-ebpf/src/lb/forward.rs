//! Sending a translated packet on: a FIB lookup for its new destination, the
//! Ethernet header rewritten, and a redirect to the egress interface (or
//! `bpf_redirect_neigh` when the neighbour is not resolved yet).

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
};
use toa_common::lb::counters::LbCounter;

use crate::{packet::drop, skb::Skb};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;
const FIB_FRAG_NEEDED: i64 = 8;

/// `struct bpf_fib_lookup`, with plain fields for the unions we use.
#[repr(C)]
pub struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: u16,
    dport: u16,
    /// In: the length to check against the MTU (0: the packet's). Out: the MTU.
    tot_len: u16,
    ifindex: u32,
    tos: u32,
    src: [u8; 16],
    dst: [u8; 16],
    vlan: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

const _: () = assert!(size_of::<FibParams>() == size_of::<bpf_fib_lookup>());

/// Forwards the packet to `dst` (from `src`): the TC action to return.
#[inline(never)]
pub fn to(skb: &Skb, p: &mut FibParams, v6: bool, src: &[u8; 16], dst: &[u8; 16]) -> i32 {
    p.family = if v6 { AF_INET6 } else { AF_INET };
    p.l4_protocol = 6;
    p.sport = 0;
    p.dport = 0;
    p.tot_len = 0;
    p.ifindex = skb.ingress_ifindex();
    p.tos = 0;
    p.src = *src;
    p.dst = *dst;
    p.vlan = 0;
    // SAFETY: `p` has the layout of `struct bpf_fib_lookup` (asserted above).
    let rc = unsafe { fib_lookup(skb.raw(), (p as *mut FibParams).cast(), size_of::<FibParams>() as i32, 0) };
    match rc {
        FIB_SUCCESS => {
            let macs = [
                p.dmac[0], p.dmac[1], p.dmac[2], p.dmac[3], p.dmac[4], p.dmac[5], p.smac[0], p.smac[1], p.smac[2],
                p.smac[3], p.smac[4], p.smac[5],
            ];
            if !skb.store(0, &macs, 0) {
                return drop(LbCounter::DropRewrite);
            }
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(p.ifindex, 0) as i32 }
        }
        // SAFETY: plain helper call; without parameters the helper looks the route up itself.
        FIB_NO_NEIGH => unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) as i32 },
        FIB_FRAG_NEEDED => drop(LbCounter::DropTooBig),
        _ => drop(LbCounter::DropNoRoute),
    }
}
