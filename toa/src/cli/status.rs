//! `toa status`: what is attached and pinned.

use anyhow::Result;
use clap::Args;
use toa::{
    config::Duration,
    ops::{readiness, status::Status},
};

use super::args::PinArgs;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// First wait until an agent on the pin directory has every program attached
    /// (new connections are translated from then on); exit 1 on timeout.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (e.g. 30s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "30s", requires = "wait")]
    timeout: Duration,
    #[command(flatten)]
    pins: PinArgs,
}

pub fn run(args: StatusArgs) -> Result<()> {
    let pins = args.pins.resolve()?;
    if args.wait {
        readiness::wait_attached(&pins, args.timeout.0)?;
    }
    let status = Status::read(&pins);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.to_text());
    }
    Ok(())
}
