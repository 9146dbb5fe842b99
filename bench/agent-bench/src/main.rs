//! `bench-agent`: what `toa agent` costs a backend.
//!
//! Builds a client and a server network namespace (veth), a cgroup for each,
//! writes the option `203.0.113.7:4242` into every handshake ACK the client
//! cgroup sends (the library's option writer, as a FullNAT forwarder would),
//! and measures, alternating samples with the agent attached to the server
//! cgroup (A) and not attached (B, agent stopped):
//!
//! - `cps`: short-connection rate (connect, 1 byte each way, close) with 1, 4
//!   and 32 connections in flight, from an epoll load generator;
//! - `syscalls`: ns per `getpeername()` on a translated socket, and per
//!   unrelated `getsockopt()` (TCP_INFO and a 4-byte SO_RCVBUF);
//! - `memory`: kernel memory per open translated connection (the agent's
//!   memory cgroup, where socket storage is charged; slab; `ss -tm` omem);
//! - `profile`: run time per program call from the kernel's BPF statistics.
//!
//! `--scale N` instead opens N concurrent connections, each with its own
//! real client, checks that every one reports it, that memory grows
//! linearly, and that all storage is released after close.
//!
//! Everything is torn down on exit. Run it through `bench/agent`.

mod net;
mod roles;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration_test::cgroup::Cgroup;
use integration_test::netns::{Pair, unique_name};
use integration_test::process::{Spawned, Stream, command_in, spawn, spawn_with_stdin};

/// The real client the option writer puts into every handshake ACK.
const REAL_CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 7), 4242);
/// Extra client addresses (ports: 64k per source address).
const CLIENT_ADDRESSES: usize = 32;
/// How long a process may take to become ready.
const READY: Duration = Duration::from_secs(60);
/// Connections per process: one file descriptor each, below
/// `RLIMIT_NOFILE` (whose hard limit only CAP_SYS_RESOURCE can raise), with
/// room for the reuseport spread across server processes.
fn per_proc() -> u32 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let n = lim.rlim_cur.min(1 << 20) as u32;
    (n.saturating_sub(256) / 10 * 9).max(1000)
}

/// The median of `v` (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

struct Options {
    samples: usize,
    secs: f64,
    parallel: Vec<usize>,
    conns: u32,
    iters: u32,
    phases: Vec<String>,
    scale: Option<u32>,
    toa: PathBuf,
}

const USAGE: &str = "usage: bench-agent [-n SAMPLES] [-t SECONDS] [--parallel 1,4,32] [--conns N] [--iters N]
                   [--only cps,syscalls,memory,profile] [--scale N] [--toa PATH]";

