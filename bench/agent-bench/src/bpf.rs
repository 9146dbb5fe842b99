//! What the benchmark reads from and does to the kernel's BPF side: run-time
//! statistics, the programs attached to a cgroup, the debug per-callback
//! statistics of a running agent, and the "floor": programs that do nothing,
//! attached where the agent's would be, to measure what the hooks cost by
//! themselves.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// BPF run-time statistics, enabled while this lives (`BPF_ENABLE_STATS`;
/// the same switch as `kernel.bpf_stats_enabled`).
pub struct StatsOn {
    _fd: OwnedFd,
}

impl StatsOn {
    pub fn enable() -> io::Result<StatsOn> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }, BPF_STATS_RUN_TIME = 0.
        let attr = [0u32; 2];
        Ok(StatsOn { _fd: sys_bpf(BPF_ENABLE_STATS, &attr)? })
    }
}

/// bpf(2) returning a new descriptor.
fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid attribute block of the announced size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size_of::<T>() as u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn bpftool_json(args: &[&str]) -> Value {
    Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(Value::Null)
}

/// A program attached to a cgroup.
#[derive(Clone, Debug)]
pub struct Attached {
    pub id: u64,
    pub attach_type: String,
    pub name: String,
}

/// The programs attached to `cgroup` (directly), from bpftool.
pub fn cgroup_programs(cgroup: &Path) -> Vec<Attached> {
    let path = cgroup.to_string_lossy();
    bpftool_json(&["cgroup", "show", &path])
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some(Attached {
                        id: p["id"].as_u64()?,
                        attach_type: p["attach_type"].as_str()?.to_owned(),
                        name: p["name"].as_str().unwrap_or("").to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (run_time_ns, run_cnt) of a program.
pub fn run_stats(id: u64) -> (u64, u64) {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()]);
    (v["run_time_ns"].as_u64().unwrap_or(0), v["run_cnt"].as_u64().unwrap_or(0))
}

/// (xlated, jited) sizes in bytes and the map ids of a program.
pub fn prog_info(id: u64) -> (u64, u64, Vec<u64>) {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()]);
    let maps = v["map_ids"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
    (v["bytes_xlated"].as_u64().unwrap_or(0), v["bytes_jited"].as_u64().unwrap_or(0), maps)
}

/// Run statistics of every program attached to a cgroup, keyed by attach type.
#[derive(Clone, Debug, Default)]
pub struct Snapshot(pub Vec<(String, u64, u64)>);

impl Snapshot {
    pub fn take(progs: &[Attached]) -> Snapshot {
        Snapshot(
            progs
                .iter()
                .map(|p| {
                    let (ns, cnt) = run_stats(p.id);
                    (p.attach_type.clone(), ns, cnt)
                })
                .collect(),
        )
    }

    /// Per attach type: (ns, runs) since `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Vec<(String, u64, u64)> {
        self.0
            .iter()
            .map(|(t, ns, cnt)| {
                let (ns0, cnt0) = earlier.0.iter().find(|e| &e.0 == t).map_or((0, 0), |e| (e.1, e.2));
                (t.clone(), ns.saturating_sub(ns0), cnt.saturating_sub(cnt0))
            })
            .collect()
    }
}

/// The debug per-callback statistics of the program `prog_id` (its
/// `TOA_OP_STATS` map), summed over CPUs: (slot, calls, ns).
pub fn op_stats(prog_id: u64) -> Vec<(u32, u64, u64)> {
    let (_, _, maps) = prog_info(prog_id);
    let Some(map) = maps
        .iter()
        .find(|m| bpftool_json(&["map", "show", "id", &m.to_string()])["name"].as_str() == Some("TOA_OP_STATS"))
    else {
        return Vec::new();
    };
    let dump = bpftool_json(&["map", "dump", "id", &map.to_string()]);
    let mut out = Vec::new();
    // With BTF, bpftool adds the decoded key and values under "formatted".
    for entry in dump.as_array().into_iter().flatten().map(|e| &e["formatted"]) {
        let slot = entry["key"].as_u64().unwrap_or(u64::MAX) as u32;
        let (mut calls, mut ns) = (0, 0);
        for cpu in entry["values"].as_array().into_iter().flatten() {
            calls += cpu["value"]["calls"].as_u64().unwrap_or(0);
            ns += cpu["value"]["ns"].as_u64().unwrap_or(0);
        }
        if calls > 0 {
            out.push((slot, calls, ns));
        }
    }
    out
}

