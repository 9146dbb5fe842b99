//! Where the forwarder puts the option into a TCP header, and what it drops
//! to make room when the 40 option bytes are full.
//!
//! The option goes first, right after the 20-byte base header, with the
//! client's own options behind it: a receiver takes the first TOA option it
//! finds, so an option the client forged itself can never win. The options
//! area grows by the option's length (8 or 20, both multiples of 4, so the
//! options behind keep their 4-byte alignment).
//!
//! When the option does not fit (options area + option > 40 bytes), the
//! header is compacted in stages, each only if the previous did not free
//! enough, as DPVS does (`tcp_in_prune_options`):
//! 1. NOPs and padding after an end-of-list go ([`dropped::PADDING`]):
//!    alignment only, no information;
//! 2. TOA-shaped options (kinds 200, 253, 254 with length 8 or 20) go
//!    ([`dropped::OLD_TOA`]): a previous forwarder's or a client's own,
//!    which the receiver must not believe anyway;
//! 3. SACK blocks (kind 5) go ([`dropped::SACK`]): the backend loses that
//!    packet's selective acknowledgement, which the client repeats in later
//!    ACKs (DPVS drops them too).
//!
//! Everything else (MSS, window scale, SACK-permitted, timestamps, MPTCP, TCP
//! Fast Open, MD5/AO signatures, unknown kinds) is kept: the backend may need
//! it. If even the last stage does not make room, the packet goes out
//! unchanged and counts as `no_room`.
//!
//! A broken option list (a length below 2, an option running past the area)
//! is never touched ([`Outcome::Malformed`]).
//!
//! [`plan_insert`] works on fixed 64-byte buffers with masked indices, one
//! pass over the 40 positions per stage, so the eBPF verifier accepts it.

use crate::option::{MAX_OPTIONS_LEN, OPTION_BUF_LEN, TCPOPT_EOL, TCPOPT_NOP};

const MASK: usize = OPTION_BUF_LEN - 1;

/// TCP option kind of a SACK block list (RFC 2018).
pub const TCPOPT_SACK: u8 = 5;

/// Bits of [`Plan::dropped`]: what compaction removed.
pub mod dropped {
    /// NOPs, and the bytes after an end-of-list.
    pub const PADDING: u32 = 1;
    /// Options of kind 200, 253 or 254 with length 8 or 20.
    pub const OLD_TOA: u32 = 2;
    /// SACK blocks.
    pub const SACK: u32 = 4;
}

/// How the option fits.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written in front of the existing options, nothing dropped.
    Inserted = 0,
    /// Written after dropping what [`Plan::dropped`] says.
    Compacted = 1,
    /// No room even after every stage of compaction: forward unchanged.
    NoRoom = 2,
    /// The existing option list is broken: forward unchanged.
    Malformed = 3,
}

/// The new options area, written to the caller's buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Length of the new options area: a multiple of 4, at most 40, never
    /// less than the old one (the header only grows, by `new_len - old_len`).
    pub new_len: u32,
    /// [`dropped`] bits.
    pub dropped: u32,
}

/// Whether an option of this kind and total length looks like a TOA option.
#[inline(always)]
pub const fn toa_shaped(kind: u8, len: usize) -> bool {
    (kind == 254 || kind == 253 || kind == 200) && (len == 8 || len == 20)
}

/// Lengths of the option list by class, from one pass over it.
#[derive(Clone, Copy, Default)]
struct Census {
    /// Bytes of options that are always kept.
    keep: usize,
    /// NOPs and the bytes after an end-of-list.
    padding: usize,
    /// TOA-shaped options.
    toa: usize,
    /// SACK blocks.
    sack: usize,
}

/// The class of an option: 0 kept, 1 padding, 2 old TOA, 3 SACK.
#[inline(always)]
fn class_of(kind: u8, len: usize) -> u8 {
    if toa_shaped(kind, len) {
        2
    } else if kind == TCPOPT_SACK {
        3
    } else {
        0
    }
}

/// A length or stage the planner keeps in [`InsertBufs`], read back with a
/// volatile load at every use.
///
/// The eBPF verifier learns a register's exact value from every loop exit
/// (`if pos >= len break` at a known `pos` pins `len`), and would then walk
/// everything after the loop once per value it learnt: ten lengths times
/// two option sizes times three stages. Read from memory, each use is one
/// unknown (bounded) value again, and the paths after a loop merge.
#[inline(always)]
fn get(v: &u32) -> usize {
    // SAFETY: a read of a live field.
    (unsafe { core::ptr::read_volatile(v) } as usize) & MASK
}

