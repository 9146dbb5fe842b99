//! Operations and security: trusted forwarders, scope, restarts
//! without losing an address, detach, reload, persist, metrics, and the
//! output of every operator command (status, table, doctor, sniff, config,
//! completions, man).

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    time::Duration,
};

use common::{
    AgentProc, Lab, PEER_SERVER, PinsGuard, READY, TOA, attached_to, require_root, start_injector, toa, unique_pins,
};
use integration_test::{
    cgroup::Cgroup,
    netns::unique_name,
    process::{Spawned, Stream, command_in, run_in, spawn, spawn_with_stdin},
};
use serde_json::Value;
use toa_common::counters::COUNTERS;

const CLIENT: &str = "203.0.113.7";
const CLIENT_ADDR: &str = "203.0.113.7:4242";

/// A server that holds every connection on HOLD_PORT open and answers (then
/// closes) every connection on CHURN_PORT, tallying whether accept() and
/// getpeername() returned EXPECTED. On `check N` (stdin) it waits until N
/// connections are held, asks getpeername() again on each of them, and prints
/// `held=.. real=.. other=.. churn=.. churn_real=.. churn_other=..`.
/// argv: BIND HOLD_PORT CHURN_PORT EXPECTED.
const HOLD_SERVER: &str = r#"
import resource, socket, sys, threading, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
bind, hold_port, churn_port, expected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((bind, port))
    s.listen(4096)
    return s
lock = threading.Lock()
held = []
churn = {"total": 0, "real": 0, "other": 0, "examples": []}
def hold(s):
    while True:
        c, a = s.accept()
        with lock:
            held.append((c, a))
def answer(s):
    while True:
        c, a = s.accept()
        p = c.getpeername()
        with lock:
            churn["total"] += 1
            if a[0] == expected and p[0] == expected:
                churn["real"] += 1
            else:
                churn["other"] += 1
                if len(churn["examples"]) < 3:
                    churn["examples"].append(f"{a}/{p}")
        try:
            c.recv(1)
            c.sendall(b"y")
        except OSError:
            pass
        c.close()
threading.Thread(target=hold, args=(listener(hold_port),), daemon=True).start()
threading.Thread(target=answer, args=(listener(churn_port),), daemon=True).start()
print("listening", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd and cmd[0] == "check":
        want, deadline = int(cmd[1]), time.time() + 30
        while len(held) < want and time.time() < deadline:
            time.sleep(0.01)
        with lock:
            real = other = 0
            examples = []
            for c, a in held:
                try:
                    p = c.getpeername()
                except OSError as e:
                    p = (str(e), 0)
                if a[0] == expected and p[0] == expected:
                    real += 1
                else:
                    other += 1
                    examples.append(f"{a}/{p}")
            print(f"held={len(held)} real={real} other={other} churn={churn['total']} "
                  f"churn_real={churn['real']} churn_other={churn['other']} {examples[:3]} {churn['examples']}",
                  flush=True)
"#;

/// The client side of [`HOLD_SERVER`]. stdin commands: `open N` opens and
/// holds N connections (`opened N errors=E`); `churn start` starts making
/// short connections in a loop; `churn count` prints `churned=N errors=E`;
/// `churn stop` stops and prints the same. argv: HOST HOLD_PORT CHURN_PORT.
const HOLD_CLIENT: &str = r#"
import resource, socket, sys, threading
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, hold_port, churn_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
state = {"run": False, "n": 0, "errors": 0, "last": ""}
def churn():
    while state["run"]:
        try:
            c = socket.create_connection((host, churn_port), timeout=10)
            c.sendall(b"x")
            c.recv(1)
            c.close()
            state["n"] += 1
        except OSError as e:
            state["errors"] += 1
            state["last"] = str(e)
worker = None
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "open":
        errors = 0
        for _ in range(int(cmd[1])):
            try:
                held.append(socket.create_connection((host, hold_port), timeout=10))
            except OSError:
                errors += 1
        print(f"opened {len(held)} errors={errors}", flush=True)
    elif cmd[:2] == ["churn", "start"]:
        state["run"] = True
        worker = threading.Thread(target=churn)
        worker.start()
        print("churning", flush=True)
    elif cmd[:2] == ["churn", "count"]:
        print(f"churned={state['n']} errors={state['errors']}", flush=True)
    elif cmd[:2] == ["churn", "stop"]:
        state["run"] = False
        worker.join()
        print(f"churned={state['n']} errors={state['errors']} {state['last']}", flush=True)
"#;

/// Connects from SRC (bound) to HOST:PORT and waits for the server to close.
const BOUND_CLIENT: &str = r#"
import socket, sys
src, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = socket.socket()
c.bind((src, 0))
c.connect((host, port))
c.recv(1)
print(c.getsockname()[1], flush=True)
"#;

/// [`HOLD_SERVER`] in the server namespace and cgroup (ports 9000 and 9001,
/// expecting [`CLIENT`]), listening, and [`HOLD_CLIENT`] in the client's.
fn hold_server_and_client(lab: &Lab) -> (Spawned, Spawned) {
    let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), "python3");
    cmd.args(["-u", "-c", HOLD_SERVER, "0.0.0.0", "9000", "9001", CLIENT]);
    let mut server = spawn_with_stdin(cmd);
    server.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
    let mut cmd = command_in(Some(&lab.pair.cli.path()), Some(lab.cli_cg.path()), "python3");
    cmd.args(["-u", "-c", HOLD_CLIENT, "192.0.2.2", "9000", "9001"]);
    (server, spawn_with_stdin(cmd))
}

