//! The configuration file (`/etc/toa/toa.toml`): its schema with typed
//! values, its defaults (written once, here and in [`proxy`]), the one
//! loader, and the printer behind `toa config`.
//!
//! Every value is checked while the file is read, so an error names the key
//! and the line; what `toa config` prints is TOML that reads back as the same
//! configuration.

pub mod lb;
pub mod proxy;
pub mod values;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toa_common::{Format, format::DEFAULT_FORMATS};

pub use self::values::{Duration, MetricsListen, Packets, Prefix};
use self::{lb::LbSection, proxy::ProxyConfig, values::formats};
use crate::{Error, Result, sys::paths};

/// The default configuration, with comments: what `toa config --default`
/// prints and what the package installs. A test keeps it equal to
/// [`Config::default`].
pub const DEFAULT_TOML: &str = include_str!("../../../packaging/toa.toml");

/// Everything the file can say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Accepted option formats, `KIND/LEN`.
    #[serde(with = "formats")]
    pub formats: Vec<Format>,
    /// Take the option from the SYN too.
    pub capture_syn: bool,
    /// Look at the packets after the ACK, up to the first data packet.
    pub capture_data: bool,
    /// Attach the getsockopt program (vendor calls 1348 and 4096).
    pub getsockopt: bool,
    /// Trusted forwarder prefixes; empty trusts everyone.
    #[serde(deserialize_with = "values::trusted")]
    pub trusted: Vec<Prefix>,
    /// cgroups to attach to; empty means the cgroup v2 root.
    pub cgroups: Vec<PathBuf>,
    /// Local ports to act on; empty means all.
    #[serde(deserialize_with = "values::ports")]
    pub ports: Vec<u16>,
    /// Keep programs attached after a clean stop.
    pub persist: bool,
    /// Pin directory on bpffs.
    pub pin_dir: PathBuf,
    /// Metrics listener (`""` disables it).
    pub metrics_listen: MetricsListen,
    /// The forwarder's settings.
    pub proxy: ProxyConfig,
    /// The packet-level forwarder's settings (`toa lb`).
    pub lb: LbSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            formats: DEFAULT_FORMATS.to_vec(),
            capture_syn: false,
            capture_data: true,
            getsockopt: true,
            trusted: Vec::new(),
            cgroups: Vec::new(),
            ports: Vec::new(),
            persist: false,
            pin_dir: PathBuf::from(paths::DEFAULT_PIN_DIR),
            metrics_listen: MetricsListen::DEFAULT,
            proxy: ProxyConfig::default(),
            lb: LbSection::default(),
        }
    }
}

impl Config {
    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config> {
        let bytes = std::fs::read(path).map_err(Error::io("reading config", path))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            Error::Config {
                path: path.into(),
                message: format!("not UTF-8 text (byte {at}); a configuration file is TOML text"),
                line: Some(line),
            }
        })?;
        Config::parse(&text, path)
    }

    /// Reads the default file if it exists, else the defaults.
    pub fn load_default() -> Result<Config> {
        let path = Path::new(paths::CONFIG_FILE);
        if path.exists() { Config::load(path) } else { Ok(Config::default()) }
    }

    /// Parses and checks TOML text read from `origin`.
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let source = line.and_then(|l| text.lines().nth(l - 1)).map(str::trim).unwrap_or("");
            let message = if source.is_empty() || e.message().contains(source) {
                e.message().to_string()
            } else {
                format!("{} (in `{}`)", e.message(), quote(source))
            };
            Error::Config { path: origin.into(), message, line }
        })?;
        config.proxy.check().map_err(|e| Error::Config { path: origin.into(), message: e.to_string(), line: None })?;
        config.lb.check().map_err(|e| {
            // A rule across keys of one service: name the line of its `listen`.
            let line = config
                .lb
                .services
                .iter()
                .find(|s| e.to_string().starts_with(&format!("service {}:", s.listen)))
                .and_then(|s| {
                    let listen = format!("\"{}\"", s.listen);
                    text.lines().position(|l| l.contains("listen") && l.contains(&listen)).map(|i| i + 1)
                });
            Error::Config { path: origin.into(), message: format!("lb: {e}"), line }
        })?;
        Ok(config)
    }

    /// The configuration as TOML, every key with its value: `toa config`
    /// prints it, and [`Config::parse`] reads it back as the same value.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Invalid(format!("cannot print the configuration: {e}")))
    }
}

