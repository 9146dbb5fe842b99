//! What the forwarder is told to do: a `[proxy]` section (of the
//! configuration file, with the command line's listener added) turned into
//! validated [`Settings`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    Error, Result,
    config::proxy::{
        Balance, Forward, HealthConfig, ListenerConfig, ProxyConfig, ProxyName, default_stats_socket, limits,
    },
};

/// One backend, its option kinds resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSettings {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Option kind for IPv4 clients.
    pub kind4: u8,
    /// Option kind for IPv6 clients.
    pub kind6: u8,
}

/// Active health checks.
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

impl From<&HealthConfig> for HealthSettings {
    fn from(h: &HealthConfig) -> Self {
        HealthSettings { interval: h.interval.get(), timeout: h.timeout.get(), rise: h.rise, fall: h.fall }
    }
}

/// One listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where they are forwarded.
    pub backends: Vec<BackendSettings>,
    /// How a backend is picked.
    pub balance: Balance,
    /// Bits of [`toa_common::inject::packets`]: which packets carry the option.
    pub packets: u8,
    /// Limit for a backend to accept.
    pub connect_timeout: Duration,
    /// Limit for silence in both directions.
    pub idle_timeout: Duration,
    /// Health checks of the backends.
    pub health: HealthSettings,
}

impl ListenerSettings {
    /// One listener of the file (or of the command line): each backend's
    /// kinds are its own, else the listener's.
    fn from_config(config: &ListenerConfig) -> Result<ListenerSettings> {
        if config.backends.is_empty() {
            return Err(Error::Invalid(format!("listener {} has no backends", config.listen)));
        }
        let backends = config
            .backends
            .iter()
            .map(|b| BackendSettings {
                addr: b.addr,
                kind4: b.kind.unwrap_or(config.kind).get(),
                kind6: b.kind6.unwrap_or(config.kind6).get(),
            })
            .collect();
        Ok(ListenerSettings {
            listen: config.listen,
            backends,
            balance: config.balance,
            packets: config.toa_packets.bits(),
            connect_timeout: config.connect_timeout.get(),
            idle_timeout: config.idle_timeout.get(),
            health: HealthSettings::from(&config.health),
        })
    }
}

/// Everything the proxy needs to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The instance's name (its stats socket, `toa stats`, the logs).
    pub name: ProxyName,
    /// The listeners.
    pub listeners: Vec<ListenerSettings>,
    /// Worker threads.
    pub workers: usize,
    /// Where the counters are served.
    pub stats_socket: PathBuf,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The forwarding path.
    pub forward: Forward,
    /// How long open connections may finish after SIGTERM.
    pub drain_timeout: Duration,
}

