//! What is attached and pinned, for `toa status`.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    ops::stats::Snapshot,
    receiver::{lock, programs::RECEIVER},
    sys::{host as system, paths::PinDir},
};

/// One pinned link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// Program name.
    pub program: String,
    /// Attach type.
    pub hook: String,
    /// cgroup id.
    pub cgroup_id: u64,
    /// cgroup path, when it still exists.
    pub cgroup: Option<PathBuf>,
}

/// The whole picture.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Whether an agent holds the pin directory's lock.
    pub agent_running: bool,
    /// Its pid, when known.
    pub agent_pid: Option<u32>,
    /// The pin directory.
    pub pin_dir: PathBuf,
    /// Pinned maps.
    pub maps: Vec<String>,
    /// Pinned links.
    pub links: Vec<LinkStatus>,
    /// Kernel facts.
    pub kernel: KernelFacts,
    /// Counter totals, when the counters are pinned.
    pub counters: Option<serde_json::Value>,
}

/// Kernel facts relevant to toa.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFacts {
    /// `uname -r`.
    pub release: String,
    /// Whether /sys/kernel/btf/vmlinux exists.
    pub btf: bool,
    /// The cgroup v2 mount point.
    pub cgroup2: Option<PathBuf>,
    /// Whether the pin directory's file system is bpffs.
    pub bpffs: bool,
}

impl KernelFacts {
    /// Reads them.
    fn read(pins: &PinDir) -> KernelFacts {
        let release = system::kernel_release();
        let parent = pins.root().ancestors().find(|p| p.exists()).unwrap_or(Path::new("/sys/fs/bpf"));
        KernelFacts {
            release,
            btf: Path::new(crate::sys::paths::KERNEL_BTF).exists(),
            cgroup2: system::cgroup2_root().ok(),
            bpffs: system::is_bpffs(parent),
        }
    }
}

impl Status {
    /// Gathers the status of the agent owning `pins`.
    pub fn read(pins: &PinDir) -> Status {
        let holder = lock::holder(pins);
        let agent_running = holder.is_some();
        let agent_pid = holder.and_then(|h| h.pid);
        let mut maps: Vec<String> = list(&pins.maps());
        maps.sort();
        let cgroup_root = system::cgroup2_root().ok();
        let mut links: Vec<LinkStatus> = list(&pins.links())
            .into_iter()
            .filter_map(|name| {
                let (program, id) = name.split_once('@')?;
                let cgroup_id: u64 = id.parse().ok()?;
                let hook =
                    RECEIVER.iter().find(|s| s.name == program).map_or("unknown", |s| s.hook.attach_type()).to_string();
                let cgroup = cgroup_root.as_deref().and_then(|r| find_cgroup(r, cgroup_id));
                Some(LinkStatus { program: program.to_string(), hook, cgroup_id, cgroup })
            })
            .collect();
        links.sort_by(|a, b| (a.cgroup_id, &a.program).cmp(&(b.cgroup_id, &b.program)));
        let counters = Snapshot::read_pinned(pins).ok().map(|s| s.to_json());
        Status {
            agent_running,
            agent_pid,
            pin_dir: pins.root().to_path_buf(),
            maps,
            links,
            kernel: KernelFacts::read(pins),
            counters,
        }
    }

    /// Human-readable form.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match (self.agent_running, self.agent_pid) {
            (true, Some(pid)) => out.push_str(&format!("agent:    running (pid {pid})\n")),
            (true, None) => out.push_str("agent:    running\n"),
            (false, _) if !self.links.is_empty() => out
                .push_str("agent:    not running; pinned programs stay attached (persist, or the agent was killed)\n"),
            (false, _) => out.push_str("agent:    not running\n"),
        }
        out.push_str(&format!(
            "pins:     {} ({} maps, {} links)\n",
            self.pin_dir.display(),
            self.maps.len(),
            self.links.len()
        ));
        if !self.links.is_empty() {
            out.push_str("attached:\n");
            for l in &self.links {
                let where_ = l.cgroup.as_ref().map_or(format!("cgroup id {} (gone)", l.cgroup_id), |p| {
                    format!("{} (id {})", p.display(), l.cgroup_id)
                });
                out.push_str(&format!("  {:<18} {:<26} {where_}\n", l.program, l.hook));
            }
        }
        let k = &self.kernel;
        out.push_str(&format!(
            "kernel:   {} — BTF {}, cgroup v2 {}, bpffs {}\n",
            k.release,
            if k.btf { "yes" } else { "NO" },
            k.cgroup2.as_ref().map_or("NOT MOUNTED".to_string(), |p| format!("at {}", p.display())),
            if k.bpffs { "yes" } else { "NO" },
        ));
        if let Some(c) = &self.counters {
            let pick =
                ["syn_recv_sock_toa", "syn_recv_sock_no_toa", "getname_toa_ok", "toa_malformed", "toa_untrusted"];
            let parts: Vec<String> = pick.iter().map(|n| format!("{n}={}", c[*n])).collect();
            out.push_str(&format!("counters: {}\n", parts.join(" ")));
        }
        out
    }
}

fn list(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The cgroup directory with id (inode) `id` under `root`, searched breadth-first.
fn find_cgroup(root: &Path, id: u64) -> Option<PathBuf> {
    let mut queue = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = queue.pop() {
        seen += 1;
        if seen > 100_000 {
            return None;
        }
        if fs::metadata(&dir).map(|m| m.ino()).ok() == Some(id) {
            return Some(dir);
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            queue.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    None
}
