//! The conformance fixtures: every packet is written byte by byte by the TUN
//! peer, so each fixture controls every option byte of the SYN, the
//! handshake's final ACK and the data packets. Each fixture names the
//! behaviour of an existing TOA implementation it mirrors.
//!
//! What the server's calls must report is an [`Expect`] each; the counters
//! a fixture names must grow by exactly the given amount.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The listener a fixture connects to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// AF_INET on 0.0.0.0.
    V4,
    /// AF_INET6 on `::` with IPV6_V6ONLY=0 (IPv4 clients appear v4-mapped).
    Dual,
    /// AF_INET6 on `::` with IPV6_V6ONLY=1.
    V6Only,
}

/// Transport family of the connection the TUN peer makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// 198.18.0.2 → 198.18.0.1.
    V4,
    /// 2001:db8:18::2 → 2001:db8:18::1.
    V6,
}

/// Option bytes, given as parts that are concatenated (and padded with EOL).
pub type Opts = &'static [&'static [u8]];

/// One thing the TUN peer does after the SYN-ACK.
#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// A bare ACK (the handshake's final ACK, or a retransmission of it).
    Ack(Opts),
    /// A data segment (PSH|ACK, one byte of payload).
    Data(Opts),
    /// FIN|PSH|ACK with one byte of payload.
    FinData(Opts),
    /// A bare ACK whose data offset declares only `words` 32-bit words,
    /// whatever option bytes were written.
    AckDataOffset(Opts, u8),
    /// Wait until the server's `accept()` returned, and check its address.
    Accepted,
}

/// What one of the server's calls must report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Not checked (`accept()` may return before the packet that carries the option).
    Any,
    /// The connection's own client address as the listener presents it
    /// (v4-mapped on an IPv6 listener): no option taken.
    Transport,
    /// This address.
    Client(SocketAddr),
    /// This address with the connection's transport port (formats without a port).
    ClientAtTransportPort(IpAddr),
    /// The call fails with ENOENT (the socket has no real client).
    Enoent,
    /// The call fails with EINVAL.
    Einval,
}

/// One fixture.
#[derive(Clone, Copy, Debug)]
pub struct Fixture {
    /// Short name, unique in the suite (the list in `conformance.rs` names every one).
    pub name: &'static str,
    /// What is sent.
    pub description: &'static str,
    /// The existing implementation's behaviour this mirrors.
    pub mirrors: &'static str,
    /// Which listener.
    pub listener: Listener,
    /// Transport family.
    pub via: Via,
    /// The SYN's options, written exactly (include the MSS yourself).
    pub syn: Opts,
    /// What follows the SYN-ACK. A plain data segment is appended when no
    /// step carries data, so that the server's read returns.
    pub steps: &'static [Step],
    /// What `accept()` reported.
    pub accept: Expect,
    /// What `getpeername()` reports after the first read.
    pub peer: Expect,
    /// `getsockopt(IPPROTO_IP, 1348)` with a 128-byte buffer.
    pub vtoa: Expect,
    /// `getsockopt(IPPROTO_IP, 4096)` with a 20-byte buffer.
    pub nat64: Expect,
    /// Counters that must grow by exactly this much.
    pub counters: &'static [(&'static str, u64)],
}

/// Fixtures that share one agent configuration.
pub struct Group {
    /// Test name.
    pub name: &'static str,
    /// Extra `toa agent` arguments.
    pub agent: &'static [&'static str],
    /// Set `net.ipv4.tcp_syncookies=2` (always send cookies) in the server namespace.
    pub syncookies: bool,
    /// The fixtures.
    pub fixtures: &'static [Fixture],
}

// ---- option bytes -------------------------------------------------------

