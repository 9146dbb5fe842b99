//! `toa sniff`: TOA options on the wire.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use toa::ops::sniff::{self, SniffOptions};
use toa_common::Format;

use super::args::parse_format;

#[derive(Debug, Args)]
pub struct SniffArgs {
    /// Interface to capture on.
    #[arg(long, short = 'i', value_name = "IF")]
    iface: String,
    /// Capture in this network namespace (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Exit after printing N segments.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Accepted option format KIND/LEN; repeat for several (default: the agent's default formats).
    #[arg(long = "format", value_name = "KIND/LEN", value_parser = parse_format)]
    formats: Vec<Format>,
    /// Print every TCP segment, also those without a TOA option.
    #[arg(long)]
    all: bool,
    /// Only segments from or to this port.
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SniffArgs) -> Result<()> {
    let opts = SniffOptions {
        iface: args.iface,
        netns: args.netns,
        count: args.count,
        formats: args.formats,
        all: args.all,
        port: args.port,
        json: args.json,
    };
    sniff::run(&opts, &mut std::io::stdout().lock())?;
    Ok(())
}
