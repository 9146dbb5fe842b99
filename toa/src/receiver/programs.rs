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
pub const RECEIVER: [ProgramSpec; 4] = [
    ProgramSpec {
        name: names::CAPTURE,
        hook: Hook::SockOps,
        // skb_data in sock_ops (header options) arrived in 5.10.
        min_kernel: (5, 10),
        role: "capture the option from the SYN, the handshake ACK or the first data packet",
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
    ProgramSpec {
        name: names::GETSOCKOPT,
        hook: Hook::GetSockopt,
        min_kernel: (5, 3),
        role: "answer the vendor getsockopt() calls (1348 vtoa, 4096 NAT64)",
    },
];

/// The client-side writer, attached by `toa inject` and the forwarder.
pub const WRITER: ProgramSpec = ProgramSpec {
    name: names::INJECT,
    hook: Hook::SockOps,
    min_kernel: (5, 10),
    role: "write the option into client packets",
};

/// Loads `spec`'s program into the kernel (once, before attaching it anywhere).
pub fn load(ebpf: &mut Ebpf, spec: &ProgramSpec) -> Result<()> {
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
pub enum NewLink {
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
                bpf_sys::obj_pin(fd.as_fd(), path).map_err(Error::io("pinning", path))?;
                PinnedLink::from_pin(path).map_err(|e| Error::io("opening pin", path)(std::io::Error::other(e)))
            }
        }
    }
}

/// Loads nothing: attaches `spec`'s loaded program to `cgroup` and returns
/// the link, pinned or not. Dropping an unpinned link detaches it.
pub fn attach_link(ebpf: &mut Ebpf, spec: &ProgramSpec, cgroup: impl AsFd) -> Result<NewLink> {
    if spec.hook == Hook::GetSockopt {
        let err = |source| Error::Program { name: spec.name, source };
        let program = ebpf.program_mut(spec.name).ok_or(Error::MissingProgram(spec.name))?;
        let p: &mut CgroupSockopt = program.try_into().map_err(err)?;
        let prog = p.fd().map_err(err)?;
        let link = bpf_sys::link_create(prog.as_fd(), cgroup.as_fd(), bpf_sys::BPF_CGROUP_GETSOCKOPT)
            .map_err(Error::io("attaching the getsockopt program to", "cgroup"))?;
        return Ok(NewLink::Raw(link));
    }
    attach(ebpf, spec, cgroup).map(NewLink::Aya)
}

/// Attaches `spec`'s loaded program to `cgroup`, returning the link.
///
/// The link stays attached as long as the returned [`FdLink`] (or a pin of it) lives.
/// Not for the getsockopt hook: use [`attach_link`].
pub fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec, cgroup: impl AsFd) -> Result<FdLink> {
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

/// The ids of the programs in effect for `attach_type` on a cgroup.
pub fn query_effective(cgroup: impl AsFd, attach_type: u32) -> std::io::Result<Vec<u32>> {
    bpf_sys::prog_query(cgroup.as_fd(), attach_type)
}

/// One line saying why a program did not load (the verifier's last words).
pub fn summarize(text: &str) -> String {
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

/// The bpf(2) commands aya does not offer here (getsockopt links, queries).
mod bpf_sys {
    use std::{
        ffi::CString,
        io,
        os::{
            fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
            unix::ffi::OsStrExt,
        },
        path::Path,
    };

    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_F_QUERY_EFFECTIVE: u64 = 1;
    const BPF_LINK_CREATE: libc::c_long = 28;
    /// `enum bpf_attach_type`: BPF_CGROUP_GETSOCKOPT.
    pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;

    fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
        // SAFETY: `attr` is a zero-padded `union bpf_attr` of 128 bytes.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
    }

    /// `BPF_LINK_CREATE` of `prog` on the cgroup `target`.
    pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
        let mut attr = [0u64; 16];
        // struct { __u32 prog_fd, target_fd, attach_type, flags; ... }
        attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(target.as_raw_fd() as u32) << 32);
        attr[1] = u64::from(attach_type);
        let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
        // SAFETY: the kernel returned a new file descriptor we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// `BPF_PROG_QUERY` (effective) of `attach_type` on the cgroup `target`.
    pub fn prog_query(target: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
        let mut ids = [0u32; 64];
        let mut attr = [0u64; 16];
        // struct { __u32 target_fd, attach_type, query_flags, attach_flags;
        //          __aligned_u64 prog_ids; __u32 prog_cnt; ... }
        attr[0] = u64::from(target.as_raw_fd() as u32) | (u64::from(attach_type) << 32);
        attr[1] = BPF_F_QUERY_EFFECTIVE;
        attr[2] = ids.as_mut_ptr() as u64;
        attr[3] = ids.len() as u64;
        bpf(BPF_PROG_QUERY, &mut attr)?;
        let count = (attr[3] & 0xffff_ffff) as usize;
        Ok(ids[..count.min(ids.len())].to_vec())
    }

    /// `BPF_OBJ_PIN` of `fd` at `path`.
    pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut attr = [0u64; 16];
        // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
        attr[0] = c.as_ptr() as u64;
        attr[1] = u64::from(fd.as_raw_fd() as u32);
        bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
    }
}

/// Loads and attaches in one step (for single-use programs such as the writer).
pub fn load_and_attach(ebpf: &mut Ebpf, spec: &ProgramSpec, cgroup: impl AsFd) -> Result<FdLink> {
    load(ebpf, spec)?;
    attach(ebpf, spec, cgroup)
}
