//! Every map of the forwarder's object, with who writes and who reads it.
//! Declared with BTF so that they can be pinned by name.

use crate::work::Work;
use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    macros::btf_map,
};
use toa_common::lb::{
    counters::LB_COUNTER_COUNT,
    flow::{
        AddrKey, Backend, BackendStats, Flow, FlowKey, LbConfig, MAX_ADDRS, MAX_BACKENDS, MAX_FLOWS, MAX_SERVICES,
        Reverse, Service, ServiceKey,
    },
    insert::InsertBufs,
};

/// Services by virtual address and port. Written by `toa lb` at start;
/// read by `toa_lb_ingress` for every packet to a virtual address.
#[btf_map]
pub static LB_SERVICES: HashMap<ServiceKey, Service, { MAX_SERVICES as usize }> = HashMap::new();

/// Backends by index (what the services' Maglev tables name). Written by
/// `toa lb` at start and reload; read by the data path when a flow is created.
#[btf_map]
pub static LB_BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// The services' Maglev tables: service `id`'s entries are
/// `id * table_size .. (id + 1) * table_size`, each a backend index (or
/// `NO_BACKEND`). Sized by `toa lb` at load (services x table size: the 1
/// here is a placeholder); written at start, on health changes and reloads;
/// read when a flow is created.
#[btf_map]
pub static LB_MAGLEV: Array<u32, 1> = Array::new();

/// Flows by the client's tuple (client, virtual address, ports). Created by
/// the data path on a client SYN; updated by both directions; removed by the
/// LRU when full and by `toa lb`'s reaper once idle past their timeout.
#[btf_map]
pub static LB_FLOWS: LruHashMap<FlowKey, Flow, { MAX_FLOWS as usize }> = LruHashMap::new();

/// Flows by the backend's tuple (backend, local address, ports) → the client
/// tuple. Created with the flow (insert-if-absent, which makes the local port
/// unique); read by the reply direction; removed with the flow.
#[btf_map]
pub static LB_REVERSE: LruHashMap<FlowKey, Reverse, { MAX_FLOWS as usize }> = LruHashMap::new();

/// Addresses the data path acts on, with their role bits
/// (`toa_common::lb::flow::addr_role`). Written by `toa lb` at start; read for
/// every packet (the one lookup unrelated traffic costs).
#[btf_map]
pub static LB_ADDRS: HashMap<AddrKey, u8, { MAX_ADDRS as usize }> = HashMap::new();

/// Settings at index 0. Written by `toa lb` before it attaches anything.
#[btf_map]
pub static LB_CONFIG: Array<LbConfig, 1> = Array::new();

/// Counters, index = `LbCounter`. Incremented by the data path; read by `toa lb`.
#[btf_map]
pub static LB_COUNTERS: PerCpuArray<u64, { LB_COUNTER_COUNT as usize }> = PerCpuArray::new();

/// Counters per backend slot. Incremented by the data path; read by `toa lb`.
#[btf_map]
pub static LB_BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Largest payload the insertion moves (a 9000-byte jumbo frame fits).
pub const SCRATCH_PAYLOAD: usize = 9216;

/// Per-CPU working memory: the planner's buffers and the payload being moved.
#[repr(C)]
pub struct Scratch {
    /// Option areas for the planner and the MSS rewrite.
    pub bufs: InsertBufs,
    /// A segment's payload while it moves behind a grown header.
    pub payload: [u8; SCRATCH_PAYLOAD],
}

/// Working memory of the running program (per CPU, one slot; no program
/// keeps anything there between packets).
#[btf_map]
pub static LB_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// The running packet's parsed headers and working values (per CPU, one
/// slot): keeps the programs' stack frames small, and hands what the main
/// program found to the option program it tail-calls.
#[btf_map]
pub static LB_WORK: PerCpuArray<Work, 1> = PerCpuArray::new();

/// Index of `toa_lb_option` in [`LB_JUMP`].
pub const JUMP_OPTION: u32 = 0;

/// Tail-call targets, filled by `toa lb` before it attaches: the option
/// insertion runs as its own program, verified on its own.
#[btf_map]
pub static LB_JUMP: ProgramArray<1> = ProgramArray::new();
