//! The receiver: load, configure, attach and pin; re-apply on reload; detach
//! on a clean stop unless asked to persist.
//!
//! A configuration comes into force all at once or not at all. It is
//! checked first (limits, cgroups, no other toa instance on them); then its
//! settings are written into the spare slot of every settings map (see
//! [`settings`]), the links it adds are attached and pinned under pending
//! names, and one word switches the programs to the new slot. Only then do
//! the new links take their names (`links/<program>@<cgroup id>`, a rename
//! that replaces the pin of an older link) and the links no longer wanted
//! go. A failure before the switch undoes what this configuration added
//! and leaves the one in force as it was; at no moment is a hook empty or
//! a program attached twice for longer than the switch.
//!
//! At start the pin directory of a previous agent is adopted: its maps (so
//! no stored address is lost) and its links (replaced by this agent's).
//! Settings maps of the earlier single-slot layout are replaced; pins that
//! are not toa's are left alone, and a map that is not toa's under a toa
//! map's name is refused.

use std::{
    collections::{BTreeMap, HashSet},
    fs::{self, File},
    os::{fd::AsFd as _, unix::fs::MetadataExt},
    path::PathBuf,
};

use aya::{Ebpf, programs::links::PinnedLink};
use toa_common::{
    Format, Formats,
    config::{CAPTURE_DATA, CAPTURE_SYN, PORT_FILTER, PortSet, ReceiverConfig, TRUST_ALL, other_slot},
    format::DEFAULT_FORMATS,
    trust::MAX_TRUSTED,
};

