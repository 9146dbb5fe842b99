//! The forwarder's background work: the counters on a unix socket (and
//! Prometheus), idle flows reclaimed, and the health checks that take
//! backends out of (and back into) the Maglev tables.
//!
//! The data path never scans its tables: a full table evicts its least
//! recently used flow, and the reaper deletes the flows idle past their
//! state's timeout (and their reverse entries, and tombstones whose
//! TIME_WAIT is over) once a second, from user space, so that no packet
//! ever waits for a sweep.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData, PerCpuArray};
use serde_json::{Value, json};
use toa_common::lb::{
    conntrack::{TcpState, Timeouts},
    counters::{LB_COUNTER_COUNT, LB_COUNTER_NAMES},
    flow::{BackendStats, Flow, FlowKey, Reverse, flow_flags},
};

use super::{
    settings::Settings,
    tables::{BackendSlot, Layout, Tables},
};
use crate::{
    Error, Result,
    forwarder::health::{Streak, probe, record},
};

/// How often idle flows are looked for.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Seconds of `CLOCK_MONOTONIC` (the clock the data path stamps flows with).
fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// The counter maps.
pub struct Counters {
    /// Global counters by index.
    pub counters: PerCpuArray<MapData, u64>,
    /// Per backend slot.
    pub backends: PerCpuArray<MapData, BackendStats>,
}

impl Counters {
    /// Totals over CPUs, by name.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        (0..LB_COUNTER_COUNT)
            .map(|i| {
                let sum = self.counters.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
                (LB_COUNTER_NAMES[i as usize], sum)
            })
            .collect()
    }

    /// One backend slot's totals over CPUs.
    pub fn backend(&self, slot: u32) -> BackendStats {
        let mut t = BackendStats::default();
        if let Ok(v) = self.backends.get(&slot, 0) {
            for s in v.iter() {
                t.packets_in += s.packets_in;
                t.bytes_in += s.bytes_in;
                t.packets_out += s.packets_out;
                t.bytes_out += s.bytes_out;
                t.flows += s.flows;
                t.options += s.options;
                t.no_room += s.no_room;
            }
        }
        t
    }

    /// Zeroes a slot's counters (a new backend in a slot another had).
    pub fn clear_backend(&mut self, slot: u32) {
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let zero = aya::maps::PerCpuValues::try_from(vec![BackendStats::default(); cpus]);
        if let Ok(z) = zero {
            let _ = self.backends.set(slot, z, 0);
        }
    }
}

/// A backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// In rotation.
    pub up: bool,
    /// Its recent results.
    pub streak: Streak,
    /// When it is checked next.
    pub due: Instant,
}

/// What the main thread and the background share.
pub struct Shared {
    /// The settings in effect.
    pub settings: Settings,
    /// Where each backend is in the maps.
    pub layout: Layout,
    /// The lookup maps.
    pub tables: Tables,
    /// Health by (service, backend).
    pub health: BTreeMap<(SocketAddr, SocketAddr), Health>,
    /// Counters.
    pub counters: Counters,
}

impl Shared {
    /// Whether a backend is in rotation.
    pub fn is_up(&self, b: &BackendSlot) -> bool {
        let listen = self.layout.listens[b.service];
        self.health.get(&(listen, b.addr)).is_none_or(|h| h.up)
    }

    /// Applies settings and layout to the maps (start and reload). Health
    /// of backends that stay is kept; new ones start as `first` says.
    pub fn apply(&mut self, first: &dyn Fn(&SocketAddr) -> bool) -> Result<()> {
        let now = Instant::now();
        let mut health = BTreeMap::new();
        for b in &self.layout.backends {
            let svc = &self.settings.services[b.service];
            let key = (svc.listen, b.addr);
            let h = self.health.get(&key).copied().unwrap_or(Health {
                up: first(&b.addr),
                streak: Streak::default(),
                due: now + svc.health.interval.get(),
            });
            health.insert(key, h);
        }
        self.health = health;
        let ups: Vec<bool> = self.layout.backends.iter().map(|b| self.is_up(b)).collect();
        let up = |b: &BackendSlot| {
            self.layout.backends.iter().position(|x| x == b).and_then(|i| ups.get(i).copied()).unwrap_or(true)
        };
        self.tables.apply(&self.settings, &self.layout, &up)
    }

