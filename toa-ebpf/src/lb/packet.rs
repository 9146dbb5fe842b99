//! Header parsing and the dispatch of every packet the forwarder sees.

use toa_common::lb::{
    counters::LbCounter,
    flow::{AddrKey, addr_role, family},
};

use crate::{
    client,
    counters::count,
    maps::{LB_ADDRS, LB_WORK},
    reply,
    skb::Skb,
};

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

/// Whether an IPv6 next-header value is an extension header.
#[inline(always)]
fn is_ext_header(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Parses the IP header at [`ETH_HLEN`] into `ip`; false for anything but
/// IPv4/IPv6.
#[inline(never)]
pub fn parse_ip(skb: &Skb, ip: &mut Ip) -> bool {
    let Some(ethertype) = skb.load::<[u8; 2]>(12) else { return false };
    let len = skb.len();
    if ethertype == ETH_P_IP {
        let Some(b) = skb.load::<[u8; 20]>(ETH_HLEN) else { return false };
        if b[0] >> 4 != 4 {
            return false;
        }
        let ihl = (b[0] & 0x0f) as u32 * 4;
        let tot = u16::from_be_bytes([b[2], b[3]]) as u32;
        ip.v6 = false;
        ip.family = family::V4;
        ip.src = addr4(&b, 12);
        ip.dst = addr4(&b, 16);
        ip.proto = b[9];
        ip.l4 = ETH_HLEN + ihl;
        ip.end = ETH_HLEN + tot;
        ip.frag = u16::from_be_bytes([b[6], b[7]]) & 0x3fff != 0;
        ip.ip_opts = ihl != 20;
        ip.bad_len = ihl < 20 || tot < ihl || ETH_HLEN + tot > len;
        true
    } else if ethertype == ETH_P_IPV6 {
        let Some(b) = skb.load::<[u8; 8]>(ETH_HLEN) else { return false };
        if b[0] >> 4 != 6 {
            return false;
        }
        let Some(src) = skb.load::<[u8; 16]>(ETH_HLEN + 8) else { return false };
        let Some(dst) = skb.load::<[u8; 16]>(ETH_HLEN + 24) else { return false };
        let plen = u16::from_be_bytes([b[4], b[5]]) as u32;
        let nh = b[6];
        ip.v6 = true;
        ip.family = family::V6;
        ip.src = src;
        ip.dst = dst;
        ip.proto = nh;
        ip.l4 = ETH_HLEN + 40;
        ip.end = ETH_HLEN + 40 + plen;
        ip.frag = nh == IPV6_FRAGMENT;
        ip.ip_opts = is_ext_header(nh);
        ip.bad_len = plen == 0 || ETH_HLEN + 40 + plen > len;
        true
    } else {
        false
    }
}

/// Parses the TCP header into `tcp`; false when its length does not fit the packet.
#[inline(never)]
pub fn parse_tcp(skb: &Skb, ip: &Ip, tcp: &mut Tcp) -> bool {
    let Some(b) = skb.load::<[u8; 20]>(ip.l4) else { return false };
    let hdr_len = (b[12] >> 4) as u32 * 4;
    if hdr_len < 20 || ip.l4 + hdr_len > ip.end {
        return false;
    }
    tcp.sport = [b[0], b[1]];
    tcp.dport = [b[2], b[3]];
    tcp.seq = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    tcp.ack = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
    tcp.hdr_len = hdr_len;
    tcp.flags = b[13];
    tcp.payload = ip.end - ip.l4 - hdr_len;
    true
}

/// Drops the packet, counting why.
#[inline(always)]
pub fn drop(why: LbCounter) -> i32 {
    count(why);
    TC_ACT_SHOT
}

/// Every packet arriving on a forwarding interface, or on the segmenter's
/// receiving end (where nothing is passed on).
#[inline(always)]
pub fn on_ingress(skb: &Skb) -> i32 {
    let seg = client::config().segmenter_peer_ifindex;
    let segmented = seg != 0 && skb.ingress_ifindex() == seg;
    let other = if segmented { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
    let Some(w) = LB_WORK.get_ptr_mut(0) else { return other };
    // SAFETY: this CPU's work slot, used by nothing else while we run.
    let w = unsafe { &mut *w };
    if !parse_ip(skb, &mut w.ip) {
        return other;
    }
    let key = AddrKey { addr: w.ip.dst, family: w.ip.family, _pad: [0; 3] };
    let Some(role) = LB_ADDRS.get_ptr(&key) else { return other };
    // SAFETY: a map value pointer, valid for this program run.
    let role = unsafe { *role };
    if role & addr_role::VIRTUAL != 0 {
        let action = client::on_virtual(skb, w, segmented);
        return if segmented && action == TC_ACT_UNSPEC { TC_ACT_SHOT } else { action };
    }
    if role & addr_role::LOCAL != 0 && !segmented {
        return reply::on_local(skb, w);
    }
    other
}
