//! The forwarder's background thread: serves the counters on a unix socket
//! and reclaims idle flows.
//!
//! The data path never scans its tables: a full table evicts its least
//! recently used flow, and this thread deletes the flows idle past their
//! state's timeout (and their reverse entries) once a second, from user
//! space, so that no packet ever waits for a sweep.

use std::{
    io::Write as _,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use toa_common::lb::{
    conntrack::{DEFAULT_TIMEOUTS, TcpState},
    flow::{Flow, FlowKey, Reverse},
};

use super::datapath::Counters;
use crate::{Error, Result};

/// How often idle flows are looked for.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Seconds of `CLOCK_MONOTONIC` (the clock the data path stamps flows with).
fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// What the thread owns.
pub struct Background {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<serde_json::Value>>,
    socket: PathBuf,
}

struct State {
    counters: Counters,
    flows: HashMap<MapData, FlowKey, Flow>,
    reverse: HashMap<MapData, FlowKey, Reverse>,
    reclaimed: u64,
}

impl State {
    /// Deletes the flows idle past their timeout; returns how many are left.
    fn reap(&mut self) -> u64 {
        let now = monotonic_secs();
        let mut expired = Vec::new();
        let mut live = 0;
        for item in self.flows.iter() {
            let Ok((key, flow)) = item else { continue };
            if DEFAULT_TIMEOUTS.expired(TcpState::from_u8(flow.state), flow.last_seen, now) {
                expired.push((key, flow));
            } else {
                live += 1;
            }
        }
        for (key, flow) in expired {
            let rkey = FlowKey {
                src: flow.backend,
                dst: flow.snat,
                sport: flow.bport,
                dport: flow.lport,
                family: key.family,
                _pad: [0; 3],
            };
            // The port may have moved on to a new flow already: only remove our own entry.
            if let Ok(r) = self.reverse.get(&rkey, 0)
                && r.flow == key
            {
                let _ = self.reverse.remove(&rkey);
            }
            if self.flows.remove(&key).is_ok() {
                self.reclaimed += 1;
            }
        }
        live
    }

    fn snapshot(&self, flows: u64) -> serde_json::Value {
        let mut v = serde_json::Map::new();
        for (name, total) in self.counters.totals() {
            v.insert(name.to_string(), total.into());
        }
        v.insert("flows".into(), flows.into());
        v.insert("flows_reclaimed".into(), self.reclaimed.into());
        let backends: Vec<serde_json::Value> = self
            .counters
            .backends()
            .into_iter()
            .map(|(addr, b)| {
                serde_json::json!({
                    "addr": addr.to_string(),
                    "flows": b.flows,
                    "packets_in": b.packets_in,
                    "bytes_in": b.bytes_in,
                    "packets_out": b.packets_out,
                    "bytes_out": b.bytes_out,
                    "options": b.options,
                })
            })
            .collect();
        v.insert("backends".into(), backends.into());
        serde_json::Value::Object(v)
    }
}

impl Background {
    /// Binds the stats socket and starts the thread.
    pub fn start(
        socket: &Path,
        counters: Counters,
        flows: HashMap<MapData, FlowKey, Flow>,
        reverse: HashMap<MapData, FlowKey, Reverse>,
    ) -> Result<Background> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .map_err(|e| Error::Invalid(format!("cannot listen on the stats socket {}: {e}", socket.display())))?;
        listener.set_nonblocking(true).map_err(Error::io("configuring", socket))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = State { counters, flows, reverse, reclaimed: 0 };
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("toa-lb".into())
            .spawn(move || {
                let mut live = state.reap();
                let mut last = Instant::now();
                while !flag.load(Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            let _ = conn.set_nonblocking(false);
                            let _ = writeln!(conn, "{}", state.snapshot(live));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                    if last.elapsed() >= REAP_INTERVAL {
                        live = state.reap();
                        last = Instant::now();
                    }
                }
                state.snapshot(live)
            })
            .map_err(Error::io("starting the stats thread", socket))?;
        Ok(Background { stop, handle: Some(handle), socket: socket.to_path_buf() })
    }

    /// Stops the thread; returns the last counters.
    pub fn stop(mut self) -> serde_json::Value {
        self.stop.store(true, Relaxed);
        let v = self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let _ = std::fs::remove_file(&self.socket);
        v
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
