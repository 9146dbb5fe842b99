//! `toa lb` end to end: client → packet-level forwarder → backend with
//! `toa agent`, in three namespaces ([`integration_test::line`]), with the
//! client's and the backend's offloads on (veth defaults) and off.
//!
//! Root only (BPF, namespaces, cgroups): run with
//! `sudo cargo test --release -p toa --test lb -- --include-ignored`.

mod common;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Output,
    time::Duration,
};

use common::{
    AgentProc, LbProc, PinGuard, READY, TOA, eventually, ingress_programs, require_root, start_injector, stderr_lines,
    toa,
};
use integration_test::{
    line::{CLI_IF, CLI4, CLI6, LB_CLI_IF, LB_SRV_IF, Line, Offloads, SNAT4, SNAT6, SRV_IF, SRV4, SRV6, VIP4, VIP6},
    netns::unique_name,
    packet,
    process::{Spawned, Stream, command_in, run_in, spawn},
};

/// The usual services: one IPv4 and one IPv6 virtual service on port 80,
/// both to port `port` of the backend.
fn service_args(port: u16) -> Vec<String> {
    vec![
        "--listen".into(),
        format!("{VIP4}:80"),
        "--listen".into(),
        format!("[{VIP6}]:80"),
        "--backend".into(),
        format!("{SRV4}:{port}"),
        "--backend".into(),
        format!("[{SRV6}]:{port}"),
        "--snat".into(),
        SNAT4.into(),
        "--snat".into(),
        SNAT6.into(),
    ]
}

/// Starts `toa lb` with the usual services to port `port` in the line's
/// forwarder namespace.
fn start_lb(line: &Line, port: u16, extra: &[&str]) -> LbProc {
    let args: Vec<String> = service_args(port).into_iter().chain(extra.iter().map(|s| s.to_string())).collect();
    LbProc::start_in(&line.lb, &args.iter().map(String::as_str).collect::<Vec<_>>(), PinGuard::new())
}

/// Starts a program in the backend's namespace and cgroup and waits for `ready` on `stream`.
fn server(line: &Line, args: &[&str], stream: Stream, ready: &str) -> Spawned {
    let mut cmd = command_in(Some(&line.srv.path()), Some(line.srv_cg.path()), args[0]);
    cmd.args(&args[1..]).current_dir(std::env::temp_dir());
    let mut p = spawn(cmd);
    p.wait_for_line(stream, |l| l.contains(ready), READY);
    p
}

fn http_server(line: &Line, port: u16) -> Spawned {
    server(
        line,
        &["python3", "-u", "-m", "http.server", "--bind", "::", &port.to_string()],
        Stream::Stdout,
        "Serving HTTP",
    )
}

/// Runs a command in the client's namespace and cgroup.
fn client(line: &Line, args: &[&str]) -> Output {
    run_in(Some(&line.cli.path()), Some(line.cli_cg.path()), args)
}

fn curl(line: &Line, url: &str, extra: &[&str]) {
    let out = client(line, &[&["curl", "-sS", "--max-time", "10", "-o", "/dev/null"], extra, &[url]].concat());
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The host of the next access-log line http.server writes.
fn logged_host(server: &mut Spawned) -> String {
    let line = server.wait_for_line(Stream::Stderr, |l| l.contains("\"GET /"), READY);
    line.split_whitespace().next().unwrap_or_default().to_string()
}

/// A tcpdump writing a pcap file in a namespace; stopped and read by [`Capture::packets`].
struct Capture {
    proc: Spawned,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &integration_test::netns::Netns, ifname: &str, filter: &str) -> Capture {
        let file = std::env::temp_dir().join(format!("{}.pcap", unique_name("toa-lb", 40)));
        let mut cmd = command_in(Some(&ns.path()), None, "tcpdump");
        cmd.args(["-i", ifname, "-n", "-U", "--immediate-mode", "-s", "65535", "-w"]).arg(&file).arg(filter);
        let mut proc = spawn(cmd);
        proc.wait_for_line(Stream::Stderr, |l| l.contains("listening on"), READY);
        Capture { proc, file }
    }

    /// The TCP segments captured so far (the file as written up to now).
    fn segments_so_far(&self) -> Vec<packet::Segment> {
        let bytes = std::fs::read(&self.file).unwrap_or_default();
        packet::pcap_ip_packets(&bytes).iter().filter_map(|p| packet::parse(p)).collect()
    }

    /// Stops tcpdump once `done` holds for the segments written, and returns them.
    fn finish(mut self, what: &str, done: impl Fn(&[packet::Segment]) -> bool) -> Vec<packet::Segment> {
        eventually(what, Duration::from_secs(20), || done(&self.segments_so_far()));
        self.proc.terminate();
        let segs = self.segments_so_far();
        let _ = std::fs::remove_file(&self.file);
        segs
    }
}

