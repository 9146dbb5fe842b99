//! The real client of an accepted connection, asked explicitly: the
//! [`toa_client`] crate, which applications use on their own (it needs
//! neither the eBPF toolchain nor nightly Rust), re-exported.

pub use toa_client::*;

#[cfg(test)]
mod tests {
    use toa_common::compat;

    #[test]
    fn the_client_asks_the_calls_the_getsockopt_program_answers() {
        assert_eq!(super::VTOA_GET_PEER, compat::VTOA_GET_PEER);
        assert_eq!(super::TOA_SO_GET_LOOKUP, compat::TOA_SO_GET_LOOKUP);
        assert_eq!(super::NAT64_PEER_LEN, compat::NAT64_PEER_LEN);
    }
}
