//! What the workers, the health checker and the stats server share: the
//! listeners with their backends and counters, and the option writer's map.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use toa_common::inject::InjectSpec;

use super::{pool, settings::ListenerSettings};
use crate::{
    config::proxy::Forward,
    forwarder::inject::Injector,
    sys::{bpf, net},
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
    pub stats: ListenerStats,
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
    /// What the workers share: the listeners, the forwarding path, and the
    /// writer whose map they register each upstream socket in.
    pub fn new(listeners: Vec<Listener>, forward: Forward, injector: Injector) -> Shared {
        let targets = Some(injector.targets_fd().as_raw_fd());
        Shared {
            listeners,
            forward,
            pipe_size: PIPE_SIZE,
            buf_size: BUF_SIZE,
            injector: Some(Mutex::new(injector)),
            targets,
        }
    }

    /// Registers `spec` for `socket`'s cookie; returns the cookie to forget after `connect()`.
    ///
    /// Workers call this concurrently: it is one `bpf(2)` call on the map's
    /// descriptor, no lock.
    pub fn register(&self, socket: impl AsFd, spec: InjectSpec) -> Option<u64> {
        let map = self.targets?;
        // SAFETY: the injector that owns the map lives in `self` as long as the call.
        let map = unsafe { BorrowedFd::borrow_raw(map) };
        let result = net::socket_cookie(socket).and_then(|cookie| {
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

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Open client connections.
    pub active: AtomicU64,
    /// Client connections accepted, ever.
    pub total: AtomicU64,
    /// Clients refused: no healthy backend, or every backend tried failed.
    pub refused: AtomicU64,
    /// Bytes forwarded from clients to backends.
    pub bytes_up: AtomicU64,
    /// Bytes forwarded from backends to clients.
    pub bytes_down: AtomicU64,
    /// Backend connects that failed or timed out.
    pub connect_failures: AtomicU64,
    /// Connections closed for being idle.
    pub idle_timeouts: AtomicU64,
    /// Connections ended by a reset or error on either side.
    pub resets: AtomicU64,
}

impl ListenerStats {
    /// The values, in the order of the stats' counter names.
    pub fn values(&self) -> [u64; 8] {
        [
            self.active.load(Relaxed),
            self.total.load(Relaxed),
            self.refused.load(Relaxed),
            self.bytes_up.load(Relaxed),
            self.bytes_down.load(Relaxed),
            self.connect_failures.load(Relaxed),
            self.idle_timeouts.load(Relaxed),
            self.resets.load(Relaxed),
        ]
    }
}
