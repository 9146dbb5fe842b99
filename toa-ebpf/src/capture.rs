//! Receiver: capture the real client from the SYN (optional), the handshake's
//! final ACK, or the first data packets, into per-socket storage.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_TCP_CLOSE,
    },
    helpers::generated::{bpf_getsockopt, bpf_ktime_get_boot_ns, bpf_setsockopt},
    maps::lpm_trie::Key,
};
use toa_common::{
    PeerRecord,
    capture::{self, Handshake, Later, Outcome, Packet, Stored, Syn, packet_needs_scan},
    config::{CAPTURE_DATA, CAPTURE_SYN, PORT_FILTER, ReceiverConfig, TRUST_ALL},
    counters::Tally,
    option::{ClientAddr, MAX_OPTIONS_LEN, OPTION_BUF_LEN, Scan, only_timestamps, scan_options},
    peer::source,
    segment::TCP_HEADER_LEN,
    trust::{KEY_BITS, peer_key},
};

use crate::{
    counters::count,
    maps::{TOA_ACTIVE, TOA_CONFIG, TOA_PEERS, TOA_PORTS, TOA_TRUSTED, raw},
    sock_ops::Ops,
};

/// Most bytes of a TCP header (with options).
const TCP_MAX_HEADER_LEN: usize = 60;
/// `SOL_TCP`.
const SOL_TCP: i32 = 6;
/// `TCP_SAVE_SYN`: keep the SYN of new connections on the listener.
const TCP_SAVE_SYN: i32 = 27;
/// `TCP_BPF_SYN`: bpf_getsockopt of the saved SYN's TCP header.
const TCP_BPF_SYN: i32 = 1005;
/// Nanoseconds per second.
const NS_PER_SEC: u64 = 1_000_000_000;
/// Offset of the byte whose upper four bits are the TCP data offset.
const TCP_DOFF_BYTE: usize = 12;
/// Bytes per unit of the data offset (32-bit words).
const TCP_DOFF_UNIT: usize = 4;

/// The codec behind a global (non-static) function: the verifier checks it
/// once on its own instead of once per call site and caller state, which
/// keeps the program far below the instruction budget (docs/design.md
/// §5). Plain types only at this boundary: no data-carrying enum in its BTF.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn toa_scan_options(
    buf: *const [u8; OPTION_BUF_LEN],
    len: u32,
    formats: *const toa_common::Formats,
    in_syn: u32,
    out: *mut ClientAddr,
) -> u32 {
    if buf.is_null() || formats.is_null() || out.is_null() {
        return Scan::None as u32;
    }
    // SAFETY: non-null pointers to memory of the declared types (the verifier checks the callers).
    unsafe { scan_options(&*buf, len as usize, &*formats, in_syn != 0, &mut *out) as u32 }
}

/// Calls the global scan function; the client, if found, lands in `out`.
#[inline(always)]
fn scan(buf: &[u8; OPTION_BUF_LEN], len: usize, cfg: &ReceiverConfig, in_syn: bool, out: &mut ClientAddr) -> Scan {
    let found = toa_scan_options(buf, len as u32, &cfg.formats, in_syn as u32, out);
    if found == Scan::Found as u32 {
        Scan::Found
    } else if found == Scan::Malformed as u32 {
        Scan::Malformed
    } else {
        Scan::None
    }
}

/// Dispatches the callbacks the receiver handles; `op` is `ops.op()`.
#[inline(always)]
pub fn on_sock_op(ops: &Ops, op: u32) {
    match op {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(ops),
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => on_packet(ops),
        BPF_SOCK_OPS_STATE_CB => on_state_change(ops),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(ops),
        _ => {}
    }
}

/// The settings in force: the slot `TOA_ACTIVE` names, whose ports and
/// trusted prefixes are read at `cfg.slot`.
#[inline(always)]
fn config() -> Option<&'static ReceiverConfig> {
    TOA_CONFIG.get(*TOA_ACTIVE.get(0)?)
}

/// Whether the connection's local port is one we act on.
#[inline(always)]
fn port_in_scope(ops: &Ops, cfg: &ReceiverConfig) -> bool {
    if !cfg.has(PORT_FILTER) {
        return true;
    }
    TOA_PORTS.get(cfg.slot).is_some_and(|ports| ports.contains(ops.local_port()))
}

