//! A Debian 12 root file system built once and cached, and a container that
//! boots it with systemd as PID 1 (`systemd-nspawn -b`), for tests that drive
//! the package and its units as an operator would.
//!
//! - [`debian_rootfs`] runs `mmdebstrap --variant=minbase` into
//!   `CACHE/rootfs-bookworm-<key>`, the key a hash of the suite, variant and
//!   package list: a changed list builds a new tree. Concurrent callers wait
//!   on a lock; a half-built tree is never used (it is renamed into place).
//! - [`Container::boot`] mounts an overlay over the cached tree (each
//!   container writes to its own upper directory, the cache stays pristine),
//!   starts `systemd-nspawn --register=no --keep-unit` inside a fresh child
//!   cgroup of the host (the container's cgroup root is `<that>/payload`),
//!   optionally in a given network namespace, and waits until
//!   `systemctl is-system-running --wait` says the boot finished.
//! - [`Container::exec`] runs a command in all of the container's namespaces
//!   (`nsenter -t LEADER -a`). Such a process stays in the host's cgroup,
//!   outside the container's: start servers with `systemd-run` inside.
//!
//! Dropping the container powers it off (SIGTERM to nspawn, which asks the
//! container's systemd to halt), kills what is left in its cgroup, unmounts
//! the overlay and removes its directories, also when a test panics.

use std::fs;
use std::io::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cgroup::Cgroup;
use crate::netns::unique_name;
use crate::process::{self, Spawned, command_in, spawn};

/// The suite every container boots.
pub const SUITE: &str = "bookworm";

/// The packages of the tests' Debian (minbase plus these): systemd as init,
/// and the tools the tests drive inside.
pub const BASE_PACKAGES: &[&str] = &["systemd", "systemd-sysv", "dbus", "iproute2", "python3", "curl"];

/// How long a boot may take (to `multi-user.target`).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the container may take to halt before it is killed.
const HALT_TIMEOUT: Duration = Duration::from_secs(30);

/// Prints a step of what the test drives, so a log shows what happened.
pub fn step(what: &str) {
    eprintln!("container: {what}");
}

