//! Active TCP health checks: a connect to each backend every interval; `fall`
//! failures in a row take a backend out, `rise` successes bring it back.
//!
//! Check connections carry no option: the proxy registers addresses only for
//! the cookies of forwarded connections and never sets a default.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use super::{
    fds,
    pool::Backend,
    shared::{Listener, Shared},
};
use crate::forwarder::health::{Streak, probe, record};

/// One backend the checker looks after.
struct Item {
    listener: Arc<Listener>,
    backend: Arc<Backend>,
    due: Instant,
    streak: Streak,
}

/// The backends of `listeners` that have checks on; those in `old` go on
/// with their schedule and streak.
fn schedule(listeners: &[Arc<Listener>], old: Vec<Item>, now: Instant) -> Vec<Item> {
    let mut out = Vec::new();
    for l in listeners.iter().filter(|l| !l.settings.health.interval.is_zero()) {
        for b in &l.pool.backends {
            let kept = old.iter().find(|it| Arc::ptr_eq(&it.backend, b));
            out.push(Item {
                listener: Arc::clone(l),
                backend: Arc::clone(b),
                due: kept.map_or(now + l.settings.health.interval, |it| it.due),
                streak: kept.map_or_else(Streak::default, |it| it.streak),
            });
        }
    }
    out
}

/// The checker thread's loop: runs until `stop` is set, following the
/// listeners in effect.
pub fn run(shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut generation = u64::MAX;
    let mut items: Vec<Item> = Vec::new();
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if shared.generation() != generation {
            let layout = shared.layout();
            generation = layout.generation;
            items = schedule(&layout.listeners, items, now);
        }
        let due: Vec<usize> = (0..items.len()).filter(|&i| items[i].due <= now).collect();
        if due.is_empty() {
            let next = items.iter().map(|it| it.due).min().unwrap_or(now + IDLE);
            std::thread::sleep(next.saturating_duration_since(now).min(IDLE));
            continue;
        }
        let addrs: Vec<SocketAddr> = due.iter().map(|&i| items[i].backend.settings.addr).collect();
        let timeout =
            due.iter().map(|&i| items[i].listener.settings.health.timeout).max().unwrap_or(Duration::from_secs(1));
        let results = probe(&addrs, timeout);
        for (&i, result) in due.iter().zip(results) {
            record_result(&shared, &mut items[i], now, result);
        }
    }
}

/// Longest sleep between two looks at the schedule and the layout.
const IDLE: Duration = Duration::from_millis(100);

/// Applies one check's result to its backend.
fn record_result(shared: &Shared, item: &mut Item, now: Instant, result: io::Result<()>) {
    let (l, b) = (&item.listener, &item.backend);
    let h = l.settings.health;
    item.due = now + h.interval;
    if let Err(e) = &result {
        if fds::local(e) {
            // This host could not even try: no verdict on the backend.
            if fds::exhausted(e) {
                shared.add(l, |c| &c.fd_exhausted, 1);
                fds::warn_exhausted("a health check", e);
            }
            return;
        }
        b.check_failures.fetch_add(1, Relaxed);
        tracing::debug!(backend = %b.settings.addr, error = %e, "health check failed");
    }
    let healthy = b.healthy.load(Relaxed);
    match record(&mut item.streak, healthy, result.is_ok(), h.rise, h.fall) {
        Some(true) => {
            b.healthy.store(true, Relaxed);
            tracing::info!(listen = %l.settings.listen, backend = %b.settings.addr, "backend is up");
        }
        Some(false) => {
            b.healthy.store(false, Relaxed);
            tracing::warn!(
                listen = %l.settings.listen,
                backend = %b.settings.addr,
                error = %result.err().map(|e| e.to_string()).unwrap_or_default(),
                "backend is down"
            );
        }
        None => {}
    }
}

/// How many unreachable backends are named one by one at start (or
/// reload); the rest are counted in one line.
const NAMED: usize = 8;

/// Probes the backends of `listeners` that `new` selects once, before they
/// serve: unreachable ones get a warning and, when health checks are on,
/// start out of rotation.
pub fn first_checks(listeners: &[Arc<Listener>], new: impl Fn(&Backend) -> bool) {
    for l in listeners {
        let backends: Vec<&Arc<Backend>> = l.pool.backends.iter().filter(|b| new(b)).collect();
        if backends.is_empty() {
            continue;
        }
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.settings.addr).collect();
        let checked = !l.settings.health.interval.is_zero();
        let timeout = if checked { l.settings.health.timeout } else { Duration::from_secs(1) };
        let mut unreachable = 0;
        for (b, result) in backends.iter().zip(probe(&addrs, timeout)) {
            let Err(e) = result else { continue };
            if fds::local(&e) {
                tracing::warn!(backend = %b.settings.addr, error = %e, "backend not checked at start: this host is out of resources");
                continue;
            }
            if checked {
                b.healthy.store(false, Relaxed);
            }
            unreachable += 1;
            if unreachable <= NAMED {
                tracing::warn!(
                    listen = %l.settings.listen,
                    backend = %b.settings.addr,
                    error = %e,
                    "backend unreachable at start; {}",
                    if checked { "out of rotation until health checks pass" } else { "health checks are off" }
                );
            }
        }
        if unreachable > NAMED {
            tracing::warn!(
                listen = %l.settings.listen,
                unreachable,
                of = backends.len(),
                "backends unreachable at start ({} more not named)",
                unreachable - NAMED
            );
        }
    }
}
