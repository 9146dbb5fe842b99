//! The connection counters of a listener (and of the whole proxy), written
//! once: the plain values that `toa stats` and the metrics read
//! ([`Counts`]), the atomics the workers add to ([`LiveCounts`]), and each
//! counter's name, help text and kind ([`Counts::FIELDS`]) come from one
//! list.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Whether a counter only grows or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (a Prometheus counter).
    Counter,
    /// Goes up and down (a Prometheus gauge).
    Gauge,
}

/// One counter of [`Counts`]: its name (in JSON, text and metrics), help
/// text, kind and value.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// The name.
    pub name: &'static str,
    /// One sentence on what it counts.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Its value in a snapshot.
    pub get: fn(&Counts) -> u64,
}

macro_rules! counts {
    ($($name:ident: $kind:ident, $help:literal;)+) => {
        /// A snapshot of the connection counters.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Counts {
            $(#[doc = $help] pub $name: u64,)+
        }

        /// The connection counters, as the workers update them.
        #[derive(Debug, Default)]
        pub struct LiveCounts {
            $(#[doc = $help] pub $name: AtomicU64,)+
        }

        impl LiveCounts {
            /// The values now.
            pub fn load(&self) -> Counts {
                Counts { $($name: self.$name.load(Relaxed),)+ }
            }
        }

        impl Counts {
            /// Every counter, in the order of the struct.
            pub const FIELDS: &[Field] = &[
                $(Field { name: stringify!($name), help: $help, kind: Kind::$kind, get: |c| c.$name },)+
            ];

            /// The sum of two snapshots, counter by counter.
            pub fn plus(self, other: Counts) -> Counts {
                Counts { $($name: self.$name + other.$name,)+ }
            }
        }
    };
}

counts! {
    connections_active: Gauge, "Open client connections.";
    connections_total: Counter, "Client connections accepted.";
    connections_refused: Counter,
        "Clients refused: no healthy backend, every attempt failed, or no file descriptor for its upstream socket within the connect timeout.";
    bytes_client_to_backend: Counter, "Bytes forwarded from clients to backends.";
    bytes_backend_to_client: Counter, "Bytes forwarded from backends to clients.";
    backend_connect_failures: Counter, "Backend connects that failed or timed out.";
    idle_timeouts: Counter, "Connections closed for being silent both ways for the idle timeout.";
    resets: Counter, "Connections ended by a reset or an error on either side.";
    fd_exhausted: Counter,
        "Times no file descriptor was left (to accept, for an upstream socket, a pipe or a health check); no backend is blamed for them.";
    drain_closed: Counter, "Connections still open when the drain timeout ended, closed then.";
}

/// A field of [`LiveCounts`], for [`add`].
pub type Which = fn(&LiveCounts) -> &AtomicU64;

/// Adds `n` to the counter `which` of every set in `sets` (a listener's and
/// the proxy's).
pub fn add(sets: [&LiveCounts; 2], which: Which, n: u64) {
    for set in sets {
        which(set).fetch_add(n, Relaxed);
    }
}

/// Takes `n` from the gauge `which` of every set in `sets`.
pub fn sub(sets: [&LiveCounts; 2], which: Which, n: u64) {
    for set in sets {
        which(set).fetch_sub(n, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_table_reads_each_counter() {
        let live = LiveCounts::default();
        add([&live, &live], |c| &c.resets, 2);
        live.connections_active.fetch_add(5, Relaxed);
        sub([&live, &live], |c| &c.connections_active, 1);
        let c = live.load();
        assert_eq!((c.resets, c.connections_active), (4, 3));
        let get = |name| (Counts::FIELDS.iter().find(|f| f.name == name).expect(name).get)(&c);
        assert_eq!((get("resets"), get("connections_active")), (4, 3));
        assert_eq!(Counts::FIELDS.len(), 10);
        assert!(Counts::FIELDS.iter().all(|f| f.help.ends_with('.')));
        let gauges: Vec<&str> = Counts::FIELDS.iter().filter(|f| f.kind == Kind::Gauge).map(|f| f.name).collect();
        assert_eq!(gauges, ["connections_active"]);
        assert_eq!(c.plus(c).resets, 8);
    }
}
