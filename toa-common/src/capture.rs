//! The receiver's decisions: which packet's option a connection takes, which
//! counters move, whether the client is stored, and whether later packets
//! are still looked at.
//!
//! The capture program gathers the inputs (what the codec found in the saved
//! SYN, the handshake's final ACK or a later packet, the trust verdict, the
//! socket's byte count) and applies the [`Outcome`] (counters, socket storage,
//! callback flags); everything in between is here, as plain functions tested
//! on the host. The rules are those of docs/design.md §2 ("across a
//! connection") and §5.
//!
//! Inputs that only matter in some cases are gathered only then: the trust
//! lookup when an option was taken ([`Handshake::needs_trust`],
//! [`Packet::needs_trust`]), a later packet's options while no data arrived
//! yet ([`packet_needs_scan`]). The functions ignore them otherwise, which the
//! tests check.

use crate::{
    counters::{Counter, Tally},
    option::{ClientAddr, Scan},
    peer::{Family, PeerRecord, source},
};

/// What the listener's saved copy of the SYN showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syn {
    /// SYN capture is off: the SYN is not looked at.
    Off,
    /// SYN capture is on but the kernel kept no SYN (a listener created
    /// before the agent, or a connection completed by a SYN cookie).
    Unavailable,
    /// What the codec found in the saved SYN's options.
    Scanned(Scan),
}

/// What the capture program knows when the handshake completes
/// (`PASSIVE_ESTABLISHED`).
#[derive(Clone, Copy, Debug)]
pub struct Handshake<'a> {
    /// The SYN.
    pub syn: Syn,
    /// The client in the SYN's option; meaningful when `syn` is `Scanned(Found)`.
    pub syn_client: &'a ClientAddr,
    /// What the codec found in the handshake's final ACK.
    pub ack: Scan,
    /// The client in the ACK's option; meaningful when `ack` is `Found`.
    pub ack_client: &'a ClientAddr,
    /// Whether to look at the packets up to the first data packet when the
    /// handshake carried no option (the `CAPTURE_DATA` flag).
    pub capture_data: bool,
    /// Whether the transport peer is a trusted forwarder; only read when
    /// [`Handshake::needs_trust`].
    pub trusted: bool,
}

impl Handshake<'_> {
    /// The packet whose option the connection takes, as a [`source`] value
    /// ([`source::NONE`] when neither carried one): the SYN's beats the ACK's.
    #[inline(always)]
    pub fn taken(&self) -> u8 {
        if matches!(self.syn, Syn::Scanned(Scan::Found)) {
            source::SYN
        } else if matches!(self.ack, Scan::Found) {
            source::ACK
        } else {
            source::NONE
        }
    }

    /// Whether the outcome depends on the trust verdict (an option was taken).
    #[inline(always)]
    pub fn needs_trust(&self) -> bool {
        self.taken() != source::NONE
    }
}

/// What the capture program knows about a packet after the handshake
/// (`PARSE_HDR_OPT_CB`, while the connection has no client yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Payload bytes the connection received before this packet.
    pub bytes_received: u64,
    /// What the codec found in the packet's options; only read when
    /// [`packet_needs_scan`] said so.
    pub option: Scan,
    /// Whether the packet carries payload.
    pub has_payload: bool,
    /// Whether the transport peer is a trusted forwarder; only read when
    /// [`Packet::needs_trust`].
    pub trusted: bool,
}

impl Packet {
    /// Whether the outcome depends on the trust verdict (an option was found
    /// in a packet that still counts).
    #[inline(always)]
    pub fn needs_trust(&self) -> bool {
        packet_needs_scan(self.bytes_received) && matches!(self.option, Scan::Found)
    }
}

/// Whether a packet after the handshake is worth scanning: only until the
/// first payload arrived. With `PARSE_UNKNOWN_HDR_OPT_CB_FLAG` the kernel
/// calls the program only for segments with an option it does not know, so a
/// first data packet without options is never seen; the byte count closes
/// the window instead.
#[inline(always)]
pub const fn packet_needs_scan(bytes_received: u64) -> bool {
    bytes_received == 0
}