/// MSS 1400.
pub const MSS: &[u8] = &[2, 4, 0x05, 0x78];
/// SACK permitted.
pub const SACK_OK: &[u8] = &[4, 2];
/// Timestamps.
pub const TS: &[u8] = &[8, 10, 0, 0, 0, 1, 0, 0, 0, 0];
/// Window scale 7.
pub const WS: &[u8] = &[3, 3, 7];
/// No-operation.
pub const NOP: &[u8] = &[1];
/// End of option list.
pub const EOL: &[u8] = &[0];
/// 254/8: 203.0.113.7:4242 (vtoa, DPVS, Huawei, ucloud, Alibaba LVS).
pub const T254_8: &[u8] = &[254, 8, 0x10, 0x92, 203, 0, 113, 7];
/// 200/8: 203.0.113.7:4242 (LVS FullNAT, Tencent CLB/TGW).
pub const T200_8: &[u8] = &[200, 8, 0x10, 0x92, 203, 0, 113, 7];
/// 254/8 with another client, 198.51.100.9:80.
pub const OTHER_254_8: &[u8] = &[254, 8, 0, 80, 198, 51, 100, 9];
/// 253/20: [2001:db8:99::7]:4242 (vtoa TOA_V6, Tencent NAT64).
pub const T253_20: &[u8] = &[253, 20, 0x10, 0x92, 0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
/// 254/20: [2001:db8:99::7]:4242 (DPVS IPv6 clients).
pub const T254_20: &[u8] = &[254, 20, 0x10, 0x92, 0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
/// 253/8: 203.0.113.7:4242 (ucloud).
pub const T253_8: &[u8] = &[253, 8, 0x10, 0x92, 203, 0, 113, 7];
/// 28/7: version 1, 203.0.113.7, no port (Alibaba CDN).
pub const T28_7: &[u8] = &[28, 7, 1, 203, 0, 113, 7];
/// 28/19: version 1, 2001:db8:99::7, no port (Alibaba CDN).
pub const T28_19: &[u8] = &[28, 19, 1, 0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
/// 28/4: TCP User Timeout (RFC 5482), not TOA.
pub const USER_TIMEOUT: &[u8] = &[28, 4, 0x80, 0x10];
/// Kind 254 carrying the TCP Fast Open magic 0xF989.
pub const TFO_254: &[u8] = &[254, 8, 0xF9, 0x89, 1, 2, 3, 4];
/// 254 with length 0.
pub const LEN0: &[u8] = &[254, 0, 0x10, 0x92, 203, 0, 113, 7];
/// 254 with length 1.
pub const LEN1: &[u8] = &[254, 1, 0x10, 0x92, 203, 0, 113, 7];
/// 254 with length 7.
pub const LEN7: &[u8] = &[254, 7, 0x10, 0x92, 203, 0, 113];
/// 254 with length 9.
pub const LEN9: &[u8] = &[254, 9, 0x10, 0x92, 203, 0, 113, 7, 0];
/// 254 with length 21.
pub const LEN21: &[u8] = &[254, 21, 0x10, 0x92, 0x20, 0x01, 0x0d, 0xb8, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0];

// ---- expected values ----------------------------------------------------

/// The IPv4 real client of the options above.
const CLIENT4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// The IPv6 real client of the options above.
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 7);
/// The real client's port in the options above.
const CLIENT_PORT: u16 = 4242;

/// The IPv4 real client on an IPv4 socket.
pub const REAL4: Expect = Expect::Client(SocketAddr::V4(SocketAddrV4::new(CLIENT4, CLIENT_PORT)));
/// The IPv4 real client on an IPv6 socket.
pub const REAL4_MAPPED: Expect =
    Expect::Client(SocketAddr::V6(SocketAddrV6::new(CLIENT4.to_ipv6_mapped(), CLIENT_PORT, 0, 0)));
/// The IPv6 real client.
pub const REAL6: Expect = Expect::Client(SocketAddr::V6(SocketAddrV6::new(CLIENT6, CLIENT_PORT, 0, 0)));
/// The 254/8 option with the TFO magic read as an address: 1.2.3.4:0xF989.
const TFO_AS_ADDRESS: Expect = Expect::Client(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 0xF989)));

const NONE: Opts = &[];

/// A fixture with defaults: IPv4 listener and transport, MSS-only SYN, the
/// option's effect checked on getpeername and both getsockopt calls (and on
/// accept() where the fixture says so).
const fn base(name: &'static str, description: &'static str, mirrors: &'static str, steps: &'static [Step]) -> Fixture {
    Fixture {
        name,
        description,
        mirrors,
        listener: Listener::V4,
        via: Via::V4,
        syn: &[MSS],
        steps,
        accept: Expect::Any,
        peer: REAL4,
        vtoa: REAL4,
        nat64: Expect::Einval,
        counters: &[("syn_recv_sock_toa", 1)],
    }
}

