//! What `toa lb` is told to do: its flags ([`Flags`], filled by the CLI)
//! turned into validated [`Settings`].

use std::net::{IpAddr, SocketAddr};

use toa_common::lb::{carry::packets, ports::PortRange};

use crate::{
    Error, Result,
    config::{
        proxy::{Kind4, Kind6},
        values::parse_addr,
    },
};

/// Where the running forwarder serves its counters.
pub const DEFAULT_STATS_SOCKET: &str = "/run/toa/lb.sock";

/// The flags of `toa lb`, as given (see the CLI for their meaning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flags {
    /// `--listen VIP:PORT`, repeatable.
    pub listen: Vec<String>,
    /// `--backend ADDR:PORT`, repeatable.
    pub backends: Vec<String>,
    /// `--snat LOCAL_ADDR`, one per family in use.
    pub snat: Vec<String>,
    /// `--iface IF`, repeatable (empty: all but loopback).
    pub ifaces: Vec<String>,
    /// `--kind` for IPv4 clients.
    pub kind: String,
    /// `--kind6` for IPv6 clients.
    pub kind6: String,
    /// `--toa-packets`.
    pub toa_packets: String,
    /// `--snat-ports LO-HI`.
    pub snat_ports: String,
    /// Not `--no-segmenter`.
    pub segmenter: bool,
    /// `--stats-socket`.
    pub stats_socket: std::path::PathBuf,
}

/// One virtual service, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Its backends (all of the service's family).
    pub backends: Vec<SocketAddr>,
    /// The local address towards them.
    pub snat: IpAddr,
    /// Option kind.
    pub kind: u8,
    /// Option length (8 for IPv4 clients, 20 for IPv6).
    pub len: u8,
}

/// Everything `toa lb` needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The services.
    pub services: Vec<ServiceSettings>,
    /// Interfaces given (empty: all but loopback).
    pub ifaces: Vec<String>,
    /// Packets that carry the option.
    pub packets: u8,
    /// Local ports.
    pub ports: PortRange,
    /// Create the segmenter.
    pub segmenter: bool,
    /// The stats socket.
    pub stats_socket: std::path::PathBuf,
}

/// Parses `syn,ack,data,rst`.
pub fn parse_packets(s: &str) -> Result<u8> {
    let mut bits = 0;
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        bits |= match p {
            "syn" => packets::SYN,
            "ack" => packets::ACK,
            "data" => packets::DATA,
            "rst" => packets::RST,
            other => {
                return Err(Error::Invalid(format!(
                    "--toa-packets: unknown packet `{other}` (expected syn, ack, data, rst)"
                )));
            }
        };
    }
    if bits == 0 {
        return Err(Error::Invalid("--toa-packets is empty (expected any of syn, ack, data, rst)".into()));
    }
    Ok(bits)
}

/// Parses `LO-HI`.
pub fn parse_ports(s: &str) -> Result<PortRange> {
    let bad =
        || Error::Invalid(format!("--snat-ports `{s}` is not LO-HI with 1 <= LO <= HI <= 65535 (e.g. 1024-32767)"));
    let (lo, hi) = s.trim().split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(PortRange { lo, hi })
}

