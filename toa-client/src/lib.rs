//! The real client of an accepted TCP connection behind a TOA forwarder.
//!
//! An L4 FullNAT forwarder (an anti-DDoS node, a cloud load balancer,
//! LVS/DPVS) connects to your server from its own address and puts the real
//! client's address into a TCP option (TOA). With the `toa` agent (or a
//! vendor's TOA kernel module) on the server, `getpeername()` and `accept()`
//! already return the real client; this crate is for applications that ask
//! explicitly, as the vendors' manuals describe. It needs only `std` and
//! `libc`: no eBPF, no nightly Rust.
//!
//! [`real_peer`] asks, in order:
//!
//! 1. `getsockopt(fd, IPPROTO_IP, 1348)` (Alibaba vtoa; answered by the `toa`
//!    agent): a `sockaddr_in` or `sockaddr_in6` with the real client;
//! 2. `getsockopt(fd, IPPROTO_IP, 4096)` (`TOA_SO_GET_LOOKUP`, Tencent/DPVS
//!    NAT64): a `struct toa_nat64_peer` with an IPv6 client;
//! 3. `getpeername(fd)`, which the agent (or a TOA kernel module) translates,
//!    and which is the transport peer everywhere else.
//!
//! Each step is one non-blocking system call, so [`real_peer`] may be called
//! from async code as it is. When the forwarder puts the option only into the
//! first data packet, ask after that packet arrived: [`real_peer_after`]
//! awaits any readiness future first (e.g. tokio's `stream.readable()`), and
//! [`real_peer_when_readable`] polls the socket with a timeout.
//!
//! ```
//! use std::net::{TcpListener, TcpStream};
//!
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let client = TcpStream::connect(listener.local_addr()?)?;
//! let (stream, _) = listener.accept()?;
//! // Behind a TOA forwarder: the client's own address. Here, with no
//! // forwarder in between, the transport peer.
//! let (peer, source) = toa_client::real_peer_source(&stream)?;
//! assert_eq!(peer, client.local_addr()?);
//! assert_eq!(source, toa_client::Source::Getpeername);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::{
    future::Future,
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd, AsRawFd},
    time::Duration,
};

/// `getsockopt(fd, IPPROTO_IP, VTOA_GET_PEER)`: Alibaba vtoa's call for the real client.
pub const VTOA_GET_PEER: i32 = 1348;
/// `getsockopt(fd, IPPROTO_IP, TOA_SO_GET_LOOKUP)`: Tencent/DPVS NAT64's call for the real IPv6 client.
pub const TOA_SO_GET_LOOKUP: i32 = 4096;
/// Size of `struct toa_nat64_peer { struct in6_addr saddr; uint16_t sport; }` (padded).
pub const NAT64_PEER_LEN: usize = 20;

/// Where [`real_peer_source`] found the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `getsockopt(IPPROTO_IP, 1348)` (vtoa).
    Vtoa,
    /// `getsockopt(IPPROTO_IP, 4096)` (`TOA_SO_GET_LOOKUP`, NAT64).
    Nat64Lookup,
    /// `getpeername()`.
    Getpeername,
}

/// The real client of the connection `fd`: 1348, then 4096, then getpeername.
///
/// Errors only when `getpeername()` itself fails (e.g. `ENOTCONN`).
pub fn real_peer(fd: &impl AsFd) -> io::Result<SocketAddr> {
    real_peer_source(fd).map(|(addr, _)| addr)
}

/// [`real_peer`], also telling which call answered.
pub fn real_peer_source(fd: &impl AsFd) -> io::Result<(SocketAddr, Source)> {
    let raw = fd.as_fd().as_raw_fd();
    if let Some(addr) = vtoa(raw) {
        return Ok((addr, Source::Vtoa));
    }
    if let Some(addr) = nat64_lookup(raw) {
        return Ok((addr, Source::Nat64Lookup));
    }
    getpeername(raw).map(|addr| (addr, Source::Getpeername))
}

