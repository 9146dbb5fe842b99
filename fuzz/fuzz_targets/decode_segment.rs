//! Fuzz target for the packet decoder of `toa sniff` (`toa_common::segment`).
//!
//! Input layout:
//!
//! * byte 0: selector. Bits 0-1: the ethertype (0 and 3: IPv4, 1: IPv6, 2:
//!   ARP, which is never a segment). Bit 2: use the custom format table of
//!   byte 1 (kind 28 in both version shapes and 253 in the IPv4 port shape)
//!   instead of the default one.
//! * the rest: the packet, from its IP header on (at most 256 bytes, the
//!   capture's snap length).
//!
//! Properties checked, for the packet and for every prefix of it:
//!
//! (a) `decode` never panics, whatever the lengths, offsets and counts in
//!     the headers say;
//! (b) it gives the same addresses, ports, flags and options area as the
//!     reference decoder below, an independent, straightforward reading of
//!     the IPv4, IPv6 and TCP header layouts, or `None` exactly when the
//!     reference finds no TCP header;
//! (c) the options area lies inside the packet and holds at most 40 bytes;
//! (d) the verdict is the codec's (`parse_slice`) on that area: an accepted
//!     option is reported with the client the codec found and a length the
//!     table accepts, a refused one with a kind the table knows and a length
//!     it refuses;
//! (e) a prefix that decodes has the full packet's addresses, ports and
//!     flags, and its options area is a prefix of the full packet's.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use toa_common::format::{DEFAULT_FORMATS, Format, Formats};
use toa_common::option::{Parsed, parse_slice};
use toa_common::segment::{ETH_P_IP, ETH_P_IPV6, Segment, Verdict, decode};

/// The capture's snap length.
const SNAPLEN: usize = 256;

// ---------------------------------------------------------------------------
// Reference decoder: byte offsets, each read preceded by a length check.
// ---------------------------------------------------------------------------

/// What the reference finds: source, destination, flags, and the options
/// area as offsets into the packet.
#[derive(Debug, PartialEq, Eq)]
struct RefSegment {
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
    options: (usize, usize),
}

/// Where the TCP header starts and the addresses, for an IPv4 packet.
fn ref_ipv4(p: &[u8]) -> Option<(IpAddr, IpAddr, usize)> {
    if p.len() < 20 {
        return None;
    }
    let version = p[0] / 16;
    let header = (p[0] % 16) as usize * 4;
    let protocol = p[9];
    let offset = (p[6] as usize % 32) * 256 + p[7] as usize;
    if version != 4 || header < 20 || protocol != 6 || offset != 0 {
        return None;
    }
    let src = IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19]));
    Some((src, dst, header))
}

/// Where the TCP header starts and the addresses, for an IPv6 packet; the
/// hop-by-hop (0), routing (43) and destination options (60) headers are
/// skipped, any other next header that is not TCP (6) is no segment.
fn ref_ipv6(p: &[u8]) -> Option<(IpAddr, IpAddr, usize)> {
    if p.len() < 40 || p[0] / 16 != 6 {
        return None;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    for i in 0..16 {
        src[i] = p[8 + i];
        dst[i] = p[24 + i];
    }
    let mut next = p[6];
    let mut at = 40;
    while next == 0 || next == 43 || next == 60 {
        if at + 2 > p.len() {
            return None;
        }
        next = p[at];
        at += (p[at + 1] as usize + 1) * 8;
    }
    if next != 6 {
        return None;
    }
    Some((IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)), at))
}

fn ref_decode(ethertype: u16, p: &[u8]) -> Option<RefSegment> {
    let (src, dst, t) = match ethertype {
        ETH_P_IP => ref_ipv4(p)?,
        ETH_P_IPV6 => ref_ipv6(p)?,
        _ => return None,
    };
    if t + 20 > p.len() {
        return None;
    }
    let sport = p[t] as u16 * 256 + p[t + 1] as u16;
    let dport = p[t + 2] as u16 * 256 + p[t + 3] as u16;
    let header = (p[t + 12] / 16) as usize * 4;
    // The options run to the header's end, or to the end of what was captured.
    let mut end = t + header;
    if header < 20 {
        end = t + 20;
    }
    if end > p.len() {
        end = p.len();
    }
    Some(RefSegment {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        flags: p[t + 13],
        options: (t + 20, end),
    })
}

// ---------------------------------------------------------------------------
// The checks.
// ---------------------------------------------------------------------------

/// The offsets of `inner` in `outer`, which must contain it.
fn offsets(outer: &[u8], inner: &[u8]) -> (usize, usize) {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    assert!(
        inner.as_ptr() as usize >= outer.as_ptr() as usize && start + inner.len() <= outer.len(),
        "the options lie outside the packet"
    );
    (start, start + inner.len())
}

fn check(ethertype: u16, packet: &[u8], formats: &Formats) -> Option<(SocketAddr, SocketAddr, u8, Vec<u8>)> {
    let got = decode(ethertype, packet, formats);
    let want = ref_decode(ethertype, packet);
    assert_eq!(got.is_some(), want.is_some(), "decode {got:?}, reference {want:?}");
    let (Some(seg), Some(want)) = (got, want) else { return None };
    let Segment { src, dst, flags, options, verdict } = seg;
    assert_eq!((src, dst, flags), (want.src, want.dst, want.flags));
    assert_eq!(offsets(packet, options), want.options);
    assert!(options.len() <= 40, "{} option bytes", options.len());
    let syn = flags & 0x02 != 0;
    match (verdict, parse_slice(options, formats, syn)) {
        (Verdict::None, Parsed::None) => {}
        (Verdict::Toa { client, len }, Parsed::Found(found)) => {
            assert_eq!(client, found);
            if let Some(len) = len {
                assert!(formats.accepts(client.kind, usize::from(len)).is_some(), "{}/{len}", client.kind);
            }
        }
        (Verdict::Malformed { refused }, Parsed::Malformed) => {
            if let Some((kind, len)) = refused {
                assert!(formats.knows_kind(kind) && formats.accepts(kind, usize::from(len)).is_none(), "{kind}/{len}");
            }
        }
        (v, p) => panic!("verdict {v:?}, codec {p:?}"),
    }
    Some((src, dst, flags, options.to_vec()))
}

fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let ethertype = match selector & 3 {
        1 => ETH_P_IPV6,
        2 => 0x0806,
        _ => ETH_P_IP,
    };
    let (formats, packet) = if selector & 4 != 0 {
        let custom = [Format::new(28, 7), Format::new(28, 19), Format::new(253, 8)];
        let list: Vec<Format> = custom.into_iter().flatten().collect();
        (Formats::from_list(&list), rest)
    } else {
        (Formats::from_list(&DEFAULT_FORMATS), rest)
    };
    let packet = &packet[..packet.len().min(SNAPLEN)];
    let full = check(ethertype, packet, &formats);
    for cut in 0..packet.len() {
        if let Some((src, dst, flags, options)) = check(ethertype, &packet[..cut], &formats) {
            let (fsrc, fdst, fflags, foptions) = full.as_ref().expect("a prefix decodes, so the packet does");
            assert_eq!((src, dst, flags), (*fsrc, *fdst, *fflags), "cut at {cut}");
            assert!(foptions.starts_with(&options), "cut at {cut}");
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
