//! `toa table`: the live connections that carry a real client address (the
//! kernel modules' `/proc/net/toa_table`).
//!
//! The list comes from a `NETLINK_SOCK_DIAG` dump of the TCP sockets that
//! asks the kernel for each socket's value in the pinned `TOA_PEERS` socket
//! storage (`sockdiag`). No eBPF program runs for it and no lock of
//! the data path is taken beyond what `ss` takes, so listing a busy host does
//! not slow its connections down.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use aya::maps::MapData;
use serde::Serialize;
use toa_common::{Family, PeerRecord, maps, peer::source};

use crate::{
    Error, Result,
    ops::sockdiag::{self, DiagSocket, SockDiag, TCP_LISTEN},
    sys::{netns, paths::PinDir, time},
};

/// Which network namespaces to list.
#[derive(Clone, Debug, Default)]
pub enum Namespaces {
    /// The caller's.
    #[default]
    Current,
    /// These namespace files (`/run/netns/NAME`, `/proc/PID/ns/net`).
    Paths(Vec<PathBuf>),
    /// Every namespace found under /run/netns and /proc/*/ns/net.
    All,
}

/// One connection with a real client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The network namespace, `net:[INODE]`.
    pub netns: String,
    /// The server's address of the connection.
    pub local: SocketAddr,
    /// The transport peer (the forwarder).
    pub peer: SocketAddr,
    /// The real client, `ADDR:PORT` (just `ADDR` for formats without a port).
    pub real_client: String,
    /// The real client's address.
    pub real_addr: IpAddr,
    /// The real client's port (0 for formats without one).
    pub real_port: u16,
    /// The option kind it came in.
    pub kind: u8,
    /// The packet it came from: `syn`, `ack` or `data`.
    pub packet: &'static str,
    /// How long ago it was stored, in milliseconds: to the second (the record
    /// keeps whole seconds since boot, modulo 194 days).
    pub age_ms: u64,
    /// When it was stored (UTC, RFC 3339).
    pub since: String,
    /// TCP state.
    pub state: &'static str,
    /// Owner uid of the socket.
    pub uid: u32,
    /// Socket inode (as in /proc/PID/fd and `ss -e`).
    pub inode: u32,
    /// The socket's cgroup v2 id.
    pub cgroup_id: Option<u64>,
}

/// Lists the connections that carry a real client, for the agent pinned at `pins`.
pub fn read(pins: &PinDir, namespaces: &Namespaces) -> Result<Vec<Entry>> {
    let path = pins.map(maps::PEERS);
    if !path.exists() {
        return Err(Error::NotRunning { path });
    }
    let map = MapData::from_pin(&path).map_err(|source| Error::Map { name: maps::PEERS, source })?;
    let map_id = map.info().map_err(|source| Error::Map { name: maps::PEERS, source })?.id();
    let targets: Vec<(String, Option<File>)> = match namespaces {
        Namespaces::Current => vec![(netns::label(Path::new("/proc/thread-self/ns/net")), None)],
        Namespaces::Paths(paths) => paths
            .iter()
            .map(|p| Ok((netns::label(p), Some(File::open(p).map_err(Error::io("opening network namespace", p))?))))
            .collect::<Result<_>>()?,
        Namespaces::All => netns::all().into_iter().map(|(label, f)| (label, Some(f))).collect(),
    };
    let now_boot = time::boottime();
    let now_wall = SystemTime::now();
    let mut entries = Vec::new();
    for (label, ns) in targets {
        if let Some(ns) = &ns {
            netns::enter(ns).map_err(Error::io("entering network namespace", &label))?;
        }
        let mut diag = SockDiag::open().map_err(Error::io("opening", "a NETLINK_SOCK_DIAG socket"))?;
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let sockets = diag.dump_tcp(family, !(1 << TCP_LISTEN), &[map.fd().as_fd()]).map_err(|e| {
                if e.raw_os_error() == Some(libc::EPERM) {
                    Error::Invalid(
                        "reading socket storage needs root (CAP_BPF or CAP_SYS_ADMIN): run `sudo toa table`".into(),
                    )
                } else {
                    Error::io("dumping TCP sockets in", label.clone())(e)
                }
            })?;
            entries.extend(sockets.iter().filter_map(|s| entry(&label, s, map_id, now_boot, now_wall)));
        }
    }
    entries.sort_by(|a, b| (&a.netns, a.local, a.peer).cmp(&(&b.netns, b.local, b.peer)));
    Ok(entries)
}

