//! Throughput and CPU time per connection, agent on against off, in many
//! short alternating rounds, with the spread. Not robust to other load on
//! the machine: the header says how loaded it was.

use crate::Options;
use crate::lab::{Lab, REAL_CLIENT, Round, Target, rr_report};
use crate::report::Report;
use crate::stats::Summary;

const PORT: u16 = 5001;

/// Rounds of each target at one number of clients.
struct Series {
    rounds: Vec<Round>,
}

impl Series {
    fn stat(&self, f: impl Fn(&Round) -> f64) -> Summary {
        Summary::of(&self.rounds.iter().map(f).collect::<Vec<_>>())
    }
}

/// One line of the table: label, key, the figure of a round, digits.
type Row = (&'static str, &'static str, fn(&Round) -> f64, usize);

/// Per-round ratio a/b of a figure.
fn ratios(a: &Series, b: &Series, f: impl Fn(&Round) -> f64) -> Summary {
    Summary::of(&a.rounds.iter().zip(&b.rounds).map(|(x, y)| f(x) / f(y)).collect::<Vec<_>>())
}

pub fn run(lab: &Lab, o: &Options, r: &mut Report) {
    let agent = lab.start_agent(false);
    let targets: Vec<Target> =
        if lab.has_floor() { vec![Target::On, Target::Off, Target::Floor] } else { vec![Target::On, Target::Off] };
    let expect = REAL_CLIENT.ip().to_string();
    let mut server = lab.multi_server("rr-server", PORT, &targets, &["--expect", &expect]);
    for (i, _) in targets.iter().enumerate() {
        lab.rr_run(PORT + i as u16, 4, 0.5, true);
    }
    rr_report(&mut server);
    r.section(
        "Throughput and CPU time per connection: agent on vs off",
        &["clients", "measure", "on", "off", "floor", "on ÷ off per round", "floor ÷ off"],
    );
    r.intro(format!(
        "{} rounds of {} s per number of clients, the order of on / off / floor rotating each round; every \
         connection carries the option. \"on\": listener in the agent's cgroup; \"off\": in a cgroup without \
         programs (same process, same moment); \"floor\": under programs that do nothing. Host CPU: busy \
         jiffies of /proc/stat (user+nice+system+irq+softirq, steal excluded) ÷ connections; cgroup CPU: \
         cpu.stat usage of the client and server cgroups ÷ connections. Median [IQR] (min–max, n). \
         Wall-clock figures: trust them only from a quiet machine (see the header's load).",
        o.rounds, o.round_secs
    ));
    let mut wrong = Vec::new();
    for &p in &o.parallel {
        let mut series: Vec<Series> = targets.iter().map(|_| Series { rounds: Vec::new() }).collect();
        for round in 0..o.rounds {
            for k in 0..targets.len() {
                let ti = (k + round) % targets.len();
                let res = lab.rr_run(PORT + ti as u16, p, o.round_secs, true);
                let counts = rr_report(&mut server);
                let (accepted, translated) = counts.get(ti).copied().unwrap_or((f64::NAN, f64::NAN));
                let want = if targets[ti] == Target::On { accepted } else { 0.0 };
                if translated != want || res.errors > 0.0 {
                    wrong.push(format!(
                        "{p} clients {}: {translated}/{accepted} translated, {} errors",
                        targets[ti].name(),
                        res.errors
                    ));
                }
                eprintln!(
                    "bench: cps p={p} round={round} {}: {:.0} conn/s, host {:.1} µs/conn, cgroups {:.1} µs/conn, steal {}",
                    targets[ti].name(),
                    res.cps(),
                    res.host_us_per_conn(),
                    res.cg_us_per_conn(),
                    res.steal
                );
                series[ti].rounds.push(res);
            }
        }
        let (on, off) = (&series[0], &series[1]);
        let floor = series.get(2);
        let rows: [Row; 3] = [
            ("conn/s", "cps", Round::cps, 0),
            ("host CPU µs/conn", "host_us", Round::host_us_per_conn, 1),
            ("cgroup CPU µs/conn", "cg_us", Round::cg_us_per_conn, 1),
        ];
        for (label, key, f, digits) in rows {
            let ratio = ratios(on, off, f);
            let fr = floor.map(|fl| ratios(fl, off, f));
            r.row(vec![
                p.to_string(),
                label.into(),
                on.stat(f).short(digits),
                off.stat(f).short(digits),
                floor.map_or("-".into(), |fl| fl.stat(f).short(digits)),
                ratio.show(3),
                fr.map_or("-".into(), |x| x.short(3)),
            ]);
            r.key(&format!("{key}_on_p{p}"), on.stat(f).key(2));
            r.key(&format!("{key}_off_p{p}"), off.stat(f).key(2));
            if let Some(fl) = floor {
                r.key(&format!("{key}_floor_p{p}"), fl.stat(f).key(2));
            }
            r.key(&format!("{key}_ratio_p{p}"), ratio.key(4));
        }
        let steal: f64 = series.iter().flat_map(|s| &s.rounds).map(|x| x.steal).sum();
        let busy: f64 = series.iter().flat_map(|s| &s.rounds).map(|x| x.busy + x.steal).sum();
        r.key(&format!("steal_share_p{p}"), format!("{:.4}", steal / busy.max(1.0)));
    }
    r.after(
        "Targets: on ÷ off ≥ 0.98 for conn/s and ≤ 1.02 for CPU time per connection, at 1, 4 and 32 clients. \
         A ratio's interquartile range straddling the target means this run cannot tell."
            .into(),
    );
    if !wrong.is_empty() {
        r.note(format!("cps: unexpected outcomes: {wrong:?}"));
    }
    drop(server);
    agent.stop();
}
