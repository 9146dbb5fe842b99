//! Rewriting a TCP packet's addresses and ports, with the IPv4 header and
//! TCP checksums patched incrementally.
//!
//! The TCP checksum is patched through `bpf_l4_csum_replace`, which does the
//! right thing for every checksum state: a complete checksum gets the whole
//! delta; a checksum the device still has to complete (CHECKSUM_PARTIAL, a
//! locally sent or GRO'd packet) only gets the pseudo-header part, since the
//! device sums the header and payload itself. So address changes go in as
//! pseudo-header changes, port changes as ordinary ones.
//!
//! Stores keep the receive checksum (`skb->csum` of CHECKSUM_COMPLETE) in
//! step: IPv4 address stores need no recompute (the IPv4 header checksum and
//! the TCP checksum change by the opposite amounts, which the helper accounts
//! for), IPv6 address stores do (no IPv6 header checksum takes up the change).

use toa_common::lb::csum;

use crate::{
    packet::{ETH_HLEN, Ip},
    skb::{F_RECOMPUTE_CSUM, Skb},
};

/// Offset of the TCP checksum in the TCP header.
pub const TCP_CSUM: u32 = 16;

/// The partial sum of a family's address bytes.
#[inline(always)]
pub fn sum_addr(a: &[u8; 16], v6: bool) -> u32 {
    csum::sum_addr(a, v6)
}

/// The partial sum of two ports.
#[inline(always)]
pub fn sum_ports(a: [u8; 2], b: [u8; 2]) -> u32 {
    csum::add(u16::from_be_bytes(a) as u32, u16::from_be_bytes(b) as u32)
}

/// Writes new addresses into the IP header and returns the checksum delta of
/// the change (for the pseudo-header of TCP or ICMPv6), or `None` if a store
/// failed. `l3` is the IP header's offset.
#[inline(always)]
pub fn set_addrs(
    skb: &Skb,
    l3: u32,
    v6: bool,
    old: (&[u8; 16], &[u8; 16]),
    new: (&[u8; 16], &[u8; 16]),
) -> Option<u32> {
    let d = csum::delta(
        csum::add(sum_addr(old.0, v6), sum_addr(old.1, v6)),
        csum::add(sum_addr(new.0, v6), sum_addr(new.1, v6)),
    );
    if v6 {
        if !skb.store(l3 + 8, new.0, F_RECOMPUTE_CSUM) || !skb.store(l3 + 24, new.1, F_RECOMPUTE_CSUM) {
            return None;
        }
    } else {
        let both = [new.0[0], new.0[1], new.0[2], new.0[3], new.1[0], new.1[1], new.1[2], new.1[3]];
        if !skb.store(l3 + 12, &both, 0) || !skb.l3_patch(l3 + 10, d) {
            return None;
        }
    }
    Some(d)
}

/// A TCP packet's new addresses and ports.
pub struct Rewrite {
    /// The ports it has (source, destination), network order.
    pub old_ports: [[u8; 2]; 2],
    /// New source address.
    pub src: [u8; 16],
    /// New destination address.
    pub dst: [u8; 16],
    /// New ports (source, destination).
    pub ports: [[u8; 2]; 2],
}

/// Rewrites a TCP packet's addresses and ports.
#[inline(never)]
pub fn rewrite(skb: &Skb, ip: &Ip, rw: &Rewrite) -> bool {
    let Some(addr_delta) = set_addrs(skb, ETH_HLEN, ip.v6, (&ip.src, &ip.dst), (&rw.src, &rw.dst)) else {
        return false;
    };
    let (old, ports) = (rw.old_ports, rw.ports);
    let port_delta = csum::delta(sum_ports(old[0], old[1]), sum_ports(ports[0], ports[1]));
    let p = [ports[0][0], ports[0][1], ports[1][0], ports[1][1]];
    skb.store(ip.l4, &p, 0)
        && skb.l4_patch(ip.l4 + TCP_CSUM, addr_delta, true)
        && skb.l4_patch(ip.l4 + TCP_CSUM, port_delta, false)
}
