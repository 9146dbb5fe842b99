//! The receiver: the eBPF object, the table of programs, and the agent that
//! loads, attaches and pins them.

pub mod agent;
pub(crate) mod ebpf;
pub(crate) mod instances;
pub(crate) mod lock;
pub mod pins;
pub mod programs;
pub(crate) mod settings;
