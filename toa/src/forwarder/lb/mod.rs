//! `toa lb`: a packet-level FullNAT forwarder in eBPF that inserts the
//! client's address as a TCP option — what LVS FullNAT and DPVS do, on a
//! stock kernel.
//!
//! Per packet, at tc ingress of every forwarding interface
//! (`toa-ebpf/src/lb`): a client's packet to a virtual service gets the
//! backend its Maglev table names as destination and one of the forwarder's
//! local addresses and ports as source; the backend's replies are
//! translated back. The option goes into the handshake's final ACK and the
//! client's packets up to the backend's first acknowledgement of data; the
//! backend's SYN-ACK has its MSS lowered by the option length. User space
//! loads (or adopts what an earlier process pinned), fills the tables
//! ([`tables`]), attaches, checks the backends' health, serves counters and
//! reclaims idle flows ([`service`]), and reloads on SIGHUP.

mod datapath;
mod segmenter;
mod service;
mod settings;
mod tables;

use std::{
    ffi::CStr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

pub use datapath::LbPins;
pub use settings::{DEFAULT_STATS_SOCKET, Flags, ServiceSettings, Settings, own_addresses};
use toa_common::lb::maps;

use self::{
    datapath::Datapath,
    segmenter::Segmenter,
    service::{Background, Counters, FlowMaps, Shared, lock},
    tables::{Layout, Tables},
};
use crate::{
    Error, Result,
    config::{Config, lb::LbSection},
    ops::metrics::{MetricsServer, Reply},
    receiver::lock::InstanceLock,
    sys::{host, notify::ServiceManager, signals::TerminationSignals},
};

/// Services the Maglev map holds without a restart (more services than
/// this need one, if the first configuration had fewer).
const RESERVED_SERVICES: u32 = 16;

/// Where `toa lb`'s settings come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A configuration file's `[lb]` section (SIGHUP reads it again).
    File(PathBuf),
    /// The command line's flags.
    Flags(Box<LbSection>),
}

/// What the command line says besides the services.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--pin-dir`.
    pub pin_dir: Option<PathBuf>,
    /// `--stats-socket`.
    pub stats_socket: Option<PathBuf>,
}

impl Source {
    /// The `[lb]` section, with the overrides applied and checked.
    pub fn section(&self, o: &Overrides) -> Result<LbSection> {
        let mut s = match self {
            Source::File(path) => {
                let c = Config::load(path)?;
                if c.lb.services.is_empty() {
                    return Err(Error::Config {
                        path: path.clone(),
                        message: "no [[lb.service]]: give at least one service for `toa lb`".into(),
                        line: None,
                    });
                }
                c.lb
            }
            Source::Flags(s) => (**s).clone(),
        };
        if let Some(p) = &o.pin_dir {
            s.pin_dir = p.clone();
        }
        if let Some(p) = &o.stats_socket {
            s.stats_socket = p.clone();
        }
        Ok(s)
    }
}

/// Every non-loopback interface of this network namespace (from
/// `if_nameindex`, which, unlike `/sys/class/net`, always shows the
/// caller's network namespace).
fn all_interfaces() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array ending with a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            if name != "lo" && !name.starts_with("tlb") {
                names.push(name);
            }
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

/// Forwarding must be on: the data path's FIB lookup refuses to route otherwise.
fn check_forwarding(v4: bool, v6: bool) -> Result<()> {
    let on = |p: &str| std::fs::read_to_string(p).map(|s| s.trim() == "1").unwrap_or(false);
    if v4 && !on("/proc/sys/net/ipv4/ip_forward") {
        return Err(Error::Invalid(
            "IPv4 forwarding is off in this network namespace; the forwarder's FIB lookups need it: sysctl -w net.ipv4.ip_forward=1".into(),
        ));
    }
    if v6 && !on("/proc/sys/net/ipv6/conf/all/forwarding") {
        return Err(Error::Invalid(
            "IPv6 forwarding is off in this network namespace; the forwarder's FIB lookups need it: sysctl -w net.ipv6.conf.all.forwarding=1".into(),
        ));
    }
    Ok(())
}

/// The interfaces to forward on, each checked to exist.
fn interfaces(s: &Settings) -> Result<Vec<String>> {
    let ifaces = if s.section.interfaces.is_empty() { all_interfaces() } else { s.section.interfaces.clone() };
    if ifaces.is_empty() {
        return Err(Error::Invalid("no interface to forward on in this network namespace (give --iface IF)".into()));
    }
    for i in &ifaces {
        if segmenter::ifindex(i).is_none() {
            return Err(Error::Invalid(format!("no interface `{i}` in this network namespace (see `ip link`)")));
        }
    }
    Ok(ifaces)
}