/// Whether the transport peer is a trusted forwarder.
#[inline(always)]
fn peer_trusted(ops: &Ops, cfg: &ReceiverConfig) -> bool {
    if cfg.has(TRUST_ALL) {
        return true;
    }
    // Read every field before branching: the verifier rejects context reads
    // through a pointer the compiler computed ahead of a branch.
    let family = ops.family();
    let v4 = ops.remote_ip4();
    let v6 = [ops.remote_ip6_0(), ops.remote_ip6_1(), ops.remote_ip6_2(), ops.remote_ip6_3()];
    TOA_TRUSTED.get(&Key::new(KEY_BITS, peer_key(cfg.slot, family, v4, v6))).is_some()
}

fn on_listen(ops: &Ops) {
    let Some(cfg) = config() else { return };
    if cfg.has(CAPTURE_SYN) && port_in_scope(ops, cfg) {
        let mut on: i32 = 1;
        // SAFETY: helper call on our context with a pointer to an i32 and its size.
        unsafe {
            bpf_setsockopt(ops.raw().cast(), SOL_TCP, TCP_SAVE_SYN, (&raw mut on).cast(), size_of::<i32>() as i32)
        };
    }
}

fn on_passive_established(ops: &Ops) {
    let Some(cfg) = config() else { return };
    if !port_in_scope(ops, cfg) {
        return;
    }
    let mut syn_client = ClientAddr::EMPTY;
    let syn = if cfg.has(CAPTURE_SYN) { saved_syn(ops, cfg, &mut syn_client) } else { Syn::Off };
    let mut buf = [0u8; OPTION_BUF_LEN];
    let len = copy_options(ops, &mut buf);
    let mut ack_client = ClientAddr::EMPTY;
    let ack = if only_timestamps(&buf, len, &cfg.formats) {
        Scan::None
    } else {
        scan(&buf, len, cfg, false, &mut ack_client)
    };
    let mut facts = Handshake {
        syn,
        syn_client: &syn_client,
        ack,
        ack_client: &ack_client,
        capture_data: cfg.has(CAPTURE_DATA),
        trusted: false,
    };
    if facts.needs_trust() {
        facts.trusted = peer_trusted(ops, cfg);
    }
    let outcome = capture::handshake(&facts);
    apply(ops, &outcome, if outcome.store == source::SYN { &syn_client } else { &ack_client });
}

/// A packet after the handshake on a connection that had no option yet.
///
/// With PARSE_UNKNOWN_HDR_OPT_CB_FLAG the kernel calls us only for segments
/// that carry an option it does not know (see [`packet_needs_scan`]).
fn on_packet(ops: &Ops) {
    // Read before branching (see `peer_trusted`).
    let bytes_received = ops.bytes_received();
    let Some(cfg) = config() else { return };
    let mut facts = Packet { bytes_received, option: Scan::None, has_payload: false, trusted: false };
    let mut client = ClientAddr::EMPTY;
    if packet_needs_scan(bytes_received) {
        let mut buf = [0u8; OPTION_BUF_LEN];
        let (len, header_len) = copy_options_and_header_len(ops, &mut buf);
        facts.has_payload = ops.skb_len() as usize > header_len;
        facts.option = scan(&buf, len, cfg, false, &mut client);
        if facts.needs_trust() {
            facts.trusted = peer_trusted(ops, cfg);
        }
    }
    apply(ops, &capture::packet(&facts), &client);
}

