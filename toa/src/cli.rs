//! Command-line definitions and their thin handlers.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use toa::{
    agent::{Agent, AgentConfig},
    inject::{self, Injector},
    paths::{DEFAULT_PIN_DIR, PinDir},
    signals::TerminationSignals,
    stats::Snapshot,
};
use toa_common::Format;

/// TCP Option Address (TOA) with eBPF: servers behind FullNAT forwarders see
/// their real clients in getpeername() and accept().
#[derive(Debug, Parser)]
#[command(name = "toa", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the receiver in the foreground until SIGINT/SIGTERM.
    ///
    /// Loads the eBPF programs, attaches them to the cgroup (the whole host by
    /// default) and pins them under the pin directory. A clean exit detaches
    /// everything.
    Agent(AgentArgs),
    /// Print the receiver's counters (like /proc/net/toa_stats).
    Stats(StatsArgs),
    /// Write a TOA option into the connections a cgroup makes (testing and demos).
    ///
    /// Runs in the foreground until SIGINT/SIGTERM; detaches on exit.
    Inject(InjectArgs),
    /// Forward TCP connections to backends, inserting the client's address as a TOA option.
    Proxy(toa::proxy::ProxyArgs),
}

#[derive(Debug, Args)]
struct PinArgs {
    /// Directory on bpffs where the agent pins its maps and links.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// cgroup v2 directory to act on (default: the cgroup v2 root, i.e. the whole host).
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Accepted option format KIND/LEN; repeat for several
    /// (default: 254/8, 200/8, 253/20, 254/20).
    #[arg(long = "format", value_name = "KIND/LEN", value_parser = parse_format)]
    formats: Vec<Format>,
    #[command(flatten)]
    pins: PinArgs,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Print one JSON object (counter → total, plus `per_cpu`).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pins: PinArgs,
}

#[derive(Debug, Args)]
struct InjectArgs {
    /// cgroup v2 directory whose outgoing connections get the option.
    #[arg(long, value_name = "DIR")]
    cgroup: PathBuf,
    /// Option kind.
    #[arg(long, default_value_t = 254)]
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
    #[arg(long, value_name = "LIST", default_value = "ack,data")]
    packets: String,
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).map_err(|e| e.to_string())
}

/// Runs the chosen command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => agent(args),
        Command::Stats(args) => stats(args),
        Command::Inject(args) => inject(args),
        Command::Proxy(args) => Ok(toa::proxy::run(args)?),
    }
}

fn agent(args: AgentArgs) -> Result<()> {
    let signals = TerminationSignals::block().context("blocking SIGINT/SIGTERM")?;
    let config = AgentConfig { cgroup: args.cgroup, pins: PinDir::new(args.pins.pin_dir), formats: args.formats };
    let agent = Agent::start(&config)?;
    for spec in agent.programs() {
        tracing::info!(program = spec.name, hook = spec.hook.attach_type(), "{}", spec.role);
    }
    let sig = signals.wait().context("waiting for a signal")?;
    tracing::info!(signal = sig, "stopping");
    agent.stop()?;
    Ok(())
}

fn stats(args: StatsArgs) -> Result<()> {
    let snapshot = Snapshot::read_pinned(&PinDir::new(args.pins.pin_dir))?;
    if args.json {
        println!("{}", snapshot.to_json());
    } else {
        print!("{}", snapshot.to_text());
    }
    Ok(())
}

fn inject(args: InjectArgs) -> Result<()> {
    let signals = TerminationSignals::block().context("blocking SIGINT/SIGTERM")?;
    let packets = inject::parse_packets(&args.packets)?;
    let spec = match (&args.raw, args.addr) {
        (Some(hex), _) => inject::raw_spec(&inject::parse_hex(hex)?, packets)?,
        (None, Some(addr)) => inject::spec_for(addr, args.kind, args.len, packets)?,
        (None, None) => unreachable!("clap requires --addr or --raw"),
    };
    let mut injector = Injector::attach(&args.cgroup)?;
    injector.set_default(spec)?;
    tracing::info!(cgroup = %args.cgroup.display(), option = ?&spec.option[..spec.len as usize], "inject ready");
    signals.wait().context("waiting for a signal")?;
    let counters = injector.counters()?;
    tracing::info!(
        written = counters.total("inject_written").unwrap_or(0),
        no_room = counters.total("inject_no_room").unwrap_or(0),
        "inject stopped"
    );
    Ok(())
}