impl Flags {
    /// Validates the flags.
    pub fn to_settings(&self) -> Result<Settings> {
        let kind4: Kind4 = self.kind.parse().map_err(|e: Error| Error::Invalid(format!("--kind: {e}")))?;
        let kind6: Kind6 = self.kind6.parse().map_err(|e: Error| Error::Invalid(format!("--kind6: {e}")))?;
        let (kind4, kind6) = (kind4.get(), kind6.get());
        let backends = self.backends.iter().map(|b| parse_addr("backend", b)).collect::<Result<Vec<SocketAddr>>>()?;
        let snat = self
            .snat
            .iter()
            .map(|a| {
                a.trim().parse::<IpAddr>().map_err(|_| Error::Invalid(format!("--snat `{a}` is not an IP address")))
            })
            .collect::<Result<Vec<IpAddr>>>()?;
        let mut services = Vec::new();
        for l in &self.listen {
            let listen = parse_addr("listen", l)?;
            if listen.port() == 0 || listen.ip().is_unspecified() {
                return Err(Error::Invalid(format!(
                    "--listen {listen}: give the virtual address and port clients connect to"
                )));
            }
            let v6 = listen.is_ipv6();
            let family = if v6 { "IPv6" } else { "IPv4" };
            let own: Vec<SocketAddr> = backends.iter().copied().filter(|b| b.is_ipv6() == v6).collect();
            if own.is_empty() {
                return Err(Error::Invalid(format!(
                    "--listen {listen} has no {family} backend (give --backend ADDR:PORT; backends serve the services of their family)"
                )));
            }
            let Some(local) = snat.iter().copied().find(|a| a.is_ipv6() == v6) else {
                return Err(Error::Invalid(format!("--listen {listen} needs an {family} --snat address")));
            };
            if snat.contains(&listen.ip()) {
                return Err(Error::Invalid(format!(
                    "--snat {}: the local address must differ from the virtual one",
                    listen.ip()
                )));
            }
            if services.iter().any(|s: &ServiceSettings| s.listen == listen) {
                return Err(Error::Invalid(format!("--listen {listen} is given twice")));
            }
            let (kind, len) = if v6 { (kind6, 20) } else { (kind4, 8) };
            services.push(ServiceSettings { listen, backends: own, snat: local, kind, len });
        }
        if let Some(b) = backends.iter().find(|b| !services.iter().any(|s| s.listen.is_ipv6() == b.is_ipv6())) {
            return Err(Error::Invalid(format!("--backend {b} serves no --listen of its address family")));
        }
        Ok(Settings {
            services,
            ifaces: self.ifaces.clone(),
            packets: parse_packets(&self.toa_packets)?,
            ports: parse_ports(&self.snat_ports)?,
            segmenter: self.segmenter,
            stats_socket: self.stats_socket.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: &[&str], backends: &[&str], snat: &[&str]) -> Flags {
        Flags {
            listen: listen.iter().map(|s| s.to_string()).collect(),
            backends: backends.iter().map(|s| s.to_string()).collect(),
            snat: snat.iter().map(|s| s.to_string()).collect(),
            ifaces: vec![],
            kind: "254".into(),
            kind6: "253".into(),
            toa_packets: "ack,data".into(),
            snat_ports: "1024-32767".into(),
            segmenter: true,
            stats_socket: DEFAULT_STATS_SOCKET.into(),
        }
    }

    #[test]
    fn services_by_family() {
        let s = args(
            &["10.0.0.1:80", "[2001:db8::1]:80"],
            &["10.0.1.2:8080", "[2001:db8:1::2]:8080", "10.0.1.3:8080"],
            &["10.0.1.1", "2001:db8:1::1"],
        )
        .to_settings()
        .expect("valid");
        assert_eq!(s.services.len(), 2);
        assert_eq!(s.services[0].backends.len(), 2);
        assert_eq!((s.services[0].kind, s.services[0].len), (254, 8));
        assert_eq!((s.services[1].kind, s.services[1].len), (253, 20));
        assert_eq!(s.services[1].snat, "2001:db8:1::1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn refusals_name_the_flag() {
        let cases: [(Flags, &str); 7] = [
            (args(&["nowhere"], &["10.0.1.2:80"], &["10.0.1.1"]), "listen `nowhere`"),
            (args(&["10.0.0.1:80"], &[], &["10.0.1.1"]), "no IPv4 backend"),
            (args(&["10.0.0.1:80"], &["10.0.1.2:80"], &["2001:db8::1"]), "needs an IPv4 --snat"),
            (args(&["10.0.0.1:80"], &["10.0.1.2:80", "[2001:db8::2]:80"], &["10.0.1.1"]), "serves no --listen"),
            (args(&["10.0.0.1:80"], &["10.0.1.2:80"], &["x"]), "--snat `x`"),
            (args(&["0.0.0.0:80"], &["10.0.1.2:80"], &["10.0.1.1"]), "virtual address"),
            (args(&["10.0.0.1:80"], &["10.0.1.2:80"], &["10.0.0.1"]), "must differ"),
        ];
        for (a, needle) in cases {
            let e = a.to_settings().expect_err(needle).to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut a = args(&["10.0.0.1:80"], &["10.0.1.2:80"], &["10.0.1.1"]);
        a.kind = "7".into();
        assert!(a.to_settings().is_err());
    }

    #[test]
    fn packets_and_ports() {
        assert_eq!(parse_packets("ack,data").expect("ok"), packets::DEFAULT);
        assert_eq!(parse_packets("syn,rst").expect("ok"), packets::SYN | packets::RST);
        assert!(parse_packets("").is_err() && parse_packets("fin").is_err());
        assert_eq!(parse_ports("2000-3000").expect("ok"), PortRange { lo: 2000, hi: 3000 });
        for bad in ["0-10", "10-5", "x", "1-70000"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }
}
