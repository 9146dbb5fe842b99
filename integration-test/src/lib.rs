//! Fixtures for toa's privileged integration tests: network namespaces, veth
//! pairs, child cgroups, processes started inside them, a TUN peer that
//! writes TCP segments byte by byte, and BPF programs that are not toa's.
//! Every fixture has a unique name and cleans up on drop, also when a test
//! panics.
//!
//! Tests that need root are marked `#[ignore = "needs root: ..."]`, so a plain
//! `cargo test` lists them as ignored with the reason, and start with
//! [`require_root`], so that running them as another user (`--include-ignored`)
//! fails instead of passing. `./scripts/test` runs them all as root.

pub mod bpf;
pub mod cgroup;
pub mod container;
pub mod ecmp;
pub mod line;
pub mod netns;
pub mod packet;
pub mod process;
pub mod tun;

/// Fails the calling test unless it runs as root.
#[track_caller]
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (BPF programs, network namespaces, cgroups) but runs as uid {euid}: run ./scripts/test"
    );
}
