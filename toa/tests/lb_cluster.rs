//! `toa lb` in production: two nodes behind ECMP that agree on every flow's
//! backend (Maglev), health checks, backends added, restarts that keep the
//! flows (pinned state), the `[lb]` configuration and its reload.
//!
//! Root only (BPF, namespaces): run with
//! `sudo cargo test --release -p toa --test lb_cluster -- --include-ignored`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{LbProc, PinGuard, READY, TOA, eventually, ingress_programs, require_root, stderr_lines};
use integration_test::{
    ecmp::{self, Ecmp},
    line::{CLI4, LB_CLI_IF, LB_SRV_IF, Line, Offloads, SNAT4, SRV_IF, VIP4},
    netns::{Netns, unique_name},
    process::{Spawned, Stream, command_in, run_in, spawn, spawn_with_stdin},
};
use toa_common::lb::{
    flow::{FlowKey, family, flow_hash},
    maglev::{self, BackendId, Member, Turn},
};

/// The backend: listens on every address given, on PORT; per connection,
/// answers each line with `<own address> <peer address>` until `bye` or
/// EOF, then closes. argv: PORT ADDR...
const ECHO_SERVER: &str = r#"
import socket, sys, threading
port, addrs = int(sys.argv[1]), sys.argv[2:]
def handle(c, me):
    peer = c.getpeername()[0]
    f = c.makefile("rb", buffering=0)
    try:
        for line in f:
            if line.strip() == b"bye":
                break
            c.sendall(f"{me} {peer}\n".encode())
    except Exception:
        pass
    c.close()
socks = []
for a in addrs:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a, port))
    s.listen(1024)
    socks.append((s, a))
def serve(s, a):
    while True:
        c, _ = s.accept()
        threading.Thread(target=handle, args=(c, a), daemon=True).start()
for s, a in socks:
    threading.Thread(target=serve, args=(s, a), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"#;

/// Short connections: N of them, PAR at a time, round robin over the
/// source addresses; each sends a line, reads `<backend> <node>`, says bye.
/// Ports are the kernel's, or BASE+i with BASE > 0. Prints
/// `ok SRC SPORT BACKEND NODE` or `fail SRC SPORT ERROR` per connection.
/// argv: VIP PORT N PAR BASE SRC...
const SHORT_CLIENT: &str = r#"
import socket, sys, threading
from concurrent.futures import ThreadPoolExecutor
vip, port, n, par, base, srcs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
lock = threading.Lock()
def one(i):
    src = srcs[i % len(srcs)]
    sport = base + i if base else 0
    try:
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.settimeout(10)
        c.bind((src, sport))
        sport = c.getsockname()[1]
        c.connect((vip, port))
        c.sendall(b"hi\n")
        got = b""
        while not got.endswith(b"\n"):
            k = c.recv(100)
            if not k: raise EOFError("closed")
            got += k
        c.sendall(b"bye\n")
        c.recv(10)
        c.close()
        backend, node = got.decode().split()
        line = f"ok {src} {sport} {backend} {node}"
    except Exception as e:
        line = f"fail {src} {sport} {e!r}"
    with lock:
        print(line, flush=True)
with ThreadPoolExecutor(par) as ex:
    list(ex.map(one, range(n)))
print("done", flush=True)
"#;

/// Long connections: opens N (round robin over the sources), prints
/// `open I SRC SPORT BACKEND NODE` each, then `opened`; on each `ping` line
/// on stdin, sends a line on every connection (timeout T s) and prints
/// `pong I ok BACKEND NODE` or `pong I fail ERROR`, then `pinged`.
/// argv: VIP PORT N T SRC...
const LONG_CLIENT: &str = r#"
import socket, sys
vip, port, n, t, srcs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]
conns = []
def ask(c):
    c.sendall(b"hi\n")
    got = b""
    while not got.endswith(b"\n"):
        k = c.recv(100)
        if not k: raise EOFError("closed")
        got += k
    return got.decode().split()
for i in range(n):
    c = socket.socket()
    c.settimeout(t)
    c.bind((srcs[i % len(srcs)], 0))
    c.connect((vip, port))
    b, node = ask(c)
    print("open", i, srcs[i % len(srcs)], c.getsockname()[1], b, node, flush=True)
    conns.append(c)
print("opened", flush=True)
for cmd in sys.stdin:
    if cmd.strip() != "ping":
        break
    for i, c in enumerate(conns):
        try:
            b, node = ask(c)
            print("pong", i, "ok", b, node, flush=True)
        except Exception as e:
            print("pong", i, "fail", repr(e).replace(" ", "_"), flush=True)
    print("pinged", flush=True)
"#;

/// One connection's result from [`SHORT_CLIENT`] or [`LONG_CLIENT`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Conn {
    src: String,
    sport: u16,
    backend: Option<String>,
    node: Option<String>,
}

fn parse_short(out: &str) -> Vec<Conn> {
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["ok", src, sport, b, node] => Some(Conn {
                    src: src.to_string(),
                    sport: sport.parse().ok()?,
                    backend: Some(b.to_string()),
                    node: Some(node.to_string()),
                }),
                ["fail", src, sport, ..] => {
                    Some(Conn { src: src.to_string(), sport: sport.parse().ok()?, backend: None, node: None })
                }
                _ => None,
            }
        })
        .collect()
}

