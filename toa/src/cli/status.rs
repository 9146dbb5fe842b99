//! `toa status`: what is attached and pinned.

use anyhow::Result;
use clap::Args;
use toa::ops::status::Status;

use super::args::PinArgs;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pins: PinArgs,
}

pub fn run(args: StatusArgs) -> Result<()> {
    let status = Status::read(&args.pins.resolve()?);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.to_text());
    }
    Ok(())
}
