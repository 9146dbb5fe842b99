//! toa: TCP Option Address with eBPF.
//!
//! A FullNAT forwarder puts the real client address into a TCP option; the
//! agent's eBPF programs take it from the handshake and make `getpeername()`
//! and `accept()` return it, so unmodified servers see their real clients.
//!
//! The CLI (`toa`) is a thin layer over this library.

pub mod config;
pub mod error;
pub mod forwarder;
pub mod ops;
pub mod peer;
pub mod receiver;
pub mod sys;

pub use error::{Error, Result};
pub use peer::real_peer;
