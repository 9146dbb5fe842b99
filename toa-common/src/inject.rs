//! The client-side option writer's shared types.

use crate::{option::MAX_ENCODED_LEN, segment::flags};

/// Packets the writer puts the option into (bits of [`InjectSpec::packets`]).
pub mod packets {
    /// The SYN.
    pub const SYN: u8 = 1;
    /// The ACK that completes the handshake.
    pub const ACK: u8 = 2;
    /// Data packets, until the peer acknowledges the first data.
    pub const DATA: u8 = 4;
}

/// What to write on one socket: value of `TOA_INJECT_TARGETS`, keyed by socket
/// cookie (key 0: every socket of the attached cgroup).
///
/// Written by userspace before `connect()`; copied into the socket's
/// [`InjectState`] when the connection starts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectSpec {
    /// The encoded option (kind, length, payload), see [`crate::option::encode`].
    pub option: [u8; MAX_ENCODED_LEN],
    /// Bytes used in `option`.
    pub len: u8,
    /// Bit set of [`packets`].
    pub packets: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<InjectSpec>() == 24);

/// Writer state of one connection: value of the `TOA_INJECT_STATE` socket storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectState {
    /// What to write.
    pub spec: InjectSpec,
    /// The peer's ISN + 1 (our first ACK number), host order; valid once established.
    pub peer_isn1: u32,
    /// Our ISN + 1 (first data sequence number), host order; valid once established.
    pub data_start: u32,
    /// 1 once the handshake completed.
    pub established: u32,
    /// Explicit padding.
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<InjectState>() == 40);

/// Whether a packet about to be sent gets the option.
///
/// `tcp_flags` and `payload_len` describe the packet; `rcv_nxt`/`snd_una` are
/// the socket's current values (host order). A pure ACK is marked while it
/// acknowledges nothing beyond the peer's SYN (the handshake's final ACK and
/// its retransmissions); data is marked until the peer acknowledges some.
#[inline(always)]
pub fn wants_option(state: &InjectState, tcp_flags: u32, payload_len: u32, rcv_nxt: u32, snd_una: u32) -> bool {
    let p = state.spec.packets;
    if tcp_flags & u32::from(flags::SYN) != 0 {
        return p & packets::SYN != 0;
    }
    if state.established == 0 {
        return false;
    }
    if payload_len > 0 {
        return p & packets::DATA != 0 && snd_una == state.data_start;
    }
    p & packets::ACK != 0 && rcv_nxt == state.peer_isn1 && snd_una == state.data_start
}

/// Whether the writer still has packets to mark on an established connection.
#[inline(always)]
pub fn still_writing(state: &InjectState, rcv_nxt: u32, snd_una: u32) -> bool {
    let p = state.spec.packets;
    if snd_una != state.data_start {
        return false;
    }
    p & packets::DATA != 0 || (p & packets::ACK != 0 && rcv_nxt == state.peer_isn1)
}

/// What the writer knows at `HDR_OPT_LEN_CB`, when the kernel asks how many
/// option bytes to leave room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderLen {
    /// The kernel is sizing segments (computing the MSS), not building a
    /// packet: the flags and the payload length mean nothing then.
    pub sizing: bool,
    /// TCP flags of the packet being built.
    pub tcp_flags: u32,
    /// Its payload length.
    pub payload_len: u32,
    /// The socket's `rcv_nxt`, host order.
    pub rcv_nxt: u32,
    /// The socket's `snd_una`, host order.
    pub snd_una: u32,
}

/// What the writer does at `HDR_OPT_LEN_CB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    /// Option bytes to reserve; 0 for none.
    pub reserve: u32,
    /// Whether a failed reservation is counted as `inject_no_room` (a packet
    /// goes out without the option; segment sizing is not a packet).
    pub count_no_room: bool,
    /// Whether to stop the header callbacks: no packet of the connection
    /// gets the option any more.
    pub stop: bool,
}