#[inline(always)]
fn set(v: &mut u32, x: usize) {
    // SAFETY: a write of a live field.
    unsafe { core::ptr::write_volatile(v, x as u32) }
}

/// One pass over `b.old[..b.old_len]`: validates the list and measures each
/// class into `b.census`; false when broken.
///
/// The running state lives in `b.census` (volatile), for the reason given
/// at [`copy_kept`].
#[inline(never)]
fn census(b: &mut InsertBufs) -> bool {
    const EOL: u32 = 1 << 15;
    let InsertBufs { old, census, old_len, .. } = b;
    let old_len: &u32 = old_len;
    let st: *mut u32 = census.as_mut_ptr();
    // SAFETY (all volatile accesses): `st` points at the 5 words of `b.census`.
    let get_st = |i: usize| unsafe { core::ptr::read_volatile(st.add(i)) };
    let set_st = |i: usize, v: u32| unsafe { core::ptr::write_volatile(st.add(i), v) };
    let bump = |i: usize, by: u32| set_st(i, get_st(i) + by);
    let mut i = 0;
    while i < 5 {
        set_st(i, 0);
        i += 1;
    }
    let mut pos = 0usize;
    while pos < MAX_OPTIONS_LEN {
        if pos >= get(old_len) {
            break;
        }
        let skip = get_st(0);
        if skip & EOL != 0 {
            bump(2, 1);
        } else if skip > 0 {
            set_st(0, skip - 1);
        } else {
            let kind = old[pos & MASK];
            if kind == TCPOPT_EOL {
                set_st(0, EOL);
                bump(2, 1);
            } else if kind == TCPOPT_NOP {
                bump(2, 1);
            } else {
                if pos + 1 >= get(old_len) {
                    return false;
                }
                let olen = old[(pos + 1) & MASK] as usize;
                if olen < 2 || pos + olen > get(old_len) {
                    return false;
                }
                bump(1 + class_slot(kind, olen), olen as u32);
                set_st(0, olen as u32 - 1);
            }
        }
        pos += 1;
    }
    true
}

/// The census of `b` after [`census`] ran.
#[inline(always)]
fn census_of(b: &InsertBufs) -> Census {
    let c = |i: usize| get(&b.census[i]);
    Census { keep: c(1), padding: c(2), toa: c(3), sack: c(4) }
}

/// The `census` slot of an option's class: 0 kept, 2 old TOA, 3 SACK.
#[inline(always)]
fn class_slot(kind: u8, len: usize) -> usize {
    match class_of(kind, len) {
        2 => 2,
        3 => 3,
        _ => 0,
    }
}

/// Copies the options of `b.old[..b.old_len]` whose class survives
/// `b.stage` behind `b.opt_len` bytes already in `b.out`; returns the new
/// write position.
///
/// The write position lives in memory (`b.cursor`, volatile): in a register
/// it would hold a different exact value on every path through the loop,
/// and the eBPF verifier, unable to merge those paths, would walk 2^40 of
/// them; read back from a map value it is one unknown (masked) index.
#[inline(never)]
fn copy_kept(b: &mut InsertBufs) -> usize {
    const KEEP: u32 = 1 << 15;
    let w = get(&b.opt_len);
    let InsertBufs { old, out, cursor, left, old_len, stage, .. } = b;
    let (old_len, stage): (&u32, &u32) = (old_len, stage);
    let cursor: *mut u32 = cursor;
    let left: *mut u32 = left;
    // SAFETY: `cursor` and `left` point at fields of `b`, borrowed mutably here.
    unsafe {
        core::ptr::write_volatile(cursor, w as u32);
        core::ptr::write_volatile(left, 0);
    }
    let mut pos = 0usize;
    while pos < MAX_OPTIONS_LEN {
        if pos >= get(old_len) {
            break;
        }
        let byte = old[pos & MASK];
        // SAFETY: as above.
        let l = unsafe { core::ptr::read_volatile(left) };
        if l & !KEEP > 0 {
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(left, l - 1) };
            if l & KEEP != 0 {
                put(out, cursor, byte);
            }
        } else if byte == TCPOPT_EOL {
            // Everything after an end-of-list is padding: dropped from stage 1.
            break;
        } else if byte == TCPOPT_NOP {
            // NOPs are dropped from stage 1 (stage 0 copies the area verbatim).
        } else {
            let olen = old[(pos + 1) & MASK] as usize;
            let class = class_of(byte, olen);
            let keeping = class == 0 || class as usize > get(stage);
            // SAFETY: as above.
            unsafe { core::ptr::write_volatile(left, (olen as u32 - 1) | if keeping { KEEP } else { 0 }) };
            if keeping {
                put(out, cursor, byte);
            }
        }
        pos += 1;
    }
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(cursor) as usize }
}

