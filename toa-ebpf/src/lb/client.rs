//! Client → backend: packets to a virtual address.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_redirect},
    programs::TcContext,
};
use toa_common::lb::{
    carry::{FlowView, carries_option, tcp_flags},
    conntrack::{DEFAULT_TIMEOUTS, Dir, TcpState, holds_time_wait, next_state, syn_restarts},
    counters::LbCounter,
    flow::{Flow, FlowKey, LbConfig, PROTO_TCP, Reverse, Service, ServiceKey, flow_flags, flow_hash},
    maglev::{NO_BACKEND, slot},
    ports::{ATTEMPTS, candidate},
};

use crate::{
    counters::{backend, count},
    forward,
    maps::{JUMP_OPTION, LB_BACKENDS, LB_CONFIG, LB_FLOWS, LB_JUMP, LB_MAGLEV, LB_REVERSE, LB_SERVICES},
    nat,
    packet::{ETH_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, TC_ACT_UNSPEC, drop, parse_tcp},
    skb::Skb,
    work::Work,
};

/// Seconds of the kernel's monotonic clock (the clock user space reaps by).
#[inline(always)]
pub fn now_secs() -> u32 {
    // SAFETY: plain helper call.
    (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000_000) as u32
}

/// The settings (defaults if `toa lb` wrote none).
#[inline(always)]
pub fn config() -> LbConfig {
    match LB_CONFIG.get_ptr(0) {
        // SAFETY: a map value pointer, valid for this program run.
        Some(c) => unsafe { *c },
        None => LbConfig { segmenter_ifindex: 0, segmenter_peer_ifindex: 0, timeouts: DEFAULT_TIMEOUTS, table_size: 0 },
    }
}

/// The reverse key of a flow: what the backend's packets carry.
#[inline(always)]
pub fn reverse_key(f: &Flow, family: u8, out: &mut FlowKey) {
    out.src = f.backend;
    out.dst = f.snat;
    out.sport = f.bport;
    out.dport = f.lport;
    out.family = family;
    out._pad = [0; 3];
}

