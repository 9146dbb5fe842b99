//! A client — forwarder — backend line of three network namespaces, IPv4
//! and IPv6, for the packet-level forwarder's tests:
//!
//! ```text
//!  cli 10.72.1.2      ── lbc 10.72.1.1 (the virtual address)      lbs 10.72.2.1 (the local address) ── srv 10.72.2.2
//!      2001:db8:72:1::2       2001:db8:72:1::1                         2001:db8:72:2::1                  2001:db8:72:2::2
//! ```
//!
//! Client and backend are on different subnets with no route between them:
//! only the forwarder joins them (forwarding is on in `lb`, as the
//! forwarder's FIB lookups need). Each end has a child cgroup (the backend's
//! for `toa agent`, the client's for a writer). With [`Offloads::Off`] the
//! client's and the backend's veth ends do their own checksums and
//! segmentation (`ethtool -K … tx off tso off gso off`), as packets from a
//! NIC arrive; by default they keep veth's offloads, so the forwarder sees
//! checksum-offloaded GSO super-packets. Everything is removed on drop.

use std::time::{Duration, Instant};

use crate::{cgroup::Cgroup, netns::Netns};

/// The client's IPv4 address.
pub const CLI4: &str = "10.72.1.2";
/// The virtual IPv4 address (on the forwarder's client side).
pub const VIP4: &str = "10.72.1.1";
/// The forwarder's local IPv4 address towards the backend.
pub const SNAT4: &str = "10.72.2.1";
/// The backend's IPv4 address.
pub const SRV4: &str = "10.72.2.2";
/// The client's IPv6 address.
pub const CLI6: &str = "2001:db8:72:1::2";
/// The virtual IPv6 address.
pub const VIP6: &str = "2001:db8:72:1::1";
/// The forwarder's local IPv6 address.
pub const SNAT6: &str = "2001:db8:72:2::1";
/// The backend's IPv6 address.
pub const SRV6: &str = "2001:db8:72:2::2";
/// The client's interface.
pub const CLI_IF: &str = "eth-cli";
/// The forwarder's client-side interface.
pub const LB_CLI_IF: &str = "eth-lbc";
/// The forwarder's backend-side interface.
pub const LB_SRV_IF: &str = "eth-lbs";
/// The backend's interface.
pub const SRV_IF: &str = "eth-srv";

/// Offloads of the client's and the backend's interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offloads {
    /// veth's defaults: checksum offload, TSO/GSO.
    Default,
    /// `tx off tso off gso off`: full checksums, MSS-sized segments.
    Off,
}

/// The three namespaces and two cgroups.
#[derive(Debug)]
pub struct Line {
    /// Client namespace.
    pub cli: Netns,
    /// Forwarder namespace.
    pub lb: Netns,
    /// Backend namespace.
    pub srv: Netns,
    /// The client's cgroup.
    pub cli_cg: Cgroup,
    /// The backend's cgroup.
    pub srv_cg: Cgroup,
}

impl Line {
    /// Creates the line and waits until every link is up and no IPv6
    /// address is tentative.
    ///
    /// # Panics
    ///
    /// If a step fails (not root, `ip` or `ethtool` missing) or the links do
    /// not settle within 10 s.
    pub fn new(offloads: Offloads) -> Line {
        let cli = Netns::new("toa-lb-cli");
        let lb = Netns::new("toa-lb-lb");
        let srv = Netns::new("toa-lb-srv");
        for ns in [&cli, &lb, &srv] {
            ns.write_sysctl("net/ipv6/conf/all/accept_dad", "0");
            ns.write_sysctl("net/ipv6/conf/default/accept_dad", "0");
        }
        lb.write_sysctl("net/ipv4/ip_forward", "1");
        lb.write_sysctl("net/ipv6/conf/all/forwarding", "1");
        lb.run(&["ip", "link", "add", LB_CLI_IF, "type", "veth", "peer", "name", CLI_IF, "netns", cli.name()]);
        lb.run(&["ip", "link", "add", LB_SRV_IF, "type", "veth", "peer", "name", SRV_IF, "netns", srv.name()]);
        let conf = |ns: &Netns, ifname: &str, v4: &str, v6: &str| {
            ns.run_with_input(
                &["ip", "-batch", "-"],
                &format!("addr add {v4}/24 dev {ifname}\naddr add {v6}/64 dev {ifname} nodad\nlink set {ifname} up\n"),
            );
        };
        conf(&cli, CLI_IF, CLI4, CLI6);
        conf(&lb, LB_CLI_IF, VIP4, VIP6);
        conf(&lb, LB_SRV_IF, SNAT4, SNAT6);
        conf(&srv, SRV_IF, SRV4, SRV6);
        if offloads == Offloads::Off {
            cli.run(&["ethtool", "-K", CLI_IF, "tx", "off", "tso", "off", "gso", "off"]);
            srv.run(&["ethtool", "-K", SRV_IF, "tx", "off", "tso", "off", "gso", "off"]);
        }
        let line = Line { cli, lb, srv, cli_cg: Cgroup::new("toa-lb-cli"), srv_cg: Cgroup::new("toa-lb-srv") };
        line.wait_settled();
        line
    }

    fn wait_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ends = [(&self.cli, CLI_IF), (&self.lb, LB_CLI_IF), (&self.lb, LB_SRV_IF), (&self.srv, SRV_IF)];
        loop {
            let pending: Vec<String> = ends
                .iter()
                .filter(|(ns, ifname)| {
                    let link = ns.output(&["ip", "-o", "link", "show", "dev", ifname]);
                    let addrs = ns.output(&["ip", "-o", "-6", "addr", "show", "dev", ifname]);
                    !link.contains(" state UP ") || addrs.contains("tentative") || !addrs.contains("2001:db8:72:")
                })
                .map(|(ns, ifname)| format!("{} {ifname}", ns.name()))
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "links did not settle within 10 s: {pending:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A counter of the namespace's `/proc/net/snmp` (e.g. `Tcp`, `InCsumErrors`).
    ///
    /// # Panics
    ///
    /// If the file cannot be read or has no such counter.
    pub fn snmp(ns: &Netns, group: &str, name: &str) -> u64 {
        let text = ns.output(&["cat", "/proc/net/snmp"]);
        let prefix = format!("{group}:");
        let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            panic!("no {group} lines in /proc/net/snmp of {}:\n{text}", ns.name());
        };
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no {group} counter {name} in {}: {names}", ns.name()));
        values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad {values}"))
    }
}
