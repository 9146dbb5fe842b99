//! Processes started inside a cgroup and/or network namespace, and a guard
//! that kills them on drop and lets tests wait for lines of their output.
//!
//! A child is placed with a `pre_exec` hook that runs between fork and exec:
//! first it writes `0` ("this process") to the cgroup's `cgroup.procs`, then
//! it calls `setns(CLONE_NEWNET)`. Both files are opened in the parent, so
//! the child only makes the two async-signal-safe system calls. The cgroup
//! move comes first, so the program is already in the cgroup (and under any
//! eBPF program attached to it) when it creates its first socket, and the
//! move does not depend on the network namespace.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Read};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

/// How long [`Spawned::terminate`] waits after SIGTERM before SIGKILL.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Interval between two polls of a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Returns a [`Command`] for `program` whose child first moves itself into
/// the cgroup directory `cgroup` (if any) and then into the network namespace
/// file `netns` (if any, e.g. [`crate::netns::Netns::path`]) before exec.
///
/// `<cgroup>/cgroup.procs` and the namespace file are opened here, in the
/// parent, and stay open (close-on-exec) as long as the `Command` lives, so
/// it can be spawned more than once.
///
/// # Panics
///
/// If either file cannot be opened. Failures of the write or of `setns` in
/// the child surface as the error of `spawn`/`output`.
pub fn command_in(netns: Option<&Path>, cgroup: Option<&Path>, program: impl AsRef<OsStr>) -> Command {
    let procs: Option<OwnedFd> = cgroup.map(|dir| {
        let path = dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {} for writing: {e}", path.display()))
            .into()
    });
    let ns: Option<OwnedFd> = netns.map(|path| {
        File::open(path).unwrap_or_else(|e| panic!("cannot open network namespace {}: {e}", path.display())).into()
    });
    let mut cmd = Command::new(program);
    if procs.is_some() || ns.is_some() {
        let hook = move || -> io::Result<()> {
            if let Some(fd) = &procs {
                // SAFETY: writes one byte from a static buffer to an open fd.
                let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
                match n {
                    1 => {}
                    n if n < 0 => return Err(io::Error::last_os_error()),
                    _ => return Err(io::Error::from_raw_os_error(libc::EIO)),
                }
            }
            if let Some(fd) = &ns {
                // SAFETY: plain syscall on an open fd.
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the hook only calls write(2) and setns(2) and builds
        // `io::Error`s from errno values, which do not allocate: it is
        // async-signal-safe, as required between fork and exec.
        unsafe { cmd.pre_exec(hook) };
    }
    cmd
}

/// Runs `args` (program and arguments) to completion in the optional network
/// namespace and cgroup, with stdin empty and stdout/stderr captured, and
/// returns its output whatever the exit status: tests inspect it.
///
/// # Panics
///
/// If `args` is empty or the program cannot be started (including a failed
/// cgroup move or `setns`).
pub fn run_in(netns: Option<&Path>, cgroup: Option<&Path>, args: &[&str]) -> Output {
    let (program, rest) = args.split_first().expect("run_in needs a program");
    let mut cmd = command_in(netns, cgroup, program);
    cmd.args(rest);
    cmd.output().unwrap_or_else(|e| panic!("cannot run {args:?} (netns {netns:?}, cgroup {cgroup:?}): {e}"))
}

/// Asserts that a finished command succeeded and returns its standard output;
/// on failure the panic names `what` and shows both streams.
///
/// # Panics
///
/// If the command exited unsuccessfully.
pub fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One of a child's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Lines received from one stream's reader thread.
#[derive(Debug)]
struct Lines {
    rx: Receiver<String>,
    /// Every line received so far, in order.
    all: Vec<String>,
    /// Whether `all[i]` was returned by `wait_for_line` already.
    taken: Vec<bool>,
    /// The reader thread has finished (EOF or read error).
    eof: bool,
}

impl Lines {
    fn new(rx: Receiver<String>) -> Lines {
        Lines { rx, all: Vec::new(), taken: Vec::new(), eof: false }
    }

    fn push(&mut self, line: String) {
        self.all.push(line);
        self.taken.push(false);
    }

    /// Moves whatever the reader thread has sent into `all`, without waiting.
    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(line) => self.push(line),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.eof = true;
                    return;
                }
            }
        }
    }
}

