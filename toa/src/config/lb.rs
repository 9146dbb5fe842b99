//! The `[lb]` section of the configuration file: the packet-level
//! forwarder's services, typed, with the limits of every value. What spans
//! several keys (families of backends and local addresses, one service per
//! address) is checked by [`LbSection::check`].

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
};

use serde::{Deserialize, Deserializer, Serialize, de};
use toa_common::lb::{carry::packets, maglev, ports::PortRange};

use super::{
    proxy::{HealthConfig, Kind4, Kind6},
    values::{self, Duration, MetricsListen, parse_addr, serde_via_str},
};
use crate::{Error, Result};

/// Where `toa lb` pins its maps and links, unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/toa-lb";
/// Where the running forwarder serves its counters, unless told otherwise.
pub const DEFAULT_STATS_SOCKET: &str = "/run/toa/lb.sock";
/// Stats sockets of forwarders in the run directory are named `lb*.sock`.
pub const LB_SOCKET_PREFIX: &str = "lb";

/// The bounds of the values.
pub mod limits {
    use crate::config::values::Duration;

    /// Services per forwarder at most (`LB_SERVICES`).
    pub const MAX_SERVICES: usize = toa_common::lb::flow::MAX_SERVICES as usize;
    /// Backends over all services at most (`LB_BACKENDS`).
    pub const MAX_BACKENDS: usize = toa_common::lb::flow::MAX_BACKENDS as usize;
    /// Interfaces at most.
    pub const MAX_INTERFACES: usize = 64;
    /// Entries of all Maglev tables together at most (services x table size),
    /// 64 MiB of map.
    pub const MAX_TABLE_ENTRIES: u64 = 16 << 20;
    /// The shortest idle timeout of any class.
    pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
    /// The longest idle timeout of any class (the data path counts seconds).
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
}

/// The `[lb]` section.
///
/// ```toml
/// [lb]
/// interfaces = ["eth0", "eth1"]     # default: every interface but loopback
/// local_ports = "1024-32767"        # local (SNAT) ports of translated flows
/// table_size = 65537                # Maglev table entries per service (a prime)
/// segmenter = true
/// persist = false                   # a clean stop leaves everything attached
/// pin_dir = "/sys/fs/bpf/toa-lb"
/// stats_socket = "/run/toa/lb.sock"
/// metrics_listen = "127.0.0.1:9412" # Prometheus; default "" (none)
/// timeouts = { syn = "30s", established = "15m", half_closed = "2m", closed = "10s", time_wait = "60s" }
///
/// [[lb.service]]
/// listen = "192.0.2.1:80"
/// backends = ["10.0.1.2:8080", { addr = "10.0.1.3:8080", weight = 2 }]
/// local = ["10.0.1.250", "10.0.1.251"]   # each node uses the ones it has
/// kind = 254                        # IPv4 clients: 254, 200 or 253
/// kind6 = 253                       # IPv6 clients: 253 or 254
/// toa_packets = "ack,data"          # any of syn, ack, data, rst
/// health = { interval = "2s", timeout = "1s", rise = 2, fall = 3 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbSection {
    /// Interfaces to forward on (empty: every interface but loopback).
    #[serde(deserialize_with = "interfaces")]
    pub interfaces: Vec<String>,
    /// Local ports of translated flows.
    pub local_ports: LocalPorts,
    /// Entries of each service's Maglev table.
    #[serde(deserialize_with = "table_size")]
    pub table_size: u32,
    /// Create the segmenter (GSO packets that need the option go through it).
    pub segmenter: bool,
    /// Leave programs attached and maps pinned after a clean stop.
    pub persist: bool,
    /// Pin directory on bpffs.
    pub pin_dir: PathBuf,
    /// Unix socket serving the counters.
    pub stats_socket: PathBuf,
    /// Prometheus metrics listener (`""`: none).
    pub metrics_listen: MetricsListen,
    /// Idle timeouts of flows by state.
    pub timeouts: LbTimeouts,
    /// The services.
    #[serde(rename = "service", deserialize_with = "services")]
    pub services: Vec<LbServiceConfig>,
}

impl Default for LbSection {
    fn default() -> Self {
        LbSection {
            interfaces: Vec::new(),
            local_ports: LocalPorts::DEFAULT,
            table_size: maglev::DEFAULT_TABLE_SIZE,
            segmenter: true,
            persist: false,
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            stats_socket: PathBuf::from(DEFAULT_STATS_SOCKET),
            metrics_listen: MetricsListen(None),
            timeouts: LbTimeouts::default(),
            services: Vec::new(),
        }
    }
}

