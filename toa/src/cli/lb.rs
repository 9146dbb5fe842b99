//! `toa lb`: the packet-level forwarder. The flags describe its services;
//! the library validates them and runs it.

use std::path::PathBuf;

use anyhow::Result;
use toa::forwarder::lb::{self, DEFAULT_STATS_SOCKET, Flags};

/// Command-line arguments of `toa lb`.
#[derive(Debug, clap::Args)]
pub struct LbArgs {
    /// Virtual service VIP:PORT clients connect to; repeat for an IPv4 and an IPv6 one.
    #[arg(long = "listen", value_name = "VIP:PORT", required = true)]
    listen: Vec<String>,
    /// A backend ADDR:PORT; repeat for several (each serves the services of its address family).
    #[arg(long = "backend", value_name = "ADDR:PORT")]
    backends: Vec<String>,
    /// Local address the forwarder connects to backends from (FullNAT source); one per family in use.
    #[arg(long = "snat", value_name = "LOCAL_ADDR", required = true)]
    snat: Vec<String>,
    /// Interface to forward on; repeat (default: every non-loopback interface of this network namespace).
    #[arg(long = "iface", value_name = "IF")]
    ifaces: Vec<String>,
    /// Option kind for IPv4 clients (8-byte option): 254, 200 or 253.
    #[arg(long, value_name = "KIND", default_value = "254")]
    kind: String,
    /// Option kind for IPv6 clients (20-byte option): 253 or 254.
    #[arg(long, value_name = "KIND", default_value = "253")]
    kind6: String,
    /// Packets that carry the option: any of syn, ack, data, rst.
    #[arg(long, value_name = "LIST", default_value = "ack,data")]
    toa_packets: String,
    /// Local ports for translated flows, LO-HI (keep it outside the host's ephemeral range).
    #[arg(long, value_name = "LO-HI", default_value = "1024-32767")]
    snat_ports: String,
    /// Do not create the segmenter: GSO packets that need the option then go without it (counted).
    #[arg(long)]
    no_segmenter: bool,
    /// Unix socket where the counters are served as JSON.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_STATS_SOCKET)]
    stats_socket: PathBuf,
}

/// Runs the forwarder until SIGINT/SIGTERM.
pub fn run(args: LbArgs) -> Result<()> {
    let flags = Flags {
        listen: args.listen,
        backends: args.backends,
        snat: args.snat,
        ifaces: args.ifaces,
        kind: args.kind,
        kind6: args.kind6,
        toa_packets: args.toa_packets,
        snat_ports: args.snat_ports,
        segmenter: !args.no_segmenter,
        stats_socket: args.stats_socket,
    };
    let settings = flags.to_settings()?;
    Ok(lb::run(&settings)?)
}
