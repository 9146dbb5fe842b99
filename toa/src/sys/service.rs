//! Which systemd unit runs this process, and whether systemd is restarting it.
//!
//! `systemctl restart toa` stops the agent and starts it again. A clean stop
//! detaches every program (unless `persist = true`), so connections accepted
//! between the two would go untranslated. At its stop the agent therefore
//! asks systemd whether the job stopping it is a restart: then it leaves the
//! programs attached and pinned, and the next agent adopts them, as after a
//! crash. A `systemctl stop` (a stop job) still detaches everything.

use std::process::Command;

/// Set by systemd in the environment of every process it starts for a unit.
pub const INVOCATION_ID: &str = "INVOCATION_ID";

/// The unit (`*.service`) whose cgroup this process is in, when systemd started it.
pub fn own_unit() -> Option<String> {
    std::env::var_os(INVOCATION_ID)?;
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    unit_of_cgroup_file(&text)
}

/// The service unit named by `/proc/PID/cgroup` (the cgroup v2 line, or
/// systemd's own hierarchy on hybrid hosts).
pub fn unit_of_cgroup_file(text: &str) -> Option<String> {
    let v2 = text.lines().find_map(|l| l.strip_prefix("0::"));
    let named = text.lines().find_map(|l| l.split_once(":name=systemd:").map(|(_, path)| path));
    [v2, named]
        .into_iter()
        .flatten()
        .find_map(|path| path.rsplit('/').next().filter(|u| u.ends_with(".service")).map(str::to_string))
}

/// Whether `systemctl list-jobs` output lists a restart job for `unit`.
pub fn lists_restart(list_jobs: &str, unit: &str) -> bool {
    list_jobs.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, name, kind) = (fields.next(), fields.next(), fields.next());
        name == Some(unit) && matches!(kind, Some("restart" | "try-restart"))
    })
}

/// Whether systemd has a restart job running for this process's unit (false
/// when systemd did not start it or cannot be asked).
pub fn restart_queued() -> bool {
    let Some(unit) = own_unit() else { return false };
    let out = Command::new("systemctl").args(["list-jobs", "--no-legend", "--plain", "--full", &unit]).output();
    match out {
        Ok(out) if out.status.success() => lists_restart(&String::from_utf8_lossy(&out.stdout), &unit),
        Ok(out) => {
            tracing::warn!(unit, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "systemctl list-jobs failed; treating the stop as a stop");
            false
        }
        Err(e) => {
            tracing::warn!(unit, error = %e, "cannot run systemctl; treating the stop as a stop");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_comes_from_the_cgroup_path() {
        let cases: &[(&str, Option<&str>)] = &[
            ("0::/system.slice/toa.service\n", Some("toa.service")),
            ("0::/system.slice/system-toa\\x2dproxy.slice/toa-proxy@web.service\n", Some("toa-proxy@web.service")),
            // Hybrid hosts: systemd's own hierarchy names the unit too.
            ("9:name=systemd:/system.slice/toa.service\n8:pids:/\n0::/system.slice/toa.service\n", Some("toa.service")),
            ("0::/user.slice/user-0.slice/session-3.scope\n", None),
            ("0::/\n", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(unit_of_cgroup_file(text).as_deref(), *want, "{text:?}");
        }
    }

    #[test]
    fn only_a_restart_job_of_the_unit_counts() {
        let cases: &[(&str, bool)] = &[
            ("947 toa.service restart running\n", true),
            ("947 toa.service try-restart running\n", true),
            ("999 toa.service stop running\n", false),
            ("12 other.service restart running\n", false),
            ("12 other.service restart running\n13 toa.service stop waiting\n", false),
            ("", false),
        ];
        for (out, want) in cases {
            assert_eq!(lists_restart(out, "toa.service"), *want, "{out:?}");
        }
    }
}
