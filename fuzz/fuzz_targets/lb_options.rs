//! Fuzz target for the forwarder's header surgery (`toa_common::lb`): the
//! option insertion planner, the SYN-ACK MSS rewrite and the incremental
//! checksum the data path applies after an insertion.
//!
//! Input layout: byte 0 selects the option (bit 0: 20-byte IPv6 form, else
//! 8-byte IPv4), byte 1 the options area length (`% 11 * 4`, 0 to 40), byte
//! 2 the MSS delta; then the old options area, then any payload.
//!
//! Properties, against straightforward reference code written here:
//! (a) `plan_insert` never panics and says `Malformed` exactly when the
//!     reference walk finds the list broken;
//! (b) on success the new area is a multiple of 4, at most 40 and at least
//!     the old length, starts with the option, parses as a valid list, and
//!     holds the old options the reference keeps for the stage, in order;
//!     `Inserted` leaves the old area verbatim behind the option; `NoRoom`
//!     only when even the last stage cannot make room;
//! (c) applying the plan to a TCP segment and patching its checksum as the
//!     data path does (area, data-offset word, pseudo-header length) gives
//!     the checksum computed from scratch;
//! (d) `lower_mss` finds the reference's first MSS option and lowers it
//!     exactly by the delta, or leaves it when too small.

#![no_main]

use libfuzzer_sys::fuzz_target;
use toa_common::lb::{
    csum,
    insert::{InsertBufs, Outcome, Plan, plan_insert, toa_shaped},
    mss::{MIN_MSS, MssChange, MssRewrite, lower_mss},
};

/// Reference walk: the options of `area` as (offset, kind, len), NOPs as
/// len 1, stopping at EOL; `None` when broken.
fn walk(area: &[u8]) -> Option<Vec<(usize, u8, usize)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < area.len() {
        match area[i] {
            0 => break,
            1 => {
                out.push((i, 1, 1));
                i += 1;
            }
            k => {
                let len = *area.get(i + 1)? as usize;
                if len < 2 || i + len > area.len() {
                    return None;
                }
                out.push((i, k, len));
                i += len;
            }
        }
    }
    Some(out)
}

/// The stage's kept options (reference): stage 1 drops NOPs, 2 also
/// TOA-shaped options, 3 also SACK.
fn kept(area: &[u8], opts: &[(usize, u8, usize)], stage: u8) -> Vec<u8> {
    let mut v = Vec::new();
    for &(at, kind, len) in opts {
        let drop = kind == 1
            || (stage >= 2 && toa_shaped(kind, len))
            || (stage >= 3 && kind == 5);
        if !drop {
            v.extend_from_slice(&area[at..at + len]);
        }
    }
    v
}

fn run(data: &[u8]) {
    let [sel, lsel, dsel, rest @ ..] = data else { return };
    let opt_len = if sel & 1 != 0 { 20 } else { 8 };
    let old_len = ((*lsel as usize) % 11) * 4;
    if rest.len() < old_len {
        return;
    }
    let (area, payload) = rest.split_at(old_len);
    let payload = &payload[..payload.len().min(1500)];
    let mut opt = [0u8; 64];
    opt[0] = if sel & 1 != 0 { 253 } else { 254 };
    opt[1] = opt_len as u8;
    for (i, b) in opt.iter_mut().enumerate().take(opt_len).skip(2) {
        *b = i as u8;
    }
    let mut b = InsertBufs::ZERO;
    b.old[..old_len].copy_from_slice(area);
    b.opt = opt;
    let mut plan = Plan::default();
    let outcome = plan_insert(&mut b, old_len, opt_len, &mut plan);
    let reference = walk(area);
    // (a)
    assert_eq!(outcome == Outcome::Malformed, reference.is_none(), "{outcome:?} for {area:02x?}");
    let Some(opts) = reference else { return };
    let fits = |stage: u8| opt_len + kept(area, &opts, stage).len() <= 40;
    match outcome {
        Outcome::NoRoom => assert!(old_len + opt_len > 40 && !fits(3), "room was there: {area:02x?}"),
        Outcome::Inserted | Outcome::Compacted => {
            // (b)
            let n = plan.new_len as usize;
            assert!(n % 4 == 0 && n <= 40 && n >= old_len, "new_len {n}");
            assert_eq!(&b.out[..opt_len], &opt[..opt_len]);
            assert!(b.out[n..].iter().all(|&x| x == 0));
            let new_opts = walk(&b.out[..n]).expect("the new area parses");
            assert_eq!(new_opts.first().map(|o| (o.1, o.2)), Some((opt[0], opt_len)));
            if outcome == Outcome::Inserted {
                assert!(old_len + opt_len <= 40);
                assert_eq!(&b.out[opt_len..n], area);
            } else {
                assert!(old_len + opt_len > 40);
                let stage = (1..=3).find(|&s| fits(s)).expect("a stage fits");
                let want = kept(area, &opts, stage);
                assert_eq!(&b.out[opt_len..opt_len + want.len()], &want[..], "stage {stage}");
            }
            // (c) A TCP segment (IPv4 pseudo-header) before and after.
            let mut seg = vec![0u8; 20];
            seg[0..4].copy_from_slice(&[0x1f, 0x90, 0x00, 0x50]);
            seg[4..12].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
            seg[12] = (((20 + old_len) / 4) as u8) << 4;
            seg[13] = 0x18;
            seg.extend_from_slice(area);
            seg.extend_from_slice(payload);
            let (src, dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
            let pseudo = |len: usize| csum::pseudo_v4(src, dst, 6, len as u16);
            let check = csum::checksum(pseudo(seg.len()), &seg);
            let mut new = seg[..20].to_vec();
            new[12] = (((20 + n) / 4) as u8) << 4;
            new.extend_from_slice(&b.out[..n]);
            new.extend_from_slice(payload);
            let area_d = csum::delta(csum::sum_prefix(&b.old, old_len), csum::sum_prefix(&b.out, n));
            let word12 = csum::delta(
                u16::from_be_bytes([seg[12], seg[13]]) as u32,
                u16::from_be_bytes([new[12], new[13]]) as u32,
            );
            let len_d = csum::delta(seg.len() as u32, new.len() as u32);
            let patched = csum::apply(check, csum::add(csum::add(area_d, word12), len_d));
            let verify = csum::fold(csum::add(csum::add(pseudo(new.len()), csum::sum_bytes(&new)), patched as u32));
            assert_eq!(verify, 0xffff, "incremental checksum does not verify");
        }
        Outcome::Malformed => unreachable!(),
    }
    // (d)
    let by = (*dsel as u16) % 64;
    let mut ch = MssChange::default();
    let got = lower_mss(&b.old, old_len, by, &mut ch);
    let first_mss = opts.iter().find(|o| o.1 == 2 && o.2 == 4).map(|o| o.0);
    match got {
        MssRewrite::Lowered => {
            let at = first_mss.expect("an MSS option");
            assert_eq!(ch.offset as usize, at + 2);
            let old = u16::from_be_bytes([area[at + 2], area[at + 3]]);
            assert_eq!((ch.old, ch.new), (old, old - by));
            assert!(ch.new >= MIN_MSS);
        }
        MssRewrite::TooSmall => {
            let at = first_mss.expect("an MSS option");
            assert!(u16::from_be_bytes([area[at + 2], area[at + 3]]) < MIN_MSS + by);
        }
        MssRewrite::Absent => assert_eq!(first_mss, None),
        MssRewrite::Malformed => panic!("the list parsed above"),
    }
}

fuzz_target!(|data: &[u8]| run(data));