/// Checks what needs the system: interfaces, forwarding, the local ports
/// against the host's ephemeral range (a warning).
fn check_system(s: &Settings) -> Result<Vec<String>> {
    let ifaces = interfaces(s)?;
    let v4 = s.services.iter().any(|v| v.listen.is_ipv4() || v.local4.is_some());
    let v6 = s.services.iter().any(|v| v.listen.is_ipv6() || v.local6.is_some());
    check_forwarding(v4, v6)?;
    if s.services.iter().any(|v| v.listen.is_ipv6() && v.local4.is_some()) {
        return Err(Error::Invalid(
            "an IPv6 service with IPv4 backends (NAT64) is not supported by this version's data path; give IPv6 backends"
                .into(),
        ));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let mut it = text.split_whitespace().filter_map(|w| w.parse::<u32>().ok());
        if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
            let p = s.ports();
            if (p.lo as u32) <= hi && lo <= p.hi as u32 {
                tracing::warn!(
                    local_ports = %format!("{}-{}", p.lo, p.hi),
                    ephemeral = %format!("{lo}-{hi}"),
                    "the local ports overlap this host's ephemeral ports (net.ipv4.ip_local_port_range): the host's own connections from a local address could take a port a flow needs; set local_ports outside it"
                );
            }
        }
    }
    Ok(ifaces)
}

/// A running forwarder (between start and stop).
struct Running {
    dp: Datapath,
    seg: Option<Segmenter>,
    shared: Arc<Mutex<Shared>>,
    background: Option<Background>,
    metrics: Option<MetricsServer>,
    ifaces: Vec<String>,
    _lock: InstanceLock,
}

fn table_entries(section: &LbSection) -> u32 {
    (section.services.len() as u32).max(RESERVED_SERVICES).saturating_mul(section.table_size)
}

impl Running {
    /// Loads, fills, attaches. On error nothing of this call stays
    /// attached: pins and a segmenter it created are removed, those an
    /// earlier forwarder left are left as they were (its data path goes on).
    fn start(s: Settings) -> Result<Running> {
        let ifaces = check_system(&s)?;
        let pins = LbPins::new(&s.section.pin_dir);
        host::ensure_bpffs(pins.root())?;
        // One forwarder per pin directory: the lock is on the directory itself.
        std::fs::create_dir_all(pins.root()).map_err(Error::io("creating", pins.root()))?;
        let lock_ = InstanceLock::acquire(&crate::sys::paths::PinDir::new(pins.root()))?;
        let fresh = !pins.has_maps();
        let started = (|| {
            let mut dp = Datapath::load(&pins, table_entries(&s.section))?;
            let seg =
                if s.section.segmenter { Some(Segmenter::create(&segmenter::name_for(pins.root()))?) } else { None };
            let indices = seg.as_ref().map(Segmenter::indices).transpose()?;
            let mut tables = Tables::new(&mut |name| dp.take_map(name))?;
            tables.configure(indices, s.section.timeouts.to_datapath(), s.section.table_size)?;
            let counters = Counters {
                counters: aya::maps::PerCpuArray::try_from(dp.take_map(maps::COUNTERS)?)
                    .map_err(|source| Error::Map { name: maps::COUNTERS, source })?,
                backends: aya::maps::PerCpuArray::try_from(dp.take_map(maps::BACKEND_STATS)?)
                    .map_err(|source| Error::Map { name: maps::BACKEND_STATS, source })?,
            };
            let flows = FlowMaps {
                flows: aya::maps::HashMap::try_from(dp.take_map(maps::FLOWS)?)
                    .map_err(|source| Error::Map { name: maps::FLOWS, source })?,
                reverse: aya::maps::HashMap::try_from(dp.take_map(maps::REVERSE)?)
                    .map_err(|source| Error::Map { name: maps::REVERSE, source })?,
            };
            let down = service::first_checks(&s);
            let layout = Layout::new(&s, None)?;
            let mut shared = Shared { settings: s.clone(), layout, tables, health: Default::default(), counters };
            if !dp.adopted_maps {
                for b in shared.layout.backends.clone() {
                    shared.counters.clear_backend(b.slot);
                }
            }
            shared.apply(&|a| !down.contains(a))?;
            let shared = Arc::new(Mutex::new(shared));
            let background = Background::start(s.stats_socket(), Arc::clone(&shared), flows)?;
            let metrics = match s.section.metrics_listen.0 {
                Some(addr) => Some(metrics_server(addr, Arc::clone(&shared))?),
                None => None,
            };
            if let Some(seg) = &seg {
                dp.attach(&seg.recv)?;
            }
            let mut adopted = 0;
            for i in &ifaces {
                adopted += dp.attach(i)? as usize;
            }
            for old in pins.linked_interfaces() {
                if !ifaces.contains(&old) && seg.as_ref().is_none_or(|g| g.recv != old) {
                    tracing::info!(interface = %old, "detaching from an interface no longer configured");
                    let _ = datapath::detach_leftover(&pins, &old);
                }
            }
            if adopted > 0 || dp.adopted_maps {
                tracing::info!(
                    adopted_links = adopted,
                    adopted_maps = dp.adopted_maps,
                    "took over an earlier forwarder's data path"
                );
            }
            Ok::<_, Error>((dp, seg, shared, background, metrics))
        })();
        match started {
            Ok((dp, seg, shared, background, metrics)) => {
                Ok(Running { dp, seg, shared, background: Some(background), metrics, ifaces, _lock: lock_ })
            }
            Err(e) => {
                if fresh {
                    pins.remove_all();
                }
                Err(e)
            }
        }
    }

