//! `toa detach`: remove every program, link and pin.

use anyhow::Result;
use toa::receiver::agent;

use super::args::PinArgs;

pub fn run(args: PinArgs) -> Result<()> {
    let pins = args.resolve()?;
    let n = agent::detach(&pins)?;
    println!("detached {n} links and removed the pins under {}", pins.root().display());
    Ok(())
}
