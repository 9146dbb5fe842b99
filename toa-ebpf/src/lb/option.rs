//! Putting the option into a TCP header.
//!
//! The TCP header stays where it is: the packet grows at its tail
//! (`bpf_skb_change_tail`), the payload moves back by the growth, and the new
//! options area ([`toa_common::lb::insert`]: the option first, the client's
//! options behind it) is written in place. Because the TCP header does not
//! move, a checksum the device still has to complete (CHECKSUM_PARTIAL:
//! `csum_start` at the TCP header) stays right, and so does a complete one
//! patched through `bpf_l4_csum_replace`. The payload moves by a multiple of
//! 4 bytes, which leaves its one's-complement sum unchanged; what changes is
//! the options area, the data-offset byte and the lengths.
//!
//! GSO packets are not handled here (`bpf_skb_change_tail` drops their
//! segmentation); they go through the segmenter first.

use toa_common::lb::{
    csum,
    insert::{Outcome, Plan, plan_insert},
};

use toa_common::lb::counters::LbCounter;

use crate::{
    counters::{backend, count},
    forward,
    maps::{LB_SCRATCH, LB_WORK, SCRATCH_PAYLOAD},
    nat::TCP_CSUM,
    packet::drop,
    packet::{ETH_HLEN, Ip, Tcp},
    skb::{F_RECOMPUTE_CSUM, Skb, bounded},
    work::Work,
};

/// `toa_lb_option`, tail-called by the main program for a translated packet
/// that gets the option ([`Work::ins`]); forwards it to [`Work::fwd_dst`].
#[inline(always)]
pub fn run(skb: &Skb) -> i32 {
    let Some(w) = LB_WORK.get_ptr_mut(0) else { return drop(LbCounter::OptionsFailed) };
    // SAFETY: this CPU's work slot, filled by the program that tail-called us.
    let w: &mut Work = unsafe { &mut *w };
    match insert(skb, &w.ip, &w.tcp, &w.ins) {
        Inserted::Done(outcome) => {
            count(if outcome == Outcome::Compacted { LbCounter::OptionsCompacted } else { LbCounter::OptionsInserted });
            backend(w.slot, |b| b.options += 1);
        }
        Inserted::Refused(Outcome::Malformed) => count(LbCounter::OptionsMalformed),
        Inserted::Refused(_) => {
            count(LbCounter::OptionsNoRoom);
            backend(w.slot, |b| b.no_room += 1);
        }
        Inserted::Failed => {
            count(LbCounter::OptionsFailed);
            return drop(LbCounter::DropRewrite);
        }
    }
    forward::to(skb, &mut w.fib, w.ip.v6, &w.fwd_src, &w.fwd_dst)
}

/// What became of an insertion.
pub enum Inserted {
    /// In, as planned.
    Done(Outcome),
    /// Not in: no room, or a broken option list.
    Refused(Outcome),
    /// A helper failed (the packet may be half-changed: drop it).
    Failed,
}

/// The option to insert.
pub struct Insert {
    /// Its kind.
    pub kind: u8,
    /// Its length: 8 (IPv4 client) or 20 (IPv6).
    pub len: u8,
    /// The client's port, network order.
    pub cport: [u8; 2],
    /// The client's address, network order.
    pub client: [u8; 16],
}

