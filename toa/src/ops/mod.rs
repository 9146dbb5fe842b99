//! What operators run against a receiver: counters, status, the connection
//! table, the wire decoder, the system check and the metrics listener.

pub mod doctor;
pub mod metrics;
pub mod readiness;
pub mod save_syn;
pub mod sniff;
pub(crate) mod sockdiag;
pub mod stats;
pub mod status;
pub mod table;
pub mod watch;