/// The option is refused or absent: accept(), getpeername() and 1348 show the
/// transport address or fail, and the refusal is counted.
const fn untouched(
    name: &'static str,
    description: &'static str,
    mirrors: &'static str,
    steps: &'static [Step],
) -> Fixture {
    Fixture {
        accept: Expect::Transport,
        peer: Expect::Transport,
        vtoa: Expect::Enoent,
        nat64: Expect::Einval,
        counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 1)],
        ..base(name, description, mirrors, steps)
    }
}

/// The default agent: formats 254/8, 200/8, 253/20, 254/20; ACK and data.
pub const DEFAULT: Group = Group {
    name: "default_agent",
    agent: &[],
    syncookies: false,
    fixtures: &[
        base(
            "ack_254_8",
            "254/8 in the handshake's final ACK",
            "vtoa, Huawei, ucloud, DPVS: the kind-254 IPv4 option taken when the ACK creates the socket \
             (tcp_v4_syn_recv_sock hook)",
            &[Step::Ack(&[T254_8]), Step::Accepted],
        )
        .accept(REAL4),
        base(
            "ack_200_8",
            "200/8 in the final ACK",
            "Tencent CLB/TGW and the original LVS FullNAT (\"unknown-200\" in tcpdump)",
            &[Step::Ack(&[T200_8]), Step::Accepted],
        )
        .accept(REAL4),
        base(
            "ack_254_8_after_timestamps",
            "254/8 after NOP, NOP, timestamps",
            "DPVS/LVS append the option after the client's own options; NOPs are skipped",
            &[Step::Ack(&[NOP, NOP, TS, T254_8]), Step::Accepted],
        )
        .accept(REAL4),
        Fixture {
            listener: Listener::V6Only,
            via: Via::V6,
            peer: REAL6,
            vtoa: REAL6,
            nat64: REAL6,
            counters: &[("syn_recv_sock_toa", 1), ("ip6_address_alloc", 1)],
            ..base(
                "ack_253_20_ipv6_only",
                "253/20 in the final ACK of an IPv6 connection to an IPv6-only listener",
                "vtoa TOA_V6 (opcode 253, opsize 20): getpeername returns the IPv6 client",
                &[Step::Ack(&[T253_20]), Step::Accepted],
            )
            .accept(REAL6)
        },
        Fixture {
            listener: Listener::V6Only,
            via: Via::V6,
            peer: REAL6,
            vtoa: REAL6,
            nat64: REAL6,
            counters: &[("syn_recv_sock_toa", 1), ("ip6_address_alloc", 1)],
            ..base(
                "ack_254_20_ipv6",
                "254/20 in the final ACK of an IPv6 connection",
                "DPVS for IPv6 clients (kind 254, length 20)",
                &[Step::Ack(&[NOP, NOP, T254_20])],
            )
        },
        Fixture {
            listener: Listener::Dual,
            peer: REAL4_MAPPED,
            ..base(
                "ack_254_8_dual_stack",
                "254/8 over IPv4 to a dual-stack listener",
                "vtoa / EdgeOne demo with an IPv6 (sockaddr_in6) listener: the IPv4 client appears as ::ffff:a.b.c.d",
                &[Step::Ack(&[T254_8]), Step::Accepted],
            )
            .accept(REAL4_MAPPED)
        },
        Fixture {
            listener: Listener::V6Only,
            via: Via::V6,
            peer: REAL4_MAPPED,
            ..base(
                "ack_254_8_over_ipv6",
                "254/8 (IPv4 client) over an IPv6 connection",
                "DPVS NAT46: an IPv4 client behind an IPv6 forwarder, presented v4-mapped",
                &[Step::Ack(&[T254_8])],
            )
        },
        Fixture {
            peer: Expect::Transport,
            vtoa: REAL6,
            nat64: REAL6,
            counters: &[("syn_recv_sock_toa", 1), ("getname_toa_bypass", 2), ("ip6_address_alloc", 1)],
            ..base(
                "ack_253_20_over_ipv4_nat64",
                "253/20 (IPv6 client) over IPv4 to an IPv4 listener: NAT64",
                "Tencent NAT64 CLB: getpeername keeps the IPv4 address, TOA_SO_GET_LOOKUP (4096) returns \
                 struct toa_nat64_peer",
                &[Step::Ack(&[T253_20]), Step::Accepted],
            )
            .accept(Expect::Transport)
        },
        Fixture {
            listener: Listener::Dual,
            peer: REAL6,
            vtoa: REAL6,
            nat64: REAL6,
            counters: &[("syn_recv_sock_toa", 1), ("ip6_address_alloc", 1)],
            ..base(
                "ack_254_20_over_ipv4_dual_stack",
                "254/20 (IPv6 client) over IPv4 to a dual-stack listener",
                "DPVS NAT64 to a Go-style [::] listener: an IPv6 socket can hold the IPv6 client",
                &[Step::Ack(&[T254_20])],
            )
        },
        Fixture {
            accept: Expect::Transport,
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 1)],
            ..base(
                "first_data_only",
                "option only in the first data packet",
                "DPVS/LVS mark the first data packets too (ack_seq == ISN+1); accept() before the data sees the \
                 forwarder (documented race)",
                &[Step::Ack(NONE), Step::Accepted, Step::Data(&[T254_8])],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_conflict", 0), ("toa_from_data", 0)],
            ..base(
                "ack_and_first_data_same",
                "the same option in the ACK and in the first data packet",
                "DPVS: every packet with ack_seq == ISN+1 carries it; the repeat changes nothing",
                &[Step::Ack(&[T254_8]), Step::Data(&[T254_8])],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_data", 0)],
            ..base(
                "data_differs_from_ack",
                "a different option in data after the ACK's: the ACK's stays",
                "vtoa/DPVS: the address is taken once, when the socket is created; later packets are not parsed",
                &[Step::Ack(&[T254_8]), Step::Data(&[OTHER_254_8])],
            )
        },
        Fixture {
            accept: Expect::Transport,
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 1)],
            ..base(
                "retransmitted_ack_only",
                "a retransmitted final ACK carries the option, the first one did not",
                "DPVS re-inserts the option into every retransmission whose ack_seq is ISN+1",
                &[Step::Ack(NONE), Step::Accepted, Step::Ack(&[T254_8]), Step::Data(NONE)],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 1)],
            ..base(
                "fin_with_data",
                "FIN with data carries the option",
                "DPVS (dpvs#666): the FIN that carries the first data also gets the option",
                &[Step::Ack(NONE), Step::Accepted, Step::FinData(&[T254_8])],
            )
            .accept(Expect::Transport)
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 0)],
            ..untouched(
                "second_data_only",
                "option only in the second data packet",
                "our window: the handshake ACK and packets up to the first data packet (peers read the ACK only)",
                &[Step::Ack(NONE), Step::Data(NONE), Step::Data(&[T254_8])],
            )
        },
        base(
            "two_options_first_wins",
            "two TOA options in one ACK: the first wins",
            "vtoa/Huawei get_toa_data: returns at the first matching option",
            &[Step::Ack(&[T254_8, OTHER_254_8])],
        ),
        base(
            "len_9_skipped_then_254_8",
            "254/9 before a valid 254/8: skipped by its length, the valid one taken",
            "kernel tcp_parse_options walks by length; a wrong length is not TOA",
            &[Step::Ack(&[LEN9, NOP, NOP, NOP, T254_8])],
        ),
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 0)],
            ..untouched(
                "after_eol",
                "option after EOL is ignored",
                "kernel tcp_parse_options and every module: EOL ends the list",
                &[Step::Ack(&[EOL, T254_8])],
            )
        },
        untouched(
            "len_0",
            "kind 254 with length 0",
            "kernel: a length below 2 ends parsing (the segment is still accepted)",
            &[Step::Ack(&[LEN0])],
        ),
        untouched("len_1", "kind 254 with length 1", "kernel: a length below 2 ends parsing", &[Step::Ack(&[LEN1])]),
        untouched(
            "len_7",
            "kind 254 with length 7",
            "vtoa/DPVS: only opsize 8 (IPv4) or 20 (IPv6) is TOA",
            &[Step::Ack(&[LEN7])],
        ),
        untouched("len_9", "kind 254 with length 9", "vtoa/DPVS: only opsize 8 or 20 is TOA", &[Step::Ack(&[LEN9])]),
        untouched("len_21", "kind 254 with length 21", "vtoa/DPVS: only opsize 8 or 20 is TOA", &[Step::Ack(&[LEN21])]),
        untouched(
            "past_the_header",
            "option running past the header (data offset declares 4 option bytes)",
            "kernel tcp_parse_options: an option longer than the header ends parsing; the tail is payload",
            &[Step::AckDataOffset(&[NOP, NOP, T254_8], 6)],
        ),
        untouched(
            "ack_253_8_not_default",
            "253/8 is not a default format",
            "ucloud's 253/8 must be enabled explicitly (formats = [..., \"253/8\"])",
            &[Step::Ack(&[T253_8])],
        ),
        Fixture {
            peer: TFO_AS_ADDRESS,
            vtoa: TFO_AS_ADDRESS,
            ..base(
                "tfo_magic_outside_syn",
                "kind 254 with the TFO magic outside a SYN is an ordinary 254/8",
                "kernel: the experimental TFO option (0xF989) is only parsed in a SYN",
                &[Step::Ack(&[TFO_254])],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 0), ("getname_toa_empty", 2)],
            ..untouched(
                "no_option",
                "no option at all",
                "every module: a connection without TOA keeps its address; 1348 fails, 4096 fails with EINVAL",
                &[Step::Ack(NONE), Step::Accepted],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_syn", 0), ("toa_malformed", 0)],
            ..untouched(
                "syn_only_capture_off",
                "254/8 only in the SYN with SYN capture off (the default)",
                "vtoa/DPVS backends read the ACK only; SYN capture is opt-in",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, T254_8])
        },
    ],
};

