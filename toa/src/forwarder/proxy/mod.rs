//! `toa proxy`: a FullNAT L4 TCP proxy that inserts the client's address as
//! a TCP option on the upstream connection.
//!
//! For every client: pick a healthy backend (`pool`), open the upstream
//! socket, register the client's address for the socket's cookie with the
//! sock_ops writer ([`crate::forwarder::inject::Injector`]), connect (the writer copies
//! the entry into the socket's storage and removes it during `connect()`), then
//! forward both ways (`engine`, `conn`, `pump`) until both sides closed.
//!
//! The writer only sees sockets made by processes in the cgroup it is
//! attached to, so the proxy attaches it to its own cgroup. It never sets a
//! default entry: health checks and any other socket carry no option.
//!
//! Signals: SIGHUP re-reads the configuration and applies it without
//! touching open connections (`reload`); SIGTERM or SIGINT drains: the
//! listeners close at once, open connections may finish for the drain
//! timeout, the rest are reset then; a second SIGTERM or SIGINT stops at once.

mod conn;
pub mod control;
mod counts;
mod engine;
mod fds;
mod health;
mod metrics;
mod pool;
mod pump;
mod reload;
pub mod settings;
mod shared;
pub mod stats;

use std::{
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use settings::Settings;
use shared::Shared;

use crate::{
    Error, Result,
    forwarder::inject::Injector,
    sys::{host as system, net as sys, notify::ServiceManager, rlimit, signals::TerminationSignals},
};

/// How often the drain looks whether every connection has finished.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Runs the proxy in the foreground until SIGINT/SIGTERM and the drain;
/// on SIGHUP, `reload` gives the settings to apply.
pub fn run(settings: Settings, mut reload: impl FnMut() -> Result<Settings>) -> Result<()> {
    system::require_root()?;
    let signals = TerminationSignals::block().map_err(Error::io("blocking SIGINT/SIGTERM/SIGHUP", "signals"))?;
    let mut stats_server = stats::StatsServer::bind(&settings.stats_socket)?;
    let nofile = rlimit::raise_nofile().map_err(Error::io("reading the descriptor limit", "RLIMIT_NOFILE"))?;
    let listeners = reload::build(&settings, &[])?;
    let cgroup = system::own_cgroup()?;
    let injector = Injector::attach(&cgroup)?;
    tracing::info!(cgroup = %cgroup.display(), "option writer attached to the proxy's own cgroup");
    let shared = Arc::new(Shared::new(settings.name.clone(), listeners, settings.forward, injector)?);
    stats_server.serve(Arc::clone(&shared))?;
    let _metrics = settings
        .metrics_listen
        .map(|addr| metrics::start(addr, Arc::clone(&shared), settings.stats_socket.clone()))
        .transpose()?;
    let mut threads = Threads::start(&shared, settings.workers)?;
    log_listeners(&shared.layout().listeners);
    tracing::info!(
        name = %settings.name,
        workers = settings.workers,
        forward = %settings.forward,
        stats = %settings.stats_socket.display(),
        descriptors = nofile,
        "proxy ready"
    );
    // Type=notify units (toa-proxy@.service): started means listening and forwarding.
    let systemd = ServiceManager::from_env();
    systemd.ready("forwarding");
    let mut current = settings;
    loop {
        let sig = signals.wait().map_err(Error::io("waiting for a signal", "signals"))?;
        if sig != libc::SIGHUP {
            tracing::info!(signal = sig, "stopping");
            break;
        }
        systemd.reloading();
        match reload() {
            Ok(next) => apply(&shared, &threads, &mut current, next),
            Err(e) => refused(&shared, &e),
        }
        systemd.ready("forwarding");
    }
    systemd.stopping("draining: open connections may finish");
    drain(&shared, &mut threads, &signals, current.drain_timeout);
    threads.stop();
    let (written, no_room) = shared.option_counters();
    tracing::info!(options_inserted = written, options_no_room = no_room, "proxy stopped");
    Ok(())
}

/// Applies a reload's settings: the listeners and backends of `next`; what
/// only a restart can change is named in a warning and stays.
fn apply(shared: &Shared, threads: &Threads, current: &mut Settings, next: Settings) {
    let fixed = current.fixed_at_start(&next);
    let old = shared.layout();
    let listeners = match reload::build(&next, &old.listeners) {
        Ok(l) => l,
        Err(e) => return refused(shared, &e),
    };
    let changes = reload::Changes::between(&old.listeners, &listeners);
    let replaced = shared.publish(listeners.clone());
    threads.wake();
    reload::close_removed(&replaced, &listeners);
    shared.set_reload_error(None);
    shared.reloads.fetch_add(1, Relaxed);
    if !fixed.is_empty() {
        tracing::warn!(keys = %fixed.join(", "), "these settings take effect at the next start; the rest was applied");
    }
    current.listeners = next.listeners;
    current.drain_timeout = next.drain_timeout;
    tracing::info!(
        added = %changes.added.join(", "),
        removed = %changes.removed.join(", "),
        changed = %changes.changed.join(", "),
        "configuration reloaded"
    );
    log_listeners(&listeners);
}

/// A reload that changes nothing: counted, and its reason kept for `toa reload`.
fn refused(shared: &Shared, e: &Error) {
    shared.set_reload_error(Some(e.to_string()));
    shared.reload_failures.fetch_add(1, Relaxed);
    tracing::error!("configuration not applied; the previous one stays: {e}");
}

/// Stops accepting, lets open connections finish for up to `timeout` (a
/// second SIGTERM or SIGINT ends that at once), and reports how it went;
/// the workers reset what is left when they stop.
fn drain(shared: &Shared, threads: &mut Threads, signals: &TerminationSignals, timeout: Duration) {
    shared.draining.store(true, Relaxed);
    let old = shared.publish(Vec::new());
    threads.wake();
    reload::close_removed(&old, &[]);
    let open = shared.totals.connections_active.load(Relaxed);
    tracing::info!(
        open,
        timeout = %crate::config::Duration(timeout),
        "draining: listeners closed, open connections may finish (a second SIGTERM or SIGINT stops at once)"
    );
    let deadline = Instant::now() + timeout;
    while shared.totals.connections_active.load(Relaxed) > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match signals.wait_timeout(left.min(DRAIN_POLL)) {
            Ok(Some(libc::SIGHUP)) => tracing::warn!("reload ignored: the proxy is stopping"),
            Ok(Some(sig)) => {
                tracing::info!(signal = sig, "stopping at once");
                break;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot wait for signals; stopping at once");
                break;
            }
        }
    }
    let left = shared.totals.connections_active.load(Relaxed);
    let before = shared.totals.drain_closed.load(Relaxed);
    threads.stop_workers();
    let closed = shared.totals.drain_closed.load(Relaxed) - before;
    tracing::info!(finished = open.saturating_sub(left), closed_at_deadline = closed, "drained");
}

