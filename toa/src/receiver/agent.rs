//! The receiver: load, configure, attach and pin; re-apply on reload; detach
//! on a clean stop unless asked to persist.
//!
//! Links are pinned as `links/<program>@<cgroup id>`. Applying a
//! configuration attaches the new links first and only then replaces the
//! pins, so the hooks never go empty and nothing is attached twice for long.
//! Pins no longer wanted are removed, which detaches them.
//!
//! At start the pin directory of a previous agent is adopted: its maps (so
//! no stored address is lost) and its links (replaced by this agent's).
//! Pins that are not toa's are left alone, and a map that is not toa's under
//! a toa map's name is refused.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, MapData, lpm_trie::Key},
    programs::links::PinnedLink,
};
use toa_common::{
    Format, Formats,
    config::{CAPTURE_DATA, CAPTURE_SYN, PORT_FILTER, PortSet, ReceiverConfig, TRUST_ALL},
    format::DEFAULT_FORMATS,
    maps,
};

use crate::{
    Error, Result,
    config::{Config, Prefix},
    receiver::{
        ebpf,
        lock::InstanceLock,
        pins::{Foreign, Inventory, MapVerdict, PINNED_MAPS},
        programs::{self, KernelPrograms, ProgramSpec, RECEIVER},
    },
    sys::{host as system, paths::PinDir},
};

/// What the agent is asked to do.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// cgroups to attach to; empty means the cgroup v2 root (the whole host).
    pub cgroups: Vec<PathBuf>,
    /// Where maps and links are pinned.
    pub pins: PinDir,
    /// Accepted option formats; empty means the defaults.
    pub formats: Vec<Format>,
    /// Take the option from the SYN too.
    pub capture_syn: bool,
    /// Look at packets after the ACK, up to the first data packet.
    pub capture_data: bool,
    /// Attach the getsockopt program.
    pub getsockopt: bool,
    /// Trusted forwarder prefixes; empty trusts every sender.
    pub trusted: Vec<Prefix>,
    /// Local ports to act on; empty means all.
    pub ports: Vec<u16>,
    /// Keep programs attached after a clean stop.
    pub persist: bool,
}

impl Default for AgentConfig {
    /// The configuration file's defaults.
    fn default() -> Self {
        AgentConfig::from_config(&Config::default())
    }
}

impl AgentConfig {
    /// The agent part of a configuration file.
    pub fn from_config(c: &Config) -> AgentConfig {
        AgentConfig {
            cgroups: c.cgroups.clone(),
            pins: PinDir::new(&c.pin_dir),
            formats: c.formats.clone(),
            capture_syn: c.capture_syn,
            capture_data: c.capture_data,
            getsockopt: c.getsockopt,
            trusted: c.trusted.clone(),
            ports: c.ports.clone(),
            persist: c.persist,
        }
    }

    /// The programs this configuration enables (the declarative table, filtered).
    pub fn programs(&self) -> impl Iterator<Item = &'static ProgramSpec> + '_ {
        RECEIVER.iter().filter(|spec| spec.hook != programs::Hook::GetSockopt || self.getsockopt)
    }

    fn receiver_config(&self) -> ReceiverConfig {
        let formats = Formats::from_list(if self.formats.is_empty() { &DEFAULT_FORMATS } else { &self.formats });
        let mut flags = 0;
        if self.capture_syn {
            flags |= CAPTURE_SYN;
        }
        if self.capture_data {
            flags |= CAPTURE_DATA;
        }
        if self.trusted.is_empty() {
            flags |= TRUST_ALL;
        }
        if !self.ports.is_empty() {
            flags |= PORT_FILTER;
        }
        ReceiverConfig { formats, flags, _pad: 0 }
    }
}

/// One attached cgroup.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Scope {
    /// The cgroup directory.
    pub path: PathBuf,
    /// Its cgroup id (the directory's inode number).
    pub id: u64,
}

/// A running receiver: programs attached and pinned.
pub struct Agent {
    // Field order is drop order: links go before the maps' owner.
    links: BTreeMap<String, PinnedLink>,
    ebpf: Ebpf,
    config: AgentConfig,
    pins: PinDir,
    scopes: Vec<Scope>,
    /// Programs this kernel could not load (optional ones only).
    unavailable: Vec<&'static str>,
    _lock: Option<InstanceLock>,
}

