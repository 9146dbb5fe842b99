//! Conformance suite: table-driven fixtures (`conformance/fixtures.rs`) run
//! against the real kernel with `toa agent` attached. A TUN peer writes every
//! segment byte by byte (SYN, final ACK, data, FIN), a Python server in the
//! namespace reports what `accept()`, `getpeername()` and the vendor
//! `getsockopt()` calls (1348, 4096) return, and the agent's counters are
//! compared before and after each fixture. The refused options of the codec
//! (lengths 0, 1, 7, 9, 21, an option past the header, one after EOL) are
//! fixtures of the default group, with `toa_malformed` counted.

mod common;

#[path = "conformance/fixtures.rs"]
mod fixtures;

use std::{
    net::{SocketAddr, SocketAddrV6},
    time::Duration,
};

use common::{AgentProc, Lab, READY, eventually, require_root};
use fixtures::{Expect, Fixture, GROUPS, Group, Listener, Opts, Step, Via};
use integration_test::{
    packet::{ACK, FIN, PSH},
    process::{Spawned, Stream, command_in, spawn},
    tun::{SERVER_V4, SERVER_V6, TunPeer},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

/// Ports of the three listeners.
const PORT_V4: u16 = 9000;
const PORT_DUAL: u16 = 9001;
const PORT_V6: u16 = 9002;

/// Listens on an IPv4, a dual-stack and an IPv6-only socket; per connection
/// prints `accept L=PORT ADDR` when accept() returns, reads once (up to 5 s),
/// then prints `report L=PORT peer=ADDR vtoa=… nat64=… data=N`.
const SERVER: &str = r#"
import errno, select, socket, sys
listeners = {}
for spec in sys.argv[1:]:
    kind, port = spec.split(":")
    port = int(port)
    if kind == "4":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        bind = ("0.0.0.0", port)
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if kind == "6" else 0)
        bind = ("::", port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(bind)
    s.listen(64)
    listeners[s.fileno()] = (s, port)
print("listening", flush=True)

def fmt(a):
    return f"[{a[0]}]:{a[1]}" if len(a) == 4 else f"{a[0]}:{a[1]}"

def ask(c, name, size):
    try:
        b = c.getsockopt(socket.IPPROTO_IP, name, size)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    if name == 4096:
        if len(b) != 20:
            return "garbage:" + b.hex()
        return f"[{socket.inet_ntop(socket.AF_INET6, b[:16])}]:{int.from_bytes(b[16:18], 'big')}"
    fam = int.from_bytes(b[0:2], sys.byteorder)
    port = int.from_bytes(b[2:4], "big")
    if fam == socket.AF_INET and len(b) == 16:
        return f"{socket.inet_ntop(socket.AF_INET, b[4:8])}:{port}"
    if fam == socket.AF_INET6 and len(b) == 28:
        return f"[{socket.inet_ntop(socket.AF_INET6, b[8:24])}]:{port}"
    return "garbage:" + b.hex()

while True:
    ready, _, _ = select.select(list(listeners), [], [])
    for fd in ready:
        s, port = listeners[fd]
        c, a = s.accept()
        print(f"accept L={port} {fmt(a)}", flush=True)
        c.settimeout(5)
        try:
            n = len(c.recv(4096))
        except OSError:
            n = -1
        print(f"report L={port} peer={fmt(c.getpeername())} vtoa={ask(c, 1348, 128)} "
              f"nat64={ask(c, 4096, 20)} data={n}", flush=True)
        c.close()
"#;

fn start_server(lab: &Lab) -> Spawned {
    let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), "python3");
    cmd.args(["-u", "-c", SERVER, &format!("4:{PORT_V4}"), &format!("d:{PORT_DUAL}"), &format!("6:{PORT_V6}")]);
    let mut server = spawn(cmd);
    server.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
    server
}

fn concat(parts: Opts) -> Vec<u8> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

/// The transport client as a listener of this kind presents it.
fn transport(listener: Listener, client: SocketAddr) -> SocketAddr {
    match (listener, client) {
        (Listener::V4, c) => c,
        (_, SocketAddr::V4(c)) => SocketAddr::V6(SocketAddrV6::new(c.ip().to_ipv6_mapped(), c.port(), 0, 0)),
        (_, c) => c,
    }
}

