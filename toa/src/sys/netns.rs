//! Network namespaces: entering one, naming one, finding them all.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// Moves the calling thread into the network namespace `ns` (an open
/// namespace file). Sockets opened afterwards belong to it.
pub fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: plain syscall on an open fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `net:[INODE]` of a namespace file (the form /proc shows).
pub fn label(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!("net:[{}]", m.ino()),
        Err(_) => path.display().to_string(),
    }
}

/// Every distinct network namespace: /run/netns/* first, then /proc/*/ns/net.
pub fn all() -> Vec<(String, File)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    candidates.push(PathBuf::from("/proc/thread-self/ns/net"));
    if let Ok(d) = std::fs::read_dir("/run/netns") {
        candidates.extend(d.flatten().map(|e| e.path()));
    }
    if let Ok(d) = std::fs::read_dir("/proc") {
        candidates.extend(
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .map(|e| e.path().join("ns/net")),
        );
    }
    for path in candidates {
        let Ok(file) = File::open(&path) else { continue };
        let Ok(meta) = file.metadata() else { continue };
        if seen.insert((meta.dev(), meta.ino())) {
            out.push((format!("net:[{}]", meta.ino()), file));
        }
    }
    out
}
