//! Byte-exact TCP/IP packets for the TUN peer: build a TCP segment inside an
//! IPv4 or IPv6 header with any option bytes (including malformed ones and a
//! lying data offset), and parse what the kernel sends back.
//!
//! Everything here is pure: no sockets, no privileges.
//!
//! Built packets use TTL / hop limit 64, IPv4 DF set, IP ID 0, TOS / traffic
//! class 0, flow label 0 and urgent pointer 0. The IPv4 header checksum and the
//! TCP checksum (over the IPv4 or IPv6 pseudo-header and the whole segment,
//! i.e. everything after the IP header whatever the data offset says) are
//! always correct, so the kernel judges the segment by its TCP contents only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP flag FIN.
pub const FIN: u8 = 0x01;
/// TCP flag SYN.
pub const SYN: u8 = 0x02;
/// TCP flag RST.
pub const RST: u8 = 0x04;
/// TCP flag PSH.
pub const PSH: u8 = 0x08;
/// TCP flag ACK.
pub const ACK: u8 = 0x10;
/// TCP flag URG.
pub const URG: u8 = 0x20;

/// Length of a TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;
/// Most option bytes a TCP header can declare (data offset 15).
pub const MAX_OPTIONS_LEN: usize = 40;
/// Length of the IPv4 header we build (no IP options).
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// TTL (IPv4) and hop limit (IPv6) of built packets.
pub const HOP_LIMIT: u8 = 64;
/// Window used by [`SegmentSpec::new`].
pub const DEFAULT_WINDOW: u16 = 65535;

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
const IPV4_DF: u16 = 0x4000;

/// TCP option kind: end of option list.
pub const OPT_EOL: u8 = 0;
/// TCP option kind: no-operation.
pub const OPT_NOP: u8 = 1;
/// TCP option kind: maximum segment size.
pub const OPT_MSS: u8 = 2;

/// The 4-byte MSS option (kind 2, length 4).
pub fn mss_option(mss: u16) -> [u8; 4] {
    let [hi, lo] = mss.to_be_bytes();
    [OPT_MSS, 4, hi, lo]
}

/// What to put on the wire; see [`SegmentSpec::build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSpec<'a> {
    /// Source address and port; same family as `dst`.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (written as given, also without [`ACK`]).
    pub ack: u32,
    /// Flags, an OR of [`FIN`], [`SYN`], [`RST`], [`PSH`], [`ACK`], [`URG`].
    pub flags: u8,
    /// Receive window.
    pub window: u16,
    /// Raw option bytes, written as given and padded with zero (EOL) bytes to
    /// a multiple of 4; at most [`MAX_OPTIONS_LEN`] bytes.
    pub options: &'a [u8],
    /// Overrides the header's 4-bit data offset (in 32-bit words, 0..=15).
    /// `None` declares exactly the padded options. A smaller value makes the
    /// tail of the written options part of the payload as far as the receiver
    /// is concerned (e.g. an option "running past the header"); a larger one
    /// claims payload bytes as options; below 5 is an invalid header.
    pub data_offset: Option<u8>,
    /// Payload after the written options.
    pub payload: &'a [u8],
}

/// Why a [`SegmentSpec`] cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// `src` and `dst` are not both IPv4 or both IPv6.
    MixedFamilies,
    /// More than [`MAX_OPTIONS_LEN`] option bytes (the length given).
    OptionsTooLong(usize),
    /// A data offset override above 15 (the value given).
    DataOffsetTooLarge(u8),
    /// The packet would not fit the IP length field (the TCP length).
    TooLarge(usize),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MixedFamilies => f.write_str("source and destination differ in address family"),
            Self::OptionsTooLong(n) => {
                write!(f, "{n} option bytes, at most {MAX_OPTIONS_LEN} fit a TCP header")
            }
            Self::DataOffsetTooLarge(n) => write!(f, "data offset {n} does not fit 4 bits"),
            Self::TooLarge(n) => write!(f, "TCP segment of {n} bytes is too large"),
        }
    }
}

impl std::error::Error for BuildError {}

impl<'a> SegmentSpec<'a> {
    /// A segment with window [`DEFAULT_WINDOW`], no options, no payload and
    /// the honest data offset.
    pub fn new(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, flags: u8) -> Self {
        Self { src, dst, seq, ack, flags, window: DEFAULT_WINDOW, options: &[], data_offset: None, payload: &[] }
    }

