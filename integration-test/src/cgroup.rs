//! Child cgroups (cgroup v2) that tests attach eBPF programs to and start
//! processes in.
//!
//! The cgroup2 mount point is read from `/proc/mounts`: it is
//! `/sys/fs/cgroup` on unified hosts but e.g. `/sys/fs/cgroup/unified` on
//! hybrid ones.

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::unique_name;

/// How long [`Cgroup`]'s drop keeps killing members before giving up.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Cgroup`]'s drop retries `rmdir` on `EBUSY`.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);

/// Interval between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Longest directory name given to a cgroup by [`Cgroup::new`].
const NAME_MAX: usize = 64;

/// Decodes the octal escapes (`\040` for a space, ...) of a `/proc/mounts`
/// field.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) if bytes[i] == b'\\' => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the mount point of the first `cgroup2` filesystem in `mounts`
/// (the text of `/proc/mounts`).
fn find_cgroup2(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_field(target)))
    })
}

/// The cgroup2 mount point: the first line of `/proc/mounts` with file system
/// type `cgroup2`.
///
/// # Panics
///
/// If `/proc/mounts` cannot be read or has no cgroup2 mount.
pub fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_else(|e| panic!("cannot read /proc/mounts: {e}"));
    find_cgroup2(&mounts).unwrap_or_else(|| {
        panic!(
            "no cgroup2 file system is mounted (no `cgroup2` line in /proc/mounts); \
             mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
        )
    })
}

