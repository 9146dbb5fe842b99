//! Debug-only run statistics per callback (see `toa_common::opstats`).
//!
//! `TOA_OP_STATS_ON` is read-only data the loader freezes before the
//! programs load: loaded with it at 0 (the default), the verifier knows both
//! branches below are never taken and removes them, so the programs carry no
//! trace of this.

use core::ptr::read_volatile;

use aya_ebpf::helpers::generated::bpf_ktime_get_ns;
use toa_common::opstats::OpStat;

use crate::maps::TOA_OP_STATS;

/// 1 when the loader turned the statistics on (`toa_common::opstats::SWITCH`).
#[unsafe(no_mangle)]
static TOA_OP_STATS_ON: u32 = 0;

#[inline(always)]
fn enabled() -> bool {
    // SAFETY: a plain read of a static; volatile so that the compiler keeps
    // the load the loader's value replaces.
    unsafe { read_volatile(&raw const TOA_OP_STATS_ON) != 0 }
}

/// The clock at the program's start (0 when the statistics are off).
#[inline(always)]
pub fn start() -> u64 {
    if enabled() {
        // SAFETY: plain helper call.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    }
}

/// Adds one run since `t0` to statistics slot `slot`.
#[inline(always)]
pub fn finish(slot: u32, t0: u64) {
    if enabled() {
        // SAFETY: plain helper call.
        let ns = unsafe { bpf_ktime_get_ns() }.wrapping_sub(t0);
        if let Some(s) = TOA_OP_STATS.get_ptr_mut(slot) {
            // SAFETY: per-CPU slot, no other writer on this CPU while we run.
            unsafe {
                let s: &mut OpStat = &mut *s;
                s.calls += 1;
                s.ns += ns;
            }
        }
    }
}
