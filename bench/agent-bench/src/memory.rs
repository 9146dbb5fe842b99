//! Kernel memory per open translated connection: what the agent's memory
//! cgroup is charged (socket storage is charged to the map owner's memory
//! cgroup), the slab caches that grew, the socket's `omem`, and the sizes
//! of the kernel structures behind it (from the kernel's BTF).

use std::process::Command;
use std::time::Duration;

use integration_test::process::Stream;

use crate::Options;
use crate::hold::{omem, open_many, wait_until};
use crate::lab::{Lab, REAL_CLIENT, meminfo, slab_bytes};
use crate::report::Report;

const PORT: u16 = 5003;

/// One run's memory figures.
struct Run {
    verified: f64,
    bad: f64,
    kmem: [u64; 3],
    slab: Vec<(String, i64)>,
    omem: f64,
    sockets: usize,
    alloc: u64,
    free: u64,
}

fn one(lab: &Lab, n: u32, agent_on: bool) -> Run {
    let agent = agent_on.then(|| lab.start_agent(false));
    std::thread::sleep(Duration::from_millis(500));
    let (k0, s0) = (lab.kmem(), slab_bytes());
    let expect = if agent_on { format!("fixed:{REAL_CLIENT}") } else { "any".to_owned() };
    let (mut servers, mut clients) = open_many(lab, PORT, n, &expect, false);
    for c in &mut clients {
        c.wait_for_line(Stream::Stdout, |l| l.starts_with("open "), Duration::from_secs(900));
    }
    let nf = f64::from(n);
    let c = wait_until(&mut servers, "verified", Duration::from_secs(300), |c| c[1] + c[2] >= nf);
    std::thread::sleep(Duration::from_millis(500));
    let (k1, s1) = (lab.kmem(), slab_bytes());
    let (om, sockets) = omem(lab, PORT);
    for c in &mut clients {
        c.close_stdin();
    }
    for c in &mut clients {
        c.wait_for_line(Stream::Stdout, |l| l == "closed", Duration::from_secs(300));
    }
    wait_until(&mut servers, "closed", Duration::from_secs(300), |c| c[3] >= nf);
    std::thread::sleep(Duration::from_millis(1500));
    let k2 = lab.kmem();
    let (alloc, free) = agent.as_ref().map_or((0, 0), |a| (a.counter("toa_entry_alloc"), a.counter("toa_entry_free")));
    let slab = s1
        .iter()
        .map(|(name, active, size)| {
            let before = s0.iter().find(|b| &b.0 == name).map_or(0, |b| b.1 * b.2);
            (format!("{name} ({size} B)"), (active * size) as i64 - before as i64)
        })
        .collect();
    if let Some(a) = agent {
        a.stop();
    }
    Run { verified: c[1], bad: c[2], kmem: [k0, k1, k2], slab, omem: om, sockets, alloc, free }
}

/// The size of a kernel struct, from the kernel's BTF.
pub fn kernel_struct_size(btf_dump: &str, name: &str) -> Option<u64> {
    let pat = format!("STRUCT '{name}' size=");
    btf_dump.lines().find_map(|l| l.split_once(&pat)?.1.split_whitespace().next()?.parse().ok())
}

pub fn btf_dump() -> String {
    Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn run(lab: &Lab, o: &Options, r: &mut Report) {
    let n = o.conns;
    let nf = f64::from(n);
    let (on, off) = (one(lab, n, true), one(lab, n, false));
    r.section(
        &format!("Kernel memory per open translated connection ({n} connections)"),
        &["measure", "agent on", "agent off", "per connection"],
    );
    let memcg_per = (on.kmem[1] as f64 - on.kmem[0] as f64) / nf;
    if lab.memcg.is_some() {
        r.row(vec![
            "agent's memory cgroup, kernel memory".into(),
            format!("+{} B", on.kmem[1] - on.kmem[0].min(on.kmem[1])),
            "-".into(),
            format!("{memcg_per:.0} B ({:+.0} B left after close)", (on.kmem[2] as f64 - on.kmem[0] as f64) / nf),
        ]);
        r.key("bytes_per_conn", format!("{memcg_per:.0}"));
        r.key("bytes_per_conn_after_close", format!("{:.1}", (on.kmem[2] as f64 - on.kmem[0] as f64) / nf));
    } else {
        r.note("memory: no memory cgroup for the agent (neither cgroup v1 memory nor a v2 memory controller)".into());
    }
    r.row(vec![
        "socket omem (ss -tm), per socket".into(),
        format!("{:.0} B", on.omem),
        format!("{:.0} B", off.omem),
        format!("{:+.0} B ({} sockets)", on.omem - off.omem, on.sockets),
    ]);
    r.key("bytes_per_conn_omem", format!("{:.0}", on.omem - off.omem));
    // kmalloc caches that grew by at least 16 bytes per connection more with
    // the agent (other caches move with whatever else the machine does).
    let mut grew: Vec<(String, f64, f64)> = on
        .slab
        .iter()
        .map(|(name, d)| {
            let d_off = off.slab.iter().find(|x| &x.0 == name).map_or(0, |x| x.1);
            (name.clone(), *d as f64 / nf, d_off as f64 / nf)
        })
        .filter(|(name, a, b)| name.starts_with("kmalloc") && a - b >= 16.0)
        .collect();
    grew.sort_by(|a, b| (b.1 - b.2).total_cmp(&(a.1 - a.2)));
    for (name, a, b) in grew.iter().take(6) {
        r.row(vec![
            format!("slab {name}, machine-wide"),
            format!("{a:.0} B/conn"),
            format!("{b:.0} B/conn"),
            format!("{:+.0} B", a - b),
        ]);
    }
    r.row(vec![
        "entries stored / released (toa_entry_alloc / toa_entry_free)".into(),
        format!("{} / {}", on.alloc, on.free),
        "-".into(),
        if on.alloc == on.free { "all released".into() } else { "NOT all released".into() },
    ]);
    let dump = btf_dump();
    let structs: Vec<String> = ["bpf_local_storage", "bpf_local_storage_elem", "bpf_local_storage_data", "htab_elem"]
        .iter()
        .filter_map(|s| kernel_struct_size(&dump, s).map(|z| format!("{s} {z} B")))
        .collect();
    r.after(format!(
        "Kernel structures (BTF of the running kernel): {}; record {} B. An element is \
         `bpf_local_storage_elem` + the record, rounded up to its kmalloc size class; the socket's first \
         storage also allocates the `bpf_local_storage` (one per socket, shared by all its storage maps).",
        structs.join(", "),
        size_of::<toa_common::PeerRecord>()
    ));
    r.after("Goal: ≤ 128 B per connection, or the kernel's floor for the chosen storage.".into());
    r.key("memory_entries_alloc", on.alloc);
    r.key("memory_entries_free", on.free);
    r.key("memory_meminfo_slab_end", meminfo("Slab"));
    if on.bad > 0.0 || off.bad > 0.0 || on.verified < nf {
        r.note(format!("memory: verified {}/{n} with the agent, {} wrong", on.verified, on.bad));
    }
}