/// Awaits `ready` (any readiness future, e.g. tokio's `stream.readable()`),
/// then asks [`real_peer`]. Runtime-agnostic: this crate polls nothing itself.
pub async fn real_peer_after<F, T>(fd: &impl AsFd, ready: F) -> io::Result<SocketAddr>
where
    F: Future<Output = io::Result<T>>,
{
    ready.await?;
    real_peer(fd)
}

/// Waits up to `timeout` until the socket is readable (data or EOF arrived,
/// so an option in the first data packet has been seen), then asks
/// [`real_peer`]. Without data by then it asks anyway.
pub fn real_peer_when_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<SocketAddr> {
    let mut pfd = libc::pollfd { fd: fd.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    real_peer(fd)
}

fn getsockopt_ip(fd: i32, optname: i32, buf: &mut [u8]) -> Option<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is valid for `len` bytes; the kernel writes at most `len`.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_IP, optname, buf.as_mut_ptr().cast(), &mut len) };
    if rc == 0 { Some(len as usize) } else { None }
}

fn vtoa(fd: i32) -> Option<SocketAddr> {
    let mut buf = [0u8; size_of::<libc::sockaddr_in6>()];
    let len = getsockopt_ip(fd, VTOA_GET_PEER, &mut buf)?;
    parse_sockaddr(&buf[..len.min(buf.len())])
}

fn nat64_lookup(fd: i32) -> Option<SocketAddr> {
    let mut buf = [0u8; NAT64_PEER_LEN];
    let len = getsockopt_ip(fd, TOA_SO_GET_LOOKUP, &mut buf)?;
    if len < 18 {
        return None;
    }
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&buf[..16]);
    let port = u16::from_be_bytes([buf[16], buf[17]]);
    Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0).into())
}

/// A `sockaddr_in` / `sockaddr_in6` as raw bytes (family in host order).
fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    if b.len() < 2 {
        return None;
    }
    let family = u16::from_ne_bytes([b[0], b[1]]);
    match i32::from(family) {
        libc::AF_INET if b.len() >= size_of::<libc::sockaddr_in>() => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            Some(SocketAddrV4::new(Ipv4Addr::new(b[4], b[5], b[6], b[7]), port).into())
        }
        libc::AF_INET6 if b.len() >= size_of::<libc::sockaddr_in6>() => {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let flow = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope).into())
        }
        _ => None,
    }
}

fn getpeername(fd: i32) -> io::Result<SocketAddr> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is valid for `len` bytes.
    let rc = unsafe { libc::getpeername(fd, (&raw mut ss).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `len` bytes of `ss`; we read them as bytes.
    let bytes = unsafe { std::slice::from_raw_parts((&raw const ss).cast::<u8>(), len as usize) };
    parse_sockaddr(bytes).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("getpeername: address family {}", ss.ss_family))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn parses_both_families_and_refuses_short_buffers() {
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..8].copy_from_slice(&[0x10, 0x92, 203, 0, 113, 7]);
        assert_eq!(parse_sockaddr(&v4), Some("203.0.113.7:4242".parse().expect("addr")));
        assert_eq!(parse_sockaddr(&v4[..15]), None);
        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&[0x10, 0x92]);
        v6[8..24].copy_from_slice(&"2001:db8:99::7".parse::<Ipv6Addr>().expect("ip").octets());
        assert_eq!(parse_sockaddr(&v6), Some("[2001:db8:99::7]:4242".parse().expect("addr")));
        assert_eq!(parse_sockaddr(&v6[..16]), None, "sizeof(struct sockaddr) is too short for AF_INET6");
        assert_eq!(parse_sockaddr(&[0, 0]), None);
    }

    #[test]
    fn without_an_agent_it_is_getpeername() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, from) = listener.accept().expect("accept");
        assert_eq!(real_peer_source(&server).expect("peer"), (from, Source::Getpeername));
        assert_eq!(real_peer(&server).expect("peer"), client.local_addr().expect("addr"));
        drop(client);
        assert_eq!(real_peer_when_readable(&server, Duration::from_secs(5)).expect("peer"), from);
    }
}

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
