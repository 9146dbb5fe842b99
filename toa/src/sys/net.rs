//! Thin wrappers over the Linux socket calls: epoll, non-blocking TCP
//! sockets, `splice` through pipes, socket cookies.
//!
//! Every wrapper returns `io::Result`; `EINTR` is retried where a retry is
//! the right answer.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// Converts a `-1` return into the current `errno`.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn check_size(rc: libc::ssize_t) -> io::Result<usize> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc as usize) }
}

/// A socket address in the C layout.
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    /// Encodes `addr`.
    pub fn from(addr: SocketAddr) -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
                size_of::<libc::sockaddr_in6>()
            }
        };
        RawAddr { storage, len: len as libc::socklen_t }
    }

    fn empty() -> RawAddr {
        // SAFETY: all-zero is a valid sockaddr_storage.
        RawAddr { storage: unsafe { zeroed() }, len: size_of::<libc::sockaddr_storage>() as libc::socklen_t }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    /// Decodes the address, if it is IPv4 or IPv6.
    fn to_socket_addr(&self) -> Option<SocketAddr> {
        match self.storage.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in.
                let sin: libc::sockaddr_in =
                    unsafe { std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast()) };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 => {
                // SAFETY: the kernel wrote a sockaddr_in6.
                let sin6: libc::sockaddr_in6 =
                    unsafe { std::ptr::read((&self.storage as *const libc::sockaddr_storage).cast()) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

fn family(addr: &SocketAddr) -> libc::c_int {
    if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 }
}

/// A non-blocking, close-on-exec TCP socket for `addr`'s family.
pub fn tcp_socket(addr: &SocketAddr) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd =
        check(unsafe { libc::socket(family(addr), libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets an integer socket option.
pub fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: valid pointer and length.
    check(unsafe {
        libc::setsockopt(fd, level, name, (&value as *const libc::c_int).cast(), size_of::<libc::c_int>() as _)
    })
    .map(drop)
}

/// Arms `SO_LINGER` with a zero timeout: `close()` then sends a RST.
pub fn set_linger_zero(fd: RawFd) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: valid pointer and length. A failure only means a FIN instead of a RST.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as _,
        )
    };
}

/// A listening socket on `addr` (non-blocking, `SO_REUSEADDR`, `TCP_NODELAY`
/// inherited by accepted sockets; IPv6 wildcard sockets are dual-stack).
pub fn listen(addr: SocketAddr, backlog: i32) -> io::Result<OwnedFd> {
    let fd = tcp_socket(&addr)?;
    let raw = fd.as_raw_fd();
    set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int(raw, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    if addr.is_ipv6() {
        set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    let a = RawAddr::from(addr);
    // SAFETY: valid address buffer.
    check(unsafe { libc::bind(raw, a.as_ptr(), a.len) })?;
    // SAFETY: plain syscall.
    check(unsafe { libc::listen(raw, backlog) })?;
    Ok(fd)
}

/// Accepts one connection (non-blocking, close-on-exec) and its peer address.
pub fn accept(listener: RawFd) -> io::Result<(OwnedFd, SocketAddr)> {
    let mut a = RawAddr::empty();
    loop {
        // SAFETY: valid buffer of the announced size.
        let rc = unsafe {
            libc::accept4(
                listener,
                (&mut a.storage as *mut libc::sockaddr_storage).cast(),
                &mut a.len,
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        match check(rc) {
            // SAFETY: a fresh descriptor we own.
            Ok(fd) => {
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let peer = a.to_socket_addr().ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
                return Ok((fd, peer));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Starts a non-blocking connect; `Ok(true)` when it completed at once.
pub fn connect(fd: RawFd, addr: SocketAddr) -> io::Result<bool> {
    let a = RawAddr::from(addr);
    // SAFETY: valid address buffer.
    match check(unsafe { libc::connect(fd, a.as_ptr(), a.len) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The pending error of a socket (`SO_ERROR`), e.g. the result of a connect.
pub fn take_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid pointer and length.
    check(unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut err as *mut libc::c_int).cast(), &mut len)
    })?;
    Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
}

/// `shutdown(fd, SHUT_WR)`: sends a FIN after the queued data.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(drop)
}

/// `shutdown(fd, SHUT_RD)` of a listening socket: it stops listening at
/// once (Linux), the connections waiting in its queue are reset and new
/// ones refused, while the descriptor stays valid for those who hold it.
pub fn stop_listening(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::shutdown(fd, libc::SHUT_RD) }).map(drop)
}

/// `recv` without flags.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: valid buffer.
    check_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })
}

/// `send` with `MSG_NOSIGNAL` (a closed peer is `EPIPE`, not SIGPIPE).
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: valid buffer.
    check_size(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

/// Moves up to `len` bytes from `from` to `to` without copying them to user space.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall with null offsets (both ends are streams).
    check_size(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// A pipe (read end, write end), non-blocking, with its capacity raised to
/// `size` bytes when the system allows it; returns the capacity obtained.
pub fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: valid out array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: fresh descriptors we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: plain fcntl; on failure the default capacity stays.
    let got = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    let cap = if got > 0 {
        got as usize
    } else {
        // SAFETY: plain fcntl.
        let cur = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if cur > 0 { cur as usize } else { 65536 }
    };
    Ok((r, w, cap))
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

/// Readable.
pub const IN: u32 = libc::EPOLLIN as u32;
/// Writable.
pub const OUT: u32 = libc::EPOLLOUT as u32;
/// The peer closed its sending side.
pub const RDHUP: u32 = libc::EPOLLRDHUP as u32;
/// Both sides closed.
pub const HUP: u32 = libc::EPOLLHUP as u32;
/// An error is pending.
pub const ERR: u32 = libc::EPOLLERR as u32;
/// Edge-triggered.
pub const ET: u32 = libc::EPOLLET as u32;
/// Wake only one of the instances waiting on the same file.
pub const EXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;

impl Epoll {
    /// A new epoll instance.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh descriptor we own.
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Registers `fd` for `events`, tagged with `token`.
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid event pointer.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
    }

    /// Removes `fd` from the set.
    pub fn del(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: valid event pointer (ignored by the kernel for a delete).
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) }).map(drop)
    }

    /// Waits up to `timeout_ms` for events; returns how many were stored.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: valid buffer of the announced length.
        let rc = unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), events.len() as libc::c_int, timeout_ms)
        };
        match check(rc) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// An eventfd used to wake a worker.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Signals an eventfd.
pub fn wake(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: 8-byte buffer as eventfd requires; failure (counter full) still wakes.
    unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
}

/// Whether an error means "try again later".
pub fn would_block(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

/// The kernel's cookie of a socket (`SO_COOKIE`).
pub fn socket_cookie(socket: impl AsFd) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd and out buffer of the announced size.
    check(unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    })?;
    Ok(cookie)
}
