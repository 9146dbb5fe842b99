//! `toa doctor`: everything that can keep toa from working, each with its fix.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    config::Config,
    receiver::{
        ebpf,
        instances::{self, Found, Twice},
        programs::{self, Hook, KernelPrograms, ProgramSpec, RECEIVER},
    },
    sys::{host as system, paths},
};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, with a caveat.
    Warn,
    /// Keeps toa from working.
    Fail,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when fine).
    pub fix: String,
}

fn check(name: &str, verdict: Verdict, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name: name.into(), verdict, detail: detail.into(), fix: fix.into() }
}

/// Runs every check. Loading the programs (not attaching them) is the
/// feature probe: the kernel's verifier says which hook or helper is missing.
pub fn run() -> Vec<Check> {
    let mut checks = Vec::new();
    // SAFETY: geteuid cannot fail.
    let euid0 = unsafe { libc::geteuid() } == 0;
    let missing = system::missing_capabilities();
    let root = missing.is_empty();
    checks.push(match (root, euid0) {
        (true, true) => check("privileges", Verdict::Ok, "running as root", ""),
        (true, false) => check("privileges", Verdict::Ok, "CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN", ""),
        (false, _) => check(
            "privileges",
            Verdict::Fail,
            format!("{} missing", missing.join(", ")),
            "run toa as root (or via the systemd unit)",
        ),
    });
    checks.push(kernel_check(&system::kernel_release(), system::kernel_version()));
    checks.push(if Path::new(paths::KERNEL_BTF).exists() {
        check("BTF", Verdict::Ok, paths::KERNEL_BTF, "")
    } else {
        check("BTF", Verdict::Fail, "no /sys/kernel/btf/vmlinux", "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    });
    checks.push(match system::cgroup2_root() {
        Ok(p) => check("cgroup v2", Verdict::Ok, format!("mounted at {}", p.display()), ""),
        Err(_) => check(
            "cgroup v2",
            Verdict::Fail,
            "not mounted",
            "mount it: mount -t cgroup2 none /sys/fs/cgroup/unified (or boot with systemd.unified_cgroup_hierarchy=1)",
        ),
    });
    let bpffs = Path::new(paths::BPFFS_MOUNT);
    checks.push(if system::is_bpffs(bpffs) {
        check("bpffs", Verdict::Ok, format!("mounted at {}", bpffs.display()), "")
    } else {
        check(
            "bpffs",
            Verdict::Warn,
            "not mounted at /sys/fs/bpf",
            "toa agent mounts it; or: mount -t bpf bpf /sys/fs/bpf",
        )
    });
    let modules = fs::read_to_string("/proc/modules").unwrap_or_default();
    let loaded: Vec<&str> = modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|m| matches!(*m, "toa" | "vtoa" | "toa_v6" | "ip_vs_toa"))
        .collect();
    checks.push(if loaded.is_empty() {
        check("TOA kernel modules", Verdict::Ok, "none loaded", "")
    } else {
        check(
            "TOA kernel modules",
            Verdict::Fail,
            format!("loaded: {}", loaded.join(", ")),
            format!(
                "unload them (rmmod {}) and stop their service, or they will rewrite addresses too",
                loaded.join(" ")
            ),
        )
    });
    if root {
        let kernel = KernelPrograms::read();
        let found = instances::pinned_links(&kernel, &[]);
        let cgroups = toa_cgroups(&found);
        checks.extend(duplicate_instances(&cgroups, &kernel, &found));
        checks.push(conflicting_programs(&cgroups, &kernel));
        checks.extend(probe_programs());
    }
    checks
}

/// The cgroups toa acts on: those of the configuration file (the cgroup v2
/// root when it names none), and those every toa link pinned on bpffs is
/// attached to (any agent's, running or not).
fn toa_cgroups(found: &[Found]) -> Vec<PathBuf> {
    let mut cgroups: Vec<PathBuf> = Vec::new();
    let configured = Config::load_default().map(|c| c.cgroups).unwrap_or_default();
    if configured.is_empty() {
        cgroups.extend(system::cgroup2_root().ok());
    } else {
        cgroups.extend(configured);
    }
    let ids: BTreeSet<u64> = found.iter().map(|f| f.link.info.cgroup_id).collect();
    if let Ok(root) = system::cgroup2_root() {
        cgroups.extend(ids.into_iter().filter_map(|id| system::find_cgroup(&root, id)));
    }
    let mut seen = BTreeSet::new();
    cgroups.retain(|c| fs::metadata(c).is_ok_and(|m| seen.insert(m.ino())));
    cgroups
}

/// Receiver programs in effect twice on a cgroup toa acts on: two toa
/// instances (two pin directories, or one that is not pinned) on it.
fn duplicate_instances(cgroups: &[PathBuf], kernel: &KernelPrograms, found: &[Found]) -> Vec<Check> {
    let scan = |found: &[Found]| -> Vec<(PathBuf, Vec<Twice>)> {
        cgroups
            .iter()
            .map(|c| (c.clone(), instances::twice_on(c, kernel, found)))
            .filter(|(_, twice)| !twice.is_empty())
            .collect()
    };
    let mut dups = scan(found);
    if !dups.is_empty() {
        // An agent replacing its links on restart or reload holds both for
        // a moment: only what is still there a little later counts.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let again = instances::pinned_links(kernel, &[]);
        let later = scan(&again);
        dups = later.into_iter().filter(|(l, _)| dups.iter().any(|(c, _)| c == l)).collect();
    }
    if dups.is_empty() {
        return vec![check(
            "toa instances",
            Verdict::Ok,
            format!("one per cgroup ({} cgroups toa acts on)", cgroups.len()),
            "",
        )];
    }
    dups.into_iter()
        .map(|(cgroup, twice)| {
            let what: Vec<String> = twice
                .iter()
                .map(|t| {
                    let mut owners: Vec<String> = t.pin_dirs.iter().map(|d| d.display().to_string()).collect();
                    if t.unpinned > 0 {
                        owners.push(format!("{} not pinned", t.unpinned));
                    }
                    format!("{} attached {} times (pin dirs {})", t.program, t.count, owners.join(", "))
                })
                .collect();
            let dirs: BTreeSet<&PathBuf> = twice.iter().flat_map(|t| &t.pin_dirs).collect();
            let fix = match dirs.iter().last() {
                Some(dir) => format!(
                    "two toa instances act on this cgroup and run every program twice: stop one, or remove its \
                     programs (`toa detach --pin-dir {}`)",
                    dir.display()
                ),
                None => "two toa instances act on this cgroup and run every program twice: stop one".to_string(),
            };
            check("toa instances", Verdict::Fail, format!("{}: {}", cgroup.display(), what.join("; ")), fix)
        })
        .collect()
}

/// The verdict on the running kernel (`version`: its major and minor) from
/// the program table: older than the newest a required program needs fails.
fn kernel_check(release: &str, version: Option<(u32, u32)>) -> Check {
    let needs = programs::newest_required();
    let (major, minor) = needs.min_kernel;
    match version {
        Some(v) if v >= needs.min_kernel => check("kernel", Verdict::Ok, release, ""),
        Some(_) => check(
            "kernel",
            Verdict::Fail,
            format!("{release}: older than {major}.{minor}"),
            format!("upgrade to {major}.{minor} or later ({} needs it to {})", needs.name, needs.role),
        ),
        None => check("kernel", Verdict::Warn, "version unreadable", ""),
    }
}

/// Programs of others in effect on the hooks toa uses, on every cgroup toa acts on.
fn conflicting_programs(cgroups: &[PathBuf], kernel: &KernelPrograms) -> Check {
    let mut found = Vec::new();
    for cgroup in cgroups {
        let Ok(dir) = fs::File::open(cgroup) else { continue };
        for hook in Hook::receiver_hooks() {
            let hook_name = hook.attach_type();
            for id in programs::query_effective(&dir, hook.attach_type_id()).unwrap_or_default() {
                let name = kernel.name(id).map_or_else(|| format!("id {id}"), str::to_string);
                let line = format!("{name} on {hook_name} of {}", cgroup.display());
                if !name.starts_with("toa_") && !found.contains(&line) {
                    found.push(line);
                }
            }
        }
    }
    if found.is_empty() {
        check(
            "other programs on toa's hooks",
            Verdict::Ok,
            format!("none on the {} cgroups toa acts on", cgroups.len()),
            "",
        )
    } else {
        check(
            "other programs on toa's hooks",
            Verdict::Warn,
            found.join(", "),
            "another component (e.g. Cilium's socket LB) also rewrites addresses: check that they agree, \
             or scope toa to the services that need it (cgroups = [...])",
        )
    }
}

/// Loads each program without attaching it: the feature probe.
fn probe_programs() -> Vec<Check> {
    let mut out = Vec::new();
    let mut obj = match ebpf::load_private() {
        Ok(o) => o,
        Err(e) => {
            return vec![check(
                "eBPF object",
                Verdict::Fail,
                e.to_string().lines().next().unwrap_or("").to_string(),
                "the kernel cannot create toa's maps (socket storage needs 5.2, BTF)",
            )];
        }
    };
    for spec in &RECEIVER {
        let loaded = programs::load(&mut obj, spec).map_err(|e| e.to_string());
        out.push(program_check(spec, &loaded));
    }
    out
}

/// The verdict on one program from whether it loaded (`Err`: the kernel's reason).
fn program_check(spec: &ProgramSpec, loaded: &Result<(), String>) -> Check {
    let name = format!("program {}", spec.name);
    match loaded {
        Ok(()) => check(&name, Verdict::Ok, format!("loads ({})", spec.role), ""),
        // The agent runs without an optional program; so does the verdict.
        Err(e) if spec.optional => check(
            &name,
            Verdict::Warn,
            format!("{e}; the agent runs without it and cannot {}", spec.role),
            format!("it needs {}.{} or later; everything else works without it", spec.min_kernel.0, spec.min_kernel.1),
        ),
        Err(e) => check(
            &name,
            Verdict::Fail,
            e.clone(),
            format!(
                "this kernel lacks what it needs to {} (needs {}.{} or later)",
                spec.role, spec.min_kernel.0, spec.min_kernel.1
            ),
        ),
    }
}

/// Whether any check failed (`toa doctor` then exits 1).
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.verdict == Verdict::Fail)
}

