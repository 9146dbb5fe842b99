//! ICMP errors about a flow (destination unreachable — fragmentation needed
//! included —, packet too big, time exceeded, parameter problem), sent to a
//! local address by a router or the backend: translated back so that the
//! client sees an error about its own packet, from the virtual address.
//!
//! The quoted packet is the forwarder's (local address → backend); it
//! becomes the client's (client → virtual address). A "fragmentation
//! needed"/"packet too big" MTU is lowered by the option length, so that the
//! client's packets fit once the forwarder has added the option. The quoted
//! TCP checksum is left as it is (quotes are usually truncated before it,
//! and nobody checks it).

use toa_common::lb::{counters::LbCounter, csum};

use crate::{
    counters::count,
    forward,
    maps::{LB_FLOWS, LB_REVERSE},
    nat::{self, sum_addr, sum_ports},
    packet::{ETH_HLEN, IPPROTO_TCP, TC_ACT_UNSPEC, drop},
    skb::Skb,
    work::Work,
};

/// The flow a quoted packet (local address → backend) belongs to. The
/// caller has put the quoted destination (the backend) in `w.rkey.src` and
/// the quoted source (the local address) in `w.rkey.dst`; this completes the
/// reverse key, leaves the flow's client key in `w.key` and returns its
/// option length. (Everything in the work area: the ICMP paths are the
/// deepest calls of the program, and 6.1 counts their stack frames strictly.)
#[inline(always)]
fn quoted_flow(w: &mut Work, sport: [u8; 2], dport: [u8; 2]) -> Option<u8> {
    w.rkey.sport = dport;
    w.rkey.dport = sport;
    w.rkey.family = w.ip.family;
    w.rkey._pad = [0; 3];
    let r = LB_REVERSE.get_ptr(&w.rkey)?;
    // SAFETY: a map value pointer, valid for this program run.
    if unsafe { (*r).until } != 0 {
        return None;
    }
    // SAFETY: as above.
    w.key = unsafe { (*r).flow };
    let f = LB_FLOWS.get_ptr(&w.key)?;
    // SAFETY: as above.
    Some(unsafe { (*f).option_len })
}

/// An ICMP or ICMPv6 packet to a local address.
#[inline(always)]
pub fn on_error(skb: &Skb, w: &mut Work) -> i32 {
    if w.ip.v6 { on_error6(skb, w) } else { on_error4(skb, w) }
}

#[inline(never)]
fn on_error4(skb: &Skb, w: &mut Work) -> i32 {
    let icmp = w.ip.l4;
    let inner = icmp + 8;
    let inner_l4 = inner + 20;
    if inner_l4 + 8 > w.ip.end {
        return TC_ACT_UNSPEC;
    }
    let Some(h) = skb.load::<[u8; 8]>(icmp) else { return TC_ACT_UNSPEC };
    if !matches!(h[0], 3 | 11 | 12) {
        return TC_ACT_UNSPEC;
    }
    let Some(q) = skb.load::<[u8; 20]>(inner) else { return TC_ACT_UNSPEC };
    if q[0] != 0x45 || q[9] != IPPROTO_TCP {
        return TC_ACT_UNSPEC;
    }
    let Some(p) = skb.load::<[u8; 4]>(inner_l4) else { return TC_ACT_UNSPEC };
    w.rkey.src = [0; 16];
    w.rkey.dst = [0; 16];
    let mut i = 0;
    while i < 4 {
        w.rkey.src[i] = q[16 + i];
        w.rkey.dst[i] = q[12 + i];
        i += 1;
    }
    let (sport, dport) = ([p[0], p[1]], [p[2], p[3]]);
    let Some(olen) = quoted_flow(w, sport, dport) else { return TC_ACT_UNSPEC };
    // The outer header: from the virtual address to the client.
    if nat::set_addrs(skb, ETH_HLEN, false, (&w.ip.src, &w.ip.dst), (&w.key.dst, &w.key.src)).is_none() {
        return drop(LbCounter::DropRewrite);
    }
    // The quoted header: the client's packet to the virtual address.
    let addr_delta = csum::delta(
        csum::add(sum_addr(&w.rkey.dst, false), sum_addr(&w.rkey.src, false)),
        csum::add(sum_addr(&w.key.src, false), sum_addr(&w.key.dst, false)),
    );
    let qcheck_old = u16::from_be_bytes([q[10], q[11]]);
    let qcheck_new = csum::apply(qcheck_old, addr_delta);
    let k = &w.key;
    let addrs = [k.src[0], k.src[1], k.src[2], k.src[3], k.dst[0], k.dst[1], k.dst[2], k.dst[3]];
    let ports = [k.sport[0], k.sport[1], k.dport[0], k.dport[1]];
    let port_delta = csum::delta(sum_ports(sport, dport), sum_ports(k.sport, k.dport));
    let mut d = csum::add(addr_delta, csum::add(port_delta, csum::delta(qcheck_old as u32, qcheck_new as u32)));
    if !skb.store(inner + 12, &addrs, 0)
        || !skb.store(inner + 10, &qcheck_new.to_be_bytes(), 0)
        || !skb.store(inner_l4, &ports, 0)
    {
        return drop(LbCounter::DropRewrite);
    }
    if h[0] == 3 && h[1] == 4 {
        let mtu = u16::from_be_bytes([h[6], h[7]]);
        if mtu > 68 + olen as u16 {
            let new = mtu - olen as u16;
            if !skb.store(icmp + 6, &new.to_be_bytes(), 0) {
                return drop(LbCounter::DropRewrite);
            }
            d = csum::add(d, csum::delta(mtu as u32, new as u32));
        }
    }
    if !skb.l4_patch(icmp + 2, d, false) {
        return drop(LbCounter::DropRewrite);
    }
    count(LbCounter::IcmpTranslated);
    forward::to(skb, &mut w.fib, false, &w.key.dst, &w.key.src)
}