/// Idle timeouts by state of a flow (`[lb] timeouts = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LbTimeouts {
    /// Handshake in progress.
    #[serde(deserialize_with = "timeout")]
    pub syn: Duration,
    /// Established.
    #[serde(deserialize_with = "timeout")]
    pub established: Duration,
    /// One side closed.
    #[serde(deserialize_with = "timeout")]
    pub half_closed: Duration,
    /// Both closed (the client first) or reset.
    #[serde(deserialize_with = "timeout")]
    pub closed: Duration,
    /// Both closed, the backend first: how long its TIME_WAIT holds the
    /// local port (Linux: 60 s).
    #[serde(deserialize_with = "timeout")]
    pub time_wait: Duration,
}

impl Default for LbTimeouts {
    fn default() -> Self {
        let d = toa_common::lb::conntrack::DEFAULT_TIMEOUTS;
        let s = |n: u32| Duration::from_secs(n as u64);
        LbTimeouts {
            syn: s(d.syn),
            established: s(d.established),
            half_closed: s(d.half_closed),
            closed: s(d.closed),
            time_wait: s(d.time_wait),
        }
    }
}

impl LbTimeouts {
    /// The data path's form (whole seconds).
    pub fn to_datapath(&self) -> toa_common::lb::conntrack::Timeouts {
        let s = |d: Duration| d.get().as_secs().min(u32::MAX as u64) as u32;
        toa_common::lb::conntrack::Timeouts {
            syn: s(self.syn),
            established: s(self.established),
            half_closed: s(self.half_closed),
            closed: s(self.closed),
            time_wait: s(self.time_wait),
        }
    }

    fn check(&self) -> Result<()> {
        for (key, d) in [
            ("syn", self.syn),
            ("established", self.established),
            ("half_closed", self.half_closed),
            ("closed", self.closed),
            ("time_wait", self.time_wait),
        ] {
            check_timeout(d).map_err(|e| Error::Invalid(format!("timeouts.{key}: {e}")))?;
        }
        Ok(())
    }
}

/// One service (`[[lb.service]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbServiceConfig {
    /// The virtual address and port clients connect to.
    #[serde(deserialize_with = "values::addr")]
    pub listen: SocketAddr,
    /// Its backends.
    #[serde(deserialize_with = "backends")]
    pub backends: Vec<LbBackendConfig>,
    /// Local (SNAT) addresses towards the backends, one or more per family
    /// the backends have: each node uses those that are its own (an address
    /// of one of its interfaces); a single one of a family is used as is.
    #[serde(deserialize_with = "locals")]
    pub local: Vec<IpAddr>,
    /// Option kind for IPv4 clients (8 bytes).
    #[serde(default)]
    pub kind: Kind4,
    /// Option kind for IPv6 clients (20 bytes).
    #[serde(default)]
    pub kind6: Kind6,
    /// Packets that carry the option.
    #[serde(default)]
    pub toa_packets: LbPackets,
    /// Health checks (`interval = "0s"` turns them off).
    #[serde(default)]
    pub health: HealthConfig,
}

impl LbServiceConfig {
    /// A service with the defaults for everything but its addresses.
    pub fn new(listen: SocketAddr, backends: Vec<LbBackendConfig>, local: Vec<IpAddr>) -> LbServiceConfig {
        LbServiceConfig {
            listen,
            backends,
            local,
            kind: Kind4::default(),
            kind6: Kind6::default(),
            toa_packets: LbPackets::default(),
            health: HealthConfig::DEFAULT,
        }
    }

    fn check(&self) -> Result<()> {
        let l = self.listen;
        if l.port() == 0 || l.ip().is_unspecified() {
            return Err(Error::Invalid("give the virtual address and port clients connect to".into()));
        }
        check_backend_count(self.backends.len())?;
        for (i, b) in self.backends.iter().enumerate() {
            if self.backends[..i].iter().any(|o| o.addr == b.addr) {
                return Err(Error::Invalid(format!("backend {} is given twice", b.addr)));
            }
            // NAT64: an IPv6 service may have IPv4 backends; never the reverse.
            if l.is_ipv4() && b.addr.is_ipv6() {
                return Err(Error::Invalid(format!(
                    "backend {}: an IPv4 service cannot have IPv6 backends (only IPv6 clients to IPv4 backends, NAT64)",
                    b.addr
                )));
            }
        }
        if self.backends.iter().all(|b| b.weight == 0) {
            return Err(Error::Invalid("every backend has weight 0: none could take a flow".into()));
        }
        for v6 in [false, true] {
            let fam = if v6 { "IPv6" } else { "IPv4" };
            if self.backends.iter().any(|b| b.addr.is_ipv6() == v6) && !self.local.iter().any(|a| a.is_ipv6() == v6) {
                return Err(Error::Invalid(format!("local: give an {fam} local address for the {fam} backends")));
            }
        }
        if self.local.contains(&l.ip()) {
            return Err(Error::Invalid(format!(
                "local {}: the local address must differ from the virtual one",
                l.ip()
            )));
        }
        self.health.check()
    }
}