/// A child cgroup `{cgroup2 root}/{prefix}-{pid}-{n}`, removed on drop after
/// SIGKILLing every process still in it (or in cgroups below it).
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates a uniquely named cgroup directly below the cgroup2 root.
    ///
    /// # Panics
    ///
    /// If there is no cgroup2 mount or the directory cannot be created
    /// (not root, or a leftover with the same name).
    pub fn new(prefix: &str) -> Cgroup {
        let path = cgroup2_root().join(unique_name(prefix, NAME_MAX));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    /// The cgroup's directory (what eBPF cgroup programs attach to).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The processes (thread group ids) currently in this cgroup, read from
    /// `cgroup.procs`; processes in descendant cgroups are not included.
    ///
    /// # Panics
    ///
    /// If `cgroup.procs` cannot be read.
    pub fn pids(&self) -> Vec<i32> {
        read_procs(&self.path).unwrap_or_else(|e| panic!("cannot read {}/cgroup.procs: {e}", self.path.display()))
    }

    /// Moves process `pid` (all its threads) into this cgroup. To start a
    /// child directly inside, use [`crate::process::command_in`] instead.
    ///
    /// # Panics
    ///
    /// If the write to `cgroup.procs` fails.
    pub fn add_pid(&self, pid: i32) {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move pid {pid} into {}: {e}", procs.display()));
    }

    /// Kills everything in the subtree and removes its directories.
    fn destroy(&self) -> Result<(), String> {
        kill_all(&self.path)?;
        remove_tree(&self.path)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(msg) = self.destroy() {
            let msg = format!("cleaning up cgroup {}: {msg}", self.path.display());
            if thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Parses `dir/cgroup.procs`.
fn read_procs(dir: &Path) -> io::Result<Vec<i32>> {
    let text = fs::read_to_string(dir.join("cgroup.procs"))?;
    text.lines()
        .map(|l| l.trim().parse().map_err(|e| io::Error::new(ErrorKind::InvalidData, format!("{l:?}: {e}"))))
        .collect()
}

/// Subdirectories (child cgroups) of `dir`.
fn child_cgroups(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut children = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            children.push(entry.path());
        }
    }
    Ok(children)
}

/// Pids in `dir` and every cgroup below it. A cgroup that vanished meanwhile
/// counts as empty.
fn subtree_pids(dir: &Path) -> Result<Vec<i32>, String> {
    let mut pids = match read_procs(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}/cgroup.procs: {e}", dir.display())),
    };
    let children = match child_cgroups(dir) {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    for child in children {
        pids.extend(subtree_pids(&child)?);
    }
    Ok(pids)
}

/// SIGKILLs every process in the subtree until `cgroup.procs` stays empty.
/// Uses `cgroup.kill` (Linux 5.14+) when present, and kill(2) per pid in any
/// case, since processes may fork while being killed. Never kills the calling
/// process, which may have been moved in by a test.
fn kill_all(dir: &Path) -> Result<(), String> {
    let own = i32::try_from(std::process::id()).expect("pid fits in i32");
    let deadline = Instant::now() + KILL_TIMEOUT;
    let mut used_cgroup_kill = false;
    loop {
        let pids = subtree_pids(dir)?;
        if pids.contains(&own) {
            return Err(format!("the test process itself (pid {own}) is in the cgroup; move it out before the drop"));
        }
        if pids.is_empty() {
            return Ok(());
        }
        if !used_cgroup_kill {
            used_cgroup_kill = true;
            // Missing on old kernels; the per-pid loop below covers that.
            let _ = fs::write(dir.join("cgroup.kill"), "1");
        }
        for &pid in &pids {
            // SAFETY: plain syscall; ESRCH for processes already gone is fine.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if Instant::now() >= deadline {
            return Err(format!("processes {pids:?} still in the cgroup {KILL_TIMEOUT:?} after SIGKILL"));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Removes `dir` and the cgroups below it, deepest first, retrying `rmdir`
/// on `EBUSY` (members that have just been killed may not have left yet).
fn remove_tree(dir: &Path) -> Result<(), String> {
    match child_cgroups(dir) {
        Ok(children) => {
            for child in children {
                remove_tree(&child)?;
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    }
    let deadline = Instant::now() + RMDIR_TIMEOUT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == ErrorKind::ResourceBusy && Instant::now() < deadline => {
                thread::sleep(POLL_INTERVAL);
            }
            Err(e) => return Err(format!("cannot remove {}: {e}", dir.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Stream, command_in, spawn};
    use std::os::unix::process::ExitStatusExt as _;

    #[test]
    fn finds_first_cgroup2_line_and_unescapes() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /mnt/my\\040cgroup cgroup2 rw 0 0\n\
                      cgroup2 /other cgroup2 rw 0 0\n";
        assert_eq!(find_cgroup2(mounts), Some(PathBuf::from("/mnt/my cgroup")));
        assert_eq!(find_cgroup2("proc /proc proc rw 0 0\n"), None);
        assert_eq!(unescape_mount_field(r"a\134b\011c\0"), "a\\b\tc\\0");
    }

    #[test]
    fn cgroup2_root_is_a_cgroup2_mount() {
        // Every fixture needs one (toa attaches to cgroup v2): no mount is a failure.
        let root = cgroup2_root();
        assert!(root.join("cgroup.procs").exists(), "{}", root.display());
    }

    #[test]
    #[ignore = "needs root: cgroups"]
    fn cgroup_lifecycle() {
        crate::require_root();
        let a = Cgroup::new("toa-t-cg");
        let b = Cgroup::new("toa-t-cg");
        assert_ne!(a.path(), b.path());
        assert_eq!(a.path().parent(), Some(cgroup2_root().as_path()));
        assert!(a.pids().is_empty());
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists(), "{} still exists", path.display());
    }

    #[test]
    #[ignore = "needs root: cgroups"]
    fn drop_kills_members_and_removes_children() {
        crate::require_root();
        let cg = Cgroup::new("toa-t-cgkill");
        let mut top = spawn({
            let mut c = command_in(None, Some(cg.path()), "sleep");
            c.arg("1000");
            c
        });
        // A nested cgroup with a member that forks a grandchild.
        let nested = cg.path().join("nested");
        fs::create_dir(&nested).expect("mkdir nested cgroup");
        let mut deep = spawn({
            let mut c = command_in(None, Some(&nested), "sh");
            c.args(["-c", "sleep 1000 & echo started; wait"]);
            c
        });
        deep.wait_for_line(Stream::Stdout, |l| l == "started", Duration::from_secs(5));
        assert_eq!(cg.pids(), vec![top.pid()]);
        let nested_pids = read_procs(&nested).expect("nested procs");
        assert_eq!(nested_pids.len(), 2, "{nested_pids:?}");
        assert!(nested_pids.contains(&deep.pid()));

        let path = cg.path().to_owned();
        drop(cg);
        assert!(!path.exists(), "{} still exists", path.display());
        let status = top.wait_exit(Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        let status = deep.wait_exit(Duration::from_secs(5));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }
}
