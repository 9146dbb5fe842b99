//! Driving the client-side option writer (`toa_inject`).

use std::{
    fs::File,
    net::SocketAddr,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::links::FdLink,
};
use toa_common::{
    Shape,
    inject::InjectSpec,
    maps,
    option::{MAX_ENCODED_LEN, encode},
};

use crate::{
    Error, Result,
    ops::stats::Snapshot,
    receiver::{ebpf, programs},
    sys::{bpf, host as system, net},
};

/// The cookie key that applies to every socket of the cgroup.
const DEFAULT_TARGET: u64 = 0;

/// The writer attached to one cgroup; detached when dropped.
pub struct Injector {
    _link: FdLink,
    targets: HashMap<MapData, u64, InjectSpec>,
    ebpf: Ebpf,
}

impl Injector {
    /// Loads the writer and attaches it to `cgroup` (a cgroup v2 directory).
    pub fn attach(cgroup: &Path) -> Result<Injector> {
        system::require_root()?;
        let cgroup = system::resolve_cgroup(Some(cgroup))?;
        system::require_btf()?;
        let mut ebpf = ebpf::load_private()?;
        let map = ebpf.take_map(maps::INJECT_TARGETS).ok_or(Error::MissingMap(maps::INJECT_TARGETS))?;
        let targets = HashMap::try_from(map).map_err(|source| Error::Map { name: maps::INJECT_TARGETS, source })?;
        let dir = File::open(&cgroup).map_err(Error::io("opening", &cgroup))?;
        let link = programs::load_and_attach(&mut ebpf, &programs::WRITER, &dir)?;
        Ok(Injector { _link: link, targets, ebpf })
    }

    /// Writes `spec` on every new connection of the cgroup.
    pub fn set_default(&mut self, spec: InjectSpec) -> Result<()> {
        self.set(DEFAULT_TARGET, spec)
    }

    /// Writes `spec` on the connection `socket` makes; call before `connect()`.
    /// Returns the socket's cookie, for [`Injector::forget`].
    pub fn set_for_socket(&mut self, socket: impl AsFd, spec: InjectSpec) -> Result<u64> {
        let cookie = net::socket_cookie(socket).map_err(Error::io("reading SO_COOKIE of", "socket"))?;
        self.set(cookie, spec)?;
        Ok(cookie)
    }

    /// Drops the target of one socket (after its connection started).
    pub fn forget(&mut self, cookie: u64) -> Result<()> {
        self.targets.remove(&cookie).map_err(|source| Error::Map { name: maps::INJECT_TARGETS, source })
    }

    /// A handle on the targets map that several threads can use at once,
    /// each with its own `bpf(2)` calls on a descriptor of the map (no lock),
    /// such as the proxy's workers. It stays valid after the injector is
    /// dropped (the writer is detached then, and writes nothing).
    pub(crate) fn targets(&self) -> Result<Targets> {
        use aya::maps::IterableMap as _;
        let fd =
            self.targets.map().fd().as_fd().try_clone_to_owned().map_err(Error::io("duplicating", "targets map"))?;
        Ok(Targets { fd })
    }

    fn set(&mut self, key: u64, spec: InjectSpec) -> Result<()> {
        self.targets.insert(key, spec, 0).map_err(|source| Error::Map { name: maps::INJECT_TARGETS, source })
    }

    /// The writer's counters (`inject_written`, `inject_no_room`).
    pub fn counters(&self) -> Result<Snapshot> {
        let map = self.ebpf.map(maps::COUNTERS).ok_or(Error::MissingMap(maps::COUNTERS))?;
        Snapshot::read_map(map)
    }
}

/// The writer's targets map (key: socket cookie, value: [`InjectSpec`]),
/// typed: only an [`Injector`] makes one, from the map aya checked to have
/// exactly those key and value sizes.
#[derive(Debug)]
pub(crate) struct Targets {
    fd: OwnedFd,
}

impl Targets {
    /// Writes `spec` on the connection of the socket whose cookie is `cookie`.
    pub fn insert(&self, cookie: u64, spec: &InjectSpec) -> std::io::Result<()> {
        // SAFETY: the map's key is a u64 and its value an `InjectSpec`
        // (`#[repr(C)]`, no padding): aya's `HashMap::try_from` checked both
        // sizes when the injector took the map.
        unsafe { bpf::map_update(self.fd.as_fd(), &cookie, spec) }
    }

