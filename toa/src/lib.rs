//! toa: TCP Option Address with eBPF.
//!
//! A FullNAT forwarder puts the real client address into a TCP option; the
//! agent's eBPF programs take it from the handshake and make `getpeername()`
//! and `accept()` return it, so unmodified servers see their real clients.
//!
//! The CLI (`toa`) is a thin layer over this library:
//! [`agent`] loads, attaches and pins the receiver; [`stats`] reads its
//! counters; [`inject`] drives the client-side option writer.

pub mod agent;
pub mod config;
pub mod doctor;
pub mod ebpf;
pub mod error;
pub mod inject;
pub mod lock;
pub mod metrics;
pub mod paths;
pub mod peer;
pub mod programs;
pub mod proxy;
pub mod signals;
pub mod sniff;
pub mod sockdiag;
pub mod stats;
pub mod status;
pub mod system;
pub mod table;
pub mod watch;

pub use error::{Error, Result};
pub use peer::real_peer;
