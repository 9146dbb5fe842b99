//! The command line: bad input is refused with one clear line and nothing
//! attached; a running agent is visible through `toa stats`.

mod common;

use common::{AgentProc, TOA, attached_to, require_root, stderr_lines, toa};
use integration_test::{
    cgroup::Cgroup,
    netns::unique_name,
    process::{Stream, run_in},
};
use toa_common::counters::COUNTERS;

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn a_missing_cgroup_is_refused_with_exit_code_2_and_nothing_pinned() {
    require_root();
    let pins = format!("/sys/fs/bpf/{}", unique_name("toa-test", 40));
    let out = toa(&["agent", "--cgroup", "/sys/fs/cgroup/no-such-cgroup", "--pin-dir", &pins]);
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("/sys/fs/cgroup/no-such-cgroup is not a cgroup v2 directory"), "{lines:?}");
    assert!(!std::path::Path::new(&pins).exists());
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn a_regular_directory_is_not_a_cgroup() {
    require_root();
    let dir = std::env::temp_dir();
    let out = toa(&["agent", "--cgroup", &dir.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2), "{:?}", stderr_lines(&out));
}

#[test]
fn bad_flags_and_formats_exit_with_code_2() {
    for args in [
        &["agent", "--no-such-flag"][..],
        &["agent", "--format", "254/9"],
        &["agent", "--format", "1/8"],
        &["inject", "--cgroup", "/tmp", "--addr", "not-an-address"],
        &["inject", "--cgroup", "/tmp"],
        &["stats", "--json", "extra"],
    ] {
        let out = toa(args);
        assert_eq!(out.status.code(), Some(2), "toa {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = toa(&["agent", "--format", "254/9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("length 9 has no known payload shape"));
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn inject_refuses_bad_packets_and_raw_options_with_code_2() {
    require_root();
    let cg = Cgroup::new("toa-cli");
    let cg = cg.path().to_string_lossy().into_owned();
    for args in [
        &["inject", "--cgroup", &cg, "--addr", "203.0.113.7:1", "--packets", "fin"][..],
        &["inject", "--cgroup", &cg, "--raw", "fe09"],
        &["inject", "--cgroup", &cg, "--addr", "203.0.113.7:1", "--len", "20"],
    ] {
        let out = toa(args);
        assert_eq!(out.status.code(), Some(2), "toa {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stderr_lines(&out).len(), 1, "{:?}", stderr_lines(&out));
    }
    assert_eq!(attached_to(std::path::Path::new(&cg)).trim(), "", "nothing attached after refusals");
}

#[test]
#[ignore = "needs root: cgroups, setpriv"]
fn the_agent_refuses_to_run_without_root() {
    require_root();
    let cg = Cgroup::new("toa-cli");
    let out = run_in(
        None,
        None,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            TOA,
            "agent",
            "--cgroup",
            &cg.path().to_string_lossy(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines, ["toa: toa must run as root (it loads eBPF programs and attaches them to cgroups)"]);
    assert_eq!(attached_to(cg.path()).trim(), "");
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn a_second_agent_on_the_same_pins_is_refused_and_the_first_keeps_running() {
    require_root();
    let cg = Cgroup::new("toa-cli");
    let agent = AgentProc::start(cg.path(), &[]);
    let out = toa(&[
        "agent",
        "--cgroup",
        &cg.path().to_string_lossy(),
        "--pin-dir",
        &agent.pins.to_string_lossy(),
        "--metrics-listen",
        "",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("another toa agent is already running"), "{lines:?}");
    assert!(lines[0].contains(&format!("pid {}", agent.proc.pid())), "{lines:?}");
    // The first agent's four programs are still the only ones attached.
    let attached = attached_to(cg.path());
    assert_eq!(attached.matches("toa_").count(), 4, "{attached}");
    agent.stats();
    agent.stop();
    assert_eq!(attached_to(cg.path()).trim(), "", "a clean stop detaches everything");
}

#[test]
fn stats_without_an_agent_says_so() {
    let pins = format!("/sys/fs/bpf/{}", unique_name("toa-test", 40));
    // No proxy either (by default `toa stats` shows every proxy of the host).
    let socket = format!("/run/toa/{}.sock", unique_name("toa-none", 40));
    let out = toa(&["stats", "--pin-dir", &pins, "--proxy-socket", &socket]);
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("no toa agent is running"), "{lines:?}");
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn stats_prints_every_counter_per_cpu_with_a_total() {
    require_root();
    let cg = Cgroup::new("toa-cli");
    let agent = AgentProc::start(cg.path(), &[]);
    // The agent's table only (by default the host's proxies would follow it).
    let socket = format!("/run/toa/{}.sock", unique_name("toa-none", 40));
    let out = toa(&["stats", "--pin-dir", &agent.pins.to_string_lossy(), "--proxy-socket", &socket]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header: Vec<_> = lines.next().expect("header").split_whitespace().collect();
    let cpus = header.len() - 1;
    assert!(cpus >= 1 && header[0] == "CPU0" && header[cpus] == "total", "{header:?}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), COUNTERS.len());
    for ((_, name), row) in COUNTERS.iter().zip(&rows) {
        assert_eq!(row[0], *name);
        assert_eq!(row.len(), cpus + 2, "{row:?}");
    }
    let json = agent.stats();
    for (_, name) in COUNTERS {
        assert!(json[name].is_u64(), "{name} in {json}");
        assert_eq!(json["per_cpu"][name].as_array().map(Vec::len), Some(cpus));
    }
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn a_killed_agent_is_replaced_without_detaching_and_its_pins_adopted() {
    require_root();
    let cg = Cgroup::new("toa-cli");
    let mut first = AgentProc::start(cg.path(), &[]);
    // SIGKILL: no cleanup runs, the pinned links keep the programs attached.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(first.proc.pid(), libc::SIGKILL) };
    first.proc.wait_exit(common::READY);
    assert_eq!(attached_to(cg.path()).matches("toa_").count(), 4, "still attached after SIGKILL");
    let pins = first.pins.to_string_lossy().into_owned();
    let mut cmd = integration_test::process::command_in(None, None, TOA);
    cmd.args(["agent", "--cgroup", &cg.path().to_string_lossy(), "--pin-dir", &pins, "--metrics-listen", ""]);
    let mut second = integration_test::process::spawn(cmd);
    second.wait_for_line(Stream::Stderr, |l| l.contains("agent ready"), common::READY);
    assert_eq!(attached_to(cg.path()).matches("toa_").count(), 4, "the old links were replaced, not added to");
    assert!(toa(&["stats", "--pin-dir", &pins]).status.success());
    assert!(second.terminate().success());
    assert_eq!(attached_to(cg.path()).trim(), "");
    assert!(!first.pins.exists());
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn the_getsockopt_program_is_left_out_when_not_wanted() {
    require_root();
    let cg = Cgroup::new("toa-cli");
    let agent = AgentProc::start(cg.path(), &["--no-getsockopt"]);
    let attached = attached_to(cg.path());
    assert_eq!(attached.matches("toa_").count(), 3, "{attached}");
    assert!(!attached.contains("getsockopt"), "{attached}");
    let status = toa(&["status", "--json", "--pin-dir", &agent.pins.to_string_lossy()]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json prints JSON");
    let programs: Vec<&str> =
        status["links"].as_array().expect("links").iter().filter_map(|l| l["program"].as_str()).collect();
    assert!(!programs.contains(&"toa_getsockopt"), "{programs:?}");
    assert_eq!(programs.len(), 3, "{programs:?}");
    agent.stop();
}

/// A directory under the temporary directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique_name("toa-conf", 40));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root: BPF, cgroups"]
fn what_toa_config_prints_is_a_file_the_agent_runs_with() {
    require_root();
    let dir = TempDir::new();
    let written = dir.0.join("in.toml");
    std::fs::write(
        &written,
        "getsockopt = false\ncapture_syn = true\ntrusted = [\"198.51.100.0/24\"]\nports = [9000]\n\
         formats = [\"254/8\", \"28/7\"]\n[proxy]\nforward = \"copy\"\n[[proxy.listener]]\n\
         listen = \"127.0.0.1:7999\"\nbackends = [{ addr = \"127.0.0.1:8999\", kind = 200 }]\nidle_timeout = \"90s\"\n",
    )
    .expect("write the configuration");
    let out = toa(&["config", "-c", &written.to_string_lossy()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = dir.0.join("out.toml");
    std::fs::write(&printed, &out.stdout).expect("write the printed configuration");
    // Printed again, the printed file says the same.
    let again = toa(&["config", "-c", &printed.to_string_lossy()]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let body =
        |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&again), body(&out));
    assert!(body(&out).contains("getsockopt = false"), "{}", body(&out));
    // The agent runs with it, and what it says holds: no getsockopt program.
    let cg = Cgroup::new("toa-cli");
    let agent = AgentProc::start(cg.path(), &["--config", &printed.to_string_lossy()]);
    let attached = attached_to(cg.path());
    assert_eq!(attached.matches("toa_").count(), 3, "{attached}");
    assert!(!attached.contains("getsockopt"), "{attached}");
    agent.stop();
}
