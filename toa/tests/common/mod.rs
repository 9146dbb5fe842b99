//! Shared pieces of the privileged end-to-end tests: the `toa` binary run as
//! agent and injector, servers and clients started inside namespaces and
//! cgroups. Everything is torn down on drop, also when a test panics.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use integration_test::{
    cgroup::Cgroup,
    netns::{Pair, unique_name},
    process::{Spawned, Stream, command_in, run_in, spawn},
};
use serde_json::Value;
// Cargo gives every test binary all of the package's dependencies, and each
// names a few; naming them all here keeps `unused_crate_dependencies` for the
// library and the binary, where it finds what nothing uses.
use {
    anyhow as _, aya as _, clap as _, clap_complete as _, clap_mangen as _, integration_test as _, libc as _,
    serde as _, serde_json as _, thiserror as _, toa as _, toa_client as _, toa_common as _, toml as _, tracing as _,
    tracing_subscriber as _, yaml_rust2 as _,
};

/// The `toa` binary under test.
pub const TOA: &str = env!("CARGO_BIN_EXE_toa");

/// How long a process may take to say it is ready.
pub const READY: Duration = Duration::from_secs(60);

/// Fails the calling test unless it runs as root. Every test that needs root
/// is also marked `#[ignore = "needs root: ..."]`: a plain `cargo test` lists it
/// as ignored with the reason, `./scripts/test` runs it (`--include-ignored`).
pub use integration_test::require_root;

/// A `toa agent` process with its own pin directory.
pub struct AgentProc {
    pub proc: Spawned,
    pub pins: PathBuf,
}

impl AgentProc {
    /// Starts an agent attached to `cgroup` with extra arguments, and waits until it is ready.
    pub fn start(cgroup: &Path, extra: &[&str]) -> AgentProc {
        let pins = PathBuf::from(format!("/sys/fs/bpf/{}", unique_name("toa-test", 40)));
        let mut cmd = command_in(None, None, TOA);
        cmd.arg("agent").arg("--cgroup").arg(cgroup).arg("--pin-dir").arg(&pins);
        if !extra.contains(&"--metrics-listen") {
            cmd.args(["--metrics-listen", ""]);
        }
        cmd.args(extra);
        let proc = spawn(cmd);
        // The documented readiness signal: every program attached, not merely the counters pinned.
        let pin_dir = pins.to_string_lossy().into_owned();
        let wait = toa(&["status", "--wait", "--timeout", &format!("{}s", READY.as_secs()), "--pin-dir", &pin_dir]);
        assert!(
            wait.status.success(),
            "the agent did not become ready: {}\nagent stderr: {:?}",
            String::from_utf8_lossy(&wait.stderr).trim(),
            proc.lines_so_far(Stream::Stderr)
        );
        AgentProc { proc, pins }
    }

