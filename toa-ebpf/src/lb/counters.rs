//! Incrementing the per-CPU counters.

use toa_common::lb::{counters::LbCounter, flow::BackendStats};

use crate::maps::{LB_BACKEND_STATS, LB_COUNTERS};

/// Adds one to `counter` on this CPU.
#[inline(always)]
pub fn count(counter: LbCounter) {
    if let Some(slot) = LB_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe { *slot += 1 };
    }
}

/// Updates a backend's counters on this CPU.
#[inline(always)]
pub fn backend(slot: u32, f: impl FnOnce(&mut BackendStats)) {
    if let Some(p) = LB_BACKEND_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        f(unsafe { &mut *p });
    }
}
