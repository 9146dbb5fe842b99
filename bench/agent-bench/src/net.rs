//! Thin wrappers over the socket and epoll system calls the roles use.
//!
//! Raw `libc` on purpose: the load generator must cost as little as possible
//! and do exactly the system calls we mean to measure.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

/// Turns a `-1` return into the `errno` error.
pub fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// A `sockaddr_in` for `addr`.
pub fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.ip().octets()) },
        sin_zero: [0; 8],
    }
}

/// The address in a `sockaddr_in`.
pub fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(sa.sin_addr.s_addr.to_ne_bytes()), u16::from_be(sa.sin_port))
}

/// Size of `T` as a `socklen_t`.
pub fn len_of<T>() -> libc::socklen_t {
    std::mem::size_of::<T>() as libc::socklen_t
}

/// Sets an integer socket option.
pub fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: valid pointer to a c_int of the announced size.
    check(unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), len_of::<libc::c_int>()) }).map(drop)
}

/// A non-blocking TCP listener on `0.0.0.0:port` (with `SO_REUSEPORT` when
/// several processes share the port).
pub fn listener(port: u16, reuseport: bool) -> io::Result<RawFd> {
    // SAFETY: plain syscall.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuseport {
        set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let sa = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    // SAFETY: valid sockaddr of the announced size.
    check(unsafe { libc::bind(fd, (&raw const sa).cast(), len_of::<libc::sockaddr_in>()) })?;
    // SAFETY: plain syscall.
    check(unsafe { libc::listen(fd, 65535) })?;
    Ok(fd)
}

/// Accepts one connection (non-blocking) and returns it with the address
/// `accept()` filled in (which the getpeername hook rewrites).
pub fn accept(listener: RawFd) -> io::Result<Option<(RawFd, SocketAddrV4)>> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = len_of::<libc::sockaddr_in>();
    // SAFETY: valid out buffers of the announced size.
    let fd =
        unsafe { libc::accept4(listener, (&raw mut sa).cast(), &mut len, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    Ok(Some((fd, from_sockaddr(&sa))))
}

/// A non-blocking TCP socket bound to `src` (port chosen at connect time,
/// `IP_BIND_ADDRESS_NO_PORT`), connecting to `dst`. Returns once the connect
/// is under way.
pub fn start_connect(src: Ipv4Addr, dst: SocketAddrV4) -> io::Result<RawFd> {
    let fd = client_socket(src)?;
    if let Err(e) = connect(fd, dst) {
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// A non-blocking TCP socket bound to `src` without a port yet.
pub fn client_socket(src: Ipv4Addr) -> io::Result<RawFd> {
    // SAFETY: plain syscall.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    let bound = set_int(fd, libc::SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1).and_then(|()| {
        let sa = sockaddr(SocketAddrV4::new(src, 0));
        // SAFETY: valid sockaddr of the announced size.
        check(unsafe { libc::bind(fd, (&raw const sa).cast(), len_of::<libc::sockaddr_in>()) }).map(drop)
    });
    if let Err(e) = bound {
        close(fd);
        return Err(e);
    }
    Ok(fd)
}

/// Starts a non-blocking connect; `EINPROGRESS` is success.
pub fn connect(fd: RawFd, dst: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr(dst);
    // SAFETY: valid sockaddr of the announced size.
    let rc = unsafe { libc::connect(fd, (&raw const sa).cast(), len_of::<libc::sockaddr_in>()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(())
}

/// The pending error of a socket (`SO_ERROR`), 0 when none.
pub fn so_error(fd: RawFd) -> libc::c_int {
    let mut err: libc::c_int = 0;
    let mut len = len_of::<libc::c_int>();
    // SAFETY: valid out buffer of the announced size.
    unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &mut len) };
    err
}

/// `getpeername()` of an IPv4 socket.
pub fn peer(fd: RawFd) -> io::Result<SocketAddrV4> {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = len_of::<libc::sockaddr_in>();
    // SAFETY: valid out buffers of the announced size.
    check(unsafe { libc::getpeername(fd, (&raw mut sa).cast(), &mut len) })?;
    Ok(from_sockaddr(&sa))
}

/// Reads into `buf`; `Ok(None)` when it would block.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: valid buffer of the given length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    Ok(Some(n as usize))
}

/// Writes all of a small buffer (a few bytes always fit an empty socket buffer).
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    // SAFETY: valid buffer of the given length.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != buf.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
    }
    Ok(())
}

/// Closes a descriptor.
pub fn close(fd: RawFd) {
    // SAFETY: the caller owns `fd` and never uses it again.
    unsafe { libc::close(fd) };
}

/// Raises `RLIMIT_NOFILE` as far as `fs.nr_open` allows, or else to the
/// hard limit (raising that needs CAP_SYS_RESOURCE).
pub fn raise_nofile() {
    let max: u64 =
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    let lim = libc::rlimit { rlim_cur: max, rlim_max: max };
    // SAFETY: valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return;
    }
    let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer; then a valid rlimit struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
        cur.rlim_cur = cur.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &cur);
    }
}

/// A level-triggered epoll set whose events carry a `u64` token.
pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// A new epoll set that returns up to `batch` events per wait.
    pub fn new(batch: usize) -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd, events: vec![libc::epoll_event { events: 0, u64: 0 }; batch] })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid event struct.
        check(unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) }).map(drop)
    }

    /// Watches `fd` for `events`.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms`; returns how many events are ready (read them with [`Epoll::event`]).
    pub fn wait(&mut self, timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: the buffer holds `events.len()` entries.
        let n = unsafe { libc::epoll_wait(self.fd, self.events.as_mut_ptr(), self.events.len() as i32, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
        }
        Ok(n as usize)
    }

    /// Ready event `i` of the last wait: (token, event bits).
    pub fn event(&self, i: usize) -> (u64, u32) {
        let e = self.events[i];
        (e.u64, e.events)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        close(self.fd);
    }
}
