//! Packaging: the .deb installs, enables, removes and purges
//! cleanly in a scratch root; removing it on a live system leaves nothing
//! attached; the systemd unit verifies and its capabilities suffice; the
//! Kubernetes DaemonSet says what it must.

mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
};

use common::{READY, TOA, attached_to, require_root, toa};
use integration_test::{
    cgroup::Cgroup,
    netns::unique_name,
    process::{Spawned, Stream, command_in, run_in, spawn, succeeded},
};
use yaml_rust2::{Yaml, YamlLoader};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Builds the .deb once per test binary (`scripts/package --no-build`, from the binary under test).
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out = run_in(None, None, &[&format!("{REPO}/scripts/package"), "--no-build"]);
        succeeded(&out, "scripts/package");
        let last = String::from_utf8_lossy(&out.stdout).lines().last().expect("the .deb path").to_string();
        let path = Path::new(REPO).join(last);
        assert!(path.is_file(), "{}", path.display());
        path
    })
}

/// An empty dpkg root; removed on drop.
struct ScratchRoot(PathBuf);

impl ScratchRoot {
    fn new() -> ScratchRoot {
        let root = std::env::temp_dir().join(unique_name("toa-root", 40));
        for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
            fs::create_dir_all(root.join(dir)).expect("dpkg dirs");
        }
        fs::write(root.join("var/lib/dpkg/status"), "").expect("status file");
        ScratchRoot(root)
    }

    /// dpkg on this root; maintainer scripts run outside a chroot with DPKG_ROOT set.
    fn dpkg(&self, args: &[&str]) -> Output {
        let root = format!("--root={}", self.0.display());
        let base = ["dpkg", &root, "--force-script-chrootless", "--force-depends", "--log=/dev/null"];
        run_in(None, None, &[&base[..], args].concat())
    }

    fn has(&self, path: &str) -> bool {
        self.0.join(path).symlink_metadata().is_ok()
    }
}

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const WANTS: &str = "etc/systemd/system/multi-user.target.wants/toa.service";

#[test]
#[ignore = "needs root: dpkg"]
fn the_deb_installs_enables_removes_and_purges_cleanly_in_a_scratch_root() {
    require_root();
    let deb = deb().to_string_lossy().into_owned();
    let info = run_in(None, None, &["dpkg-deb", "--info", &deb]);
    succeeded(&info, "dpkg-deb --info");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: toa") && info.contains("postinst") && info.contains("prerm"), "{info}");
    let conffiles = run_in(None, None, &["dpkg-deb", "-I", &deb, "conffiles"]);
    assert_eq!(String::from_utf8_lossy(&conffiles.stdout).trim(), "/etc/toa/toa.toml");

    let root = ScratchRoot::new();
    succeeded(&root.dpkg(&["-i", &deb]), "dpkg -i");
    for path in [
        "usr/bin/toa",
        "lib/systemd/system/toa.service",
        "lib/systemd/system/toa-proxy@.service",
        "etc/toa/toa.toml",
        "usr/share/man/man1/toa.1.gz",
        "usr/share/man/man1/toa-agent.1.gz",
        "usr/share/man/man1/toa-table.1.gz",
        "usr/share/bash-completion/completions/toa",
        "usr/share/zsh/vendor-completions/_toa",
        "usr/share/fish/vendor_completions.d/toa.fish",
    ] {
        assert!(root.has(path), "{path} installed");
    }
    let bin = root.0.join("usr/bin/toa");
    assert_eq!(fs::metadata(&bin).expect("binary").permissions().mode() & 0o777, 0o755);
    let version = run_in(None, None, &[&bin.to_string_lossy(), "--version"]);
    succeeded(&version, "toa --version");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("toa "));
    assert_eq!(
        fs::read_to_string(root.0.join("etc/toa/toa.toml")).expect("config"),
        include_str!("../../packaging/toa.toml")
    );
    assert_eq!(
        fs::read_to_string(root.0.join("lib/systemd/system/toa.service")).expect("unit"),
        include_str!("../../packaging/systemd/toa.service")
    );
    // postinst enables the unit (no running systemd in a scratch root: enable only).
    assert_eq!(fs::read_link(root.0.join(WANTS)).expect("enabled"), Path::new("/lib/systemd/system/toa.service"));
    let status = root.dpkg(&["-s", "toa"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("Status: install ok installed"));

    // An edited conffile survives removal; purge removes it.
    fs::write(root.0.join("etc/toa/toa.toml"), "persist = true\n").expect("edit");
    succeeded(&root.dpkg(&["-r", "toa"]), "dpkg -r");
    assert!(!root.has("usr/bin/toa") && !root.has("lib/systemd/system/toa.service"));
    assert!(!root.has(WANTS), "removal disables the unit");
    assert!(root.has("etc/toa/toa.toml"), "remove keeps the edited configuration");
    succeeded(&root.dpkg(&["-P", "toa"]), "dpkg -P");
    assert!(!root.has("etc/toa"), "purge removes the configuration");
    let listed =
        run_in(None, None, &["find", &root.0.to_string_lossy(), "-type", "f", "-not", "-path", "*/var/lib/dpkg/*"]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "", "nothing of ours is left");
}

