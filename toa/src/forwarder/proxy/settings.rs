//! What the forwarder is told to do: a `[proxy]` section (of the
//! configuration file, with the command line's listener added) turned into
//! validated [`Settings`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use toa_common::inject::packets;

use crate::{
    Error, Result,
    config::proxy::{BackendConfig, ListenerConfig, ProxyConfig},
    forwarder::inject::parse_packets,
};

/// Where the running proxy serves its counters.
pub const DEFAULT_STATS_SOCKET: &str = "/run/toa/proxy.sock";

/// Option kinds the forwarder writes for IPv4 clients (an 8-byte option).
pub const KINDS_V4: [u8; 3] = [254, 200, 253];
/// Option kinds the forwarder writes for IPv6 clients (a 20-byte option).
pub const KINDS_V6: [u8; 2] = [253, 254];

/// How a backend is chosen for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// The next healthy backend in turn.
    RoundRobin,
    /// The healthy backend with the fewest open connections.
    LeastConn,
}

impl Balance {
    /// Parses `round-robin`/`rr` or `least-conn`/`leastconn`.
    pub fn parse(s: &str) -> Result<Balance> {
        match s {
            "round-robin" | "roundrobin" | "rr" => Ok(Balance::RoundRobin),
            "least-conn" | "leastconn" | "least-connections" => Ok(Balance::LeastConn),
            other => Err(Error::Invalid(format!("unknown balance `{other}` (expected round-robin or least-conn)"))),
        }
    }

    /// The name used in logs and stats.
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
        }
    }
}

/// How bytes are moved between the two sockets of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// `splice(2)` through a pipe: the payload never enters user space.
    Splice,
    /// `recv`/`send` through a user-space buffer.
    Copy,
}

impl Forward {
    /// Parses `splice` or `copy`.
    pub fn parse(s: &str) -> Result<Forward> {
        match s {
            "splice" => Ok(Forward::Splice),
            "copy" => Ok(Forward::Copy),
            other => Err(Error::Invalid(format!("unknown forwarding path `{other}` (expected splice or copy)"))),
        }
    }
}

/// One backend, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSettings {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Option kind for IPv4 clients.
    pub kind4: u8,
    /// Option kind for IPv6 clients.
    pub kind6: u8,
}

/// Active health checks, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// Time between two checks of a backend; zero disables checks.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive successes to come back.
    pub rise: u32,
    /// Consecutive failures to be taken out.
    pub fall: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings { interval: Duration::from_secs(2), timeout: Duration::from_secs(1), rise: 2, fall: 3 }
    }
}

/// One listener, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where they are forwarded.
    pub backends: Vec<BackendSettings>,
    /// How a backend is picked.
    pub balance: Balance,
    /// Bits of [`packets`]: which packets carry the option.
    pub packets: u8,
    /// Limit for a backend to accept.
    pub connect_timeout: Duration,
    /// Limit for silence in both directions.
    pub idle_timeout: Duration,
    /// Health checks of the backends.
    pub health: HealthSettings,
}

/// Everything the proxy needs to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The listeners.
    pub listeners: Vec<ListenerSettings>,
    /// Worker threads.
    pub workers: usize,
    /// Where the counters are served.
    pub stats_socket: PathBuf,
    /// The forwarding path.
    pub forward: Forward,
}

/// Default packets that carry the option: the handshake ACK and data until acknowledged.
pub const DEFAULT_PACKETS: u8 = packets::ACK | packets::DATA;
/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Parses `ADDR:PORT` (IPv6 as `[2001:db8::1]:80`).
pub fn parse_addr(what: &str, s: &str) -> Result<SocketAddr> {
    s.trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("{what} `{s}` is not ADDR:PORT (e.g. 192.0.2.1:80 or [2001:db8::1]:80)")))
}

/// Parses a duration: `250ms`, `5s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(what: &str, s: &str) -> Result<Duration> {
    let t = s.trim();
    let bad = || Error::Invalid(format!("{what} `{s}` is not a duration (e.g. 500ms, 5s, 2m)"));
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Checks a kind for IPv4 clients.
pub fn check_kind4(kind: u8) -> Result<u8> {
    if KINDS_V4.contains(&kind) {
        Ok(kind)
    } else {
        Err(Error::Invalid(format!("option kind {kind} for IPv4 clients is not one of 254, 200, 253")))
    }
}