/// What the parse callback for later packets should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Later {
    /// Leave the callback flags as they are.
    Unchanged,
    /// Start calling the program for later packets (set
    /// `PARSE_UNKNOWN_HDR_OPT_CB_FLAG`).
    Watch,
    /// Stop calling it (clear the flag): the connection has its answer.
    Stop,
}

/// Most counters one decision moves.
pub const OUTCOME_COUNTERS: usize = 4;

/// What the capture program does after one callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Counters to add one to.
    pub counters: Tally<OUTCOME_COUNTERS>,
    /// Store the client from this packet (a [`source`] value), or nothing
    /// ([`source::NONE`]).
    pub store: u8,
    /// The parse callback for later packets.
    pub later: Later,
}

impl Outcome {
    /// Nothing to do.
    pub const NOTHING: Outcome =
        Outcome { counters: [None; OUTCOME_COUNTERS], store: source::NONE, later: Later::Unchanged };
}

/// The decision when the handshake completes.
///
/// The first packet (SYN, then the final ACK) with an accepted option decides;
/// a different option in the ACK after the SYN's is ignored and counted as a
/// conflict. A refused option list counts as malformed in each packet it is
/// in. A taken option from an untrusted peer is counted and not stored. With
/// no option, later packets are watched when `capture_data` is set.
#[inline(always)]
pub fn handshake(h: &Handshake<'_>) -> Outcome {
    let mut out = Outcome::NOTHING;
    // One slot per question, so that each is a store at a fixed place.
    out.counters[0] = match h.syn {
        Syn::Unavailable => Some(Counter::ToaSynUnavailable),
        Syn::Scanned(Scan::Malformed) => Some(Counter::ToaMalformed),
        Syn::Off | Syn::Scanned(Scan::None | Scan::Found) => None,
    };
    let taken = h.taken();
    out.counters[1] = match h.ack {
        Scan::Malformed => Some(Counter::ToaMalformed),
        Scan::Found if taken == source::SYN && h.ack_client != h.syn_client => Some(Counter::ToaConflict),
        Scan::Found | Scan::None => None,
    };
    if taken == source::NONE {
        out.counters[2] = Some(Counter::SynRecvSockNoToa);
        if h.capture_data {
            out.later = Later::Watch;
        }
    } else if h.trusted {
        out.counters[2] = Some(Counter::SynRecvSockToa);
        if taken == source::SYN {
            out.counters[3] = Some(Counter::ToaFromSyn);
        }
        out.store = taken;
    } else {
        out.counters[2] = Some(Counter::ToaUntrusted);
        out.counters[3] = Some(Counter::SynRecvSockNoToa);
    }
    out
}

/// The decision for a packet after a handshake without an option.
///
/// Data that arrived earlier without an option ends the search unseen; an
/// option in a packet decides (stored when trusted) and ends it; a packet
/// with payload but no option ends it too; a malformed option list is
/// counted.
#[inline(always)]
pub fn packet(p: &Packet) -> Outcome {
    let mut out = Outcome::NOTHING;
    if !packet_needs_scan(p.bytes_received) {
        out.later = Later::Stop;
        return out;
    }
    match p.option {
        Scan::Found => {
            if p.trusted {
                out.counters[0] = Some(Counter::ToaFromData);
                out.store = source::DATA;
            } else {
                out.counters[0] = Some(Counter::ToaUntrusted);
            }
            out.later = Later::Stop;
        }
        Scan::Malformed => {
            out.counters[0] = Some(Counter::ToaMalformed);
            if p.has_payload {
                out.later = Later::Stop;
            }
        }
        Scan::None => {
            if p.has_payload {
                out.later = Later::Stop;
            }
        }
    }
    out
}

/// The record stored for `client`, taken from packet `from` at `stored_s`
/// (seconds since boot).
///
/// An option without a port (Alibaba CDN's 28/7 and 28/19, or port 0) keeps
/// the connection's transport port, as Alibaba's module does (it replaces
/// only the address): port 0 is never a usable peer port.
#[inline(always)]
pub fn record(client: &ClientAddr, transport_port: [u8; 2], from: u8, stored_s: u32) -> PeerRecord {
    PeerRecord {
        addr: client.addr,
        port: if client.port == [0, 0] { transport_port } else { client.port },
        family: client.family as u8,
        kind: client.kind,
        source: from,
        stored: PeerRecord::stored_at(stored_s),
    }
}

