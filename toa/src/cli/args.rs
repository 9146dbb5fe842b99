//! Arguments several subcommands share: the pin directory and the option formats.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use toa::{config::Config, sys::paths::PinDir};
use toa_common::Format;

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Directory on bpffs where the agent pins its maps and links [default: from the config, else /sys/fs/bpf/toa].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

impl PinArgs {
    /// The pin directory: the flag's, else the configuration file's.
    pub fn resolve(&self) -> Result<PinDir> {
        Ok(match &self.pin_dir {
            Some(p) => PinDir::new(p),
            None => PinDir::new(Config::load_default()?.pin_dir),
        })
    }
}

/// Parses `KIND/LEN` for clap.
pub fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).map_err(|e| e.to_string())
}
