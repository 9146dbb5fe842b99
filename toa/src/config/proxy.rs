//! The `[proxy]` section of the configuration file: what the forwarder is
//! told to do, typed, with the limits of every value; the forwarder checks
//! what spans several keys (`forwarder::proxy::Settings::from_config`).

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, de};

use super::values::{self, Duration, MetricsListen, Packets, parse_addr, serde_via_str};
use crate::{Error, Result, sys::paths};

/// How long a backend may take to accept, unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may stay silent both ways, unless told otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a stopping proxy lets open connections finish, unless told otherwise.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds of the values: what is outside makes no sense (a timeout
/// that fires before a connection can do anything, a check that floods the
/// backend) or costs more than it can give (threads beyond any CPU count).
pub mod limits {
    use crate::config::values::Duration;

    /// Worker threads at most (`workers = 0`, one per CPU, is capped too).
    pub const MAX_WORKERS: usize = 1024;
    /// Listeners per proxy at most.
    pub const MAX_LISTENERS: usize = 256;
    /// Backends per listener at most.
    pub const MAX_BACKENDS: usize = 1024;
    /// The shortest connect timeout (timeouts are checked every 100 ms).
    pub const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
    /// The shortest idle timeout.
    pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
    /// The shortest time between two health checks of a backend (0 turns them off).
    pub const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);
    /// The shortest time a health check may take.
    pub const MIN_HEALTH_TIMEOUT: Duration = Duration::from_millis(10);
}

/// The `[proxy]` section of the configuration file.
///
/// ```toml
/// [proxy]
/// name = "web"                      # default: from the first listener, e.g. "192.0.2.1-80"
/// workers = 0                       # 0: one per CPU
/// stats_socket = "/run/toa/proxy-web.sock"   # default: /run/toa/proxy-NAME.sock
/// metrics_listen = "127.0.0.1:9411" # Prometheus; default "" (none)
/// forward = "splice"                # or "copy"
/// drain_timeout = "30s"             # SIGTERM: how long open connections may finish
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// The instance's name: its stats socket, its logs, `toa stats`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<ProxyName>,
    /// Worker threads (0: one per CPU).
    #[serde(deserialize_with = "workers")]
    pub workers: usize,
    /// Unix socket serving the counters (`toa stats` reads it); none: the name's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_socket: Option<PathBuf>,
    /// Prometheus metrics listener (`""`: none).
    pub metrics_listen: MetricsListen,
    /// Forwarding path.
    pub forward: Forward,
    /// How long open connections may finish once SIGTERM arrived.
    pub drain_timeout: Duration,
    /// The listeners.
    #[serde(rename = "listener", deserialize_with = "listeners")]
    pub listeners: Vec<ListenerConfig>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            name: None,
            workers: 0,
            stats_socket: None,
            metrics_listen: MetricsListen(None),
            forward: Forward::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            listeners: Vec::new(),
        }
    }
}

impl ProxyConfig {
    /// The rules that span several keys (one listener per address), and the
    /// bounds of every value, for sections that did not come from a file
    /// (the command line's listener): a file's values are bounded as it is
    /// read, so that the error names the line.
    pub fn check(&self) -> Result<()> {
        check_workers(self.workers)?;
        check_listener_count(self.listeners.len())?;
        for (i, l) in self.listeners.iter().enumerate() {
            if self.listeners[..i].iter().any(|o| o.listen == l.listen) {
                return Err(Error::Invalid(format!("listener {} is given twice", l.listen)));
            }
            l.check().map_err(|e| Error::Invalid(format!("listener {}: {e}", l.listen)))?;
        }
        Ok(())
    }
}

/// The stats socket of the proxy named `name`, unless told otherwise.
pub fn default_stats_socket(name: &ProxyName) -> PathBuf {
    Path::new(paths::RUN_DIR).join(format!("{PROXY_SOCKET_PREFIX}{name}{PROXY_SOCKET_SUFFIX}"))
}

/// Stats sockets in [`paths::RUN_DIR`] are named `proxy-NAME.sock`.
pub const PROXY_SOCKET_PREFIX: &str = "proxy-";
/// See [`PROXY_SOCKET_PREFIX`].
pub const PROXY_SOCKET_SUFFIX: &str = ".sock";

/// The name of one proxy instance: letters, digits, `.`, `_`, `-` and `@`,
/// at most 64 characters, so that it fits in a file name (its stats
/// socket) and a systemd instance name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProxyName(String);

impl ProxyName {
    /// Longest name.
    pub const MAX_LEN: usize = 64;

