//! The vendor `getsockopt()` calls at level `IPPROTO_IP` and what they return.
//!
//! - optname [`VTOA_GET_PEER`] (1348, Alibaba vtoa): a `sockaddr_in` or
//!   `sockaddr_in6` (the family tells which) with the real client.
//! - optname [`TOA_SO_GET_LOOKUP`] (4096, Tencent/DPVS NAT64): a
//!   `struct toa_nat64_peer { struct in6_addr saddr; uint16_t sport; }`
//!   (20 bytes; port in network order) for an IPv6 real client.

use crate::peer::{Family, PeerRecord};

/// `IPPROTO_IP`.
pub const SOL_IP: i32 = 0;
/// Alibaba vtoa's optname.
pub const VTOA_GET_PEER: i32 = 1348;
/// Tencent/DPVS NAT64 lookup optname.
pub const TOA_SO_GET_LOOKUP: i32 = 4096;
/// `sizeof(struct sockaddr_in)`.
pub const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
pub const SOCKADDR_IN6_LEN: usize = 28;
/// `sizeof(struct toa_nat64_peer)`.
pub const NAT64_PEER_LEN: usize = 20;
/// Largest answer.
pub const MAX_ANSWER_LEN: usize = SOCKADDR_IN6_LEN;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `EINVAL`.
pub const EINVAL: i32 = 22;
/// `ENOENT`.
pub const ENOENT: i32 = 2;

/// What the getsockopt program does with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not ours: leave the kernel's result as it is.
    PassThrough,
    /// Copy `len` bytes of `bytes` to the caller and succeed.
    Write {
        /// The value.
        bytes: [u8; MAX_ANSWER_LEN],
        /// How many bytes.
        len: usize,
    },
    /// Fail with this errno.
    Fail(i32),
}

/// Decides the answer to `getsockopt(fd, level, optname, buf, &buf_len)` on a
/// socket whose real client is `record`.
#[inline(always)]
pub fn answer(level: i32, optname: i32, record: Option<&PeerRecord>, buf_len: usize) -> Answer {
    if level != SOL_IP {
        return Answer::PassThrough;
    }
    match optname {
        VTOA_GET_PEER => {
            let Some(rec) = record else { return Answer::Fail(ENOENT) };
            let mut bytes = [0u8; MAX_ANSWER_LEN];
            let len = match rec.family() {
                Some(Family::V4) => {
                    bytes[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
                    bytes[2..4].copy_from_slice(&rec.port);
                    bytes[4..8].copy_from_slice(&rec.addr[..4]);
                    SOCKADDR_IN_LEN
                }
                Some(Family::V6) => {
                    bytes[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
                    bytes[2..4].copy_from_slice(&rec.port);
                    bytes[8..24].copy_from_slice(&rec.addr);
                    SOCKADDR_IN6_LEN
                }
                None => return Answer::Fail(ENOENT),
            };
            if buf_len < len {
                return Answer::Fail(EINVAL);
            }
            Answer::Write { bytes, len }
        }
        TOA_SO_GET_LOOKUP => {
            let rec = match record {
                Some(r) if r.family() == Some(Family::V6) => r,
                _ => return Answer::Fail(EINVAL),
            };
            if buf_len < NAT64_PEER_LEN {
                return Answer::Fail(EINVAL);
            }
            let mut bytes = [0u8; MAX_ANSWER_LEN];
            bytes[..16].copy_from_slice(&rec.addr);
            bytes[16..18].copy_from_slice(&rec.port);
            Answer::Write { bytes, len: NAT64_PEER_LEN }
        }
        _ => Answer::PassThrough,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(family: Family) -> PeerRecord {
        let mut r = PeerRecord::EMPTY;
        r.family = family as u8;
        r.port = 4242u16.to_be_bytes();
        r.addr = match family {
            Family::V4 => [203, 0, 113, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Family::V6 => [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        };
        r
    }

    #[test]
    fn vtoa_returns_a_sockaddr_of_the_right_family() {
        let v4 = rec(Family::V4);
        match answer(SOL_IP, VTOA_GET_PEER, Some(&v4), 16) {
            Answer::Write { bytes, len } => {
                assert_eq!(len, 16);
                assert_eq!(u16::from_ne_bytes([bytes[0], bytes[1]]), 2);
                assert_eq!(&bytes[2..8], &[0x10, 0x92, 203, 0, 113, 7]);
                assert_eq!(&bytes[8..16], &[0; 8]);
            }
            other => panic!("{other:?}"),
        }
        let v6 = rec(Family::V6);
        match answer(SOL_IP, VTOA_GET_PEER, Some(&v6), 128) {
            Answer::Write { bytes, len } => {
                assert_eq!(len, 28);
                assert_eq!(u16::from_ne_bytes([bytes[0], bytes[1]]), 10);
                assert_eq!(&bytes[2..4], &[0x10, 0x92]);
                assert_eq!(&bytes[4..8], &[0; 4], "flowinfo");
                assert_eq!(&bytes[8..24], &v6.addr);
                assert_eq!(&bytes[24..28], &[0; 4], "scope id");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(answer(SOL_IP, VTOA_GET_PEER, Some(&v6), 16), Answer::Fail(EINVAL), "sizeof(struct sockaddr)");
        assert_eq!(answer(SOL_IP, VTOA_GET_PEER, Some(&v4), 15), Answer::Fail(EINVAL));
        assert_eq!(answer(SOL_IP, VTOA_GET_PEER, None, 16), Answer::Fail(ENOENT));
    }

    #[test]
    fn nat64_lookup_only_answers_for_ipv6_clients() {
        let v6 = rec(Family::V6);
        match answer(SOL_IP, TOA_SO_GET_LOOKUP, Some(&v6), 20) {
            Answer::Write { bytes, len } => {
                assert_eq!(len, 20);
                assert_eq!(&bytes[..16], &v6.addr);
                assert_eq!(&bytes[16..18], &[0x10, 0x92]);
                assert_eq!(&bytes[18..20], &[0, 0]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(answer(SOL_IP, TOA_SO_GET_LOOKUP, Some(&v6), 18), Answer::Fail(EINVAL));
        assert_eq!(answer(SOL_IP, TOA_SO_GET_LOOKUP, Some(&rec(Family::V4)), 20), Answer::Fail(EINVAL));
        assert_eq!(answer(SOL_IP, TOA_SO_GET_LOOKUP, None, 20), Answer::Fail(EINVAL));
    }

    #[test]
    fn everything_else_passes_through() {
        let v4 = rec(Family::V4);
        assert_eq!(answer(6, VTOA_GET_PEER, Some(&v4), 16), Answer::PassThrough, "SOL_TCP");
        assert_eq!(answer(SOL_IP, 1345, Some(&v4), 16), Answer::PassThrough);
        assert_eq!(answer(SOL_IP, 14, None, 4), Answer::PassThrough, "IP_MTU");
    }
}
