//! The conformance fixtures: every packet is written byte by byte by the TUN
//! peer, so each fixture controls every option byte of the SYN, the
//! handshake's final ACK and the data packets. Each fixture names the
//! behaviour of an existing TOA implementation it mirrors.
//!
//! Expected values are strings as the server in `conformance.rs` prints
//! them: `transport` is the connection's own client address as the listener
//! sees it (no option taken); `{port}` is replaced by the transport port; an
//! upper-case word is an errno name (`ENOENT`, `EINVAL`); `*` is not checked.

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

/// One fixture.
#[derive(Clone, Copy, Debug)]
pub struct Fixture {
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
    /// What `accept()` reported (checked when the steps wait for it, or `*`).
    pub accept: &'static str,
    /// What `getpeername()` reports after the first read.
    pub peer: &'static str,
    /// `getsockopt(IPPROTO_IP, 1348)` with a 128-byte buffer.
    pub vtoa: &'static str,
    /// `getsockopt(IPPROTO_IP, 4096)` with a 20-byte buffer.
    pub nat64: &'static str,
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

/// The IPv4 real client on an IPv4 socket.
pub const REAL4: &str = "203.0.113.7:4242";
/// The IPv4 real client on an IPv6 socket.
pub const REAL4_MAPPED: &str = "[::ffff:203.0.113.7]:4242";
/// The IPv6 real client.
pub const REAL6: &str = "[2001:db8:99::7]:4242";

const NONE: Opts = &[];

/// A fixture with defaults: IPv4 listener and transport, MSS-only SYN, the
/// option's effect checked on getpeername and both getsockopt calls.
const fn base(description: &'static str, mirrors: &'static str, steps: &'static [Step]) -> Fixture {
    Fixture {
        description,
        mirrors,
        listener: Listener::V4,
        via: Via::V4,
        syn: &[MSS],
        steps,
        accept: "*",
        peer: REAL4,
        vtoa: REAL4,
        nat64: "EINVAL",
        counters: &[("syn_recv_sock_toa", 1)],
    }
}

/// The option is refused or absent: everything shows the transport address.
const fn untouched(description: &'static str, mirrors: &'static str, steps: &'static [Step]) -> Fixture {
    Fixture {
        peer: "transport",
        vtoa: "ENOENT",
        nat64: "EINVAL",
        counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 1)],
        ..base(description, mirrors, steps)
    }
}

