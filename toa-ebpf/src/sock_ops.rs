//! Reading `struct bpf_sock_ops` fields.
//!
//! The verifier only accepts context reads at fixed offsets with the field's
//! own size; volatile loads keep the compiler from folding them into
//! `ctx + reg` forms it rejects (docs/design.md §5).

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_ops},
    helpers::generated::{bpf_sk_storage_get, bpf_sock_ops_cb_flags_set},
    programs::SockOpsContext,
};

/// A sock_ops context.
pub struct Ops {
    raw: *mut bpf_sock_ops,
}

macro_rules! field {
    ($(#[$doc:meta])* $name:ident, $($path:tt)+) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $name(&self) -> u32 {
            // SAFETY: `raw` is the program's context; fixed-offset read.
            unsafe { read_volatile(addr_of!((*self.raw).$($path)+)) }
        }
    };
}

impl Ops {
    /// Wraps the program's context.
    #[inline(always)]
    pub fn new(ctx: &SockOpsContext) -> Self {
        Self { raw: ctx.ops }
    }

    /// The raw context pointer, for helpers.
    #[inline(always)]
    pub fn raw(&self) -> *mut bpf_sock_ops {
        self.raw
    }

    field!(/// The callback (`BPF_SOCK_OPS_*`).
        op, op);
    field!(/// First callback argument.
        arg0, __bindgen_anon_1.args[0]);
    field!(/// Second callback argument.
        arg1, __bindgen_anon_1.args[1]);
    field!(/// Callback flags set on the socket.
        cb_flags, bpf_sock_ops_cb_flags);
    field!(/// Next sequence number expected from the peer (host order).
        rcv_nxt, rcv_nxt);
    field!(/// Oldest unacknowledged sequence number (host order).
        snd_una, snd_una);
    field!(/// Address family of the socket (AF_INET, AF_INET6).
        family, family);
    field!(/// Peer IPv4 address, network order.
        remote_ip4, remote_ip4);
    field!(/// Peer IPv6 address word 0, network order.
        remote_ip6_0, remote_ip6[0]);
    field!(/// Peer IPv6 address word 1, network order.
        remote_ip6_1, remote_ip6[1]);
    field!(/// Peer IPv6 address word 2, network order.
        remote_ip6_2, remote_ip6[2]);
    field!(/// Peer IPv6 address word 3, network order.
        remote_ip6_3, remote_ip6[3]);
    field!(/// Local port, host order.
        local_port, local_port);
    field!(/// Peer port: network order in the upper 16 bits (as the kernel loads it).
        remote_port, remote_port);
    field!(/// Outgoing packet: payload length (HDR_OPT_LEN), or the whole packet's.
        skb_len, skb_len);
    field!(/// Outgoing or incoming packet's TCP flags.
        skb_tcp_flags, skb_tcp_flags);

    /// Payload bytes received on the connection so far (the packet being
    /// parsed is not counted yet at PARSE_HDR_OPT_CB).
    #[inline(always)]
    pub fn bytes_received(&self) -> u64 {
        // SAFETY: fixed-offset 8-byte context read.
        unsafe { read_volatile(addr_of!((*self.raw).bytes_received)) }
    }

    /// Start of the packet's TCP header.
    #[inline(always)]
    pub fn skb_data(&self) -> usize {
        // SAFETY: fixed-offset 8-byte context read.
        unsafe { read_volatile(addr_of!((*self.raw).__bindgen_anon_3.skb_data)) as usize }
    }

    /// End of the packet's linear data.
    #[inline(always)]
    pub fn skb_data_end(&self) -> usize {
        // SAFETY: fixed-offset 8-byte context read.
        unsafe { read_volatile(addr_of!((*self.raw).__bindgen_anon_4.skb_data_end)) as usize }
    }

    /// The socket, if the context has a full one.
    #[inline(always)]
    pub fn sk(&self) -> Option<*mut bpf_sock> {
        // SAFETY: fixed-offset 8-byte context read.
        let sk = unsafe { read_volatile(addr_of!((*self.raw).__bindgen_anon_2.sk)) };
        if sk.is_null() { None } else { Some(sk) }
    }

    /// Replaces the socket's callback flags.
    #[inline(always)]
    pub fn set_cb_flags(&self, flags: u32) -> i64 {
        // SAFETY: helper call on our context.
        unsafe { bpf_sock_ops_cb_flags_set(self.raw, flags as i32) }
    }

    /// The socket's storage in `map`, created zeroed when `create` is set.
    #[inline(always)]
    pub fn storage<T>(&self, map: *mut core::ffi::c_void, create: bool) -> Option<*mut T> {
        let sk = self.sk()?;
        let flags = if create { aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE as u64 } else { 0 };
        // SAFETY: `sk` is a non-null socket from the context.
        let p = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), flags) };
        if p.is_null() { None } else { Some(p.cast()) }
    }
}