/// What the server prints for `want` on a connection from `client`; `None` for [`Expect::Any`].
fn printed(want: Expect, listener: Listener, client: SocketAddr) -> Option<String> {
    match want {
        Expect::Any => None,
        Expect::Transport => Some(transport(listener, client).to_string()),
        Expect::Client(addr) => Some(addr.to_string()),
        Expect::ClientAtTransportPort(ip) => Some(SocketAddr::new(ip, client.port()).to_string()),
        Expect::Enoent => Some("ENOENT".into()),
        Expect::Einval => Some("EINVAL".into()),
    }
}

fn check(what: &str, want: Expect, got: &str, client: SocketAddr, f: &Fixture) {
    if let Some(want) = printed(want, f.listener, client) {
        assert_eq!(got, want, "{} ({}): {what}\n  mirrors: {}", f.name, f.description, f.mirrors);
    }
}

/// The `key=value` field of a report line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap_or_else(|| panic!("counter {name} missing from toa stats"))
}

fn run_fixture(peer: &mut TunPeer, server: &mut Spawned, agent: &AgentProc, f: &Fixture) {
    let (client, server_ip) = match f.via {
        Via::V4 => (peer.client_v4(), std::net::IpAddr::from(peer.server_v4())),
        Via::V6 => (peer.client_v6(), peer.server_v6().into()),
    };
    let port = match f.listener {
        Listener::V4 => PORT_V4,
        Listener::Dual => PORT_DUAL,
        Listener::V6Only => PORT_V6,
    };
    let accept_prefix = format!("accept L={port} ");
    let report_prefix = format!("report L={port} ");
    let before = agent.stats();

    let mut conn = peer.handshake(client, SocketAddr::new(server_ip, port), &concat(f.syn), T);
    let mut accepted: Option<String> = None;
    let mut sent_data = false;
    for step in f.steps {
        match *step {
            Step::Ack(o) => peer.ack(&mut conn, &concat(o)),
            Step::Data(o) => {
                peer.send(&mut conn, PSH | ACK, &concat(o), b"x");
                sent_data = true;
            }
            Step::FinData(o) => {
                peer.send(&mut conn, FIN | PSH | ACK, &concat(o), b"x");
                sent_data = true;
            }
            Step::AckDataOffset(o, words) => {
                // The undeclared option tail is payload for the kernel.
                let written = concat(o);
                let hidden = written.len().next_multiple_of(4) - (usize::from(words) * 4 - 20);
                peer.send_with_data_offset(&mut conn, ACK, &written, words, b"");
                conn.snd_nxt = conn.snd_nxt.wrapping_add(hidden as u32);
                sent_data = hidden > 0;
            }
            Step::Accepted => {
                let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with(&accept_prefix), READY);
                check("accept()", f.accept, &line[accept_prefix.len()..], client, f);
                accepted = Some(line);
            }
        }
    }
    if !sent_data {
        peer.send(&mut conn, PSH | ACK, &[], b"x");
    }
    if accepted.is_none() {
        let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with(&accept_prefix), READY);
        check("accept()", f.accept, &line[accept_prefix.len()..], client, f);
    }
    let report = server.wait_for_line(Stream::Stdout, |l| l.starts_with(&report_prefix), READY);
    check("getpeername()", f.peer, field(&report, "peer"), client, f);
    check("getsockopt(IPPROTO_IP, 1348)", f.vtoa, field(&report, "vtoa"), client, f);
    check("getsockopt(IPPROTO_IP, 4096)", f.nat64, field(&report, "nat64"), client, f);
    assert_ne!(field(&report, "data"), "-1", "{}: the server's read failed", f.name);

    let after = agent.stats();
    for (name, want) in f.counters {
        let grew = counter(&after, name) - counter(&before, name);
        assert_eq!(grew, *want, "{} ({}): counter {name}\n  mirrors: {}", f.name, f.description, f.mirrors);
    }
    let established = ["syn_recv_sock_toa", "syn_recv_sock_no_toa"]
        .iter()
        .map(|n| counter(&after, n) - counter(&before, n))
        .sum::<u64>();
    assert_eq!(established, 1, "{}: exactly one connection established", f.name);
    peer.reset(&mut conn);
}