/// The default agent: formats 254/8, 200/8, 253/20, 254/20; ACK and data.
pub const DEFAULT: Group = Group {
    name: "default_agent",
    agent: &[],
    syncookies: false,
    fixtures: &[
        base(
            "254/8 in the handshake's final ACK",
            "vtoa, Huawei, ucloud, DPVS: the kind-254 IPv4 option taken when the ACK creates the socket \
             (tcp_v4_syn_recv_sock hook)",
            &[Step::Ack(&[T254_8]), Step::Accepted],
        )
        .accept(REAL4),
        base(
            "200/8 in the final ACK",
            "Tencent CLB/TGW and the original LVS FullNAT (\"unknown-200\" in tcpdump)",
            &[Step::Ack(&[T200_8]), Step::Accepted],
        )
        .accept(REAL4),
        base(
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
                "254/20 in the final ACK of an IPv6 connection",
                "DPVS for IPv6 clients (kind 254, length 20)",
                &[Step::Ack(&[NOP, NOP, T254_20])],
            )
        },
        Fixture {
            listener: Listener::Dual,
            peer: REAL4_MAPPED,
            ..base(
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
                "254/8 (IPv4 client) over an IPv6 connection",
                "DPVS NAT46: an IPv4 client behind an IPv6 forwarder, presented v4-mapped",
                &[Step::Ack(&[T254_8])],
            )
        },
        Fixture {
            peer: "transport",
            vtoa: REAL6,
            nat64: REAL6,
            counters: &[("syn_recv_sock_toa", 1), ("getname_toa_bypass", 2), ("ip6_address_alloc", 1)],
            ..base(
                "253/20 (IPv6 client) over IPv4 to an IPv4 listener: NAT64",
                "Tencent NAT64 CLB: getpeername keeps the IPv4 address, TOA_SO_GET_LOOKUP (4096) returns \
                 struct toa_nat64_peer",
                &[Step::Ack(&[T253_20]), Step::Accepted],
            )
            .accept("transport")
        },
        Fixture {
            listener: Listener::Dual,
            peer: REAL6,
            vtoa: REAL6,
            nat64: REAL6,
            counters: &[("syn_recv_sock_toa", 1), ("ip6_address_alloc", 1)],
            ..base(
                "254/20 (IPv6 client) over IPv4 to a dual-stack listener",
                "DPVS NAT64 to a Go-style [::] listener: an IPv6 socket can hold the IPv6 client",
                &[Step::Ack(&[T254_20])],
            )
        },
        Fixture {
            accept: "transport",
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 1)],
            ..base(
                "option only in the first data packet",
                "DPVS/LVS mark the first data packets too (ack_seq == ISN+1); accept() before the data sees the \
                 forwarder (documented race)",
                &[Step::Ack(NONE), Step::Accepted, Step::Data(&[T254_8])],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_conflict", 0), ("toa_from_data", 0)],
            ..base(
                "the same option in the ACK and in the first data packet",
                "DPVS: every packet with ack_seq == ISN+1 carries it; the repeat changes nothing",
                &[Step::Ack(&[T254_8]), Step::Data(&[T254_8])],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_data", 0)],
            ..base(
                "a different option in data after the ACK's: the ACK's stays",
                "vtoa/DPVS: the address is taken once, when the socket is created; later packets are not parsed",
                &[Step::Ack(&[T254_8]), Step::Data(&[OTHER_254_8])],
            )
        },
        Fixture {
            accept: "transport",
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 1)],
            ..base(
                "a retransmitted final ACK carries the option, the first one did not",
                "DPVS re-inserts the option into every retransmission whose ack_seq is ISN+1",
                &[Step::Ack(NONE), Step::Accepted, Step::Ack(&[T254_8]), Step::Data(NONE)],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 1)],
            ..base(
                "FIN with data carries the option",
                "DPVS (dpvs#666): the FIN that carries the first data also gets the option",
                &[Step::Ack(NONE), Step::Accepted, Step::FinData(&[T254_8])],
            )
            .accept("transport")
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 0)],
            ..untouched(
                "option only in the second data packet",
                "our window: the handshake ACK and packets up to the first data packet (peers read the ACK only)",
                &[Step::Ack(NONE), Step::Data(NONE), Step::Data(&[T254_8])],
            )
        },
        base(
            "two TOA options in one ACK: the first wins",
            "vtoa/Huawei get_toa_data: returns at the first matching option",
            &[Step::Ack(&[T254_8, OTHER_254_8])],
        ),
        base(
            "254/9 before a valid 254/8: skipped by its length, the valid one taken",
            "kernel tcp_parse_options walks by length; a wrong length is not TOA",
            &[Step::Ack(&[LEN9, NOP, NOP, NOP, T254_8])],
        ),
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 0)],
            ..untouched(
                "option after EOL is ignored",
                "kernel tcp_parse_options and every module: EOL ends the list",
                &[Step::Ack(&[EOL, T254_8])],
            )
        },
        untouched(
            "kind 254 with length 0",
            "kernel: a length below 2 ends parsing (the segment is still accepted)",
            &[Step::Ack(&[LEN0])],
        ),
        untouched("kind 254 with length 1", "kernel: a length below 2 ends parsing", &[Step::Ack(&[LEN1])]),
        untouched(
            "kind 254 with length 7",
            "vtoa/DPVS: only opsize 8 (IPv4) or 20 (IPv6) is TOA",
            &[Step::Ack(&[LEN7])],
        ),
        untouched("kind 254 with length 9", "vtoa/DPVS: only opsize 8 or 20 is TOA", &[Step::Ack(&[LEN9])]),
        untouched("kind 254 with length 21", "vtoa/DPVS: only opsize 8 or 20 is TOA", &[Step::Ack(&[LEN21])]),
        untouched(
            "option running past the header (data offset declares 4 option bytes)",
            "kernel tcp_parse_options: an option longer than the header ends parsing; the tail is payload",
            &[Step::AckDataOffset(&[NOP, NOP, T254_8], 6)],
        ),
        untouched(
            "253/8 is not a default format",
            "ucloud's 253/8 must be enabled explicitly (formats = [..., \"253/8\"])",
            &[Step::Ack(&[T253_8])],
        ),
        Fixture {
            peer: "1.2.3.4:63881",
            vtoa: "1.2.3.4:63881",
            ..base(
                "kind 254 with the TFO magic outside a SYN is an ordinary 254/8",
                "kernel: the experimental TFO option (0xF989) is only parsed in a SYN",
                &[Step::Ack(&[TFO_254])],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 0), ("getname_toa_empty", 2)],
            ..untouched(
                "no option at all",
                "every module: a connection without TOA keeps its address; 1348 fails, 4096 fails with EINVAL",
                &[Step::Ack(NONE), Step::Accepted],
            )
            .accept("transport")
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_syn", 0), ("toa_malformed", 0)],
            ..untouched(
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
                "the same option in the SYN and the ACK",
                "alibaba/LVS: SYN plus the packets acknowledging the SYN-ACK",
                &[Step::Ack(&[T254_8])],
            )
            .syn(&[MSS, T254_8])
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1), ("toa_conflict", 1)],
            ..base(
                "different options in the SYN and the ACK: the SYN's wins, counted",
                "first valid address wins (DESIGN §2); a conflicting later one is counted as toa_conflict",
                &[Step::Ack(&[OTHER_254_8])],
            )
            .syn(&[MSS, T254_8])
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 0), ("toa_from_syn", 0)],
            ..untouched(
                "kind 254 with the TFO magic in the SYN is not TOA",
                "kernel: experimental TCP Fast Open (254, magic 0xF989) in a SYN",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, TFO_254])
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1)],
            ..base(
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
                "254/20 filling the SYN's 40 option bytes next to MSS, SACK-perm, timestamps, window scale",
                "DPVS: a 20-byte IPv6 option exactly fills the SYN's spare option space",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, SACK_OK, TS, NOP, WS, T254_20])
        },
        Fixture {
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 0), ("toa_malformed", 1)],
            ..base(
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
        base("253/8 in the ACK", "ucloud (\"akamai 253\" with an IPv4 payload)", &[Step::Ack(&[T253_8])]),
        Fixture {
            peer: "203.0.113.7:{port}",
            vtoa: "203.0.113.7:{port}",
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1)],
            ..base(
                "28/7 in the SYN: no port in the option",
                "Alibaba CDN tcp_toa: replaces only sin_addr, the transport port stays",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, T28_7])
        },
        Fixture {
            peer: "203.0.113.7:{port}",
            vtoa: "203.0.113.7:{port}",
            counters: &[("syn_recv_sock_toa", 1), ("toa_from_syn", 1), ("toa_conflict", 0)],
            ..base("28/7 in the SYN and the ACK", "Alibaba CDN: the SYN, then the ACK", &[Step::Ack(&[NOP, T28_7])])
                .syn(&[MSS, T28_7])
        },
        Fixture {
            listener: Listener::V6Only,
            via: Via::V6,
            peer: "[2001:db8:99::7]:{port}",
            vtoa: "[2001:db8:99::7]:{port}",
            nat64: "[2001:db8:99::7]:{port}",
            counters: &[("syn_recv_sock_toa", 1), ("ip6_address_alloc", 1)],
            ..base(
                "28/19 in the ACK of an IPv6 connection",
                "Alibaba CDN eBPF TOA for IPv6 clients",
                &[Step::Ack(&[NOP, T28_19])],
            )
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_malformed", 1)],
            ..untouched(
                "28/4 (TCP User Timeout) is not TOA",
                "kind 28 is also RFC 5482 User Timeout, length 4: never an address",
                &[Step::Ack(&[USER_TIMEOUT])],
            )
        },
        Fixture {
            listener: Listener::V6Only,
            via: Via::V6,
            peer: "transport",
            ..untouched(
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
            "SYN cookies: the ACK's option is taken",
            "vtoa/DPVS read the ACK, which cookies do not affect",
            &[Step::Ack(&[T254_8])],
        ),
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_syn_unavailable", 1), ("toa_malformed", 0)],
            ..untouched(
                "SYN cookies: an option only in the SYN is lost",
                "the kernel keeps no SYN for a cookie connection (no saved SYN); Alibaba's SYN readers lose it too",
                &[Step::Ack(NONE)],
            )
            .syn(&[MSS, T254_8])
        },
        Fixture {
            counters: &[("syn_recv_sock_no_toa", 1), ("toa_from_data", 1), ("toa_syn_unavailable", 1)],
            ..base(
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
                "SYN cookies over IPv6 to a dual-stack listener: 253/20 in the ACK",
                "vtoa TOA_V6 with cookies",
                &[Step::Ack(&[T253_20])],
            )
        },
    ],
};

impl Fixture {
    const fn accept(mut self, want: &'static str) -> Fixture {
        self.accept = want;
        self
    }

    const fn syn(mut self, syn: Opts) -> Fixture {
        self.syn = syn;
        self
    }
}
