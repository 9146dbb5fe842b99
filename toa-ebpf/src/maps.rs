//! Every map of the object, with who writes and who reads it.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, SkStorage},
    macros::btf_map,
};
use toa_common::{
    PeerRecord,
    config::{PortSet, ReceiverConfig, SLOTS},
    counters::COUNTER_COUNT,
    inject::{InjectSpec, InjectState},
    opstats::{self, OpStat},
    trust::{TRUST_ENTRIES, TrustKey},
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

/// The settings slot in force (0 or 1) at index 0: which slot of
/// `TOA_CONFIG`, `TOA_PORTS` and `TOA_TRUSTED` the programs use. Written by
/// the agent only once that slot is complete (start and reload); read first
/// by `toa_capture` on every callback it handles.
#[btf_map]
pub static TOA_ACTIVE: Array<u32, 1> = Array::new();

/// Receiver settings (formats, flags), one per slot. Written by the agent
/// into the slot not in force, before it switches `TOA_ACTIVE`; read by
/// `toa_capture` at the slot in force.
#[btf_map]
pub static TOA_CONFIG: Array<ReceiverConfig, { SLOTS as usize }> = Array::new();

/// Trusted forwarder prefixes of both slots (the key starts with the slot;
/// IPv4 mapped into ::ffff:0:0/96), value unused. Written by the agent into
/// the slot not in force (the slot's old prefixes removed first); read by
/// `toa_capture` when an option is found, unless the TRUST_ALL flag is set.
#[btf_map]
pub static TOA_TRUSTED: LpmTrie<TrustKey, u8, { TRUST_ENTRIES as usize }> = LpmTrie::new();

/// Local ports acted on, one set per slot, when the PORT_FILTER flag is
/// set. Written by the agent into the slot not in force; read by `toa_capture`.
#[btf_map]
pub static TOA_PORTS: Array<PortSet, { SLOTS as usize }> = Array::new();

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
