//! The agent against a careless operator or an attacker: a reload is all or
//! nothing, one agent per pin set however the directory is spelled, one toa
//! instance per cgroup, and `toa detach` removes only what toa created.

mod common;

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Output,
};

use common::{Lab, PinsGuard, READY, TOA, attached_to, require_root, start_injector, stderr_lines, toa, unique_pins};
use integration_test::{
    bpf::Program,
    cgroup::Cgroup,
    netns::unique_name,
    process::{Spawned, Stream, command_in, run_in, spawn, spawn_with_stdin},
};
use serde_json::Value;

/// The client address the injector writes; a connection shows it when its option was honoured.
const CLIENT: &str = "203.0.113.7";
const CLIENT_ADDR: &str = "203.0.113.7:4242";
/// The agent's limit on trusted prefixes.
const MAX_TRUSTED: usize = 4096;

/// A server listening on several ports that records, per port and in order,
/// whether each connection's `accept()` and `getpeername()` showed EXPECTED
/// (`T`) or not (`N`). stdin `report` prints one JSON object port → letters.
/// argv: BIND EXPECTED PORT...
const TALLY_SERVER: &str = r#"
import json, socket, sys, threading
bind, expected, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
lock = threading.Lock()
seen = {p: [] for p in ports}
def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((bind, port))
    s.listen(4096)
    while True:
        c, a = s.accept()
        p = c.getpeername()
        with lock:
            seen[port].append("T" if a[0] == expected and p[0] == expected else "N")
        try:
            c.recv(1)
            c.sendall(b"y")
        except OSError:
            pass
        c.close()
for p in ports:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("listening", flush=True)
for line in sys.stdin:
    if line.strip() == "report":
        with lock:
            print(json.dumps({str(p): "".join(v) for p, v in seen.items()}), flush=True)
"#;

/// Connections from chosen source addresses: argv HOST SRC:PORT...; stdin
/// `once` makes one connection per pair in order (`once errors=E`), `start`
/// loops over every pair in its own thread until `stop` (`stopped n=N errors=E`).
const SOURCE_CLIENT: &str = r#"
import socket, sys, threading
host, pairs = sys.argv[1], [(p.rsplit(":", 1)[0], int(p.rsplit(":", 1)[1])) for p in sys.argv[2:]]
state = {"run": False, "n": 0, "errors": 0, "last": ""}
def connect(src, port):
    try:
        c = socket.socket()
        c.bind((src, 0))
        c.settimeout(10)
        c.connect((host, port))
        c.sendall(b"x")
        c.recv(1)
        c.close()
        state["n"] += 1
    except OSError as e:
        state["errors"] += 1
        state["last"] = str(e)
def loop(src, port):
    while state["run"]:
        connect(src, port)
threads = []
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "once":
        before = state["errors"]
        for src, port in pairs:
            connect(src, port)
        print(f"once errors={state['errors'] - before} {state['last']}", flush=True)
    elif cmd == "start":
        state["run"] = True
        threads = [threading.Thread(target=loop, args=pair) for pair in pairs]
        for t in threads:
            t.start()
        print("started", flush=True)
    elif cmd == "stop":
        state["run"] = False
        for t in threads:
            t.join()
        print(f"stopped n={state['n']} errors={state['errors']} {state['last']}", flush=True)
"#;

fn send(proc: &mut Spawned, line: &str) {
    writeln!(proc.stdin(), "{line}").and_then(|()| proc.stdin().flush()).expect("writing to a helper's stdin");
}

/// A directory under the temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique_name("toa-sec", 40));
        fs::create_dir_all(&dir).expect("temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Starts `toa agent ARGS` and waits until it is ready.
fn spawn_agent(args: &[&str]) -> Spawned {
    let mut cmd = command_in(None, None, TOA);
    cmd.arg("agent").args(args);
    let mut agent = spawn(cmd);
    agent.wait_for_line(Stream::Stderr, |l| l.contains("agent ready"), READY);
    agent
}

/// Runs `toa agent ARGS` that is expected to refuse to start: returns how it
/// exited; fails as soon as it says it is ready instead.
fn refused_agent(args: &[&str]) -> Output {
    let mut cmd = command_in(None, None, TOA);
    cmd.arg("agent").args(args);
    let mut agent = spawn(cmd);
    let deadline = std::time::Instant::now() + READY;
    let status = loop {
        if let Some(status) = agent.try_wait() {
            break status;
        }
        let lines = agent.lines_so_far(Stream::Stderr);
        assert!(!lines.iter().any(|l| l.contains("agent ready")), "toa agent {args:?} started: {lines:?}");
        assert!(std::time::Instant::now() < deadline, "toa agent {args:?} neither refused nor started: {lines:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stderr = agent.wait_for_end(Stream::Stderr, READY).join("\n").into_bytes();
    Output { status, stdout: Vec::new(), stderr }
}

fn agent_args<'a>(cgroup: &'a str, pins: &'a str) -> Vec<&'a str> {
    vec!["--cgroup", cgroup, "--pin-dir", pins, "--metrics-listen", ""]
}

fn sighup(agent: &Spawned) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(agent.pid(), libc::SIGHUP) };
}

fn kill9(agent: &mut Spawned) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(agent.pid(), libc::SIGKILL) };
    agent.wait_exit(READY);
}

