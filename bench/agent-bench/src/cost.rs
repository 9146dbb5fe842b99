//! The robust figures: what the programs themselves cost, from the kernel's
//! BPF run-time statistics (run_time_ns, run_cnt per program), per
//! connection and per system call, next to programs that do nothing (the
//! floor any eBPF implementation pays at these hooks); and, from the agent's
//! debug statistics, which callbacks a connection makes and what each costs.
//!
//! Run time counts what runs inside the programs (and the kernel's clock
//! read that frames each run); it is unaffected by what else the machine
//! does, except through caches.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use integration_test::process::{Stream, spawn};
use toa_common::opstats;

use crate::Options;
use crate::bpf::{self, Attached, Snapshot, StatsOn};
use crate::lab::{Lab, READY, REAL_CLIENT, Target, rr_report};
use crate::report::Report;
use crate::stats::Summary;

const RR_PORT: u16 = 5010;
const SYSCALL_PORT: u16 = 5020;
/// Connections in flight during the cost rounds.
const PARALLEL: usize = 4;

/// One case of the per-connection rounds.
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    with_option: bool,
}

const CASES: [Case; 2] =
    [Case { name: "translated", with_option: true }, Case { name: "untranslated", with_option: false }];

/// Per-connection figures of one round: total ns and runs, and per attach type.
#[derive(Default)]
struct PerConn {
    ns: f64,
    runs: f64,
    by_type: BTreeMap<String, (f64, f64)>,
}

/// Short names of attach types.
fn short(attach_type: &str) -> &str {
    match attach_type {
        "cgroup_sock_ops" | "sock_ops" => "sock_ops",
        "cgroup_inet4_getpeername" => "getpeername4",
        "cgroup_inet6_getpeername" => "getpeername6",
        "cgroup_getsockopt" => "getsockopt",
        t => t,
    }
}

pub fn run(lab: &Lab, o: &Options, r: &mut Report) {
    let Ok(_stats) = StatsOn::enable() else {
        r.note("cost: BPF_ENABLE_STATS failed: no program run times".into());
        return;
    };
    let agent = lab.start_agent(false);
    let base_agent = o.baseline.as_ref().map(|b| lab.start_agent_of(b, lab.base.path(), false));
    let on = bpf::cgroup_programs(lab.srv.path());
    let floor = bpf::cgroup_programs(lab.floor.path());
    let base = bpf::cgroup_programs(lab.base.path());
    let mut targets = vec![Target::On];
    if base_agent.is_some() {
        targets.push(Target::Base);
    }
    if lab.has_floor() {
        targets.push(Target::Floor);
    }
    let progs = |t: Target| match t {
        Target::Base => &base,
        Target::Floor => &floor,
        _ => &on,
    };
    let expect = REAL_CLIENT.ip().to_string();
    let mut server = lab.multi_server("rr-server", RR_PORT, &targets, &["--expect", &expect]);
    // Warm up (caches, the first socket storage of each CPU), then reset the counts.
    for &t in &targets {
        lab.rr_run(RR_PORT + index(&targets, t), PARALLEL, 0.5, true);
    }
    rr_report(&mut server);
    let mut results: BTreeMap<(usize, usize), Vec<PerConn>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for round in 0..o.cost_rounds {
        for (ci, case) in CASES.iter().enumerate() {
            for k in 0..targets.len() {
                let ti = (k + round) % targets.len();
                let t = targets[ti];
                let before = Snapshot::take(progs(t));
                let res = lab.rr_run(RR_PORT + ti as u16, PARALLEL, o.cost_secs, case.with_option);
                // The last connections finish closing on the server side.
                std::thread::sleep(Duration::from_millis(300));
                let after = Snapshot::take(progs(t));
                let counts = rr_report(&mut server);
                let (accepted, translated) = counts.get(ti).copied().unwrap_or((f64::NAN, f64::NAN));
                let want = if case.with_option && matches!(t, Target::On | Target::Base) { accepted } else { 0.0 };
                if translated != want || res.errors > 0.0 {
                    wrong.push(format!(
                        "{} {}: {translated} of {accepted} translated, {} errors",
                        case.name,
                        t.name(),
                        res.errors
                    ));
                }
                let mut pc = PerConn::default();
                for (ty, ns, cnt) in after.since(&before) {
                    let (ns, cnt) = (ns as f64 / accepted, cnt as f64 / accepted);
                    pc.ns += ns;
                    pc.runs += cnt;
                    let e = pc.by_type.entry(short(&ty).to_owned()).or_default();
                    e.0 += ns;
                    e.1 += cnt;
                }
                eprintln!(
                    "bench: cost round {round} {} {}: {accepted} conns, {:.0} ns/conn, {:.2} runs/conn",
                    case.name,
                    t.name(),
                    pc.ns,
                    pc.runs
                );
                results.entry((ci, ti)).or_default().push(pc);
            }
        }
    }
    drop(server);
    report_per_connection(r, o, &targets, &results);
    if !wrong.is_empty() {
        r.note(format!("cost: unexpected outcomes: {wrong:?}"));
    }
    per_call(lab, o, r, &on, &floor);
    sizes(r, &on, "");
    if base_agent.is_some() {
        sizes(r, &base, "baseline_");
    }
    agent.stop();
    if let Some(a) = base_agent {
        a.stop();
    }
    breakdown(lab, o, r);
}