/// Inserts the option into the (translated) packet.
#[inline(never)]
pub fn insert(skb: &Skb, ip: &Ip, tcp: &Tcp, what: &Insert) -> Inserted {
    let (kind, len, cport, client) = (what.kind, what.len, what.cport, &what.client);
    let Some(s) = LB_SCRATCH.get_ptr_mut(0) else { return Inserted::Failed };
    // SAFETY: this CPU's scratch slot, used by nothing else while we run.
    let s = unsafe { &mut *s };
    let opt_len = if len == 20 { 20usize } else { 8usize };
    s.bufs.opt[0] = kind;
    s.bufs.opt[1] = opt_len as u8;
    s.bufs.opt[2] = cport[0];
    s.bufs.opt[3] = cport[1];
    let mut i = 0;
    while i < 16 {
        s.bufs.opt[4 + i] = if i < opt_len - 4 { client[i] } else { 0 };
        i += 1;
    }
    let old_len = tcp.hdr_len.wrapping_sub(20);
    if old_len > 40 {
        return Inserted::Refused(Outcome::Malformed);
    }
    if let Some(n) = bounded(old_len, 40, 63)
        && !skb.load_into(ip.l4 + 20, s.bufs.old.as_mut_ptr(), n)
    {
        return Inserted::Failed;
    }
    let mut plan = Plan::default();
    let outcome = plan_insert(&mut s.bufs, old_len as usize, opt_len, &mut plan);
    if !matches!(outcome, Outcome::Inserted | Outcome::Compacted) {
        return Inserted::Refused(outcome);
    }
    let new_len = plan.new_len;
    if new_len < old_len || new_len > 40 || new_len == 0 {
        return Inserted::Failed;
    }
    let growth = new_len - old_len;
    if growth > 0 {
        let payload_at = ip.l4 + tcp.hdr_len;
        let payload = tcp.payload;
        if payload as usize > SCRATCH_PAYLOAD {
            return Inserted::Failed;
        }
        let moved = bounded(payload, SCRATCH_PAYLOAD as u32, 0x3fff);
        if let Some(n) = moved
            && !skb.load_into(payload_at, s.payload.as_mut_ptr(), n)
        {
            return Inserted::Failed;
        }
        if !skb.change_tail(ip.end + growth) {
            return Inserted::Failed;
        }
        if let Some(n) = bounded(payload, SCRATCH_PAYLOAD as u32, 0x3fff)
            && !skb.store_raw(payload_at + growth, s.payload.as_ptr(), n, 0)
        {
            return Inserted::Failed;
        }
    }
    let Some(n) = bounded(new_len, 40, 63) else { return Inserted::Failed };
    if !skb.store_raw(ip.l4 + 20, s.bufs.out.as_ptr(), n, 0) {
        return Inserted::Failed;
    }
    // Data offset (high nibble of byte 12), checked in the word of bytes 12-13.
    let Some(b12) = skb.load::<[u8; 2]>(ip.l4 + 12) else { return Inserted::Failed };
    let doff = (((20 + new_len) / 4) as u8) << 4 | (b12[0] & 0x0f);
    if !skb.store(ip.l4 + 12, &doff, 0) {
        return Inserted::Failed;
    }
    // The options area's change, summed by the kernel (`bpf_csum_diff`, in
    // memory order) rather than by a loop the verifier would walk.
    let Some(area) = skb.csum_diff(s.bufs.old.as_ptr(), old_len, s.bufs.out.as_ptr(), new_len) else {
        return Inserted::Failed;
    };
    let word12 = csum::delta(u16::from_be_bytes(b12) as u32, u16::from_be_bytes([doff, b12[1]]) as u32);
    if !skb.l4_patch_raw(ip.l4 + TCP_CSUM, csum::add(area, csum::for_kernel(word12)), false) {
        return Inserted::Failed;
    }
    if growth > 0 {
        let tcp_len = ip.end - ip.l4;
        let d = csum::delta(tcp_len, tcp_len + growth);
        if !skb.l4_patch(ip.l4 + TCP_CSUM, d, true) {
            return Inserted::Failed;
        }
        let ok = if ip.v6 {
            let plen = ((ip.end - ETH_HLEN - 40 + growth) as u16).to_be_bytes();
            skb.store(ETH_HLEN + 4, &plen, F_RECOMPUTE_CSUM)
        } else {
            let old = ip.end - ETH_HLEN;
            let tot = ((old + growth) as u16).to_be_bytes();
            skb.store(ETH_HLEN + 2, &tot, 0) && skb.l3_patch(ETH_HLEN + 10, csum::delta(old, old + growth))
        };
        if !ok {
            return Inserted::Failed;
        }
    }
    Inserted::Done(outcome)
}
