//! Header parsing and the dispatch of every packet the forwarder sees.

use toa_common::lb::{
    counters::LbCounter,
    flow::{AddrKey, addr_role, family},
};

use crate::{client, counters::count, maps::LB_ADDRS, reply, skb::Skb};

/// Let the next program (or the stack) have the packet.
pub const TC_ACT_UNSPEC: i32 = -1;
/// Drop the packet.
pub const TC_ACT_SHOT: i32 = 2;
/// Length of the Ethernet header the programs expect.
pub const ETH_HLEN: u32 = 14;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];

/// IP protocol numbers.
pub const IPPROTO_ICMP: u8 = 1;
/// TCP.
pub const IPPROTO_TCP: u8 = 6;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
const IPV6_FRAGMENT: u8 = 44;

/// An IP header, parsed.
pub struct Ip {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// [`family`] value.
    pub family: u8,
    /// Source address, network order (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// The transport protocol (IPv6: the first next-header).
    pub proto: u8,
    /// Offset of the transport header.
    pub l4: u32,
    /// Offset just past the IP packet.
    pub end: u32,
    /// A fragment.
    pub frag: bool,
    /// IPv4 options or IPv6 extension headers.
    pub ip_opts: bool,
    /// A length that does not match the packet.
    pub bad_len: bool,
}

/// A TCP header, parsed.
pub struct Tcp {
    /// Source port, network order.
    pub sport: [u8; 2],
    /// Destination port, network order.
    pub dport: [u8; 2],
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Header length with options.
    pub hdr_len: u32,
    /// The flag byte.
    pub flags: u8,
    /// Payload length.
    pub payload: u32,
}

#[inline(always)]
fn addr4(b: &[u8; 20], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = b[at];
    a[1] = b[at + 1];
    a[2] = b[at + 2];
    a[3] = b[at + 3];
    a
}

#[inline(always)]
fn addr6(b: &[u8; 40], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        a[i] = b[at + i];
        i += 1;
    }
    a
}

/// Whether an IPv6 next-header value is an extension header.
#[inline(always)]
fn is_ext_header(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Parses the IP header at [`ETH_HLEN`]; `None` for anything but IPv4/IPv6.
#[inline(always)]
pub fn parse_ip(skb: &Skb) -> Option<Ip> {
    let ethertype: [u8; 2] = skb.load(12)?;
    let len = skb.len();
    if ethertype == ETH_P_IP {
        let b: [u8; 20] = skb.load(ETH_HLEN)?;
        if b[0] >> 4 != 4 {
            return None;
        }
        let ihl = (b[0] & 0x0f) as u32 * 4;
        let tot = u16::from_be_bytes([b[2], b[3]]) as u32;
        let frag = u16::from_be_bytes([b[6], b[7]]) & 0x3fff != 0;
        Some(Ip {
            v6: false,
            family: family::V4,
            src: addr4(&b, 12),
            dst: addr4(&b, 16),
            proto: b[9],
            l4: ETH_HLEN + ihl,
            end: ETH_HLEN + tot,
            frag,
            ip_opts: ihl != 20,
            bad_len: ihl < 20 || tot < ihl || ETH_HLEN + tot > len,
        })
    } else if ethertype == ETH_P_IPV6 {
        let b: [u8; 40] = skb.load(ETH_HLEN)?;
        if b[0] >> 4 != 6 {
            return None;
        }
        let plen = u16::from_be_bytes([b[4], b[5]]) as u32;
        let nh = b[6];
        Some(Ip {
            v6: true,
            family: family::V6,
            src: addr6(&b, 8),
            dst: addr6(&b, 24),
            proto: nh,
            l4: ETH_HLEN + 40,
            end: ETH_HLEN + 40 + plen,
            frag: nh == IPV6_FRAGMENT,
            ip_opts: is_ext_header(nh),
            bad_len: plen == 0 || ETH_HLEN + 40 + plen > len,
        })
    } else {
        None
    }
}

/// Parses the TCP header; `None` when its length does not fit the packet.
#[inline(always)]
pub fn parse_tcp(skb: &Skb, ip: &Ip) -> Option<Tcp> {
    let b: [u8; 20] = skb.load(ip.l4)?;
    let hdr_len = (b[12] >> 4) as u32 * 4;
    if hdr_len < 20 || ip.l4 + hdr_len > ip.end {
        return None;
    }
    Some(Tcp {
        sport: [b[0], b[1]],
        dport: [b[2], b[3]],
        seq: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ack: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        hdr_len,
        flags: b[13],
        payload: ip.end - ip.l4 - hdr_len,
    })
}

/// Drops the packet, counting why.
#[inline(always)]
pub fn drop(why: LbCounter) -> i32 {
    count(why);
    TC_ACT_SHOT
}

/// Every packet arriving on a forwarding interface (or, with `segmented`,
/// on the segmenter's receiving end, where nothing is passed on).
#[inline(always)]
pub fn on_ingress(skb: &Skb, segmented: bool) -> i32 {
    let other = if segmented { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
    let Some(ip) = parse_ip(skb) else { return other };
    let key = AddrKey { addr: ip.dst, family: ip.family, _pad: [0; 3] };
    let Some(role) = LB_ADDRS.get_ptr(&key) else { return other };
    // SAFETY: a map value pointer, valid for this program run.
    let role = unsafe { *role };
    if role & addr_role::VIRTUAL != 0 {
        let action = client::on_virtual(skb, &ip, segmented);
        return if segmented && action == TC_ACT_UNSPEC { TC_ACT_SHOT } else { action };
    }
    if role & addr_role::LOCAL != 0 && !segmented {
        return reply::on_local(skb, &ip);
    }
    other
}
