//! Conformance suite: table-driven fixtures (`conformance/fixtures.rs`) run
//! against the real kernel with `toa agent` attached. A TUN peer writes every
//! segment byte by byte (SYN, final ACK, data, FIN), a Python server in the
//! namespace reports what `accept()`, `getpeername()` and the vendor
//! `getsockopt()` calls (1348, 4096) return, and the agent's counters are
//! compared before and after each fixture.

mod common;

#[path = "conformance/fixtures.rs"]
mod fixtures;

use std::{net::SocketAddr, time::Duration};

use common::{AgentProc, Lab, READY, eventually, require_root};
use fixtures::{Fixture, Group, Listener, Opts, Step, Via};
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

/// The transport client as a listener of this kind prints it.
fn transport(listener: Listener, client: SocketAddr) -> String {
    match (listener, client) {
        (Listener::V4, c) => c.to_string(),
        (_, SocketAddr::V4(c)) => format!("[::ffff:{}]:{}", c.ip(), c.port()),
        (_, c) => c.to_string(),
    }
}

/// An expected value with `transport` and `{port}` resolved.
fn resolve(want: &str, listener: Listener, client: SocketAddr) -> String {
    if want == "transport" { transport(listener, client) } else { want.replace("{port}", &client.port().to_string()) }
}

fn check(what: &str, want: &str, got: &str, listener: Listener, client: SocketAddr, f: &Fixture) {
    if want == "*" {
        return;
    }
    let want = resolve(want, listener, client);
    assert_eq!(got, want, "{}: {what}\n  mirrors: {}", f.description, f.mirrors);
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
                check("accept()", f.accept, &line[accept_prefix.len()..], f.listener, client, f);
                accepted = Some(line);
            }
        }
    }
    if !sent_data {
        peer.send(&mut conn, PSH | ACK, &[], b"x");
    }
    if accepted.is_none() {
        let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with(&accept_prefix), READY);
        check("accept()", f.accept, &line[accept_prefix.len()..], f.listener, client, f);
    }
    let report = server.wait_for_line(Stream::Stdout, |l| l.starts_with(&report_prefix), READY);
    check("getpeername()", f.peer, field(&report, "peer"), f.listener, client, f);
    check("getsockopt(IPPROTO_IP, 1348)", f.vtoa, field(&report, "vtoa"), f.listener, client, f);
    check("getsockopt(IPPROTO_IP, 4096)", f.nat64, field(&report, "nat64"), f.listener, client, f);
    assert_ne!(field(&report, "data"), "-1", "{}: the server's read failed", f.description);

    let after = agent.stats();
    for (name, want) in f.counters {
        let grew = counter(&after, name) - counter(&before, name);
        assert_eq!(grew, *want, "{}: counter {name}\n  mirrors: {}", f.description, f.mirrors);
    }
    let established = ["syn_recv_sock_toa", "syn_recv_sock_no_toa"]
        .iter()
        .map(|n| counter(&after, n) - counter(&before, n))
        .sum::<u64>();
    assert_eq!(established, 1, "{}: exactly one connection established", f.description);
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
        eprintln!("fixture: {}/{} ({})", group.name, f.description, f.mirrors);
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

#[test]
fn the_suite_has_at_least_30_fixtures_each_naming_a_peer() {
    let all = [&fixtures::DEFAULT, &fixtures::CAPTURE_SYN, &fixtures::EXTRA_FORMATS, &fixtures::SYNCOOKIES];
    let n: usize = all.iter().map(|g| g.fixtures.len()).sum();
    assert!(n >= 30, "{n} fixtures");
    let mut seen = std::collections::HashSet::new();
    for g in all {
        for f in g.fixtures {
            assert!(!f.mirrors.is_empty(), "{} names no peer behaviour", f.description);
            assert!(seen.insert(f.description), "duplicate fixture {}", f.description);
        }
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
