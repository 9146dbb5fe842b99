//! Thin layers over the operating system: system calls, well-known paths,
//! facts about the host.

pub mod bpf;
pub mod host;
pub mod net;
pub mod netns;
pub mod paths;
pub mod signals;
pub mod time;
