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

use common::{AgentProc, READY, TOA, eventually, start_injector, stderr_lines, toa};
use integration_test::{
    line::{CLI_IF, CLI4, CLI6, LB_CLI_IF, LB_SRV_IF, Line, Offloads, SNAT4, SNAT6, SRV_IF, SRV4, SRV6, VIP4, VIP6},
    netns::unique_name,
    packet,
    process::{Spawned, Stream, command_in, run_in, spawn},
};
use serde_json::Value;

/// Panics unless root: these tests attach real programs in real namespaces.
fn require_root(test: &str) {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("{test} needs root (BPF programs, network namespaces, cgroups): run it with sudo and --include-ignored");
    }
}

/// A running `toa lb` in the line's forwarder namespace.
struct LbProc {
    proc: Spawned,
    socket: PathBuf,
}

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

impl LbProc {
    fn start(line: &Line, port: u16, extra: &[&str]) -> LbProc {
        let socket = std::env::temp_dir().join(format!("{}.sock", unique_name("toa-lb", 40)));
        let mut cmd = command_in(Some(&line.lb.path()), None, TOA);
        cmd.arg("lb").args(service_args(port)).arg("--stats-socket").arg(&socket).args(extra);
        cmd.env("RUST_LOG", "info");
        let mut proc = spawn(cmd);
        proc.wait_for_line(Stream::Stderr, |l| l.contains("lb ready"), READY);
        LbProc { proc, socket }
    }

    fn stats(&self) -> Value {
        use std::io::Read as _;
        let mut conn = std::os::unix::net::UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket.display()));
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read stats");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats are not JSON ({e}): {text}"))
    }

    fn counter(&self, name: &str) -> u64 {
        let v = self.stats();
        v[name].as_u64().unwrap_or_else(|| panic!("counter {name} missing in {v}"))
    }
}

impl Drop for LbProc {
    fn drop(&mut self) {
        let _ = self.proc.terminate();
        let _ = std::fs::remove_file(&self.socket);
    }
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
        cmd.args(["-i", ifname, "-n", "-U", "--immediate-mode", "-s", "200", "-w"]).arg(&file).arg(filter);
        let mut proc = spawn(cmd);
        proc.wait_for_line(Stream::Stderr, |l| l.contains("listening on"), READY);
        Capture { proc, file }
    }

    /// The TCP segments captured so far (the file as written up to now).
    fn segments_so_far(&self) -> Vec<packet::Segment> {
        let bytes = std::fs::read(&self.file).unwrap_or_default();
        pcap_ip_packets(&bytes).iter().filter_map(|p| packet::parse(p)).collect()
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

/// A pcap file's IP packets (link type Ethernet).
fn pcap_ip_packets(bytes: &[u8]) -> Vec<Vec<u8>> {
    if bytes.len() < 24 {
        return Vec::new();
    }
    let le = bytes[..4] == [0xd4, 0xc3, 0xb2, 0xa1];
    let u32_at = |b: &[u8], i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    let mut out = Vec::new();
    let mut i = 24;
    while i + 16 <= bytes.len() {
        let caplen = u32_at(bytes, i + 8) as usize;
        let data = &bytes[i + 16..(i + 16 + caplen).min(bytes.len())];
        if data.len() > 14 && matches!(data[12..14], [0x08, 0x00] | [0x86, 0xdd]) {
            out.push(data[14..].to_vec());
        }
        i += 16 + caplen;
    }
    out
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
    require_root("an_unmodified_http_server_logs_the_clients_own_ipv4_and_ipv6_address");
    let line = Line::new(Offloads::Default);
    let agent = AgentProc::start(line.srv_cg.path(), &[]);
    let mut http = http_server(&line, 8080);
    let lb = LbProc::start(&line, 8080, &[]);
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
