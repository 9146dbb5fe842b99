//! What `toa lb` is told to do: the `[lb]` section of a configuration file,
//! or its flags ([`Flags`], filled by the CLI, turned into the same
//! section), resolved for this node into [`Settings`].

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use toa_common::lb::ports::PortRange;

use crate::{
    Error, Result,
    config::{
        lb::{LbBackendConfig, LbPackets, LbSection, LbServiceConfig, LocalPorts},
        proxy::{HealthConfig, Kind4, Kind6},
        values::{Duration, parse_addr},
    },
};

pub use crate::config::lb::DEFAULT_STATS_SOCKET;

/// The flags of `toa lb` without `--config`, as given (see the CLI for
/// their meaning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flags {
    /// `--listen VIP:PORT`, repeatable.
    pub listen: Vec<String>,
    /// `--backend ADDR:PORT[,weight=N]`, repeatable.
    pub backends: Vec<String>,
    /// `--snat LOCAL_ADDR`, repeatable.
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
    /// `--health-interval` (`0s`: no health checks).
    pub health_interval: String,
}

impl Flags {
    /// The `[lb]` section the flags describe: one service per `--listen`,
    /// with the backends of its family (and, for an IPv6 service without
    /// IPv6 backends, the IPv4 ones: NAT64).
    pub fn to_section(&self) -> Result<LbSection> {
        let kind: Kind4 = self.kind.parse().map_err(|e: Error| Error::Invalid(format!("--kind: {e}")))?;
        let kind6: Kind6 = self.kind6.parse().map_err(|e: Error| Error::Invalid(format!("--kind6: {e}")))?;
        let toa_packets: LbPackets =
            self.toa_packets.parse().map_err(|e: Error| Error::Invalid(format!("--toa-packets: {e}")))?;
        let local_ports: LocalPorts =
            self.snat_ports.parse().map_err(|e: Error| Error::Invalid(format!("--snat-ports {e}")))?;
        let health_interval: Duration =
            self.health_interval.parse().map_err(|e: Error| Error::Invalid(format!("--health-interval: {e}")))?;
        let backends =
            self.backends.iter().map(|b| b.parse::<LbBackendConfig>()).collect::<Result<Vec<LbBackendConfig>>>()?;
        let snat = self
            .snat
            .iter()
            .map(|a| {
                a.trim().parse::<IpAddr>().map_err(|_| Error::Invalid(format!("--snat `{a}` is not an IP address")))
            })
            .collect::<Result<Vec<IpAddr>>>()?;
        let mut services: Vec<LbServiceConfig> = Vec::new();
        for l in &self.listen {
            let listen = parse_addr("listen", l)?;
            let v6 = listen.is_ipv6();
            let family = if v6 { "IPv6" } else { "IPv4" };
            let mut own: Vec<LbBackendConfig> = backends.iter().copied().filter(|b| b.addr.is_ipv6() == v6).collect();
            if own.is_empty() && v6 {
                own = backends.iter().copied().filter(|b| b.addr.is_ipv4()).collect();
            }
            if own.is_empty() {
                return Err(Error::Invalid(format!(
                    "--listen {listen} has no {family} backend (give --backend ADDR:PORT; backends serve the services of their family)"
                )));
            }
            let need6 = own.iter().any(|b| b.addr.is_ipv6());
            let local: Vec<IpAddr> = snat.iter().copied().filter(|a| a.is_ipv6() == need6).collect();
            if local.is_empty() {
                let fam = if need6 { "IPv6" } else { "IPv4" };
                return Err(Error::Invalid(format!("--listen {listen} needs an {fam} --snat address")));
            }
            if snat.contains(&listen.ip()) {
                return Err(Error::Invalid(format!(
                    "--snat {}: the local address must differ from the virtual one",
                    listen.ip()
                )));
            }
            if services.iter().any(|s| s.listen == listen) {
                return Err(Error::Invalid(format!("--listen {listen} is given twice")));
            }
            let mut svc = LbServiceConfig::new(listen, own, local);
            svc.kind = kind;
            svc.kind6 = kind6;
            svc.toa_packets = toa_packets;
            svc.health.interval = health_interval;
            services.push(svc);
        }
        if let Some(b) = backends.iter().find(|b| !services.iter().any(|s| s.backends.iter().any(|o| o.addr == b.addr)))
        {
            return Err(Error::Invalid(format!("--backend {} serves no --listen of its address family", b.addr)));
        }
        let section = LbSection {
            interfaces: self.ifaces.clone(),
            local_ports,
            segmenter: self.segmenter,
            services,
            ..LbSection::default()
        };
        section.check()?;
        Ok(section)
    }
}

