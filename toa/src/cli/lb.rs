//! `toa lb`: the packet-level forwarder. Its services come from the `[lb]`
//! section of a configuration file (`--config`) or from the flags; the
//! library validates them and runs it.

use std::path::PathBuf;

use anyhow::Result;
use toa::forwarder::lb::{self, Flags, Overrides, Source};

/// Command-line arguments of `toa lb`.
#[derive(Debug, clap::Args)]
pub struct LbArgs {
    /// Configuration file whose `[lb]` section describes the services (SIGHUP reads it again).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "backends", "snat", "ifaces", "kind", "kind6", "toa_packets", "snat_ports", "no_segmenter", "health_interval"])]
    config: Option<PathBuf>,
    /// Virtual service VIP:PORT clients connect to; repeat for an IPv4 and an IPv6 one.
    #[arg(long = "listen", value_name = "VIP:PORT", required_unless_present = "config")]
    listen: Vec<String>,
    /// A backend ADDR:PORT[,weight=N]; repeat for several (each serves the services of its address family).
    #[arg(long = "backend", value_name = "ADDR:PORT")]
    backends: Vec<String>,
    /// Local address the forwarder connects to backends from (FullNAT source); repeat per family, or
    /// list every node's and each node takes its own.
    #[arg(long = "snat", value_name = "LOCAL_ADDR", required_unless_present = "config")]
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
    /// Health-check every backend this often (TCP connect; 3 failures take it out, 2 successes bring it
    /// back); 0s: none. The config file sets every value per service.
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    health_interval: String,
    /// Unix socket where the counters are served as JSON (default: the config's, /run/toa/lb.sock).
    #[arg(long, value_name = "PATH")]
    stats_socket: Option<PathBuf>,
    /// Where maps and links are pinned (default: the config's, /sys/fs/bpf/toa-lb).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
}

/// Runs the forwarder until SIGINT/SIGTERM.
pub fn run(args: LbArgs) -> Result<()> {
    let source = match args.config {
        Some(path) => Source::File(path),
        None => {
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
                health_interval: args.health_interval,
            };
            Source::Flags(Box::new(flags.to_section()?))
        }
    };
    let overrides = Overrides { pin_dir: args.pin_dir, stats_socket: args.stats_socket };
    Ok(lb::run(&source, &overrides)?)
}
