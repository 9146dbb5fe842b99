//! A worker: one thread, one epoll instance, many connections.
//!
//! Every worker waits on every listening socket (`EPOLLEXCLUSIVE`, so one
//! worker wakes per new client) and owns the connections it accepted. Both
//! sockets of a connection are registered once, edge-triggered for reading,
//! writing and peer shutdown; what is known about each socket (may read, may
//! write) is kept in the connection and cleared on `EAGAIN`.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use super::{
    pool::{Tried, mark_tried},
    pump::{Ends, Pump, Spares},
    shared::Shared,
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
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// Connects tried per client (at least one per backend): a refused or timed
/// out connect is retried on the next backend, or on the same one with a new
/// source port when it is the only one.
const MAX_ATTEMPTS: u32 = 3;
/// Connections accepted per listener wake-up before serving others.
const ACCEPT_BATCH: usize = 64;

/// One client connection and its upstream.
struct Conn {
    listener: usize,
    client: OwnedFd,
    peer: SocketAddr,
    up: Option<OwnedFd>,
    backend: usize,
    tried: Tried,
    attempts: u32,
    connected: bool,
    connect_deadline: Instant,
    last: Instant,
    started: Instant,
    c_rd: bool,
    c_wr: bool,
    c_hup: bool,
    u_rd: bool,
    u_wr: bool,
    u_hup: bool,
    to_backend: Pump,
    to_client: Pump,
}

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
    /// No backend could be reached.
    Refused,
}

/// A worker thread's state.
pub struct Worker {
    shared: Arc<Shared>,
    epoll: sys::Epoll,
    wake: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    spares: Spares,
    now: Instant,
    debug: bool,
}

impl Worker {
    /// A worker serving every listener of `shared`; `wake` interrupts its wait.
    pub fn new(shared: Arc<Shared>, wake: Arc<OwnedFd>, stop: Arc<AtomicBool>) -> io::Result<Worker> {
        let epoll = sys::Epoll::new()?;
        for (i, l) in shared.listeners.iter().enumerate() {
            epoll.add(l.fd.as_raw_fd(), sys::IN | sys::EXCLUSIVE, token(KIND_LISTENER, i, 0))?;
        }
        epoll.add(wake.as_raw_fd(), sys::IN, token(KIND_WAKE, 0, 0))?;
        let spares = Spares::new(shared.forward, shared.pipe_size, shared.buf_size);
        Ok(Worker {
            shared,
            epoll,
            wake,
            stop,
            slots: Vec::new(),
            free: Vec::new(),
            spares,
            now: Instant::now(),
            debug: tracing::enabled!(tracing::Level::DEBUG),
        })
    }

