//! The test bed: a client and a server network namespace joined by a veth
//! pair, the cgroups the processes run in, the option writer, the memory
//! cgroup the agent is charged to, and the agent itself.
//!
//! Cgroups (all removed on exit, with whatever runs in them):
//!
//! | cgroup | attached | who runs there |
//! |---|---|---|
//! | `cli` | the option writer (`203.0.113.7:4242` into every handshake ACK) | clients of translated connections |
//! | `cli_plain` | nothing | clients of untranslated connections |
//! | `srv` | `toa agent` (when started) | listeners "on" |
//! | `plain` | nothing | listeners "off" |
//! | `floor` | programs that do nothing ([`crate::bpf::Floor`]) | listeners "floor" |
//! | `base` | with `--baseline TOA`: that binary's `toa agent` | listeners "base" |
//! | `home` | nothing | the server processes, once their listeners exist |
//!
//! A listener's accepted sockets belong to the listener's cgroup, whatever
//! cgroup the process is in later; one server process can so hold an "on",
//! an "off" and a "floor" listener, and the rounds alternate between them
//! without restarting anything.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_test::cgroup::Cgroup;
use integration_test::netns::{Pair, unique_name};
use integration_test::process::{Spawned, Stream, command_in, spawn, spawn_with_stdin};

use crate::bpf::Floor;

/// The real client the option writer puts into every handshake ACK.
pub const REAL_CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 7), 4242);
/// Extra client addresses (ports: 64k per source address).
const CLIENT_ADDRESSES: usize = 32;
/// How long a process may take to become ready.
pub const READY: Duration = Duration::from_secs(60);

/// Where a listener lives (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `toa agent` attached.
    On,
    /// No program attached.
    Off,
    /// Programs that do nothing attached.
    Floor,
    /// Another build's agent attached (`--baseline`).
    Base,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::On => "on",
            Target::Off => "off",
            Target::Floor => "floor",
            Target::Base => "base",
        }
    }
}

/// A memory cgroup for the agent: socket storage is charged to the memory
/// cgroup of the process that created the map, so its kernel memory counts
/// exactly what the agent's maps hold.
pub struct Memcg {
    path: PathBuf,
    v2: bool,
}

