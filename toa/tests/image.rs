//! The agent's OCI image (scripts/image) run with podman exactly as the
//! Kubernetes DaemonSet declares it: the pod's capabilities, mounts, seccomp
//! and security settings are read from packaging/k8s/toa-daemonset.yaml and
//! turned into `podman run` flags, so a change of the manifest changes what
//! is tested. The agent is scoped to one cgroup: a server on the host and a
//! server in another container inside it see the real client, a server in a
//! cgroup outside it keeps the forwarder's address.
//!
//! podman runs with runc: crun refuses hosts whose cgroup v2 hierarchy holds
//! a controller in hybrid mode ("cgroups in hybrid mode not supported, drop
//! all controllers from cgroupv2"), as this machine kind's does (hugetlb).

mod common;

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use common::{READY, attached_to, require_root, start_injector};
use integration_test::{
    cgroup::{Cgroup, cgroup2_root},
    container::{self, step},
    netns::{Pair, unique_name},
    process::{Spawned, Stream, command_in, run_in, spawn, succeeded},
};
use yaml_rust2::{Yaml, YamlLoader};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const REAL_CLIENT: &str = "203.0.113.7";

/// Reports what accept() and getpeername() say to the client. argv: PORT.
const PEER_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
print("listening", flush=True)
while True:
    c, a = s.accept()
    p = c.getpeername()
    try:
        c.sendall(f"accept={a[0]}:{a[1]} getpeername={p[0]}:{p[1]}\n".encode())
    except OSError:
        pass
    c.close()
"#;

/// Runs and prints a host command.
fn host(args: &[&str]) -> String {
    step(&format!("host # {}", args.join(" ")));
    succeeded(&run_in(None, None, args), &args.join(" "))
}

/// `scripts/image --no-build`: the image ID.
fn build_image() -> String {
    let out = run_in(None, None, &[&format!("{REPO}/scripts/image"), "--no-build"]);
    succeeded(&out, "scripts/image").lines().last().expect("the image ID").trim().to_string()
}

/// This sandbox has no CAP_SYS_RESOURCE, so the runtime may not raise limits
/// (podman's defaults for root do): the open-files limit is the current hard
/// one, the process limit a small one (the runtime's own is lower than ours).
fn ulimits() -> Vec<String> {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
    let nofile = l.rlim_max;
    vec![format!("--ulimit=nofile={nofile}:{nofile}"), "--ulimit=nproc=4096:4096".into()]
}