fn v4_bytes(s: &str) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&s.parse::<Ipv4Addr>().expect("IPv4").octets());
    a
}

/// The Maglev table of a service with `backends` (address, port, weight),
/// with the default table size, built by the data path's own functions
/// (toa-common): entry -> index into `backends`.
fn maglev_table(backends: &[(&str, u16, u32)]) -> Vec<u32> {
    let size = maglev::DEFAULT_TABLE_SIZE;
    let mut members: Vec<Member> = backends
        .iter()
        .enumerate()
        .map(|(i, (addr, port, w))| {
            Member::new(
                BackendId { addr: v4_bytes(addr), port: port.to_be_bytes(), family: family::V4 },
                *w,
                i as u32,
                size,
            )
        })
        .collect();
    let mut work = vec![Turn::default(); members.len()];
    let mut table = vec![0u32; size as usize];
    maglev::populate(&mut members, &mut work, &mut table).expect("a table");
    table
}

/// The backend Maglev picks for a flow from `client:cport` to `vip:vport`
/// among `backends`.
fn maglev_choice(backends: &[(&str, u16, u32)], client: &str, cport: u16, vip: &str, vport: u16) -> String {
    let table = maglev_table(backends);
    let key = FlowKey {
        src: v4_bytes(client),
        dst: v4_bytes(vip),
        sport: cport.to_be_bytes(),
        dport: vport.to_be_bytes(),
        family: family::V4,
        _pad: [0; 3],
    };
    let i = table[maglev::slot(flow_hash(&key, 0), maglev::DEFAULT_TABLE_SIZE) as usize];
    backends[i as usize].0.to_string()
}

