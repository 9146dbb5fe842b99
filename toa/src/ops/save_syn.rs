//! `TCP_SAVE_SYN` on listeners that existed before the agent attached.
//!
//! With `capture_syn`, the capture program sets `TCP_SAVE_SYN` when a
//! listener is created (`BPF_SOCK_OPS_TCP_LISTEN_CB`); a server that was
//! already listening when the agent started would never keep its SYNs. So at
//! start (and after a reload) the agent walks the TCP sockets with the
//! `toa_save_syn` iterator (iter/tcp, which may call `bpf_setsockopt` on each
//! socket, locked): in every network namespace where a process of its
//! cgroups lives, it lists the listeners through socket diagnostics, keeps
//! those in its cgroups (and ports), puts their cookies into the iterator's
//! map and runs the iterator once.
//!
//! Entering another network namespace takes `CAP_SYS_ADMIN`; without it (the
//! systemd unit grants only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) only the
//! agent's own namespace is walked, and the others are reported as skipped.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{self, Read as _},
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::{Btf, Ebpf, maps::HashMap, programs::Iter};
use toa_common::programs::SAVE_SYN;

use super::sockdiag::SockDiag;
use crate::{
    Error, Result,
    receiver::agent::{Agent, Scope},
    sys::{bpf, netns},
};

/// The iterator's map of wanted listeners (cookie → unused).
pub const LISTENERS_MAP: &str = "TOA_SAVE_SYN_LISTENERS";
/// Its capacity: at most this many listeners per namespace and walk.
const MAX_LISTENERS: usize = 4096;
/// `TCP_LISTEN` as a state bit for socket diagnostics.
const LISTEN_STATES: u32 = 1 << super::sockdiag::TCP_LISTEN;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Network namespaces walked.
    pub namespaces: usize,
    /// Listeners given `TCP_SAVE_SYN`.
    pub listeners: usize,
    /// Namespaces that could not be entered, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Processes of the scopes whose namespace could not even be opened
    /// (it takes ptrace access: `CAP_SYS_PTRACE` for a more privileged process), with one reason.
    pub unreadable: (usize, Option<String>),
}

/// Loads the iterator program (once) for this kernel.
pub(crate) fn load(ebpf: &mut Ebpf) -> Result<()> {
    let err = |e: aya::programs::ProgramError| Error::ProgramLoad {
        name: SAVE_SYN,
        role: "set TCP_SAVE_SYN on listeners that predate the agent",
        reason: crate::receiver::programs::summarize(&e.to_string()),
    };
    let program: &mut Iter =
        ebpf.program_mut(SAVE_SYN).ok_or(Error::MissingProgram(SAVE_SYN))?.try_into().map_err(err)?;
    if program.fd().is_ok() {
        return Ok(());
    }
    let btf = Btf::from_sys_fs().map_err(|e| Error::Invalid(format!("reading the kernel's BTF: {e}")))?;
    program.load("tcp", &btf).map_err(err)
}