/// `podman` with the runtime and limits this host needs.
fn podman(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["podman", "--runtime", "runc"].map(String::from).to_vec();
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// A container removed on drop.
struct Ctr {
    name: String,
    proc: Option<Spawned>,
}

impl Ctr {
    /// `podman run --name NAME ARGS...` in the foreground (its output read by the test).
    fn run(prefix: &str, args: &[String]) -> Ctr {
        let name = unique_name(prefix, 48);
        let mut full = podman(&["run", "--rm", "--name", &name]);
        full.extend(ulimits());
        full.extend(args.iter().cloned());
        step(&format!("host # {}", container::shown(&full.iter().map(String::as_str).collect::<Vec<_>>())));
        let mut cmd = command_in(None, None, &full[0]);
        cmd.args(&full[1..]);
        Ctr { name, proc: Some(spawn(cmd)) }
    }

    /// Waits until the agent in this container has every program attached:
    /// `toa status --wait` on the host, which shares /run/toa and bpffs with the pod.
    fn wait_attached(&self, pin_dir: &str) {
        let args = [common::TOA, "status", "--wait", "--timeout", "60s", "--pin-dir", pin_dir];
        step(&format!("host # toa status --wait --timeout 60s --pin-dir {pin_dir}"));
        let out = run_in(None, None, &args);
        let logs = self.proc.as_ref().map(|p| p.lines_so_far(Stream::Stderr)).unwrap_or_default();
        assert!(
            out.status.success(),
            "{}: the agent did not attach: {}\n{logs:?}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The host pid of the container's main process.
    fn pid(&self) -> i32 {
        let out = run_in(None, None, &["podman", "inspect", "-f", "{{.State.Pid}}", &self.name]);
        succeeded(&out, "podman inspect").trim().parse().expect("a pid")
    }

    /// `podman stop` (SIGTERM, then the pod's grace period) and waits for the exit.
    fn stop(&mut self, grace: u64) {
        host(&["podman", "stop", "-t", &grace.to_string(), &self.name]);
        if let Some(mut p) = self.proc.take() {
            let status = p.wait_exit(READY);
            assert!(status.success(), "{} exited with {status}: {:?}", self.name, p.lines_so_far(Stream::Stderr));
        }
    }

    fn wait_for(&mut self, stream: Stream, line: &str) {
        let p = self.proc.as_mut().expect("running");
        p.wait_for_line(stream, |l| l.contains(line), READY);
    }
}

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = run_in(None, None, &["podman", "rm", "-f", "-t", "0", &self.name]);
    }
}

/// The cgroup v1 directories podman's cgroupfs manager makes for `--cgroup-parent=/NAME`, removed on drop.
struct V1Parent(String);

impl Drop for V1Parent {
    fn drop(&mut self) {
        let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else { return };
        for h in hierarchies.flatten() {
            let dir = h.path().join(&self.0);
            if dir.starts_with(cgroup2_root()) || !dir.is_dir() {
                continue;
            }
            let _ = run_in(None, None, &["find", &dir.to_string_lossy(), "-depth", "-type", "d", "-delete"]);
        }
    }
}

/// Removes a directory, or detaches and removes a pin directory, on drop.
struct Cleanup(PathBuf, bool);

impl Cleanup {
    fn dir(path: PathBuf) -> Cleanup {
        Cleanup(path, false)
    }

    fn pins(path: &str) -> Cleanup {
        Cleanup(PathBuf::from(path), true)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.1 && self.0.exists() {
            let pins = toa::sys::paths::PinDir::new(&self.0);
            let _ = run_in(None, None, &[common::TOA, "detach", "--pin-dir", &self.0.to_string_lossy()]);
            let _ = fs::remove_file(toa::ops::readiness::state_file(&pins));
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn get<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(y, |y, k| &y[*k])
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec().map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// What the DaemonSet declares for the agent's container, as `podman run` flags.
struct PodSpec {
    flags: Vec<String>,
    image: String,
    command: Vec<String>,
    config: String,
    grace: u64,
}

/// Reads the manifest; `config_dir` stands for the ConfigMap volume, `cgroup2` for the host's cgroup v2 root.
fn pod_spec(config_dir: &Path) -> PodSpec {
    let text = fs::read_to_string(format!("{REPO}/packaging/k8s/toa-daemonset.yaml")).expect("the manifest");
    let docs = YamlLoader::load_from_str(&text).expect("YAML");
    let kind = |k: &str| docs.iter().find(|d| d["kind"].as_str() == Some(k)).unwrap_or_else(|| panic!("a {k}"));
    let pod = get(kind("DaemonSet"), &["spec", "template", "spec"]);
    let c = &pod["containers"][0];
    let mut flags = Vec::new();
    if pod["hostNetwork"].as_bool() == Some(true) {
        flags.push("--network=host".to_string());
    }
    let sc = &c["securityContext"];
    for (key, value) in sc.as_hash().expect("securityContext") {
        let key = key.as_str().expect("a key");
        match key {
            "privileged" => assert_eq!(value.as_bool(), Some(false), "the pod is not privileged"),
            "allowPrivilegeEscalation" if value.as_bool() == Some(false) => {
                flags.push("--security-opt=no-new-privileges".into())
            }
            "readOnlyRootFilesystem" if value.as_bool() == Some(true) => {
                flags.extend(["--read-only".into(), "--read-only-tmpfs=false".into()])
            }
            "runAsUser" => flags.push(format!("--user={}", value.as_i64().expect("a uid"))),
            "capabilities" => {
                for cap in strings(&value["drop"]) {
                    flags.push(format!("--cap-drop={}", cap.to_lowercase()));
                }
                for cap in strings(&value["add"]) {
                    flags.push(format!("--cap-add=CAP_{cap}"));
                }
            }
            "seccompProfile" => {
                assert_eq!(value["type"].as_str(), Some("Unconfined"), "only Unconfined is mapped");
                flags.push("--security-opt=seccomp=unconfined".into());
            }
            other => panic!("securityContext.{other} = {value:?} is not mapped to podman: extend this test"),
        }
    }
    for env in c["env"].as_vec().map(Vec::as_slice).unwrap_or_default() {
        flags.push(format!("--env={}={}", env["name"].as_str().expect("name"), env["value"].as_str().expect("value")));
    }
    if let Some(mem) = get(c, &["resources", "limits", "memory"]).as_str() {
        flags.push(format!("--memory={}", mem.trim_end_matches("i").to_lowercase()));
    }
    // Volumes: hostPath as declared (the cgroup v2 root where this host has it), the ConfigMap from a directory.
    let volumes = pod["volumes"].as_vec().expect("volumes");
    for m in c["volumeMounts"].as_vec().expect("volumeMounts") {
        let name = m["name"].as_str().expect("name");
        let target = m["mountPath"].as_str().expect("mountPath");
        let v = volumes.iter().find(|v| v["name"].as_str() == Some(name)).expect("its volume");
        let source = if v["configMap"].as_hash().is_some() {
            config_dir.to_path_buf()
        } else {
            let path = v["hostPath"]["path"].as_str().expect("a hostPath");
            if path == "/sys/fs/cgroup" { cgroup2_root() } else { PathBuf::from(path) }
        };
        if v["hostPath"]["type"].as_str() == Some("DirectoryOrCreate") {
            fs::create_dir_all(&source).expect("DirectoryOrCreate");
        }
        let mut opts = Vec::new();
        if m["readOnly"].as_bool() == Some(true) {
            opts.push("ro");
        }
        if m["mountPropagation"].as_str() == Some("HostToContainer") {
            opts.push("rslave");
        }
        let opts = if opts.is_empty() { String::new() } else { format!(":{}", opts.join(",")) };
        flags.push(format!("--volume={}:{target}{opts}", source.display()));
    }
    let config = kind("ConfigMap")["data"]["toa.toml"].as_str().expect("toa.toml").to_string();
    PodSpec {
        flags,
        image: c["image"].as_str().expect("image").to_string(),
        command: strings(&c["command"]),
        config,
        grace: pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30) as u64,
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn healthz(port: u16) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect to /healthz");
    c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let mut text = String::new();
    c.read_to_string(&mut text).expect("read");
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
#[ignore = "needs root: podman, BPF, network namespaces, cgroups"]
fn the_image_runs_as_the_daemonset_declares_and_translates_host_and_container_servers_in_its_scope() {
    require_root();
    for tool in ["podman", "buildah", "runc", "mmdebstrap"] {
        let found = run_in(None, None, &["sh", "-c", &format!("command -v {tool}")]);
        assert!(found.status.success(), "{tool} is missing: run scripts/setup --test");
    }
    step("building the image twice: scripts/image --no-build");
    let id = build_image();
    assert_eq!(build_image(), id, "the same tree builds the same image");
    step(&format!("image {id}"));

    let pair = Pair::new("toa-pm");
    let cli_cg = Cgroup::new("toa-pm-cli");
    let scope = Cgroup::new("toa-pm-scope");
    let scope_name = scope.path().file_name().expect("name").to_string_lossy().into_owned();
    let _scope_v1 = V1Parent(scope_name.clone());
    let host_cg = scope.path().join("host");
    fs::create_dir(&host_cg).expect("a child cgroup in the scope");
    let outside = Cgroup::new("toa-pm-out");
    let agent_cg = Cgroup::new("toa-pm-agent");
    let agent_cg_name = agent_cg.path().file_name().expect("name").to_string_lossy().into_owned();
    let _agent_v1 = V1Parent(agent_cg_name.clone());

    // The ConfigMap's file, scoped to our cgroup, with its own pin directory and port.
    let config = Cleanup::dir(std::env::temp_dir().join(unique_name("toa-pm-config", 40)));
    let config_dir = config.0.clone();
    fs::create_dir_all(&config_dir).expect("config dir");
    let spec = pod_spec(&config_dir);
    let pin_dir = format!("/sys/fs/bpf/{}", unique_name("toa-pm", 40));
    // Dropped after the containers: whatever a failed run left attached goes.
    let _pins = Cleanup::pins(&pin_dir);
    let port = free_port();
    let mut config: toml::Table = spec.config.parse().expect("the ConfigMap's TOML");
    assert_eq!(config["cgroups"].as_array().map(Vec::len), Some(1));
    config.insert("cgroups".into(), toml::Value::Array(vec![format!("/host/cgroup/{scope_name}").into()]));
    config.insert("pin_dir".into(), pin_dir.clone().into());
    config.insert("metrics_listen".into(), format!("127.0.0.1:{port}").into());
    fs::write(config_dir.join("toa.toml"), toml::to_string(&config).expect("TOML")).expect("write the config");
    assert_eq!(
        spec.image,
        concat!("localhost/toa:", env!("CARGO_PKG_VERSION")),
        "the manifest names the image scripts/image tags"
    );

    let agent_args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![format!("--cgroup-parent=/{agent_cg_name}")];
        a.extend(spec.flags.iter().cloned());
        a.push(format!("--entrypoint={}", spec.command[0]));
        a.push(spec.image.clone());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let command_args: Vec<&str> = spec.command[1..].iter().map(String::as_str).collect();
    let mut agent = Ctr::run("toa-pm-agent", &agent_args(&command_args));
    agent.wait_attached(&pin_dir);
    assert_eq!(healthz(port), "HTTP/1.1 200 OK", "the kubelet's probe");
    assert_eq!(attached_to(scope.path()).matches("toa_").count(), 4, "attached to the scope");

    // Servers: in another container (its cgroup below the scope), on the host in the scope, and outside it.
    let rootfs =
        container::debian_rootfs(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("containers"), container::BASE_PACKAGES);
    let server_args: Vec<String> = [
        format!("--cgroup-parent=/{scope_name}"),
        format!("--network=ns:{}", pair.srv.path().display()),
        // --rootfs: the image argument is a directory (":O": an overlay, the cache stays as it is).
        "--rootfs".into(),
        format!("{}:O", rootfs.display()),
        "python3".into(),
        "-u".into(),
        "-c".into(),
        PEER_SERVER.into(),
        "9001".into(),
    ]
    .into();
    let mut in_container = Ctr::run("toa-pm-server", &server_args);
    in_container.wait_for(Stream::Stdout, "listening");
    let cgroup_line = fs::read_to_string(format!("/proc/{}/cgroup", in_container.pid())).expect("its cgroup");
    assert!(cgroup_line.contains(&format!("0::/{scope_name}/")), "the server container is in the scope: {cgroup_line}");
    let host_server = |cg: &Path, port: u16| {
        let mut cmd = command_in(Some(&pair.srv.path()), Some(cg), "python3");
        cmd.args(["-u", "-c", PEER_SERVER, &port.to_string()]);
        let mut p = spawn(cmd);
        p.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
        p
    };
    let _on_host = host_server(&host_cg, 9002);
    let _outside = host_server(outside.path(), 9003);

    let _inject = start_injector(cli_cg.path(), &["--addr", &format!("{REAL_CLIENT}:4242")]);
    let connect = |port: u16| -> String {
        let client = "import socket,sys; c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); print(c.makefile().readline().strip())";
        let out = run_in(
            Some(&pair.cli.path()),
            Some(cli_cg.path()),
            &["python3", "-c", client, "192.0.2.2", &port.to_string()],
        );
        let line = succeeded(&out, "client").trim().to_string();
        step(&format!("client -> 192.0.2.2:{port}: {line}"));
        line.split("getpeername=")
            .nth(1)
            .and_then(|p| p.rsplit_once(':'))
            .map(|(h, _)| h.to_string())
            .unwrap_or_default()
    };
    assert_eq!(connect(9001), REAL_CLIENT, "a server in another container, in the scope");
    assert_eq!(connect(9002), REAL_CLIENT, "a server on the host, in the scope");
    assert_eq!(connect(9003), pair.cli_v4.to_string(), "a server outside the scope keeps the forwarder's address");

    // A rolling update: the pod stops (persist = true keeps the programs), the next one adopts them.
    agent.stop(spec.grace);
    assert_eq!(attached_to(scope.path()).matches("toa_").count(), 4, "persist: still attached between pods");
    assert_eq!(connect(9002), REAL_CLIENT, "translating between two pods");
    let mut next = Ctr::run("toa-pm-agent", &agent_args(&command_args));
    next.wait_attached(&pin_dir);
    assert_eq!(attached_to(scope.path()).matches("toa_").count(), 4, "adopted, not attached twice");
    assert_eq!(connect(9001), REAL_CLIENT);
    next.stop(spec.grace);

    // Removing toa from the node: `toa detach` in a pod with the same settings.
    let mut detach = Ctr::run("toa-pm-detach", &agent_args(&["detach", "--pin-dir", &pin_dir]));
    detach.wait_for(Stream::Stdout, "detached 4 links");
    assert_eq!(attached_to(scope.path()).trim(), "", "nothing attached after toa detach");
    assert!(!Path::new(&pin_dir).exists(), "no pins left");
    assert_eq!(connect(9002), pair.cli_v4.to_string());
    drop(in_container);
}
