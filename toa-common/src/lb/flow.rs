//! The forwarder's map types: services, backends, flows both ways, settings.
//!
//! Addresses are 16 bytes in network order, IPv4 in the first 4 (the rest
//! zero), so one key type serves both families; ports are 2 bytes in network
//! order as on the wire; every other integer is host order (the maps never
//! leave the host).

use crate::lb::{conntrack::Timeouts, ports::PortRange};

/// Address family of a key or entry: the IP version (4 or 6).
pub mod family {
    /// IPv4.
    pub const V4: u8 = 4;
    /// IPv6.
    pub const V6: u8 = 6;
}

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;

/// Most backends over all services (size of `LB_BACKENDS` and of the
/// per-backend counters).
pub const MAX_BACKENDS: u32 = 1024;
/// Most services (size of `LB_SERVICES`).
pub const MAX_SERVICES: u32 = 256;
/// Most flows tracked (each in `LB_FLOWS` and `LB_REVERSE`; LRU beyond).
pub const MAX_FLOWS: u32 = 262_144;
/// Most distinct addresses the data path acts on (`LB_ADDRS`).
pub const MAX_ADDRS: u32 = 512;

/// A virtual service: key of `LB_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Virtual address, network order.
    pub addr: [u8; 16],
    /// Virtual port, network order.
    pub port: [u8; 2],
    /// [`family`].
    pub family: u8,
    /// IP protocol ([`PROTO_TCP`]).
    pub proto: u8,
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// What a service does: value of `LB_SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Index of the service: its counters, and its Maglev table, entries
    /// `id * table_size ..` of `LB_MAGLEV`.
    pub id: u32,
    /// Index of its first backend in `LB_BACKENDS`.
    pub first_backend: u32,
    /// Number of its backends in rotation (0: new flows are refused).
    pub backend_count: u32,
    /// Local ports for its flows.
    pub ports: PortRange,
    /// Option kind written for its clients.
    pub option_kind: u8,
    /// Option length: 8 for IPv4 clients, 20 for IPv6.
    pub option_len: u8,
    /// Packets that carry it ([`crate::lb::carry::packets`]).
    pub packets: u8,
    /// Explicit padding.
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<Service>() == 20);

/// One backend: value of `LB_BACKENDS`, indexed by the entry of the
/// service's Maglev table the flow's hash selects
/// ([`crate::lb::maglev`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Backend address, network order.
    pub addr: [u8; 16],
    /// The forwarder's local (SNAT) address towards it, network order.
    pub snat: [u8; 16],
    /// Backend port, network order.
    pub port: [u8; 2],
    /// [`family`]; 0 marks an empty slot.
    pub family: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Index of its counters in `LB_BACKEND_STATS`.
    pub slot: u32,
}

const _: () = assert!(core::mem::size_of::<Backend>() == 40);

/// A flow as one direction's packets name it: key of `LB_FLOWS` (client →
/// virtual service) and of `LB_REVERSE` (backend → local address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address, network order.
    pub src: [u8; 16],
    /// Destination address, network order.
    pub dst: [u8; 16],
    /// Source port, network order.
    pub sport: [u8; 2],
    /// Destination port, network order.
    pub dport: [u8; 2],
    /// [`family`].
    pub family: u8,
    /// Explicit padding (always zero: part of the key).
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Bits of [`Flow::flags`].
pub mod flow_flags {
    /// `backend_isn1` is valid (the SYN-ACK was seen).
    pub const ISN_KNOWN: u8 = 1;
    /// The backend acknowledged client data: no more options.
    pub const DATA_ACKED: u8 = 2;
    /// At least one packet of the flow carried the option.
    pub const OPTION_SENT: u8 = 4;
    /// The client sent the first FIN: after the second, the backend (which
    /// closed last) keeps no TIME_WAIT, so the local port is free at once.
    pub const CLIENT_FIN_FIRST: u8 = 8;
}

/// A flow's translation and state: value of `LB_FLOWS`.
///
/// Written by the data path: created on the client's SYN; `client_isn1` and
/// the translation never change afterwards; the reply direction sets
/// `backend_isn1` and the `ISN_KNOWN`/`DATA_ACKED` flags, both directions
/// `state` and `last_seen`. Removed by the LRU when the map is full, or by
/// user space once idle past its state's timeout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Backend address, network order.
    pub backend: [u8; 16],
    /// Local (SNAT) address, network order.
    pub snat: [u8; 16],
    /// Backend port, network order.
    pub bport: [u8; 2],
    /// Local port, network order.
    pub lport: [u8; 2],
    /// The backend's counters slot.
    pub backend_slot: u32,
    /// The service's index.
    pub service: u32,
    /// The client's ISN + 1.
    pub client_isn1: u32,
    /// The backend's ISN + 1 (valid with `ISN_KNOWN`).
    pub backend_isn1: u32,
    /// Last packet, in seconds of the kernel's monotonic clock.
    pub last_seen: u32,
    /// [`crate::lb::conntrack::TcpState`].
    pub state: u8,
    /// [`flow_flags`].
    pub flags: u8,
    /// Option kind for this client.
    pub option_kind: u8,
    /// Option length (8 or 20).
    pub option_len: u8,
    /// Packets that carry it ([`crate::lb::carry::packets`]).
    pub packets: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<Flow>() == 64);

