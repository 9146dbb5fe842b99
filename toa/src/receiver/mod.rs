//! The receiver: the eBPF object, the table of programs, and the agent that
//! loads, attaches and pins them.

pub mod agent;
pub mod ebpf;
pub mod lock;
pub mod programs;
