//! The declarative table of programs: what the agent attaches, where, and how.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use toa_common::programs as names;

use crate::{Error, Result, sys::bpf};

/// The kind of hook a program attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `BPF_CGROUP_SOCK_OPS`.
    SockOps,
    /// `BPF_CGROUP_INET4_GETPEERNAME`.
    GetPeerName4,
    /// `BPF_CGROUP_INET6_GETPEERNAME`.
    GetPeerName6,
    /// `BPF_CGROUP_GETSOCKOPT`.
    GetSockopt,
}

impl Hook {
    /// The name bpftool and the kernel use for the attach type.
    pub fn attach_type(self) -> &'static str {
        match self {
            Hook::SockOps => "sock_ops",
            Hook::GetPeerName4 => "cgroup_inet4_getpeername",
            Hook::GetPeerName6 => "cgroup_inet6_getpeername",
            Hook::GetSockopt => "cgroup_getsockopt",
        }
    }

    /// The attach type's number (`enum bpf_attach_type`).
    pub fn attach_type_id(self) -> u32 {
        match self {
            Hook::SockOps => bpf::attach::SOCK_OPS,
            Hook::GetPeerName4 => bpf::attach::INET4_GETPEERNAME,
            Hook::GetPeerName6 => bpf::attach::INET6_GETPEERNAME,
            Hook::GetSockopt => bpf::attach::GETSOCKOPT,
        }
    }

    /// The program type of what attaches here (`enum bpf_prog_type`).
    pub fn prog_type_id(self) -> u32 {
        match self {
            // BPF_PROG_TYPE_SOCK_OPS
            Hook::SockOps => 13,
            // BPF_PROG_TYPE_CGROUP_SOCK_ADDR
            Hook::GetPeerName4 | Hook::GetPeerName6 => 18,
            // BPF_PROG_TYPE_CGROUP_SOCKOPT
            Hook::GetSockopt => 25,
        }
    }

    /// The hooks the receiver uses, each once.
    pub fn receiver_hooks() -> Vec<Hook> {
        let mut hooks: Vec<Hook> = RECEIVER.iter().map(|s| s.hook).collect();
        hooks.dedup();
        hooks
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    /// Program (function) name in the object.
    pub name: &'static str,
    /// Where it attaches.
    pub hook: Hook,
    /// Oldest kernel that runs it: (major, minor).
    pub min_kernel: (u32, u32),
    /// What it does, for `toa status` and logs.
    pub role: &'static str,
    /// Whether the receiver runs without it when the kernel cannot load it
    /// (degraded, with a warning; `toa doctor` says the same).
    pub optional: bool,
}

/// The receiver's programs, attached by `toa agent`.
pub const RECEIVER: [ProgramSpec; 4] = [
    ProgramSpec {
        name: names::CAPTURE,
        hook: Hook::SockOps,
        // skb_data in sock_ops (header options) arrived in 5.10.
        min_kernel: (5, 10),
        role: "capture the option from the SYN, the handshake ACK or the first data packet",
        optional: false,
    },
    ProgramSpec {
        name: names::GETPEERNAME4,
        hook: Hook::GetPeerName4,
        min_kernel: (5, 8),
        role: "present the real client to IPv4 getpeername()/accept()",
        optional: false,
    },
    ProgramSpec {
        name: names::GETPEERNAME6,
        hook: Hook::GetPeerName6,
        min_kernel: (5, 8),
        role: "present the real client to IPv6 getpeername()/accept()",
        optional: false,
    },
    ProgramSpec {
        name: names::GETSOCKOPT,
        hook: Hook::GetSockopt,
        min_kernel: (5, 3),
        role: "answer the vendor getsockopt() calls (1348 vtoa, 4096 NAT64)",
        // getpeername()/accept() work without it.
        optional: true,
    },
];

/// The receiver program called `name`.
pub fn receiver(name: &str) -> Option<&'static ProgramSpec> {
    RECEIVER.iter().find(|s| s.name == name)
}

