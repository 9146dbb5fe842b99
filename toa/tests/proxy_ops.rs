//! The forwarder as a service: several instances side by side, reload on
//! SIGHUP, drain on SIGTERM, running out of file descriptors, values that
//! make no sense, and the Prometheus endpoint. Client → `toa proxy` →
//! backend in three namespaces ([`common::Topo`]).

mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    ONE_BYTE_CLIENT, ProxyProc, READY, SHA_SERVER, TOPO_LB4, TOPO_SRV4, Topo, eventually, require_root, stderr_lines,
    toa,
};
use integration_test::{
    netns::unique_name,
    process::{Spawned, Stream, command_in},
};
use serde_json::Value;

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn with(ext: &str, bytes: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!("{}.{ext}", unique_name("toa-pxo", 40)));
        std::fs::write(&p, bytes).expect("write temporary file");
        TempFile(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }

    fn rewrite(&self, bytes: &[u8]) {
        std::fs::write(&self.0, bytes).expect("rewrite temporary file");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Downloads from [`SHA_SERVER`] that stop half-way until told to go on.
///
/// argv: HOST PORT N SIZE. Opens N connections, asks each for SIZE bytes
/// (nothing uploaded), reads the first 64 KiB of each and prints
/// `started N`; then waits for a line on stdin and reads the rest of every
/// download, checking its SHA-256. Prints `done ok=K bad=[...]`; exits 1
/// unless all N arrived intact.
const PAUSED_DOWNLOADS: &str = r#"
import hashlib, random, socket, struct, sys, threading
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
conns = []
for i in range(n):
    c = socket.create_connection((host, port), timeout=60)
    c.sendall(struct.pack("!QQQ", 0, size, 1000 + i))
    c.shutdown(socket.SHUT_WR)
    conns.append(c)
heads, firsts = [], []
for c in conns:
    b = b""
    while len(b) < 40 + 65536:
        k = c.recv(40 + 65536 - len(b))
        if not k: break
        b += k
    heads.append(b[:40]); firsts.append(b[40:])
print(f"started {n}", flush=True)
sys.stdin.readline()
bad = []
def finish(i):
    c, h, got = conns[i], hashlib.sha256(firsts[i]), len(firsts[i])
    try:
        while True:
            k = c.recv(1 << 20)
            if not k: break
            h.update(k); got += len(k)
    except OSError as e:
        bad.append(f"{i}: {e!r} after {got} bytes"); return
    if got != size or h.digest() != hashlib.sha256(random.Random(1000 + i).randbytes(size)).digest():
        bad.append(f"{i}: {got} of {size} bytes, or different ones")
threads = [threading.Thread(target=finish, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(f"done ok={n - len(bad)} bad={bad}", flush=True)
sys.exit(1 if bad else 0)
"#;

/// Connects once and says whether the connection was refused. argv: HOST PORT.
const CONNECT_ONCE: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    c.sendall(b"x")
    c.shutdown(socket.SHUT_WR)
    print("answered" if c.recv(1) else "closed", flush=True)
except ConnectionRefusedError:
    print("refused", flush=True)
except OSError as e:
    print("failed", repr(e), flush=True)
"#;

/// Starts [`SHA_SERVER`] on `port` of the backend.
fn sha_server(topo: &Topo, port: u16) -> Spawned {
    topo.server(&["python3", "-u", "-c", SHA_SERVER, &port.to_string()], Stream::Stdout, |l| l == "listening")
}

/// Starts [`PAUSED_DOWNLOADS`] against `port` of the proxy's IPv4 address and
/// waits until every download is half-way.
fn paused_downloads(topo: &Topo, port: u16, n: usize, size: usize) -> Spawned {
    let mut c = topo.client_with_stdin(&[
        "python3",
        "-u",
        "-c",
        PAUSED_DOWNLOADS,
        TOPO_LB4,
        &port.to_string(),
        &n.to_string(),
        &size.to_string(),
    ]);
    c.wait_for_line(Stream::Stdout, |l| l == format!("started {n}"), READY);
    c
}

/// Lets [`PAUSED_DOWNLOADS`] go on and returns its verdict line and exit status.
fn finish_downloads(mut c: Spawned) -> (String, std::process::ExitStatus) {
    c.stdin().write_all(b"go\n").expect("tell the downloads to go on");
    c.close_stdin();
    let line = c.wait_for_line(Stream::Stdout, |l| l.starts_with("done "), READY);
    (line, c.wait_exit(READY))
}

fn connect_once(topo: &Topo, port: u16) -> String {
    let out = topo.client(&["python3", "-c", CONNECT_ONCE, TOPO_LB4, &port.to_string()]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn listeners(stats: &Value) -> Vec<String> {
    stats["listeners"]
        .as_array()
        .map(|a| a.iter().map(|l| l["listen"].as_str().unwrap_or("?").to_string()).collect())
        .unwrap_or_default()
}

fn backends(stats: &Value, listener: usize) -> Vec<String> {
    stats["listeners"][listener]["backends"]
        .as_array()
        .map(|a| a.iter().map(|b| b["addr"].as_str().unwrap_or("?").to_string()).collect())
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn sighup_adds_a_listener_and_removes_a_backend_while_a_transfer_through_it_continues_intact() {
    require_root();
    let topo = Topo::new();
    let _a = sha_server(&topo, 9601);
    let _b = sha_server(&topo, 9602);
    let config = |listeners: &[(u16, &[u16])]| {
        let mut text = String::from("[proxy]\n");
        for (port, backends) in listeners {
            let list: Vec<String> = backends.iter().map(|b| format!("\"{TOPO_SRV4}:{b}\"")).collect();
            text += &format!("[[proxy.listener]]\nlisten = \"{TOPO_LB4}:{port}\"\nbackends = [{}]\n", list.join(", "));
        }
        text
    };
    // 7601 → 9602 and 9601 (round-robin: the first client goes to 9602); 7603 → 9601.
    let file = TempFile::with("toml", config(&[(7601, &[9602, 9601]), (7603, &[9601])]).as_bytes());
    let mut proxy = topo.proxy(&["--config", file.path()]);
    let downloads = paused_downloads(&topo, 7601, 1, 48 << 20);
    assert_eq!(proxy.stats()["listeners"][0]["backends"][0]["active"], 1, "{}", proxy.stats());

    // 7601 loses 9602 (the backend of the transfer), 7602 is new, 7603 goes.
    file.rewrite(config(&[(7601, &[9601]), (7602, &[9601])]).as_bytes());
    proxy.signal(libc::SIGHUP);
    let line = proxy.proc.wait_for_line(Stream::Stderr, |l| l.contains("configuration reloaded"), READY);
    assert!(line.contains("INFO"), "{line}");
    let stats = proxy.stats();
    assert_eq!(listeners(&stats), [format!("{TOPO_LB4}:7601"), format!("{TOPO_LB4}:7602")], "{stats}");
    assert_eq!(backends(&stats, 0), [format!("{TOPO_SRV4}:9601")], "{stats}");
    assert_eq!(stats["connections_active"], 1, "the transfer is still open: {stats}");
    assert_eq!(stats["reloads"], 1, "{stats}");
    assert_eq!(connect_once(&topo, 7603), "refused", "the removed listener is closed");

    // New clients: through the new listener, and through the old one to the remaining backend.
    let small = topo.client(&["python3", "-c", common::SHA_CLIENT, TOPO_LB4, "7602", "3", "100000"]);
    assert!(small.status.success(), "{}", String::from_utf8_lossy(&small.stdout));
    let small = topo.client(&["python3", "-c", common::SHA_CLIENT, TOPO_LB4, "7601", "3", "100000"]);
    assert!(small.status.success(), "{}", String::from_utf8_lossy(&small.stdout));
    assert_eq!(proxy.stats()["listeners"][0]["backends"][0]["total"], 3, "{}", proxy.stats());

    let (verdict, status) = finish_downloads(downloads);
    assert!(status.success(), "the transfer through the removed backend arrived intact: {verdict}");
    assert_eq!(verdict, "done ok=1 bad=[]");
    eventually("connections to close", Duration::from_secs(10), || proxy.counter(None, "connections_active") == 0);
    let stats = proxy.stats();
    assert_eq!(stats["resets"], 0, "{stats}");
    assert_eq!(stats["connections_total"], 7, "{stats}");

    // A file that does not parse changes nothing; `toa reload` waits for the verdict and gives the reason.
    file.rewrite(b"[proxy]\nworkers = \"many\"\n");
    let socket = proxy.socket.to_str().expect("utf-8").to_string();
    let out = toa(&["reload", "--proxy-socket", &socket]);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(1), "{lines:?}");
    assert!(lines.len() == 1 && lines[0].contains("refused") && lines[0].contains("workers"), "{lines:?}");
    let line = proxy.proc.wait_for_line(Stream::Stderr, |l| l.contains("not applied"), READY);
    assert!(line.contains("workers") && line.contains("ERROR"), "{line}");
    assert_eq!(listeners(&proxy.stats()), [format!("{TOPO_LB4}:7601"), format!("{TOPO_LB4}:7602")]);
    assert_eq!(proxy.stats()["reload_failures"], 1);
    assert_eq!(connect_once(&topo, 7602), "closed", "still forwarding (the SHA server closes on a short header)");
    // A good file again: the listener removed before comes back.
    file.rewrite(config(&[(7601, &[9601]), (7602, &[9601]), (7603, &[9601])]).as_bytes());
    let out = toa(&["reload", "--proxy-socket", &socket]);
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration re-applied"));
    assert_eq!(connect_once(&topo, 7603), "closed", "forwarding on the address it had before");
    let stats = proxy.stats();
    assert_eq!((stats["reloads"].as_u64(), stats.get("last_reload_error")), (Some(2), None), "{stats}");
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn sigterm_lets_ten_downloads_finish_and_refuses_new_connections() {
    require_root();
    let topo = Topo::new();
    let _server = sha_server(&topo, 9611);
    let mut proxy = topo.proxy(&["--listen", &format!("{TOPO_LB4}:7611"), "--backend", &format!("{TOPO_SRV4}:9611")]);
    let downloads = paused_downloads(&topo, 7611, 10, 24 << 20);
    assert_eq!(proxy.counter(None, "connections_active"), 10);

    proxy.signal(libc::SIGTERM);
    let started = Instant::now();
    proxy.proc.wait_for_line(Stream::Stderr, |l| l.contains("draining"), READY);
    assert_eq!(connect_once(&topo, 7611), "refused", "no new connections while draining");
    assert!(proxy.proc.try_wait().is_none(), "the proxy waits for its connections");

    let (verdict, status) = finish_downloads(downloads);
    assert!(status.success(), "every download arrived intact: {verdict}");
    let exit = proxy.proc.wait_exit(READY);
    assert!(exit.success(), "{exit}");
    let took = started.elapsed();
    let lines = proxy.proc.lines_so_far(Stream::Stderr);
    let done = lines.iter().find(|l| l.contains("drained")).unwrap_or_else(|| panic!("no drain report: {lines:?}"));
    assert!(done.contains("finished=10") && done.contains("closed_at_deadline=0"), "{done}");
    assert!(took < Duration::from_secs(30), "done within the default drain timeout (took {took:?})");
    assert!(!proxy.socket.exists(), "the stats socket is removed on exit");
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn a_drain_timeout_shorter_than_the_transfer_closes_it_at_the_deadline_and_counts_it() {
    require_root();
    let topo = Topo::new();
    let _server = sha_server(&topo, 9621);
    let mut proxy = topo.proxy(&[
        "--listen",
        &format!("{TOPO_LB4}:7621"),
        "--backend",
        &format!("{TOPO_SRV4}:9621"),
        "--drain-timeout",
        "1s",
    ]);
    let downloads = paused_downloads(&topo, 7621, 2, 24 << 20);
    proxy.signal(libc::SIGTERM);
    let started = Instant::now();
    let exit = proxy.proc.wait_exit(READY);
    let took = started.elapsed();
    assert!(exit.success(), "{exit}");
    assert!(took >= Duration::from_secs(1), "kept the connections for the drain timeout (took {took:?})");
    let lines = proxy.proc.lines_so_far(Stream::Stderr);
    let done = lines.iter().find(|l| l.contains("drained")).unwrap_or_else(|| panic!("no drain report: {lines:?}"));
    assert!(done.contains("finished=0") && done.contains("closed_at_deadline=2"), "{done}");
    let (verdict, status) = finish_downloads(downloads);
    assert!(!status.success() && verdict.contains("ok=0"), "both transfers were cut: {verdict}");
}

/// A backend that holds every connection open, answering each byte with one
/// byte, until the client closes. argv: PORT.
const HOLD_SERVER: &str = r#"
import selectors, socket, sys
sel = selectors.DefaultSelector()
s = socket.socket(socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
s.setblocking(False)
sel.register(s, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is s:
            try:
                while True:
                    c, _ = s.accept()
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ)
            except BlockingIOError:
                pass
            continue
        c = key.fileobj
        try:
            d = c.recv(1)
        except OSError:
            d = b""
        if d:
            try: c.send(b"y")
            except OSError: pass
        else:
            sel.unregister(c); c.close()
"#;

/// N clients that connect at once, send a byte each, count the answers for
/// 3 s, print `holding answered=A reset=R`, hold their connections until
/// stdin closes, then close them and print `closed`. argv: HOST PORT N.
const MANY_CLIENTS: &str = r#"
import selectors, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sel = selectors.DefaultSelector()
socks = []
for i in range(n):
    c = socket.socket(socket.AF_INET)
    c.setblocking(False)
    c.connect_ex((host, port))
    sel.register(c, selectors.EVENT_WRITE)
    socks.append(c)
answered = reset = 0
deadline = time.time() + 3
while time.time() < deadline:
    for key, ev in sel.select(timeout=max(0, deadline - time.time())):
        c = key.fileobj
        if ev & selectors.EVENT_WRITE:
            try:
                c.send(b"x")
                sel.modify(c, selectors.EVENT_READ)
            except OSError:
                reset += 1; sel.unregister(c)
            continue
        try:
            d = c.recv(1)
        except OSError:
            d = b""
        if d: answered += 1
        else: reset += 1
        sel.unregister(c)
print(f"holding answered={answered} reset={reset}", flush=True)
sys.stdin.read()
for c in socks: c.close()
print("closed", flush=True)
"#;

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn out_of_descriptors_the_healthy_backend_is_not_blamed_and_the_proxy_recovers() {
    require_root();
    let topo = Topo::new();
    let _server = topo.server(&["python3", "-u", "-c", HOLD_SERVER, "9631"], Stream::Stdout, |l| l == "listening");
    let socket = std::env::temp_dir().join(format!("{}.sock", unique_name("toa-pxo", 40)));
    let proxy = topo.proxy_with(
        &["prlimit", "--nofile=1024:1024", "--"],
        &[
            "--stats-socket",
            socket.to_str().expect("utf-8"),
            "--listen",
            &format!("{TOPO_LB4}:7631"),
            "--backend",
            &format!("{TOPO_SRV4}:9631"),
            "--health-interval",
            "200ms",
            "--health-timeout",
            "200ms",
        ],
        socket.clone(),
    );
    let warnings_before = warn_lines(&proxy);
    let started = Instant::now();
    let mut clients = topo.client_with_stdin(&["python3", "-u", "-c", MANY_CLIENTS, TOPO_LB4, "7631", "1500"]);
    let holding = clients.wait_for_line(Stream::Stdout, |l| l.starts_with("holding "), READY);
    assert!(holding.ends_with(" reset=0"), "no client is accepted only to be reset: {holding}");
    let stats = proxy.stats();
    assert_eq!(stats["backend_connect_failures"], 0, "the backend is not blamed: {holding}: {stats}");
    let exhausted = stats["fd_exhausted"].as_u64().unwrap_or(0);
    assert!(exhausted > 0, "{holding}: {stats}");
    // Stay out of descriptors for a while (the accept retries count as they
    // go), long enough for several health checks.
    eventually("more accept retries", READY, || {
        proxy.counter(None, "fd_exhausted") >= exhausted + 20 && started.elapsed() > Duration::from_secs(4)
    });
    let stats = proxy.stats();
    let backend = &stats["listeners"][0]["backends"][0];
    assert_eq!(backend["healthy"], true, "{stats}");
    assert_eq!(backend["connect_failures"], 0, "the backend is not blamed: {stats}");
    assert_eq!(backend["check_failures"], 0, "nor are its health checks: {stats}");
    assert_eq!(stats["backend_connect_failures"], 0, "{stats}");
    let warnings = warn_lines(&proxy) - warnings_before;
    let secs = started.elapsed().as_secs_f64();
    assert!(
        (warnings as f64) <= secs + 2.0,
        "{warnings} warnings in {secs:.1} s: {:?}",
        proxy.proc.lines_so_far(Stream::Stderr).iter().rev().take(5).collect::<Vec<_>>()
    );

    eprintln!(
        "note: {holding}, fd_exhausted={}, {warnings} warnings in {secs:.1} s",
        stats["fd_exhausted"].as_u64().unwrap_or(0)
    );

    // Load drops: the proxy serves new clients again.
    clients.close_stdin();
    clients.wait_for_line(Stream::Stdout, |l| l == "closed", READY);
    clients.wait_exit(READY);
    eventually("the held connections to close", READY, || proxy.counter(None, "connections_active") == 0);
    let out = topo.client(&["python3", "-c", common::LOAD_CLIENT, TOPO_LB4, "7631", "20", "4"]);
    assert!(out.status.success(), "after the load: {}", String::from_utf8_lossy(&out.stdout));
    let stats = proxy.stats();
    assert_eq!(stats["listeners"][0]["backends"][0]["connect_failures"], 0, "{stats}");
    assert_eq!(stats["listeners"][0]["backends"][0]["healthy"], true, "{stats}");
}

fn warn_lines(proxy: &ProxyProc) -> usize {
    proxy.proc.lines_so_far(Stream::Stderr).iter().filter(|l| l.contains("WARN")).count()
}

/// Runs `toa proxy ARGS` in the forwarder namespace and cgroup; it must
/// refuse at once: exit code 2 and one line that contains `needle` (a proxy
/// that accepts is stopped after 10 s by `timeout`, exit code 124).
fn refused(topo: &Topo, args: &[&str], needle: &str) {
    let out = integration_test::process::run_in(
        Some(&topo.lb.path()),
        Some(topo.lb_cg.path()),
        &[&["timeout", "10", common::TOA, "proxy"], args].concat(),
    );
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {lines:?}");
    assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
    assert!(lines[0].contains(needle), "{args:?}: {lines:?}");
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn values_that_make_no_sense_are_refused_with_exit_code_2_and_the_key_named() {
    require_root();
    let topo = Topo::new();
    let listen = format!("{TOPO_LB4}:7641");
    let backend = format!("{TOPO_SRV4}:9641");
    let one = ["--listen", &listen, "--backend", &backend];
    for (extra, needle) in [
        (["--idle-timeout", "0"], "idle_timeout"),
        (["--idle-timeout", "10ms"], "idle_timeout"),
        (["--connect-timeout", "0"], "connect_timeout"),
        (["--health-interval", "1ms"], "health interval"),
        (["--health-timeout", "1us"], "health timeout"),
        (["--workers", "100000"], "workers"),
        (["--name", "a/b"], "name"),
    ] {
        refused(&topo, &[&one[..], &extra[..]].concat(), needle);
    }
    let file = |text: &str| TempFile::with("toml", text.as_bytes());
    let l = format!("[[proxy.listener]]\nlisten = \"{listen}\"\nbackends = [\"{backend}\"]\n");
    let many: Vec<String> = (0..1025).map(|i| format!("\"{TOPO_SRV4}:{}\"", 20000 + i)).collect();
    for (text, needle) in [
        (format!("[proxy]\nworkers = 100000\n{l}"), "line 2"),
        (format!("{l}idle_timeout = \"0s\"\n"), "line 4"),
        (format!("{l}health = {{ interval = \"1ms\" }}\n"), "line 4"),
        (format!("[[proxy.listener]]\nlisten = \"{listen}\"\nbackends = [{}]\n", many.join(", ")), "1024"),
    ] {
        let f = file(&text);
        refused(&topo, &["--config", f.path()], needle);
    }
    // Random bytes: a file that is not text is a bad file, not a failure.
    let noise: Vec<u8> = (0u32..4096).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let f = TempFile::with("toml", &noise);
    refused(&topo, &["--config", f.path()], f.path());
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn one_client_against_a_thousand_refusing_backends_makes_at_most_three_connects() {
    require_root();
    let topo = Topo::new();
    let backends: Vec<String> = (0..1000).map(|i| format!("\"{TOPO_SRV4}:{}\"", 20000 + i)).collect();
    let text = format!(
        "[[proxy.listener]]\nlisten = \"{TOPO_LB4}:7651\"\nbackends = [{}]\nhealth = {{ interval = \"0\" }}\n",
        backends.join(", ")
    );
    let file = TempFile::with("toml", text.as_bytes());
    let proxy = topo.proxy(&["--config", file.path()]);
    let out = topo.client(&["python3", "-c", common::REFUSED_CLIENT, TOPO_LB4, "7651"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let stats = proxy.stats();
    assert_eq!(stats["connections_refused"], 1, "{stats}");
    assert_eq!(stats["backend_connect_failures"], 3, "three attempts, not one per backend: {stats}");
    let per_backend: u64 = stats["listeners"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["connect_failures"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(per_backend, 3, "{stats}");
    let lines = proxy.proc.lines_so_far(Stream::Stderr).len();
    assert!(lines < 20, "a summary of the unreachable backends, not a line for each: {lines} lines");
}

/// The stats socket a proxy named `name` serves on by default.
fn default_socket(name: &str) -> PathBuf {
    Path::new("/run/toa").join(format!("proxy-{name}.sock"))
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn several_proxies_with_default_flags_serve_side_by_side_and_toa_stats_shows_each() {
    require_root();
    let topo = Topo::new();
    let _server = sha_server(&topo, 9661);
    let start = |port: u16| {
        let name = format!("{TOPO_LB4}-{port}");
        topo.proxy_with(
            &[],
            &["--listen", &format!("{TOPO_LB4}:{port}"), "--backend", &format!("{TOPO_SRV4}:9661")],
            default_socket(&name),
        )
    };
    let first = start(7661);
    let second = start(7662);
    for (proxy, port) in [(&first, 7661), (&second, 7662)] {
        assert!(proxy.socket.exists(), "{}", proxy.socket.display());
        let out = topo.client(&["python3", "-c", common::SHA_CLIENT, TOPO_LB4, &port.to_string(), "2", "1000"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let no_agent = format!("/sys/fs/bpf/{}", unique_name("toa-none", 40));
    let out = toa(&["stats", "--json", "--pin-dir", &no_agent]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for (proxy, port) in [(&first, 7661), (&second, 7662)] {
        let name = format!("{TOPO_LB4}-{port}");
        let found = v["proxies"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("{name} missing: {v}"));
        assert_eq!(found["pid"], proxy.proc.pid(), "{found}");
        assert_eq!(found["connections_total"], 2, "{found}");
        assert_eq!(found["socket"], proxy.socket.to_str().expect("utf-8"), "{found}");
    }
    let out = toa(&["stats", "--pin-dir", &no_agent]);
    let text = String::from_utf8_lossy(&out.stdout);
    for port in [7661, 7662] {
        assert!(text.contains(&format!("proxy {TOPO_LB4}-{port} (pid ")), "{text}");
        assert!(text.contains(&format!("listener {TOPO_LB4}:{port}")), "{text}");
    }
    // A third with the name of the first is refused, naming the way out.
    let mut cmd = command_in(Some(&topo.lb.path()), Some(topo.lb_cg.path()), common::TOA);
    cmd.args(["proxy", "--name", &format!("{TOPO_LB4}-7661"), "--listen", &format!("{TOPO_LB4}:7663")]);
    cmd.args(["--backend", &format!("{TOPO_SRV4}:9661")]);
    let out = cmd.output().expect("run toa proxy");
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{lines:?}");
    assert!(lines.len() == 1 && lines[0].contains("--name"), "{lines:?}");
    drop(first);
    drop(second);
    assert!(!default_socket(&format!("{TOPO_LB4}-7661")).exists());
}

/// `GET PATH` over HTTP/1.0 inside the forwarder's namespace; the body.
fn http_get(topo: &Topo, addr: &str, path: &str) -> String {
    let out = integration_test::process::run_in(
        Some(&topo.lb.path()),
        None,
        &["curl", "-sS", "--max-time", "5", &format!("http://{addr}{path}")],
    );
    assert!(out.status.success(), "curl {addr}{path}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample `name{labels}` in a Prometheus text body.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn the_prometheus_endpoint_has_the_counters_toa_stats_shows_per_listener_and_backend() {
    require_root();
    let topo = Topo::new();
    let _server = sha_server(&topo, 9671);
    let proxy = topo.proxy(&[
        "--listen",
        &format!("{TOPO_LB4}:7671"),
        "--backend",
        &format!("{TOPO_SRV4}:9671"),
        "--backend",
        &format!("{TOPO_SRV4}:9672"),
        "--metrics-listen",
        "127.0.0.1:9473",
    ]);
    let out = topo.client(&["python3", "-c", common::SHA_CLIENT, TOPO_LB4, "7671", "3", "10000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    eventually("connections to close", READY, || proxy.counter(None, "connections_active") == 0);
    let body = http_get(&topo, "127.0.0.1:9473", "/metrics");
    let stats = proxy.stats();
    let l = format!("listener=\"{TOPO_LB4}:7671\"");
    for name in
        ["connections_total", "connections_refused", "bytes_client_to_backend", "bytes_backend_to_client", "resets"]
    {
        let metric = format!("toa_proxy_{name}{}", if name.ends_with("_total") { "" } else { "_total" });
        assert!(body.contains(&format!("# HELP {metric} ")), "{metric}: {body}");
        assert!(body.contains(&format!("# TYPE {metric} counter\n")), "{metric}: {body}");
        let value = sample(&body, &format!("{metric}{{{l}}}")).unwrap_or_else(|| panic!("{metric}: {body}"));
        assert_eq!(value as u64, stats[name].as_u64().expect(name), "{metric}: {body}\n{stats}");
    }
    assert!(body.contains("# TYPE toa_proxy_connections_active gauge\n"), "{body}");
    let b = |port: u16| format!("{l},backend=\"{TOPO_SRV4}:{port}\"");
    assert_eq!(sample(&body, &format!("toa_proxy_backend_up{{{}}}", b(9671))), Some(1.0), "{body}");
    assert_eq!(sample(&body, &format!("toa_proxy_backend_up{{{}}}", b(9672))), Some(0.0), "{body}");
    let total = |port| sample(&body, &format!("toa_proxy_backend_connections_total{{{}}}", b(port)));
    assert_eq!(total(9671), Some(3.0), "{body}");
    assert_eq!(total(9672), Some(0.0), "{body}");
    assert!(body.contains("# TYPE toa_proxy_options_inserted_total counter\n"), "{body}");
    // Read at scrape time: a new connection shows in the next scrape.
    let out = topo.client(&["python3", "-c", ONE_BYTE_CLIENT, TOPO_LB4, "7671"]);
    assert!(out.status.success());
    eventually("the next scrape to count it", READY, || {
        sample(&http_get(&topo, "127.0.0.1:9473", "/metrics"), &format!("toa_proxy_connections_total{{{l}}}"))
            == Some(4.0)
    });
    assert_eq!(http_get(&topo, "127.0.0.1:9473", "/healthz"), "ok\n");
}
