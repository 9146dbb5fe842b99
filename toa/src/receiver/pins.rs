//! What a pin directory holds, and which of it is toa's.
//!
//! The agent pins its maps as `maps/<NAME>` and its links as
//! `links/<program>@<cgroup id>`. A pin is toa's by name *and* identity: a
//! map whose type and shape are those of the toa map of that name (in this
//! version's layout or an earlier one), a cgroup link whose program is the
//! receiver program the name says, attached where the name says. Anything
//! else in the directory belongs to someone else: toa neither adopts nor
//! removes it, and says so.

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use toa_common::{
    PeerRecord,
    config::{PortSet, ReceiverConfig, SLOTS},
    counters::COUNTER_COUNT,
    maps,
    trust::{TRUST_ENTRIES, TrustKey},
};

use crate::{
    receiver::programs::{self, KernelPrograms, ProgramSpec},
    sys::{
        bpf::{self, LinkInfo, MapInfo, ObjectKind, map_type},
        paths::PinDir,
    },
};

/// Maps shared between the agent's programs and its readers, pinned by name.
pub const PINNED_MAPS: [&str; 6] =
    [maps::PEERS, maps::COUNTERS, maps::ACTIVE, maps::CONFIG, maps::TRUSTED, maps::PORTS];

/// Suffix of a link pinned while a configuration is being applied, before
/// it takes its name (a rename, once the configuration is in force). Not a
/// dot: bpffs refuses names with one.
pub const PENDING: &str = "-pending";

/// Type and shape of a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `enum bpf_map_type`.
    pub map_type: u32,
    /// Key size.
    pub key: u32,
    /// Value size.
    pub value: u32,
    /// Most entries; `None`: any number (counters of an earlier version).
    pub entries: Option<u32>,
}

impl Layout {
    const fn new(map_type: u32, key: u32, value: u32, entries: u32) -> Layout {
        Layout { map_type, key, value, entries: Some(entries) }
    }

    fn fits(&self, info: &MapInfo) -> bool {
        (self.map_type, self.key, self.value) == (info.map_type, info.key_size, info.value_size)
            && self.entries.is_none_or(|n| n == info.max_entries)
    }

    fn describe(info: &MapInfo) -> String {
        format!(
            "{}, key {}, value {}, {} entries",
            map_type::name(info.map_type),
            info.key_size,
            info.value_size,
            info.max_entries
        )
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, key {}, value {}", map_type::name(self.map_type), self.key, self.value)?;
        match self.entries {
            Some(n) => write!(f, ", {n} entries"),
            None => Ok(()),
        }
    }
}

const fn size(n: usize) -> u32 {
    n as u32
}

/// This version's layout of the pinned map `name`.
pub fn current(name: &str) -> Option<Layout> {
    use map_type::{ARRAY, LPM_TRIE, PERCPU_ARRAY, SK_STORAGE};
    Some(match name {
        maps::PEERS => Layout::new(SK_STORAGE, 4, size(size_of::<PeerRecord>()), 0),
        maps::COUNTERS => Layout::new(PERCPU_ARRAY, 4, 8, COUNTER_COUNT),
        maps::ACTIVE => Layout::new(ARRAY, 4, 4, 1),
        maps::CONFIG => Layout::new(ARRAY, 4, size(size_of::<ReceiverConfig>()), SLOTS),
        maps::TRUSTED => Layout::new(LPM_TRIE, size(4 + size_of::<TrustKey>()), 1, TRUST_ENTRIES),
        maps::PORTS => Layout::new(ARRAY, 4, size(size_of::<PortSet>()), SLOTS),
        _ => return None,
    })
}

/// Layouts earlier toa versions pinned under `name`, and what they were.
fn earlier(name: &str) -> Vec<(Layout, &'static str)> {
    use map_type::{ARRAY, LPM_TRIE, PERCPU_ARRAY};
    const ONE_SLOT: &str = "the single-slot layout of an earlier toa";
    match name {
        maps::CONFIG => vec![(Layout::new(ARRAY, 4, size(size_of::<ReceiverConfig>()), 1), ONE_SLOT)],
        maps::TRUSTED => vec![(Layout::new(LPM_TRIE, 4 + 16, 1, 4096), ONE_SLOT)],
        maps::PORTS => vec![(Layout::new(ARRAY, 4, size(size_of::<PortSet>()), 1), ONE_SLOT)],
        maps::COUNTERS => vec![(
            Layout { map_type: PERCPU_ARRAY, key: 4, value: 8, entries: None },
            "the counters of an earlier toa (another number of counters)",
        )],
        _ => Vec::new(),
    }
}

