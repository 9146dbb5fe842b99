//! Loading the forwarder's eBPF object, filling its maps and attaching its
//! programs; reading its counters.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray},
    programs::{SchedClassifier, TcAttachType, tc, tc::SchedClassifierLinkId},
    util::KernelVersion,
};
use toa_common::lb::{
    conntrack::DEFAULT_TIMEOUTS,
    counters::{LB_COUNTER_COUNT, LB_COUNTER_NAMES},
    flow::{
        AddrKey, Backend, BackendStats, Flow, FlowKey, LbConfig, PROTO_TCP, Reverse, Service, ServiceKey, addr_role,
        family,
    },
    maps, programs,
};

use super::settings::Settings;
use crate::{Error, Result};

/// The eBPF object built from `toa-ebpf`'s `toa-lb` binary by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/toa-lb"));

/// An address as the maps hold it: 16 bytes, IPv4 in the first 4, and its family.
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, family::V4)
        }
        IpAddr::V6(a) => (a.octets(), family::V6),
    }
}

/// `LB_FLOWS` from user space.
pub type FlowMap = HashMap<MapData, FlowKey, Flow>;
/// `LB_REVERSE` from user space.
pub type ReverseMap = HashMap<MapData, FlowKey, Reverse>;

/// The loaded object and what is attached.
pub struct Datapath {
    ebpf: Ebpf,
    attached: Vec<(&'static str, String, SchedClassifierLinkId)>,
    /// Backend addresses by counters slot.
    pub backends: Vec<SocketAddr>,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

impl Datapath {
    /// Loads the object and fills its maps (nothing attached yet).
    pub fn load(s: &Settings) -> Result<Datapath> {
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|e| Error::ProgramLoad {
            name: programs::INGRESS,
            role: "the forwarder's data path",
            reason: e.to_string().lines().next().unwrap_or_default().to_string(),
        })?;
        for name in [programs::INGRESS, programs::OPTION] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(programs::INGRESS))?
                .try_into()
                .map_err(|source| Error::Program { name: programs::INGRESS, source })?;
            prog.load().map_err(|e| Error::ProgramLoad {
                name: programs::INGRESS,
                role: "the forwarder's data path (tc, bpf_fib_lookup, bpf_redirect_neigh)",
                reason: verifier_reason(&e),
            })?;
        }
        let option_fd = {
            let prog: &SchedClassifier = ebpf
                .program(programs::OPTION)
                .ok_or(Error::MissingProgram(programs::OPTION))?
                .try_into()
                .map_err(|source| Error::Program { name: programs::OPTION, source })?;
            prog.fd()
                .map_err(|source| Error::Program { name: programs::OPTION, source })?
                .try_clone()
                .map_err(Error::io("duplicating", programs::OPTION))?
        };
        let mut jump = ProgramArray::try_from(ebpf.map_mut("LB_JUMP").ok_or(Error::MissingMap("LB_JUMP"))?)
            .map_err(map_err("LB_JUMP"))?;
        jump.set(0, &option_fd, 0).map_err(map_err("LB_JUMP"))?;

        let mut addrs: HashMap<&mut MapData, AddrKey, u8> =
            HashMap::try_from(ebpf.map_mut(maps::ADDRS).ok_or(Error::MissingMap(maps::ADDRS))?)
                .map_err(map_err(maps::ADDRS))?;
        let mut roles: BTreeMap<([u8; 16], u8), u8> = BTreeMap::new();
        for svc in &s.services {
            *roles.entry(addr_bytes(svc.listen.ip())).or_default() |= addr_role::VIRTUAL;
            *roles.entry(addr_bytes(svc.snat)).or_default() |= addr_role::LOCAL;
        }
        for ((addr, fam), role) in &roles {
            addrs.insert(AddrKey { addr: *addr, family: *fam, _pad: [0; 3] }, role, 0).map_err(map_err(maps::ADDRS))?;
        }