    /// Sets the raw option bytes.
    pub fn options(mut self, options: &'a [u8]) -> Self {
        self.options = options;
        self
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = payload;
        self
    }

    /// Sets the window.
    pub fn window(mut self, window: u16) -> Self {
        self.window = window;
        self
    }

    /// Overrides the data offset (32-bit words, 0..=15).
    pub fn data_offset(mut self, words: u8) -> Self {
        self.data_offset = Some(words);
        self
    }

    /// The complete IP packet: IP header, TCP header, padded options, payload.
    pub fn build(&self) -> Result<Vec<u8>, BuildError> {
        if self.options.len() > MAX_OPTIONS_LEN {
            return Err(BuildError::OptionsTooLong(self.options.len()));
        }
        let padded_len = self.options.len().next_multiple_of(4);
        let doff = match self.data_offset {
            Some(words) if words > 15 => return Err(BuildError::DataOffsetTooLarge(words)),
            Some(words) => words,
            // At most (20 + 40) / 4 = 15.
            None => ((TCP_HEADER_LEN + padded_len) / 4) as u8,
        };
        let tcp_len = TCP_HEADER_LEN + padded_len + self.payload.len();

        let mut tcp = Vec::with_capacity(tcp_len);
        tcp.extend_from_slice(&self.src.port().to_be_bytes());
        tcp.extend_from_slice(&self.dst.port().to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push(doff << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&self.window.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(self.options);
        tcp.resize(TCP_HEADER_LEN + padded_len, OPT_EOL);
        tcp.extend_from_slice(self.payload);

        let (src, dst) = (self.src.ip(), self.dst.ip());
        let mut packet = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = IPV4_HEADER_LEN + tcp_len;
                let total = u16::try_from(total).map_err(|_| BuildError::TooLarge(tcp_len))?;
                ipv4_header(s, d, total).to_vec()
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let len = u16::try_from(tcp_len).map_err(|_| BuildError::TooLarge(tcp_len))?;
                ipv6_header(s, d, len).to_vec()
            }
            _ => return Err(BuildError::MixedFamilies),
        };
        let csum = tcp_checksum(src, dst, &tcp);
        tcp[16..18].copy_from_slice(&csum.to_be_bytes());
        packet.extend_from_slice(&tcp);
        Ok(packet)
    }
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, total_len: u16) -> [u8; IPV4_HEADER_LEN] {
    let mut h = [0u8; IPV4_HEADER_LEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[6..8].copy_from_slice(&IPV4_DF.to_be_bytes());
    h[8] = HOP_LIMIT;
    h[9] = IPPROTO_TCP;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let csum = checksum(&h);
    h[10..12].copy_from_slice(&csum.to_be_bytes());
    h
}

fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, payload_len: u16) -> [u8; IPV6_HEADER_LEN] {
    let mut h = [0u8; IPV6_HEADER_LEN];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = IPPROTO_TCP;
    h[7] = HOP_LIMIT;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// Adds `data` as big-endian 16-bit words (odd tail padded with zero) to a
/// one's complement accumulator.
fn sum_words(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds the carries of an accumulator into 16 bits (not complemented).
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The internet checksum (RFC 1071) of `data`: the complement of its one's
/// complement sum. Data that includes a correct checksum sums to 0xffff, so
/// its `checksum` is 0.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum_words(0, data))
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, tcp_len: usize) -> u64 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let acc = sum_words(sum_words(0, &s.octets()), &d.octets());
            acc + u64::from(IPPROTO_TCP) + tcp_len as u64
        }
        _ => {
            let acc = sum_words(sum_words(0, &ip6(src).octets()), &ip6(dst).octets());
            acc + (tcp_len as u64 >> 16) + (tcp_len as u64 & 0xffff) + u64::from(IPPROTO_TCP)
        }
    }
}

fn ip6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The TCP checksum of `segment` (TCP header and everything after it) between
/// `src` and `dst`: over the IPv4 pseudo-header when both are IPv4, else the
/// IPv6 one. Computed as if the segment's checksum field were whatever it
/// holds, so it is 0 for a segment carrying a correct checksum.
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    !fold(sum_words(pseudo_header_sum(src, dst, segment.len()), segment))
}

