//! Backends of one listener: health state, open connections, and the choice
//! of a backend for a new client.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
};

use super::settings::BackendSettings;
use crate::config::proxy::Balance;

/// Connects tried per client: a refused or timed out connect is retried on
/// another backend (or, with only one, on the same one from a new source
/// port), up to this many in all, however many backends there are.
pub const ATTEMPTS: usize = 3;

/// One backend and its live state, shared by the workers and the health
/// checker, and kept across a reload that keeps the backend.
#[derive(Debug)]
pub struct Backend {
    /// Where it is and which kinds it gets.
    pub settings: BackendSettings,
    /// Whether new connections may go to it.
    pub healthy: AtomicBool,
    /// Open connections.
    pub active: AtomicU64,
    /// Connections forwarded to it, ever.
    pub total: AtomicU64,
    /// Connects that failed or timed out.
    pub connect_failures: AtomicU64,
    /// Health checks that failed.
    pub check_failures: AtomicU64,
}

impl Backend {
    /// A backend that starts healthy.
    pub fn new(settings: BackendSettings) -> Backend {
        Backend {
            settings,
            healthy: AtomicBool::new(true),
            active: AtomicU64::new(0),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            check_failures: AtomicU64::new(0),
        }
    }
}

/// The backends of a listener.
#[derive(Debug)]
pub struct Pool {
    /// In configuration order.
    pub backends: Vec<Arc<Backend>>,
    balance: Balance,
    next: AtomicUsize,
}

/// The backends already tried for one client (at most [`ATTEMPTS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tried {
    picked: [usize; ATTEMPTS],
    n: usize,
}

impl Tried {
    /// Whether backend `i` was tried.
    pub fn contains(&self, i: usize) -> bool {
        self.picked[..self.n].contains(&i)
    }

    /// Records an attempt on backend `i`.
    pub fn insert(&mut self, i: usize) {
        if self.n < ATTEMPTS {
            self.picked[self.n] = i;
            self.n += 1;
        }
    }

    /// Whether every attempt is spent.
    pub fn spent(&self) -> bool {
        self.n >= ATTEMPTS
    }
}

impl Pool {
    /// A pool of `backends`; each backend that `keep` returns (one of a
    /// previous pool, on reload) goes on with its state, the others start
    /// healthy.
    pub fn new(
        backends: &[BackendSettings],
        balance: Balance,
        keep: impl Fn(&BackendSettings) -> Option<Arc<Backend>>,
    ) -> Pool {
        Pool {
            backends: backends.iter().map(|s| keep(s).unwrap_or_else(|| Arc::new(Backend::new(s.clone())))).collect(),
            balance,
            next: AtomicUsize::new(0),
        }
    }

    /// The backend with these settings, if the pool has it.
    pub fn find(&self, settings: &BackendSettings) -> Option<Arc<Backend>> {
        self.backends.iter().find(|b| b.settings == *settings).cloned()
    }

    /// Picks a healthy backend not in `exclude` and counts a connection on it.
    pub fn pick(&self, exclude: &Tried) -> Option<usize> {
        let n = self.backends.len();
        let usable = |i: usize| !exclude.contains(i) && self.backends[i].healthy.load(Relaxed);
        let chosen = match self.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Balance::LeastConn => {
                // Ties go round-robin so that equal backends share the load.
                let start = self.next.fetch_add(1, Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| usable(i))
                    .min_by_key(|&i| self.backends[i].active.load(Relaxed))
            }
        }?;
        let b = &self.backends[chosen];
        b.active.fetch_add(1, Relaxed);
        b.total.fetch_add(1, Relaxed);
        Some(chosen)
    }

    /// A connection to backend `i` ended (or never started).
    pub fn release(&self, i: usize) {
        self.backends[i].active.fetch_sub(1, Relaxed);
    }

    /// Takes back a [`Pool::pick`] of backend `i` that this host could not
    /// even try (no socket): it counts as no connection.
    pub fn unpick(&self, i: usize) {
        let b = &self.backends[i];
        b.active.fetch_sub(1, Relaxed);
        b.total.fetch_sub(1, Relaxed);
    }

    /// How many backends are healthy.
    pub fn healthy(&self) -> usize {
        self.backends.iter().filter(|b| b.healthy.load(Relaxed)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, balance: Balance) -> Pool {
        let b: Vec<BackendSettings> = (0..n)
            .map(|i| BackendSettings {
                addr: format!("192.0.2.{}:80", i + 2).parse().expect("addr"),
                kind4: 254,
                kind6: 253,
            })
            .collect();
        Pool::new(&b, balance, |_| None)
    }

    #[test]
    fn round_robin_skips_unhealthy_and_tried() {
        let p = pool(3, Balance::RoundRobin);
        let none = Tried::default();
        let picks: Vec<usize> = (0..6).filter_map(|_| p.pick(&none)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        p.backends[1].healthy.store(false, Relaxed);
        let picks: Vec<usize> = (0..4).filter_map(|_| p.pick(&none)).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(2);
        assert_eq!(p.pick(&tried), None, "1 is down, 0 and 2 tried");
        for b in &p.backends {
            b.healthy.store(false, Relaxed);
        }
        assert_eq!(p.pick(&none), None);
        assert_eq!(p.healthy(), 0);
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let p = pool(2, Balance::LeastConn);
        let none = Tried::default();
        let first = p.pick(&none).expect("healthy");
        let second = p.pick(&none).expect("healthy");
        assert_ne!(first, second, "ties alternate");
        p.backends[0].active.store(5, Relaxed);
        p.backends[1].active.store(1, Relaxed);
        let picks: Vec<usize> = (0..4).filter_map(|_| p.pick(&none)).collect();
        assert_eq!(picks, [1, 1, 1, 1]);
        p.release(1);
        assert_eq!(p.backends[1].active.load(Relaxed), 4);
        assert_eq!(p.backends.iter().map(|b| b.total.load(Relaxed)).sum::<u64>(), 6);
    }

    #[test]
    fn a_tried_set_holds_the_attempts_and_no_more() {
        let mut t = Tried::default();
        for i in [7, 900, 7, 3] {
            t.insert(i);
        }
        assert_eq!(t.n, ATTEMPTS);
        assert!(t.spent() && t.contains(7) && t.contains(900) && !t.contains(3));
    }

    #[test]
    fn a_new_pool_keeps_the_state_of_the_backends_it_keeps() {
        let old = pool(2, Balance::RoundRobin);
        old.backends[1].healthy.store(false, Relaxed);
        old.backends[1].total.store(9, Relaxed);
        let mut next: Vec<BackendSettings> = vec![old.backends[1].settings.clone()];
        next.push(BackendSettings { addr: "192.0.2.9:80".parse().expect("addr"), kind4: 254, kind6: 253 });
        let new = Pool::new(&next, Balance::RoundRobin, |s| old.find(s));
        assert!(Arc::ptr_eq(&new.backends[0], &old.backends[1]), "the same backend, with its state");
        assert_eq!(new.backends[0].total.load(Relaxed), 9);
        assert!(new.backends[1].healthy.load(Relaxed), "a new one starts healthy");
    }
}
