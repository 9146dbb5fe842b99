//! Loading the forwarder's eBPF object with its maps pinned, attaching (or
//! adopting) its programs, and detaching them.
//!
//! Every map is pinned as `<pin_dir>/maps/<NAME>` and reused by the next
//! `toa lb` on the same pin directory, so a restart (after a crash, a
//! SIGKILL, an upgrade) finds every flow where it was. The attachments
//! outlive the process too: on kernels with TCX (6.6+) the links are pinned
//! as `<pin_dir>/links/<IFNAME>`; before, the tc filters live on in the
//! kernel by themselves, at a fixed priority and handle. A new process
//! swaps its programs into those attachments in one step (`bpf_link_update`,
//! or a tc filter replace), so the interfaces never go without a program
//! and never have two.

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapInfo, ProgramArray},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};
use toa_common::lb::{
    counters::LB_COUNTER_COUNT,
    flow::{
        AddrKey, Backend, BackendStats, Flow, FlowKey, LbConfig, MAX_ADDRS, MAX_BACKENDS, MAX_FLOWS, MAX_SERVICES,
        Reverse, Service, ServiceKey, family,
    },
    insert::InsertBufs,
    maps, programs,
};

use crate::{Error, Result};

/// The eBPF object built from `toa-ebpf`'s `toa-lb` binary by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/toa-lb"));

/// tc priority of the forwarder's filter on kernels without TCX.
const TC_PRIORITY: u16 = 0x7a1;
/// tc handle of the forwarder's filter on kernels without TCX.
const TC_HANDLE: TcHandle = TcHandle::new(0, 0x7a1);

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

/// Where one forwarder pins its maps and links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbPins {
    root: PathBuf,
}

