//! The forwarder side: the option writer and the proxy that drives it, and
//! the packet-level forwarder (`lb`).

pub mod health;
pub mod inject;
pub mod lb;
pub mod proxy;
