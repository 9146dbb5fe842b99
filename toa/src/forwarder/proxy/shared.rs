//! What the workers, the health checker and the stats server share: the
//! listeners in effect (replaced as a whole by a reload), the proxy's
//! counters, and the option writer's map.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

use toa_common::inject::InjectSpec;

use super::{
    counts::{self, LiveCounts, Which},
    pool,
    settings::ListenerSettings,
};
use crate::{
    config::proxy::{Forward, ProxyName},
    forwarder::inject::{Injector, Targets},
    sys::net,
};

/// One listener: its socket, its backends and its counters.
///
/// A reload makes a new `Listener` for every listener it keeps, on the same
/// socket and counters (and backends, where they stay); connections hold
/// the `Listener` they were accepted on, so they go on with what it said.
pub struct Listener {
    /// What it was configured with.
    pub settings: ListenerSettings,
    /// The listening socket, shared by all workers.
    pub socket: Arc<OwnedFd>,
    /// Its backends.
    pub pool: pool::Pool,
    /// Its counters.
    pub counts: Arc<LiveCounts>,
}

/// The listeners in effect, and which reload made them.
pub struct Layout {
    /// Counts up with each change (reload, drain).
    pub generation: u64,
    /// The listeners, in configuration order.
    pub listeners: Vec<Arc<Listener>>,
}

/// What the workers, the health checker and the stats server share.
pub struct Shared {
    /// The instance's name.
    pub name: ProxyName,
    /// The forwarding path.
    pub forward: Forward,
    /// Counters of the whole proxy (also of listeners a reload removed).
    pub totals: LiveCounts,
    /// Reloads applied.
    pub reloads: AtomicU64,
    /// Reloads refused (the previous configuration stayed).
    pub reload_failures: AtomicU64,
    /// Set once SIGTERM arrived: no listener is left, open connections finish.
    pub draining: AtomicBool,
    /// Why the last reload was refused (none once one is applied).
    last_reload_error: Mutex<Option<String>>,
    layout: RwLock<Arc<Layout>>,
    generation: AtomicU64,
    injector: Mutex<Injector>,
    targets: Targets,
}

impl Shared {
    /// What the workers share: the first listeners, the forwarding path,
    /// and the writer whose map they register each upstream socket in.
    pub fn new(
        name: ProxyName,
        listeners: Vec<Arc<Listener>>,
        forward: Forward,
        injector: Injector,
    ) -> crate::Result<Shared> {
        let targets = injector.targets()?;
        Ok(Shared {
            name,
            forward,
            totals: LiveCounts::default(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            last_reload_error: Mutex::new(None),
            layout: RwLock::new(Arc::new(Layout { generation: 0, listeners })),
            generation: AtomicU64::new(0),
            injector: Mutex::new(injector),
            targets,
        })
    }

    /// The listeners in effect.
    pub fn layout(&self) -> Arc<Layout> {
        Arc::clone(&self.layout.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The generation of [`Shared::layout`], without a lock: a worker
    /// compares it with its own on every turn.
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Puts `listeners` in effect; returns the layout they replace.
    pub fn publish(&self, listeners: Vec<Arc<Listener>>) -> Arc<Layout> {
        let mut guard = self.layout.write().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(Layout { generation: guard.generation + 1, listeners });
        self.generation.store(next.generation, Relaxed);
        std::mem::replace(&mut *guard, next)
    }

    /// Records why the last reload was refused (`None`: it was applied).
    ///
    /// Set before the reload is counted, so that whoever sees the count sees the reason.
    pub fn set_reload_error(&self, error: Option<String>) {
        *self.last_reload_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Why the last reload was refused, if it was.
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds `n` to a counter of `listener` and of the proxy.
    pub fn add(&self, listener: &Listener, which: Which, n: u64) {
        counts::add([&listener.counts, &self.totals], which, n);
    }

    /// Takes `n` from a gauge of `listener` and of the proxy.
    pub fn sub(&self, listener: &Listener, which: Which, n: u64) {
        counts::sub([&listener.counts, &self.totals], which, n);
    }

    /// Registers `spec` for `socket`'s cookie; returns the cookie to forget after `connect()`.
    ///
    /// Workers call this concurrently: it is one `bpf(2)` call on the map's
    /// descriptor, no lock.
    pub fn register(&self, socket: impl AsFd, spec: InjectSpec) -> Option<u64> {
        let result = net::socket_cookie(socket).and_then(|cookie| self.targets.insert(cookie, &spec).map(|()| cookie));
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
        if let Err(e) = self.targets.remove(cookie)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!(error = %e, cookie, "cannot remove a socket's entry");
        }
    }

    /// Packets that got the option, and packets that had no room for it.
    pub fn option_counters(&self) -> (u64, u64) {
        let guard = self.injector.lock().unwrap_or_else(|e| e.into_inner());
        match guard.counters() {
            Ok(s) => (s.total("inject_written").unwrap_or(0), s.total("inject_no_room").unwrap_or(0)),
            Err(_) => (0, 0),
        }
    }
}
