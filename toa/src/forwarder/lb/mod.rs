//! `toa lb`: a packet-level FullNAT forwarder in eBPF that inserts the
//! client's address as a TCP option — what LVS FullNAT and DPVS do, on a
//! stock kernel.
//!
//! Per packet, at tc ingress of every forwarding interface
//! (`toa-ebpf/src/lb`): a client's packet to a virtual service gets the
//! backend as destination and one of the forwarder's local addresses and
//! ports as source; the backend's replies are translated back. The option
//! goes into the handshake's final ACK and the client's packets up to the
//! backend's first acknowledgement of data; the backend's SYN-ACK has its MSS
//! lowered by the option length. User space only loads, fills the tables,
//! attaches, serves counters and reclaims idle flows ([`service`]).

mod datapath;
mod segmenter;
mod service;
mod settings;

use std::ffi::CStr;

pub use settings::{DEFAULT_STATS_SOCKET, Flags, Settings};
use toa_common::lb::programs;

use crate::{
    Error, Result,
    sys::{host, signals::TerminationSignals},
};

/// Every non-loopback interface of this network namespace (from
/// `if_nameindex`, which, unlike `/sys/class/net`, always shows the
/// caller's network namespace).
fn all_interfaces() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array ending with a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut p = list;
        while (*p).if_index != 0 {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            if name != "lo" {
                names.push(name);
            }
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

/// Forwarding must be on: the data path's FIB lookup refuses to route otherwise.
fn check_forwarding(v4: bool, v6: bool) -> Result<()> {
    let on = |p: &str| std::fs::read_to_string(p).map(|s| s.trim() == "1").unwrap_or(false);
    if v4 && !on("/proc/sys/net/ipv4/ip_forward") {
        return Err(Error::Invalid(
            "IPv4 forwarding is off in this network namespace; the forwarder's FIB lookups need it: sysctl -w net.ipv4.ip_forward=1".into(),
        ));
    }
    if v6 && !on("/proc/sys/net/ipv6/conf/all/forwarding") {
        return Err(Error::Invalid(
            "IPv6 forwarding is off in this network namespace; the forwarder's FIB lookups need it: sysctl -w net.ipv6.conf.all.forwarding=1".into(),
        ));
    }
    Ok(())
}

/// Runs the forwarder in the foreground until SIGINT/SIGTERM.
pub fn run(s: &Settings) -> Result<()> {
    host::require_root()?;
    let signals = TerminationSignals::block().map_err(Error::io("blocking SIGINT/SIGTERM", "signals"))?;
    let ifaces = if s.ifaces.is_empty() { all_interfaces() } else { s.ifaces.clone() };
    if ifaces.is_empty() {
        return Err(Error::Invalid("no interface to forward on in this network namespace (give --iface IF)".into()));
    }
    for i in &ifaces {
        if segmenter::ifindex(i).is_none() {
            return Err(Error::Invalid(format!("no interface `{i}` in this network namespace (see `ip link`)")));
        }
    }
    check_forwarding(s.services.iter().any(|v| v.listen.is_ipv4()), s.services.iter().any(|v| v.listen.is_ipv6()))?;
    let mut dp = datapath::Datapath::load(s)?;
    // Attach nothing until every step before succeeded; drop undoes what did.
    let seg = if s.segmenter { Some(segmenter::Segmenter::create()?) } else { None };
    let indices = seg.as_ref().map(segmenter::Segmenter::indices).transpose()?;
    dp.configure(indices)?;
    let (flows, reverse) = dp.take_flow_maps()?;
    let counters = dp.take_counter_maps()?;
    let background = service::Background::start(&s.stats_socket, counters, flows, reverse)?;
    if let Some(seg) = &seg {
        dp.attach(programs::INGRESS, &seg.recv)?;
    }
    for i in &ifaces {
        dp.attach(programs::INGRESS, i)?;
    }
    for svc in &s.services {
        let backends: Vec<String> = svc.backends.iter().map(ToString::to_string).collect();
        tracing::info!(
            listen = %svc.listen,
            backends = %backends.join(", "),
            snat = %svc.snat,
            option = %format!("{}/{}", svc.kind, svc.len),
            "service"
        );
    }
    tracing::info!(
        interfaces = %ifaces.join(", "),
        segmenter = %seg.as_ref().map(|g| format!("{} -> {}", g.send, g.recv)).unwrap_or_else(|| "none".into()),
        stats = %s.stats_socket.display(),
        "lb ready"
    );
    let sig = signals.wait().map_err(Error::io("waiting for a signal", "signals"))?;
    tracing::info!(signal = sig, "stopping");
    dp.detach_all();
    drop(seg);
    let last = background.stop();
    let summary: Vec<String> = last
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| k.as_str() != "backends" && v.as_u64().is_some_and(|n| n > 0))
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    tracing::info!(counters = %summary.join(" "), "lb stopped");
    Ok(())
}
