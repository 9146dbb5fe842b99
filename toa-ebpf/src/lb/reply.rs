//! Backend → client: packets to a local (SNAT) address.

use toa_common::lb::{
    carry::{acknowledges_data, tcp_flags},
    conntrack::{Dir, TcpState, next_state},
    counters::LbCounter,
    csum,
    flow::{Flow, FlowKey, flow_flags},
    mss::{MssChange, MssRewrite, lower_mss},
};

use crate::{
    client::now_secs,
    counters::{backend, count},
    forward, icmp,
    maps::{LB_FLOWS, LB_REVERSE, LB_SCRATCH},
    nat::{self, TCP_CSUM},
    packet::{ETH_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, Ip, TC_ACT_UNSPEC, Tcp, drop, parse_tcp},
    skb::{Skb, bounded},
    work::Work,
};

/// A packet to a local address: ours if it belongs to a flow.
#[inline(never)]
pub fn on_local(skb: &Skb, w: &mut Work) -> i32 {
    if w.ip.frag || w.ip.bad_len || w.ip.ip_opts {
        return TC_ACT_UNSPEC;
    }
    match w.ip.proto {
        IPPROTO_TCP => {}
        IPPROTO_ICMP | IPPROTO_ICMPV6 => return icmp::on_error(skb, w),
        _ => return TC_ACT_UNSPEC,
    }
    if !parse_tcp(skb, &w.ip, &mut w.tcp) {
        return TC_ACT_UNSPEC;
    }
    w.rkey = FlowKey {
        src: w.ip.src,
        dst: w.ip.dst,
        sport: w.tcp.sport,
        dport: w.tcp.dport,
        family: w.ip.family,
        _pad: [0; 3],
    };
    let Some(r) = LB_REVERSE.get_ptr(&w.rkey) else { return TC_ACT_UNSPEC };
    // SAFETY: a map value pointer, valid for this program run.
    if unsafe { (*r).until } != 0 {
        // A tombstone: the flow is over, its port held for the backend's TIME_WAIT.
        return drop(LbCounter::DropNoFlow);
    }
    // SAFETY: as above.
    w.key = unsafe { (*r).flow };
    let Some(f) = LB_FLOWS.get_ptr_mut(&w.key) else {
        let _ = LB_REVERSE.remove(&w.rkey);
        return drop(LbCounter::DropNoFlow);
    };
    let (ip, tcp) = (&w.ip, &w.tcp);
    // SAFETY: as above.
    let f = unsafe { &mut *f };
    if tcp.flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN | tcp_flags::ACK {
        let isn1 = tcp.seq.wrapping_add(1);
        if f.flags & flow_flags::ISN_KNOWN == 0 || f.backend_isn1 != isn1 {
            f.backend_isn1 = isn1;
            f.flags |= flow_flags::ISN_KNOWN;
        }
        if !lower_syn_ack_mss(skb, ip, tcp, f) {
            return drop(LbCounter::DropRewrite);
        }
    }
    if f.flags & flow_flags::DATA_ACKED == 0 && acknowledges_data(tcp.flags, tcp.ack, f.client_isn1) {
        f.flags |= flow_flags::DATA_ACKED;
    }
    let state = TcpState::from_u8(f.state);
    let next = next_state(state, Dir::Reply, tcp.flags);
    if next != state {
        f.state = next as u8;
    }
    let now = now_secs();
    if f.last_seen != now {
        f.last_seen = now;
    }
    let slot = f.backend_slot;
    let bytes = (ip.end - ETH_HLEN) as u64;
    // Back to the client: from the virtual address and port, to the client's.
    w.rw.old_ports = [w.tcp.sport, w.tcp.dport];
    w.rw.src = w.key.dst;
    w.rw.dst = w.key.src;
    w.rw.ports = [w.key.dport, w.key.sport];
    if !nat::rewrite(skb, &w.ip, &w.rw) {
        return drop(LbCounter::DropRewrite);
    }
    count(LbCounter::PacketsOut);
    backend(slot, |b| {
        b.packets_out += 1;
        b.bytes_out += bytes;
    });
    forward::to(skb, &mut w.fib, w.ip.v6, &w.key.dst, &w.key.src)
}

/// Lowers the MSS of a SYN-ACK by the option length; false if a store failed.
#[inline(never)]
fn lower_syn_ack_mss(skb: &Skb, ip: &Ip, tcp: &Tcp, f: &Flow) -> bool {
    let Some(len) = bounded(tcp.hdr_len.wrapping_sub(20), 40, 63) else {
        count(LbCounter::MssUnchanged);
        return true;
    };
    let Some(s) = LB_SCRATCH.get_ptr_mut(0) else { return true };
    // SAFETY: this CPU's scratch slot, used by nothing else while we run.
    let s = unsafe { &mut *s };
    if !skb.load_into(ip.l4 + 20, s.bufs.old.as_mut_ptr(), len) {
        return true;
    }
    let mut change = MssChange::default();
    if lower_mss(&s.bufs.old, len as usize, f.option_len as u16, &mut change) != MssRewrite::Lowered {
        count(LbCounter::MssUnchanged);
        return true;
    }
    let at = change.offset as usize;
    if at + 2 > 40 {
        return true;
    }
    // The two bytes may straddle two checksum words: sum the aligned window.
    let w = at & !1;
    let before = window(&s.bufs.old, w);
    let v = change.new.to_be_bytes();
    s.bufs.old[at & 63] = v[0];
    s.bufs.old[(at + 1) & 63] = v[1];
    let after = window(&s.bufs.old, w);
    if !skb.store(ip.l4 + 20 + at as u32, &v, 0) || !skb.l4_patch(ip.l4 + TCP_CSUM, csum::delta(before, after), false) {
        return false;
    }
    count(LbCounter::MssLowered);
    true
}

/// The partial sum of the two 16-bit words at `w` (even) in an options buffer.
#[inline(always)]
fn window(b: &[u8; 64], w: usize) -> u32 {
    let hi = ((b[w & 63] as u32) << 8) | b[(w + 1) & 63] as u32;
    let lo = ((b[(w + 2) & 63] as u32) << 8) | b[(w + 3) & 63] as u32;
    csum::add(hi, lo)
}
