//! `toa proxy`: the forwarder. The flags describe one listener; they are
//! merged with the configuration file's `[proxy]` section here, and the
//! library gets validated settings.

use std::path::PathBuf;

use anyhow::Result;
use toa::{
    Error,
    config::{
        Config,
        proxy::{BackendConfig, HealthConfig, ListenerConfig, ProxyConfig},
    },
    forwarder::proxy::{
        self, Settings,
        settings::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT},
    },
};

/// Command-line arguments of `toa proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Address to accept clients on, e.g. 0.0.0.0:80 or [::]:80 (dual-stack).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// A backend, ADDR:PORT[,kind=N][,kind6=N]; repeat for several.
    #[arg(long = "backend", value_name = "ADDR:PORT")]
    pub backends: Vec<String>,
    /// How to pick a backend: round-robin or least-conn.
    #[arg(long, value_name = "POLICY", default_value = "round-robin")]
    pub balance: String,
    /// Option kind for IPv4 clients (8-byte option): 254, 200 or 253.
    #[arg(long, value_name = "KIND", default_value_t = 254)]
    pub kind: u8,
    /// Option kind for IPv6 clients (20-byte option): 253 or 254.
    #[arg(long, value_name = "KIND", default_value_t = 253)]
    pub kind6: u8,
    /// Packets that carry the option: any of syn, ack, data.
    #[arg(long, value_name = "LIST", default_value = "ack,data")]
    pub toa_packets: String,
    /// How long a backend may take to accept (e.g. 5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub connect_timeout: String,
    /// Close connections silent this long in both directions.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub idle_timeout: String,
    /// Time between health checks of a backend (0 disables them).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub health_interval: String,
    /// How long one health check may take.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub health_timeout: String,
    /// Consecutive successful checks that bring a backend back.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub rise: u32,
    /// Consecutive failed checks that take a backend out.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub fall: u32,
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Forwarding path: splice (zero-copy through a pipe) or copy (user-space buffer).
    #[arg(long, value_name = "PATH")]
    pub forward: Option<String>,
    /// Unix socket where the counters are served (`toa stats` reads it).
    #[arg(long, value_name = "PATH")]
    pub stats_socket: Option<PathBuf>,
    /// Configuration file whose [proxy] section adds listeners
    /// (default: /etc/toa/toa.toml, read only without --listen).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ProxyArgs {
    /// The `[proxy]` section in effect: the file's (the one `--config`
    /// names; without `--listen`, the default file), then the flags.
    fn section(&self) -> Result<ProxyConfig> {
        let mut section = match (&self.config, &self.listen) {
            (Some(path), _) => Config::load(path)?.proxy,
            (None, None) => Config::load_default()?.proxy,
            (None, Some(_)) => ProxyConfig::default(),
        };
        if let Some(listen) = &self.listen {
            if self.backends.is_empty() {
                return Err(
                    Error::Invalid(format!("listener {listen} has no backends (give --backend ADDR:PORT)")).into()
                );
            }
            section.listeners.push(self.listener(listen));
        } else if !self.backends.is_empty() {
            return Err(Error::Invalid("--backend needs --listen".into()).into());
        }
        if let Some(w) = self.workers {
            section.workers = w;
        }
        if let Some(f) = &self.forward {
            section.forward = Some(f.clone());
        }
        if let Some(p) = &self.stats_socket {
            section.stats_socket = Some(p.clone());
        }
        Ok(section)
    }

    /// The listener the flags describe.
    fn listener(&self, listen: &str) -> ListenerConfig {
        ListenerConfig {
            listen: listen.to_string(),
            backends: self.backends.iter().cloned().map(BackendConfig::Addr).collect(),
            balance: Some(self.balance.clone()),
            kind: Some(self.kind),
            kind6: Some(self.kind6),
            toa_packets: Some(self.toa_packets.clone()),
            connect_timeout: Some(self.connect_timeout.clone()),
            idle_timeout: Some(self.idle_timeout.clone()),
            health: HealthConfig {
                interval: Some(self.health_interval.clone()),
                timeout: Some(self.health_timeout.clone()),
                rise: Some(self.rise),
                fall: Some(self.fall),
            },
        }
    }
}

// Keep the defaults of the flags and of the file in one place.
const _: () = assert!(DEFAULT_CONNECT_TIMEOUT.as_secs() == 5 && DEFAULT_IDLE_TIMEOUT.as_secs() == 300);

/// Runs the forwarder until SIGINT/SIGTERM.
pub fn run(args: ProxyArgs) -> Result<()> {
    let settings = Settings::from_config(&args.section()?)?;
    Ok(proxy::run(&settings)?)
}
