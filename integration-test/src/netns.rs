//! Network namespaces and a two-namespace veth topology.
//!
//! Commands run inside a namespace through `nsenter --net=PATH`, and
//! threads or children switch with [`enter`] (`setns(2)`), never through
//! `ip netns exec`. The latter also unshares the mount namespace and mounts a
//! fresh sysfs over `/sys`, which hides the submounts below it: the cgroup2
//! hierarchy (`/sys/fs/cgroup/...`) and bpffs (`/sys/fs/bpf`) vanish from the
//! program's view, so anything attaching eBPF programs to a cgroup breaks.
//! `nsenter --net` and `setns(CLONE_NEWNET)` change only the network
//! namespace and leave the mount namespace alone (docs/design.md §5).
//!
//! Names are unique per test process and fixture ([`unique_name`]) so tests
//! can run in parallel, including several test binaries at once.

use std::fs::File;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Directory where `ip netns add` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Longest Linux interface name in bytes (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// Longest name given to a namespace or cgroup directory by the fixtures.
const NAME_MAX: usize = 64;

/// How long [`Pair::new`] waits for links and addresses to become usable.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Interval between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Serialises `ip netns add` within this process: the first call on a machine
/// turns `/run/netns` into a shared bind mount, and concurrent first calls
/// would stack several mounts there.
static NETNS_ADD_LOCK: Mutex<()> = Mutex::new(());

/// Returns a name unique to this process and call: `{prefix}-{pid}-{n}`, with
/// the pid and the per-process counter `n` in hexadecimal, and the prefix
/// shortened so that the whole name has at most `max_len` bytes (use
/// [`IFNAME_MAX`] for interface names).
///
/// # Panics
///
/// If `prefix` contains anything but ASCII letters, digits, `_`, `.` and `-`,
/// or if `max_len` cannot even hold `-{pid}-{n}`.
pub fn unique_name(prefix: &str, max_len: usize) -> String {
    assert!(
        prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')),
        "fixture name prefix {prefix:?} may only contain ASCII letters, digits, '_', '.' and '-'"
    );
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("-{:x}-{n:x}", std::process::id());
    let room = max_len
        .checked_sub(suffix.len())
        .unwrap_or_else(|| panic!("a unique name needs more than {max_len} bytes (suffix {suffix:?})"));
    let prefix = &prefix[..prefix.len().min(room)];
    format!("{prefix}{suffix}")
}

/// Switches the calling thread into the network namespace at `path` (a file
/// such as `/run/netns/NAME` or `/proc/PID/ns/net`) with
/// `setns(fd, CLONE_NEWNET)`. Only this thread changes namespace; use it in a
/// dedicated thread. (In a `pre_exec` hook, prefer
/// [`crate::process::command_in`], which opens the file before forking.)
///
/// # Panics
///
/// If the file cannot be opened or `setns` fails.
pub fn enter(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("cannot open network namespace {}: {e}", path.display()));
    // SAFETY: `file` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!("setns({}, CLONE_NEWNET) failed: {}", path.display(), std::io::Error::last_os_error());
    }
}