/// Text form.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!("[{mark}] {}: {}\n", c.name, c.detail));
        if !c.fix.is_empty() {
            out.push_str(&format!("       fix: {}\n", c.fix));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hook: Hook) -> &'static ProgramSpec {
        RECEIVER.iter().find(|s| s.hook == hook).expect("in the table")
    }

    #[test]
    fn a_program_that_loads_is_ok() {
        let c = program_check(spec(Hook::SockOps), &Ok(()));
        assert_eq!((c.name.as_str(), c.verdict), ("program toa_capture", Verdict::Ok));
    }

    #[test]
    fn a_required_program_that_does_not_load_fails() {
        for hook in [Hook::SockOps, Hook::GetPeerName4, Hook::GetPeerName6] {
            let c = program_check(spec(hook), &Err("invalid argument".into()));
            assert_eq!(c.verdict, Verdict::Fail, "{hook:?}");
            assert!(c.detail.contains("invalid argument") && c.fix.contains(spec(hook).role), "{c:?}");
        }
    }

    #[test]
    fn the_kernel_is_measured_against_the_program_table() {
        let c = kernel_check("6.1.0-28-amd64", Some((6, 1)));
        assert_eq!((c.verdict, c.detail.as_str()), (Verdict::Ok, "6.1.0-28-amd64"));
        let c = kernel_check("5.4.0", Some((5, 4)));
        assert_eq!(c.verdict, Verdict::Fail);
        assert_eq!(c.detail, "5.4.0: older than 5.10");
        assert!(c.fix.starts_with("upgrade to 5.10 or later (toa_capture needs it"), "{c:?}");
        assert_eq!(kernel_check("", None).verdict, Verdict::Warn);
        // The optional getsockopt program does not raise the bar.
        assert!(RECEIVER.iter().all(|s| s.optional || s.min_kernel <= programs::newest_required().min_kernel));
    }

    #[test]
    fn an_optional_program_that_does_not_load_is_a_warning_naming_what_is_missing() {
        let c = program_check(spec(Hook::GetSockopt), &Err("invalid argument".into()));
        assert_eq!(c.verdict, Verdict::Warn, "{c:?}");
        assert!(c.detail.contains("invalid argument"), "{c:?}");
        assert!(c.detail.contains("vendor getsockopt() calls (1348 vtoa, 4096 NAT64)"), "{c:?}");
        assert!(!failed(&[c]), "a warning does not fail the doctor");
    }
}
