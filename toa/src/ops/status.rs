//! What is attached and pinned, for `toa status`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{
    ops::stats::Snapshot,
    receiver::{lock, pins::Inventory, programs::KernelPrograms},
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
    /// toa's pinned maps.
    pub maps: Vec<String>,
    /// toa's pinned links.
    pub links: Vec<LinkStatus>,
    /// Pins in the directory that are not toa's (path: what it is).
    pub not_toas: Vec<String>,
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
        let inventory = Inventory::read(pins, &KernelPrograms::read());
        let mut maps: Vec<String> = inventory.maps.iter().map(|(name, _, _)| name.to_string()).collect();
        maps.sort();
        let cgroup_root = system::cgroup2_root().ok();
        let mut links: Vec<LinkStatus> = inventory
            .links
            .iter()
            .filter(|l| !l.pending())
            .map(|l| LinkStatus {
                program: l.spec.name.to_string(),
                hook: l.spec.hook.attach_type().to_string(),
                cgroup_id: l.info.cgroup_id,
                cgroup: cgroup_root.as_deref().and_then(|r| system::find_cgroup(r, l.info.cgroup_id)),
            })
            .collect();
        let not_toas = inventory.not_toas().iter().map(|f| format!("{}: {}", f.path.display(), f.why)).collect();
        links.sort_by(|a, b| (a.cgroup_id, &a.program).cmp(&(b.cgroup_id, &b.program)));
        let counters = Snapshot::read_pinned(pins).ok().map(|s| s.to_json());
        Status {
            agent_running,
            agent_pid,
            pin_dir: pins.root().to_path_buf(),
            maps,
            links,
            not_toas,
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
        if !self.not_toas.is_empty() {
            out.push_str("not toa's (left alone):\n");
            for f in &self.not_toas {
                out.push_str(&format!("  {f}\n"));
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