fn log_listeners(listeners: &[Arc<shared::Listener>]) {
    for l in listeners {
        let backends: Vec<String> = l
            .pool
            .backends
            .iter()
            .map(|b| format!("{}{}", b.settings.addr, if b.healthy.load(Relaxed) { "" } else { " (down)" }))
            .collect();
        tracing::info!(
            listen = %l.settings.listen,
            backends = %backends.join(", "),
            balance = l.settings.balance.name(),
            "listening"
        );
    }
}

/// The worker threads and the health checker.
struct Threads {
    stop_workers: Arc<AtomicBool>,
    stop_health: Arc<AtomicBool>,
    wakers: Vec<Arc<OwnedFd>>,
    workers: Vec<JoinHandle<()>>,
    health: Option<JoinHandle<()>>,
}

impl Threads {
    fn start(shared: &Arc<Shared>, workers: usize) -> Result<Threads> {
        let mut t = Threads {
            stop_workers: Arc::new(AtomicBool::new(false)),
            stop_health: Arc::new(AtomicBool::new(false)),
            wakers: Vec::new(),
            workers: Vec::new(),
            health: None,
        };
        for i in 0..workers {
            let wake = Arc::new(sys::eventfd().map_err(Error::io("creating an eventfd", "worker"))?);
            let worker = engine::Worker::new(Arc::clone(shared), Arc::clone(&wake), Arc::clone(&t.stop_workers))
                .map_err(Error::io("creating an epoll instance", "worker"))?;
            t.wakers.push(wake);
            let handle = std::thread::Builder::new()
                .name(format!("toa-proxy-{i}"))
                .spawn(move || worker.run())
                .map_err(Error::io("starting a worker thread", "worker"))?;
            t.workers.push(handle);
        }
        let (shared, stop) = (Arc::clone(shared), Arc::clone(&t.stop_health));
        t.health = Some(
            std::thread::Builder::new()
                .name("toa-proxy-health".into())
                .spawn(move || health::run(shared, stop))
                .map_err(Error::io("starting the health checker", "health"))?,
        );
        Ok(t)
    }

    /// Interrupts every worker's wait (they then look at the listeners in effect).
    fn wake(&self) {
        for w in &self.wakers {
            sys::wake(w.as_raw_fd());
        }
    }

    /// Stops the workers and waits for them (each resets its open connections).
    fn stop_workers(&mut self) {
        self.stop_workers.store(true, Relaxed);
        self.wake();
        for t in self.workers.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops every thread.
    fn stop(&mut self) {
        self.stop_workers();
        self.stop_health.store(true, Relaxed);
        if let Some(t) = self.health.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        // An early return (an error at start) must not leave threads serving.
        self.stop_workers.store(true, Relaxed);
        self.stop_health.store(true, Relaxed);
        self.wake();
    }
}
