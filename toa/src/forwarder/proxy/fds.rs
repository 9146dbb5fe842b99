//! Running out of file descriptors (or another resource of this host):
//! which errors say so, so that no backend is blamed for them, and a
//! warning that says so at most once a second however often it happens.

use std::{
    io,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

/// No descriptor left, in the process (`EMFILE`) or the system (`ENFILE`).
pub fn exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A failure of this host rather than of the peer: no descriptor, no
/// memory for a socket, no local port left.
pub fn local(e: &io::Error) -> bool {
    exhausted(e) || matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL))
}

/// At most one line a second of one kind of warning.
pub struct Throttle {
    /// Milliseconds since [`epoch`] before which nothing is logged.
    next: AtomicU64,
    /// Occurrences not logged since the last line.
    quiet: AtomicU64,
}

/// The clock of every [`Throttle`].
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    /// Time between two lines.
    const EVERY_MS: u64 = 1000;

    /// A throttle that lets the first line through.
    pub const fn new() -> Throttle {
        Throttle { next: AtomicU64::new(0), quiet: AtomicU64::new(0) }
    }

    /// Records one occurrence; `Some(n)` when a line may be written now,
    /// `n` being the occurrences left unlogged since the previous line.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(epoch().elapsed().as_millis() as u64)
    }

    fn allow_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next.load(Relaxed);
        if now_ms >= next && self.next.compare_exchange(next, now_ms + Self::EVERY_MS, Relaxed, Relaxed).is_ok() {
            return Some(self.quiet.swap(0, Relaxed));
        }
        self.quiet.fetch_add(1, Relaxed);
        None
    }
}

/// Logs that no descriptor was left for `what` (at most once a second).
pub fn warn_exhausted(what: &str, e: &io::Error) {
    static LOG: Throttle = Throttle::new();
    if let Some(more) = LOG.allow() {
        tracing::warn!(
            error = %e,
            more_since_last_line = more,
            "out of file descriptors ({what}): new clients wait in the listen queue until connections close; \
             raise LimitNOFILE (ulimit -n) if this lasts"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_with_the_count_of_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.allow_at(5), Some(0));
        assert_eq!(t.allow_at(6), None);
        assert_eq!(t.allow_at(900), None);
        assert_eq!(t.allow_at(1005), Some(2));
        assert_eq!(t.allow_at(1006), None);
    }

    #[test]
    fn which_errors_are_ours() {
        for (errno, ours, fds) in [
            (libc::EMFILE, true, true),
            (libc::ENFILE, true, true),
            (libc::EADDRNOTAVAIL, true, false),
            (libc::ECONNREFUSED, false, false),
            (libc::ETIMEDOUT, false, false),
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!((local(&e), exhausted(&e)), (ours, fds), "{e}");
        }
    }
}
