//! Debug-only statistics: how often each program runs per callback, and for
//! how long. What `bench/agent` uses to break the receiver's cost down by
//! `sock_ops` callback; off (and compiled out by the verifier) otherwise.
//!
//! The programs record into the per-CPU array [`crate::maps::OP_STATS`],
//! indexed by [`slot`], when the loader sets the read-only global
//! [`SWITCH`] to 1 (`toa agent` does when `TOA_DEBUG_OP_STATS=1` is in its
//! environment). The switch is frozen before the programs load, so the
//! verifier knows its value and drops the timing code from programs loaded
//! with it off.

/// Name of the read-only global that turns the statistics on (a `u32`, 0 or 1).
pub const SWITCH: &str = "TOA_OP_STATS_ON";

/// Slots of the statistics array: `sock_ops` callbacks of the capture
/// program at their `BPF_SOCK_OPS_*` number (below [`SOCK_OPS_SLOTS`]), then
/// the other receiver programs.
pub const SOCK_OPS_SLOTS: u32 = 32;
/// `toa_getpeername4`.
pub const GETPEERNAME4: u32 = SOCK_OPS_SLOTS;
/// `toa_getpeername6`.
pub const GETPEERNAME6: u32 = SOCK_OPS_SLOTS + 1;
/// `toa_getsockopt`, a call it passes through.
pub const GETSOCKOPT_PASS: u32 = SOCK_OPS_SLOTS + 2;
/// `toa_getsockopt`, a vendor call (1348, 4096) it answers or refuses.
pub const GETSOCKOPT_VENDOR: u32 = SOCK_OPS_SLOTS + 3;
/// Size of the statistics array.
pub const SLOTS: u32 = 64;

/// The slot of a capture-program callback (`BPF_SOCK_OPS_*`); callbacks
/// newer than the array share the last `sock_ops` slot.
#[inline(always)]
pub const fn slot(op: u32) -> u32 {
    if op < SOCK_OPS_SLOTS { op } else { SOCK_OPS_SLOTS - 1 }
}

/// One slot's statistics on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpStat {
    /// Runs.
    pub calls: u64,
    /// Nanoseconds between the program's first and last instruction, summed
    /// (`bpf_ktime_get_ns()` at both ends: includes one clock read).
    pub ns: u64,
}

const _: () = assert!(core::mem::size_of::<OpStat>() == 16);

#[cfg(feature = "user")]
// SAFETY: repr(C), two u64, no padding.
unsafe impl aya::Pod for OpStat {}

/// Names of the `sock_ops` callbacks (`enum bpf_sock_ops_op` of
/// `include/uapi/linux/bpf.h`), by number.
pub const SOCK_OPS_NAMES: [&str; 21] = [
    "VOID",
    "TIMEOUT_INIT",
    "RWND_INIT",
    "TCP_CONNECT_CB",
    "ACTIVE_ESTABLISHED_CB",
    "PASSIVE_ESTABLISHED_CB",
    "NEEDS_ECN",
    "BASE_RTT",
    "RTO_CB",
    "RETRANS_CB",
    "STATE_CB",
    "TCP_LISTEN_CB",
    "RTT_CB",
    "PARSE_HDR_OPT_CB",
    "HDR_OPT_LEN_CB",
    "WRITE_HDR_OPT_CB",
    "TSTAMP_SCHED_CB",
    "TSTAMP_SND_SW_CB",
    "TSTAMP_SND_HW_CB",
    "TSTAMP_ACK_CB",
    "TSTAMP_SENDMSG_CB",
];

/// The name of statistics slot `slot`.
pub fn slot_name(slot: u32) -> &'static str {
    match slot {
        GETPEERNAME4 => "getpeername4",
        GETPEERNAME6 => "getpeername6",
        GETSOCKOPT_PASS => "getsockopt (passed through)",
        GETSOCKOPT_VENDOR => "getsockopt (1348/4096)",
        s if (s as usize) < SOCK_OPS_NAMES.len() => SOCK_OPS_NAMES[s as usize],
        s if s < SOCK_OPS_SLOTS => "sock_ops (newer)",
        _ => "unused",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_inside_the_array() {
        for op in [0, 5, 10, 31, 32, 1000, u32::MAX] {
            assert!(slot(op) < SOCK_OPS_SLOTS, "{op}");
        }
        assert_eq!(slot(5), 5);
        for s in [GETPEERNAME4, GETPEERNAME6, GETSOCKOPT_PASS, GETSOCKOPT_VENDOR] {
            assert!((SOCK_OPS_SLOTS..SLOTS).contains(&s));
        }
    }

    #[test]
    fn names_match_the_kernel_numbers() {
        assert_eq!(slot_name(5), "PASSIVE_ESTABLISHED_CB");
        assert_eq!(slot_name(10), "STATE_CB");
        assert_eq!(slot_name(13), "PARSE_HDR_OPT_CB");
        assert_eq!(slot_name(GETPEERNAME4), "getpeername4");
        assert_eq!(slot_name(30), "sock_ops (newer)");
    }
}
