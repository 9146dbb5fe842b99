//! The forwarder's counters as one typed snapshot ([`ProxyStats`]): made by
//! the running proxy, served as JSON on its unix socket, read back by
//! `toa stats` (which finds every proxy of the host) into the same type,
//! and rendered as text or Prometheus metrics from it.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::SocketAddr,
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use super::counts::{Counts, Field, Kind};
use super::shared::Shared;
use crate::{
    Error, Result,
    config::proxy::{Balance, PROXY_SOCKET_PREFIX, PROXY_SOCKET_SUFFIX},
    sys::paths,
};

/// One backend of a listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    /// Where it is.
    pub addr: SocketAddr,
    /// Whether new connections may go to it.
    pub healthy: bool,
    /// Open connections.
    #[serde(default)]
    pub active: u64,
    /// Connections forwarded to it.
    #[serde(default)]
    pub total: u64,
    /// Connects that failed or timed out.
    #[serde(default)]
    pub connect_failures: u64,
    /// Health checks that failed.
    #[serde(default)]
    pub check_failures: u64,
}

/// One listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStats {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// How a backend is picked.
    pub balance: Balance,
    /// Its connection counters.
    #[serde(flatten)]
    pub counts: Counts,
    /// Backends in rotation.
    #[serde(default)]
    pub backends_healthy: usize,
    /// Its backends, in configuration order.
    #[serde(default)]
    pub backends: Vec<BackendStats>,
}

/// A running proxy's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyStats {
    /// The instance's name.
    pub name: String,
    /// Its process.
    pub pid: u32,
    /// The socket it serves these on.
    pub socket: PathBuf,
    /// Stopping: no listener left, open connections finish.
    pub draining: bool,
    /// Reloads applied (SIGHUP).
    pub reloads: u64,
    /// Reloads refused (the previous configuration stayed).
    pub reload_failures: u64,
    /// Why the last reload was refused (none once one is applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload_error: Option<String>,
    /// The connection counters of every listener, also of listeners a
    /// reload removed.
    #[serde(flatten)]
    pub counts: Counts,
    /// Packets that got the option (the writer's per-CPU counters).
    pub options_inserted: u64,
    /// Packets without room for it.
    pub options_no_room: u64,
    /// The listeners in effect, in configuration order.
    pub listeners: Vec<ListenerStats>,
}

/// The counters of the proxy that `shared` belongs to, now.
pub(crate) fn snapshot(shared: &Shared, socket: &Path) -> ProxyStats {
    let listeners = shared
        .layout()
        .listeners
        .iter()
        .map(|l| ListenerStats {
            listen: l.settings.listen,
            balance: l.settings.balance,
            counts: l.counts.load(),
            backends_healthy: l.pool.healthy(),
            backends: l
                .pool
                .backends
                .iter()
                .map(|b| BackendStats {
                    addr: b.settings.addr,
                    healthy: b.healthy.load(Relaxed),
                    active: b.active.load(Relaxed),
                    total: b.total.load(Relaxed),
                    connect_failures: b.connect_failures.load(Relaxed),
                    check_failures: b.check_failures.load(Relaxed),
                })
                .collect(),
        })
        .collect();
    let (options_inserted, options_no_room) = shared.option_counters();
    ProxyStats {
        name: shared.name.to_string(),
        pid: std::process::id(),
        socket: socket.to_path_buf(),
        draining: shared.draining.load(Relaxed),
        reloads: shared.reloads.load(Relaxed),
        reload_failures: shared.reload_failures.load(Relaxed),
        last_reload_error: shared.last_reload_error(),
        counts: shared.totals.load(),
        options_inserted,
        options_no_room,
        listeners,
    }
}

