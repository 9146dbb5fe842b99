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
    Family, Parsed, PeerRecord,
    config::{CAPTURE_DATA, CAPTURE_SYN, PORT_FILTER, ReceiverConfig, TRUST_ALL},
    counters::Counter,
    option::{ClientAddr, MAX_OPTIONS_LEN, OPTION_BUF_LEN, Scan, scan_options},
    peer::source,
    trust::mapped,
};

use crate::{
    counters::count,
    maps::{TOA_CONFIG, TOA_PEERS, TOA_PORTS, TOA_TRUSTED, raw},
    sock_ops::Ops,
};

/// Size of a TCP header without options.
const TCP_HEADER_LEN: usize = 20;
/// Most bytes of a TCP header (with options).
const TCP_MAX_HEADER_LEN: usize = 60;
/// `SOL_TCP`.
const SOL_TCP: i32 = 6;
/// `TCP_SAVE_SYN`: keep the SYN of new connections on the listener.
const TCP_SAVE_SYN: i32 = 27;
/// `TCP_BPF_SYN`: bpf_getsockopt of the saved SYN's TCP header.
const TCP_BPF_SYN: i32 = 1005;
/// `AF_INET`.
const AF_INET: u32 = 2;

/// The codec behind a global (non-static) function: the verifier checks it
/// once on its own instead of once per call site and caller state, which
/// keeps the program far below the instruction budget.
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

/// Calls the global scan function.
#[inline(always)]
fn parse(buf: &[u8; OPTION_BUF_LEN], len: usize, cfg: &ReceiverConfig, in_syn: bool) -> Parsed {
    let mut out = ClientAddr::EMPTY;
    let found = toa_scan_options(buf, len as u32, &cfg.formats, in_syn as u32, &mut out);
    if found == Scan::Found as u32 {
        Parsed::Found(out)
    } else if found == Scan::Malformed as u32 {
        Parsed::Malformed
    } else {
        Parsed::None
    }
}

/// Dispatches the callbacks the receiver handles.
#[inline(always)]
pub fn on_sock_op(ops: &Ops) {
    match ops.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(ops),
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => on_packet(ops),
        BPF_SOCK_OPS_STATE_CB => on_state_change(ops),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(ops),
        _ => {}
    }
}

#[inline(always)]
fn config() -> Option<&'static ReceiverConfig> {
    TOA_CONFIG.get(0)
}

/// Whether the connection's local port is one we act on.
#[inline(always)]
fn port_in_scope(ops: &Ops, cfg: &ReceiverConfig) -> bool {
    if !cfg.has(PORT_FILTER) {
        return true;
    }
    TOA_PORTS.get(0).is_some_and(|ports| ports.contains(ops.local_port()))
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
    let w = [ops.remote_ip6_0(), ops.remote_ip6_1(), ops.remote_ip6_2(), ops.remote_ip6_3()];
    let data = if family == AF_INET {
        mapped(v4.to_ne_bytes())
    } else {
        let mut a = [0u8; 16];
        a[0..4].copy_from_slice(&w[0].to_ne_bytes());
        a[4..8].copy_from_slice(&w[1].to_ne_bytes());
        a[8..12].copy_from_slice(&w[2].to_ne_bytes());
        a[12..16].copy_from_slice(&w[3].to_ne_bytes());
        a
    };
    TOA_TRUSTED.get(&Key::new(128, data)).is_some()
}

fn on_listen(ops: &Ops) {
    let Some(cfg) = config() else { return };
    if cfg.has(CAPTURE_SYN) && port_in_scope(ops, cfg) {
        let mut on: i32 = 1;
        // SAFETY: helper call on our context with a 4-byte value.
        unsafe { bpf_setsockopt(ops.raw().cast(), SOL_TCP, TCP_SAVE_SYN, (&raw mut on).cast(), 4) };
    }
}

