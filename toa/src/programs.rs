//! The declarative table of programs: what the agent attaches, where, and how.

use std::os::fd::AsFd;

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, SockOps, links::FdLink},
};
use toa_common::programs as names;

use crate::{Error, Result};

/// The kind of hook a program attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `BPF_CGROUP_SOCK_OPS`.
    SockOps,
    /// `BPF_CGROUP_INET4_GETPEERNAME`.
    GetPeerName4,
    /// `BPF_CGROUP_INET6_GETPEERNAME`.
    GetPeerName6,
}

impl Hook {
    /// The name bpftool and the kernel use for the attach type.
    pub fn attach_type(self) -> &'static str {
        match self {
            Hook::SockOps => "sock_ops",
            Hook::GetPeerName4 => "cgroup_inet4_getpeername",
            Hook::GetPeerName6 => "cgroup_inet6_getpeername",
        }
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
}

/// The receiver's programs, attached by `toa agent`.
pub const RECEIVER: [ProgramSpec; 3] = [
    ProgramSpec {
        name: names::CAPTURE,
        hook: Hook::SockOps,
        // skb_data in sock_ops (header options) arrived in 5.10.
        min_kernel: (5, 10),
        role: "capture the option from the handshake ACK",
    },
    ProgramSpec {
        name: names::GETPEERNAME4,
        hook: Hook::GetPeerName4,
        min_kernel: (5, 8),
        role: "present the real client to IPv4 getpeername()/accept()",
    },
    ProgramSpec {
        name: names::GETPEERNAME6,
        hook: Hook::GetPeerName6,
        min_kernel: (5, 8),
        role: "present the real client to IPv6 getpeername()/accept()",
    },
];

/// The client-side writer, attached by `toa inject` and the forwarder.
pub const WRITER: ProgramSpec = ProgramSpec {
    name: names::INJECT,
    hook: Hook::SockOps,
    min_kernel: (5, 10),
    role: "write the option into client packets",
};

/// Loads `spec`'s program and attaches it to `cgroup`, returning the link.
///
/// The link stays attached as long as the returned [`FdLink`] (or a pin of it) lives.
pub fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec, cgroup: impl AsFd) -> Result<FdLink> {
    let err = |source| Error::Program { name: spec.name, source };
    let program = ebpf.program_mut(spec.name).ok_or(Error::MissingProgram(spec.name))?;
    match spec.hook {
        Hook::SockOps => {
            let p: &mut SockOps = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
            let link = p.take_link(id).map_err(err)?;
            FdLink::try_from(link).map_err(|source| Error::Link { name: spec.name, source })
        }
        Hook::GetPeerName4 | Hook::GetPeerName6 => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            p.load().map_err(err)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
            let link = p.take_link(id).map_err(err)?;
            FdLink::try_from(link).map_err(|source| Error::Link { name: spec.name, source })
        }
    }
}