/// A configuration file in the temporary directory, removed on drop.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let p = std::env::temp_dir().join(format!("{}.toml", unique_name("toa-lb-conf", 40)));
        std::fs::write(&p, text).expect("write config");
        ConfigFile(p)
    }

    fn rewrite(&self, text: &str) {
        std::fs::write(&self.0, text).expect("rewrite config");
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn start_server(ns: &Netns, port: u16, addrs: &[&str]) -> Spawned {
    let mut cmd = command_in(Some(&ns.path()), None, "python3");
    cmd.args(["-u", "-c", ECHO_SERVER, &port.to_string()]).args(addrs);
    let mut p = spawn(cmd);
    p.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
    p
}

fn short_clients(ns: &Netns, vip: &str, n: usize, par: usize, base: u16, srcs: &[String]) -> Vec<Conn> {
    let args: Vec<String> = [vip.to_string(), "80".into(), n.to_string(), par.to_string(), base.to_string()]
        .into_iter()
        .chain(srcs.iter().cloned())
        .collect();
    let mut all: Vec<&str> = vec!["python3", "-c", SHORT_CLIENT];
    all.extend(args.iter().map(String::as_str));
    let out = run_in(Some(&ns.path()), None, &all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains("done"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let conns = parse_short(&text);
    assert_eq!(conns.len(), n, "{text}");
    conns
}

/// The long-connection client, running.
struct LongClient {
    proc: Spawned,
    conns: Vec<Conn>,
}

impl LongClient {
    fn start(ns: &Netns, vip: &str, n: usize, timeout_s: u32, srcs: &[String]) -> LongClient {
        let mut cmd = command_in(Some(&ns.path()), None, "python3");
        cmd.args(["-u", "-c", LONG_CLIENT, vip, "80", &n.to_string(), &timeout_s.to_string()]).args(srcs);
        let mut proc = spawn_with_stdin(cmd);
        proc.wait_for_line(Stream::Stdout, |l| l == "opened", READY);
        let conns = proc
            .lines_so_far(Stream::Stdout)
            .iter()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.as_slice() {
                    ["open", _, src, sport, b, node] => Some(Conn {
                        src: src.to_string(),
                        sport: sport.parse().ok()?,
                        backend: Some(b.to_string()),
                        node: Some(node.to_string()),
                    }),
                    _ => None,
                }
            })
            .collect();
        LongClient { proc, conns }
    }

    /// Pings every connection; per connection, the answering (backend, node) or `None`.
    fn ping(&mut self) -> Vec<Option<(String, String)>> {
        let before = self.proc.lines_so_far(Stream::Stdout).len();
        writeln!(self.proc.stdin(), "ping").expect("write");
        self.proc.wait_for_line(Stream::Stdout, |l| l == "pinged", Duration::from_secs(180));
        let lines = self.proc.lines_so_far(Stream::Stdout);
        let mut out = vec![None; self.conns.len()];
        for l in &lines[before..] {
            let w: Vec<&str> = l.split_whitespace().collect();
            if let ["pong", i, "ok", b, node] = w.as_slice()
                && let Ok(i) = i.parse::<usize>()
                && i < out.len()
            {
                out[i] = Some((b.to_string(), node.to_string()));
            }
        }
        out
    }
}

fn ecmp_config(backends: &[(&str, u16, u32)]) -> String {
    let list: Vec<String> = backends.iter().map(|(a, p, w)| format!("\"{a}:{p},weight={w}\"")).collect();
    format!(
        "[lb]\n[[lb.service]]\nlisten = \"{}:80\"\nbackends = [{}]\nlocal = [\"{}\", \"{}\"]\nhealth = {{ interval = \"0s\" }}\n",
        ecmp::VIP,
        list.join(", "),
        ecmp::LB_LOCAL[0],
        ecmp::LB_LOCAL[1]
    )
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn two_nodes_behind_ecmp_agree_on_every_backend_and_a_removed_node_moves_only_its_own_flows() {
    require_root();
    let e = Ecmp::new();
    let backends: Vec<(&str, u16, u32)> = ecmp::BACKENDS.iter().map(|b| (*b, 8080, 1)).collect();
    let _server = start_server(&e.srv, 8080, &ecmp::BACKENDS);
    // One file for both nodes: each takes the local address it has.
    let config = ConfigFile::new(&ecmp_config(&backends));
    let lbs: Vec<LbProc> =
        e.lb.iter().map(|ns| LbProc::start_in(ns, &["--config", config.path()], PinGuard::new())).collect();
    let clients = ecmp::client_addrs();

    // 500 connections from eight client addresses, 25 at a time.
    let conns = short_clients(&e.cli, ecmp::VIP, 500, 25, 0, &clients);
    let failed: Vec<&Conn> = conns.iter().filter(|c| c.backend.is_none()).collect();
    assert!(failed.is_empty(), "{} of 500 failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    let mut wrong = Vec::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for c in &conns {
        let want = maglev_choice(&backends, &c.src, c.sport, ecmp::VIP, 80);
        if c.backend.as_deref() != Some(want.as_str()) {
            wrong.push((c.clone(), want));
        }
        *per_node.entry(c.node.clone().unwrap_or_default()).or_default() += 1;
    }
    assert!(
        wrong.is_empty(),
        "{} connections not on Maglev's backend: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    for (i, local) in ecmp::LB_LOCAL.iter().enumerate() {
        let n = per_node.get(*local).copied().unwrap_or(0);
        assert!(n >= 100, "node {i} ({local}) carried {n} of 500: {per_node:?}");
        // At least one flow per connection it carried (a SYN repeated
        // under load may count another).
        let created = lbs[i].counter("flows_created");
        assert!(created >= n as u64, "node {i} created {created} flows for {n} connections");
    }

    // Long connections on both nodes; then the router drops node 1.
    let mut long = LongClient::start(&e.cli, ecmp::VIP, 40, 3, &clients);
    let on: Vec<String> = long.conns.iter().map(|c| c.node.clone().unwrap_or_default()).collect();
    assert!(on.iter().any(|n| n == ecmp::LB_LOCAL[0]) && on.iter().any(|n| n == ecmp::LB_LOCAL[1]), "{on:?}");
    let before = long.ping();
    assert!(before.iter().all(Option::is_some), "all answer while both nodes run: {before:?}");
    e.use_only(1);
    let after = long.ping();
    for (i, c) in long.conns.iter().enumerate() {
        if c.node.as_deref() == Some(ecmp::LB_LOCAL[1]) {
            assert_eq!(after[i], before[i], "connection {i} stayed on node 2 and on its backend");
        } else {
            // Rehashed to node 2, which never saw its handshake: dropped there.
            assert_eq!(after[i], None, "connection {i} was on the removed node: {:?}", after[i]);
        }
    }
    assert!(lbs[1].counter("drop_no_flow") >= 1, "node 2 saw the moved flows' packets");
    // New flows all succeed, all through node 2, each on Maglev's backend.
    let created = lbs[1].counter("flows_created");
    let fresh = short_clients(&e.cli, ecmp::VIP, 100, 20, 0, &clients);
    for c in &fresh {
        assert_eq!(c.node.as_deref(), Some(ecmp::LB_LOCAL[1]), "{c:?}");
        assert_eq!(c.backend, Some(maglev_choice(&backends, &c.src, c.sport, ecmp::VIP, 80)), "{c:?}");
    }
    assert!(lbs[1].counter("flows_created") >= created + 100, "node 2 created the new flows");
    writeln!(long.proc.stdin(), "quit").expect("quit");
}

fn line_config(backends: &[(&str, u16, u32)], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|(a, p, w)| format!("\"{a}:{p},weight={w}\"")).collect();
    format!(
        "[lb]\ninterfaces = [\"{LB_CLI_IF}\", \"{LB_SRV_IF}\"]\n{extra}\n[[lb.service]]\nlisten = \"{VIP4}:80\"\nbackends = [{}]\nlocal = [\"{SNAT4}\"]\nhealth = {{ interval = \"200ms\", timeout = \"100ms\", rise = 1, fall = 2 }}\n",
        list.join(", ")
    )
}

/// Extra backend addresses on the backend's interface of a line.
fn add_backend_addrs(line: &Line, addrs: &[&str]) {
    for a in addrs {
        line.srv.run(&["ip", "addr", "add", &format!("{a}/24"), "dev", SRV_IF]);
    }
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn a_backend_down_gets_no_new_flows_established_ones_go_on_and_an_added_backend_takes_about_a_quarter() {
    require_root();
    let line = Line::new(Offloads::Default);
    let addrs = ["10.72.2.2", "10.72.2.3", "10.72.2.4", "10.72.2.5"];
    add_backend_addrs(&line, &addrs[1..]);
    let mut servers: Vec<Spawned> = addrs.iter().map(|a| start_server(&line.srv, 8080, &[a])).collect();
    let three: Vec<(&str, u16, u32)> = addrs[..3].iter().map(|a| (*a, 8080, 1)).collect();
    let config = ConfigFile::new(&line_config(&three, ""));
    let lb = LbProc::start_in(&line.lb, &["--config", config.path()], PinGuard::new());
    let clients = vec![CLI4.to_string()];

    // Long connections to all three; backend 10.72.2.3 goes away.
    let mut long = LongClient::start(&line.cli, VIP4, 24, 3, &clients);
    let victim = "10.72.2.3";
    assert!(long.conns.iter().any(|c| c.backend.as_deref() == Some(victim)), "{:?}", long.conns);
    servers[1].terminate();
    eventually("the health checks to take 10.72.2.3 out", Duration::from_secs(10), || {
        lb.stats()["backends"]
            .as_array()
            .is_some_and(|b| b.iter().any(|x| x["addr"] == format!("{victim}:8080") && x["up"] == false))
    });
    let pongs = long.ping();
    for (c, p) in long.conns.iter().zip(&pongs) {
        if c.backend.as_deref() == Some(victim) {
            assert_eq!(*p, None, "its backend is gone: {c:?}");
        } else {
            assert_eq!(
                p.as_ref().map(|p| p.0.as_str()),
                c.backend.as_deref(),
                "established flow to a live backend: {c:?}"
            );
        }
    }
    let live: Vec<(&str, u16, u32)> = three.iter().copied().filter(|b| b.0 != victim).collect();
    let fresh = short_clients(&line.cli, VIP4, 150, 15, 0, &clients);
    for c in &fresh {
        assert_eq!(c.backend, Some(maglev_choice(&live, &c.src, c.sport, VIP4, 80)), "{c:?}");
    }
    writeln!(long.proc.stdin(), "quit").expect("quit");

    // The victim is back; then a fourth backend is added by a reload. The
    // same 400 client ports connect before and after.
    servers[1] = start_server(&line.srv, 8080, &[victim]);
    eventually("10.72.2.3 back in rotation", Duration::from_secs(10), || {
        lb.stats()["backends"].as_array().is_some_and(|b| b.iter().all(|x| x["up"] == true))
    });
    let before = short_clients(&line.cli, VIP4, 400, 20, 30000, &clients);
    let four: Vec<(&str, u16, u32)> = addrs.iter().map(|a| (*a, 8080, 1)).collect();
    config.rewrite(&line_config(&four, ""));
    let mut lb = lb;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(lb.proc.pid(), libc::SIGHUP) };
    lb.proc.wait_for_line(Stream::Stderr, |l| l.contains("reloaded"), READY);
    let after = short_clients(&line.cli, VIP4, 400, 20, 30000, &clients);
    // The client prints in completion order: pair them by client port.
    let by_port = |conns: Vec<Conn>| conns.into_iter().map(|c| (c.sport, c)).collect::<BTreeMap<u16, Conn>>();
    let (before, after) = (by_port(before), by_port(after));
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "the same 400 client ports");
    let (mut moved, mut to_new) = (0, 0);
    for (b, a) in before.values().zip(after.values()) {
        assert_eq!(b.backend, Some(maglev_choice(&three, &b.src, b.sport, VIP4, 80)), "{b:?}");
        assert_eq!(a.backend, Some(maglev_choice(&four, &a.src, a.sport, VIP4, 80)), "{a:?}");
        if a.backend != b.backend {
            moved += 1;
            to_new += usize::from(a.backend.as_deref() == Some("10.72.2.5"));
        }
    }
    // Maglev's bound: the entries of the table that change when the fourth
    // backend joins are about 1/4 (the paper's minimal disruption: the new
    // backend's share, plus a few entries shuffled among the others).
    let (t3, t4) = (maglev_table(&three), maglev_table(&four));
    let changed = t3.iter().zip(&t4).filter(|(x, y)| x != y).count() as f64 / t3.len() as f64;
    let shuffled = t3.iter().zip(&t4).filter(|(x, y)| x != y && **y != 3).count() as f64 / t3.len() as f64;
    assert!(
        (0.24..=0.30).contains(&changed) && shuffled <= 0.05,
        "table: {changed:.3} changed, {shuffled:.3} among the old"
    );
    // The flows measured move as the table says, within the sample's spread
    // (400 flows: +-0.07 at 3 sigma), almost all to the new backend.
    let frac = moved as f64 / 400.0;
    eprintln!(
        "added backend: {moved} of 400 flows moved ({frac:.3}; table {changed:.3}; ideal 0.25), {to_new} to the new one"
    );
    assert!(
        (changed - 0.07..=changed + 0.07).contains(&frac),
        "{moved} of 400 flows moved; the table changed {changed:.3}"
    );
    assert!(to_new as f64 >= moved as f64 * 0.8, "{to_new} of the {moved} moved flows went to the new backend");
    drop(servers);
}

