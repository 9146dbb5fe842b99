//! Well-known paths.

use std::path::{Path, PathBuf};

/// Where the agent pins its maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/toa";
/// Where bpffs is mounted when it is not yet.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Runtime state (the agent's lock file).
pub const RUN_DIR: &str = "/run/toa";
/// The configuration file.
pub const CONFIG_FILE: &str = "/etc/toa/toa.toml";
/// The kernel's BTF, required for socket storage.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Mount table used to find cgroup2 and bpffs.
pub const PROC_MOUNTS: &str = "/proc/mounts";

/// The layout of one pin directory.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// A pin directory rooted at `root` (on bpffs).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of pinned maps.
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// Pin path of one map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Directory of pinned links.
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Pin path of one program's link.
    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    /// The lock file that guards this pin directory against a second agent.
    pub fn lock_file(&self) -> PathBuf {
        let flat: String =
            self.root.to_string_lossy().trim_matches('/').chars().map(|c| if c == '/' { '-' } else { c }).collect();
        Path::new(RUN_DIR).join(format!("agent@{flat}.lock"))
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new(DEFAULT_PIN_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = PinDir::default();
        assert_eq!(p.map("TOA_PEERS"), Path::new("/sys/fs/bpf/toa/maps/TOA_PEERS"));
        assert_eq!(p.link("toa_capture"), Path::new("/sys/fs/bpf/toa/links/toa_capture"));
        assert_eq!(p.lock_file(), Path::new("/run/toa/agent@sys-fs-bpf-toa.lock"));
    }
}
