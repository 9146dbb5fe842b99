//! A minimal `NETLINK_SOCK_DIAG` client: dumps the TCP sockets of the
//! current network namespace, optionally with the value each socket holds in
//! given `BPF_MAP_TYPE_SK_STORAGE` maps (`INET_DIAG_REQ_SK_BPF_STORAGES`).
//!
//! This is how `ss` lists sockets; the kernel walks its socket tables on the
//! caller's behalf, so reading the per-socket storage this way never touches
//! the data path (no program runs, no map is iterated by a BPF program).
//! Raw `libc` only: the messages are small fixed structs plus attributes.

use std::{
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `INET_DIAG_REQ_SK_BPF_STORAGES` request attribute (linux/inet_diag.h).
const INET_DIAG_REQ_SK_BPF_STORAGES: u16 = 2;
/// `SK_DIAG_BPF_STORAGE_REQ_MAP_FD` (linux/sock_diag.h).
const SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u16 = 1;
/// `INET_DIAG_SK_BPF_STORAGES` reply attribute.
const INET_DIAG_SK_BPF_STORAGES: u16 = 20;
/// `INET_DIAG_CGROUP_ID` reply attribute (u64).
const INET_DIAG_CGROUP_ID: u16 = 21;
/// `SK_DIAG_BPF_STORAGE`: one map's value, nested in `INET_DIAG_SK_BPF_STORAGES`.
const SK_DIAG_BPF_STORAGE: u16 = 1;
/// `SK_DIAG_BPF_STORAGE_MAP_ID` (u32), nested in `SK_DIAG_BPF_STORAGE`.
const SK_DIAG_BPF_STORAGE_MAP_ID: u16 = 2;
/// `SK_DIAG_BPF_STORAGE_MAP_VALUE` (the raw value), nested in `SK_DIAG_BPF_STORAGE`.
const SK_DIAG_BPF_STORAGE_MAP_VALUE: u16 = 3;
/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 1 << 15;
/// Mask of an attribute's type bits.
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));
/// `TCP_LISTEN` in the kernel's state numbering.
pub const TCP_LISTEN: u8 = 10;

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

const _: () = assert!(size_of::<InetDiagSockId>() == 48);
const _: () = assert!(size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(size_of::<InetDiagMsg>() == 72);

/// One socket as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// TCP state (kernel numbering: 1 = established ... 10 = listen).
    pub state: u8,
    /// Local address.
    pub local: SocketAddr,
    /// Remote (transport) address.
    pub remote: SocketAddr,
    /// Owner uid.
    pub uid: u32,
    /// Socket inode.
    pub inode: u32,
    /// The socket's cgroup v2 id, when the kernel reports it.
    pub cgroup_id: Option<u64>,
    /// The socket's cookie (what `bpf_get_socket_cookie()` returns).
    pub cookie: u64,
    /// (map id, value) for each requested socket-storage map holding a value for this socket.
    pub storages: Vec<(u32, Vec<u8>)>,
}

/// The kernel's name of a TCP state.
pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-recv",
        4 => "fin-wait-1",
        5 => "fin-wait-2",
        6 => "time-wait",
        7 => "close",
        8 => "close-wait",
        9 => "last-ack",
        10 => "listen",
        11 => "closing",
        12 => "new-syn-recv",
        _ => "unknown",
    }
}

/// A `NETLINK_SOCK_DIAG` socket, bound to the network namespace the calling
/// thread was in when it was opened.
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> io::Result<SockDiag> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(SockDiag { fd: unsafe { OwnedFd::from_raw_fd(fd) }, seq: 0 })
    }

    /// Dumps the TCP sockets of `family` (`AF_INET`/`AF_INET6`) whose state
    /// is in the bit set `states` (bit n = state n), asking for each
    /// socket's value in the socket-storage maps `storage_maps`.
    ///
    /// Asking for storage needs `CAP_BPF` or `CAP_SYS_ADMIN` (else `EPERM`).
    pub fn dump_tcp(
        &mut self,
        family: u8,
        states: u32,
        storage_maps: &[BorrowedFd<'_>],
    ) -> io::Result<Vec<DiagSocket>> {
        self.seq = self.seq.wrapping_add(1);
        let request = build_request(family, states, storage_maps, self.seq);
        // SAFETY: the kernel address (pid 0) and a buffer we own.
        let sent = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut sockets = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reads into a buffer we own.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            match parse_messages(&buf[..n as usize], self.seq, &mut sockets)? {
                Progress::Done => return Ok(sockets),
                Progress::More => {}
            }
        }
    }
}

fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a padding-free repr(C) struct of integers (checked sizes above).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

fn build_request(family: u8, states: u32, storage_maps: &[BorrowedFd<'_>], seq: u32) -> Vec<u8> {
    let req = InetDiagReqV2 { family, protocol: libc::IPPROTO_TCP as u8, states, ..Default::default() };
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(as_bytes(&req));
    if !storage_maps.is_empty() {
        let mut nested = Vec::new();
        for fd in storage_maps {
            push_attr(&mut nested, SK_DIAG_BPF_STORAGE_REQ_MAP_FD, &(fd.as_raw_fd() as u32).to_ne_bytes());
        }
        push_attr(&mut body, INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED, &nested);
    }
    let header = libc::nlmsghdr {
        nlmsg_len: (size_of::<libc::nlmsghdr>() + body.len()) as u32,
        nlmsg_type: SOCK_DIAG_BY_FAMILY,
        nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        nlmsg_seq: seq,
        nlmsg_pid: 0,
    };
    let mut out = Vec::with_capacity(header.nlmsg_len as usize);
    out.extend_from_slice(as_bytes(&header));
    out.extend_from_slice(&body);
    out
}

enum Progress {
    Done,
    More,
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn read<T: Copy + Default>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    // SAFETY: T is plain data; the source holds at least size_of::<T>() bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut v).cast::<u8>(), size_of::<T>()) };
    Some(v)
}

/// Iterates over the attributes in `bytes`: (type without flags, payload).
fn attrs(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let payload = &bytes[4..len];
        bytes = &bytes[align4(len).min(bytes.len())..];
        Some((kind, payload))
    })
}

