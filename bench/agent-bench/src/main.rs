//! `bench-agent`: what `toa agent` costs a backend.
//!
//! Builds a client and a server network namespace (veth) and the cgroups
//! described in [`lab`], writes the option `203.0.113.7:4242` into every
//! handshake ACK the client cgroup sends (the library's option writer, as a
//! FullNAT forwarder would), and measures:
//!
//! - `cost` (robust to machine load): program run time and runs per
//!   translated and untranslated connection from the kernel's BPF
//!   statistics, next to do-nothing programs at the same hooks; BPF time and
//!   extra wall time per `getpeername()` and `getsockopt()` pass-through;
//!   the callbacks a connection makes and their cost (the agent's debug
//!   statistics);
//! - `cps`: connections/s and CPU time per connection (host `/proc/stat`,
//!   steal excluded, and the benchmark's cgroups), agent on / off / floor,
//!   in many short alternating rounds at 1, 4 and 32 clients, with spread;
//! - `hooks`: each hook attached on its own;
//! - `memory`: kernel memory per open translated connection;
//! - `perf`: a profile of what lies outside the programs.
//!
//! `--scale N` instead opens N concurrent connections, each with its own
//! real client, checks every one, and reports memory and release.
//!
//! Everything is torn down on exit. Run it through `bench/agent`.

mod bpf;
mod cost;
mod cps;
mod hold;
mod hooks;
mod lab;
mod memory;
mod net;
mod perf;
mod report;
mod roles;
mod scale;
mod stats;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use report::Report;
use stats::HostCpu;

pub struct Options {
    rounds: usize,
    round_secs: f64,
    parallel: Vec<usize>,
    cost_rounds: usize,
    cost_secs: f64,
    hook_rounds: usize,
    iters: u32,
    syscall_rounds: usize,
    conns: u32,
    perf_secs: f64,
    phases: Vec<String>,
    scale: Option<u32>,
    toa: PathBuf,
    baseline: Option<PathBuf>,
}

const PHASES: [&str; 5] = ["cost", "cps", "hooks", "memory", "perf"];

const USAGE: &str = "usage: bench-agent [--only cost,cps,hooks,memory,perf] [--long]
                   [--rounds N] [--round-secs S] [--parallel 1,4,32]
                   [--cost-rounds N] [--cost-secs S] [--hook-rounds N]
                   [--iters N] [--syscall-rounds N] [--conns N] [--perf-secs S]
                   [--scale N] [--toa PATH] [--baseline PATH]
  --long      three times the rounds of every phase (about 15 minutes on 2 CPUs)
  --baseline  another build's toa binary: the cost phase runs its agent too, in
              its own cgroup, and alternates rounds between the two
  --scale N   only: N concurrent translated connections (1000000 takes ~8 GiB on one host)";

fn usage(msg: &str) -> ! {
    eprintln!("bench-agent: {msg}\n{USAGE}");
    std::process::exit(2)
}

