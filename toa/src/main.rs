//! `toa`: the command-line front end of the toa library.

mod cli;

// Cargo gives the binary every dependency of the package; these only the
// library uses (and the tests' dependencies only the tests).
use {aya as _, serde as _, thiserror as _, toa_client as _, toml as _};
#[cfg(test)]
use {integration_test as _, yaml_rust2 as _};

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let usage = e.downcast_ref::<toa::Error>().is_some_and(toa::Error::is_usage);
            eprintln!("toa: {e:#}");
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// `tracing` to stderr, filtered by `RUST_LOG` (default `info`); `log`
/// records (from aya) are bridged in.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}
