//! The `bpf(2)` commands aya does not offer here: getsockopt links, program
//! queries on a cgroup, pinning and opening raw pins, what a link is attached
//! to, and element updates from many threads on one map descriptor without a
//! lock.
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
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_LINK_DETACH: libc::c_long = 34;
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

/// `BPF_PROG_QUERY` of `attach_type` on the cgroup `target`: the programs
/// in effect there (`effective`, inherited from ancestors included) or those
/// attached to this cgroup itself.
pub fn prog_query(target: BorrowedFd<'_>, attach_type: u32, effective: bool) -> io::Result<Vec<u32>> {
    // A cgroup holds at most 64 programs per attach type (BPF_CGROUP_MAX_PROGS);
    // the effective list adds its ancestors'.
    let mut ids = [0u32; 1024];
    let mut attr = Attr::default();
    // struct { __u32 target_fd, attach_type, query_flags, attach_flags;
    //          __aligned_u64 prog_ids; __u32 prog_cnt; ... }
    attr[0] = u64::from(target.as_raw_fd() as u32) | (u64::from(attach_type) << 32);
    attr[1] = if effective { BPF_F_QUERY_EFFECTIVE } else { 0 };
    attr[2] = ids.as_mut_ptr() as u64;
    attr[3] = ids.len() as u64;
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let count = (attr[3] & 0xffff_ffff) as usize;
    Ok(ids[..count.min(ids.len())].to_vec())
}

/// `BPF_LINK_DETACH`: detaches `link` from its hook now. Removing a link's
/// last pin releases it too, but from a kernel work item, later.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::default();
    // struct { __u32 link_fd; }
    attr[0] = u64::from(link.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
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

/// `BPF_OBJ_GET`: opens the object pinned at `path` (read and write).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = Attr::default();
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr[0] = c.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_TYPE_CGROUP`.
pub const LINK_TYPE_CGROUP: u32 = 3;

/// What `BPF_OBJ_GET_INFO_BY_FD` says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// `enum bpf_link_type`.
    pub link_type: u32,
    /// The link's id.
    pub id: u32,
    /// The id of the program it attaches.
    pub prog_id: u32,
    /// For a cgroup link: the cgroup's id (its directory's inode number).
    pub cgroup_id: u64,
    /// For a cgroup link: `enum bpf_attach_type`.
    pub attach_type: u32,
}

/// The kind of BPF object behind a descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// A map.
    Map,
    /// A program.
    Program,
    /// A link.
    Link,
    /// Anything else (another BPF object, or not a BPF object at all).
    Other,
}

/// What `fd` is, from the name of its anonymous inode (`anon_inode:bpf-link`, ...).
pub fn object_kind(fd: BorrowedFd<'_>) -> ObjectKind {
    match std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        Ok(target) => match target.as_os_str().as_bytes() {
            b"anon_inode:bpf-map" => ObjectKind::Map,
            b"anon_inode:bpf-prog" => ObjectKind::Program,
            b"anon_inode:bpf-link" => ObjectKind::Link,
            _ => ObjectKind::Other,
        },
        Err(_) => ObjectKind::Other,
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` of a link; `link` must be one ([`object_kind`]):
/// the kernel answers for maps and programs too, with their own layout.
pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info { __u32 type, id, prog_id; union { ...
    //     struct { __u64 cgroup_id; __u32 attach_type; } cgroup; ... }; }
    // (the union is 8-byte aligned: the cgroup fields start at byte 16).
    let mut info = [0u64; 8];
    let mut attr = Attr::default();
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    attr[0] = u64::from(link.as_raw_fd() as u32) | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let (word0, word1) = (info[0], info[1]);
    let link_type = (word0 & 0xffff_ffff) as u32;
    let id = (word0 >> 32) as u32;
    let prog_id = (word1 & 0xffff_ffff) as u32;
    Ok(LinkInfo { link_type, id, prog_id, cgroup_id: info[2], attach_type: (info[3] & 0xffff_ffff) as u32 })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says about a map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapInfo {
    /// `enum bpf_map_type`.
    pub map_type: u32,
    /// The map's id.
    pub id: u32,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Most entries.
    pub max_entries: u32,
    /// The name the map was created with (at most 15 bytes).
    pub name: String,
}

/// `BPF_OBJ_GET_INFO_BY_FD` of a map; `map` must be one ([`object_kind`]).
pub fn map_info(map: BorrowedFd<'_>) -> io::Result<MapInfo> {
    // struct bpf_map_info { __u32 type, id, key_size, value_size, max_entries,
    //     map_flags; char name[16]; ... }
    let mut info = [0u8; 80];
    let mut attr = Attr::default();
    attr[0] = u64::from(map.as_raw_fd() as u32) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let word = |i: usize| u32::from_ne_bytes([info[i], info[i + 1], info[i + 2], info[i + 3]]);
    let name = &info[24..40];
    let name = String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())]).into_owned();
    Ok(MapInfo { map_type: word(0), id: word(4), key_size: word(8), value_size: word(12), max_entries: word(16), name })
}

/// `enum bpf_map_type` values toa creates or names.
pub mod map_type {
    /// `BPF_MAP_TYPE_HASH`.
    pub const HASH: u32 = 1;
    /// `BPF_MAP_TYPE_ARRAY`.
    pub const ARRAY: u32 = 2;
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    pub const PERCPU_ARRAY: u32 = 6;
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    pub const LPM_TRIE: u32 = 11;
    /// `BPF_MAP_TYPE_SK_STORAGE`.
    pub const SK_STORAGE: u32 = 24;

    /// The name bpftool gives the type.
    pub fn name(t: u32) -> String {
        match t {
            HASH => "hash".into(),
            ARRAY => "array".into(),
            PERCPU_ARRAY => "percpu_array".into(),
            LPM_TRIE => "lpm_trie".into(),
            SK_STORAGE => "sk_storage".into(),
            other => format!("map type {other}"),
        }
    }
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