/// Whose a pinned map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapVerdict {
    /// toa's, in this version's layout: adopted.
    Current,
    /// toa's, from an earlier version: replaced.
    Earlier(&'static str),
    /// Not toa's.
    Foreign(String),
}

/// Judges the object pinned at `path` under the map name `name`.
pub(crate) fn judge_map(path: &Path, name: &str) -> MapVerdict {
    let Some(want) = current(name) else {
        return MapVerdict::Foreign(match object(path) {
            Ok(Object::Map(info)) => format!("not a toa map ({})", Layout::describe(&info)),
            Ok(other) => format!("not a toa map ({})", other.what()),
            Err(e) => format!("not a toa map (unreadable: {e})"),
        });
    };
    let info = match object(path) {
        Ok(Object::Map(info)) => info,
        Ok(other) => return MapVerdict::Foreign(format!("{} named like toa's map {name}", other.what())),
        Err(e) => return MapVerdict::Foreign(format!("unreadable ({e})")),
    };
    if info.name != name[..name.len().min(15)] {
        return MapVerdict::Foreign(format!("a map called {:?}, not {name} ({})", info.name, Layout::describe(&info)));
    }
    if want.fits(&info) {
        return MapVerdict::Current;
    }
    if let Some((_, what)) = earlier(name).into_iter().find(|(l, _)| l.fits(&info)) {
        return MapVerdict::Earlier(what);
    }
    MapVerdict::Foreign(format!("{} (toa's {name}: {want})", Layout::describe(&info)))
}

/// A link pin that is toa's.
#[derive(Clone, Debug)]
pub struct LinkPin {
    /// The pin.
    pub path: PathBuf,
    /// Its file name (`<program>@<cgroup id>`, or that and [`PENDING`]).
    pub name: String,
    /// The program it attaches.
    pub spec: &'static ProgramSpec,
    /// What the kernel says about the link.
    pub info: LinkInfo,
}

impl LinkPin {
    /// Whether the pin is a link of a configuration that never came into force.
    pub fn pending(&self) -> bool {
        self.name.ends_with(PENDING)
    }
}

/// The program and cgroup id a link pin's name gives.
pub fn parse_link_name(name: &str) -> Option<(&'static ProgramSpec, u64)> {
    let (program, id) = name.strip_suffix(PENDING).unwrap_or(name).split_once('@')?;
    Some((programs::receiver(program)?, id.parse().ok()?))
}

/// Judges the object pinned at `path` (file name `name`) as a toa link.
pub(crate) fn judge_link(path: &Path, name: &str, kernel: &KernelPrograms) -> Result<LinkPin, String> {
    let Some((spec, cgroup_id)) = parse_link_name(name) else {
        return Err(match object(path) {
            Ok(o) => format!("not a toa link ({})", o.what()),
            Err(e) => format!("not a toa link (unreadable: {e})"),
        });
    };
    let info = match object(path) {
        Ok(Object::Link(info)) => info,
        Ok(other) => return Err(format!("{} named like toa's link of {}", other.what(), spec.name)),
        Err(e) => return Err(format!("unreadable ({e})")),
    };
    if info.link_type != bpf::LINK_TYPE_CGROUP || info.attach_type != spec.hook.attach_type_id() {
        return Err(format!(
            "a link (type {}, attach type {}) that is not {}'s",
            info.link_type, info.attach_type, spec.name
        ));
    }
    if info.cgroup_id != cgroup_id {
        return Err(format!("a link on cgroup id {}, not {cgroup_id} as its name says", info.cgroup_id));
    }
    if kernel.is(info.prog_id, spec) == Some(false) {
        let program = kernel.name(info.prog_id).unwrap_or("?");
        return Err(format!("a link of program {program} (id {}), not {}", info.prog_id, spec.name));
    }
    Ok(LinkPin { path: path.into(), name: name.into(), spec, info })
}

/// Something in the pin directory that is not toa's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Foreign {
    /// Where.
    pub path: PathBuf,
    /// What it is.
    pub why: String,
}

