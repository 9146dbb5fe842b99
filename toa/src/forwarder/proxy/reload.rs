//! Putting listeners in effect: at start, and on every reload (SIGHUP).
//!
//! The new listeners are built beside those in effect: a listener whose
//! address stays keeps its socket (no client is turned away) and its
//! counters, a backend that stays keeps its health and counters, new ones
//! are bound and probed. Only when all of that worked are they published,
//! at once; then the listening sockets that are gone stop listening.
//! Connections already open keep the listener (and backend) they came in on
//! and are not touched.

use std::{os::fd::AsRawFd, sync::Arc};

use super::{
    counts::LiveCounts,
    health,
    pool::Pool,
    settings::{ListenerSettings, Settings},
    shared::{Layout, Listener},
};
use crate::{Error, Result, sys::net as sys};

/// Backlog of every listening socket.
const BACKLOG: i32 = 4096;

/// The listeners of `next`, reusing what `current` has for the same
/// addresses; new backends have had their first check.
pub fn build(next: &Settings, current: &[Arc<Listener>]) -> Result<Vec<Arc<Listener>>> {
    let listeners = next
        .listeners
        .iter()
        .map(|s| build_one(s, current.iter().find(|l| l.settings.listen == s.listen)).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    health::first_checks(&listeners, |b| {
        !current.iter().any(|l| l.pool.backends.iter().any(|o| std::ptr::eq(&**o, b)))
    });
    Ok(listeners)
}

fn build_one(settings: &ListenerSettings, old: Option<&Arc<Listener>>) -> Result<Listener> {
    let pool = Pool::new(&settings.backends, settings.balance, |b| old.and_then(|l| l.pool.find(b)));
    let (socket, counts) = match old {
        Some(l) => (Arc::clone(&l.socket), Arc::clone(&l.counts)),
        None => {
            let fd = sys::listen(settings.listen, BACKLOG)
                .map_err(|e| Error::Invalid(format!("cannot listen on {}: {e}", settings.listen)))?;
            (Arc::new(fd), Arc::new(LiveCounts::default()))
        }
    };
    Ok(Listener { settings: settings.clone(), socket, pool, counts })
}

/// What a reload changed, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Listeners bound.
    pub added: Vec<String>,
    /// Listeners closed.
    pub removed: Vec<String>,
    /// Listeners kept whose settings (backends, timeouts, ...) changed.
    pub changed: Vec<String>,
}

impl Changes {
    /// The difference between two sets of listeners.
    pub fn between(old: &[Arc<Listener>], new: &[Arc<Listener>]) -> Changes {
        let addr = |l: &Arc<Listener>| l.settings.listen.to_string();
        let mut c = Changes::default();
        for l in new {
            match old.iter().find(|o| o.settings.listen == l.settings.listen) {
                None => c.added.push(addr(l)),
                Some(o) if o.settings != l.settings => c.changed.push(addr(l)),
                Some(_) => {}
            }
        }
        c.removed =
            old.iter().filter(|o| !new.iter().any(|l| l.settings.listen == o.settings.listen)).map(addr).collect();
        c
    }
}

/// After `old` was replaced by `new`: the listening sockets no longer in
/// use stop listening now (clients waiting in their queues are reset, new
/// ones refused) rather than when the last connection that holds them ends.
pub fn close_removed(old: &Layout, new: &[Arc<Listener>]) {
    for l in &old.listeners {
        if !new.iter().any(|n| Arc::ptr_eq(&n.socket, &l.socket))
            && let Err(e) = sys::stop_listening(l.socket.as_raw_fd())
        {
            tracing::warn!(listen = %l.settings.listen, error = %e, "cannot close a listener");
        }
    }
}
