//! Receiver: capture the real client from the handshake's final ACK.

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE},
    helpers::generated::bpf_ktime_get_boot_ns,
};
use toa_common::{
    Family, Parsed, PeerRecord,
    counters::Counter,
    option::{MAX_OPTIONS_LEN, OPTION_BUF_LEN, parse_options},
    peer::source,
};

use crate::{
    counters::count,
    maps::{TOA_CONFIG, TOA_PEERS, raw},
    sock_ops::Ops,
};

/// Size of a TCP header without options.
const TCP_HEADER_LEN: usize = 20;

/// Dispatches the callbacks the receiver handles.
#[inline(always)]
pub fn on_sock_op(ops: &Ops) {
    match ops.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(ops),
        BPF_SOCK_OPS_STATE_CB => on_state_change(ops),
        _ => {}
    }
}

fn on_passive_established(ops: &Ops) {
    let Some(formats) = TOA_CONFIG.get(0) else {
        return;
    };
    let mut buf = [0u8; OPTION_BUF_LEN];
    let len = copy_options(ops, &mut buf);
    match parse_options(&buf, len, formats, false) {
        Parsed::Found(client) => {
            count(Counter::SynRecvSockToa);
            store(ops, client.family, client.kind, client.addr, client.port, source::ACK);
        }
        Parsed::Malformed => {
            count(Counter::ToaMalformed);
            count(Counter::SynRecvSockNoToa);
        }
        Parsed::None => count(Counter::SynRecvSockNoToa),
    }
}

/// Copies the packet's TCP options into `buf`; returns how many bytes.
#[inline(always)]
fn copy_options(ops: &Ops, buf: &mut [u8; OPTION_BUF_LEN]) -> usize {
    let data = ops.skb_data();
    let end = ops.skb_data_end();
    if data == 0 || data + TCP_HEADER_LEN > end {
        return 0;
    }
    // SAFETY: bounds checked against skb_data_end just above.
    let doff = unsafe { *((data + 12) as *const u8) } >> 4;
    let header_len = (doff as usize) * 4;
    if header_len <= TCP_HEADER_LEN {
        return 0;
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
    n
}

/// Stores the real client on the socket unless one is stored already.
#[inline(always)]
fn store(ops: &Ops, family: Family, kind: u8, addr: [u8; 16], port: [u8; 2], from: u8) {
    let Some(rec) = ops.storage::<PeerRecord>(raw(&TOA_PEERS), true) else {
        count(Counter::ToaStoreFailed);
        return;
    };
    // SAFETY: socket storage of our socket, owned by us while the socket is locked.
    let rec = unsafe { &mut *rec };
    if rec.family != 0 {
        return;
    }
    rec.addr = addr;
    rec.port = port;
    rec.kind = kind;
    rec.source = from;
    // SAFETY: plain helper call.
    rec.stored_ns = unsafe { bpf_ktime_get_boot_ns() };
    rec.family = family as u8;
    count(Counter::ToaEntryAlloc);
    if family == Family::V6 {
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
