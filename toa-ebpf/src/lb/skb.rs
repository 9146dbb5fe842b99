//! A thin layer over the socket-buffer helpers the forwarder uses: loads and
//! stores by offset, checksum patches, resizing and redirects.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{
        bpf_csum_diff, bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use toa_common::lb::csum;

/// `bpf_l4_csum_replace` flag: the change is in the pseudo-header.
pub const F_PSEUDO_HDR: u64 = 1 << 4;
/// `bpf_skb_store_bytes` flag: keep `skb->csum` (CHECKSUM_COMPLETE) in step.
pub const F_RECOMPUTE_CSUM: u64 = 1;

/// `len` as a helper length the verifier can bound: `Some(len)` when
/// `1 <= len <= max` (`max <= mask + 1`, `mask` a power of two minus one).
/// The mask and the single comparison on `len - 1` survive the optimiser and
/// give the verifier both ends of the range.
///
/// `len` is read through a volatile load first: otherwise the optimiser,
/// knowing the range from earlier code, proves `m + 1 == len` and hands the
/// helper the original register, whose bounds the verifier never saw.
#[inline(always)]
pub fn bounded(len: u32, max: u32, mask: u32) -> Option<u32> {
    // SAFETY: a read of a local.
    let len = unsafe { core::ptr::read_volatile(&len) };
    let m = len.wrapping_sub(1) & mask;
    if m >= max { None } else { Some(m + 1) }
}

/// The packet of the running program.
pub struct Skb {
    raw: *mut __sk_buff,
}

impl Skb {
    /// Wraps the context.
    #[inline(always)]
    pub fn new(ctx: &TcContext) -> Skb {
        Skb { raw: ctx.skb.skb }
    }

    /// The raw context, for helpers that take it.
    #[inline(always)]
    pub fn raw(&self) -> *mut c_void {
        self.raw.cast()
    }

    /// Length of the packet (a GSO packet's whole length).
    #[inline(always)]
    pub fn len(&self) -> u32 {
        // SAFETY: a context field the verifier allows reading.
        unsafe { (*self.raw).len }
    }

    /// The segment size of a GSO packet, 0 for an ordinary one.
    #[inline(always)]
    pub fn gso_size(&self) -> u32 {
        // SAFETY: a context field the verifier allows reading.
        unsafe { (*self.raw).gso_size }
    }

    /// The interface the packet arrived on.
    #[inline(always)]
    pub fn ingress_ifindex(&self) -> u32 {
        // SAFETY: a context field the verifier allows reading.
        unsafe { (*self.raw).ingress_ifindex }
    }

    /// Copies a `T` from `offset`.
    #[inline(always)]
    pub fn load<T>(&self, offset: u32) -> Option<T> {
        let mut v = MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes size_of::<T>() bytes into `v` or fails.
        let rc = unsafe { bpf_skb_load_bytes(self.raw.cast(), offset, v.as_mut_ptr().cast(), size_of::<T>() as u32) };
        // SAFETY: initialised by the successful helper call.
        (rc == 0).then(|| unsafe { v.assume_init() })
    }

    /// Copies `len` bytes from `offset` to `to`.
    #[inline(always)]
    pub fn load_into(&self, offset: u32, to: *mut u8, len: u32) -> bool {
        // SAFETY: callers pass a buffer of at least `len` bytes.
        unsafe { bpf_skb_load_bytes(self.raw.cast(), offset, to.cast(), len) == 0 }
    }

    /// Writes `len` bytes from `from` at `offset`.
    #[inline(always)]
    pub fn store_raw(&self, offset: u32, from: *const u8, len: u32, flags: u64) -> bool {
        // SAFETY: callers pass a buffer of at least `len` bytes.
        unsafe { bpf_skb_store_bytes(self.raw, offset, from.cast(), len, flags) == 0 }
    }

    /// Writes a `T` at `offset`.
    #[inline(always)]
    pub fn store<T>(&self, offset: u32, v: &T, flags: u64) -> bool {
        self.store_raw(offset, (v as *const T).cast(), size_of::<T>() as u32, flags)
    }

    /// Applies a checksum delta (a partial sum, `~old + new`, of big-endian
    /// words) to the IPv4 header checksum at `offset`.
    #[inline(always)]
    pub fn l3_patch(&self, offset: u32, delta: u32) -> bool {
        let d = csum::for_kernel(delta) as u64;
        // SAFETY: helper on our context; size 0 selects the by-difference mode.
        unsafe { bpf_l3_csum_replace(self.raw, offset, 0, d, 0) == 0 }
    }

    /// Applies a checksum delta to the TCP/ICMP checksum at `offset`; with
    /// `pseudo`, the change is in the pseudo-header (which a checksum the
    /// device completes later must take into account too).
    #[inline(always)]
    pub fn l4_patch(&self, offset: u32, delta: u32, pseudo: bool) -> bool {
        let flags = if pseudo { F_PSEUDO_HDR } else { 0 };
        let d = csum::for_kernel(delta) as u64;
        // SAFETY: helper on our context; size 0 selects the by-difference mode.
        unsafe { bpf_l4_csum_replace(self.raw, offset, 0, d, flags) == 0 }
    }

    /// [`Skb::l4_patch`] with a delta already in the kernel's (memory) word order.
    #[inline(always)]
    pub fn l4_patch_raw(&self, offset: u32, kernel_delta: u32, pseudo: bool) -> bool {
        let flags = if pseudo { F_PSEUDO_HDR } else { 0 };
        // SAFETY: helper on our context; size 0 selects the by-difference mode.
        unsafe { bpf_l4_csum_replace(self.raw, offset, 0, kernel_delta as u64, flags) == 0 }
    }

    /// The checksum delta from `from[..from_len]` to `to[..to_len]` (64-byte
    /// buffers; lengths multiples of 4, at most 40), in the kernel's word order.
    #[inline(always)]
    pub fn csum_diff(&self, from: *const u8, from_len: u32, to: *const u8, to_len: u32) -> Option<u32> {
        // The masks bound both lengths for the verifier (at most 60 of 64 bytes).
        // SAFETY: reads of locals.
        let (f, t) = unsafe { (core::ptr::read_volatile(&from_len) & 0x3c, core::ptr::read_volatile(&to_len) & 0x3c) };
        // SAFETY: both buffers hold 64 bytes; the helper only reads them.
        let d = unsafe { bpf_csum_diff(from.cast_mut().cast(), f, to.cast_mut().cast(), t, 0) };
        (d >= 0).then_some(d as u32)
    }

    /// Sets the packet's length (grows with zeros or trims).
    #[inline(always)]
    pub fn change_tail(&self, len: u32) -> bool {
        // SAFETY: helper on our context.
        unsafe { bpf_skb_change_tail(self.raw, len, 0) == 0 }
    }
}
