//! Per-connection debug events without touching the data path.
//!
//! The eBPF programs do not log (a ring buffer write per connection would
//! cost every connection). When debug logging is on (`RUST_LOG=debug`), the
//! agent instead polls the table ([`crate::ops::table`], a socket-diagnostics dump
//! as `toa table` does) once a second and logs each connection that gained a
//! real client and each that went away. Only the agent's own network
//! namespace is watched; `toa table --all-netns` shows the others.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::{
    ops::table::{self, Entry, Namespaces},
    sys::paths::PinDir,
};

/// How often the table is read.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// A running watcher; stops when dropped.
pub struct ConnectionLog {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ConnectionLog {
    /// Starts the watcher if debug logging is enabled, else returns `None`.
    pub fn start_if_debug(pins: PinDir) -> Option<ConnectionLog> {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("toa-connlog".into())
            .spawn(move || {
                let mut known: BTreeMap<(String, String, u32), Entry> = BTreeMap::new();
                let mut failed = false;
                while !flag.load(Ordering::Relaxed) {
                    match table::read(&pins, &Namespaces::Current) {
                        Ok(entries) => {
                            let now: BTreeMap<_, _> = entries
                                .into_iter()
                                .map(|e| ((e.local.to_string(), e.peer.to_string(), e.inode), e))
                                .collect();
                            for (key, e) in &now {
                                if !known.contains_key(key) {
                                    tracing::debug!(
                                        local = %e.local, peer = %e.peer, real_client = %e.real_client,
                                        kind = e.kind, packet = e.packet, "connection captured"
                                    );
                                }
                            }
                            for (key, e) in &known {
                                if !now.contains_key(key) {
                                    tracing::debug!(local = %e.local, peer = %e.peer, real_client = %e.real_client, "connection gone");
                                }
                            }
                            known = now;
                        }
                        Err(e) if !failed => {
                            failed = true;
                            tracing::debug!(error = %e, "cannot read the connection table");
                        }
                        Err(_) => {}
                    }
                    // Sleep in small steps so that a stop is quick.
                    for _ in 0..10 {
                        if flag.load(Ordering::Relaxed) {
                            break;
                        }
                        thread::sleep(INTERVAL / 10);
                    }
                }
            })
            .ok()?;
        tracing::debug!("logging captured connections (polling the socket table every second)");
        Some(ConnectionLog { stop, thread: Some(thread) })
    }
}

impl Drop for ConnectionLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