/// Detaches a link for good (`BPF_LINK_DETACH`, as `bpftool link detach`).
pub fn detach_links_of(cgroup: &Path, keep: &[&str]) -> usize {
    let links = bpftool_json(&["link", "show"]);
    let cgroup_id = std::fs::metadata(cgroup).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
    let mut n = 0;
    for l in links.as_array().into_iter().flatten() {
        let on_cgroup = l["cgroup_id"].as_u64() == Some(cgroup_id);
        let kind = l["attach_type"].as_str().unwrap_or("");
        if on_cgroup && !keep.contains(&kind) {
            let id = l["id"].as_u64().unwrap_or(0).to_string();
            if Command::new("bpftool").args(["link", "detach", "id", &id]).status().is_ok_and(|s| s.success()) {
                n += 1;
            }
        }
    }
    n
}

// --- the floor: programs that do nothing ------------------------------------

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

const PROG_TYPE_SOCK_OPS: u32 = 13;
const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const PROG_TYPE_CGROUP_SOCKOPT: u32 = 25;

const ATTACH_SOCK_OPS: u32 = 3;
const ATTACH_GETSOCKOPT: u32 = 21;
const ATTACH_INET4_GETPEERNAME: u32 = 29;
const ATTACH_INET6_GETPEERNAME: u32 = 30;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `r0 = imm`
const fn mov_r0(imm: i32) -> Insn {
    Insn { code: 0xb7, regs: 0, off: 0, imm }
}
/// `r2 = 0`
const MOV_R2_0: Insn = Insn { code: 0xb7, regs: 2, off: 0, imm: 0 };
/// `*(u32 *)(r1 + off) = r2`
const fn store_r2_at_r1(off: i16) -> Insn {
    Insn { code: 0x63, regs: 0x21, off, imm: 0 }
}
const EXIT: Insn = Insn { code: 0x95, regs: 0, off: 0, imm: 0 };
/// Offset of `optlen` in `struct bpf_sockopt`.
const SOCKOPT_OPTLEN: i16 = 32;

/// The `BPF_PROG_LOAD` attribute fields we set (the rest stays zero).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_LINK_CREATE` attribute fields we set.
#[repr(C)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _pad: [u64; 4],
}

fn load(name: &str, prog_type: u32, attach: u32, insns: &[Insn]) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    prog_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    let license = b"GPL\0";
    let attr = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name,
        prog_ifindex: 0,
        expected_attach_type: attach,
    };
    sys_bpf(BPF_PROG_LOAD, &attr)
}

fn link(prog: &OwnedFd, cgroup: &std::fs::File, attach_type: u32) -> io::Result<OwnedFd> {
    let attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        _pad: [0; 4],
    };
    sys_bpf(BPF_LINK_CREATE, &attr)
}

/// Programs that do nothing, attached to a cgroup at the receiver's four
/// hooks while this lives: a sock_ops and two getpeername programs that
/// return "carry on", and the cheapest getsockopt pass-through there is
/// (`optlen = 0`, so the kernel copies nothing back; return "allow").
pub struct Floor {
    _links: Vec<OwnedFd>,
    _progs: Vec<OwnedFd>,
}

impl Floor {
    pub fn attach(cgroup: &Path) -> io::Result<Floor> {
        let dir = std::fs::File::open(cgroup)?;
        let ok = [mov_r0(1), EXIT];
        let pass = [MOV_R2_0, store_r2_at_r1(SOCKOPT_OPTLEN), mov_r0(1), EXIT];
        let specs: [(&str, u32, u32, &[Insn]); 4] = [
            ("floor_sockops", PROG_TYPE_SOCK_OPS, ATTACH_SOCK_OPS, &ok),
            ("floor_peer4", PROG_TYPE_CGROUP_SOCK_ADDR, ATTACH_INET4_GETPEERNAME, &ok),
            ("floor_peer6", PROG_TYPE_CGROUP_SOCK_ADDR, ATTACH_INET6_GETPEERNAME, &ok),
            ("floor_sockopt", PROG_TYPE_CGROUP_SOCKOPT, ATTACH_GETSOCKOPT, &pass),
        ];
        let (mut progs, mut links) = (Vec::new(), Vec::new());
        for (name, prog_type, attach, insns) in specs {
            // sock_ops programs take no expected attach type.
            let expected = if prog_type == PROG_TYPE_SOCK_OPS { 0 } else { attach };
            let prog = load(name, prog_type, expected, insns)?;
            links.push(link(&prog, &dir, attach)?);
            progs.push(prog);
        }
        Ok(Floor { _links: links, _progs: progs })
    }
}
