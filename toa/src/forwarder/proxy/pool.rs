//! Backends of one listener: health state, open connections, and the choice
//! of a backend for a new client.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::settings::BackendSettings;
use crate::config::proxy::Balance;

/// One backend and its live state, shared by the workers and the health checker.
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

/// The backends of a listener.
#[derive(Debug)]
pub struct Pool {
    /// In configuration order.
    pub backends: Vec<Backend>,
    balance: Balance,
    next: AtomicUsize,
}

/// The set of backends already tried for one client (bit `i` = backend `i`;
/// backends beyond 64 are never excluded).
pub type Tried = u64;

fn tried(set: Tried, i: usize) -> bool {
    i < 64 && set & (1 << i) != 0
}

/// Adds backend `i` to a tried set.
pub fn mark_tried(set: Tried, i: usize) -> Tried {
    if i < 64 { set | (1 << i) } else { set }
}

impl Pool {
    /// A pool where every backend starts healthy.
    pub fn new(backends: &[BackendSettings], balance: Balance) -> Pool {
        Pool {
            backends: backends
                .iter()
                .map(|s| Backend {
                    settings: s.clone(),
                    healthy: AtomicBool::new(true),
                    active: AtomicU64::new(0),
                    total: AtomicU64::new(0),
                    connect_failures: AtomicU64::new(0),
                    check_failures: AtomicU64::new(0),
                })
                .collect(),
            balance,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks a healthy backend not in `exclude` and counts a connection on it.
    pub fn pick(&self, exclude: Tried) -> Option<usize> {
        let n = self.backends.len();
        let usable = |i: usize| !tried(exclude, i) && self.backends[i].healthy.load(Relaxed);
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
        Pool::new(&b, balance)
    }

    #[test]
    fn round_robin_skips_unhealthy_and_tried() {
        let p = pool(3, Balance::RoundRobin);
        let picks: Vec<usize> = (0..6).filter_map(|_| p.pick(0)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        p.backends[1].healthy.store(false, Relaxed);
        let picks: Vec<usize> = (0..4).filter_map(|_| p.pick(0)).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(p.pick(mark_tried(mark_tried(0, 0), 2)), None, "1 is down, 0 and 2 tried");
        for b in &p.backends {
            b.healthy.store(false, Relaxed);
        }
        assert_eq!(p.pick(0), None);
        assert_eq!(p.healthy(), 0);
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let p = pool(2, Balance::LeastConn);
        let first = p.pick(0).expect("healthy");
        let second = p.pick(0).expect("healthy");
        assert_ne!(first, second, "ties alternate");
        p.backends[0].active.store(5, Relaxed);
        p.backends[1].active.store(1, Relaxed);
        let picks: Vec<usize> = (0..4).filter_map(|_| p.pick(0)).collect();
        assert_eq!(picks, [1, 1, 1, 1]);
        p.release(1);
        assert_eq!(p.backends[1].active.load(Relaxed), 4);
        assert_eq!(p.backends.iter().map(|b| b.total.load(Relaxed)).sum::<u64>(), 6);
    }
}