use crate::{
    Error, Result,
    config::{Config, Prefix},
    receiver::{
        ebpf, instances,
        lock::InstanceLock,
        pins::{Foreign, Inventory, MapVerdict, PENDING, PINNED_MAPS},
        programs::{self, KernelPrograms, ProgramSpec, RECEIVER},
        settings::{self, Values},
    },
    sys::{bpf, host as system, paths::PinDir},
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

    /// Checks what the programs have room for, before anything is attached
    /// or written.
    pub fn check(&self) -> Result<()> {
        if self.trusted.len() > MAX_TRUSTED as usize {
            return Err(Error::TooMany {
                key: "trusted",
                what: "prefixes",
                count: self.trusted.len(),
                max: MAX_TRUSTED as usize,
            });
        }
        Ok(())
    }

    /// The settings as the programs read them.
    fn values(&self) -> Values {
        let mut ports = PortSet::EMPTY;
        for p in &self.ports {
            ports.insert(*p);
        }
        Values { config: self.receiver_config(), ports, trusted: self.trusted.clone() }
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
        ReceiverConfig { formats, flags, slot: 0 }
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

/// One of the agent's links: pinned, and the program it attaches.
struct Held {
    link: PinnedLink,
    prog_id: u32,
}

/// A running receiver: programs attached and pinned.
pub struct Agent {
    // Field order is drop order: links go before the maps' owner.
    links: BTreeMap<String, Held>,
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
    /// Everything that can be refused (limits, cgroups, another agent on the
    /// pin directory, another toa instance on a cgroup, a pin that is not
    /// toa's) is refused before anything is attached. On a later error
    /// nothing of this call stays attached, and pins it created are removed.
    pub fn start(config: &AgentConfig) -> Result<Agent> {
        system::require_root()?;
        config.check()?;
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
        let own: HashSet<u32> = inventory.links.iter().map(|l| l.info.prog_id).collect();
        check_alone(&scopes, pins, &own, &kernel)?;
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
                    links.insert(link.name, Held { link: pinned, prog_id: link.info.prog_id });
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

    /// Re-applies a (changed) configuration, all or nothing: on error the
    /// configuration in force stays exactly as it was. The pin directory
    /// cannot change.
    pub fn apply(&mut self, config: &AgentConfig) -> Result<()> {
        if config.pins != self.pins {
            return Err(Error::Invalid("pin_dir cannot change while the agent runs; restart it".into()));
        }
        config.check()?;
        let scopes = resolve_scopes(&config.cgroups)?;
        let mut own: HashSet<u32> = self.links.values().map(|h| h.prog_id).collect();
        for spec in &RECEIVER {
            if let Ok(id) = self.prog_id(spec) {
                own.insert(id);
            }
        }
        check_alone(&scopes, &self.pins, &own, &KernelPrograms::read())?;
        self.apply_with(config, scopes)
    }

    fn apply_with(&mut self, config: &AgentConfig, scopes: Vec<Scope>) -> Result<()> {
        let spare = other_slot(settings::active(&mut self.ebpf)?);
        // 1. The settings, beside the ones in force.
        if let Err(e) = settings::write(&mut self.ebpf, spare, &config.values()) {
            self.clear_spare(spare);
            return Err(e);
        }
        // 2. The links this configuration adds, attached and pinned under
        //    pending names. Dropping `staged` on error detaches them.
        let staged = match self.stage_links(config, &scopes) {
            Ok(staged) => staged,
            Err(e) => {
                self.clear_spare(spare);
                return Err(e);
            }
        };
        // 3. The switch.
        if let Err(e) = settings::activate(&mut self.ebpf, spare) {
            drop(staged);
            self.clear_spare(spare);
            return Err(e);
        }
        // 4. The new links take their names; links no longer wanted go.
        self.commit_links(staged);
        let wanted = wanted_links(config, &scopes, &self.unavailable);
        let stale: Vec<String> = self.links.keys().filter(|k| !wanted.contains(k)).cloned().collect();
        for name in stale {
            if let Some(held) = self.links.remove(&name) {
                tracing::info!(link = %name, "detaching a link no longer configured");
                let _ = held.link.unpin();
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

    /// Empties the spare slot after a failed apply (it is not in force).
    fn clear_spare(&mut self, spare: u32) {
        if let Err(e) = settings::clear(&mut self.ebpf, spare) {
            tracing::warn!(error = %e, slot = spare, "could not empty the spare settings slot (not in force)");
        }
    }

    /// The id of the loaded program `spec`.
    fn prog_id(&self, spec: &ProgramSpec) -> Result<u32> {
        let program = self.ebpf.program(spec.name).ok_or(Error::MissingProgram(spec.name))?;
        Ok(program.info().map_err(|source| Error::Program { name: spec.name, source })?.id())
    }

    /// Attaches and pins (under a pending name) every wanted link that is
    /// not already one of this agent's program on that cgroup.
    fn stage_links(&mut self, config: &AgentConfig, scopes: &[Scope]) -> Result<Staged> {
        let mut staged = Staged { links: Vec::new() };
        for scope in scopes {
            let dir = File::open(&scope.path).map_err(Error::io("opening", &scope.path))?;
            for spec in config.programs().filter(|s| !self.unavailable.contains(&s.name)) {
                let name = link_name(spec, scope);
                let prog_id = self.prog_id(spec)?;
                if self.links.get(&name).is_some_and(|held| held.prog_id == prog_id) {
                    continue;
                }
                let link = programs::attach_link(&mut self.ebpf, spec, &dir).map_err(|e| Error::Attach {
                    name: spec.name,
                    cgroup: scope.path.clone(),
                    source: Box::new(e),
                })?;
                let pending = self.pins.links().join(format!("{name}{PENDING}"));
                if let Some(old) = self.links.remove(&format!("{name}{PENDING}")) {
                    // Left by an agent killed while applying: ours, replaced now.
                    let _ = old.link.unpin();
                } else if pending.exists() {
                    fs::remove_file(&pending).map_err(Error::io("replacing a stale pin", &pending))?;
                }
                let link = link.pin(&pending)?;
                staged.links.push((name, pending, link, prog_id));
            }
        }
        Ok(staged)
    }

    /// Gives staged links their names, replacing (and so detaching) the
    /// links held under those names before.
    fn commit_links(&mut self, mut staged: Staged) {
        for (name, pending, link, prog_id) in std::mem::take(&mut staged.links) {
            let path = self.pins.links().join(&name);
            match fs::rename(&pending, &path) {
                Ok(()) => {
                    drop(link);
                    match PinnedLink::from_pin(&path) {
                        Ok(pinned) => {
                            // The old link of that name lost its pin to the
                            // rename; dropping its descriptor detaches it.
                            self.links.insert(name, Held { link: pinned, prog_id });
                        }
                        Err(e) => tracing::error!(pin = %path.display(), error = %e, "cannot reopen a pinned link"),
                    }
                }
                Err(e) => {
                    // In force, but under its pending name: keep both until
                    // the next apply or stop.
                    tracing::error!(pin = %pending.display(), error = %e, "cannot rename a pinned link");
                    self.links.insert(format!("{name}{PENDING}"), Held { link, prog_id });
                }
            }
        }
    }

    /// The attached programs.
    pub fn programs(&self) -> impl Iterator<Item = &'static ProgramSpec> + '_ {
        self.config.programs().filter(|s| !self.unavailable.contains(&s.name))
    }

    /// The checks a start makes before touching anything: privileges and the
    /// configured limits and cgroups (so a caller can refuse early, with the same error).
    pub fn preflight(config: &AgentConfig) -> Result<()> {
        system::require_root()?;
        config.check()?;
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
        for (name, held) in links {
            if let Err(e) = held.link.unpin() {
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

/// Links attached and pinned under pending names, not in force yet; dropped
/// unused, they are unpinned and so detached.
struct Staged {
    links: Vec<(String, PathBuf, PinnedLink, u32)>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (_, _, link, _) in self.links.drain(..) {
            let _ = link.unpin();
        }
    }
}

/// Refuses cgroups another toa instance's receiver programs are attached to.
fn check_alone(scopes: &[Scope], pins: &PinDir, own: &HashSet<u32>, kernel: &KernelPrograms) -> Result<()> {
    let found: Vec<instances::Found> =
        instances::pinned_links(kernel, &[pins.root()]).into_iter().filter(|f| f.pin_dir != pins.root()).collect();
    for scope in scopes {
        if let Some(others) = instances::others_on(&scope.path, scope.id, own, kernel, &found)? {
            return Err(Error::OtherInstance(others.refusal()));
        }
    }
    Ok(())
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
        // Detached first: once its pin is gone the kernel releases the link
        // only later, and "detached" must be true when it is said.
        if let Ok(fd) = bpf::obj_get(&link.path)
            && let Err(e) = bpf::link_detach(fd.as_fd())
        {
            tracing::debug!(pin = %link.path.display(), error = %e, "detaching a link before removing its pin");
        }
        if fs::remove_file(&link.path).is_ok() && !link.pending() {
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