impl LbPins {
    /// The layout under `root` (on bpffs).
    pub fn new(root: impl Into<PathBuf>) -> LbPins {
        LbPins { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pin path of a map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Pin path of an interface's link (TCX).
    pub fn link(&self, ifname: &str) -> PathBuf {
        self.root.join("links").join(ifname)
    }

    /// The interfaces with a pinned link.
    pub fn linked_interfaces(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(self.root.join("links")) else { return Vec::new() };
        let mut names: Vec<String> = dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// Whether an earlier forwarder left maps here.
    pub fn has_maps(&self) -> bool {
        self.map(maps::FLOWS).exists()
    }

    /// Removes every pin and the directory.
    pub fn remove_all(&self) {
        for sub in ["maps", "links"] {
            let dir = self.root.join(sub);
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let _ = fs::remove_file(e.path());
                }
            }
            let _ = fs::remove_dir(&dir);
        }
        let _ = fs::remove_dir(&self.root);
    }
}

/// The (key size, value size, max entries) each map must have; a pin of
/// another shape comes from an incompatible version (or, for the Maglev
/// tables, another number of services or table size) and is replaced.
fn expected_shape(name: &str, table_entries: u32) -> (u32, u32, u32) {
    let s = |n: usize| n as u32;
    match name {
        maps::SERVICES => (s(size_of::<ServiceKey>()), s(size_of::<Service>()), MAX_SERVICES),
        maps::BACKENDS => (4, s(size_of::<Backend>()), MAX_BACKENDS),
        maps::FLOWS => (s(size_of::<FlowKey>()), s(size_of::<Flow>()), MAX_FLOWS),
        maps::REVERSE => (s(size_of::<FlowKey>()), s(size_of::<Reverse>()), MAX_FLOWS),
        maps::ADDRS => (s(size_of::<AddrKey>()), 1, MAX_ADDRS),
        maps::CONFIG => (4, s(size_of::<LbConfig>()), 1),
        maps::COUNTERS => (4, 8, LB_COUNTER_COUNT),
        maps::BACKEND_STATS => (4, s(size_of::<BackendStats>()), MAX_BACKENDS),
        maps::MAGLEV => (4, 4, table_entries),
        maps::JUMP => (4, 4, 1),
        // The work areas: only their key size is checked (their layout is private to the object).
        maps::SCRATCH => (4, 0, 1),
        _ => (4, 0, 1),
    }
}

/// Whether a pinned map has the shape this version needs.
fn compatible(path: &Path, name: &str, table_entries: u32) -> bool {
    let Ok(info) = MapInfo::from_pin(path) else { return false };
    let (k, v, n) = expected_shape(name, table_entries);
    let value_ok = v == 0 || info.value_size() == v;
    let scratch_ok = name != maps::SCRATCH || info.value_size() as usize >= size_of::<InsertBufs>();
    info.key_size() == k && value_ok && scratch_ok && info.max_entries() == n
}

/// The loaded object and what is attached.
pub struct Datapath {
    ebpf: Ebpf,
    pins: LbPins,
    attached: Vec<Attachment>,
    /// Whether the maps came from an earlier forwarder.
    pub adopted_maps: bool,
}

/// One interface's attachment.
struct Attachment {
    ifname: String,
    kind: AttachKind,
}

enum AttachKind {
    /// A TCX link, pinned.
    Tcx(FdLink),
    /// A tc filter at [`TC_PRIORITY`]/[`TC_HANDLE`].
    Netlink,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

fn program_load_err(e: aya::programs::ProgramError) -> Error {
    Error::ProgramLoad {
        name: programs::INGRESS,
        role: "the forwarder's data path (tc, bpf_fib_lookup, bpf_redirect_neigh)",
        reason: verifier_reason(&e),
    }
}

/// Whether tc programs attach through TCX links (6.6+).
fn has_tcx() -> bool {
    KernelVersion::current().map(|v| v >= KernelVersion::new(6, 6, 0)).unwrap_or(false)
}

impl Datapath {
    /// Loads the object with its maps pinned under `pins` (reusing the maps
    /// an earlier forwarder pinned there when they fit), the Maglev tables
    /// sized for `table_entries`, and fills the tail-call table. Nothing is
    /// attached yet.
    pub fn load(pins: &LbPins, table_entries: u32) -> Result<Datapath> {
        fs::create_dir_all(pins.root().join("maps")).map_err(Error::io("creating", pins.root()))?;
        fs::create_dir_all(pins.root().join("links")).map_err(Error::io("creating", pins.root()))?;
        let adopted_maps = pins.has_maps();
        for name in maps::ALL {
            let path = pins.map(name);
            if path.exists() && !compatible(&path, name, table_entries) {
                tracing::warn!(map = name, "replacing a pinned map of another shape");
                fs::remove_file(&path).map_err(Error::io("removing", &path))?;
            }
        }
        let paths: Vec<(&str, PathBuf)> = maps::ALL.iter().map(|m| (*m, pins.map(m))).collect();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::MAGLEV, table_entries.max(1));
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(|e| Error::ProgramLoad {
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
            prog.load().map_err(program_load_err)?;
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
        let mut jump = ProgramArray::try_from(ebpf.map_mut(maps::JUMP).ok_or(Error::MissingMap(maps::JUMP))?)
            .map_err(map_err(maps::JUMP))?;
        jump.set(0, &option_fd, 0).map_err(map_err(maps::JUMP))?;
        Ok(Datapath { ebpf, pins: pins.clone(), attached: Vec::new(), adopted_maps })
    }

    /// Takes a map out of the object (for the tables, the reaper and the counters).
    pub fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map> {
        self.ebpf.take_map(name).ok_or(Error::MissingMap(name))
    }

    fn ingress(&mut self) -> Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(programs::INGRESS)
            .ok_or(Error::MissingProgram(programs::INGRESS))?
            .try_into()
            .map_err(|source| Error::Program { name: programs::INGRESS, source })
    }