/// Value of `LB_REVERSE`: the `LB_FLOWS` key of the flow a backend packet
/// belongs to (client address and port, virtual address and port).
///
/// When a flow that the backend closed first is replaced by a new one on
/// the same client tuple, its reverse entry stays behind as a *tombstone*
/// (`until` set): the local port stays taken until the backend's TIME_WAIT
/// is over, and backend packets on it are no longer translated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reverse {
    /// The flow's key in `LB_FLOWS`.
    pub flow: FlowKey,
    /// 0 for a live entry; for a tombstone, the second (kernel monotonic
    /// clock) after which the local port is free.
    pub until: u32,
    /// Explicit padding.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Reverse>() == 48);

impl Reverse {
    /// A live entry for `flow`.
    pub const fn live(flow: FlowKey) -> Reverse {
        Reverse { flow, until: 0, _pad: 0 }
    }
}

/// Bits of `LB_ADDRS` values: what the data path does with packets to an address.
pub mod addr_role {
    /// A virtual address: TCP to a service port is balanced, other IP
    /// protocols than TCP and ICMP are dropped, fragments are dropped.
    pub const VIRTUAL: u8 = 1;
    /// A local (SNAT) address: packets of known flows are translated back.
    pub const LOCAL: u8 = 2;
}

/// Key of `LB_ADDRS`: an address the data path acts on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// The address, network order.
    pub addr: [u8; 16],
    /// [`family`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

/// Settings of the data path: `LB_CONFIG` index 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbConfig {
    /// Interface index of the segmenter's sending end (0: none; GSO packets
    /// that need the option then go without it, counted).
    pub segmenter_ifindex: u32,
    /// Interface index of the segmenter's receiving end.
    pub segmenter_peer_ifindex: u32,
    /// Idle timeouts by state.
    pub timeouts: Timeouts,
    /// Entries of each service's Maglev table (a prime; 0: no tables, new
    /// flows are refused).
    pub table_size: u32,
}

const _: () = assert!(core::mem::size_of::<LbConfig>() == 32);

/// Per-backend counters: value of `LB_BACKEND_STATS` (per CPU), by slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Client → backend packets.
    pub packets_in: u64,
    /// Client → backend bytes (IP length, before the option).
    pub bytes_in: u64,
    /// Backend → client packets.
    pub packets_out: u64,
    /// Backend → client bytes.
    pub bytes_out: u64,
    /// Flows created.
    pub flows: u64,
    /// Packets that got the option.
    pub options: u64,
    /// Packets that should have got it but had no room.
    pub no_room: u64,
}

const _: () = assert!(core::mem::size_of::<BackendStats>() == 56);

impl FlowKey {
    /// An all-zero key.
    pub const ZERO: FlowKey =
        FlowKey { src: [0; 16], dst: [0; 16], sport: [0; 2], dport: [0; 2], family: 0, _pad: [0; 3] };
}

/// The flow hash the backend choice and the port allocation start from: a
/// MurmurHash3-style mix of the key's ten 32-bit words, the same on every
/// forwarder for the same `seed`.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u32) -> u32 {
    #[inline(always)]
    fn word(b: &[u8; 16], i: usize) -> u32 {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }
    #[inline(always)]
    fn mix(h: u32, k: u32) -> u32 {
        let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
        (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
    }
    let mut h = seed;
    let mut i = 0;
    while i < 16 {
        h = mix(h, word(&key.src, i));
        h = mix(h, word(&key.dst, i));
        i += 4;
    }
    h = mix(h, u32::from_le_bytes([key.sport[0], key.sport[1], key.dport[0], key.dport[1]]));
    h = mix(h, key.family as u32);
    h ^= 40;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (all): repr(C), explicit padding, plain integers and byte arrays.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Service {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Reverse {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AddrKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LbConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.src[..4].copy_from_slice(&[10, 71, 1, 2]);
        k.dst[..4].copy_from_slice(&[10, 71, 1, 1]);
        k.sport = port.to_be_bytes();
        k.dport = 80u16.to_be_bytes();
        k.family = family::V4;
        k
    }

    #[test]
    fn the_hash_spreads_flows_evenly_over_table_slots() {
        use crate::lb::maglev::slot;
        let mut per = [0u32; 4];
        for p in 0..8000u16 {
            per[(slot(flow_hash(&key(p + 30000), 0), 4099) % 4) as usize] += 1;
        }
        for n in per {
            assert!((1800..=2200).contains(&n), "{per:?}");
        }
        assert_ne!(flow_hash(&key(1), 0), flow_hash(&key(1), 1), "the seed matters");
        assert_eq!(flow_hash(&key(1), 7), flow_hash(&key(1), 7), "deterministic");
    }
}