    /// `toa stats --json` for this agent.
    pub fn stats(&self) -> Value {
        let out = toa(&["stats", "--json", "--pin-dir", &self.pins.to_string_lossy()]);
        assert!(out.status.success(), "toa stats failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("toa stats --json prints JSON")
    }

    /// One counter's total.
    pub fn counter(&self, name: &str) -> u64 {
        self.stats()[name].as_u64().unwrap_or_else(|| panic!("counter {name} missing"))
    }

    /// Stops the agent with SIGTERM and checks that it cleaned up after itself.
    pub fn stop(mut self) {
        let status = self.proc.terminate();
        assert!(status.success(), "agent exited with {status}: {:?}", self.proc.lines_so_far(Stream::Stderr));
        assert!(!self.pins.exists(), "agent left its pins at {}", self.pins.display());
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.proc.terminate();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// Runs `toa ARGS` to completion.
pub fn toa(args: &[&str]) -> Output {
    run_in(None, None, &[&[TOA], args].concat())
}

/// A `toa inject` process writing an option into the connections of `cgroup`.
pub fn start_injector(cgroup: &Path, args: &[&str]) -> Spawned {
    let mut cmd = command_in(None, None, TOA);
    cmd.arg("inject").arg("--cgroup").arg(cgroup).args(args);
    let mut proc = spawn(cmd);
    proc.wait_for_line(Stream::Stderr, |l| l.contains("inject ready"), READY);
    proc
}

/// A client and a server namespace joined by a veth pair, each with its own cgroup.
pub struct Lab {
    pub pair: Pair,
    pub cli_cg: Cgroup,
    pub srv_cg: Cgroup,
}

impl Lab {
    pub fn new() -> Lab {
        Lab { pair: Pair::new("toa"), cli_cg: Cgroup::new("toa-cli"), srv_cg: Cgroup::new("toa-srv") }
    }

    /// Starts `python3 -m http.server` in the server namespace and cgroup.
    pub fn http_server(&self, bind: &str, port: u16) -> Spawned {
        let mut cmd = command_in(Some(&self.pair.srv.path()), Some(self.srv_cg.path()), "python3");
        cmd.args(["-u", "-m", "http.server", "--bind", bind, &port.to_string()]);
        cmd.current_dir(std::env::temp_dir());
        let mut server = spawn(cmd);
        server.wait_for_line(Stream::Stdout, |l| l.starts_with("Serving HTTP"), READY);
        server
    }

    /// Starts the peer-reporting server in the server namespace and cgroup.
    pub fn peer_server(&self, bind: &str, port: u16, mode: &str) -> Spawned {
        let mut cmd = command_in(Some(&self.pair.srv.path()), Some(self.srv_cg.path()), "python3");
        cmd.args(["-u", "-c", PEER_SERVER, bind, &port.to_string(), mode]);
        let mut server = spawn(cmd);
        server.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        server
    }

    /// Runs a command in the client namespace and cgroup.
    pub fn client(&self, args: &[&str]) -> Output {
        run_in(Some(&self.pair.cli.path()), Some(self.cli_cg.path()), args)
    }

    /// Fetches `url` with curl from the client side; panics unless it succeeds.
    pub fn curl(&self, url: &str) {
        let out = self.client(&["curl", "-sS", "--max-time", "10", "-o", "/dev/null", url]);
        assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// An accept loop that reports what `accept()` and `getpeername()` return.
///
/// argv: BIND PORT MODE. MODE `each` prints `accept=H:P getpeername=H:P` per
/// connection; MODE `count/N/EXPECTED` handles N connections and prints one
/// line `total=N expected=E other=O` (EXPECTED is the host expected).
pub const PEER_SERVER: &str = r#"
import socket, sys
bind, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ':' in bind else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind((bind, port))
s.listen(4096)
print("listening", flush=True)
if mode == "each":
    while True:
        c, a = s.accept()
        p = c.getpeername()
        print(f"accept={a[0]}:{a[1]} getpeername={p[0]}:{p[1]}", flush=True)
        c.close()
else:
    _, n, expected = mode.split("/", 2)
    n = int(n)
    good = other = 0
    for _ in range(n):
        c, a = s.accept()
        p = c.getpeername()
        if a[0] == expected and p[0] == expected:
            good += 1
        else:
            other += 1
            if other <= 5:
                print(f"untranslated accept={a} getpeername={p}", flush=True)
        try:
            c.recv(1)
            c.sendall(b"y")
        except OSError:
            pass
        c.close()
    print(f"total={n} expected={good} other={other}", flush=True)
"#;

/// A client that makes N connections in P parallel threads (connect, 1 byte
/// each way, close). argv: HOST PORT N P.
pub const LOAD_CLIENT: &str = r#"
import socket, sys, threading
host, port, n, par = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
errors = []
def worker(k):
    for _ in range(k):
        try:
            c = socket.create_connection((host, port), timeout=10)
            c.sendall(b"x")
            c.recv(1)
            c.close()
        except OSError as e:
            errors.append(str(e))
threads = [threading.Thread(target=worker, args=(n // par + (1 if i < n % par else 0),)) for i in range(par)]
for t in threads: t.start()
for t in threads: t.join()
print(f"done errors={len(errors)} {errors[:3]}", flush=True)
sys.exit(1 if errors else 0)
"#;

/// Waits (polling, with a deadline) until `cond` holds; panics with `what` otherwise.
pub fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What bpftool says is attached to a cgroup (its own attachments only).
pub fn attached_to(cgroup: &Path) -> String {
    let out = run_in(None, None, &["bpftool", "cgroup", "show", &cgroup.to_string_lossy()]);
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The non-empty lines a process printed on stderr.
pub fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

// ---------------------------------------------------------------------------
// The forwarder's fixtures: a cli → lb → srv topology and a `toa proxy` process.

/// Client address (IPv4) in [`Topo`].
pub const TOPO_CLI4: &str = "10.71.1.2";
/// The proxy's address facing the client (IPv4).
pub const TOPO_LB4: &str = "10.71.1.1";
/// The proxy's address facing the backend (IPv4).
pub const TOPO_LB4_SRV: &str = "10.71.2.1";
/// Backend address (IPv4).
pub const TOPO_SRV4: &str = "10.71.2.2";
/// Client address (IPv6).
pub const TOPO_CLI6: &str = "2001:db8:71:1::2";
/// The proxy's address facing the client (IPv6).
pub const TOPO_LB6: &str = "2001:db8:71:1::1";
/// The proxy's address facing the backend (IPv6).
pub const TOPO_LB6_SRV: &str = "2001:db8:71:2::1";
/// Backend address (IPv6).
pub const TOPO_SRV6: &str = "2001:db8:71:2::2";
/// The backend's interface in the server namespace.
pub const TOPO_SRV_IF: &str = "eth-srv";

/// Three namespaces, client → forwarder → backend, on two subnets with no
/// route between client and backend (only the proxy joins them):
///
/// ```text
///  cli 10.71.1.2 / 2001:db8:71:1::2 ── lb 10.71.1.1, 10.71.2.1 ── srv 10.71.2.2 / 2001:db8:71:2::2
/// ```
///
/// The proxy runs in `lb` and the `lb_cg` cgroup, the agent on `srv_cg`.
pub struct Topo {
    pub cli: integration_test::netns::Netns,
    pub lb: integration_test::netns::Netns,
    pub srv: integration_test::netns::Netns,
    pub lb_cg: Cgroup,
    pub srv_cg: Cgroup,
}

impl Topo {
    pub fn new() -> Topo {
        use integration_test::netns::Netns;
        let cli = Netns::new("toa-px-cli");
        let lb = Netns::new("toa-px-lb");
        let srv = Netns::new("toa-px-srv");
        for ns in [&cli, &lb, &srv] {
            ns.write_sysctl("net/ipv6/conf/all/accept_dad", "0");
            ns.write_sysctl("net/ipv6/conf/default/accept_dad", "0");
            ns.write_sysctl("net/ipv4/ip_local_port_range", "1024 65000");
            ns.write_sysctl("net/ipv4/tcp_tw_reuse", "1");
        }
        lb.run(&["ip", "link", "add", "eth-lbc", "type", "veth", "peer", "name", "eth-cli", "netns", cli.name()]);
        lb.run(&["ip", "link", "add", "eth-lbs", "type", "veth", "peer", "name", TOPO_SRV_IF, "netns", srv.name()]);
        let conf = |ns: &Netns, ifname: &str, v4: &str, v6: &str| {
            ns.run_with_input(
                &["ip", "-batch", "-"],
                &format!("addr add {v4}/24 dev {ifname}\naddr add {v6}/64 dev {ifname} nodad\nlink set {ifname} up\n"),
            );
        };
        conf(&cli, "eth-cli", TOPO_CLI4, TOPO_CLI6);
        conf(&lb, "eth-lbc", TOPO_LB4, TOPO_LB6);
        conf(&lb, "eth-lbs", TOPO_LB4_SRV, TOPO_LB6_SRV);
        conf(&srv, TOPO_SRV_IF, TOPO_SRV4, TOPO_SRV6);
        let topo = Topo { cli, lb, srv, lb_cg: Cgroup::new("toa-px-lb"), srv_cg: Cgroup::new("toa-px-srv") };
        eventually("the veth links to come up", Duration::from_secs(10), || {
            [(&topo.cli, "eth-cli"), (&topo.lb, "eth-lbc"), (&topo.lb, "eth-lbs"), (&topo.srv, TOPO_SRV_IF)].iter().all(
                |(ns, ifname)| {
                    let link = ns.output(&["ip", "-o", "link", "show", "dev", ifname]);
                    let addrs = ns.output(&["ip", "-o", "-6", "addr", "show", "dev", ifname]);
                    link.contains(" state UP ") && !addrs.contains("tentative")
                },
            )
        });
        topo
    }

    /// Runs a command in the client namespace (no cgroup).
    pub fn client(&self, args: &[&str]) -> Output {
        run_in(Some(&self.cli.path()), None, args)
    }

    /// Starts a program in the server namespace and cgroup (after `toa agent`
    /// attached there, so it is translated) and waits for `ready` on `stream`.
    pub fn server(&self, args: &[&str], stream: Stream, ready: impl Fn(&str) -> bool) -> Spawned {
        let mut cmd = command_in(Some(&self.srv.path()), Some(self.srv_cg.path()), args[0]);
        cmd.args(&args[1..]).current_dir(std::env::temp_dir());
        let mut p = spawn(cmd);
        p.wait_for_line(stream, ready, READY);
        p
    }

    /// `python3 -m http.server` on the backend.
    pub fn http_server(&self, bind: &str, port: u16) -> Spawned {
        self.server(&["python3", "-u", "-m", "http.server", "--bind", bind, &port.to_string()], Stream::Stdout, |l| {
            l.starts_with("Serving HTTP")
        })
    }

    /// The peer-reporting server ([`PEER_SERVER`]) on the backend.
    pub fn peer_server(&self, bind: &str, port: u16, mode: &str) -> Spawned {
        self.server(&["python3", "-u", "-c", PEER_SERVER, bind, &port.to_string(), mode], Stream::Stdout, |l| {
            l == "listening"
        })
    }

    /// Starts `toa proxy ARGS` in the forwarder namespace and cgroup, its
    /// counters on a stats socket of its own in the temporary directory.
    pub fn proxy(&self, args: &[&str]) -> ProxyProc {
        let socket = std::env::temp_dir().join(format!("{}.sock", unique_name("toa-px", 40)));
        let socket_arg = socket.to_string_lossy().into_owned();
        self.proxy_with(&[], &[&["--stats-socket", &socket_arg], args].concat(), socket)
    }

    /// Starts `PREFIX... toa proxy ARGS` (a prefix such as `prlimit
    /// --nofile=N --` that execs the proxy) in the forwarder namespace and
    /// cgroup; `socket` is where it serves its counters (what ARGS say, or
    /// the path it derives by default).
    pub fn proxy_with(&self, prefix: &[&str], args: &[&str], socket: PathBuf) -> ProxyProc {
        let program = [prefix, &[TOA]].concat();
        let mut cmd = command_in(Some(&self.lb.path()), Some(self.lb_cg.path()), program[0]);
        cmd.args(&program[1..]).arg("proxy").args(args);
        cmd.env("RUST_LOG", std::env::var("TOA_TEST_PROXY_LOG").unwrap_or_else(|_| "info".into()));
        let mut proc = spawn(cmd);
        proc.wait_for_line(Stream::Stderr, |l| l.contains("proxy ready"), READY);
        ProxyProc { proc, socket }
    }

    /// Starts a program in the client namespace with stdin piped.
    pub fn client_with_stdin(&self, args: &[&str]) -> Spawned {
        let mut cmd = command_in(Some(&self.cli.path()), None, args[0]);
        cmd.args(&args[1..]);
        integration_test::process::spawn_with_stdin(cmd)
    }
}

/// A running `toa proxy`.
pub struct ProxyProc {
    pub proc: Spawned,
    pub socket: PathBuf,
}

impl ProxyProc {
    /// The JSON counters the proxy serves on its stats socket.
    pub fn stats(&self) -> Value {
        use std::io::Read as _;
        let mut conn = std::os::unix::net::UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket.display()));
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read stats");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats are not JSON ({e}): {text}"))
    }

    /// A counter of the first listener (or of the whole proxy with `listener == None`).
    pub fn counter(&self, listener: Option<usize>, name: &str) -> u64 {
        let v = self.stats();
        let obj = match listener {
            Some(i) => v["listeners"][i].clone(),
            None => v,
        };
        obj[name].as_u64().unwrap_or_else(|| panic!("counter {name} missing in {obj}"))
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the proxy.
    pub fn signal(&self, signal: i32) {
        assert!(self.proc.pid() > 0);
        // SAFETY: plain syscall; the child is not reaped while `proc` lives, so the pid is the proxy's.
        let rc = unsafe { libc::kill(self.proc.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}): {}", self.proc.pid(), std::io::Error::last_os_error());
    }

    /// Open descriptors of the proxy process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.pid())).map(|d| d.count()).unwrap_or(0)
    }

    /// Entries in the proxy's TOA_INJECT_TARGETS map (found through its
    /// descriptors: the hash map with 8-byte keys and 24-byte values).
    pub fn target_entries(&self) -> usize {
        let pid = self.proc.pid();
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo").flatten() {
            let Ok(info) = std::fs::read_to_string(entry.path()) else { continue };
            let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
            if field("map_type:").as_deref() == Some("1")
                && field("key_size:").as_deref() == Some("8")
                && field("value_size:").as_deref() == Some("24")
            {
                ids.extend(field("map_id:"));
            }
        }
        // One map (the proxy may hold more than one descriptor of it).
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 1, "expected one targets map among the proxy's descriptors, found {ids:?}");
        let out = run_in(None, None, &["bpftool", "map", "dump", "id", &ids[0], "-j"]);
        assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool prints JSON");
        v.as_array().map_or(0, Vec::len)
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.proc.terminate();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A client that connects, sends one byte and waits for an answer or the
/// close. argv: HOST PORT.
pub const ONE_BYTE_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"x")
try:
    s.recv(1)
except OSError:
    pass
"#;

/// Backend of the integrity test: per connection a 24-byte header
/// (upload size, download size, seed), the upload until EOF, then the
/// SHA-256 of the upload and the download.
pub const SHA_SERVER: &str = r#"
import hashlib, random, socket, struct, sys, threading
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(1024)
print("listening", flush=True)
def recv_exact(c, n):
    b = bytearray()
    while len(b) < n:
        k = c.recv(n - len(b))
        if not k: raise EOFError
        b += k
    return bytes(b)
def handle(c):
    try:
        up, down, seed = struct.unpack("!QQQ", recv_exact(c, 24))
        h, got = hashlib.sha256(), 0
        while True:
            k = c.recv(1 << 20)
            if not k: break
            h.update(k); got += len(k)
        c.sendall(h.digest() + struct.pack("!Q", got))
        c.sendall(random.Random(seed).randbytes(down))
    except Exception as e:
        print("server error", e, flush=True)
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

/// Client of the integrity test: N concurrent connections with random sizes.
pub const SHA_CLIENT: &str = r#"
import hashlib, random, socket, struct, sys, threading
host, port, n, maxsize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bad = []
def one(i):
    rnd = random.Random(i)
    up, down, seed = rnd.randrange(maxsize + 1), rnd.randrange(maxsize + 1), rnd.randrange(1 << 60)
    data = random.Random(seed ^ 0x5555).randbytes(up)
    try:
        c = socket.create_connection((host, port), timeout=120)
        c.sendall(struct.pack("!QQQ", up, down, seed) + data)
        c.shutdown(socket.SHUT_WR)
        h, got, head = hashlib.sha256(), 0, b""
        while True:
            k = c.recv(1 << 20)
            if not k: break
            if len(head) < 40:
                take = 40 - len(head)
                head += k[:take]; k = k[take:]
            h.update(k); got += len(k)
        c.close()
        if head[:32] != hashlib.sha256(data).digest() or struct.unpack("!Q", head[32:40])[0] != up:
            bad.append(f"{i}: upload of {up} bytes differs")
        if got != down or h.digest() != hashlib.sha256(random.Random(seed).randbytes(down)).digest():
            bad.append(f"{i}: download of {down} bytes differs (got {got})")
    except Exception as e:
        bad.append(f"{i}: {e!r}")
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(f"done {n} bad={len(bad)} {bad[:5]}", flush=True)
sys.exit(1 if bad else 0)
"#;

/// Connects, then expects EOF or a reset within 3 s.
pub const REFUSED_CLIENT: &str = r#"
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = c.recv(10)
    assert data == b"", data
except (ConnectionError, BrokenPipeError) as e:
    print("refused:", repr(e), flush=True)
print("refused", flush=True)
"#;

/// A fresh pin directory name under /sys/fs/bpf, unique to this test.
pub fn unique_pins() -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/{}", unique_name("toa-test", 40)))
}

/// Removes a receiver pin directory a test left, whatever it holds: toa's
/// programs detached (`toa detach`), then the directory itself.
pub struct PinsGuard(pub PathBuf);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = toa(&["detach", "--pin-dir", &self.0.to_string_lossy()]);
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A unique pin directory on bpffs for one `toa lb`, removed on drop (with
/// anything left in it).
#[derive(Debug)]
pub struct PinGuard(pub PathBuf);

impl PinGuard {
    pub fn new() -> PinGuard {
        PinGuard(PathBuf::from("/sys/fs/bpf").join(unique_name("toa-lb-test", 40)))
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `toa lb` with its own pin directory and stats socket.
pub struct LbProc {
    pub proc: Spawned,
    pub socket: PathBuf,
    pub pins: PinGuard,
}

impl LbProc {
    /// Starts `toa lb ARGS` in `ns` with the pin directory `pins` and waits until it is ready.
    pub fn start_in(ns: &integration_test::netns::Netns, args: &[&str], pins: PinGuard) -> LbProc {
        let socket = std::env::temp_dir().join(format!("{}.sock", unique_name("toa-lb", 40)));
        LbProc::start_with_socket(ns, args, pins, socket)
    }

    /// As [`LbProc::start_in`], with a given stats socket.
    pub fn start_with_socket(
        ns: &integration_test::netns::Netns,
        args: &[&str],
        pins: PinGuard,
        socket: PathBuf,
    ) -> LbProc {
        let mut cmd = command_in(Some(&ns.path()), None, TOA);
        cmd.arg("lb").args(args).arg("--stats-socket").arg(&socket).arg("--pin-dir").arg(&pins.0);
        cmd.env("RUST_LOG", "info");
        let mut proc = spawn(cmd);
        proc.wait_for_line(Stream::Stderr, |l| l.contains("lb ready"), READY);
        LbProc { proc, socket, pins }
    }

    pub fn stats(&self) -> Value {
        use std::io::Read as _;
        let mut conn = std::os::unix::net::UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket.display()));
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read stats");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats are not JSON ({e}): {text}"))
    }

    pub fn counter(&self, name: &str) -> u64 {
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

/// The names of the programs attached to the ingress of `ifname` in the
/// namespace `ns`, as the kernel reports them: TCX links (6.6 and later),
/// else the tc filters `tc filter show` lists.
pub fn ingress_programs(ns: &integration_test::netns::Netns, ifname: &str) -> Vec<String> {
    let path = ns.path();
    let name = ifname.to_string();
    let tcx = std::thread::spawn(move || {
        integration_test::netns::enter(&path);
        aya::programs::SchedClassifier::query_tcx(&name, aya::programs::TcAttachType::Ingress)
            .map(|(_, progs)| progs.iter().map(|p| p.name_as_str().unwrap_or("?").to_string()).collect::<Vec<_>>())
            .ok()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    if let Some(names) = tcx {
        return names;
    }
    // One line per filter; a BPF filter's line names its program twice
    // (the filter's name, then `name PROG`): take the first.
    let out = run_in(Some(&ns.path()), None, &["tc", "filter", "show", "dev", ifname, "ingress"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|w| w.starts_with("toa_lb_"))
                .map(|w| w.split(':').next().unwrap_or(w).to_string())
        })
        .collect()
}
