//! A TCP peer that lives on the far side of a TUN device inside a network
//! namespace and writes every byte of its segments itself (see
//! [`crate::packet`]), so tests can send option bytes no kernel client would:
//! lengths 0 and 1, wrong lengths, options past the header, options after EOL,
//! duplicate options, options only in the SYN or only in data, and so on.
//!
//! The namespace side of the TUN gets `server_v4/24` and `server_v6/64`
//! (nodad), so every other address of those prefixes — [`TunPeer::peer_v4`],
//! [`TunPeer::peer_v6`] and any other client address a test picks — is
//! reached through the TUN, i.e. through us. There is no kernel stack on our
//! side: nothing answers the listener's segments unless the test does.
//!
//! # What the kernel does with malformed options in the handshake's final ACK
//!
//! Observed on Linux 6.18 by the tests at the end of this file, which send the
//! final ACK with `"hello"` as payload to a listener (`tcp_check_req` →
//! `tcp_parse_options`):
//!
//! * kind 254 with length 0 (`[254, 0, 0, 0]`), with length 1
//!   (`[254, 1, 0, 0]`), with length 7 (`[254, 7, p, p, 203, 0, 113]` + EOL),
//!   an option after EOL (`[0, 254, 8, …]`), and an option whose length runs
//!   past the declared options (8 bytes written, data offset 6 declaring only
//!   4): the ACK is **accepted**. Linux stops parsing options at a length
//!   below 2 or one running past the options area and otherwise ignores
//!   unknown kinds, so the connection is established, `accept()` returns with
//!   the peer address, and the data is ACKed and delivered. In the
//!   data-offset case the undeclared option tail (`203 0 113 7`) is delivered
//!   to the application in front of `"hello"`. Two TOA options in one ACK are
//!   accepted too. IPv6 behaves the same (lengths 0 and 1 checked).
//! * A data offset below 5 (header shorter than 20 bytes) or beyond the
//!   segment is **dropped** before any socket lookup (`tcp_v4_rcv` /
//!   `tcp_v6_rcv`; a doff below 5 counts in `Tcp: InErrs`): no RST, no ACK,
//!   the request socket stays and the listener retransmits its SYN-ACK.
//!
//! The unit tests of this module assert exactly this, so a kernel that
//! behaves differently fails them. Malformed options in the SYN (`[254, 0]`,
//! `[254, 1]`, a length past the end) still get a SYN-ACK.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::packet::{self, ACK, FIN, RST, SYN, Segment, SegmentSpec};

/// The namespace-side IPv4 address tests normally use (TEST-NET-2 benchmark range).
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The namespace-side IPv6 address tests normally use (documentation prefix).
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1);
/// Prefix length of the IPv4 address on the TUN.
pub const PREFIX_V4: u8 = 24;
/// Prefix length of the IPv6 address on the TUN.
pub const PREFIX_V6: u8 = 64;
/// Window our segments advertise unless [`Conn::window`] is changed.
pub const WINDOW: u16 = 65535;
/// Segments of other connections kept for later [`TunPeer::recv`] calls.
const BACKLOG: usize = 1024;
/// How long a handshake waits for the SYN-ACK before sending its SYN again
/// (the kernel's own initial retransmission timeout).
const SYN_RETRANSMIT: Duration = Duration::from_secs(1);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One end of a TCP connection driven by hand. All fields are public so a
/// test can desynchronise them on purpose.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Our address (the client).
    pub client: SocketAddr,
    /// The listener's address.
    pub server: SocketAddr,
    /// Our initial sequence number.
    pub iss: u32,
    /// The server's initial sequence number.
    pub irs: u32,
    /// Sequence number of our next segment.
    pub snd_nxt: u32,
    /// Next sequence number we expect (and acknowledge) from the server.
    pub rcv_nxt: u32,
    /// Highest acknowledgment number seen from the server.
    pub snd_una: u32,
    /// Window we advertise.
    pub window: u16,
    /// The SYN-ACK that completed [`TunPeer::handshake`].
    pub syn_ack: Segment,
}

