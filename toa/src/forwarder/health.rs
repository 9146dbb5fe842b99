//! Active TCP health checks, shared by the forwarders: a connect to each
//! backend every interval; `fall` failures in a row take a backend out,
//! `rise` successes bring it back. The checks carry no option.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use crate::sys::net as sys;

/// Consecutive results of one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streak {
    /// Successes in a row.
    pub ok: u32,
    /// Failures in a row.
    pub failed: u32,
}

/// Records one result; returns the new health if it changes.
pub fn record(streak: &mut Streak, healthy: bool, success: bool, rise: u32, fall: u32) -> Option<bool> {
    if success {
        streak.ok = streak.ok.saturating_add(1);
        streak.failed = 0;
        (!healthy && streak.ok >= rise).then_some(true)
    } else {
        streak.failed = streak.failed.saturating_add(1);
        streak.ok = 0;
        (healthy && streak.failed >= fall).then_some(false)
    }
}

/// Connects to every address at once; the result of each within `timeout`.
pub fn probe(addrs: &[SocketAddr], timeout: Duration) -> Vec<io::Result<()>> {
    let mut results: Vec<Option<io::Result<()>>> = addrs.iter().map(|_| None).collect();
    let mut socks: Vec<Option<OwnedFd>> = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        let started = sys::tcp_socket(addr).and_then(|s| sys::connect(s.as_raw_fd(), *addr).map(|done| (s, done)));
        match started {
            Ok((_, true)) => {
                results[i] = Some(Ok(()));
                socks.push(None);
            }
            Ok((s, false)) => socks.push(Some(s)),
            Err(e) => {
                results[i] = Some(Err(e));
                socks.push(None);
            }
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut which = Vec::new();
        for (i, s) in socks.iter().enumerate() {
            if let (Some(s), None) = (s, &results[i]) {
                fds.push(libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 });
                which.push(i);
            }
        }
        if fds.is_empty() {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            for i in which {
                results[i] = Some(Err(io::Error::from(io::ErrorKind::TimedOut)));
            }
            break;
        }
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: valid array of the announced length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            for i in which {
                results[i] = Some(Err(io::Error::new(e.kind(), e.to_string())));
            }
            break;
        }
        for (pfd, i) in fds.iter().zip(which) {
            if pfd.revents == 0 {
                continue;
            }
            results[i] = Some(match sys::take_error(pfd.fd) {
                Ok(None) => Ok(()),
                Ok(Some(e)) | Err(e) => Err(e),
            });
        }
    }
    results.into_iter().map(|r| r.unwrap_or_else(|| Err(io::Error::from(io::ErrorKind::TimedOut)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut s = Streak::default();
        assert_eq!(record(&mut s, true, false, 2, 3), None);
        assert_eq!(record(&mut s, true, false, 2, 3), None);
        assert_eq!(record(&mut s, true, false, 2, 3), Some(false), "third failure");
        assert_eq!(record(&mut s, false, true, 2, 3), None);
        assert_eq!(record(&mut s, false, false, 2, 3), None, "a failure resets the rise");
        assert_eq!(record(&mut s, false, true, 2, 3), None);
        assert_eq!(record(&mut s, false, true, 2, 3), Some(true));
        assert_eq!(record(&mut s, true, true, 2, 3), None);
    }

    #[test]
    fn probing_a_closed_and_an_open_port() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let r = probe(&[open.local_addr().expect("addr"), closed], Duration::from_secs(2));
        assert!(r[0].is_ok(), "{:?}", r[0]);
        assert!(r[1].is_err());
    }
}
