//! `toa completions`: shell completions.

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Prints the completions of `command` for the shell asked for.
pub fn run(args: CompletionsArgs, mut command: clap::Command) -> Result<()> {
    clap_complete::generate(args.shell, &mut command, "toa", &mut std::io::stdout());
    Ok(())
}