fn index(targets: &[Target], t: Target) -> u16 {
    targets.iter().position(|x| *x == t).unwrap_or(0) as u16
}

fn report_per_connection(
    r: &mut Report,
    o: &Options,
    targets: &[Target],
    results: &BTreeMap<(usize, usize), Vec<PerConn>>,
) {
    r.section(
        "Program run time per connection (kernel BPF statistics: robust to machine load)",
        &[
            "connection",
            "programs",
            "runs per connection",
            "ns per connection",
            "floor: programs that do nothing",
            "above the floor",
        ],
    );
    r.intro(format!(
        "{} rounds of {} s per case, {PARALLEL} connections in flight (connect, 1 byte each way, close); \
         every receiver program's run_time_ns ÷ the connections the server accepted in the round. \
         Median [interquartile range] (min–max, n). The floor attaches one program that only returns at each \
         of the same hooks: what any eBPF receiver pays there, and each run's share of the statistics' own \
         clock reads.",
        o.cost_rounds, o.cost_secs
    ));
    let floor_ti = targets.iter().position(|t| *t == Target::Floor);
    let base_ti = targets.iter().position(|t| *t == Target::Base);
    for (ci, case) in CASES.iter().enumerate() {
        let Some(on) = results.get(&(ci, 0)) else { continue };
        if let Some(base) = base_ti.and_then(|b| results.get(&(ci, b))) {
            let b = Summary::of(&base.iter().map(|p| p.ns).collect::<Vec<_>>());
            let diff = Summary::of(&on.iter().zip(base).map(|(a, b)| a.ns - b.ns).collect::<Vec<_>>());
            let runs = Summary::of(&base.iter().map(|p| p.runs).collect::<Vec<_>>());
            r.row(vec![
                format!("{} (baseline build)", case.name),
                "all".into(),
                format!("{:.2}", runs.median),
                b.show(0),
                String::new(),
                format!("this build − baseline, per round: {}", diff.show(0)),
            ]);
            r.key(&format!("baseline_ns_per_conn_{}", case.name), b.key(1));
            r.key(&format!("vs_baseline_ns_per_conn_{}", case.name), diff.key(1));
        }
        let total = Summary::of(&on.iter().map(|p| p.ns).collect::<Vec<_>>());
        let runs = Summary::of(&on.iter().map(|p| p.runs).collect::<Vec<_>>());
        let fl = floor_ti.and_then(|f| results.get(&(ci, f)));
        let fl_total = fl.map(|v| Summary::of(&v.iter().map(|p| p.ns).collect::<Vec<_>>()));
        let fl_runs = fl.map(|v| Summary::of(&v.iter().map(|p| p.runs).collect::<Vec<_>>()));
        let types: Vec<String> = on.first().map(|p| p.by_type.keys().cloned().collect()).unwrap_or_default();
        let above = fl_total.map_or("-".into(), |f| format!("{:.0}", total.median - f.median));
        r.row(vec![
            case.name.into(),
            "all".into(),
            format!("{:.2}", runs.median),
            total.show(0),
            fl_total.map_or("-".into(), |f| format!("{} ({:.2} runs)", f.short(0), fl_runs.map_or(0.0, |x| x.median))),
            above,
        ]);
        let goal = if case.with_option { 1000.0 } else { 200.0 };
        r.key(&format!("prog_ns_per_conn_{}", case.name), total.key(1));
        r.key(&format!("prog_runs_per_conn_{}", case.name), format!("{:.3}", runs.median));
        if let Some(f) = fl_total {
            r.key(&format!("floor_ns_per_conn_{}", case.name), f.key(1));
        }
        r.key(
            &format!("goal_prog_ns_per_conn_{}", case.name),
            format!("{goal:.0},{}", if total.median <= goal { "met" } else { "not met" }),
        );
        for ty in types {
            let ns = Summary::of(&on.iter().map(|p| p.by_type.get(&ty).map_or(0.0, |x| x.0)).collect::<Vec<_>>());
            let cnt = Summary::of(&on.iter().map(|p| p.by_type.get(&ty).map_or(0.0, |x| x.1)).collect::<Vec<_>>());
            let per_run = if cnt.median > 0.0 { ns.median / cnt.median } else { 0.0 };
            r.row(vec![
                String::new(),
                ty.clone(),
                format!("{:.2}", cnt.median),
                format!("{} ({per_run:.0} ns/run)", ns.short(0)),
                String::new(),
                String::new(),
            ]);
            r.key(&format!("prog_ns_per_conn_{}_{ty}", case.name), format!("{:.1}", ns.median));
            r.key(&format!("prog_runs_per_conn_{}_{ty}", case.name), format!("{:.3}", cnt.median));
        }
    }
    r.after("Goals: ≤ 1000 ns per translated connection, ≤ 200 ns per untranslated one (all hooks).".into());
}

