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

use toa_common::lb::{counters::LbCounter, csum, flow::FlowKey};

use crate::{
    counters::count,
    forward,
    maps::{LB_FLOWS, LB_REVERSE},
    nat::{self, sum_addr, sum_ports},
    packet::{ETH_HLEN, IPPROTO_TCP, TC_ACT_UNSPEC, drop},
    skb::Skb,
    work::Work,
};

/// The flow a quoted packet (local address → backend) belongs to: its
/// client key and option length.
#[inline(always)]
fn quoted_flow(family: u8, src: &[u8; 16], dst: &[u8; 16], sport: [u8; 2], dport: [u8; 2]) -> Option<(FlowKey, u8)> {
    let rkey = FlowKey { src: *dst, dst: *src, sport: dport, dport: sport, family, _pad: [0; 3] };
    let r = LB_REVERSE.get_ptr(&rkey)?;
    // SAFETY: a map value pointer, valid for this program run.
    let key = unsafe { (*r).flow };
    let f = LB_FLOWS.get_ptr(&key)?;
    // SAFETY: as above.
    Some((key, unsafe { (*f).option_len }))
}

/// An ICMP or ICMPv6 packet to a local address.
#[inline(always)]
pub fn on_error(skb: &Skb, w: &mut Work) -> i32 {
    if w.ip.v6 { on_error6(skb, w) } else { on_error4(skb, w) }
}

#[inline(never)]
fn on_error4(skb: &Skb, w: &mut Work) -> i32 {
    let ip = &w.ip;
    let icmp = ip.l4;
    let inner = icmp + 8;
    let inner_l4 = inner + 20;
    if inner_l4 + 8 > ip.end {
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
    let mut qsrc = [0u8; 16];
    let mut qdst = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        qsrc[i] = q[12 + i];
        qdst[i] = q[16 + i];
        i += 1;
    }
    let (sport, dport) = ([p[0], p[1]], [p[2], p[3]]);
    let Some((key, olen)) = quoted_flow(ip.family, &qsrc, &qdst, sport, dport) else { return TC_ACT_UNSPEC };
    // The outer header: from the virtual address to the client.
    if nat::set_addrs(skb, ETH_HLEN, false, (&ip.src, &ip.dst), (&key.dst, &key.src)).is_none() {
        return drop(LbCounter::DropRewrite);
    }
    // The quoted header: the client's packet to the virtual address.
    let addr_delta = csum::delta(
        csum::add(sum_addr(&qsrc, false), sum_addr(&qdst, false)),
        csum::add(sum_addr(&key.src, false), sum_addr(&key.dst, false)),
    );
    let qcheck_old = u16::from_be_bytes([q[10], q[11]]);
    let qcheck_new = csum::apply(qcheck_old, addr_delta);
    let addrs = [key.src[0], key.src[1], key.src[2], key.src[3], key.dst[0], key.dst[1], key.dst[2], key.dst[3]];
    let ports = [key.sport[0], key.sport[1], key.dport[0], key.dport[1]];
    let port_delta = csum::delta(sum_ports(sport, dport), sum_ports(key.sport, key.dport));
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
    w.key = key;
    forward::to(skb, &mut w.fib, false, &w.key.dst, &w.key.src)
}

#[inline(never)]
fn on_error6(skb: &Skb, w: &mut Work) -> i32 {
    let ip = &w.ip;
    let icmp = ip.l4;
    let inner = icmp + 8;
    let inner_l4 = inner + 40;
    if inner_l4 + 8 > ip.end {
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
    let Some(qsrc) = skb.load::<[u8; 16]>(inner + 8) else { return TC_ACT_UNSPEC };
    let Some(qdst) = skb.load::<[u8; 16]>(inner + 24) else { return TC_ACT_UNSPEC };
    let (sport, dport) = ([p[0], p[1]], [p[2], p[3]]);
    let Some((key, olen)) = quoted_flow(ip.family, &qsrc, &qdst, sport, dport) else { return TC_ACT_UNSPEC };
    let Some(outer_delta) = nat::set_addrs(skb, ETH_HLEN, true, (&ip.src, &ip.dst), (&key.dst, &key.src)) else {
        return drop(LbCounter::DropRewrite);
    };
    let ports = [key.sport[0], key.sport[1], key.dport[0], key.dport[1]];
    let mut d = csum::add(
        csum::delta(
            csum::add(sum_addr(&qsrc, true), sum_addr(&qdst, true)),
            csum::add(sum_addr(&key.src, true), sum_addr(&key.dst, true)),
        ),
        csum::delta(sum_ports(sport, dport), sum_ports(key.sport, key.dport)),
    );
    if !skb.store(inner + 8, &key.src, 0) || !skb.store(inner + 24, &key.dst, 0) || !skb.store(inner_l4, &ports, 0) {
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
    w.key = key;
    forward::to(skb, &mut w.fib, true, &w.key.dst, &w.key.src)
}
