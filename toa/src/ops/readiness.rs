//! The agent's readiness and reloads as other processes see them.
//!
//! The counters are pinned before the programs are attached, so "`toa stats`
//! answers" does not mean "connections are translated". The agent writes a
//! small JSON state file (`/run/toa/agent@<pin dir>.state`, the directory
//! escaped so that two never share a file) once every program is attached,
//! and updates it after each reload:
//!
//! - `toa status --wait` (and [`wait_attached`]) returns once it says attached;
//! - `/healthz` answers 200 only then (503 before);
//! - `toa reload` (and [`reload`]) sends SIGHUP and waits for the reload count
//!   to move, then reports whether the new configuration was applied.
//!
//! The file is believed only while its agent holds the pin directory's lock
//! (a crashed agent leaves a stale file that says nothing).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    receiver::lock,
    sys::{
        host,
        paths::{self, PinDir},
    },
};

/// What the agent last said about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// The agent's pid: as the agent sees it in the file; as the reader
    /// sees it (its own pid namespace) in what [`read`] returns.
    pub pid: u32,
    /// When the agent started, in clock ticks since boot (`/proc/PID/stat`),
    /// the same in every pid namespace: which process wrote the file.
    #[serde(default)]
    pub started: u64,
    /// Every program is attached: new connections are translated.
    pub attached: bool,
    /// Reloads (SIGHUP) handled so far.
    pub reloads: u64,
    /// Why the last reload was refused; `None` when it was applied (or none happened).
    pub reload_error: Option<String>,
}

/// Readiness and reload failures.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    /// No agent became ready in time.
    #[error(
        "no toa agent attached on {} within {waited:?} ({why}); check `systemctl status toa` or `journalctl -u toa`",
        pin_dir.display()
    )]
    Timeout {
        /// The pin directory waited on.
        pin_dir: PathBuf,
        /// How long.
        waited: Duration,
        /// What was seen last.
        why: &'static str,
    },
    /// No agent runs on the pin directory.
    #[error("no toa agent is running on {} (start it: systemctl start toa)", pin_dir.display())]
    NotRunning {
        /// The pin directory.
        pin_dir: PathBuf,
    },
    /// The agent refused the new configuration.
    #[error("the agent refused the new configuration ({0}); the previous one stays in force")]
    Refused(String),
    /// Signalling the agent failed.
    #[error("signalling the agent (pid {pid}): {source}")]
    Signal {
        /// Its pid.
        pid: u32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the state file failed.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the agent on `pins` keeps its state.
pub fn state_file(pins: &PinDir) -> PathBuf {
    Path::new(paths::RUN_DIR).join(format!("agent@{}.state", pins.escaped()))
}

/// The state of the agent on `pins`, when one runs and has said anything.
///
/// The file is believed only when the process holding the pin directory's
/// lock wrote it: its start time is the file's (pids differ between pid
/// namespaces, an agent in a container and a reader on the host, start
/// times do not). When the holder is not visible from here, the lock alone
/// decides. The pid returned is the holder's as seen from here.
pub fn read(pins: &PinDir) -> Option<AgentState> {
    let holder = lock::holder(pins)?;
    let mut state: AgentState = serde_json::from_str(&fs::read_to_string(state_file(pins)).ok()?).ok()?;
    if let Some(pid) = holder.pid {
        if host::process_start_time(pid)? != state.started {
            return None;
        }
        state.pid = pid;
    }
    Some(state)
}

/// Whether an agent on `pins` has every program attached.
pub fn attached(pins: &PinDir) -> bool {
    read(pins).is_some_and(|s| s.attached)
}

/// How often waiting polls the state file.
const POLL: Duration = Duration::from_millis(20);

/// Waits until an agent on `pins` is attached.
pub fn wait_attached(pins: &PinDir, timeout: Duration) -> Result<AgentState, ReadinessError> {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match read(pins) {
            Some(s) if s.attached => return Ok(s),
            Some(_) => "the agent runs but is not attached yet",
            None if lock::holder(pins).is_some() => "the agent is starting",
            None => "no agent holds the pin directory's lock",
        };
        if Instant::now() >= deadline {
            return Err(ReadinessError::Timeout { pin_dir: pins.root().to_path_buf(), waited: timeout, why });
        }
        std::thread::sleep(POLL);
    }
}

/// Asks the agent on `pins` to re-read its configuration (SIGHUP) and waits
/// until it has tried: `Ok` when the new configuration is in force.
pub fn reload(pins: &PinDir, timeout: Duration) -> Result<AgentState, ReadinessError> {
    let before = read(pins).ok_or_else(|| ReadinessError::NotRunning { pin_dir: pins.root().to_path_buf() })?;
    let pid = i32::try_from(before.pid).map_err(|_| ReadinessError::NotRunning { pin_dir: pins.root().into() })?;
    // SAFETY: plain syscall; the pid is the lock holder's, checked just now.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(ReadinessError::Signal { pid: before.pid, source: std::io::Error::last_os_error() });
    }
    let deadline = Instant::now() + timeout;
    loop {
        match read(pins) {
            Some(now) if now.reloads > before.reloads => {
                return match &now.reload_error {
                    None => Ok(now),
                    Some(e) => Err(ReadinessError::Refused(e.clone())),
                };
            }
            Some(_) => {}
            None => return Err(ReadinessError::NotRunning { pin_dir: pins.root().to_path_buf() }),
        }
        if Instant::now() >= deadline {
            return Err(ReadinessError::Timeout {
                pin_dir: pins.root().to_path_buf(),
                waited: timeout,
                why: "the agent did not report the reload",
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The agent's side: writes the state file, removes it when dropped.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    state: AgentState,
}

impl StateFile {
    /// Says that every program is attached.
    pub fn attached(pins: &PinDir) -> Result<StateFile, ReadinessError> {
        let pid = std::process::id();
        let started = host::process_start_time(pid).unwrap_or(0);
        let state = AgentState { pid, started, attached: true, reloads: 0, reload_error: None };
        let file = StateFile { path: state_file(pins), state };
        file.write()?;
        Ok(file)
    }

    /// Records the outcome of a reload.
    pub fn reloaded(&mut self, error: Option<String>) -> Result<(), ReadinessError> {
        self.state.reloads += 1;
        self.state.reload_error = error;
        self.write()
    }

    /// What the file says.
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// Written whole to a temporary file and renamed, so readers never see half of it.
    fn write(&self) -> Result<(), ReadinessError> {
        let err = |source| ReadinessError::Write { path: self.path.clone(), source };
        let tmp = self.path.with_extension("state.tmp");
        let text = serde_json::to_string(&self.state).map_err(|e| err(e.into()))?;
        // Nothing else creates the runtime directory: the lock is the pin directory's.
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(err)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_named_after_the_pin_dir() {
        assert_eq!(state_file(&PinDir::default()), Path::new("/run/toa/agent@sys-fs-bpf-toa.state"));
        assert_ne!(state_file(&PinDir::new("/sys/fs/bpf/a/b")), state_file(&PinDir::new("/sys/fs/bpf/a-b")));
    }

    #[test]
    fn the_state_round_trips_and_refuses_unknown_fields() {
        let s = AgentState { pid: 7, started: 42, attached: true, reloads: 2, reload_error: Some("bad".into()) };
        let text = serde_json::to_string(&s).expect("json");
        assert_eq!(serde_json::from_str::<AgentState>(&text).expect("parse"), s);
        assert!(
            serde_json::from_str::<AgentState>(r#"{"pid":1,"attached":true,"reloads":0,"reload_error":null,"x":1}"#)
                .is_err()
        );
    }
}