fn send(proc: &mut Spawned, line: &str) {
    writeln!(proc.stdin(), "{line}").and_then(|()| proc.stdin().flush()).expect("writing to a helper's stdin");
}

/// `key=value` from a helper's report line.
fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// Starts `toa agent ARGS` (no implied flags) and waits until it is ready.
fn spawn_agent(args: &[&str]) -> Spawned {
    let mut cmd = command_in(None, None, TOA);
    cmd.arg("agent").args(args);
    let mut agent = spawn(cmd);
    agent.wait_for_line(Stream::Stderr, |l| l.contains("agent ready"), READY);
    agent
}

fn kill9(proc: &mut Spawned) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(proc.pid(), libc::SIGKILL) };
    proc.wait_exit(READY);
}

/// The ids of the programs bpftool lists as attached to a cgroup.
fn attached_ids(cgroup: &Path) -> Vec<String> {
    attached_to(cgroup)
        .lines()
        .filter(|l| l.contains("toa_"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn an_option_from_an_untrusted_sender_is_ignored_and_counted_while_the_trusted_forwarder_is_honoured() {
    require_root();
    let lab = Lab::new();
    let addrs = lab.pair.add_cli_addresses(2);
    let (forwarder, stranger) = (addrs[0].to_string(), addrs[1].to_string());
    let agent = AgentProc::start(lab.srv_cg.path(), &["--trust", &format!("{forwarder}/32")]);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", CLIENT_ADDR]);
    let mut server = lab.peer_server("0.0.0.0", 9000, "each");
    for (src, want_host) in [(&forwarder, CLIENT), (&stranger, stranger.as_str())] {
        let out = lab.client(&["python3", "-c", BOUND_CLIENT, src, "192.0.2.2", "9000"]);
        assert!(out.status.success(), "client from {src}: {}", String::from_utf8_lossy(&out.stderr));
        let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("accept="), READY);
        let want = if want_host == CLIENT {
            CLIENT_ADDR.to_string()
        } else {
            format!("{src}:{}", String::from_utf8_lossy(&out.stdout).trim())
        };
        assert_eq!(line, format!("accept={want} getpeername={want}"), "connection from {src}");
    }
    assert_eq!(agent.counter("toa_untrusted"), 1, "the stranger's option is counted");
    assert_eq!(agent.counter("syn_recv_sock_toa"), 1, "only the forwarder's option is taken");
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn a_server_in_a_sibling_cgroup_is_untouched() {
    require_root();
    let lab = Lab::new();
    let sibling = Cgroup::new("toa-sib");
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", CLIENT_ADDR]);
    let mut scoped = lab.peer_server("0.0.0.0", 9000, "each");
    let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(sibling.path()), "python3");
    cmd.args(["-u", "-c", PEER_SERVER, "0.0.0.0", "9001", "each"]);
    let mut outside = spawn(cmd);
    outside.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
    for (server, port, want) in [(&mut scoped, "9000", CLIENT), (&mut outside, "9001", "192.0.2.1")] {
        let out = lab.client(&["python3", "-c", BOUND_CLIENT, "192.0.2.1", "192.0.2.2", port]);
        assert!(out.status.success());
        let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("accept="), READY);
        assert!(line.starts_with(&format!("accept={want}:")), "port {port}: {line}");
    }
    assert_eq!(attached_to(sibling.path()).trim(), "", "nothing attached to the sibling");
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn sigkill_and_restart_keep_every_live_connection_translated_and_leave_no_gap() {
    require_root();
    const N: usize = 1000;
    let lab = Lab::new();
    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    let pins_s = pins.to_string_lossy().into_owned();
    let srv_cg = lab.srv_cg.path().to_string_lossy().into_owned();
    let agent_args = ["--cgroup", &srv_cg, "--pin-dir", &pins_s, "--metrics-listen", ""];
    let mut first = spawn_agent(&agent_args);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", CLIENT_ADDR]);
    let (mut server, mut client) = hold_server_and_client(&lab);

    send(&mut client, &format!("open {N}"));
    let opened = client.wait_for_line(Stream::Stdout, |l| l.starts_with("opened "), READY);
    assert_eq!(opened, format!("opened {N} errors=0"));
    send(&mut server, &format!("check {N}"));
    let before = server.wait_for_line(Stream::Stdout, |l| l.starts_with("held="), READY);
    assert_eq!((field(&before, "held"), field(&before, "real")), (N as u64, N as u64), "{before}");

    // New connections keep coming while the agent is killed and restarted.
    send(&mut client, "churn start");
    client.wait_for_line(Stream::Stdout, |l| l == "churning", READY);
    kill9(&mut first);
    assert_eq!(attached_to(lab.srv_cg.path()).matches("toa_").count(), 4, "still attached after SIGKILL");
    send(&mut client, "churn count");
    let at_kill = field(&client.wait_for_line(Stream::Stdout, |l| l.starts_with("churned="), READY), "churned");
    let mut second = spawn_agent(&agent_args);
    send(&mut client, "churn count");
    let at_ready = field(&client.wait_for_line(Stream::Stdout, |l| l.starts_with("churned="), READY), "churned");
    send(&mut client, "churn stop");
    let stopped = client.wait_for_line(Stream::Stdout, |l| l.starts_with("churned="), READY);
    assert_eq!(field(&stopped, "errors"), 0, "{stopped}");

    send(&mut server, &format!("check {N}"));
    let after = server.wait_for_line(Stream::Stdout, |l| l.starts_with("held="), READY);
    eprintln!("after restart: {after} (churn: {at_kill} at SIGKILL, {at_ready} when the new agent was ready)");
    assert_eq!(field(&after, "held"), N as u64, "{after}");
    assert_eq!(field(&after, "other"), 0, "live connections that lost their real address: {after}");
    assert_eq!(field(&after, "churn_other"), 0, "untranslated connections around the restart: {after}");
    assert_eq!(field(&after, "churn"), field(&stopped, "churned"), "the server saw every connection: {after}");
    assert!(
        at_ready > at_kill,
        "no connection was made while no agent ran ({at_kill} at SIGKILL, {at_ready} at ready)"
    );
    assert_eq!(attached_to(lab.srv_cg.path()).matches("toa_").count(), 4, "replaced, not added to");
    assert!(second.terminate().success());
    assert_eq!(attached_to(lab.srv_cg.path()).trim(), "");
    assert!(!pins.exists());
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn persist_keeps_programs_after_sigterm_and_detach_then_leaves_nothing() {
    require_root();
    let cg = Cgroup::new("toa-srv");
    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    let pins_s = pins.to_string_lossy().into_owned();
    let mut agent = spawn_agent(&[
        "--cgroup",
        &cg.path().to_string_lossy(),
        "--pin-dir",
        &pins_s,
        "--metrics-listen",
        "",
        "--persist",
    ]);
    let ids = attached_ids(cg.path());
    assert_eq!(ids.len(), 4, "{}", attached_to(cg.path()));
    assert!(agent.terminate().success());
    assert_eq!(attached_ids(cg.path()), ids, "persist = true keeps the programs after SIGTERM");
    let status: Value = serde_json::from_slice(&toa(&["status", "--json", "--pin-dir", &pins_s]).stdout).expect("json");
    assert_eq!(status["agent_running"], false);
    assert_eq!(status["links"].as_array().map(Vec::len), Some(4), "{status}");

    let out = toa(&["detach", "--pin-dir", &pins_s]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("detached 4 links and removed the pins under {pins_s}")
    );
    assert_eq!(attached_to(cg.path()).trim(), "", "nothing attached after detach");
    assert!(!pins.exists(), "pins removed");
    let progs = run_in(None, None, &["bpftool", "prog", "show"]);
    let progs = String::from_utf8_lossy(&progs.stdout);
    for id in &ids {
        assert!(!progs.lines().any(|l| l.starts_with(&format!("{id}:"))), "program {id} still loaded:\n{progs}");
    }
    // A second detach has nothing to do.
    let again = toa(&["detach", "--pin-dir", &pins_s]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("detached 0 links"));
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn sighup_reapplies_a_changed_cgroup_list_and_leaves_nothing_stale() {
    require_root();
    let (a, b, c) = (Cgroup::new("toa-a"), Cgroup::new("toa-b"), Cgroup::new("toa-c"));
    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    let dir = std::env::temp_dir().join(unique_name("toa-conf", 40));
    std::fs::create_dir_all(&dir).expect("config dir");
    let file = dir.join("toa.toml");
    let write = |cgroups: &[&Cgroup]| {
        let list: Vec<String> = cgroups.iter().map(|c| format!("{:?}", c.path().to_string_lossy())).collect();
        std::fs::write(
            &file,
            format!("cgroups = [{}]\npin_dir = {:?}\nmetrics_listen = \"\"\n", list.join(", "), pins.to_string_lossy()),
        )
        .expect("writing the config");
    };
    write(&[&a, &b]);
    let mut agent = spawn_agent(&["--config", &file.to_string_lossy()]);
    let count = |cg: &Cgroup| attached_to(cg.path()).matches("toa_").count();
    assert_eq!((count(&a), count(&b), count(&c)), (4, 4, 0));
    let b_ids = attached_ids(b.path());
    write(&[&b, &c]);
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(agent.pid(), libc::SIGHUP) };
    agent.wait_for_line(Stream::Stderr, |l| l.contains("configuration re-applied"), READY);
    assert_eq!((count(&a), count(&b), count(&c)), (0, 4, 4), "a detached, c attached, b kept");
    assert_eq!(attached_ids(b.path()), b_ids, "b keeps the programs it had");
    let links = std::fs::read_dir(pins.join("links")).expect("links").count();
    assert_eq!(links, 8, "no stale link pins");
    // A broken file is refused and the previous configuration stays.
    std::fs::write(&file, "cgroups = 7\n").expect("writing");
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid(), libc::SIGHUP) };
    agent.wait_for_line(Stream::Stderr, |l| l.contains("configuration not applied"), READY);
    assert_eq!((count(&a), count(&b), count(&c)), (0, 4, 4));
    assert!(agent.terminate().success());
    assert_eq!((count(&a), count(&b), count(&c)), (0, 0, 0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn metrics_serve_prefixed_counters_and_healthz() {
    require_root();
    let cg = Cgroup::new("toa-srv");
    let mut agent = AgentProc::start(cg.path(), &["--metrics-listen", "127.0.0.1:0"]);
    let line = agent.proc.wait_for_line(Stream::Stderr, |l| l.contains("metrics on /metrics"), READY);
    let addr = line.split("addr=").nth(1).expect("addr= in the log line").trim().to_string();
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(metrics.contains("Content-Type: text/plain; version=0.0.4"), "{metrics}");
    for name in ["toa_syn_recv_sock_toa_total", "toa_getname_toa_ok_total", "toa_untrusted_total"] {
        assert!(metrics.contains(&format!("# TYPE {name} counter\n{name} 0\n")), "{name} in {metrics}");
    }
    // One sample per counter, prefixed once, and toa_up: nothing else, nothing missing.
    let body = metrics.split("\r\n\r\n").nth(1).expect("body");
    let samples: Vec<&str> =
        body.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_whitespace().next()).collect();
    let mut want: Vec<String> = COUNTERS
        .iter()
        .map(|(_, n)| if n.starts_with("toa_") { format!("{n}_total") } else { format!("toa_{n}_total") })
        .collect();
    want.push("toa_up".into());
    assert_eq!(samples, want, "{metrics}");
    let health = http_get(&addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200 OK") && health.ends_with("\r\n\r\nok\n"), "{health}");
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn status_table_and_sniff_show_a_live_translated_connection() {
    require_root();
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let pins = agent.pins.to_string_lossy().into_owned();
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", CLIENT_ADDR]);
    let srv_ns = lab.pair.srv.path();
    let srv_ns_s = srv_ns.to_string_lossy().into_owned();

    // status --json: the agent, its four links, the counters.
    let out = toa(&["status", "--json", "--pin-dir", &pins]);
    assert!(out.status.success());
    let status: Value = serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
    assert_eq!(status["agent_running"], true);
    assert_eq!(status["agent_pid"], agent.proc.pid());
    assert_eq!(status["links"].as_array().map(Vec::len), Some(4), "{status}");
    assert_eq!(status["kernel"]["btf"], true);
    assert!(status["counters"]["syn_recv_sock_toa"].is_u64());
    let text = String::from_utf8_lossy(&toa(&["status", "--pin-dir", &pins]).stdout).into_owned();
    assert!(text.starts_with(&format!("agent:    running (pid {})", agent.proc.pid())), "{text}");

    // sniff in the server's namespace while the injector writes the option.
    let mut sniff_cmd = command_in(None, None, TOA);
    let iface = lab.pair.srv_link.name.clone();
    sniff_cmd.args(["sniff", "--iface", &iface, "--netns", &srv_ns_s, "--count", "1", "--json", "--port", "9000"]);
    let mut sniff = spawn(sniff_cmd);
    sniff.wait_for_line(Stream::Stderr, |l| l.contains("capturing TCP segments"), READY);
    let mut text_cmd = command_in(None, None, TOA);
    text_cmd.args(["sniff", "-i", &iface, "--netns", &srv_ns_s, "-n", "1", "--port", "9000"]);
    let mut sniff_text = spawn(text_cmd);
    sniff_text.wait_for_line(Stream::Stderr, |l| l.contains("capturing TCP segments"), READY);

    // A connection held open.
    let (mut server, mut client) = hold_server_and_client(&lab);
    send(&mut client, "open 1");
    assert_eq!(client.wait_for_line(Stream::Stdout, |l| l.starts_with("opened"), READY), "opened 1 errors=0");
    send(&mut server, "check 1");
    let held = server.wait_for_line(Stream::Stdout, |l| l.starts_with("held="), READY);
    assert_eq!(field(&held, "real"), 1, "{held}");

    let line = sniff.wait_for_line(Stream::Stdout, |l| l.starts_with('{'), READY);
    let seen: Value = serde_json::from_str(&line).expect("sniff --json prints JSON lines");
    assert_eq!(seen["verdict"], "toa", "{seen}");
    assert_eq!(seen["client"], CLIENT_ADDR, "{seen}");
    assert_eq!((seen["kind"].as_u64(), seen["len"].as_u64()), (Some(254), Some(8)), "{seen}");
    assert_eq!(seen["direction"], "in");
    assert_eq!(seen["dst"], "192.0.2.2:9000");
    assert!(seen["src"].as_str().is_some_and(|s| s.starts_with("192.0.2.1:")), "{seen}");
    assert!(sniff.wait_exit(READY).success(), "--count 1 exits after one segment");
    let line = sniff_text.wait_for_line(Stream::Stdout, |l| l.contains(" > "), READY);
    assert!(
        line.contains(" in  192.0.2.1:") && line.ends_with(&format!("> 192.0.2.2:9000 [.] toa 254/8 {CLIENT_ADDR}")),
        "{line}"
    );

    // table: the live connection with its real client, in the server's namespace only.
    let out = toa(&["table", "--json", "--pin-dir", &pins, "--netns", &srv_ns_s]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Value = serde_json::from_slice(&out.stdout).expect("table --json prints JSON");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["real_client"], CLIENT_ADDR);
    assert_eq!(row["local"], "192.0.2.2:9000");
    assert!(row["peer"].as_str().is_some_and(|p| p.starts_with("192.0.2.1:")), "{row}");
    assert_eq!((row["kind"].as_u64(), row["packet"].as_str()), (Some(254), Some("ack")));
    assert_eq!(row["state"], "established");
    assert!(row["age_ms"].as_u64().is_some_and(|a| a < 60_000), "{row}");
    let text = String::from_utf8_lossy(&toa(&["table", "--pin-dir", &pins, "--netns", &srv_ns_s]).stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NETNS", "LOCAL", "TRANSPORT", "PEER", "REAL", "CLIENT", "KIND", "PACKET", "AGE"]
    );
    assert!(lines[1].contains("192.0.2.2:9000") && lines[1].contains(CLIENT_ADDR), "{text}");
    // The caller's own namespace has no such connection.
    let here: Value = serde_json::from_slice(&toa(&["table", "--json", "--pin-dir", &pins]).stdout).expect("json");
    assert!(here.as_array().is_some_and(|a| a.iter().all(|r| r["local"] != "192.0.2.2:9000")), "{here}");
    agent.stop();
}

#[test]
fn table_without_an_agent_says_so() {
    let pins = unique_pins();
    let out = toa(&["table", "--pin-dir", &pins.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no toa agent is running"), "{err}");
}

#[test]
#[ignore = "needs root: packet sockets"]
fn sniff_refuses_an_unknown_interface_with_code_2() {
    require_root();
    let out = toa(&["sniff", "--iface", "no-such-if0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no interface no-such-if0"));
}

#[test]
#[ignore = "needs root: BPF"]
fn doctor_passes_here_with_a_line_per_check() {
    require_root();
    let out = toa(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for check in [
        "privileges",
        "kernel",
        "BTF",
        "cgroup v2",
        "bpffs",
        "TOA kernel modules",
        "other programs on toa's hooks",
        "program toa_capture",
        "program toa_getpeername4",
        "program toa_getpeername6",
        "program toa_getsockopt",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with("[ok  ] ") && l.contains(&format!("] {check}: "))
                || l.starts_with("[WARN] ") && l.contains(&format!("] {check}: "))),
            "no passing line for {check}:\n{text}"
        );
    }
    let json: Value = serde_json::from_slice(&toa(&["doctor", "--json"]).stdout).expect("doctor --json");
    let checks = json.as_array().expect("doctor --json prints an array");
    assert_eq!(checks.len(), text.lines().filter(|l| l.starts_with('[')).count(), "a JSON entry per line: {json}");
    assert!(checks.iter().all(|c| c["verdict"] != "fail"), "{json}");
}

#[test]
fn config_default_parses_back_and_config_names_unknown_keys() {
    let out = toa(&["config", "--default"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text, include_str!("../../packaging/toa.toml"));
    let parsed: toml::Table = text.parse().expect("the default configuration is TOML");
    assert_eq!(parsed["metrics_listen"].as_str(), Some("127.0.0.1:9410"));
    assert_eq!(parsed["persist"].as_bool(), Some(false));
    let dir = std::env::temp_dir().join(unique_name("toa-conf", 40));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("toa.toml");
    std::fs::write(&file, &text).expect("write");
    let out = toa(&["config", "--config", &file.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("# in effect (from {})", file.display())));
    std::fs::write(&file, "persist = true\ntrusted_forwarders = []\n").expect("write");
    let out = toa(&["config", "--config", &file.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trusted_forwarders") && err.contains("line 2"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_and_man_page_cover_every_subcommand() {
    let subcommands = ["agent", "stats", "status", "table", "sniff", "doctor", "detach", "config", "inject"];
    let out = toa(&["completions", "bash"]);
    assert!(out.status.success());
    let bash = String::from_utf8_lossy(&out.stdout);
    assert!(bash.contains("complete -F _toa"), "a bash completion function");
    for sub in subcommands {
        assert!(bash.contains(&format!("toa__{sub})")) || bash.contains(&format!("toa,{sub})")), "{sub} in bash");
    }
    assert!(bash.contains("--iface") && bash.contains("--netns") && bash.contains("--all-netns"));
    let syntax = run_in(None, None, &["bash", "-n", "-c", &bash]);
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    for shell in ["zsh", "fish"] {
        let out = toa(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let out = toa(&["man"]);
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.contains(".TH toa 1"), "roff header in {man}");
    for sub in subcommands {
        assert!(man.contains(&format!("toa\\-{sub}(1)")), "{sub} listed in the man page:\n{man}");
    }
    for args in [&["table", "--help"][..], &["sniff", "--help"], &["doctor", "--help"], &["detach", "--help"]] {
        let out = toa(args);
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Usage: toa"), "{args:?}");
    }
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn debug_logging_shows_each_captured_connection() {
    require_root();
    let lab = Lab::new();
    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    // The agent watches its own network namespace: run it in the server's.
    let mut cmd = command_in(Some(&lab.pair.srv.path()), None, TOA);
    cmd.env("RUST_LOG", "debug").args(["agent", "--cgroup", &lab.srv_cg.path().to_string_lossy()]);
    cmd.args(["--pin-dir", &pins.to_string_lossy(), "--metrics-listen", ""]);
    let mut agent = spawn(cmd);
    agent.wait_for_line(Stream::Stderr, |l| l.contains("agent ready"), READY);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", CLIENT_ADDR]);
    let (server, mut client) = hold_server_and_client(&lab);
    send(&mut client, "open 1");
    assert_eq!(client.wait_for_line(Stream::Stdout, |l| l.starts_with("opened"), READY), "opened 1 errors=0");
    let line = agent.wait_for_line(Stream::Stderr, |l| l.contains("connection captured"), READY);
    assert!(line.contains("DEBUG") && line.contains(&format!("real_client={CLIENT_ADDR}")), "{line}");
    assert!(line.contains("local=192.0.2.2:9000") && line.contains("packet=\"ack\""), "{line}");
    // Both ends gone: the socket and its stored address are released.
    drop(client);
    drop(server);
    agent.wait_for_line(Stream::Stderr, |l| l.contains("connection gone"), READY);
    assert!(agent.terminate().success());
}
