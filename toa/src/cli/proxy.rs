//! `toa proxy`: the forwarder. The flags describe one listener; they are
//! merged with the configuration file's `[proxy]` section here (at start
//! and on every SIGHUP), and the library gets validated settings.
//!
//! The flags' defaults are the library's (the file's) defaults. Their values
//! are parsed by the same parsers as the file's, here rather than by clap, so
//! that a bad value is refused with one line as a bad file value is.

use std::path::PathBuf;

use anyhow::Result;
use toa::{
    Error,
    config::{
        Config, Duration, Packets,
        proxy::{
            BackendConfig, Balance, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, HealthConfig, Kind4, Kind6,
            ListenerConfig, ProxyConfig,
        },
        values::parse_addr,
    },
    forwarder::proxy::{self, Settings},
};

/// Command-line arguments of `toa proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Address to accept clients on, e.g. 0.0.0.0:80 or [::]:80 (dual-stack).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// A backend, ADDR:PORT[,kind=N][,kind6=N]; repeat for several.
    #[arg(long = "backend", value_name = "ADDR:PORT")]
    backends: Vec<String>,
    /// How to pick a backend: round-robin or least-conn.
    #[arg(long, value_name = "POLICY", default_value_t = Balance::default().to_string())]
    balance: String,
    /// Option kind for IPv4 clients (8-byte option): 254, 200 or 253.
    #[arg(long, value_name = "KIND", default_value_t = Kind4::DEFAULT.to_string())]
    kind: String,
    /// Option kind for IPv6 clients (20-byte option): 253 or 254.
    #[arg(long, value_name = "KIND", default_value_t = Kind6::DEFAULT.to_string())]
    kind6: String,
    /// Packets that carry the option: any of syn, ack, data.
    #[arg(long, value_name = "LIST", default_value_t = Packets::DEFAULT.to_string())]
    toa_packets: String,
    /// How long a backend may take to accept (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_CONNECT_TIMEOUT.to_string())]
    connect_timeout: String,
    /// Close connections silent this long in both directions.
    #[arg(long, value_name = "DURATION", default_value_t = DEFAULT_IDLE_TIMEOUT.to_string())]
    idle_timeout: String,
    /// Time between health checks of a backend (0 disables them).
    #[arg(long, value_name = "DURATION", default_value_t = HealthConfig::DEFAULT.interval.to_string())]
    health_interval: String,
    /// How long one health check may take.
    #[arg(long, value_name = "DURATION", default_value_t = HealthConfig::DEFAULT.timeout.to_string())]
    health_timeout: String,
    /// Consecutive successful checks that bring a backend back.
    #[arg(long, value_name = "N", default_value_t = HealthConfig::DEFAULT.rise)]
    rise: u32,
    /// Consecutive failed checks that take a backend out.
    #[arg(long, value_name = "N", default_value_t = HealthConfig::DEFAULT.fall)]
    fall: u32,
    /// Worker threads, 0: one per CPU, at most 1024 (default: the configuration file's `workers`).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Forwarding path: splice (zero-copy through a pipe) or copy (user-space buffer) (default: the configuration file's).
    #[arg(long, value_name = "PATH")]
    forward: Option<String>,
    /// This instance's name, in its stats socket's path, `toa stats` and the
    /// logs (default: the configuration file's, else from the first
    /// listener, e.g. 192.0.2.1-80).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Unix socket where the counters are served, read by `toa stats`
    /// (default: the configuration file's, else /run/toa/proxy-NAME.sock).
    #[arg(long, value_name = "PATH")]
    stats_socket: Option<PathBuf>,
    /// Prometheus metrics on ADDR:PORT (/metrics, /healthz); "" for none
    /// (default: the configuration file's, else none).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<String>,
    /// On SIGTERM, how long open connections may finish before they are
    /// reset (default: the configuration file's, else 30s).
    #[arg(long, value_name = "DURATION")]
    drain_timeout: Option<String>,
    /// Configuration file whose [proxy] section adds listeners, read again
    /// on SIGHUP (default: /etc/toa/toa.toml, read only without --listen).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// `--FLAG VALUE` parsed by the value's own parser, the flag named on error.
fn flag<T: std::str::FromStr<Err = Error>>(name: &str, value: &str) -> Result<T, Error> {
    value.parse().map_err(|e: Error| Error::Invalid(format!("--{name}: {e}")))
}

impl ProxyArgs {
    /// The `[proxy]` section in effect: the file's (the one `--config`
    /// names; without `--listen`, the default file), then the flags.
    fn section(&self) -> Result<ProxyConfig, Error> {
        let mut section = match (&self.config, &self.listen) {
            (Some(path), _) => Config::load(path)?.proxy,
            (None, None) => Config::load_default()?.proxy,
            (None, Some(_)) => ProxyConfig::default(),
        };
        match &self.listen {
            Some(listen) => section.listeners.push(self.listener(listen)?),
            None if !self.backends.is_empty() => return Err(Error::Invalid("--backend needs --listen".into())),
            None => {}
        }
        if let Some(w) = self.workers {
            section.workers = w;
        }
        if let Some(f) = &self.forward {
            section.forward = flag("forward", f)?;
        }
        if let Some(n) = &self.name {
            section.name = Some(flag("name", n)?);
        }
        if let Some(p) = &self.stats_socket {
            section.stats_socket = Some(p.clone());
        }
        if let Some(m) = &self.metrics_listen {
            section.metrics_listen = flag("metrics-listen", m)?;
        }
        if let Some(d) = &self.drain_timeout {
            section.drain_timeout = flag("drain-timeout", d)?;
        }
        Ok(section)
    }

    /// The listener the flags describe.
    fn listener(&self, listen: &str) -> Result<ListenerConfig, Error> {
        let listen = parse_addr("listen", listen)?;
        let backends = self.backends.iter().map(|b| b.parse()).collect::<Result<Vec<BackendConfig>, Error>>()?;
        if backends.is_empty() {
            return Err(Error::Invalid(format!("listener {listen} has no backends (give --backend ADDR:PORT)")));
        }
        Ok(ListenerConfig {
            listen,
            backends,
            balance: flag("balance", &self.balance)?,
            kind: flag::<Kind4>("kind", &self.kind)?,
            kind6: flag::<Kind6>("kind6", &self.kind6)?,
            toa_packets: flag("toa-packets", &self.toa_packets)?,
            connect_timeout: flag::<Duration>("connect-timeout", &self.connect_timeout)?,
            idle_timeout: flag::<Duration>("idle-timeout", &self.idle_timeout)?,
            health: HealthConfig {
                interval: flag("health-interval", &self.health_interval)?,
                timeout: flag("health-timeout", &self.health_timeout)?,
                rise: self.rise,
                fall: self.fall,
            },
        })
    }
}

/// Runs the forwarder until SIGINT/SIGTERM; SIGHUP reads the file (and
/// the flags) again.
pub fn run(args: ProxyArgs) -> Result<()> {
    let settings = Settings::from_config(&args.section()?)?;
    Ok(proxy::run(settings, || Settings::from_config(&args.section()?))?)
}