/// A private mount namespace with its own bpffs on /sys/fs/bpf and empty
/// /run and /etc/toa: the package's default paths (pins and their lock, configuration)
/// belong to the test there, also on a host where toa is installed and running.
/// A holder process keeps it; when it goes, the namespace and its pins go too.
struct PrivateMounts {
    holder: Spawned,
}

impl PrivateMounts {
    fn new() -> PrivateMounts {
        let mut cmd = command_in(None, None, "unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-ec"]);
        cmd.arg(
            "mount -t bpf bpf /sys/fs/bpf; mount -t tmpfs tmpfs /run; \
             if [ -d /etc/toa ]; then mount -t tmpfs tmpfs /etc/toa; fi; echo ready; exec sleep infinity",
        );
        let mut holder = spawn(cmd);
        holder.wait_for_line(Stream::Stdout, |l| l == "ready", READY);
        PrivateMounts { holder }
    }

    /// `program` run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = command_in(None, None, "nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.pid())).arg("--").arg(program);
        cmd
    }

    /// Whether `path` exists inside the namespace.
    fn exists(&self, path: &str) -> bool {
        self.command("test").args(["-e", path]).status().expect("run test -e").success()
    }
}

#[test]
#[ignore = "needs root: BPF, cgroups, mount namespaces"]
fn removing_the_package_on_a_live_system_leaves_nothing_attached_even_with_persist() {
    require_root();
    // The package's prerm detaches the default pin directory: give it one of its own.
    let mounts = PrivateMounts::new();
    let default_pins = "/sys/fs/bpf/toa";
    let deb = deb().to_string_lossy().into_owned();
    let ctl = std::env::temp_dir().join(unique_name("toa-ctl", 40));
    succeeded(&run_in(None, None, &["dpkg-deb", "-e", &deb, &ctl.to_string_lossy()]), "dpkg-deb -e");
    let cg = Cgroup::new("toa-srv");
    let mut cmd = mounts.command(TOA);
    cmd.args(["agent", "--cgroup", &cg.path().to_string_lossy(), "--persist", "--metrics-listen", ""]);
    let mut agent = spawn(cmd);
    agent.wait_for_line(Stream::Stderr, |l| l.contains("agent ready"), READY);
    assert!(agent.terminate().success());
    assert_eq!(attached_to(cg.path()).matches("toa_").count(), 4, "persist keeps them after a stop");
    assert!(mounts.exists(default_pins), "the agent pinned under {default_pins}");
    // prerm remove, as dpkg runs it on this (systemd-less) host, with the binary on PATH.
    let bin_dir = Path::new(TOA).parent().expect("bin dir").to_string_lossy().into_owned();
    let prerm = ctl.join("prerm").to_string_lossy().into_owned();
    let path = format!("PATH={bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin");
    let out =
        mounts.command("env").args(["-u", "DPKG_ROOT", &path, "sh", &prerm, "remove"]).output().expect("run prerm");
    succeeded(&out, "prerm remove");
    assert_eq!(attached_to(cg.path()).trim(), "", "nothing attached after removal");
    assert!(!mounts.exists(default_pins), "no pins left");
    let _ = fs::remove_dir_all(&ctl);
}

/// The unit with ExecStart pointing at the binary under test.
fn unit_for_test(dir: &Path) -> PathBuf {
    let unit = include_str!("../../packaging/systemd/toa.service").replace("/usr/bin/toa", TOA);
    let path = dir.join("toa.service");
    fs::write(&path, unit).expect("writing the unit");
    path
}

fn unit_value(key: &str) -> String {
    include_str!("../../packaging/systemd/toa.service")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= in the unit"))
        .to_string()
}