    /// The name derived from a listener's address: `192.0.2.1-80`, and for
    /// IPv6 with `_` for `:`, `2001_db8__1-443`. Two listening sockets on
    /// one address cannot exist in one network namespace, so two proxies
    /// there never derive the same name.
    pub fn from_listener(listen: SocketAddr) -> ProxyName {
        let ip = listen.ip().to_string().replace(':', "_");
        ProxyName(format!("{ip}-{}", listen.port()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ProxyName {
    type Err = Error;

    fn from_str(s: &str) -> Result<ProxyName> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
        if s.is_empty() || s.len() > ProxyName::MAX_LEN || !s.chars().all(ok) || s.starts_with('.') {
            return Err(Error::Invalid(format!(
                "name `{s}`: 1 to {} letters, digits, '.', '_', '-' or '@', not starting with '.'",
                ProxyName::MAX_LEN
            )));
        }
        Ok(ProxyName(s.to_string()))
    }
}

impl fmt::Display for ProxyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `workers` within [`limits::MAX_WORKERS`].
pub fn check_workers(n: usize) -> Result<()> {
    if n > limits::MAX_WORKERS {
        return Err(Error::Invalid(format!(
            "workers (--workers) is at most {}, not {n} (0: one per CPU)",
            limits::MAX_WORKERS
        )));
    }
    Ok(())
}

fn check_listener_count(n: usize) -> Result<()> {
    if n > limits::MAX_LISTENERS {
        return Err(Error::Invalid(format!("a proxy has at most {} listeners, not {n}", limits::MAX_LISTENERS)));
    }
    Ok(())
}

fn check_backend_count(n: usize) -> Result<()> {
    match n {
        0 => Err(Error::Invalid("a listener needs at least one backend".into())),
        n if n > limits::MAX_BACKENDS => {
            Err(Error::Invalid(format!("a listener has at most {} backends, not {n}", limits::MAX_BACKENDS)))
        }
        _ => Ok(()),
    }
}

/// `key` (`--flag`) is at least `min`.
fn check_at_least(key: &str, value: Duration, min: Duration) -> Result<()> {
    if value < min {
        let flag = key.replace('_', "-");
        return Err(Error::Invalid(format!("{key} (--{flag}) must be at least {min}, not {value}")));
    }
    Ok(())
}

fn check_connect_timeout(d: Duration) -> Result<()> {
    check_at_least("connect_timeout", d, limits::MIN_CONNECT_TIMEOUT)
}

fn check_idle_timeout(d: Duration) -> Result<()> {
    check_at_least("idle_timeout", d, limits::MIN_IDLE_TIMEOUT)
}

fn check_health_interval(d: Duration) -> Result<()> {
    if !d.is_zero() && d < limits::MIN_HEALTH_INTERVAL {
        return Err(Error::Invalid(format!(
            "health interval (--health-interval) must be 0 (no checks) or at least {}, not {d}",
            limits::MIN_HEALTH_INTERVAL
        )));
    }
    Ok(())
}

fn check_health_timeout(d: Duration) -> Result<()> {
    if d < limits::MIN_HEALTH_TIMEOUT {
        return Err(Error::Invalid(format!(
            "health timeout (--health-timeout) must be at least {}, not {d}",
            limits::MIN_HEALTH_TIMEOUT
        )));
    }
    Ok(())
}

/// A deserializer that reads a `T` and checks it with `check`.
macro_rules! checked {
    ($name:ident, $t:ty, $check:expr) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<$t, D::Error> {
            let value = <$t>::deserialize(d)?;
            let check: fn(&$t) -> Result<()> = $check;
            check(&value).map_err(de::Error::custom)?;
            Ok(value)
        }
    };
}

checked!(workers, usize, |n| check_workers(*n));
checked!(listeners, Vec<ListenerConfig>, |l| check_listener_count(l.len()));
checked!(backends, Vec<BackendConfig>, |b| check_backend_count(b.len()));
checked!(connect_timeout, Duration, |d| check_connect_timeout(*d));
checked!(idle_timeout, Duration, |d| check_idle_timeout(*d));
checked!(health_interval, Duration, |d| check_health_interval(*d));
checked!(health_timeout, Duration, |d| check_health_timeout(*d));

/// One `[[proxy.listener]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to accept clients on.
    #[serde(deserialize_with = "values::addr")]
    pub listen: SocketAddr,
    /// Backends: `"ADDR:PORT"` or `{ addr, kind, kind6 }`; at least one.
    #[serde(deserialize_with = "backends")]
    pub backends: Vec<BackendConfig>,
    /// How a backend is picked.
    #[serde(default)]
    pub balance: Balance,
    /// Option kind for IPv4 clients.
    #[serde(default)]
    pub kind: Kind4,
    /// Option kind for IPv6 clients.
    #[serde(default)]
    pub kind6: Kind6,
    /// Packets that carry the option.
    #[serde(default)]
    pub toa_packets: Packets,
    /// How long to wait for a backend to accept.
    #[serde(default = "default_connect_timeout", deserialize_with = "connect_timeout")]
    pub connect_timeout: Duration,
    /// How long a connection may stay silent in both directions.
    #[serde(default = "default_idle_timeout", deserialize_with = "idle_timeout")]
    pub idle_timeout: Duration,
    /// Active health checks.
    #[serde(default)]
    pub health: HealthConfig,
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

impl ListenerConfig {
    /// The bounds of each value (the file's are checked as it is read).
    pub fn check(&self) -> Result<()> {
        check_backend_count(self.backends.len())?;
        check_connect_timeout(self.connect_timeout)?;
        check_idle_timeout(self.idle_timeout)?;
        self.health.check()
    }
}

/// A backend: where to connect, and option kinds that override the listener's.
///
/// In the file either `"ADDR:PORT"` (also `"ADDR:PORT,kind=N,kind6=N"`, the
/// command line's form, which is how it is printed) or a table
/// `{ addr = "ADDR:PORT", kind = N, kind6 = N }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendConfig {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Option kind for IPv4 clients, instead of the listener's.
    pub kind: Option<Kind4>,
    /// Option kind for IPv6 clients, instead of the listener's.
    pub kind6: Option<Kind6>,
}

impl FromStr for BackendConfig {
    type Err = Error;

