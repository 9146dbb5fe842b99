//! What lies outside the programs: `perf record -g` (cpu-clock, only the
//! benchmark's cgroups) of the short-connection load and of a getsockopt()
//! loop, agent on and off. Summed by group of kernel symbols, and, for the
//! call chains that hold the receiver's cost (socket storage creation, the
//! hooks' dispatch, the getsockopt hook), where their time goes below them.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_test::cgroup::cgroup2_root;
use integration_test::process::{Spawned, Stream, spawn};

use crate::Options;
use crate::lab::{Lab, READY, REAL_CLIENT, Target, rr_report};
use crate::report::Report;

const PORT: u16 = 5040;
const SOCKOPT_PORT: u16 = 5045;
const PARALLEL: usize = 4;
/// Samples per second of CPU.
const HZ: f64 = 4000.0;

/// Symbol groups: what each is, and the substrings that put a symbol in it.
const GROUPS: [(&str, &[&str]); 6] = [
    ("toa programs (JIT code)", &["_toa_"]),
    (
        "BPF program dispatch (cgroup hooks, run arrays)",
        &["cgroup_bpf", "tcp_call_bpf", "bpf_prog_run", "__bpf_prog_", "bpf_sock_ops", "bpf_skops", "bpf_cgroup"],
    ),
    ("socket storage (bpf_sk_storage, bpf_local_storage)", &["sk_storage", "local_storage", "selem"]),
    ("memcg charging", &["memcg", "obj_cgroup", "objcg", "mem_cgroup", "obj_stock", "page_counter"]),
    ("slab allocator", &["kmem_cache", "kmalloc", "kfree", "slab", "__kmem"]),
    ("other BPF helpers", &["bpf_"]),
];

fn group_of(sym: &str) -> Option<usize> {
    GROUPS.iter().position(|(_, pats)| pats.iter().any(|p| sym.contains(p)))
}

/// Call stacks of a perf.data file, innermost frame first.
struct Profile {
    stacks: Vec<Vec<String>>,
    /// Connections or calls the load made.
    units: f64,
}

impl Profile {
    fn read(file: &Path, units: f64) -> Profile {
        let out = Command::new("perf").arg("script").arg("-i").arg(file).args(["-F", "comm,ip,sym"]).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let mut stacks = Vec::new();
        let mut cur: Option<Vec<String>> = None;
        for l in text.lines() {
            if l.trim().is_empty() {
                continue;
            }
            if !l.starts_with([' ', '\t']) {
                stacks.extend(cur.take());
                cur = Some(Vec::new());
                continue;
            }
            let sym = l.split_whitespace().nth(1).unwrap_or("[unknown]");
            let sym = sym.split_once("+0x").map_or(sym, |(s, _)| s);
            if let Some(c) = cur.as_mut() {
                c.push(sym.to_owned());
            }
        }
        stacks.extend(cur);
        Profile { stacks, units }
    }

    /// µs of CPU per unit that `n` samples stand for.
    fn us(&self, n: f64) -> f64 {
        n / HZ * 1e6 / self.units.max(1.0)
    }

    /// Samples whose innermost frame matches `f`.
    fn self_samples(&self, f: impl Fn(&str) -> bool) -> f64 {
        self.stacks.iter().filter(|s| s.first().is_some_and(|x| f(x))).count() as f64
    }

    /// Samples with `root` on the stack (called from a frame containing
    /// `caller`, when given), and for each function below `root` the
    /// samples it appears in.
    fn below(&self, root: &str, caller: Option<&str>) -> (f64, Vec<(String, f64)>) {
        let mut n = 0.0;
        let mut under: Vec<(String, f64)> = Vec::new();
        for s in &self.stacks {
            let Some(i) = s.iter().position(|x| x == root) else { continue };
            if caller.is_some_and(|c| !s[i + 1..].iter().any(|x| x.contains(c))) {
                continue;
            }
            n += 1.0;
            let mut seen: Vec<&str> = Vec::new();
            for f in &s[..i] {
                if seen.contains(&f.as_str()) {
                    continue;
                }
                seen.push(f);
                match under.iter_mut().find(|e| &e.0 == f) {
                    Some(e) => e.1 += 1.0,
                    None => under.push((f.clone(), 1.0)),
                }
            }
        }
        under.sort_by(|a, b| b.1.total_cmp(&a.1));
        (n, under)
    }
}

