//! toa: TCP Option Address with eBPF.
//!
//! A FullNAT forwarder puts the real client address into a TCP option; the
//! agent's eBPF programs take it from the handshake and make `getpeername()`
//! and `accept()` return it, so unmodified servers see their real clients.
//!
//! # Rooms
//!
//! The source tree is grouped by the part of the system each module belongs
//! to. Dependencies go one way, from the top of this list to the bottom
//! (a unit test reads the sources and fails on any circle, between rooms or
//! between modules):
//!
//! | room | holds |
//! |---|---|
//! | [`forwarder`] | the client-side option writer ([`forwarder::inject`]), the TCP proxy that drives it ([`forwarder::proxy`]), and the packet-level forwarder ([`forwarder::lb`]) |
//! | [`ops`] | what operators run against a receiver: counters, status, the connection table, the wire decoder, the system check, metrics |
//! | [`receiver`] | the eBPF object, the declarative table of programs, the agent that loads, attaches and pins them |
//! | [`config`] | the configuration file: schema, typed values, defaults, the loader and the printer |
//! | [`sys`] | thin layers over the operating system: `bpf(2)`, sockets, namespaces, signals, clocks, well-known paths, host checks |
//!
//! # Public surface
//!
//! The `toa` binary (a thin layer: one file per subcommand), the benchmark
//! `bench/agent-bench` and the tests use this library; what they need is
//! public, the rest is `pub(crate)`:
//!
//! - [`real_peer`] and [`peer`]: for applications that ask for the real
//!   client explicitly (the `toa-client` crate, re-exported).
//! - [`receiver::agent`]: start, re-apply, stop and detach the receiver;
//!   [`receiver::programs`] names its programs (name, hook, role).
//! - [`forwarder::inject`]: attach the option writer to a cgroup and tell it
//!   what to write, per cgroup or per socket; [`forwarder::proxy`]: run the
//!   forwarder from validated [`forwarder::proxy::Settings`], and read a
//!   running one's counters.
//! - [`forwarder::lb`]: the packet-level forwarder, run from validated
//!   [`forwarder::lb::Settings`] (its flags, [`forwarder::lb::Flags`]).
//! - [`ops`]: the library half of each operator command (`stats`, `status`,
//!   `table`, `sniff`, `doctor`, the metrics listener and the debug
//!   connection log).
//! - [`config`]: the file's schema and values, read by [`config::Config::load`].
//! - [`sys::paths`] (the pin directory's layout, well-known paths),
//!   [`sys::signals`] (waiting for SIGINT/SIGTERM/SIGHUP), [`sys::notify`]
//!   (the systemd notification protocol) and [`sys::service`] (which unit
//!   runs us, and whether systemd is restarting it).
//! - [`ops::readiness`]: the agent's attached state and reload outcomes as
//!   other processes see them (`toa status --wait`, `/healthz`, `toa reload`);
//!   [`ops::save_syn`]: `TCP_SAVE_SYN` on listeners that predate the agent.
//! - [`Error`] and [`Result`]: every library error, with
//!   [`Error::is_usage`] telling a bad request from a failure.
//!
//! The system-call wrappers ([`sys`]'s `bpf`, `net`, `netns`, `time`, `host`),
//! the eBPF object and its loader, the instance lock, the socket-diagnostics
//! client and the proxy's workers are internal.

pub mod config;
mod error;
pub mod forwarder;
pub mod ops;
pub mod peer;
pub mod receiver;
pub mod sys;

pub use error::{Error, Result};
// Cargo gives a package's library every dependency of the package; these
// only the `toa` binary uses (and yaml-rust2 only the packaging test).
pub use peer::real_peer;
#[cfg(test)]
use yaml_rust2 as _;
use {anyhow as _, clap as _, clap_complete as _, clap_mangen as _, tracing_subscriber as _};

#[cfg(test)]
mod layout;