impl Agent {
    /// Checks the system and the configuration, then loads, configures,
    /// attaches and pins the receiver.
    ///
    /// Everything that can be refused (cgroups, another agent on the pin
    /// directory, a pin that is not toa's) is refused before anything is
    /// attached. On a later error nothing of this call stays attached, and
    /// pins it created are removed.
    pub fn start(config: &AgentConfig) -> Result<Agent> {
        system::require_root()?;
        let scopes = resolve_scopes(&config.cgroups)?;
        system::require_btf()?;
        let pins = config.pins.clone();
        system::ensure_bpffs(pins.root())?;
        let created_root = !pins.root().exists();
        fs::create_dir_all(pins.root()).map_err(Error::io("creating", pins.root()))?;
        let lock = InstanceLock::acquire(&pins)?;
        let had: Vec<&str> = PINNED_MAPS.into_iter().filter(|m| pins.map(m).exists()).collect();
        let started = Agent::start_locked(config, &pins, scopes);
        let mut agent = match started {
            Ok(agent) => agent,
            Err(e) => {
                if created_root {
                    remove_toa_pins(&pins);
                } else {
                    // Pins of an earlier agent stay as they were; the maps this call pinned go.
                    for map in PINNED_MAPS.into_iter().filter(|m| !had.contains(m)) {
                        let _ = fs::remove_file(pins.map(map));
                    }
                    for dir in [pins.maps(), pins.links()] {
                        let _ = fs::remove_dir(dir);
                    }
                }
                return Err(e);
            }
        };
        agent._lock = Some(lock);
        if config.trusted.is_empty() {
            tracing::warn!(
                "no trusted forwarders configured: options from any sender are honoured (set `trusted` to the forwarders' prefixes)"
            );
        }
        tracing::info!(
            cgroups = ?agent.scopes.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>(),
            pins = %pins.root().display(),
            "agent ready"
        );
        Ok(agent)
    }

    fn start_locked(config: &AgentConfig, pins: &PinDir, scopes: Vec<Scope>) -> Result<Agent> {
        let kernel = KernelPrograms::read();
        let inventory = Inventory::read(pins, &kernel);
        if let Some(Foreign { path, why }) = inventory.impostors.first() {
            return Err(Error::ForeignPin { path: path.clone(), why: why.clone() });
        }
        let wanted = wanted_links(config, &scopes, &[]);
        if let Some(f) = inventory
            .foreign
            .iter()
            .find(|f| f.path.parent() == Some(&pins.links()) && wanted.contains(&file_name(&f.path)))
        {
            return Err(Error::ForeignPin { path: f.path.clone(), why: f.why.clone() });
        }
        for f in &inventory.foreign {
            tracing::warn!(pin = %f.path.display(), "leaving what is not toa's: {}", f.why);
        }
        for (name, path, verdict) in &inventory.maps {
            if let MapVerdict::Earlier(what) = verdict {
                tracing::warn!(map = name, pin = %path.display(), "replacing {what}");
                fs::remove_file(path).map_err(Error::io("removing", path))?;
            }
        }
        for dir in [pins.maps(), pins.links()] {
            fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        }
        let mut ebpf = ebpf::load_pinned(pins)?;
        let mut unavailable = Vec::new();
        for spec in &RECEIVER {
            match programs::load(&mut ebpf, spec) {
                Ok(()) => {}
                // An optional program is an extra (getpeername()/accept()
                // work without it): degrade and say so, as `toa doctor` does.
                Err(e) if spec.optional => {
                    tracing::warn!(program = spec.name, error = %e, "this kernel cannot {}; running without it", spec.role);
                    unavailable.push(spec.name);
                }
                Err(e) => return Err(e),
            }
        }
        let mut links = BTreeMap::new();
        for link in inventory.links {
            match PinnedLink::from_pin(&link.path) {
                Ok(pinned) => {
                    links.insert(link.name, pinned);
                }
                Err(e) => tracing::warn!(pin = %link.path.display(), error = %e, "ignoring an unreadable link pin"),
            }
        }
        let mut agent = Agent {
            links,
            ebpf,
            config: config.clone(),
            pins: pins.clone(),
            scopes: Vec::new(),
            unavailable,
            _lock: None,
        };
        agent.apply_with(config, scopes)?;
        Ok(agent)
    }