/// The ids of the toa programs bpftool lists as attached to a cgroup.
fn toa_ids(cgroup: &Path) -> Vec<String> {
    attached_to(cgroup)
        .lines()
        .filter(|l| l.contains("toa_"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// One counter's total, from `toa stats --json`.
fn counter(pins: &Path, name: &str) -> u64 {
    let out = toa(&["stats", "--json", "--pin-dir", &pins.to_string_lossy()]);
    assert!(out.status.success(), "toa stats: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("toa stats --json prints JSON");
    v[name].as_u64().unwrap_or_else(|| panic!("counter {name} missing in {v}"))
}

/// `bpftool -j ARGS`, parsed.
fn bpftool_json(args: &[&str]) -> Value {
    let out = run_in(None, None, &[&["bpftool", "-j"], args].concat());
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bpftool {args:?} JSON: {e}"))
}

/// The bytes of a key or value as bpftool dumps them (`["0x01", ...]`).
fn dumped_bytes(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a byte array: {v}"))
        .iter()
        .map(|b| {
            let s = b.as_str().unwrap_or_else(|| panic!("not a hex byte: {b}"));
            u8::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{s}: {e}"))
        })
        .collect()
}

/// Every settings map of a pin directory (all but the counters and the
/// stored addresses), as bpftool dumps it: name → entries.
fn settings_dump(pins: &Path) -> std::collections::BTreeMap<String, Value> {
    let mut maps = std::collections::BTreeMap::new();
    for entry in fs::read_dir(pins.join("maps")).expect("the maps directory") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().expect("a name").to_string_lossy().into_owned();
        if name != "TOA_COUNTERS" && name != "TOA_PEERS" {
            maps.insert(name, bpftool_json(&["map", "dump", "pinned", &path.to_string_lossy()]));
        }
    }
    assert!(maps.contains_key("TOA_TRUSTED"), "{maps:?}");
    maps
}

/// The settings slot in force, read from the pinned map that selects it.
fn active_slot(pins: &Path) -> u8 {
    let dump = bpftool_json(&["map", "dump", "pinned", &pins.join("maps/TOA_ACTIVE").to_string_lossy()]);
    let value = dumped_bytes(&dump[0]["value"]);
    u8::try_from(u32::from_le_bytes(value[..4].try_into().expect("4 bytes"))).expect("slot 0 or 1")
}

/// Every entry of the pinned trust trie as (slot, prefix in CIDR notation):
/// the key is the prefix length (u32, host order) and the data: the slot
/// byte, then the IPv6 (or IPv4-mapped) address.
fn trusted_entries(pins: &Path) -> BTreeSet<(u8, String)> {
    let dump = bpftool_json(&["map", "dump", "pinned", &pins.join("maps/TOA_TRUSTED").to_string_lossy()]);
    dump.as_array()
        .expect("a list of entries")
        .iter()
        .map(|entry| {
            let key = dumped_bytes(&entry["key"]);
            assert_eq!(key.len(), 4 + 1 + 16, "key layout: prefix length, slot, address: {key:?}");
            let bits = u32::from_le_bytes(key[..4].try_into().expect("4 bytes")) - 8;
            let addr: [u8; 16] = key[5..21].try_into().expect("16 bytes");
            let v6 = std::net::Ipv6Addr::from(addr);
            let prefix = match v6.to_ipv4_mapped() {
                Some(v4) if bits >= 96 => format!("{v4}/{}", bits - 96),
                _ => format!("{v6}/{bits}"),
            };
            (key[4], prefix)
        })
        .collect()
}

/// `n` prefixes of their own (IPv4 /32s and IPv6 /64s under `tag`) after `first`.
fn prefixes(first: &str, tag: u8, n: usize) -> Vec<String> {
    let mut out = vec![first.to_string()];
    for i in 0..n {
        out.push(if i % 3 == 2 {
            format!("2001:db8:{tag:x}:{i:x}::/64")
        } else {
            format!("10.{tag}.{}.{}/32", i / 250, i % 250)
        });
    }
    out
}

/// A configuration file for the agent.
fn agent_toml(pins: &Path, cgroups: &[&Path], trusted: &[String]) -> String {
    let list = |items: Vec<String>| items.iter().map(|i| format!("{i:?}")).collect::<Vec<_>>().join(", ");
    format!(
        "pin_dir = {:?}\nmetrics_listen = \"\"\ncgroups = [{}]\ntrusted = [{}]\n",
        pins.to_string_lossy(),
        list(cgroups.iter().map(|c| c.to_string_lossy().into_owned()).collect()),
        list(trusted.to_vec()),
    )
}

/// The forged-option lab: a server on ports 9001–9003 counting honoured
/// options, a client making connections from three extra source addresses,
/// and the injector writing [`CLIENT_ADDR`] into every connection.
struct Forgery {
    server: Spawned,
    client: Spawned,
    _inject: Spawned,
    /// The three source addresses.
    senders: [String; 3],
}

impl Forgery {
    fn new(lab: &Lab) -> Forgery {
        let senders: Vec<String> = lab.pair.add_cli_addresses(3).iter().map(|a| a.to_string()).collect();
        let inject = start_injector(lab.cli_cg.path(), &["--addr", CLIENT_ADDR]);
        let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), "python3");
        cmd.args(["-u", "-c", TALLY_SERVER, "0.0.0.0", CLIENT, "9001", "9002", "9003"]);
        let mut server = spawn_with_stdin(cmd);
        server.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        let pairs: Vec<String> = senders.iter().zip(9001..).map(|(s, p)| format!("{s}:{p}")).collect();
        let mut cmd = command_in(Some(&lab.pair.cli.path()), Some(lab.cli_cg.path()), "python3");
        cmd.args(["-u", "-c", SOURCE_CLIENT, "192.0.2.2"]).args(&pairs);
        let client = spawn_with_stdin(cmd);
        Forgery { server, client, _inject: inject, senders: senders.try_into().expect("three senders") }
    }

    /// One connection from each sender, then the letters each port has seen so far.
    fn once(&mut self) -> [String; 3] {
        send(&mut self.client, "once");
        let line = self.client.wait_for_line(Stream::Stdout, |l| l.starts_with("once "), READY);
        assert!(line.starts_with("once errors=0"), "{line}");
        self.report()
    }

    fn report(&mut self) -> [String; 3] {
        send(&mut self.server, "report");
        let line = self.server.wait_for_line(Stream::Stdout, |l| l.starts_with('{'), READY);
        let v: Value = serde_json::from_str(&line).expect("the server's report is JSON");
        ["9001", "9002", "9003"].map(|p| v[p].as_str().expect("letters").to_string())
    }
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn a_reload_that_fails_part_way_leaves_the_previous_trust_byte_for_byte() {
    require_root();
    let lab = Lab::new();
    let mut forged = Forgery::new(&lab);
    let [in_a, in_b, _in_neither] = forged.senders.clone();
    let a = prefixes(&format!("{in_a}/32"), 1, 3000);
    let b = prefixes(&format!("{in_b}/32"), 2, 3000);
    assert_eq!((a.len(), b.len()), (3001, 3001));
    // A cgroup below an exclusive program: attaching toa there fails, after
    // the new trusted set has been written beside the old one.
    let parent = Cgroup::new("toa-excl");
    let blocked = parent.path().join("blocked");
    fs::create_dir(&blocked).expect("child cgroup");
    let _exclusive = Program::sock_ops("t_exclusive").attach_exclusive(parent.path());

    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    let conf = TempDir::new();
    let file = conf.0.join("toa.toml");
    fs::write(&file, agent_toml(&pins, &[lab.srv_cg.path()], &a)).expect("config A");
    let mut agent = spawn_agent(&["--config", &file.to_string_lossy()]);
    assert_eq!(forged.once(), ["T", "N", "N"], "A in force: only its sender is honoured");
    let untrusted = counter(&pins, "toa_untrusted");
    let ids = toa_ids(lab.srv_cg.path());
    let before = settings_dump(&pins);

    fs::write(&file, agent_toml(&pins, &[lab.srv_cg.path(), &blocked], &b)).expect("config B");
    sighup(&agent);
    let line = agent.wait_for_line(Stream::Stderr, |l| l.contains("configuration not applied"), READY);
    assert_eq!(forged.once(), ["TT", "NN", "NN"], "A stays in force: B's sender and the stranger are refused");
    assert_eq!(counter(&pins, "toa_untrusted"), untrusted + 2, "both forged options are counted");
    assert!(settings_dump(&pins) == before, "the settings maps are byte for byte what they were");
    let slot = active_slot(&pins);
    let a_entries: BTreeSet<(u8, String)> = a.iter().map(|p| (slot, p.clone())).collect();
    assert_eq!(trusted_entries(&pins), a_entries, "the trie holds exactly A, nothing of B");
    assert_eq!(toa_ids(lab.srv_cg.path()), ids, "the programs in force were not replaced");
    assert_eq!(toa_ids(&blocked), Vec::<String>::new(), "nothing attached to the new cgroup");
    assert!(line.contains(&blocked.to_string_lossy().into_owned()), "the error names the cgroup: {line}");

    // Over the limit: refused before anything is written, the old state kept.
    let too_many = prefixes(&format!("{in_b}/32"), 3, MAX_TRUSTED);
    fs::write(&file, agent_toml(&pins, &[lab.srv_cg.path()], &too_many)).expect("config with 4,097 prefixes");
    sighup(&agent);
    let line = agent.wait_for_line(Stream::Stderr, |l| l.contains("configuration not applied"), READY);
    assert!(line.contains("trusted: 4,097 prefixes, at most 4,096"), "{line}");
    assert_eq!(forged.once(), ["TTT", "NNN", "NNN"]);
    assert!(settings_dump(&pins) == before, "the settings maps are still what they were");
    assert!(agent.terminate().success());
    assert!(!pins.exists(), "a clean stop removes the pins");
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn a_successful_reload_switches_the_trusted_set_at_once() {
    require_root();
    let lab = Lab::new();
    let mut forged = Forgery::new(&lab);
    let [in_a, in_b, _in_neither] = forged.senders.clone();
    let a = prefixes(&format!("{in_a}/32"), 1, 3000);
    let b = prefixes(&format!("{in_b}/32"), 2, 3000);
    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    let conf = TempDir::new();
    let file = conf.0.join("toa.toml");
    fs::write(&file, agent_toml(&pins, &[lab.srv_cg.path()], &a)).expect("config A");
    let mut agent = spawn_agent(&["--config", &file.to_string_lossy()]);
    assert_eq!(forged.once(), ["T", "N", "N"]);

    // Connections from all three senders keep coming while B replaces A.
    send(&mut forged.client, "start");
    forged.client.wait_for_line(Stream::Stdout, |l| l == "started", READY);
    fs::write(&file, agent_toml(&pins, &[lab.srv_cg.path()], &b)).expect("config B");
    sighup(&agent);
    let line = agent.wait_for_line(Stream::Stderr, |l| l.contains("configuration "), READY);
    assert!(line.contains("configuration re-applied"), "{line}");
    let [_, _, during] = forged.report();
    send(&mut forged.client, "stop");
    let stopped = forged.client.wait_for_line(Stream::Stdout, |l| l.starts_with("stopped "), READY);
    assert!(stopped.contains(" errors=0 "), "{stopped}");
    let [from_a, from_b, from_neither] = forged.once();
    eprintln!("during the reload: {} connections from each sender ({stopped})", during.len());
    assert!(during.len() > 1, "connections were made during the reload: {during}");
    assert!(!from_neither.contains('T'), "a sender in neither set was honoured: {from_neither}");
    // Each sender's connections, in order: A's honoured until the switch and
    // never after it, B's the other way round.
    let switched = |letters: &str, before: char, after: char| {
        let first_after = letters.find(after).unwrap_or(letters.len());
        letters[..first_after].chars().all(|c| c == before) && letters[first_after..].chars().all(|c| c == after)
    };
    assert!(switched(&from_a, 'T', 'N') && from_a.ends_with('N'), "A's sender: {from_a}");
    assert!(switched(&from_b, 'N', 'T') && from_b.ends_with('T'), "B's sender: {from_b}");
    let slot = active_slot(&pins);
    let in_force: BTreeSet<String> =
        trusted_entries(&pins).into_iter().filter(|(s, _)| *s == slot).map(|(_, p)| p).collect();
    assert_eq!(in_force, b.iter().cloned().collect::<BTreeSet<_>>(), "B in force, all of it");
    assert!(agent.terminate().success());
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn more_trusted_prefixes_than_fit_are_refused_at_start_with_code_2_and_nothing_attached() {
    require_root();
    let cg = Cgroup::new("toa-sec");
    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    let conf = TempDir::new();
    let file = conf.0.join("toa.toml");
    let too_many = prefixes("192.0.2.1/32", 4, MAX_TRUSTED);
    fs::write(&file, agent_toml(&pins, &[cg.path()], &too_many)).expect("config");
    let out = refused_agent(&["--config", &file.to_string_lossy()]);
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("trusted: 4,097 prefixes, at most 4,096"), "{lines:?}");
    assert!(lines[0].contains(&file.to_string_lossy().into_owned()), "the file is named: {lines:?}");
    assert_eq!(attached_to(cg.path()).trim(), "", "nothing attached");
    assert!(!pins.exists(), "nothing pinned");
    // The same limit for prefixes given as flags.
    let cg_s = cg.path().to_string_lossy().into_owned();
    let pins_s = pins.to_string_lossy().into_owned();
    let mut args = vec!["--cgroup".to_string(), cg_s, "--pin-dir".into(), pins_s];
    args.extend(["--metrics-listen".into(), String::new()]);
    for p in &too_many {
        args.extend(["--trust".to_string(), p.clone()]);
    }
    let out = refused_agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2), "{:?}", stderr_lines(&out));
    assert!(stderr_lines(&out)[0].contains("trusted: 4,097 prefixes, at most 4,096"), "{:?}", stderr_lines(&out));
    assert_eq!(attached_to(cg.path()).trim(), "");
    assert!(!pins.exists());
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn a_second_agent_is_refused_however_the_pin_dir_is_spelled() {
    require_root();
    let (cg1, cg2) = (Cgroup::new("toa-sec"), Cgroup::new("toa-sec"));
    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    let pins_s = pins.to_string_lossy().into_owned();
    let cg1_s = cg1.path().to_string_lossy().into_owned();
    let cg2_s = cg2.path().to_string_lossy().into_owned();
    let mut first = spawn_agent(&agent_args(&cg1_s, &pins_s));
    let name = pins.file_name().expect("a name").to_string_lossy().into_owned();
    let tmp = TempDir::new();
    let link = tmp.0.join("pins");
    std::os::unix::fs::symlink(&pins, &link).expect("a symlink to the pin directory");
    let spellings = [
        format!("/sys/fs/bpf/./{name}"),
        format!("{pins_s}/"),
        format!("//sys/fs/bpf//{name}"),
        format!("{pins_s}/links/.."),
        link.to_string_lossy().into_owned(),
    ];
    for spelled in &spellings {
        let out = refused_agent(&agent_args(&cg2_s, spelled));
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(1), "{spelled}: {lines:?}");
        assert_eq!(lines.len(), 1, "{spelled}: {lines:?}");
        assert!(lines[0].contains("another toa agent is already running"), "{spelled}: {lines:?}");
        assert!(lines[0].contains(&format!("pid {}", first.pid())), "{spelled}: {lines:?}");
        assert!(lines[0].contains(&pins_s), "the canonical pin directory is named: {lines:?}");
        assert_eq!(attached_to(cg2.path()).trim(), "", "{spelled}: nothing attached by the refused agent");
        // Every command finds the running agent under any spelling.
        let status: Value =
            serde_json::from_slice(&toa(&["status", "--json", "--pin-dir", spelled]).stdout).expect("status --json");
        assert_eq!(status["agent_running"], true, "{spelled}: {status}");
        assert_eq!(status["agent_pid"], first.pid(), "{spelled}: {status}");
        assert_eq!(status["pin_dir"], pins_s.as_str(), "{spelled}: {status}");
        assert!(toa(&["stats", "--pin-dir", spelled]).status.success(), "{spelled}");
        let wait = toa(&["status", "--wait", "--timeout", "5s", "--pin-dir", spelled]);
        assert!(wait.status.success(), "{spelled}: {}", String::from_utf8_lossy(&wait.stderr));
        let detach = toa(&["detach", "--pin-dir", spelled]);
        assert_eq!(detach.status.code(), Some(1), "{spelled}: detach refused while the agent runs");
        assert!(String::from_utf8_lossy(&detach.stderr).contains("an agent is running"), "{spelled}");
    }
    assert_eq!(toa_ids(cg1.path()).len(), 4, "the first agent's programs are all there");
    assert!(first.terminate().success());
    assert!(!pins.exists());
    assert_eq!(attached_to(cg1.path()).trim(), "");
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn pin_dirs_whose_names_differ_only_in_slash_and_dash_are_two_agents() {
    require_root();
    let (cg1, cg2) = (Cgroup::new("toa-sec"), Cgroup::new("toa-sec"));
    let base = unique_pins();
    let _guard = PinsGuard(base.clone());
    let (nested, dashed) = (base.join("a/b"), base.join("a-b"));
    let _guards = (PinsGuard(nested.clone()), PinsGuard(dashed.clone()));
    let (cg1_s, cg2_s) = (cg1.path().to_string_lossy().into_owned(), cg2.path().to_string_lossy().into_owned());
    let (nested_s, dashed_s) = (nested.to_string_lossy().into_owned(), dashed.to_string_lossy().into_owned());
    let mut one = spawn_agent(&agent_args(&cg1_s, &nested_s));
    let mut two = spawn_agent(&agent_args(&cg2_s, &dashed_s));
    for (pins, agent) in [(&nested_s, &one), (&dashed_s, &two)] {
        let wait = toa(&["status", "--wait", "--timeout", "30s", "--json", "--pin-dir", pins]);
        assert!(wait.status.success(), "{pins}: {}", String::from_utf8_lossy(&wait.stderr));
        let status: Value = serde_json::from_slice(&wait.stdout).expect("status --json");
        assert_eq!(status["agent_pid"], agent.pid(), "{pins}: {status}");
        // The state each agent reports is its own: a reload reaches the right one.
        let reload = toa(&["reload", "--pin-dir", pins]);
        let said = String::from_utf8_lossy(&reload.stdout).into_owned();
        assert!(reload.status.success() && said.contains(&format!("agent pid {}", agent.pid())), "{pins}: {said}");
    }
    assert_eq!((toa_ids(cg1.path()).len(), toa_ids(cg2.path()).len()), (4, 4));
    assert!(one.terminate().success() && two.terminate().success());
    assert!(!nested.exists() && !dashed.exists());
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn a_second_instance_on_the_same_cgroup_is_refused_but_a_restart_on_the_same_pins_is_not() {
    require_root();
    let (cg, other) = (Cgroup::new("toa-sec"), Cgroup::new("toa-sec"));
    let (p1, p2) = (unique_pins(), unique_pins());
    let _guards = (PinsGuard(p1.clone()), PinsGuard(p2.clone()));
    let (p1_s, p2_s) = (p1.to_string_lossy().into_owned(), p2.to_string_lossy().into_owned());
    let cg_s = cg.path().to_string_lossy().into_owned();
    let other_s = other.path().to_string_lossy().into_owned();
    let mut first = spawn_agent(&agent_args(&cg_s, &p1_s));
    let ids = toa_ids(cg.path());
    assert_eq!(ids.len(), 4);
    let refused = |out: &Output, what: &str| {
        let lines = stderr_lines(out);
        assert_eq!(out.status.code(), Some(2), "{what}: {lines:?}");
        assert_eq!(lines.len(), 1, "{what}: {lines:?}");
        assert!(lines[0].contains("another toa instance"), "{what}: {lines:?}");
        assert!(lines[0].contains(&p1_s), "{what}: the other pin directory is named: {lines:?}");
        assert!(lines[0].contains(&cg_s), "{what}: the cgroup is named: {lines:?}");
    };
    // A second agent with another pin directory, on the same cgroup (after
    // one it may attach to): refused before anything is attached.
    let out = refused_agent(&["--cgroup", &other_s, "--cgroup", &cg_s, "--pin-dir", &p2_s, "--metrics-listen", ""]);
    refused(&out, "second agent");
    assert_eq!(toa_ids(cg.path()), ids, "the first agent's programs only");
    assert_eq!(attached_to(other.path()).trim(), "", "nothing attached to the other cgroup either");
    assert!(!p2.exists(), "nothing pinned");

    // The first agent killed: its programs stay and still belong to another instance.
    kill9(&mut first);
    refused(&refused_agent(&agent_args(&cg_s, &p2_s)), "after SIGKILL");
    // Restarting on its own pin directory adopts them.
    let mut again = spawn_agent(&agent_args(&cg_s, &p1_s));
    assert_eq!(toa_ids(cg.path()).len(), 4, "replaced, not added to");

    // A reload that would add the cgroup to a second instance is refused too.
    let conf = TempDir::new();
    let file = conf.0.join("toa.toml");
    fs::write(&file, agent_toml(&p2, &[other.path()], &[])).expect("config");
    let mut second = spawn_agent(&["--config", &file.to_string_lossy()]);
    fs::write(&file, agent_toml(&p2, &[other.path(), cg.path()], &[])).expect("config");
    sighup(&second);
    let line = second.wait_for_line(Stream::Stderr, |l| l.contains("configuration not applied"), READY);
    assert!(line.contains("another toa instance") && line.contains(&p1_s), "{line}");
    assert_eq!(toa_ids(cg.path()).len(), 4);
    assert!(second.terminate().success() && again.terminate().success());
    assert_eq!(attached_to(cg.path()).trim(), "");
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn doctor_names_programs_attached_twice_to_a_cgroup_toa_acts_on() {
    require_root();
    let cg = Cgroup::new("toa-sec");
    let (p1, p2) = (unique_pins(), unique_pins());
    let _guards = (PinsGuard(p1.clone()), PinsGuard(p2.clone()));
    let (p1_s, p2_s) = (p1.to_string_lossy().into_owned(), p2.to_string_lossy().into_owned());
    let cg_s = cg.path().to_string_lossy().into_owned();
    let agent = spawn_agent(&agent_args(&cg_s, &p1_s));
    // A second copy of the capture program on the same cgroup, pinned as an
    // instance without the duplicate check would pin it.
    let mut obj = aya::Ebpf::load(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/toa"))).expect("the object");
    let capture: &mut aya::programs::SockOps =
        obj.program_mut("toa_capture").expect("toa_capture").try_into().expect("sock_ops");
    capture.load().expect("loading toa_capture");
    let link_id = capture
        .attach(fs::File::open(cg.path()).expect("cgroup"), aya::programs::CgroupAttachMode::Single)
        .expect("attaching a second toa_capture");
    let link: aya::programs::links::FdLink = capture.take_link(link_id).expect("link").try_into().expect("fd link");
    fs::create_dir_all(p2.join("links")).expect("pin directory");
    let cg_id = fs::metadata(cg.path()).expect("cgroup").ino();
    link.pin(p2.join(format!("links/toa_capture@{cg_id}"))).expect("pinning the second link");
    drop(obj);
    assert_eq!(attached_to(cg.path()).matches("toa_capture").count(), 2);

    let out = toa(&["doctor", "--json"]);
    let checks: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    let dup = checks
        .as_array()
        .expect("a list")
        .iter()
        .find(|c| c["name"] == "toa instances" && c["detail"].as_str().is_some_and(|d| d.contains(&cg_s)))
        .unwrap_or_else(|| panic!("no duplicate reported for {cg_s}: {checks:#}"));
    assert_eq!(dup["verdict"], "fail", "{dup}");
    let detail = dup["detail"].as_str().expect("detail");
    assert!(detail.contains("toa_capture attached 2 times"), "{detail}");
    assert!(detail.contains(&p1_s) && detail.contains(&p2_s), "both pin directories named: {detail}");
    assert!(!out.status.success(), "a duplicate fails the doctor");
    let text = String::from_utf8_lossy(&toa(&["doctor"]).stdout).into_owned();
    assert!(text.lines().any(|l| l.starts_with("[FAIL] toa instances: ") && l.contains(&cg_s)), "{text}");
    drop(agent);
}

/// `bpftool map create PATH ...` for a map that is not toa's.
fn create_map(path: &Path, spec: &[&str]) {
    let path_s = path.to_string_lossy().into_owned();
    let out = run_in(None, None, &[&["bpftool", "map", "create", &path_s], spec].concat());
    assert!(out.status.success(), "bpftool map create {path_s}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn detach_and_the_agent_leave_pins_that_are_not_toas() {
    require_root();
    let (cg, elsewhere) = (Cgroup::new("toa-sec"), Cgroup::new("toa-sec"));
    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    let pins_s = pins.to_string_lossy().into_owned();
    let cg_s = cg.path().to_string_lossy().into_owned();
    let mut agent = spawn_agent(&[&agent_args(&cg_s, &pins_s)[..], &["--persist"]].concat());
    assert!(agent.terminate().success());
    assert_eq!(toa_ids(cg.path()).len(), 4, "persist keeps the programs");

    // Someone else's pins among toa's: a map of its own, a map with a toa
    // map's name and another shape, a link named like toa's whose program is
    // not toa's, and a directory.
    let foo = pins.join("maps/foo");
    create_map(&foo, &["type", "hash", "key", "4", "value", "4", "entries", "1", "name", "foo"]);
    let ports = pins.join("maps/TOA_PORTS");
    fs::remove_file(&ports).expect("unpinning toa's TOA_PORTS");
    create_map(&ports, &["type", "hash", "key", "4", "value", "4", "entries", "1", "name", "TOA_PORTS"]);
    let elsewhere_id = fs::metadata(elsewhere.path()).expect("cgroup").ino();
    let fake_link = pins.join(format!("links/toa_capture@{elsewhere_id}"));
    let foreign = Program::sock_ops("not_toa");
    foreign.pin_link(elsewhere.path(), &fake_link);
    let extra = pins.join("extra");
    fs::create_dir(&extra).expect("a directory");
    create_map(&extra.join("bar"), &["type", "array", "key", "4", "value", "8", "entries", "1", "name", "bar"]);
    let foreign_pins = [&foo, &ports, &fake_link, &extra];
    let status: Value =
        serde_json::from_slice(&toa(&["status", "--json", "--pin-dir", &pins_s]).stdout).expect("status --json");
    assert_eq!(status["links"].as_array().map(Vec::len), Some(4), "toa's links only: {status}");
    let listed: Vec<&str> = status["not_toas"].as_array().expect("not_toas").iter().filter_map(Value::as_str).collect();
    for path in foreign_pins {
        assert!(listed.iter().any(|l| l.starts_with(&format!("{}: ", path.display()))), "{listed:?}");
    }

    let out = toa(&["detach", "--pin-dir", &pins_s]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for path in foreign_pins {
        assert!(path.exists(), "{} was removed:\n{stdout}", path.display());
        let left: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&format!("left {}: ", path.display()))).collect();
        assert_eq!(left.len(), 1, "one line for {}:\n{stdout}", path.display());
    }
    assert!(
        stdout.lines().any(|l| l.starts_with("left ") && l.contains("TOA_PORTS") && l.contains("hash")),
        "{stdout}"
    );
    assert!(stdout.lines().last().is_some_and(|l| l.starts_with("detached 4 links")), "a summary: {stdout}");
    assert_eq!(attached_to(cg.path()).trim(), "", "toa's programs are detached");
    assert_eq!(attached_to(elsewhere.path()).matches("not_toa").count(), 1, "the foreign link stays attached");
    for name in ["TOA_PEERS", "TOA_COUNTERS", "TOA_CONFIG", "TOA_TRUSTED", "TOA_ACTIVE"] {
        assert!(!pins.join("maps").join(name).exists(), "{name} is toa's and removed");
    }

    // An agent does not take over a map that is not toa's: refused, nothing attached.
    let out = refused_agent(&agent_args(&cg_s, &pins_s));
    let lines = stderr_lines(&out);
    assert_eq!(out.status.code(), Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&ports.to_string_lossy().into_owned()) && lines[0].contains("not toa's"), "{lines:?}");
    assert_eq!(attached_to(cg.path()).trim(), "");
    assert!(ports.exists() && foo.exists());

    // Without the impostor the agent runs beside the other pins, and its
    // clean stop removes only its own.
    fs::remove_file(&ports).expect("removing the impostor");
    let mut agent = spawn_agent(&agent_args(&cg_s, &pins_s));
    assert_eq!(toa_ids(cg.path()).len(), 4);
    assert!(agent.terminate().success());
    assert_eq!(attached_to(cg.path()).trim(), "");
    assert!(foo.exists() && fake_link.exists() && extra.join("bar").exists(), "the others' pins stay");
    assert!(!pins.join("maps/TOA_COUNTERS").exists());
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn maps_of_the_single_slot_layout_are_replaced_at_start() {
    require_root();
    let cg = Cgroup::new("toa-sec");
    let pins = unique_pins();
    let _guard = PinsGuard(pins.clone());
    fs::create_dir_all(pins.join("maps")).expect("pin directory");
    // The settings maps as an earlier toa pinned them (one slot each).
    let old = [
        ("TOA_CONFIG", vec!["type", "array", "key", "4", "value", "264", "entries", "1"]),
        ("TOA_TRUSTED", vec!["type", "lpm_trie", "key", "20", "value", "1", "entries", "4096", "flags", "1"]),
        ("TOA_PORTS", vec!["type", "array", "key", "4", "value", "8192", "entries", "1"]),
    ];
    for (name, spec) in &old {
        create_map(&pins.join("maps").join(name), &[&spec[..], &["name", name]].concat());
    }
    let pins_s = pins.to_string_lossy().into_owned();
    let cg_s = cg.path().to_string_lossy().into_owned();
    let mut agent = spawn_agent(&agent_args(&cg_s, &pins_s));
    for (name, _) in &old {
        let line = agent.wait_for_line(Stream::Stderr, |l| l.contains("replacing") && l.contains(name), READY);
        assert!(line.contains("WARN"), "{line}");
        let info = bpftool_json(&["map", "show", "pinned", &pins.join("maps").join(name).to_string_lossy()]);
        assert_ne!(info["max_entries"], if *name == "TOA_TRUSTED" { 4096 } else { 1 }, "{name} replaced: {info}");
    }
    assert_eq!(toa_ids(cg.path()).len(), 4);
    assert!(agent.terminate().success());
    assert!(!pins.exists());
}