#[test]
fn the_systemd_unit_verifies() {
    let found = run_in(None, None, &["sh", "-c", "command -v systemd-analyze"]);
    assert!(
        found.status.success(),
        "systemd-analyze is not installed: scripts/setup --test installs it (package systemd)"
    );
    let dir = std::env::temp_dir().join(unique_name("toa-unit", 40));
    fs::create_dir_all(&dir).expect("dir");
    let unit = unit_for_test(&dir);
    let template = include_str!("../../packaging/systemd/toa-proxy@.service").replace("/usr/bin/toa", TOA);
    fs::write(dir.join("toa-proxy@.service"), template).expect("writing the template");
    // An instance of the template, found next to it.
    let out = run_in(
        None,
        None,
        &[
            "systemd-analyze",
            "verify",
            "--man=no",
            &unit.to_string_lossy(),
            &format!("{}/toa-proxy@web.service", dir.display()),
        ],
    );
    // verify exits 0 on unknown keys and bad values too; it says so on stderr.
    succeeded(&out, "systemd-analyze verify");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "", "systemd-analyze verify complains");
    assert_eq!(unit_value("ExecStart"), "/usr/bin/toa agent");
    // Type=notify: started means attached. Reload needs nothing but toa itself
    // (a minimal Debian has no /bin/kill: procps is not installed).
    assert_eq!(unit_value("Type"), "notify");
    assert_eq!(unit_value("ExecReload"), "/usr/bin/toa reload");
    assert_eq!(unit_value("RuntimeDirectoryPreserve"), "yes", "/run/toa is shared with the proxy instances");
    assert_eq!(unit_value("Restart"), "on-failure");
    assert_eq!(unit_value("RuntimeDirectory"), "toa");
    assert_eq!(unit_value("CapabilityBoundingSet"), unit_value("AmbientCapabilities"));
    assert_eq!(unit_value("WantedBy"), "multi-user.target");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root: BPF, cgroups, capabilities"]
fn the_units_capabilities_suffice_and_fewer_are_refused_clearly() {
    require_root();
    // setpriv's names: lower case, without CAP_.
    let caps: Vec<String> = unit_value("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let bounding = |caps: &[String]| {
        format!("--bounding-set=-all,{}", caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(","))
    };
    let cg = Cgroup::new("toa-srv");
    let cg_s = cg.path().to_string_lossy().into_owned();
    let pins = format!("/sys/fs/bpf/{}", unique_name("toa-test", 40));
    let mut cmd = command_in(None, None, "setpriv");
    cmd.args(["--inh-caps=-all", &bounding(&caps), TOA, "agent", "--cgroup", &cg_s, "--pin-dir", &pins]);
    cmd.args(["--metrics-listen", ""]);
    let mut agent = spawn(cmd);
    agent.wait_for_line(Stream::Stderr, |l| l.contains("agent ready"), READY);
    assert_eq!(attached_to(cg.path()).matches("toa_").count(), 4);
    let status = toa(&["status", "--pin-dir", &pins]);
    assert!(String::from_utf8_lossy(&status.stdout).starts_with("agent:    running"));
    assert!(agent.terminate().success());
    assert_eq!(attached_to(cg.path()).trim(), "");
    // Without CAP_PERFMON the verifier refuses the capture program: say so before trying.
    let fewer: Vec<String> = caps.iter().filter(|c| *c != "perfmon").cloned().collect();
    let out = run_in(
        None,
        None,
        &["setpriv", "--inh-caps=-all", &bounding(&fewer), TOA, "agent", "--cgroup", &cg_s, "--pin-dir", &pins],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.trim().starts_with("toa: toa lacks CAP_PERFMON"), "{err}");
    assert_eq!(attached_to(cg.path()).trim(), "");
    assert!(!Path::new(&pins).exists());
}

fn get<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(y, |y, k| &y[*k])
}

