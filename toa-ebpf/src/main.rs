//! The toa eBPF programs.
//!
//! - `toa_capture` (sock_ops): takes the real client from the TCP option of the
//!   handshake's final ACK into per-socket storage.
//! - `toa_getpeername4` / `toa_getpeername6` (cgroup/getpeername*): present it
//!   to `getpeername()` and `accept()`.
//! - `toa_getsockopt` (cgroup/getsockopt): answers the vendor calls
//!   (`IPPROTO_IP` 1348 vtoa, 4096 NAT64 lookup).
//! - `toa_save_syn` (iter/tcp): `TCP_SAVE_SYN` on listeners that predate the agent.
//! - `toa_inject` (sock_ops): the client-side writer a forwarder drives.
//!
//! Entry points are one-liners; the logic lives in one module per hook and the
//! decisions in `toa-common`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

// Host builds (clippy, tests) compile none of the programs, so nothing names
// their dependencies there.
#[cfg(not(target_arch = "bpf"))]
use {aya_ebpf as _, toa_common as _};

#[cfg(target_arch = "bpf")]
mod capture;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod inject;
#[cfg(target_arch = "bpf")]
mod iter;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod op_stats;
#[cfg(target_arch = "bpf")]
mod present;
#[cfg(target_arch = "bpf")]
mod sock_ops;
#[cfg(target_arch = "bpf")]
mod sockopt;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{
        macros::{cgroup_sock_addr, cgroup_sockopt, sock_ops},
        programs::{SockAddrContext, SockOpsContext, SockoptContext},
    };

    use toa_common::opstats;

    use crate::{capture, inject, op_stats, present, sock_ops::Ops, sockopt};

    /// sock_ops verdict: carry on.
    const SOCK_OPS_OK: u32 = 1;
    /// cgroup/getpeername verdict: allow the call.
    const ALLOW: i32 = 1;

    #[sock_ops]
    pub fn toa_capture(ctx: SockOpsContext) -> u32 {
        let t0 = op_stats::start();
        let ops = Ops::new(&ctx);
        let op = ops.op();
        capture::on_sock_op(&ops, op);
        op_stats::finish(opstats::slot(op), t0);
        SOCK_OPS_OK
    }

    #[sock_ops]
    pub fn toa_inject(ctx: SockOpsContext) -> u32 {
        inject::on_sock_op(&Ops::new(&ctx));
        SOCK_OPS_OK
    }

    #[cgroup_sock_addr(getpeername4)]
    pub fn toa_getpeername4(ctx: SockAddrContext) -> i32 {
        let t0 = op_stats::start();
        present::getpeername4(&ctx);
        op_stats::finish(opstats::GETPEERNAME4, t0);
        ALLOW
    }

    #[cgroup_sock_addr(getpeername6)]
    pub fn toa_getpeername6(ctx: SockAddrContext) -> i32 {
        let t0 = op_stats::start();
        present::getpeername6(&ctx);
        op_stats::finish(opstats::GETPEERNAME6, t0);
        ALLOW
    }

    #[cgroup_sockopt(getsockopt)]
    pub fn toa_getsockopt(ctx: SockoptContext) -> i32 {
        let t0 = op_stats::start();
        let slot = if sockopt::getsockopt(&ctx) { opstats::GETSOCKOPT_VENDOR } else { opstats::GETSOCKOPT_PASS };
        op_stats::finish(slot, t0);
        ALLOW
    }

    /// iter/tcp: `TCP_SAVE_SYN` on listeners that predate the agent.
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "iter/tcp")]
    pub extern "C" fn toa_save_syn(ctx: *const crate::iter::IterTcp) -> i32 {
        crate::iter::on_socket(ctx);
        0
    }
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF cannot unwind or abort. A loop without exit is what a path to a
    // panic compiles to, and the verifier rejects a program in which it can
    // reach one (an unbounded loop, or a last instruction that is not an
    // exit). Telling the compiler the path is unreachable instead would let
    // it delete the bounds checks that lead here, and the verifier would then
    // judge code that no longer checks what the source checks.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// The programs only exist for the BPF target; this keeps host builds of the
/// workspace (clippy, tests) working.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
