//! Fuzz target for the TOA option codec (`toa_common::option`).
//!
//! Input layout:
//!
//! * byte 0: flags. Bit 0: the segment is a SYN (`in_syn`). Bit 1: use a
//!   custom format table described by the following bytes instead of the
//!   default one.
//! * if bit 1 is set: one count byte (`count % 5` formats, so 0..=4, where 0
//!   gives an empty table), then `count` pairs `(kind, sel)`. `sel < 4` picks
//!   the total option length 8, 20, 7 or 19; any other `sel` is taken as a raw
//!   length (so that refused formats are exercised too).
//! * the rest: the TCP options bytes (at most 64 are used).
//!
//! Properties checked, for every `len` in `0..=64` and a few larger ones:
//!
//! (a) `parse_options` never panics, whatever `len` (also `len > 40`);
//! (b) it returns the same `Parsed` as the reference parser below, an
//!     independent, straightforward reading of the rules at the top of
//!     `option.rs`, on `buf[..len]`;
//! (c) when the result is `Found`, `encode` with the shape of the option's
//!     length gives back exactly the option's bytes at the first accepted
//!     position (except the version byte of the version shapes, which the
//!     codec does not keep; see `check_found`);
//! (d) `parse_slice(x)` equals `parse_options` on `x` zero-padded to 64 bytes,
//!     for every prefix `x` of the options.
//!
//! `scan_options` (the eBPF entry point) must give the same answer, and on
//! `Found` it must overwrite every field of an `out` that held stale bytes.
//!
//! Format construction is also checked against the reference: `Format::new`
//! accepts exactly kinds >= 2 with lengths 7, 8, 19, 20, and `Format` prints
//! and parses back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use toa_common::format::{Format, Formats, Shape};
use toa_common::option::{ClientAddr, OPTION_BUF_LEN, Parsed, Scan, encode, parse_options, parse_slice, scan_options};
use toa_common::peer::Family;

/// The option lengths that have a payload layout, indexed by the selector.
const LAYOUT_LENS: [u8; 4] = [8, 20, 7, 19];

/// The default formats, written out independently of `format.rs`.
const REF_DEFAULTS: [(u8, u8); 4] = [(254, 8), (200, 8), (253, 20), (254, 20)];

// ---------------------------------------------------------------------------
// Reference parser: plain slices, ordinary indexing and `get()`.
// ---------------------------------------------------------------------------

/// Reference result: the parse result plus, when found, where the option
/// starts and its total length.
#[derive(Debug, PartialEq, Eq)]
struct RefParsed {
    parsed: Parsed,
    found_at: Option<(usize, usize)>,
}

/// Decodes an accepted option (`opt` is the whole option, kind and length included).
fn ref_decode(opt: &[u8]) -> ClientAddr {
    let kind = opt[0];
    let mut addr = [0u8; 16];
    let mut port = [0u8; 2];
    let family = match opt.len() {
        // kind, len, port(2), ipv4(4)
        8 => {
            port.copy_from_slice(&opt[2..4]);
            addr[..4].copy_from_slice(&opt[4..8]);
            Family::V4
        }
        // kind, len, port(2), ipv6(16)
        20 => {
            port.copy_from_slice(&opt[2..4]);
            addr.copy_from_slice(&opt[4..20]);
            Family::V6
        }
        // kind, len, version(1), ipv4(4)
        7 => {
            addr[..4].copy_from_slice(&opt[3..7]);
            Family::V4
        }
        // kind, len, version(1), ipv6(16)
        19 => {
            addr.copy_from_slice(&opt[3..19]);
            Family::V6
        }
        n => panic!("reference: no layout for length {n}"),
    };
    ClientAddr { kind, family, addr, port }
}

