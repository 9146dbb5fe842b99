//! `toa reload`: the running agent re-reads its configuration, and says whether it applied it.

use anyhow::{Context as _, Result};
use clap::Args;
use toa::{config::Duration, ops::readiness};

use super::args::PinArgs;

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// How long to wait for the agent to report the outcome.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    timeout: Duration,
    #[command(flatten)]
    pins: PinArgs,
}

pub fn run(args: ReloadArgs) -> Result<()> {
    // A file that does not parse is refused here, before the agent is disturbed.
    let pins = args.pins.resolve().context("not reloaded (the agent keeps the configuration in force)")?;
    let state = readiness::reload(&pins, args.timeout.0)?;
    println!("configuration re-applied (agent pid {}, reload {})", state.pid, state.reloads);
    Ok(())
}
