//! `toa sniff`: decode TOA options on the wire, live.
//!
//! A packet socket (`AF_PACKET`, `SOCK_DGRAM`: the link-layer header is
//! already removed) on one interface, with a classic BPF filter that passes
//! only TCP and truncates each packet to its headers. Each packet is decoded
//! by [`toa_common::segment`] and its options go through the same codec the
//! eBPF programs use ([`toa_common::option`]), so what `sniff` shows is what
//! the agent would take.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Write},
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    time::SystemTime,
};

use serde::Serialize;
use toa_common::{
    Format, Formats,
    format::DEFAULT_FORMATS,
    segment::{self, ETH_P_IP, ETH_P_IPV6, Segment},
};

use crate::{
    Error, Result,
    sys::{netns, time},
};

const ETH_P_ALL: u16 = 0x0003;
/// Bytes kept of each packet: enough for IPv6 + extension headers + a full TCP header.
const SNAPLEN: u32 = 256;
/// `PACKET_OUTGOING` in `sockaddr_ll.sll_pkttype`.
const PACKET_OUTGOING: u8 = 4;

/// What to capture.
#[derive(Clone, Debug)]
pub struct SniffOptions {
    /// Interface name.
    pub iface: String,
    /// Network namespace file to capture in (default: the caller's).
    pub netns: Option<PathBuf>,
    /// Stop after this many printed segments.
    pub count: Option<u64>,
    /// Accepted formats (empty: the defaults).
    pub formats: Vec<Format>,
    /// Print every TCP segment, not only those with a TOA option.
    pub all: bool,
    /// Only segments from or to this port.
    pub port: Option<u16>,
    /// One JSON object per line.
    pub json: bool,
}

/// What one segment carried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// An accepted TOA option.
    Toa,
    /// An option the codec refuses (counted as `toa_malformed` by the agent).
    Malformed,
    /// No TOA option.
    None,
}

/// One decoded TCP segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// Source address.
    pub src: SocketAddr,
    /// Destination address.
    pub dst: SocketAddr,
    /// TCP flags, tcpdump style (`S`, `S.`, `.`, `P.`, `F.`, `R`).
    pub flags: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Kind of the TOA option (or of the refused one).
    pub kind: Option<u8>,
    /// Its length byte.
    pub len: Option<u8>,
    /// The decoded client, `ADDR:PORT` (just `ADDR` when the format has no port).
    pub client: Option<String>,
    /// Why it was refused.
    pub reason: Option<String>,
}

impl Seen {
    /// How a decoded segment is shown.
    fn new(segment: &Segment<'_>) -> Seen {
        let mut seen = Seen {
            src: segment.src,
            dst: segment.dst,
            flags: flags(segment.flags),
            verdict: Verdict::None,
            kind: None,
            len: None,
            client: None,
            reason: None,
        };
        match segment.verdict {
            segment::Verdict::Toa { client, len } => {
                let ip = match client.family {
                    toa_common::Family::V4 => {
                        IpAddr::V4(Ipv4Addr::new(client.addr[0], client.addr[1], client.addr[2], client.addr[3]))
                    }
                    toa_common::Family::V6 => IpAddr::V6(Ipv6Addr::from(client.addr)),
                };
                let port = u16::from_be_bytes(client.port);
                seen.verdict = Verdict::Toa;
                seen.kind = Some(client.kind);
                seen.len = len;
                // The version formats (7 and 19 bytes) carry no port.
                seen.client = Some(if port == 0 && len.is_some_and(|l| l == 7 || l == 19) {
                    ip.to_string()
                } else {
                    SocketAddr::new(ip, port).to_string()
                });
            }
            segment::Verdict::Malformed { refused } => {
                seen.verdict = Verdict::Malformed;
                match refused {
                    Some((kind, len)) => {
                        seen.kind = Some(kind);
                        seen.len = Some(len);
                        seen.reason = Some(format!("{kind}/{len} is not an accepted length for kind {kind}"));
                    }
                    None => seen.reason = Some("broken option list (length < 2 or past the header)".into()),
                }
            }
            segment::Verdict::None => {}
        }
        seen
    }
}

/// Decodes a captured packet (no link-layer header) holding a TCP segment.
fn decode(ethertype: u16, packet: &[u8], formats: &Formats) -> Option<Seen> {
    segment::decode(ethertype, packet, formats).map(|s| Seen::new(&s))
}