fn parse_messages(mut buf: &[u8], seq: u32, out: &mut Vec<DiagSocket>) -> io::Result<Progress> {
    let hdr_len = size_of::<libc::nlmsghdr>();
    while buf.len() >= hdr_len {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if len < hdr_len || len > buf.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message"));
        }
        let payload = &buf[hdr_len..len];
        buf = &buf[align4(len).min(buf.len())..];
        if msg_seq != seq {
            continue;
        }
        match i32::from(kind) {
            libc::NLMSG_DONE => return Ok(Progress::Done),
            libc::NLMSG_ERROR => {
                let errno = payload.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if errno == 0 {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(-errno));
            }
            _ if kind == SOCK_DIAG_BY_FAMILY => {
                if let Some(s) = parse_socket(payload) {
                    out.push(s);
                }
            }
            _ => {}
        }
    }
    Ok(Progress::More)
}

fn addr(family: u8, ip: &[u8; 16], port: [u8; 2]) -> SocketAddr {
    let port = u16::from_be_bytes(port);
    let ip = if i32::from(family) == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*ip))
    };
    SocketAddr::new(ip, port)
}

fn parse_socket(payload: &[u8]) -> Option<DiagSocket> {
    let msg: InetDiagMsg = read(payload)?;
    let mut socket = DiagSocket {
        family: msg.family,
        state: msg.state,
        local: addr(msg.family, &msg.id.src, msg.id.sport),
        remote: addr(msg.family, &msg.id.dst, msg.id.dport),
        uid: msg.uid,
        inode: msg.inode,
        cgroup_id: None,
        cookie: u64::from(msg.id.cookie[0]) | (u64::from(msg.id.cookie[1]) << 32),
        storages: Vec::new(),
    };
    for (kind, value) in attrs(payload.get(align4(size_of::<InetDiagMsg>())..)?) {
        match kind {
            INET_DIAG_CGROUP_ID => socket.cgroup_id = read::<u64>(value),
            INET_DIAG_SK_BPF_STORAGES => {
                for (k, storage) in attrs(value) {
                    if k != SK_DIAG_BPF_STORAGE {
                        continue;
                    }
                    let mut id = None;
                    let mut data = None;
                    for (k, v) in attrs(storage) {
                        match k {
                            SK_DIAG_BPF_STORAGE_MAP_ID => id = read::<u32>(v),
                            SK_DIAG_BPF_STORAGE_MAP_VALUE => data = Some(v.to_vec()),
                            _ => {}
                        }
                    }
                    if let (Some(id), Some(data)) = (id, data) {
                        socket.storages.push((id, data));
                    }
                }
            }
            _ => {}
        }
    }
    Some(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let req = build_request(libc::AF_INET6 as u8, 0x0f, &[], 7);
        assert_eq!(req.len(), 16 + 56);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().expect("4")), 72);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().expect("2")), SOCK_DIAG_BY_FAMILY);
        assert_eq!(req[16], libc::AF_INET6 as u8);
        assert_eq!(req[17], libc::IPPROTO_TCP as u8);
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().expect("4")), 0x0f);
    }

    #[test]
    fn a_reply_with_storage_is_decoded() {
        let mut msg = InetDiagMsg { family: libc::AF_INET as u8, state: 1, uid: 0, inode: 99, ..Default::default() };
        msg.id.sport = 9000u16.to_be_bytes();
        msg.id.dport = 41234u16.to_be_bytes();
        msg.id.src[..4].copy_from_slice(&[192, 0, 2, 2]);
        msg.id.dst[..4].copy_from_slice(&[192, 0, 2, 1]);
        let mut payload = as_bytes(&msg).to_vec();
        push_attr(&mut payload, INET_DIAG_CGROUP_ID, &1234u64.to_ne_bytes());
        let mut one = Vec::new();
        push_attr(&mut one, SK_DIAG_BPF_STORAGE_MAP_ID, &77u32.to_ne_bytes());
        push_attr(&mut one, SK_DIAG_BPF_STORAGE_MAP_VALUE, &[1, 2, 3, 4, 5]);
        let mut all = Vec::new();
        push_attr(&mut all, SK_DIAG_BPF_STORAGE | NLA_F_NESTED, &one);
        push_attr(&mut payload, INET_DIAG_SK_BPF_STORAGES | NLA_F_NESTED, &all);
        let s = parse_socket(&payload).expect("decodes");
        assert_eq!(s.local, "192.0.2.2:9000".parse().expect("addr"));
        assert_eq!(s.remote, "192.0.2.1:41234".parse().expect("addr"));
        assert_eq!(s.cgroup_id, Some(1234));
        assert_eq!(s.inode, 99);
        assert_eq!(s.storages, vec![(77, vec![1, 2, 3, 4, 5])]);
        assert_eq!(state_name(s.state), "established");
    }
}
