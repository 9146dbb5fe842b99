//! What lies outside the programs: a `perf record` profile (cpu-clock, the
//! benchmark's cgroups only, kernel and user) of the short-connection load
//! with the agent on and off, summarised by symbol and by group.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_test::cgroup::cgroup2_root;
use integration_test::process::{Stream, spawn};

use crate::Options;
use crate::lab::{Lab, REAL_CLIENT, Target, rr_report};
use crate::report::Report;

const PORT: u16 = 5040;
const PARALLEL: usize = 4;

/// Symbol groups: what each is, and the substrings that put a symbol in it.
const GROUPS: [(&str, &[&str]); 6] = [
    ("toa programs (JIT code)", &["_toa_"]),
    (
        "BPF program dispatch (cgroup hooks, run arrays)",
        &[
            "cgroup_bpf",
            "tcp_call_bpf",
            "bpf_prog_run",
            "__bpf_prog_",
            "bpf_sock_ops",
            "bpf_skops",
            "migrate_",
            "bpf_cgroup",
        ],
    ),
    ("socket storage (bpf_sk_storage, bpf_local_storage)", &["sk_storage", "local_storage"]),
    ("memcg charging", &["memcg", "obj_cgroup", "objcg", "mem_cgroup"]),
    ("slab allocator", &["kmem_cache", "kmalloc", "kfree", "slab", "__kmem"]),
    ("other BPF helpers", &["bpf_"]),
];

fn group_of(sym: &str) -> Option<usize> {
    GROUPS.iter().position(|(_, pats)| pats.iter().any(|p| sym.contains(p)))
}

/// Samples per symbol of a perf.data file (all events summed).
fn samples(file: &Path) -> Vec<(String, f64)> {
    let out = Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(file)
        .args(["--no-children", "--sort", "sym", "--stdio", "-g", "none", "-F", "sample,sym", "--percent-limit", "0"])
        .output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let mut by: Vec<(String, f64)> = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let mut f = l.split_whitespace();
        let (Some(n), Some(_kind)) = (f.next().and_then(|n| n.parse::<f64>().ok()), f.next()) else { continue };
        let sym = f.collect::<Vec<_>>().join(" ");
        match by.iter_mut().find(|e| e.0 == sym) {
            Some(e) => e.1 += n,
            None => by.push((sym, n)),
        }
    }
    by.sort_by(|a, b| b.1.total_cmp(&a.1));
    by
}

fn record(lab: &Lab, o: &Options, port: u16, file: &Path) -> f64 {
    let root = cgroup2_root();
    let rel = |p: &Path| p.strip_prefix(&root).unwrap_or(p).to_string_lossy().into_owned();
    let cgroups = format!("{},{}", rel(lab.cli.path()), rel(lab.home.path()));
    let secs = o.perf_secs;
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-q", "-F", "4000", "-e", "cpu-clock", "-e", "cpu-clock", "-a", "-G", &cgroups, "-o"])
        .arg(file)
        .args(["--", "sleep", &format!("{}", secs + 0.5)]);
    let mut perf = spawn(cmd);
    std::thread::sleep(Duration::from_millis(300));
    let round = lab.rr_run(port, PARALLEL, secs, true);
    perf.wait_exit(Duration::from_secs_f64(secs + 30.0));
    let _ = perf.lines_so_far(Stream::Stderr);
    round.conns
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
    let files = [
        dir.join(format!("toa-bench-{}-on.perf", std::process::id())),
        dir.join(format!("toa-bench-{}-off.perf", std::process::id())),
    ];
    let conns = [record(lab, o, PORT, &files[0]), record(lab, o, PORT + 1, &files[1])];
    rr_report(&mut server);
    drop(server);
    agent.stop();
    let profiles = [samples(&files[0]), samples(&files[1])];
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    let total = |p: &[(String, f64)]| p.iter().map(|e| e.1).sum::<f64>();
    let (t_on, t_off) = (total(&profiles[0]), total(&profiles[1]));
    if t_on == 0.0 {
        r.note("perf: no samples (perf record failed?)".into());
        return;
    }
    r.section(
        "Outside the programs: perf profile (cpu-clock, the benchmark's processes, kernel and user)",
        &["group / symbol", "on: % of samples", "on: µs per conn", "off: % of samples", "off: µs per conn"],
    );
    // A cpu-clock sample stands for 1/4000 s of CPU.
    let us = |n: f64, conns: f64| n / 4000.0 * 1e6 / conns;
    r.intro(format!(
        "perf record -F 4000 -e cpu-clock -a -G <client and server cgroups> during {} s of load at \
         {PARALLEL} clients, agent on (listener in its cgroup) and off. Groups by symbol name; then the \
         symbols of the \"on\" profile that belong to a group.",
        o.perf_secs
    ));
    for (g, (name, _)) in GROUPS.iter().enumerate() {
        let sum = |p: &[(String, f64)]| p.iter().filter(|e| group_of(&e.0) == Some(g)).map(|e| e.1).sum::<f64>();
        let (a, b) = (sum(&profiles[0]), sum(&profiles[1]));
        r.row(vec![
            (*name).into(),
            format!("{:.1}", 100.0 * a / t_on),
            format!("{:.2}", us(a, conns[0])),
            format!("{:.1}", 100.0 * b / t_off.max(1.0)),
            format!("{:.2}", us(b, conns[1])),
        ]);
        r.key(&format!("perf_group_{g}_us_per_conn"), format!("{:.3},{:.3}", us(a, conns[0]), us(b, conns[1])));
    }
    r.row(vec![
        "all samples".into(),
        "100".into(),
        format!("{:.2}", us(t_on, conns[0])),
        "100".into(),
        format!("{:.2}", us(t_off, conns[1])),
    ]);
    for (sym, n) in profiles[0].iter().filter(|e| group_of(&e.0).is_some()).take(20) {
        let off = profiles[1].iter().find(|e| &e.0 == sym).map_or(0.0, |e| e.1);
        r.row(vec![
            format!("  {sym}"),
            format!("{:.2}", 100.0 * n / t_on),
            format!("{:.3}", us(*n, conns[0])),
            format!("{:.2}", 100.0 * off / t_off.max(1.0)),
            format!("{:.3}", us(off, conns[1])),
        ]);
    }
    let top: Vec<String> = profiles[0].iter().take(8).map(|(s, n)| format!("{s} {:.1}%", 100.0 * n / t_on)).collect();
    r.after(format!("Top symbols, agent on: {}.", top.join(", ")));
}