/// Why [`TunPeer::try_handshake`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered the SYN with this RST (nobody listening).
    Reset(Box<Segment>),
    /// No SYN-ACK acknowledging our SYN arrived in time.
    Timeout,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reset(s) => write!(f, "SYN answered with RST: {s}"),
            Self::Timeout => f.write_str("no SYN-ACK before the deadline"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A TUN device in a network namespace, and the TCP peer behind it.
/// Dropping it closes the device's only file descriptor, which deletes the
/// device; deleting the namespace is the caller's job.
#[derive(Debug)]
pub struct TunPeer {
    fd: OwnedFd,
    name: String,
    netns: PathBuf,
    server_v4: Ipv4Addr,
    server_v6: Ipv6Addr,
    peer_v4: Ipv4Addr,
    peer_v6: Ipv6Addr,
    next_port: u16,
    backlog: VecDeque<Vec<u8>>,
}

impl TunPeer {
    /// Creates the TUN in the namespace at `netns` (e.g. `/run/netns/NAME`),
    /// gives its namespace side `local_v4/24` and `local_v6/64` (nodad) and
    /// brings it up. The peer addresses are the local ones plus one in the
    /// last octet / segment (minus one at the top of the range), e.g.
    /// [`SERVER_V4`] → 198.18.0.2 and [`SERVER_V6`] → 2001:db8:18::2.
    ///
    /// Panics when any step fails (needs CAP_NET_ADMIN, `/dev/net/tun`,
    /// `nsenter` and `ip`); see [`TunPeer::try_new`].
    pub fn new(netns: &Path, local_v4: Ipv4Addr, local_v6: Ipv6Addr) -> TunPeer {
        match Self::try_new(netns, local_v4, local_v6) {
            Ok(peer) => peer,
            Err(e) => panic!("TUN peer in {}: {e}", netns.display()),
        }
    }

    /// [`TunPeer::new`] returning errors instead of panicking.
    pub fn try_new(netns: &Path, local_v4: Ipv4Addr, local_v6: Ipv6Addr) -> io::Result<TunPeer> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // At most 4 + 6 (pid_max is 2^22) + 1 + 4 = 15 bytes.
        let name = format!("toat{:x}_{:x}", std::process::id(), n & 0xffff);
        let ns = File::open(netns)?;
        let tun_name = name.clone();
        let fd = std::thread::spawn(move || open_tun_in(&ns, &tun_name))
            .join()
            .map_err(|_| io::Error::other("TUN helper thread panicked"))??;

        let mut peer = TunPeer {
            fd,
            name,
            netns: netns.to_path_buf(),
            server_v4: local_v4,
            server_v6: local_v6,
            peer_v4: neighbour_v4(local_v4),
            peer_v6: neighbour_v6(local_v6),
            next_port: 0,
            backlog: VecDeque::new(),
        };
        peer.next_port = 32768 + (peer.random() % 16384) as u16;
        let dev = peer.name.clone();
        peer.ip(&["link", "set", "dev", &dev, "up"])?;
        peer.ip(&["-4", "addr", "add", &format!("{local_v4}/{PREFIX_V4}"), "dev", &dev])?;
        peer.ip(&["-6", "addr", "add", &format!("{local_v6}/{PREFIX_V6}"), "dev", &dev, "nodad"])?;
        Ok(peer)
    }

    /// Runs `nsenter --net=NETNS ip ARGS…`.
    fn ip(&self, args: &[&str]) -> io::Result<()> {
        let mut net = std::ffi::OsString::from("--net=");
        net.push(&self.netns);
        let out = Command::new("nsenter").arg(&net).arg("ip").args(args.iter().map(OsStr::new)).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "ip {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// The TUN device's name in the namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace this TUN lives in.
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    /// The IPv4 address our segments come from by default.
    pub fn peer_v4(&self) -> Ipv4Addr {
        self.peer_v4
    }

    /// The IPv6 address our segments come from by default.
    pub fn peer_v6(&self) -> Ipv6Addr {
        self.peer_v6
    }

    /// The namespace side's IPv4 address.
    pub fn server_v4(&self) -> Ipv4Addr {
        self.server_v4
    }

    /// The namespace side's IPv6 address.
    pub fn server_v6(&self) -> Ipv6Addr {
        self.server_v6
    }

    /// A fresh client address: [`TunPeer::peer_v4`] with a port not handed
    /// out before by this peer.
    pub fn client_v4(&mut self) -> SocketAddr {
        SocketAddr::new(self.peer_v4.into(), self.port())
    }

    /// A fresh client address: [`TunPeer::peer_v6`] with a port not handed
    /// out before by this peer.
    pub fn client_v6(&mut self) -> SocketAddr {
        SocketAddr::new(self.peer_v6.into(), self.port())
    }

    fn port(&mut self) -> u16 {
        let port = self.next_port;
        self.next_port = port.checked_add(1).unwrap_or(32768);
        port
    }

    fn random(&self) -> u32 {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
        let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ u64::from(COUNTER.fetch_add(1, Ordering::Relaxed));
        // splitmix64 finaliser
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (x ^ (x >> 31)) as u32
    }

    /// Writes one raw IP packet into the namespace.
    pub fn try_write_packet(&mut self, packet: &[u8]) -> io::Result<()> {
        // SAFETY: writes from a valid buffer of the given length to our fd.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != packet.len() {
            return Err(io::Error::other(format!("short write to TUN: {n} of {}", packet.len())));
        }
        Ok(())
    }

    /// Writes one raw IP packet into the namespace; panics on failure.
    pub fn write_packet(&mut self, packet: &[u8]) {
        if let Err(e) = self.try_write_packet(packet) {
            panic!("write {} bytes to {}: {e}", packet.len(), self.name);
        }
    }

    /// Builds `spec` and writes it; panics on failure.
    pub fn write_segment(&mut self, spec: &SegmentSpec<'_>) {
        match spec.build() {
            Ok(p) => self.write_packet(&p),
            Err(e) => panic!("build segment: {e}"),
        }
    }

    /// The next IP packet the namespace sends through the TUN (anything:
    /// TCP, ICMPv6, MLD…), first those [`TunPeer::recv`] set aside for other
    /// connections. `None` when nothing arrives before `timeout`.
    pub fn read_packet(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        if let Some(p) = self.backlog.pop_front() {
            return Some(p);
        }
        self.read_fd(Instant::now() + timeout)
    }

    fn read_fd(&mut self, deadline: Instant) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: reads into a valid buffer of the given length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                buf.truncate(n as usize);
                return Some(buf);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => {}
                _ => panic!("read from {}: {err}", self.name),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, ms) } < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINTR) {
                    panic!("poll {}: {err}", self.name);
                }
            }
        }
    }

    /// The next segment from `server` to `client` before `deadline`; other
    /// TCP segments are set aside for later calls, non-TCP packets dropped.
    fn next_of(&mut self, client: SocketAddr, server: SocketAddr, deadline: Instant) -> Option<Segment> {
        let matches = |s: &Segment| s.src == server && s.dst == client;
        if let Some(i) = self.backlog.iter().position(|p| packet::parse(p).is_some_and(|s| matches(&s))) {
            let p = self.backlog.remove(i)?;
            return packet::parse(&p);
        }
        loop {
            let p = self.read_fd(deadline)?;
            let Some(s) = packet::parse(&p) else { continue };
            if matches(&s) {
                return Some(s);
            }
            if self.backlog.len() >= BACKLOG {
                self.backlog.pop_front();
            }
            self.backlog.push_back(p);
        }
    }

    /// Sends a SYN from `client` to `server` carrying exactly `syn_options`
    /// (nothing is added; empty means no options, so the server assumes MSS
    /// 536) and waits for the SYN-ACK. Panics when it does not come; see
    /// [`TunPeer::try_handshake`]. The handshake is *not* completed: send
    /// the final ACK with [`TunPeer::ack`] or [`TunPeer::send`].
    pub fn handshake(&mut self, client: SocketAddr, server: SocketAddr, syn_options: &[u8], timeout: Duration) -> Conn {
        match self.try_handshake(client, server, syn_options, timeout) {
            Ok(c) => c,
            Err(e) => panic!("handshake {client} -> {server}: {e}"),
        }
    }

    /// [`TunPeer::handshake`] returning errors instead of panicking.
    /// Segments of the connection other than a SYN-ACK acknowledging our SYN
    /// or a RST are ignored.
    pub fn try_handshake(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        syn_options: &[u8],
        timeout: Duration,
    ) -> Result<Conn, HandshakeError> {
        let deadline = Instant::now() + timeout;
        let iss = self.random();
        let syn = SegmentSpec::new(client, server, iss, 0, SYN).options(syn_options).window(WINDOW);
        self.write_segment(&syn);
        let expected_ack = iss.wrapping_add(1);
        // As a TCP client would, send the SYN again when nothing came back: a
        // SYN written while the namespace's stack is still settling (a new
        // TUN, a loaded machine) can be lost, and the SYN-ACK with it.
        let mut retransmit = Instant::now() + SYN_RETRANSMIT;
        loop {
            let wait = retransmit.min(deadline);
            let Some(s) = self.next_of(client, server, wait) else {
                if Instant::now() >= deadline {
                    return Err(HandshakeError::Timeout);
                }
                self.write_segment(&syn);
                retransmit = Instant::now() + SYN_RETRANSMIT;
                continue;
            };
            if s.has(RST) {
                return Err(HandshakeError::Reset(Box::new(s)));
            }
            if s.has(SYN | ACK) && s.ack == expected_ack {
                return Ok(Conn {
                    client,
                    server,
                    iss,
                    irs: s.seq,
                    snd_nxt: expected_ack,
                    rcv_nxt: s.seq.wrapping_add(1),
                    snd_una: s.ack,
                    window: WINDOW,
                    syn_ack: s,
                });
            }
        }
    }

    /// Sends a segment on `conn`: sequence number `snd_nxt`, acknowledgment
    /// `rcv_nxt` if `flags` has [`ACK`] (else 0), the given raw options
    /// (padded with EOL to a multiple of 4) and payload. Advances `snd_nxt`
    /// by the payload length, plus one for SYN and for FIN.
    pub fn send(&mut self, conn: &mut Conn, flags: u8, options: &[u8], payload: &[u8]) {
        self.send_inner(conn, flags, options, None, payload);
    }

    /// [`TunPeer::send`] with the header's data offset forced to
    /// `data_offset` 32-bit words (0..=15) whatever was written, e.g. to make
    /// an option run past the declared header. The payload still follows
    /// all written option bytes, and `snd_nxt` advances by `payload.len()`
    /// only, not by option bytes the header leaves undeclared.
    pub fn send_with_data_offset(
        &mut self,
        conn: &mut Conn,
        flags: u8,
        options: &[u8],
        data_offset: u8,
        payload: &[u8],
    ) {
        self.send_inner(conn, flags, options, Some(data_offset), payload);
    }

    fn send_inner(&mut self, conn: &mut Conn, flags: u8, options: &[u8], doff: Option<u8>, payload: &[u8]) {
        let ack = if flags & ACK != 0 { conn.rcv_nxt } else { 0 };
        let mut spec = SegmentSpec::new(conn.client, conn.server, conn.snd_nxt, ack, flags)
            .options(options)
            .payload(payload)
            .window(conn.window);
        spec.data_offset = doff;
        self.write_segment(&spec);
        let len = payload.len() as u32 + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0);
        conn.snd_nxt = conn.snd_nxt.wrapping_add(len);
    }

    /// A bare ACK with `options`, e.g. the handshake's final ACK.
    pub fn ack(&mut self, conn: &mut Conn, options: &[u8]) {
        self.send(conn, ACK, options, &[]);
    }

    /// Sends RST|ACK at `snd_nxt`, which ends the connection or the
    /// listener's request socket as long as `snd_nxt` is what the server
    /// expects next (for a request socket anywhere in its window).
    pub fn reset(&mut self, conn: &mut Conn) {
        self.send(conn, RST | ACK, &[], &[]);
    }

    /// The next segment the server sends on `conn` before `timeout`, or
    /// `None`. Updates `rcv_nxt` when the segment carries new data or FIN
    /// (not for a retransmitted SYN-ACK) and `snd_una` from its ACK.
    /// Segments of other connections are kept for their own `recv`.
    pub fn recv(&mut self, conn: &mut Conn, timeout: Duration) -> Option<Segment> {
        let s = self.next_of(conn.client, conn.server, Instant::now() + timeout)?;
        let end = s.seq.wrapping_add(s.seq_len());
        if seq_le(s.seq, conn.rcv_nxt) && seq_lt(conn.rcv_nxt, end) {
            conn.rcv_nxt = end;
        }
        if s.has(ACK) && seq_lt(conn.snd_una, s.ack) {
            conn.snd_una = s.ack;
        }
        Some(s)
    }

    /// Receives segments of `conn` until one satisfies `want` (returned) or
    /// `timeout` passes (`None`). Skipped segments still update `conn` as in
    /// [`TunPeer::recv`].
    pub fn recv_until(
        &mut self,
        conn: &mut Conn,
        timeout: Duration,
        mut want: impl FnMut(&Segment) -> bool,
    ) -> Option<Segment> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let s = self.recv(conn, left)?;
            if want(&s) {
                return Some(s);
            }
        }
    }
}

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

