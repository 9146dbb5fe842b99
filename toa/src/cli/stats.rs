//! `toa stats`: the receiver's counters, and a running proxy's.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use toa::{config::proxy::DEFAULT_STATS_SOCKET, forwarder::proxy, ops::stats::Snapshot};

use super::args::PinArgs;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one JSON object (counter → total, plus `per_cpu`).
    #[arg(long)]
    json: bool,
    /// Stats socket of a running `toa proxy`; when it answers, its counters
    /// follow (under "proxy" in JSON).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_STATS_SOCKET)]
    proxy_socket: PathBuf,
    #[command(flatten)]
    pins: PinArgs,
}

pub fn run(args: StatsArgs) -> Result<()> {
    let proxy = proxy::stats::fetch(&args.proxy_socket);
    let snapshot = match Snapshot::read_pinned(&args.pins.resolve()?) {
        Ok(s) => Some(s),
        Err(toa::Error::NotRunning { .. }) if proxy.is_some() => None,
        Err(e) => return Err(e.into()),
    };
    if args.json {
        let mut v = snapshot.map_or_else(|| serde_json::json!({}), |s| s.to_json());
        if let Some(p) = proxy {
            v["proxy"] = p;
        }
        println!("{v}");
    } else {
        if let Some(s) = snapshot {
            print!("{}", s.to_text());
        }
        if let Some(p) = proxy {
            print!("{}", proxy::stats::render_text(&p));
        }
    }
    Ok(())
}