/// SYN capture on (`--capture-syn`).
pub const CAPTURE_SYN: Group = Group {
    name: "syn_capture",
    agent: &["--capture-syn"],
    syncookies: false,
    fixtures: &[
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1)],
            ..base(
                "syn_254_8",
                "254/8 only in the SYN",
                "Alibaba LVS and Alibaba CDN put the option in the SYN",
                &[Step::Ack(NONE), Step::Accepted],
            )
            .syn(&[MSS, T254_8])
            .accept(REAL4)
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1), ("toa_conflict", 0)],
            ..base(
                "syn_and_ack_same",
                "the same option in the SYN and the ACK",
                "alibaba/LVS: SYN plus the packets acknowledging the SYN-ACK",
                &[Step::Ack(&[T254_8])],
            )
            .syn(&[MSS, T254_8])
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1), ("toa_conflict", 1)],
            ..base(
                "syn_and_ack_differ",
                "different options in the SYN and the ACK: the SYN's wins, counted",
                "first valid address wins (docs/design.md §2); a conflicting later one is counted as toa_conflict",
                &[Step::Ack(&[OTHER_254_8])],
            )
            .syn(&[MSS, T254_8])
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 0), ("toa_from_syn", 0)],
            ..untouched(
                "syn_tfo_magic",
                "kind 254 with the TFO magic in the SYN is not TOA",
                "kernel: experimental TCP Fast Open (254, magic 0xF989) in a SYN",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, TFO_254])
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1)],
            ..base(
                "syn_tfo_then_254_8",
                "TFO then TOA in the SYN: the TOA is taken",
                "kernel TFO parsing skips the cookie; the next 254/8 is TOA",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, TFO_254, T254_8])
        },
        Fixture {
            listener: Listener::V6Only,
            via: Via::V6,
            peer: REAL6,
            vtoa: REAL6,
            nat64: REAL6,
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1), ("ip6_address_alloc", 1)],
            ..base(
                "syn_254_20_fills_option_space",
                "254/20 filling the SYN's 40 option bytes next to MSS, SACK-perm, timestamps, window scale",
                "DPVS: a 20-byte IPv6 option exactly fills the SYN's spare option space",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, SACK_OK, TS, NOP, WS, T254_20])
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 0), ("toa_malformed", 1)],
            ..base(
                "syn_len_0_then_ack",
                "length 0 in the SYN, a valid option in the ACK",
                "kernel still answers the SYN; the ACK's option is taken",
                &[Step::Ack(&[T254_8])],
            )
            .syn(&[MSS, &[254, 0, 0, 0]])
        },
        Fixture {
            listener: Listener::Dual,
            peer: REAL4_MAPPED,
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1)],
            ..base(
                "syn_200_8_dual_stack",
                "200/8 in the SYN to a dual-stack listener",
                "Tencent 200/8 from a SYN-marking forwarder; v4-mapped on an IPv6 socket",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, T200_8])
        },
    ],
};

