//! The configuration file (`/etc/toa/toa.toml`).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::Deserialize;
use toa_common::Format;

use crate::{Error, Result, sys::paths};

pub mod proxy;

use proxy::ProxyConfig;

/// The default configuration, with comments: what `toa config --default` prints.
pub const DEFAULT_TOML: &str = include_str!("../../../packaging/toa.toml");

/// Everything the file can say.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Accepted option formats, `KIND/LEN`.
    pub formats: Vec<String>,
    /// Take the option from the SYN too.
    pub capture_syn: bool,
    /// Look at the packets after the ACK, up to the first data packet.
    pub capture_data: bool,
    /// Attach the getsockopt program (vendor calls 1348 and 4096).
    pub getsockopt: bool,
    /// Trusted forwarder prefixes; empty trusts everyone.
    pub trusted: Vec<String>,
    /// cgroups to attach to; empty means the cgroup v2 root.
    pub cgroups: Vec<PathBuf>,
    /// Local ports to act on; empty means all.
    pub ports: Vec<u16>,
    /// Keep programs attached after a clean stop.
    pub persist: bool,
    /// Pin directory on bpffs.
    pub pin_dir: PathBuf,
    /// Metrics listener (`""` disables it).
    pub metrics_listen: String,
    /// The forwarder's settings.
    pub proxy: ProxyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            formats: toa_common::format::DEFAULT_FORMATS.iter().map(ToString::to_string).collect(),
            capture_syn: false,
            capture_data: true,
            getsockopt: true,
            trusted: Vec::new(),
            cgroups: Vec::new(),
            ports: Vec::new(),
            persist: false,
            pin_dir: PathBuf::from(paths::DEFAULT_PIN_DIR),
            metrics_listen: "127.0.0.1:9410".into(),
            proxy: ProxyConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(Error::io("reading config", path))?;
        Config::parse(&text, path)
    }

    /// Reads the default file if it exists, else the defaults.
    pub fn load_default() -> Result<Config> {
        let path = Path::new(paths::CONFIG_FILE);
        if path.exists() { Config::load(path) } else { Ok(Config::default()) }
    }

    /// Parses and validates TOML text read from `origin`.
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let source = line.and_then(|l| text.lines().nth(l - 1)).map(str::trim).unwrap_or("");
            let message = if source.is_empty() || e.message().contains(source) {
                e.message().to_string()
            } else {
                format!("{} (in `{source}`)", e.message())
            };
            Error::Config { path: origin.into(), message, line }
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |message: String| Error::Config { path: origin.into(), message, line: None };
        self.parsed_formats().map_err(|e| bad(e.to_string()))?;
        self.parsed_trusted().map_err(|e| bad(e.to_string()))?;
        self.metrics_addr().map_err(|e| bad(e.to_string()))?;
        if self.ports.contains(&0) {
            return Err(bad("ports: 0 is not a port".into()));
        }
        Ok(())
    }

    /// The formats, parsed.
    pub fn parsed_formats(&self) -> Result<Vec<Format>> {
        self.formats
            .iter()
            .map(|f| Format::parse(f).map_err(|e| Error::Invalid(format!("formats: `{f}`: {e}"))))
            .collect()
    }

    /// The trusted prefixes, parsed.
    pub fn parsed_trusted(&self) -> Result<Vec<Prefix>> {
        self.trusted.iter().map(|p| p.parse()).collect()
    }

    /// The metrics listener, if enabled.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        if self.metrics_listen.is_empty() {
            return Ok(None);
        }
        self.metrics_listen.parse().map(Some).map_err(|_| {
            Error::Invalid(format!("metrics_listen: `{}` is not ADDR:PORT (e.g. 127.0.0.1:9410)", self.metrics_listen))
        })
    }
}

/// An address prefix in CIDR notation (a bare address is a host prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// The network address (host bits cleared).
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = Error;

    fn from_str(s: &str) -> Result<Prefix> {
        let bad = || Error::Invalid(format!("`{s}` is not a CIDR prefix (e.g. 198.51.100.0/24 or 2001:db8::/32)"));
        let (addr, len) = match s.trim().split_once('/') {
            Some((a, l)) => (a.parse::<IpAddr>().map_err(|_| bad())?, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim().parse::<IpAddr>().map_err(|_| bad())?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        Ok(Prefix { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Prefix {
    /// The LPM trie key and prefix length (IPv4 mapped into ::ffff:0:0/96).
    pub fn trie_key(&self) -> (toa_common::trust::TrustKey, u32) {
        match self.addr {
            IpAddr::V4(a) => toa_common::trust::v4_prefix(a.octets(), self.len),
            IpAddr::V6(a) => toa_common::trust::v6_prefix(a.octets(), self.len),
        }
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match Prefix::from_str(&format!("{ip}/{}", self.len)) {
            Ok(p) => p.addr == self.addr,
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_file_is_the_default() {
        let parsed = Config::parse(DEFAULT_TOML, Path::new("packaging/toa.toml")).expect("valid");
        assert_eq!(parsed, Config::default());
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
    fn bad_values_are_refused() {
        for (text, needle) in [
            ("formats = [\"254/9\"]", "254/9"),
            ("trusted = [\"10.0.0.0/33\"]", "10.0.0.0/33"),
            ("metrics_listen = \"localhost\"", "metrics_listen"),
            ("ports = [0]", "ports"),
            ("ports = [70000]", "70000"),
            ("capture_syn = \"yes\"", "capture_syn"),
        ] {
            let err = Config::parse(text, Path::new("t.toml")).expect_err(text);
            assert!(err.to_string().contains(needle), "{text}: {err}");
            assert!(err.is_usage());
        }
    }

    #[test]
    fn prefixes() {
        let p: Prefix = "198.51.100.77/24".parse().expect("valid");
        assert_eq!(p.to_string(), "198.51.100.0/24");
        assert!(p.contains("198.51.100.1".parse().expect("ip")));
        assert!(!p.contains("198.51.101.1".parse().expect("ip")));
        let p: Prefix = "2001:db8:2::/48".parse().expect("valid");
        assert_eq!(p.trie_key().1, 48);
        let host: Prefix = "192.0.2.1".parse().expect("valid");
        assert_eq!(host.len, 32);
        assert_eq!(host.trie_key().1, 128);
        assert!("nonsense".parse::<Prefix>().is_err());
        assert!("::/129".parse::<Prefix>().is_err());
        let all: Prefix = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains("203.0.113.9".parse().expect("ip")));
    }
}
