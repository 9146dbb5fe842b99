//! Reading and printing the per-CPU counters.

use std::fmt::Write as _;

use aya::maps::{Map, MapData, PerCpuArray};
use serde_json::{Map as JsonMap, Value, json};
use toa_common::{counters::COUNTERS, maps};

use crate::{Error, Result, sys::paths::PinDir};

/// Counter values at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Values per counter (in [`COUNTERS`] order), one per possible CPU.
    pub rows: Vec<(&'static str, Vec<u64>)>,
}

impl Snapshot {
    /// Reads the counters pinned under `pins`.
    pub fn read_pinned(pins: &PinDir) -> Result<Snapshot> {
        let path = pins.map(maps::COUNTERS);
        if !path.exists() {
            return Err(Error::NotRunning { path });
        }
        let data = MapData::from_pin(&path).map_err(|source| Error::Map { name: maps::COUNTERS, source })?;
        Snapshot::read_map(&Map::PerCpuArray(data))
    }

    /// Reads the counters from a loaded map.
    pub fn read_map(map: &Map) -> Result<Snapshot> {
        let err = |source| Error::Map { name: maps::COUNTERS, source };
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(err)?;
        let mut rows = Vec::with_capacity(COUNTERS.len());
        for (counter, name) in COUNTERS {
            let values = array.get(&(counter as u32), 0).map_err(err)?;
            rows.push((name, values.iter().copied().collect()));
        }
        Ok(Snapshot { rows })
    }

    /// The total of one counter over all CPUs.
    pub fn total(&self, name: &str) -> Option<u64> {
        self.rows.iter().find(|(n, _)| *n == name).map(|(_, v)| v.iter().sum())
    }

    /// A table like `/proc/net/toa_stats`: a row per counter, a column per CPU, and the total.
    pub fn to_text(&self) -> String {
        let cpus = self.rows.first().map_or(0, |(_, v)| v.len());
        let mut out = String::new();
        let _ = write!(out, "{:<24}", "");
        for cpu in 0..cpus {
            let _ = write!(out, "{:>14}", format!("CPU{cpu}"));
        }
        let _ = writeln!(out, "{:>14}", "total");
        for (name, values) in &self.rows {
            let _ = write!(out, "{name:<24}");
            for v in values {
                let _ = write!(out, "{v:>14}");
            }
            let _ = writeln!(out, "{:>14}", values.iter().sum::<u64>());
        }
        out
    }

    /// One JSON object: counter name → total, plus `per_cpu` with the columns.
    pub fn to_json(&self) -> Value {
        let mut top = JsonMap::new();
        let mut per_cpu = JsonMap::new();
        for (name, values) in &self.rows {
            top.insert((*name).to_string(), json!(values.iter().sum::<u64>()));
            per_cpu.insert((*name).to_string(), json!(values));
        }
        top.insert("per_cpu".to_string(), Value::Object(per_cpu));
        Value::Object(top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot { rows: vec![("syn_recv_sock_toa", vec![3, 4]), ("getname_toa_ok", vec![0, 7])] }
    }

    #[test]
    fn text_has_a_column_per_cpu_and_a_total() {
        let text = sample().to_text();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["CPU0", "CPU1", "total"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["syn_recv_sock_toa", "3", "4", "7"]);
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["getname_toa_ok", "0", "7", "7"]);
    }

    #[test]
    fn json_has_totals_at_the_top() {
        let v = sample().to_json();
        assert_eq!(v["syn_recv_sock_toa"], 7);
        assert_eq!(v["getname_toa_ok"], 7);
        assert_eq!(v["per_cpu"]["syn_recv_sock_toa"], json!([3, 4]));
        assert_eq!(sample().total("getname_toa_ok"), Some(7));
    }
}
