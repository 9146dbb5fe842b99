//! The .deb under a real systemd: Debian 12 booted in a container
//! (systemd-nspawn, systemd as PID 1, its own network namespace), driven as
//! an operator would: `apt install`, `systemctl start|reload|restart|stop`,
//! `journalctl`, `apt remove|purge`, and the `toa-proxy@` template unit.
//!
//! The host side plays the forwarder: a client in another network namespace
//! whose cgroup has `toa inject` attached, so its connections to the
//! container carry a TOA option. Servers inside run as units (`systemd-run`),
//! so they are in the container's cgroup tree, where the agent attached.
//! Every step is printed (`container: ...`).

mod common;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use common::{READY, require_root, start_injector};
use integration_test::{
    cgroup::Cgroup,
    container::{self, Boot, Container, step},
    netns::{Pair, unique_name},
    process::{Stream, command_in, run_in, spawn_with_stdin},
};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The client address the host-side writer puts into the option.
const REAL_CLIENT: &str = "203.0.113.7";

/// A server that reports what accept() and getpeername() say, one line per
/// connection, to the client itself. argv: PORT. Says READY=1 to systemd
/// once listening (run it with `systemd-run -p Type=notify`).
const PEER_SERVER: &str = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
addr = os.environ["NOTIFY_SOCKET"]
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)
while True:
    c, a = s.accept()
    p = c.getpeername()
    try:
        c.sendall(f"accept={a[0]}:{a[1]} getpeername={p[0]}:{p[1]}\n".encode())
    except OSError:
        pass
    c.close()
"#;

/// A client: connects to HOST PORT and prints `t=<CLOCK_MONOTONIC> <the
/// server's line>`, once (`once`) or again and again until stdin closes (`loop`).
const CLIENT: &str = r#"
import select, socket, sys, time
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
while True:
    t = time.monotonic()
    try:
        c = socket.create_connection((host, port), timeout=5)
        line = c.makefile().readline().strip()
        c.close()
    except OSError as e:
        line = f"error={e}"
    print(f"t={t:.6f} {line}", flush=True)
    if mode == "once" or select.select([sys.stdin], [], [], 0.005)[0]:
        break
"#;

/// The host's CLOCK_MONOTONIC in seconds (what python's time.monotonic() reads).
fn monotonic() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn require_tools() {
    for tool in ["systemd-nspawn", "mmdebstrap", "bpftool"] {
        let found = run_in(None, None, &["sh", "-c", &format!("command -v {tool}")]);
        assert!(
            found.status.success(),
            "{tool} is missing: run scripts/setup --test (apt install systemd-container mmdebstrap bpftool)"
        );
    }
}

/// Builds the .deb once per test binary, from the binary under test.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        step("building the .deb: scripts/package --no-build");
        let out = run_in(None, None, &[&format!("{REPO}/scripts/package"), "--no-build"]);
        assert!(out.status.success(), "scripts/package: {}", String::from_utf8_lossy(&out.stderr));
        let last = String::from_utf8_lossy(&out.stdout).lines().last().expect("the .deb path").to_string();
        let path = Path::new(REPO).join(last);
        assert!(path.is_file(), "{}", path.display());
        path
    })
}

/// The container's /sys/fs/bpf: a fresh directory on the host's bpffs, removed on drop.
struct BpfDir(PathBuf);

impl BpfDir {
    fn new() -> BpfDir {
        let dir = PathBuf::from(format!("/sys/fs/bpf/{}", unique_name("toa-ct", 40)));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        BpfDir(dir)
    }