/// The slow-transfer client: N connections, each 4 MiB up in 64 KiB
/// chunks with short pauses, then the SHA-256 of what the server got and
/// 4 MiB down; prints `started` once all are connected and `done N bad=K`.
/// argv: HOST PORT N.
const SLOW_CLIENT: &str = r#"
import hashlib, socket, sys, threading, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bad, up = [], threading.Barrier(n + 1)
def one(i):
    try:
        c = socket.create_connection((host, port), timeout=60)
        up.wait()
        h = hashlib.sha256()
        for k in range(64):
            b = bytes([(i + k) % 256]) * 65536
            h.update(b)
            c.sendall(b)
            time.sleep(0.02)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            k = c.recv(1 << 20)
            if not k: break
            got += k
        if got[:32] != h.digest() or got[32:] != bytes([i % 256]) * (4 << 20):
            bad.append(f"{i}: {len(got)} bytes back")
    except Exception as e:
        bad.append(f"{i}: {e!r}")
ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in ts: t.start()
up.wait()
print("started", flush=True)
for t in ts: t.join()
print(f"done {n} bad={len(bad)} {bad[:3]}", flush=True)
"#;

/// Its server: reads until EOF, answers the SHA-256 and 4 MiB of the
/// connection's byte (the first byte it got), slowly. argv: PORT.
const SLOW_SERVER: &str = r#"
import hashlib, socket, sys, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(256)
print("listening", flush=True)
def handle(c):
    h, first = hashlib.sha256(), None
    while True:
        k = c.recv(1 << 20)
        if not k: break
        if first is None: first = k[0]
        h.update(k)
    c.sendall(h.digest())
    for _ in range(64):
        c.sendall(bytes([first or 0]) * 65536)
        time.sleep(0.01)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

