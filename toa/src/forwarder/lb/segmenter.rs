//! The segmenter: a veth pair inside the forwarder's network namespace whose
//! sending end has no segmentation or checksum offload.
//!
//! A GSO packet (a locally sent or GRO'd super-packet) that needs the option
//! cannot get it at tc: growing its TCP header would leave the kernel's
//! `csum_start` at the old header, and the software segmenter refuses such a
//! packet. So the data path redirects it, untouched, out of the segmenter's
//! sending end, where the kernel cuts it into MSS-sized segments with full
//! checksums; they arrive at the receiving end, whose program gives each the
//! option and forwards it. Only the packets of a flow's first round trip
//! take this way.

use std::{ffi::CString, fs, io, process::Command};

use crate::{Error, Result};

/// A veth pair, deleted on drop unless [`Segmenter::keep`] was called.
#[derive(Debug)]
pub struct Segmenter {
    /// The sending end (no offloads).
    pub send: String,
    /// The receiving end (the program attaches to its ingress).
    pub recv: String,
    /// An earlier forwarder made it (on the same pin directory).
    pub adopted: bool,
    keep: bool,
}

const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_SSG: u32 = 0x19;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct Ifreq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Sets one ethtool flag (legacy `ETHTOOL_S*` command) on `ifname`.
fn ethtool_set(ifname: &str, cmd: u32, on: bool) -> io::Result<()> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut value = EthtoolValue { cmd, data: on as u32 };
    let mut req = Ifreq { name: [0; libc::IFNAMSIZ], data: (&mut value as *mut EthtoolValue).cast(), _pad: [0; 16] };
    let n = ifname.len().min(libc::IFNAMSIZ - 1);
    req.name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_value.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), SIOCETHTOOL, &mut req) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Invalid(format!("cannot run `ip` (iproute2) to create the segmenter: {e}")))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The index of an interface of this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The segmenter's name for a forwarder pinned at `pin_dir`: `tlb` and 8
/// hex digits of a hash of the directory, so that a restarted forwarder
/// finds its own and two forwarders on one host never share one.
pub fn name_for(pin_dir: &std::path::Path) -> String {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in pin_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("tlb{:08x}", (h ^ (h >> 32)) as u32)
}

impl Segmenter {
    /// Creates the pair `<name>s` / `<name>r` (or takes the one an earlier
    /// forwarder left), offloads off on the sending end, IPv6 off on both
    /// (no addresses, nothing of their own to send), both up.
    pub fn create(name: &str) -> Result<Segmenter> {
        let mut seg = Segmenter { send: format!("{name}s"), recv: format!("{name}r"), adopted: false, keep: false };
        if ifindex(&seg.send).is_some() && ifindex(&seg.recv).is_some() {
            seg.adopted = true;
        } else {
            let _ = Command::new("ip").args(["link", "del", &seg.send]).output();
            ip(&["link", "add", &seg.send, "mtu", "65535", "type", "veth", "peer", "name", &seg.recv, "mtu", "65535"])?;
        }
        // From here on, drop deletes the pair whatever fails next (unless adopted).
        for ifname in [&seg.send, &seg.recv] {
            let p = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
            if std::path::Path::new(&p).exists() {
                fs::write(&p, "1").map_err(Error::io("writing", p.clone()))?;
            }
        }
        for (cmd, what) in [(ETHTOOL_STSO, "tso"), (ETHTOOL_SGSO, "gso"), (ETHTOOL_STXCSUM, "tx"), (ETHTOOL_SSG, "sg")]
        {
            ethtool_set(&seg.send, cmd, false)
                .map_err(|e| Error::Invalid(format!("cannot turn {what} off on the segmenter {}: {e}", seg.send)))?;
        }
        ip(&["link", "set", &seg.recv, "up"])?;
        ip(&["link", "set", &seg.send, "up"])?;
        Ok(seg)
    }

    /// Interface indices of (sending, receiving) end.
    pub fn indices(&self) -> Result<(u32, u32)> {
        match (ifindex(&self.send), ifindex(&self.recv)) {
            (Some(s), Some(r)) => Ok((s, r)),
            _ => Err(Error::Invalid(format!("the segmenter {} / {} vanished", self.send, self.recv))),
        }
    }
}

impl Segmenter {
    /// Leaves the pair in place when dropped (for the next forwarder).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Deletes the pair when dropped, even one adopted.
    pub fn remove_on_drop(&mut self) {
        self.keep = false;
        self.adopted = false;
    }
}

impl Drop for Segmenter {
    fn drop(&mut self) {
        if self.keep || self.adopted {
            return;
        }
        // Deleting one end deletes the pair.
        let _ = Command::new("ip").args(["link", "del", &self.send]).output();
    }
}
