//! `toa detach`: remove every program, link and pin.

use anyhow::Result;
use toa::receiver::agent;

use super::args::PinArgs;

pub fn run(args: PinArgs) -> Result<()> {
    let pins = args.resolve()?;
    let done = agent::detach(&pins)?;
    for f in &done.left {
        println!("left {}: {}", f.path.display(), f.why);
    }
    if done.left.is_empty() {
        println!("detached {} links and removed the pins under {}", done.links, pins.root().display());
    } else {
        println!(
            "detached {} links and removed toa's pins under {}; left {} that are not toa's",
            done.links,
            pins.root().display(),
            done.left.len()
        );
    }
    Ok(())
}
