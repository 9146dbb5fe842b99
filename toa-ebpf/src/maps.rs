//! Every map of the object, with who writes and who reads it.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, SkStorage},
    macros::btf_map,
};
use toa_common::{
    PeerRecord,
    config::{PortSet, ReceiverConfig},
    counters::COUNTER_COUNT,
    inject::{InjectSpec, InjectState},
    opstats::{self, OpStat},
    trust::TrustKey,
};

/// Real client per socket. Written by `toa_capture` when an accepted option
/// arrives; read by the getpeername and getsockopt programs and `toa table`;
/// emptied (family 0) by `toa_capture` when the connection reaches CLOSE;
/// freed by the kernel with the socket.
#[btf_map]
pub static TOA_PEERS: SkStorage<PeerRecord> = SkStorage::new();

/// Counters, index = `toa_common::counters::Counter`. Incremented by every
/// program; read (summed over CPUs) by `toa stats`. Lives as long as its pin.
#[btf_map]
pub static TOA_COUNTERS: PerCpuArray<u64, { COUNTER_COUNT as usize }> = PerCpuArray::new();

/// Receiver settings at index 0 (formats, flags). Written by the agent
/// before it attaches anything (and on reload); read by `toa_capture` on
/// every handshake.
#[btf_map]
pub static TOA_CONFIG: Array<ReceiverConfig, 1> = Array::new();

/// Trusted forwarder prefixes (IPv4 mapped into ::ffff:0:0/96), value
/// unused. Written by the agent; read by `toa_capture` when an option is
/// found, unless the TRUST_ALL flag is set.
#[btf_map]
pub static TOA_TRUSTED: LpmTrie<TrustKey, u8, 4096> = LpmTrie::new();

/// Local ports acted on, at index 0, when the PORT_FILTER flag is set.
/// Written by the agent; read by `toa_capture`.
#[btf_map]
pub static TOA_PORTS: Array<PortSet, 1> = Array::new();

/// Writer targets by socket cookie; key 0 applies to every socket of the
/// cgroup. Written by userspace (`toa inject`, the proxy) before `connect()`;
/// read by `toa_inject` at TCP_CONNECT_CB; removed by userspace after connect.
#[btf_map]
pub static TOA_INJECT_TARGETS: HashMap<u64, InjectSpec, 65536> = HashMap::new();

/// Writer state per socket, created by `toa_inject` at TCP_CONNECT_CB for
/// sockets with a target and freed with the socket.
#[btf_map]
pub static TOA_INJECT_STATE: SkStorage<InjectState> = SkStorage::new();

/// Debug-only run statistics, index = `toa_common::opstats::slot`; written
/// only when the loader turned them on, read by `bench/agent`. Private to
/// one load of the object.
#[btf_map]
pub static TOA_OP_STATS: PerCpuArray<OpStat, { opstats::SLOTS as usize }> = PerCpuArray::new();

/// The raw map pointer helpers such as `bpf_sk_storage_get` take.
#[inline(always)]
pub fn raw<T>(map: &T) -> *mut core::ffi::c_void {
    core::ptr::from_ref(map).cast_mut().cast()
}
