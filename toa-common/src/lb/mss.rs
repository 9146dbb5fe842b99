//! Lowering the MSS a backend announces in its SYN-ACK, so that the client's
//! segments still fit the path MTU once the forwarder adds the option.

use crate::option::{MAX_OPTIONS_LEN, OPTION_BUF_LEN, TCPOPT_EOL, TCPOPT_NOP};

const MASK: usize = OPTION_BUF_LEN - 1;

/// TCP option kind of the maximum segment size (RFC 9293).
pub const TCPOPT_MSS: u8 = 2;

/// Smallest MSS the rewrite leaves: an IPv4 host must accept 576-byte
/// datagrams, so 536 bytes of payload (RFC 9293 §3.7.1), less the largest
/// option the forwarder adds.
pub const MIN_MSS: u16 = 536 - 20;

/// What [`lower_mss`] found.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MssRewrite {
    /// No MSS option (the client then assumes 536/1220, which leaves room).
    Absent = 0,
    /// Lowered: `rewrite` holds where and from what to what.
    Lowered = 1,
    /// Already at or below [`MIN_MSS`] + the option: left alone.
    TooSmall = 2,
    /// The option list is broken: left alone.
    Malformed = 3,
}

/// Where the MSS value sits and its old and new value (host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MssChange {
    /// Offset of the 2-byte value from the start of the options area (even
    /// or odd: the caller patches the checksum for the bytes it rewrites).
    pub offset: u32,
    /// The MSS the backend announced.
    pub old: u16,
    /// The MSS the client gets.
    pub new: u16,
}

/// The MSS to announce when the forwarder adds `by` option bytes.
#[inline(always)]
pub const fn lowered(mss: u16, by: u16) -> Option<u16> {
    if mss < MIN_MSS + by {
        return None;
    }
    Some(mss - by)
}

/// Finds the MSS option in the SYN-ACK's options `opts[..len]` and computes
/// the lowered value; the caller writes `change.new` (big-endian) at
/// `change.offset` and patches the checksum.
#[inline(never)]
pub fn lower_mss(opts: &[u8; OPTION_BUF_LEN], len: usize, by: u16, change: &mut MssChange) -> MssRewrite {
    let len = if len > MAX_OPTIONS_LEN { MAX_OPTIONS_LEN } else { len };
    let mut pos = 0usize;
    let mut left = 0usize;
    while pos < MAX_OPTIONS_LEN {
        if pos >= len {
            break;
        }
        if left > 0 {
            left -= 1;
        } else {
            let kind = opts[pos & MASK];
            if kind == TCPOPT_EOL {
                break;
            }
            if kind != TCPOPT_NOP {
                if pos + 1 >= len {
                    return MssRewrite::Malformed;
                }
                let olen = opts[(pos + 1) & MASK] as usize;
                if olen < 2 || pos + olen > len {
                    return MssRewrite::Malformed;
                }
                if kind == TCPOPT_MSS && olen == 4 {
                    let old = u16::from_be_bytes([opts[(pos + 2) & MASK], opts[(pos + 3) & MASK]]);
                    return match lowered(old, by) {
                        Some(new) => {
                            *change = MssChange { offset: (pos + 2) as u32, old, new };
                            MssRewrite::Lowered
                        }
                        None => MssRewrite::TooSmall,
                    };
                }
                left = olen - 1;
            }
        }
        pos += 1;
    }
    MssRewrite::Absent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::csum;

    fn buf(bytes: &[u8]) -> [u8; OPTION_BUF_LEN] {
        let mut b = [0u8; OPTION_BUF_LEN];
        b[..bytes.len()].copy_from_slice(bytes);
        b
    }

    /// (description, options, option length added, outcome, value offset, old MSS, new MSS).
    type MssCase = (&'static str, &'static [u8], u16, MssRewrite, u32, u16, u16);

    #[test]
    fn mss_table() {
        let cases: [MssCase; 8] = [
            (
                "Linux SYN-ACK, IPv4",
                &[2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 3, 3, 7],
                8,
                MssRewrite::Lowered,
                2,
                1460,
                1452,
            ),
            ("IPv6 option", &[2, 4, 0x05, 0xa0, 1, 1, 4, 2], 20, MssRewrite::Lowered, 2, 1440, 1420),
            (
                "MSS after NOPs and WS (odd offset)",
                &[1, 3, 3, 7, 2, 4, 0x23, 0x28, 0, 0, 0, 0],
                8,
                MssRewrite::Lowered,
                6,
                9000,
                8992,
            ),
            ("MSS after EOL is not an option", &[0, 0, 0, 0, 2, 4, 5, 0xb4], 8, MssRewrite::Absent, 0, 0, 0),
            ("no MSS", &[4, 2, 1, 1], 8, MssRewrite::Absent, 0, 0, 0),
            ("tiny MSS left alone", &[2, 4, 0x02, 0x00], 8, MssRewrite::TooSmall, 0, 0, 0),
            ("broken list", &[8, 0, 2, 4, 5, 0xb4, 0, 0], 8, MssRewrite::Malformed, 0, 0, 0),
            ("MSS with a wrong length is skipped", &[2, 6, 5, 0xb4, 0, 0, 1, 1], 8, MssRewrite::Absent, 0, 0, 0),
        ];
        for (d, opts, by, want, offset, old, new) in cases {
            let mut ch = MssChange::default();
            let got = lower_mss(&buf(opts), opts.len(), by, &mut ch);
            assert_eq!(got, want, "{d}");
            if want == MssRewrite::Lowered {
                assert_eq!(ch, MssChange { offset, old, new }, "{d}");
            }
        }
    }

    #[test]
    fn patching_the_checksum_for_a_rewrite_at_an_odd_offset() {
        // Base header (20 bytes) + options with the MSS value at option offset 7 → segment offset 27 (odd).
        let mut seg = [0u8; 32];
        seg[12] = 0x80; // doff 8
        seg[20..32].copy_from_slice(&[1, 1, 1, 1, 1, 2, 4, 0x05, 0xb4, 1, 1, 0]);
        let mut opts = buf(&seg[20..32]);
        opts[11] = 0;
        let pseudo = csum::pseudo_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 32);
        let check = csum::checksum(pseudo, &seg);
        let mut ch = MssChange::default();
        assert_eq!(lower_mss(&opts, 12, 8, &mut ch), MssRewrite::Lowered);
        assert_eq!(ch.offset, 7);
        // Patch through the two aligned words that hold the value, as the data path does.
        let at = 20 + ch.offset as usize;
        let w0 = at & !1;
        let old = csum::sum_bytes(&seg[w0..w0 + 4]);
        seg[at..at + 2].copy_from_slice(&ch.new.to_be_bytes());
        let new = csum::sum_bytes(&seg[w0..w0 + 4]);
        let patched = csum::apply(check, csum::delta(old, new));
        assert_eq!(patched, csum::checksum(pseudo, &seg));
        assert_eq!(u16::from_be_bytes([seg[at], seg[at + 1]]), 1452);
    }
}