/// Appends `byte` at the cursor.
#[inline(always)]
fn put(out: &mut [u8; OPTION_BUF_LEN], cursor: *mut u32, byte: u8) {
    // SAFETY: `cursor` points at a live field next to `out` (see `copy_kept`).
    let w = unsafe { core::ptr::read_volatile(cursor) } as usize;
    out[w & MASK] = byte;
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(cursor, (w + 1) as u32) };
}

/// The planner's buffers, kept together so that the eBPF programs can hold
/// them in one map value instead of their 512-byte stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsertBufs {
    /// The existing options area.
    pub old: [u8; OPTION_BUF_LEN],
    /// The option to insert.
    pub opt: [u8; OPTION_BUF_LEN],
    /// The new options area.
    pub out: [u8; OPTION_BUF_LEN],
    /// Write position while compacting (see [`copy_kept`]).
    pub cursor: u32,
    /// Bytes of the current option still to walk while compacting, and
    /// (bit 15) whether it is kept.
    pub left: u32,
    /// The census' running state: bytes still to skip (bit 15: after an
    /// end-of-list), then the sums by class (kept, padding, TOA, SACK).
    pub census: [u32; 5],
    /// Length of the existing options area (see [`get`]).
    pub old_len: u32,
    /// Length of the option to insert.
    pub opt_len: u32,
    /// The compaction stage: 1 drops padding, 2 also old TOA, 3 also SACK.
    pub stage: u32,
}

const _: () = assert!(core::mem::size_of::<InsertBufs>() == 232);

impl InsertBufs {
    /// All zero.
    pub const ZERO: InsertBufs = InsertBufs {
        old: [0; OPTION_BUF_LEN],
        opt: [0; OPTION_BUF_LEN],
        out: [0; OPTION_BUF_LEN],
        cursor: 0,
        left: 0,
        census: [0; 5],
        old_len: 0,
        opt_len: 0,
        stage: 0,
    };
}