fn pinned_map_id(pins: &Path, name: &str) -> u32 {
    aya::maps::MapInfo::from_pin(pins.join("maps").join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).id()
}

fn lb_args() -> Vec<String> {
    [
        "--listen",
        &format!("{VIP4}:80"),
        "--backend",
        "10.72.2.2:9400",
        "--snat",
        SNAT4,
        "--iface",
        LB_CLI_IF,
        "--iface",
        LB_SRV_IF,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn sigkill_mid_transfer_then_a_restart_keeps_every_flow_and_adopts_the_pins() {
    require_root();
    let line = Line::new(Offloads::Default);
    let _server = {
        let mut cmd = command_in(Some(&line.srv.path()), None, "python3");
        cmd.args(["-u", "-c", SLOW_SERVER, "9400"]);
        let mut p = spawn(cmd);
        p.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        p
    };
    let args = lb_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pins = PinGuard::new();
    let pin_dir = pins.0.clone();
    let socket = std::env::temp_dir().join(format!("{}.sock", unique_name("toa-lb", 40)));
    let mut first = LbProc::start_with_socket(&line.lb, &args, pins, socket.clone());
    let ids: Vec<u32> =
        ["LB_FLOWS", "LB_REVERSE", "LB_COUNTERS", "LB_JUMP"].iter().map(|m| pinned_map_id(&pin_dir, m)).collect();
    let mut cmd = command_in(Some(&line.cli.path()), None, "python3");
    cmd.args(["-u", "-c", SLOW_CLIENT, VIP4, "80", "20"]);
    let mut client = spawn(cmd);
    client.wait_for_line(Stream::Stdout, |l| l == "started", READY);
    // SIGKILL: no cleanup of any kind.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(first.proc.pid(), libc::SIGKILL) };
    let status = first.proc.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "{status}");
    // The data path goes on without the process: still attached, once each.
    for ifname in [LB_CLI_IF, LB_SRV_IF] {
        assert_eq!(ingress_programs(&line.lb, ifname), ["toa_lb_ingress"], "{ifname} after SIGKILL");
    }
    // The same forwarder again, on the same pins.
    let pins = std::mem::replace(&mut first.pins, PinGuard(PathBuf::new()));
    drop(first);
    let second = LbProc::start_with_socket(&line.lb, &args, pins, socket);
    assert!(
        second
            .proc
            .lines_so_far(Stream::Stderr)
            .iter()
            .any(|l| l.contains("took over an earlier forwarder's data path")),
        "{:?}",
        second.proc.lines_so_far(Stream::Stderr)
    );
    let done = client.wait_for_line(Stream::Stdout, |l| l.starts_with("done "), Duration::from_secs(120));
    assert_eq!(done.split_whitespace().nth(2), Some("bad=0"), "{done}");
    let now: Vec<u32> =
        ["LB_FLOWS", "LB_REVERSE", "LB_COUNTERS", "LB_JUMP"].iter().map(|m| pinned_map_id(&pin_dir, m)).collect();
    assert_eq!(now, ids, "the restarted forwarder uses the same maps");
    for ifname in [LB_CLI_IF, LB_SRV_IF] {
        assert_eq!(ingress_programs(&line.lb, ifname), ["toa_lb_ingress"], "{ifname}: one program, the new one");
    }
    assert_eq!(second.counter("flows_created"), 20, "the counters went on");
    assert_eq!(second.counter("drop_no_flow"), 0, "no flow was lost");
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn with_persist_a_clean_stop_leaves_the_data_path_and_the_next_start_takes_it_over() {
    require_root();
    let line = Line::new(Offloads::Default);
    let _server = start_server(&line.srv, 8080, &["10.72.2.2"]);
    let config = ConfigFile::new(&line_config(&[("10.72.2.2", 8080, 1)], "persist = true"));
    let mut lb = LbProc::start_in(&line.lb, &["--config", config.path()], PinGuard::new());
    let pin_dir = lb.pins.0.clone();
    let clients = vec![CLI4.to_string()];
    assert!(short_clients(&line.cli, VIP4, 5, 5, 0, &clients).iter().all(|c| c.backend.is_some()));
    assert!(lb.proc.terminate().success());
    // Still forwarding with no process at all.
    for ifname in [LB_CLI_IF, LB_SRV_IF] {
        assert_eq!(ingress_programs(&line.lb, ifname), ["toa_lb_ingress"], "{ifname}");
    }
    assert!(pin_dir.join("maps/LB_FLOWS").exists());
    assert!(line.lb.output(&["ip", "-o", "link"]).contains("tlb"), "the segmenter stays");
    assert!(short_clients(&line.cli, VIP4, 5, 5, 0, &clients).iter().all(|c| c.backend.is_some()), "forwarded");
    // The next one takes over; without persist its clean stop removes everything.
    config.rewrite(&line_config(&[("10.72.2.2", 8080, 1)], ""));
    let pins = std::mem::replace(&mut lb.pins, PinGuard(PathBuf::new()));
    drop(lb);
    let mut next = LbProc::start_in(&line.lb, &["--config", config.path()], pins);
    assert_eq!(next.counter("flows_created"), 10, "the counters of both runs");
    assert!(next.proc.terminate().success());
    for ifname in [LB_CLI_IF, LB_SRV_IF] {
        assert!(ingress_programs(&line.lb, ifname).is_empty(), "{ifname}: still attached");
    }
    assert!(!pin_dir.exists(), "the pins are gone");
    assert!(!line.lb.output(&["ip", "-o", "link"]).contains("tlb"), "the segmenter is gone");
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn bad_config_values_exit_2_naming_the_key_and_line_and_attach_nothing() {
    require_root();
    let line = Line::new(Offloads::Default);
    let svc =
        format!("[[lb.service]]\nlisten = \"{VIP4}:80\"\nbackends = [\"10.72.2.2:8080\"]\nlocal = [\"{SNAT4}\"]\n");
    let cases: Vec<(String, &str, usize)> = vec![
        (format!("[lb]\ntable_size = 65536\n{svc}"), "table_size 65536 is not a prime", 2),
        (format!("[lb]\nlocal_ports = \"9-2\"\n{svc}"), "9-2", 2),
        (format!("[lb]\ntimeouts = {{ time_wait = \"0s\" }}\n{svc}"), "time_wait", 2),
        (format!("[lb]\nsegmenter = \"yes\"\n{svc}"), "segmenter", 2),
        (format!("[lb]\nno_such_key = 1\n{svc}"), "no_such_key", 2),
        (format!("{svc}kind = 7\n"), "kind 7", 5),
        (format!("{svc}toa_packets = \"fin\"\n"), "unknown packet `fin`", 5),
        (format!("{svc}health = {{ fall = 0 }}\n"), "fall", 5),
        (svc.replace("10.72.2.2:8080", "10.72.2.2:8080,weight=99999"), "weight 99999", 3),
        (svc.replace("10.72.2.2:8080\"", "nowhere\""), "`nowhere` is not ADDR:PORT", 3),
        (svc.replace(SNAT4, "x.y"), "`x.y` is not an IP address", 4),
        (svc.replace(SNAT4, "2001:db8::9"), "give an IPv4 local address", 2),
        (format!("{svc}{svc}"), "given twice", 0),
        (format!("[lb]\ninterfaces = [\"nosuch0\"]\n{svc}"), "no interface `nosuch0`", 0),
        ("[lb]\n".to_string(), "no [[lb.service]]", 0),
    ];
    for (text, needle, line_no) in &cases {
        let file = ConfigFile::new(text);
        let pins = PinGuard::new();
        let pin_arg = pins.0.to_str().expect("path").to_string();
        let out = run_in(Some(&line.lb.path()), None, &[TOA, "lb", "--config", file.path(), "--pin-dir", &pin_arg]);
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(2), "{text}: {lines:?}");
        assert_eq!(lines.len(), 1, "{text}: {lines:?}");
        assert!(lines[0].contains(needle), "{text}: {lines:?}");
        if *line_no > 0 {
            assert!(lines[0].contains(&format!("line {line_no}")), "{text}: {lines:?}");
        }
        assert!(!pins.0.exists(), "{text}: pins were created");
        for ifname in [LB_CLI_IF, LB_SRV_IF] {
            assert!(ingress_programs(&line.lb, ifname).is_empty(), "{text}: {ifname} attached");
        }
        assert!(!line.lb.output(&["ip", "-o", "link"]).contains("tlb"), "{text}: a segmenter was created");
    }
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn sighup_applies_a_good_file_whole_and_refuses_a_bad_one_whole() {
    require_root();
    let line = Line::new(Offloads::Default);
    add_backend_addrs(&line, &["10.72.2.3"]);
    let _a = start_server(&line.srv, 8080, &["10.72.2.2"]);
    let _b = start_server(&line.srv, 8080, &["10.72.2.3"]);
    let config = ConfigFile::new(&line_config(&[("10.72.2.2", 8080, 1)], ""));
    let mut lb = LbProc::start_in(&line.lb, &["--config", config.path()], PinGuard::new());
    let clients = vec![CLI4.to_string()];
    let backends =
        |conns: &[Conn]| conns.iter().map(|c| c.backend.clone().unwrap_or_default()).collect::<BTreeSet<_>>();
    let hup = |lb: &mut LbProc, want: &str| {
        let n = lb.proc.lines_so_far(Stream::Stderr).iter().filter(|l| l.contains(want)).count();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(lb.proc.pid(), libc::SIGHUP) };
        eventually(want, Duration::from_secs(30), || {
            lb.proc.lines_so_far(Stream::Stderr).iter().filter(|l| l.contains(want)).count() > n
        });
    };
    assert_eq!(
        backends(&short_clients(&line.cli, VIP4, 20, 10, 0, &clients)),
        BTreeSet::from(["10.72.2.2".to_string()])
    );
    // A file with a good new backend list and a bad value elsewhere: nothing of it applies.
    config.rewrite(&line_config(&[("10.72.2.3", 8080, 1)], "table_size = 4"));
    hup(&mut lb, "reload refused");
    assert_eq!(
        backends(&short_clients(&line.cli, VIP4, 20, 10, 0, &clients)),
        BTreeSet::from(["10.72.2.2".to_string()])
    );
    // A change that cannot be made live is refused whole too.
    config.rewrite(&line_config(&[("10.72.2.3", 8080, 1)], "table_size = 4099"));
    hup(&mut lb, "reload refused");
    assert_eq!(
        backends(&short_clients(&line.cli, VIP4, 20, 10, 0, &clients)),
        BTreeSet::from(["10.72.2.2".to_string()])
    );
    // A good one applies whole: the new backend takes every new flow.
    config.rewrite(&line_config(&[("10.72.2.3", 8080, 1)], ""));
    hup(&mut lb, "reloaded");
    assert_eq!(
        backends(&short_clients(&line.cli, VIP4, 20, 10, 0, &clients)),
        BTreeSet::from(["10.72.2.3".to_string()])
    );
    let s = lb.stats();
    assert_eq!(s["backends"].as_array().map(Vec::len), Some(1), "{s}");
    assert!(lb.proc.terminate().success());
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn toa_stats_status_and_prometheus_show_every_service_and_backend() {
    require_root();
    let line = Line::new(Offloads::Default);
    add_backend_addrs(&line, &["10.72.2.3"]);
    // 10.72.2.3 has no server: the health checks keep it out.
    let _server = start_server(&line.srv, 8080, &["10.72.2.2"]);
    let config = ConfigFile::new(&line_config(
        &[("10.72.2.2", 8080, 1), ("10.72.2.3", 8080, 2)],
        "metrics_listen = \"127.0.0.1:9412\"",
    ));
    // Where `toa stats` and `toa status` look for forwarders.
    std::fs::create_dir_all("/run/toa").expect("/run/toa");
    let socket = PathBuf::from("/run/toa").join(format!("{}.sock", unique_name("lb-test", 40)));
    let lb = LbProc::start_with_socket(&line.lb, &["--config", config.path()], PinGuard::new(), socket.clone());
    let sock = socket.to_str().expect("path");
    let no_agent = format!("/sys/fs/bpf/{}", unique_name("toa-none", 40));
    let (svc, up, down) = (format!("{VIP4}:80"), "10.72.2.2:8080", "10.72.2.3:8080");
    eventually("10.72.2.3 out of rotation", Duration::from_secs(10), || {
        lb.stats()["backends"].as_array().is_some_and(|b| b.iter().any(|x| x["addr"] == down && x["up"] == false))
    });
    let conns = short_clients(&line.cli, VIP4, 10, 5, 0, &[CLI4.to_string()]);
    assert!(conns.iter().all(|c| c.backend.as_deref() == Some("10.72.2.2")), "{conns:?}");

    // toa stats --lb-socket: that one, under "lb".
    let v = json_of(&common::toa(&["stats", "--json", "--lb-socket", sock, "--pin-dir", &no_agent]));
    let l = &v["lb"];
    assert_eq!(l["socket"], sock, "{v}");
    assert_eq!(l["pid"], lb.proc.pid(), "{v}");
    assert_eq!(l["flows_created"], 10, "{v}");
    let s = &l["services"][0];
    assert_eq!(
        (&s["listen"], &s["backends"], &s["backends_up"], &s["flows"]),
        (&svc.clone().into(), &2.into(), &1.into(), &10.into()),
        "{v}"
    );
    let backend =
        |addr: &str| l["backends"].as_array().and_then(|b| b.iter().find(|x| x["addr"] == addr).cloned()).expect(addr);
    assert_eq!((backend(up)["up"].clone(), backend(up)["flows"].clone()), (true.into(), 10.into()), "{v}");
    assert_eq!(
        (backend(down)["up"].clone(), backend(down)["weight"].clone(), backend(down)["flows"].clone()),
        (false.into(), 2.into(), 0.into()),
        "{v}"
    );
    assert!(
        backend(up)["packets_in"].as_u64().is_some_and(|n| n >= 40)
            && backend(up)["options"].as_u64().is_some_and(|n| n >= 10),
        "{v}"
    );
    // Without it: every forwarder of the host, ours among them, under "lbs".
    let v = json_of(&common::toa(&["stats", "--json", "--pin-dir", &no_agent]));
    assert!(
        v["lbs"].as_array().is_some_and(|a| a.iter().any(|x| x["socket"] == sock && x["flows_created"] == 10)),
        "{v}"
    );
    let text = String::from_utf8_lossy(&common::toa(&["stats", "--lb-socket", sock, "--pin-dir", &no_agent]).stdout)
        .into_owned();
    assert!(text.contains(&format!("service {svc}: 1/2 backends up")), "{text}");
    assert!(text.contains(&format!("backend {down} (down, weight 2): 0 flows")), "{text}");
    // toa status: the forwarder, its services and how many backends are up.
    let v = json_of(&common::toa(&["status", "--json", "--pin-dir", &no_agent]));
    let mine = v["lbs"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["socket"] == sock).cloned())
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(mine["pid"], lb.proc.pid(), "{v}");
    assert_eq!(
        (&mine["services"][0]["listen"], &mine["services"][0]["backends_up"]),
        (&svc.clone().into(), &1.into()),
        "{v}"
    );
    let text = String::from_utf8_lossy(&common::toa(&["status", "--pin-dir", &no_agent]).stdout).into_owned();
    assert!(
        text.contains(&format!("lb {sock} (pid {}", lb.proc.pid()))
            && text.contains(&format!("service {svc}: 1/2 backends up")),
        "{text}"
    );
    // Prometheus, per service and backend.
    let out = line.lb.output(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9412/metrics"]);
    for want in [
        format!("toa_lb_service_flows_total{{service=\"{svc}\"}} 10"),
        format!("toa_lb_service_backends_up{{service=\"{svc}\"}} 1"),
        format!("toa_lb_backend_flows_total{{service=\"{svc}\",backend=\"{up}\"}} 10"),
        format!("toa_lb_backend_up{{service=\"{svc}\",backend=\"{up}\"}} 1"),
        format!("toa_lb_backend_up{{service=\"{svc}\",backend=\"{down}\"}} 0"),
        "toa_lb_flows_created_total 10".to_string(),
        "toa_lb_up 1".to_string(),
    ] {
        assert!(out.lines().any(|l| l == want), "{want} missing:\n{out}");
    }
    assert!(!out.contains("toa_lb_pid"), "{out}");
    drop(lb);
    assert!(!socket.exists(), "the socket is removed at stop");
}

/// A backend that closes first: per connection, reads a line, answers the
/// peer's port (the forwarder's local port), closes. argv: PORT.
const CLOSE_FIRST_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    try:
        if c.recv(100):
            c.sendall(f"{peer[1]}\n".encode())
    except OSError:
        pass
    c.close()
"#;

/// One connection from SRC:SPORT to HOST:80: sends a line, prints the
/// backend's answer (the local port), waits for the backend's FIN, closes.
/// argv: SRC SPORT HOST.
const SAME_PORT_CLIENT: &str = r#"
import socket, sys
c = socket.socket()
c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
c.settimeout(10)
c.bind((sys.argv[1], int(sys.argv[2])))
c.connect((sys.argv[3], 80))
c.sendall(b"hi\n")
got = b""
while True:
    k = c.recv(100)
    if not k: break
    got += k
c.close()
print(got.decode().strip(), flush=True)
"#;

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn a_client_reusing_its_port_after_a_backend_first_close_gets_another_local_port_until_time_wait_ends() {
    require_root();
    let line = Line::new(Offloads::Default);
    let _server = {
        let mut cmd = command_in(Some(&line.srv.path()), None, "python3");
        cmd.args(["-u", "-c", CLOSE_FIRST_SERVER, "9500"]);
        let mut p = spawn(cmd);
        p.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        p
    };
    let mut text = line_config(&[("10.72.2.2", 9500, 1)], "timeouts = { time_wait = \"3s\" }");
    text = text.replace("interval = \"200ms\"", "interval = \"0s\"");
    let config = ConfigFile::new(&text);
    let _lb = LbProc::start_in(&line.lb, &["--config", config.path()], PinGuard::new());
    let local_port = || -> u16 {
        let out = run_in(Some(&line.cli.path()), None, &["python3", "-c", SAME_PORT_CLIENT, CLI4, "41001", VIP4]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("{out:?}"))
    };
    // The backend closed first: its TIME_WAIT holds (local address, port).
    let first = local_port();
    let second = local_port();
    assert_ne!(second, first, "the same client tuple at once: another local port");
    // Once time_wait is over (and the reaper ran), the tuple's first
    // choice is free again.
    eventually("the first local port free again", Duration::from_secs(15), || local_port() == first);
}