/// One backend: `"ADDR:PORT"`, `"ADDR:PORT,weight=N"` or `{ addr = "ADDR:PORT", weight = N }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbBackendConfig {
    /// Its address.
    pub addr: SocketAddr,
    /// Its weight (0: drained, no new flows; default 1).
    pub weight: u32,
}

impl LbBackendConfig {
    /// A backend of weight 1.
    pub fn new(addr: SocketAddr) -> LbBackendConfig {
        LbBackendConfig { addr, weight: 1 }
    }
}

fn check_weight(w: u32) -> Result<u32> {
    if w > maglev::MAX_WEIGHT {
        return Err(Error::Invalid(format!("weight {w} is above {} (0 drains the backend)", maglev::MAX_WEIGHT)));
    }
    Ok(w)
}

impl FromStr for LbBackendConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<LbBackendConfig> {
        let mut parts = s.split(',');
        let addr = parse_addr("backend", parts.next().unwrap_or(""))?;
        let mut b = LbBackendConfig::new(addr);
        for part in parts {
            match part.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("weight", v)) => {
                    let w = v
                        .parse()
                        .map_err(|_| Error::Invalid(format!("backend `{s}`: weight `{v}` is not a number")))?;
                    b.weight = check_weight(w)?;
                }
                _ => return Err(Error::Invalid(format!("backend `{s}`: `{part}` is not weight=N"))),
            }
        }
        Ok(b)
    }
}

impl fmt::Display for LbBackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.weight != 1 {
            write!(f, ",weight={}", self.weight)?;
        }
        Ok(())
    }
}

impl Serialize for LbBackendConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LbBackendConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(deserialize_with = "values::addr")]
            addr: SocketAddr,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = LbBackendConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"ADDR:PORT\" or { addr = \"ADDR:PORT\", weight = N }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<LbBackendConfig, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> std::result::Result<LbBackendConfig, A::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let weight = check_weight(t.weight).map_err(de::Error::custom)?;
                Ok(LbBackendConfig { addr: t.addr, weight })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A range of local ports, `LO-HI`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPorts(pub PortRange);

impl LocalPorts {
    /// 1024-32767: below Linux's default ephemeral range (32768-60999), so
    /// the host's own connections from a local address never collide with
    /// a translated flow's port. A host with another
    /// `net.ipv4.ip_local_port_range` should set a range outside it.
    pub const DEFAULT: LocalPorts = LocalPorts(toa_common::lb::ports::DEFAULT_RANGE);
}

impl Default for LocalPorts {
    fn default() -> Self {
        LocalPorts::DEFAULT
    }
}

impl FromStr for LocalPorts {
    type Err = Error;

    fn from_str(s: &str) -> Result<LocalPorts> {
        let bad = || Error::Invalid(format!("`{s}` is not LO-HI with 1 <= LO <= HI <= 65535 (e.g. 1024-32767)"));
        let (lo, hi) = s.trim().split_once('-').ok_or_else(bad)?;
        let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
        let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok(LocalPorts(PortRange { lo, hi }))
    }
}

impl fmt::Display for LocalPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.lo, self.0.hi)
    }
}

/// Packets that carry the option: any of `syn`, `ack`, `data`, `rst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbPackets(pub u8);

impl Default for LbPackets {
    fn default() -> Self {
        LbPackets(packets::DEFAULT)
    }
}

const LB_PACKET_NAMES: [(u8, &str); 4] =
    [(packets::SYN, "syn"), (packets::ACK, "ack"), (packets::DATA, "data"), (packets::RST, "rst")];

impl FromStr for LbPackets {
    type Err = Error;

    fn from_str(s: &str) -> Result<LbPackets> {
        let mut bits = 0;
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            bits |= LB_PACKET_NAMES
                .iter()
                .find(|(_, n)| *n == p)
                .map(|(b, _)| *b)
                .ok_or_else(|| Error::Invalid(format!("unknown packet `{p}` (expected syn, ack, data, rst)")))?;
        }
        if bits == 0 {
            return Err(Error::Invalid("no packets to carry the option (expected any of syn, ack, data, rst)".into()));
        }
        Ok(LbPackets(bits))
    }
}

impl fmt::Display for LbPackets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = LB_PACKET_NAMES.iter().filter(|(b, _)| self.0 & b != 0).map(|(_, n)| *n).collect();
        f.write_str(&names.join(","))
    }
}

serde_via_str!(LocalPorts, LbPackets);