    /// Serves until the stop flag is set; then closes every connection.
    pub fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        while !self.stop.load(Relaxed) {
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
                let flags = ev.events;
                match kind {
                    KIND_LISTENER => self.accept(slot),
                    KIND_CLIENT | KIND_UPSTREAM => self.on_event(slot, generation, kind == KIND_CLIENT, flags),
                    _ => {
                        let mut buf = [0u8; 8];
                        let _ = sys::recv(self.wake.as_raw_fd(), &mut buf);
                    }
                }
            }
            if self.now >= next_sweep {
                self.sweep();
                next_sweep = self.now + SWEEP_EVERY;
            }
        }
        for i in 0..self.slots.len() {
            if let Some(conn) = self.slots[i].conn.take() {
                self.finish(i, conn, End::Reset);
            }
        }
    }

    fn accept(&mut self, li: usize) {
        let shared = Arc::clone(&self.shared);
        let listener = &shared.listeners[li];
        for _ in 0..ACCEPT_BATCH {
            let (client, peer) = match sys::accept(listener.fd.as_raw_fd()) {
                Ok(c) => c,
                Err(e) if sys::would_block(&e) => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO)) => continue,
                Err(e) => {
                    // EMFILE and friends: leave the client queued, retry on the next event.
                    tracing::warn!(listen = %listener.settings.listen, error = %e, "accept failed");
                    return;
                }
            };
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            listener.stats.total.fetch_add(1, Relaxed);
            let slot = self.alloc_slot();
            let conn = Box::new(Conn {
                listener: li,
                client,
                peer,
                up: None,
                backend: 0,
                tried: 0,
                attempts: 0,
                connected: false,
                connect_deadline: self.now,
                last: self.now,
                started: self.now,
                c_rd: false,
                c_wr: false,
                c_hup: false,
                u_rd: false,
                u_wr: false,
                u_hup: false,
                to_backend: Pump::new(),
                to_client: Pump::new(),
            });
            let generation = self.slots[slot].generation;
            let events = sys::IN | sys::OUT | sys::RDHUP | sys::ET;
            if let Err(e) = self.epoll.add(conn.client.as_raw_fd(), events, token(KIND_CLIENT, slot, generation)) {
                tracing::warn!(error = %e, "epoll_ctl failed; dropping a client");
                self.free.push(slot);
                continue;
            }
            listener.stats.active.fetch_add(1, Relaxed);
            self.connect_next(slot, conn);
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
        let shared = Arc::clone(&self.shared);
        let listener = &shared.listeners[conn.listener];
        let max_attempts = MAX_ATTEMPTS.max(listener.pool.backends.len() as u32);
        loop {
            // Untried backends first; once all were tried, any healthy one again.
            let pick = if conn.attempts < max_attempts {
                listener.pool.pick(conn.tried).or_else(|| listener.pool.pick(0))
            } else {
                None
            };
            let Some(bi) = pick else {
                self.finish(slot, conn, End::Refused);
                return;
            };
            conn.attempts += 1;
            conn.tried = mark_tried(conn.tried, bi);
            conn.backend = bi;
            match self.open_upstream(&conn, bi) {
                Ok(up) => {
                    let generation = self.slots[slot].generation;
                    let events = sys::IN | sys::OUT | sys::RDHUP | sys::ET;
                    if let Err(e) = self.epoll.add(up.as_raw_fd(), events, token(KIND_UPSTREAM, slot, generation)) {
                        tracing::warn!(error = %e, "epoll_ctl failed");
                        listener.pool.release(bi);
                        self.finish(slot, conn, End::Reset);
                        return;
                    }
                    conn.up = Some(up);
                    conn.connected = false;
                    conn.u_rd = false;
                    conn.u_wr = false;
                    conn.connect_deadline = self.now + listener.settings.connect_timeout;
                    self.slots[slot].conn = Some(conn);
                    return;
                }
                Err(e) => {
                    self.backend_failed(&conn, bi, &e);
                }
            }
        }
    }

    fn backend_failed(&self, conn: &Conn, bi: usize, e: &io::Error) {
        let listener = &self.shared.listeners[conn.listener];
        let b = &listener.pool.backends[bi];
        b.connect_failures.fetch_add(1, Relaxed);
        listener.stats.connect_failures.fetch_add(1, Relaxed);
        listener.pool.release(bi);
        tracing::debug!(client = %conn.peer, backend = %b.settings.addr, error = %e, "backend connect failed");
    }

    /// socket → register the client's address for its cookie → connect (the
    /// writer consumes the entry; it is removed here only if connect failed).
    fn open_upstream(&self, conn: &Conn, bi: usize) -> io::Result<OwnedFd> {
        let listener = &self.shared.listeners[conn.listener];
        let b = &listener.pool.backends[bi].settings;
        let up = sys::tcp_socket(&b.addr)?;
        sys::set_int(up.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        let kind = if conn.peer.is_ipv4() { b.kind4 } else { b.kind6 };
        let cookie = match spec_for(conn.peer, kind, None, listener.settings.packets) {
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
        let readable = flags & (sys::IN | sys::RDHUP | sys::HUP | sys::ERR) != 0;
        let writable = flags & (sys::OUT | sys::HUP | sys::ERR) != 0;
        let hup = flags & (sys::RDHUP | sys::HUP | sys::ERR) != 0;
        if client_side {
            conn.c_rd |= readable;
            conn.c_wr |= writable;
            conn.c_hup |= hup;
        } else if !conn.connected {
            let Some(up) = conn.up.as_ref() else {
                self.finish(slot, conn, End::Reset);
                return;
            };
            // Writable without an error or hang-up: the connect succeeded.
            let err = if flags & (sys::ERR | sys::HUP) == 0 {
                None
            } else {
                match sys::take_error(up.as_raw_fd()) {
                    Ok(Some(e)) => Some(e),
                    Ok(None) => Some(io::Error::from(io::ErrorKind::ConnectionReset)),
                    Err(e) => Some(e),
                }
            };
            if let Some(e) = err {
                self.drop_upstream(&mut conn);
                self.backend_failed(&conn, conn.backend, &e);
                self.connect_next(slot, conn);
                return;
            }
            if flags & sys::OUT == 0 {
                self.slots[slot].conn = Some(conn);
                return;
            }
            conn.connected = true;
            conn.u_rd = readable;
            conn.u_wr = true;
            conn.u_hup = hup;
        } else {
            conn.u_rd |= readable;
            conn.u_wr |= writable;
            conn.u_hup |= hup;
        }
        self.drive(slot, conn);
    }

    fn drop_upstream(&mut self, conn: &mut Conn) {
        if let Some(up) = conn.up.take() {
            // Closing the descriptor also removes it from the epoll set.
            sys::set_linger_zero(up.as_raw_fd());
        }
        conn.connected = false;
    }

    /// Moves bytes both ways until nothing more can move; ends the connection when both directions are done.
    fn drive(&mut self, slot: usize, mut conn: Box<Conn>) {
        let stats = &self.shared.listeners[conn.listener].stats;
        let client = conn.client.as_raw_fd();
        let up = conn.up.as_ref().map_or(-1, |u| u.as_raw_fd());
        let connected = conn.connected;
        let c = &mut *conn;
        let r1 = c.to_backend.run(
            &mut self.spares,
            Ends {
                src: client,
                dst: up,
                src_readable: &mut c.c_rd,
                src_hup: c.c_hup,
                dst_writable: &mut c.u_wr,
                dst_open: connected,
                other_done: c.to_client.done(),
            },
        );
        let r2 = match (connected, &r1) {
            (true, Ok(_)) => c.to_client.run(
                &mut self.spares,
                Ends {
                    src: up,
                    dst: client,
                    src_readable: &mut c.u_rd,
                    src_hup: c.u_hup,
                    dst_writable: &mut c.c_wr,
                    dst_open: true,
                    other_done: c.to_backend.done(),
                },
            ),
            _ => Ok(Default::default()),
        };
        match (r1, r2) {
            (Ok(a), Ok(b)) => {
                if a.any || b.any {
                    conn.last = self.now;
                }
                if a.bytes > 0 {
                    stats.bytes_up.fetch_add(a.bytes, Relaxed);
                }
                if b.bytes > 0 {
                    stats.bytes_down.fetch_add(b.bytes, Relaxed);
                }
                if conn.to_backend.done() && conn.to_client.done() {
                    self.finish(slot, conn, End::Done);
                } else {
                    self.slots[slot].conn = Some(conn);
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                if self.debug {
                    tracing::debug!(client = %conn.peer, error = %e, "connection reset");
                }
                self.finish(slot, conn, End::Reset);
            }
        }
    }

    fn sweep(&mut self) {
        for i in 0..self.slots.len() {
            let Some(conn) = self.slots[i].conn.as_ref() else { continue };
            let settings = &self.shared.listeners[conn.listener].settings;
            if !conn.connected && conn.up.is_some() && self.now >= conn.connect_deadline {
                let Some(mut conn) = self.slots[i].conn.take() else { continue };
                self.drop_upstream(&mut conn);
                let e = io::Error::from(io::ErrorKind::TimedOut);
                self.backend_failed(&conn, conn.backend, &e);
                self.connect_next(i, conn);
            } else if conn.connected && self.now.duration_since(conn.last) >= settings.idle_timeout {
                let Some(conn) = self.slots[i].conn.take() else { continue };
                self.finish(i, conn, End::Idle);
            }
        }
    }

    /// Closes both sockets (with a RST unless the end was orderly) and frees the slot.
    fn finish(&mut self, slot: usize, mut conn: Box<Conn>, end: End) {
        let listener = &self.shared.listeners[conn.listener];
        let stats = &listener.stats;
        match end {
            End::Done => {}
            End::Reset => {
                stats.resets.fetch_add(1, Relaxed);
            }
            End::Idle => {
                stats.idle_timeouts.fetch_add(1, Relaxed);
            }
            End::Refused => {
                stats.refused.fetch_add(1, Relaxed);
            }
        }
        // Closing the descriptors (when `conn` drops) also removes them from the epoll set.
        if end != End::Done {
            sys::set_linger_zero(conn.client.as_raw_fd());
        }
        if let Some(up) = conn.up.take() {
            if end != End::Done {
                sys::set_linger_zero(up.as_raw_fd());
            }
            listener.pool.release(conn.backend);
            if self.debug {
                tracing::debug!(
                    client = %conn.peer,
                    backend = %listener.pool.backends[conn.backend].settings.addr,
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
        stats.active.fetch_sub(1, Relaxed);
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
