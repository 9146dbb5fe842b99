//! Thin layers over the operating system: system calls, well-known paths,
//! facts about the host.

pub(crate) mod bpf;
pub(crate) mod host;
pub(crate) mod net;
pub(crate) mod netns;
pub mod notify;
pub mod paths;
pub(crate) mod rlimit;
pub mod service;
pub mod signals;
pub(crate) mod time;