    /// `ADDR:PORT[,kind=N][,kind6=N]`.
    fn from_str(s: &str) -> Result<BackendConfig> {
        let mut parts = s.split(',');
        let addr = parse_addr("backend", parts.next().unwrap_or(""))?;
        let mut b = BackendConfig { addr, kind: None, kind6: None };
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| Error::Invalid(format!("backend `{s}`: `{part}` is not kind=N or kind6=N")))?;
            match key.trim() {
                "kind" => b.kind = Some(value.trim().parse()?),
                "kind6" => b.kind6 = Some(value.trim().parse()?),
                other => {
                    return Err(Error::Invalid(format!("backend `{s}`: unknown setting `{other}` (kind, kind6)")));
                }
            }
        }
        Ok(b)
    }
}

impl fmt::Display for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if let Some(k) = self.kind {
            write!(f, ",kind={k}")?;
        }
        if let Some(k) = self.kind6 {
            write!(f, ",kind6={k}")?;
        }
        Ok(())
    }
}

impl Serialize for BackendConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BackendConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        /// The table form.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(deserialize_with = "values::addr")]
            addr: SocketAddr,
            kind: Option<Kind4>,
            kind6: Option<Kind6>,
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = BackendConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"ADDR:PORT\" or { addr = \"ADDR:PORT\", kind = N, kind6 = N }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<BackendConfig, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> std::result::Result<BackendConfig, A::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(BackendConfig { addr: t.addr, kind: t.kind, kind6: t.kind6 })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `health = { ... }` of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between checks of one backend (`"0"` disables checks).
    #[serde(deserialize_with = "health_interval")]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(deserialize_with = "health_timeout")]
    pub timeout: Duration,
    /// Consecutive successes that bring a backend back.
    #[serde(deserialize_with = "at_least_one")]
    pub rise: u32,
    /// Consecutive failures that take it out.
    #[serde(deserialize_with = "at_least_one")]
    pub fall: u32,
}

impl HealthConfig {
    /// Checks every 2 s, 1 s each; 2 successes bring a backend back, 3 failures take it out.
    pub const DEFAULT: HealthConfig =
        HealthConfig { interval: Duration::from_secs(2), timeout: Duration::from_secs(1), rise: 2, fall: 3 };
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig::DEFAULT
    }
}

impl HealthConfig {
    /// The bounds of each value.
    pub fn check(&self) -> Result<()> {
        check_health_interval(self.interval)?;
        check_health_timeout(self.timeout)?;
        if self.rise == 0 || self.fall == 0 {
            return Err(Error::Invalid("health rise and fall (--rise, --fall) must be at least 1".into()));
        }
        Ok(())
    }
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

/// How a backend is chosen for a new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// The next healthy backend in turn.
    #[default]
    RoundRobin,
    /// The healthy backend with the fewest open connections.
    LeastConn,
}

impl Balance {
    /// The name used in the file, logs and stats.
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
        }
    }
}

impl FromStr for Balance {
    type Err = Error;

