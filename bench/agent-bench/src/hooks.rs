//! Each hook of the receiver on its own: the agent starts, every link but
//! one hook's is detached, and short alternating rounds compare the
//! listener under that hook alone with one without programs.

use crate::Options;
use crate::bpf::{self, Snapshot, StatsOn};
use crate::lab::{Lab, REAL_CLIENT, Round, Target, rr_report};
use crate::report::Report;
use crate::stats::Summary;

const PORT: u16 = 5030;
const PARALLEL: usize = 4;

pub fn run(lab: &Lab, o: &Options, r: &mut Report) {
    let stats = StatsOn::enable().ok();
    r.section(
        "Hooks one at a time",
        &["attached", "BPF ns per conn", "runs per conn", "conn/s on ÷ off", "cgroup CPU on ÷ off"],
    );
    r.intro(format!(
        "The agent with every link detached but one hook's (so getpeername finds no stored client when \
         sock_ops is not there), {} alternating rounds of {} s at {PARALLEL} clients against a listener \
         without programs. Ratios: median [IQR] of the per-round ratios.",
        o.hook_rounds, o.round_secs
    ));
    let expect = REAL_CLIENT.ip().to_string();
    for (label, keep) in [
        ("sock_ops (toa_capture)", &["sock_ops"][..]),
        ("getpeername4 + getpeername6", &["inet4_getpeername", "inet6_getpeername"][..]),
        ("getsockopt", &["getsockopt"][..]),
        ("all four", &["sock_ops", "inet4_getpeername", "inet6_getpeername", "getsockopt"][..]),
    ] {
        let agent = lab.start_agent(false);
        let kept: Vec<String> = keep.iter().map(|k| format!("cgroup_{k}")).collect();
        let kept_ref: Vec<&str> = kept.iter().map(String::as_str).chain(keep.iter().copied()).collect();
        bpf::detach_links_of(lab.srv.path(), &kept_ref);
        let progs: Vec<_> = bpf::cgroup_programs(lab.srv.path());
        let mut server = lab.multi_server("rr-server", PORT, &[Target::On, Target::Off], &["--expect", &expect]);
        lab.rr_run(PORT, PARALLEL, 0.3, true);
        rr_report(&mut server);
        let (mut on, mut off): (Vec<Round>, Vec<Round>) = (Vec::new(), Vec::new());
        let (mut ns, mut runs, mut conns) = (0.0, 0.0, 0.0);
        for round in 0..o.hook_rounds {
            for k in 0..2 {
                let ti = (k + round) % 2;
                let before = Snapshot::take(&progs);
                let res = lab.rr_run(PORT + ti as u16, PARALLEL, o.round_secs, true);
                let accepted = rr_report(&mut server).get(ti).map_or(f64::NAN, |c| c.0);
                if ti == 0 {
                    for (_, n, c) in Snapshot::take(&progs).since(&before) {
                        ns += n as f64;
                        runs += c as f64;
                    }
                    conns += accepted;
                    on.push(res);
                } else {
                    off.push(res);
                }
            }
        }
        drop(server);
        agent.stop();
        let ratio =
            |f: fn(&Round) -> f64| Summary::of(&on.iter().zip(&off).map(|(a, b)| f(a) / f(b)).collect::<Vec<_>>());
        let (cps, cpu) = (ratio(Round::cps), ratio(Round::cg_us_per_conn));
        let attached: Vec<&str> = progs.iter().map(|p| p.name.as_str()).collect();
        r.row(vec![
            format!("{label}: {}", attached.join(", ")),
            format!("{:.0}", ns / conns),
            format!("{:.2}", runs / conns),
            cps.short(3),
            cpu.short(3),
        ]);
        let key = label.split_whitespace().next().unwrap_or(label).replace('+', "");
        r.key(&format!("hook_{key}_bpf_ns_per_conn"), format!("{:.1}", ns / conns));
        r.key(&format!("hook_{key}_cps_ratio"), cps.key(4));
        r.key(&format!("hook_{key}_cpu_ratio"), cpu.key(4));
    }
    drop(stats);
}