    /// Re-applies a (changed) configuration: settings maps first, then links;
    /// links no longer wanted are detached. The pin directory cannot change.
    pub fn apply(&mut self, config: &AgentConfig) -> Result<()> {
        if config.pins != self.pins {
            return Err(Error::Invalid("pin_dir cannot change while the agent runs; restart it".into()));
        }
        let scopes = resolve_scopes(&config.cgroups)?;
        self.apply_with(config, scopes)
    }

    fn apply_with(&mut self, config: &AgentConfig, scopes: Vec<Scope>) -> Result<()> {
        write_settings(&mut self.ebpf, config)?;
        // Attach every wanted link first; dropping them on error detaches them.
        let mut fresh = Vec::new();
        for scope in &scopes {
            let dir = File::open(&scope.path).map_err(Error::io("opening", &scope.path))?;
            for spec in config.programs().filter(|s| !self.unavailable.contains(&s.name)) {
                let link = programs::attach_link(&mut self.ebpf, spec, &dir)?;
                fresh.push((link_name(spec, scope), link));
            }
        }
        // Then swap pins: the old link of the same name goes after the new one is in place.
        for (name, link) in fresh {
            let path = self.pins.links().join(&name);
            if let Some(old) = self.links.remove(&name) {
                let _ = old.unpin();
            } else if path.exists() {
                fs::remove_file(&path).map_err(Error::io("replacing stale pin", &path))?;
            }
            let pinned = link.pin(&path)?;
            self.links.insert(name, pinned);
        }
        // Finally drop links that are no longer wanted.
        let wanted = wanted_links(config, &scopes, &self.unavailable);
        let stale: Vec<String> = self.links.keys().filter(|k| !wanted.contains(k)).cloned().collect();
        for name in stale {
            if let Some(link) = self.links.remove(&name) {
                tracing::info!(link = %name, "detaching a link no longer configured");
                let _ = link.unpin();
            }
        }
        self.config = config.clone();
        self.scopes = scopes;
        Ok(())
    }

    /// The attached cgroups.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// The configuration in force.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The loaded object (for programs run beside the attached ones).
    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The attached programs.
    pub fn programs(&self) -> impl Iterator<Item = &'static ProgramSpec> + '_ {
        self.config.programs().filter(|s| !self.unavailable.contains(&s.name))
    }

    /// The checks a start makes before touching anything: privileges and the
    /// configured cgroups (so a caller can refuse early, with the same error).
    pub fn preflight(config: &AgentConfig) -> Result<()> {
        system::require_root()?;
        resolve_scopes(&config.cgroups).map(drop)
    }

    /// Stops but leaves every program attached and pinned, whatever `persist`
    /// says, for the next agent to adopt (a restart: no gap).
    pub fn stop_attached(mut self) -> Result<()> {
        self.config.persist = true;
        self.stop()
    }

    /// The pin directory (canonical).
    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Stops: detaches every program and removes toa's pins, unless the
    /// configuration says to persist (then everything stays attached and
    /// pinned for the next agent).
    pub fn stop(self) -> Result<()> {
        let Agent { links, ebpf, config, pins, _lock, .. } = self;
        if config.persist {
            drop(links);
            drop(ebpf);
            tracing::info!(pins = %pins.root().display(), "agent stopped; programs stay attached (persist = true)");
            return Ok(());
        }
        let mut first_error = None;
        for (name, link) in links {
            if let Err(e) = link.unpin() {
                tracing::warn!(link = %name, error = %e, "could not unpin link");
                first_error.get_or_insert(Error::io("unpinning", pins.links().join(&name))(e));
            }
        }
        drop(ebpf);
        for f in remove_toa_pins(&pins).left {
            tracing::info!(pin = %f.path.display(), "left what is not toa's: {}", f.why);
        }
        tracing::info!("agent stopped; programs detached");
        drop(_lock);
        first_error.map_or(Ok(()), Err)
    }
}

/// What `toa detach` did.
#[derive(Debug, Default)]
pub struct Detached {
    /// Links removed (so detached).
    pub links: usize,
    /// Maps unpinned.
    pub maps: usize,
    /// Pins that are not toa's, left where they are.
    pub left: Vec<Foreign>,
}

