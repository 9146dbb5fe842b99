//! `toa_save_syn` (iter/tcp): sets `TCP_SAVE_SYN` on listening sockets that
//! existed before the agent attached, so that capturing the option from the
//! SYN does not depend on whether a server or the agent started first.
//!
//! `toa_capture` sets it at `BPF_SOCK_OPS_TCP_LISTEN_CB`, which only runs
//! for `listen()` calls made after it was attached. The agent runs this
//! iterator once per network namespace at start (and after a reload): it
//! walks every TCP socket of that namespace, each locked, and sets the
//! option on the listeners whose cookie user space put into
//! [`TOA_SAVE_SYN_LISTENERS`] (the listeners in the agent's cgroups and
//! ports, found through socket diagnostics).

use core::ffi::c_void;

use aya_ebpf::{
    btf_maps::HashMap,
    helpers::generated::{bpf_get_socket_cookie, bpf_setsockopt},
    macros::btf_map,
};

/// Listeners to set `TCP_SAVE_SYN` on, by socket cookie (value unused).
/// Written by the agent just before it runs the iterator, emptied after;
/// read by `toa_save_syn`. Not pinned: it only lives during one walk.
#[btf_map]
pub static TOA_SAVE_SYN_LISTENERS: HashMap<u64, u8, 4096> = HashMap::new();

/// `SOL_TCP`.
const SOL_TCP: i32 = 6;
/// `TCP_SAVE_SYN`.
const TCP_SAVE_SYN: i32 = 27;
/// `TCP_LISTEN` in the kernel's state numbering.
const TCP_LISTEN: u8 = 10;
/// Offset of `skc_state` in `struct sock_common`: after the address pair
/// (8 bytes), the hash (4), the port pair (4) and `skc_family` (2). The
/// layout has not changed since 2.6; the verifier checks the access against
/// the kernel's BTF.
const SKC_STATE_OFFSET: usize = 18;

/// `struct bpf_iter__tcp`: the context of a tcp iterator program.
#[repr(C)]
pub struct IterTcp {
    meta: *const c_void,
    sk_common: *mut c_void,
    uid: u32,
}

/// One socket of the walk: sets `TCP_SAVE_SYN` when it is a wanted listener.
#[inline(always)]
pub fn on_socket(ctx: *const IterTcp) {
    // SAFETY: the kernel passes a valid context; the verifier types its fields.
    let sk = unsafe { (*ctx).sk_common };
    if sk.is_null() {
        return; // the end of the walk (the "stop" call)
    }
    // SAFETY: sk is a non-null BTF pointer to struct sock_common; the load
    // is checked against its BTF layout.
    let state = unsafe { *sk.cast::<u8>().add(SKC_STATE_OFFSET) };
    if state != TCP_LISTEN {
        return;
    }
    // SAFETY: helper call on a socket pointer the verifier accepts.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { TOA_SAVE_SYN_LISTENERS.get(cookie) }.is_none() {
        return;
    }
    let mut on: i32 = 1;
    // SAFETY: helper call on the (locked) socket with a 4-byte value.
    unsafe { bpf_setsockopt(sk, SOL_TCP, TCP_SAVE_SYN, (&raw mut on).cast(), 4) };
}
