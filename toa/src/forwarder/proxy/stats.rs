//! The forwarder's counters: kept in atomics by the workers, served as one
//! JSON object on a unix socket, read back by `toa stats`.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use serde_json::{Value, json};

use super::shared::Shared;
use crate::{Error, Result};

/// The names of the per-listener counters, in JSON order.
const LISTENER_COUNTERS: [&str; 8] = [
    "connections_active",
    "connections_total",
    "connections_refused",
    "bytes_client_to_backend",
    "bytes_backend_to_client",
    "backend_connect_failures",
    "idle_timeouts",
    "resets",
];

/// The JSON snapshot the running proxy serves.
pub(crate) fn snapshot(shared: &Shared) -> Value {
    let mut sums = [0u64; 8];
    let mut listeners = Vec::new();
    for l in &shared.listeners {
        let values = l.stats.values();
        for (s, v) in sums.iter_mut().zip(values) {
            *s += v;
        }
        let mut obj = serde_json::Map::new();
        obj.insert("listen".into(), json!(l.settings.listen.to_string()));
        obj.insert("balance".into(), json!(l.settings.balance.name()));
        for (name, v) in LISTENER_COUNTERS.iter().zip(values) {
            obj.insert((*name).into(), json!(v));
        }
        let backends: Vec<Value> = l
            .pool
            .backends
            .iter()
            .map(|b| {
                json!({
                    "addr": b.settings.addr.to_string(),
                    "healthy": b.healthy.load(Relaxed),
                    "active": b.active.load(Relaxed),
                    "total": b.total.load(Relaxed),
                    "connect_failures": b.connect_failures.load(Relaxed),
                    "check_failures": b.check_failures.load(Relaxed),
                })
            })
            .collect();
        obj.insert("backends_healthy".into(), json!(l.pool.healthy()));
        obj.insert("backends".into(), Value::Array(backends));
        listeners.push(Value::Object(obj));
    }
    let mut top = serde_json::Map::new();
    top.insert("pid".into(), json!(std::process::id()));
    for (name, v) in LISTENER_COUNTERS.iter().zip(sums) {
        top.insert((*name).into(), json!(v));
    }
    let (written, no_room) = shared.option_counters();
    top.insert("options_inserted".into(), json!(written));
    top.insert("options_no_room".into(), json!(no_room));
    top.insert("listeners".into(), Value::Array(listeners));
    Value::Object(top)
}

/// Serves snapshots on a unix socket until the process exits; removes the
/// socket file when dropped.
pub(crate) struct StatsServer {
    path: PathBuf,
}

impl StatsServer {
    /// Binds `path` (refusing if another proxy answers there) and serves from a thread.
    pub fn start(path: &Path, shared: Arc<Shared>) -> Result<StatsServer> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::Invalid(format!(
                    "another toa proxy serves its counters at {} (stop it, or give --stats-socket another path)",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(Error::io("removing stale socket", path))?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        let listener = UnixListener::bind(path).map_err(Error::io("binding stats socket", path))?;
        std::thread::Builder::new()
            .name("toa-proxy-stats".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                    let text = snapshot(&shared).to_string();
                    let _ = conn.write_all(text.as_bytes());
                    let _ = conn.write_all(b"\n");
                }
            })
            .map_err(Error::io("starting the stats thread", path))?;
        Ok(StatsServer { path: path.to_path_buf() })
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks the proxy serving at `path` for its counters; `None` when none answers.
pub fn fetch(path: &Path) -> Option<Value> {
    let mut conn = UnixStream::connect(path).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// The snapshot as text, for `toa stats`.
pub fn render_text(v: &Value) -> String {
    let mut out = String::new();
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let _ = writeln!(out, "proxy (pid {})", num(v, "pid"));
    for name in LISTENER_COUNTERS.iter().chain(&["options_inserted", "options_no_room"]) {
        let _ = writeln!(out, "  {name:<26}{:>14}", num(v, name));
    }
    for l in v.get("listeners").and_then(Value::as_array).into_iter().flatten() {
        let listen = l.get("listen").and_then(Value::as_str).unwrap_or("?");
        let balance = l.get("balance").and_then(Value::as_str).unwrap_or("?");
        let _ = writeln!(out, "  listener {listen} ({balance})");
        for name in LISTENER_COUNTERS {
            let _ = writeln!(out, "    {name:<24}{:>14}", num(l, name));
        }
        for b in l.get("backends").and_then(Value::as_array).into_iter().flatten() {
            let addr = b.get("addr").and_then(Value::as_str).unwrap_or("?");
            let up = if b.get("healthy").and_then(Value::as_bool).unwrap_or(false) { "up" } else { "DOWN" };
            let _ = writeln!(
                out,
                "    backend {addr:<28} {up:<5} active {:<6} total {:<10} connect_failures {:<6} check_failures {}",
                num(b, "active"),
                num(b, "total"),
                num(b, "connect_failures"),
                num(b, "check_failures"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rendering_names_every_counter() {
        let v = json!({
            "pid": 7, "connections_active": 1, "connections_total": 5, "options_inserted": 9,
            "listeners": [{ "listen": "0.0.0.0:80", "balance": "round-robin", "connections_total": 5,
                "backends": [{ "addr": "192.0.2.2:80", "healthy": false, "active": 0, "total": 5 }] }]
        });
        let text = render_text(&v);
        assert!(text.contains("proxy (pid 7)"), "{text}");
        assert!(text.contains("connections_total") && text.contains("options_no_room"), "{text}");
        assert!(text.contains("listener 0.0.0.0:80 (round-robin)"), "{text}");
        assert!(text.contains("backend 192.0.2.2:80") && text.contains("DOWN"), "{text}");
    }
}