    /// Applies new settings, all or nothing: everything that can be refused
    /// is checked before any map or attachment changes.
    fn reload(&mut self, s: Settings) -> Result<()> {
        let old = lock(&self.shared).settings.clone();
        for (what, same) in [
            ("pin_dir", old.section.pin_dir == s.section.pin_dir),
            ("stats_socket", old.section.stats_socket == s.section.stats_socket),
            ("table_size", old.section.table_size == s.section.table_size),
            ("segmenter", old.section.segmenter == s.section.segmenter),
            ("metrics_listen", old.section.metrics_listen == s.section.metrics_listen),
        ] {
            if !same {
                return Err(Error::Invalid(format!("{what} cannot change while toa lb runs; restart it")));
            }
        }
        let capacity = table_entries(&old.section);
        if s.services.len() as u64 * s.section.table_size as u64 > capacity as u64 {
            return Err(Error::Invalid(format!(
                "{} services need a restart (the running tables hold {})",
                s.services.len(),
                capacity / s.section.table_size
            )));
        }
        let ifaces = check_system(&s)?;
        let layout = {
            let sh = lock(&self.shared);
            Layout::new(&s, Some(&sh.layout))?
        };
        for (i, _) in s.services.iter().enumerate() {
            let mine: Vec<_> = layout.of_service(i).collect();
            tables::maglev_table(&mine, &|_| true, s.section.table_size)?;
        }
        let down = service::first_checks(&s);
        // From here on nothing is refused.
        for i in &ifaces {
            if !self.ifaces.contains(i) {
                self.dp.attach(i)?;
            }
        }
        for i in self.ifaces.clone() {
            if !ifaces.contains(&i) {
                self.dp.detach(&i);
            }
        }
        self.ifaces = ifaces;
        let mut sh = lock(&self.shared);
        let old_slots: Vec<u32> = sh.layout.backends.iter().map(|b| b.slot).collect();
        let timeouts = s.section.timeouts.to_datapath();
        let indices = self.seg.as_ref().map(Segmenter::indices).transpose()?;
        sh.tables.configure(indices, timeouts, s.section.table_size)?;
        let fresh_slots: Vec<u32> =
            layout.backends.iter().map(|b| b.slot).filter(|slot| !old_slots.contains(slot)).collect();
        for slot in fresh_slots {
            sh.counters.clear_backend(slot);
        }
        sh.settings = s;
        sh.layout = layout;
        sh.apply(&|a| !down.contains(a))
    }

    /// Stops: detaches everything and removes pins and the segmenter, or
    /// with `persist` leaves them for the next forwarder. Returns the last
    /// counters.
    fn stop(mut self, persist: bool) -> serde_json::Value {
        let last = self.background.take().map(Background::stop).unwrap_or_default();
        drop(self.metrics.take());
        let pins = LbPins::new(&lock(&self.shared).settings.section.pin_dir);
        if persist {
            self.dp.leave_attached();
            if let Some(seg) = &mut self.seg {
                seg.keep();
            }
            tracing::info!(pins = %pins.root().display(), "programs stay attached (persist = true)");
        } else {
            self.dp.detach_all();
            if let Some(seg) = &mut self.seg {
                seg.remove_on_drop();
            }
            drop(self.seg.take());
            pins.remove_all();
        }
        last
    }
}

/// The Prometheus endpoint of a running forwarder.
fn metrics_server(addr: std::net::SocketAddr, shared: Arc<Mutex<Shared>>) -> Result<MetricsServer> {
    let socket = lock(&shared).settings.section.stats_socket.clone();
    MetricsServer::with_handler(addr, "metrics_listen", move |path| match path {
        "/metrics" => match read_stats(&socket) {
            Some(v) => Reply::metrics(crate::ops::metrics::render_lb(&v)),
            None => Reply::text("503 Service Unavailable", "no counters yet\n"),
        },
        "/healthz" => Reply::text("200 OK", "ok\n"),
        _ => Reply::text("404 Not Found", "try /metrics or /healthz\n"),
    })
}