fn usage(msg: &str) -> ! {
    eprintln!("bench-agent: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn parse_options(args: &[String]) -> Options {
    let exe = std::env::current_exe().unwrap_or_else(|e| usage(&format!("cannot find myself: {e}")));
    let mut o = Options {
        samples: 5,
        secs: 3.0,
        parallel: vec![1, 4, 32],
        conns: 100_000,
        iters: 200_000,
        phases: ["cps", "syscalls", "memory", "profile"].map(String::from).to_vec(),
        scale: None,
        toa: exe.with_file_name("toa"),
    };
    let mut only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        let bad = |v: &str| -> ! { usage(&format!("{a}: bad value {v}")) };
        match a.as_str() {
            "-n" => o.samples = val().parse().unwrap_or_else(|_| bad(a)),
            "-t" => o.secs = val().parse().unwrap_or_else(|_| bad(a)),
            "--parallel" => o.parallel = val().split(',').map(|p| p.parse().unwrap_or_else(|_| bad(p))).collect(),
            "--conns" => o.conns = val().parse().unwrap_or_else(|_| bad(a)),
            "--iters" => o.iters = val().parse().unwrap_or_else(|_| bad(a)),
            "--only" => {
                o.phases = val().split(',').map(String::from).collect();
                only = true;
            }
            "--scale" => o.scale = Some(val().parse().unwrap_or_else(|_| bad(a))),
            "--toa" => o.toa = PathBuf::from(val()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if o.scale.is_some() && !only {
        o.phases.clear();
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--role") {
        let name = args.get(1).cloned().unwrap_or_else(|| usage("--role needs a name"));
        roles::run(&name, &roles::Args::parse(&args[2..]));
        return;
    }
    let opts = parse_options(&args);
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        usage("must run as root (namespaces, cgroups, BPF); try: sudo bench/agent");
    }
    if !opts.toa.exists() {
        usage(&format!("no toa binary at {} (build it, or pass --toa)", opts.toa.display()));
    }
    net::raise_nofile();
    let mut report = Report::default();
    let lab = Lab::new(&opts);
    report.header(&opts);
    for phase in &opts.phases {
        match phase.as_str() {
            "cps" => lab.cps(&opts, &mut report),
            "syscalls" => lab.syscalls(&opts, &mut report),
            "memory" => lab.memory(&opts, &mut report),
            "profile" => lab.profile(&opts, &mut report),
            p => usage(&format!("unknown phase {p}")),
        }
    }
    if let Some(n) = opts.scale {
        lab.scale(n, &mut report);
    }
    report.print();
}

/// Lines of the final table and the machine-readable results.
#[derive(Default)]
struct Report {
    table: Vec<(String, String, String, String)>,
    keys: Vec<(String, String)>,
    notes: Vec<String>,
}

impl Report {
    fn header(&mut self, o: &Options) {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let nproc = std::thread::available_parallelism().map_or(0, usize::from);
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        self.key("machine_nproc", nproc);
        self.key("machine_cpu", format!("{cpu:?}"));
        self.key("machine_kernel", kernel);
        self.key("loadavg_start", format!("{:?}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")));
        self.key("samples", o.samples);
        self.key("secs_per_sample", o.secs);
        eprintln!("bench: {nproc} CPUs ({cpu}), load {}", load.trim());
    }

    fn key(&mut self, k: &str, v: impl std::fmt::Display) {
        let v = v.to_string();
        eprintln!("bench: {k}={v}");
        self.keys.push((k.to_owned(), v));
    }

    fn row(&mut self, what: &str, on: String, off: String, result: String) {
        self.table.push((what.to_owned(), on, off, result));
    }

    fn note(&mut self, n: String) {
        eprintln!("bench: NOTE {n}");
        self.notes.push(n);
    }

    fn print(&mut self) {
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        self.key("loadavg_end", format!("{:?}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")));
        let w0 = self.table.iter().map(|r| r.0.len()).chain([7]).max().unwrap_or(0);
        let w1 = self.table.iter().map(|r| r.1.len()).chain([14]).max().unwrap_or(0);
        let w2 = self.table.iter().map(|r| r.2.len()).chain([12]).max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "\n| {:w0$} | {:>w1$} | {:>w2$} | result |", "measure", "agent attached", "not attached");
        let _ = writeln!(out, "|{}|{}:|{}:|---|", "-".repeat(w0 + 2), "-".repeat(w1 + 1), "-".repeat(w2 + 1));
        for (a, b, c, d) in &self.table {
            let _ = writeln!(out, "| {a:w0$} | {b:>w1$} | {c:>w2$} | {d} |");
        }
        for n in &self.notes {
            let _ = writeln!(out, "\nnote: {n}");
        }
        let _ = writeln!(out);
        for (k, v) in &self.keys {
            let _ = writeln!(out, "{k}={v}");
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }
}

/// A cgroup v1 memory cgroup for the agent: the socket storage is charged to
/// the memory cgroup of the process that created the map, so its
/// `memory.kmem.usage_in_bytes` counts exactly the agent's kernel memory.
struct Memcg {
    path: PathBuf,
}

impl Memcg {
    fn new() -> Option<Memcg> {
        let root = Path::new("/sys/fs/cgroup/memory");
        if !root.join("memory.kmem.usage_in_bytes").exists() {
            return None;
        }
        let path = root.join(unique_name("toa-bench", 64));
        std::fs::create_dir(&path).ok()?;
        Some(Memcg { path })
    }