/// Sets `TCP_SAVE_SYN` on every listener in `scopes` (and `ports`, when not
/// empty) that exists now. [`load`] must have succeeded.
pub(crate) fn apply(ebpf: &mut Ebpf, scopes: &[Scope], ports: &[u16]) -> Result<Report> {
    let cgroups = cgroup_ids(scopes);
    let link = {
        let program: &mut Iter = ebpf
            .program_mut(SAVE_SYN)
            .ok_or(Error::MissingProgram(SAVE_SYN))?
            .try_into()
            .map_err(|e| Error::Program { name: SAVE_SYN, source: e })?;
        let prog = program.fd().map_err(|e| Error::Program { name: SAVE_SYN, source: e })?;
        bpf::iter_link_create(prog.as_fd()).map_err(Error::io("creating the iterator link for", SAVE_SYN))?
    };
    let map = ebpf.map_mut(LISTENERS_MAP).ok_or(Error::MissingMap(LISTENERS_MAP))?;
    let mut wanted: HashMap<_, u64, u8> =
        HashMap::try_from(map).map_err(|source| Error::Map { name: LISTENERS_MAP, source })?;
    let (found, unreadable) = namespaces(scopes);
    let mut report = Report { unreadable, ..Report::default() };
    for (label, netns) in found {
        // Listed and iterated inside the namespace (a thread that entered it).
        let walked = std::thread::scope(|s| {
            s.spawn(|| -> io::Result<Vec<u64>> {
                // Only this thread moves.
                if let Some(ns) = &netns {
                    netns::enter(ns)?;
                }
                let mut diag = SockDiag::open()?;
                let mut cookies = Vec::new();
                for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                    for s in diag.dump_tcp(family, LISTEN_STATES, &[])? {
                        let in_scope = s.cgroup_id.is_some_and(|id| cgroups.contains(&id));
                        if in_scope && (ports.is_empty() || ports.contains(&s.local.port())) {
                            cookies.push(s.cookie);
                        }
                    }
                }
                Ok(cookies)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
        });
        let cookies = match walked {
            Ok(c) => c,
            Err(e) => {
                report.skipped.push((label, e.to_string()));
                continue;
            }
        };
        report.namespaces += 1;
        if cookies.is_empty() {
            continue;
        }
        for chunk in cookies.chunks(MAX_LISTENERS) {
            for c in chunk {
                wanted.insert(c, 1, 0).map_err(|source| Error::Map { name: LISTENERS_MAP, source })?;
            }
            let ran = std::thread::scope(|s| {
                s.spawn(|| -> io::Result<()> {
                    if let Some(ns) = &netns {
                        netns::enter(ns)?;
                    }
                    // The iterator walks the namespace its creator is in.
                    let mut iter = File::from(bpf::iter_create(link.as_fd())?);
                    let mut sink = Vec::new();
                    iter.read_to_end(&mut sink).map(drop)
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
            });
            for c in chunk {
                let _ = wanted.remove(c);
            }
            ran.map_err(Error::io("running the iterator in", PathBuf::from(&label)))?;
            report.listeners += chunk.len();
        }
    }
    Ok(report)
}

/// [`load`] then [`apply`] for a running agent's cgroups and ports, saying in
/// the log what was done; never fails (listeners that predate the agent then
/// keep depending on start order). Call it after a start or a reload with
/// `capture_syn`, once the capture program is attached.
pub fn on_existing_listeners(agent: &mut Agent) {
    let scopes = agent.scopes().to_vec();
    let ports = agent.config().ports.clone();
    let ebpf = agent.ebpf_mut();
    let outcome = load(ebpf).and_then(|()| apply(ebpf, &scopes, &ports));
    match outcome {
        Ok(report) => {
            tracing::info!(
                listeners = report.listeners,
                namespaces = report.namespaces,
                "TCP_SAVE_SYN set on the listeners that predate the agent"
            );
            for (netns, why) in &report.skipped {
                tracing::warn!(netns = %netns, reason = %why, "listeners of this network namespace keep their SYNs only if created after the agent (entering it takes CAP_SYS_ADMIN)");
            }
            if let (n @ 1.., Some(why)) = &report.unreadable {
                tracing::warn!(processes = n, first = %why, "the network namespace of some processes in scope could not be opened (it takes CAP_SYS_PTRACE): listeners there that predate the agent and are not in its own namespace keep no SYNs");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "listeners created before the agent do not keep their SYNs on this kernel")
        }
    }
}

/// Ids (inode numbers) of every cgroup at or below the scopes.
fn cgroup_ids(scopes: &[Scope]) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    let mut queue: Vec<PathBuf> = scopes.iter().map(|s| s.path.clone()).collect();
    while let Some(dir) = queue.pop() {
        let Ok(meta) = fs::metadata(&dir) else { continue };
        if !ids.insert(meta.ino()) {
            continue;
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            queue.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    ids
}

/// The agent's own network namespace (`None`: no need to enter it) and
/// every other one a process of the scopes is in, labelled `net:[INODE]`;
/// and how many processes' namespace files could not be opened (one reason).
type Namespaces = (Vec<(String, Option<File>)>, (usize, Option<String>));

fn namespaces(scopes: &[Scope]) -> Namespaces {
    let own = fs::metadata("/proc/thread-self/ns/net").map(|m| (m.dev(), m.ino())).ok();
    let mut seen = BTreeSet::new();
    let mut out = vec![(own.map_or("own".into(), |(_, ino)| format!("net:[{ino}]")), None)];
    seen.extend(own);
    let mut unreadable = (0, None);
    let mut queue: Vec<PathBuf> = scopes.iter().map(|s| s.path.clone()).collect();
    while let Some(dir) = queue.pop() {
        for pid in fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
            let path = Path::new("/proc").join(pid.trim()).join("ns/net");
            let file = match File::open(&path) {
                Ok(f) => f,
                // Gone since listed: nothing to do for it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    unreadable.0 += 1;
                    unreadable.1.get_or_insert_with(|| format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let Ok(meta) = file.metadata() else { continue };
            if seen.insert((meta.dev(), meta.ino())) {
                out.push((format!("net:[{}]", meta.ino()), Some(file)));
            }
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            queue.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    (out, unreadable)
}