/// Everything in a pin directory, sorted into toa's and the rest.
#[derive(Debug, Default)]
pub struct Inventory {
    /// toa's maps by name, with the verdict on their layout (Current or Earlier).
    pub maps: Vec<(&'static str, PathBuf, MapVerdict)>,
    /// Maps pinned under a toa map's name that are not toa's.
    pub impostors: Vec<Foreign>,
    /// toa's links.
    pub links: Vec<LinkPin>,
    /// Everything else.
    pub foreign: Vec<Foreign>,
}

impl Inventory {
    /// Reads `pins` (an absent directory holds nothing).
    pub(crate) fn read(pins: &PinDir, kernel: &KernelPrograms) -> Inventory {
        let mut inv = Inventory::default();
        for (path, name, is_dir) in entries(pins.root()) {
            if !is_dir || (name != "maps" && name != "links") {
                inv.foreign.push(Foreign { why: describe_entry(&path, is_dir), path });
            }
        }
        for (path, name, is_dir) in entries(&pins.maps()) {
            match PINNED_MAPS.iter().find(|m| **m == name) {
                Some(known) if !is_dir => match judge_map(&path, known) {
                    MapVerdict::Foreign(why) => inv.impostors.push(Foreign { path, why }),
                    verdict => inv.maps.push((known, path, verdict)),
                },
                _ => {
                    let why = if is_dir { describe_entry(&path, true) } else { judge_foreign_map(&path) };
                    inv.foreign.push(Foreign { path, why });
                }
            }
        }
        for (path, name, is_dir) in entries(&pins.links()) {
            if is_dir {
                inv.foreign.push(Foreign { why: describe_entry(&path, true), path });
                continue;
            }
            match judge_link(&path, &name, kernel) {
                Ok(link) => inv.links.push(link),
                Err(why) => inv.foreign.push(Foreign { path, why }),
            }
        }
        inv
    }

    /// Every pin that is not toa's, in path order.
    pub fn not_toas(&self) -> Vec<&Foreign> {
        let mut all: Vec<&Foreign> = self.impostors.iter().chain(&self.foreign).collect();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all
    }
}

fn judge_foreign_map(path: &Path) -> String {
    match object(path) {
        Ok(Object::Map(info)) => format!("not a toa map ({})", Layout::describe(&info)),
        Ok(other) => format!("not toa's ({})", other.what()),
        Err(e) => format!("not toa's (unreadable: {e})"),
    }
}

fn describe_entry(path: &Path, is_dir: bool) -> String {
    if is_dir {
        return "a directory toa does not create".into();
    }
    match object(path) {
        Ok(o) => format!("not toa's ({})", o.what()),
        Err(e) => format!("not toa's (unreadable: {e})"),
    }
}

/// (path, file name, is a directory) of each entry of `dir`, sorted; none when absent.
fn entries(dir: &Path) -> Vec<(PathBuf, String, bool)> {
    let Ok(read) = fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(PathBuf, String, bool)> = read
        .flatten()
        .map(|e| {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            (e.path(), e.file_name().to_string_lossy().into_owned(), is_dir)
        })
        .collect();
    out.sort();
    out
}

/// A pinned BPF object.
enum Object {
    Map(MapInfo),
    Link(LinkInfo),
    Program,
    Other,
}

impl Object {
    fn what(&self) -> String {
        match self {
            Object::Map(info) => format!("a map: {}", Layout::describe(info)),
            Object::Link(info) => format!("a link of program id {}", info.prog_id),
            Object::Program => "a program".into(),
            Object::Other => "not a BPF map or link".into(),
        }
    }
}

fn object(path: &Path) -> std::io::Result<Object> {
    let fd = bpf::obj_get(path)?;
    Ok(match bpf::object_kind(fd.as_fd()) {
        ObjectKind::Map => Object::Map(bpf::map_info(fd.as_fd())?),
        ObjectKind::Link => Object::Link(bpf::link_info(fd.as_fd())?),
        ObjectKind::Program => Object::Program,
        ObjectKind::Other => Object::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_give_the_program_and_the_cgroup() {
        let (spec, id) = parse_link_name("toa_capture@4242").expect("a toa link name");
        assert_eq!((spec.name, id), ("toa_capture", 4242));
        let (spec, _) = parse_link_name("toa_getpeername6@7-pending").expect("pending");
        assert_eq!(spec.name, "toa_getpeername6");
        for bad in ["toa_inject@1", "toa_capture", "toa_capture@x", "other@1", "toa_capture@1.new"] {
            assert!(parse_link_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_pinned_map_has_a_layout_and_the_settings_maps_an_earlier_one() {
        for name in PINNED_MAPS {
            let now = current(name).expect("a layout");
            for (old, _) in earlier(name) {
                assert_ne!(Some(old), Some(now), "{name}: an earlier layout equal to the current one");
            }
        }
        for name in [maps::CONFIG, maps::TRUSTED, maps::PORTS] {
            assert_eq!(earlier(name).len(), 1, "{name}");
        }
        assert_eq!(current(maps::TRUSTED).map(|l| l.key), Some(21));
    }
}
