//! N concurrent translated connections, each with its own real client:
//! every one checked, memory sampled at each tenth for linearity, and
//! everything released after close.

use std::time::{Duration, Instant};

use integration_test::process::Stream;

use crate::hold::{counts, omem, open_many, per_proc, wait_until};
use crate::lab::{Lab, meminfo};
use crate::report::Report;

const PORT: u16 = 5008;
/// Below this much available memory the run stops opening connections and
/// reports how far it got: on a shared machine the kernel would otherwise
/// reclaim from, or kill, other people's processes.
const MEM_RESERVE: u64 = 3 << 30;

/// Raises a sysctl to at least `min` while this lives, then restores it.
struct AtLeast {
    path: &'static str,
    old: Option<u64>,
}

impl AtLeast {
    fn new(path: &'static str, min: u64) -> AtLeast {
        let cur: Option<u64> = std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok());
        match cur {
            Some(c) if c < min => {
                eprintln!("bench: raising {path} from {c} to {min} for the run");
                let _ = std::fs::write(path, min.to_string());
                AtLeast { path, old: Some(c) }
            }
            _ => AtLeast { path, old: None },
        }
    }
}

impl Drop for AtLeast {
    fn drop(&mut self) {
        if let Some(v) = self.old {
            let _ = std::fs::write(self.path, v.to_string());
        }
    }
}

