//! The systemd notification protocol (`sd_notify(3)`), spoken directly: one
//! datagram of `KEY=VALUE` lines to the socket named by `$NOTIFY_SOCKET`.
//!
//! The socket is a path (`/run/systemd/notify`) or, when it starts with `@`,
//! a name in the abstract namespace (systemd-nspawn and the test harness use
//! those). Without `$NOTIFY_SOCKET` (not run by systemd, or `Type=simple`)
//! every call is a no-op, so the agent can always call them.
//!
//! [`Notifier::barrier`] waits until the service manager has processed every
//! earlier message (`BARRIER=1`): sent before exiting, it makes sure a
//! `STOPPING=1` or `STATUS=` is not lost in a race with the process's exit.

use std::{
    ffi::OsString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::OsStrExt as _,
            net::{SocketAddr, UnixDatagram},
        },
    },
    time::Duration,
};

/// The environment variable naming the socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

/// Parses a `$NOTIFY_SOCKET` value into a socket address.
pub fn parse_address(value: &[u8]) -> io::Result<SocketAddr> {
    match value {
        [] => Err(io::Error::new(io::ErrorKind::InvalidInput, "empty NOTIFY_SOCKET")),
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(value)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract name (@...)",
        )),
    }
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or `None` when it is not set.
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os(NOTIFY_SOCKET) {
            None => Ok(None),
            Some(v) => Notifier::connect(&v).map(Some),
        }
    }

    /// A notifier sending to the socket `value` names (`/path` or `@abstract`).
    pub fn connect(value: &OsString) -> io::Result<Notifier> {
        let addr = parse_address(value.as_bytes())?;
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier { socket, addr })
    }

    /// Sends one message, e.g. `"READY=1\nSTATUS=attached"`.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let n = self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        if n != state.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "notification truncated"));
        }
        Ok(())
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `RELOADING=1`: the manager shows the unit as reloading until the next `READY=1`.
    pub fn reloading(&self) -> io::Result<()> {
        self.send("RELOADING=1\nSTATUS=re-applying the configuration")
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)))
    }

    /// Waits (up to `timeout`) until the manager has processed every message
    /// sent before: sends `BARRIER=1` with the write end of a pipe, which the
    /// manager closes once it got this far.
    pub fn barrier(&self, timeout: Duration) -> io::Result<()> {
        let (read, write) = pipe()?;
        self.send_with_fd("BARRIER=1", &write)?;
        drop(write);
        let mut pfd = libc::pollfd { fd: read.as_raw_fd(), events: 0, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            0 => Err(io::Error::new(io::ErrorKind::TimedOut, "the service manager did not answer BARRIER=1")),
            _ => Ok(()),
        }
    }

    /// Sends `state` with one file descriptor attached (SCM_RIGHTS).
    fn send_with_fd(&self, state: &str, fd: &OwnedFd) -> io::Result<()> {
        let (mut storage, len) = socket_address(&self.addr)?;
        let mut iov = libc::iovec { iov_base: state.as_ptr() as *mut libc::c_void, iov_len: state.len() };
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut storage).cast();
        msg.msg_namelen = len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control holds CMSG_SPACE(int) bytes, room for exactly one header and one fd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd.as_raw_fd());
        }
        // SAFETY: a valid socket and a fully initialised msghdr.
        let n = unsafe { libc::sendmsg(self.socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `READY=1` to `$NOTIFY_SOCKET`, when it is set (a no-op otherwise).
pub fn ready(status: &str) -> io::Result<()> {
    Notifier::from_env()?.map_or(Ok(()), |n| n.ready(status))
}

/// What a daemon tells its service manager, best effort: nothing outside
/// systemd, and a notification that cannot be sent is logged, never fatal
/// (the daemon works the same; only systemd's view of it lags).
#[derive(Debug)]
pub struct ServiceManager(Option<Notifier>);

impl ServiceManager {
    /// The manager named by `$NOTIFY_SOCKET`; an unusable value is logged once.
    pub fn from_env() -> ServiceManager {
        ServiceManager(Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable; systemd will not hear of readiness");
            None
        }))
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.tell("READY=1", |n| n.ready(status));
    }

    /// `RELOADING=1`.
    pub fn reloading(&self) {
        self.tell("RELOADING=1", Notifier::reloading);
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.tell("STOPPING=1", |n| n.stopping(status));
    }

    /// `BARRIER=1`: waits up to `timeout` for the manager to catch up.
    pub fn barrier(&self, timeout: Duration) {
        self.tell("BARRIER=1", |n| n.barrier(timeout));
    }

    fn tell(&self, what: &str, send: impl FnOnce(&Notifier) -> io::Result<()>) {
        if let Some(n) = &self.0
            && let Err(e) = send(n)
        {
            tracing::warn!(error = %e, "could not notify systemd ({what})");
        }
    }
}