    fn kmem(&self) -> u64 {
        read_u64(&self.path.join("memory.kmem.usage_in_bytes"))
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

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// `/proc/meminfo` field in bytes.
fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A running `toa agent`.
struct Agent {
    proc: Spawned,
    pins: PathBuf,
}

impl Agent {
    fn stop(mut self) {
        let status = self.proc.terminate();
        if !status.success() {
            eprintln!("bench: agent exited with {status}: {:?}", self.proc.lines_so_far(Stream::Stderr));
        }
    }

    /// `toa stats --json` counter totals.
    fn counter(&self, toa: &Path, name: &str) -> u64 {
        let out = Command::new(toa).args(["stats", "--json", "--pin-dir"]).arg(&self.pins).output();
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

/// Namespaces, cgroups and the option writer.
struct Lab {
    pair: Pair,
    cli_cg: Cgroup,
    srv_cg: Cgroup,
    /// A server-side cgroup without any program: the "not attached" socket
    /// of the paired syscall measurement.
    plain_cg: Cgroup,
    srcs: Vec<Ipv4Addr>,
    memcg: Option<Memcg>,
    toa: PathBuf,
    exe: PathBuf,
    injector: std::cell::RefCell<Option<toa::forwarder::inject::Injector>>,
}

impl Lab {
    fn new(o: &Options) -> Lab {
        let pair = Pair::new("tb");
        let srcs = pair.add_cli_addresses(CLIENT_ADDRESSES);
        pair.cli.write_sysctl("net/ipv4/ip_local_port_range", "1024 65535");
        pair.cli.write_sysctl("net/ipv4/tcp_tw_reuse", "1");
        for ns in [&pair.cli, &pair.srv] {
            ns.write_sysctl("net/core/somaxconn", "65535");
            ns.write_sysctl("net/ipv4/tcp_max_syn_backlog", "65535");
        }
        let cli_cg = Cgroup::new("toa-bench-cli");
        let srv_cg = Cgroup::new("toa-bench-srv");
        let plain_cg = Cgroup::new("toa-bench-plain");
        let injector = if o.phases.is_empty() {
            None
        } else {
            let mut inj = toa::forwarder::inject::Injector::attach(cli_cg.path()).expect("attach the option writer");
            let spec =
                toa::forwarder::inject::spec_for(REAL_CLIENT.into(), 254, None, toa_common::inject::packets::ACK)
                    .expect("option spec");
            inj.set_default(spec).expect("set the writer's default target");
            Some(inj)
        };
        let memcg = Memcg::new();
        Lab {
            pair,
            cli_cg,
            srv_cg,
            plain_cg,
            srcs,
            memcg,
            toa: o.toa.clone(),
            exe: std::env::current_exe().expect("current exe"),
            injector: std::cell::RefCell::new(injector),
        }
    }

    fn srcs_arg(&self) -> String {
        self.srcs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    }

    fn dst(&self, port: u16) -> String {
        SocketAddrV4::new(self.pair.srv_v4, port).to_string()
    }

    /// The bench binary in a role, in the server namespace and cgroup.
    fn server_cmd(&self, role: &str, args: &[&str]) -> Command {
        let mut cmd = command_in(Some(&self.pair.srv.path()), Some(self.srv_cg.path()), &self.exe);
        cmd.args(["--role", role]).args(args);
        cmd
    }

    /// The bench binary in a role, in the client namespace and (when
    /// `with_option`) the client cgroup, whose connections get the option.
    fn client_cmd(&self, role: &str, args: &[&str], with_option: bool) -> Command {
        let cg = if with_option { Some(self.cli_cg.path()) } else { None };
        let mut cmd = command_in(Some(&self.pair.cli.path()), cg, &self.exe);
        cmd.args(["--role", role]).args(args);
        cmd
    }

    fn start_agent(&self) -> Agent {
        let pins = PathBuf::from(format!("/sys/fs/bpf/{}", unique_name("toa-bench", 40)));
        let memcg = self.memcg.as_ref().map(|m| m.path.as_path());
        let mut cmd = command_in(None, memcg, &self.toa);
        cmd.arg("agent").arg("--cgroup").arg(self.srv_cg.path()).arg("--pin-dir").arg(&pins);
        cmd.args(["--metrics-listen", ""]);
        let mut proc = spawn(cmd);
        proc.wait_for_line(Stream::Stderr, |l| l.contains("agent ready"), READY);
        Agent { proc, pins }
    }

    fn with_agent<T>(&self, on: bool, f: impl FnOnce(Option<&Agent>) -> T) -> T {
        if on {
            let agent = self.start_agent();
            let r = f(Some(&agent));
            agent.stop();
            r
        } else {
            f(None)
        }
    }

    /// One run of the short-connection client: connections per second.
    fn rr_run(&self, port: u16, parallel: usize, secs: f64) -> (f64, u64) {
        let p = parallel.to_string();
        let s = secs.to_string();
        let args = ["--dst", &self.dst(port), "--srcs", &self.srcs_arg(), "--parallel", &p, "--secs", &s];
        let mut client = spawn(self.client_cmd("rr-client", &args, true));
        let line =
            client.wait_for_line(Stream::Stdout, |l| l.starts_with("conns="), Duration::from_secs_f64(secs + 60.0));
        let kv = parse_kv(&line);
        eprintln!("bench: rr-client parallel={parallel}: {line}");
        (kv("conns") / kv("secs"), kv("errors") as u64)
    }

    fn cps(&self, o: &Options, r: &mut Report) {
        const PORT: u16 = 5001;
        let expect = REAL_CLIENT.ip().to_string();
        let mut server = spawn_with_stdin(self.server_cmd("rr-server", &["--port", "5001", "--expect", &expect]));
        server.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        let ask = |server: &mut Spawned| -> (f64, f64) {
            server.stdin().write_all(b"report\n").expect("write to rr-server");
            let l = server.wait_for_line(Stream::Stdout, |l| l.starts_with("accepted="), READY);
            eprintln!("bench: rr-server: {l}");
            let kv = parse_kv(&l);
            (kv("accepted"), kv("translated"))
        };
        // Warm up: caches, ports, the first agent load.
        self.with_agent(true, |_| self.rr_run(PORT, 4, 1.0));
        self.rr_run(PORT, 4, 1.0);
        ask(&mut server);
        let mut ratios = Vec::new();
        for &p in &o.parallel {
            let (mut on, mut off, mut paired) = (Vec::new(), Vec::new(), Vec::new());
            let mut wrong = 0.0;
            for s in 0..o.samples {
                let mut pair = [0.0; 2];
                for (i, agent) in [true, false].into_iter().enumerate() {
                    let (cps, errors) = self.with_agent(agent, |_| self.rr_run(PORT, p, o.secs));
                    let (accepted, translated) = ask(&mut server);
                    wrong += if agent { accepted - translated } else { translated };
                    eprintln!(
                        "bench: cps parallel={p} sample={s} agent={} cps={cps:.0} errors={errors} accepted={accepted} translated={translated}",
                        if agent { "on" } else { "off" }
                    );
                    pair[i] = cps;
                    if errors > 0 {
                        r.note(format!("cps parallel={p}: {errors} connection errors in one sample"));
                    }
                }
                on.push(pair[0]);
                off.push(pair[1]);
                paired.push(pair[0] / pair[1]);
            }
            let (mon, moff) = (median(&mut on), median(&mut off));
            let ratio = mon / moff;
            let pr = median(&mut paired);
            ratios.push(ratio);
            let spread = |v: &[f64]| format!("{:.0}..{:.0}", min(v), v.iter().copied().fold(0.0, f64::max));
            r.row(
                &format!("conn/s, {p} parallel (median of {})", o.samples),
                format!("{mon:.0}"),
                format!("{moff:.0}"),
                format!("ratio {ratio:.3} (paired {pr:.3}; on {}, off {})", spread(&on), spread(&off)),
            );
            r.key(&format!("cps_on_p{p}"), format!("{mon:.0}"));
            r.key(&format!("cps_off_p{p}"), format!("{moff:.0}"));
            r.key(&format!("agent_cps_ratio_p{p}"), format!("{ratio:.3}"));
            r.key(&format!("agent_cps_ratio_paired_p{p}"), format!("{pr:.3}"));
            if wrong > 0.0 {
                r.note(format!("cps parallel={p}: {wrong} connections had the wrong address in accept()"));
            }
        }
        r.key("agent_cps_ratio", format!("{:.3}", ratios.iter().copied().fold(f64::INFINITY, f64::min)));
        drop(server);
    }

    /// One syscall-cost run: ns/call on a socket in the server cgroup
    /// (getpeername, getsockopt TCP_INFO, getsockopt SO_RCVBUF), the
    /// per-round difference to a socket in a cgroup without programs, and
    /// the peer.
    fn syscall_run(&self, port: u16, iters: u32, with_option: bool) -> ([f64; 3], [f64; 3], String) {
        let (p, it) = (port.to_string(), iters.to_string());
        let plain = self.plain_cg.path().to_string_lossy().into_owned();
        let args = ["--port", &p, "--iters", &it, "--rounds", "15", "--plain-cgroup", &plain];
        let mut server = spawn_with_stdin(self.server_cmd("syscall-server", &args));
        server.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        let dst2 = self.dst(port + 1);
        let _client = spawn(self.client_cmd("hold-client", &["--dst", &self.dst(port), "--dst2", &dst2], with_option));
        let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("peer="), Duration::from_secs(600));
        let kv = parse_kv(&line);
        let peer = line.split_whitespace().next().unwrap_or("").trim_start_matches("peer=").to_owned();
        (
            [kv("getpeername_ns"), kv("getsockopt_ns"), kv("getsockopt_small_ns")],
            [kv("getpeername_diff"), kv("getsockopt_diff"), kv("getsockopt_small_diff")],
            peer,
        )
    }

    fn syscalls(&self, o: &Options, r: &mut Report) {
        let mut port = 5100u16;
        let mut next_port = || {
            port += 2;
            port
        };
        // [translated with agent, untranslated with agent (no option), without agent]
        let mut meds: [[Vec<f64>; 3]; 3] = Default::default();
        // Per-run paired differences to the socket in the plain cgroup: [translated, untranslated].
        let mut diffs: [[Vec<f64>; 2]; 3] = Default::default();
        let mut wrong = Vec::new();
        for s in 0..o.samples {
            for agent in [true, false] {
                self.with_agent(agent, |_| {
                    let runs: &[(usize, bool)] = if agent { &[(0, true), (1, false)] } else { &[(2, true)] };
                    for &(slot, with_option) in runs {
                        let (ns, diff, peer) = self.syscall_run(next_port(), o.iters, with_option);
                        eprintln!("bench: syscalls sample={s} case={slot} peer={peer} ns={ns:?} diff={diff:?}");
                        let translated = peer == REAL_CLIENT.to_string();
                        if translated != (slot == 0) {
                            wrong.push(format!("case {slot}: peer {peer}"));
                        }
                        for k in 0..3 {
                            meds[k][slot].push(ns[k]);
                            if slot < 2 {
                                diffs[k][slot].push(diff[k]);
                            }
                        }
                    }
                });
            }
        }
        let names = ["getpeername", "getsockopt", "getsockopt_small"];
        let labels = ["getpeername() ns/call", "getsockopt(TCP_INFO) ns/call", "getsockopt(SO_RCVBUF) ns/call"];
        for k in 0..3 {
            let [t, u, off] = [min(&meds[k][0]), min(&meds[k][1]), min(&meds[k][2])];
            // Machine noise only ever adds time: the smallest per-run
            // median difference is the least disturbed one.
            let (dt, du) = (min(&diffs[k][0]), min(&diffs[k][1]));
            let (mt, mu) = (median(&mut diffs[k][0]), median(&mut diffs[k][1]));
            r.row(
                &format!("{} (min of medians)", labels[k]),
                format!("{t:.1} ({u:.1} untranslated)"),
                format!("{off:.1}"),
                format!(
                    "paired min: +{dt:.1} ns translated, +{du:.1} untranslated (medians +{mt:.1} / +{mu:.1}); unpaired: {:+.1} / {:+.1}",
                    t - off,
                    u - off
                ),
            );
            r.key(&format!("{}_on_ns", names[k]), format!("{t:.1}"));
            r.key(&format!("{}_on_untranslated_ns", names[k]), format!("{u:.1}"));
            r.key(&format!("{}_off_ns", names[k]), format!("{off:.1}"));
            r.key(&format!("{}_extra_ns", names[k]), format!("{dt:.1}"));
            r.key(&format!("{}_untranslated_extra_ns", names[k]), format!("{du:.1}"));
            r.key(&format!("{}_extra_median_ns", names[k]), format!("{mt:.1}"));
            r.key(&format!("{}_extra_unpaired_ns", names[k]), format!("{:.1}", t - off));
        }
        if !wrong.is_empty() {
            r.note(format!("syscalls: unexpected peers: {wrong:?}"));
        }
    }

    /// Opens `n` connections to a hold-server, returns (server, clients).
    fn open_many(&self, port: u16, n: u32, expect: &str, inject: bool) -> (Vec<Spawned>, Vec<Spawned>) {
        let per = per_proc();
        let servers_n = n.div_ceil(per).max(1);
        let clients_n = n.div_ceil(per).max(1);
        let p = port.to_string();
        let reuse = if servers_n > 1 { "1" } else { "0" };
        let mut servers: Vec<Spawned> = (0..servers_n)
            .map(|_| {
                spawn_with_stdin(
                    self.server_cmd("hold-server", &["--port", &p, "--expect", expect, "--reuseport", reuse]),
                )
            })
            .collect();
        for s in &mut servers {
            s.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        }
        let cg = self.cli_cg.path().to_string_lossy().into_owned();
        let clients = (0..clients_n)
            .map(|i| {
                let base = i * per;
                let count = per.min(n - base);
                let mut args: Vec<String> = ["--dst", &self.dst(port), "--n", &count.to_string()]
                    .into_iter()
                    .chain(["--base", &base.to_string(), "--window", "256", "--srcs", &self.srcs_arg()])
                    .map(String::from)
                    .collect();
                if inject {
                    args.extend(["--inject".to_owned(), cg.clone()]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                spawn_with_stdin(self.client_cmd("open-client", &args, true))
            })
            .collect();
        (servers, clients)
    }

    /// Sums the hold-servers' counters: (accepted, verified, bad, closed).
    fn counts(servers: &mut [Spawned]) -> [f64; 4] {
        let mut sum = [0.0; 4];
        for s in servers.iter_mut() {
            s.stdin().write_all(b"count\n").expect("write to hold-server");
            let l = s.wait_for_line(Stream::Stdout, |l| l.starts_with("accepted="), READY);
            let kv = parse_kv(&l);
            for (i, k) in ["accepted", "verified", "bad", "closed"].into_iter().enumerate() {
                sum[i] += kv(k);
            }
        }
        sum
    }

    fn wait_until(
        servers: &mut [Spawned],
        what: &str,
        timeout: Duration,
        done: impl Fn(&[f64; 4]) -> bool,
    ) -> [f64; 4] {
        let deadline = Instant::now() + timeout;
        loop {
            let c = Self::counts(servers);
            if done(&c) || Instant::now() > deadline {
                if !done(&c) {
                    eprintln!("bench: gave up waiting for {what}: {c:?}");
                }
                return c;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Average `omem` (socket option memory, where socket storage is charged)
    /// of the established server sockets on `port`, from `ss -tm`.
    fn omem(&self, port: u16) -> (f64, usize) {
        let out = self.pair.srv.output(&["ss", "-tmnH", "state", "established", &format!("( sport = :{port} )")]);
        let vals: Vec<f64> = out
            .split("skmem:(")
            .skip(1)
            .filter_map(|s| s.split([',', ')']).find_map(|f| f.strip_prefix('o')).and_then(|v| v.parse().ok()))
            .collect();
        let n = vals.len();
        (vals.iter().sum::<f64>() / n.max(1) as f64, n)
    }

    fn memory(&self, o: &Options, r: &mut Report) {
        const PORT: u16 = 5003;
        let n = o.conns;
        let nf = f64::from(n);
        let mut res = Vec::new();
        for agent in [true, false] {
            let m = self.with_agent(agent, |a| {
                std::thread::sleep(Duration::from_millis(500));
                let (k0, s0) = (self.kmem(), meminfo("Slab"));
                let expect = if agent { format!("fixed:{REAL_CLIENT}") } else { "any".to_owned() };
                let (mut servers, mut clients) = self.open_many(PORT, n, &expect, false);
                for c in &mut clients {
                    c.wait_for_line(Stream::Stdout, |l| l.starts_with("open "), Duration::from_secs(600));
                }
                let c = Self::wait_until(&mut servers, "verified", Duration::from_secs(120), |c| c[1] + c[2] >= nf);
                std::thread::sleep(Duration::from_millis(500));
                let (k1, s1) = (self.kmem(), meminfo("Slab"));
                let (omem, socks) = self.omem(PORT);
                for c in &mut clients {
                    c.close_stdin();
                }
                for c in &mut clients {
                    c.wait_for_line(Stream::Stdout, |l| l == "closed", Duration::from_secs(120));
                }
                Self::wait_until(&mut servers, "closed", Duration::from_secs(120), |c| c[3] >= nf);
                std::thread::sleep(Duration::from_millis(1500));
                let k2 = self.kmem();
                let (alloc, free) =
                    a.map_or((0, 0), |a| (a.counter(&self.toa, "toa_entry_alloc"), a.counter(&self.toa, "toa_entry_free")));
                eprintln!(
                    "bench: memory agent={agent} verified={} bad={} kmem {k0} -> {k1} -> {k2} slab {s0} -> {s1} omem={omem:.1} over {socks} sockets alloc={alloc} free={free}",
                    c[1], c[2]
                );
                (c, k0, k1, k2, s0, s1, omem, socks, alloc, free)
            });
            res.push(m);
        }
        let (con, k0, k1, k2, s0on, s1on, omem_on, socks, alloc, free) = res[0];
        let (coff, _, _, _, s0off, s1off, omem_off, _, _, _) = res[1];
        let memcg_per = (k1 as f64 - k0 as f64) / nf;
        let slab_per = ((s1on as f64 - s0on as f64) - (s1off as f64 - s0off as f64)) / nf;
        let omem_per = omem_on - omem_off;
        r.row(
            &format!("bytes/conn, {n} open: socket omem (ss -tm)"),
            format!("{omem_on:.0}"),
            format!("{omem_off:.0}"),
            format!("+{omem_per:.0} B per connection ({socks} sockets)"),
        );
        if self.memcg.is_some() {
            r.row(
                &format!("bytes/conn, {n} open: agent memcg kmem"),
                format!("{memcg_per:.0}"),
                "-".into(),
                format!("{:+.0} B/conn left after close", (k2 as f64 - k0 as f64) / nf),
            );
            r.key("bytes_per_conn", format!("{memcg_per:.0}"));
            r.key("bytes_per_conn_after_close", format!("{:.1}", (k2 as f64 - k0 as f64) / nf));
        } else {
            r.key("bytes_per_conn", format!("{slab_per:.0}"));
        }
        r.row(
            &format!("bytes/conn, {n} open: Slab delta"),
            format!("{:.0}", (s1on as f64 - s0on as f64) / nf),
            format!("{:.0}", (s1off as f64 - s0off as f64) / nf),
            format!("{slab_per:+.0} B per connection (noisy: whole machine)"),
        );
        r.key("bytes_per_conn_omem", format!("{omem_per:.0}"));
        r.key("bytes_per_conn_slab", format!("{slab_per:.0}"));
        r.key("memory_entries_alloc", alloc);
        r.key("memory_entries_free", free);
        if con[2] > 0.0 || coff[2] > 0.0 || con[1] < nf {
            r.note(format!("memory: verified {}/{n} with agent, {} wrong", con[1], con[2]));
        }
    }

    fn kmem(&self) -> u64 {
        self.memcg.as_ref().map_or(0, Memcg::kmem)
    }

    /// Per-program run time from the kernel's BPF statistics under the
    /// short-connection load (4 parallel) and the syscall loops.
    fn profile(&self, o: &Options, r: &mut Report) {
        let agent = self.start_agent();
        let progs = cgroup_programs(self.srv_cg.path());
        let stats = BpfStats::enable();
        if stats.is_none() {
            r.note("profile: BPF_ENABLE_STATS failed; no per-program figures".into());
        }
        let before: Vec<(u64, u64)> = progs.iter().map(|p| prog_stats(p.0)).collect();
        let mut server = spawn_with_stdin(
            self.server_cmd("rr-server", &["--port", "5004", "--expect", &REAL_CLIENT.ip().to_string()]),
        );
        server.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        let (cps, _) = self.rr_run(5004, 4, o.secs);
        drop(server);
        self.syscall_run(5006, o.iters / 4, true);
        let after: Vec<(u64, u64)> = progs.iter().map(|p| prog_stats(p.0)).collect();
        drop(stats);
        agent.stop();
        for (i, (id, attach)) in progs.iter().enumerate() {
            let (ns, cnt) = (after[i].0 - before[i].0, after[i].1 - before[i].1);
            let per = if cnt > 0 { ns as f64 / cnt as f64 } else { 0.0 };
            r.row(
                &format!("BPF run time: {attach} (prog {id})"),
                format!("{per:.1} ns/run"),
                "-".into(),
                format!("{cnt} runs"),
            );
            r.key(&format!("prog_{attach}_ns_per_run"), format!("{per:.1}"));
            r.key(&format!("prog_{attach}_runs"), cnt);
        }
        r.key("profile_cps", format!("{cps:.0}"));
    }

    fn scale(&self, n: u32, r: &mut Report) {
        const PORT: u16 = 5008;
        if let Some(inj) = self.injector.borrow_mut().take() {
            drop(inj);
        }
        let nf = f64::from(n);
        let agent = self.start_agent();
        std::thread::sleep(Duration::from_millis(500));
        let (k0, s0) = (self.kmem(), meminfo("Slab"));
        let t0 = Instant::now();
        let (mut servers, mut clients) = self.open_many(PORT, n, "indexed", true);
        // Sample memory while connections come up, for linearity.
        let mut samples: Vec<(f64, f64)> = Vec::new();
        let mut next_mark = 0.1;
        let deadline = Instant::now() + Duration::from_secs(1800);
        let c = loop {
            let c = Self::counts(&mut servers);
            if c[1] + c[2] >= nf * next_mark {
                let k = self.kmem() as f64 - k0 as f64;
                samples.push((c[1] + c[2], k));
                eprintln!("bench: scale {} verified, kmem +{k:.0} ({:.1} B/conn)", c[1] + c[2], k / (c[1] + c[2]));
                next_mark += 0.1;
            }
            let finished = clients.iter_mut().all(|p| {
                p.try_wait().is_some() || p.lines_so_far(Stream::Stdout).iter().any(|l| l.starts_with("open "))
            });
            if c[1] + c[2] >= nf || Instant::now() > deadline || finished {
                // The last handshakes may still be on their way to the servers.
                std::thread::sleep(Duration::from_millis(1000));
                break Self::counts(&mut servers);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let up = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        let (k1, s1) = (self.kmem(), meminfo("Slab"));
        let (omem, socks) = self.omem(PORT);
        let open_lines: Vec<String> =
            clients.iter().flat_map(|c| c.lines_so_far(Stream::Stdout)).filter(|l| l.starts_with("open ")).collect();
        let errs: Vec<String> = clients.iter().flat_map(|c| c.lines_so_far(Stream::Stderr)).take(10).collect();
        for c in &mut clients {
            c.close_stdin();
        }
        let t1 = Instant::now();
        let closed = Self::wait_until(&mut servers, "closed", Duration::from_secs(600), |c| c[3] >= c[0]);
        std::thread::sleep(Duration::from_millis(2000));
        let down = t1.elapsed().as_secs_f64();
        let k2 = self.kmem();
        let (alloc, free) = (agent.counter(&self.toa, "toa_entry_alloc"), agent.counter(&self.toa, "toa_entry_free"));
        drop(clients);
        drop(servers);
        agent.stop();
        let per = (k1 as f64 - k0 as f64) / c[1].max(1.0);
        let lin: Vec<String> = samples.iter().map(|(n, k)| format!("{:.0}:{:.1}", n, k / n)).collect();
        r.row(
            &format!("scale: {n} concurrent connections, each its own client"),
            format!("{} verified, {} wrong", c[1], c[2]),
            "-".into(),
            format!("up in {up:.1} s, closed in {down:.1} s; {open_lines:?}"),
        );
        r.row(
            "scale: agent memcg kmem per connection",
            format!("{per:.1} B"),
            "-".into(),
            format!("after close {:+.0} B total; B/conn at each tenth: {}", k2 as f64 - k0 as f64, lin.join(" ")),
        );
        r.key("scale_n", n);
        r.key("scale_verified", c[1]);
        r.key("scale_wrong", c[2]);
        r.key("scale_closed", closed[3]);
        r.key("scale_bytes_per_conn", format!("{per:.1}"));
        r.key("scale_slab_per_conn", format!("{:.1}", (s1 as f64 - s0 as f64) / c[1].max(1.0)));
        r.key("scale_omem_avg", format!("{omem:.1}"));
        r.key("scale_omem_sockets", socks);
        r.key("scale_kmem_after_close", k2 as i64 - k0 as i64);
        r.key("scale_entries_alloc", alloc);
        r.key("scale_entries_free", free);
        r.key("scale_linearity", lin.join(","));
        if !errs.is_empty() {
            r.note(format!("scale: client errors: {errs:?}"));
        }
    }
}

/// `key=value` fields of a line as numbers (NaN when absent).
fn parse_kv(line: &str) -> impl Fn(&str) -> f64 + '_ {
    move |key: &str| {
        line.split_whitespace().find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse().ok()).unwrap_or(f64::NAN)
    }
}

/// (id, attach type) of the programs attached to `cgroup`, from bpftool.
fn cgroup_programs(cgroup: &Path) -> Vec<(u64, String)> {
    let out = Command::new("bpftool").args(["-j", "cgroup", "show"]).arg(cgroup).output();
    let v: serde_json::Value =
        out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or(serde_json::Value::Null);
    v.as_array()
        .map(|a| a.iter().filter_map(|p| Some((p["id"].as_u64()?, p["attach_type"].as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

/// (run_time_ns, run_cnt) of a program.
fn prog_stats(id: u64) -> (u64, u64) {
    let out = Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]).output();
    let v: serde_json::Value =
        out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or(serde_json::Value::Null);
    (v["run_time_ns"].as_u64().unwrap_or(0), v["run_cnt"].as_u64().unwrap_or(0))
}

/// BPF run-time statistics, enabled while this lives (`BPF_ENABLE_STATS`).
struct BpfStats {
    /// Closing it turns the statistics off again.
    _fd: std::os::fd::OwnedFd,
}

impl BpfStats {
    fn enable() -> Option<BpfStats> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; ... }, type BPF_STATS_RUN_TIME = 0.
        let attr = [0u32; 2];
        // SAFETY: bpf(2) with a zeroed attribute of the announced size.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), 8u32) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a new descriptor we own.
        Some(BpfStats { _fd: unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) } })
    }
}