/// Alibaba CDN and ucloud formats enabled, SYN capture on.
pub const EXTRA_FORMATS: Group = Group {
    name: "extra_formats",
    agent: &["--capture-syn", "--format", "254/8", "--format", "253/8", "--format", "28/7", "--format", "28/19"],
    syncookies: false,
    fixtures: &[
        base("ack_253_8", "253/8 in the ACK", "ucloud (\"akamai 253\" with an IPv4 payload)", &[Step::Ack(&[T253_8])]),
        Fixture {
            peer: Expect::ClientAtTransportPort(IpAddr::V4(CLIENT4)),
            vtoa: Expect::ClientAtTransportPort(IpAddr::V4(CLIENT4)),
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1)],
            ..base(
                "syn_28_7",
                "28/7 in the SYN: no port in the option",
                "Alibaba CDN tcp_toa: replaces only sin_addr, the transport port stays",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, T28_7])
        },
        Fixture {
            peer: Expect::ClientAtTransportPort(IpAddr::V4(CLIENT4)),
            vtoa: Expect::ClientAtTransportPort(IpAddr::V4(CLIENT4)),
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1), ("toa_conflict", 0)],
            ..base(
                "syn_and_ack_28_7",
                "28/7 in the SYN and the ACK",
                "Alibaba CDN: the SYN, then the ACK",
                &[Step::Ack(&[NOP, T28_7])],
            )
            .syn(&[MSS, T28_7])
        },
        Fixture {
            listener: Listener::V6Only,
            via: Via::V6,
            peer: Expect::ClientAtTransportPort(IpAddr::V6(CLIENT6)),
            vtoa: Expect::ClientAtTransportPort(IpAddr::V6(CLIENT6)),
            nat64: Expect::ClientAtTransportPort(IpAddr::V6(CLIENT6)),
            counters: &[("syn_recv_sock_toa", 1), ("ip6_address_alloc", 1)],
            ..base(
                "ack_28_19_ipv6",
                "28/19 in the ACK of an IPv6 connection",
                "Alibaba CDN eBPF TOA for IPv6 clients",
                &[Step::Ack(&[NOP, T28_19])],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 1)],
            ..untouched(
                "user_timeout_28_4",
                "28/4 (TCP User Timeout) is not TOA",
                "kind 28 is also RFC 5482 User Timeout, length 4: never an address",
                &[Step::Ack(&[USER_TIMEOUT])],
            )
        },
        Fixture {
            listener: Listener::V6Only,
            via: Via::V6,
            ..untouched(
                "ack_254_20_not_configured",
                "254/20 when only 254/8 is configured",
                "the configured table decides: an accepted kind with a length not accepted is refused",
                &[Step::Ack(&[T254_20])],
            )
        },
    ],
};

