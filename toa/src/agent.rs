//! The receiver: load, configure, attach and pin; detach on a clean stop.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::Array,
    programs::links::{FdLink, PinnedLink},
};
use toa_common::{Format, Formats, format::DEFAULT_FORMATS, maps};

use crate::{
    Error, Result, ebpf,
    lock::InstanceLock,
    paths::PinDir,
    programs::{self, ProgramSpec, RECEIVER},
    system,
};

/// What the agent is asked to do.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The cgroup to attach to; `None` means the cgroup v2 root (the whole host).
    pub cgroup: Option<PathBuf>,
    /// Where maps and links are pinned.
    pub pins: PinDir,
    /// Accepted option formats; empty means the defaults.
    pub formats: Vec<Format>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self { cgroup: None, pins: PinDir::default(), formats: DEFAULT_FORMATS.to_vec() }
    }
}

/// A running receiver: programs attached and pinned.
pub struct Agent {
    // Field order is drop order: links go before the maps' owner.
    links: Vec<(ProgramSpec, PinnedLink)>,
    _ebpf: Ebpf,
    pins: PinDir,
    cgroup: PathBuf,
    _lock: InstanceLock,
}

impl Agent {
    /// Checks the system, then loads, attaches and pins the receiver.
    ///
    /// On error nothing of this call stays attached or pinned (maps pinned
    /// by an earlier agent are left as they were).
    pub fn start(config: &AgentConfig) -> Result<Agent> {
        system::require_root()?;
        let cgroup = system::resolve_cgroup(config.cgroup.as_deref())?;
        system::require_btf()?;
        let lock = InstanceLock::acquire(&config.pins.lock_file())?;
        system::ensure_bpffs(config.pins.root())?;
        let pins = &config.pins;
        let created_root = !pins.root().exists();
        for dir in [pins.maps(), pins.links()] {
            fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        }
        let result = Self::load_and_attach(config, &cgroup);
        match result {
            Ok((ebpf, links)) => {
                tracing::info!(cgroup = %cgroup.display(), pins = %pins.root().display(), "agent ready");
                Ok(Agent { links, _ebpf: ebpf, pins: pins.clone(), cgroup, _lock: lock })
            }
            Err(e) => {
                if created_root {
                    remove_pins(pins);
                }
                Err(e)
            }
        }
    }

    fn load_and_attach(config: &AgentConfig, cgroup: &Path) -> Result<(Ebpf, Vec<(ProgramSpec, PinnedLink)>)> {
        let mut ebpf = ebpf::load_pinned(&config.pins)?;
        write_formats(&mut ebpf, &config.formats)?;
        let cgroup_dir = File::open(cgroup).map_err(Error::io("opening", cgroup))?;
        // Attach everything first: if one fails, the links dropped here detach.
        let mut attached: Vec<(ProgramSpec, FdLink)> = Vec::new();
        for spec in RECEIVER {
            let link = programs::attach(&mut ebpf, &spec, &cgroup_dir)?;
            tracing::debug!(program = spec.name, hook = spec.hook.attach_type(), "attached");
            attached.push((spec, link));
        }
        // Then replace any pins a previous agent left, so the hooks never go empty.
        let mut pinned = Vec::new();
        for (spec, link) in attached {
            let path = config.pins.link(spec.name);
            if path.exists() {
                fs::remove_file(&path).map_err(Error::io("replacing stale pin", &path))?;
                tracing::info!(path = %path.display(), "replaced the link of a previous agent");
            }
            match link.pin(&path) {
                Ok(p) => pinned.push((spec, p)),
                Err(source) => {
                    for (_, p) in pinned {
                        let _ = p.unpin();
                    }
                    return Err(Error::Pin { path, source });
                }
            }
        }
        Ok((ebpf, pinned))
    }

    /// The cgroup the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The attached programs.
    pub fn programs(&self) -> impl Iterator<Item = &ProgramSpec> {
        self.links.iter().map(|(s, _)| s)
    }

    /// Detaches every program and removes every pin.
    pub fn stop(self) -> Result<()> {
        let Agent { links, _ebpf, pins, .. } = self;
        let mut first_error = None;
        for (spec, link) in links {
            match link.unpin() {
                Ok(fd_link) => drop(fd_link),
                Err(e) => {
                    tracing::warn!(program = spec.name, error = %e, "could not unpin link");
                    first_error.get_or_insert(Error::io("unpinning", pins.link(spec.name))(e));
                }
            }
        }
        drop(_ebpf);
        remove_pins(&pins);
        tracing::info!("agent stopped; programs detached");
        first_error.map_or(Ok(()), Err)
    }
}

fn write_formats(ebpf: &mut Ebpf, formats: &[Format]) -> Result<()> {
    let table = Formats::from_list(if formats.is_empty() { &DEFAULT_FORMATS } else { formats });
    let map = ebpf.map_mut(maps::CONFIG).ok_or(Error::MissingMap(maps::CONFIG))?;
    let mut config: Array<_, Formats> =
        Array::try_from(map).map_err(|source| Error::Map { name: maps::CONFIG, source })?;
    config.set(0, table, 0).map_err(|source| Error::Map { name: maps::CONFIG, source })
}

/// Removes the pin directory's contents we create, then the directory.
fn remove_pins(pins: &PinDir) {
    for name in ebpf::PINNED_MAPS {
        let _ = fs::remove_file(pins.map(name));
    }
    for spec in RECEIVER {
        let _ = fs::remove_file(pins.link(spec.name));
    }
    for dir in [pins.maps(), pins.links(), pins.root().to_path_buf()] {
        let _ = fs::remove_dir(dir);
    }
}