/// The table row of one socket, when it holds a real client in map `map_id`.
fn entry(netns: &str, s: &DiagSocket, map_id: u32, now_boot: Duration, now_wall: SystemTime) -> Option<Entry> {
    let value = s.storages.iter().find(|(id, _)| *id == map_id).map(|(_, v)| v)?;
    let record = decode_record(value)?;
    let family = record.family()?;
    let real_addr = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(record.addr[0], record.addr[1], record.addr[2], record.addr[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(record.addr)),
    };
    let real_port = record.port();
    let real_client =
        if real_port == 0 { real_addr.to_string() } else { SocketAddr::new(real_addr, real_port).to_string() };
    let age = Duration::from_secs(u64::from(record.age_s(now_boot.as_secs())));
    Some(Entry {
        netns: netns.to_string(),
        local: s.local,
        peer: s.remote,
        real_client,
        real_addr,
        real_port,
        kind: record.kind,
        packet: match record.source {
            source::SYN => "syn",
            source::ACK => "ack",
            source::DATA => "data",
            _ => "?",
        },
        age_ms: age.as_millis() as u64,
        since: time::rfc3339(now_wall.checked_sub(age).unwrap_or(now_wall)),
        state: sockdiag::state_name(s.state),
        uid: s.uid,
        inode: s.inode,
        cgroup_id: s.cgroup_id,
    })
}

/// A `PeerRecord` from the bytes the kernel returned.
fn decode_record(bytes: &[u8]) -> Option<PeerRecord> {
    if bytes.len() < size_of::<PeerRecord>() {
        return None;
    }
    let mut record = PeerRecord::EMPTY;
    // SAFETY: PeerRecord is repr(C) plain data without invalid bit patterns; the source is long enough.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut record).cast::<u8>(), size_of::<PeerRecord>()) };
    Some(record)
}

/// The text table (columns sized to their contents); `with_netns` adds a namespace column.
pub fn render(entries: &[Entry], with_netns: bool) -> String {
    let header = ["NETNS", "LOCAL", "TRANSPORT PEER", "REAL CLIENT", "KIND", "PACKET", "AGE"];
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            [
                e.netns.clone(),
                e.local.to_string(),
                e.peer.to_string(),
                e.real_client.clone(),
                e.kind.to_string(),
                e.packet.to_string(),
                time::human_age(e.age_ms),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i == 0 && !with_netns {
                continue;
            }
            match i {
                4 | 6 => out.push_str(&format!("{cell:>w$}")),
                _ => out.push_str(&format!("{cell:<w$}")),
            }
            out.push_str(if i == 6 { "\n" } else { "  " });
        }
        out
    };
    let mut out = line(header);
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5], &row[6]]));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn socket(storage: Vec<u8>) -> DiagSocket {
        DiagSocket {
            family: libc::AF_INET as u8,
            state: 1,
            local: "192.0.2.2:9000".parse().expect("addr"),
            remote: "192.0.2.1:41000".parse().expect("addr"),
            uid: 0,
            inode: 5,
            cgroup_id: Some(9),
            cookie: 77,
            storages: vec![(3, storage)],
        }
    }

    fn record_bytes(r: &PeerRecord) -> Vec<u8> {
        // SAFETY: plain data.
        unsafe { std::slice::from_raw_parts((r as *const PeerRecord).cast::<u8>(), size_of::<PeerRecord>()) }.to_vec()
    }

    #[test]
    fn a_stored_ipv4_client_becomes_a_row() {
        let mut r = PeerRecord::EMPTY;
        r.family = 4;
        r.kind = 254;
        r.source = source::ACK;
        r.addr[..4].copy_from_slice(&[203, 0, 113, 7]);
        r.port = 4242u16.to_be_bytes();
        r.stored = PeerRecord::stored_at(10);
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let e = entry("net:[1]", &socket(record_bytes(&r)), 3, Duration::from_secs(12), now).expect("row");
        assert_eq!(e.real_client, "203.0.113.7:4242");
        assert_eq!((e.kind, e.packet, e.age_ms), (254, "ack", 2000));
        assert_eq!(e.since, "2023-11-14T22:13:18.000Z");
        assert_eq!(e.state, "established");
        assert!(entry("net:[1]", &socket(record_bytes(&r)), 4, Duration::from_secs(12), now).is_none(), "other map");
        let text = render(&[e], false);
        assert!(text.lines().nth(1).expect("row").contains("203.0.113.7:4242"), "{text}");
    }

    #[test]
    fn empty_records_and_portless_formats() {
        let now = SystemTime::now();
        assert!(entry("n", &socket(record_bytes(&PeerRecord::EMPTY)), 3, Duration::ZERO, now).is_none());
        assert!(entry("n", &socket(vec![1, 2, 3]), 3, Duration::ZERO, now).is_none());
        let mut r = PeerRecord::EMPTY;
        r.family = 6;
        r.kind = 28;
        r.source = source::SYN;
        r.addr = "2001:db8::7".parse::<Ipv6Addr>().expect("v6").octets();
        let e = entry("n", &socket(record_bytes(&r)), 3, Duration::ZERO, now).expect("row");
        assert_eq!(e.real_client, "2001:db8::7");
        assert_eq!(e.packet, "syn");
    }
}