/// One virtual service, resolved for this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSettings {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Its backends (of the service's family, or IPv4 ones for an IPv6
    /// service: NAT64).
    pub backends: Vec<LbBackendConfig>,
    /// The local address towards its IPv4 backends on this node.
    pub local4: Option<IpAddr>,
    /// The local address towards its IPv6 backends on this node.
    pub local6: Option<IpAddr>,
    /// Option kind.
    pub kind: u8,
    /// Option length (8 for IPv4 clients, 20 for IPv6).
    pub len: u8,
    /// Packets that carry the option.
    pub packets: u8,
    /// Health checks.
    pub health: HealthConfig,
}

impl ServiceSettings {
    /// The local address towards `backend` on this node.
    pub fn local_for(&self, backend: &SocketAddr) -> Option<IpAddr> {
        if backend.is_ipv6() { self.local6 } else { self.local4 }
    }
}

/// Everything `toa lb` needs, validated and resolved for this node.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The section it came from.
    pub section: LbSection,
    /// The services.
    pub services: Vec<ServiceSettings>,
}

impl Settings {
    /// Local ports.
    pub fn ports(&self) -> PortRange {
        self.section.local_ports.0
    }

    /// The stats socket.
    pub fn stats_socket(&self) -> &PathBuf {
        &self.section.stats_socket
    }

    /// Resolves a checked section for a node whose own addresses are `own`:
    /// each service's local address of a family is the first of its `local`
    /// list that is one of `own`, or the only one of that family listed.
    pub fn resolve(section: &LbSection, own: &[IpAddr]) -> Result<Settings> {
        let mut services = Vec::new();
        for s in &section.services {
            let pick = |v6: bool| -> Result<Option<IpAddr>> {
                if !s.backends.iter().any(|b| b.addr.is_ipv6() == v6) {
                    return Ok(None);
                }
                let of_family: Vec<IpAddr> = s.local.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
                if let Some(a) = of_family.iter().find(|a| own.contains(a)) {
                    return Ok(Some(*a));
                }
                match of_family.as_slice() {
                    [only] => Ok(Some(*only)),
                    list => Err(Error::Invalid(format!(
                        "service {}: none of the local addresses {} is an address of this node (each node uses its own; see `ip addr`)",
                        s.listen,
                        list.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ))),
                }
            };
            let v6 = s.listen.is_ipv6();
            services.push(ServiceSettings {
                listen: s.listen,
                backends: s.backends.clone(),
                local4: pick(false)?,
                local6: pick(true)?,
                kind: if v6 { s.kind6.get() } else { s.kind.get() },
                len: if v6 { 20 } else { 8 },
                packets: s.toa_packets.0,
                health: s.health,
            });
        }
        Ok(Settings { section: section.clone(), services })
    }
}

