//! One direction of a forwarded connection: bytes read from one socket
//! wait in a pipe (`splice`) or a buffer (`copy`) until the other socket
//! takes them.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
};

use crate::{config::proxy::Forward, sys::net as sys};

/// A pipe used by `splice`.
pub struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: usize,
}

/// Reusable pipes and buffers of one worker.
pub struct Spares {
    forward: Forward,
    pipe_size: usize,
    buf_size: usize,
    pipes: Vec<Pipe>,
    bufs: Vec<Box<[u8]>>,
}

/// How many idle pipes (or buffers) a worker keeps.
const SPARES_MAX: usize = 1024;

impl Spares {
    /// Spares for `forward`, with pipes of `pipe_size` or buffers of `buf_size` bytes.
    pub fn new(forward: Forward, pipe_size: usize, buf_size: usize) -> Spares {
        Spares { forward, pipe_size, buf_size, pipes: Vec::new(), bufs: Vec::new() }
    }

    fn take(&mut self) -> io::Result<Chan> {
        Ok(match self.forward {
            Forward::Splice => match self.pipes.pop() {
                Some(p) => Chan::Pipe(p),
                None => {
                    let (r, w, cap) = sys::pipe(self.pipe_size)?;
                    Chan::Pipe(Pipe { r, w, cap })
                }
            },
            Forward::Copy => {
                Chan::Buf(self.bufs.pop().unwrap_or_else(|| vec![0u8; self.buf_size].into_boxed_slice()), 0)
            }
        })
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
    pub eof: bool,
    /// FIN passed on to dst.
    pub shut: bool,
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

/// The two descriptors of a pump and what is known of them.
pub struct Ends<'a> {
    /// Read side.
    pub src: RawFd,
    /// Write side.
    pub dst: RawFd,
    /// src may have data (cleared on EAGAIN, or on a short read).
    pub src_readable: &'a mut bool,
    /// src reported a shutdown or error: read on until EOF.
    pub src_hup: bool,
    /// dst may take data (cleared on EAGAIN or a short write).
    pub dst_writable: &'a mut bool,
    /// dst is connected (before that, data only accumulates).
    pub dst_open: bool,
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
    /// Edge-triggered readiness: a socket is read until it says `EAGAIN`,
    /// except that a short `recv` (copy path) already shows the receive queue
    /// is empty (new data raises a new edge). A pipe may refuse more while not
    /// full (out of slots), so the splice path reads until `EAGAIN`. A short
    /// write shows the send buffer is full on both paths.
    pub fn run(&mut self, spares: &mut Spares, e: Ends<'_>) -> io::Result<Moved> {
        let mut moved = Moved::default();
        loop {
            let mut step = false;
            if !self.eof && *e.src_readable && !self.blocked {
                if matches!(self.chan, Chan::None) {
                    self.chan = spares.take()?;
                }
                let (got, asked, is_pipe) = match &mut self.chan {
                    Chan::Pipe(p) if self.len < p.cap => {
                        let asked = p.cap - self.len;
                        (Some(sys::splice(e.src, p.w.as_raw_fd(), asked)), asked, true)
                    }
                    Chan::Buf(b, start) if *start + self.len < b.len() => {
                        let from = *start + self.len;
                        (Some(sys::recv(e.src, &mut b[from..])), b.len() - from, false)
                    }
                    _ => (None, 0, false),
                };
                match got {
                    Some(Ok(0)) => {
                        self.eof = true;
                        step = true;
                    }
                    Some(Ok(n)) => {
                        self.len += n;
                        step = true;
                        if n < asked && !is_pipe && !e.src_hup {
                            *e.src_readable = false;
                        }
                    }
                    Some(Err(err)) if sys::would_block(&err) => {
                        // An empty pipe that refuses means an empty socket; a
                        // partly full one may be out of slots.
                        if self.len == 0 || !is_pipe {
                            *e.src_readable = false;
                        } else {
                            self.blocked = true;
                        }
                    }
                    Some(Err(err)) => return Err(err),
                    None => {}
                }
            }
            if e.dst_open && self.len > 0 && *e.dst_writable {
                let asked = self.len;
                let put = match &mut self.chan {
                    Chan::Pipe(p) => sys::splice(p.r.as_raw_fd(), e.dst, self.len),
                    Chan::Buf(b, start) => sys::send(e.dst, &b[*start..*start + self.len]),
                    Chan::None => Ok(0),
                };
                match put {
                    Ok(n) => {
                        self.len -= n;
                        if let Chan::Buf(_, start) = &mut self.chan {
                            *start = if self.len == 0 { 0 } else { *start + n };
                        }
                        self.bytes += n as u64;
                        moved.bytes += n as u64;
                        self.blocked = false;
                        step = n > 0;
                        if n < asked {
                            *e.dst_writable = false;
                        }
                    }
                    Err(err) if sys::would_block(&err) => *e.dst_writable = false,
                    Err(err) => return Err(err),
                }
            }
            if e.dst_open && self.eof && self.len == 0 && !self.shut {
                if !e.other_done {
                    match sys::shutdown_write(e.dst) {
                        Ok(()) => {}
                        Err(err) if err.raw_os_error() == Some(libc::ENOTCONN) => {}
                        Err(err) => return Err(err),
                    }
                }
                self.shut = true;
                step = true;
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

    /// Returns the pipe or buffer to the spares (a pipe only when empty).
    pub fn release(&mut self, spares: &mut Spares) {
        let chan = std::mem::replace(&mut self.chan, Chan::None);
        if self.len == 0 {
            spares.give(chan);
        }
        self.len = 0;
    }
}