#[test]
fn the_daemonset_manifest_grants_capabilities_mounts_bpffs_and_cgroup2_and_probes_healthz() {
    let text = fs::read_to_string(format!("{REPO}/packaging/k8s/toa-daemonset.yaml")).expect("the manifest");
    let docs = YamlLoader::load_from_str(&text).expect("valid YAML");
    let kind = |k: &str| docs.iter().find(|d| d["kind"].as_str() == Some(k)).unwrap_or_else(|| panic!("a {k}"));
    let ds = kind("DaemonSet");
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    let pod = get(ds, &["spec", "template"]);
    let annotations = get(pod, &["metadata", "annotations"]);
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9410"));
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true), "probes on 127.0.0.1 need the host's network");
    let containers = spec["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    let caps = |k: &str| -> Vec<String> {
        sc["capabilities"][k]
            .as_vec()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().expect("a name").to_string())
            .collect()
    };
    assert_eq!(caps("drop"), ["ALL"]);
    let unit_caps: Vec<String> = unit_value("CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    assert_eq!(caps("add"), unit_caps, "the same capabilities as the systemd unit");
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some("/healthz"), "{probe}");
        assert_eq!(get["port"].as_i64(), Some(9410), "{probe}");
        assert_eq!(get["host"].as_str(), Some("127.0.0.1"), "{probe}");
    }
    let ports = c["ports"].as_vec().expect("ports");
    assert!(ports.iter().any(|p| p["containerPort"].as_i64() == Some(9410) && p["name"].as_str() == Some("metrics")));
    // Volumes: host bpffs and the host cgroup2 root, mounted where the config says.
    let volumes = spec["volumes"].as_vec().expect("volumes");
    let host_path = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("hostPath volume {name}"))
            .to_string()
    };
    let mounts = c["volumeMounts"].as_vec().expect("volumeMounts");
    let mount_of = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("mount of {name}"))
            .to_string()
    };
    assert_eq!(host_path("bpffs"), "/sys/fs/bpf");
    assert_eq!(mount_of("bpffs"), "/sys/fs/bpf");
    assert_eq!(host_path("cgroup2"), "/sys/fs/cgroup");
    // The agent's configuration (a ConfigMap) is valid and consistent with the pod.
    let config = kind("ConfigMap")["data"]["toa.toml"].as_str().expect("toa.toml in the ConfigMap");
    let dir = std::env::temp_dir().join(unique_name("toa-k8s", 40));
    fs::create_dir_all(&dir).expect("dir");
    fs::write(dir.join("toa.toml"), config).expect("write");
    let out = toa(&["config", "--config", &dir.join("toa.toml").to_string_lossy()]);
    succeeded(&out, "toa config on the ConfigMap's file");
    let parsed: toml::Table = config.parse().expect("TOML");
    assert_eq!(
        parsed["metrics_listen"].as_str(),
        Some("0.0.0.0:9410"),
        "reachable for Prometheus, probed on 127.0.0.1"
    );
    assert_eq!(parsed["persist"].as_bool(), Some(true), "rolling updates never leave a gap");
    let cgroups = parsed["cgroups"].as_array().expect("cgroups");
    assert_eq!(cgroups[0].as_str(), Some(mount_of("cgroup2").as_str()));
    assert_eq!(parsed["pin_dir"].as_str().map(|p| p.starts_with(&mount_of("bpffs"))), Some(true));
    let command: Vec<&str> = c["command"].as_vec().expect("command").iter().filter_map(Yaml::as_str).collect();
    assert_eq!(command, ["/usr/bin/toa", "agent", "--config", "/etc/toa/toa.toml"]);
    assert_eq!(mount_of("config"), "/etc/toa");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn the_daemonset_manifest_validates_against_the_kubernetes_api_schemas() {
    // kubernetes-validate (PyPI), strict, Kubernetes 1.25 and 1.37; offline once installed.
    let out = run_in(None, None, &[&format!("{REPO}/scripts/validate-k8s")]);
    succeeded(&out, "scripts/validate-k8s");
    let log = String::from_utf8_lossy(&out.stdout);
    for version in ["1.25", "1.37"] {
        assert!(log.contains(&format!("passed for resource daemonset/toa against version {version}")), "{log}");
    }
    // The check can fail: an unknown field in the pod spec is refused.
    let dir = std::env::temp_dir().join(unique_name("toa-k8s", 40));
    fs::create_dir_all(&dir).expect("dir");
    let text = fs::read_to_string(format!("{REPO}/packaging/k8s/toa-daemonset.yaml")).expect("the manifest");
    let bad = dir.join("bad.yaml");
    fs::write(&bad, text.replace("      hostNetwork: true\n", "      hostNetwork: true\n      hostNetworking: true\n"))
        .expect("write");
    let out = run_in(None, None, &[&format!("{REPO}/scripts/validate-k8s"), &bad.to_string_lossy()]);
    assert!(!out.status.success(), "a misspelt field passes: {}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("'hostNetworking' was unexpected"));
    let _ = fs::remove_dir_all(&dir);
}