        let mut backend_list = Vec::new();
        {
            let mut bmap: Array<&mut MapData, Backend> =
                Array::try_from(ebpf.map_mut(maps::BACKENDS).ok_or(Error::MissingMap(maps::BACKENDS))?)
                    .map_err(map_err(maps::BACKENDS))?;
            for svc in &s.services {
                let (snat, _) = addr_bytes(svc.snat);
                for b in &svc.backends {
                    let slot = backend_list.len() as u32;
                    let (addr, fam) = addr_bytes(b.ip());
                    let entry = Backend { addr, snat, port: b.port().to_be_bytes(), family: fam, _pad: 0, slot };
                    bmap.set(slot, entry, 0).map_err(map_err(maps::BACKENDS))?;
                    backend_list.push(*b);
                }
            }
        }
        let mut services: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(ebpf.map_mut(maps::SERVICES).ok_or(Error::MissingMap(maps::SERVICES))?)
                .map_err(map_err(maps::SERVICES))?;
        let mut first = 0u32;
        for (id, svc) in s.services.iter().enumerate() {
            let (addr, fam) = addr_bytes(svc.listen.ip());
            let key = ServiceKey { addr, port: svc.listen.port().to_be_bytes(), family: fam, proto: PROTO_TCP };
            let value = Service {
                id: id as u32,
                first_backend: first,
                backend_count: svc.backends.len() as u32,
                ports: s.ports,
                option_kind: svc.kind,
                option_len: svc.len,
                packets: s.packets,
                _pad: 0,
            };
            services.insert(key, value, 0).map_err(map_err(maps::SERVICES))?;
            first += svc.backends.len() as u32;
        }
        Ok(Datapath { ebpf, attached: Vec::new(), backends: backend_list })
    }

    /// Writes the settings map (segmenter ends, timeouts).
    pub fn configure(&mut self, segmenter: Option<(u32, u32)>) -> Result<()> {
        let mut cfg: Array<&mut MapData, LbConfig> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).ok_or(Error::MissingMap(maps::CONFIG))?)
                .map_err(map_err(maps::CONFIG))?;
        let (s, r) = segmenter.unwrap_or((0, 0));
        let value = LbConfig { segmenter_ifindex: s, segmenter_peer_ifindex: r, timeouts: DEFAULT_TIMEOUTS };
        cfg.set(0, value, 0).map_err(map_err(maps::CONFIG))
    }

    /// Attaches `program` to the ingress of `ifname`.
    pub fn attach(&mut self, program: &'static str, ifname: &str) -> Result<()> {
        // Before TCX (6.6) tc programs need a clsact qdisc; one already there is fine.
        let tcx = KernelVersion::current().map(|v| v >= KernelVersion::new(6, 6, 0)).unwrap_or(false);
        if !tcx {
            let _ = tc::qdisc_add_clsact(ifname);
        }
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or(Error::MissingProgram(programs::INGRESS))?
            .try_into()
            .map_err(|source| Error::Program { name: programs::INGRESS, source })?;
        let id = prog
            .attach(ifname, TcAttachType::Ingress)
            .map_err(|e| Error::Invalid(format!("cannot attach to the ingress of {ifname}: {e}")))?;
        self.attached.push((program, ifname.to_string(), id));
        Ok(())
    }

    /// Detaches everything attached (also done on drop).
    pub fn detach_all(&mut self) {
        for (program, _, id) in self.attached.drain(..).rev() {
            if let Some(p) = self.ebpf.program_mut(program) {
                let prog: std::result::Result<&mut SchedClassifier, _> = p.try_into();
                if let Ok(prog) = prog {
                    let _ = prog.detach(id);
                }
            }
        }
    }

    /// Takes the flow maps out (for the reaper).
    pub fn take_flow_maps(&mut self) -> Result<(FlowMap, ReverseMap)> {
        let f = self.ebpf.take_map(maps::FLOWS).ok_or(Error::MissingMap(maps::FLOWS))?;
        let r = self.ebpf.take_map(maps::REVERSE).ok_or(Error::MissingMap(maps::REVERSE))?;
        Ok((HashMap::try_from(f).map_err(map_err(maps::FLOWS))?, HashMap::try_from(r).map_err(map_err(maps::REVERSE))?))
    }

    /// Takes the counter maps out (for the stats thread).
    pub fn take_counter_maps(&mut self) -> Result<Counters> {
        let c = self.ebpf.take_map(maps::COUNTERS).ok_or(Error::MissingMap(maps::COUNTERS))?;
        let b = self.ebpf.take_map(maps::BACKEND_STATS).ok_or(Error::MissingMap(maps::BACKEND_STATS))?;
        Ok(Counters {
            counters: PerCpuArray::try_from(c).map_err(map_err(maps::COUNTERS))?,
            backends: PerCpuArray::try_from(b).map_err(map_err(maps::BACKEND_STATS))?,
            addrs: self.backends.clone(),
        })
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The kernel's reason a program was refused, in one line.
fn verifier_reason(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            let last = log.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("processed")).unwrap_or("");
            format!("{io_error}: {last}")
        }
        other => other.to_string(),
    }
}

/// The counter maps.
pub struct Counters {
    counters: PerCpuArray<MapData, u64>,
    backends: PerCpuArray<MapData, BackendStats>,
    addrs: Vec<SocketAddr>,
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

    /// Per-backend totals.
    pub fn backends(&self) -> Vec<(SocketAddr, BackendStats)> {
        self.addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut t = BackendStats::default();
                if let Ok(v) = self.backends.get(&(i as u32), 0) {
                    for s in v.iter() {
                        t.packets_in += s.packets_in;
                        t.bytes_in += s.bytes_in;
                        t.packets_out += s.packets_out;
                        t.bytes_out += s.bytes_out;
                        t.flows += s.flows;
                        t.options += s.options;
                    }
                }
                (*a, t)
            })
            .collect()
    }
}
