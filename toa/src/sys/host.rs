//! Facts about the running system and the checks made before attaching.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use crate::{Error, Result, sys::paths};

/// `statfs` magic of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The capabilities loading and attaching the programs takes (bit, name):
/// CAP_BPF to load programs and create maps, CAP_PERFMON for the pointer
/// arithmetic the verifier allows only to privileged loaders, CAP_NET_ADMIN
/// for socket and cgroup program types. CAP_SYS_ADMIN stands in for the first two.
pub const REQUIRED_CAPS: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];
const CAP_SYS_ADMIN: u32 = 21;

/// The required capabilities missing from the effective set (`CapEff` in /proc/self/status).
pub fn missing_capabilities() -> Vec<&'static str> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    REQUIRED_CAPS
        .iter()
        .filter(|(bit, _)| !(has(*bit) || (*bit != 12 && has(CAP_SYS_ADMIN))))
        .map(|(_, name)| *name)
        .collect()
}

/// Fails unless the process holds the capabilities to load and attach the
/// programs: root, or any user with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN
/// (what the systemd unit and the DaemonSet grant).
pub fn require_root() -> Result<()> {
    let missing = missing_capabilities();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 && missing.len() == REQUIRED_CAPS.len() {
        return Err(Error::NotRoot);
    }
    Err(Error::MissingCapabilities { missing: missing.join(", ") })
}

/// Fails unless the kernel exposes BTF.
pub fn require_btf() -> Result<()> {
    let path = Path::new(paths::KERNEL_BTF);
    if !path.exists() {
        return Err(Error::NoBtf { path: path.into() });
    }
    Ok(())
}

/// The mount point of the cgroup v2 hierarchy, from /proc/mounts.
///
/// On hybrid systems it is `/sys/fs/cgroup/unified`, on unified ones `/sys/fs/cgroup`.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string(paths::PROC_MOUNTS).map_err(Error::io("reading", paths::PROC_MOUNTS))?;
    cgroup2_root_in(&mounts).ok_or(Error::NoCgroup2)
}

/// The first cgroup2 mount point listed in a mount table.
fn cgroup2_root_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(dir)))
    })
}

/// Every bpffs mount point, from /proc/mounts.
pub fn bpffs_mounts() -> Vec<PathBuf> {
    let mounts = fs::read_to_string(paths::PROC_MOUNTS).unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (fstype == "bpf").then(|| PathBuf::from(unescape_mount_path(dir)))
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The cgroup directory with id (inode) `id` under `root`, searched breadth-first.
pub fn find_cgroup(root: &Path, id: u64) -> Option<PathBuf> {
    let mut queue = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = queue.pop() {
        seen += 1;
        if seen > 100_000 {
            return None;
        }
        if fs::metadata(&dir).map(|m| m.ino()).ok() == Some(id) {
            return Some(dir);
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            queue.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    None
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

fn statfs_type(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded.
    Ok(unsafe { st.assume_init() }.f_type)
}

/// Resolves the cgroup to attach to: `given`, or the cgroup v2 root.
///
/// A given path must be a directory of the cgroup v2 hierarchy.
pub fn resolve_cgroup(given: Option<&Path>) -> Result<PathBuf> {
    let root = cgroup2_root()?;
    let Some(path) = given else { return Ok(root) };
    let is_cgroup2 = path.is_dir() && statfs_type(path).map(|t| t == CGROUP2_SUPER_MAGIC).unwrap_or(false);
    if !is_cgroup2 {
        return Err(Error::NotACgroup { path: path.into(), root });
    }
    Ok(path.to_path_buf())
}

/// The cgroup v2 directory this process is in (from `/proc/self/cgroup`).
pub fn own_cgroup() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(Error::io("reading", "/proc/self/cgroup"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| Error::Invalid("this process is in no cgroup v2 (no `0::` line in /proc/self/cgroup)".into()))?;
    Ok(cgroup2_root()?.join(rel.trim().trim_start_matches('/')))
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`, after the parenthesised command name).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_start_time(&stat)
}

fn stat_start_time(stat: &str) -> Option<u64> {
    // Fields after the command name start with field 3 (the state).
    stat.rsplit_once(')')?.1.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The running kernel's release (`uname -r`); empty when unreadable.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

/// The running kernel's (major, minor).
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = kernel_release();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Makes sure the pin directory's file system is bpffs, mounting bpffs at
/// /sys/fs/bpf when that is where it should be and nothing is mounted.
pub fn ensure_bpffs(pin_root: &Path) -> Result<()> {
    let default_mount = Path::new(paths::BPFFS_MOUNT);
    if pin_root.starts_with(default_mount) && !is_bpffs(default_mount) {
        fs::create_dir_all(default_mount).map_err(Error::io("creating", default_mount))?;
        let src = CString::new("bpf").map_err(|e| Error::Invalid(e.to_string()))?;
        let dst = CString::new(default_mount.as_os_str().as_bytes()).map_err(|e| Error::Invalid(e.to_string()))?;
        // SAFETY: valid C strings; no data argument.
        let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(Error::io("mounting bpffs on", default_mount)(std::io::Error::last_os_error()));
        }
        tracing::info!(path = %default_mount.display(), "mounted bpffs");
    }
    let parent = pin_root.ancestors().find(|p| p.exists()).unwrap_or(default_mount);
    if !is_bpffs(parent) {
        return Err(Error::Invalid(format!(
            "pin directory {} is not on a bpf file system (mount one with `mount -t bpf bpf {}`)",
            pin_root.display(),
            parent.display()
        )));
    }
    Ok(())
}

/// Whether `path` is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs_type(path).map(|t| t == BPF_FS_MAGIC).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_whatever_the_command_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(stat_start_time(stat), Some(987654));
        assert!(process_start_time(std::process::id()).is_some_and(|t| t > 0));
    }

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_tables() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_root_in(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(cgroup2_root_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root_in("proc /proc proc rw 0 0\n"), None);
        let spaced = "none /mnt/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_root_in(spaced), Some(PathBuf::from("/mnt/my cg")));
    }
}