/// Starts a thread that sends each line of `reader` (without its line ending,
/// lossily decoded as UTF-8) and returns the receiving end.
fn read_lines(reader: impl Read + Send + 'static, thread_name: String) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if buf.last() == Some(&b'\n') {
                            buf.pop();
                        }
                        if buf.last() == Some(&b'\r') {
                            buf.pop();
                        }
                        if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .expect("cannot start output reader thread");
    rx
}

/// A running child process, SIGKILLed and reaped on drop. Its stdout and
/// stderr are read line by line by background threads from the moment it
/// starts, so no output is lost and the child never blocks on a full pipe.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    cmdline: String,
    stdout: RefCell<Lines>,
    stderr: RefCell<Lines>,
}

/// Starts `cmd` with stdout and stderr piped and stdin empty (`/dev/null`);
/// see [`spawn_with_stdin`] to write to it.
///
/// # Panics
///
/// If the program cannot be started; the message has the command line.
pub fn spawn(mut cmd: Command) -> Spawned {
    cmd.stdin(Stdio::null());
    start(cmd)
}

/// Like [`spawn`], but with stdin piped; write to it with
/// [`Spawned::stdin`] and close it with [`Spawned::close_stdin`].
///
/// # Panics
///
/// If the program cannot be started.
pub fn spawn_with_stdin(mut cmd: Command) -> Spawned {
    cmd.stdin(Stdio::piped());
    start(cmd)
}

fn start(mut cmd: Command) -> Spawned {
    let cmdline = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    let pid = child.id();
    let out = child.stdout.take().expect("stdout was piped");
    let err = child.stderr.take().expect("stderr was piped");
    Spawned {
        stdout: RefCell::new(Lines::new(read_lines(out, format!("stdout-{pid}")))),
        stderr: RefCell::new(Lines::new(read_lines(err, format!("stderr-{pid}")))),
        child,
        cmdline,
    }
}

