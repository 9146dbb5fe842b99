//! `toa stats`: the receiver's counters, and those of the running proxies
//! and packet-level forwarders.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use toa::{
    forwarder::{
        lb,
        proxy::stats::{self, ProxyStats},
    },
    ops::stats::Snapshot,
};

use super::args::PinArgs;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one JSON object (counter → total, plus `per_cpu`; the proxies
    /// under "proxies", or one under "proxy" with --proxy-socket; the
    /// packet-level forwarders under "lbs", or one under "lb" with --lb-socket).
    #[arg(long)]
    json: bool,
    /// Stats socket of one `toa proxy` to show (default: every proxy that
    /// serves at /run/toa/proxy-NAME.sock; none with --lb-socket).
    #[arg(long, value_name = "PATH")]
    proxy_socket: Option<PathBuf>,
    /// Stats socket of one `toa lb` to show (default: every forwarder that
    /// serves at /run/toa/lb*.sock; none with --proxy-socket).
    #[arg(long, value_name = "PATH")]
    lb_socket: Option<PathBuf>,
    #[command(flatten)]
    pins: PinArgs,
}

pub fn run(args: StatsArgs) -> Result<()> {
    // One forwarder asked for by its socket: that one, and no discovery of the others.
    let proxies: Vec<ProxyStats> = match (&args.proxy_socket, &args.lb_socket) {
        (Some(path), _) => stats::fetch(path).into_iter().collect(),
        (None, Some(_)) => Vec::new(),
        (None, None) => stats::discover().iter().filter_map(|p| stats::fetch(p)).collect(),
    };
    let lbs: Vec<serde_json::Value> = match (&args.lb_socket, &args.proxy_socket) {
        (Some(path), _) => lb::read_stats(path).into_iter().collect(),
        (None, Some(_)) => Vec::new(),
        (None, None) => lb::discover().iter().filter_map(|p| lb::read_stats(p)).collect(),
    };
    let snapshot = match Snapshot::read_pinned(&args.pins.resolve()?) {
        Ok(s) => Some(s),
        Err(toa::Error::NotRunning { .. }) if !proxies.is_empty() || !lbs.is_empty() => None,
        Err(e) => return Err(e.into()),
    };
    if args.json {
        let mut v = snapshot.map_or_else(|| serde_json::json!({}), |s| s.to_json());
        match (&args.proxy_socket, proxies.first()) {
            (Some(_), Some(p)) => v["proxy"] = serde_json::to_value(p)?,
            (Some(_), None) => {}
            (None, _) if args.lb_socket.is_none() => v["proxies"] = serde_json::to_value(&proxies)?,
            (None, _) => {}
        }
        match (&args.lb_socket, lbs.first()) {
            (Some(_), Some(l)) => v["lb"] = l.clone(),
            (Some(_), None) => {}
            (None, _) if args.proxy_socket.is_none() => v["lbs"] = lbs.clone().into(),
            (None, _) => {}
        }
        println!("{v}");
    } else {
        if let Some(s) = snapshot {
            print!("{}", s.to_text());
        }
        for p in &proxies {
            print!("{}", stats::render_text(p));
        }
        for l in &lbs {
            print!("{}", lb::render_text(l));
        }
    }
    Ok(())
}
