//! `toa stats`: the receiver's counters, and those of the running proxies.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use toa::{
    forwarder::proxy::stats::{self, ProxyStats},
    ops::stats::Snapshot,
};

use super::args::PinArgs;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one JSON object (counter → total, plus `per_cpu`; the proxies
    /// under "proxies", or one under "proxy" with --proxy-socket).
    #[arg(long)]
    json: bool,
    /// Stats socket of one `toa proxy` to show (default: every proxy that
    /// serves at /run/toa/proxy-NAME.sock).
    #[arg(long, value_name = "PATH")]
    proxy_socket: Option<PathBuf>,
    #[command(flatten)]
    pins: PinArgs,
}

pub fn run(args: StatsArgs) -> Result<()> {
    let proxies: Vec<ProxyStats> = match &args.proxy_socket {
        Some(path) => stats::fetch(path).into_iter().collect(),
        None => stats::discover().iter().filter_map(|p| stats::fetch(p)).collect(),
    };
    let snapshot = match Snapshot::read_pinned(&args.pins.resolve()?) {
        Ok(s) => Some(s),
        Err(toa::Error::NotRunning { .. }) if !proxies.is_empty() => None,
        Err(e) => return Err(e.into()),
    };
    if args.json {
        let mut v = snapshot.map_or_else(|| serde_json::json!({}), |s| s.to_json());
        match (&args.proxy_socket, proxies.first()) {
            (Some(_), Some(p)) => v["proxy"] = serde_json::to_value(p)?,
            (Some(_), None) => {}
            (None, _) => v["proxies"] = serde_json::to_value(&proxies)?,
        }
        println!("{v}");
    } else {
        if let Some(s) = snapshot {
            print!("{}", s.to_text());
        }
        for p in &proxies {
            print!("{}", stats::render_text(p));
        }
    }
    Ok(())
}