/// Status lines are single lines: a newline would start another assignment.
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A `sockaddr_un` for sendmsg(2), built from a std address.
fn socket_address(addr: &SocketAddr) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, abstract_) = match (addr.as_abstract_name(), addr.as_pathname()) {
        (Some(name), _) => (name, true),
        (None, Some(path)) => (path.as_os_str().as_bytes(), false),
        (None, None) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "unnamed notification socket")),
    };
    let offset = usize::from(abstract_);
    if bytes.len() + offset >= sun.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "notification socket name too long"));
    }
    for (dst, src) in sun.sun_path[offset..].iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    // Abstract names are exactly as long as given; paths end with their NUL.
    let len = base + offset + bytes.len() + usize::from(!abstract_);
    Ok((sun, len as libc::socklen_t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let a = parse_address(b"@toa-test/notify").expect("abstract");
        assert_eq!(a.as_abstract_name(), Some(&b"toa-test/notify"[..]));
        let p = parse_address(b"/run/systemd/notify").expect("path");
        assert_eq!(p.as_pathname(), Some(std::path::Path::new("/run/systemd/notify")));
        assert!(parse_address(b"").is_err());
        assert!(parse_address(b"relative/sock").is_err());
    }

    fn abstract_listener() -> (UnixDatagram, OsString) {
        let name = format!("toa-notify-test-{}-{:?}", std::process::id(), std::thread::current().id());
        let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).expect("addr")).expect("bind");
        sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        (sock, OsString::from(format!("@{name}")))
    }

    #[test]
    fn messages_arrive_as_one_datagram_each() {
        let (server, name) = abstract_listener();
        let n = Notifier::connect(&name).expect("connect");
        n.ready("attached to 1 cgroup\nsecond line").expect("send");
        n.stopping("stopping").expect("send");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=attached to 1 cgroup second line");
        let len = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn a_path_socket_works_too() {
        let dir = std::env::temp_dir().join(format!("toa-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::connect(&path.clone().into_os_string()).expect("connect");
        n.reloading().expect("send");
        let mut buf = [0u8; 128];
        let len = server.recv(&mut buf).expect("recv");
        assert!(buf[..len].starts_with(b"RELOADING=1\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// What a service manager does with BARRIER=1: takes the fd and closes it.
    #[test]
    fn barrier_returns_once_the_passed_fd_is_closed() {
        let (server, name) = abstract_listener();
        let n = Notifier::connect(&name).expect("connect");
        let manager = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            // SAFETY: CMSG_SPACE is a pure computation.
            let space = unsafe { libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) } as usize;
            let mut control = vec![0u8; space];
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            // SAFETY: plain data, pointers valid for the recvmsg call below.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: a bound socket and a valid msghdr.
            let len = unsafe { libc::recvmsg(server.as_raw_fd(), &mut msg, 0) };
            assert!(len > 0);
            assert_eq!(&buf[..len as usize], b"BARRIER=1");
            // SAFETY: the kernel filled in one SCM_RIGHTS header with one fd.
            let fd = unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                assert!(!cmsg.is_null());
                assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
                std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>())
            };
            // SAFETY: the received fd is ours now.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        });
        n.barrier(Duration::from_secs(5)).expect("barrier");
        manager.join().expect("manager thread");
    }

    #[test]
    fn barrier_times_out_when_nobody_answers() {
        let (_server, name) = abstract_listener();
        let n = Notifier::connect(&name).expect("connect");
        let err = n.barrier(Duration::from_millis(50)).expect_err("nobody closes the fd");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
