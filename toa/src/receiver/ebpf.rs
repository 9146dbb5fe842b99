//! The embedded eBPF object and how it is loaded.

use crate::{Result, receiver::pins::PINNED_MAPS, sys::paths::PinDir};
use aya::{Ebpf, EbpfLoader};

/// The eBPF object built from `toa-ebpf` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/toa"));

/// Loads the object with the receiver's maps pinned under `pins` (reusing
/// maps already pinned there, so stored addresses survive a restart).
pub fn load_pinned(pins: &PinDir) -> Result<Ebpf> {
    let paths: Vec<_> = PINNED_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    Ok(loader.load(OBJECT)?)
}

/// Loads the object with private maps (nothing pinned).
pub fn load_private() -> Result<Ebpf> {
    Ok(EbpfLoader::new().load(OBJECT)?)
}