/// The rules (option.rs, docs/design.md §2): skip NOPs, stop at EOL; take the first
/// option whose (kind, length) is accepted and stop there; a length below 2
/// or an option running past the options area ends parsing as malformed; an
/// accepted kind with a length that is not accepted is skipped by its length
/// (and reported as malformed if nothing valid follows); kind 254 in a SYN
/// whose payload starts with 0xF989 is experimental TCP Fast Open, not TOA.
/// The options area is at most 40 bytes.
fn ref_parse(options: &[u8], accepted: &[(u8, u8)], in_syn: bool) -> RefParsed {
    let area = &options[..options.len().min(40)];
    let malformed = RefParsed { parsed: Parsed::Malformed, found_at: None };
    let mut wrong_length_seen = false;
    let mut i = 0usize;
    while let Some(&kind) = area.get(i) {
        if kind == 0 {
            break; // EOL
        }
        if kind == 1 {
            i += 1; // NOP
            continue;
        }
        let Some(&len) = area.get(i + 1) else {
            return malformed; // no room for the length byte
        };
        let len = len as usize;
        if len < 2 {
            return malformed;
        }
        let Some(opt) = area.get(i..i + len) else {
            return malformed; // runs past the options area
        };
        let payload = &opt[2..];
        let is_tfo = in_syn && kind == 254 && payload.starts_with(&[0xF9, 0x89]);
        if !is_tfo {
            let kind_known = accepted.iter().any(|&(k, _)| k == kind);
            let pair_ok = accepted.iter().any(|&(k, l)| k == kind && l as usize == len);
            if pair_ok {
                return RefParsed { parsed: Parsed::Found(ref_decode(opt)), found_at: Some((i, len)) };
            }
            if kind_known {
                wrong_length_seen = true;
            }
        }
        i += len;
    }
    let parsed = if wrong_length_seen { Parsed::Malformed } else { Parsed::None };
    RefParsed { parsed, found_at: None }
}

// ---------------------------------------------------------------------------
// Input decoding.
// ---------------------------------------------------------------------------

/// The total option length of a shape (written here rather than taken from `format.rs`).
fn shape_len(shape: Shape) -> u8 {
    match shape {
        Shape::PortV4 => 8,
        Shape::PortV6 => 20,
        Shape::VersionV4 => 7,
        Shape::VersionV6 => 19,
    }
}

struct Input<'a> {
    in_syn: bool,
    formats: Formats,
    /// The same table as (kind, total length) pairs, for the reference.
    accepted: Vec<(u8, u8)>,
    options: &'a [u8],
}

fn decode_input(data: &[u8]) -> Option<Input<'_>> {
    let (&flags, mut rest) = data.split_first()?;
    let in_syn = flags & 1 != 0;
    let (formats, accepted) = if flags & 2 != 0 {
        let (&count, r) = rest.split_first()?;
        rest = r;
        let mut list = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..count % 5 {
            let [kind, sel, ..] = *rest else { return None };
            rest = &rest[2..];
            let len = if (sel as usize) < LAYOUT_LENS.len() { LAYOUT_LENS[sel as usize] } else { sel };
            let valid = kind >= 2 && LAYOUT_LENS.contains(&len);
            match Format::new(kind, len) {
                Ok(f) => {
                    assert!(valid, "Format::new accepted {kind}/{len}");
                    assert_eq!(f.kind, kind);
                    assert_eq!(shape_len(f.shape), len);
                    assert_eq!(Shape::from_len(len as usize), Some(f.shape));
                    let text = f.to_string();
                    assert_eq!(text, format!("{kind}/{len}"));
                    assert_eq!(Format::parse(&text), Ok(f), "{text:?} does not parse back");
                    list.push(f);
                    accepted.push((kind, len));
                }
                Err(e) => assert!(!valid, "Format::new refused {kind}/{len}: {e:?}"),
            }
        }
        let formats = Formats::from_list(&list);
        // for_each lists exactly the distinct accepted formats, in kind then shape order.
        let mut listed = Vec::new();
        formats.for_each(|f| listed.push((f.kind, shape_len(f.shape))));
        let mut want = accepted.clone();
        want.sort_by_key(|&(k, l)| (k, LAYOUT_LENS.iter().position(|&x| x == l)));
        want.dedup();
        assert_eq!(listed, want, "Formats::for_each");
        (formats, accepted)
    } else {
        (Formats::default_table(), REF_DEFAULTS.to_vec())
    };
    let options = &rest[..rest.len().min(OPTION_BUF_LEN)];
    Some(Input { in_syn, formats, accepted, options })
}