    fn snapshot(&self, flows: &FlowCensus, reclaimed: u64) -> Value {
        let mut v = serde_json::Map::new();
        for (name, total) in self.counters.totals() {
            v.insert(name.to_string(), total.into());
        }
        v.insert("flows".into(), flows.total.into());
        v.insert("flows_reclaimed".into(), reclaimed.into());
        v.insert("pid".into(), std::process::id().into());
        v.insert("socket".into(), self.settings.section.stats_socket.display().to_string().into());
        v.insert("pin_dir".into(), self.settings.section.pin_dir.display().to_string().into());
        let backend_json = |b: &BackendSlot| {
            let s = self.counters.backend(b.slot);
            json!({
                "addr": b.addr.to_string(),
                "service": self.layout.listens[b.service].to_string(),
                "up": self.is_up(b),
                "weight": b.weight,
                "flows": s.flows,
                "packets_in": s.packets_in,
                "bytes_in": s.bytes_in,
                "packets_out": s.packets_out,
                "bytes_out": s.bytes_out,
                "options": s.options,
                "options_no_room": s.no_room,
            })
        };
        v.insert("backends".into(), self.layout.backends.iter().map(backend_json).collect::<Vec<_>>().into());
        let services: Vec<Value> = self
            .layout
            .listens
            .iter()
            .enumerate()
            .map(|(i, listen)| {
                let mut t = BackendStats::default();
                for b in self.layout.of_service(i) {
                    let s = self.counters.backend(b.slot);
                    t.flows += s.flows;
                    t.packets_in += s.packets_in;
                    t.bytes_in += s.bytes_in;
                    t.packets_out += s.packets_out;
                    t.bytes_out += s.bytes_out;
                    t.options += s.options;
                    t.no_room += s.no_room;
                }
                json!({
                    "listen": listen.to_string(),
                    "backends_up": self.layout.of_service(i).filter(|b| self.is_up(b) && b.weight > 0).count(),
                    "backends": self.layout.of_service(i).count(),
                    "conntrack_entries": flows.by_service.get(&(i as u32)).copied().unwrap_or(0),
                    "flows": t.flows,
                    "packets_in": t.packets_in,
                    "bytes_in": t.bytes_in,
                    "packets_out": t.packets_out,
                    "bytes_out": t.bytes_out,
                    "options": t.options,
                    "options_no_room": t.no_room,
                })
            })
            .collect();
        v.insert("services".into(), services.into());
        Value::Object(v)
    }
}

/// Locks the shared state (a panic elsewhere leaves it usable).
pub fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Flows counted by the last reap.
#[derive(Clone, Debug, Default)]
struct FlowCensus {
    total: u64,
    by_service: BTreeMap<u32, u64>,
}

/// The reaper's maps.
pub struct FlowMaps {
    /// `LB_FLOWS`.
    pub flows: HashMap<MapData, FlowKey, Flow>,
    /// `LB_REVERSE`.
    pub reverse: HashMap<MapData, FlowKey, Reverse>,
}

impl FlowMaps {
    /// Deletes the flows idle past their timeout and the tombstones past
    /// their TIME_WAIT; counts what is left.
    fn reap(&mut self, timeouts: &Timeouts, reclaimed: &mut u64) -> FlowCensus {
        let now = monotonic_secs();
        let mut census = FlowCensus::default();
        let mut expired = Vec::new();
        for item in self.flows.iter() {
            let Ok((key, flow)) = item else { continue };
            let first = flow.flags & flow_flags::CLIENT_FIN_FIRST != 0;
            if timeouts.expired(TcpState::from_u8(flow.state), first, flow.last_seen, now) {
                expired.push((key, flow));
            } else {
                census.total += 1;
                *census.by_service.entry(flow.service).or_default() += 1;
            }
        }
        for (key, flow) in expired {
            let rkey = FlowKey {
                src: flow.backend,
                dst: flow.snat,
                sport: flow.bport,
                dport: flow.lport,
                family: key.family,
                _pad: [0; 3],
            };
            // The port may have moved on to a new flow already: only remove our own entry.
            if let Ok(r) = self.reverse.get(&rkey, 0)
                && r.flow == key
                && r.until == 0
            {
                let _ = self.reverse.remove(&rkey);
            }
            if self.flows.remove(&key).is_ok() {
                *reclaimed += 1;
            }
        }
        let over: Vec<FlowKey> = self
            .reverse
            .iter()
            .flatten()
            .filter(|(_, r)| r.until != 0 && (now.wrapping_sub(r.until) as i32) > 0)
            .map(|(k, _)| k)
            .collect();
        for k in over {
            let _ = self.reverse.remove(&k);
        }
        census
    }
}

/// The background thread.
pub struct Background {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Value>>,
    socket: PathBuf,
}