impl Spawned {
    /// The child's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// The command line, as used in panic messages.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    fn lines(&mut self, stream: Stream) -> &mut Lines {
        match stream {
            Stream::Stdout => self.stdout.get_mut(),
            Stream::Stderr => self.stderr.get_mut(),
        }
    }

    /// Every line the stream has produced so far, including those already
    /// returned by [`Spawned::wait_for_line`].
    pub fn lines_so_far(&self, stream: Stream) -> Vec<String> {
        let cell = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        let mut lines = cell.borrow_mut();
        lines.drain();
        lines.all.clone()
    }

    /// Waits up to `timeout` for a line of `stream` matching `pred` and
    /// returns it. Lines already received but not yet returned are checked
    /// first, oldest first; each line is returned at most once, and lines
    /// that do not match stay available to later calls.
    ///
    /// # Panics
    ///
    /// On timeout or when the stream ends without a match, with the command
    /// line, exit status and everything seen on both streams.
    pub fn wait_for_line(&mut self, stream: Stream, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        let failure = loop {
            let lines = self.lines(stream);
            while checked < lines.all.len() {
                if !lines.taken[checked] && pred(&lines.all[checked]) {
                    lines.taken[checked] = true;
                    return lines.all[checked].clone();
                }
                checked += 1;
            }
            if lines.eof {
                break "the stream ended";
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => lines.eof = true,
                Err(RecvTimeoutError::Timeout) => break "timed out",
            }
        };
        let report = self.report();
        panic!("{failure} after {timeout:?} waiting for a matching line on {stream:?} of {report}");
    }

    /// Every line `stream` produced, once it has ended (the child closed it,
    /// normally by exiting), waiting up to `timeout` for the end.
    ///
    /// # Panics
    ///
    /// If the stream is still open after `timeout`.
    pub fn wait_for_end(&mut self, stream: Stream, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let lines = self.lines(stream);
        while !lines.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => lines.eof = true,
                Err(RecvTimeoutError::Timeout) => {
                    let report = self.report();
                    panic!("{stream:?} still open after {timeout:?}: {report}");
                }
            }
        }
        lines.all.clone()
    }

    /// Command line, exit status (if exited) and all output so far, for panic
    /// messages.
    fn report(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            Ok(None) => "still running".to_owned(),
            Err(e) => format!("unknown ({e})"),
        };
        let stdout = self.lines_so_far(Stream::Stdout).join("\n");
        let stderr = self.lines_so_far(Stream::Stderr).join("\n");
        format!(
            "{}\npid {}, status: {status}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}\n---",
            self.cmdline,
            self.pid()
        )
    }

    /// Returns the exit status if the child has exited, without waiting.
    ///
    /// # Panics
    ///
    /// If `waitpid` fails.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.cmdline))
    }

    /// Waits up to `timeout` for the child to exit by itself.
    ///
    /// # Panics
    ///
    /// If it is still running after `timeout` (the drop then kills it).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let report = self.report();
                panic!("process did not exit within {timeout:?}: {report}");
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends SIGTERM, waits up to 5 s for the child to exit and SIGKILLs it
    /// after that; returns its exit status. Does nothing but return the
    /// status if the child has already exited.
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(TERMINATE_TIMEOUT)
    }

    /// Like [`Spawned::terminate`] with a custom grace period before SIGKILL.
    ///
    /// # Panics
    ///
    /// If signalling or waiting fails.
    pub fn terminate_within(&mut self, grace: Duration) -> ExitStatus {
        // Never signal a reaped pid: it may belong to another process by now.
        if let Some(status) = self.try_wait() {
            return status;
        }
        // SAFETY: plain syscall; the child is not reaped, so the pid is ours.
        if unsafe { libc::kill(self.pid(), libc::SIGTERM) } != 0 {
            panic!("cannot SIGTERM {}: {}", self.cmdline, io::Error::last_os_error());
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return status;
            }
            thread::sleep(POLL_INTERVAL);
        }
        self.child.kill().unwrap_or_else(|e| panic!("cannot SIGKILL {}: {e}", self.cmdline));
        self.child.wait().unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.cmdline))
    }

    /// The child's stdin.
    ///
    /// # Panics
    ///
    /// Unless started with [`spawn_with_stdin`] and stdin is still open.
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().unwrap_or_else(|| panic!("stdin of {} is not piped or already closed", self.cmdline))
    }

    /// Closes the child's stdin (it reads EOF). No-op if not piped.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Reader threads are not joined: grandchildren may still hold the
        // pipes open; the threads end on EOF or when the receiver is gone.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Cgroup;
    use crate::netns::{Netns, Pair};
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::process::ExitStatusExt as _;

    const T: Duration = Duration::from_secs(10);

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn wait_for_line_keeps_other_lines() {
        let mut p = spawn(sh("echo a; echo b >&2; echo c; echo d"));
        assert_eq!(p.wait_for_line(Stream::Stdout, |l| l == "c", T), "c");
        assert_eq!(p.wait_for_line(Stream::Stdout, |_| true, T), "a");
        assert_eq!(p.wait_for_line(Stream::Stdout, |_| true, T), "d");
        assert_eq!(p.wait_for_line(Stream::Stderr, |l| l.starts_with('b'), T), "b");
        assert!(p.wait_exit(T).success());
        assert_eq!(p.lines_so_far(Stream::Stdout), ["a", "c", "d"]);
        assert_eq!(p.lines_so_far(Stream::Stderr), ["b"]);
    }

    #[test]
    #[should_panic(expected = "the stream ended")]
    fn wait_for_line_panics_on_eof_with_context() {
        let mut p = spawn(sh("echo only-line"));
        p.wait_for_line(Stream::Stdout, |l| l == "never", T);
    }

    #[test]
    fn wait_for_line_timeout_message_has_output() {
        let mut p = spawn(sh("echo seen-out; echo seen-err >&2; exec sleep 100"));
        p.wait_for_line(Stream::Stderr, |l| l == "seen-err", T);
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.wait_for_line(Stream::Stdout, |l| l == "never", Duration::from_millis(200))
        }))
        .expect_err("times out");
        let msg = err.downcast_ref::<String>().expect("message");
        assert!(msg.contains("timed out") && msg.contains("seen-out") && msg.contains("seen-err"), "{msg}");
        assert!(msg.contains("still running"), "{msg}");
    }

    #[test]
    fn terminate_sigterm_then_sigkill() {
        let mut graceful = spawn(sh("trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done"));
        graceful.wait_for_line(Stream::Stdout, |l| l == "ready", T);
        assert_eq!(graceful.terminate().code(), Some(3));
        // Terminating again only returns the status.
        assert_eq!(graceful.terminate().code(), Some(3));

        let mut stubborn = spawn(sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"));
        stubborn.wait_for_line(Stream::Stdout, |l| l == "ready", T);
        let status = stubborn.terminate_within(Duration::from_millis(200));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }

    #[test]
    fn stdin_is_null_or_piped() {
        let mut p = spawn(sh("cat; echo done"));
        p.wait_for_line(Stream::Stdout, |l| l == "done", T);
        let mut q = spawn_with_stdin(sh("read x; echo got-$x"));
        writeln!(q.stdin(), "hi").expect("write stdin");
        q.close_stdin();
        q.wait_for_line(Stream::Stdout, |l| l == "got-hi", T);
    }

    #[test]
    fn run_in_returns_failed_output() {
        let out = run_in(None, None, &["sh", "-c", "echo oops >&2; echo out; exit 4"]);
        assert_eq!(out.status.code(), Some(4));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"oops\n");
    }

    #[test]
    #[ignore = "needs root: namespaces, cgroups"]
    fn command_in_moves_child_into_cgroup_and_netns() {
        crate::require_root();
        let ns = Netns::new("toa-t-cmd");
        let cg = Cgroup::new("toa-t-cmd");
        let ns_ino = std::fs::metadata(ns.path()).expect("stat").ino();
        let root = crate::cgroup::cgroup2_root();
        let rel = cg.path().strip_prefix(&root).expect("below root");
        let mut cmd = command_in(Some(&ns.path()), Some(cg.path()), "sh");
        cmd.args(["-c", "grep '^0::' /proc/self/cgroup; readlink /proc/self/ns/net"]);
        // The same Command (and its pre-opened fds) can be used repeatedly.
        for _ in 0..2 {
            let out = cmd.output().expect("run");
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8(out.stdout).expect("utf-8");
            assert_eq!(text, format!("0::/{}\nnet:[{ns_ino}]\n", rel.display()));
        }
        // The parent stays where it was.
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read");
        assert!(!own.contains(&rel.display().to_string()), "{own}");
    }

    #[test]
    #[ignore = "needs root: namespaces, cgroups"]
    fn command_in_reports_setns_failure() {
        crate::require_root();
        // A regular file is not a namespace: setns fails in the child with EINVAL.
        let err = command_in(Some(Path::new("/proc/self/status")), None, "true").status().expect_err("setns fails");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    }

    const SERVER: &str = r#"
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(16)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    data = b""
    while True:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    print("peer", peer[0], "data", data.decode(), flush=True)
    c.close()