/// Runs `cmd` to completion with optional `input` on stdin and returns its
/// output, panicking with status, stdout and stderr if it fails.
fn run_checked(mut cmd: Command, input: Option<&str>) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin.write_all(input.as_bytes()).unwrap_or_else(|e| panic!("cannot write stdin of {desc}: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("cannot wait for {desc}: {e}"));
    if !out.status.success() {
        panic!(
            "{desc} failed ({})\ninput:\n{}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            input.unwrap_or(""),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command in the caller's namespaces, panicking on failure.
fn run_host(args: &[&str]) -> Output {
    let (program, rest) = args.split_first().expect("empty command line");
    let mut cmd = Command::new(program);
    cmd.args(rest);
    run_checked(cmd, None)
}

/// Panics with `msg`, or only prints it if the thread is already panicking
/// (a second panic inside `drop` would abort the test binary).
fn cleanup_failed(msg: &str) {
    if thread::panicking() {
        eprintln!("{msg}");
    } else {
        panic!("{msg}");
    }
}

/// A named network namespace (`ip netns add`) with `lo` up, deleted on drop.
///
/// Processes still running inside keep the namespace itself alive after the
/// drop; only its name disappears.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a namespace named `{prefix}-{pid}-{n}` and brings `lo` up.
    ///
    /// # Panics
    ///
    /// If `ip netns add` fails (e.g. not root) or `lo` cannot be brought up.
    pub fn new(prefix: &str) -> Netns {
        let name = unique_name(prefix, NAME_MAX);
        {
            let _guard = NETNS_ADD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            run_host(&["ip", "netns", "add", &name]);
        }
        let ns = Netns { path: Path::new(NETNS_RUN_DIR).join(&name), name };
        assert!(ns.path.exists(), "`ip netns add {}` succeeded but {} does not exist", ns.name, ns.path.display());
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as shown by `ip netns list`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, `/run/netns/NAME`, for `setns`, `nsenter --net=`
    /// or [`crate::process::command_in`].
    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// A `nsenter --net=PATH -- args...` command, without running it.
    fn nsenter(&self, args: &[&str]) -> Command {
        assert!(!args.is_empty(), "empty command line");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display())).arg("--").args(args);
        cmd
    }

    /// Runs `args` (program and arguments) inside the namespace with
    /// `nsenter --net`, stdin empty.
    ///
    /// # Panics
    ///
    /// If the command cannot be started or fails; the message has its stderr.
    pub fn run(&self, args: &[&str]) {
        run_checked(self.nsenter(args), None);
    }

    /// Like [`Netns::run`], but writes `input` to the command's stdin (e.g.
    /// `ip -batch -`).
    ///
    /// # Panics
    ///
    /// If the command cannot be started or fails.
    pub fn run_with_input(&self, args: &[&str], input: &str) {
        run_checked(self.nsenter(args), Some(input));
    }

    /// Runs `args` inside the namespace like [`Netns::run`] and returns its
    /// stdout (lossily decoded as UTF-8).
    ///
    /// # Panics
    ///
    /// If the command cannot be started or fails.
    pub fn output(&self, args: &[&str]) -> String {
        let out = run_checked(self.nsenter(args), None);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes `value` to `/proc/sys/{key}` (e.g. `net/ipv6/conf/all/forwarding`)
    /// as seen from inside this namespace. `/proc/sys/net` shows the network
    /// namespace of the thread that opens it, so this enters the namespace in
    /// a short-lived thread instead of starting a process.
    ///
    /// # Panics
    ///
    /// If the write fails.
    pub fn write_sysctl(&self, key: &str, value: &str) {
        let path = self.path.clone();
        let file = Path::new("/proc/sys").join(key);
        let name = self.name.clone();
        let value = value.to_owned();
        thread::spawn(move || {
            enter(&path);
            std::fs::write(&file, &value)
                .unwrap_or_else(|e| panic!("cannot write {value:?} to {} in netns {name}: {e}", file.display()));
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    }

    /// A [`Command`] for `program` that will run inside this namespace
    /// (shorthand for [`crate::process::command_in`] without a cgroup).
    pub fn command(&self, program: &str) -> Command {
        crate::process::command_in(Some(&self.path), None, program)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let result = Command::new("ip").args(["netns", "del", &self.name]).stdin(Stdio::null()).output();
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => cleanup_failed(&format!(
                "`ip netns del {}` failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => cleanup_failed(&format!("cannot run `ip netns del {}`: {e}", self.name)),
        }
    }
}

/// One end of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name (at most [`IFNAME_MAX`] bytes).
    pub name: String,
    /// Interface index inside its namespace.
    pub index: u32,
}

/// Two fresh namespaces joined by a veth pair:
///
/// ```text
///  cli: 192.0.2.1/24, 2001:db8::1/64  <-- veth -->  srv: 192.0.2.2/24, 2001:db8::2/64
/// ```
///
/// The documentation ranges only ever exist inside these namespaces. Dropping
/// the pair deletes both namespaces, which also removes the veth pair.
#[derive(Debug)]
pub struct Pair {
    /// Client namespace.
    pub cli: Netns,
    /// Server namespace.
    pub srv: Netns,
    /// Client end of the veth pair (in `cli`).
    pub cli_link: Link,
    /// Server end of the veth pair (in `srv`).
    pub srv_link: Link,
    /// Client IPv4 address, 192.0.2.1.
    pub cli_v4: Ipv4Addr,
    /// Server IPv4 address, 192.0.2.2.
    pub srv_v4: Ipv4Addr,
    /// Client IPv6 address, 2001:db8::1.
    pub cli_v6: Ipv6Addr,
    /// Server IPv6 address, 2001:db8::2.
    pub srv_v6: Ipv6Addr,
}

/// First host number used by [`Pair::add_cli_addresses`].
const EXTRA_CLI_FIRST: u8 = 10;

impl Pair {
    /// Creates namespaces `{prefix}-cli-...` and `{prefix}-srv-...`, a veth
    /// pair between them (created directly inside the namespaces, so it never
    /// appears in the caller's namespace), assigns the addresses (IPv6 with
    /// `nodad`), brings the links up and waits up to 5 s until both links are
    /// up and no IPv6 address is tentative.
    ///
    /// # Panics
    ///
    /// If any step fails or the links do not settle in time.
    pub fn new(prefix: &str) -> Pair {
        let cli = Netns::new(&format!("{prefix}-cli"));
        let srv = Netns::new(&format!("{prefix}-srv"));
        // Without DAD the link-local addresses are usable at once too (the
        // kernel runs DAD unless both `all` and the device's `accept_dad`
        // are 0; new devices copy `default`). Namespace-local settings.
        for ns in [&cli, &srv] {
            ns.write_sysctl("net/ipv6/conf/all/accept_dad", "0");
            ns.write_sysctl("net/ipv6/conf/default/accept_dad", "0");
        }
        let cli_if = unique_name("vc", IFNAME_MAX);
        let srv_if = unique_name("vs", IFNAME_MAX);
        cli.run(&["ip", "link", "add", &cli_if, "type", "veth", "peer", "name", &srv_if, "netns", srv.name()]);

        let (cli_v4, srv_v4) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
        let (cli_v6, srv_v6): (Ipv6Addr, Ipv6Addr) =
            ("2001:db8::1".parse().expect("valid IPv6"), "2001:db8::2".parse().expect("valid IPv6"));
        for (ns, ifname, v4, v6) in [(&cli, &cli_if, cli_v4, cli_v6), (&srv, &srv_if, srv_v4, srv_v6)] {
            ns.run_with_input(
                &["ip", "-batch", "-"],
                &format!(
                    "addr add {v4}/24 dev {ifname}\n\
                     addr add {v6}/64 dev {ifname} nodad\n\
                     link set {ifname} up\n"
                ),
            );
        }
        let cli_link = link_info(&cli, &cli_if);
        let srv_link = link_info(&srv, &srv_if);
        let pair = Pair { cli, srv, cli_link, srv_link, cli_v4, srv_v4, cli_v6, srv_v6 };
        pair.wait_settled();
        pair
    }

    /// Polls until both links are operationally up, their global IPv6
    /// addresses are present and no IPv6 address on them is tentative.
    fn wait_settled(&self) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let ends = [(&self.cli, &self.cli_link, self.cli_v6), (&self.srv, &self.srv_link, self.srv_v6)];
        loop {
            let mut pending = Vec::new();
            for (ns, link, v6) in ends {
                let state = ns.output(&["ip", "-o", "link", "show", "dev", &link.name]);
                if !state.contains(" state UP ") {
                    pending.push(format!("{}: {}", ns.name(), state.trim()));
                }
                let addrs = ns.output(&["ip", "-o", "-6", "addr", "show", "dev", &link.name]);
                assert!(!addrs.contains("dadfailed"), "duplicate address detection failed in {}:\n{addrs}", ns.name());
                if !addrs.contains(&format!(" {v6}/64 ")) || addrs.contains("tentative") {
                    pending.push(format!("{}: {}", ns.name(), addrs.trim()));
                }
            }
            if pending.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                panic!("veth pair did not settle within {SETTLE_TIMEOUT:?}:\n{}", pending.join("\n"));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Adds `n` extra client IPv4 addresses 192.0.2.10/24 .. 192.0.2.(9+n)/24
    /// to the client link (for tests that need more source ports than one
    /// address offers) and returns them. Idempotent (`ip addr replace`).
    ///
    /// # Panics
    ///
    /// If `n > 245` or `ip` fails.
    pub fn add_cli_addresses(&self, n: usize) -> Vec<Ipv4Addr> {
        let max = usize::from(u8::MAX - EXTRA_CLI_FIRST);
        assert!(n <= max, "at most {max} extra client addresses fit in 192.0.2.0/24, asked for {n}");
        let addrs: Vec<Ipv4Addr> = (0..n)
            .map(|i| {
                let host = EXTRA_CLI_FIRST + u8::try_from(i).expect("n <= 245");
                Ipv4Addr::new(192, 0, 2, host)
            })
            .collect();
        if !addrs.is_empty() {
            let batch: String =
                addrs.iter().map(|a| format!("addr replace {a}/24 dev {}\n", self.cli_link.name)).collect();
            self.cli.run_with_input(&["ip", "-batch", "-"], &batch);
        }
        addrs
    }
}

/// Reads the index of interface `ifname` in `ns` from `ip -o link show`.
fn link_info(ns: &Netns, ifname: &str) -> Link {
    let out = ns.output(&["ip", "-o", "link", "show", "dev", ifname]);
    let index = out
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the index of {ifname} in {}: {out:?}", ns.name()));
    Link { name: ifname.to_owned(), index }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn unique_names_fit_and_differ() {
        let a = unique_name("a-rather-long-prefix", IFNAME_MAX);
        let b = unique_name("a-rather-long-prefix", IFNAME_MAX);
        assert_ne!(a, b);
        assert!(a.len() <= IFNAME_MAX && b.len() <= IFNAME_MAX, "{a} {b}");
        assert!(a.starts_with("a-r"), "{a}");
        let short = unique_name("x", NAME_MAX);
        assert!(short.starts_with(&format!("x-{:x}-", std::process::id())), "{short}");
    }

    #[test]
    #[should_panic(expected = "may only contain")]
    fn unique_name_rejects_slashes() {
        unique_name("a/b", NAME_MAX);
    }

    #[test]
    #[ignore = "needs root: network namespaces"]
    fn netns_lifecycle() {
        crate::require_root();
        let a = Netns::new("toa-t-ns");
        let b = Netns::new("toa-t-ns");
        assert_ne!(a.name(), b.name());
        let path = a.path();
        assert_eq!(path, Path::new(NETNS_RUN_DIR).join(a.name()));
        assert!(path.exists());
        let lo = a.output(&["ip", "-o", "link", "show", "lo"]);
        assert!(lo.contains(",UP,"), "lo is not up: {lo}");
        let name = a.name().to_owned();
        drop(a);
        assert!(!path.exists(), "{} still exists", path.display());
        let list = String::from_utf8(run_host(&["ip", "netns", "list"]).stdout).expect("utf-8");
        assert!(!list.lines().any(|l| l.split_whitespace().next() == Some(&name)), "{list}");
        assert!(b.path().exists());
    }

    #[test]
    #[ignore = "needs root: network namespaces"]
    fn netns_run_failure_panics_with_stderr() {
        crate::require_root();
        let ns = Netns::new("toa-t-fail");
        let err =
            std::panic::catch_unwind(|| ns.run(&["sh", "-c", "echo boom >&2; exit 7"])).expect_err("the command fails");
        let msg = err.downcast_ref::<String>().expect("panic message");
        assert!(msg.contains("boom") && msg.contains("exit status: 7"), "{msg}");
    }

    #[test]
    #[ignore = "needs root: network namespaces"]
    fn enter_switches_only_the_thread() {
        crate::require_root();
        let ns = Netns::new("toa-t-enter");
        let ns_ino = std::fs::metadata(ns.path()).expect("stat netns").ino();
        let path = ns.path();
        let thread_ino = thread::spawn(move || {
            enter(&path);
            std::fs::metadata("/proc/thread-self/ns/net").expect("stat").ino()
        })
        .join()
        .expect("thread");
        assert_eq!(thread_ino, ns_ino);
        let own_ino = std::fs::metadata("/proc/thread-self/ns/net").expect("stat").ino();
        assert_ne!(own_ino, ns_ino);
    }

    #[test]
    #[ignore = "needs root: network namespaces"]
    fn pair_links_and_extra_addresses() {
        crate::require_root();
        let pair = Pair::new("toa-t-pair");
        assert!(pair.cli_link.name.len() <= IFNAME_MAX);
        assert_ne!(pair.cli_link.name, pair.srv_link.name);
        // The veth pair lives only inside the namespaces.
        let host = String::from_utf8(run_host(&["ip", "-o", "link"]).stdout).expect("utf-8");
        assert!(!host.contains(&pair.cli_link.name), "{host}");
        for (ns, link, v4, v6) in [
            (&pair.cli, &pair.cli_link, pair.cli_v4, pair.cli_v6),
            (&pair.srv, &pair.srv_link, pair.srv_v4, pair.srv_v6),
        ] {
            let addrs = ns.output(&["ip", "-o", "addr", "show", "dev", &link.name]);
            assert!(addrs.contains(&format!(" {v4}/24 ")), "{addrs}");
            assert!(addrs.contains(&format!(" {v6}/64 ")), "{addrs}");
            assert!(!addrs.contains("tentative"), "{addrs}");
            let by_index = ns.output(&["ip", "-o", "link", "show"]);
            assert!(
                by_index.contains(&format!("\n{}: {}@", link.index, link.name))
                    || by_index.starts_with(&format!("{}: {}@", link.index, link.name)),
                "{by_index}"
            );
        }
        let extra = pair.add_cli_addresses(3);
        assert_eq!(extra, [10, 11, 12].map(|h| Ipv4Addr::new(192, 0, 2, h)).to_vec());
        assert_eq!(pair.add_cli_addresses(3), extra, "idempotent");
        let addrs = pair.cli.output(&["ip", "-o", "-4", "addr", "show", "dev", &pair.cli_link.name]);
        for a in &extra {
            assert!(addrs.contains(&format!(" {a}/24 ")), "{a} missing:\n{addrs}");
        }
    }
}