/// A program's name as the kernel keeps it (`BPF_OBJ_NAME_LEN`: 15 bytes
/// and a NUL): `toa_getpeername4` and `6` both read `toa_getpeername`.
pub(crate) fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// The programs the kernel holds, by id: name and type. Listing them takes
/// CAP_SYS_ADMIN; without it the table is empty and names are unknown.
pub(crate) struct KernelPrograms {
    by_id: std::collections::HashMap<u32, (String, u32)>,
}

impl KernelPrograms {
    /// Reads the table.
    pub fn read() -> KernelPrograms {
        let by_id = aya::programs::loaded_programs()
            .flatten()
            .map(|p| (p.id(), (p.name_as_str().unwrap_or("").to_string(), p.program_type() as u32)))
            .collect();
        KernelPrograms { by_id }
    }

    /// Whether any program could be read.
    pub fn readable(&self) -> bool {
        !self.by_id.is_empty()
    }

    /// The kernel's name of program `id`.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(|(n, _)| n.as_str())
    }

    /// Whether program `id`, found on `hook`, is the receiver program `spec`
    /// (of any toa version: by name and type). `None` when names cannot be read.
    pub fn is(&self, id: u32, spec: &ProgramSpec) -> Option<bool> {
        if !self.readable() {
            return None;
        }
        Some(
            self.by_id
                .get(&id)
                .is_some_and(|(name, ty)| name == kernel_name(spec.name) && *ty == spec.hook.prog_type_id()),
        )
    }

    /// The receiver program on `hook` that program `id` is, if any.
    pub fn receiver_on(&self, id: u32, hook: Hook) -> Option<&'static ProgramSpec> {
        RECEIVER.iter().filter(|s| s.hook == hook).find(|s| self.is(id, s) == Some(true))
    }
}

/// The receiver's program that needs the newest kernel, of those it cannot
/// run without: its `min_kernel` is the oldest kernel toa supports.
pub fn newest_required() -> &'static ProgramSpec {
    RECEIVER.iter().filter(|s| !s.optional).max_by_key(|s| s.min_kernel).unwrap_or(&RECEIVER[0])
}

/// The client-side writer, attached by `toa inject` and the forwarder.
pub(crate) const WRITER: ProgramSpec = ProgramSpec {
    name: names::INJECT,
    hook: Hook::SockOps,
    min_kernel: (5, 10),
    role: "write the option into client packets",
    optional: false,
};

/// Loads `spec`'s program into the kernel (once, before attaching it anywhere).
pub(crate) fn load(ebpf: &mut Ebpf, spec: &ProgramSpec) -> Result<()> {
    let err = |source: aya::programs::ProgramError| {
        let text = source.to_string();
        tracing::debug!(program = spec.name, "load failed: {text}");
        Error::ProgramLoad { name: spec.name, role: spec.role, reason: summarize(&text) }
    };
    let program = ebpf.program_mut(spec.name).ok_or(Error::MissingProgram(spec.name))?;
    match spec.hook {
        Hook::SockOps => <&mut SockOps>::try_from(program).map_err(err)?.load().map_err(err),
        Hook::GetPeerName4 | Hook::GetPeerName6 => {
            <&mut CgroupSockAddr>::try_from(program).map_err(err)?.load().map_err(err)
        }
        Hook::GetSockopt => <&mut CgroupSockopt>::try_from(program).map_err(err)?.load().map_err(err),
    }
}

/// A freshly created link, not pinned yet.
pub(crate) enum NewLink {
    /// A link aya manages.
    Aya(FdLink),
    /// A link created with the raw syscall (aya cannot turn a getsockopt link into an `FdLink`).
    Raw(OwnedFd),
}

