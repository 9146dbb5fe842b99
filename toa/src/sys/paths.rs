//! Well-known paths.

use std::{
    fs,
    path::{Component, Path, PathBuf},
};

/// Where the agent pins its maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/toa";
/// Where bpffs is mounted when it is not yet.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// Runtime state: the agent's state file, the proxies' stats sockets.
pub const RUN_DIR: &str = "/run/toa";
/// The configuration file.
pub const CONFIG_FILE: &str = "/etc/toa/toa.toml";
/// The kernel's BTF, required for socket storage.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Mount table used to find cgroup2 and bpffs.
pub const PROC_MOUNTS: &str = "/proc/mounts";

/// The layout of one pin directory.
///
/// The directory is named canonically — absolute, without `.`, `..`,
/// repeated slashes or symbolic links — so that every spelling of one
/// directory is one pin set: the agent's lock, `toa status`, `stats`,
/// `table`, `detach` and a reload all agree on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// The pin directory `root` (on bpffs), however it is spelled.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: canonical(&root.into()) }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of pinned maps.
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    /// Pin path of one map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Directory of pinned links.
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Pin path of one program's link.
    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    /// The directory as one file name, for files about it elsewhere (the
    /// agent's state in [`RUN_DIR`]): the path without its leading `/`, with
    /// `/` written `-` and a `-` or `\` of the path written `\x2d` or `\x5c`
    /// (as `systemd-escape --path` does), so that two directories never give
    /// one name: `a/b` is `a-b`, `a-b` is `a\x2db`.
    pub fn escaped(&self) -> String {
        let mut out = String::new();
        for c in self.root.to_string_lossy().trim_start_matches('/').chars() {
            match c {
                '/' => out.push('-'),
                '-' => out.push_str("\\x2d"),
                '\\' => out.push_str("\\x5c"),
                c => out.push(c),
            }
        }
        out
    }
}

/// `path` absolute and canonical. Each existing component is resolved by
/// the kernel (`realpath`, so symbolic links too), in order; from the first
/// one that does not exist on, the rest is taken as written (it cannot hold
/// a link), with `.` dropped and `..` going up from what is resolved so far.
fn canonical(path: &Path) -> PathBuf {
    let absolute;
    let path = if path.is_absolute() {
        path
    } else {
        absolute = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")).join(path);
        &absolute
    };
    let mut out = PathBuf::from("/");
    let mut exists = true;
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if exists {
                    match fs::canonicalize(&out) {
                        Ok(resolved) => out = resolved,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    out
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new(DEFAULT_PIN_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let p = PinDir::default();
        assert_eq!(p.map("TOA_PEERS"), Path::new("/sys/fs/bpf/toa/maps/TOA_PEERS"));
        assert_eq!(p.link("toa_capture"), Path::new("/sys/fs/bpf/toa/links/toa_capture"));
        assert_eq!(p.escaped(), "sys-fs-bpf-toa");
    }

    #[test]
    fn escaped_names_never_collide() {
        let names: Vec<String> = ["/sys/fs/bpf/a/b", "/sys/fs/bpf/a-b", "/sys/fs/bpf/a\\x2db", "/sys/fs/bpf/a\\-b"]
            .iter()
            .map(|p| PinDir::new(*p).escaped())
            .collect();
        assert_eq!(names, ["sys-fs-bpf-a-b", "sys-fs-bpf-a\\x2db", "sys-fs-bpf-a\\x5cx2db", "sys-fs-bpf-a\\x5c\\x2db"]);
    }

    #[test]
    fn every_spelling_of_a_directory_is_one_pin_dir() {
        let tmp = std::env::temp_dir().join(format!("toa-paths-{}", std::process::id()));
        let real = tmp.join("real");
        fs::create_dir_all(&real).expect("directory");
        let real = fs::canonicalize(&real).expect("canonical");
        std::os::unix::fs::symlink(&real, tmp.join("link")).expect("symlink");
        let want = real.join("pins");
        for spelled in [
            format!("{}/pins", real.display()),
            format!("{}/./pins/", real.display()),
            format!("{}//pins", real.display()),
            format!("{}/../real/pins", real.display()),
            format!("{}/link/pins", tmp.display()),
            format!("{}/link/nope/../pins", tmp.display()),
        ] {
            assert_eq!(PinDir::new(&spelled).root(), want, "{spelled}");
        }
        // Names that only look alike stay apart.
        assert_ne!(PinDir::new(real.join("a/b")), PinDir::new(real.join("a-b")));
        let _ = fs::remove_dir_all(&tmp);
    }
}
