//! One agent per pin directory: an exclusive `flock` on the directory itself.
//!
//! The lock belongs to the directory (its inode on bpffs), not to a name
//! derived from the path, so every spelling of the directory meets the same
//! lock and two directories never share one. The kernel lists the holder in
//! `/proc/locks`, which is where [`holder`] looks: asking does not take the
//! lock, so it can never make a starting agent fail.

use std::{
    fs::{self, File},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
};

use crate::{Error, Result, sys::paths::PinDir};

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _dir: File,
}

/// Who holds a pin directory's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Its process id, when visible from here (another pid namespace shows none).
    pub pid: Option<u32>,
}

impl InstanceLock {
    /// Takes the lock of the pin directory (which must exist).
    pub fn acquire(pins: &PinDir) -> Result<Self> {
        let root = pins.root();
        // A stopping agent removes the directory while it still holds the
        // lock: a lock taken on a directory removed meanwhile guards nothing,
        // so check that the name still leads to it, and start over if not.
        for _ in 0..3 {
            let dir = File::open(root).map_err(Error::io("opening", root))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(Error::io("locking", root)(err));
                }
                let holder = match holder(pins).and_then(|h| h.pid) {
                    Some(pid) => format!("pid {pid}"),
                    None => "pid unknown".to_string(),
                };
                return Err(Error::AlreadyRunning { holder, pins: root.into() });
            }
            let held = dir.metadata().map_err(Error::io("reading", root))?;
            match fs::metadata(root) {
                Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => return Ok(Self { _dir: dir }),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(root).map_err(Error::io("creating", root))?
                }
                Err(e) => return Err(Error::io("reading", root)(e)),
            }
        }
        Err(Error::Invalid(format!(
            "{} keeps being removed and created again; is another agent starting and stopping there?",
            root.display()
        )))
    }
}

/// The holder of the lock of `pins`, if any: the exclusive `FLOCK` entry of
/// the directory's device and inode in `/proc/locks`.
pub fn holder(pins: &PinDir) -> Option<Holder> {
    let meta = fs::metadata(pins.root()).ok()?;
    let locks = fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino())
}

/// The writer of a `FLOCK` on (`dev`, `ino`) in the text of `/proc/locks`,
/// whose lines read `1: FLOCK  ADVISORY  WRITE 4242 00:28:2692142 0 EOF`
/// (device major and minor in hex; pid 0 when not visible from here).
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<Holder> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A blocked waiter's line starts with "->"; it holds nothing.
        let [_, "FLOCK", _, "WRITE", pid, file, ..] = fields.as_slice() else { return None };
        (*file == want).then(|| Holder { pid: pid.parse().ok().filter(|p| *p != 0) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 11 00:28:77 0 EOF\n\
                     2: FLOCK  ADVISORY  READ 12 00:28:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 4242 00:28:2692142 0 EOF\n\
                     3: -> FLOCK  ADVISORY  WRITE 4343 00:28:2692142 0 EOF\n\
                     4: FLOCK  ADVISORY  WRITE 0 fe:01:9 0 EOF\n";
        let dev = libc::makedev(0, 0x28);
        assert_eq!(holder_in(locks, dev, 2692142), Some(Holder { pid: Some(4242) }));
        assert_eq!(holder_in(locks, dev, 77), None, "a POSIX lock or a shared flock is not the agent's");
        assert_eq!(holder_in(locks, libc::makedev(0xfe, 1), 9), Some(Holder { pid: None }), "pid not visible");
        assert_eq!(holder_in(locks, dev, 9), None, "another device");
    }
}
