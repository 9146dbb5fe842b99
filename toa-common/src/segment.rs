//! Decoding a captured IPv4 or IPv6 packet that holds a TCP segment: the
//! addresses, ports and flags, the options area, and what the option codec
//! makes of it, as `toa sniff` shows it.
//!
//! Every read is checked against the bytes captured: a packet that is too
//! short for the header it announces decodes to `None`, never to a read past
//! its end. An options area cut short by the capture is decoded as far as it
//! goes.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    format::Formats,
    option::{self, ClientAddr, Parsed, TCPOPT_EOL, TCPOPT_NOP},
};

/// `ETH_P_IP`: the packet is IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_IPV6`: the packet is IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// Size of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Size of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Size of a TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;
/// IPv6 extension headers skipped on the way to TCP: hop-by-hop, routing,
/// destination options (each `(length + 1) * 8` bytes, length in its second byte).
const IPV6_SKIPPED: [u8; 3] = [0, 43, 60];

/// TCP flag bits (byte 13 of the header).
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// What a segment's options say about the real client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No TOA option.
    None,
    /// An accepted option (what the agent would store).
    Toa {
        /// The client it carries.
        client: ClientAddr,
        /// Its length byte, as found in the options.
        len: Option<u8>,
    },
    /// An option the codec refuses (counted as `toa_malformed` by the agent).
    Malformed {
        /// (kind, length) of the first option of an accepted kind with a
        /// refused length; `None` when the option list itself is broken.
        refused: Option<(u8, u8)>,
    },
}

/// One decoded TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The TCP flag bits ([`flags`]).
    pub flags: u8,
    /// The options area, as far as it was captured.
    pub options: &'a [u8],
    /// What the options say.
    pub verdict: Verdict,
}

/// Decodes `packet` (no link-layer header), an IPv4 or IPv6 packet as
/// `ethertype` says; `None` unless it holds a TCP header.
pub fn decode<'a>(ethertype: u16, packet: &'a [u8], formats: &Formats) -> Option<Segment<'a>> {
    let (src, dst, tcp) = match ethertype {
        ETH_P_IP => ipv4(packet)?,
        ETH_P_IPV6 => ipv6(packet)?,
        _ => return None,
    };
    let header = tcp_header(tcp)?;
    Some(Segment {
        src: SocketAddr::new(src, header.sport),
        dst: SocketAddr::new(dst, header.dport),
        flags: header.flags,
        options: header.options,
        verdict: verdict(header.options, formats, header.flags & flags::SYN != 0),
    })
}

/// An IPv4 header: the addresses and what follows the header, for the first
/// fragment of a TCP packet.
fn ipv4(packet: &[u8]) -> Option<(IpAddr, IpAddr, &[u8])> {
    let header = packet.get(..IPV4_HEADER_LEN)?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || ihl < IPV4_HEADER_LEN || header[9] != IPPROTO_TCP {
        return None;
    }
    // Only the first fragment has the TCP header.
    if u16::from_be_bytes([header[6], header[7]]) & 0x1fff != 0 {
        return None;
    }
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    Some((IpAddr::V4(src), IpAddr::V4(dst), packet.get(ihl..)?))
}

/// An IPv6 header and the extension headers before TCP: the addresses and
/// the TCP segment.
fn ipv6(packet: &[u8]) -> Option<(IpAddr, IpAddr, &[u8])> {
    let header = packet.get(..IPV6_HEADER_LEN)?;
    if header[0] >> 4 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&header[24..40]);
    let mut next = header[6];
    let mut at = IPV6_HEADER_LEN;
    while IPV6_SKIPPED.contains(&next) {
        next = *packet.get(at)?;
        at += (usize::from(*packet.get(at + 1)?) + 1) * 8;
    }
    if next != IPPROTO_TCP {
        return None;
    }
    Some((IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)), packet.get(at..)?))
}

/// The fields of a TCP header `toa sniff` shows.
struct TcpHeader<'a> {
    sport: u16,
    dport: u16,
    flags: u8,
    options: &'a [u8],
}

/// A TCP header; its options area is cut to what was captured.
fn tcp_header(tcp: &[u8]) -> Option<TcpHeader<'_>> {
    let fixed = tcp.get(..TCP_HEADER_LEN)?;
    let header_len = usize::from(fixed[12] >> 4) * 4;
    let end = header_len.clamp(TCP_HEADER_LEN, tcp.len());
    Some(TcpHeader {
        sport: u16::from_be_bytes([fixed[0], fixed[1]]),
        dport: u16::from_be_bytes([fixed[2], fixed[3]]),
        flags: fixed[13],
        options: &tcp[TCP_HEADER_LEN..end],
    })
}

