//! A worker: one thread, one epoll instance, many connections.
//!
//! Every worker waits on every listening socket (`EPOLLEXCLUSIVE`, so one
//! worker wakes per new client) and owns the connections it accepted. Both
//! sockets of a connection are registered once, edge-triggered for reading,
//! writing and peer shutdown; what is known about each socket (may read, may
//! write) is kept in the connection and cleared on `EAGAIN`.
//!
//! The listeners a worker waits on follow [`Shared::layout`]: before each
//! wait it compares generations and re-registers when a reload (or the
//! drain, which leaves none) changed them. Out of file descriptors it stops
//! waiting on them for a moment, so clients wait in the listen queue instead
//! of being accepted only to be reset.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use super::{
    conn::{Conn, Connect, Side, Stage, Upstream},
    counts::Which,
    fds,
    pool::Tried,
    pump::{Ready, Spares},
    shared::{Listener, Shared},
};
use crate::{forwarder::inject::spec_for, sys::net as sys};

const KIND_LISTENER: u64 = 0;
const KIND_CLIENT: u64 = 1;
const KIND_UPSTREAM: u64 = 2;
const KIND_WAKE: u64 = 3;

const SLOT_BITS: u64 = 32;
const GEN_MASK: u64 = (1 << 30) - 1;

fn token(kind: u64, slot: usize, generation: u32) -> u64 {
    (kind << 62) | ((generation as u64 & GEN_MASK) << SLOT_BITS) | slot as u64
}

fn untoken(t: u64) -> (u64, usize, u32) {
    (t >> 62, (t & 0xffff_ffff) as usize, ((t >> SLOT_BITS) & GEN_MASK) as u32)
}

/// How often timeouts are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// How long accepting pauses when no descriptor is left.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// Connections accepted per listener wake-up before serving others.
const ACCEPT_BATCH: usize = 64;
/// Events of a connection's sockets.
const CONN_EVENTS: u32 = sys::IN | sys::OUT | sys::RDHUP | sys::ET;

struct Slot {
    generation: u32,
    conn: Option<Box<Conn>>,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Both directions closed normally.
    Done,
    /// An error or reset on either side: reset the other.
    Reset,
    /// Silent for too long.
    Idle,
    /// No backend could be reached (or no socket made for one).
    Refused,
    /// Still open when the drain timeout ended.
    Drained,
}

impl End {
    /// The counter the end adds to, if any.
    fn counter(self) -> Option<Which> {
        match self {
            End::Done => None,
            End::Reset => Some(|c| &c.resets),
            End::Idle => Some(|c| &c.idle_timeouts),
            End::Refused => Some(|c| &c.connections_refused),
            End::Drained => Some(|c| &c.drain_closed),
        }
    }
}

/// What to do after a failed connect attempt.
enum Retry {
    /// The backend failed: try the next.
    Next,
    /// No descriptor left for the upstream socket: keep the client and try
    /// again shortly (until its connect timeout), accepting no one meanwhile.
    Wait,
    /// This host ran out of something else: refuse the client.
    Refuse,
}

/// A worker thread's state.
pub struct Worker {
    shared: Arc<Shared>,
    epoll: sys::Epoll,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    /// The listeners of `generation`, by token index.
    listeners: Vec<Arc<Listener>>,
    generation: u64,
    /// While out of descriptors: when to wait on the listeners again.
    paused_until: Option<Instant>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    spares: Spares,
    now: Instant,
    debug: bool,
}

impl Worker {
    /// A worker serving the listeners of `shared`; `wake` interrupts its wait.
    pub fn new(shared: Arc<Shared>, wake: Arc<OwnedFd>, stop: Arc<AtomicBool>) -> io::Result<Worker> {
        let epoll = sys::Epoll::new()?;
        epoll.add(wake.as_raw_fd(), sys::IN, token(KIND_WAKE, 0, 0))?;
        let spares = Spares::new(shared.forward);
        let mut w = Worker {
            shared,
            epoll,
            wake,
            stop,
            listeners: Vec::new(),
            generation: u64::MAX,
            paused_until: None,
            slots: Vec::new(),
            free: Vec::new(),
            spares,
            now: Instant::now(),
            debug: tracing::enabled!(tracing::Level::DEBUG),
        };
        w.follow_layout()?;
        Ok(w)
    }

