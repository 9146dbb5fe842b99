//! Fixtures for toa's privileged integration tests: network namespaces, veth
//! pairs, child cgroups, processes started inside them, and a TUN peer that
//! writes TCP segments byte by byte. Every fixture has a unique name and
//! cleans up on drop, also when a test panics.

pub mod cgroup;
pub mod netns;
pub mod packet;
pub mod process;
pub mod tun;