/// Removes toa's links and maps from a pin directory (detaching the
/// programs), then the directory if nothing else is in it; what is not
/// toa's stays and is listed. Refuses while an agent runs there.
pub fn detach(pins: &PinDir) -> Result<Detached> {
    system::require_root()?;
    if !pins.root().exists() {
        return Ok(Detached::default());
    }
    let _lock = InstanceLock::acquire(pins).map_err(|e| match e {
        Error::AlreadyRunning { holder, pins } => Error::AgentRunning { holder, pins },
        other => other,
    })?;
    Ok(remove_toa_pins(pins))
}

/// Removes toa's pins (links first), then the directories that are empty.
fn remove_toa_pins(pins: &PinDir) -> Detached {
    let inventory = Inventory::read(pins, &KernelPrograms::read());
    let mut done = Detached { left: inventory.not_toas().into_iter().cloned().collect(), ..Detached::default() };
    for link in &inventory.links {
        if fs::remove_file(&link.path).is_ok() {
            done.links += 1;
        }
    }
    for (_, path, _) in &inventory.maps {
        if fs::remove_file(path).is_ok() {
            done.maps += 1;
        }
    }
    for dir in [pins.maps(), pins.links(), pins.root().to_path_buf()] {
        let _ = fs::remove_dir(dir);
    }
    done
}

/// The link names a configuration wants.
fn wanted_links(config: &AgentConfig, scopes: &[Scope], unavailable: &[&str]) -> Vec<String> {
    scopes
        .iter()
        .flat_map(|scope| {
            config.programs().filter(|s| !unavailable.contains(&s.name)).map(move |spec| link_name(spec, scope))
        })
        .collect()
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn resolve_scopes(cgroups: &[PathBuf]) -> Result<Vec<Scope>> {
    let paths = if cgroups.is_empty() {
        vec![system::resolve_cgroup(None)?]
    } else {
        cgroups.iter().map(|c| system::resolve_cgroup(Some(c))).collect::<Result<Vec<_>>>()?
    };
    let mut scopes: Vec<Scope> = Vec::new();
    for path in paths {
        let id = fs::metadata(&path).map_err(Error::io("reading", &path))?.ino();
        if !scopes.iter().any(|s| s.id == id) {
            scopes.push(Scope { path, id });
        }
    }
    Ok(scopes)
}

fn link_name(spec: &ProgramSpec, scope: &Scope) -> String {
    format!("{}@{}", spec.name, scope.id)
}

fn write_settings(ebpf: &mut Ebpf, config: &AgentConfig) -> Result<()> {
    let map_err = |name| move |source| Error::Map { name, source };
    // Trusted prefixes and ports first, the flags that enable them last.
    {
        let map = ebpf.map_mut(maps::TRUSTED).ok_or(Error::MissingMap(maps::TRUSTED))?;
        let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(map).map_err(map_err(maps::TRUSTED))?;
        let wanted: Vec<(u32, [u8; 16])> = config
            .trusted
            .iter()
            .map(|p| {
                let (k, l) = p.trie_key();
                (l, k)
            })
            .collect();
        let present: Vec<Key<[u8; 16]>> = trie.keys().filter_map(|k| k.ok()).collect();
        for (len, data) in &wanted {
            trie.insert(&Key::new(*len, *data), 1, 0).map_err(map_err(maps::TRUSTED))?;
        }
        for key in present {
            if !wanted.contains(&(key.prefix_len(), key.data())) {
                trie.remove(&key).map_err(map_err(maps::TRUSTED))?;
            }
        }
    }
    {
        let mut set = PortSet::EMPTY;
        for p in &config.ports {
            set.insert(*p);
        }
        let map = ebpf.map_mut(maps::PORTS).ok_or(Error::MissingMap(maps::PORTS))?;
        let mut ports: Array<_, PortSet> = Array::try_from(map).map_err(map_err(maps::PORTS))?;
        ports.set(0, set, 0).map_err(map_err(maps::PORTS))?;
    }
    let map = ebpf.map_mut(maps::CONFIG).ok_or(Error::MissingMap(maps::CONFIG))?;
    let mut settings: Array<_, ReceiverConfig> = Array::try_from(map).map_err(map_err(maps::CONFIG))?;
    settings.set(0, config.receiver_config(), 0).map_err(map_err(maps::CONFIG))
}
