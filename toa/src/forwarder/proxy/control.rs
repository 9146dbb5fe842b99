//! A running proxy driven from outside: `toa reload --proxy NAME` sends it
//! SIGHUP and waits for its stats socket to report how the reload went, so
//! that `systemctl reload toa-proxy@NAME` fails, with the reason, when the
//! new configuration was refused.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::stats::{ProxyStats, fetch};

/// How often the stats socket is asked while waiting.
const POLL: Duration = Duration::from_millis(50);

/// Reload failures.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// No proxy answers on the socket.
    #[error("no toa proxy answers at {} (toa stats lists the running ones)", socket.display())]
    NotRunning {
        /// The stats socket.
        socket: PathBuf,
    },
    /// Signalling the proxy failed.
    #[error("signalling the proxy (pid {pid}): {source}")]
    Signal {
        /// Its pid.
        pid: u32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The proxy refused the new configuration.
    #[error("the proxy refused the new configuration ({0}); the previous one stays in force")]
    Refused(String),
    /// No outcome in time.
    #[error("the proxy at {} did not report the reload within {waited:?}", socket.display())]
    Timeout {
        /// The stats socket.
        socket: PathBuf,
        /// How long.
        waited: Duration,
    },
}

/// Sends SIGHUP to the proxy serving at `socket` and waits up to `timeout`
/// for it to count the reload; its counters then, or why it refused.
pub fn reload(socket: &Path, timeout: Duration) -> Result<ProxyStats, ReloadError> {
    let not_running = || ReloadError::NotRunning { socket: socket.to_path_buf() };
    let before = fetch(socket).ok_or_else(not_running)?;
    let pid = i32::try_from(before.pid).map_err(|_| not_running())?;
    // SAFETY: plain syscall; the pid is the one the proxy serving there reported just now.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(ReloadError::Signal { pid: before.pid, source: std::io::Error::last_os_error() });
    }
    let deadline = Instant::now() + timeout;
    loop {
        let now = fetch(socket).ok_or_else(not_running)?;
        if now.reload_failures > before.reload_failures {
            return Err(ReloadError::Refused(now.last_reload_error.unwrap_or_default()));
        }
        if now.reloads > before.reloads {
            return Ok(now);
        }
        if Instant::now() >= deadline {
            return Err(ReloadError::Timeout { socket: socket.to_path_buf(), waited: timeout });
        }
        std::thread::sleep(POLL);
    }
}
