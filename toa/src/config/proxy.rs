//! The `[proxy]` section of the configuration file, as written; the
//! forwarder validates it into its settings.

use std::path::PathBuf;

/// The `[proxy]` section of the configuration file.
///
/// ```toml
/// [proxy]
/// workers = 0                       # 0: one per CPU
/// stats_socket = "/run/toa/proxy.sock"
///
/// [[proxy.listener]]
/// listen = "0.0.0.0:80"
/// backends = ["192.0.2.2:8080", { addr = "[2001:db8::2]:8080", kind = 200, kind6 = 254 }]
/// balance = "round-robin"           # or "least-conn"
/// kind = 254                        # IPv4 clients: 254, 200 or 253 (8 bytes)
/// kind6 = 253                       # IPv6 clients: 253 or 254 (20 bytes)
/// toa_packets = "ack,data"          # any of syn, ack, data
/// connect_timeout = "5s"
/// idle_timeout = "5m"
/// health = { interval = "2s", timeout = "1s", rise = 2, fall = 3 }
/// ```
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Worker threads (0: one per CPU).
    pub workers: usize,
    /// Unix socket serving the counters (`toa stats` reads it).
    pub stats_socket: Option<PathBuf>,
    /// Forwarding path: `splice` (default) or `copy`.
    pub forward: Option<String>,
    /// The listeners.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
}

/// One `[[proxy.listener]]`.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to accept clients on, `ADDR:PORT`.
    pub listen: String,
    /// Backends: `"ADDR:PORT"` or `{ addr, kind, kind6 }`.
    pub backends: Vec<BackendConfig>,
    /// `round-robin` (default) or `least-conn`.
    pub balance: Option<String>,
    /// Option kind for IPv4 clients.
    pub kind: Option<u8>,
    /// Option kind for IPv6 clients.
    pub kind6: Option<u8>,
    /// Packets that carry the option.
    pub toa_packets: Option<String>,
    /// How long to wait for a backend to accept.
    pub connect_timeout: Option<String>,
    /// How long a connection may stay silent in both directions.
    pub idle_timeout: Option<String>,
    /// Active health checks.
    pub health: HealthConfig,
}

/// A backend in the configuration file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum BackendConfig {
    /// `"ADDR:PORT"`.
    Addr(String),
    /// `{ addr = "ADDR:PORT", kind = 200, kind6 = 254 }`.
    Full(BackendTable),
}

/// A backend given as a table.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTable {
    /// `ADDR:PORT`.
    pub addr: String,
    /// Option kind for IPv4 clients (overrides the listener's).
    pub kind: Option<u8>,
    /// Option kind for IPv6 clients (overrides the listener's).
    pub kind6: Option<u8>,
}

/// `health = { ... }` of a listener.
#[derive(Debug, Default, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between checks of one backend (`"0"` disables checks).
    pub interval: Option<String>,
    /// How long one check may take.
    pub timeout: Option<String>,
    /// Consecutive successes that bring a backend back.
    pub rise: Option<u32>,
    /// Consecutive failures that take it out.
    pub fall: Option<u32>,
}
