//! `toa doctor`: every prerequisite, each problem with its fix.

use anyhow::Result;
use clap::Args;
use toa::ops::doctor;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: DoctorArgs) -> Result<()> {
    let checks = doctor::run();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", doctor::render(&checks));
    }
    if doctor::failed(&checks) {
        anyhow::bail!("some checks failed (see above)");
    }
    Ok(())
}
