//! One client connection and its upstream: each side's socket and what is
//! known of it, where the upstream connect stands, and the two directions.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
    time::Instant,
};

use super::{
    pool::Tried,
    pump::{Ends, Moved, Pump, Ready, Spares},
    shared::Listener,
};
use crate::sys::net as sys;

/// One socket of a connection and what is known of it.
pub struct Side {
    /// The socket.
    pub fd: OwnedFd,
    /// Its readiness, as the events told it.
    pub ready: Ready,
}

impl Side {
    /// A socket nothing is known of yet.
    pub fn new(fd: OwnedFd) -> Side {
        Side { fd, ready: Ready::default() }
    }
}

/// Where the upstream connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// `connect()` is under way; it fails at the deadline.
    Connecting {
        /// When the attempt times out.
        deadline: Instant,
    },
    /// Connected: bytes flow both ways.
    Open,
}

/// The connection to the backend.
pub struct Upstream {
    /// Its socket.
    pub side: Side,
    /// Which backend of the listener's pool.
    pub backend: usize,
    /// Connecting or open.
    pub stage: Stage,
}

/// What an event on a connecting upstream socket says.
#[derive(Debug)]
pub enum Connect {
    /// Nothing yet.
    Pending,
    /// Connected.
    Done,
    /// Refused, unreachable, reset.
    Failed(io::Error),
}

impl Upstream {
    /// What the event `flags` say about a connect under way: writable
    /// without an error or a hang-up is a success.
    pub fn connect_result(&self, flags: u32) -> Connect {
        if flags & (sys::ERR | sys::HUP) != 0 {
            return Connect::Failed(match sys::take_error(self.side.fd.as_raw_fd()) {
                Ok(Some(e)) | Err(e) => e,
                Ok(None) => io::Error::from(io::ErrorKind::ConnectionReset),
            });
        }
        if flags & sys::OUT == 0 { Connect::Pending } else { Connect::Done }
    }
}

/// One client connection.
pub struct Conn {
    /// The listener it came in on (as it was then: a reload leaves it be).
    pub listener: Arc<Listener>,
    /// The client's address (IPv4-mapped addresses as IPv4).
    pub peer: SocketAddr,
    /// The client's socket.
    pub client: Side,
    /// The backend's, while there is one.
    pub up: Option<Upstream>,
    /// The backends tried so far.
    pub tried: Tried,
    /// Waiting for a descriptor for its upstream socket: when it is refused
    /// if none comes.
    pub waiting: Option<Instant>,
    /// When bytes last moved (for the idle timeout).
    pub last: Instant,
    /// When it was accepted.
    pub started: Instant,
    /// Client → backend.
    pub to_backend: Pump,
    /// Backend → client.
    pub to_client: Pump,
}

impl Conn {
    /// A client just accepted, with no upstream yet.
    pub fn new(listener: Arc<Listener>, client: OwnedFd, peer: SocketAddr, now: Instant) -> Conn {
        Conn {
            listener,
            peer,
            client: Side::new(client),
            up: None,
            tried: Tried::default(),
            waiting: None,
            last: now,
            started: now,
            to_backend: Pump::new(),
            to_client: Pump::new(),
        }
    }

    /// Whether the upstream connection is open.
    pub fn open(&self) -> bool {
        matches!(self.up, Some(Upstream { stage: Stage::Open, .. }))
    }

    /// Whether a connect under way is past its deadline.
    pub fn connect_timed_out(&self, now: Instant) -> bool {
        matches!(self.up, Some(Upstream { stage: Stage::Connecting { deadline }, .. }) if now >= deadline)
    }

    /// Whether an open connection has been silent for the idle timeout.
    pub fn idle(&self, now: Instant) -> bool {
        self.open() && now.duration_since(self.last) >= self.listener.settings.idle_timeout
    }

    /// Whether both directions are over.
    pub fn done(&self) -> bool {
        self.to_backend.done() && self.to_client.done()
    }

    /// Moves bytes both ways until nothing more can move (before the
    /// upstream is open, the client's bytes wait in their pipe or buffer).
    pub fn pump(&mut self, spares: &mut Spares) -> io::Result<(Moved, Moved)> {
        let Conn { client, up, to_backend, to_client, .. } = self;
        let mut none = Ready::default();
        let (up_fd, up_ready, open) = match up {
            Some(u) => (Some(u.side.fd.as_raw_fd()), &mut u.side.ready, u.stage == Stage::Open),
            None => (None, &mut none, false),
        };
        let up_fd = up_fd.filter(|_| open);
        let other_done = to_client.done();
        let a = to_backend.run(
            spares,
            Ends {
                src: client.fd.as_raw_fd(),
                src_ready: &mut client.ready,
                dst: up_fd,
                dst_ready: &mut *up_ready,
                other_done,
            },
        )?;
        let Some(up_fd) = up_fd else { return Ok((a, Moved::default())) };
        let other_done = to_backend.done();
        let b = to_client.run(
            spares,
            Ends {
                src: up_fd,
                src_ready: up_ready,
                dst: Some(client.fd.as_raw_fd()),
                dst_ready: &mut client.ready,
                other_done,
            },
        )?;
        Ok((a, b))
    }
}