impl LbSection {
    /// The rules that span several keys, and the bounds of every value (for
    /// sections that did not come from a file: the command line's).
    pub fn check(&self) -> Result<()> {
        check_table_size(self.table_size)?;
        check_interfaces(&self.interfaces)?;
        self.timeouts.check()?;
        check_service_count(self.services.len())?;
        let total: usize = self.services.iter().map(|s| s.backends.len()).sum();
        if total > limits::MAX_BACKENDS {
            return Err(Error::Invalid(format!(
                "the services have {total} backends together; at most {}",
                limits::MAX_BACKENDS
            )));
        }
        if self.services.len() as u64 * self.table_size as u64 > limits::MAX_TABLE_ENTRIES {
            return Err(Error::Invalid(format!(
                "{} services x table_size {} exceed {} table entries; use a smaller table_size",
                self.services.len(),
                self.table_size,
                limits::MAX_TABLE_ENTRIES
            )));
        }
        for (i, s) in self.services.iter().enumerate() {
            if self.services[..i].iter().any(|o| o.listen == s.listen) {
                return Err(Error::Invalid(format!("service {} is given twice", s.listen)));
            }
            s.check().map_err(|e| Error::Invalid(format!("service {}: {e}", s.listen)))?;
        }
        Ok(())
    }
}

fn check_table_size(n: u32) -> Result<()> {
    if !maglev::valid_table_size(n) {
        return Err(Error::Invalid(format!(
            "table_size {n} is not a prime between {} and {} (e.g. 65537, 16381, 4099)",
            maglev::MIN_TABLE_SIZE,
            maglev::MAX_TABLE_SIZE
        )));
    }
    Ok(())
}

fn check_interfaces(list: &[String]) -> Result<()> {
    if list.len() > limits::MAX_INTERFACES {
        return Err(Error::Invalid(format!("at most {} interfaces, not {}", limits::MAX_INTERFACES, list.len())));
    }
    for (i, name) in list.iter().enumerate() {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ']) {
            return Err(Error::Invalid(format!("interface `{name}` is not an interface name")));
        }
        if list[..i].contains(name) {
            return Err(Error::Invalid(format!("interface {name} is given twice")));
        }
    }
    Ok(())
}

fn check_service_count(n: usize) -> Result<()> {
    if n > limits::MAX_SERVICES {
        return Err(Error::Invalid(format!("at most {} services, not {n}", limits::MAX_SERVICES)));
    }
    Ok(())
}

fn check_backend_count(n: usize) -> Result<()> {
    match n {
        0 => Err(Error::Invalid("a service needs at least one backend".into())),
        n if n > limits::MAX_BACKENDS => {
            Err(Error::Invalid(format!("a service has at most {} backends, not {n}", limits::MAX_BACKENDS)))
        }
        _ => Ok(()),
    }
}

fn check_timeout(d: Duration) -> Result<()> {
    if d < limits::MIN_TIMEOUT || d > limits::MAX_TIMEOUT {
        return Err(Error::Invalid(format!("{d} is not between {} and {}", limits::MIN_TIMEOUT, limits::MAX_TIMEOUT)));
    }
    Ok(())
}

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

checked!(table_size, u32, |n| check_table_size(*n));
checked!(interfaces, Vec<String>, |l| check_interfaces(l));
checked!(services, Vec<LbServiceConfig>, |s| check_service_count(s.len()));
checked!(backends, Vec<LbBackendConfig>, |b| check_backend_count(b.len()));
checked!(timeout, Duration, |d| check_timeout(*d));

fn locals<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<IpAddr>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.is_empty() {
        return Err(de::Error::custom("give at least one local address"));
    }
    list.iter()
        .map(|a| a.trim().parse::<IpAddr>().map_err(|_| de::Error::custom(format!("`{a}` is not an IP address"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_with_weights() {
        let b: LbBackendConfig = "10.0.0.2:80,weight=3".parse().expect("valid");
        assert_eq!((b.addr.port(), b.weight), (80, 3));
        assert_eq!(b.to_string(), "10.0.0.2:80,weight=3");
        assert_eq!("10.0.0.2:80".parse::<LbBackendConfig>().expect("valid").to_string(), "10.0.0.2:80");
        for bad in ["10.0.0.2", "10.0.0.2:80,weight=x", "10.0.0.2:80,weight=70000", "10.0.0.2:80,kind=200"] {
            assert!(bad.parse::<LbBackendConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_and_packets_print_back() {
        let p: LocalPorts = "2000-3000".parse().expect("valid");
        assert_eq!(p.to_string(), "2000-3000");
        for bad in ["0-10", "10-5", "x", "1-70000"] {
            assert!(bad.parse::<LocalPorts>().is_err(), "{bad}");
        }
        let k: LbPackets = "data,syn,rst".parse().expect("valid");
        assert_eq!(k.to_string(), "syn,data,rst");
        assert!("fin".parse::<LbPackets>().is_err() && "".parse::<LbPackets>().is_err());
    }
}
