//! One direction of a forwarded connection: bytes read from one socket
//! wait in a pipe (`splice`) or a buffer (`copy`) until the other socket
//! takes them.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use super::fds;
use crate::{config::proxy::Forward, sys::net as sys};

/// Pipe capacity asked for (the kernel rounds it to pages).
const PIPE_SIZE: usize = 1 << 20;
/// Buffer size of the copy path.
const BUF_SIZE: usize = 256 << 10;
/// Buffer size of the splice path when no descriptor is left for a pipe.
const FALLBACK_BUF_SIZE: usize = 64 << 10;
/// How many idle pipes (or buffers) a worker keeps.
const SPARES_MAX: usize = 1024;

/// What is known about one socket: edge-triggered readiness, set by events
/// and cleared when the socket says `EAGAIN` (or a short read or write
/// shows the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// It may have data (or an EOF) to read.
    pub readable: bool,
    /// It may take data.
    pub writable: bool,
    /// It reported a shutdown or an error: read on until EOF.
    pub hup: bool,
}

impl Ready {
    /// Adds what the epoll event `flags` say.
    pub fn note(&mut self, flags: u32) {
        self.readable |= flags & (sys::IN | sys::RDHUP | sys::HUP | sys::ERR) != 0;
        self.writable |= flags & (sys::OUT | sys::HUP | sys::ERR) != 0;
        self.hup |= flags & (sys::RDHUP | sys::HUP | sys::ERR) != 0;
    }
}

/// A pipe used by `splice`.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
}

/// Reusable pipes and buffers of one worker.
pub struct Spares {
    forward: Forward,
    pipes: Vec<Pipe>,
    bufs: Vec<Box<[u8]>>,
    /// Pipes that could not be made for lack of descriptors (a buffer took
    /// their place), not yet reported.
    fallbacks: u64,
}

impl Spares {
    /// Spares for `forward`.
    pub fn new(forward: Forward) -> Spares {
        Spares { forward, pipes: Vec::new(), bufs: Vec::new(), fallbacks: 0 }
    }

    /// Pipes that had to be buffers since the last call.
    pub fn take_fallbacks(&mut self) -> u64 {
        std::mem::take(&mut self.fallbacks)
    }

    fn take(&mut self) -> io::Result<Chan> {
        match self.forward {
            Forward::Splice => {
                if let Some(p) = self.pipes.pop() {
                    return Ok(Chan::Pipe(p));
                }
                match sys::pipe(PIPE_SIZE) {
                    Ok((r, w, cap)) => Ok(Chan::Pipe(Pipe { r, w, cap })),
                    // Out of descriptors: the bytes go through user space
                    // instead of failing the connection.
                    Err(e) if fds::exhausted(&e) => {
                        self.fallbacks += 1;
                        Ok(self.buf(FALLBACK_BUF_SIZE))
                    }
                    Err(e) => Err(e),
                }
            }
            Forward::Copy => Ok(self.buf(BUF_SIZE)),
        }
    }

    fn buf(&mut self, size: usize) -> Chan {
        Chan::Buf(self.bufs.pop().unwrap_or_else(|| vec![0u8; size].into_boxed_slice()), 0)
    }

    fn give(&mut self, chan: Chan) {
        match chan {
            Chan::Pipe(p) if self.pipes.len() < SPARES_MAX => self.pipes.push(p),
            Chan::Buf(b, _) if self.bufs.len() < SPARES_MAX => self.bufs.push(b),
            _ => {}
        }
    }
}

enum Chan {
    None,
    Pipe(Pipe),
    /// The buffer and the offset of the first pending byte.
    Buf(Box<[u8]>, usize),
}

/// One direction, src → dst.
pub struct Pump {
    chan: Chan,
    /// Bytes read from src, not yet written to dst.
    len: usize,
    /// The pipe refused more although not full (out of slots): wait for a drain.
    blocked: bool,
    /// src sent FIN.
    eof: bool,
    /// FIN passed on to dst.
    shut: bool,
    /// Bytes written to dst.
    pub bytes: u64,
}

/// What one [`Pump::run`] did.
#[derive(Default)]
pub struct Moved {
    /// Anything happened (bytes, EOF, FIN).
    pub any: bool,
    /// Bytes written to dst.
    pub bytes: u64,
}

/// The two sockets of a pump and what is known of them.
pub struct Ends<'a> {
    /// Read side.
    pub src: RawFd,
    /// What is known of src.
    pub src_ready: &'a mut Ready,
    /// Write side, once connected (before that, data only accumulates).
    pub dst: Option<RawFd>,
    /// What is known of dst.
    pub dst_ready: &'a mut Ready,
    /// The other direction is over: the connection closes as soon as this
    /// one is, and `close()` sends the FIN.
    pub other_done: bool,
}

impl Default for Pump {
    fn default() -> Self {
        Pump::new()
    }
}