/// Whether the IPv4 header checksum (for IPv4) and the TCP checksum of a TCP
/// packet are correct. False for anything [`parse`] would not accept.
pub fn checksums_ok(packet: &[u8]) -> bool {
    let Some(l) = locate(packet) else {
        return false;
    };
    if l.src.is_ipv4() && checksum(&packet[..l.tcp_start]) != 0 {
        return false;
    }
    tcp_checksum(l.src, l.dst, &packet[l.tcp_start..l.end]) == 0
}

/// A TCP segment received (or sent), as [`parse`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (as on the wire, also without [`ACK`]).
    pub ack: u32,
    /// The flags byte (CWR and ECE included).
    pub flags: u8,
    /// Receive window (unscaled).
    pub window: u16,
    /// Data offset in 32-bit words.
    pub data_offset: u8,
    /// The option bytes the data offset declares.
    pub options: Vec<u8>,
    /// Everything after the declared header.
    pub payload: Vec<u8>,
}

impl Segment {
    /// Whether all of `flags` are set.
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }

    /// Sequence space the segment occupies: payload, plus one each for SYN
    /// and FIN.
    pub fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.has(SYN)) + u32::from(self.has(FIN))
    }

    /// The value of the first option of `kind` (the bytes after kind and
    /// length), walking the options like a receiver: stops at EOL or at a
    /// malformed length.
    pub fn option(&self, kind: u8) -> Option<&[u8]> {
        let opts = &self.options;
        let mut i = 0;
        while i < opts.len() {
            match opts[i] {
                OPT_EOL => return None,
                OPT_NOP => i += 1,
                k => {
                    let len = usize::from(*opts.get(i + 1)?);
                    if len < 2 || i + len > opts.len() {
                        return None;
                    }
                    if k == kind {
                        return Some(&opts[i + 2..i + len]);
                    }
                    i += len;
                }
            }
        }
        None
    }

    /// The MSS option's value, if present.
    pub fn mss(&self) -> Option<u16> {
        match self.option(OPT_MSS)? {
            &[hi, lo] => Some(u16::from_be_bytes([hi, lo])),
            _ => None,
        }
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} > {} [", self.src, self.dst)?;
        for (bit, name) in [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (PSH, 'P'), (ACK, '.'), (URG, 'U')] {
            if self.has(bit) {
                write!(f, "{name}")?;
            }
        }
        write!(
            f,
            "] seq {} ack {} win {} options {:02x?} len {}",
            self.seq,
            self.ack,
            self.window,
            self.options,
            self.payload.len()
        )
    }
}

/// Where the TCP segment of an IP packet lies.
struct Located {
    src: IpAddr,
    dst: IpAddr,
    tcp_start: usize,
    end: usize,
}

fn locate(packet: &[u8]) -> Option<Located> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < IPV4_HEADER_LEN || packet.len() < ihl {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let frag = u16::from_be_bytes([packet[6], packet[7]]);
            // Not TCP, or a fragment (MF set or a non-zero offset).
            if packet[9] != IPPROTO_TCP || frag & 0x3fff != 0 || total < ihl || total > packet.len() {
                return None;
            }
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&packet[12..16]).ok()?);
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&packet[16..20]).ok()?);
            Some(Located { src: src.into(), dst: dst.into(), tcp_start: ihl, end: total })
        }
        6 => {
            if packet.len() < IPV6_HEADER_LEN {
                return None;
            }
            let end = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            if end > packet.len() {
                return None;
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?);
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[24..40]).ok()?);
            let mut next = packet[6];
            let mut at = IPV6_HEADER_LEN;
            loop {
                match next {
                    IPPROTO_TCP => break,
                    // Hop-by-hop, routing, destination options.
                    0 | 43 | 60 => {
                        let hdr = packet.get(at..at + 2)?;
                        next = hdr[0];
                        at += (usize::from(hdr[1]) + 1) * 8;
                    }
                    // Fragments, ICMPv6 (ND, MLD), anything else.
                    _ => return None,
                }
            }
            (at <= end).then_some(Located { src: src.into(), dst: dst.into(), tcp_start: at, end })
        }
        _ => None,
    }
}

