//! The receiver: load, configure, attach and pin; re-apply on reload; detach
//! on a clean stop unless asked to persist.
//!
//! Links are pinned as `links/<program>@<cgroup id>`. Applying a
//! configuration attaches the new links first and only then replaces the
//! pins, so the hooks never go empty and nothing is attached twice for long.
//! Pins no longer wanted are removed, which detaches them.

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
        programs::{self, ProgramSpec, RECEIVER},
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
    scopes: Vec<Scope>,
    /// Programs this kernel could not load (optional ones only).
    unavailable: Vec<&'static str>,
    _lock: InstanceLock,
}

impl Agent {
    /// Checks the system, then loads, configures, attaches and pins the receiver.
    ///
    /// On error nothing of this call stays attached, and pins it created are
    /// removed (pins of an earlier agent are left as they were).
    pub fn start(config: &AgentConfig) -> Result<Agent> {
        system::require_root()?;
        let scopes = resolve_scopes(&config.cgroups)?;
        system::require_btf()?;
        let pins = &config.pins;
        system::ensure_bpffs(pins.root())?;
        let created_root = !pins.root().exists();
        fs::create_dir_all(pins.root()).map_err(Error::io("creating", pins.root()))?;
        let lock = InstanceLock::acquire(pins)?;
        for dir in [pins.maps(), pins.links()] {
            fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        }
        let started = (|| -> Result<Agent> {
            drop_incompatible_maps(pins);
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
            let mut agent = Agent {
                links: BTreeMap::new(),
                ebpf,
                config: config.clone(),
                scopes: Vec::new(),
                unavailable,
                _lock: lock,
            };
            agent.links = existing_link_pins(pins);
            agent.apply_with(config, scopes)?;
            Ok(agent)
        })();
        if started.is_err() && created_root {
            remove_all_pins(pins);
        }
        let agent = started?;
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

    /// Re-applies a (changed) configuration: settings maps first, then links;
    /// links no longer wanted are detached. The pin directory cannot change.
    pub fn apply(&mut self, config: &AgentConfig) -> Result<()> {
        if config.pins.root() != self.config.pins.root() {
            return Err(Error::Invalid("pin_dir cannot change while the agent runs; restart it".into()));
        }
        let scopes = resolve_scopes(&config.cgroups)?;
        self.apply_with(config, scopes)
    }

    fn apply_with(&mut self, config: &AgentConfig, scopes: Vec<Scope>) -> Result<()> {
        write_settings(&mut self.ebpf, config)?;
        let pins = config.pins.clone();
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
            let path = pins.links().join(&name);
            if let Some(old) = self.links.remove(&name) {
                let _ = old.unpin();
            } else if path.exists() {
                fs::remove_file(&path).map_err(Error::io("replacing stale pin", &path))?;
            }
            let pinned = link.pin(&path)?;
            self.links.insert(name, pinned);
        }
        // Finally drop links that are no longer wanted.
        let wanted: Vec<String> =
            scopes.iter().flat_map(|scope| config.programs().map(move |spec| link_name(spec, scope))).collect();
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

    /// Stops: detaches every program and removes every pin, unless the
    /// configuration says to persist (then everything stays attached and
    /// pinned for the next agent).
    pub fn stop(self) -> Result<()> {
        let Agent { links, ebpf, config, .. } = self;
        if config.persist {
            drop(links);
            drop(ebpf);
            tracing::info!(pins = %config.pins.root().display(), "agent stopped; programs stay attached (persist = true)");
            return Ok(());
        }
        let mut first_error = None;
        for (name, link) in links {
            if let Err(e) = link.unpin() {
                tracing::warn!(link = %name, error = %e, "could not unpin link");
                first_error.get_or_insert(Error::io("unpinning", config.pins.links().join(&name))(e));
            }
        }
        drop(ebpf);
        remove_all_pins(&config.pins);
        tracing::info!("agent stopped; programs detached");
        first_error.map_or(Ok(()), Err)
    }
}

/// Removes every link and map pin of a pin directory (detaching the
/// programs), then the directory. Refuses while an agent runs there.
pub fn detach(pins: &PinDir) -> Result<usize> {
    system::require_root()?;
    if !pins.root().exists() {
        return Ok(0);
    }
    // Held while removing, so that no agent starts on the directory meanwhile.
    let _lock = InstanceLock::acquire(pins).map_err(|e| match e {
        Error::AlreadyRunning { holder, pins } => Error::AgentRunning { holder, pins },
        other => other,
    })?;
    let links = existing_link_pins(pins);
    let n = links.len();
    for (_, link) in links {
        let _ = link.unpin();
    }
    remove_all_pins(pins);
    Ok(n)
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

/// The link pins present in the pin directory (left by an earlier agent).
fn existing_link_pins(pins: &PinDir) -> BTreeMap<String, PinnedLink> {
    let mut found = BTreeMap::new();
    let Ok(entries) = fs::read_dir(pins.links()) else { return found };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        match PinnedLink::from_pin(entry.path()) {
            Ok(link) => {
                found.insert(name, link);
            }
            Err(e) => tracing::warn!(pin = %entry.path().display(), error = %e, "ignoring an unreadable link pin"),
        }
    }
    found
}

/// Removes pinned maps whose shape does not match this version's (they would
/// fail to load); stored addresses in an incompatible map are lost.
fn drop_incompatible_maps(pins: &PinDir) {
    for name in ebpf::PINNED_MAPS {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let shape = aya::maps::MapInfo::from_pin(&path).map(|i| (i.key_size(), i.value_size(), i.max_entries()));
        if shape.ok() != ebpf::expected_shape(name) {
            tracing::warn!(map = name, "replacing a pinned map from an incompatible version");
            let _ = fs::remove_file(&path);
        }
    }
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

/// Removes the pin directory's contents we create, then the directory.
fn remove_all_pins(pins: &PinDir) {
    if let Ok(entries) = fs::read_dir(pins.links()) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
    for name in ebpf::PINNED_MAPS {
        let _ = fs::remove_file(pins.map(name));
    }
    for dir in [pins.maps(), pins.links(), pins.root().to_path_buf()] {
        let _ = fs::remove_dir(dir);
    }
}
