//! `toa status`: what is attached and pinned, and the packet-level
//! forwarders that run.

use anyhow::Result;
use clap::Args;
use toa::{
    config::Duration,
    forwarder::lb,
    ops::{readiness, status::Status},
};

use super::args::PinArgs;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// First wait until an agent on the pin directory has every program attached
    /// (new connections are translated from then on); exit 1 on timeout.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits (e.g. 30s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "30s", requires = "wait")]
    timeout: Duration,
    #[command(flatten)]
    pins: PinArgs,
}

pub fn run(args: StatusArgs) -> Result<()> {
    let pins = args.pins.resolve()?;
    if args.wait {
        readiness::wait_attached(&pins, args.timeout.0)?;
    }
    let status = Status::read(&pins);
    // The forwarders serving at /run/toa/lb*.sock: what each forwards.
    let lbs: Vec<serde_json::Value> = lb::discover()
        .iter()
        .filter_map(|p| lb::read_stats(p))
        .map(|v| {
            serde_json::json!({
                "socket": v["socket"],
                "pid": v["pid"],
                "pin_dir": v["pin_dir"],
                "flows": v["flows"],
                "services": v["services"].as_array().into_iter().flatten().map(|s| serde_json::json!({
                    "listen": s["listen"],
                    "backends": s["backends"],
                    "backends_up": s["backends_up"],
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    if args.json {
        let mut v = serde_json::to_value(&status)?;
        v["lbs"] = lbs.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", status.to_text());
        for l in &lbs {
            println!(
                "lb {} (pid {}, pins {}): {} flows",
                l["socket"].as_str().unwrap_or("?"),
                l["pid"],
                l["pin_dir"].as_str().unwrap_or("?"),
                l["flows"]
            );
            for s in l["services"].as_array().into_iter().flatten() {
                println!(
                    "  service {}: {}/{} backends up",
                    s["listen"].as_str().unwrap_or("?"),
                    s["backends_up"],
                    s["backends"]
                );
            }
        }
    }
    Ok(())
}