    /// `round-robin`/`rr` or `least-conn`/`leastconn`.
    fn from_str(s: &str) -> Result<Balance> {
        match s {
            "round-robin" | "roundrobin" | "rr" => Ok(Balance::RoundRobin),
            "least-conn" | "leastconn" | "least-connections" => Ok(Balance::LeastConn),
            other => Err(Error::Invalid(format!("unknown balance `{other}` (expected round-robin or least-conn)"))),
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How bytes are moved between the two sockets of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Forward {
    /// `splice(2)` through a pipe: the payload never enters user space.
    #[default]
    Splice,
    /// `recv`/`send` through a user-space buffer.
    Copy,
}

impl FromStr for Forward {
    type Err = Error;

    /// `splice` or `copy`.
    fn from_str(s: &str) -> Result<Forward> {
        match s {
            "splice" => Ok(Forward::Splice),
            "copy" => Ok(Forward::Copy),
            other => Err(Error::Invalid(format!("unknown forwarding path `{other}` (expected splice or copy)"))),
        }
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Forward::Splice => "splice",
            Forward::Copy => "copy",
        })
    }
}

serde_via_str!(Balance, Forward, ProxyName);

/// Option kinds of one family that the forwarder writes: a kind and its list.
macro_rules! kind {
    ($name:ident, $family:literal, $default:literal, [$($k:literal),+]) => {
        #[doc = concat!("An option kind for ", $family, " clients: one of ", $(stringify!($k), " ",)+ "(the first is the default).")]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "u8", into = "u8")]
        pub struct $name(u8);

        impl $name {
            /// The kinds accepted.
            pub const ALL: &[u8] = &[$($k),+];
            /// The default kind.
            pub const DEFAULT: $name = $name($default);

            /// The kind's number.
            pub const fn get(self) -> u8 {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::DEFAULT
            }
        }

        impl TryFrom<u8> for $name {
            type Error = Error;

            fn try_from(kind: u8) -> Result<$name> {
                if $name::ALL.contains(&kind) {
                    Ok($name(kind))
                } else {
                    let all: Vec<String> = $name::ALL.iter().map(u8::to_string).collect();
                    Err(Error::Invalid(format!(
                        concat!("option kind {} for ", $family, " clients is not one of {}"),
                        kind,
                        all.join(", ")
                    )))
                }
            }
        }

        impl From<$name> for u8 {
            fn from(k: $name) -> u8 {
                k.0
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<$name> {
                let n: u8 = s.trim().parse().map_err(|_| Error::Invalid(format!("`{s}` is not an option kind")))?;
                $name::try_from(n)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

kind!(Kind4, "IPv4", 254, [254, 200, 253]);
kind!(Kind6, "IPv6", 253, [253, 254]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_with_kinds() {
        let b: BackendConfig = "[2001:db8::2]:80,kind=200,kind6=254".parse().expect("valid");
        assert_eq!(b.addr, "[2001:db8::2]:80".parse().expect("addr"));
        assert_eq!((b.kind.map(Kind4::get), b.kind6.map(Kind6::get)), (Some(200), Some(254)));
        assert_eq!(b.to_string(), "[2001:db8::2]:80,kind=200,kind6=254");
        for bad in ["192.0.2.2", "192.0.2.2:80,kind=28", "192.0.2.2:80,kind6=200", "192.0.2.2:80,weight=3"] {
            assert!(bad.parse::<BackendConfig>().is_err(), "{bad}");
        }
        assert!(parse_addr("listen", "2001:db8::1:80").is_err(), "IPv6 needs brackets");
    }

    #[test]
    fn kinds_name_their_family() {
        let e = Kind4::try_from(7).expect_err("7");
        assert_eq!(e.to_string(), "option kind 7 for IPv4 clients is not one of 254, 200, 253");
        let e = Kind6::try_from(200).expect_err("200");
        assert_eq!(e.to_string(), "option kind 200 for IPv6 clients is not one of 253, 254");
        assert_eq!((Kind4::default().get(), Kind6::default().get()), (254, 253));
    }

    #[test]
    fn policies_parse_and_print_back() {
        for b in [Balance::RoundRobin, Balance::LeastConn] {
            assert_eq!(b.to_string().parse::<Balance>().expect("own name"), b);
        }
        assert_eq!("rr".parse::<Balance>().expect("alias"), Balance::RoundRobin);
        assert!("random".parse::<Balance>().is_err());
        for f in [Forward::Splice, Forward::Copy] {
            assert_eq!(f.to_string().parse::<Forward>().expect("own name"), f);
        }
        assert!("teleport".parse::<Forward>().is_err());
    }
}
