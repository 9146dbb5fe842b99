//! `toa reload`: the running agent (or a `toa proxy`) re-reads its
//! configuration, and says whether it applied it.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use toa::{
    config::{
        Duration,
        proxy::{ProxyName, default_stats_socket},
    },
    forwarder::proxy::control,
    ops::readiness,
};

use super::args::PinArgs;

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// How long to wait for the agent to report the outcome.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    timeout: Duration,
    /// Reload the `toa proxy` named NAME (stats socket /run/toa/proxy-NAME.sock) instead of the agent.
    #[arg(long, value_name = "NAME", conflicts_with = "proxy_socket")]
    proxy: Option<String>,
    /// Reload the `toa proxy` whose stats socket is PATH instead of the agent.
    #[arg(long, value_name = "PATH")]
    proxy_socket: Option<PathBuf>,
    #[command(flatten)]
    pins: PinArgs,
}

pub fn run(args: ReloadArgs) -> Result<()> {
    let socket = match (&args.proxy, &args.proxy_socket) {
        (Some(name), _) => Some(default_stats_socket(&name.parse::<ProxyName>()?)),
        (None, socket) => socket.clone(),
    };
    if let Some(socket) = socket {
        let stats = control::reload(&socket, args.timeout.0)?;
        println!("configuration re-applied (proxy {}, pid {}, reload {})", stats.name, stats.pid, stats.reloads);
        return Ok(());
    }
    // A file that does not parse is refused here, before the agent is disturbed.
    let pins = args.pins.resolve().context("not reloaded (the agent keeps the configuration in force)")?;
    let state = readiness::reload(&pins, args.timeout.0)?;
    println!("configuration re-applied (agent pid {}, reload {})", state.pid, state.reloads);
    Ok(())
}