/// Plans the insertion of `b.opt[..opt_len]` into the options area
/// `b.old[..old_len]` (`old_len` a multiple of 4, at most 40) and writes the
/// new area into `b.out` (bytes past [`Plan::new_len`] are zero). `b.out` is
/// only meaningful for [`Outcome::Inserted`] and [`Outcome::Compacted`].
#[inline(never)]
pub fn plan_insert(b: &mut InsertBufs, old_len: usize, opt_len: usize, plan: &mut Plan) -> Outcome {
    *plan = Plan::default();
    let old_len = if old_len > MAX_OPTIONS_LEN { MAX_OPTIONS_LEN } else { old_len };
    if opt_len == 0 || opt_len > MAX_OPTIONS_LEN || !opt_len.is_multiple_of(4) || !old_len.is_multiple_of(4) {
        return Outcome::NoRoom;
    }
    // From here on both lengths are read from memory at every use (see `get`).
    set(&mut b.old_len, old_len);
    set(&mut b.opt_len, opt_len);
    if !census(b) {
        return Outcome::Malformed;
    }
    b.out = [0; OPTION_BUF_LEN];
    let mut i = 0usize;
    while i < MAX_OPTIONS_LEN {
        if i >= get(&b.opt_len) {
            break;
        }
        b.out[i & MASK] = b.opt[i & MASK];
        i += 1;
    }
    let c = census_of(b);
    if get(&b.old_len) + get(&b.opt_len) <= MAX_OPTIONS_LEN {
        // Room as it is: the old area verbatim behind the option.
        let mut j = 0usize;
        while j < MAX_OPTIONS_LEN {
            if j >= get(&b.old_len) {
                break;
            }
            b.out[(get(&b.opt_len) + j) & MASK] = b.old[j & MASK];
            j += 1;
        }
        plan.new_len = (get(&b.opt_len) + get(&b.old_len)) as u32;
        return Outcome::Inserted;
    }
    // Stage 1 drops padding, 2 also old TOA, 3 also SACK.
    let opt_len = get(&b.opt_len);
    let fits1 = opt_len + c.keep + c.toa + c.sack;
    let fits2 = opt_len + c.keep + c.sack;
    let fits3 = opt_len + c.keep;
    let (stage, dropped) = if fits1 <= MAX_OPTIONS_LEN {
        (1, dropped::PADDING)
    } else if fits2 <= MAX_OPTIONS_LEN {
        (2, dropped::PADDING | dropped::OLD_TOA)
    } else if fits3 <= MAX_OPTIONS_LEN {
        (3, dropped::PADDING | dropped::OLD_TOA | dropped::SACK)
    } else {
        return Outcome::NoRoom;
    };
    set(&mut b.stage, stage);
    let w = copy_kept(b);
    let rounded = (w + 3) & !3;
    let old_len = get(&b.old_len);
    let new_len = if rounded < old_len { old_len } else { rounded };
    if new_len > MAX_OPTIONS_LEN {
        return Outcome::NoRoom;
    }
    // What only the dropped classes held counts as dropped.
    let mut what = 0;
    if c.padding > 0 {
        what |= dropped & dropped::PADDING;
    }
    if c.toa > 0 {
        what |= dropped & dropped::OLD_TOA;
    }
    if c.sack > 0 {
        what |= dropped & dropped::SACK;
    }
    plan.new_len = new_len as u32;
    plan.dropped = what;
    Outcome::Compacted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(bytes: &[u8]) -> [u8; OPTION_BUF_LEN] {
        let mut b = [0u8; OPTION_BUF_LEN];
        b[..bytes.len()].copy_from_slice(bytes);
        b
    }

    const TOA4: [u8; 8] = [254, 8, 0x1f, 0x90, 203, 0, 113, 7];
    const NOP_NOP_TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    const SACK3: [u8; 26] = [5, 26, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 6];

    struct Case {
        d: &'static str,
        old: &'static [u8],
        opt: &'static [u8],
        want: Outcome,
        /// The expected new area (empty: don't compare).
        area: &'static [u8],
        dropped: u32,
    }

    #[test]
    fn planner_table() {
        let toa6: &'static [u8] = &[253, 20, 0, 80, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        let ts_sack2: &'static [u8] =
            &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
        let cases = [
            Case { d: "no options", old: &[], opt: &TOA4, want: Outcome::Inserted, area: &TOA4, dropped: 0 },
            Case {
                d: "timestamps: option first, the rest verbatim",
                old: &NOP_NOP_TS,
                opt: &TOA4,
                want: Outcome::Inserted,
                area: &[254, 8, 0x1f, 0x90, 203, 0, 113, 7, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
                dropped: 0,
            },
            Case {
                d: "exactly 40 with the option",
                old: ts_sack2,
                opt: &TOA4,
                want: Outcome::Inserted,
                area: &[],
                dropped: 0,
            },
            Case {
                d: "a 20-byte option after TS + 2 SACK blocks needs compaction: NOPs go (4 bytes) but SACK must too",
                old: ts_sack2,
                opt: toa6,
                want: Outcome::Compacted,
                area: &[
                    253, 20, 0, 80, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 8, 10, 0, 0, 0, 1, 0, 0, 0,
                    2, 0, 0,
                ],
                dropped: dropped::PADDING | dropped::SACK,
            },
            Case {
                d: "NOP padding alone frees enough",
                old: &[
                    1, 1, 1, 1, 1, 1, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                    1, 1, 1,
                ],
                opt: &TOA4,
                want: Outcome::Compacted,
                area: &[
                    254, 8, 0x1f, 0x90, 203, 0, 113, 7, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0,
                ],
                dropped: dropped::PADDING,
            },
            Case {
                d: "an old TOA option is dropped before SACK",
                old: &[
                    254, 8, 0, 1, 10, 0, 0, 1, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1,
                    1, 30, 6, 1, 2, 3, 4, 1, 1,
                ],
                opt: &TOA4,
                want: Outcome::Compacted,
                area: &[
                    254, 8, 0x1f, 0x90, 203, 0, 113, 7, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2,
                    30, 6, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0,
                ],
                dropped: dropped::PADDING | dropped::OLD_TOA,
            },
            Case {
                d: "full of options that are kept: no room",
                old: &[
                    1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 76, 28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0, 0,
                ],
                opt: &TOA4,
                want: Outcome::NoRoom,
                area: &[],
                dropped: 0,
            },
            Case {
                d: "SYN with MSS, SACK-perm, TS, WS: a 20-byte option fits exactly",
                old: &[2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7],
                opt: toa6,
                want: Outcome::Inserted,
                area: &[],
                dropped: 0,
            },
            Case {
                d: "broken list: length 1",
                old: &[8, 1, 0, 0],
                opt: &TOA4,
                want: Outcome::Malformed,
                area: &[],
                dropped: 0,
            },
            Case {
                d: "broken list: runs past the end",
                old: &[1, 1, 8, 10, 0, 0, 0, 0],
                opt: &TOA4,
                want: Outcome::Malformed,
                area: &[],
                dropped: 0,
            },
            Case {
                d: "broken list: kind without length at the end",
                old: &[1, 1, 1, 30],
                opt: &TOA4,
                want: Outcome::Malformed,
                area: &[],
                dropped: 0,
            },
            Case {
                d: "bytes after EOL are padding",
                old: &[
                    8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
                    9, 9, 9,
                ],
                opt: &TOA4,
                want: Outcome::Compacted,
                area: &[
                    254, 8, 0x1f, 0x90, 203, 0, 113, 7, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0, 0,
                ],
                dropped: dropped::PADDING,
            },
        ];
        for c in cases {
            let mut b = InsertBufs {
                old: buf(c.old),
                opt: buf(c.opt),
                out: [0xAA; OPTION_BUF_LEN],
                cursor: 0,
                left: 0,
                census: [0; 5],
                old_len: 0,
                opt_len: 0,
                stage: 0,
            };
            let mut plan = Plan::default();
            let got = plan_insert(&mut b, c.old.len(), c.opt.len(), &mut plan);
            let out = b.out;
            assert_eq!(got, c.want, "{}", c.d);
            if matches!(got, Outcome::Inserted | Outcome::Compacted) {
                let n = plan.new_len as usize;
                assert!(n.is_multiple_of(4) && n <= 40 && n >= c.old.len(), "{}: new_len {n}", c.d);
                assert_eq!(&out[..c.opt.len()], c.opt, "{}: the option comes first", c.d);
                assert!(out[n..].iter().all(|&b| b == 0), "{}: zero past the area", c.d);
                if !c.area.is_empty() {
                    assert_eq!(&out[..n], c.area, "{}", c.d);
                }
                assert_eq!(plan.dropped, c.dropped, "{}", c.d);
                // What the receiver parses first is ours.
                let parsed = crate::option::parse_slice(&out[..n], &crate::Formats::default_table(), false);
                assert!(matches!(parsed, crate::Parsed::Found(a) if a.kind == c.opt[0]), "{}: {parsed:?}", c.d);
            }
        }
    }

    #[test]
    fn refuses_bad_arguments() {
        let mut plan = Plan::default();
        let mut with = |old: &[u8], old_len: usize, opt_len: usize| {
            let mut b = InsertBufs {
                old: buf(old),
                opt: buf(&TOA4),
                out: [0; OPTION_BUF_LEN],
                cursor: 0,
                left: 0,
                census: [0; 5],
                old_len: 0,
                opt_len: 0,
                stage: 0,
            };
            plan_insert(&mut b, old_len, opt_len, &mut plan)
        };
        assert_eq!(with(&[], 0, 7), Outcome::NoRoom);
        assert_eq!(with(&[], 0, 0), Outcome::NoRoom);
        assert_eq!(with(&[1, 1], 2, 8), Outcome::NoRoom);
        // A SACK list followed by an end-of-list is fine and leaves room.
        assert_eq!(with(&SACK3, 28, 8), Outcome::Inserted);
        assert_eq!(plan.new_len, 36);
    }
}