/// The stats socket, bound; serves once [`StatsServer::serve`] is called,
/// until the process exits. Removes the socket file when dropped.
pub(crate) struct StatsServer {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl StatsServer {
    /// Binds `path`, refusing if another proxy answers there (a stale file is replaced).
    pub fn bind(path: &Path) -> Result<StatsServer> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::Invalid(format!(
                    "another toa proxy serves its counters at {} (stop it, or give this one another --name or --stats-socket)",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(Error::io("removing stale socket", path))?;
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        let listener = UnixListener::bind(path).map_err(Error::io("binding stats socket", path))?;
        Ok(StatsServer { path: path.to_path_buf(), listener: Some(listener) })
    }

    /// Serves snapshots of `shared` from a thread.
    pub fn serve(&mut self, shared: Arc<Shared>) -> Result<()> {
        let Some(listener) = self.listener.take() else { return Ok(()) };
        let path = self.path.clone();
        std::thread::Builder::new()
            .name("toa-proxy-stats".into())
            .spawn(move || {
                loop {
                    let mut conn = match listener.accept() {
                        Ok((conn, _)) => conn,
                        Err(e) => {
                            // Out of descriptors, most likely: try again shortly, not at once.
                            tracing::debug!(error = %e, "stats socket accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                    let text = serde_json::to_string(&snapshot(&shared, &path)).unwrap_or_default();
                    let _ = conn.write_all(text.as_bytes());
                    let _ = conn.write_all(b"\n");
                }
            })
            .map_err(Error::io("starting the stats thread", &self.path))?;
        Ok(())
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks the proxy serving at `path` for its counters; `None` when none answers.
pub fn fetch(path: &Path) -> Option<ProxyStats> {
    let mut conn = UnixStream::connect(path).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// The stats sockets of the proxies that serve at their default place
/// (`/run/toa/proxy-NAME.sock`), by name.
pub fn discover() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(paths::RUN_DIR) else { return Vec::new() };
    let mut found: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.len() > PROXY_SOCKET_PREFIX.len() + PROXY_SOCKET_SUFFIX.len()
                    && n.starts_with(PROXY_SOCKET_PREFIX)
                    && n.ends_with(PROXY_SOCKET_SUFFIX)
            })
        })
        .collect();
    found.sort();
    found
}

/// The counters of one proxy as text, for `toa stats`.
pub fn render_text(p: &ProxyStats) -> String {
    let mut out = String::new();
    let state = if p.draining { ", draining" } else { "" };
    let _ = writeln!(out, "proxy {} (pid {}{state})", p.name, p.pid);
    for f in Counts::FIELDS {
        let _ = writeln!(out, "  {:<26}{:>14}", f.name, (f.get)(&p.counts));
    }
    for (name, v) in [
        ("options_inserted", p.options_inserted),
        ("options_no_room", p.options_no_room),
        ("reloads", p.reloads),
        ("reload_failures", p.reload_failures),
    ] {
        let _ = writeln!(out, "  {name:<26}{v:>14}");
    }
    for l in &p.listeners {
        let _ = writeln!(out, "  listener {} ({})", l.listen, l.balance);
        for f in Counts::FIELDS {
            let _ = writeln!(out, "    {:<24}{:>14}", f.name, (f.get)(&l.counts));
        }
        for b in &l.backends {
            let up = if b.healthy { "up" } else { "DOWN" };
            let _ = writeln!(
                out,
                "    backend {:<28} {up:<5} active {:<6} total {:<10} connect_failures {:<6} check_failures {}",
                b.addr.to_string(),
                b.active,
                b.total,
                b.connect_failures,
                b.check_failures,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ProxyStats {
        ProxyStats {
            name: "web".into(),
            pid: 7,
            socket: "/run/toa/proxy-web.sock".into(),
            draining: false,
            reloads: 2,
            reload_failures: 1,
            last_reload_error: Some("t.toml, line 2: bad".into()),
            counts: Counts { connections_active: 1, connections_total: 5, fd_exhausted: 3, ..Counts::default() },
            options_inserted: 9,
            options_no_room: 0,
            listeners: vec![ListenerStats {
                listen: "0.0.0.0:80".parse().expect("addr"),
                balance: Balance::RoundRobin,
                counts: Counts { connections_total: 5, resets: 1, ..Counts::default() },
                backends_healthy: 0,
                backends: vec![BackendStats {
                    addr: "[2001:db8::2]:80".parse().expect("addr"),
                    healthy: false,
                    active: 0,
                    total: 5,
                    connect_failures: 2,
                    check_failures: 4,
                }],
            }],
        }
    }

    #[test]
    fn the_snapshot_goes_through_json_and_back_unchanged() {
        let s = sample();
        let text = serde_json::to_string(&s).expect("serializes");
        let back: ProxyStats = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, s, "{text}");
        // The counters sit at the top of each object, as scripts read them.
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["connections_total"], 5);
        assert_eq!(v["fd_exhausted"], 3);
        assert_eq!(v["listeners"][0]["resets"], 1);
        assert_eq!(v["listeners"][0]["balance"], "round-robin");
        assert_eq!(v["listeners"][0]["backends"][0]["addr"], "[2001:db8::2]:80");
        for f in Counts::FIELDS {
            assert!(v.get(f.name).is_some() && v["listeners"][0].get(f.name).is_some(), "{}", f.name);
        }
    }

    #[test]
    fn an_older_or_newer_proxy_still_reads() {
        let v: ProxyStats = serde_json::from_str(
            r#"{"pid": 3, "connections_total": 2, "something_new": 1,
                "listeners": [{"listen": "192.0.2.1:80", "balance": "least-conn", "backends": [{"addr": "192.0.2.2:80", "healthy": true}]}]}"#,
        )
        .expect("unknown keys and missing counters are fine");
        assert_eq!((v.pid, v.counts.connections_total, v.counts.resets), (3, 2, 0));
        assert_eq!(v.listeners[0].balance, Balance::LeastConn);
    }

    #[test]
    fn text_rendering_names_every_counter() {
        let text = render_text(&sample());
        assert!(text.contains("proxy web (pid 7)"), "{text}");
        for f in Counts::FIELDS {
            assert_eq!(text.matches(&format!(" {} ", f.name)).count(), 2, "{}: {text}", f.name);
        }
        assert!(text.contains("options_no_room") && text.contains("reload_failures"), "{text}");
        assert!(text.contains("listener 0.0.0.0:80 (round-robin)"), "{text}");
        assert!(text.contains("backend [2001:db8::2]:80") && text.contains("DOWN"), "{text}");
    }
}
