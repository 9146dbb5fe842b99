//! Writer: put a chosen option into outgoing packets of client sockets.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_reserve_hdr_opt, bpf_store_hdr_opt},
};
use toa_common::{
    counters::Counter,
    inject::{HeaderLen, InjectState, room, still_writing},
    option::MAX_ENCODED_LEN,
};

use crate::{
    counters::count,
    maps::{TOA_INJECT_STATE, TOA_INJECT_TARGETS, raw},
    sock_ops::Ops,
};

/// HDR_OPT_LEN_CB `args[0]` bit: no packet, the kernel is sizing segments.
const WRITE_HDR_TCP_CURRENT_MSS: u32 = 1;

/// Key of the target that applies to every socket of the cgroup.
const DEFAULT_TARGET: u64 = 0;

/// Dispatches the callbacks the writer handles.
#[inline(always)]
pub fn on_sock_op(ops: &Ops) {
    match ops.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ops),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(ops),
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => on_header_len(ops),
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB => on_write(ops),
        _ => {}
    }
}

#[inline(always)]
fn state(ops: &Ops) -> Option<&'static mut InjectState> {
    // SAFETY: socket storage of our (locked) socket.
    ops.storage::<InjectState>(raw(&TOA_INJECT_STATE), false).map(|p| unsafe { &mut *p })
}

fn on_connect(ops: &Ops) {
    // SAFETY: sock_ops context is a valid argument for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(ops.raw().cast()) };
    let (spec, own_entry) = match TOA_INJECT_TARGETS.get_ptr(cookie) {
        Some(p) => (p, true),
        None => match TOA_INJECT_TARGETS.get_ptr(DEFAULT_TARGET) {
            Some(p) => (p, false),
            None => return,
        },
    };
    let Some(st) = ops.storage::<InjectState>(raw(&TOA_INJECT_STATE), true) else {
        return;
    };
    // SAFETY: map value and socket storage pointers, both non-null.
    unsafe {
        (*st).spec = *spec;
        (*st).established = 0;
    }
    if own_entry {
        // Copied into the socket: the per-socket entry has served its purpose.
        // Removing it here saves the forwarder a syscall per connection and
        // leaves no entry behind whatever happens to the socket.
        let _ = TOA_INJECT_TARGETS.remove(cookie);
    }
    ops.set_cb_flags(ops.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

fn on_established(ops: &Ops) {
    let Some(st) = state(ops) else { return };
    st.peer_isn1 = ops.rcv_nxt();
    st.data_start = ops.snd_una();
    st.established = 1;
    if !still_writing(st, st.peer_isn1, st.data_start) {
        stop_writing(ops);
    }
}

fn on_header_len(ops: &Ops) {
    // Read before branching (see `capture::peer_trusted`).
    let header = HeaderLen {
        sizing: ops.arg0() & WRITE_HDR_TCP_CURRENT_MSS != 0,
        tcp_flags: ops.skb_tcp_flags(),
        payload_len: ops.skb_len(),
        rcv_nxt: ops.rcv_nxt(),
        snd_una: ops.snd_una(),
    };
    let Some(st) = state(ops) else { return };
    let room = room(st, &header);
    if room.reserve != 0 {
        // SAFETY: helper call on our context.
        let ret = unsafe { bpf_reserve_hdr_opt(ops.raw(), room.reserve, 0) };
        if ret != 0 && room.count_no_room {
            count(Counter::InjectNoRoom);
        }
    }
    if room.stop {
        stop_writing(ops);
    }
}

fn on_write(ops: &Ops) {
    let Some(st) = state(ops) else { return };
    let from = st.spec.option.as_ptr().cast();
    // The helper writes as many bytes as the option's own length byte says
    // (userspace guarantees it equals `spec.len`); the buffer size bounds it.
    // SAFETY: `from` points at MAX_ENCODED_LEN bytes of socket storage.
    let ret = unsafe { bpf_store_hdr_opt(ops.raw(), from, MAX_ENCODED_LEN as u32, 0) };
    count(if ret == 0 { Counter::InjectWritten } else { Counter::InjectNoRoom });
}

/// No more packets to mark: stop the header callbacks (and the MSS reduction).
#[inline(always)]
fn stop_writing(ops: &Ops) {
    ops.set_cb_flags(ops.cb_flags() & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}