    /// Serves until the stop flag is set; then closes every connection.
    pub fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        while !self.stop.load(Relaxed) {
            if let Err(e) = self.follow_layout() {
                tracing::error!(error = %e, "cannot wait on the listeners; worker stops");
                break;
            }
            let n = match self.epoll.wait(&mut events, SWEEP_EVERY.as_millis() as i32) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed; worker stops");
                    break;
                }
            };
            self.now = Instant::now();
            for ev in &events[..n] {
                let (kind, slot, generation) = untoken(ev.u64);
                match kind {
                    KIND_LISTENER => self.accept(slot),
                    KIND_CLIENT | KIND_UPSTREAM => self.on_event(slot, generation, kind == KIND_CLIENT, ev.events),
                    _ => {
                        let mut buf = [0u8; 8];
                        let _ = sys::recv(self.wake.as_raw_fd(), &mut buf);
                    }
                }
            }
            if self.now >= next_sweep {
                self.sweep();
                self.resume_accepting();
                next_sweep = self.now + SWEEP_EVERY;
            }
        }
        let end = if self.shared.draining.load(Relaxed) { End::Drained } else { End::Reset };
        for i in 0..self.slots.len() {
            if let Some(conn) = self.slots[i].conn.take() {
                self.finish(i, conn, end);
            }
        }
    }

    /// Waits on the listeners in effect, if they changed.
    fn follow_layout(&mut self) -> io::Result<()> {
        if self.shared.generation() == self.generation {
            return Ok(());
        }
        let layout = self.shared.layout();
        if self.paused_until.is_none() {
            self.unwatch_listeners();
        }
        self.listeners = layout.listeners.clone();
        self.generation = layout.generation;
        if self.paused_until.is_none() { self.watch_listeners() } else { Ok(()) }
    }

    fn watch_listeners(&self) -> io::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            self.epoll.add(l.socket.as_raw_fd(), sys::IN | sys::EXCLUSIVE, token(KIND_LISTENER, i, 0))?;
        }
        Ok(())
    }

    fn unwatch_listeners(&self) {
        for l in &self.listeners {
            let _ = self.epoll.del(l.socket.as_raw_fd());
        }
    }

    /// Stops accepting for [`ACCEPT_PAUSE`] (the listening sockets are
    /// level-triggered: waiting on them would wake at once, again and again).
    fn pause_accepting(&mut self) {
        if self.paused_until.is_none() {
            self.unwatch_listeners();
        }
        self.paused_until = Some(self.now + ACCEPT_PAUSE);
    }

    fn resume_accepting(&mut self) {
        if self.paused_until.is_some_and(|t| self.now >= t) {
            self.paused_until = None;
            if let Err(e) = self.watch_listeners() {
                tracing::warn!(error = %e, "cannot wait on the listeners again; retrying");
                self.pause_accepting();
            }
        }
    }

    fn accept(&mut self, li: usize) {
        let Some(listener) = self.listeners.get(li).cloned() else { return };
        for _ in 0..ACCEPT_BATCH {
            let (client, peer) = match sys::accept(listener.socket.as_raw_fd()) {
                Ok(c) => c,
                Err(e) if sys::would_block(&e) => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO)) => continue,
                // A listener a reload or the drain just closed.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
                Err(e) => {
                    if fds::exhausted(&e) {
                        self.shared.add(&listener, |c| &c.fd_exhausted, 1);
                        fds::warn_exhausted("accepting a client", &e);
                    } else {
                        static LOG: fds::Throttle = fds::Throttle::new();
                        if let Some(more) = LOG.allow() {
                            tracing::warn!(listen = %listener.settings.listen, error = %e, more_since_last_line = more, "accept failed");
                        }
                    }
                    // Leave the clients queued; try again shortly.
                    self.pause_accepting();
                    return;
                }
            };
            let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
            self.shared.add(&listener, |c| &c.connections_total, 1);
            let slot = self.alloc_slot();
            let conn = Box::new(Conn::new(Arc::clone(&listener), client, peer, self.now));
            let generation = self.slots[slot].generation;
            if let Err(e) =
                self.epoll.add(conn.client.fd.as_raw_fd(), CONN_EVENTS, token(KIND_CLIENT, slot, generation))
            {
                tracing::warn!(error = %e, "epoll_ctl failed; dropping a client");
                self.free.push(slot);
                continue;
            }
            self.shared.add(&listener, |c| &c.connections_active, 1);
            self.connect_next(slot, conn);
            if self.paused_until.is_some() {
                // Out of descriptors: the others stay in the listen queue.
                return;
            }
        }
    }

    fn alloc_slot(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { generation: 0, conn: None });
                self.slots.len() - 1
            }
        }
    }

    /// Opens an upstream connection to the next usable backend, or refuses the client.
    fn connect_next(&mut self, slot: usize, mut conn: Box<Conn>) {
        let listener = Arc::clone(&conn.listener);
        loop {
            // Untried backends first; once all were tried, any healthy one again.
            let pick = if conn.tried.spent() {
                None
            } else {
                listener.pool.pick(&conn.tried).or_else(|| listener.pool.pick(&Tried::default()))
            };
            let Some(bi) = pick else {
                self.finish(slot, conn, End::Refused);
                return;
            };
            let up = match self.open_upstream(&conn, bi) {
                Ok(up) => up,
                Err(e) => match self.attempt_failed(&listener, bi, &e) {
                    Retry::Next => {
                        conn.tried.insert(bi);
                        continue;
                    }
                    Retry::Wait => return self.wait_for_descriptor(slot, conn),
                    Retry::Refuse => {
                        self.finish(slot, conn, End::Refused);
                        return;
                    }
                },
            };
            conn.tried.insert(bi);
            conn.waiting = None;
            let generation = self.slots[slot].generation;
            if let Err(e) = self.epoll.add(up.as_raw_fd(), CONN_EVENTS, token(KIND_UPSTREAM, slot, generation)) {
                tracing::warn!(error = %e, "epoll_ctl failed");
                listener.pool.release(bi);
                self.finish(slot, conn, End::Reset);
                return;
            }
            let deadline = self.now + listener.settings.connect_timeout;
            conn.up = Some(Upstream { side: Side::new(up), backend: bi, stage: Stage::Connecting { deadline } });
            self.slots[slot].conn = Some(conn);
            return;
        }
    }

    /// A connect to backend `bi` failed with `e`: the backend is blamed
    /// (and the next tried) unless the failure is this host's own.
    fn attempt_failed(&mut self, listener: &Listener, bi: usize, e: &io::Error) -> Retry {
        let b = &listener.pool.backends[bi];
        if fds::exhausted(e) {
            // Not an attempt on the backend at all.
            listener.pool.unpick(bi);
            self.shared.add(listener, |c| &c.fd_exhausted, 1);
            fds::warn_exhausted("an upstream socket", e);
            return Retry::Wait;
        }
        listener.pool.release(bi);
        if fds::local(e) {
            static LOG: fds::Throttle = fds::Throttle::new();
            if let Some(more) = LOG.allow() {
                tracing::warn!(backend = %b.settings.addr, error = %e, more_since_last_line = more, "cannot open an upstream connection on this host; client refused");
            }
            return Retry::Refuse;
        }
        b.connect_failures.fetch_add(1, Relaxed);
        self.shared.add(listener, |c| &c.backend_connect_failures, 1);
        tracing::debug!(backend = %b.settings.addr, error = %e, "backend connect failed");
        Retry::Next
    }

    /// socket → register the client's address for its cookie → connect (the
    /// writer consumes the entry; it is removed here only if connect failed).
    fn open_upstream(&self, conn: &Conn, bi: usize) -> io::Result<OwnedFd> {
        let b = &conn.listener.pool.backends[bi].settings;
        let up = sys::tcp_socket(&b.addr)?;
        sys::set_int(up.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        let kind = if conn.peer.is_ipv4() { b.kind4 } else { b.kind6 };
        let cookie = match spec_for(conn.peer, kind, None, conn.listener.settings.packets) {
            Ok(spec) => self.shared.register(&up, spec),
            Err(e) => {
                tracing::debug!(error = %e, "no option for this client");
                None
            }
        };
        let result = sys::connect(up.as_raw_fd(), b.addr);
        // The writer removes a socket's entry itself once connect() reaches
        // TCP; only a connect() that failed before that leaves it behind.
        if let (Some(cookie), Err(_)) = (cookie, &result) {
            self.shared.forget(cookie);
        }
        result.map(|_| up)
    }

    fn on_event(&mut self, slot: usize, generation: u32, client_side: bool, flags: u32) {
        let Some(s) = self.slots.get_mut(slot) else { return };
        if s.generation != generation {
            return;
        }
        let Some(mut conn) = s.conn.take() else { return };
        if client_side {
            conn.client.ready.note(flags);
        } else {
            let Some(up) = conn.up.as_mut() else {
                self.finish(slot, conn, End::Reset);
                return;
            };
            if up.stage == Stage::Open {
                up.side.ready.note(flags);
            } else {
                match up.connect_result(flags) {
                    Connect::Pending => {
                        self.slots[slot].conn = Some(conn);
                        return;
                    }
                    Connect::Failed(e) => {
                        self.retry(slot, conn, &e);
                        return;
                    }
                    Connect::Done => {
                        up.stage = Stage::Open;
                        up.side.ready = Ready { writable: true, ..Ready::default() };
                        up.side.ready.note(flags);
                    }
                }
            }
        }
        self.drive(slot, conn);
    }

    /// Keeps a client whose upstream socket could not be made for lack of
    /// descriptors: the sweep tries again, until its connect timeout; no new
    /// client is accepted meanwhile (they wait in the listen queue, where
    /// they hold no descriptor of ours).
    fn wait_for_descriptor(&mut self, slot: usize, mut conn: Box<Conn>) {
        let deadline = *conn.waiting.get_or_insert(self.now + conn.listener.settings.connect_timeout);
        if self.now >= deadline {
            self.finish(slot, conn, End::Refused);
            return;
        }
        self.pause_accepting();
        self.slots[slot].conn = Some(conn);
    }

    /// The connect under way failed with `e`: close it, then the next backend.
    fn retry(&mut self, slot: usize, mut conn: Box<Conn>, e: &io::Error) {
        let Some(up) = conn.up.take() else { return self.finish(slot, conn, End::Reset) };
        // Closing the descriptor (when `up` drops) also removes it from the epoll set.
        sys::set_linger_zero(up.side.fd.as_raw_fd());
        let listener = Arc::clone(&conn.listener);
        match self.attempt_failed(&listener, up.backend, e) {
            Retry::Next => self.connect_next(slot, conn),
            Retry::Wait => self.wait_for_descriptor(slot, conn),
            Retry::Refuse => self.finish(slot, conn, End::Refused),
        }
    }

    /// Moves bytes both ways until nothing more can move; ends the connection when both directions are done.
    fn drive(&mut self, slot: usize, mut conn: Box<Conn>) {
        let result = conn.pump(&mut self.spares);
        let fallbacks = self.spares.take_fallbacks();
        if fallbacks > 0 {
            self.shared.add(&conn.listener, |c| &c.fd_exhausted, fallbacks);
            fds::warn_exhausted(
                "a pipe; forwarding through a buffer instead",
                &io::Error::from_raw_os_error(libc::EMFILE),
            );
        }
        match result {
            Ok((up, down)) => {
                if up.any || down.any {
                    conn.last = self.now;
                }
                if up.bytes > 0 {
                    self.shared.add(&conn.listener, |c| &c.bytes_client_to_backend, up.bytes);
                }
                if down.bytes > 0 {
                    self.shared.add(&conn.listener, |c| &c.bytes_backend_to_client, down.bytes);
                }
                if conn.done() {
                    self.finish(slot, conn, End::Done);
                } else {
                    self.slots[slot].conn = Some(conn);
                }
            }
            Err(e) => {
                if self.debug {
                    tracing::debug!(client = %conn.peer, error = %e, "connection reset");
                }
                self.finish(slot, conn, End::Reset);
            }
        }
    }

    /// Connect timeouts (then the next backend), clients waiting for a
    /// descriptor (another try), and idle timeouts.
    fn sweep(&mut self) {
        for i in 0..self.slots.len() {
            let Some(conn) = self.slots[i].conn.as_ref() else { continue };
            if conn.waiting.is_some() && conn.up.is_none() {
                let Some(conn) = self.slots[i].conn.take() else { continue };
                self.connect_next(i, conn);
            } else if conn.connect_timed_out(self.now) {
                let Some(conn) = self.slots[i].conn.take() else { continue };
                self.retry(i, conn, &io::Error::from(io::ErrorKind::TimedOut));
            } else if conn.idle(self.now) {
                let Some(conn) = self.slots[i].conn.take() else { continue };
                self.finish(i, conn, End::Idle);
            }
        }
    }

    /// Closes both sockets (with a RST unless the end was orderly) and frees the slot.
    fn finish(&mut self, slot: usize, mut conn: Box<Conn>, end: End) {
        let listener = Arc::clone(&conn.listener);
        if let Some(which) = end.counter() {
            self.shared.add(&listener, which, 1);
        }
        // Closing the descriptors (when `conn` drops) also removes them from the epoll set.
        if end != End::Done {
            sys::set_linger_zero(conn.client.fd.as_raw_fd());
        }
        if let Some(up) = conn.up.take() {
            if end != End::Done {
                sys::set_linger_zero(up.side.fd.as_raw_fd());
            }
            listener.pool.release(up.backend);
            if self.debug {
                tracing::debug!(
                    client = %conn.peer,
                    backend = %listener.pool.backends[up.backend].settings.addr,
                    to_backend = conn.to_backend.bytes,
                    to_client = conn.to_client.bytes,
                    ms = self.now.duration_since(conn.started).as_millis() as u64,
                    end = ?end,
                    "connection closed"
                );
            }
        } else if self.debug {
            tracing::debug!(client = %conn.peer, end = ?end, "client refused: no backend");
        }
        self.shared.sub(&listener, |c| &c.connections_active, 1);
        conn.to_backend.release(&mut self.spares);
        conn.to_client.release(&mut self.spares);
        drop(conn);
        let s = &mut self.slots[slot];
        s.conn = None;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for (k, s, g) in
            [(KIND_CLIENT, 0, 0), (KIND_UPSTREAM, 123_456, 77), (KIND_WAKE, u32::MAX as usize, GEN_MASK as u32)]
        {
            assert_eq!(untoken(token(k, s, g)), (k, s, g));
        }
    }
}