impl Memcg {
    fn new(v2_root: &Path) -> Option<Memcg> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.kmem.usage_in_bytes").exists() {
            let path = v1.join(unique_name("toa-bench", 64));
            std::fs::create_dir(&path).ok()?;
            return Some(Memcg { path, v2: false });
        }
        let controllers = std::fs::read_to_string(v2_root.join("cgroup.controllers")).unwrap_or_default();
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return None;
        }
        let _ = std::fs::write(v2_root.join("cgroup.subtree_control"), "+memory");
        let path = v2_root.join(unique_name("toa-bench-mem", 64));
        std::fs::create_dir(&path).ok()?;
        Some(Memcg { path, v2: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Kernel memory charged to the cgroup, in bytes.
    pub fn kmem(&self) -> u64 {
        if self.v2 {
            let stat = std::fs::read_to_string(self.path.join("memory.stat")).unwrap_or_default();
            let field = |name: &str| {
                stat.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
            };
            field("kernel").or_else(|| field("slab")).unwrap_or(0)
        } else {
            read_u64(&self.path.join("memory.kmem.usage_in_bytes"))
        }
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// A running `toa agent`.
pub struct Agent {
    proc: Spawned,
    pins: PathBuf,
    toa: PathBuf,
}

impl Agent {
    pub fn stop(mut self) {
        let status = self.proc.terminate();
        if !status.success() {
            eprintln!("bench: agent exited with {status}: {:?}", self.proc.lines_so_far(Stream::Stderr));
        }
    }

    /// The `toa stats --json` total of a counter (u64::MAX when unreadable).
    pub fn counter(&self, name: &str) -> u64 {
        let out = Command::new(&self.toa).args(["stats", "--json", "--pin-dir"]).arg(&self.pins).output();
        out.ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v[name].as_u64())
            .unwrap_or(u64::MAX)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.proc.terminate();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// One run of the short-connection client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Round {
    pub conns: f64,
    pub errors: f64,
    pub secs: f64,
    /// Host busy jiffies (steal excluded) during the run.
    pub busy: f64,
    pub steal: f64,
    /// CPU µs of the benchmark's own cgroups during the run.
    pub cg_usec: f64,
}

impl Round {
    pub fn cps(&self) -> f64 {
        self.conns / self.secs
    }

    /// Host CPU µs per connection (busy jiffies, steal excluded).
    pub fn host_us_per_conn(&self) -> f64 {
        self.busy * crate::stats::JIFFY_SECS * 1e6 / self.conns
    }

    /// CPU µs per connection of the benchmark's cgroups.
    pub fn cg_us_per_conn(&self) -> f64 {
        self.cg_usec / self.conns
    }
}

pub struct Lab {
    pub pair: Pair,
    pub srcs: Vec<Ipv4Addr>,
    pub cli: Cgroup,
    pub cli_plain: Cgroup,
    pub srv: Cgroup,
    pub plain: Cgroup,
    pub floor: Cgroup,
    pub home: Cgroup,
    pub base: Cgroup,
    floor_progs: Option<Floor>,
    pub memcg: Option<Memcg>,
    pub toa: PathBuf,
    exe: PathBuf,
    injector: std::cell::RefCell<Option<toa::forwarder::inject::Injector>>,
}

impl Lab {
    pub fn new(toa: &Path, with_injector: bool) -> Lab {
        let pair = Pair::new("tb");
        let srcs = pair.add_cli_addresses(CLIENT_ADDRESSES);
        pair.cli.write_sysctl("net/ipv4/ip_local_port_range", "1024 65535");
        pair.cli.write_sysctl("net/ipv4/tcp_tw_reuse", "1");
        for ns in [&pair.cli, &pair.srv] {
            ns.write_sysctl("net/core/somaxconn", "65535");
            ns.write_sysctl("net/ipv4/tcp_max_syn_backlog", "65535");
        }
        let cli = Cgroup::new("toa-bench-cli");
        let cli_plain = Cgroup::new("toa-bench-cli-plain");
        let srv = Cgroup::new("toa-bench-srv");
        let plain = Cgroup::new("toa-bench-plain");
        let floor = Cgroup::new("toa-bench-floor");
        let home = Cgroup::new("toa-bench-home");
        let base = Cgroup::new("toa-bench-base");
        let floor_progs = match Floor::attach(floor.path()) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("bench: cannot attach the do-nothing programs ({e}); no floor figures");
                None
            }
        };
        let injector = with_injector.then(|| {
            let mut inj = toa::forwarder::inject::Injector::attach(cli.path()).expect("attach the option writer");
            let spec =
                toa::forwarder::inject::spec_for(REAL_CLIENT.into(), 254, None, toa_common::inject::packets::ACK)
                    .expect("option spec");
            inj.set_default(spec).expect("set the writer's default target");
            inj
        });
        let root = integration_test::cgroup::cgroup2_root();
        Lab {
            pair,
            srcs,
            cli,
            cli_plain,
            srv,
            plain,
            floor,
            home,
            base,
            floor_progs,
            memcg: if std::env::var_os("TOA_BENCH_NO_MEMCG").is_some() { None } else { Memcg::new(&root) },
            toa: toa.to_owned(),
            exe: std::env::current_exe().expect("current exe"),
            injector: std::cell::RefCell::new(injector),
        }
    }

    pub fn has_floor(&self) -> bool {
        self.floor_progs.is_some()
    }

    /// Detaches the option writer (the scale test brings its own).
    pub fn drop_injector(&self) {
        drop(self.injector.borrow_mut().take());
    }

    pub fn cgroup_of(&self, t: Target) -> &Path {
        match t {
            Target::On => self.srv.path(),
            Target::Off => self.plain.path(),
            Target::Floor => self.floor.path(),
            Target::Base => self.base.path(),
        }
    }

    /// The cgroups whose CPU time the rounds count: clients and servers.
    pub fn cpu_cgroups(&self) -> String {
        [self.cli.path(), self.cli_plain.path(), self.home.path()]
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn srcs_arg(&self) -> String {
        self.srcs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    pub fn dst(&self, port: u16) -> String {
        SocketAddrV4::new(self.pair.srv_v4, port).to_string()
    }

    /// The bench binary in a role, in the server namespace, started in `cgroup`.
    pub fn server_cmd(&self, cgroup: &Path, role: &str, args: &[&str]) -> Command {
        let mut cmd = command_in(Some(&self.pair.srv.path()), Some(cgroup), &self.exe);
        cmd.args(["--role", role]).args(args);
        cmd
    }

    /// A server role with one listener per target, on consecutive ports from
    /// `port`, that then runs in the `home` cgroup.
    pub fn multi_server(&self, role: &str, port: u16, targets: &[Target], extra: &[&str]) -> Spawned {
        let cgroups: Vec<String> = targets.iter().map(|t| self.cgroup_of(*t).to_string_lossy().into_owned()).collect();
        let (p, cg, home) = (port.to_string(), cgroups.join(","), self.home.path().to_string_lossy().into_owned());
        let mut args = vec!["--port", &p, "--cgroups", &cg, "--home", &home];
        args.extend_from_slice(extra);
        let mut s = spawn_with_stdin(self.server_cmd(self.home.path(), role, &args));
        s.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        s
    }

    /// The bench binary in a role, in the client namespace and the cgroup of
    /// translated (`with_option`) or untranslated clients.
    pub fn client_cmd(&self, role: &str, args: &[&str], with_option: bool) -> Command {
        let cg = if with_option { self.cli.path() } else { self.cli_plain.path() };
        let mut cmd = command_in(Some(&self.pair.cli.path()), Some(cg), &self.exe);
        cmd.args(["--role", role]).args(args);
        cmd
    }

    pub fn start_agent(&self, op_stats: bool) -> Agent {
        self.start_agent_of(&self.toa, self.srv.path(), op_stats)
    }

    /// `toa agent` of binary `toa` attached to `cgroup`.
    pub fn start_agent_of(&self, toa: &Path, cgroup: &Path, op_stats: bool) -> Agent {
        let pins = PathBuf::from(format!("/sys/fs/bpf/{}", unique_name("toa-bench", 40)));
        let memcg = self.memcg.as_ref().map(Memcg::path);
        let mut cmd = command_in(None, memcg, toa);
        cmd.arg("agent").arg("--cgroup").arg(cgroup).arg("--pin-dir").arg(&pins);
        cmd.args(["--metrics-listen", ""]);
        cmd.env("TOA_DEBUG_OP_STATS", if op_stats { "1" } else { "0" });
        let mut proc = spawn(cmd);
        proc.wait_for_line(Stream::Stderr, |l| l.contains("agent ready"), READY);
        Agent { proc, pins, toa: toa.to_owned() }
    }

    /// One run of the short-connection client against `port` for `secs`.
    pub fn rr_run(&self, port: u16, parallel: usize, secs: f64, with_option: bool) -> Round {
        let (p, s, cg) = (parallel.to_string(), secs.to_string(), self.cpu_cgroups());
        let args = [
            "--dst",
            &self.dst(port),
            "--srcs",
            &self.srcs_arg(),
            "--parallel",
            &p,
            "--secs",
            &s,
            "--cpu-cgroups",
            &cg,
        ];
        let mut client = spawn(self.client_cmd("rr-client", &args, with_option));
        let line =
            client.wait_for_line(Stream::Stdout, |l| l.starts_with("conns="), Duration::from_secs_f64(secs + 60.0));
        let kv = parse_kv(&line);
        Round {
            conns: kv("conns"),
            errors: kv("errors"),
            secs: kv("secs"),
            busy: kv("busy"),
            steal: kv("steal"),
            cg_usec: kv("cg_usec"),
        }
    }

    pub fn kmem(&self) -> u64 {
        self.memcg.as_ref().map_or(0, Memcg::kmem)
    }
}

/// Asks an `rr-server` for its per-listener counts (and resets them):
/// (accepted, translated) per listener.
pub fn rr_report(server: &mut Spawned) -> Vec<(f64, f64)> {
    server.stdin().write_all(b"report\n").expect("write to rr-server");
    let l = server.wait_for_line(Stream::Stdout, |l| l.starts_with("accepted="), READY);
    let field = |k: &str| -> Vec<f64> {
        l.split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.split(',').map(|x| x.parse().unwrap_or(f64::NAN)).collect())
            .unwrap_or_default()
    };
    field("accepted").into_iter().zip(field("translated")).collect()
}

/// `key=value` fields of a line as numbers (NaN when absent).
pub fn parse_kv(line: &str) -> impl Fn(&str) -> f64 + '_ {
    move |key: &str| {
        line.split_whitespace().find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse().ok()).unwrap_or(f64::NAN)
    }
}

/// `/proc/meminfo` field in bytes.
pub fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Bytes in use per slab cache (`/proc/slabinfo`: active objects × object size).
pub fn slab_bytes() -> Vec<(String, u64, u64)> {
    let text = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (active, size) = (f.get(1)?.parse::<u64>().ok()?, f.get(3)?.parse::<u64>().ok()?);
            Some((f[0].to_owned(), active, size))
        })
        .collect()
}
