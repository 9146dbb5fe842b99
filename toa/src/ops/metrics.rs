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

/// Help text of the packet-level forwarder's counters.
fn lb_help(name: &str) -> &'static str {
    match name {
        "packets_in" => "Client to backend packets translated.",
        "packets_out" => "Backend to client packets translated.",
        "flows_created" => "Flows created (client SYNs given a backend and a local port).",
        "flows_reclaimed" => "Idle flows deleted by the reaper.",
        "flows_restarted" => "Closed flows replaced by a new SYN on the same client tuple.",
        "options_inserted" => "Packets that got the option.",
        "options_compacted" => "Packets that got the option after compaction.",
        "options_no_room" => "Packets that needed the option but had no room.",
        "options_malformed" => "Packets that needed the option but had a broken option list.",
        "options_segmented" => "GSO packets sent through the segmenter.",
        "options_gso_skipped" => "GSO packets forwarded without the option (no segmenter).",
        "options_failed" => "Packets whose resize the kernel refused.",
        "mss_lowered" => "SYN-ACKs whose MSS was lowered by the option length.",
        "mss_unchanged" => "SYN-ACKs without an MSS to lower.",
        "icmp_translated" => "ICMP errors about a flow translated back to the client.",
        n if n.starts_with("drop_") => "Packets dropped, by reason.",
        _ => "A toa lb counter.",
    }
}

/// Renders a forwarder's counters (the JSON its stats socket serves) in the
/// Prometheus text format: the global counters (drops by reason), then per
/// service and per backend packets, bytes, flows, options, no_room and
/// conntrack entries.
pub(crate) fn render_lb(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let mut drops = Vec::new();
    if let Some(o) = v.as_object() {
        for (name, value) in o {
            let Some(n) = value.as_u64() else { continue };
            if name == "pid" {
                continue;
            }
            if let Some(reason) = name.strip_prefix("drop_") {
                drops.push((reason.to_string(), n));
                continue;
            }
            if name == "flows" {
                out.push_str(&format!(
                    "# HELP toa_lb_conntrack_entries Flows in the connection table.\n# TYPE toa_lb_conntrack_entries gauge\ntoa_lb_conntrack_entries {n}\n"
                ));
                continue;
            }
            let metric = format!("toa_lb_{name}_total");
            out.push_str(&format!("# HELP {metric} {}\n# TYPE {metric} counter\n{metric} {n}\n", lb_help(name)));
        }
    }
    if !drops.is_empty() {
        out.push_str("# HELP toa_lb_drops_total Packets dropped, by reason.\n# TYPE toa_lb_drops_total counter\n");
        for (reason, n) in drops {
            out.push_str(&format!("toa_lb_drops_total{{reason=\"{reason}\"}} {n}\n"));
        }
    }
    let labelled =
        |out: &mut String, rows: &[serde_json::Value], labels: &dyn Fn(&serde_json::Value) -> String, prefix: &str| {
            for (key, kind, help) in [
                ("packets_in", "counter", "Client to backend packets."),
                ("packets_out", "counter", "Backend to client packets."),
                ("bytes_in", "counter", "Client to backend bytes."),
                ("bytes_out", "counter", "Backend to client bytes."),
                ("flows", "counter", "Flows created."),
                ("options", "counter", "Packets that got the option."),
                ("options_no_room", "counter", "Packets that needed the option but had no room."),
                ("conntrack_entries", "gauge", "Flows in the connection table."),
                ("up", "gauge", "Whether the backend is in rotation (health checks)."),
                ("backends_up", "gauge", "Backends in rotation."),
            ] {
                let present: Vec<&serde_json::Value> = rows.iter().filter(|r| !r[key].is_null()).collect();
                if present.is_empty() {
                    continue;
                }
                let metric =
                    if kind == "counter" { format!("{prefix}_{key}_total") } else { format!("{prefix}_{key}") };
                out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
                for r in present {
                    let value = r[key].as_u64().or_else(|| r[key].as_bool().map(u64::from)).unwrap_or(0);
                    out.push_str(&format!("{metric}{{{}}} {value}\n", labels(r)));
                }
            }
        };
    let services = v["services"].as_array().cloned().unwrap_or_default();
    labelled(&mut out, &services, &|r| format!("service=\"{}\"", r["listen"].as_str().unwrap_or("")), "toa_lb_service");
    let backends = v["backends"].as_array().cloned().unwrap_or_default();
    labelled(
        &mut out,
        &backends,
        &|r| {
            format!(
                "service=\"{}\",backend=\"{}\"",
                r["service"].as_str().unwrap_or(""),
                r["addr"].as_str().unwrap_or("")
            )
        },
        "toa_lb_backend",
    );
    out.push_str("# HELP toa_lb_up Whether the forwarder is running.\n# TYPE toa_lb_up gauge\ntoa_lb_up 1\n");
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
    fn the_forwarders_counters_are_labelled_by_service_and_backend() {
        let v = serde_json::json!({
            "packets_in": 7, "drop_no_flow": 2, "flows": 3,
            "services": [{"listen": "192.0.2.1:80", "packets_in": 7, "conntrack_entries": 3, "backends_up": 1}],
            "backends": [{"service": "192.0.2.1:80", "addr": "10.0.0.2:80", "packets_in": 7, "up": true}],
        });
        let text = render_lb(&v);
        assert!(text.contains("toa_lb_packets_in_total 7\n"), "{text}");
        assert!(text.contains("toa_lb_drops_total{reason=\"no_flow\"} 2\n"), "{text}");
        assert!(text.contains("toa_lb_conntrack_entries 3\n"), "{text}");
        assert!(text.contains("toa_lb_service_conntrack_entries{service=\"192.0.2.1:80\"} 3\n"), "{text}");
        assert!(
            text.contains("toa_lb_backend_packets_in_total{service=\"192.0.2.1:80\",backend=\"10.0.0.2:80\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("toa_lb_backend_up{service=\"192.0.2.1:80\",backend=\"10.0.0.2:80\"} 1\n"), "{text}");
    }

    #[test]
    fn names_are_prefixed_once() {
        assert_eq!(metric_name("getname_toa_ok"), "toa_getname_toa_ok_total");
        assert_eq!(metric_name("toa_untrusted"), "toa_untrusted_total");
        let text = render(&Snapshot { rows: vec![("syn_recv_sock_toa", vec![1, 2])] });
        assert!(text.contains("# TYPE toa_syn_recv_sock_toa_total counter\ntoa_syn_recv_sock_toa_total 3\n"));
        assert!(text.contains("toa_up 1"));
    }
}
