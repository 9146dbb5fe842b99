//! The `bpf(2)` commands aya does not offer here: getsockopt links, effective
//! program queries, pinning a raw link, and element updates from many threads
//! on one map descriptor without a lock.
//!
//! Every command goes through [`bpf`], which hands the kernel a zero-padded
//! `union bpf_attr` of 128 bytes.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_F_QUERY_EFFECTIVE: u64 = 1;

/// `enum bpf_attach_type` values toa attaches to or looks at.
pub mod attach {
    /// `BPF_CGROUP_SOCK_OPS`.
    pub const SOCK_OPS: u32 = 3;
    /// `BPF_CGROUP_GETSOCKOPT`.
    pub const GETSOCKOPT: u32 = 21;
    /// `BPF_CGROUP_INET4_GETPEERNAME`.
    pub const INET4_GETPEERNAME: u32 = 29;
    /// `BPF_CGROUP_INET6_GETPEERNAME`.
    pub const INET6_GETPEERNAME: u32 = 30;
    /// `BPF_TRACE_ITER`.
    pub const TRACE_ITER: u32 = 28;
}

/// `union bpf_attr`, as 16 words; each command fills the fields it reads.
type Attr = [u64; 16];

/// One `bpf(2)` call.
fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of 128 bytes; pointers
    // stored in it by the callers point at buffers that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// `BPF_LINK_CREATE` of `prog` on the cgroup `target`.
pub fn link_create(prog: BorrowedFd<'_>, target: BorrowedFd<'_>, attach_type: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::default();
    // struct { __u32 prog_fd, target_fd, attach_type, flags; ... }
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(target.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_CREATE` of an iterator program (it has no target).
pub fn iter_link_create(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = Attr::default();
    attr[0] = u64::from(prog.as_raw_fd() as u32);
    attr[1] = u64::from(attach::TRACE_ITER);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_ITER_CREATE`: a file whose reads run the iterator of `link`, over
/// the network namespace of the calling thread (for socket iterators).
pub fn iter_create(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = Attr::default();
    attr[0] = u64::from(link.as_raw_fd() as u32);
    let fd = bpf(BPF_ITER_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_PROG_QUERY` (effective) of `attach_type` on the cgroup `target`.
pub fn prog_query(target: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = Attr::default();
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
    let mut attr = Attr::default();
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(fd.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// `BPF_MAP_UPDATE_ELEM`: inserts or replaces `key → value` in `map`.
///
/// # Safety
///
/// The kernel reads the map's key size from `key` and its value size from
/// `value`: `K` and `V` must be exactly that large (a smaller type makes the
/// kernel read past it), and plain data without padding.
pub unsafe fn map_update<K, V>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = Attr::default();
    // struct { __u32 map_fd; __aligned_u64 key; __aligned_u64 value; __u64 flags; }
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = (key as *const K) as u64;
    attr[2] = (value as *const V) as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// `BPF_MAP_DELETE_ELEM`: removes `key` from `map`.
///
/// # Safety
///
/// The kernel reads the map's key size from `key`: `K` must be exactly that
/// large and plain data without padding.
pub unsafe fn map_delete<K>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = Attr::default();
    attr[0] = u64::from(map.as_raw_fd() as u32);
    attr[1] = (key as *const K) as u64;
    bpf(BPF_MAP_DELETE_ELEM, &mut attr).map(|_| ())
}
