//! Library errors. Each message says what failed and, where it can, what to do.

use std::{io, path::PathBuf};

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller lacks privileges.
    #[error("toa must run as root (it loads eBPF programs and attaches them to cgroups)")]
    NotRoot,
    /// Running with some, not all, of the capabilities needed.
    #[error(
        "toa lacks {missing} (it needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN to load eBPF programs and attach them to cgroups); run it as root or grant them (AmbientCapabilities=)"
    )]
    MissingCapabilities {
        /// The missing capabilities, comma-separated.
        missing: String,
    },
    /// The kernel exposes no BTF.
    #[error("the kernel has no BTF ({path} is missing); toa needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf {
        /// The BTF path looked at.
        path: PathBuf,
    },
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup v2 hierarchy is mounted (none in /proc/mounts); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    /// A cgroup path given by the user is not a cgroup v2 directory.
    #[error("{path} is not a cgroup v2 directory (under {root})")]
    NotACgroup {
        /// The path given.
        path: PathBuf,
        /// The cgroup v2 mount point.
        root: PathBuf,
    },
    /// Another agent holds the pin directory's lock.
    #[error("another toa agent is already running on {} ({holder}); stop it first, or give this one another pin_dir", pins.display())]
    AlreadyRunning {
        /// Who holds it (pid).
        holder: String,
        /// The pin directory (canonical).
        pins: PathBuf,
    },
    /// An agent runs on the pin directory (for what needs it stopped).
    #[error("an agent is running on {} ({holder}); stop it first (systemctl stop toa)", pins.display())]
    AgentRunning {
        /// Who holds the lock (pid).
        holder: String,
        /// The pin directory (canonical).
        pins: PathBuf,
    },
    /// Attaching a program to a cgroup failed.
    #[error("attaching {name} to {}: {source}", cgroup.display())]
    Attach {
        /// The program.
        name: &'static str,
        /// The cgroup.
        cgroup: PathBuf,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A configuration lists more of something than the programs have room for.
    #[error("{key}: {} {what}, at most {}", thousands(*count), thousands(*max))]
    TooMany {
        /// The configuration key.
        key: &'static str,
        /// What is counted.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// How many fit.
        max: usize,
    },
    /// A pin toa would use is someone else's.
    #[error("{} is not toa's: {why}; remove it, or choose another pin_dir", path.display())]
    ForeignPin {
        /// The pin.
        path: PathBuf,
        /// What it is instead.
        why: String,
    },
    /// Another toa instance's programs are attached to a cgroup this one would act on.
    #[error("{0}")]
    OtherInstance(String),
    /// No agent state is pinned where we looked.
    #[error("no toa agent is running ({path} does not exist); start one with `toa agent`")]
    NotRunning {
        /// The pin looked for.
        path: PathBuf,
    },
    /// A file-system or system-call failure.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A program is missing from the embedded object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// A map is missing from the embedded object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// Loading the object failed.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// Loading, attaching or pinning a program failed.
    #[error("program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// The error.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A program does not load on this kernel.
    #[error("program {name} ({role}) does not load on this kernel: {reason}; `toa doctor` checks every feature")]
    ProgramLoad {
        /// The program.
        name: &'static str,
        /// What it is for.
        role: &'static str,
        /// The kernel's reason, in one line.
        reason: String,
    },
    /// Turning a link into a pinnable one failed.
    #[error("link of program {name}: {source}")]
    Link {
        /// The program.
        name: &'static str,
        /// The error.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// Pinning failed.
    #[error("pinning {path}: {source}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// The error.
        #[source]
        source: aya::pin::PinError,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// The error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The configuration file is wrong.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
        /// Where, when known.
        line: Option<usize>,
    },
    /// A bad value given by the user.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An [`Error::Io`] builder.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    /// Whether the error comes from what the user asked for (exit code 2)
    /// rather than from the system.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::NotACgroup { .. }
                | Error::Invalid(_)
                | Error::Config { .. }
                | Error::TooMany { .. }
                | Error::ForeignPin { .. }
                | Error::OtherInstance(_)
        )
    }
}

/// `n` with a comma between groups of three digits (`4,096`).
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_in_thousands() {
        for (n, s) in [(0, "0"), (999, "999"), (1000, "1,000"), (4097, "4,097"), (1234567, "1,234,567")] {
            assert_eq!(thousands(n), s);
        }
        let e = Error::TooMany { key: "trusted", what: "prefixes", count: 4097, max: 4096 };
        assert_eq!(e.to_string(), "trusted: 4,097 prefixes, at most 4,096");
        assert!(e.is_usage());
    }
}