/// What became of an attempt to store a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The socket storage could not be had.
    Failed,
    /// The socket already holds a client: the first one stays.
    AlreadyHeld,
    /// A new record of this family.
    New(Family),
}

/// The counters for a store attempt.
#[inline(always)]
pub fn stored(result: Stored) -> Tally<2> {
    match result {
        Stored::Failed => [Some(Counter::ToaStoreFailed), None],
        Stored::AlreadyHeld => [None, None],
        Stored::New(Family::V4) => [Some(Counter::ToaEntryAlloc), None],
        Stored::New(Family::V6) => [Some(Counter::ToaEntryAlloc), Some(Counter::Ip6AddressAlloc)],
    }
}

/// The counters when a connection whose record holds `family` (the raw
/// [`PeerRecord::family`] byte) closes; `None` when there is no record to
/// release.
#[inline(always)]
pub fn released(family: u8) -> Option<Tally<2>> {
    if family == 0 {
        None
    } else if family == Family::V6 as u8 {
        Some([Some(Counter::ToaEntryFree), Some(Counter::Ip6AddressFree)])
    } else {
        Some([Some(Counter::ToaEntryFree), None])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{COUNTERS, times};

    const C1: ClientAddr = ClientAddr {
        kind: 254,
        family: Family::V4,
        addr: [203, 0, 113, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        port: [0x10, 0x92],
    };
    const C2: ClientAddr = ClientAddr {
        kind: 254,
        family: Family::V4,
        addr: [198, 51, 100, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        port: [0, 80],
    };
    /// C1 in another kind: a different option.
    const C1_200: ClientAddr = ClientAddr { kind: 200, ..C1 };

    use Counter::*;
    use Scan::{Found, Malformed, None as NoOption};

    /// Asserts the outcome's counters are exactly `want` (as a multiset).
    fn assert_counters<const N: usize>(got: &Tally<N>, want: &[Counter], description: &str) {
        for (c, name) in COUNTERS {
            let expected = want.iter().filter(|w| **w == c).count();
            assert_eq!(times(got, c), expected, "{description}: counter {name} in {got:?}");
        }
    }

    // Readable names for the boolean inputs.
    const TRUSTED: bool = true;
    const UNTRUSTED: bool = false;
    const DATA_ON: bool = true;
    const DATA_OFF: bool = false;
    const PAYLOAD: bool = true;
    const BARE: bool = false;

    /// An expected outcome: the counters (as a multiset), the packet the
    /// client is stored from, the parse callback.
    struct Expect {
        counters: &'static [Counter],
        store: u8,
        later: Later,
    }

    const fn expect(counters: &'static [Counter], store: u8, later: Later) -> Expect {
        Expect { counters, store, later }
    }

    fn check(out: &Outcome, want: &Expect, description: &str) {
        assert_counters(&out.counters, want.counters, description);
        assert_eq!(out.store, want.store, "{description}: stored from");
        assert_eq!(out.later, want.later, "{description}: later packets");
    }

    /// A handshake whose SYN option (if any) is `C1`.
    struct HandshakeIn {
        syn: Syn,
        ack: Scan,
        ack_client: ClientAddr,
        capture_data: bool,
        trusted: bool,
    }

    const fn hs(syn: Syn, ack: Scan, ack_client: ClientAddr, capture_data: bool, trusted: bool) -> HandshakeIn {
        HandshakeIn { syn, ack, ack_client, capture_data, trusted }
    }

    struct HandshakeCase {
        description: &'static str,
        input: HandshakeIn,
        expect: Expect,
    }

    const HANDSHAKE_CASES: [HandshakeCase; 21] = {
        use Syn::{Off, Scanned, Unavailable};
        const fn case(description: &'static str, input: HandshakeIn, expect: Expect) -> HandshakeCase {
            HandshakeCase { description, input, expect }
        }
        const NONE: u8 = source::NONE;
        [
            case(
                "nothing anywhere: watch the packets up to the first data",
                hs(Off, NoOption, C1, DATA_ON, TRUSTED),
                expect(&[SynRecvSockNoToa], NONE, Later::Watch),
            ),
            case(
                "nothing anywhere, data capture off: later packets left alone",
                hs(Off, NoOption, C1, DATA_OFF, TRUSTED),
                expect(&[SynRecvSockNoToa], NONE, Later::Unchanged),
            ),
            case(
                "option in the ACK, trusted peer: stored from the ACK",
                hs(Off, Found, C1, DATA_ON, TRUSTED),
                expect(&[SynRecvSockToa], source::ACK, Later::Unchanged),
            ),
            case(
                "option in the ACK, data capture off: the same",
                hs(Off, Found, C1, DATA_OFF, TRUSTED),
                expect(&[SynRecvSockToa], source::ACK, Later::Unchanged),
            ),
            case(
                "option in the ACK, untrusted peer: counted, not stored, later packets not watched",
                hs(Off, Found, C1, DATA_ON, UNTRUSTED),
                expect(&[ToaUntrusted, SynRecvSockNoToa], NONE, Later::Unchanged),
            ),
            case(
                "malformed ACK: counted, later packets watched",
                hs(Off, Malformed, C1, DATA_ON, TRUSTED),
                expect(&[ToaMalformed, SynRecvSockNoToa], NONE, Later::Watch),
            ),
            case(
                "malformed ACK, data capture off",
                hs(Off, Malformed, C1, DATA_OFF, TRUSTED),
                expect(&[ToaMalformed, SynRecvSockNoToa], NONE, Later::Unchanged),
            ),
            case(
                "option only in the SYN: stored from the SYN",
                hs(Scanned(Found), NoOption, C1, DATA_ON, TRUSTED),
                expect(&[SynRecvSockToa, ToaFromSyn], source::SYN, Later::Unchanged),
            ),
            case(
                "option only in the SYN, untrusted peer",
                hs(Scanned(Found), NoOption, C1, DATA_ON, UNTRUSTED),
                expect(&[ToaUntrusted, SynRecvSockNoToa], NONE, Later::Unchanged),
            ),
            case(
                "same option in SYN and ACK: the SYN's, no conflict",
                hs(Scanned(Found), Found, C1, DATA_ON, TRUSTED),
                expect(&[SynRecvSockToa, ToaFromSyn], source::SYN, Later::Unchanged),
            ),
            case(
                "different options in SYN and ACK: the SYN's wins, conflict counted",
                hs(Scanned(Found), Found, C2, DATA_ON, TRUSTED),
                expect(&[SynRecvSockToa, ToaFromSyn, ToaConflict], source::SYN, Later::Unchanged),
            ),
            case(
                "the SYN's address in another kind in the ACK: a different option",
                hs(Scanned(Found), Found, C1_200, DATA_ON, TRUSTED),
                expect(&[SynRecvSockToa, ToaFromSyn, ToaConflict], source::SYN, Later::Unchanged),
            ),
            case(
                "different options, untrusted peer: conflict and untrusted",
                hs(Scanned(Found), Found, C2, DATA_ON, UNTRUSTED),
                expect(&[ToaConflict, ToaUntrusted, SynRecvSockNoToa], NONE, Later::Unchanged),
            ),
            case(
                "option in the SYN, malformed ACK: the SYN's, malformed counted",
                hs(Scanned(Found), Malformed, C1, DATA_ON, TRUSTED),
                expect(&[SynRecvSockToa, ToaFromSyn, ToaMalformed], source::SYN, Later::Unchanged),
            ),
            case(
                "malformed SYN, option in the ACK: the ACK's",
                hs(Scanned(Malformed), Found, C1, DATA_ON, TRUSTED),
                expect(&[ToaMalformed, SynRecvSockToa], source::ACK, Later::Unchanged),
            ),
            case(
                "malformed SYN and ACK: counted once per packet",
                hs(Scanned(Malformed), Malformed, C1, DATA_ON, TRUSTED),
                expect(&[ToaMalformed, ToaMalformed, SynRecvSockNoToa], NONE, Later::Watch),
            ),
            case(
                "SYN without option, option in the ACK",
                hs(Scanned(NoOption), Found, C1, DATA_ON, TRUSTED),
                expect(&[SynRecvSockToa], source::ACK, Later::Unchanged),
            ),
            case(
                "SYN and ACK without option",
                hs(Scanned(NoOption), NoOption, C1, DATA_ON, TRUSTED),
                expect(&[SynRecvSockNoToa], NONE, Later::Watch),
            ),
            case(
                "no saved SYN, option in the ACK: the ACK's, unavailable counted",
                hs(Unavailable, Found, C1, DATA_ON, TRUSTED),
                expect(&[ToaSynUnavailable, SynRecvSockToa], source::ACK, Later::Unchanged),
            ),
            case(
                "no saved SYN, no option",
                hs(Unavailable, NoOption, C1, DATA_ON, TRUSTED),
                expect(&[ToaSynUnavailable, SynRecvSockNoToa], NONE, Later::Watch),
            ),
            case(
                "no saved SYN, option in the ACK from an untrusted peer",
                hs(Unavailable, Found, C1, DATA_ON, UNTRUSTED),
                expect(&[ToaSynUnavailable, ToaUntrusted, SynRecvSockNoToa], NONE, Later::Unchanged),
            ),
        ]
    };

    #[test]
    fn handshake_table() {
        for c in &HANDSHAKE_CASES {
            let i = &c.input;
            let h = Handshake {
                syn: i.syn,
                syn_client: &C1,
                ack: i.ack,
                ack_client: &i.ack_client,
                capture_data: i.capture_data,
                trusted: i.trusted,
            };
            check(&handshake(&h), &c.expect, c.description);
        }
    }

    const SYNS: [Syn; 5] =
        [Syn::Off, Syn::Unavailable, Syn::Scanned(NoOption), Syn::Scanned(Found), Syn::Scanned(Malformed)];
    const SCANS: [Scan; 3] = [NoOption, Found, Malformed];

    #[test]
    fn handshake_reads_trust_only_when_it_needs_it() {
        for syn in SYNS {
            for ack in SCANS {
                for ack_client in [C1, C2] {
                    for capture_data in [DATA_OFF, DATA_ON] {
                        let h = |trusted| Handshake {
                            syn,
                            syn_client: &C1,
                            ack,
                            ack_client: &ack_client,
                            capture_data,
                            trusted,
                        };
                        let (yes, no) = (handshake(&h(TRUSTED)), handshake(&h(UNTRUSTED)));
                        let taken = matches!(syn, Syn::Scanned(Found)) || ack == Found;
                        assert_eq!(h(TRUSTED).needs_trust(), taken, "{syn:?} {ack:?}");
                        if !taken {
                            assert_eq!(yes, no, "{syn:?} {ack:?}: trust does not matter");
                        }
                        // Every connection is counted once, as with or without a client.
                        let with = times(&yes.counters, SynRecvSockToa);
                        let without = times(&yes.counters, SynRecvSockNoToa);
                        assert_eq!(with + without, 1, "{syn:?} {ack:?}");
                        assert_eq!(with == 1, yes.store != source::NONE, "{syn:?} {ack:?}");
                    }
                }
            }
        }
    }

    const fn pk(bytes_received: u64, option: Scan, has_payload: bool, trusted: bool) -> Packet {
        Packet { bytes_received, option, has_payload, trusted }
    }

    struct PacketCase {
        description: &'static str,
        input: Packet,
        expect: Expect,
    }

    const PACKET_CASES: [PacketCase; 11] = {
        const fn case(description: &'static str, input: Packet, expect: Expect) -> PacketCase {
            PacketCase { description, input, expect }
        }
        const NONE: u8 = source::NONE;
        [
            case(
                "data arrived earlier without an option: stop, whatever this packet holds",
                pk(100, Found, PAYLOAD, TRUSTED),
                expect(&[], NONE, Later::Stop),
            ),
            case(
                "data arrived earlier, a bare ACK now: stop",
                pk(1, NoOption, BARE, TRUSTED),
                expect(&[], NONE, Later::Stop),
            ),
            case(
                "option in the first data packet, trusted: stored",
                pk(0, Found, PAYLOAD, TRUSTED),
                expect(&[ToaFromData], source::DATA, Later::Stop),
            ),
            case(
                "option in a bare ACK (retransmitted handshake ACK), trusted: stored",
                pk(0, Found, BARE, TRUSTED),
                expect(&[ToaFromData], source::DATA, Later::Stop),
            ),
            case(
                "option in the first data packet, untrusted: counted, stop",
                pk(0, Found, PAYLOAD, UNTRUSTED),
                expect(&[ToaUntrusted], NONE, Later::Stop),
            ),
            case(
                "option in a bare ACK, untrusted: counted, stop",
                pk(0, Found, BARE, UNTRUSTED),
                expect(&[ToaUntrusted], NONE, Later::Stop),
            ),
            case(
                "malformed options in the first data packet: counted, stop",
                pk(0, Malformed, PAYLOAD, TRUSTED),
                expect(&[ToaMalformed], NONE, Later::Stop),
            ),
            case(
                "malformed options in a bare ACK: counted, keep looking",
                pk(0, Malformed, BARE, TRUSTED),
                expect(&[ToaMalformed], NONE, Later::Unchanged),
            ),
            case(
                "first data packet without option: stop",
                pk(0, NoOption, PAYLOAD, TRUSTED),
                expect(&[], NONE, Later::Stop),
            ),
            case(
                "bare ACK without option: keep looking",
                pk(0, NoOption, BARE, TRUSTED),
                expect(&[], NONE, Later::Unchanged),
            ),
            case(
                "bare ACK without option from an untrusted peer: keep looking",
                pk(0, NoOption, BARE, UNTRUSTED),
                expect(&[], NONE, Later::Unchanged),
            ),
        ]
    };

    #[test]
    fn packet_table() {
        for c in &PACKET_CASES {
            check(&packet(&c.input), &c.expect, c.description);
        }
    }

    #[test]
    fn packet_reads_options_and_trust_only_when_it_needs_them() {
        for bytes_received in [0, 1, 1 << 40] {
            for option in SCANS {
                for has_payload in [BARE, PAYLOAD] {
                    let reference = packet(&pk(bytes_received, option, has_payload, TRUSTED));
                    if !packet_needs_scan(bytes_received) {
                        for other in SCANS {
                            let out = packet(&pk(bytes_received, other, has_payload, UNTRUSTED));
                            assert_eq!(out, reference, "{bytes_received} {option:?}: options do not matter");
                        }
                    }
                    if !pk(bytes_received, option, has_payload, TRUSTED).needs_trust() {
                        let out = packet(&pk(bytes_received, option, has_payload, UNTRUSTED));
                        assert_eq!(out, reference, "{bytes_received} {option:?}: trust does not matter");
                    }
                    // A packet with payload always ends the search.
                    if has_payload {
                        assert_eq!(reference.later, Later::Stop, "{bytes_received} {option:?}");
                    }
                    // The callback is never turned on again from here.
                    assert_ne!(reference.later, Later::Watch);
                }
            }
        }
    }

    #[test]
    fn records_keep_the_transport_port_when_the_option_has_none() {
        let transport = [0xc3, 0x50];
        let r = record(&C1, transport, source::ACK, 77);
        assert_eq!(r.port, C1.port, "the option's port");
        assert_eq!(r.addr, C1.addr);
        assert_eq!(r.family(), Some(Family::V4));
        assert_eq!((r.kind, r.source, r.stored_s()), (254, source::ACK, 77));
        let cdn = ClientAddr { kind: 28, family: Family::V6, addr: [0x20; 16], port: [0, 0] };
        let r = record(&cdn, transport, source::SYN, 1);
        assert_eq!(r.port, transport, "no port in the option: the transport port");
        assert_eq!(r.family(), Some(Family::V6));
    }

    #[test]
    fn store_and_release_counters() {
        let cases: [(&str, Stored, &[Counter]); 4] = [
            ("no storage", Stored::Failed, &[ToaStoreFailed]),
            ("first client stays", Stored::AlreadyHeld, &[]),
            ("IPv4 stored", Stored::New(Family::V4), &[ToaEntryAlloc]),
            ("IPv6 stored", Stored::New(Family::V6), &[ToaEntryAlloc, Ip6AddressAlloc]),
        ];
        for (description, result, want) in cases {
            assert_counters(&stored(result), want, description);
        }
        assert_eq!(released(0), None, "empty record: nothing to release");
        assert_counters(&released(Family::V4 as u8).expect("a record"), &[ToaEntryFree], "IPv4 released");
        assert_counters(
            &released(Family::V6 as u8).expect("a record"),
            &[ToaEntryFree, Ip6AddressFree],
            "IPv6 released",
        );
    }
}
