//! Which client → backend packets carry the option (the DPVS rule).
//!
//! A packet carries it when its `ack_seq` equals the backend's ISN + 1 — the
//! handshake's final ACK and everything the client sends before the backend
//! sends data of its own (a FIN, with or without data, included) — and the
//! backend has not yet acknowledged any of the client's data. Without that
//! last condition a pure upload (the backend never sends data, so `ack_seq`
//! stays at ISN + 1) would carry the option in every packet; with it, the
//! option stops one round trip after the first data, once the backend has
//! provably received a packet that carried it. A lost handshake ACK loses
//! nothing: the data behind it matches the rule too.
//!
//! Never the SYN or a RST unless asked for ([`packets`]).

/// Packets that may carry the option (bits of the service's `packets`).
pub mod packets {
    /// The client's SYN.
    pub const SYN: u8 = 1;
    /// Packets without payload (the handshake ACK, a FIN).
    pub const ACK: u8 = 2;
    /// Packets with payload.
    pub const DATA: u8 = 4;
    /// RST packets (with the ACK rule).
    pub const RST: u8 = 8;
    /// The default: `ACK | DATA`.
    pub const DEFAULT: u8 = ACK | DATA;
}

/// TCP flag bits (byte 13 of the header).
pub mod tcp_flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgement field is significant.
    pub const ACK: u8 = 0x10;
}

/// What the forwarder knows of a flow when a client packet arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowView {
    /// The backend's ISN + 1 (host order), valid when `backend_isn_known`.
    pub backend_isn1: u32,
    /// The backend's SYN-ACK was seen.
    pub backend_isn_known: bool,
    /// The backend acknowledged client data: the option has arrived.
    pub data_acked: bool,
}

/// Whether the client's packet gets the option. `flags` is the TCP flag
/// byte, `ack_seq` its acknowledgement number (host order), `payload` its
/// payload length; `allowed` the service's [`packets`] bits.
#[inline(always)]
pub fn carries_option(flow: &FlowView, flags: u8, ack_seq: u32, payload: u32, allowed: u8) -> bool {
    if flags & tcp_flags::SYN != 0 {
        return flags & tcp_flags::ACK == 0 && allowed & packets::SYN != 0;
    }
    if flags & tcp_flags::RST != 0 && allowed & packets::RST == 0 {
        return false;
    }
    if flags & tcp_flags::ACK == 0 || !flow.backend_isn_known || flow.data_acked || ack_seq != flow.backend_isn1 {
        return false;
    }
    if payload > 0 { allowed & packets::DATA != 0 } else { allowed & packets::ACK != 0 }
}

/// Whether a backend → client packet shows that the backend received client
/// data: it acknowledges beyond the client's ISN + 1 (`client_isn1`, host
/// order), in sequence-number arithmetic.
#[inline(always)]
pub fn acknowledges_data(flags: u8, ack_seq: u32, client_isn1: u32) -> bool {
    flags & tcp_flags::ACK != 0 && flags & tcp_flags::RST == 0 && (ack_seq.wrapping_sub(client_isn1) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::*;

    const KNOWN: FlowView = FlowView { backend_isn1: 5001, backend_isn_known: true, data_acked: false };

    #[test]
    fn carry_table() {
        let acked = FlowView { data_acked: true, ..KNOWN };
        let unknown = FlowView { backend_isn_known: false, ..KNOWN };
        let d = packets::DEFAULT;
        let cases: [(&str, FlowView, u8, u32, u32, u8, bool); 16] = [
            ("the SYN never by default", KNOWN, SYN, 0, 0, d, false),
            ("the SYN when asked", KNOWN, SYN, 0, 0, d | packets::SYN, true),
            ("a SYN-ACK from the client side is not a SYN to mark", KNOWN, SYN | ACK, 5001, 0, d | packets::SYN, false),
            ("the handshake ACK", KNOWN, ACK, 5001, 0, d, true),
            ("the first data", KNOWN, ACK | 0x08, 5001, 100, d, true),
            ("a FIN with data", KNOWN, ACK | FIN, 5001, 10, d, true),
            ("a bare FIN before any backend data", KNOWN, ACK | FIN, 5001, 0, d, true),
            ("data after backend data", KNOWN, ACK, 5301, 100, d, false),
            ("after the backend acknowledged client data", acked, ACK, 5001, 100, d, false),
            ("before the SYN-ACK was seen", unknown, ACK, 5001, 0, d, false),
            ("a RST never by default", KNOWN, RST | ACK, 5001, 0, d, false),
            ("a RST when asked", KNOWN, RST | ACK, 5001, 0, d | packets::RST, true),
            ("no ACK flag", KNOWN, 0, 5001, 10, d, false),
            ("data not asked", KNOWN, ACK, 5001, 10, packets::ACK, false),
            ("ACK not asked", KNOWN, ACK, 5001, 0, packets::DATA, false),
            ("ISN + 1 wraps", FlowView { backend_isn1: 0, ..KNOWN }, ACK, 0, 1, d, true),
        ];
        for (desc, flow, flags, ack, payload, allowed, want) in cases {
            assert_eq!(carries_option(&flow, flags, ack, payload, allowed), want, "{desc}");
        }
    }

    #[test]
    fn data_acknowledgement() {
        assert!(!acknowledges_data(ACK, 1001, 1001), "ACK of the SYN only");
        assert!(acknowledges_data(ACK, 1002, 1001));
        assert!(acknowledges_data(ACK, 3, u32::MAX - 2), "across the wrap");
        assert!(!acknowledges_data(ACK, u32::MAX - 2, 3), "an old ACK");
        assert!(!acknowledges_data(SYN, 1002, 1001), "no ACK flag");
        assert!(!acknowledges_data(ACK | RST, 1002, 1001), "a RST proves nothing");
        assert_eq!(PSH, 0x08);
    }
}