/// getpeername and getsockopt pass-through: BPF ns per call, and what the
/// call costs more than on a socket without programs (paired, per round).
fn per_call(lab: &Lab, o: &Options, r: &mut Report, on: &[Attached], floor: &[Attached]) {
    let targets: Vec<Target> =
        if lab.has_floor() { vec![Target::On, Target::Off, Target::Floor] } else { vec![Target::On, Target::Off] };
    let (iters, rounds) = (o.iters.to_string(), o.syscall_rounds.to_string());
    let mut server = lab.multi_server(
        "syscall-server",
        SYSCALL_PORT,
        &targets,
        &["--iters", &iters, "--rounds", &rounds, "--base", "1"],
    );
    let dsts: Vec<String> = (0..targets.len()).map(|i| lab.dst(SYSCALL_PORT + i as u16)).collect();
    let _client = spawn(lab.client_cmd("hold-client", &["--dsts", &dsts.join(",")], true));
    server.wait_for_line(Stream::Stdout, |l| l == "accepted", READY);
    let (on0, fl0) = (Snapshot::take(on), Snapshot::take(floor));
    server.stdin().write_all(b"go\n").expect("write to syscall-server");
    let mut lines = Vec::new();
    loop {
        let l = server.wait_for_line(Stream::Stdout, |_| true, Duration::from_secs(900));
        if l == "done" {
            break;
        }
        lines.push(l);
    }
    let (on1, fl1) = (Snapshot::take(on), Snapshot::take(floor));
    let per_run = |after: &Snapshot, before: &Snapshot, ty: &str| {
        after.since(before).iter().find(|e| e.0 == ty).map_or(f64::NAN, |e| e.1 as f64 / e.2.max(1) as f64)
    };
    let peer = lines.iter().find_map(|l| l.strip_prefix("peer=")).unwrap_or("?").to_owned();
    if peer != REAL_CLIENT.to_string() {
        r.note(format!("per call: the socket in the agent's cgroup showed peer {peer}, not {REAL_CLIENT}"));
    }
    r.section(
        "Per system call: getpeername() and getsockopt() pass-through",
        &["call", "BPF ns/call: toa", "BPF ns/call: floor", "ns/call, no program", "extra: toa", "extra: floor"],
    );
    r.intro(format!(
        "One process times each call {} times per round on a translated socket in the agent's cgroup, one in \
         a cgroup without programs and one under the do-nothing programs, back to back, {} rounds; \"extra\" is \
         the median of the per-round differences to the socket without programs (wall clock: noisy on a \
         loaded machine). BPF ns/call is from the run-time statistics (robust).",
        o.iters, o.syscall_rounds
    ));
    let bpf_type = |kind: &str| if kind == "getpeername" { "cgroup_inet4_getpeername" } else { "cgroup_getsockopt" };
    for l in &lines {
        let Some(kind) = l.split_whitespace().find_map(|f| f.strip_prefix("kind=")) else { continue };
        let field = |k: &str| -> Vec<f64> {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                .map(|v| v.split(',').map(|x| x.parse().unwrap_or(f64::NAN)).collect())
                .unwrap_or_default()
        };
        let (ns, diff) = (field("ns"), field("diff"));
        let ours = per_run(&on1, &on0, bpf_type(kind));
        let fl = per_run(&fl1, &fl0, bpf_type(kind));
        let label = match kind {
            "getpeername" => "getpeername() of a translated socket",
            "getsockopt_rcvbuf" => "getsockopt(SO_RCVBUF), 4 bytes",
            _ => "getsockopt(TCP_INFO), 232 bytes",
        };
        let g = |v: &[f64], i: usize| v.get(i).copied().unwrap_or(f64::NAN);
        r.row(vec![
            label.into(),
            format!("{ours:.1}"),
            if lab.has_floor() { format!("{fl:.1}") } else { "-".into() },
            format!("{:.0}", g(&ns, 1)),
            format!("{:+.0}", g(&diff, 0)),
            if lab.has_floor() { format!("{:+.0}", g(&diff, 2)) } else { "-".into() },
        ]);
        r.key(&format!("{kind}_bpf_ns_per_call"), format!("{ours:.1}"));
        r.key(&format!("{kind}_floor_bpf_ns_per_call"), format!("{fl:.1}"));
        r.key(&format!("{kind}_ns_off"), format!("{:.1}", g(&ns, 1)));
        r.key(&format!("{kind}_extra_ns"), format!("{:.1}", g(&diff, 0)));
        r.key(&format!("{kind}_floor_extra_ns"), format!("{:.1}", g(&diff, 2)));
    }
    r.after(
        "Goal: getsockopt() pass-through ≤ 50 ns. BPF ns/call of getsockopt is the mean over both getsockopt \
         kinds. The kernel's hook (socket lock, copy of optval and optlen into a kernel buffer) runs whatever \
         the program does: the floor's extra is that part."
            .into(),
    );
}