/// tcpdump's flag notation.
fn flags(bits: u8) -> String {
    let mut s = String::new();
    use segment::flags::{ACK, CWR, ECE, FIN, PSH, RST, SYN, URG};
    for (bit, c) in [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (PSH, 'P'), (URG, 'U'), (ECE, 'E'), (CWR, 'W')] {
        if bits & bit != 0 {
            s.push(c);
        }
    }
    if bits & ACK != 0 {
        s.push('.');
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

/// One output line.
pub fn render(time: SystemTime, outgoing: bool, seen: &Seen) -> String {
    let what = match seen.verdict {
        Verdict::Toa => format!(
            "toa {}/{} {}",
            seen.kind.unwrap_or(0),
            seen.len.map_or("?".to_string(), |l| l.to_string()),
            seen.client.as_deref().unwrap_or("")
        ),
        Verdict::Malformed => format!(
            "malformed{}: {}",
            match (seen.kind, seen.len) {
                (Some(k), Some(l)) => format!(" {k}/{l}"),
                _ => String::new(),
            },
            seen.reason.as_deref().unwrap_or("")
        ),
        Verdict::None => "no toa".to_string(),
    };
    format!(
        "{} {} {} > {} [{}] {}",
        time::clock(time),
        if outgoing { "out" } else { "in " },
        seen.src,
        seen.dst,
        seen.flags,
        what
    )
}

/// A classic BPF program: IPv4 TCP or any IPv6 (decoded in userspace), cut to `SNAPLEN`.
fn tcp_filter() -> Vec<libc::sock_filter> {
    const SKF_AD_PROTOCOL: u32 = 0;
    const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter { code: code as u16, jt, jf, k };
    let (ld_h_abs, ld_b_abs, jeq_k, ret_k) = (
        libc::BPF_LD | libc::BPF_H | libc::BPF_ABS,
        libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    vec![
        op(ld_h_abs, 0, 0, SKF_AD_OFF + SKF_AD_PROTOCOL), // A = skb->protocol
        op(jeq_k, 4, 0, u32::from(ETH_P_IPV6)),           // IPv6 → accept
        op(jeq_k, 0, 2, u32::from(ETH_P_IP)),             // not IPv4 → drop
        op(ld_b_abs, 0, 0, 9),                            // A = IPv4 protocol
        op(jeq_k, 1, 0, libc::IPPROTO_TCP as u32),        // TCP → accept
        op(ret_k, 0, 0, 0),                               // drop
        op(ret_k, 0, 0, SNAPLEN),                         // accept
    ]
}

/// Opens the capture socket on `iface` in the current network namespace.
fn open_capture(iface: &str) -> Result<OwnedFd> {
    let name = CString::new(iface).map_err(|_| Error::Invalid(format!("bad interface name {iface:?}")))?;
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(Error::Invalid(format!(
            "no interface {iface} here (see `ip link`; --netns PATH for another namespace)"
        )));
    }
    // SAFETY: plain syscall; the fd is owned below.
    let fd =
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, i32::from(ETH_P_ALL.to_be())) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Err(Error::Invalid("capturing packets needs root (CAP_NET_RAW): run `sudo toa sniff`".into()));
        }
        return Err(Error::io("opening", "a packet socket")(e));
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let filter = tcp_filter();
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
    // SAFETY: valid fd and option buffer.
    if unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            size_of::<libc::sock_fprog>() as u32,
        )
    } != 0
    {
        return Err(Error::io("attaching the capture filter on", iface)(io::Error::last_os_error()));
    }
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = index as i32;
    // SAFETY: valid fd and address.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), size_of::<libc::sockaddr_ll>() as u32) } != 0 {
        return Err(Error::io("binding the packet socket to", iface)(io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Captures until `count` segments were printed (or forever), writing lines to `out`.
pub fn run(opts: &SniffOptions, out: &mut dyn Write) -> Result<()> {
    if let Some(path) = &opts.netns {
        let ns = File::open(path).map_err(Error::io("opening network namespace", path))?;
        netns::enter(&ns).map_err(Error::io("entering network namespace", path))?;
    }
    let fd = open_capture(&opts.iface)?;
    let formats = Formats::from_list(if opts.formats.is_empty() { &DEFAULT_FORMATS } else { &opts.formats });
    tracing::info!(iface = %opts.iface, netns = ?opts.netns, "capturing TCP segments");
    let mut printed = 0u64;
    let mut buf = vec![0u8; 65536];
    while opts.count.is_none_or(|c| printed < c) {
        // SAFETY: zeroed sockaddr_ll is valid as an out parameter.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: valid fd, buffer and address out parameters.
        let n = unsafe {
            libc::recvfrom(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0, (&raw mut from).cast(), &mut from_len)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("capturing on", opts.iface.clone())(e));
        }
        let now = SystemTime::now();
        let ethertype = u16::from_be(from.sll_protocol);
        let Some(seen) = decode(ethertype, &buf[..n as usize], &formats) else { continue };
        if opts.port.is_some_and(|p| seen.src.port() != p && seen.dst.port() != p) {
            continue;
        }
        if seen.verdict == Verdict::None && !opts.all {
            continue;
        }
        let outgoing = from.sll_pkttype == PACKET_OUTGOING;
        tracing::debug!(src = %seen.src, dst = %seen.dst, verdict = ?seen.verdict, "segment");
        let line = if opts.json {
            let mut v = serde_json::to_value(&seen).map_err(|e| Error::Invalid(e.to_string()))?;
            v["time"] = time::rfc3339(now).into();
            v["direction"] = if outgoing { "out" } else { "in" }.into();
            v.to_string()
        } else {
            render(now, outgoing, &seen)
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // The reader went away (e.g. `| head`): stop quietly.
            return Ok(());
        }
        printed += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use integration_test::packet::SegmentSpec;

    const ACK: u8 = 0x10;
    const SYN: u8 = 0x02;

    fn formats() -> Formats {
        Formats::from_list(&DEFAULT_FORMATS)
    }

    fn packet(src: &str, dst: &str, flags: u8, options: &[u8]) -> Vec<u8> {
        SegmentSpec::new(src.parse().expect("src"), dst.parse().expect("dst"), 1, 1, flags)
            .options(options)
            .build()
            .expect("builds")
    }

    struct Case {
        description: &'static str,
        src: &'static str,
        flags: u8,
        options: &'static [u8],
        verdict: Verdict,
        client: Option<&'static str>,
        kind_len: Option<(u8, u8)>,
    }

    #[test]
    fn segments_are_decoded_like_the_agent_does() {
        let cases = [
            Case {
                description: "254/8 in the ACK",
                src: "192.0.2.1:40000",
                flags: ACK,
                options: &[1, 1, 254, 8, 0x10, 0x92, 203, 0, 113, 7],
                verdict: Verdict::Toa,
                client: Some("203.0.113.7:4242"),
                kind_len: Some((254, 8)),
            },
            Case {
                description: "253/20 over IPv6",
                src: "[2001:db8::1]:40000",
                flags: ACK,
                options: &[253, 20, 0x10, 0x92, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 1, 1, 1, 1],
                verdict: Verdict::Toa,
                client: Some("[2001:db8::7]:4242"),
                kind_len: Some((253, 20)),
            },
            Case {
                description: "254/9 is refused",
                src: "192.0.2.1:40000",
                flags: ACK,
                options: &[254, 9, 0x10, 0x92, 203, 0, 113, 7, 0, 0, 0, 0],
                verdict: Verdict::Malformed,
                client: None,
                kind_len: Some((254, 9)),
            },
            Case {
                description: "TFO in a SYN is not TOA",
                src: "192.0.2.1:40000",
                flags: SYN,
                options: &[254, 8, 0xf9, 0x89, 1, 2, 3, 4],
                verdict: Verdict::None,
                client: None,
                kind_len: None,
            },
            Case {
                description: "no options",
                src: "192.0.2.1:40000",
                flags: ACK,
                options: &[],
                verdict: Verdict::None,
                client: None,
                kind_len: None,
            },
        ];
        for c in cases {
            let dst = if c.src.starts_with('[') { "[2001:db8::2]:9000" } else { "192.0.2.2:9000" };
            let p = packet(c.src, dst, c.flags, c.options);
            let ethertype = if c.src.starts_with('[') { ETH_P_IPV6 } else { ETH_P_IP };
            let seen = decode(ethertype, &p, &formats()).unwrap_or_else(|| panic!("{}: not decoded", c.description));
            assert_eq!(seen.verdict, c.verdict, "{}", c.description);
            assert_eq!(seen.client.as_deref(), c.client, "{}", c.description);
            assert_eq!(seen.kind.zip(seen.len), c.kind_len, "{}", c.description);
            assert_eq!(seen.src.to_string(), c.src, "{}", c.description);
        }
    }

    #[test]
    fn short_ipv4_frames_are_not_decoded() {
        let p = packet("192.0.2.1:40000", "192.0.2.2:9000", ACK, &[254, 8, 0x10, 0x92, 203, 0, 113, 7]);
        for n in 0..40 {
            assert!(decode(ETH_P_IP, &p[..n], &formats()).is_none(), "{n} bytes");
        }
    }

    #[test]
    fn lines_read_like_tcpdump() {
        let p = packet("192.0.2.1:40000", "192.0.2.2:9000", ACK, &[254, 8, 0x10, 0x92, 203, 0, 113, 7]);
        let seen = decode(ETH_P_IP, &p, &formats()).expect("decoded");
        let line = render(SystemTime::now(), false, &seen);
        assert!(line.ends_with("in  192.0.2.1:40000 > 192.0.2.2:9000 [.] toa 254/8 203.0.113.7:4242"), "{line}");
        assert_eq!(flags(0x12), "S.");
        assert_eq!(flags(0x18), "P.");
        assert!(decode(ETH_P_IP, &p[..30], &formats()).is_none(), "truncated");
        assert!(decode(0x0806, &p, &formats()).is_none(), "ARP");
    }
}
