//! `toa man`: the man pages.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write every page (toa.1, toa-agent.1, ...) into this directory instead.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

/// Prints the page of `command`, or writes a page per subcommand into `--out-dir`.
pub fn run(args: ManArgs, command: clap::Command) -> Result<()> {
    match args.out_dir {
        Some(dir) => clap_mangen::generate_to(command, &dir)
            .with_context(|| format!("writing the man pages into {}", dir.display())),
        None => clap_mangen::Man::new(command).render(&mut std::io::stdout()).context("writing the man page"),
    }
}
