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

/// The `toa` binary under test.
pub const TOA: &str = env!("CARGO_BIN_EXE_toa");

/// How long a process may take to say it is ready.
pub const READY: Duration = Duration::from_secs(60);

/// True when the test can run; prints why it is skipped otherwise.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root (BPF, namespaces, cgroups)");
        return false;
    }
    true
}

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
        if !extra.iter().any(|a| *a == "--metrics-listen") {
            cmd.args(["--metrics-listen", ""]);
        }
        cmd.args(extra);
        let mut proc = spawn(cmd);
        proc.wait_for_line(Stream::Stderr, |l| l.contains("agent ready"), READY);
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
