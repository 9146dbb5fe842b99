//! Builds the eBPF programs (crate `toa-ebpf`) and leaves the object in
//! `OUT_DIR`, where `src/ebpf.rs` embeds it.
//!
//! The eBPF crate needs a nightly toolchain (`-Z build-std=core`) whose LLVM
//! matches bpf-linker's; its name is kept in `toa-ebpf/NIGHTLY`, which
//! `scripts/setup` installs.

use std::fs;

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../toa-ebpf");
    let pin = format!("{ebpf_dir}/NIGHTLY");
    println!("cargo:rerun-if-changed={pin}");
    // The programs also compile the shared codec.
    println!("cargo:rerun-if-changed={}", concat!(env!("CARGO_MANIFEST_DIR"), "/../toa-common/src"));
    let toolchain = fs::read_to_string(&pin)?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "toa-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        aya_build::Toolchain::Custom(toolchain.trim()),
    )
}