fn seq_le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

fn neighbour_v4(a: Ipv4Addr) -> Ipv4Addr {
    let mut o = a.octets();
    o[3] = if o[3] < 254 { o[3] + 1 } else { o[3] - 1 };
    o.into()
}

fn neighbour_v6(a: Ipv6Addr) -> Ipv6Addr {
    let mut s = a.segments();
    s[7] = if s[7] < 0xfffe { s[7] + 1 } else { s[7] - 1 };
    s.into()
}

/// `struct ifreq` as far as TUNSETIFF reads it.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Runs on a throwaway thread: moves it into `ns`, then creates the TUN
/// there (a TUN belongs to the namespace it was created in).
fn open_tun_in(ns: &File, name: &str) -> io::Result<OwnedFd> {
    // SAFETY: setns on a valid fd affects only this (helper) thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a NUL-terminated path literal.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name} too long")));
    }
    let mut req =
        IfReq { name: [0; libc::IFNAMSIZ], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is laid out as.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    //! Need root (CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces), `ip`,
    //! `nsenter` and `python3`: ignored unless asked for (`--include-ignored`).

    use super::*;
    use crate::packet::{PSH, mss_option};
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Stdio};
    use std::sync::mpsc;

    const PORT: u16 = 8080;
    const SHORT: Duration = Duration::from_secs(3);

    /// `ip netns add` / `ip netns del`.
    struct Netns {
        name: String,
        path: PathBuf,
    }

    impl Netns {
        fn new() -> Netns {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("toat-test-{}-{n}", std::process::id());
            let st = Command::new("ip").args(["netns", "add", &name]).status().expect("run ip netns add");
            assert!(st.success(), "ip netns add {name}: {st}");
            let path = PathBuf::from(format!("/run/netns/{name}"));
            Netns { name, path }
        }

        fn cat(&self, file: &str) -> String {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", self.path.display()))
                .args(["cat", file])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        }

        /// `Tcp: InErrs` from /proc/net/snmp in the namespace.
        fn tcp_in_errs(&self) -> u64 {
            let snmp = self.cat("/proc/net/snmp");
            let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
            let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
            let i = names.split_whitespace().position(|n| n == "InErrs").unwrap();
            values.split_whitespace().nth(i).unwrap().parse().unwrap()
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        }
    }

    /// A Python listener in the namespace that accepts one connection and
    /// prints `peer ADDR PORT` and then `data HEX` at EOF (or after 10 s).
    struct Listener {
        child: Child,
        lines: mpsc::Receiver<String>,
    }

    const LISTENER: &str = r#"
import socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if fam == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(sys.argv[2])))
s.listen(8)
s.settimeout(30)
print("listening", flush=True)
c, _ = s.accept()
c.settimeout(10)
p = c.getpeername()
print("peer", p[0], p[1], flush=True)
data = b""
while True:
    try:
        b = c.recv(65536)
    except socket.timeout:
        break
    if not b:
        break
    data += b
print("data", data.hex(), flush=True)
c.close()
"#;

    impl Listener {
        /// `v6`: an AF_INET6 dual-stack socket on `::`, else AF_INET on 0.0.0.0.
        fn start(ns: &Netns, v6: bool) -> Listener {
            let mut child = Command::new("nsenter")
                .arg(format!("--net={}", ns.path.display()))
                .args(["python3", "-c", LISTENER, if v6 { "6" } else { "4" }, &PORT.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .expect("start python3 listener");
            let out = child.stdout.take().unwrap();
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let l = Listener { child, lines };
            assert_eq!(l.line(Duration::from_secs(20)).as_deref(), Some("listening"));
            l
        }

        fn line(&self, timeout: Duration) -> Option<String> {
            self.lines.recv_timeout(timeout).ok()
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn toa_v4(port: u16) -> [u8; 8] {
        let [hi, lo] = port.to_be_bytes();
        [254, 8, hi, lo, 203, 0, 113, 7]
    }

    /// What happened to a final ACK carrying `"hello"`.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// Established: the listener saw this peer and received these bytes.
        Accepted { peer: String, data: Vec<u8> },
        /// No ACK of the data; the listener retransmitted its SYN-ACK and
        /// `accept()` did not return. `in_errs` is the growth of `Tcp: InErrs`.
        Dropped { in_errs: u64 },
    }

    /// Handshake from the TUN peer to a fresh listener, then the final ACK
    /// with `options` (and the data offset override) and payload `"hello"`.
    fn final_ack(v6: bool, options: &[u8], data_offset: Option<u8>) -> Outcome {
        final_ack_with(v6, v6, options, data_offset)
    }

    /// [`final_ack`] with the listener's and the client's family apart.
    fn final_ack_with(listener_v6: bool, v6: bool, options: &[u8], data_offset: Option<u8>) -> Outcome {
        let ns = Netns::new();
        let mut tun = TunPeer::new(&ns.path, SERVER_V4, SERVER_V6);
        let listener = Listener::start(&ns, listener_v6);
        let (client, server) = if v6 {
            (tun.client_v6(), SocketAddr::new(tun.server_v6().into(), PORT))
        } else {
            (tun.client_v4(), SocketAddr::new(tun.server_v4().into(), PORT))
        };
        let mut conn = tun.handshake(client, server, &mss_option(1400), SHORT);
        assert_eq!(conn.syn_ack.src, server);
        assert_eq!(conn.syn_ack.dst, client);
        assert!(conn.syn_ack.mss().is_some(), "{}", conn.syn_ack);

        let errs_before = ns.tcp_in_errs();
        // Written minus declared option bytes: what the kernel counts as
        // payload on top of "hello" (negative when it claims payload).
        let hidden = match data_offset {
            Some(words) => options.len().next_multiple_of(4) as i64 - (i64::from(words) * 4 - 20).max(0),
            None => 0,
        };
        let flags = PSH | ACK;
        match data_offset {
            Some(words) => tun.send_with_data_offset(&mut conn, flags, options, words, b"hello"),
            None => tun.send(&mut conn, flags, options, b"hello"),
        }
        conn.snd_nxt = conn.snd_nxt.wrapping_add(hidden as u32);
        let want = conn.snd_nxt;
        let reply = tun.recv_until(&mut conn, SHORT, |s| (s.has(ACK) && !s.has(SYN) && s.ack == want) || s.has(SYN));
        match reply {
            Some(s) if !s.has(SYN) => {
                tun.send(&mut conn, FIN | ACK, &[], &[]);
                let peer = listener.line(SHORT).expect("listener printed the peer");
                let data = listener.line(Duration::from_secs(12)).expect("listener printed the data");
                // Its FIN: be polite, then make sure nothing lingers.
                let fin = tun.recv_until(&mut conn, SHORT, |s| s.has(FIN));
                assert!(fin.is_some(), "listener closed");
                tun.ack(&mut conn, &[]);
                let mut peer = peer.split_whitespace().skip(1);
                let (addr, port) = (peer.next().unwrap(), peer.next().unwrap());
                assert_eq!(port, client.port().to_string());
                Outcome::Accepted { peer: addr.to_owned(), data: hex(data.strip_prefix("data ").unwrap()) }
            }
            other => {
                let s = other.expect("neither an ACK of the data nor a retransmitted SYN-ACK");
                assert_eq!(s.seq, conn.irs, "a retransmitted SYN-ACK: {s}");
                assert_eq!(listener.line(Duration::from_millis(200)), None, "accept() must not return");
                let in_errs = ns.tcp_in_errs() - errs_before;
                tun.reset(&mut conn);
                Outcome::Dropped { in_errs }
            }
        }
    }

    fn accepted(data: &[u8]) -> Outcome {
        Outcome::Accepted { peer: "198.18.0.2".into(), data: data.to_vec() }
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn ipv4_handshake_with_toa_option() {
        crate::require_root();
        assert_eq!(final_ack(false, &toa_v4(PORT), None), accepted(b"hello"));
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn ipv6_handshake_with_toa_option() {
        crate::require_root();
        let got = final_ack(true, &toa_v4(PORT), None);
        assert_eq!(got, Outcome::Accepted { peer: "2001:db8:18::2".into(), data: b"hello".to_vec() });
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn ipv4_to_dual_stack_listener() {
        crate::require_root();
        // An AF_INET6 socket on `::` sees the v4-mapped peer.
        let got = final_ack_with(true, false, &toa_v4(PORT), None);
        assert_eq!(got, Outcome::Accepted { peer: "::ffff:198.18.0.2".into(), data: b"hello".to_vec() });
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn final_ack_option_length_0_is_accepted() {
        crate::require_root();
        assert_eq!(final_ack(false, &[254, 0, 0, 0], None), accepted(b"hello"));
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn final_ack_option_length_1_is_accepted() {
        crate::require_root();
        assert_eq!(final_ack(false, &[254, 1, 0, 0], None), accepted(b"hello"));
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn final_ack_option_length_7_is_accepted() {
        crate::require_root();
        let [hi, lo] = PORT.to_be_bytes();
        assert_eq!(final_ack(false, &[254, 7, hi, lo, 203, 0, 113], None), accepted(b"hello"));
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn final_ack_option_after_eol_is_accepted() {
        crate::require_root();
        let mut opts = vec![0];
        opts.extend_from_slice(&toa_v4(PORT));
        assert_eq!(final_ack(false, &opts, None), accepted(b"hello"));
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn final_ack_option_past_header_is_accepted_and_tail_becomes_data() {
        crate::require_root();
        // 8 bytes written, data offset 6 declares 4: [254, 8, p, p] runs past
        // the header and the address bytes are payload.
        assert_eq!(final_ack(false, &toa_v4(PORT), Some(6)), accepted(b"\xcb\x00\x71\x07hello"));
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn final_ack_two_toa_options_is_accepted() {
        crate::require_root();
        let mut opts = toa_v4(PORT).to_vec();
        opts.extend_from_slice(&toa_v4(1));
        assert_eq!(final_ack(false, &opts, None), accepted(b"hello"));
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn ipv6_final_ack_malformed_options() {
        crate::require_root();
        let hello = Outcome::Accepted { peer: "2001:db8:18::2".into(), data: b"hello".to_vec() };
        assert_eq!(final_ack(true, &[254, 0, 0, 0], None), hello);
        assert_eq!(final_ack(true, &[254, 1, 0, 0], None), hello);
        assert_eq!(final_ack(true, &toa_v4(PORT), Some(4)), Outcome::Dropped { in_errs: 1 });
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn final_ack_data_offset_below_5_is_dropped() {
        crate::require_root();
        assert_eq!(final_ack(false, &toa_v4(PORT), Some(4)), Outcome::Dropped { in_errs: 1 });
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn final_ack_data_offset_past_segment_is_dropped() {
        crate::require_root();
        // 20 + 8 + 5 = 33 bytes of TCP, data offset 15 claims 60.
        assert_eq!(final_ack(false, &toa_v4(PORT), Some(15)), Outcome::Dropped { in_errs: 0 });
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn malformed_syn_options_still_get_a_syn_ack() {
        crate::require_root();
        let ns = Netns::new();
        let mut tun = TunPeer::new(&ns.path, SERVER_V4, SERVER_V6);
        let _listener = Listener::start(&ns, false);
        let server = SocketAddr::new(tun.server_v4().into(), PORT);
        for opts in [&[254, 0, 0, 0][..], &[254, 1], &[2, 4, 5, 0xb4, 254, 30]] {
            let client = tun.client_v4();
            let mut conn = tun.handshake(client, server, opts, SHORT);
            tun.reset(&mut conn);
        }
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn closed_port_resets_and_tun_goes_away() {
        crate::require_root();
        let ns = Netns::new();
        let mut tun = TunPeer::new(&ns.path, SERVER_V4, SERVER_V6);
        assert_eq!(tun.peer_v4(), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(tun.peer_v6(), "2001:db8:18::2".parse::<Ipv6Addr>().unwrap());
        let client = tun.client_v6();
        let server = SocketAddr::new(tun.server_v6().into(), 9);
        match tun.try_handshake(client, server, &[], SHORT) {
            Err(HandshakeError::Reset(s)) => assert!(s.has(RST | ACK), "{s}"),
            other => panic!("expected a RST, got {other:?}"),
        }
        let name = tun.name().to_owned();
        let show = |ns: &Netns| {
            Command::new("nsenter")
                .arg(format!("--net={}", ns.path.display()))
                .args(["ip", "-o", "link", "show"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap()
        };
        assert!(show(&ns).contains(&name));
        drop(tun);
        assert!(!show(&ns).contains(&name), "TUN gone after drop");
    }

    #[test]
    #[ignore = "needs root: TUN device, network namespaces"]
    fn raw_packets_and_concurrent_connections() {
        crate::require_root();
        let ns = Netns::new();
        let mut tun = TunPeer::new(&ns.path, SERVER_V4, SERVER_V6);
        let _listener = Listener::start(&ns, false);
        let server = SocketAddr::new(tun.server_v4().into(), PORT);
        let (a, b) = (tun.client_v4(), tun.client_v4());
        let mut ca = tun.handshake(a, server, &mss_option(1000), SHORT);
        let mut cb = tun.handshake(b, server, &mss_option(1000), SHORT);
        // A raw SYN for a third connection through write_packet.
        let c = tun.client_v4();
        let syn = SegmentSpec::new(c, server, 42, 0, SYN).build().unwrap();
        tun.write_packet(&syn);
        // read_packet also returns what the namespace sends on its own
        // (IPv6 router solicitations, MLD reports); skip to TCP.
        let (p, s) = loop {
            let p = tun.read_packet(SHORT).expect("some packet");
            if let Some(s) = packet::parse(&p) {
                break (p, s);
            }
        };
        assert!(packet::checksums_ok(&p), "{s}");
        assert_eq!((s.dst, s.ack), (c, 43), "{s}");
        assert!(s.has(SYN | ACK));
        tun.reset(&mut ca);
        tun.reset(&mut cb);
    }
}