impl Settings {
    /// Checks a `[proxy]` section (the bounds of every value, the rules
    /// across keys, and that there is something to forward) and resolves
    /// what it leaves open: the name (from the first listener), the stats
    /// socket (from the name) and the worker count (0: one per CPU, within
    /// [`limits::MAX_WORKERS`]).
    pub fn from_config(config: &ProxyConfig) -> Result<Settings> {
        config.check()?;
        let Some(first) = config.listeners.first() else {
            return Err(Error::Invalid(
                "nothing to forward: give --listen ADDR:PORT --backend ADDR:PORT, or [[proxy.listener]] in the config file"
                    .into(),
            ));
        };
        let listeners = config.listeners.iter().map(ListenerSettings::from_config).collect::<Result<Vec<_>>>()?;
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(limits::MAX_WORKERS),
            n => n,
        };
        let name = config.name.clone().unwrap_or_else(|| ProxyName::from_listener(first.listen));
        let stats_socket = config.stats_socket.clone().unwrap_or_else(|| default_stats_socket(&name));
        Ok(Settings {
            name,
            listeners,
            workers,
            stats_socket,
            metrics_listen: config.metrics_listen.0,
            forward: config.forward,
            drain_timeout: config.drain_timeout.get(),
        })
    }

    /// The settings a reload cannot change in a running proxy (they are
    /// fixed by the threads, sockets and names it made at start): the keys
    /// that differ in `next`.
    pub fn fixed_at_start(&self, next: &Settings) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.name != next.name {
            keys.push("name");
        }
        if self.stats_socket != next.stats_socket {
            keys.push("stats_socket");
        }
        if self.metrics_listen != next.metrics_listen {
            keys.push("metrics_listen");
        }
        if self.workers != next.workers {
            keys.push("workers");
        }
        if self.forward != next.forward {
            keys.push("forward");
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn section(text: &str) -> ProxyConfig {
        Config::parse(text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}")).proxy
    }

    #[test]
    fn a_config_section_with_two_listeners() {
        let c = section(
            r#"
            [proxy]
            workers = 2
            stats_socket = "/tmp/p.sock"
            [[proxy.listener]]
            listen = "0.0.0.0:80"
            backends = ["192.0.2.2:8080", { addr = "[2001:db8::2]:8080", kind = 200 }]
            balance = "least-conn"
            toa_packets = "syn,ack,data"
            health = { interval = "500ms", rise = 1, fall = 2 }
            [[proxy.listener]]
            listen = "[::]:443"
            backends = ["192.0.2.3:443"]
            kind6 = 254
            idle_timeout = "10s"
        "#,
        );
        let s = Settings::from_config(&c).expect("valid");
        assert_eq!(s.workers, 2);
        assert_eq!(s.stats_socket, Path::new("/tmp/p.sock"));
        assert_eq!(s.name.as_str(), "0.0.0.0-80", "from the first listener");
        assert_eq!(s.metrics_listen, None);
        assert_eq!(s.drain_timeout, Duration::from_secs(30));
        assert_eq!(s.listeners.len(), 2);
        let a = &s.listeners[0];
        assert_eq!(a.balance, Balance::LeastConn);
        assert_eq!(a.packets, 7);
        assert_eq!((a.backends[0].kind4, a.backends[0].kind6), (254, 253), "the listener's kinds");
        assert_eq!((a.backends[1].kind4, a.backends[1].kind6), (200, 253), "its own kind, the listener's kind6");
        assert_eq!(a.health.interval, Duration::from_millis(500));
        assert_eq!(a.health.timeout, Duration::from_secs(1), "the default");
        assert_eq!((a.health.rise, a.health.fall), (1, 2));
        let b = &s.listeners[1];
        assert_eq!(b.backends[0].kind6, 254);
        assert_eq!(b.idle_timeout, Duration::from_secs(10));
        assert_eq!(b.connect_timeout, Duration::from_secs(5));
        assert_eq!(b.packets, crate::config::Packets::DEFAULT.bits());
        assert_eq!(s.forward, Forward::Splice);
    }

    #[test]
    fn nothing_to_forward_is_refused() {
        let err = Settings::from_config(&ProxyConfig::default()).expect_err("no listeners");
        assert!(err.to_string().contains("nothing to forward") && err.is_usage(), "{err}");
        let workers = Settings::from_config(&section(
            "[[proxy.listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"192.0.2.2:80\"]\n",
        ))
        .expect("valid")
        .workers;
        assert!(workers >= 1, "0 means one per CPU");
    }

    #[test]
    fn the_name_and_the_stats_socket_follow_the_first_listener_unless_given() {
        let l = "[[proxy.listener]]\nlisten = \"[2001:db8::1]:443\"\nbackends = [\"192.0.2.2:80\"]\n";
        let s = Settings::from_config(&section(l)).expect("valid");
        assert_eq!(s.name.as_str(), "2001_db8__1-443");
        assert_eq!(s.stats_socket, Path::new("/run/toa/proxy-2001_db8__1-443.sock"));
        let s = Settings::from_config(&section(&format!("[proxy]\nname = \"api\"\n{l}"))).expect("valid");
        assert_eq!(s.stats_socket, Path::new("/run/toa/proxy-api.sock"));
        let t = Settings::from_config(&section(&format!("[proxy]\nname = \"web\"\nworkers = 3\n{l}"))).expect("valid");
        assert_eq!(s.fixed_at_start(&t), ["name", "stats_socket", "workers"]);
        assert!(s.fixed_at_start(&s).is_empty());
    }

    #[test]
    fn values_out_of_bounds_are_refused_naming_the_key_and_its_flag() {
        let mut c = section("[[proxy.listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"192.0.2.2:80\"]\n");
        let bad = |c: &ProxyConfig| Settings::from_config(c).expect_err("out of bounds").to_string();
        c.listeners[0].idle_timeout = "0".parse().expect("duration");
        assert!(bad(&c).contains("idle_timeout (--idle-timeout) must be at least 1s, not 0s"), "{}", bad(&c));
        c.listeners[0].idle_timeout = "1s".parse().expect("duration");
        c.listeners[0].connect_timeout = "50ms".parse().expect("duration");
        assert!(bad(&c).contains("connect_timeout (--connect-timeout)"), "{}", bad(&c));
        c.listeners[0].connect_timeout = "100ms".parse().expect("duration");
        c.listeners[0].health.interval = "1ms".parse().expect("duration");
        assert!(bad(&c).contains("health interval (--health-interval)"), "{}", bad(&c));
        c.listeners[0].health.interval = "0".parse().expect("duration");
        assert!(Settings::from_config(&c).is_ok(), "0 turns checks off");
        c.workers = limits::MAX_WORKERS + 1;
        assert!(bad(&c).contains("workers (--workers) is at most 1024"), "{}", bad(&c));
        c.workers = limits::MAX_WORKERS;
        assert_eq!(Settings::from_config(&c).expect("at the limit").workers, limits::MAX_WORKERS);
    }
}