/// The addresses of this network namespace's interfaces (`getifaddrs`).
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut p = list;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family tells its type.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: an AF_INET sockaddr.
                    let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 sockaddr.
                    let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(a.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
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
            health_interval: "0s".into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn services_by_family() {
        let section = args(
            &["10.0.0.1:80", "[2001:db8::1]:80"],
            &["10.0.1.2:8080", "[2001:db8:1::2]:8080", "10.0.1.3:8080,weight=2"],
            &["10.0.1.1", "2001:db8:1::1"],
        )
        .to_section()
        .expect("valid");
        let s = Settings::resolve(&section, &[]).expect("resolves");
        assert_eq!(s.services.len(), 2);
        assert_eq!(s.services[0].backends.len(), 2);
        assert_eq!(s.services[0].backends[1].weight, 2);
        assert_eq!((s.services[0].kind, s.services[0].len), (254, 8));
        assert_eq!((s.services[1].kind, s.services[1].len), (253, 20));
        assert_eq!(s.services[1].local6, Some(ip("2001:db8:1::1")));
        assert_eq!(s.services[1].local4, None);
    }

    #[test]
    fn an_ipv6_service_with_only_ipv4_backends_is_nat64() {
        let section = args(&["[2001:db8::1]:80"], &["10.0.1.2:8080"], &["10.0.1.1"]).to_section().expect("valid");
        let s = Settings::resolve(&section, &[]).expect("resolves");
        assert_eq!((s.services[0].kind, s.services[0].len), (253, 20), "an IPv6 client's option");
        assert_eq!(s.services[0].local4, Some(ip("10.0.1.1")));
    }

    #[test]
    fn each_node_takes_its_own_local_address() {
        let mut section =
            args(&["10.0.0.1:80"], &["10.0.1.2:8080"], &["10.0.1.11", "10.0.1.12"]).to_section().expect("ok");
        let a = Settings::resolve(&section, &[ip("10.0.1.11")]).expect("node a");
        let b = Settings::resolve(&section, &[ip("127.0.0.1"), ip("10.0.1.12")]).expect("node b");
        assert_eq!(a.services[0].local4, Some(ip("10.0.1.11")));
        assert_eq!(b.services[0].local4, Some(ip("10.0.1.12")));
        let e = Settings::resolve(&section, &[ip("10.0.1.13")]).expect_err("neither");
        assert!(e.to_string().contains("none of the local addresses 10.0.1.11, 10.0.1.12"), "{e}");
        section.services[0].local = vec![ip("10.0.1.11")];
        let c = Settings::resolve(&section, &[]).expect("a single one is used as is");
        assert_eq!(c.services[0].local4, Some(ip("10.0.1.11")));
    }

    #[test]
    fn refusals_name_the_flag() {
        let cases: [(Flags, &str); 8] = [
            (args(&["nowhere"], &["10.0.1.2:80"], &["10.0.1.1"]), "listen `nowhere`"),
            (args(&["10.0.0.1:80"], &[], &["10.0.1.1"]), "no IPv4 backend"),
            (args(&["10.0.0.1:80"], &["10.0.1.2:80"], &["2001:db8::1"]), "needs an IPv4 --snat"),
            (args(&["10.0.0.1:80"], &["10.0.1.2:80", "[2001:db8::2]:80"], &["10.0.1.1"]), "serves no --listen"),
            (args(&["10.0.0.1:80"], &["10.0.1.2:80"], &["x"]), "--snat `x`"),
            (args(&["0.0.0.0:80"], &["10.0.1.2:80"], &["10.0.1.1"]), "virtual address"),
            (args(&["10.0.0.1:80"], &["10.0.1.2:80"], &["10.0.0.1"]), "must differ"),
            (args(&["10.0.0.1:80"], &["10.0.1.2:80,weight=0"], &["10.0.1.1"]), "weight 0"),
        ];
        for (a, needle) in cases {
            let e = a.to_section().expect_err(needle).to_string();
            assert!(e.contains(needle), "{e}");
        }
        let mut a = args(&["10.0.0.1:80"], &["10.0.1.2:80"], &["10.0.1.1"]);
        a.kind = "7".into();
        assert!(a.to_section().is_err());
        let mut a = args(&["10.0.0.1:80"], &["10.0.1.2:80"], &["10.0.1.1"]);
        a.snat_ports = "9-2".into();
        assert!(a.to_section().expect_err("ports").to_string().contains("--snat-ports"));
        a.snat_ports = "1024-32767".into();
        a.toa_packets = "fin".into();
        assert!(a.to_section().expect_err("packets").to_string().contains("unknown packet `fin`"));
    }

    #[test]
    fn own_addresses_include_loopback() {
        assert!(own_addresses().contains(&ip("127.0.0.1")));
    }
}
