//! `toa proxy`: a FullNAT L4 TCP proxy that inserts the client's address as
//! a TCP option on the upstream connection.
//!
//! For every client: pick a healthy backend ([`pool`]), open the upstream
//! socket, register the client's address for the socket's cookie with the
//! sock_ops writer ([`crate::forwarder::inject::Injector`]), connect (the writer copies
//! the entry into the socket's storage and removes it during `connect()`), then
//! forward both ways ([`engine`], [`pump`]) until both sides closed.
//!
//! The writer only sees sockets made by processes in the cgroup it is
//! attached to, so the proxy attaches it to its own cgroup. It never sets a
//! default entry: health checks and any other socket carry no option.

pub mod engine;
pub mod health;
pub mod pool;
pub mod pump;
pub mod settings;
pub mod stats;

use std::{
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use settings::ListenerSettings;
pub use settings::Settings;
use toa_common::inject::InjectSpec;

use crate::{
    Error, Result,
    config::proxy::Forward,
    forwarder::inject::Injector,
    sys::{bpf, host as system, net as sys, signals::TerminationSignals},
};

/// One listening socket with its backends and counters.
pub struct Listener {
    /// What it was configured with.
    pub settings: ListenerSettings,
    /// The listening socket, shared by all workers.
    pub fd: OwnedFd,
    /// Its backends.
    pub pool: pool::Pool,
    /// Its counters.
    pub stats: stats::ListenerStats,
}

/// What the workers, the health checker and the stats server share.
pub struct Shared {
    /// The listeners.
    pub listeners: Vec<Listener>,
    /// The forwarding path.
    pub forward: Forward,
    /// Pipe capacity for `splice`.
    pub pipe_size: usize,
    /// Buffer size for `copy`.
    pub buf_size: usize,
    injector: Option<Mutex<Injector>>,
    /// The injector's targets map (valid while `injector` lives).
    targets: Option<RawFd>,
}

/// Pipe capacity asked for (the kernel rounds it to pages).
pub const PIPE_SIZE: usize = 1 << 20;
/// Buffer size of the copy path.
pub const BUF_SIZE: usize = 256 << 10;

impl Shared {
    /// Registers `spec` for `socket`'s cookie; returns the cookie to forget after `connect()`.
    ///
    /// Workers call this concurrently: it is one `bpf(2)` call on the map's
    /// descriptor, no lock.
    pub fn register(&self, socket: impl AsFd, spec: InjectSpec) -> Option<u64> {
        let map = self.targets?;
        // SAFETY: the injector that owns the map lives in `self` as long as the call.
        let map = unsafe { BorrowedFd::borrow_raw(map) };
        let result = sys::socket_cookie(socket).and_then(|cookie| {
            // SAFETY: the map's key is the u64 cookie and its value an
            // `InjectSpec` (checked when the injector took the map).
            unsafe { bpf::map_update(map, &cookie, &spec) }?;
            Ok(cookie)
        });
        match result {
            Ok(cookie) => Some(cookie),
            Err(e) => {
                tracing::warn!(error = %e, "cannot register the client address; this connection goes without TOA");
                None
            }
        }
    }

    /// Drops the entry of a cookie (already gone if the writer consumed it).
    pub fn forget(&self, cookie: u64) {
        let Some(map) = self.targets else { return };
        // SAFETY: the injector that owns the map lives in `self` as long as the call.
        let map = unsafe { BorrowedFd::borrow_raw(map) };
        // SAFETY: the map's key is the u64 cookie.
        if let Err(e) = unsafe { bpf::map_delete(map, &cookie) }
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!(error = %e, cookie, "cannot remove a socket's entry");
        }
    }

    /// Packets that got the option, and packets that had no room for it.
    pub fn option_counters(&self) -> (u64, u64) {
        let Some(injector) = &self.injector else { return (0, 0) };
        let guard = injector.lock().unwrap_or_else(|e| e.into_inner());
        match guard.counters() {
            Ok(s) => (s.total("inject_written").unwrap_or(0), s.total("inject_no_room").unwrap_or(0)),
            Err(_) => (0, 0),
        }
    }
}

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
                stats: stats::ListenerStats::default(),
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
    let targets = Some(injector.targets_fd().as_raw_fd());
    tracing::info!(cgroup = %cgroup.display(), "option writer attached to the proxy's own cgroup");
    initial_checks(&listeners);
    let shared = Arc::new(Shared {
        listeners,
        forward: settings.forward,
        pipe_size: PIPE_SIZE,
        buf_size: BUF_SIZE,
        injector: Some(Mutex::new(injector)),
        targets,
    });
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