fn parse_options(args: &[String]) -> Options {
    let exe = std::env::current_exe().unwrap_or_else(|e| usage(&format!("cannot find myself: {e}")));
    let mut o = Options {
        rounds: 15,
        round_secs: 1.0,
        parallel: vec![1, 4, 32],
        cost_rounds: 5,
        cost_secs: 1.0,
        hook_rounds: 6,
        iters: 50_000,
        syscall_rounds: 15,
        conns: 100_000,
        perf_secs: 4.0,
        phases: PHASES.map(String::from).to_vec(),
        scale: None,
        toa: exe.with_file_name("toa"),
        baseline: None,
    };
    let mut only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        let bad = |v: &str| -> ! { usage(&format!("{a}: bad value {v}")) };
        match a.as_str() {
            "--rounds" => o.rounds = val().parse().unwrap_or_else(|_| bad(a)),
            "--round-secs" => o.round_secs = val().parse().unwrap_or_else(|_| bad(a)),
            "--parallel" => o.parallel = val().split(',').map(|p| p.parse().unwrap_or_else(|_| bad(p))).collect(),
            "--cost-rounds" => o.cost_rounds = val().parse().unwrap_or_else(|_| bad(a)),
            "--cost-secs" => o.cost_secs = val().parse().unwrap_or_else(|_| bad(a)),
            "--hook-rounds" => o.hook_rounds = val().parse().unwrap_or_else(|_| bad(a)),
            "--iters" => o.iters = val().parse().unwrap_or_else(|_| bad(a)),
            "--syscall-rounds" => o.syscall_rounds = val().parse().unwrap_or_else(|_| bad(a)),
            "--conns" => o.conns = val().parse().unwrap_or_else(|_| bad(a)),
            "--perf-secs" => o.perf_secs = val().parse().unwrap_or_else(|_| bad(a)),
            "--long" => {
                o.rounds *= 3;
                o.cost_rounds *= 3;
                o.hook_rounds *= 3;
                o.syscall_rounds *= 3;
                o.perf_secs *= 2.0;
            }
            "--only" => {
                o.phases = val().split(',').map(String::from).collect();
                only = true;
            }
            "--scale" => o.scale = Some(val().parse().unwrap_or_else(|_| bad(a))),
            "--toa" => o.toa = PathBuf::from(val()),
            "--baseline" => o.baseline = Some(PathBuf::from(val())),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if let Some(p) = o.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
        usage(&format!("unknown phase {p}"));
    }
    if o.scale.is_some() && !only {
        o.phases.clear();
    }
    if o.rounds == 0 || o.cost_rounds == 0 || o.hook_rounds == 0 || o.syscall_rounds == 0 {
        usage("rounds must be at least 1");
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
    if let Some(b) = opts.baseline.as_ref().filter(|b| !b.exists()) {
        usage(&format!("no baseline toa binary at {}", b.display()));
    }
    if !opts.toa.exists() {
        usage(&format!("no toa binary at {} (build it, or pass --toa)", opts.toa.display()));
    }
    net::raise_nofile();
    let mut report = Report::default();
    let (t0, cpu0) = (Instant::now(), HostCpu::read());
    let load0 = loadavg();
    header(&mut report, &opts);
    let lab = lab::Lab::new(&opts.toa, !opts.phases.is_empty());
    for phase in &opts.phases {
        match phase.as_str() {
            "cost" => cost::run(&lab, &opts, &mut report),
            "cps" => cps::run(&lab, &opts, &mut report),
            "hooks" => hooks::run(&lab, &opts, &mut report),
            "memory" => memory::run(&lab, &opts, &mut report),
            "perf" => perf::run(&lab, &opts, &mut report),
            _ => unreachable!("checked in parse_options"),
        }
    }
    if let Some(n) = opts.scale {
        scale::run(&lab, n, &mut report);
    }
    let cpu = HostCpu::read().since(&cpu0);
    let steal = cpu.steal as f64 / (cpu.busy + cpu.idle + cpu.steal).max(1) as f64;
    let load1 = loadavg();
    report.header_line(format!(
        "run: {:.0} s; load average {} at the start, {} at the end; steal {:.1} % of CPU time during the run",
        t0.elapsed().as_secs_f64(),
        load0,
        load1,
        100.0 * steal
    ));
    report.key("run_secs", format!("{:.0}", t0.elapsed().as_secs_f64()));
    report.key("loadavg_start", format!("{load0:?}"));
    report.key("loadavg_end", format!("{load1:?}"));
    report.key("steal_share", format!("{steal:.4}"));
    let nproc = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let busy_at_start: f64 = load0.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
    if busy_at_start > 0.25 * nproc || steal > 0.02 {
        report.header_line(format!(
            "WARNING: the machine was busy (load {busy_at_start:.1} on {nproc:.0} CPUs at the start, steal {:.1} %): \
             conn/s, CPU-time ratios and syscall ns are not trustworthy from this run; program run times, run \
             counts and memory are.",
            100.0 * steal
        ));
    }
    drop(lab);
    report.print();
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn header(r: &mut Report, o: &Options) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_owned();
    let virt = if cpuinfo.lines().any(|l| l.starts_with("flags") && l.contains(" hypervisor")) {
        let product = std::fs::read_to_string("/sys/class/dmi/id/product_name").unwrap_or_default();
        let product = product.trim();
        if product.is_empty() { "virtual machine".to_owned() } else { format!("virtual machine ({product})") }
    } else {
        "bare metal".to_owned()
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = lab::meminfo("MemTotal") as f64 / f64::from(1u32 << 30);
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_owned(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    r.header_line("# toa receiver cost (bench/agent)".into());
    r.header_line(String::new());
    r.header_line(format!("date: {} UTC; toa {} (git {commit})", utc_now(), env!("CARGO_PKG_VERSION")));
    r.header_line(format!("machine: {nproc} CPUs ({model}), {mem:.0} GiB, {virt}; kernel {kernel}"));
    r.header_line(format!(
        "options: phases {}; {} rounds of {} s at {:?} clients; cost {} rounds of {} s; {} connections for memory",
        if o.phases.is_empty() { "none".to_owned() } else { o.phases.join(",") },
        o.rounds,
        o.round_secs,
        o.parallel,
        o.cost_rounds,
        o.cost_secs,
        o.conns
    ));
    r.key("machine_nproc", nproc);
    r.key("machine_cpu", format!("{model:?}"));
    r.key("machine_kernel", &kernel);
    r.key("machine_virt", format!("{virt:?}"));
    r.key("date", utc_now());
    r.key("git", commit);
}

/// The current time as `YYYY-MM-DD HH:MM`, UTC.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn options_defaults_and_long() {
        let o = super::parse_options(&[]);
        assert_eq!((o.rounds, o.parallel.clone(), o.phases.len()), (15, vec![1, 4, 32], 5));
        let o = super::parse_options(&["--long".into(), "--only".into(), "cost".into()]);
        assert_eq!((o.rounds, o.cost_rounds, o.phases.clone()), (45, 15, vec!["cost".to_owned()]));
        let o = super::parse_options(&["--scale".into(), "1000".into()]);
        assert!(o.phases.is_empty());
    }
}