/// The writer's answer to the kernel's question how much room to leave.
///
/// While data packets still get the option, segments are sized with room
/// for it, so no packet exceeds the path MTU. A packet that gets the option
/// ([`wants_option`]) has its room reserved; once nothing is left to mark
/// ([`still_writing`]), the callbacks stop.
#[inline(always)]
pub fn room(state: &InjectState, h: &HeaderLen) -> Room {
    let len = state.spec.len as u32;
    let mut out = Room { reserve: 0, count_no_room: false, stop: false };
    if h.sizing {
        if state.established != 0 && state.spec.packets & packets::DATA != 0 && h.snd_una == state.data_start {
            out.reserve = len;
        }
    } else if wants_option(state, h.tcp_flags, h.payload_len, h.rcv_nxt, h.snd_una) {
        out.reserve = len;
        out.count_no_room = true;
    } else if state.established != 0 && !still_writing(state, h.rcv_nxt, h.snd_una) {
        out.stop = true;
    }
    out
}

#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, plain integers.
unsafe impl aya::Pod for InjectSpec {}
#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, plain integers.
unsafe impl aya::Pod for InjectState {}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(p: u8) -> InjectState {
        InjectState {
            spec: InjectSpec { option: [0; MAX_ENCODED_LEN], len: 8, packets: p, _pad: [0; 2] },
            peer_isn1: 1000,
            data_start: 5000,
            established: 1,
            _pad: 0,
        }
    }

    #[test]
    fn placement_decisions() {
        const SYN: u32 = flags::SYN as u32;
        const ACK: u32 = flags::ACK as u32;
        const FIN: u32 = flags::FIN as u32;
        let all = packets::SYN | packets::ACK | packets::DATA;
        struct C {
            d: &'static str,
            p: u8,
            flags: u32,
            payload: u32,
            rcv_nxt: u32,
            snd_una: u32,
            established: u32,
            want: bool,
        }
        let cases = [
            C {
                d: "SYN when asked",
                p: all,
                flags: SYN,
                payload: 0,
                rcv_nxt: 0,
                snd_una: 0,
                established: 0,
                want: true,
            },
            C {
                d: "SYN not asked",
                p: packets::ACK | packets::DATA,
                flags: SYN,
                payload: 0,
                rcv_nxt: 0,
                snd_una: 0,
                established: 0,
                want: false,
            },
            C {
                d: "handshake ACK",
                p: packets::ACK,
                flags: ACK,
                payload: 0,
                rcv_nxt: 1000,
                snd_una: 5000,
                established: 1,
                want: true,
            },
            C {
                d: "ACK of server data",
                p: packets::ACK,
                flags: ACK,
                payload: 0,
                rcv_nxt: 1100,
                snd_una: 5000,
                established: 1,
                want: false,
            },
            C {
                d: "ACK before established",
                p: packets::ACK,
                flags: ACK,
                payload: 0,
                rcv_nxt: 1000,
                snd_una: 5000,
                established: 0,
                want: false,
            },
            C {
                d: "first data",
                p: packets::DATA,
                flags: ACK,
                payload: 100,
                rcv_nxt: 1000,
                snd_una: 5000,
                established: 1,
                want: true,
            },
            C {
                d: "data after server data",
                p: packets::DATA,
                flags: ACK,
                payload: 100,
                rcv_nxt: 1300,
                snd_una: 5000,
                established: 1,
                want: true,
            },
            C {
                d: "data after ours was acked",
                p: packets::DATA,
                flags: ACK,
                payload: 100,
                rcv_nxt: 1000,
                snd_una: 5100,
                established: 1,
                want: false,
            },
            C {
                d: "data not asked",
                p: packets::ACK,
                flags: ACK,
                payload: 100,
                rcv_nxt: 1000,
                snd_una: 5000,
                established: 1,
                want: false,
            },
            C {
                d: "FIN without data counts as a pure ACK",
                p: packets::ACK,
                flags: ACK | FIN,
                payload: 0,
                rcv_nxt: 1000,
                snd_una: 5000,
                established: 1,
                want: true,
            },
        ];
        for c in cases {
            let mut s = state(c.p);
            s.established = c.established;
            assert_eq!(wants_option(&s, c.flags, c.payload, c.rcv_nxt, c.snd_una), c.want, "{}", c.d);
        }
    }

    #[test]
    fn room_decisions() {
        const SYN: u32 = flags::SYN as u32;
        const ACK: u32 = flags::ACK as u32;
        struct C {
            description: &'static str,
            packets: u8,
            established: u32,
            header: HeaderLen,
            want: Room,
        }
        let sizing = |rcv_nxt, snd_una| HeaderLen { sizing: true, tcp_flags: 0, payload_len: 0, rcv_nxt, snd_una };
        let packet = |tcp_flags, payload_len, rcv_nxt, snd_una| HeaderLen {
            sizing: false,
            tcp_flags,
            payload_len,
            rcv_nxt,
            snd_una,
        };
        let nothing = Room { reserve: 0, count_no_room: false, stop: false };
        let reserve = Room { reserve: 8, count_no_room: false, stop: false };
        let mark = Room { reserve: 8, count_no_room: true, stop: false };
        let stop = Room { reserve: 0, count_no_room: false, stop: true };
        let cases = [
            C {
                description: "sizing while data gets the option: room",
                packets: packets::DATA,
                established: 1,
                header: sizing(1000, 5000),
                want: reserve,
            },
            C {
                description: "sizing before the handshake completed: none",
                packets: packets::DATA,
                established: 0,
                header: sizing(0, 0),
                want: nothing,
            },
            C {
                description: "sizing when only the ACK gets it: none",
                packets: packets::ACK,
                established: 1,
                header: sizing(1000, 5000),
                want: nothing,
            },
            C {
                description: "sizing after our data was acknowledged: none, and no stop",
                packets: packets::DATA,
                established: 1,
                header: sizing(1000, 5100),
                want: nothing,
            },
            C {
                description: "the SYN when asked: reserved, counted if no room",
                packets: packets::SYN | packets::ACK,
                established: 0,
                header: packet(SYN, 0, 0, 0),
                want: mark,
            },
            C {
                description: "the SYN not asked, before the handshake: nothing",
                packets: packets::ACK,
                established: 0,
                header: packet(SYN, 0, 0, 0),
                want: nothing,
            },
            C {
                description: "the handshake ACK",
                packets: packets::ACK,
                established: 1,
                header: packet(ACK, 0, 1000, 5000),
                want: mark,
            },
            C {
                description: "first data",
                packets: packets::ACK | packets::DATA,
                established: 1,
                header: packet(ACK, 100, 1000, 5000),
                want: mark,
            },
            C {
                description: "an ACK of server data while data still gets it: nothing, keep going",
                packets: packets::ACK | packets::DATA,
                established: 1,
                header: packet(ACK, 0, 1100, 5000),
                want: nothing,
            },
            C {
                description: "an ACK of server data when only the ACK was asked: stop",
                packets: packets::ACK,
                established: 1,
                header: packet(ACK, 0, 1100, 5000),
                want: stop,
            },
            C {
                description: "data after ours was acknowledged: stop",
                packets: packets::ACK | packets::DATA,
                established: 1,
                header: packet(ACK, 100, 1000, 5100),
                want: stop,
            },
            C {
                description: "data not asked, ACK phase over: stop",
                packets: packets::ACK,
                established: 1,
                header: packet(ACK, 100, 1200, 5000),
                want: stop,
            },
            C {
                description: "data not asked, ACK phase still on: nothing",
                packets: packets::ACK,
                established: 1,
                header: packet(ACK, 100, 1000, 5000),
                want: nothing,
            },
        ];
        for c in cases {
            let mut s = state(c.packets);
            s.established = c.established;
            assert_eq!(room(&s, &c.header), c.want, "{}", c.description);
        }
    }

    #[test]
    fn writing_phase_ends() {
        let s = state(packets::ACK);
        assert!(still_writing(&s, 1000, 5000));
        assert!(!still_writing(&s, 1001, 5000));
        let s = state(packets::DATA);
        assert!(still_writing(&s, 1500, 5000));
        assert!(!still_writing(&s, 1500, 5001));
    }
}
