//! `toa table`: the live connections that carry a real client.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use toa::ops::table::{self, Namespaces};

use super::args::PinArgs;

#[derive(Debug, Args)]
pub struct TableArgs {
    /// Print a JSON array, one object per connection.
    #[arg(long)]
    json: bool,
    /// List the sockets of this network namespace (a file like /run/netns/NAME or /proc/PID/ns/net); repeatable.
    #[arg(long, value_name = "PATH", conflicts_with = "all_netns")]
    netns: Vec<PathBuf>,
    /// List the sockets of every network namespace on the host.
    #[arg(long)]
    all_netns: bool,
    #[command(flatten)]
    pins: PinArgs,
}

pub fn run(args: TableArgs) -> Result<()> {
    let namespaces = match (args.all_netns, args.netns.is_empty()) {
        (true, _) => Namespaces::All,
        (false, true) => Namespaces::Current,
        (false, false) => Namespaces::Paths(args.netns.clone()),
    };
    let entries = table::read(&args.pins.resolve()?, &namespaces)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        print!("{}", table::render(&entries, !matches!(namespaces, Namespaces::Current)));
    }
    Ok(())
}
