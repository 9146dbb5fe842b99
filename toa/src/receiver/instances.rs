//! Other toa instances: toa's links pinned anywhere on bpffs, and the
//! receiver programs attached to a cgroup that belong to an instance other
//! than this one. Two instances on one cgroup run every program twice; the
//! agent refuses to become the second, and `toa doctor` names them.
//!
//! A program is toa's when the kernel names it so (program names need
//! CAP_SYS_ADMIN to read) or when a toa link pin points at it; the pin's
//! directory names the instance.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs::{self, File},
    path::{Path, PathBuf},
};

use crate::{
    Error, Result,
    receiver::{
        pins::{self, LinkPin},
        programs::{self, Hook, KernelPrograms, ProgramSpec},
    },
    sys::host,
};

/// How many directories below a bpffs mount a pin directory is looked for
/// (its `links` directory one further).
const MAX_DEPTH: usize = 4;

/// A toa link pinned somewhere on bpffs.
#[derive(Clone, Debug)]
pub struct Found {
    /// The pin directory it is in (the parent of `links/`).
    pub pin_dir: PathBuf,
    /// The link.
    pub link: LinkPin,
}

/// Every toa link pinned on bpffs: `<dir>/links/<program>@<cgroup id>`,
/// under each bpffs mount point and under `also` (pin directories elsewhere).
pub fn pinned_links(kernel: &KernelPrograms, also: &[&Path]) -> Vec<Found> {
    let mut roots: Vec<PathBuf> = host::bpffs_mounts();
    roots.extend(also.iter().filter_map(|p| p.parent()).map(Path::to_path_buf));
    roots.sort();
    roots.dedup();
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for root in roots {
        walk(&root, 0, kernel, &mut seen, &mut found);
    }
    found
}

fn walk(dir: &Path, depth: usize, kernel: &KernelPrograms, seen: &mut BTreeSet<PathBuf>, out: &mut Vec<Found>) {
    if depth > MAX_DEPTH || !seen.insert(dir.to_path_buf()) {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        // Never follow links out of the tree: file_type does not.
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if entry.file_name() == "links" {
            let Ok(links) = fs::read_dir(&path) else { continue };
            for link in links.flatten() {
                let name = link.file_name().to_string_lossy().into_owned();
                if pins::parse_link_name(&name).is_none() {
                    continue;
                }
                if let Ok(link) = pins::judge_link(&link.path(), &name, kernel) {
                    out.push(Found { pin_dir: dir.to_path_buf(), link });
                }
            }
        } else {
            walk(&path, depth + 1, kernel, seen, out);
        }
    }
}

/// Receiver programs on one cgroup that belong to another instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Others {
    /// The cgroup.
    pub cgroup: PathBuf,
    /// Each program: name and id.
    pub programs: Vec<(&'static str, u32)>,
    /// The pin directories holding their links (none when not pinned).
    pub pin_dirs: BTreeSet<PathBuf>,
}

impl Others {
    /// One line for the operator: what is there, whose, and what to do.
    pub fn refusal(&self) -> String {
        let programs: Vec<String> = self.programs.iter().map(|(n, id)| format!("{n} (id {id})")).collect();
        let owner = match self.pin_dirs.iter().next() {
            Some(dir) => {
                let dirs: Vec<String> = self.pin_dirs.iter().map(|d| d.display().to_string()).collect();
                format!(
                    "pinned under {}; stop that agent, or remove its programs with `toa detach --pin-dir {}`, \
                     or give this agent pin_dir = {:?}",
                    dirs.join(", "),
                    dir.display(),
                    dir.display().to_string()
                )
            }
            None => "not pinned on bpffs (a running process holds them); stop it".to_string(),
        };
        format!("another toa instance acts on {}: {}, {owner}", self.cgroup.display(), programs.join(", "))
    }
}

/// The receiver programs attached directly to `cgroup` (`cgroup_id` its id)
/// that are not `own` (program ids of this instance: its loaded programs and
/// the links pinned in its own pin directory).
pub fn others_on(
    cgroup: &Path,
    cgroup_id: u64,
    own: &HashSet<u32>,
    kernel: &KernelPrograms,
    found: &[Found],
) -> Result<Option<Others>> {
    let dir = File::open(cgroup).map_err(Error::io("opening", cgroup))?;
    let mut others = Others { cgroup: cgroup.into(), programs: Vec::new(), pin_dirs: BTreeSet::new() };
    for hook in Hook::receiver_hooks() {
        let ids = programs::query_attached(&dir, hook.attach_type_id())
            .map_err(Error::io("querying the programs attached to", cgroup))?;
        for id in ids.into_iter().filter(|id| !own.contains(id)) {
            let pinned: Vec<&Found> = found
                .iter()
                .filter(|f| f.link.info.prog_id == id && f.link.info.cgroup_id == cgroup_id && f.link.spec.hook == hook)
                .collect();
            let spec = kernel.receiver_on(id, hook).or_else(|| pinned.first().map(|f| f.link.spec));
            if let Some(spec) = spec {
                others.programs.push((spec.name, id));
                others.pin_dirs.extend(pinned.iter().map(|f| f.pin_dir.clone()));
            }
        }
    }
    Ok((!others.programs.is_empty()).then_some(others))
}

/// A receiver program in effect more than once on a cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Twice {
    /// The program.
    pub program: &'static str,
    /// How many times.
    pub count: usize,
    /// The pin directories of the links that attach it (where found).
    pub pin_dirs: BTreeSet<PathBuf>,
    /// How many of its attachments no pin was found for.
    pub unpinned: usize,
}

/// The receiver programs in effect more than once on `cgroup` (attached to
/// it or to an ancestor).
pub fn twice_on(cgroup: &Path, kernel: &KernelPrograms, found: &[Found]) -> Vec<Twice> {
    let Ok(dir) = File::open(cgroup) else { return Vec::new() };
    let mut seen: BTreeMap<&'static str, Twice> = BTreeMap::new();
    for hook in Hook::receiver_hooks() {
        for id in programs::query_effective(&dir, hook.attach_type_id()).unwrap_or_default() {
            let pinned: BTreeSet<PathBuf> = found
                .iter()
                .filter(|f| f.link.info.prog_id == id && f.link.spec.hook == hook)
                .map(|f| f.pin_dir.clone())
                .collect();
            let spec: Option<&'static ProgramSpec> = kernel.receiver_on(id, hook).or_else(|| {
                found.iter().find(|f| f.link.info.prog_id == id && f.link.spec.hook == hook).map(|f| f.link.spec)
            });
            let Some(spec) = spec else { continue };
            let entry = seen.entry(spec.name).or_insert(Twice {
                program: spec.name,
                count: 0,
                pin_dirs: BTreeSet::new(),
                unpinned: 0,
            });
            entry.count += 1;
            if pinned.is_empty() {
                entry.unpinned += 1;
            }
            entry.pin_dirs.extend(pinned);
        }
    }
    seen.into_values().filter(|t| t.count > 1).collect()
}