fn run_group(group: &Group) {
    require_root();
    let lab = Lab::new();
    if group.syncookies {
        lab.pair.srv.write_sysctl("net/ipv4/tcp_syncookies", "2");
    }
    let agent = AgentProc::start(lab.srv_cg.path(), group.agent);
    // After the agent: SYN capture applies to listeners created later.
    let mut server = start_server(&lab);
    let mut peer = TunPeer::new(&lab.pair.srv.path(), SERVER_V4, SERVER_V6);
    for f in group.fixtures {
        eprintln!("fixture: {}/{}: {} ({})", group.name, f.name, f.description, f.mirrors);
        run_fixture(&mut peer, &mut server, &agent, f);
    }
    eventually("every stored address to be released", Duration::from_secs(30), || {
        let s = agent.stats();
        s["toa_entry_free"] == s["toa_entry_alloc"] && s["ip6_address_free"] == s["ip6_address_alloc"]
    });
    let s = agent.stats();
    assert_eq!(counter(&s, "toa_store_failed"), 0);
    drop(server);
    agent.stop();
}

/// Every fixture of the suite by group: a fixture lost from the table fails here.
const SUITE: [(&str, &[&str]); 4] = [
    (
        "default_agent",
        &[
            "ack_254_8",
            "ack_200_8",
            "ack_254_8_after_timestamps",
            "ack_253_20_ipv6_only",
            "ack_254_20_ipv6",
            "ack_254_8_dual_stack",
            "ack_254_8_over_ipv6",
            "ack_253_20_over_ipv4_nat64",
            "ack_254_20_over_ipv4_dual_stack",
            "first_data_only",
            "ack_and_first_data_same",
            "data_differs_from_ack",
            "retransmitted_ack_only",
            "fin_with_data",
            "second_data_only",
            "two_options_first_wins",
            "len_9_skipped_then_254_8",
            "after_eol",
            "len_0",
            "len_1",
            "len_7",
            "len_9",
            "len_21",
            "past_the_header",
            "ack_253_8_not_default",
            "tfo_magic_outside_syn",
            "no_option",
            "syn_only_capture_off",
        ],
    ),
    (
        "syn_capture",
        &[
            "syn_254_8",
            "syn_and_ack_same",
            "syn_and_ack_differ",
            "syn_tfo_magic",
            "syn_tfo_then_254_8",
            "syn_254_20_fills_option_space",
            "syn_len_0_then_ack",
            "syn_200_8_dual_stack",
        ],
    ),
    (
        "extra_formats",
        &[
            "ack_253_8",
            "syn_28_7",
            "syn_and_ack_28_7",
            "ack_28_19_ipv6",
            "user_timeout_28_4",
            "ack_254_20_not_configured",
        ],
    ),
    ("syncookies", &["cookies_ack", "cookies_syn_only_lost", "cookies_first_data", "cookies_ipv6_dual_stack_253_20"]),
];

#[test]
fn the_suite_holds_exactly_the_46_listed_fixtures_each_naming_a_peer() {
    let table: Vec<(&str, Vec<&str>)> =
        GROUPS.iter().map(|g| (g.name, g.fixtures.iter().map(|f| f.name).collect())).collect();
    let listed: Vec<(&str, Vec<&str>)> = SUITE.iter().map(|(g, names)| (*g, names.to_vec())).collect();
    assert_eq!(table, listed, "the fixture table and the list above differ");
    assert_eq!(listed.iter().map(|(_, names)| names.len()).sum::<usize>(), 46);
    let mut names = std::collections::HashSet::new();
    let mut descriptions = std::collections::HashSet::new();
    for f in GROUPS.iter().flat_map(|g| g.fixtures) {
        assert!(!f.mirrors.is_empty(), "{} names no peer behaviour", f.name);
        assert!(names.insert(f.name), "duplicate fixture name {}", f.name);
        assert!(descriptions.insert(f.description), "duplicate description {}", f.description);
    }
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn default_agent() {
    run_group(&fixtures::DEFAULT);
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn syn_capture() {
    run_group(&fixtures::CAPTURE_SYN);
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn extra_formats() {
    run_group(&fixtures::EXTRA_FORMATS);
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn syncookies() {
    run_group(&fixtures::SYNCOOKIES);
}
