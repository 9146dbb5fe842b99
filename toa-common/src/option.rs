//! The TOA option codec: finding the client address among a segment's TCP
//! options, and building the option a forwarder writes.
//!
//! Rules (docs/design.md §2): skip NOPs, stop at EOL; take the first option whose
//! (kind, length) is accepted and stop there; a length below 2 or an option
//! running past the options area ends parsing as malformed; an accepted kind
//! with a length that is not accepted is skipped by its length (and reported
//! as malformed if nothing valid follows); kind 254 in a SYN whose payload
//! starts with 0xF989 is experimental TCP Fast Open, not TOA.
//!
//! [`parse_options`] works on a fixed 64-byte buffer and masks every index so
//! that it compiles to bounds-check-free code the eBPF verifier accepts.

use crate::format::{Formats, Shape};
use crate::peer::Family;

/// TCP option kind: end of option list.
pub const TCPOPT_EOL: u8 = 0;
/// TCP option kind: no-operation.
pub const TCPOPT_NOP: u8 = 1;
/// Most option bytes a TCP header can carry.
pub const MAX_OPTIONS_LEN: usize = 40;
/// Size of the buffer [`parse_options`] reads (a power of two, for masking).
pub const OPTION_BUF_LEN: usize = 64;
const MASK: usize = OPTION_BUF_LEN - 1;
/// Kind 254 in a SYN with this 16-bit magic is TCP Fast Open (RFC 7413 experimental form).
pub const TFO_EXP_MAGIC: [u8; 2] = [0xF9, 0x89];
/// The experimental kind TFO shares with TOA.
pub const TCPOPT_EXP: u8 = 254;

/// A decoded client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    /// The option kind it was found in.
    pub kind: u8,
    /// Address family.
    pub family: Family,
    /// Address bytes in network order; IPv4 uses the first 4.
    pub addr: [u8; 16],
    /// Port bytes in network order; `[0, 0]` for formats without a port.
    pub port: [u8; 2],
}

impl ClientAddr {
    /// A placeholder.
    pub const EMPTY: ClientAddr = ClientAddr { kind: 0, family: Family::V4, addr: [0; 16], port: [0; 2] };
}

/// What [`scan_options`] found.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    /// No TOA option.
    None = 0,
    /// An accepted option, written to the out parameter.
    Found = 1,
    /// See [`Parsed::Malformed`].
    Malformed = 2,
}

/// What a segment's options say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No TOA option.
    None,
    /// The first accepted option.
    Found(ClientAddr),
    /// No accepted option, and the option list was broken (length < 2,
    /// running past the end) or held an accepted kind with a wrong length.
    Malformed,
}

/// Parses the options area `buf[..len]` (`len` is clamped to 40).
///
/// `in_syn` tells whether the segment is a SYN (for the TFO exception).
#[inline(always)]
pub fn parse_options(buf: &[u8; OPTION_BUF_LEN], len: usize, formats: &Formats, in_syn: bool) -> Parsed {
    let mut out = ClientAddr::EMPTY;
    match scan_options(buf, len, formats, in_syn, &mut out) {
        Scan::Found => Parsed::Found(out),
        Scan::Malformed => Parsed::Malformed,
        Scan::None => Parsed::None,
    }
}

/// Kind of the Timestamps option (RFC 7323).
pub const TCPOPT_TIMESTAMPS: u8 = 8;
/// Length of the Timestamps option.
pub const TIMESTAMPS_LEN: u8 = 10;
/// How Linux lays out the options of a segment that carries only timestamps:
/// two NOPs, then the Timestamps option (12 bytes in all).
pub const TIMESTAMPS_ONLY: [u8; 4] = [TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMPS, TIMESTAMPS_LEN];
/// Bytes of options that hold only NOP, NOP, Timestamps.
pub const TIMESTAMPS_ONLY_LEN: usize = 12;

