//! The agent against a careless operator: one agent per pin set, however
//! the directory is spelled, and `toa detach` removes only what toa created.

mod common;

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Output,
};

use common::{READY, TOA, attached_to, require_root, stderr_lines, toa};
use integration_test::{
    bpf::Program,
    cgroup::Cgroup,
    netns::unique_name,
    process::{Spawned, Stream, command_in, run_in, spawn},
};
use serde_json::Value;

fn unique_pins() -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/{}", unique_name("toa-test", 40)))
}

/// Removes a pin directory a test left (detaching toa's programs), whatever it holds.
struct PinsGuard(PathBuf);

impl Drop for PinsGuard {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = toa(&["detach", "--pin-dir", &self.0.to_string_lossy()]);
            let _ = fs::remove_dir_all(&self.0);
        }
    }
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

/// The ids of the toa programs bpftool lists as attached to a cgroup.
fn toa_ids(cgroup: &Path) -> Vec<String> {
    attached_to(cgroup)
        .lines()
        .filter(|l| l.contains("toa_"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
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
    for name in ["TOA_PEERS", "TOA_COUNTERS", "TOA_CONFIG", "TOA_TRUSTED"] {
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