pub fn run(lab: &Lab, n: u32, r: &mut Report) {
    lab.drop_injector();
    let nf = f64::from(n);
    // Two descriptors per connection (client and server end) on this host.
    let _files = AtLeast::new("/proc/sys/fs/file-max", 2 * u64::from(n) + 262_144);
    let avail0 = meminfo("MemAvailable");
    let agent = lab.start_agent(false);
    std::thread::sleep(Duration::from_millis(500));
    let (k0, s0) = (lab.kmem(), meminfo("Slab"));
    let t0 = Instant::now();
    let (mut servers, mut clients) = open_many(lab, PORT, n, "indexed", true);
    let procs = servers.len();
    // Sample memory while connections come up, for linearity.
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut next_mark = 0.1;
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut low_memory = None;
    let c = loop {
        let c = counts(&mut servers);
        if c[1] + c[2] >= nf * next_mark {
            let k = lab.kmem() as f64 - k0 as f64;
            samples.push((c[1] + c[2], k));
            eprintln!("bench: scale {} verified, kmem +{k:.0} ({:.1} B/conn)", c[1] + c[2], k / (c[1] + c[2]));
            next_mark += 0.1;
        }
        let finished = clients
            .iter_mut()
            .all(|p| p.try_wait().is_some() || p.lines_so_far(Stream::Stdout).iter().any(|l| l.starts_with("open ")));
        let avail = meminfo("MemAvailable");
        if avail < MEM_RESERVE {
            low_memory = Some((c[1] + c[2], avail));
        }
        if c[1] + c[2] >= nf || Instant::now() > deadline || finished || low_memory.is_some() {
            // The last handshakes may still be on their way to the servers.
            std::thread::sleep(Duration::from_millis(1000));
            break counts(&mut servers);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let up = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let (k1, s1, avail1) = (lab.kmem(), meminfo("Slab"), meminfo("MemAvailable"));
    let (om, socks) = omem(lab, PORT);
    let open_lines: Vec<String> =
        clients.iter().flat_map(|c| c.lines_so_far(Stream::Stdout)).filter(|l| l.starts_with("open ")).collect();
    let errs: Vec<String> = clients.iter().flat_map(|c| c.lines_so_far(Stream::Stderr)).take(10).collect();
    let live = agent.counter("toa_entry_alloc") - agent.counter("toa_entry_free");
    for c in &mut clients {
        c.close_stdin();
    }
    let t1 = Instant::now();
    let closed = wait_until(&mut servers, "closed", Duration::from_secs(1200), |c| c[3] >= c[0]);
    let down = t1.elapsed().as_secs_f64();
    // Released entries are counted when the kernel frees the sockets.
    let mut settled = (0, 0);
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        settled = (agent.counter("toa_entry_alloc"), agent.counter("toa_entry_free"));
        if settled.0 == settled.1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let k2 = lab.kmem();
    drop(clients);
    drop(servers);
    agent.stop();
    let per = (k1 as f64 - k0 as f64) / c[1].max(1.0);
    let lin: Vec<String> = samples.iter().map(|(n, k)| format!("{:.0}:{:.1}", n, k / n)).collect();
    r.section(
        &format!("Scale: {n} concurrent translated connections, each its own real client"),
        &["measure", "value"],
    );
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").unwrap_or_default();
    r.intro(format!(
        "{procs} client and {procs} server processes (≤ {} connections each: RLIMIT_NOFILE {} here, fs.nr_open \
         {}; a hard limit below fs.nr_open means raising it was refused, which takes CAP_SYS_RESOURCE), every \
         server checking getpeername() of each connection against the client its index names.",
        per_proc(),
        lim.rlim_cur,
        nr_open.trim()
    ));
    r.row(vec!["verified / wrong".into(), format!("{} / {}", c[1], c[2])]);
    // Each client says `open N errors E` when it has made its connections.
    let field = |l: &String, k: usize| l.split_whitespace().nth(k).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let (opened, open_errors) = open_lines.iter().fold((0, 0), |(o, e), l| (o + field(l, 1), e + field(l, 3)));
    r.row(vec![
        "time to open / to close".into(),
        format!(
            "{up:.1} s / {down:.1} s ({} of {procs} clients done: {opened} opened, {open_errors} errors)",
            open_lines.len()
        ),
    ]);
    r.row(vec!["stored entries while open (alloc − free)".into(), live.to_string()]);
    r.row(vec!["agent memcg kernel memory per connection".into(), format!("{per:.1} B")]);
    r.row(vec!["B/conn at each tenth (linearity)".into(), lin.join(" ")]);
    r.row(vec![
        "Slab per connection (machine-wide: both socket ends and everything else)".into(),
        format!("{:.0} B", (s1 as f64 - s0 as f64) / c[1].max(1.0)),
    ]);
    r.row(vec![
        "MemAvailable used per connection (both ends)".into(),
        format!("{:.0} B", (avail0 as f64 - avail1 as f64) / c[1].max(1.0)),
    ]);
    r.row(vec![
        "after close: agent memcg, entries alloc / free".into(),
        format!("{:+} B, {} / {}", k2 as i64 - k0 as i64, settled.0, settled.1),
    ]);
    r.key("scale_n", n);
    r.key("scale_procs", procs);
    r.key("scale_verified", c[1]);
    r.key("scale_wrong", c[2]);
    r.key("scale_closed", closed[3]);
    r.key("scale_up_secs", format!("{up:.1}"));
    r.key("scale_bytes_per_conn", format!("{per:.1}"));
    r.key("scale_slab_per_conn", format!("{:.1}", (s1 as f64 - s0 as f64) / c[1].max(1.0)));
    r.key("scale_memavailable_per_conn", format!("{:.1}", (avail0 as f64 - avail1 as f64) / c[1].max(1.0)));
    r.key("scale_omem_avg", format!("{om:.1}"));
    r.key("scale_omem_sockets", socks);
    r.key("scale_kmem_after_close", k2 as i64 - k0 as i64);
    r.key("scale_entries_alloc", settled.0);
    r.key("scale_entries_free", settled.1);
    r.key("scale_linearity", lin.join(","));
    if !errs.is_empty() {
        r.note(format!("scale: client errors: {errs:?}"));
    }
    if let Some((got, avail)) = low_memory {
        r.note(format!(
            "scale: stopped opening at {got} connections of {n}: MemAvailable fell to {} MiB (reserve {} MiB)",
            avail >> 20,
            MEM_RESERVE >> 20
        ));
        r.key("scale_stopped_low_memory_at", got);
    }
}