impl Pump {
    /// An idle direction.
    pub fn new() -> Pump {
        Pump { chan: Chan::None, len: 0, blocked: false, eof: false, shut: false, bytes: 0 }
    }

    /// Whether this direction is over (FIN passed on).
    pub fn done(&self) -> bool {
        self.shut
    }

    /// Moves what can be moved without blocking; an error ends the connection.
    ///
    /// Each turn reads what src has ([`Pump::fill`]), writes what dst takes
    /// ([`Pump::flush`]) and passes an EOF on ([`Pump::pass_fin`]), until a
    /// turn does nothing; then an emptied pipe or buffer goes back to the
    /// spares.
    pub fn run(&mut self, spares: &mut Spares, e: Ends<'_>) -> io::Result<Moved> {
        let mut moved = Moved::default();
        loop {
            let mut step = self.fill(spares, e.src, e.src_ready)?;
            if let Some(dst) = e.dst {
                let n = self.flush(dst, e.dst_ready)?;
                moved.bytes += n;
                step |= n > 0;
                step |= self.pass_fin(dst, e.other_done)?;
            }
            if !step {
                break;
            }
            moved.any = true;
        }
        if self.len == 0 && !matches!(self.chan, Chan::None) {
            // Nothing in flight: hand the pipe or buffer back until the next read.
            spares.give(std::mem::replace(&mut self.chan, Chan::None));
        }
        Ok(moved)
    }

    /// Reads from src into the pipe or buffer; whether anything was read
    /// (or the EOF seen).
    ///
    /// Edge-triggered readiness: a socket is read until it says `EAGAIN`,
    /// except that a short `recv` (copy path) already shows the receive queue
    /// is empty (new data raises a new edge). A pipe may refuse more while not
    /// full (out of slots), so the splice path reads until `EAGAIN`.
    fn fill(&mut self, spares: &mut Spares, src: RawFd, ready: &mut Ready) -> io::Result<bool> {
        if self.eof || !ready.readable || self.blocked {
            return Ok(false);
        }
        if matches!(self.chan, Chan::None) {
            self.chan = spares.take()?;
        }
        let (got, asked, is_pipe) = match &mut self.chan {
            Chan::Pipe(p) if self.len < p.cap => {
                let asked = p.cap - self.len;
                (sys::splice(src, p.w.as_raw_fd(), asked), asked, true)
            }
            Chan::Buf(b, start) if *start + self.len < b.len() => {
                let from = *start + self.len;
                (sys::recv(src, &mut b[from..]), b.len() - from, false)
            }
            _ => return Ok(false),
        };
        match got {
            Ok(0) => {
                self.eof = true;
                Ok(true)
            }
            Ok(n) => {
                self.len += n;
                if n < asked && !is_pipe && !ready.hup {
                    ready.readable = false;
                }
                Ok(true)
            }
            Err(err) if sys::would_block(&err) => {
                // An empty pipe that refuses means an empty socket; a
                // partly full one may be out of slots.
                if self.len == 0 || !is_pipe {
                    ready.readable = false;
                } else {
                    self.blocked = true;
                }
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }

    /// Writes what is pending to dst; the bytes written. A short write shows
    /// the send buffer is full.
    fn flush(&mut self, dst: RawFd, ready: &mut Ready) -> io::Result<u64> {
        if self.len == 0 || !ready.writable {
            return Ok(0);
        }
        let asked = self.len;
        let put = match &mut self.chan {
            Chan::Pipe(p) => sys::splice(p.r.as_raw_fd(), dst, self.len),
            Chan::Buf(b, start) => sys::send(dst, &b[*start..*start + self.len]),
            Chan::None => Ok(0),
        };
        match put {
            Ok(n) => {
                self.len -= n;
                if let Chan::Buf(_, start) = &mut self.chan {
                    *start = if self.len == 0 { 0 } else { *start + n };
                }
                self.bytes += n as u64;
                self.blocked = false;
                if n < asked {
                    ready.writable = false;
                }
                Ok(n as u64)
            }
            Err(err) if sys::would_block(&err) => {
                ready.writable = false;
                Ok(0)
            }
            Err(err) => Err(err),
        }
    }

    /// Once src's EOF and every byte reached dst, sends dst a FIN (unless
    /// the other direction is over too: closing the connection sends it);
    /// whether that happened now.
    fn pass_fin(&mut self, dst: RawFd, other_done: bool) -> io::Result<bool> {
        if !self.eof || self.len > 0 || self.shut {
            return Ok(false);
        }
        if !other_done {
            match sys::shutdown_write(dst) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOTCONN) => {}
                Err(err) => return Err(err),
            }
        }
        self.shut = true;
        Ok(true)
    }

    /// Returns the pipe or buffer to the spares (a pipe only when empty).
    pub fn release(&mut self, spares: &mut Spares) {
        let chan = std::mem::replace(&mut self.chan, Chan::None);
        if self.len == 0 {
            spares.give(chan);
        }
        self.len = 0;
    }
}