// ---------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------

/// What `out` holds before `scan_options` runs.
const STALE: ClientAddr = ClientAddr { kind: 0xAA, family: Family::V6, addr: [0xAA; 16], port: [0xAA; 2] };

fn padded(x: &[u8]) -> [u8; OPTION_BUF_LEN] {
    let mut buf = [0u8; OPTION_BUF_LEN];
    buf[..x.len()].copy_from_slice(x);
    buf
}

/// (c): the found option re-encodes to the bytes it was read from.
fn check_found(ca: &ClientAddr, area: &[u8], at: usize, olen: usize, formats: &Formats) {
    let opt = &area[at..at + olen];
    assert_eq!(ca.kind, opt[0], "kind of the found option");
    let shape = Shape::from_len(olen).expect("found option has a layout length");
    assert_eq!(formats.accepts(ca.kind, olen), Some(shape), "found option is accepted by the table");
    let (want_family, v4, versioned) = match shape {
        Shape::PortV4 => (Family::V4, true, false),
        Shape::PortV6 => (Family::V6, false, false),
        Shape::VersionV4 => (Family::V4, true, true),
        Shape::VersionV6 => (Family::V6, false, true),
    };
    assert_eq!(ca.family, want_family, "family for length {olen}");
    if v4 {
        assert_eq!(ca.addr[4..], [0u8; 12], "IPv4 leaves the rest of the address zero");
    }
    if versioned {
        assert_eq!(ca.port, [0, 0], "version formats carry no port");
    }
    let (bytes, n) = encode(ca.kind, shape, &ca.addr, ca.port);
    assert_eq!(n, olen, "encoded length");
    let mut want = [0u8; 20];
    want[..n].copy_from_slice(opt);
    if versioned {
        // The codec does not keep (or check) the version byte; encode always writes 1.
        assert_eq!(bytes[2], 1, "encode writes version 1");
        want[2] = 1;
    }
    assert_eq!(bytes[..n], want[..n], "re-encoded option differs from the input bytes");
}

fn run(data: &[u8]) {
    let Some(input) = decode_input(data) else { return };
    let Input { in_syn, formats, accepted, options } = input;
    let buf = padded(options);

    // (a) + (b) + (c), for every len (bytes past `len` must not matter).
    let lens = (0..=OPTION_BUF_LEN).chain([41, 100, 255, usize::MAX / 2, usize::MAX]);
    for len in lens {
        let got = parse_options(&buf, len, &formats, in_syn);
        let area = &buf[..len.min(OPTION_BUF_LEN)];
        let want = ref_parse(area, &accepted, in_syn);
        assert_eq!(
            got,
            want.parsed,
            "parse_options vs reference: len={len} in_syn={in_syn} options={:02x?} formats={accepted:?}",
            &buf[..len.min(OPTION_BUF_LEN)]
        );
        if let Parsed::Found(ca) = &got {
            let (at, olen) = want.found_at.expect("reference found it too");
            check_found(ca, area, at, olen, &formats);
        }
        // The eBPF entry point: same answer, and a found address overwrites
        // every field of `out` (nothing stale from its previous contents).
        let mut out = STALE;
        let scan = scan_options(&buf, len, &formats, in_syn, &mut out);
        match (scan, got) {
            (Scan::Found, Parsed::Found(ca)) => assert_eq!(out, ca, "scan_options out, len={len}"),
            (Scan::None, Parsed::None) | (Scan::Malformed, Parsed::Malformed) => {}
            (scan, got) => panic!("scan_options {scan:?} vs parse_options {got:?}, len={len}"),
        }
    }

    // (d) parse_slice equals parse_options on the zero-padded buffer, for every prefix.
    for k in 0..=options.len() {
        let x = &options[..k];
        let got = parse_slice(x, &formats, in_syn);
        assert_eq!(got, parse_options(&padded(x), x.len(), &formats, in_syn), "parse_slice, prefix {k}");
        assert_eq!(got, ref_parse(x, &accepted, in_syn).parsed, "parse_slice vs reference, prefix {k}");
    }
}

fuzz_target!(|data: &[u8]| run(data));
