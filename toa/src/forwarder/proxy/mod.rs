//! `toa proxy`: a FullNAT L4 TCP proxy that inserts the client's address as
//! a TCP option on the upstream connection.
//!
//! For every client: pick a healthy backend (`pool`), open the upstream
//! socket, register the client's address for the socket's cookie with the
//! sock_ops writer ([`crate::forwarder::inject::Injector`]), connect (the writer copies
//! the entry into the socket's storage and removes it during `connect()`), then
//! forward both ways (`engine`, `pump`) until both sides closed.
//!
//! The writer only sees sockets made by processes in the cgroup it is
//! attached to, so the proxy attaches it to its own cgroup. It never sets a
//! default entry: health checks and any other socket carry no option.

mod engine;
mod health;
mod pool;
mod pump;
pub mod settings;
mod shared;
pub mod stats;

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

pub use settings::Settings;
use shared::{Listener, ListenerStats, Shared};

use crate::{
    Error, Result,
    forwarder::inject::Injector,
    sys::{host as system, net as sys, signals::TerminationSignals},
};

fn bind_listeners(settings: &Settings) -> Result<Vec<Listener>> {
    settings
        .listeners
        .iter()
        .map(|l| {
            let fd = sys::listen(l.listen, 4096)
                .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", l.listen)))?;
            Ok(Listener {
                settings: l.clone(),
                fd,
                pool: pool::Pool::new(&l.backends, l.balance),
                stats: ListenerStats::default(),
            })
        })
        .collect()
}

/// Probes every backend once before serving: unreachable ones get a warning
/// and, when health checks are on, start out of rotation.
fn initial_checks(listeners: &[Listener]) {
    for l in listeners {
        let addrs: Vec<SocketAddr> = l.pool.backends.iter().map(|b| b.settings.addr).collect();
        let timeout =
            if l.settings.health.interval.is_zero() { Duration::from_secs(1) } else { l.settings.health.timeout };
        for (b, result) in l.pool.backends.iter().zip(health::probe(&addrs, timeout)) {
            if let Err(e) = result {
                let checked = !l.settings.health.interval.is_zero();
                if checked {
                    b.healthy.store(false, Relaxed);
                }
                tracing::warn!(
                    listen = %l.settings.listen,
                    backend = %b.settings.addr,
                    error = %e,
                    "backend unreachable at start; {}",
                    if checked { "out of rotation until health checks pass" } else { "health checks are off" }
                );
            }
        }
    }
}

/// Runs the proxy in the foreground until SIGINT/SIGTERM.
pub fn run(settings: &Settings) -> Result<()> {
    system::require_root()?;
    let signals = TerminationSignals::block().map_err(Error::io("blocking SIGINT/SIGTERM", "signals"))?;
    let listeners = bind_listeners(settings)?;
    let cgroup = system::own_cgroup()?;
    let injector = Injector::attach(&cgroup)?;
    tracing::info!(cgroup = %cgroup.display(), "option writer attached to the proxy's own cgroup");
    initial_checks(&listeners);
    let shared = Arc::new(Shared::new(listeners, settings.forward, injector));
    let _stats = stats::StatsServer::start(&settings.stats_socket, Arc::clone(&shared))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut wakers = Vec::new();
    for i in 0..settings.workers {
        let wake = Arc::new(sys::eventfd().map_err(Error::io("creating an eventfd", "worker"))?);
        let worker = engine::Worker::new(Arc::clone(&shared), Arc::clone(&wake), Arc::clone(&stop))
            .map_err(Error::io("creating an epoll instance", "worker"))?;
        wakers.push(wake);
        let t = std::thread::Builder::new()
            .name(format!("toa-proxy-{i}"))
            .spawn(move || worker.run())
            .map_err(Error::io("starting a worker thread", "worker"))?;
        threads.push(t);
    }
    {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
        let t = std::thread::Builder::new()
            .name("toa-proxy-health".into())
            .spawn(move || health::run(shared, stop))
            .map_err(Error::io("starting the health checker", "health"))?;
        threads.push(t);
    }
    for l in &shared.listeners {
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
    tracing::info!(
        workers = settings.workers,
        forward = ?settings.forward,
        stats = %settings.stats_socket.display(),
        "proxy ready"
    );
    // Type=notify units (toa-proxy@.service): started means listening and forwarding.
    if let Err(e) = crate::sys::notify::ready("forwarding") {
        tracing::warn!(error = %e, "could not notify systemd");
    }
    let sig = signals.wait().map_err(Error::io("waiting for a signal", "signals"))?;
    tracing::info!(signal = sig, "stopping");
    stop.store(true, Relaxed);
    for w in &wakers {
        sys::wake(w.as_raw_fd());
    }
    for t in threads {
        let _ = t.join();
    }
    let (written, no_room) = shared.option_counters();
    tracing::info!(options_inserted = written, options_no_room = no_room, "proxy stopped");
    Ok(())
}