    /// Every pin below it (relative paths).
    fn pins(&self) -> Vec<String> {
        let out = run_in(None, None, &["find", &self.0.to_string_lossy(), "-mindepth", "1", "-not", "-type", "d"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_start_matches(&*self.0.to_string_lossy()).to_string())
            .collect()
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A booted Debian with the package's needs, in its own network namespace
/// (`pair.srv`, 192.0.2.2), reached from `pair.cli` (192.0.2.1) whose
/// `cli_cg` cgroup writes the option.
struct Lab {
    ct: Container,
    bpf: BpfDir,
    cli_cg: Cgroup,
    pair: Pair,
}

impl Lab {
    fn boot() -> Lab {
        require_tools();
        let rootfs = container::debian_rootfs(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("containers"),
            container::BASE_PACKAGES,
        );
        let pair = Pair::new("toa-sd");
        let bpf = BpfDir::new();
        let opts = Boot {
            // What loading eBPF programs takes inside (CAP_SYS_ADMIN: the
            // container's systemd mounts and the agent's bpffs checks).
            capabilities: ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"].map(String::from).to_vec(),
            system_calls: vec!["bpf".into(), "perf_event_open".into()],
            binds: vec![(bpf.0.clone(), PathBuf::from("/sys/fs/bpf"))],
            netns: Some(pair.srv.path()),
        };
        let ct = Container::boot(&rootfs, &opts);
        Lab { ct, bpf, cli_cg: Cgroup::new("toa-sd-cli"), pair }
    }

    /// Copies the .deb in and installs it with apt, as an operator does.
    fn install(&self) {
        let deb = deb();
        let name = deb.file_name().expect("name").to_string_lossy().into_owned();
        self.ct.copy_in(deb, &format!("/root/{name}"));
        let out = self.ct.sh(&format!("cd /root && apt-get install -y ./{name} 2>&1"));
        assert!(out.contains("Setting up toa"), "{out}");
    }

    /// One connection from the host-side client to the container's `port`: the server's line.
    fn connect(&self, port: u16) -> String {
        let out = run_in(
            Some(&self.pair.cli.path()),
            Some(self.cli_cg.path()),
            &["python3", "-c", CLIENT, &self.pair.srv_v4.to_string(), &port.to_string(), "once"],
        );
        assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        step(&format!("host client -> {}:{port}: the server says {line:?}", self.pair.srv_v4));
        line
    }

    /// Starts the peer-reporting server as a unit inside; returns once it listens.
    fn server(&self, unit: &str, port: u16) {
        self.ct.run(&[
            "systemd-run",
            &format!("--unit={unit}"),
            "--property=Type=notify",
            "python3",
            "-u",
            "-c",
            PEER_SERVER,
            &port.to_string(),
        ]);
    }

    /// The toa programs attached anywhere in the container's cgroup tree (host view): (id, name).
    fn attached(&self) -> Vec<(u64, String)> {
        toa_programs_under(&self.ct.cgroup_root())
    }

    /// Writes /etc/toa/toa.toml inside.
    fn configure(&self, toml: &str) {
        step(&format!("[{}] /etc/toa/toa.toml := {toml:?}", self.ct.name()));
        self.ct.write("/etc/toa/toa.toml", toml);
    }
}

/// `bpftool cgroup tree ROOT`, the programs named `toa_*`: (id, name).
fn toa_programs_under(root: &Path) -> Vec<(u64, String)> {
    let out = run_in(None, None, &["bpftool", "cgroup", "tree", &root.to_string_lossy()]);
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let id = f.first()?.parse().ok()?;
            let name = f.last().filter(|n| n.starts_with("toa_"))?;
            Some((id, name.to_string()))
        })
        .collect()
}

/// Whether the host's kernel still has a program with this id.
fn program_exists(id: u64) -> bool {
    run_in(None, None, &["bpftool", "prog", "show", "id", &id.to_string()]).status.success()
}

fn peer_of(line: &str) -> &str {
    line.split("getpeername=").nth(1).and_then(|p| p.rsplit_once(':')).map_or("", |(h, _)| h)
}

#[test]
#[ignore = "needs root: systemd-nspawn, BPF, network namespaces, cgroups"]
fn the_package_under_systemd_starts_ready_reloads_restarts_without_a_gap_stops_and_purges_clean() {
    require_root();
    let lab = Lab::boot();
    let ct = &lab.ct;
    lab.install();
    assert_eq!(ct.run(&["systemctl", "is-enabled", "toa"]).trim(), "enabled");
    assert_eq!(ct.run(&["systemctl", "is-active", "toa"]).trim(), "active");
    // Type=notify: active means attached; the state everyone can read says so too.
    assert_eq!(ct.run(&["systemctl", "show", "-P", "Type", "toa"]).trim(), "notify");
    let status = ct.run(&["systemctl", "show", "-P", "StatusText", "toa"]);
    assert!(status.starts_with("translating: 4 programs attached to /sys/fs/cgroup"), "{status}");
    ct.run(&["toa", "status", "--wait", "--timeout", "1s"]);
    let programs = lab.attached();
    step(&format!("host: bpftool cgroup tree {}: {programs:?}", ct.cgroup_root().display()));
    assert_eq!(programs.len(), 4, "{programs:?}");
    assert!(lab.bpf.pins().iter().any(|p| p.starts_with("/toa/links/")), "{:?}", lab.bpf.pins());

    lab.server("toa-peer", 9000);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", &format!("{REAL_CLIENT}:4242")]);
    step(&format!("host: toa inject --cgroup {} --addr {REAL_CLIENT}:4242", lab.cli_cg.path().display()));
    let line = lab.connect(9000);
    assert_eq!(
        line.split_once(' ').map(|x| x.1),
        Some(format!("accept={REAL_CLIENT}:4242 getpeername={REAL_CLIENT}:4242").as_str())
    );

    // Reload: trust only another prefix → the option is ignored; trust ours → honoured again.
    lab.configure("trusted = [\"198.51.100.0/24\"]\n");
    ct.run(&["systemctl", "reload", "toa"]);
    assert_eq!(peer_of(&lab.connect(9000)), lab.pair.cli_v4.to_string(), "an untrusted sender's option is ignored");
    lab.configure("trusted = [\"192.0.2.0/24\"]\n");
    ct.run(&["systemctl", "reload", "toa"]);
    assert_eq!(peer_of(&lab.connect(9000)), REAL_CLIENT, "the new trusted prefix applies");
    // A file that does not parse, then one the agent cannot apply (no such
    // cgroup): each reload fails with the reason, the previous configuration stays.
    for (toml, reason) in [
        ("trusted = [\"not-a-prefix\"]\n", "`not-a-prefix` is not a CIDR prefix"),
        ("cgroups = [\"/sys/fs/cgroup/unified/no-such-cgroup\"]\n", "the agent refused the new configuration"),
    ] {
        lab.configure(toml);
        step(&format!("[{}] # systemctl reload toa (expected to fail)", ct.name()));
        let bad = ct.exec(&["systemctl", "reload", "toa"]);
        assert!(!bad.status.success(), "a refused configuration fails the reload");
        let journal = ct.run(&["journalctl", "-u", "toa", "--no-pager", "-o", "cat"]);
        assert!(journal.contains(reason), "journalctl -u toa lacks {reason:?}:\n{journal}");
        assert_eq!(ct.run(&["systemctl", "is-active", "toa"]).trim(), "active");
        assert_eq!(peer_of(&lab.connect(9000)), REAL_CLIENT, "still translating after a refused reload");
    }
    lab.configure("trusted = [\"192.0.2.0/24\"]\n");

    // Restart with a client looping across it: every connection is translated.
    let mut cmd = command_in(Some(&lab.pair.cli.path()), Some(lab.cli_cg.path()), "python3");
    cmd.args(["-c", CLIENT, &lab.pair.srv_v4.to_string(), "9000", "loop"]);
    let mut client = spawn_with_stdin(cmd);
    client.wait_for_line(Stream::Stdout, |l| l.starts_with("t="), READY);
    let before = monotonic();
    ct.run(&["systemctl", "restart", "toa"]);
    let after = monotonic();
    client.wait_for_line(Stream::Stdout, |l| l.starts_with("t=") && time_of(l) > after, READY);
    writeln!(client.stdin(), "stop").expect("stop the client");
    client.close_stdin();
    assert!(client.wait_exit(READY).success());
    let lines = client.lines_so_far(Stream::Stdout);
    let during: Vec<&String> = lines.iter().filter(|l| (before..after).contains(&time_of(l))).collect();
    let untranslated: Vec<&String> = lines.iter().filter(|l| peer_of(l) != REAL_CLIENT).collect();
    step(&format!(
        "restart took {:.0} ms; {} connections in all, {} opened during the restart, {} untranslated",
        (after - before) * 1000.0,
        lines.len(),
        during.len(),
        untranslated.len()
    ));
    assert!(!during.is_empty(), "no connection was opened during the restart");
    assert!(untranslated.is_empty(), "untranslated across the restart: {untranslated:?}");
    let journal = ct.run(&["journalctl", "-u", "toa", "--no-pager", "-o", "cat"]);
    for line in ["agent ready", "configuration re-applied", "programs stay attached for the next one"] {
        assert!(journal.contains(line), "journalctl -u toa lacks {line:?}:\n{journal}");
    }
    let programs = lab.attached();
    assert_eq!(programs.len(), 4, "one set attached after the restart: {programs:?}");

    // Stop: nothing attached, no pins, the programs are gone from the kernel.
    ct.run(&["systemctl", "stop", "toa"]);
    assert_eq!(lab.attached(), [], "nothing attached after systemctl stop");
    assert_eq!(lab.bpf.pins(), Vec::<String>::new(), "no pins after systemctl stop");
    for (id, name) in &programs {
        assert!(!program_exists(*id), "program {id} ({name}) still loaded after stop");
    }
    assert_eq!(peer_of(&lab.connect(9000)), lab.pair.cli_v4.to_string(), "stopped: the server sees the forwarder");

    // Remove, then purge: nothing of the package is left.
    ct.run(&["systemctl", "start", "toa"]);
    let programs = lab.attached();
    assert_eq!(programs.len(), 4);
    ct.run(&["apt-get", "remove", "-y", "toa"]);
    assert_eq!(lab.attached(), [], "nothing attached after apt remove");
    assert_eq!(lab.bpf.pins(), Vec::<String>::new(), "no pins after apt remove");
    for path in ["/usr/bin/toa", "/lib/systemd/system/toa.service", "/lib/systemd/system/toa-proxy@.service"] {
        assert!(!ct.has(path), "{path} left after apt remove");
    }
    assert!(ct.has("/etc/toa/toa.toml"), "remove keeps the edited configuration");
    ct.run(&["apt-get", "purge", "-y", "toa"]);
    for path in ["/etc/toa", "/run/toa", "/etc/systemd/system/multi-user.target.wants/toa.service"] {
        assert!(!ct.has(path), "{path} left after apt purge");
    }
    for (id, name) in &programs {
        assert!(!program_exists(*id), "program {id} ({name}) still loaded after purge");
    }
    let left = ct.run(&["sh", "-c", "dpkg -l toa 2>/dev/null | grep ^ii || true"]);
    assert_eq!(left.trim(), "");
}

fn time_of(line: &str) -> f64 {
    line.strip_prefix("t=").and_then(|l| l.split_whitespace().next()).and_then(|t| t.parse().ok()).unwrap_or(0.0)
}

#[test]
#[ignore = "needs root: systemd-nspawn, BPF, network namespaces, cgroups"]
fn proxy_template_instances_run_side_by_side_and_the_backend_sees_the_client() {
    require_root();
    let lab = Lab::boot();
    let ct = &lab.ct;
    lab.install();
    lab.server("toa-backend", 9000);
    // Two instances, each with its own file: web on :8080, api on :8081, both to the backend.
    for (instance, port) in [("web", 8080), ("api", 8081)] {
        let conf =
            format!("[proxy]\n[[proxy.listener]]\nlisten = \"0.0.0.0:{port}\"\nbackends = [\"127.0.0.1:9000\"]\n");
        step(&format!("[{}] /etc/toa/proxy-{instance}.toml := {conf:?}", ct.name()));
        ct.write(&format!("/etc/toa/proxy-{instance}.toml"), &conf);
    }
    ct.run(&["systemctl", "enable", "--now", "toa-proxy@web", "toa-proxy@api"]);
    for instance in ["web", "api"] {
        assert_eq!(ct.run(&["systemctl", "is-active", &format!("toa-proxy@{instance}")]).trim(), "active");
    }
    // No option from the host now: the proxy's own writer carries the client to the backend.
    for port in [8080, 8081] {
        let line = lab.connect(port);
        assert_eq!(peer_of(&line), lab.pair.cli_v4.to_string(), "the backend sees the client, not 127.0.0.1: {line}");
    }
    let stats = ct.run(&["toa", "stats", "--json", "--proxy-socket", "/run/toa/proxy-web.sock"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("JSON");
    assert!(stats["proxy"].is_object(), "{stats}");
    assert!(stats["syn_recv_sock_toa"].as_u64() >= Some(2), "{stats}");
    // Without --proxy-socket, toa stats shows every instance, by name.
    let all: serde_json::Value = serde_json::from_str(&ct.run(&["toa", "stats", "--json"])).expect("JSON");
    let mut names: Vec<&str> =
        all["proxies"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["api", "web"], "{all}");
    // systemctl reload: api gets a second listener; a file it refuses fails the reload and changes nothing.
    let two = "[proxy]\n[[proxy.listener]]\nlisten = \"0.0.0.0:8081\"\nbackends = [\"127.0.0.1:9000\"]\n\
               [[proxy.listener]]\nlisten = \"0.0.0.0:8082\"\nbackends = [\"127.0.0.1:9000\"]\n";
    step(&format!("[{}] /etc/toa/proxy-api.toml := {two:?}", ct.name()));
    ct.write("/etc/toa/proxy-api.toml", two);
    ct.run(&["systemctl", "reload", "toa-proxy@api"]);
    assert_eq!(peer_of(&lab.connect(8082)), lab.pair.cli_v4.to_string(), "the listener the reload added");
    ct.write("/etc/toa/proxy-api.toml", "[proxy]\nworkers = \"many\"\n");
    let refused = ct.exec(&["systemctl", "reload", "toa-proxy@api"]);
    step(&format!("[{}] systemctl reload toa-proxy@api (a bad file): {}", ct.name(), refused.status));
    assert!(!refused.status.success(), "a refused configuration fails the reload");
    assert_eq!(ct.run(&["systemctl", "is-active", "toa-proxy@api"]).trim(), "active");
    assert_eq!(peer_of(&lab.connect(8082)), lab.pair.cli_v4.to_string(), "the previous configuration stays");
    // Stopping an instance leaves the other, and the agent's state in /run/toa, alone.
    ct.run(&["systemctl", "stop", "toa-proxy@web"]);
    assert!(ct.has("/run/toa/agent@sys-fs-bpf-toa.state"), "the agent's state survives a proxy's stop");
    ct.run(&["toa", "reload"]);
    assert_eq!(peer_of(&lab.connect(8081)), lab.pair.cli_v4.to_string());
    let journal = ct.run(&["journalctl", "-u", "toa-proxy@api", "--no-pager", "-o", "cat"]);
    assert!(journal.contains("proxy ready"), "{journal}");
    ct.run(&["apt-get", "purge", "-y", "toa"]);
    assert_eq!(
        ct.run(&[
            "sh",
            "-c",
            "systemctl list-units --no-legend --plain toa.service 'toa-proxy@*' | grep active || true"
        ])
        .trim(),
        ""
    );
    assert!(!ct.has("/etc/systemd/system/multi-user.target.wants/toa-proxy@api.service"));
    assert_eq!(lab.attached(), [], "nothing attached after apt purge");
    assert_eq!(lab.bpf.pins(), Vec::<String>::new());
}