/// SYN cookies always on (`net.ipv4.tcp_syncookies=2`), SYN capture on.
pub const SYNCOOKIES: Group = Group {
    name: "syncookies",
    agent: &["--capture-syn"],
    syncookies: true,
    fixtures: &[
        base(
            "cookies_ack",
            "SYN cookies: the ACK's option is taken",
            "vtoa/DPVS read the ACK, which cookies do not affect",
            &[Step::Ack(&[T254_8])],
        ),
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_syn_unavailable", 1), ("toa_malformed", 0)],
            ..untouched(
                "cookies_syn_only_lost",
                "SYN cookies: an option only in the SYN is lost",
                "the kernel keeps no SYN for a cookie connection (no saved SYN); Alibaba's SYN readers lose it too",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, T254_8])
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 1), ("toa_syn_unavailable", 1)],
            ..base(
                "cookies_first_data",
                "SYN cookies: the option in the first data packet",
                "DPVS marks the first data packets; cookies do not affect them",
                &[Step::Ack(NONE), Step::Data(&[T254_8])],
            )
        },
        Fixture {
            listener: Listener::Dual,
            via: Via::V6,
            peer: REAL6,
            vtoa: REAL6,
            nat64: REAL6,
            counters: &[("syn_recv_sock_toa", 1), ("ip6_address_alloc", 1)],
            ..base(
                "cookies_ipv6_dual_stack_253_20",
                "SYN cookies over IPv6 to a dual-stack listener: 253/20 in the ACK",
                "vtoa TOA_V6 with cookies",
                &[Step::Ack(&[T253_20])],
            )
        },
    ],
};

/// Every group, in the order the tests run them.
pub const GROUPS: [&Group; 4] = [&DEFAULT, &CAPTURE_SYN, &EXTRA_FORMATS, &SYNCOOKIES];

impl Fixture {
    const fn accept(mut self, want: Expect) -> Fixture {
        self.accept = want;
        self
    }

    const fn syn(mut self, syn: Opts) -> Fixture {
        self.syn = syn;
        self
    }
}
