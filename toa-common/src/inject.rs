//! The client-side option writer's shared types.

use crate::option::MAX_ENCODED_LEN;

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
    const SYN: u32 = 0x02;
    let p = state.spec.packets;
    if tcp_flags & SYN != 0 {
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
        const SYN: u32 = 0x02;
        const ACK: u32 = 0x10;
        const FIN: u32 = 0x01;
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
    fn writing_phase_ends() {
        let s = state(packets::ACK);
        assert!(still_writing(&s, 1000, 5000));
        assert!(!still_writing(&s, 1001, 5000));
        let s = state(packets::DATA);
        assert!(still_writing(&s, 1500, 5000));
        assert!(!still_writing(&s, 1500, 5001));
    }
}
