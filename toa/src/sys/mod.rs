//! Thin layers over the operating system: system calls, well-known paths,
//! facts about the host.

pub mod host;
pub mod net;
pub mod paths;
pub mod signals;
