//! `toa config`: the configuration in effect, as TOML that `toa agent
//! --config` reads back, or the commented defaults.

use std::{io::Write as _, path::PathBuf};

use anyhow::Result;
use clap::Args;
use toa::{
    config::{Config, DEFAULT_TOML},
    sys::paths,
};

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print the commented default configuration.
    #[arg(long)]
    default: bool,
    /// The file to check and print in effect [default: /etc/toa/toa.toml].
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "default")]
    config: Option<PathBuf>,
}

pub fn run(args: ConfigArgs) -> Result<()> {
    if args.default {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let path = args.config.unwrap_or_else(|| PathBuf::from(paths::CONFIG_FILE));
    let config = if path.exists() { Config::load(&path)? } else { Config::default() };
    let mut out = std::io::stdout();
    writeln!(
        out,
        "# in effect (from {})",
        if path.exists() { path.display().to_string() } else { "the defaults".into() }
    )?;
    write!(out, "{}", config.to_toml()?)?;
    Ok(())
}