/// Reads a running forwarder's counters from its stats socket.
pub fn read_stats(socket: &Path) -> Option<serde_json::Value> {
    use std::io::Read as _;
    let mut conn = std::os::unix::net::UnixStream::connect(socket).ok()?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// A running forwarder's counters (its stats socket's JSON) as text for
/// `toa stats`: the global counters that are not zero, then one line per
/// service and per backend.
pub fn render_text(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lb {} (pid {}, pins {}):",
        v["socket"].as_str().unwrap_or("?"),
        v["pid"].as_u64().unwrap_or(0),
        v["pin_dir"].as_str().unwrap_or("?")
    );
    if let Some(o) = v.as_object() {
        for (name, value) in o {
            if name == "pid" {
                continue;
            }
            if let Some(n) = value.as_u64().filter(|n| *n > 0 || name == "flows") {
                let _ = writeln!(out, "  {name:<28} {n}");
            }
        }
    }
    let n = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap_or(0);
    for s in v["services"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  service {}: {}/{} backends up, {} flows open, {} created, {} options, {} no room, in {} pkts {} B, out {} pkts {} B",
            s["listen"].as_str().unwrap_or("?"),
            n(s, "backends_up"),
            n(s, "backends"),
            n(s, "conntrack_entries"),
            n(s, "flows"),
            n(s, "options"),
            n(s, "options_no_room"),
            n(s, "packets_in"),
            n(s, "bytes_in"),
            n(s, "packets_out"),
            n(s, "bytes_out"),
        );
        for b in v["backends"].as_array().into_iter().flatten().filter(|b| b["service"] == s["listen"]) {
            let _ = writeln!(
                out,
                "    backend {} ({}, weight {}): {} flows, {} options, {} no room, in {} pkts, out {} pkts",
                b["addr"].as_str().unwrap_or("?"),
                if b["up"] == true { "up" } else { "down" },
                n(b, "weight"),
                n(b, "flows"),
                n(b, "options"),
                n(b, "options_no_room"),
                n(b, "packets_in"),
                n(b, "packets_out"),
            );
        }
    }
    out
}

/// The stats sockets of the forwarders running on this host
/// (`/run/toa/lb*.sock`).
pub fn discover() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(crate::sys::paths::RUN_DIR)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    n.starts_with(crate::config::lb::LB_SOCKET_PREFIX) && n.ends_with(".sock")
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn resolve(source: &Source, o: &Overrides) -> Result<Settings> {
    let section = source.section(o)?;
    Settings::resolve(&section, &own_addresses())
}

/// Runs the forwarder in the foreground until SIGINT/SIGTERM; SIGHUP reloads.
pub fn run(source: &Source, overrides: &Overrides) -> Result<()> {
    host::require_root()?;
    let signals = TerminationSignals::block().map_err(Error::io("blocking SIGINT/SIGTERM", "signals"))?;
    let s = resolve(source, overrides)?;
    let mut running = Running::start(s.clone())?;
    for svc in &s.services {
        let backends: Vec<String> = svc.backends.iter().map(ToString::to_string).collect();
        tracing::info!(
            listen = %svc.listen,
            backends = %backends.join(", "),
            local = %[svc.local4, svc.local6].iter().flatten().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            option = %format!("{}/{}", svc.kind, svc.len),
            "service"
        );
    }
    tracing::info!(
        interfaces = %running.ifaces.join(", "),
        segmenter = %running.seg.as_ref().map(|g| format!("{} -> {}", g.send, g.recv)).unwrap_or_else(|| "none".into()),
        stats = %s.stats_socket().display(),
        pins = %s.section.pin_dir.display(),
        "lb ready"
    );
    // Type=notify units: started means attached and forwarding.
    let systemd = ServiceManager::from_env();
    systemd.ready("forwarding");
    loop {
        let sig = signals.wait().map_err(Error::io("waiting for a signal", "signals"))?;
        if sig != libc::SIGHUP {
            tracing::info!(signal = sig, "stopping");
            systemd.stopping("stopping");
            break;
        }
        systemd.reloading();
        let outcome = match source {
            Source::Flags(_) => Err(Error::Invalid("started without --config: nothing to reload".into())),
            Source::File(_) => resolve(source, overrides).and_then(|new| running.reload(new)),
        };
        match outcome {
            Ok(()) => tracing::info!("reloaded"),
            Err(e) => tracing::error!(error = %e, "reload refused; the running configuration stays"),
        }
        systemd.ready("forwarding");
    }
    let persist = lock(&running.shared).settings.section.persist;
    let last = running.stop(persist);
    let summary: Vec<String> = last
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| !matches!(k.as_str(), "backends" | "services") && v.as_u64().is_some_and(|n| n > 0))
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    tracing::info!(counters = %summary.join(" "), "lb stopped");
    Ok(())
}
