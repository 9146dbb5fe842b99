//! Command-line definitions and their thin handlers.

use std::{io::Write as _, net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use toa::{
    config::{Config, DEFAULT_TOML, Prefix},
    forwarder::inject::{self, Injector},
    ops::{
        doctor,
        metrics::MetricsServer,
        sniff::{self, SniffOptions},
        stats::Snapshot,
        status::Status,
        table::{self, Namespaces},
    },
    receiver::agent::{self, Agent, AgentConfig},
    sys::{
        paths::{self, PinDir},
        signals::TerminationSignals,
    },
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
    /// Run the receiver in the foreground until SIGINT/SIGTERM (SIGHUP re-reads the config).
    ///
    /// Loads the eBPF programs, attaches them to the configured cgroups (the
    /// whole host by default) and pins them under the pin directory. A clean
    /// exit detaches everything unless `persist = true`.
    Agent(AgentArgs),
    /// Print the receiver's counters (like /proc/net/toa_stats).
    Stats(StatsArgs),
    /// Show what is attached and pinned, kernel facts and a counter summary.
    Status(StatusArgs),
    /// List the live connections that carry a real client (like /proc/net/toa_table).
    ///
    /// Reads each TCP socket's stored address through the kernel's socket
    /// diagnostics (as `ss` does): nothing is added to the data path.
    Table(TableArgs),
    /// Decode TOA options on the wire, live: one line per TCP segment that carries one.
    Sniff(SniffArgs),
    /// Check the system for everything toa needs, with the fix for each problem.
    Doctor(DoctorArgs),
    /// Detach every toa program and remove every pin (when no agent runs).
    Detach(PinArgs),
    /// Print the configuration (`--default`: the commented defaults).
    Config(ConfigArgs),
    /// Write a TOA option into the connections a cgroup makes (testing and demos).
    ///
    /// Runs in the foreground until SIGINT/SIGTERM; detaches on exit.
    Inject(InjectArgs),
    /// Forward TCP connections to backends, inserting the client's address as a TOA option.
    Proxy(toa::forwarder::proxy::ProxyArgs),
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff); `--out-dir`: write toa.1 and a page per subcommand there.
    Man {
        /// Write every page (toa.1, toa-agent.1, ...) into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct PinArgs {
    /// Directory on bpffs where the agent pins its maps and links [default: from the config, else /sys/fs/bpf/toa].
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
}

impl PinArgs {
    fn resolve(&self) -> Result<PinDir> {
        Ok(match &self.pin_dir {
            Some(p) => PinDir::new(p),
            None => PinDir::new(Config::load_default()?.pin_dir),
        })
    }
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Configuration file [default: /etc/toa/toa.toml when it exists].
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// cgroup v2 directory to act on; repeat for several (default: the whole host).
    #[arg(long = "cgroup", value_name = "DIR")]
    cgroups: Vec<PathBuf>,
    /// Accepted option format KIND/LEN; repeat for several (default: 254/8, 200/8, 253/20, 254/20).
    #[arg(long = "format", value_name = "KIND/LEN", value_parser = parse_format)]
    formats: Vec<Format>,
    /// Trusted forwarder prefix (CIDR); repeat for several (default: trust every sender).
    #[arg(long = "trust", value_name = "CIDR", value_parser = parse_prefix)]
    trusted: Vec<Prefix>,
    /// Local port to act on; repeat for several (default: all).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    ports: Vec<u16>,
    /// Also take the option from the SYN.
    #[arg(long)]
    capture_syn: bool,
    /// Do not look for the option in the packets after the handshake ACK.
    #[arg(long)]
    no_capture_data: bool,
    /// Do not attach the getsockopt program (vendor calls 1348/4096 unanswered, no per-call cost).
    #[arg(long)]
    no_getsockopt: bool,
    /// Keep the programs attached after a clean stop.
    #[arg(long)]
    persist: bool,
    /// Prometheus metrics listener ADDR:PORT; "" disables it.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    pins: PinArgs,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Print one JSON object (counter → total, plus `per_cpu`).
    #[arg(long)]
    json: bool,
    /// Stats socket of a running `toa proxy`; when it answers, its counters
    /// follow (under "proxy" in JSON).
    #[arg(long, value_name = "PATH", default_value = toa::forwarder::proxy::settings::DEFAULT_STATS_SOCKET)]
    proxy_socket: PathBuf,
    #[command(flatten)]
    pins: PinArgs,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pins: PinArgs,
}

#[derive(Debug, Args)]
struct TableArgs {
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

#[derive(Debug, Args)]
struct SniffArgs {
    /// Interface to capture on.
    #[arg(long, short = 'i', value_name = "IF")]
    iface: String,
    /// Capture in this network namespace (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Exit after printing N segments.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    /// Accepted option format KIND/LEN; repeat for several (default: 254/8, 200/8, 253/20, 254/20).
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

#[derive(Debug, Args)]
struct DoctorArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// Print the commented default configuration.
    #[arg(long)]
    default: bool,
    /// The file to check and print in effect [default: /etc/toa/toa.toml].
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "default")]
    config: Option<PathBuf>,
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

fn parse_prefix(s: &str) -> Result<Prefix, String> {
    s.parse::<Prefix>().map_err(|e| e.to_string())
}

/// Runs the chosen command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Stats(args) => stats(args),
        Command::Status(args) => status(args),
        Command::Table(args) => run_table(args),
        Command::Sniff(args) => run_sniff(args),
        Command::Doctor(args) => run_doctor(args),
        Command::Detach(args) => detach(args),
        Command::Config(args) => config(args),
        Command::Inject(args) => run_inject(args),
        Command::Proxy(args) => Ok(toa::forwarder::proxy::run(args)?),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "toa", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out_dir: Some(dir) } => {
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            Ok(())
        }
        Command::Man { out_dir: None } => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()).context("writing the man page")?;
            Ok(())
        }
    }
}

