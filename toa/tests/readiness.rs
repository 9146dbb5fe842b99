//! Readiness everyone can see: `toa status --wait` returns only once an
//! agent has every program attached (the counters are pinned earlier),
//! `/healthz` agrees, and a stale state left by a killed agent is not
//! believed. A listener opened right after the wait gets its SYN captured.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use common::{Lab, READY, TOA, attached_to, require_root, start_injector, toa};
use integration_test::{
    cgroup::Cgroup,
    netns::unique_name,
    process::{Stream, command_in, run_in, spawn},
};

/// A pin directory for an agent the test starts itself: whatever a failed
/// run left attached, and the agent's state file, go on drop.
struct Pins(String);

impl Pins {
    fn new() -> Pins {
        Pins(format!("/sys/fs/bpf/{}", unique_name("toa-test", 40)))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if std::path::Path::new(&self.0).exists() {
            let _ = toa(&["detach", "--pin-dir", &self.0]);
        }
        let dir = toa::sys::paths::PinDir::new(&self.0);
        let _ = std::fs::remove_file(toa::ops::readiness::state_file(&dir));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `GET path` on 127.0.0.1:port: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics listener");
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut text = String::new();
    c.read_to_string(&mut text).expect("read");
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn status_wait_returns_once_every_program_is_attached_and_healthz_agrees() {
    require_root();
    let cg = Cgroup::new("toa-srv");
    let guard = Pins::new();
    let pins = guard.0.clone();
    let port = free_port();
    let mut cmd = command_in(None, None, TOA);
    cmd.args(["agent", "--cgroup", &cg.path().to_string_lossy(), "--pin-dir", &pins]);
    cmd.args(["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let mut agent = spawn(cmd);
    let wait = toa(&["status", "--wait", "--timeout", "60s", "--pin-dir", &pins]);
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    // Returned: every program is attached already, and the status it prints says so.
    assert_eq!(attached_to(cg.path()).matches("toa_").count(), 4);
    assert!(String::from_utf8_lossy(&wait.stdout).starts_with("agent:    running (pid "));
    let (status, body) = http_get(port, "/healthz");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok\n"));
    assert!(agent.terminate().success());
    // No agent: a clear error after the timeout, exit 1.
    let wait = toa(&["status", "--wait", "--timeout", "300ms", "--pin-dir", &pins]);
    assert_eq!(wait.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wait.stderr);
    assert!(
        err.trim().starts_with(&format!(
            "toa: no toa agent attached on {pins} within 300ms (no agent holds the pin directory's lock)"
        )),
        "{err}"
    );
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn a_killed_agents_state_is_not_taken_for_readiness() {
    require_root();
    let cg = Cgroup::new("toa-srv");
    let agent = common::AgentProc::start(cg.path(), &[]);
    let pins = agent.pins.to_string_lossy().into_owned();
    let state = toa::ops::readiness::state_file(&toa::sys::paths::PinDir::new(&agent.pins));
    assert!(state.exists(), "{}", state.display());
    let mut agent = agent;
    // SIGKILL: no cleanup, the state file stays behind, the lock goes with the process.
    // SAFETY: plain syscall on our own child.
    assert_eq!(unsafe { libc::kill(agent.proc.pid(), libc::SIGKILL) }, 0);
    let _ = agent.proc.wait_exit(READY);
    assert!(state.exists(), "a killed agent leaves its state file");
    let wait = toa(&["status", "--wait", "--timeout", "200ms", "--pin-dir", &pins]);
    assert_eq!(wait.status.code(), Some(1), "a dead agent's state is not believed");
    let detach = toa(&["detach", "--pin-dir", &pins]);
    assert!(detach.status.success(), "{}", String::from_utf8_lossy(&detach.stderr));
    let _ = std::fs::remove_file(&state);
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn a_listener_opened_right_after_status_wait_gets_its_syn_captured() {
    require_root();
    let lab = Lab::new();
    // AgentProc::start returns after `toa status --wait`.
    let agent = common::AgentProc::start(lab.srv_cg.path(), &["--capture-syn", "--no-capture-data"]);
    let mut server = lab.peer_server("0.0.0.0", 9000, "each");
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", "203.0.113.7:4242", "--packets", "syn"]);
    let _ = lab.client(&["curl", "-s", "--max-time", "5", "http://192.0.2.2:9000/"]);
    let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("accept="), READY);
    assert_eq!(line, "accept=203.0.113.7:4242 getpeername=203.0.113.7:4242");
    assert_eq!(agent.counter("toa_from_syn"), 1);
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn healthz_is_503_until_an_agent_on_its_pin_dir_is_attached() {
    require_root();
    let cg = Cgroup::new("toa-srv");
    let guard = Pins::new();
    let pins = std::path::PathBuf::from(&guard.0);
    let metrics = toa::ops::metrics::MetricsServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        toa::sys::paths::PinDir::new(&pins),
    )
    .expect("metrics listener");
    let port = metrics.addr().port();
    assert_eq!(http_get(port, "/healthz"), ("HTTP/1.1 503 Service Unavailable".into(), "not attached yet\n".into()));
    let mut cmd = command_in(None, None, TOA);
    cmd.args(["agent", "--cgroup", &cg.path().to_string_lossy(), "--pin-dir", &pins.to_string_lossy()]);
    cmd.args(["--metrics-listen", ""]);
    let mut agent = spawn(cmd);
    let wait = toa(&["status", "--wait", "--timeout", "60s", "--pin-dir", &pins.to_string_lossy()]);
    assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));
    assert_eq!(http_get(port, "/healthz"), ("HTTP/1.1 200 OK".into(), "ok\n".into()));
    assert!(agent.terminate().success());
    assert_eq!(http_get(port, "/healthz").0, "HTTP/1.1 503 Service Unavailable", "stopped: not ready");
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn a_listener_that_predates_the_agent_gets_its_syn_captured_too() {
    require_root();
    let lab = Lab::new();
    // Listening before the agent exists: no TCP_LISTEN_CB will ever run for it.
    let mut server = lab.peer_server("0.0.0.0", 9000, "each");
    let mut agent = common::AgentProc::start(lab.srv_cg.path(), &["--capture-syn", "--no-capture-data"]);
    let line = agent.proc.wait_for_line(Stream::Stderr, |l| l.contains("TCP_SAVE_SYN set on the listeners"), READY);
    assert!(line.contains("listeners=1"), "{line}");
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", "203.0.113.7:4242", "--packets", "syn"]);
    let _ = lab.client(&["curl", "-s", "--max-time", "5", "http://192.0.2.2:9000/"]);
    let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("accept="), READY);
    assert_eq!(line, "accept=203.0.113.7:4242 getpeername=203.0.113.7:4242");
    assert_eq!(agent.counter("toa_from_syn"), 1);
    assert_eq!(agent.counter("toa_syn_unavailable"), 0);
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn with_the_units_capabilities_only_the_agents_own_namespace_is_walked() {
    require_root();
    let lab = Lab::new();
    // Two listeners before the agent: one in another network namespace, one in the agent's own.
    let mut elsewhere = lab.peer_server("0.0.0.0", 9000, "each");
    let port = free_port();
    let mut cmd = command_in(None, Some(lab.srv_cg.path()), "python3");
    cmd.args(["-u", "-c", common::PEER_SERVER, "127.0.0.1", &port.to_string(), "each"]);
    let mut here = spawn(cmd);
    here.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
    // The unit's capabilities: no CAP_SYS_ADMIN, so no setns into other namespaces.
    let guard = Pins::new();
    let pins = guard.0.clone();
    let mut cmd = command_in(None, None, "setpriv");
    cmd.args(["--inh-caps=-all", "--bounding-set=-all,+bpf,+perfmon,+net_admin", TOA, "agent"]);
    cmd.args(["--cgroup", &lab.srv_cg.path().to_string_lossy(), "--pin-dir", &pins, "--metrics-listen", ""]);
    cmd.args(["--capture-syn", "--no-capture-data"]);
    let mut agent = spawn(cmd);
    let wait = toa(&["status", "--wait", "--timeout", "60s", "--pin-dir", &pins]);
    assert!(
        wait.status.success(),
        "{}: {:?}",
        String::from_utf8_lossy(&wait.stderr),
        agent.lines_so_far(Stream::Stderr)
    );
    let line = agent.wait_for_line(Stream::Stderr, |l| l.contains("TCP_SAVE_SYN set on the listeners"), READY);
    assert!(line.contains("listeners=1") && line.contains("namespaces=1"), "{line}");
    agent.wait_for_line(Stream::Stderr, |l| l.contains("could not be opened (it takes CAP_SYS_PTRACE)"), READY);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", "203.0.113.7:4242", "--packets", "syn"]);
    let _ =
        run_in(None, Some(lab.cli_cg.path()), &["curl", "-s", "--max-time", "5", &format!("http://127.0.0.1:{port}/")]);
    let line = here.wait_for_line(Stream::Stdout, |l| l.starts_with("accept="), READY);
    assert_eq!(line, "accept=203.0.113.7:4242 getpeername=203.0.113.7:4242", "own namespace: walked");
    let _ = lab.client(&["curl", "-s", "--max-time", "5", "http://192.0.2.2:9000/"]);
    let line = elsewhere.wait_for_line(Stream::Stdout, |l| l.starts_with("accept="), READY);
    assert!(line.starts_with("accept=192.0.2.1:"), "another namespace, not entered: the SYN was not kept: {line}");
    assert!(agent.terminate().success());
}