/// Whether the `len` bytes of options in `buf` are NOP, NOP, Timestamps and
/// nothing else — the handshake ACK of almost every Linux client without an
/// option of ours — while no format of the Timestamps' kind is configured.
/// Nothing else fits in those 12 bytes, so [`scan_options`] would find
/// nothing (not even a malformed option of a known kind): the eBPF program
/// skips the scan for them.
#[inline(always)]
pub fn only_timestamps(buf: &[u8; OPTION_BUF_LEN], len: usize, formats: &Formats) -> bool {
    len == TIMESTAMPS_ONLY_LEN
        && buf[0] == TIMESTAMPS_ONLY[0]
        && buf[1] == TIMESTAMPS_ONLY[1]
        && buf[2] == TIMESTAMPS_ONLY[2]
        && buf[3] == TIMESTAMPS_ONLY[3]
        && !formats.knows_kind(TCPOPT_TIMESTAMPS)
}

// No accepted shape has the Timestamps option's length, which is what makes
// skipping the scan for [`only_timestamps`] options exact.
const _: () = assert!(crate::format::Shape::from_len(TIMESTAMPS_LEN as usize).is_none());

/// [`parse_options`] with plain types only (a fieldless result and an out
/// parameter), as the eBPF programs call it.
///
/// The walk visits every byte position once, in order, with a small state
/// machine (expecting a kind, a length, or skipping a payload). Each step
/// reads `buf` at a position the verifier knows exactly, which keeps the
/// eBPF verifier's work linear in the 40 positions.
#[inline(never)]
pub fn scan_options(
    buf: &[u8; OPTION_BUF_LEN],
    len: usize,
    formats: &Formats,
    in_syn: bool,
    out: &mut ClientAddr,
) -> Scan {
    const EXPECT_KIND: u8 = 0;
    const EXPECT_LEN: u8 = 1;
    const IN_PAYLOAD: u8 = 2;
    let len = if len > MAX_OPTIONS_LEN { MAX_OPTIONS_LEN } else { len };
    let mut expect = EXPECT_KIND;
    let mut kind = 0u8;
    let mut left = 0usize;
    let mut bad_length = false;
    let mut pos = 0usize;
    while pos < MAX_OPTIONS_LEN {
        if pos >= len {
            break;
        }
        let byte = buf[pos & MASK];
        if expect == EXPECT_KIND {
            if byte == TCPOPT_EOL {
                break;
            }
            if byte != TCPOPT_NOP {
                kind = byte;
                expect = EXPECT_LEN;
            }
        } else if expect == EXPECT_LEN {
            // The option started at the previous byte.
            let at = pos - 1;
            let olen = byte as usize;
            if olen < 2 || at + olen > len {
                return Scan::Malformed;
            }
            // TCP Fast Open (experimental form) of any length in a SYN is not TOA.
            let is_tfo = in_syn
                && kind == TCPOPT_EXP
                && olen >= 4
                && buf[(at + 2) & MASK] == TFO_EXP_MAGIC[0]
                && buf[(at + 3) & MASK] == TFO_EXP_MAGIC[1];
            if !is_tfo && formats.knows_kind(kind) {
                match formats.accepts(kind, olen) {
                    Some(shape) => {
                        *out = decode(buf, at & MASK, kind, shape);
                        return Scan::Found;
                    }
                    None => bad_length = true,
                }
            }
            left = olen - 2;
            expect = if left == 0 { EXPECT_KIND } else { IN_PAYLOAD };
        } else {
            left -= 1;
            if left == 0 {
                expect = EXPECT_KIND;
            }
        }
        pos += 1;
    }
    if expect == EXPECT_LEN {
        // A kind byte with no length byte after it.
        return Scan::Malformed;
    }
    if bad_length { Scan::Malformed } else { Scan::None }
}

#[inline(always)]
fn decode(buf: &[u8; OPTION_BUF_LEN], at: usize, kind: u8, shape: Shape) -> ClientAddr {
    let mut addr = [0u8; 16];
    let mut port = [0u8; 2];
    let (family, addr_at, addr_len) = match shape {
        Shape::PortV4 => (Family::V4, at + 4, 4),
        Shape::PortV6 => (Family::V6, at + 4, 16),
        Shape::VersionV4 => (Family::V4, at + 3, 4),
        Shape::VersionV6 => (Family::V6, at + 3, 16),
    };
    if matches!(shape, Shape::PortV4 | Shape::PortV6) {
        port = [buf[(at + 2) & MASK], buf[(at + 3) & MASK]];
    }
    let mut k = 0;
    while k < 16 {
        if k < addr_len {
            addr[k] = buf[(addr_at + k) & MASK];
        }
        k += 1;
    }
    ClientAddr { kind, family, addr, port }
}

