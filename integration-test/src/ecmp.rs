//! Two packet-level forwarders behind an ECMP router, for `toa lb`'s
//! scale-out tests (and the two-node benchmark):
//!
//! ```text
//!                                  ┌ lb1  10.74.11.2 │ 10.74.2.11 ┐
//!  cli 10.74.1.2-9 ── rtr 10.74.1.1 ┤                              ├─ br0 (srv) 10.74.2.2, .3, .4
//!                    VIP 10.74.0.1  └ lb2  10.74.12.2 │ 10.74.2.12 ┘
//!                    via both (ECMP)
//! ```
//!
//! The router reaches the virtual address through both forwarders (one
//! multipath route, `fib_multipath_hash_policy=1`: the next hop is chosen
//! by a hash of the addresses and ports). Each forwarder has its own local
//! address on the backends' LAN (a bridge in the backends' namespace), so a
//! backend's replies go to the forwarder that holds the flow. The
//! forwarders route everything else (the replies to the clients) through
//! the router. Everything is removed on drop.

use std::time::{Duration, Instant};

use crate::netns::Netns;

/// The virtual address (on no interface: routed to the forwarders).
pub const VIP: &str = "10.74.0.1";
/// The router's address on the clients' LAN.
pub const RTR_CLI: &str = "10.74.1.1";
/// The first client address (more follow: [`client_addrs`]).
pub const CLI_FIRST: &str = "10.74.1.2";
/// The forwarders' uplink addresses (the router's next hops).
pub const LB_UP: [&str; 2] = ["10.74.11.2", "10.74.12.2"];
/// The forwarders' local addresses on the backends' LAN.
pub const LB_LOCAL: [&str; 2] = ["10.74.2.11", "10.74.2.12"];
/// The backends' addresses (all on the bridge).
pub const BACKENDS: [&str; 3] = ["10.74.2.2", "10.74.2.3", "10.74.2.4"];
/// Client addresses the fixture configures.
pub const CLIENTS: usize = 8;

/// The client addresses: 10.74.1.2 to 10.74.1.9.
pub fn client_addrs() -> Vec<String> {
    (0..CLIENTS).map(|i| format!("10.74.1.{}", 2 + i)).collect()
}

/// The five namespaces.
#[derive(Debug)]
pub struct Ecmp {
    /// Clients.
    pub cli: Netns,
    /// The router.
    pub rtr: Netns,
    /// The two forwarders.
    pub lb: [Netns; 2],
    /// The backends.
    pub srv: Netns,
}

impl Ecmp {
    /// Creates the topology and waits until every link is up.
    ///
    /// # Panics
    ///
    /// If a step fails (not root, `ip` missing) or the links do not settle within 10 s.
    pub fn new() -> Ecmp {
        let cli = Netns::new("toa-ecmp-cli");
        let rtr = Netns::new("toa-ecmp-rtr");
        let lb = [Netns::new("toa-ecmp-lb1"), Netns::new("toa-ecmp-lb2")];
        let srv = Netns::new("toa-ecmp-srv");
        rtr.write_sysctl("net/ipv4/ip_forward", "1");
        rtr.write_sysctl("net/ipv4/fib_multipath_hash_policy", "1");
        for n in &lb {
            n.write_sysctl("net/ipv4/ip_forward", "1");
        }
        rtr.run(&["ip", "link", "add", "eth-rc", "type", "veth", "peer", "name", "eth-cli", "netns", cli.name()]);
        let mut cli_batch = String::new();
        for a in client_addrs() {
            cli_batch.push_str(&format!("addr add {a}/24 dev eth-cli\n"));
        }
        cli_batch.push_str(&format!("link set eth-cli up\nroute add default via {RTR_CLI}\n"));
        cli.run_with_input(&["ip", "-batch", "-"], &cli_batch);
        rtr.run_with_input(&["ip", "-batch", "-"], &format!("addr add {RTR_CLI}/24 dev eth-rc\nlink set eth-rc up\n"));
        srv.run_with_input(&["ip", "-batch", "-"], "link add br0 type bridge\nlink set br0 up\n");
        let mut srv_batch = String::new();
        for b in BACKENDS {
            srv_batch.push_str(&format!("addr add {b}/24 dev br0\n"));
        }
        srv.run_with_input(&["ip", "-batch", "-"], &srv_batch);
        for (i, n) in lb.iter().enumerate() {
            let k = i + 1;
            let (up, sv, rt, br) = (format!("eth-{k}r"), format!("eth-{k}s"), format!("eth-r{k}"), format!("eth-s{k}"));
            n.run(&["ip", "link", "add", &up, "type", "veth", "peer", "name", &rt, "netns", rtr.name()]);
            n.run(&["ip", "link", "add", &sv, "type", "veth", "peer", "name", &br, "netns", srv.name()]);
            n.run_with_input(
                &["ip", "-batch", "-"],
                &format!(
                    "addr add {}/24 dev {up}\nlink set {up} up\naddr add {}/24 dev {sv}\nlink set {sv} up\nroute add default via 10.74.1{k}.1\n",
                    LB_UP[i], LB_LOCAL[i]
                ),
            );
            rtr.run_with_input(
                &["ip", "-batch", "-"],
                &format!("addr add 10.74.1{k}.1/24 dev {rt}\nlink set {rt} up\n"),
            );
            srv.run_with_input(&["ip", "-batch", "-"], &format!("link set {br} master br0\nlink set {br} up\n"));
        }
        let e = Ecmp { cli, rtr, lb, srv };
        e.wait_settled();
        e.use_both();
        e
    }

    fn wait_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ends = [
            (&self.cli, "eth-cli"),
            (&self.rtr, "eth-rc"),
            (&self.rtr, "eth-r1"),
            (&self.rtr, "eth-r2"),
            (&self.lb[0], "eth-1r"),
            (&self.lb[0], "eth-1s"),
            (&self.lb[1], "eth-2r"),
            (&self.lb[1], "eth-2s"),
            (&self.srv, "br0"),
        ];
        loop {
            let pending: Vec<String> = ends
                .iter()
                .filter(|(ns, ifname)| !ns.output(&["ip", "-o", "link", "show", "dev", ifname]).contains(" state UP "))
                .map(|(ns, ifname)| format!("{} {ifname}", ns.name()))
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "links did not settle within 10 s: {pending:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The router sends the virtual address's traffic through both forwarders.
    pub fn use_both(&self) {
        self.rtr.run(&["ip", "route", "replace", VIP, "nexthop", "via", LB_UP[0], "nexthop", "via", LB_UP[1]]);
    }

    /// The router sends it through forwarder `i` only (the other is removed).
    pub fn use_only(&self, i: usize) {
        self.rtr.run(&["ip", "route", "replace", VIP, "via", LB_UP[i]]);
    }
}

impl Default for Ecmp {
    fn default() -> Self {
        Ecmp::new()
    }
}