impl Background {
    /// Binds the stats socket and starts the thread.
    pub fn start(socket: &Path, shared: Arc<Mutex<Shared>>, mut flows: FlowMaps) -> Result<Background> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .map_err(|e| Error::Invalid(format!("cannot listen on the stats socket {}: {e}", socket.display())))?;
        listener.set_nonblocking(true).map_err(Error::io("configuring", socket))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("toa-lb".into())
            .spawn(move || {
                let mut reclaimed = 0u64;
                let timeouts = |s: &Mutex<Shared>| lock(s).settings.section.timeouts.to_datapath();
                let mut census = flows.reap(&timeouts(&shared), &mut reclaimed);
                let mut last = Instant::now();
                while !flag.load(Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            let text = lock(&shared).snapshot(&census, reclaimed).to_string();
                            let _ = writeln!(conn, "{text}");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                    check_health(&shared);
                    if last.elapsed() >= REAP_INTERVAL {
                        census = flows.reap(&timeouts(&shared), &mut reclaimed);
                        last = Instant::now();
                    }
                }
                lock(&shared).snapshot(&census, reclaimed)
            })
            .map_err(Error::io("starting the stats thread", socket))?;
        Ok(Background { stop, handle: Some(handle), socket: socket.to_path_buf() })
    }

    /// Stops the thread; returns the last counters.
    pub fn stop(mut self) -> Value {
        self.stop.store(true, Relaxed);
        let v = self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let _ = std::fs::remove_file(&self.socket);
        v
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Probes the backends whose check is due (all at once, outside the lock)
/// and applies the results: a backend that goes down leaves its service's
/// Maglev table (only its own entries move; established flows to the other
/// backends go on, and its own keep their translation), one that comes
/// back takes its entries again.
fn check_health(shared: &Mutex<Shared>) {
    let now = Instant::now();
    let due: Vec<(SocketAddr, SocketAddr, Duration, Duration)> = {
        let s = lock(shared);
        s.health
            .iter()
            .filter(|((listen, _), h)| {
                let interval = s.settings.services.iter().find(|v| v.listen == *listen).map(|v| v.health.interval);
                interval.is_some_and(|i| !i.is_zero()) && h.due <= now
            })
            .filter_map(|((listen, b), _)| {
                let svc = s.settings.services.iter().find(|v| v.listen == *listen)?;
                Some((*listen, *b, svc.health.interval.get(), svc.health.timeout.get()))
            })
            .collect()
    };
    if due.is_empty() {
        return;
    }
    let addrs: Vec<SocketAddr> = due.iter().map(|d| d.1).collect();
    let timeout = due.iter().map(|d| d.3).max().unwrap_or(Duration::from_secs(1));
    let results = probe(&addrs, timeout);
    let mut s = lock(shared);
    let mut changed: Vec<usize> = Vec::new();
    for ((listen, addr, interval, _), result) in due.iter().zip(results) {
        let Some(i) = s.settings.services.iter().position(|v| v.listen == *listen) else { continue };
        let (rise, fall) = (s.settings.services[i].health.rise, s.settings.services[i].health.fall);
        let Some(h) = s.health.get_mut(&(*listen, *addr)) else { continue };
        h.due = now + *interval;
        match record(&mut h.streak, h.up, result.is_ok(), rise, fall) {
            Some(true) => {
                h.up = true;
                tracing::info!(listen = %listen, backend = %addr, "backend is up");
                changed.push(i);
            }
            Some(false) => {
                h.up = false;
                tracing::warn!(
                    listen = %listen,
                    backend = %addr,
                    error = %result.err().map(|e| e.to_string()).unwrap_or_default(),
                    "backend is down"
                );
                changed.push(i);
            }
            None => {}
        }
    }
    changed.dedup();
    for i in changed {
        let ups: Vec<(u32, bool)> = s.layout.backends.iter().map(|b| (b.slot, s.is_up(b))).collect();
        let up = |b: &BackendSlot| ups.iter().find(|(slot, _)| *slot == b.slot).is_none_or(|(_, u)| *u);
        let layout = s.layout.clone();
        if let Err(e) = s.tables.write_table(&layout, i, &up) {
            tracing::warn!(error = %e, "could not update a Maglev table");
        }
    }
}

/// Probes every backend once (start and reload); those with checks on
/// that do not answer start out of rotation. Returns the unreachable ones.
pub fn first_checks(s: &Settings) -> Vec<SocketAddr> {
    let mut down = Vec::new();
    for svc in &s.services {
        if svc.health.interval.is_zero() {
            continue;
        }
        let addrs: Vec<SocketAddr> = svc.backends.iter().map(|b| b.addr).collect();
        for (a, r) in addrs.iter().zip(probe(&addrs, svc.health.timeout.get())) {
            if let Err(e) = r {
                tracing::warn!(listen = %svc.listen, backend = %a, error = %e, "backend unreachable at start; out of rotation until health checks pass");
                down.push(*a);
            }
        }
    }
    down
}