/// Program sizes: what the verifier left (xlated) and the JIT made.
fn sizes(r: &mut Report, on: &[Attached], prefix: &str) {
    let list: Vec<String> = on
        .iter()
        .map(|p| {
            let (x, j, _) = bpf::prog_info(p.id);
            r.key(&format!("{prefix}prog_size_{}", p.name), format!("{x},{j}"));
            format!("{} {x}/{j}", p.name)
        })
        .collect();
    let whose = if prefix.is_empty() { "" } else { " (baseline build)" };
    r.after(format!("Program sizes{whose}, bytes xlated/jited: {}.", list.join(", ")));
}

/// Calls, nanoseconds and connections of one callback, summed over rounds.
type Sums = (f64, f64, f64);

/// Which callbacks a connection makes and what each costs, from the agent's
/// debug statistics (TOA_DEBUG_OP_STATS=1), for this build and the baseline.
fn breakdown(lab: &Lab, o: &Options, r: &mut Report) {
    let mut builds = vec![("", lab.toa.clone(), Target::On)];
    if let Some(b) = &o.baseline {
        builds.push((" (baseline build)", b.clone(), Target::Base));
    }
    let agents: Vec<_> = builds.iter().map(|(_, toa, t)| lab.start_agent_of(toa, lab.cgroup_of(*t), true)).collect();
    let captures: Vec<Option<u64>> = builds
        .iter()
        .map(|(_, _, t)| {
            bpf::cgroup_programs(lab.cgroup_of(*t)).iter().find(|p| p.attach_type.contains("sock_ops")).map(|p| p.id)
        })
        .collect();
    let targets: Vec<Target> = builds.iter().map(|b| b.2).collect();
    let expect = REAL_CLIENT.ip().to_string();
    let mut server = lab.multi_server("rr-server", RR_PORT + 5, &targets, &["--expect", &expect]);
    for i in 0..targets.len() {
        lab.rr_run(RR_PORT + 5 + i as u16, PARALLEL, 0.5, true);
    }
    rr_report(&mut server);
    // (build, slot) -> per case: (calls, ns, connections) summed over the rounds
    let mut table: BTreeMap<(usize, u32), [Sums; 2]> = BTreeMap::new();
    for _round in 0..2 {
        for (ci, case) in CASES.iter().enumerate() {
            for (bi, capture) in captures.iter().enumerate() {
                let Some(capture) = *capture else { continue };
                let before = bpf::op_stats(capture);
                lab.rr_run(RR_PORT + 5 + bi as u16, PARALLEL, o.cost_secs, case.with_option);
                std::thread::sleep(Duration::from_millis(300));
                let after = bpf::op_stats(capture);
                let accepted = rr_report(&mut server).get(bi).map_or(0.0, |c| c.0);
                for (slot, calls, ns) in &after {
                    let (c0, n0) = before.iter().find(|b| b.0 == *slot).map_or((0, 0), |b| (b.1, b.2));
                    let e = &mut table.entry((bi, *slot)).or_default()[ci];
                    e.0 += (calls - c0) as f64;
                    e.1 += (ns - n0) as f64;
                }
                for ((b, _), v) in table.iter_mut() {
                    if *b == bi {
                        v[ci].2 += accepted;
                    }
                }
            }
        }
    }
    drop(server);
    for a in agents {
        a.stop();
    }
    r.section(
        "Breakdown by callback (debug statistics, TOA_DEBUG_OP_STATS=1)",
        &[
            "program: callback",
            "calls per translated conn",
            "ns per call",
            "calls per untranslated conn",
            "ns per call",
        ],
    );
    r.intro(
        "The agent loaded with its debug switch times every run with two clock reads (bpf_ktime_get_ns) \
         and counts it per callback; each figure includes one clock read. A callback nobody handles \
         (TIMEOUT_INIT, RWND_INIT) shows what a run costs that returns at once."
            .into(),
    );
    // (calls per connection, ns per call) of a summed entry.
    let per = |x: Sums| {
        if x.0 > 0.0 && x.2 > 0.0 { (x.0 / x.2, x.1 / x.0) } else { (0.0, 0.0) }
    };
    for ((bi, slot), v) in &table {
        let (t, u) = (per(v[0]), per(v[1]));
        if t.0 == 0.0 && u.0 == 0.0 {
            continue;
        }
        let name = opstats::slot_name(*slot);
        let prog = if *slot < opstats::SOCK_OPS_SLOTS { "toa_capture: " } else { "" };
        let cell = |x: (f64, f64)| {
            if x.0 > 0.0 { (format!("{:.2}", x.0), format!("{:.0}", x.1)) } else { ("0".into(), "-".into()) }
        };
        let (tc, uc) = (cell(t), cell(u));
        r.row(vec![format!("{prog}{name}{}", builds[*bi].0), tc.0, tc.1, uc.0, uc.1]);
        let key = name.replace([' ', '(', ')', '/'], "_");
        let key = if *bi == 0 { format!("op_{key}") } else { format!("baseline_op_{key}") };
        r.key(&key, format!("{:.3},{:.1},{:.3},{:.1}", t.0, t.1, u.0, u.1));
    }
    for (bi, build) in builds.iter().enumerate() {
        let per_conn = |ci: usize| {
            table
                .iter()
                .filter(|((b, _), _)| *b == bi)
                .map(|(_, v)| {
                    let (c, n) = per(v[ci]);
                    c * n
                })
                .sum::<f64>()
        };
        r.after(format!(
            "Sum over callbacks{}: {:.0} ns per translated connection, {:.0} per untranslated (clock reads included).",
            build.0,
            per_conn(0),
            per_conn(1)
        ));
    }
}
