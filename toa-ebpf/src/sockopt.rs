//! Receiver: answer the vendor `getsockopt()` calls (1348 vtoa, 4096 NAT64).

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{helpers::generated::bpf_sk_storage_get, programs::SockoptContext};
use toa_common::{
    PeerRecord,
    compat::{
        Answer, EINVAL, MAX_ANSWER_LEN, NAT64_PEER_LEN, SOCKADDR_IN_LEN, SOCKADDR_IN6_LEN, SOL_IP, TOA_SO_GET_LOOKUP,
        VTOA_GET_PEER, answer,
    },
    counters::Counter,
};

use crate::{
    counters::count,
    maps::{TOA_PEERS, raw},
};

/// Handles one getsockopt call; every call in the cgroup passes here, so
/// anything that is not ours returns at once: a call at another level than
/// `IPPROTO_IP` (SOL_SOCKET, SOL_TCP: what servers call) after one load and
/// compare, other `IPPROTO_IP` calls after two. Returns whether the call was
/// a vendor call (answered or refused).
#[inline(always)]
pub fn getsockopt(ctx: &SockoptContext) -> bool {
    let so = ctx.sockopt;
    // SAFETY: fixed-offset context read.
    let level = unsafe { read_volatile(addr_of!((*so).level)) };
    if level != SOL_IP {
        pass_through(so);
        return false;
    }
    // SAFETY: fixed-offset context read.
    let optname = unsafe { read_volatile(addr_of!((*so).optname)) };
    if optname != VTOA_GET_PEER && optname != TOA_SO_GET_LOOKUP {
        pass_through(so);
        return false;
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
    #[expect(
        clippy::implicit_saturating_sub,
        reason = "saturating_sub compiles to 40 more BPF instructions for the same value"
    )]
    let buf_len = if optval_end > optval { optval_end - optval } else { 0 };
    match answer(level, optname, if found { Some(&record) } else { None }, buf_len) {
        Answer::PassThrough => {}
        Answer::Write { bytes, len } => {
            // The kernel only accepts stores of a size known at load time, so
            // the answer goes out in the largest of the three answer sizes
            // that fits the caller's buffer (`answer` made sure one does).
            if optval + SOCKADDR_IN6_LEN <= optval_end {
                // SAFETY: checked just above.
                unsafe { write_head::<SOCKADDR_IN6_LEN>(optval, &bytes) };
            } else if optval + NAT64_PEER_LEN <= optval_end && len <= NAT64_PEER_LEN {
                // SAFETY: checked just above.
                unsafe { write_head::<NAT64_PEER_LEN>(optval, &bytes) };
            } else if optval + SOCKADDR_IN_LEN <= optval_end && len <= SOCKADDR_IN_LEN {
                // SAFETY: checked just above.
                unsafe { write_head::<SOCKADDR_IN_LEN>(optval, &bytes) };
            } else {
                fail(ctx, EINVAL);
                return true;
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
    true
}

// The ladder above goes from the largest answer down; every answer is one of the three sizes.
const _: () = assert!(SOCKADDR_IN_LEN < NAT64_PEER_LEN && NAT64_PEER_LEN < SOCKADDR_IN6_LEN);
const _: () = assert!(SOCKADDR_IN6_LEN == MAX_ANSWER_LEN);

/// Leaves a call that is not ours as the kernel answered it.
#[inline(always)]
fn pass_through(so: *mut aya_ebpf::bindings::bpf_sockopt) {
    // optlen 0: "keep what the kernel wrote to the caller's buffer". The hook
    // then skips copying its copy of the value (and the length) back to
    // userspace, which it would otherwise do on every call in the cgroup (see
    // the cgroup sockopt documentation, "Large optval").
    // SAFETY: writable context field of cgroup/getsockopt.
    unsafe { write_volatile(addr_of_mut!((*so).optlen), 0) };
}

/// Copies the first `N` bytes of the answer to the caller's buffer at `optval`.
///
/// # Safety
/// `optval..optval + N` must lie inside the hook's `optval..optval_end`.
#[inline(always)]
unsafe fn write_head<const N: usize>(optval: usize, bytes: &[u8; MAX_ANSWER_LEN]) {
    let mut head = [0u8; N];
    head.copy_from_slice(&bytes[..N]);
    // SAFETY: the caller guarantees N bytes at `optval` are inside the caller's buffer.
    unsafe { core::ptr::write_unaligned(optval as *mut [u8; N], head) };
}

#[inline(always)]
fn fail(ctx: &SockoptContext, errno: i32) {
    // SAFETY: writable context field of cgroup/getsockopt.
    unsafe { write_volatile(addr_of_mut!((*ctx.sockopt).retval), -errno) };
    count(Counter::GetsockoptToaFail);
}
