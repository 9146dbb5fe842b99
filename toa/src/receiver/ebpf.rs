//! The embedded eBPF object and how it is loaded.

use crate::{Result, receiver::pins::PINNED_MAPS, sys::paths::PinDir};
use aya::{Ebpf, EbpfLoader};
use toa_common::opstats;

/// The eBPF object built from `toa-ebpf` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/toa"));

/// The environment variable that turns on the debug-only run statistics per
/// callback (`toa_common::opstats`), for `bench/agent`: `1` to turn them on.
pub const OP_STATS_ENV: &str = "TOA_DEBUG_OP_STATS";

/// Loads the object with the receiver's maps pinned under `pins` (reusing
/// maps already pinned there, so stored addresses survive a restart).
pub fn load_pinned(pins: &PinDir) -> Result<Ebpf> {
    let paths: Vec<_> = PINNED_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let op_stats = u32::from(std::env::var_os(OP_STATS_ENV).is_some_and(|v| v == "1"));
    if op_stats == 1 {
        tracing::warn!("{OP_STATS_ENV}=1: timing every program run (debug only; costs two clock reads per run)");
    }
    loader.override_global(opstats::SWITCH, &op_stats, true);
    Ok(loader.load(OBJECT)?)
}

/// Loads the object with private maps (nothing pinned).
pub fn load_private() -> Result<Ebpf> {
    Ok(EbpfLoader::new().load(OBJECT)?)
}
