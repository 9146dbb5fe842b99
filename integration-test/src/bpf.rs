//! Minimal BPF objects that are not toa's: a program that only returns 1,
//! attached to a cgroup the old way (exclusive, no override) or through a
//! link pinned on bpffs. Tests use them as "someone else's" programs and
//! pins: toa must neither remove nor adopt them.
//!
//! Everything goes through raw `bpf(2)` calls so that no toolchain is
//! needed to build the object at test time.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `BPF_PROG_TYPE_SOCK_OPS`.
pub const PROG_TYPE_SOCK_OPS: u32 = 13;
/// `BPF_CGROUP_SOCK_OPS`.
pub const ATTACH_SOCK_OPS: u32 = 3;

/// `union bpf_attr`, as 16 words.
type Attr = [u64; 16];

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of 128 bytes; the
    // pointers stored in it by the callers outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// A loaded program `r0 = 1; exit` (a sock_ops program that lets every
/// operation through and does nothing else).
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
}

impl Program {
    /// Loads a sock_ops program named `name` (at most 15 bytes).
    ///
    /// # Panics
    ///
    /// If the kernel refuses it (not root, no BPF).
    pub fn sock_ops(name: &str) -> Program {
        // mov r0, 1; exit
        let insns: [u64; 2] =
            [u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
        let license = c"GPL";
        let mut attr = Attr::default();
        // struct { __u32 prog_type, insn_cnt; __aligned_u64 insns, license;
        //          __u32 log_level, log_size; __aligned_u64 log_buf;
        //          __u32 kern_version, prog_flags; char prog_name[16]; ... }
        attr[0] = u64::from(PROG_TYPE_SOCK_OPS) | (2u64 << 32);
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        let mut prog_name = [0u8; 16];
        assert!(name.len() < prog_name.len(), "program name {name:?} longer than 15 bytes");
        prog_name[..name.len()].copy_from_slice(name.as_bytes());
        attr[6] = u64::from_le_bytes(prog_name[..8].try_into().expect("8 bytes"));
        attr[7] = u64::from_le_bytes(prog_name[8..].try_into().expect("8 bytes"));
        let fd = bpf(BPF_PROG_LOAD, &mut attr).unwrap_or_else(|e| panic!("loading the program {name}: {e}"));
        // SAFETY: the kernel returned a new file descriptor we now own.
        Program { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } }
    }

    /// Attaches the program to `cgroup` at `BPF_CGROUP_SOCK_OPS` with no
    /// flags: exclusive, and no program may be attached below it. Detached
    /// when the returned guard is dropped.
    ///
    /// # Panics
    ///
    /// If the kernel refuses.
    pub fn attach_exclusive(&self, cgroup: &Path) -> Attachment {
        let dir = File::open(cgroup).unwrap_or_else(|e| panic!("opening {}: {e}", cgroup.display()));
        let mut attr = attach_attr(dir.as_fd(), self.fd.as_fd());
        bpf(BPF_PROG_ATTACH, &mut attr).unwrap_or_else(|e| panic!("attaching to {}: {e}", cgroup.display()));
        Attachment { cgroup: dir, prog: self.fd.try_clone().expect("dup of the program fd"), path: cgroup.into() }
    }

    /// Creates a link of the program on `cgroup` (`BPF_CGROUP_SOCK_OPS`)
    /// and pins it at `pin`. The link stays until the pin is removed.
    ///
    /// # Panics
    ///
    /// If the kernel refuses.
    pub fn pin_link(&self, cgroup: &Path, pin: &Path) {
        let dir = File::open(cgroup).unwrap_or_else(|e| panic!("opening {}: {e}", cgroup.display()));
        let mut attr = Attr::default();
        // struct { __u32 prog_fd, target_fd, attach_type, flags; ... }
        attr[0] = u64::from(self.fd.as_raw_fd() as u32) | (u64::from(dir.as_raw_fd() as u32) << 32);
        attr[1] = u64::from(ATTACH_SOCK_OPS);
        let link = bpf(BPF_LINK_CREATE, &mut attr).unwrap_or_else(|e| panic!("linking to {}: {e}", cgroup.display()));
        // SAFETY: the kernel returned a new file descriptor we now own.
        let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
        let c = CString::new(pin.as_os_str().as_bytes()).expect("no NUL in the pin path");
        let mut attr = Attr::default();
        // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
        attr[0] = c.as_ptr() as u64;
        attr[1] = u64::from(link.as_raw_fd() as u32);
        bpf(BPF_OBJ_PIN, &mut attr).unwrap_or_else(|e| panic!("pinning {}: {e}", pin.display()));
    }
}

/// `BPF_PROG_ATTACH`/`DETACH` attributes: `{ __u32 target_fd, attach_bpf_fd, attach_type, attach_flags; }`.
fn attach_attr(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> Attr {
    let mut attr = Attr::default();
    attr[0] = u64::from(cgroup.as_raw_fd() as u32) | (u64::from(prog.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(ATTACH_SOCK_OPS);
    attr
}

/// A program attached with `BPF_PROG_ATTACH`; detached on drop.
#[derive(Debug)]
pub struct Attachment {
    cgroup: File,
    prog: OwnedFd,
    path: PathBuf,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let mut attr = attach_attr(self.cgroup.as_fd(), self.prog.as_fd());
        if let Err(e) = bpf(BPF_PROG_DETACH, &mut attr) {
            eprintln!("detaching the test program from {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Cgroup;

    #[test]
    #[ignore = "needs root: BPF, cgroups"]
    fn an_exclusive_program_forbids_attaching_below_and_goes_on_drop() {
        crate::require_root();
        let parent = Cgroup::new("toa-t-bpf");
        let child = parent.path().join("child");
        std::fs::create_dir(&child).expect("child cgroup");
        let prog = Program::sock_ops("t_exclusive");
        let other = Program::sock_ops("t_other");
        let attached = prog.attach_exclusive(parent.path());
        let dir = File::open(&child).expect("child");
        let mut attr = attach_attr(dir.as_fd(), other.fd.as_fd());
        let refused = bpf(BPF_PROG_ATTACH, &mut attr).expect_err("attaching below an exclusive program");
        assert_eq!(refused.raw_os_error(), Some(libc::EPERM), "{refused}");
        drop(attached);
        bpf(BPF_PROG_ATTACH, &mut attr).expect("attaching once the exclusive program is gone");
        bpf(BPF_PROG_DETACH, &mut attr).expect("detaching");
    }
}