/// The configuration file in effect, and the agent settings after command-line overrides.
fn agent_settings(args: &AgentArgs) -> Result<(Config, AgentConfig)> {
    let mut file = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::load_default()?,
    };
    if let Some(p) = &args.pins.pin_dir {
        file.pin_dir = p.clone();
    }
    if let Some(m) = &args.metrics_listen {
        file.metrics_listen = m.clone();
        file.metrics_addr()?;
    }
    let mut settings = AgentConfig::from_config(&file)?;
    if !args.cgroups.is_empty() {
        settings.cgroups = args.cgroups.clone();
    }
    if !args.formats.is_empty() {
        settings.formats = args.formats.clone();
    }
    if !args.trusted.is_empty() {
        settings.trusted = args.trusted.clone();
    }
    if !args.ports.is_empty() {
        settings.ports = args.ports.clone();
    }
    settings.capture_syn |= args.capture_syn;
    settings.capture_data &= !args.no_capture_data;
    settings.getsockopt &= !args.no_getsockopt;
    settings.persist |= args.persist;
    Ok((file, settings))
}

fn run_agent(args: AgentArgs) -> Result<()> {
    let signals = TerminationSignals::block().context("blocking SIGINT/SIGTERM/SIGHUP")?;
    let (file, settings) = agent_settings(&args)?;
    let mut agent = Agent::start(&settings)?;
    let metrics = match file.metrics_addr()? {
        Some(addr) => match MetricsServer::start(addr, settings.pins.clone()) {
            Ok(m) => Some(m),
            Err(e) => {
                // Nothing half-attached: undo the start before reporting.
                let _ = agent.stop();
                return Err(e.into());
            }
        },
        None => None,
    };
    // RUST_LOG=debug: log each connection that gets a real client (polls `toa table`'s source).
    let connlog = toa::ops::watch::ConnectionLog::start_if_debug(settings.pins.clone());
    for spec in agent.programs() {
        tracing::info!(program = spec.name, hook = spec.hook.attach_type(), "{}", spec.role);
    }
    loop {
        let sig = signals.wait().context("waiting for a signal")?;
        if sig == libc::SIGHUP {
            match agent_settings(&args) {
                Ok((_, new)) => match agent.apply(&new) {
                    Ok(()) => tracing::info!("configuration re-applied"),
                    Err(e) => tracing::error!(error = %e, "configuration not applied; the previous one stays"),
                },
                Err(e) => tracing::error!(error = %e, "configuration not applied; the previous one stays"),
            }
            continue;
        }
        tracing::info!(signal = sig, "stopping");
        break;
    }
    drop(connlog);
    drop(metrics);
    agent.stop()?;
    Ok(())
}

fn stats(args: StatsArgs) -> Result<()> {
    let proxy = toa::forwarder::proxy::stats::fetch(&args.proxy_socket);
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
            print!("{}", toa::forwarder::proxy::stats::render_text(&p));
        }
    }
    Ok(())
}

fn status(args: StatusArgs) -> Result<()> {
    let status = Status::read(&args.pins.resolve()?);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.to_text());
    }
    Ok(())
}

fn run_table(args: TableArgs) -> Result<()> {
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

fn run_sniff(args: SniffArgs) -> Result<()> {
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

fn run_doctor(args: DoctorArgs) -> Result<()> {
    let checks = doctor::run();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        print!("{}", doctor::render(&checks));
    }
    if checks.iter().any(|c| c.verdict == doctor::Verdict::Fail) {
        anyhow::bail!("some checks failed (see above)");
    }
    Ok(())
}

fn detach(args: PinArgs) -> Result<()> {
    let pins = args.resolve()?;
    let n = agent::detach(&pins)?;
    println!("detached {n} links and removed the pins under {}", pins.root().display());
    Ok(())
}

fn config(args: ConfigArgs) -> Result<()> {
    if args.default {
        print!("{DEFAULT_TOML}");
        return Ok(());
    }
    let path = args.config.unwrap_or_else(|| PathBuf::from(paths::CONFIG_FILE));
    let config = if path.exists() { Config::load(&path)? } else { Config::default() };
    let mut out = std::io::stdout();
    writeln!(
        out,
        "# in effect (from {})",
        if path.exists() { path.display().to_string() } else { "the defaults".into() }
    )?;
    writeln!(out, "{config:#?}")?;
    Ok(())
}

fn run_inject(args: InjectArgs) -> Result<()> {
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
    while signals.wait().context("waiting for a signal")? == libc::SIGHUP {}
    let counters = injector.counters()?;
    tracing::info!(
        written = counters.total("inject_written").unwrap_or(0),
        no_room = counters.total("inject_no_room").unwrap_or(0),
        "inject stopped"
    );
    Ok(())
}