"#;

    const CLIENT: &str = r#"
import socket, sys
host, port, src, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
if src:
    s.bind((src, 0))
s.settimeout(5)
s.connect((host, port))
s.sendall(msg.encode())
s.close()
"#;

    fn connect(pair: &Pair, host: &str, port: &str, src: &str, msg: &str) {
        let out = run_in(Some(&pair.cli.path()), None, &["python3", "-c", CLIENT, host, port, src, msg]);
        assert!(out.status.success(), "client failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    #[ignore = "needs root: namespaces, cgroups"]
    fn tcp_across_pair_with_server_in_cgroup() {
        crate::require_root();
        let pair = Pair::new("toa-t-tcp");
        let cg = Cgroup::new("toa-t-tcp");
        let extra = pair.add_cli_addresses(3);
        let srv_ns = pair.srv.path();

        let start = |host: String| {
            let mut cmd = command_in(Some(&srv_ns), Some(cg.path()), "python3");
            cmd.args(["-c", SERVER, &host, "8080"]);
            let mut p = spawn(cmd);
            p.wait_for_line(Stream::Stdout, |l| l == "listening", T);
            p
        };
        let mut v4 = start(pair.srv_v4.to_string());
        let mut v6 = start(pair.srv_v6.to_string());
        let pids = cg.pids();
        assert!(pids.contains(&v4.pid()) && pids.contains(&v6.pid()), "{pids:?}");
        assert_eq!(pids.len(), 2, "{pids:?}");

        connect(&pair, &pair.srv_v4.to_string(), "8080", "", "hello-v4");
        let line = v4.wait_for_line(Stream::Stdout, |l| l.starts_with("peer "), T);
        assert_eq!(line, format!("peer {} data hello-v4", pair.cli_v4));

        connect(&pair, &pair.srv_v4.to_string(), "8080", &extra[2].to_string(), "from-extra");
        let line = v4.wait_for_line(Stream::Stdout, |l| l.starts_with("peer "), T);
        assert_eq!(line, format!("peer {} data from-extra", extra[2]));

        connect(&pair, &pair.srv_v6.to_string(), "8080", "", "hello-v6");
        let line = v6.wait_for_line(Stream::Stdout, |l| l.starts_with("peer "), T);
        assert_eq!(line, format!("peer {} data hello-v6", pair.cli_v6));

        // The server's namespace is not the caller's: nothing listens here.
        let here = run_in(None, None, &["python3", "-c", CLIENT, "192.0.2.2", "8080", "", "x"]);
        assert!(!here.status.success());

        let ns_paths = [pair.cli.path(), pair.srv.path()];
        let cg_path = cg.path().to_owned();
        assert_eq!(v4.terminate().signal(), Some(libc::SIGTERM));
        drop(pair);
        drop(cg);
        assert_eq!(v6.wait_exit(T).signal(), Some(libc::SIGKILL), "the cgroup drop kills it");
        for p in &ns_paths {
            assert!(!p.exists(), "{} still exists", p.display());
        }
        assert!(!cg_path.exists(), "{} still exists", cg_path.display());
    }

    #[test]
    #[ignore = "needs root: namespaces, cgroups"]
    fn guards_clean_up_when_a_test_panics() {
        crate::require_root();
        let (tx, rx) = mpsc::channel();
        let result = thread::spawn(move || {
            let pair = Pair::new("toa-t-panic");
            let cg = Cgroup::new("toa-t-panic");
            let mut cmd = command_in(Some(&pair.srv.path()), Some(cg.path()), "sleep");
            cmd.arg("1000");
            let p = spawn(cmd);
            tx.send((pair.cli.path(), pair.srv.path(), cg.path().to_owned(), p.pid())).expect("send");
            panic!("deliberate panic with live fixtures");
        })
        .join();
        assert!(result.is_err());
        let (cli, srv, cg, pid) = rx.recv().expect("fixture paths");
        for path in [cli, srv, cg] {
            assert!(!path.exists(), "{} survived the panic", path.display());
        }
        // Reaped by the Spawned guard: no process (and no zombie) is left.
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} survived");
    }
}
