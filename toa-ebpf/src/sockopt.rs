//! Receiver: answer the vendor `getsockopt()` calls (1348 vtoa, 4096 NAT64).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{helpers::generated::bpf_sk_storage_get, programs::SockoptContext};
use toa_common::{
    PeerRecord,
    compat::{Answer, MAX_ANSWER_LEN, SOL_IP, answer},
    counters::Counter,
};

use crate::{
    counters::count,
    maps::{TOA_PEERS, raw},
};

/// Handles one getsockopt call; every call in the cgroup passes here, so
/// anything that is not ours returns after two loads and compares.
#[inline(always)]
pub fn getsockopt(ctx: &SockoptContext) {
    let so = ctx.sockopt;
    // SAFETY: fixed-offset context reads.
    let (level, optname) = unsafe { (read_volatile(addr_of!((*so).level)), read_volatile(addr_of!((*so).optname))) };
    if level != SOL_IP
        || (optname != toa_common::compat::VTOA_GET_PEER && optname != toa_common::compat::TOA_SO_GET_LOOKUP)
    {
        // optlen 0: "keep what the kernel wrote to the caller's buffer". The
        // hook then skips copying its copy of the value (and the length) back
        // to userspace, which it would otherwise do on every call in the
        // cgroup (see the cgroup sockopt documentation, "Large optval").
        // SAFETY: writable context field of cgroup/getsockopt.
        unsafe { write_volatile(addr_of_mut!((*so).optlen), 0) };
        return;
    }
    // SAFETY: fixed-offset context reads.
    let (sk, optval, optval_end) = unsafe {
        (
            read_volatile(addr_of!((*so).__bindgen_anon_1.sk)),
            read_volatile(addr_of!((*so).__bindgen_anon_2.optval)) as usize,
            read_volatile(addr_of!((*so).__bindgen_anon_3.optval_end)) as usize,
        )
    };
    // A zeroed record and a flag rather than an Option<PeerRecord>: the
    // compiler may copy an Option's uninitialised payload, which the
    // verifier refuses.
    let mut record = PeerRecord::EMPTY;
    let mut found = false;
    if !sk.is_null() {
        // SAFETY: `sk` is the context's full socket.
        let p = unsafe { bpf_sk_storage_get(raw(&TOA_PEERS), sk.cast(), core::ptr::null_mut(), 0) };
        if !p.is_null() {
            // SAFETY: non-null storage pointer.
            record = unsafe { *(p as *const PeerRecord) };
            found = true;
        }
    }
    let buf_len = if optval_end > optval { optval_end - optval } else { 0 };
    match answer(level, optname, if found { Some(&record) } else { None }, buf_len) {
        Answer::PassThrough => {}
        Answer::Write { bytes, len } => {
            if optval + MAX_ANSWER_LEN <= optval_end {
                // SAFETY: the whole 28-byte window is inside the caller's buffer.
                unsafe { core::ptr::write_unaligned(optval as *mut [u8; MAX_ANSWER_LEN], bytes) };
            } else if optval + 20 <= optval_end && len <= 20 {
                let mut head = [0u8; 20];
                head.copy_from_slice(&bytes[..20]);
                // SAFETY: 20 bytes inside the caller's buffer.
                unsafe { core::ptr::write_unaligned(optval as *mut [u8; 20], head) };
            } else if optval + 16 <= optval_end && len <= 16 {
                let mut head = [0u8; 16];
                head.copy_from_slice(&bytes[..16]);
                // SAFETY: 16 bytes inside the caller's buffer.
                unsafe { core::ptr::write_unaligned(optval as *mut [u8; 16], head) };
            } else {
                fail(ctx, toa_common::compat::EINVAL);
                return;
            }
            // SAFETY: writable context fields of cgroup/getsockopt.
            unsafe {
                write_volatile(addr_of_mut!((*so).optlen), len as i32);
                write_volatile(addr_of_mut!((*so).retval), 0);
            }
            count(Counter::GetsockoptToaOk);
        }
        Answer::Fail(errno) => fail(ctx, errno),
    }
}

#[inline(always)]
fn fail(ctx: &SockoptContext, errno: i32) {
    // SAFETY: writable context field of cgroup/getsockopt.
    unsafe { write_volatile(addr_of_mut!((*ctx.sockopt).retval), -errno) };
    count(Counter::GetsockoptToaFail);
}
