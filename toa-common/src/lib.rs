//! TCP Option Address (TOA): the option codec and the types shared by the
//! toa eBPF programs and userspace.
//!
//! Everything here is plain `no_std` Rust so that the very same functions run
//! inside the kernel (in the eBPF programs) and on the host (in the CLI, the
//! tests and the fuzzer).
#![no_std]

pub mod capture;
pub mod compat;
pub mod config;
pub mod counters;
pub mod format;
pub mod inject;
pub mod lb;
pub mod opstats;
pub mod option;
pub mod peer;
pub mod segment;
pub mod trust;

pub use format::{Format, FormatError, Formats, Shape};
pub use option::{Parsed, parse_options};
pub use peer::{Family, PeerRecord};

/// Names of the programs in the eBPF object, as the loader looks them up.
pub mod programs {
    /// sock_ops: captures the option on passive (server-side) connections.
    pub const CAPTURE: &str = "toa_capture";
    /// cgroup/getpeername4: presents the real client on IPv4 sockets.
    pub const GETPEERNAME4: &str = "toa_getpeername4";
    /// cgroup/getpeername6: presents the real client on IPv6 sockets.
    pub const GETPEERNAME6: &str = "toa_getpeername6";
    /// cgroup/getsockopt: answers the vendor calls (1348, 4096).
    pub const GETSOCKOPT: &str = "toa_getsockopt";
    /// sock_ops: writes the option on active (client-side) connections.
    pub const INJECT: &str = "toa_inject";
    /// iter/tcp: sets TCP_SAVE_SYN on listeners created before the agent started.
    pub const SAVE_SYN: &str = "toa_save_syn";
}

/// Names of the maps in the eBPF object.
pub mod maps {
    /// Per-socket real client address ([`crate::PeerRecord`]).
    pub const PEERS: &str = "TOA_PEERS";
    /// Per-CPU counters indexed by [`crate::counters::Counter`].
    pub const COUNTERS: &str = "TOA_COUNTERS";
    /// The settings slot in force (`u32`, index 0); see [`crate::config`].
    pub const ACTIVE: &str = "TOA_ACTIVE";
    /// Receiver settings ([`crate::config::ReceiverConfig`]), one per slot.
    pub const CONFIG: &str = "TOA_CONFIG";
    /// Trusted forwarder prefixes (LPM trie of [`crate::trust::TrustKey`]), both slots.
    pub const TRUSTED: &str = "TOA_TRUSTED";
    /// Local ports acted on ([`crate::config::PortSet`]), one per slot.
    pub const PORTS: &str = "TOA_PORTS";
    /// Writer targets by socket cookie ([`crate::inject::InjectSpec`]).
    pub const INJECT_TARGETS: &str = "TOA_INJECT_TARGETS";
    /// Per-socket writer state ([`crate::inject::InjectState`]).
    pub const INJECT_STATE: &str = "TOA_INJECT_STATE";
    /// Debug-only run statistics per callback ([`crate::opstats`]).
    pub const OP_STATS: &str = "TOA_OP_STATS";
}