/// What the codec makes of an options area (`syn`: the segment is a SYN).
pub fn verdict(options: &[u8], formats: &Formats, syn: bool) -> Verdict {
    match option::parse_slice(options, formats, syn) {
        Parsed::Found(client) => Verdict::Toa {
            client,
            len: walk(options)
                .find(|&(k, l)| k == client.kind && formats.accepts(k, usize::from(l)).is_some())
                .map(|(_, l)| l),
        },
        Parsed::Malformed => Verdict::Malformed {
            refused: walk(options)
                .find(|&(k, l)| formats.knows_kind(k) && formats.accepts(k, usize::from(l)).is_none()),
        },
        Parsed::None => Verdict::None,
    }
}

/// (kind, length) of each option while the list is well formed: NOPs are
/// skipped, EOL ends it, a length below 2 or past the end breaks it.
pub fn walk(options: &[u8]) -> impl Iterator<Item = (u8, u8)> + '_ {
    let mut at = 0;
    core::iter::from_fn(move || {
        loop {
            match *options.get(at)? {
                TCPOPT_EOL => return None,
                TCPOPT_NOP => at += 1,
                kind => {
                    let len = *options.get(at + 1)?;
                    if len < 2 || at + usize::from(len) > options.len() {
                        return None;
                    }
                    at += usize::from(len);
                    return Some((kind, len));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Family, format::DEFAULT_FORMATS};

    const OPTION_254_8: [u8; 8] = [254, 8, 0x10, 0x92, 203, 0, 113, 7];

    /// An IPv4 packet from 192.0.2.1:40000 to 192.0.2.2:9000 with `options`.
    fn v4(flags: u8, options: &[u8]) -> ([u8; 128], usize) {
        let mut p = [0u8; 128];
        p[0] = 0x45;
        p[9] = IPPROTO_TCP;
        p[12..16].copy_from_slice(&[192, 0, 2, 1]);
        p[16..20].copy_from_slice(&[192, 0, 2, 2]);
        let n = tcp(&mut p[20..], flags, options);
        (p, 20 + n)
    }

    /// An IPv6 packet from 2001:db8::1 to 2001:db8::2, with `ext` extension
    /// bytes (whose first byte is the next header) before TCP.
    fn v6(next: u8, ext: &[u8], options: &[u8]) -> ([u8; 160], usize) {
        let mut p = [0u8; 160];
        p[0] = 0x60;
        p[6] = next;
        p[8..24].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p[40..40 + ext.len()].copy_from_slice(ext);
        let n = tcp(&mut p[40 + ext.len()..], flags::ACK, options);
        (p, 40 + ext.len() + n)
    }

    /// A TCP header with `options` (padded to words); returns its length.
    fn tcp(t: &mut [u8], flags: u8, options: &[u8]) -> usize {
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&9000u16.to_be_bytes());
        let len = TCP_HEADER_LEN + options.len().div_ceil(4) * 4;
        t[12] = ((len / 4) as u8) << 4;
        t[13] = flags;
        t[20..20 + options.len()].copy_from_slice(options);
        len
    }

    fn formats() -> Formats {
        Formats::from_list(&DEFAULT_FORMATS)
    }

    #[test]
    fn a_segment_with_an_option_is_decoded() {
        let (p, n) = v4(flags::ACK, &OPTION_254_8);
        let s = decode(ETH_P_IP, &p[..n], &formats()).expect("decoded");
        assert_eq!(s.src, "192.0.2.1:40000".parse().expect("addr"));
        assert_eq!(s.dst, "192.0.2.2:9000".parse().expect("addr"));
        assert_eq!(s.flags, flags::ACK);
        assert_eq!(s.options, &OPTION_254_8);
        let Verdict::Toa { client, len } = s.verdict else { panic!("{:?}", s.verdict) };
        assert_eq!((client.kind, client.family, len), (254, Family::V4, Some(8)));
        assert_eq!((&client.addr[..4], client.port), (&[203, 0, 113, 7][..], [0x10, 0x92]));
    }

    #[test]
    fn short_and_truncated_frames() {
        struct Case {
            description: &'static str,
            ethertype: u16,
            packet: &'static [u8],
        }
        let (p4, n4) = v4(flags::ACK, &OPTION_254_8);
        let (p6, n6) = v6(IPPROTO_TCP, &[], &OPTION_254_8);
        // Every cut of a full packet before the end of the fixed TCP header
        // has no segment; from there on the options are cut to what is left.
        for (ethertype, packet, header) in [(ETH_P_IP, &p4[..n4], 40), (ETH_P_IPV6, &p6[..n6], 60)] {
            for cut in 0..=packet.len() {
                let s = decode(ethertype, &packet[..cut], &formats());
                if cut < header {
                    assert_eq!(s, None, "{ethertype:#x} cut at {cut}");
                } else {
                    let s = s.unwrap_or_else(|| panic!("{ethertype:#x} cut at {cut}"));
                    assert_eq!(s.options, &OPTION_254_8[..cut - header], "{ethertype:#x} cut at {cut}");
                }
            }
        }
        let cases = [
            Case {
                description: "IHL 5 and protocol TCP, 10 bytes",
                ethertype: ETH_P_IP,
                packet: &[0x45, 0, 0, 0, 0, 0, 0, 0, 0, 6],
            },
            Case {
                description: "19 bytes of an IPv4 header",
                ethertype: ETH_P_IP,
                packet: &[0x45, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2],
            },
            Case {
                description: "IHL 15 with a 20-byte header",
                ethertype: ETH_P_IP,
                packet: &[0x4f, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2],
            },
            Case {
                description: "IHL below 5",
                ethertype: ETH_P_IP,
                packet: &[0x44, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2, 0, 0, 0, 0],
            },
            Case { description: "version 6 in an IPv4 frame", ethertype: ETH_P_IP, packet: &[0x65; 60] },
            Case { description: "one byte", ethertype: ETH_P_IPV6, packet: &[0x60] },
            Case { description: "39 bytes of an IPv6 header", ethertype: ETH_P_IPV6, packet: &[0x60; 39] },
            Case { description: "empty", ethertype: ETH_P_IP, packet: &[] },
            Case { description: "ARP", ethertype: 0x0806, packet: &[0x45; 60] },
        ];
        for c in cases {
            assert_eq!(decode(c.ethertype, c.packet, &formats()), None, "{}", c.description);
        }
    }

    #[test]
    fn later_fragments_and_other_protocols_are_not_segments() {
        let (mut p, n) = v4(flags::ACK, &OPTION_254_8);
        p[7] = 1;
        assert_eq!(decode(ETH_P_IP, &p[..n], &formats()), None, "fragment offset 8");
        p[7] = 0;
        p[9] = 17;
        assert_eq!(decode(ETH_P_IP, &p[..n], &formats()), None, "UDP");
        let (p, n) = v6(17, &[], &[]);
        assert_eq!(decode(ETH_P_IPV6, &p[..n], &formats()), None, "UDP over IPv6");
    }

    #[test]
    fn ipv6_extension_headers_are_skipped_and_bounded() {
        // Hop-by-hop (8 bytes) then destination options (16 bytes), then TCP.
        let mut ext = [0u8; 24];
        ext[0] = 60;
        ext[8] = IPPROTO_TCP;
        ext[9] = 1;
        let (p, n) = v6(0, &ext, &OPTION_254_8);
        let s = decode(ETH_P_IPV6, &p[..n], &formats()).expect("decoded");
        assert_eq!(s.src.port(), 40000);
        assert!(matches!(s.verdict, Verdict::Toa { .. }), "{:?}", s.verdict);
        for cut in 40..64 {
            assert_eq!(decode(ETH_P_IPV6, &p[..cut], &formats()), None, "cut in the extension headers at {cut}");
        }
        // An extension header that claims more than the packet holds.
        let (mut p, n) = v6(0, &ext, &[]);
        p[41] = 200;
        assert_eq!(decode(ETH_P_IPV6, &p[..n], &formats()), None);
    }

    #[test]
    fn verdicts() {
        let f = formats();
        for (description, options, syn, expect) in [
            ("no options", &[][..], false, Verdict::None),
            (
                "254/9 is refused",
                &[254, 9, 0x10, 0x92, 203, 0, 113, 7, 0],
                false,
                Verdict::Malformed { refused: Some((254, 9)) },
            ),
            ("a length of 1 breaks the list", &[254, 1], false, Verdict::Malformed { refused: None }),
            ("TFO in a SYN is not TOA", &[254, 8, 0xf9, 0x89, 1, 2, 3, 4], true, Verdict::None),
        ] {
            assert_eq!(verdict(options, &f, syn), expect, "{description}");
        }
        let Verdict::Toa { len, .. } = verdict(&[1, 1, 200, 8, 0, 80, 10, 0, 0, 1], &f, false) else { panic!() };
        assert_eq!(len, Some(8));
    }

    #[test]
    fn the_walk_stops_where_the_list_does() {
        let all = |o: &[u8]| {
            let mut out = [(0u8, 0u8); 8];
            let mut n = 0;
            for kl in walk(o) {
                out[n] = kl;
                n += 1;
            }
            (out, n)
        };
        assert_eq!(all(&[1, 2, 4, 5, 0xb4, 1, 254, 8, 0, 0, 0, 0, 0, 0]).1, 2);
        assert_eq!(all(&[2, 4, 5, 0xb4, 0, 254, 8]).1, 1, "EOL");
        assert_eq!(all(&[2, 4, 5]).1, 0, "past the end");
        assert_eq!(all(&[1, 1, 1]).1, 0, "only NOPs");
    }
}