/// A line of the file as an error quotes it: the start of a long one.
fn quote(line: &str) -> String {
    const MAX: usize = 60;
    match line.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::{BackendConfig, Balance, Forward, HealthConfig, Kind4, Kind6, ListenerConfig};

    #[test]
    fn the_shipped_default_file_is_the_default() {
        let parsed = Config::parse(DEFAULT_TOML, Path::new("packaging/toa.toml")).expect("valid");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn more_trusted_prefixes_than_fit_are_refused_with_the_key_and_line() {
        let list: Vec<String> = (0..4097).map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256)).collect();
        let text = format!("persist = true\ntrusted = [{}]\n", list.join(", "));
        let err = Config::parse(&text, Path::new("t.toml")).expect_err("4,097 prefixes");
        let msg = err.to_string();
        assert!(msg.starts_with("t.toml, line 2: trusted: 4,097 prefixes, at most 4,096"), "{msg}");
        assert!(msg.len() < 200, "the long line is not quoted whole: {msg}");
        assert!(err.is_usage());
        let fits = format!("trusted = [{}]\n", list[..4096].join(", "));
        assert_eq!(Config::parse(&fits, Path::new("t.toml")).expect("4,096 fit").trusted.len(), 4096);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("formats = [\"254/8\"]\ntrusted_forwarders = []\n", Path::new("t.toml"))
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("trusted_forwarders"), "{msg}");
        assert!(msg.contains("t.toml") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn bad_values_are_refused_with_their_key_and_line() {
        const L: &str = "[[proxy.listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"192.0.2.2:80\"]\n";
        for (text, needle, line) in [
            ("formats = [\"254/9\"]".to_string(), "254/9", 1),
            ("trusted = [\"10.0.0.0/33\"]".into(), "10.0.0.0/33", 1),
            ("metrics_listen = \"localhost\"".into(), "metrics_listen", 1),
            ("ports = [0]".into(), "ports", 1),
            ("ports = [70000]".into(), "70000", 1),
            ("capture_syn = \"yes\"".into(), "capture_syn", 1),
            ("[proxy]\nforward = \"teleport\"".into(), "teleport", 2),
            (format!("{L}balance = \"random\""), "random", 4),
            (format!("{L}kind = 7"), "kind 7", 4),
            (format!("{L}idle_timeout = \"soon\""), "soon", 4),
            (format!("{L}health = {{ fall = 0 }}"), "fall", 4),
            (format!("{L}port = 3"), "port", 4),
            ("[[proxy.listener]]\nlisten = \"0.0.0.0:80\"\nbackends = []".into(), "at least one backend", 3),
            (format!("{L}idle_timeout = \"0s\""), "idle_timeout (--idle-timeout) must be at least 1s", 4),
            (format!("{L}connect_timeout = \"10ms\""), "connect_timeout (--connect-timeout)", 4),
            (format!("{L}health = {{ interval = \"1ms\" }}"), "health interval (--health-interval)", 4),
            (format!("{L}health = {{ timeout = \"1us\" }}"), "health timeout (--health-timeout)", 4),
            ("[proxy]\nworkers = 100000".into(), "workers (--workers) is at most 1024", 2),
            ("[proxy]\nname = \"a/b\"".into(), "name `a/b`", 2),
            ("[proxy]\ndrain_timeout = \"soon\"".into(), "soon", 2),
            (
                format!(
                    "[[proxy.listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [{}]",
                    vec!["\"192.0.2.2:80\""; 1025].join(", ")
                ),
                "at most 1024 backends, not 1025",
                3,
            ),
            (
                "[[proxy.listener]]\nlisten = \"nowhere\"\nbackends = [\"192.0.2.2:80\"]".into(),
                "`nowhere` is not ADDR:PORT",
                2,
            ),
        ] {
            let err = Config::parse(&text, Path::new("t.toml")).expect_err(&text);
            let msg = err.to_string();
            assert!(msg.contains(needle), "{text}: {msg}");
            assert!(msg.contains(&format!("t.toml, line {line}:")), "{text}: {msg}");
            assert!(err.is_usage());
        }
        let err = Config::parse("[[proxy.listener]]\nlisten = \"0.0.0.0:80\"\n", Path::new("t.toml")).expect_err("");
        assert!(err.to_string().contains("backends"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_text_is_a_bad_file_with_its_line() {
        let path = std::env::temp_dir().join(format!("toa-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, b"capture_syn = true\n\xff\xfe\x00garbage").expect("write");
        let err = Config::load(&path).expect_err("not UTF-8");
        let _ = std::fs::remove_file(&path);
        assert!(err.is_usage(), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("line 2") && msg.contains("not UTF-8"), "{msg}");
    }

    /// A configuration with a value other than the default for every key.
    fn everything_changed() -> Config {
        let listener = |listen: &str| ListenerConfig {
            listen: listen.parse().expect("addr"),
            backends: vec![
                "192.0.2.2:8080".parse().expect("backend"),
                BackendConfig {
                    addr: "[2001:db8::2]:8080".parse().expect("addr"),
                    kind: Some(Kind4::try_from(200).expect("kind")),
                    kind6: Some(Kind6::try_from(254).expect("kind6")),
                },
            ],
            balance: Balance::LeastConn,
            kind: Kind4::try_from(253).expect("kind"),
            kind6: Kind6::try_from(254).expect("kind6"),
            toa_packets: "syn,data".parse().expect("packets"),
            connect_timeout: Duration::from_millis(1500),
            idle_timeout: Duration::from_secs(90),
            health: HealthConfig {
                interval: Duration::default(),
                timeout: Duration::from_millis(300),
                rise: 1,
                fall: 5,
            },
        };
        Config {
            formats: vec![Format::new(253, 8).expect("format"), Format::new(28, 19).expect("format")],
            capture_syn: true,
            capture_data: false,
            getsockopt: false,
            trusted: vec!["198.51.100.0/24".parse().expect("prefix"), "2001:db8:2::/48".parse().expect("prefix")],
            cgroups: vec![PathBuf::from("/sys/fs/cgroup/system.slice/nginx.service")],
            ports: vec![80, 443],
            persist: true,
            pin_dir: PathBuf::from("/sys/fs/bpf/toa-test"),
            metrics_listen: MetricsListen(None),
            proxy: ProxyConfig {
                name: Some("web".parse().expect("name")),
                workers: 3,
                stats_socket: Some(PathBuf::from("/tmp/proxy.sock")),
                metrics_listen: "127.0.0.1:9411".parse().expect("metrics listener"),
                forward: Forward::Copy,
                drain_timeout: Duration::from_secs(5),
                listeners: vec![listener("0.0.0.0:80"), listener("[::]:443")],
            },
            lb: everything_changed_lb(),
        }
    }

    /// An `[lb]` section with a value other than the default for every key.
    fn everything_changed_lb() -> LbSection {
        use crate::config::lb::{LbBackendConfig, LbPackets, LbServiceConfig, LbTimeouts, LocalPorts};
        let mut v6 = LbServiceConfig::new(
            "[2001:db8::1]:443".parse().expect("addr"),
            vec![LbBackendConfig { addr: "[2001:db8:1::2]:8443".parse().expect("addr"), weight: 3 }],
            vec!["2001:db8:1::fa".parse().expect("ip")],
        );
        v6.kind = Kind4::try_from(200).expect("kind");
        v6.kind6 = Kind6::try_from(253).expect("kind6");
        v6.toa_packets = LbPackets(toa_common::lb::carry::packets::SYN);
        v6.health =
            HealthConfig { interval: Duration::from_secs(3), timeout: Duration::from_millis(700), rise: 2, fall: 4 };
        LbSection {
            interfaces: vec!["eth0".into(), "eth1".into()],
            local_ports: "2000-9000".parse::<LocalPorts>().expect("ports"),
            table_size: 4099,
            segmenter: false,
            persist: true,
            pin_dir: PathBuf::from("/sys/fs/bpf/toa-lb-test"),
            stats_socket: PathBuf::from("/tmp/lb.sock"),
            metrics_listen: "127.0.0.1:9412".parse().expect("metrics listener"),
            timeouts: LbTimeouts {
                syn: Duration::from_secs(20),
                established: Duration::from_secs(600),
                half_closed: Duration::from_secs(90),
                closed: Duration::from_secs(5),
                time_wait: Duration::from_secs(61),
            },
            services: vec![
                LbServiceConfig::new(
                    "192.0.2.1:80".parse().expect("addr"),
                    vec![
                        LbBackendConfig::new("10.0.1.2:8080".parse().expect("addr")),
                        LbBackendConfig { addr: "10.0.1.3:8080".parse().expect("addr"), weight: 0 },
                    ],
                    vec!["10.0.1.250".parse().expect("ip"), "10.0.1.251".parse().expect("ip")],
                ),
                v6,
            ],
        }
    }

    #[test]
    fn what_is_printed_reads_back_as_the_same_configuration() {
        for config in [Config::default(), everything_changed()] {
            let text = config.to_toml().expect("prints");
            let back = Config::parse(&text, Path::new("printed.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, config, "{text}");
        }
        let text = everything_changed().to_toml().expect("prints");
        assert!(text.contains("metrics_listen = \"\""), "{text}");
        assert!(text.contains("connect_timeout = \"1500ms\""), "{text}");
        assert!(text.contains("\"[2001:db8::2]:8080,kind=200,kind6=254\""), "{text}");
    }

    #[test]
    fn the_table_form_of_a_backend_and_integer_seconds_are_read() {
        let text = "[[proxy.listener]]\nlisten = \"0.0.0.0:80\"\n\
                    backends = [{ addr = \"192.0.2.2:80\", kind = 200 }]\nconnect_timeout = 7\n";
        let c = Config::parse(text, Path::new("t.toml")).expect("valid");
        let l = &c.proxy.listeners[0];
        assert_eq!(l.backends[0].kind.map(Kind4::get), Some(200));
        assert_eq!(l.connect_timeout, Duration::from_secs(7));
        assert_eq!(l.health, HealthConfig::DEFAULT);
        assert_eq!(l.idle_timeout, proxy::DEFAULT_IDLE_TIMEOUT);
    }

    #[test]
    fn rules_across_keys_are_checked_too() {
        let two = "[[proxy.listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"192.0.2.2:80\"]\n\
                   [[proxy.listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"192.0.2.3:80\"]\n";
        let err = Config::parse(two, Path::new("t.toml")).expect_err("twice");
        assert!(err.to_string().contains("given twice") && err.is_usage(), "{err}");
        let zero = "[[proxy.listener]]\nlisten = \"0.0.0.0:80\"\nbackends = [\"192.0.2.2:80\"]\n\
                    health = { timeout = \"0s\" }\n";
        let err = Config::parse(zero, Path::new("t.toml")).expect_err("zero timeout");
        assert!(err.to_string().contains("health timeout"), "{err}");
    }
}