/// Checks a kind for IPv6 clients.
pub fn check_kind6(kind: u8) -> Result<u8> {
    if KINDS_V6.contains(&kind) {
        Ok(kind)
    } else {
        Err(Error::Invalid(format!("option kind {kind} for IPv6 clients is not one of 253, 254")))
    }
}

/// Parses a backend given on the command line: `ADDR:PORT[,kind=N][,kind6=N]`.
pub fn parse_backend(s: &str, kind4: u8, kind6: u8) -> Result<BackendSettings> {
    let mut parts = s.split(',');
    let addr = parse_addr("backend", parts.next().unwrap_or(""))?;
    let mut b = BackendSettings { addr, kind4, kind6 };
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| Error::Invalid(format!("backend `{s}`: `{part}` is not kind=N or kind6=N")))?;
        let n: u8 =
            value.trim().parse().map_err(|_| Error::Invalid(format!("backend `{s}`: `{value}` is not a kind")))?;
        match key.trim() {
            "kind" => b.kind4 = check_kind4(n)?,
            "kind6" => b.kind6 = check_kind6(n)?,
            other => return Err(Error::Invalid(format!("backend `{s}`: unknown setting `{other}` (kind, kind6)"))),
        }
    }
    Ok(b)
}

impl ListenerSettings {
    /// Validates one listener of the file (or of the command line).
    pub fn from_config(config: &ListenerConfig) -> Result<ListenerSettings> {
        let listen = parse_addr("listen", &config.listen)?;
        let kind4 = check_kind4(config.kind.unwrap_or(254))?;
        let kind6 = check_kind6(config.kind6.unwrap_or(253))?;
        let backends = config
            .backends
            .iter()
            .map(|b| match b {
                BackendConfig::Addr(s) => parse_backend(s, kind4, kind6),
                BackendConfig::Full(t) => Ok(BackendSettings {
                    addr: parse_addr("backend", &t.addr)?,
                    kind4: check_kind4(t.kind.unwrap_or(kind4))?,
                    kind6: check_kind6(t.kind6.unwrap_or(kind6))?,
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        if backends.is_empty() {
            return Err(Error::Invalid(format!("listener {listen} has no backends")));
        }
        let d = HealthSettings::default();
        let h = &config.health;
        let health = HealthSettings {
            interval: h
                .interval
                .as_deref()
                .map(|s| parse_duration("health interval", s))
                .transpose()?
                .unwrap_or(d.interval),
            timeout: h
                .timeout
                .as_deref()
                .map(|s| parse_duration("health timeout", s))
                .transpose()?
                .unwrap_or(d.timeout),
            rise: h.rise.unwrap_or(d.rise),
            fall: h.fall.unwrap_or(d.fall),
        };
        check_health(&health)?;
        Ok(ListenerSettings {
            listen,
            backends,
            balance: config.balance.as_deref().map(Balance::parse).transpose()?.unwrap_or(Balance::RoundRobin),
            packets: config.toa_packets.as_deref().map(parse_packets).transpose()?.unwrap_or(DEFAULT_PACKETS),
            connect_timeout: config
                .connect_timeout
                .as_deref()
                .map(|s| parse_duration("connect timeout", s))
                .transpose()?
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            idle_timeout: config
                .idle_timeout
                .as_deref()
                .map(|s| parse_duration("idle timeout", s))
                .transpose()?
                .unwrap_or(DEFAULT_IDLE_TIMEOUT),
            health,
        })
    }
}

/// Checks rise/fall/timeouts.
pub fn check_health(h: &HealthSettings) -> Result<()> {
    if h.rise == 0 || h.fall == 0 {
        return Err(Error::Invalid("health rise and fall must be at least 1".into()));
    }
    if !h.interval.is_zero() && h.timeout.is_zero() {
        return Err(Error::Invalid("health timeout must be above 0".into()));
    }
    Ok(())
}

impl Settings {
    /// Validates a `[proxy]` section: every listener, the worker count (0:
    /// one per CPU), and that there is something to forward, once per address.
    pub fn from_config(config: &ProxyConfig) -> Result<Settings> {
        let listeners = config.listeners.iter().map(ListenerSettings::from_config).collect::<Result<Vec<_>>>()?;
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let settings = Settings {
            listeners,
            workers,
            stats_socket: config.stats_socket.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_STATS_SOCKET)),
            forward: config.forward.as_deref().map(Forward::parse).transpose()?.unwrap_or(Forward::Splice),
        };
        settings.check()?;
        Ok(settings)
    }

    /// Refuses an empty list, and two listeners on the same address.
    fn check(&self) -> Result<()> {
        if self.listeners.is_empty() {
            return Err(Error::Invalid(
                "nothing to forward: give --listen ADDR:PORT --backend ADDR:PORT, or [[proxy.listener]] in the config file"
                    .into(),
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if self.listeners[..i].iter().any(|o| o.listen == l.listen) {
                return Err(Error::Invalid(format!("listener {} is given twice", l.listen)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("t", "250ms").expect("ok"), Duration::from_millis(250));
        assert_eq!(parse_duration("t", "5s").expect("ok"), Duration::from_secs(5));
        assert_eq!(parse_duration("t", "2").expect("ok"), Duration::from_secs(2));
        assert_eq!(parse_duration("t", "1.5s").expect("ok"), Duration::from_millis(1500));
        assert_eq!(parse_duration("t", "2m").expect("ok"), Duration::from_secs(120));
        assert!(parse_duration("t", "soon").is_err());
        assert!(parse_duration("t", "5 parsecs").is_err());
        assert!(parse_duration("t", "-1s").is_err());
    }

    #[test]
    fn backends_with_kinds() {
        let b = parse_backend("[2001:db8::2]:80,kind=200,kind6=254", 254, 253).expect("valid");
        assert_eq!(b.addr, "[2001:db8::2]:80".parse().expect("addr"));
        assert_eq!((b.kind4, b.kind6), (200, 254));
        assert!(parse_backend("192.0.2.2", 254, 253).is_err());
        assert!(parse_backend("192.0.2.2:80,kind=28", 254, 253).is_err());
        assert!(parse_backend("192.0.2.2:80,kind6=200", 254, 253).is_err());
        assert!(parse_backend("192.0.2.2:80,weight=3", 254, 253).is_err());
        assert!(parse_addr("listen", "2001:db8::1:80").is_err(), "IPv6 needs brackets");
    }

    #[test]
    fn a_config_section_with_two_listeners() {
        let text = r#"
            workers = 2
            stats_socket = "/tmp/p.sock"
            [[listener]]
            listen = "0.0.0.0:80"
            backends = ["192.0.2.2:8080", { addr = "[2001:db8::2]:8080", kind = 200 }]
            balance = "least-conn"
            toa_packets = "syn,ack,data"
            health = { interval = "500ms", rise = 1, fall = 2 }
            [[listener]]
            listen = "[::]:443"
            backends = ["192.0.2.3:443"]
            kind6 = 254
            idle_timeout = "10s"
        "#;
        let c: ProxyConfig = toml::from_str(text).expect("parses");
        let s = Settings::from_config(&c).expect("valid");
        assert_eq!(s.workers, 2);
        assert_eq!(s.listeners.len(), 2);
        let a = &s.listeners[0];
        assert_eq!(a.balance, Balance::LeastConn);
        assert_eq!(a.packets, 7);
        assert_eq!(a.backends[1].kind4, 200);
        assert_eq!(a.health.interval, Duration::from_millis(500));
        assert_eq!((a.health.rise, a.health.fall), (1, 2));
        let b = &s.listeners[1];
        assert_eq!(b.backends[0].kind6, 254);
        assert_eq!(b.idle_timeout, Duration::from_secs(10));
        assert_eq!(b.packets, DEFAULT_PACKETS);
    }

    #[test]
    fn bad_sections_are_refused() {
        for text in [
            "[[listener]]\nlisten = \"0.0.0.0:80\"\n",
            "[[listener]]\nlisten = \"nowhere\"\nbackends = [\"192.0.2.2:80\"]\n",
            "[[listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"192.0.2.2:80\"]\nbalance = \"random\"\n",
            "[[listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"192.0.2.2:80\"]\nkind = 7\n",
            "[[listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"192.0.2.2:80\"]\nhealth = { fall = 0 }\n",
            "forward = \"teleport\"\n",
        ] {
            let c: ProxyConfig = toml::from_str(text).expect("parses");
            assert!(Settings::from_config(&c).is_err(), "{text}");
        }
        assert!(toml::from_str::<ProxyConfig>("[[listener]]\nlisten = \"0.0.0.0:80\"\nport = 3\n").is_err());
        assert!(Settings::from_config(&ProxyConfig::default()).is_err(), "no listeners");
    }
}
