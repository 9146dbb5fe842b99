//! Summaries of repeated measurements, and the host's CPU counters.

use std::fmt;
use std::path::Path;

/// Median, quartiles and range of a set of measurements.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (NaNs are left out); all NaN when there are none.
    pub fn of(values: &[f64]) -> Summary {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Summary { n: 0, median: f64::NAN, q1: f64::NAN, q3: f64::NAN, min: f64::NAN, max: f64::NAN };
        }
        Summary {
            n: v.len(),
            median: quantile(&v, 0.5),
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
            min: v[0],
            max: v[v.len() - 1],
        }
    }

    /// The median with the interquartile range and the extremes, e.g.
    /// `812 [801–830] (790–900, n=7)`, `digits` after the point.
    pub fn show(&self, digits: usize) -> String {
        if self.n == 0 {
            return "-".into();
        }
        if self.n == 1 {
            return format!("{:.digits$}", self.median);
        }
        format!(
            "{:.digits$} [{:.digits$}–{:.digits$}] ({:.digits$}–{:.digits$}, n={})",
            self.median, self.q1, self.q3, self.min, self.max, self.n
        )
    }

    /// The median with the interquartile range only: `812 [801–830]`.
    pub fn short(&self, digits: usize) -> String {
        if self.n < 2 {
            return if self.n == 0 { "-".into() } else { format!("{:.digits$}", self.median) };
        }
        format!("{:.digits$} [{:.digits$}–{:.digits$}]", self.median, self.q1, self.q3)
    }

    /// `median,q1,q3,min,max,n` for the machine-readable lines.
    pub fn key(&self, digits: usize) -> String {
        format!(
            "{:.digits$},{:.digits$},{:.digits$},{:.digits$},{:.digits$},{}",
            self.median, self.q1, self.q3, self.min, self.max, self.n
        )
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show(1))
    }
}

/// Linear-interpolated quantile of sorted, non-empty `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Host CPU time from the first line of `/proc/stat`, in jiffies (USER_HZ,
/// 1/100 s): busy = user + nice + system + irq + softirq (guest time is
/// inside user); idle and iowait are not busy; steal is what the hypervisor
/// gave to others and is counted apart.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCpu {
    pub busy: u64,
    pub idle: u64,
    pub steal: u64,
}

/// Seconds per `/proc/stat` jiffy (USER_HZ is 100 on every Linux ABI).
pub const JIFFY_SECS: f64 = 0.01;

impl HostCpu {
    pub fn read() -> HostCpu {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        HostCpu::parse(text.lines().next().unwrap_or(""))
    }

    fn parse(line: &str) -> HostCpu {
        let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal guest guest_nice
        HostCpu { busy: at(0) + at(1) + at(2) + at(5) + at(6), idle: at(3) + at(4), steal: at(7) }
    }

    pub fn since(&self, earlier: &HostCpu) -> HostCpu {
        HostCpu {
            busy: self.busy.saturating_sub(earlier.busy),
            idle: self.idle.saturating_sub(earlier.idle),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }
}

/// `usage_usec` of a cgroup v2 directory's `cpu.stat` (0 when unreadable).
pub fn cgroup_usage_usec(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles() {
        let s = Summary::of(&[5.0, 1.0, 3.0, 2.0, 4.0, f64::NAN]);
        assert_eq!((s.n, s.median, s.q1, s.q3, s.min, s.max), (5, 3.0, 2.0, 4.0, 1.0, 5.0));
        assert_eq!(Summary::of(&[]).n, 0);
        assert_eq!(Summary::of(&[1.0, 2.0]).median, 1.5);
    }

    #[test]
    fn proc_stat_line() {
        let c = HostCpu::parse("cpu  100 5 50 1000 7 1 9 30 20 0");
        assert_eq!((c.busy, c.idle, c.steal), (165, 1007, 30));
    }
}