/// Records a profile of the benchmark's cgroups while `load` runs; `load`
/// returns how many connections or calls it made.
fn record(lab: &Lab, secs: f64, file: &Path, load: impl FnOnce() -> f64) -> Profile {
    let root = cgroup2_root();
    let rel = |p: &Path| p.strip_prefix(&root).unwrap_or(p).to_string_lossy().into_owned();
    let cgroups = format!("{},{}", rel(lab.cli.path()), rel(lab.home.path()));
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-q", "-g", "-F", "4000", "-e", "cpu-clock", "-e", "cpu-clock", "-a", "-G", &cgroups, "-o"])
        .arg(file)
        .args(["--", "sleep", &format!("{}", secs + 0.5)]);
    let mut perf = spawn(cmd);
    std::thread::sleep(Duration::from_millis(300));
    let units = load();
    perf.wait_exit(Duration::from_secs_f64(secs + 60.0));
    let p = Profile::read(file, units);
    let _ = std::fs::remove_file(file);
    p
}

pub fn run(lab: &Lab, o: &Options, r: &mut Report) {
    if Command::new("perf").arg("--version").output().is_err() {
        r.note("perf: not installed (Debian: linux-perf); no profile".into());
        return;
    }
    let agent = lab.start_agent(false);
    let expect = REAL_CLIENT.ip().to_string();
    let mut server = lab.multi_server("rr-server", PORT, &[Target::On, Target::Off], &["--expect", &expect]);
    lab.rr_run(PORT, PARALLEL, 0.3, true);
    let dir = std::env::temp_dir();
    let file = |name: &str| dir.join(format!("toa-bench-{}-{name}.perf", std::process::id()));
    let secs = o.perf_secs;
    let conn_on = record(lab, secs, &file("on"), || lab.rr_run(PORT, PARALLEL, secs, true).conns);
    let conn_off = record(lab, secs, &file("off"), || lab.rr_run(PORT + 1, PARALLEL, secs, true).conns);
    rr_report(&mut server);
    drop(server);
    let mut looper = lab.multi_server("sockopt-loop", SOCKOPT_PORT, &[Target::On, Target::Off], &[]);
    let dsts = format!("{},{}", lab.dst(SOCKOPT_PORT), lab.dst(SOCKOPT_PORT + 1));
    let _client = spawn(lab.client_cmd("hold-client", &["--dsts", &dsts], true));
    looper.wait_for_line(Stream::Stdout, |l| l == "accepted", READY);
    let opt_on = record(lab, secs, &file("opt-on"), || sockopt_loop(&mut looper, 0, secs));
    let opt_off = record(lab, secs, &file("opt-off"), || sockopt_loop(&mut looper, 1, secs));
    drop(looper);
    agent.stop();
    if conn_on.stacks.is_empty() {
        r.note("perf: no samples (perf record failed?)".into());
        return;
    }
    groups(r, o, &conn_on, &conn_off);
    chains(r, [&conn_on, &conn_off], [&opt_on, &opt_off]);
}

/// Runs the getsockopt loop on socket `k` for `secs`; returns the calls made.
fn sockopt_loop(looper: &mut Spawned, k: usize, secs: f64) -> f64 {
    looper.stdin().write_all(format!("loop {k} {secs}\n").as_bytes()).expect("write to sockopt-loop");
    let l = looper.wait_for_line(Stream::Stdout, |l| l.starts_with("done "), Duration::from_secs_f64(secs + 60.0));
    l.trim_start_matches("done ").parse().unwrap_or(f64::NAN)
}