/// Parses an options area given as a slice (host convenience over [`parse_options`]).
pub fn parse_slice(options: &[u8], formats: &Formats, in_syn: bool) -> Parsed {
    let mut buf = [0u8; OPTION_BUF_LEN];
    let n = if options.len() > MAX_OPTIONS_LEN { MAX_OPTIONS_LEN } else { options.len() };
    buf[..n].copy_from_slice(&options[..n]);
    parse_options(&buf, n, formats, in_syn)
}

/// Most bytes an encoded option takes.
pub const MAX_ENCODED_LEN: usize = 20;

/// Builds the option bytes for `addr` in `kind` with the given shape.
///
/// Returns the buffer and the number of bytes used (the shape's length).
/// IPv4 shapes take the first 4 address bytes; version shapes write version 1
/// and no port.
pub fn encode(kind: u8, shape: Shape, addr: &[u8; 16], port: [u8; 2]) -> ([u8; MAX_ENCODED_LEN], usize) {
    let mut out = [0u8; MAX_ENCODED_LEN];
    let len = shape.wire_len() as usize;
    out[0] = kind;
    out[1] = shape.wire_len();
    match shape {
        Shape::PortV4 => {
            out[2..4].copy_from_slice(&port);
            out[4..8].copy_from_slice(&addr[..4]);
        }
        Shape::PortV6 => {
            out[2..4].copy_from_slice(&port);
            out[4..20].copy_from_slice(addr);
        }
        Shape::VersionV4 => {
            out[2] = 1;
            out[3..7].copy_from_slice(&addr[..4]);
        }
        Shape::VersionV6 => {
            out[2] = 1;
            out[3..19].copy_from_slice(addr);
        }
    }
    (out, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;

    const V4: [u8; 4] = [203, 0, 113, 7];
    const V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];
    const PORT: [u8; 2] = [0x10, 0x92]; // 4242

    fn v4(kind: u8) -> ClientAddr {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&V4);
        ClientAddr { kind, family: Family::V4, addr, port: PORT }
    }
    fn v6(kind: u8) -> ClientAddr {
        ClientAddr { kind, family: Family::V6, addr: V6, port: PORT }
    }
    fn opt4(kind: u8) -> [u8; 8] {
        [kind, 8, PORT[0], PORT[1], V4[0], V4[1], V4[2], V4[3]]
    }
    fn opt6(kind: u8) -> [u8; 20] {
        let mut o = [0u8; 20];
        o[0] = kind;
        o[1] = 20;
        o[2..4].copy_from_slice(&PORT);
        o[4..].copy_from_slice(&V6);
        o
    }
    fn cat(parts: &[&[u8]]) -> ([u8; 64], usize) {
        let mut b = [0u8; 64];
        let mut n = 0;
        for p in parts {
            b[n..n + p.len()].copy_from_slice(p);
            n += p.len();
        }
        (b, n)
    }

    struct Case {
        description: &'static str,
        options: &'static [&'static [u8]],
        in_syn: bool,
        want: fn() -> Parsed,
    }

    const MSS: &[u8] = &[2, 4, 0x05, 0xb4];
    const SACKOK: &[u8] = &[4, 2];
    const TS: &[u8] = &[8, 10, 0, 0, 0, 1, 0, 0, 0, 0];
    const NOP: &[u8] = &[1];
    const EOL: &[u8] = &[0];
    const O254: &[u8] = &[254, 8, 0x10, 0x92, 203, 0, 113, 7];
    const O200: &[u8] = &[200, 8, 0x10, 0x92, 203, 0, 113, 7];
    const O253_8: &[u8] = &[253, 8, 0x10, 0x92, 203, 0, 113, 7];
    const O254_OTHER: &[u8] = &[254, 8, 0, 80, 198, 51, 100, 9];
    const O254_TFO: &[u8] = &[254, 8, 0xF9, 0x89, 1, 2, 3, 4];
    const O254_9: &[u8] = &[254, 9, 0x10, 0x92, 203, 0, 113, 7, 0];
    const O254_7: &[u8] = &[254, 7, 0x10, 0x92, 203, 0, 113];
    const O254_21: &[u8] = &[254, 21, 0x10, 0x92, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const LEN0: &[u8] = &[254, 0, 0, 0];
    const LEN1: &[u8] = &[254, 1, 0, 0];
    const UNKNOWN_LEN0: &[u8] = &[30, 0];
    const PAST_END: &[u8] = &[254, 8, 0x10, 0x92, 203];
    const LONE_KIND: &[u8] = &[254];

    fn cases() -> [Case; 22] {
        [
            Case { description: "empty options", options: &[], in_syn: false, want: || Parsed::None },
            Case { description: "254/8 alone", options: &[O254], in_syn: false, want: || Parsed::Found(v4(254)) },
            Case {
                description: "200/8 alone (Tencent)",
                options: &[O200],
                in_syn: false,
                want: || Parsed::Found(v4(200)),
            },
            Case {
                description: "254/8 after timestamps and NOPs",
                options: &[NOP, NOP, TS, O254],
                in_syn: false,
                want: || Parsed::Found(v4(254)),
            },
            Case {
                description: "254/8 in a SYN after MSS and SACK-perm",
                options: &[MSS, SACKOK, O254],
                in_syn: true,
                want: || Parsed::Found(v4(254)),
            },
            Case {
                description: "253/8 (ucloud) is not a default format: a wrong length for 253",
                options: &[O253_8],
                in_syn: false,
                want: || Parsed::Malformed,
            },
            Case {
                description: "first of two options wins",
                options: &[O254, O254_OTHER],
                in_syn: false,
                want: || Parsed::Found(v4(254)),
            },
            Case {
                description: "option after EOL is ignored",
                options: &[EOL, O254],
                in_syn: false,
                want: || Parsed::None,
            },
            Case {
                description: "TFO magic in a SYN is not TOA",
                options: &[O254_TFO],
                in_syn: true,
                want: || Parsed::None,
            },
            Case {
                description: "TFO magic outside a SYN is an ordinary 254/8",
                options: &[O254_TFO],
                in_syn: false,
                want: || {
                    Parsed::Found(ClientAddr {
                        kind: 254,
                        family: Family::V4,
                        addr: [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                        port: [0xF9, 0x89],
                    })
                },
            },
            Case {
                description: "TFO then TOA in a SYN: TOA taken",
                options: &[O254_TFO, O254],
                in_syn: true,
                want: || Parsed::Found(v4(254)),
            },
            Case {
                description: "254/9 is skipped by its length and reported",
                options: &[O254_9],
                in_syn: false,
                want: || Parsed::Malformed,
            },
            Case {
                description: "254/9 then a valid 254/8: the valid one",
                options: &[O254_9, O254],
                in_syn: false,
                want: || Parsed::Found(v4(254)),
            },
            Case {
                description: "254/7 is a wrong length",
                options: &[O254_7],
                in_syn: false,
                want: || Parsed::Malformed,
            },
            Case {
                description: "254/21 is a wrong length",
                options: &[O254_21],
                in_syn: false,
                want: || Parsed::Malformed,
            },
            Case {
                description: "length 0 ends parsing",
                options: &[LEN0, O254],
                in_syn: false,
                want: || Parsed::Malformed,
            },
            Case {
                description: "length 1 ends parsing",
                options: &[LEN1, O254],
                in_syn: false,
                want: || Parsed::Malformed,
            },
            Case {
                description: "unknown kind with length 0",
                options: &[UNKNOWN_LEN0, O254],
                in_syn: false,
                want: || Parsed::Malformed,
            },
            Case {
                description: "option running past the header",
                options: &[NOP, PAST_END],
                in_syn: false,
                want: || Parsed::Malformed,
            },
            Case {
                description: "a lone kind byte at the end",
                options: &[NOP, NOP, NOP, LONE_KIND],
                in_syn: false,
                want: || Parsed::Malformed,
            },
            Case { description: "timestamps only", options: &[NOP, NOP, TS], in_syn: false, want: || Parsed::None },
            Case {
                description: "NOP padding only",
                options: &[NOP, NOP, NOP, NOP],
                in_syn: false,
                want: || Parsed::None,
            },
        ]
    }

    #[test]
    fn table_of_cases() {
        let formats = Formats::default_table();
        for case in cases() {
            let (buf, n) = cat(case.options);
            assert_eq!(parse_options(&buf, n, &formats, case.in_syn), (case.want)(), "{}", case.description);
        }
    }

    #[test]
    fn ipv6_formats() {
        let formats = Formats::default_table();
        for kind in [253u8, 254] {
            let o = opt6(kind);
            let (buf, n) = cat(&[NOP, NOP, &o]);
            assert_eq!(parse_options(&buf, n, &formats, false), Parsed::Found(v6(kind)), "kind {kind}");
        }
        // 20 bytes of IPv6 TOA exactly fill a SYN next to MSS, SACK-perm, timestamps, window scale.
        let o = opt6(254);
        let (buf, n) = cat(&[MSS, SACKOK, TS, NOP, &[3, 3, 7], &o]);
        assert_eq!(n, 40);
        assert_eq!(parse_options(&buf, n, &formats, true), Parsed::Found(v6(254)));
        // 200/20 is not a default format.
        let mut o = opt6(200);
        o[0] = 200;
        assert_eq!(parse_slice(&o, &formats, false), Parsed::Malformed);
    }

    #[test]
    fn configured_formats() {
        let formats = Formats::from_list(&[
            Format::parse("253/8").expect("valid"),
            Format::parse("28/7").expect("valid"),
            Format::parse("28/19").expect("valid"),
        ]);
        assert_eq!(parse_slice(O253_8, &formats, false), Parsed::Found(v4(253)));
        assert_eq!(parse_slice(O254, &formats, false), Parsed::None, "254 not configured");
        let cdn4 = [28u8, 7, 1, 203, 0, 113, 7];
        let mut want = v4(28);
        want.port = [0, 0];
        assert_eq!(parse_slice(&cdn4, &formats, true), Parsed::Found(want));
        let mut cdn6 = [0u8; 19];
        cdn6[..3].copy_from_slice(&[28, 19, 1]);
        cdn6[3..].copy_from_slice(&V6);
        let mut want = v6(28);
        want.port = [0, 0];
        assert_eq!(parse_slice(&cdn6, &formats, true), Parsed::Found(want));
        // User Timeout (28/4) is not Alibaba CDN TOA.
        assert_eq!(parse_slice(&[28, 4, 0x80, 0x10], &formats, false), Parsed::Malformed);
    }

    #[test]
    fn tfo_of_any_length_in_a_syn_is_not_toa() {
        // Found by the fuzzer: a TFO cookie request (254/4) or a TFO option whose
        // length is not an accepted 254 length was reported as Malformed.
        let formats = Formats::default_table();
        let request: &[u8] = &[254, 4, 0xF9, 0x89];
        let cookie12: &[u8] = &[254, 12, 0xF9, 0x89, 1, 2, 3, 4, 5, 6, 7, 8];
        for tfo in [request, cookie12] {
            let (buf, n) = cat(&[MSS, tfo]);
            assert_eq!(parse_options(&buf, n, &formats, true), Parsed::None, "{tfo:?}");
            let (buf, n) = cat(&[MSS, tfo, O254]);
            assert_eq!(parse_options(&buf, n, &formats, true), Parsed::Found(v4(254)), "{tfo:?} then TOA");
            // Outside a SYN it is an ordinary 254 with a wrong length.
            let (buf, n) = cat(&[MSS, tfo]);
            assert_eq!(parse_options(&buf, n, &formats, false), Parsed::Malformed, "{tfo:?} not in a SYN");
        }
    }

    #[test]
    fn length_beyond_40_is_clamped() {
        let formats = Formats::default_table();
        let mut buf = [1u8; 64]; // NOPs
        buf[36..44].copy_from_slice(&opt4(254));
        assert_eq!(parse_options(&buf, 64, &formats, false), Parsed::Malformed, "runs past byte 40");
        buf[30..38].copy_from_slice(&opt4(254));
        assert_eq!(parse_options(&buf, 64, &formats, false), Parsed::Found(v4(254)));
    }

    #[test]
    fn encode_round_trips_every_shape() {
        let formats = Formats::from_list(&[
            Format::parse("254/8").expect("valid"),
            Format::parse("253/20").expect("valid"),
            Format::parse("28/7").expect("valid"),
            Format::parse("28/19").expect("valid"),
        ]);
        let mut a4 = [0u8; 16];
        a4[..4].copy_from_slice(&V4);
        let cases = [
            (254, Shape::PortV4, a4, PORT, Family::V4),
            (253, Shape::PortV6, V6, PORT, Family::V6),
            (28, Shape::VersionV4, a4, [0, 0], Family::V4),
            (28, Shape::VersionV6, V6, [0, 0], Family::V6),
        ];
        for (kind, shape, addr, port, family) in cases {
            let (bytes, n) = encode(kind, shape, &addr, PORT);
            assert_eq!(n, shape.wire_len() as usize);
            assert_eq!(bytes[0], kind);
            assert_eq!(bytes[1] as usize, n);
            assert_eq!(
                parse_slice(&bytes[..n], &formats, false),
                Parsed::Found(ClientAddr { kind, family, addr, port }),
                "{kind}/{n}"
            );
        }
        assert_eq!(&encode(254, Shape::PortV4, &a4, PORT).0[..8], &opt4(254));
    }

    #[test]
    fn timestamps_only_options_are_recognised_and_hold_nothing_for_other_kinds() {
        let ts = [TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMPS, TIMESTAMPS_LEN, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7];
        let (buf, len) = cat(&[&ts]);
        assert!(only_timestamps(&buf, len, &Formats::default_table()));
        // Every kind but the Timestamps' accepted with every shape: the scan finds nothing either.
        let mut all = Formats::EMPTY;
        for kind in (2..=255u8).filter(|k| *k != TCPOPT_TIMESTAMPS) {
            for shape in crate::format::Shape::ALL {
                all.insert(Format { kind, shape });
            }
        }
        assert!(only_timestamps(&buf, len, &all));
        let mut out = ClientAddr::EMPTY;
        assert_eq!(scan_options(&buf, len, &all, false, &mut out), Scan::None);
        assert_eq!(scan_options(&buf, len, &all, true, &mut out), Scan::None);
    }

    #[test]
    fn timestamps_are_scanned_when_their_kind_is_a_configured_format() {
        let ts = [TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMPS, TIMESTAMPS_LEN, 1, 2, 3, 4, 5, 6, 7, 8];
        let (buf, len) = cat(&[&ts]);
        let formats = Formats::from_list(&[Format::new(TCPOPT_TIMESTAMPS, 8).expect("8/8 is a format")]);
        assert!(!only_timestamps(&buf, len, &formats));
        // What the scan says then: a known kind with a length no configured shape has.
        let mut out = ClientAddr::EMPTY;
        assert_eq!(scan_options(&buf, len, &formats, false, &mut out), Scan::Malformed);
    }

    #[test]
    fn options_that_are_not_exactly_timestamps_are_scanned() {
        let f = Formats::default_table();
        let ts = [TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMPS, TIMESTAMPS_LEN, 1, 2, 3, 4, 5, 6, 7, 8];
        // Timestamps then a TOA option (a translated connection's ACK).
        let (buf, len) = cat(&[&ts, &opt4(254)]);
        assert!(!only_timestamps(&buf, len, &f));
        // 12 bytes of other layouts.
        let (buf, len) = cat(&[&opt4(254), &[TCPOPT_NOP; 4]]);
        assert!(!only_timestamps(&buf, len, &f));
        let (buf, len) = cat(&[&[TCPOPT_TIMESTAMPS, TIMESTAMPS_LEN, 1, 2, 3, 4, 5, 6, 7, 8, TCPOPT_NOP, TCPOPT_NOP]]);
        assert!(!only_timestamps(&buf, len, &f));
        // The timestamps' head with other lengths.
        let (buf, _) = cat(&[&ts]);
        for other in [0, 4, 8, 16, 20, 40] {
            assert!(!only_timestamps(&buf, other, &f), "length {other}");
        }
    }
}