/// A packet to a virtual address.
#[inline(never)]
pub fn on_virtual(skb: &Skb, w: &mut Work, segmented: bool) -> i32 {
    if w.ip.frag {
        return drop(LbCounter::DropFragment);
    }
    match w.ip.proto {
        IPPROTO_TCP => {}
        // Pings and errors about the forwarder itself are the stack's.
        IPPROTO_ICMP | IPPROTO_ICMPV6 => return TC_ACT_UNSPEC,
        _ if w.ip.ip_opts => return drop(LbCounter::DropIpOptions),
        _ => return drop(LbCounter::DropNonTcp),
    }
    if w.ip.ip_opts {
        return drop(LbCounter::DropIpOptions);
    }
    if w.ip.bad_len || !parse_tcp(skb, &w.ip, &mut w.tcp) {
        return drop(LbCounter::DropBadLength);
    }
    let skey = ServiceKey { addr: w.ip.dst, port: w.tcp.dport, family: w.ip.family, proto: PROTO_TCP };
    let Some(svc) = LB_SERVICES.get_ptr(&skey) else { return TC_ACT_UNSPEC };
    w.key = FlowKey {
        src: w.ip.src,
        dst: w.ip.dst,
        sport: w.tcp.sport,
        dport: w.tcp.dport,
        family: w.ip.family,
        _pad: [0; 3],
    };
    let cfg = config();
    let now = now_secs();
    let syn = w.tcp.flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN;
    let mut flow = LB_FLOWS.get_ptr_mut(&w.key);
    if let Some(f) = flow {
        // SAFETY: a map value pointer, valid for this program run.
        let f = unsafe { &*f };
        let state = TcpState::from_u8(f.state);
        let client_first = f.flags & flow_flags::CLIENT_FIN_FIRST != 0;
        let expired = cfg.timeouts.expired(state, client_first, f.last_seen, now);
        if syn && (syn_restarts(state) || expired) {
            // The client reuses its port for a new connection.
            reverse_key(f, w.ip.family, &mut w.rkey);
            if holds_time_wait(state, client_first) && !expired {
                // The backend's TIME_WAIT still holds the local port: keep
                // it taken (a tombstone) until that is over.
                if let Some(r) = LB_REVERSE.get_ptr_mut(&w.rkey) {
                    // SAFETY: a map value pointer, valid for this program run.
                    unsafe { (*r).until = f.last_seen.wrapping_add(cfg.timeouts.time_wait) | 1 };
                }
            } else {
                let _ = LB_REVERSE.remove(&w.rkey);
            }
            let _ = LB_FLOWS.remove(&w.key);
            count(LbCounter::FlowsRestarted);
            flow = None;
        }
    }
    let f = match flow {
        // SAFETY: a map value pointer, valid for this program run.
        Some(f) => unsafe { &mut *f },
        None => {
            if !syn {
                return drop(LbCounter::DropNoFlow);
            }
            // SAFETY: a map value pointer, valid for this program run.
            if let Err(why) = create(w, unsafe { &*svc }, &cfg, now) {
                return drop(why);
            }
            match LB_FLOWS.get_ptr_mut(&w.key) {
                // SAFETY: a map value pointer, valid for this program run.
                Some(f) => unsafe { &mut *f },
                None => return drop(LbCounter::DropFlowTable),
            }
        }
    };
    let view = FlowView {
        backend_isn1: f.backend_isn1,
        backend_isn_known: f.flags & flow_flags::ISN_KNOWN != 0,
        data_acked: f.flags & flow_flags::DATA_ACKED != 0,
    };
    let mut carry = carries_option(&view, w.tcp.flags, w.tcp.ack, w.tcp.payload, f.packets);
    if carry && skb.gso_size() != 0 {
        if !segmented && cfg.segmenter_ifindex != 0 {
            // Cut into segments by the segmenter; each comes back to
            // this program on the segmenter's receiving end, which takes it from here.
            count(LbCounter::OptionsSegmented);
            // SAFETY: plain helper call.
            return unsafe { bpf_redirect(cfg.segmenter_ifindex, 0) as i32 };
        }
        count(LbCounter::OptionsGsoSkipped);
        carry = false;
    }
    let state = TcpState::from_u8(f.state);
    let next = next_state(state, Dir::Original, w.tcp.flags);
    if next != state {
        if next == TcpState::FinFromClient {
            f.flags |= flow_flags::CLIENT_FIN_FIRST;
        }
        f.state = next as u8;
    }
    if f.last_seen != now {
        f.last_seen = now;
    }
    if carry && f.flags & flow_flags::OPTION_SENT == 0 {
        f.flags |= flow_flags::OPTION_SENT;
    }
    w.fwd_src = f.snat;
    w.fwd_dst = f.backend;
    w.slot = f.backend_slot;
    w.rw.old_ports = [w.tcp.sport, w.tcp.dport];
    w.rw.src = f.snat;
    w.rw.dst = f.backend;
    w.rw.ports = [f.lport, f.bport];
    w.ins.kind = f.option_kind;
    w.ins.len = f.option_len;
    w.ins.cport = w.tcp.sport;
    w.ins.client = w.ip.src;
    if !nat::rewrite(skb, &w.ip, &w.rw) {
        return drop(LbCounter::DropRewrite);
    }
    count(LbCounter::PacketsIn);
    let bytes = (w.ip.end - ETH_HLEN) as u64;
    backend(w.slot, |b| {
        b.packets_in += 1;
        b.bytes_in += bytes;
    });
    if carry {
        let ctx = TcContext::new(skb.raw().cast());
        // SAFETY: a tail call with our own context; it only returns on failure.
        unsafe { LB_JUMP.tail_call(&ctx, JUMP_OPTION) };
        count(LbCounter::OptionsFailed);
    }
    forward::to(skb, &mut w.fib, w.ip.v6, &w.fwd_src, &w.fwd_dst)
}