fn groups(r: &mut Report, o: &Options, on: &Profile, off: &Profile) {
    r.section(
        "Outside the programs: perf profile of the short-connection load",
        &["group / symbol", "on: % of samples", "on: µs per conn", "off: % of samples", "off: µs per conn"],
    );
    r.intro(format!(
        "perf record -g -F 4000 -e cpu-clock -a -G <client and server cgroups> during {} s of load at \
         {PARALLEL} clients, agent on (listener in its cgroup) and off; samples by their innermost symbol, \
         grouped by name. A sample stands for 250 µs of CPU.",
        o.perf_secs
    ));
    let (t_on, t_off) = (on.stacks.len() as f64, off.stacks.len().max(1) as f64);
    for (g, (name, _)) in GROUPS.iter().enumerate() {
        let (a, b) = (on.self_samples(|s| group_of(s) == Some(g)), off.self_samples(|s| group_of(s) == Some(g)));
        r.row(vec![
            (*name).into(),
            format!("{:.1}", 100.0 * a / t_on),
            format!("{:.2}", on.us(a)),
            format!("{:.1}", 100.0 * b / t_off),
            format!("{:.2}", off.us(b)),
        ]);
        r.key(&format!("perf_group_{g}_us_per_conn"), format!("{:.3},{:.3}", on.us(a), off.us(b)));
    }
    r.row(vec![
        "all samples".into(),
        "100".into(),
        format!("{:.2}", on.us(t_on)),
        "100".into(),
        format!("{:.2}", off.us(t_off)),
    ]);
    let mut syms: Vec<(String, f64)> = Vec::new();
    for s in on.stacks.iter().filter_map(|s| s.first()).filter(|s| group_of(s).is_some()) {
        match syms.iter_mut().find(|e| &e.0 == s) {
            Some(e) => e.1 += 1.0,
            None => syms.push((s.clone(), 1.0)),
        }
    }
    syms.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (sym, n) in syms.iter().take(16) {
        let b = off.self_samples(|s| s == sym);
        r.row(vec![
            format!("  {sym}"),
            format!("{:.2}", 100.0 * n / t_on),
            format!("{:.3}", on.us(*n)),
            format!("{:.2}", 100.0 * b / t_off),
            format!("{:.3}", off.us(b)),
        ]);
    }
}

/// Where the time below the call chains that carry the receiver's cost goes.
fn chains(r: &mut Report, conn: [&Profile; 2], opt: [&Profile; 2]) {
    r.section(
        "Outside the programs: where the time below the receiver's call chains goes",
        &["call chain", "unit", "agent on", "agent off", "agent on: below it, share of its samples"],
    );
    r.intro(
        "From the same kind of profiles (call graphs): each row is a function and the CPU time of the samples \
         in which it is on the stack (when a caller is named, only below that caller), agent on and off, \
         then the functions below it that most of the \"on\" samples pass through. The connection load \
         includes the client's side: its option writer (toa_inject) keeps socket storage too, which is why \
         sock_ops dispatch and storage freeing show with the agent off. The getsockopt rows come from a loop \
         of getsockopt(SOL_SOCKET, SO_RCVBUF) on an accepted socket in the agent's cgroup (on) and in one \
         without programs (off)."
            .into(),
    );
    let rows: [(usize, &str, &str, Option<&str>); 7] = [
        (0, "socket storage created (capture)", "bpf_sk_storage_get", Some("_toa_capture")),
        (0, "socket storage freed with the socket", "bpf_sk_storage_free", None),
        (0, "sock_ops dispatch (both sides)", "__cgroup_bpf_run_filter_sock_ops", None),
        (0, "getpeername/accept hook", "__cgroup_bpf_run_filter_sock_addr", None),
        (1, "getsockopt(): the cgroup hook", "__cgroup_bpf_run_filter_getsockopt", None),
        (1, "getsockopt(): the whole call", "__sys_getsockopt", None),
        (1, "getsockopt(): the kernel's own getsockopt", "sk_getsockopt", None),
    ];
    for (kind, label, root, caller) in rows {
        let pair = if kind == 0 { conn } else { opt };
        let (n_on, under) = pair[0].below(root, caller);
        let (n_off, _) = pair[1].below(root, caller);
        let top: Vec<String> =
            under.iter().take(8).map(|(s, c)| format!("{s} {:.0}%", 100.0 * c / n_on.max(1.0))).collect();
        // Per connection in µs; per getsockopt() call in ns.
        let (unit, scale, digits) = if kind == 0 { ("µs/conn", 1.0, 3) } else { ("ns/call", 1000.0, 0) };
        let (on, off) = (pair[0].us(n_on) * scale, pair[1].us(n_off) * scale);
        let who = caller.map_or(String::new(), |c| format!(" (from {})", c.trim_matches('_')));
        r.row(vec![
            format!("{label}: {root}{who}"),
            unit.into(),
            format!("{on:.digits$}"),
            format!("{off:.digits$}"),
            top.join(", "),
        ]);
        r.key(
            &format!("perf_chain_{}_{}", root.trim_matches('_'), if kind == 0 { "conn" } else { "getsockopt" }),
            format!("{on:.4},{off:.4}"),
        );
    }
}
