//! Prometheus metrics and a health check, served over plain HTTP/1.1.
//!
//! Counters are read from the per-CPU map at scrape time (a collector), so
//! nothing is mirrored and a scrape always sees the kernel's totals.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::{Error, Result, ops::stats::Snapshot, sys::paths::PinDir};

/// Help text of each counter, for `# HELP` lines.
fn help(name: &str) -> &'static str {
    match name {
        "syn_recv_sock_toa" => "Connections established with an accepted TOA option.",
        "syn_recv_sock_no_toa" => "Connections established without one.",
        "getname_toa_ok" => "getpeername()/accept() answered with the real client.",
        "getname_toa_mismatch" => "Stored records that could not be presented.",
        "getname_toa_bypass" => "IPv6 clients on IPv4 sockets, left untouched.",
        "getname_toa_empty" => "getpeername()/accept() on sockets without a real client.",
        "ip6_address_alloc" => "IPv6 real client addresses stored.",
        "ip6_address_free" => "IPv6 real client addresses released.",
        "toa_malformed" => "Options refused by the codec.",
        "toa_entry_alloc" => "Real client addresses stored.",
        "toa_entry_free" => "Real client addresses released.",
        "toa_store_failed" => "Real client addresses that could not be stored.",
        "inject_written" => "Options written by the client-side writer.",
        "inject_no_room" => "Packets the writer found no option space in.",
        "toa_untrusted" => "Valid options from untrusted senders, ignored.",
        "toa_conflict" => "Later options that differed from the first one, ignored.",
        "toa_from_syn" => "Real clients taken from the SYN.",
        "toa_from_data" => "Real clients taken from a data packet.",
        "toa_syn_unavailable" => "Connections whose SYN was not saved.",
        "getsockopt_toa_ok" => "Vendor getsockopt calls answered.",
        "getsockopt_toa_fail" => "Vendor getsockopt calls refused.",
        _ => "A toa counter.",
    }
}

/// The metric name of a counter: prefixed `toa_` unless it already is.
fn metric_name(counter: &str) -> String {
    if counter.starts_with("toa_") { format!("{counter}_total") } else { format!("toa_{counter}_total") }
}

/// Renders a snapshot in the Prometheus text format.
fn render(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for (name, values) in &snapshot.rows {
        let metric = metric_name(name);
        let total: u64 = values.iter().sum();
        out.push_str(&format!("# HELP {metric} {}\n# TYPE {metric} counter\n{metric} {total}\n", help(name)));
    }
    out.push_str("# HELP toa_up Whether the agent is running.\n# TYPE toa_up gauge\ntoa_up 1\n");
    out
}

/// A running metrics listener.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The answer to one request: status line, content type, body.
pub(crate) struct Reply {
    /// E.g. `200 OK`.
    pub status: &'static str,
    /// E.g. `text/plain; version=0.0.4`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl Reply {
    /// `200 OK` with a Prometheus text body.
    pub fn metrics(body: String) -> Reply {
        Reply { status: "200 OK", content_type: "text/plain; version=0.0.4", body }
    }

    /// A plain text answer.
    pub fn text(status: &'static str, body: impl Into<String>) -> Reply {
        Reply { status, content_type: "text/plain", body: body.into() }
    }
}

impl MetricsServer {
    /// Binds `addr` (failing at once if it cannot) and serves `/metrics` and `/healthz`.
    pub fn start(addr: SocketAddr, pins: PinDir) -> Result<MetricsServer> {
        MetricsServer::with_handler(addr, "metrics_listen", move |path| respond(path, &pins))
    }

    /// Binds `addr` (`key` names the setting in the error) and answers each
    /// request's path with `handler`, from a thread, until dropped.
    pub(crate) fn with_handler(
        addr: SocketAddr,
        key: &str,
        handler: impl Fn(&str) -> Reply + Send + 'static,
    ) -> Result<MetricsServer> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::Invalid(format!("{key} {addr}: {e} (set {key} = \"\" to disable)")))?;
        let addr = listener.local_addr().map_err(Error::io("reading address of", "metrics listener"))?;
        listener.set_nonblocking(true).map_err(Error::io("configuring", "metrics listener"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("toa-metrics".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = serve(stream, &handler);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => {
                            // Out of descriptors, most likely: not again at once.
                            tracing::debug!(error = %e, "metrics accept failed");
                            thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
            .map_err(Error::io("starting", "metrics thread"))?;
        Ok(MetricsServer { addr, stop, thread: Some(thread) })
    }

    /// The bound address (the port chosen when `addr` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The agent's answer to `path`.
fn respond(path: &str, pins: &PinDir) -> Reply {
    match path {
        "/metrics" => match Snapshot::read_pinned(pins) {
            Ok(s) => Reply::metrics(render(&s)),
            Err(e) => Reply::text("503 Service Unavailable", format!("{e}\n")),
        },
        // Ready only once every program is attached (the counters are pinned earlier).
        "/healthz" if super::readiness::attached(pins) => Reply::text("200 OK", "ok\n"),
        "/healthz" => Reply::text("503 Service Unavailable", "not attached yet\n"),
        _ => Reply::text("404 Not Found", "try /metrics or /healthz\n"),
    }
}

fn serve(mut stream: TcpStream, handler: &impl Fn(&str) -> Reply) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request_line = String::new();
    let mut reader = BufReader::new(stream.try_clone()?);
    reader.read_line(&mut request_line)?;
    // Drain the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let Reply { status, content_type, body } = handler(path);
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_once() {
        assert_eq!(metric_name("getname_toa_ok"), "toa_getname_toa_ok_total");
        assert_eq!(metric_name("toa_untrusted"), "toa_untrusted_total");
        let text = render(&Snapshot { rows: vec![("syn_recv_sock_toa", vec![1, 2])] });
        assert!(text.contains("# TYPE toa_syn_recv_sock_toa_total counter\ntoa_syn_recv_sock_toa_total 3\n"));
        assert!(text.contains("toa_up 1"));
    }
}