fn on_passive_established(ops: &Ops) {
    let Some(cfg) = config() else { return };
    if !port_in_scope(ops, cfg) {
        return;
    }
    let mut taken: Option<(ClientAddr, u8)> = None;
    if cfg.has(CAPTURE_SYN) {
        if let Some(client) = from_saved_syn(ops, cfg) {
            taken = Some((client, source::SYN));
        }
    }
    let mut buf = [0u8; OPTION_BUF_LEN];
    let len = copy_options(ops, &mut buf);
    match parse(&buf, len, cfg, false) {
        Parsed::Found(client) => match &taken {
            Some((first, _)) if *first != client => count(Counter::ToaConflict),
            Some(_) => {}
            None => taken = Some((client, source::ACK)),
        },
        Parsed::Malformed => count(Counter::ToaMalformed),
        Parsed::None => {}
    }
    match taken {
        Some((client, from)) if peer_trusted(ops, cfg) => {
            count(Counter::SynRecvSockToa);
            if from == source::SYN {
                count(Counter::ToaFromSyn);
            }
            store(ops, &client, from);
        }
        Some(_) => {
            count(Counter::ToaUntrusted);
            count(Counter::SynRecvSockNoToa);
        }
        None => {
            count(Counter::SynRecvSockNoToa);
            if cfg.has(CAPTURE_DATA) {
                // Look at the next packets (up to the first data packet).
                ops.set_cb_flags(ops.cb_flags() | BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
            }
        }
    }
}

/// A packet after the handshake on a connection that had no option yet.
///
/// With PARSE_UNKNOWN_HDR_OPT_CB_FLAG the kernel calls us only for segments
/// that carry an option it does not know: a data packet without options (or
/// with timestamps only) never gets here. So the window "up to the first data
/// packet" is closed by `bytes_received`, not by seeing that packet.
fn on_packet(ops: &Ops) {
    // Read before branching (see `peer_trusted`).
    let received = ops.bytes_received();
    let Some(cfg) = config() else { return };
    if received > 0 {
        // Data arrived earlier without the option: the connection has none.
        stop_parsing(ops);
        return;
    }
    let mut buf = [0u8; OPTION_BUF_LEN];
    let (len, header_len) = copy_options_and_header_len(ops, &mut buf);
    let has_payload = ops.skb_len() as usize > header_len;
    match parse(&buf, len, cfg, false) {
        Parsed::Found(client) => {
            if peer_trusted(ops, cfg) {
                count(Counter::ToaFromData);
                store(ops, &client, source::DATA);
            } else {
                count(Counter::ToaUntrusted);
            }
            stop_parsing(ops);
        }
        Parsed::Malformed => {
            count(Counter::ToaMalformed);
            if has_payload {
                stop_parsing(ops);
            }
        }
        // The first data packet had none: the connection has no real client.
        Parsed::None if has_payload => stop_parsing(ops),
        Parsed::None => {}
    }
}

#[inline(always)]
fn stop_parsing(ops: &Ops) {
    ops.set_cb_flags(ops.cb_flags() & !BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
}

/// The client in the saved SYN's options, if any.
#[inline(always)]
fn from_saved_syn(ops: &Ops, cfg: &ReceiverConfig) -> Option<ClientAddr> {
    let mut header = [0u8; TCP_MAX_HEADER_LEN];
    // SAFETY: helper call on our context; `header` is 60 bytes.
    let n = unsafe {
        bpf_getsockopt(ops.raw().cast(), SOL_TCP, TCP_BPF_SYN, header.as_mut_ptr().cast(), TCP_MAX_HEADER_LEN as i32)
    };
    if n < TCP_HEADER_LEN as i64 {
        count(Counter::ToaSynUnavailable);
        return None;
    }
    let header_len = ((header[12] >> 4) as usize) * 4;
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
    match parse(&buf, len, cfg, true) {
        Parsed::Found(client) => Some(client),
        Parsed::Malformed => {
            count(Counter::ToaMalformed);
            None
        }
        Parsed::None => None,
    }
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
    let doff = unsafe { *((data + 12) as *const u8) } >> 4;
    let header_len = (doff as usize) * 4;
    if header_len <= TCP_HEADER_LEN {
        return (0, header_len);
    }
    let len = header_len - TCP_HEADER_LEN;
    let mut n = 0usize;
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
///
/// An option without a port (Alibaba CDN's 28/7 and 28/19, or port 0) keeps
/// the connection's transport port, as Alibaba's module does (it replaces
/// only the address): port 0 is never a usable peer port.
#[inline(always)]
fn store(ops: &Ops, client: &ClientAddr, from: u8) {
    // Read before branching (see `peer_trusted`).
    let transport_port = ((ops.remote_port() >> 16) as u16).to_ne_bytes();
    let Some(rec) = ops.storage::<PeerRecord>(raw(&TOA_PEERS), true) else {
        count(Counter::ToaStoreFailed);
        return;
    };
    // SAFETY: socket storage of our socket, owned by us while the socket is locked.
    let rec = unsafe { &mut *rec };
    if rec.family != 0 {
        return;
    }
    rec.addr = client.addr;
    rec.port = if client.port == [0, 0] { transport_port } else { client.port };
    rec.kind = client.kind;
    rec.source = from;
    // SAFETY: plain helper call.
    rec.stored_ns = unsafe { bpf_ktime_get_boot_ns() };
    rec.family = client.family as u8;
    count(Counter::ToaEntryAlloc);
    if client.family == Family::V6 {
        count(Counter::Ip6AddressAlloc);
    }
    // Be told when the connection closes, to release the record.
    ops.set_cb_flags(ops.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG);
}

fn on_state_change(ops: &Ops) {
    if ops.arg1() != BPF_TCP_CLOSE {
        return;
    }
    let Some(rec) = ops.storage::<PeerRecord>(raw(&TOA_PEERS), false) else {
        return;
    };
    // SAFETY: socket storage of our socket.
    let family = unsafe { (*rec).family };
    if family == 0 {
        return;
    }
    count(Counter::ToaEntryFree);
    if family == Family::V6 as u8 {
        count(Counter::Ip6AddressFree);
    }
    ops.delete_storage(raw(&TOA_PEERS));
}
