//! The forwarder side: the option writer and the proxy that drives it.

pub mod inject;
pub mod proxy;