impl NewLink {
    /// Pins the link at `path`; it then stays attached until the pin is removed.
    pub fn pin(self, path: &Path) -> Result<PinnedLink> {
        match self {
            NewLink::Aya(link) => link.pin(path).map_err(|source| Error::Pin { path: path.into(), source }),
            NewLink::Raw(fd) => {
                bpf::obj_pin(fd.as_fd(), path).map_err(Error::io("pinning", path))?;
                PinnedLink::from_pin(path).map_err(|e| Error::io("opening pin", path)(std::io::Error::other(e)))
            }
        }
    }
}

/// Loads nothing: attaches `spec`'s loaded program to `cgroup` and returns
/// the link, pinned or not. Dropping an unpinned link detaches it.
pub(crate) fn attach_link(ebpf: &mut Ebpf, spec: &ProgramSpec, cgroup: impl AsFd) -> Result<NewLink> {
    if spec.hook == Hook::GetSockopt {
        let err = |source| Error::Program { name: spec.name, source };
        let program = ebpf.program_mut(spec.name).ok_or(Error::MissingProgram(spec.name))?;
        let p: &mut CgroupSockopt = program.try_into().map_err(err)?;
        let prog = p.fd().map_err(err)?;
        let link = bpf::link_create(prog.as_fd(), cgroup.as_fd(), bpf::attach::GETSOCKOPT)
            .map_err(Error::io("attaching the getsockopt program to", "cgroup"))?;
        return Ok(NewLink::Raw(link));
    }
    attach(ebpf, spec, cgroup).map(NewLink::Aya)
}

/// Attaches `spec`'s loaded program to `cgroup`, returning the link.
///
/// The link stays attached as long as the returned [`FdLink`] (or a pin of it) lives.
/// Not for the getsockopt hook: use [`attach_link`].
pub(crate) fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec, cgroup: impl AsFd) -> Result<FdLink> {
    let err = |source| Error::Program { name: spec.name, source };
    let link_err = |source| Error::Link { name: spec.name, source };
    let program = ebpf.program_mut(spec.name).ok_or(Error::MissingProgram(spec.name))?;
    match spec.hook {
        Hook::SockOps => {
            let p: &mut SockOps = program.try_into().map_err(err)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
            FdLink::try_from(p.take_link(id).map_err(err)?).map_err(link_err)
        }
        Hook::GetPeerName4 | Hook::GetPeerName6 => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
            FdLink::try_from(p.take_link(id).map_err(err)?).map_err(link_err)
        }
        Hook::GetSockopt => Err(Error::Invalid("the getsockopt hook is attached with attach_link".into())),
    }
}

/// The ids of the programs in effect for `attach_type` on a cgroup
/// (those of its ancestors included).
pub(crate) fn query_effective(cgroup: impl AsFd, attach_type: u32) -> std::io::Result<Vec<u32>> {
    bpf::prog_query(cgroup.as_fd(), attach_type, true)
}

/// The ids of the programs attached for `attach_type` to the cgroup itself.
pub(crate) fn query_attached(cgroup: impl AsFd, attach_type: u32) -> std::io::Result<Vec<u32>> {
    bpf::prog_query(cgroup.as_fd(), attach_type, false)
}

/// One line saying why a program did not load (the verifier's last words).
pub(crate) fn summarize(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [first, .., last] => {
            // The syscall's error, then the verifier's verdict (the last line
            // before its statistics).
            let head = first.split(". Verifier output").next().unwrap_or(first);
            let verdict = lines
                .iter()
                .rev()
                .find(|l| {
                    !l.starts_with("verification time") && !l.starts_with("stack depth") && !l.starts_with("processed ")
                })
                .unwrap_or(last);
            format!("{head}; verifier: {verdict}")
        }
    }
}

/// Loads and attaches in one step (for single-use programs such as the writer).
pub(crate) fn load_and_attach(ebpf: &mut Ebpf, spec: &ProgramSpec, cgroup: impl AsFd) -> Result<FdLink> {
    load(ebpf, spec)?;
    attach(ebpf, spec, cgroup)
}