/// Creates the flow of a client SYN (key `w.key`): backend, local port,
/// both entries.
#[inline(never)]
fn create(w: &mut Work, svc: &Service, cfg: &LbConfig, now: u32) -> Result<(), LbCounter> {
    let size = cfg.table_size;
    if svc.backend_count == 0 || size == 0 {
        return Err(LbCounter::DropNoBackend);
    }
    let hash = flow_hash(&w.key, 0);
    let Some(entry) = LB_MAGLEV.get_ptr(svc.id.wrapping_mul(size).wrapping_add(slot(hash, size))) else {
        return Err(LbCounter::DropNoBackend);
    };
    // SAFETY: a map value pointer, valid for this program run.
    let idx = unsafe { *entry };
    if idx == NO_BACKEND {
        return Err(LbCounter::DropNoBackend);
    }
    let Some(b) = LB_BACKENDS.get_ptr(idx) else { return Err(LbCounter::DropNoBackend) };
    // SAFETY: a map value pointer, valid for this program run.
    let b = unsafe { &*b };
    if b.family != w.key.family {
        return Err(LbCounter::DropNoBackend);
    }
    w.rev = Reverse::live(w.key);
    w.rkey = FlowKey { src: b.addr, dst: b.snat, sport: b.port, dport: [0; 2], family: w.key.family, _pad: [0; 3] };
    let mut found = false;
    let mut attempt = 0;
    while attempt < ATTEMPTS {
        let Some(port) = candidate(&svc.ports, hash, attempt) else { break };
        w.rkey.dport = port.to_be_bytes();
        if LB_REVERSE.insert(&w.rkey, &w.rev, BPF_NOEXIST as u64).is_ok() {
            found = true;
            break;
        }
        if reclaimable(&w.rkey, cfg, now) {
            if LB_REVERSE.insert(&w.rkey, &w.rev, BPF_ANY as u64).is_ok() {
                found = true;
            }
            break;
        }
        attempt += 1;
    }
    if !found {
        return Err(LbCounter::DropPortsExhausted);
    }
    w.flow = Flow {
        backend: b.addr,
        snat: b.snat,
        bport: b.port,
        lport: w.rkey.dport,
        backend_slot: b.slot,
        service: svc.id,
        client_isn1: w.tcp.seq.wrapping_add(1),
        backend_isn1: 0,
        last_seen: now,
        state: TcpState::SynSent as u8,
        flags: 0,
        option_kind: svc.option_kind,
        option_len: svc.option_len,
        packets: svc.packets,
        _pad: [0; 3],
    };
    if LB_FLOWS.insert(&w.key, &w.flow, BPF_ANY as u64).is_err() {
        let _ = LB_REVERSE.remove(&w.rkey);
        return Err(LbCounter::DropFlowTable);
    }
    count(LbCounter::FlowsCreated);
    backend(b.slot, |s| s.flows += 1);
    Ok(())
}

/// Whether the flow holding a local port may give it up to a new one: it is
/// gone (evicted), expired, reset, or closed by the client first (so the
/// backend, which closed second, keeps no TIME_WAIT for the tuple); a
/// tombstone once the backend's TIME_WAIT is over.
#[inline(never)]
fn reclaimable(rkey: &FlowKey, cfg: &LbConfig, now: u32) -> bool {
    let Some(r) = LB_REVERSE.get_ptr(rkey) else { return true };
    // SAFETY: a map value pointer, valid for this program run.
    let until = unsafe { (*r).until };
    if until != 0 {
        return (now.wrapping_sub(until) as i32) > 0;
    }
    // SAFETY: as above.
    let owner = unsafe { &(*r).flow };
    let Some(f) = LB_FLOWS.get_ptr(owner) else { return true };
    // SAFETY: as above.
    let f = unsafe { &*f };
    let state = TcpState::from_u8(f.state);
    let client_first = f.flags & flow_flags::CLIENT_FIN_FIRST != 0;
    let closed_cleanly = state == TcpState::BothFin && client_first;
    if state == TcpState::Reset || closed_cleanly || cfg.timeouts.expired(state, client_first, f.last_seen, now) {
        let _ = LB_FLOWS.remove(owner);
        return true;
    }
    false
}