fn v4(s: &str) -> Vec<u8> {
    s.parse::<Ipv4Addr>().expect("ipv4").octets().to_vec()
}

fn v6(s: &str) -> Vec<u8> {
    s.parse::<Ipv6Addr>().expect("ipv6").octets().to_vec()
}

/// The TCP checksum errors the backend's kernel counted.
fn backend_csum_errors(line: &Line) -> u64 {
    Line::snmp(&line.srv, "Tcp", "InCsumErrors")
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn an_unmodified_http_server_logs_the_clients_own_ipv4_and_ipv6_address() {
    require_root();
    let line = Line::new(Offloads::Default);
    let agent = AgentProc::start(line.srv_cg.path(), &[]);
    let mut http = http_server(&line, 8080);
    let lb = start_lb(&line, 8080, &[]);
    curl(&line, &format!("http://{VIP4}/"), &[]);
    assert_eq!(logged_host(&mut http), format!("::ffff:{CLI4}"), "IPv4 client");
    curl(&line, &format!("http://[{VIP6}]/"), &[]);
    assert_eq!(logged_host(&mut http), CLI6, "IPv6 client");
    assert!(agent.counter("syn_recv_sock_toa") >= 2, "{}", agent.stats());
    let s = lb.stats();
    assert_eq!(s["flows_created"], 2, "{s}");
    assert!(s["options_inserted"].as_u64().unwrap_or(0) >= 2, "{s}");
    assert_eq!(s["options_no_room"], 0, "{s}");
    assert_eq!(s["mss_lowered"], 2, "{s}");
    assert_eq!(backend_csum_errors(&line), 0);
    agent.stop();
}

/// Checks the wire of the backend (SYN without the option, handshake ACK and
/// first data with it) and of the client (the SYN-ACK's lowered MSS) for
/// one address family.
fn check_wire(line: &Line, url: &str, port: u16, kind: u8, want_addr: &[u8], mss: (u16, u16)) {
    let srv_cap = Capture::start(&line.srv, SRV_IF, "tcp port 8080");
    let cli_cap = Capture::start(&line.cli, CLI_IF, "tcp port 80");
    curl(line, url, &["--local-port", &port.to_string()]);
    let fin_from_backend =
        |s: &[packet::Segment]| s.iter().filter(|g| g.src.port() == 8080 && g.has(packet::FIN)).count() >= 1;
    let at_srv = srv_cap.finish("the backend's FIN on its wire", fin_from_backend);
    let at_cli = cli_cap.finish("the forwarder's FIN on the client's wire", |s| {
        s.iter().any(|g| g.src.port() == 80 && g.has(packet::FIN))
    });
    let mut want = port.to_be_bytes().to_vec();
    want.extend_from_slice(want_addr);
    let to_backend: Vec<&packet::Segment> = at_srv.iter().filter(|s| s.dst.port() == 8080).collect();
    let syn = to_backend.iter().find(|s| s.has(packet::SYN)).unwrap_or_else(|| panic!("{url}: no SYN: {at_srv:?}"));
    assert_eq!(syn.option(kind), None, "{url}: the SYN carries no option: {syn}");
    let ack = to_backend.iter().find(|s| !s.has(packet::SYN)).expect("handshake ACK");
    assert!(ack.payload.is_empty(), "{url}: the first packet after the SYN is the handshake ACK: {ack}");
    assert_eq!(ack.option(kind), Some(&want[..]), "{url}: the option in the handshake ACK {ack}");
    let data = to_backend.iter().find(|s| !s.payload.is_empty()).expect("data");
    assert_eq!(data.option(kind), Some(&want[..]), "{url}: the option in the first data packet {data}");
    let synack_at_srv = at_srv.iter().find(|s| s.has(packet::SYN | packet::ACK)).expect("SYN-ACK at the backend");
    let synack_at_cli = at_cli.iter().find(|s| s.has(packet::SYN | packet::ACK)).expect("SYN-ACK at the client");
    assert_eq!(synack_at_srv.mss(), Some(mss.0), "{url}: the backend's MSS");
    assert_eq!(synack_at_cli.mss(), Some(mss.1), "{url}: the client gets it lowered by the option length");
    // Nothing on the client's wire shows the backend or the local address.
    assert!(at_cli.iter().all(|s| s.src.port() == 80 || s.dst.port() == 80), "{at_cli:?}");
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn the_option_is_in_the_handshake_ack_and_first_data_not_in_the_syn_and_the_client_sees_a_lowered_mss() {
    require_root();
    let line = Line::new(Offloads::Default);
    let _http = http_server(&line, 8080);
    let _lb = start_lb(&line, 8080, &[]);
    check_wire(&line, &format!("http://{VIP4}/"), 43001, 254, &v4(CLI4), (1460, 1452));
    check_wire(&line, &format!("http://[{VIP6}]/"), 43002, 253, &v6(CLI6), (1440, 1420));
}

/// The integrity test's backend: per connection, an 8-byte seed, the upload
/// until EOF; then the upload's SHA-256 and the download (8 MiB made from the
/// seed). argv: PORT.
const SHA_SERVER: &str = r#"
import hashlib, random, socket, struct, sys, threading
MIB = 1 << 20
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(1024)
print("listening", flush=True)
def handle(c):
    try:
        head = b""
        while len(head) < 8:
            k = c.recv(8 - len(head))
            if not k: raise EOFError
            head += k
        (seed,) = struct.unpack("!Q", head)
        h = hashlib.sha256()
        while True:
            k = c.recv(MIB)
            if not k: break
            h.update(k)
        c.sendall(h.digest())
        for i in range(8):
            c.sendall(random.Random(seed * 64 + 32 + i).randbytes(MIB))
    except Exception as e:
        print("server error", e, flush=True)
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// The integrity test's client: N parallel connections, 8 MiB up and 8 MiB
/// down each, both checked with SHA-256. argv: HOST PORT N.
const SHA_CLIENT: &str = r#"
import hashlib, random, socket, struct, sys, threading
MIB = 1 << 20
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bad = []
def one(i):
    try:
        c = socket.create_connection((host, port), timeout=120)
        c.sendall(struct.pack("!Q", i))
        up = hashlib.sha256()
        for k in range(8):
            b = random.Random(i * 64 + k).randbytes(MIB)
            up.update(b)
            c.sendall(b)
        c.shutdown(socket.SHUT_WR)
        got, head = hashlib.sha256(), b""
        size = 0
        while True:
            k = c.recv(MIB)
            if not k: break
            if len(head) < 32:
                take = 32 - len(head)
                head += k[:take]; k = k[take:]
            got.update(k); size += len(k)
        c.close()
        want = hashlib.sha256()
        for k in range(8):
            want.update(random.Random(i * 64 + 32 + k).randbytes(MIB))
        if head != up.digest():
            bad.append(f"{i}: upload differs")
        if size != 8 * MIB or got.digest() != want.digest():
            bad.append(f"{i}: download differs ({size} bytes)")
    except Exception as e:
        bad.append(f"{i}: {e!r}")
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(f"done {n} bad={len(bad)} {bad[:5]}", flush=True)
sys.exit(1 if bad else 0)
"#;

fn two_hundred_transfers(offloads: Offloads) {
    let line = Line::new(offloads);
    let _server = server(&line, &["python3", "-u", "-c", SHA_SERVER, "9100"], Stream::Stdout, "listening");
    let lb = start_lb(&line, 9100, &[]);
    let errors_before = backend_csum_errors(&line);
    for host in [VIP4, VIP6] {
        let out = client(&line, &["python3", "-c", SHA_CLIENT, host, "80", "100"]);
        assert!(
            out.status.success(),
            "{offloads:?} {host}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            lb.stats()
        );
    }
    let s = lb.stats();
    assert_eq!(s["flows_created"], 200, "{s}");
    assert_eq!(backend_csum_errors(&line), errors_before, "{offloads:?}: the backend counted TCP checksum errors");
    for bad in ["options_failed", "drop_rewrite", "drop_no_flow", "drop_too_big", "drop_no_route"] {
        assert_eq!(s[bad], 0, "{offloads:?}: {bad}: {s}");
    }
    assert!(s["options_inserted"].as_u64().unwrap_or(0) >= 400, "ACK and data of every flow: {s}");
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn two_hundred_parallel_8_mib_transfers_arrive_intact_both_ways_with_default_offloads() {
    require_root();
    two_hundred_transfers(Offloads::Default);
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn two_hundred_parallel_8_mib_transfers_arrive_intact_both_ways_with_offloads_off() {
    require_root();
    two_hundred_transfers(Offloads::Off);
}

/// A backend that reads until EOF, then answers `ok`. argv: PORT.
const SINK_SERVER: &str = r#"
import socket, sys, threading
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(64)
print("listening", flush=True)
def handle(c):
    while c.recv(1 << 20):
        pass
    c.sendall(b"ok")
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// Uploads 256 KiB in one write right after connecting (a GSO super-packet
/// in the first round trip when offloads are on); prints each local port.
/// argv: HOST PORT N.
const BURST_CLIENT: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    c = socket.create_connection((host, port), timeout=20)
    print("port", c.getsockname()[1], flush=True)
    c.sendall(bytes(range(256)) * 1024)
    c.shutdown(socket.SHUT_WR)
    assert c.recv(2) == b"ok"
    c.close()
"#;

fn every_segment_carries_it(offloads: Offloads) {
    let line = Line::new(offloads);
    let _sink = server(&line, &["python3", "-u", "-c", SINK_SERVER, "9200"], Stream::Stdout, "listening");
    let lb = start_lb(&line, 9200, &[]);
    let cap = Capture::start(&line.srv, SRV_IF, "tcp port 9200");
    let errors_before = backend_csum_errors(&line);
    let out = client(&line, &["python3", "-c", BURST_CLIENT, VIP4, "80", "4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("port ").and_then(|p| p.parse().ok()))
        .collect();
    assert_eq!(ports.len(), 4);
    let segs = cap
        .finish("four flows to end", |s| s.iter().filter(|g| g.src.port() == 9200 && g.has(packet::FIN)).count() >= 4);
    // Flows by local port, in the order of their SYNs.
    let flows: Vec<u16> =
        segs.iter().filter(|s| s.dst.port() == 9200 && s.has(packet::SYN)).map(|s| s.src.port()).collect();
    assert_eq!(flows.len(), 4, "{offloads:?}: four SYNs on the backend's wire");
    let mut carried_total = 0;
    for (flow, cport) in flows.iter().zip(&ports) {
        let mut want = cport.to_be_bytes().to_vec();
        want.extend_from_slice(&v4(CLI4));
        let syn = segs.iter().find(|s| s.src.port() == *flow && s.has(packet::SYN)).expect("SYN");
        // Every client data segment the backend received before it
        // acknowledged any data needed the option: each must carry it.
        let first_data_ack = segs.iter().position(|s| {
            s.dst.port() == *flow && s.has(packet::ACK) && s.ack.wrapping_sub(syn.seq.wrapping_add(1)) as i32 > 0
        });
        let before = &segs[..first_data_ack.unwrap_or(segs.len())];
        let needing: Vec<&packet::Segment> =
            before.iter().filter(|s| s.src.port() == *flow && !s.payload.is_empty()).collect();
        assert!(!needing.is_empty(), "{offloads:?}: flow {flow} sent data before the first ACK of it");
        for s in &needing {
            assert_eq!(s.option(254), Some(&want[..]), "{offloads:?}: flow {flow}: segment without the option: {s}");
        }
        // The segments that carry it are the first ones of the flow, with no
        // hole: no segment of a packet that needed it went without.
        let mut data: Vec<&packet::Segment> =
            segs.iter().filter(|s| s.src.port() == *flow && !s.payload.is_empty()).collect();
        data.sort_by_key(|s| s.seq.wrapping_sub(syn.seq));
        data.dedup_by_key(|s| s.seq);
        let carrying = data.iter().take_while(|s| s.option(254).is_some()).count();
        assert!(
            data[carrying..].iter().all(|s| s.option(254).is_none()),
            "{offloads:?}: flow {flow}: a segment without the option between segments with it"
        );
        for s in &data[..carrying] {
            assert!(s.payload.len() <= 1452, "{offloads:?}: a segment with the option above the lowered MSS: {s}");
        }
        carried_total += carrying;
    }
    let s = lb.stats();
    assert!(
        carried_total > 4,
        "{offloads:?}: several segments per flow in the first round trip ({carried_total}): {s}"
    );
    if offloads == Offloads::Default {
        assert!(s["options_segmented"].as_u64().unwrap_or(0) >= 1, "GSO packets went through the segmenter: {s}");
    }
    assert_eq!(s["options_gso_skipped"], 0, "{s}");
    assert_eq!(backend_csum_errors(&line), errors_before, "{offloads:?}: checksum errors on the backend");
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn every_segment_of_the_first_round_trip_carries_the_option_with_default_offloads() {
    require_root();
    every_segment_carries_it(Offloads::Default);
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn every_segment_of_the_first_round_trip_carries_the_option_with_offloads_off() {
    require_root();
    every_segment_carries_it(Offloads::Off);
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn with_the_handshake_ack_dropped_the_server_still_logs_the_client() {
    require_root();
    let line = Line::new(Offloads::Default);
    let agent = AgentProc::start(line.srv_cg.path(), &[]);
    let mut http = http_server(&line, 8080);
    let lb = start_lb(&line, 8080, &[]);
    // On the link between forwarder and backend (netfilter's ingress hook
    // of the backend's interface, where the lost packet would be missing
    // from): drop IPv4 pure ACKs of 60 bytes (20 IP + 20 TCP + 12 timestamps
    // + 8 option), i.e. the handshake ACK with the option. (The forwarder's
    // redirected packets bypass its own egress hooks, and this kernel has
    // no tc classifier but BPF.)
    line.srv.run_with_input(
        &["nft", "-f", "-"],
        &format!(
            "table netdev toa_test {{\n chain drop_ack {{\n  type filter hook ingress device {SRV_IF} priority 0;\n  \
             ip length 60 tcp flags == ack counter drop\n }}\n}}\n"
        ),
    );
    curl(&line, &format!("http://{VIP4}/"), &[]);
    assert_eq!(logged_host(&mut http), format!("::ffff:{CLI4}"), "the first data packet carried the address");
    let rules = line.srv.output(&["nft", "list", "table", "netdev", "toa_test"]);
    let dropped: u64 = rules
        .split("counter packets ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let filters = rules;
    assert!(dropped >= 1, "the handshake ACK was dropped: {filters}");
    // The backend's socket was established by that data packet.
    assert_eq!(agent.counter("syn_recv_sock_no_toa"), 0, "{}", agent.stats());
    assert!(lb.counter("options_inserted") >= 2);
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn a_client_whose_options_leave_no_room_is_forwarded_without_the_option_and_counted() {
    require_root();
    let line = Line::new(Offloads::Default);
    let agent = AgentProc::start(line.srv_cg.path(), &[]);
    let mut http = http_server(&line, 8080);
    let lb = start_lb(&line, 8080, &[]);
    // The client's ACK and data carry timestamps (12 bytes with their NOPs)
    // and a 20-byte option of an unassigned kind, which no stage of
    // compaction may drop: 32 of the 40 option bytes used. An IPv4 client's
    // 8-byte option still fits (40 exactly); an IPv6 client's 20 bytes do
    // not, even without the NOPs.
    let raw = format!("4c14{}", "00".repeat(18));
    let _writer = start_injector(line.cli_cg.path(), &["--raw", &raw, "--packets", "ack,data"]);
    curl(&line, &format!("http://{VIP4}/"), &[]);
    assert_eq!(logged_host(&mut http), format!("::ffff:{CLI4}"), "8 bytes fit into the last 8");
    let s = lb.stats();
    assert_eq!(s["options_no_room"], 0, "{s}");
    curl(&line, &format!("http://[{VIP6}]/"), &[]);
    assert_eq!(logged_host(&mut http), SNAT6, "no room: the server sees the forwarder");
    let s = lb.stats();
    assert!(s["options_no_room"].as_u64().unwrap_or(0) >= 2, "the handshake ACK and the data: {s}");
    assert_eq!(s["drop_rewrite"], 0, "{s}");
    agent.stop();
}

/// Sends hand-made Ethernet frames to the forwarder's client-side MAC from
/// the client's interface (AF_PACKET): each malformed in one way. argv: IF
/// DST_MAC. Prints `sent N`.
const MALFORMED_SENDER: &str = r#"
import socket, struct, sys
ifname, dmac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
smac = s.getsockname()[4]
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
def ip4(proto, payload, tot=None, frag=0, opts=b""):
    ihl = 5 + len(opts) // 4
    tot = tot if tot is not None else 4 * ihl + len(payload)
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, 1, frag, 64, proto, 0,
                    socket.inet_aton("10.72.1.2"), socket.inet_aton("10.72.1.1")) + opts
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return dmac + smac + b"\x08\x00" + h + payload
def tcp(flags=0x02, doff=5, sport=40001):
    return struct.pack("!HHIIBBHHH", sport, 80, 1000, 0, doff << 4, flags, 65535, 0, 0)
def ip6(nh, payload):
    src = socket.inet_pton(socket.AF_INET6, "2001:db8:72:1::2")
    dst = socket.inet_pton(socket.AF_INET6, "2001:db8:72:1::1")
    h = struct.pack("!IHBB", 6 << 28, len(payload), nh, 64) + src + dst
    return dmac + smac + b"\x86\xdd" + h + payload
frames = [
    ip4(6, tcp(), tot=140),                          # drop_bad_length: IP length beyond the frame
    ip4(6, tcp(doff=15)),                            # drop_bad_length: TCP header beyond the packet
    ip4(6, tcp(), frag=0x2000),                      # drop_fragment: more fragments
    ip4(6, b"\x00" * 20, frag=0x0010),               # drop_fragment: a later fragment
    ip4(17, struct.pack("!HHHH", 40001, 80, 8, 0)),  # drop_non_tcp: UDP to the virtual address
    ip4(6, tcp(), opts=b"\x01\x01\x01\x00"),         # drop_ip_options
    ip4(6, tcp(flags=0x10, sport=40002)),            # drop_no_flow: an ACK for no flow
    ip6(44, struct.pack("!BBHI", 6, 0, 1, 7) + tcp()),  # drop_fragment: IPv6 fragment header
]
for f in frames:
    s.send(f)
print("sent", len(frames), flush=True)
"#;

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn malformed_packets_to_the_virtual_address_are_dropped_and_counted_never_forwarded() {
    require_root();
    let line = Line::new(Offloads::Default);
    let _http = http_server(&line, 8080);
    let lb = start_lb(&line, 8080, &[]);
    let capture = Capture::start(&line.srv, SRV_IF, "ip or ip6");
    let link = line.lb.output(&["ip", "-o", "link", "show", "dev", LB_CLI_IF]);
    let mac = link.split("link/ether ").nth(1).and_then(|t| t.split_whitespace().next()).expect("a MAC").to_string();
    let out = run_in(Some(&line.cli.path()), None, &["python3", "-c", MALFORMED_SENDER, CLI_IF, &mac]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = [
        ("drop_bad_length", 2),
        ("drop_fragment", 3),
        ("drop_non_tcp", 1),
        ("drop_ip_options", 1),
        ("drop_no_flow", 1),
    ];
    eventually("every frame to be counted", Duration::from_secs(10), || {
        let s = lb.stats();
        want.iter().all(|(k, n)| s[*k].as_u64() == Some(*n))
    });
    let s = lb.stats();
    assert_eq!(s["packets_in"], 0, "nothing was translated: {s}");
    assert_eq!(s["flows_created"], 0, "{s}");
    // A good connection afterwards shows the capture works and ends it.
    curl(&line, &format!("http://{VIP4}/"), &[]);
    let segs = capture.finish("the good connection on the backend's wire", |g| g.iter().any(|x| x.has(packet::FIN)));
    let stray: Vec<&packet::Segment> = segs.iter().filter(|x| x.dst.port() != 8080 && x.src.port() != 8080).collect();
    assert!(stray.is_empty(), "malformed packets reached the backend: {stray:?}");
    assert!(segs.iter().all(|x| x.src.port() == 8080 || x.seq != 1000), "{segs:?}");
}

/// Keeps a connection open: connects, sends `x`, then waits for the
/// backend's RST. Prints `port P`, then `reset` (or what it got). argv: HOST PORT.
const RESET_CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
print("port", c.getsockname()[1], flush=True)
c.sendall(b"x")
try:
    got = c.recv(10)
    print("got", got, flush=True)
except ConnectionResetError:
    print("reset", flush=True)
"#;

/// A backend that takes one connection, prints its peer's port, waits for a
/// line on stdin, then resets it. argv: PORT.
const RESET_SERVER: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
c, peer = s.accept()
assert c.recv(1) == b"x"
print("peer", peer[1], flush=True)
sys.stdin.readline()
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
print("closed", flush=True)
"#;

/// One connection from the client to the virtual address `vip` through the
/// forwarder, to a backend on `port` that resets it when told: what an ICMP
/// error about it has to quote (the forwarder's local port, the client's next
/// sequence number as the backend's wire shows it).
struct ResetFlow {
    backend: Spawned,
    cli: Spawned,
    lb: LbProc,
    lport: u16,
    next_seq: u32,
    /// The source of the client's byte on the backend's wire.
    data_src: std::net::SocketAddr,
}

impl ResetFlow {
    fn start(line: &Line, port: u16, vip: &str) -> ResetFlow {
        let mut backend = {
            let mut cmd = command_in(Some(&line.srv.path()), Some(line.srv_cg.path()), "python3");
            cmd.args(["-u", "-c", RESET_SERVER, &port.to_string()]);
            let mut p = integration_test::process::spawn_with_stdin(cmd);
            p.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
            p
        };
        let lb = start_lb(line, port, &[]);
        let cap = Capture::start(&line.srv, SRV_IF, &format!("tcp port {port}"));
        let mut cli = {
            let mut cmd = command_in(Some(&line.cli.path()), None, "python3");
            cmd.args(["-u", "-c", RESET_CLIENT, vip, "80"]);
            spawn(cmd)
        };
        cli.wait_for_line(Stream::Stdout, |l| l.starts_with("port "), READY);
        let lport: u16 = backend
            .wait_for_line(Stream::Stdout, |l| l.starts_with("peer "), READY)
            .trim_start_matches("peer ")
            .parse()
            .expect("a port");
        // The quoted sequence number must be one the client has in flight or
        // next: the one after its byte, as the backend's wire shows.
        let segs = cap.finish("the client's byte on the backend's wire", |s| {
            s.iter().any(|g| g.src.port() == lport && g.payload.len() == 1)
        });
        let data = segs.iter().find(|g| g.src.port() == lport && g.payload.len() == 1).expect("data");
        ResetFlow { backend, cli, lb, lport, next_seq: data.seq.wrapping_add(1), data_src: data.src }
    }

    /// The backend resets the connection; returns once the client saw the reset.
    fn reset(mut self) -> LbProc {
        use std::io::Write as _;
        writeln!(self.backend.stdin(), "go").expect("write");
        self.backend.wait_for_line(Stream::Stdout, |l| l == "closed", READY);
        self.cli.wait_for_line(Stream::Stdout, |l| l == "reset", READY);
        self.lb
    }
}

/// Sends an ICMP "fragmentation needed" (MTU 1400) to the forwarder's local
/// address, quoting its packet to the backend. argv: SNAT LPORT BACKEND BPORT SEQ.
const FRAG_NEEDED: &str = r#"
import socket, struct, sys
snat, lport, backend, bport, seq = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def csum(b):
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
q = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1500, 1, 0x4000, 63, 6, 0, socket.inet_aton(snat), socket.inet_aton(backend))
q = q[:10] + struct.pack("!H", csum(q)) + q[12:]
q += struct.pack("!HHI", lport, bport, seq)
m = struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + q
m = m[:2] + struct.pack("!H", csum(m)) + m[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.sendto(m, (snat, 0))
print("sent", flush=True)
"#;

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn icmp_fragmentation_needed_and_a_reset_from_the_backend_side_reach_the_client_translated() {
    require_root();
    let line = Line::new(Offloads::Default);
    let flow = ResetFlow::start(&line, 9300, VIP4);
    let (lport, next) = (flow.lport.to_string(), flow.next_seq.to_string());
    let out = run_in(Some(&line.srv.path()), None, &["python3", "-c", FRAG_NEEDED, SNAT4, &lport, SRV4, "9300", &next]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the translated ICMP error", Duration::from_secs(10), || flow.lb.counter("icmp_translated") == 1);
    // The client learnt the path MTU to the virtual address, less the option.
    eventually("the client's path MTU to the virtual address", Duration::from_secs(10), || {
        line.cli.output(&["ip", "-4", "route", "get", VIP4]).contains("mtu 1392")
    });
    // The backend resets the connection: the client sees the reset.
    let lb = flow.reset();
    assert!(lb.counter("packets_out") >= 2, "the SYN-ACK and the RST went back");
}

/// Sends an ICMPv6 "packet too big" (MTU 1400) to the forwarder's local
/// address, quoting its packet to the backend (the kernel fills in the
/// checksum of raw ICMPv6). argv: SNAT6 LPORT BACKEND6 BPORT SEQ.
const PACKET_TOO_BIG: &str = r#"
import socket, struct, sys
snat, lport, backend, bport, seq = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
q = struct.pack("!IHBB16s16s", 6 << 28, 1440, 6, 64, socket.inet_pton(socket.AF_INET6, snat), socket.inet_pton(socket.AF_INET6, backend))
q += struct.pack("!HHI", lport, bport, seq)
m = struct.pack("!BBHI", 2, 0, 0, 1400) + q
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.sendto(m, (snat, 0))
print("sent", flush=True)
"#;

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn icmpv6_packet_too_big_reaches_the_ipv6_client_translated_with_the_mtu_less_the_option() {
    require_root();
    let line = Line::new(Offloads::Default);
    let flow = ResetFlow::start(&line, 9301, VIP6);
    assert!(flow.data_src.is_ipv6(), "{:?}", flow.data_src);
    let (lport, next) = (flow.lport.to_string(), flow.next_seq.to_string());
    assert!(!line.cli.output(&["ip", "-6", "route", "get", VIP6]).contains("mtu "), "no path MTU learnt before");
    let out =
        run_in(Some(&line.srv.path()), None, &["python3", "-c", PACKET_TOO_BIG, SNAT6, &lport, SRV6, "9301", &next]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("the translated ICMPv6 error", Duration::from_secs(10), || flow.lb.counter("icmp_translated") == 1);
    // The client learnt the path MTU to the virtual address, less the
    // 20-byte option of an IPv6 client.
    eventually("the client's path MTU to the virtual address", Duration::from_secs(10), || {
        line.cli.output(&["ip", "-6", "route", "get", VIP6]).contains("mtu 1380")
    });
    flow.reset();
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn bad_flags_a_missing_interface_or_forwarding_off_exit_2_with_one_line_and_attach_nothing() {
    require_root();
    let line = Line::new(Offloads::Default);
    let base = service_args(8080);
    let base: Vec<&str> = base.iter().map(String::as_str).collect();
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [&["lb"][..], base, extra].concat()
    }
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["lb", "--listen", "nowhere", "--backend", "10.0.0.1:1", "--snat", "10.0.0.2"],
            "`nowhere` is not ADDR:PORT",
        ),
        (vec!["lb", "--listen", "10.0.0.1:80", "--snat", "10.0.0.2"], "no IPv4 backend"),
        (with(&base, &["--kind", "7"]), "kind 7"),
        (with(&base, &["--snat-ports", "9-2"]), "--snat-ports"),
        (with(&base, &["--toa-packets", "fin"]), "unknown packet `fin`"),
        (with(&base, &["--iface", "nosuch0"]), "no interface `nosuch0`"),
    ];
    for (args, needle) in &cases {
        let out = run_in(Some(&line.lb.path()), None, &[&[TOA][..], &args[..]].concat());
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        assert!(lines[0].contains(needle), "{args:?}: {lines:?}");
    }
    line.lb.write_sysctl("net/ipv4/ip_forward", "0");
    let out = run_in(Some(&line.lb.path()), None, &[&[TOA][..], &with(&base, &[])[..]].concat());
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{lines:?}");
    assert!(lines.len() == 1 && lines[0].contains("net.ipv4.ip_forward=1"), "{lines:?}");
    // Nothing was attached or created: the virtual address is the
    // forwarder's own, so an unforwarded connection is refused by its stack.
    for ifname in [LB_CLI_IF, LB_SRV_IF] {
        assert!(ingress_programs(&line.lb, ifname).is_empty(), "{ifname}: attached");
    }
    assert_refused(&line);
    let links = line.lb.output(&["ip", "-o", "link"]);
    assert!(!links.contains("tlb"), "{links}");
    // Clap's own refusals are one-line usage errors too.
    let out = toa(&["lb", "--listen", "10.0.0.1:80"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
#[ignore = "needs root: BPF programs in network namespaces"]
fn a_clean_stop_detaches_everything_and_removes_the_segmenter_and_the_socket() {
    require_root();
    let line = Line::new(Offloads::Default);
    let _http = http_server(&line, 8080);
    let mut lb = start_lb(&line, 8080, &[]);
    let segmenter_end = line
        .lb
        .output(&["ip", "-o", "link"])
        .split_whitespace()
        .map(|w| w.trim_end_matches(':').split('@').next().unwrap_or(w).to_string())
        .find(|w| w.starts_with("tlb") && w.ends_with('r'))
        .expect("the segmenter exists");
    for ifname in [LB_CLI_IF, LB_SRV_IF, &segmenter_end] {
        assert_eq!(ingress_programs(&line.lb, ifname), ["toa_lb_ingress"], "{ifname}");
    }
    curl(&line, &format!("http://{VIP4}/"), &[]);
    let status = lb.proc.terminate();
    assert!(status.success(), "{status}: {:?}", lb.proc.lines_so_far(Stream::Stderr));
    for ifname in [LB_CLI_IF, LB_SRV_IF] {
        assert!(ingress_programs(&line.lb, ifname).is_empty(), "{ifname}: still attached");
    }
    // Packets to the virtual address reach the forwarder's own stack again.
    assert_refused(&line);
    assert!(!line.lb.output(&["ip", "-o", "link"]).contains("tlb"), "the segmenter is gone");
    assert!(!lb.socket.exists(), "the stats socket is gone");
    let stopped = lb.proc.lines_so_far(Stream::Stderr).into_iter().find(|l| l.contains("lb stopped"));
    assert!(stopped.is_some(), "a last line with the counters");
}

/// Asserts that a connection to the virtual address is refused at once (by
/// the forwarder's own stack: nothing forwards it).
fn assert_refused(line: &Line) {
    let out = client(line, &["curl", "-sS", "--max-time", "5", "-o", "/dev/null", &format!("http://{VIP4}/")]);
    assert_eq!(out.status.code(), Some(7), "connection refused: {}", String::from_utf8_lossy(&out.stderr));
}