    /// Attaches the main program to the ingress of `ifname`, or swaps it
    /// into the attachment an earlier forwarder left there; returns whether
    /// it was adopted.
    pub fn attach(&mut self, ifname: &str) -> Result<bool> {
        let cannot =
            |e: &dyn std::fmt::Display| Error::Invalid(format!("cannot attach to the ingress of {ifname}: {e}"));
        if has_tcx() {
            let path = self.pins.link(ifname);
            let adopted = path.exists();
            let prog = self.ingress()?;
            let id = if adopted {
                let old = PinnedLink::from_pin(&path).map_err(|e| cannot(&e))?;
                let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| cannot(&e))?;
                prog.attach_to_link(link).map_err(|e| cannot(&e))?
            } else {
                prog.attach(ifname, TcAttachType::Ingress).map_err(|e| cannot(&e))?
            };
            let link = FdLink::try_from(prog.take_link(id).map_err(|e| cannot(&e))?).map_err(|e| cannot(&e))?;
            if !adopted {
                let pinned = link.pin(&path).map_err(|e| cannot(&e))?;
                self.attached.push(Attachment { ifname: ifname.into(), kind: AttachKind::Tcx(pinned.into()) });
            } else {
                self.attached.push(Attachment { ifname: ifname.into(), kind: AttachKind::Tcx(link) });
            }
            return Ok(adopted);
        }
        let _ = tc::qdisc_add_clsact(ifname);
        let opts = NlOptions { priority: TC_PRIORITY, handle: TC_HANDLE, ..NlOptions::default() };
        let prog = self.ingress()?;
        let (id, adopted) =
            match prog.attach_with_options(ifname, TcAttachType::Ingress, TcAttachOptions::Netlink(opts)) {
                Ok(id) => (id, false),
                Err(first) => {
                    // A filter of ours is there already (an earlier forwarder): replace its program.
                    let old =
                        SchedClassifierLink::attached(ifname, TcAttachType::Ingress, TC_PRIORITY, TC_HANDLE, None)
                            .map_err(|e| cannot(&e))?;
                    match prog.attach_to_link(old) {
                        Ok(id) => (id, true),
                        Err(_) => return Err(cannot(&first)),
                    }
                }
            };
        // Owned by the kernel from here: dropping the object must not detach it.
        std::mem::forget(prog.take_link(id).map_err(|e| cannot(&e))?);
        self.attached.push(Attachment { ifname: ifname.into(), kind: AttachKind::Netlink });
        Ok(adopted)
    }

    /// Detaches the program from `ifname` and removes its pin.
    pub fn detach(&mut self, ifname: &str) {
        let Some(i) = self.attached.iter().position(|a| a.ifname == ifname) else { return };
        let a = self.attached.remove(i);
        detach_one(&self.pins, a);
    }

    /// Detaches from every interface and removes the link pins (a clean stop).
    pub fn detach_all(&mut self) {
        for a in self.attached.drain(..).rev() {
            detach_one(&self.pins, a);
        }
    }

    /// Leaves everything attached and pinned for the next forwarder.
    pub fn leave_attached(&mut self) {
        for a in self.attached.drain(..) {
            if let AttachKind::Tcx(link) = a.kind {
                // The pin keeps the link; closing our descriptor does not detach it.
                drop(link);
            }
        }
    }
}

fn detach_one(pins: &LbPins, a: Attachment) {
    match a.kind {
        AttachKind::Tcx(link) => {
            let _ = fs::remove_file(pins.link(&a.ifname));
            drop(link);
        }
        AttachKind::Netlink => detach_netlink(&a.ifname),
    }
}

fn detach_netlink(ifname: &str) {
    if let Ok(link) = SchedClassifierLink::attached(ifname, TcAttachType::Ingress, TC_PRIORITY, TC_HANDLE, None) {
        // Dropping the link handle deletes the filter.
        drop(link);
    }
}

/// Detaches what an earlier forwarder left on `ifname` (an interface it
/// no longer forwards on): its pinned TCX link, or its tc filter.
pub fn detach_leftover(pins: &LbPins, ifname: &str) -> io::Result<()> {
    let path = pins.link(ifname);
    if path.exists() {
        if let Ok(link) = PinnedLink::from_pin(&path) {
            let _ = link.unpin();
        } else {
            fs::remove_file(&path)?;
        }
    } else if !has_tcx() {
        detach_netlink(ifname);
    }
    Ok(())
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
