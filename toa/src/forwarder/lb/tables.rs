//! What the data path's lookup maps hold — services, backends, addresses,
//! the Maglev tables, the settings — computed from the settings and the
//! backends' health, and written so that a packet never sees a state that
//! names a backend that is not there: new entries go in before the tables
//! point at them, stale ones go after.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use aya::maps::{Array, HashMap, Map, MapData};
use toa_common::lb::{
    conntrack::Timeouts,
    flow::{AddrKey, Backend, LbConfig, PROTO_TCP, Service, ServiceKey, addr_role},
    maglev::{self, BackendId, Member, NO_BACKEND, Turn},
    maps,
};

use super::{datapath::addr_bytes, settings::Settings};
use crate::{Error, Result};

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// One backend as the maps know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSlot {
    /// The service's index.
    pub service: usize,
    /// Its address.
    pub addr: SocketAddr,
    /// Its weight.
    pub weight: u32,
    /// Its index in `LB_BACKENDS` and the per-backend counters.
    pub slot: u32,
}

/// The layout of the maps for one set of settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Every backend, by slot.
    pub backends: Vec<BackendSlot>,
    /// The services' virtual addresses, by index.
    pub listens: Vec<SocketAddr>,
    /// Entries per Maglev table.
    pub table_size: u32,
}

impl Layout {
    /// Slots for the backends of `s`: a backend (service, address) keeps
    /// the slot it had in `old` (its counters go on); new ones take free slots.
    pub fn new(s: &Settings, old: Option<&Layout>) -> Result<Layout> {
        let old_slots: BTreeMap<(SocketAddr, SocketAddr), u32> = old
            .map(|o| o.backends.iter().map(|b| ((o.listens[b.service], b.addr), b.slot)).collect())
            .unwrap_or_default();
        let mut taken: BTreeSet<u32> = BTreeSet::new();
        let mut backends = Vec::new();
        for (i, svc) in s.services.iter().enumerate() {
            for b in &svc.backends {
                let slot = match old_slots.get(&(svc.listen, b.addr)) {
                    Some(&slot) if taken.insert(slot) => slot,
                    _ => u32::MAX,
                };
                backends.push(BackendSlot { service: i, addr: b.addr, weight: b.weight, slot });
            }
        }
        let mut next = 0u32;
        for b in backends.iter_mut().filter(|b| b.slot == u32::MAX) {
            while taken.contains(&next) {
                next += 1;
            }
            if next >= toa_common::lb::flow::MAX_BACKENDS {
                return Err(Error::Invalid("more backends than the data path holds".into()));
            }
            b.slot = next;
            taken.insert(next);
        }
        Ok(Layout {
            backends,
            listens: s.services.iter().map(|v| v.listen).collect(),
            table_size: s.section.table_size,
        })
    }

    /// The backends of service `i`.
    pub fn of_service(&self, i: usize) -> impl Iterator<Item = &BackendSlot> {
        self.backends.iter().filter(move |b| b.service == i)
    }
}

/// Builds one service's Maglev table from its backends that are up.
pub fn maglev_table(backends: &[&BackendSlot], up: &dyn Fn(&BackendSlot) -> bool, size: u32) -> Result<Vec<u32>> {
    let mut members: Vec<Member> = backends
        .iter()
        .map(|b| {
            let (addr, family) = addr_bytes(b.addr.ip());
            let id = BackendId { addr, port: b.addr.port().to_be_bytes(), family };
            Member::new(id, if up(b) { b.weight } else { 0 }, b.slot, size)
        })
        .collect();
    let mut work = vec![Turn::default(); members.len()];
    let mut table = vec![NO_BACKEND; size as usize];
    maglev::populate(&mut members, &mut work, &mut table)
        .map_err(|e| Error::Invalid(format!("cannot build a Maglev table: {e:?}")))?;
    Ok(table)
}

/// The lookup maps, taken out of the object.
pub struct Tables {
    services: HashMap<MapData, ServiceKey, Service>,
    backends: Array<MapData, Backend>,
    addrs: HashMap<MapData, AddrKey, u8>,
    maglev: Array<MapData, u32>,
    config: Array<MapData, LbConfig>,
    /// What each service's table holds now (to write only what changes).
    current: Vec<Vec<u32>>,
}