/// A command line as a step shows it: inline scripts (arguments with a
/// newline) are shortened to their first line.
pub fn shown(args: &[&str]) -> String {
    args.iter()
        .map(|a| match a.trim_start().split_once('\n') {
            Some((first, _)) => format!("'{first}…'"),
            None => a.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// FNV-1a, 64 bits: a stable key for the cache (no dependency, same on every machine).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The cache directory for `packages`: `cache/rootfs-bookworm-<key>`.
pub fn rootfs_path(cache: &Path, packages: &[&str]) -> PathBuf {
    let mut sorted: Vec<&str> = packages.to_vec();
    sorted.sort_unstable();
    let key = fnv1a(format!("{SUITE} minbase {}", sorted.join(",")).as_bytes());
    cache.join(format!("rootfs-{SUITE}-{key:016x}"))
}

/// An exclusive `flock` held while the guard lives.
struct FileLock {
    _file: fs::File,
}

impl FileLock {
    fn take(path: &Path) -> FileLock {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open lock {}: {e}", path.display()));
        // SAFETY: plain syscall on an open fd; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            panic!("cannot lock {}: {}", path.display(), std::io::Error::last_os_error());
        }
        FileLock { _file: file }
    }
}

/// A directory removed (recursively) on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The cached Debian tree with `packages` (building it the first time: about a minute).
///
/// # Panics
///
/// If mmdebstrap is missing or fails; the message has its output.
pub fn debian_rootfs(cache: &Path, packages: &[&str]) -> PathBuf {
    let path = rootfs_path(cache, packages);
    let done = path.join(".toa-rootfs-complete");
    if done.exists() {
        step(&format!("using the cached rootfs {}", path.display()));
        return path;
    }
    fs::create_dir_all(cache).unwrap_or_else(|e| panic!("cannot create {}: {e}", cache.display()));
    let _lock = FileLock::take(&cache.join("rootfs.lock"));
    if done.exists() {
        step(&format!("using the rootfs {} another test just built", path.display()));
        return path;
    }
    let tmp = TempDir(cache.join(unique_name("rootfs-building", 64)));
    let include = format!("--include={}", packages.join(","));
    step(&format!("building the rootfs: mmdebstrap --variant=minbase {include} {SUITE} {}", path.display()));
    let started = Instant::now();
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet", &include, SUITE])
        .arg(&tmp.0)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run mmdebstrap (apt install mmdebstrap): {e}"));
    process::succeeded(&out, "mmdebstrap");
    fs::write(tmp.0.join(".toa-rootfs-complete"), include).expect("marking the rootfs complete");
    let _ = fs::remove_dir_all(&path);
    fs::rename(&tmp.0, &path).unwrap_or_else(|e| panic!("cannot move the rootfs to {}: {e}", path.display()));
    step(&format!("rootfs built in {:.0?}", started.elapsed()));
    path
}

/// Runs a command to completion, panicking with its output when it fails.
fn checked(cmd: &mut Command) -> Output {
    let desc = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    process::succeeded(&out, &desc);
    out
}

/// An overlay mount: the lower tree read-only, writes go to a private upper directory.
struct Overlay {
    dir: PathBuf,
    merged: PathBuf,
    mounted: bool,
}

impl Overlay {
    fn mount(lower: &Path, name: &str) -> Overlay {
        let dir = std::env::temp_dir().join(name);
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        }
        let mut overlay = Overlay { dir, merged, mounted: false };
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        checked(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&overlay.merged));
        overlay.mounted = true;
        overlay
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mounted {
            let out = Command::new("umount").arg(&self.merged).output();
            if !out.is_ok_and(|o| o.status.success()) {
                // Busy (a process still has a file open): detach it lazily.
                let _ = Command::new("umount").arg("-l").arg(&self.merged).output();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How to boot a container.
#[derive(Debug, Clone, Default)]
pub struct Boot {
    /// Capabilities beyond nspawn's default set (`--capability=`).
    pub capabilities: Vec<String>,
    /// System calls allowed beyond nspawn's default filter (`--system-call-filter=`).
    pub system_calls: Vec<String>,
    /// Bind mounts, host path → container path.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// A network namespace to run in (`--network-namespace-path=`); none: the host's.
    pub netns: Option<PathBuf>,
}

/// A booted container (see the module documentation).
pub struct Container {
    name: String,
    // Field order is drop order: halt the container, then its cgroup, then the overlay.
    nspawn: Option<Spawned>,
    leader: i32,
    cgroup: Option<Cgroup>,
    overlay: Option<Overlay>,
}

impl Container {
    /// Boots `rootfs` and waits for the end of the boot.
    ///
    /// # Panics
    ///
    /// If nspawn cannot start or the boot does not finish in time (with the console output).
    pub fn boot(rootfs: &Path, opts: &Boot) -> Container {
        let name = unique_name("toa-ct", 48);
        let overlay = Overlay::mount(rootfs, &name);
        let cgroup = Cgroup::new("toa-ct");
        let mut cmd = command_in(None, Some(cgroup.path()), "systemd-nspawn");
        cmd.args(["--register=no", "--keep-unit", "--console=pipe", "--boot"]);
        cmd.arg(format!("--directory={}", overlay.merged.display()));
        cmd.arg(format!("--machine={name}"));
        if !opts.capabilities.is_empty() {
            cmd.arg(format!("--capability={}", opts.capabilities.join(",")));
        }
        if !opts.system_calls.is_empty() {
            cmd.arg(format!("--system-call-filter={}", opts.system_calls.join(" ")));
        }
        for (host, inside) in &opts.binds {
            cmd.arg(format!("--bind={}:{}", host.display(), inside.display()));
        }
        if let Some(ns) = &opts.netns {
            cmd.arg(format!("--network-namespace-path={}", ns.display()));
        }
        step(&format!("booting {name}: {cmd:?}"));
        let started = Instant::now();
        let nspawn = spawn(cmd);
        let mut ct = Container { name, nspawn: Some(nspawn), leader: 0, cgroup: Some(cgroup), overlay: Some(overlay) };
        ct.leader = ct.find_leader();
        let out = ct.wait_booted();
        step(&format!("{} booted in {:.1?} (systemd is {})", ct.name, started.elapsed(), out.trim()));
        ct
    }

    /// The container's PID 1 as the host sees it: the descendant of nspawn running systemd.
    fn find_leader(&mut self) -> i32 {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let nspawn = self.nspawn.as_mut().expect("nspawn runs");
        let children = |pid: i32| -> Vec<i32> {
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        };
        loop {
            let mut queue = children(nspawn.pid());
            while let Some(pid) = queue.pop() {
                let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                if exe.file_name().is_some_and(|n| n == "systemd") {
                    return pid;
                }
                queue.extend(children(pid));
            }
            if let Some(status) = nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}): {:?}", nspawn.lines_so_far(crate::process::Stream::Stderr));
            }
            assert!(Instant::now() < deadline, "the container's init did not start");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_booted(&mut self) -> String {
        // `--wait` returns once the boot is over: running, or degraded if a unit
        // failed. Until PID 1 has set itself up there is no one to ask.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let out = loop {
            let out = self.exec(&[
                "timeout",
                &BOOT_TIMEOUT.as_secs().to_string(),
                "systemctl",
                "is-system-running",
                "--wait",
            ]);
            // "offline": PID 1 has not even created /run/systemd/system yet.
            let early = String::from_utf8_lossy(&out.stderr).contains("Failed to connect to bus")
                || String::from_utf8_lossy(&out.stdout).trim() == "offline";
            if !early || Instant::now() > deadline {
                break out;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let state = String::from_utf8_lossy(&out.stdout).into_owned();
        if state.trim() != "running" {
            let failed = self.exec(&["systemctl", "--failed", "--no-legend", "--plain"]);
            let console = self.nspawn.as_ref().map(|n| n.lines_so_far(crate::process::Stream::Stdout).join("\n"));
            panic!(
                "the container did not boot cleanly: {state:?} ({}); failed units:\n{}\nconsole:\n{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&failed.stdout),
                console.unwrap_or_default()
            );
        }
        state
    }

    /// The container's name (also its hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's PID 1, as the host sees it.
    pub fn leader(&self) -> i32 {
        self.leader
    }

    /// The host cgroup that is the container's cgroup root.
    pub fn cgroup_root(&self) -> PathBuf {
        self.cgroup.as_ref().expect("cgroup").path().join("payload")
    }

    /// The container's root directory as the host sees it (the overlay).
    pub fn root(&self) -> &Path {
        &self.overlay.as_ref().expect("overlay").merged
    }

    /// Copies a host file into the container's file system.
    pub fn copy_in(&self, host: &Path, inside: &str) {
        let dst = self.root().join(inside.trim_start_matches('/'));
        if let Some(dir) = dst.parent() {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        fs::copy(host, &dst).unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", host.display(), dst.display()));
    }

    /// Writes a file in the container's file system.
    pub fn write(&self, inside: &str, text: &str) {
        let dst = self.root().join(inside.trim_start_matches('/'));
        if let Some(dir) = dst.parent() {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let mut f = fs::File::create(&dst).unwrap_or_else(|e| panic!("cannot create {}: {e}", dst.display()));
        f.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("cannot write {}: {e}", dst.display()));
    }

    /// Whether a path exists (or is a dangling symlink) as the container sees
    /// it, tmpfs mounts such as /run included.
    pub fn has(&self, inside: &str) -> bool {
        self.exec(&["sh", "-c", "test -e \"$0\" || test -L \"$0\"", inside]).status.success()
    }

    /// A command run inside every namespace of the container.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t").arg(self.leader.to_string()).arg("-a").arg("--").args(args);
        cmd.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        cmd.env("LANG", "C.UTF-8").env("DEBIAN_FRONTEND", "noninteractive").env("SYSTEMD_PAGER", "");
        cmd
    }

    /// Runs a command inside and returns its output, whatever its status.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null());
        cmd.output().unwrap_or_else(|e| panic!("cannot run {args:?} in {}: {e}", self.name))
    }

    /// Runs a command inside, prints it as a step, and panics unless it succeeds; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        step(&format!("[{}] # {}", self.name, shown(args)));
        let out = self.exec(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?} failed in {} ({}):\n{stdout}\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs a shell script inside (`sh -c`), like [`Container::run`].
    pub fn sh(&self, script: &str) -> String {
        self.run(&["sh", "-c", script])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut nspawn) = self.nspawn.take() {
            // nspawn turns SIGTERM into an orderly halt of the container's systemd.
            let status = nspawn.terminate_within(HALT_TIMEOUT);
            eprintln!("container: {} halted ({status})", self.name);
        }
        drop(self.cgroup.take());
        drop(self.overlay.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_key_follows_the_package_list_not_its_order() {
        let cache = Path::new("/c");
        let a = rootfs_path(cache, &["systemd", "dbus"]);
        assert_eq!(a, rootfs_path(cache, &["dbus", "systemd"]));
        assert_ne!(a, rootfs_path(cache, &["dbus", "systemd", "curl"]));
        assert!(a.to_string_lossy().starts_with("/c/rootfs-bookworm-"));
    }
}