#[inline(never)]
fn on_error6(skb: &Skb, w: &mut Work) -> i32 {
    let icmp = w.ip.l4;
    let inner = icmp + 8;
    let inner_l4 = inner + 40;
    if inner_l4 + 8 > w.ip.end {
        return TC_ACT_UNSPEC;
    }
    let Some(h) = skb.load::<[u8; 8]>(icmp) else { return TC_ACT_UNSPEC };
    if !matches!(h[0], 1..=4) {
        return TC_ACT_UNSPEC;
    }
    let Some(q) = skb.load::<[u8; 8]>(inner) else { return TC_ACT_UNSPEC };
    if q[0] >> 4 != 6 || q[6] != IPPROTO_TCP {
        return TC_ACT_UNSPEC;
    }
    let Some(p) = skb.load::<[u8; 4]>(inner_l4) else { return TC_ACT_UNSPEC };
    if !skb.load_into(inner + 24, w.rkey.src.as_mut_ptr(), 16) || !skb.load_into(inner + 8, w.rkey.dst.as_mut_ptr(), 16)
    {
        return TC_ACT_UNSPEC;
    }
    let (sport, dport) = ([p[0], p[1]], [p[2], p[3]]);
    let Some(olen) = quoted_flow(w, sport, dport) else { return TC_ACT_UNSPEC };
    let Some(outer_delta) = nat::set_addrs(skb, ETH_HLEN, true, (&w.ip.src, &w.ip.dst), (&w.key.dst, &w.key.src))
    else {
        return drop(LbCounter::DropRewrite);
    };
    let k = &w.key;
    let ports = [k.sport[0], k.sport[1], k.dport[0], k.dport[1]];
    let mut d = csum::add(
        csum::delta(
            csum::add(sum_addr(&w.rkey.dst, true), sum_addr(&w.rkey.src, true)),
            csum::add(sum_addr(&k.src, true), sum_addr(&k.dst, true)),
        ),
        csum::delta(sum_ports(sport, dport), sum_ports(k.sport, k.dport)),
    );
    if !skb.store(inner + 8, &k.src, 0) || !skb.store(inner + 24, &k.dst, 0) || !skb.store(inner_l4, &ports, 0) {
        return drop(LbCounter::DropRewrite);
    }
    if h[0] == 2 {
        let mtu = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        if mtu > 1280 + olen as u32 {
            let new = mtu - olen as u32;
            if !skb.store(icmp + 4, &new.to_be_bytes(), 0) {
                return drop(LbCounter::DropRewrite);
            }
            d = csum::add(d, csum::delta(csum::word32(mtu), csum::word32(new)));
        }
    }
    if !skb.l4_patch(icmp + 2, outer_delta, true) || !skb.l4_patch(icmp + 2, d, false) {
        return drop(LbCounter::DropRewrite);
    }
    count(LbCounter::IcmpTranslated);
    forward::to(skb, &mut w.fib, true, &w.key.dst, &w.key.src)
}