    /// Removes the entry of `cookie` (`ENOENT` if there is none).
    pub fn remove(&self, cookie: u64) -> std::io::Result<()> {
        // SAFETY: the map's key is a u64 (checked as for `insert`).
        unsafe { bpf::map_delete(self.fd.as_fd(), &cookie) }
    }
}

/// The spec that writes `client` in `kind`, shaped by the address family
/// unless `len` picks another shape (7/19: version form, no port).
pub fn spec_for(client: SocketAddr, kind: u8, len: Option<u8>, packets: u8) -> Result<InjectSpec> {
    if kind <= 1 {
        return Err(Error::Invalid(format!("kind {kind} is reserved (0 = EOL, 1 = NOP)")));
    }
    let (addr, v4) = match client {
        SocketAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.ip().octets());
            (b, true)
        }
        SocketAddr::V6(a) => (a.ip().octets(), false),
    };
    let shape = match len {
        None if v4 => Shape::PortV4,
        None => Shape::PortV6,
        Some(l) => Shape::from_len(l as usize)
            .ok_or_else(|| Error::Invalid(format!("length {l} has no known shape (8, 20, 7, 19)")))?,
    };
    let fits =
        matches!((shape, v4), (Shape::PortV4 | Shape::VersionV4, true) | (Shape::PortV6 | Shape::VersionV6, false));
    if !fits {
        return Err(Error::Invalid(format!("a {}-byte option cannot carry {client}", shape.wire_len())));
    }
    let (option, n) = encode(kind, shape, &addr, client.port().to_be_bytes());
    Ok(InjectSpec { option, len: n as u8, packets, _pad: [0; 2] })
}

/// A spec that writes `bytes` as they are (one whole option: kind, length, payload).
///
/// The kernel only stores self-consistent options: the length byte must equal
/// the number of bytes, and kinds 253/254 need at least 4.
pub fn raw_spec(bytes: &[u8], packets: u8) -> Result<InjectSpec> {
    let n = bytes.len();
    if !(2..=MAX_ENCODED_LEN).contains(&n) {
        return Err(Error::Invalid(format!("a raw option has 2 to {MAX_ENCODED_LEN} bytes, not {n}")));
    }
    if bytes[0] <= 1 || bytes[1] as usize != n {
        return Err(Error::Invalid(format!(
            "a raw option must start with a kind above 1 and its own length ({n}), not {} {}",
            bytes[0], bytes[1]
        )));
    }
    let mut option = [0u8; MAX_ENCODED_LEN];
    option[..n].copy_from_slice(bytes);
    Ok(InjectSpec { option, len: n as u8, packets, _pad: [0; 2] })
}

/// Parses hex such as `fe08109acb007107` (spaces and colons ignored).
pub fn parse_hex(s: &str) -> Result<Vec<u8>> {
    let digits: Vec<u8> = s.bytes().filter(|b| !matches!(b, b' ' | b':')).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(Error::Invalid(format!("`{s}` has an odd number of hex digits")));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).map_err(|_| Error::Invalid(format!("`{s}` is not hex")))?;
            u8::from_str_radix(text, 16).map_err(|_| Error::Invalid(format!("`{s}` is not hex")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use toa_common::inject::packets;

    use super::*;

    #[test]
    fn specs_by_family() {
        let s = spec_for("203.0.113.7:4242".parse().expect("addr"), 254, None, packets::ACK).expect("valid");
        assert_eq!(&s.option[..s.len as usize], &[254, 8, 0x10, 0x92, 203, 0, 113, 7]);
        let s = spec_for("[2001:db8::7]:80".parse().expect("addr"), 253, None, packets::ACK).expect("valid");
        assert_eq!(s.len, 20);
        assert_eq!(&s.option[..4], &[253, 20, 0, 80]);
        assert!(spec_for("203.0.113.7:1".parse().expect("addr"), 254, Some(20), 2).is_err());
        assert!(spec_for("203.0.113.7:1".parse().expect("addr"), 1, None, 2).is_err());
        let s = spec_for("203.0.113.7:1".parse().expect("addr"), 28, Some(7), 1).expect("valid");
        assert_eq!(&s.option[..7], &[28, 7, 1, 203, 0, 113, 7]);
    }

    #[test]
    fn raw_options() {
        let b = parse_hex("fe:07 10 92 cb 00 71").expect("hex");
        let s = raw_spec(&b, packets::ACK).expect("valid");
        assert_eq!(s.len, 7);
        assert!(raw_spec(&[254, 9, 0], 2).is_err(), "length byte must match");
        assert!(raw_spec(&[1, 2], 2).is_err(), "NOP is not an option to write");
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }
}
