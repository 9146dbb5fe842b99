//! `toa inject`: write an option into the connections a cgroup makes.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use toa::{
    config::{Packets, proxy::Kind4},
    forwarder::inject::{self, Injector},
    sys::signals::TerminationSignals,
};

#[derive(Debug, Args)]
pub struct InjectArgs {
    /// cgroup v2 directory whose outgoing connections get the option.
    #[arg(long, value_name = "DIR")]
    cgroup: PathBuf,
    /// Option kind.
    #[arg(long, default_value_t = Kind4::DEFAULT.get())]
    kind: u8,
    /// Client address to write, e.g. 203.0.113.7:4242 or [2001:db8::7]:4242.
    #[arg(long, value_name = "ADDR:PORT", required_unless_present = "raw", conflicts_with = "raw")]
    addr: Option<SocketAddr>,
    /// Option length: 8 or 20 (with port, the default by family), 7 or 19 (version form, no port).
    #[arg(long, value_name = "LEN", requires = "addr")]
    len: Option<u8>,
    /// Write these exact option bytes instead (hex: kind, length, payload).
    #[arg(long, value_name = "HEX")]
    raw: Option<String>,
    /// Packets to write it into: any of syn, ack, data.
    #[arg(long, value_name = "LIST", default_value_t = Packets::DEFAULT.to_string())]
    packets: String,
}

pub fn run(args: InjectArgs) -> Result<()> {
    let signals = TerminationSignals::block().context("blocking SIGINT/SIGTERM")?;
    let packets = args.packets.parse::<Packets>()?.bits();
    let spec = match (&args.raw, args.addr) {
        (Some(hex), _) => inject::raw_spec(&inject::parse_hex(hex)?, packets)?,
        (None, Some(addr)) => inject::spec_for(addr, args.kind, args.len, packets)?,
        (None, None) => anyhow::bail!("give --addr ADDR:PORT or --raw HEX"),
    };
    let mut injector = Injector::attach(&args.cgroup)?;
    injector.set_default(spec)?;
    tracing::info!(cgroup = %args.cgroup.display(), option = ?&spec.option[..spec.len as usize], "inject ready");
    while signals.wait().context("waiting for a signal")? == libc::SIGHUP {}
    let counters = injector.counters()?;
    tracing::info!(
        written = counters.total("inject_written").unwrap_or(0),
        no_room = counters.total("inject_no_room").unwrap_or(0),
        "inject stopped"
    );
    Ok(())
}