impl Tables {
    /// Takes the maps.
    pub fn new(take: &mut dyn FnMut(&'static str) -> Result<Map>) -> Result<Tables> {
        Ok(Tables {
            services: HashMap::try_from(take(maps::SERVICES)?).map_err(map_err(maps::SERVICES))?,
            backends: Array::try_from(take(maps::BACKENDS)?).map_err(map_err(maps::BACKENDS))?,
            addrs: HashMap::try_from(take(maps::ADDRS)?).map_err(map_err(maps::ADDRS))?,
            maglev: Array::try_from(take(maps::MAGLEV)?).map_err(map_err(maps::MAGLEV))?,
            config: Array::try_from(take(maps::CONFIG)?).map_err(map_err(maps::CONFIG))?,
            current: Vec::new(),
        })
    }

    /// Writes the settings map.
    pub fn configure(&mut self, segmenter: Option<(u32, u32)>, timeouts: Timeouts, table_size: u32) -> Result<()> {
        let (s, r) = segmenter.unwrap_or((0, 0));
        let value = LbConfig { segmenter_ifindex: s, segmenter_peer_ifindex: r, timeouts, table_size };
        self.config.set(0, value, 0).map_err(map_err(maps::CONFIG))
    }

    /// Writes everything for `s` with layout `l`, the backends `up` says are
    /// in rotation. Backends first, then the tables that name them, then the
    /// services and addresses; entries of services and addresses no longer
    /// configured go last.
    pub fn apply(&mut self, s: &Settings, l: &Layout, up: &dyn Fn(&BackendSlot) -> bool) -> Result<()> {
        for b in &l.backends {
            let svc = &s.services[b.service];
            let local = svc.local_for(&b.addr).ok_or_else(|| {
                Error::Invalid(format!("service {}: no local address for backend {}", svc.listen, b.addr))
            })?;
            let (addr, fam) = addr_bytes(b.addr.ip());
            let (snat, _) = addr_bytes(local);
            let entry = Backend { addr, snat, port: b.addr.port().to_be_bytes(), family: fam, _pad: 0, slot: b.slot };
            self.backends.set(b.slot, entry, 0).map_err(map_err(maps::BACKENDS))?;
        }
        self.current.resize(s.services.len(), Vec::new());
        for i in 0..s.services.len() {
            self.write_table(l, i, up)?;
        }
        let mut roles: BTreeMap<([u8; 16], u8), u8> = BTreeMap::new();
        let mut keys = Vec::new();
        for (id, svc) in s.services.iter().enumerate() {
            *roles.entry(addr_bytes(svc.listen.ip())).or_default() |= addr_role::VIRTUAL;
            for local in [svc.local4, svc.local6].into_iter().flatten() {
                *roles.entry(addr_bytes(local)).or_default() |= addr_role::LOCAL;
            }
            let (addr, fam) = addr_bytes(svc.listen.ip());
            let key = ServiceKey { addr, port: svc.listen.port().to_be_bytes(), family: fam, proto: PROTO_TCP };
            let mine: Vec<&BackendSlot> = l.backends.iter().filter(|b| b.service == id).collect();
            let value = Service {
                id: id as u32,
                first_backend: mine.iter().map(|b| b.slot).min().unwrap_or(0),
                backend_count: mine.len() as u32,
                ports: s.ports(),
                option_kind: svc.kind,
                option_len: svc.len,
                packets: svc.packets,
                _pad: 0,
            };
            self.services.insert(key, value, 0).map_err(map_err(maps::SERVICES))?;
            keys.push(key);
        }
        let stale: Vec<ServiceKey> = self.services.keys().flatten().filter(|k| !keys.contains(k)).collect();
        for k in stale {
            let _ = self.services.remove(&k);
        }
        for ((addr, fam), role) in &roles {
            self.addrs
                .insert(AddrKey { addr: *addr, family: *fam, _pad: [0; 3] }, role, 0)
                .map_err(map_err(maps::ADDRS))?;
        }
        let stale: Vec<AddrKey> =
            self.addrs.keys().flatten().filter(|k| !roles.contains_key(&(k.addr, k.family))).collect();
        for k in stale {
            let _ = self.addrs.remove(&k);
        }
        Ok(())
    }

    /// Rewrites the Maglev table of service `i` (only the entries that change).
    pub fn write_table(&mut self, l: &Layout, i: usize, up: &dyn Fn(&BackendSlot) -> bool) -> Result<()> {
        let mine: Vec<&BackendSlot> = l.backends.iter().filter(|b| b.service == i).collect();
        let table = maglev_table(&mine, up, l.table_size)?;
        let base = i as u32 * l.table_size;
        let old = self.current.get(i).filter(|o| o.len() == table.len());
        for (j, v) in table.iter().enumerate() {
            if old.is_some_and(|o| o[j] == *v) {
                continue;
            }
            self.maglev.set(base + j as u32, *v, 0).map_err(map_err(maps::MAGLEV))?;
        }
        if let Some(slot) = self.current.get_mut(i) {
            *slot = table;
        }
        Ok(())
    }
}
