//! The proxy's Prometheus endpoint: the counters `toa stats` shows, per
//! listener and per backend, rendered from a snapshot taken at scrape time.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, sync::Arc};

use super::{
    counts::{Counts, Kind},
    shared::Shared,
    stats::{ProxyStats, snapshot},
};
use crate::{
    Result,
    ops::metrics::{MetricsServer, Reply},
};

/// Serves `/metrics` and `/healthz` (200 while serving, 503 while draining) on `addr`.
pub(crate) fn start(addr: SocketAddr, shared: Arc<Shared>, socket: PathBuf) -> Result<MetricsServer> {
    MetricsServer::with_handler(addr, "metrics_listen", move |path| match path {
        "/metrics" => Reply::metrics(render(&snapshot(&shared, &socket))),
        "/healthz" if shared.draining.load(std::sync::atomic::Ordering::Relaxed) => {
            Reply::text("503 Service Unavailable", "draining\n")
        }
        "/healthz" => Reply::text("200 OK", "ok\n"),
        _ => Reply::text("404 Not Found", "try /metrics or /healthz\n"),
    })
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes one metric family: its HELP and TYPE lines, then `samples`
/// (labels without braces, value).
fn family(out: &mut String, name: &str, kind: Kind, help: &str, samples: impl IntoIterator<Item = (String, u64)>) {
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// The metric name of a connection counter.
fn metric_name(field: &str, kind: Kind) -> String {
    match kind {
        Kind::Counter if !field.ends_with("_total") => format!("toa_proxy_{field}_total"),
        _ => format!("toa_proxy_{field}"),
    }
}

/// The snapshot in the Prometheus text format.
pub(crate) fn render(p: &ProxyStats) -> String {
    let mut out = String::new();
    let listener = |l: &super::stats::ListenerStats| format!("listener=\"{}\"", label(&l.listen.to_string()));
    for f in Counts::FIELDS {
        let samples = p.listeners.iter().map(|l| (listener(l), (f.get)(&l.counts)));
        family(&mut out, &metric_name(f.name, f.kind), f.kind, f.help, samples);
    }
    type BackendValue = fn(&super::stats::BackendStats) -> u64;
    let backend: [(&str, Kind, &str, BackendValue); 5] = [
        ("toa_proxy_backend_up", Kind::Gauge, "Whether the backend is in rotation (health checks pass).", |b| {
            u64::from(b.healthy)
        }),
        ("toa_proxy_backend_connections_active", Kind::Gauge, "Open connections to the backend.", |b| b.active),
        ("toa_proxy_backend_connections_total", Kind::Counter, "Connections forwarded to the backend.", |b| b.total),
        (
            "toa_proxy_backend_connect_failures_total",
            Kind::Counter,
            "Connects to the backend that failed or timed out.",
            |b| b.connect_failures,
        ),
        ("toa_proxy_backend_check_failures_total", Kind::Counter, "Health checks of the backend that failed.", |b| {
            b.check_failures
        }),
    ];
    for (name, kind, help, get) in backend {
        let samples = p.listeners.iter().flat_map(|l| {
            l.backends
                .iter()
                .map(move |b| (format!("{},backend=\"{}\"", listener(l), label(&b.addr.to_string())), get(b)))
        });
        family(&mut out, name, kind, help, samples);
    }
    let none = String::new;
    for (name, kind, help, v) in [
        (
            "toa_proxy_options_inserted_total",
            Kind::Counter,
            "Packets the writer put the option in.",
            p.options_inserted,
        ),
        ("toa_proxy_options_no_room_total", Kind::Counter, "Packets without room for the option.", p.options_no_room),
        ("toa_proxy_reloads_total", Kind::Counter, "Configuration reloads applied (SIGHUP).", p.reloads),
        ("toa_proxy_reload_failures_total", Kind::Counter, "Configuration reloads refused.", p.reload_failures),
        (
            "toa_proxy_draining",
            Kind::Gauge,
            "Whether the proxy is stopping (no listener, connections finish).",
            u64::from(p.draining),
        ),
    ] {
        family(&mut out, name, kind, help, [(none(), v)]);
    }
    family(
        &mut out,
        "toa_proxy_info",
        Kind::Gauge,
        "The proxy instance.",
        [(format!("name=\"{}\"", label(&p.name)), 1)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::proxy::stats::{BackendStats, ListenerStats};

    #[test]
    fn every_counter_per_listener_and_backend_with_help_and_type() {
        let p = ProxyStats {
            name: "web".into(),
            counts: Counts { connections_total: 9, ..Counts::default() },
            listeners: vec![ListenerStats {
                listen: "[::]:80".parse().expect("addr"),
                balance: Default::default(),
                counts: Counts { connections_total: 4, connections_active: 2, ..Counts::default() },
                backends_healthy: 1,
                backends: vec![BackendStats {
                    addr: "192.0.2.2:80".parse().expect("addr"),
                    healthy: true,
                    active: 2,
                    total: 4,
                    connect_failures: 1,
                    check_failures: 0,
                }],
            }],
            ..ProxyStats::default()
        };
        let text = render(&p);
        assert!(
            text.contains(
                "# TYPE toa_proxy_connections_total counter\ntoa_proxy_connections_total{listener=\"[::]:80\"} 4\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE toa_proxy_connections_active gauge\ntoa_proxy_connections_active{listener=\"[::]:80\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("toa_proxy_resets_total{listener=\"[::]:80\"} 0\n"), "{text}");
        assert!(text.contains("toa_proxy_backend_up{listener=\"[::]:80\",backend=\"192.0.2.2:80\"} 1\n"), "{text}");
        assert!(
            text.contains(
                "toa_proxy_backend_connect_failures_total{listener=\"[::]:80\",backend=\"192.0.2.2:80\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("toa_proxy_info{name=\"web\"} 1\n"), "{text}");
        for f in Counts::FIELDS {
            let name = metric_name(f.name, f.kind);
            assert!(text.contains(&format!("# HELP {name} {}\n", f.help)), "{name}: {text}");
        }
        // Every sample belongs to the family announced just before it.
        let mut family = "";
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap_or("");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} after # TYPE {family}");
            }
        }
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
