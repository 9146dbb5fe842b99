//! The forwarder's eBPF programs (`toa lb`): FullNAT with the client's address
//! inserted as a TCP option, per packet, at tc.
//!
//! - `toa_lb_ingress` (tc ingress on every forwarding interface): client →
//!   backend packets of a service are translated (destination → backend,
//!   source → a local address and port), get the option when the rule says so
//!   and are forwarded with a FIB lookup; backend → client packets (and ICMP
//!   errors about a flow) are translated back.
//!   The same program on the segmenter's receiving end gets the segments of
//!   GSO packets that needed the option back, and gives each of them the
//!   option (one program, verified once: it tells the two apart by the
//!   interface the packet arrived on).
//! - `toa_lb_option` (tail-called): inserts the option into a translated
//!   packet and forwards it; its own program so that the verifier checks the
//!   option planner once, not once per path of the main program.
//!
//! Entry points are one-liners; decisions live in `toa_common::lb`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        clippy::needless_borrows_for_generic_args,
        reason = "map keys and values live in the per-CPU work area; by value they would be copied onto the 512-byte stack"
    )
)]

// The host build is a stub: its dependencies are only used on the bpf target.
#[cfg(not(target_arch = "bpf"))]
use {aya_ebpf as _, toa_common as _};

#[cfg(target_arch = "bpf")]
mod client;
#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod icmp;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod option;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod reply;
#[cfg(target_arch = "bpf")]
mod skb;
#[cfg(target_arch = "bpf")]
mod work;

#[cfg(target_arch = "bpf")]
mod entry {
    use aya_ebpf::{macros::classifier, programs::TcContext};

    use crate::{option, packet, skb::Skb};

    #[classifier]
    pub fn toa_lb_ingress(ctx: TcContext) -> i32 {
        packet::on_ingress(&Skb::new(&ctx))
    }

    #[classifier]
    pub fn toa_lb_option(ctx: TcContext) -> i32 {
        option::run(&Skb::new(&ctx))
    }
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// The programs only exist for the BPF target; this keeps host builds of the
/// workspace (clippy, tests) working.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
