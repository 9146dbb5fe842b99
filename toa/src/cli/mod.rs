//! Command-line definitions: one module per subcommand, each a thin layer
//! over the library. A new subcommand is one new file and one line in
//! [`Command`].

mod agent;
mod args;
mod completions;
mod config;
mod detach;
mod doctor;
mod inject;
mod lb;
mod man;
mod proxy;
mod reload;
mod sniff;
mod stats;
mod status;
mod table;

use anyhow::Result;
use clap::{CommandFactory as _, Parser, Subcommand};

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
    Agent(agent::AgentArgs),
    /// Print the receiver's counters (like /proc/net/toa_stats).
    Stats(stats::StatsArgs),
    /// Show what is attached and pinned, kernel facts and a counter summary.
    Status(status::StatusArgs),
    /// Make the running agent (or, with --proxy, a `toa proxy`) re-read its configuration (SIGHUP) and report whether it applied.
    ///
    /// Exits 0 once the new configuration is in force, 1 when it was refused
    /// (the previous one stays; the reason is printed) or nothing answers.
    Reload(reload::ReloadArgs),
    /// List the live connections that carry a real client (like /proc/net/toa_table).
    ///
    /// Reads each TCP socket's stored address through the kernel's socket
    /// diagnostics (as `ss` does): nothing is added to the data path.
    Table(table::TableArgs),
    /// Decode TOA options on the wire, live: one line per TCP segment that carries one.
    Sniff(sniff::SniffArgs),
    /// Check the system for everything toa needs, with the fix for each problem.
    Doctor(doctor::DoctorArgs),
    /// Detach every toa program and remove every pin (when no agent runs).
    Detach(args::PinArgs),
    /// Print the configuration (`--default`: the commented defaults).
    Config(config::ConfigArgs),
    /// Write a TOA option into the connections a cgroup makes (testing and demos).
    ///
    /// Runs in the foreground until SIGINT/SIGTERM; detaches on exit.
    Inject(inject::InjectArgs),
    /// Forward TCP connections to backends, inserting the client's address as a TOA option.
    Proxy(Box<proxy::ProxyArgs>),
    /// Forward packets to backends (FullNAT in eBPF), inserting the client's address as a TOA option.
    ///
    /// Runs in the foreground until SIGINT/SIGTERM; detaches everything on exit.
    Lb(Box<lb::LbArgs>),
    /// Print shell completions.
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff); `--out-dir`: write toa.1 and a page per subcommand there.
    Man(man::ManArgs),
}

/// Runs the chosen command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Stats(args) => stats::run(args),
        Command::Status(args) => status::run(args),
        Command::Reload(args) => reload::run(args),
        Command::Table(args) => table::run(args),
        Command::Sniff(args) => sniff::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Config(args) => config::run(args),
        Command::Inject(args) => inject::run(args),
        Command::Proxy(args) => proxy::run(*args),
        Command::Lb(args) => lb::run(*args),
        Command::Completions(args) => completions::run(args, Cli::command()),
        Command::Man(args) => man::run(args, Cli::command()),
    }
}
