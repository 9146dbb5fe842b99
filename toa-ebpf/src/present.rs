//! Receiver: present the real client to getpeername() and accept().

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::programs::SockAddrContext;
use toa_common::{Family, PeerRecord, counters::Counter};

use crate::{counters::count, maps::TOA_PEERS};

/// The socket's record, if it has one.
#[inline(always)]
fn record(ctx: &SockAddrContext) -> Option<PeerRecord> {
    // SAFETY: the context's socket is a full socket in getpeername hooks.
    let p = unsafe { TOA_PEERS.get_ptr_mut(ctx) };
    if p.is_null() {
        count(Counter::GetnameToaEmpty);
        return None;
    }
    // SAFETY: non-null storage pointer.
    Some(unsafe { *p })
}

/// IPv4 socket: an IPv4 client replaces the address; an IPv6 one cannot.
#[inline(always)]
pub fn getpeername4(ctx: &SockAddrContext) {
    let Some(rec) = record(ctx) else { return };
    match rec.family() {
        Some(Family::V4) => {
            let sa = ctx.sock_addr;
            // SAFETY: writable context fields of cgroup/getpeername4.
            unsafe {
                write_volatile(addr_of_mut!((*sa).user_ip4), rec.ip4_be());
                write_volatile(addr_of_mut!((*sa).user_port), rec.port_be());
            }
            count(Counter::GetnameToaOk);
        }
        Some(Family::V6) => count(Counter::GetnameToaBypass),
        None => count(Counter::GetnameToaMismatch),
    }
}

/// IPv6 socket: an IPv6 client as is, an IPv4 one as `::ffff:a.b.c.d`.
#[inline(always)]
pub fn getpeername6(ctx: &SockAddrContext) {
    let Some(rec) = record(ctx) else { return };
    if rec.family().is_none() {
        count(Counter::GetnameToaMismatch);
        return;
    }
    let w = rec.ip6_be_words();
    let sa = ctx.sock_addr;
    // SAFETY: writable context fields of cgroup/getpeername6; one 32-bit store each.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), w[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), w[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), w[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), w[3]);
        write_volatile(addr_of_mut!((*sa).user_port), rec.port_be());
    }
    count(Counter::GetnameToaOk);
}