/// Reads an IPv4 or IPv6 packet carrying a TCP segment. `None` for anything
/// else (ICMP, ICMPv6 neighbour discovery and MLD, UDP, fragments) and for
/// segments too short for their header or with a data offset below 5 or past
/// the segment. Checksums are not checked; see [`checksums_ok`].
pub fn parse(packet: &[u8]) -> Option<Segment> {
    let l = locate(packet)?;
    let tcp = &packet[l.tcp_start..l.end];
    if tcp.len() < TCP_HEADER_LEN {
        return None;
    }
    let data_offset = tcp[12] >> 4;
    let header_len = usize::from(data_offset) * 4;
    if header_len < TCP_HEADER_LEN || header_len > tcp.len() {
        return None;
    }
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    let word = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
    Some(Segment {
        src: SocketAddr::new(l.src, port(0)),
        dst: SocketAddr::new(l.dst, port(2)),
        seq: word(4),
        ack: word(8),
        flags: tcp[13],
        window: port(14),
        data_offset,
        options: tcp[TCP_HEADER_LEN..header_len].to_vec(),
        payload: tcp[header_len..].to_vec(),
    })
}

/// The IP packets (IPv4 and IPv6) of a pcap file captured on an Ethernet
/// link, in order; nothing for a file shorter than its header or of another
/// link type. A record cut short by a capture still being written ends the list.
pub fn pcap_ip_packets(bytes: &[u8]) -> Vec<Vec<u8>> {
    const FILE_HEADER: usize = 24;
    const RECORD_HEADER: usize = 16;
    const ETHERNET: u32 = 1;
    if bytes.len() < FILE_HEADER {
        return Vec::new();
    }
    let le = bytes[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |i: usize| {
        let a = [bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]];
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    if u32_at(20) != ETHERNET {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut i = FILE_HEADER;
    while i + RECORD_HEADER <= bytes.len() {
        let caplen = u32_at(i + 8) as usize;
        let data = &bytes[i + RECORD_HEADER..(i + RECORD_HEADER + caplen).min(bytes.len())];
        if data.len() > 14 && matches!(data[12..14], [0x08, 0x00] | [0x86, 0xdd]) {
            out.push(data[14..].to_vec());
        }
        i += RECORD_HEADER + caplen;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::from(a).into(), port)
    }

    fn v6(s: &str, port: u16) -> SocketAddr {
        SocketAddr::new(s.parse::<Ipv6Addr>().unwrap().into(), port)
    }

    #[test]
    fn ipv4_header_checksum_known_value() {
        // The classic example (Wikipedia, "IPv4 header checksum").
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h), 0);
        assert_eq!(fold(sum_words(0, &h)), 0xffff);
    }

    #[test]
    fn odd_length_checksum() {
        // 0x0102 + 0x0300 = 0x0402.
        assert_eq!(checksum(&[1, 2, 3]), !0x0402);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn tcp_checksum_known_values() {
        // Values computed independently (a separate Python implementation of
        // RFC 793 / RFC 8200 pseudo-header sums) for these exact segments.
        let syn4 = SegmentSpec::new(v4([198, 18, 0, 2], 40000), v4([198, 18, 0, 1], 80), 1000, 0, SYN)
            .options(&mss_option(1460))
            .build()
            .unwrap();
        assert_eq!(u16::from_be_bytes([syn4[36], syn4[37]]), 0x6b86);
        assert_eq!(u16::from_be_bytes([syn4[10], syn4[11]]), 0xaea4);

        let syn6 = SegmentSpec::new(v6("2001:db8:18::2", 40000), v6("2001:db8:18::1", 80), 1000, 0, SYN)
            .options(&mss_option(1440))
            .build()
            .unwrap();
        assert_eq!(u16::from_be_bytes([syn6[56], syn6[57]]), 0x9c1d);
    }

    #[test]
    fn ipv4_build_layout() {
        let opts = [254, 8, 0x1f, 0x90, 203, 0, 113, 7];
        let p = SegmentSpec::new(v4([198, 18, 0, 2], 40000), v4([198, 18, 0, 1], 8080), 7, 9, ACK | PSH)
            .options(&opts)
            .payload(b"hello")
            .window(1234)
            .build()
            .unwrap();
        assert_eq!(p.len(), 20 + 20 + 8 + 5);
        assert_eq!(p[0], 0x45);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 53);
        assert_eq!(&p[6..8], &[0x40, 0x00], "DF, no fragment offset");
        assert_eq!(p[8], 64);
        assert_eq!(p[9], 6);
        assert_eq!(&p[12..16], &[198, 18, 0, 2]);
        assert_eq!(&p[16..20], &[198, 18, 0, 1]);
        let tcp = &p[20..];
        assert_eq!(&tcp[0..4], &[0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(&tcp[4..12], &[0, 0, 0, 7, 0, 0, 0, 9]);
        assert_eq!(tcp[12], 7 << 4);
        assert_eq!(tcp[13], ACK | PSH);
        assert_eq!(&tcp[14..16], &1234u16.to_be_bytes());
        assert_eq!(&tcp[18..20], &[0, 0]);
        assert_eq!(&tcp[20..28], &opts);
        assert_eq!(&tcp[28..], b"hello");
        assert!(checksums_ok(&p));
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(fold(sum_words(pseudo_header_sum(p4(&p, 12), p4(&p, 16), tcp.len()), tcp)), 0xffff);
    }

    fn p4(p: &[u8], at: usize) -> IpAddr {
        Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]).into()
    }

    #[test]
    fn ipv6_build_layout() {
        let p = SegmentSpec::new(v6("2001:db8:18::2", 1), v6("2001:db8:18::1", 2), 1, 2, ACK)
            .options(&[1, 1, 1])
            .payload(b"xyz")
            .build()
            .unwrap();
        assert_eq!(p.len(), 40 + 24 + 3);
        assert_eq!(&p[0..4], &[0x60, 0, 0, 0]);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), 27);
        assert_eq!(p[6], 6);
        assert_eq!(p[7], 64);
        assert_eq!(p[40 + 12], 6 << 4);
        assert_eq!(&p[60..64], &[1, 1, 1, 0], "padded with EOL");
        assert!(checksums_ok(&p));
        let mut bad = p.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(!checksums_ok(&bad));
    }

    #[test]
    fn round_trip_v4_and_v6() {
        let cases = [(v4([10, 0, 0, 1], 1), v4([10, 0, 0, 2], 65535)), (v6("2001:db8::1", 443), v6("fe80::2", 5))];
        for (src, dst) in cases {
            for (opts, payload) in [
                (&[][..], &b""[..]),
                (&[254, 8, 1, 2, 3, 4, 5, 6][..], &b"hello"[..]),
                (&[2, 4, 5, 0xb4, 1, 3, 3, 7][..], &b"odd"[..]),
                (&[1; 40][..], &[0xaa; 1000][..]),
            ] {
                let p = SegmentSpec::new(src, dst, 0xdead_beef, 0x0102_0304, SYN | ACK)
                    .options(opts)
                    .payload(payload)
                    .window(777)
                    .build()
                    .unwrap();
                assert!(checksums_ok(&p));
                let s = parse(&p).unwrap();
                assert_eq!((s.src, s.dst), (src, dst));
                assert_eq!((s.seq, s.ack, s.flags, s.window), (0xdead_beef, 0x0102_0304, SYN | ACK, 777));
                let mut padded = opts.to_vec();
                padded.resize(opts.len().next_multiple_of(4), 0);
                assert_eq!(s.options, padded);
                assert_eq!(s.data_offset as usize, 5 + padded.len() / 4);
                assert_eq!(s.payload, payload);
                assert_eq!(s.seq_len(), payload.len() as u32 + 1);
            }
        }
    }

    #[test]
    fn data_offset_override() {
        let src = v4([198, 18, 0, 2], 1);
        let dst = v4([198, 18, 0, 1], 2);
        // 8 option bytes written, 4 declared: the option runs past the header.
        let opts = [254, 8, 0, 80, 203, 0, 113, 7];
        let p = SegmentSpec::new(src, dst, 1, 1, ACK).options(&opts).payload(b"hi").data_offset(6).build().unwrap();
        assert_eq!(p.len(), 20 + 20 + 8 + 2);
        assert!(checksums_ok(&p));
        let s = parse(&p).unwrap();
        assert_eq!(s.data_offset, 6);
        assert_eq!(s.options, [254, 8, 0, 80]);
        assert_eq!(s.payload, [203, 0, 113, 7, b'h', b'i']);
        assert_eq!(s.option(254), None, "runs past the options");

        // Below 5: built (checksums fine) but not parseable.
        let p = SegmentSpec::new(src, dst, 1, 1, ACK).data_offset(4).build().unwrap();
        assert!(checksums_ok(&p));
        assert_eq!(parse(&p), None);
        // Past the end of the segment.
        let p = SegmentSpec::new(src, dst, 1, 1, ACK).data_offset(15).build().unwrap();
        assert_eq!(parse(&p), None);
        assert_eq!(
            SegmentSpec::new(src, dst, 1, 1, ACK).data_offset(16).build(),
            Err(BuildError::DataOffsetTooLarge(16))
        );
    }

    #[test]
    fn build_errors() {
        let a = v4([1, 2, 3, 4], 1);
        let b = v6("::1", 1);
        assert_eq!(SegmentSpec::new(a, b, 0, 0, SYN).build(), Err(BuildError::MixedFamilies));
        assert_eq!(SegmentSpec::new(a, a, 0, 0, SYN).options(&[1; 41]).build(), Err(BuildError::OptionsTooLong(41)));
        let big = vec![0; 70000];
        assert!(matches!(SegmentSpec::new(a, a, 0, 0, ACK).payload(&big).build(), Err(BuildError::TooLarge(_))));
        assert!(matches!(SegmentSpec::new(b, b, 0, 0, ACK).payload(&big).build(), Err(BuildError::TooLarge(_))));
    }

    #[test]
    fn parse_rejects_non_tcp() {
        // ICMPv6 router solicitation.
        let mut rs = vec![0x60, 0, 0, 0, 0, 8, 58, 255];
        rs.extend_from_slice(&[0; 16]);
        rs.extend_from_slice(&"ff02::2".parse::<Ipv6Addr>().unwrap().octets());
        rs.extend_from_slice(&[133, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&rs), None);

        // MLDv2 report: hop-by-hop (router alert) then ICMPv6.
        let mut mld = vec![0x60, 0, 0, 0, 0, 36, 0, 1];
        mld.extend_from_slice(&[0; 16]);
        mld.extend_from_slice(&"ff02::16".parse::<Ipv6Addr>().unwrap().octets());
        mld.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
        mld.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 1]);
        mld.extend_from_slice(&[0; 20]);
        assert_eq!(parse(&mld), None);

        // IPv6 with a destination options header before TCP is still TCP.
        let p = SegmentSpec::new(v6("::1", 1), v6("::2", 2), 5, 6, ACK).payload(b"x").build().unwrap();
        let mut ext = p[..40].to_vec();
        ext[6] = 60;
        ext[4..6].copy_from_slice(&((p.len() - 40 + 8) as u16).to_be_bytes());
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        ext.extend_from_slice(&p[40..]);
        let s = parse(&ext).unwrap();
        assert_eq!((s.seq, s.ack, s.payload.as_slice()), (5, 6, &b"x"[..]));
        assert!(checksums_ok(&ext));

        // UDP over IPv4, an IPv4 fragment, garbage.
        let mut udp = SegmentSpec::new(v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2), 0, 0, 0).build().unwrap();
        udp[9] = 17;
        assert_eq!(parse(&udp), None);
        let mut frag = SegmentSpec::new(v4([1, 1, 1, 1], 1), v4([2, 2, 2, 2], 2), 0, 0, 0).build().unwrap();
        frag[6] |= 0x20;
        assert_eq!(parse(&frag), None);
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x45, 0, 0]), None);
        assert_eq!(parse(&[0x60; 39]), None);
    }

    #[test]
    fn option_lookup() {
        let s = |options: Vec<u8>| Segment {
            src: v4([0; 4], 0),
            dst: v4([0; 4], 0),
            seq: 0,
            ack: 0,
            flags: SYN,
            window: 0,
            data_offset: 5 + options.len() as u8 / 4,
            options,
            payload: vec![],
        };
        assert_eq!(s(vec![2, 4, 5, 0xb4]).mss(), Some(1460));
        assert_eq!(s(vec![1, 1, 254, 4, 9, 9, 2, 4, 1, 0, 0, 0]).mss(), Some(256));
        assert_eq!(s(vec![1, 1, 254, 4, 9, 9, 2, 4, 1, 0, 0, 0]).option(254), Some(&[9, 9][..]));
        assert_eq!(s(vec![0, 0, 2, 4, 5, 0xb4, 0, 0]).mss(), None, "after EOL");
        assert_eq!(s(vec![254, 0, 2, 4, 5, 0xb4, 0, 0]).mss(), None, "length 0");
        assert_eq!(s(vec![254, 1, 2, 4, 5, 0xb4, 0, 0]).mss(), None, "length 1");
        assert_eq!(s(vec![2, 8, 5, 0xb4]).mss(), None, "runs past the end");
        assert_eq!(s(vec![2, 3, 5, 0]).mss(), None, "wrong length");
        let text = s(vec![2, 4, 5, 0xb4]).to_string();
        assert!(text.contains("[S]"), "{text}");
    }
}
