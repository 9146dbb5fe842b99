//! Many concurrent connections: hold-servers that keep and check them,
//! open-clients that make them (several processes of each when one process
//! cannot hold that many descriptors).

use std::io::Write as _;
use std::time::{Duration, Instant};

use integration_test::process::{Spawned, Stream, spawn_with_stdin};

use crate::lab::{Lab, READY, parse_kv};

/// Connections per process: one file descriptor each, below
/// `RLIMIT_NOFILE` (raised to `fs.nr_open` at start, which needs
/// CAP_SYS_RESOURCE), with room for the reuseport spread across server
/// processes, and at most 256k so that large runs use several processes.
pub fn per_proc() -> u32 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let n = lim.rlim_cur.min(1 << 20) as u32;
    (n.saturating_sub(256) / 10 * 9).clamp(1000, 1 << 18)
}

/// Opens `n` connections to hold-servers on `port` (in the agent's cgroup),
/// each server checking `getpeername()` against `expect`; with `inject`
/// every connection carries its own real client. Returns (servers, clients).
pub fn open_many(lab: &Lab, port: u16, n: u32, expect: &str, inject: bool) -> (Vec<Spawned>, Vec<Spawned>) {
    let per = per_proc();
    let procs = n.div_ceil(per).max(1);
    let p = port.to_string();
    let reuse = if procs > 1 { "1" } else { "0" };
    let mut servers: Vec<Spawned> = (0..procs)
        .map(|_| {
            spawn_with_stdin(lab.server_cmd(
                lab.srv.path(),
                "hold-server",
                &["--port", &p, "--expect", expect, "--reuseport", reuse],
            ))
        })
        .collect();
    for s in &mut servers {
        s.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
    }
    let cg = lab.cli.path().to_string_lossy().into_owned();
    let clients = (0..procs)
        .map(|i| {
            let base = i * per;
            let count = per.min(n - base);
            let mut args: Vec<String> = ["--dst", &lab.dst(port), "--n", &count.to_string()]
                .into_iter()
                .chain(["--base", &base.to_string(), "--window", "256", "--srcs", &lab.srcs_arg()])
                .map(String::from)
                .collect();
            if inject {
                args.extend(["--inject".to_owned(), cg.clone()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            spawn_with_stdin(lab.client_cmd("open-client", &args, true))
        })
        .collect();
    (servers, clients)
}

/// Sums the hold-servers' counters: (accepted, verified, bad, closed).
pub fn counts(servers: &mut [Spawned]) -> [f64; 4] {
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

pub fn wait_until(
    servers: &mut [Spawned],
    what: &str,
    timeout: Duration,
    done: impl Fn(&[f64; 4]) -> bool,
) -> [f64; 4] {
    let deadline = Instant::now() + timeout;
    loop {
        let c = counts(servers);
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
pub fn omem(lab: &Lab, port: u16) -> (f64, usize) {
    let out = lab.pair.srv.output(&["ss", "-tmnH", "state", "established", &format!("( sport = :{port} )")]);
    let vals: Vec<f64> = out
        .split("skmem:(")
        .skip(1)
        .filter_map(|s| s.split([',', ')']).find_map(|f| f.strip_prefix('o')).and_then(|v| v.parse().ok()))
        .collect();
    let n = vals.len();
    (vals.iter().sum::<f64>() / n.max(1) as f64, n)
}
