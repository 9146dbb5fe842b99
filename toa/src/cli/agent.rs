//! `toa agent`: the receiver in the foreground.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use toa::{
    config::{Config, Prefix},
    ops::{metrics::MetricsServer, readiness::StateFile, save_syn, watch::ConnectionLog},
    receiver::agent::{Agent, AgentConfig},
    sys::{notify::ServiceManager, service, signals::TerminationSignals},
};
use toa_common::Format;

use super::args::{PinArgs, parse_format};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Configuration file [default: /etc/toa/toa.toml when it exists].
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// cgroup v2 directory to act on; repeat for several (default: the whole host).
    #[arg(long = "cgroup", value_name = "DIR")]
    cgroups: Vec<PathBuf>,
    /// Accepted option format KIND/LEN; repeat for several (default: the configuration file's `formats`).
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

fn parse_prefix(s: &str) -> Result<Prefix, String> {
    s.parse::<Prefix>().map_err(|e| e.to_string())
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
        file.metrics_listen = m.parse()?;
    }
    let mut settings = AgentConfig::from_config(&file);
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

pub fn run(args: AgentArgs) -> Result<()> {
    let signals = TerminationSignals::block().context("blocking SIGINT/SIGTERM/SIGHUP")?;
    let (file, settings) = agent_settings(&args)?;
    let systemd = ServiceManager::from_env();
    // Refuse a start without the privileges or with a wrong cgroup before binding anything.
    Agent::preflight(&settings)?;
    // Bound before attaching: /healthz answers 503 until the programs are attached.
    let metrics = match file.metrics_listen.0 {
        Some(addr) => Some(MetricsServer::start(addr, settings.pins.clone())?),
        None => None,
    };
    let mut agent = Agent::start(&settings)?;
    // capture_syn: listeners that predate the agent keep their SYNs too.
    if settings.capture_syn {
        save_syn::on_existing_listeners(&mut agent);
    }
    let mut state = match StateFile::attached(&settings.pins) {
        Ok(s) => s,
        Err(e) => {
            // Nothing half-attached: undo the start before reporting.
            let _ = agent.stop();
            return Err(e.into());
        }
    };
    // RUST_LOG=debug: log each connection that gets a real client (polls `toa table`'s source).
    let connlog = ConnectionLog::start_if_debug(settings.pins.clone());
    for spec in agent.programs() {
        tracing::info!(program = spec.name, hook = spec.hook.attach_type(), "{}", spec.role);
    }
    if let Some(m) = &metrics {
        tracing::info!(addr = %m.addr(), "metrics on /metrics, health on /healthz");
    }
    systemd.ready(&attached_status(&agent));
    loop {
        let sig = signals.wait().context("waiting for a signal")?;
        if sig == libc::SIGHUP {
            systemd.reloading();
            let outcome = agent_settings(&args).and_then(|(_, new)| Ok(agent.apply(&new)?));
            let error = match outcome {
                Ok(()) => {
                    tracing::info!("configuration re-applied");
                    if agent.config().capture_syn {
                        save_syn::on_existing_listeners(&mut agent);
                    }
                    None
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "configuration not applied; the previous one stays");
                    Some(format!("{e:#}"))
                }
            };
            if let Err(e) = state.reloaded(error) {
                tracing::warn!(error = %e, "could not record the reload's outcome");
            }
            systemd.ready(&attached_status(&agent));
            continue;
        }
        tracing::info!(signal = sig, "stopping");
        break;
    }
    // A restart job (systemctl restart): leave everything attached for the next agent.
    let restart = !agent.config().persist && service::restart_queued();
    systemd.stopping(if restart { "restarting: programs stay attached" } else { "stopping" });
    drop(state);
    drop(connlog);
    drop(metrics);
    if restart {
        tracing::info!("systemd restarts the agent: programs stay attached for the next one");
        agent.stop_attached()?;
    } else {
        agent.stop()?;
    }
    systemd.barrier(std::time::Duration::from_secs(5));
    Ok(())
}

/// The status line systemd shows for a ready agent.
fn attached_status(agent: &Agent) -> String {
    let cgroups: Vec<String> = agent.scopes().iter().map(|s| s.path.display().to_string()).collect();
    format!("translating: {} programs attached to {}", agent.programs().count(), cgroups.join(", "))
}