/// Carries out a decision; `client` is the one of the packet named by `outcome.store`.
#[inline(always)]
fn apply(ops: &Ops, outcome: &Outcome, client: &ClientAddr) {
    count_all(&outcome.counters);
    if outcome.store != source::NONE {
        store(ops, client, outcome.store);
    }
    match outcome.later {
        Later::Unchanged => {}
        Later::Watch => {
            ops.set_cb_flags(ops.cb_flags() | BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
        }
        Later::Stop => {
            ops.set_cb_flags(ops.cb_flags() & !BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
        }
    }
}

/// Adds one to every counter of `tally`.
#[inline(always)]
fn count_all<const N: usize>(tally: &Tally<N>) {
    for counter in tally.iter().flatten() {
        count(*counter);
    }
}

/// What the saved SYN's options hold; the client, if found, lands in `out`.
#[inline(always)]
fn saved_syn(ops: &Ops, cfg: &ReceiverConfig, out: &mut ClientAddr) -> Syn {
    let mut header = [0u8; TCP_MAX_HEADER_LEN];
    // SAFETY: helper call on our context; `header` is TCP_MAX_HEADER_LEN bytes.
    let n = unsafe {
        bpf_getsockopt(ops.raw().cast(), SOL_TCP, TCP_BPF_SYN, header.as_mut_ptr().cast(), TCP_MAX_HEADER_LEN as i32)
    };
    if n < TCP_HEADER_LEN as i64 {
        return Syn::Unavailable;
    }
    let header_len = ((header[TCP_DOFF_BYTE] >> 4) as usize) * TCP_DOFF_UNIT;
    let end = if header_len < (n as usize) { header_len } else { n as usize };
    let mut buf = [0u8; OPTION_BUF_LEN];
    let mut len = 0;
    for i in 0..MAX_OPTIONS_LEN {
        if TCP_HEADER_LEN + i >= end {
            break;
        }
        buf[i] = header[TCP_HEADER_LEN + i];
        len = i + 1;
    }
    Syn::Scanned(scan(&buf, len, cfg, true, out))
}

/// Copies the packet's TCP options into `buf`; returns how many bytes.
#[inline(always)]
fn copy_options(ops: &Ops, buf: &mut [u8; OPTION_BUF_LEN]) -> usize {
    copy_options_and_header_len(ops, buf).0
}

/// Copies the packet's TCP options into `buf`; returns how many bytes and the header length.
#[inline(always)]
fn copy_options_and_header_len(ops: &Ops, buf: &mut [u8; OPTION_BUF_LEN]) -> (usize, usize) {
    let data = ops.skb_data();
    let end = ops.skb_data_end();
    if data == 0 || data + TCP_HEADER_LEN > end {
        return (0, 0);
    }
    // SAFETY: bounds checked against skb_data_end just above.
    let doff = unsafe { *((data + TCP_DOFF_BYTE) as *const u8) } >> 4;
    let header_len = (doff as usize) * TCP_DOFF_UNIT;
    if header_len <= TCP_HEADER_LEN {
        return (0, header_len);
    }
    let len = header_len - TCP_HEADER_LEN;
    let mut n = 0usize;
    #[expect(
        clippy::needless_range_loop,
        reason = "the index also makes the packet address checked against skb_data_end"
    )]
    for i in 0..MAX_OPTIONS_LEN {
        if i >= len {
            break;
        }
        let p = data + TCP_HEADER_LEN + i;
        if p + 1 > end {
            break;
        }
        // SAFETY: bounds checked against skb_data_end just above.
        buf[i] = unsafe { *(p as *const u8) };
        n = i + 1;
    }
    (n, header_len)
}

/// Stores the real client on the socket unless one is stored already.
#[inline(always)]
fn store(ops: &Ops, client: &ClientAddr, from: u8) {
    // Read before branching (see `peer_trusted`).
    let transport_port = ((ops.remote_port() >> 16) as u16).to_ne_bytes();
    let result = match ops.storage::<PeerRecord>(raw(&TOA_PEERS), true) {
        None => Stored::Failed,
        Some(rec) => {
            // SAFETY: socket storage of our socket, owned by us while the socket is locked.
            let rec = unsafe { &mut *rec };
            if rec.family != 0 {
                Stored::AlreadyHeld
            } else {
                // SAFETY: plain helper call.
                let now_s = (unsafe { bpf_ktime_get_boot_ns() } / NS_PER_SEC) as u32;
                *rec = capture::record(client, transport_port, from, now_s);
                Stored::New(client.family)
            }
        }
    };
    count_all(&capture::stored(result));
    if let Stored::New(_) = result {
        // Be told when the connection closes, to release the record.
        ops.set_cb_flags(ops.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG);
    }
}

/// The connection reached CLOSE: count the record released and empty it.
///
/// The record's memory stays with the socket until the kernel frees both
/// (`bpf_sk_storage_free` in the socket's destructor): deleting it here would
/// do the same work one callback earlier, through the slower RCU-tasks-trace
/// path of `bpf_sk_storage_delete`. Emptying it (family 0) keeps a socket
/// that is reused for another connection (after `connect(AF_UNSPEC)`) from
/// showing the old client, and a second CLOSE from counting it twice.
fn on_state_change(ops: &Ops) {
    if ops.arg1() != BPF_TCP_CLOSE {
        return;
    }
    let Some(rec) = ops.storage::<PeerRecord>(raw(&TOA_PEERS), false) else {
        return;
    };
    // SAFETY: socket storage of our socket, which is locked while we run.
    let rec = unsafe { &mut *rec };
    if let Some(counters) = capture::released(rec.family) {
        count_all(&counters);
        rec.family = 0;
    }
}
