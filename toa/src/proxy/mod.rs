//! `toa proxy`: a FullNAT L4 TCP proxy that inserts the client's address as
//! a TCP option on the upstream connection.

use crate::{Error, Result};

/// Command-line arguments of `toa proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {}

/// The `[proxy]` section of the configuration file.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {}

/// Runs the proxy in the foreground until SIGINT/SIGTERM.
pub fn run(_args: ProxyArgs) -> Result<()> {
    Err(Error::Invalid("toa proxy is not available in this build".into()))
}
