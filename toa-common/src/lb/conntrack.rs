//! TCP state tracking, just enough to pick a flow's timeout.
//!
//! The forwarder sees both directions of every flow, so it follows the
//! handshake, the two FINs and resets. The state only decides how long an
//! idle flow is kept ([`TimeoutClass`]); the data path never blocks or drops
//! a packet because of it (a backend and a client agree on TCP, not we).
//! A SYN on a flow that is closed starts a new flow (port reuse by the client).
//!
//! Who closed first matters for the local port: the side that sends the
//! first FIN ends in TIME_WAIT. When the client closed first, the backend
//! closes second and keeps nothing, so the port is free at once; when the
//! backend closed first, it holds (local address, local port, backend) in
//! TIME_WAIT for 60 s (Linux's `TCP_TIMEWAIT_LEN`), and a new flow on that
//! tuple would meet it. Such a flow is kept in [`TimeoutClass::TimeWait`].

/// Where a flow is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// The client's SYN was forwarded.
    SynSent = 1,
    /// The backend answered with a SYN-ACK.
    SynRecv = 2,
    /// The client acknowledged the SYN-ACK.
    Established = 3,
    /// The client sent a FIN; the backend may still send.
    FinFromClient = 4,
    /// The backend sent a FIN; the client may still send.
    FinFromBackend = 5,
    /// Both sides sent a FIN.
    BothFin = 6,
    /// A RST went through.
    Reset = 7,
}

impl TcpState {
    /// The state stored as `u8` (unknown values read as [`TcpState::Reset`]).
    #[inline(always)]
    pub const fn from_u8(v: u8) -> TcpState {
        match v {
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::FinFromClient,
            5 => TcpState::FinFromBackend,
            6 => TcpState::BothFin,
            _ => TcpState::Reset,
        }
    }
}

/// Which way a packet goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → backend.
    Original,
    /// Backend → client.
    Reply,
}

/// How long an idle flow is kept, by state.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutClass {
    /// Handshake in progress.
    Syn = 0,
    /// Established.
    Established = 1,
    /// One side closed (the other may still send for a long time).
    HalfClosed = 2,
    /// Both closed or reset: only stray packets are left.
    Closed = 3,
    /// Both closed, the backend first: its TIME_WAIT holds the local port.
    TimeWait = 4,
}

/// Idle timeouts per class, in seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// [`TimeoutClass::Syn`].
    pub syn: u32,
    /// [`TimeoutClass::Established`].
    pub established: u32,
    /// [`TimeoutClass::HalfClosed`].
    pub half_closed: u32,
    /// [`TimeoutClass::Closed`].
    pub closed: u32,
    /// [`TimeoutClass::TimeWait`].
    pub time_wait: u32,
}

/// The defaults: 30 s to complete a handshake, 15 min idle when established,
/// 2 min half-closed, 10 s after both FINs (the client's first) or a RST,
/// 60 s after both FINs when the backend's was first (its TIME_WAIT).
pub const DEFAULT_TIMEOUTS: Timeouts =
    Timeouts { syn: 30, established: 900, half_closed: 120, closed: 10, time_wait: 60 };

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// The state after a packet with TCP `flags` going `dir`.
#[inline(always)]
pub const fn next_state(state: TcpState, dir: Dir, flags: u8) -> TcpState {
    if flags & RST != 0 {
        return TcpState::Reset;
    }
    let fin = flags & FIN != 0;
    match (state, dir) {
        (TcpState::SynSent, Dir::Reply) if flags & (SYN | ACK) == SYN | ACK => TcpState::SynRecv,
        (TcpState::SynRecv, Dir::Original) if flags & ACK != 0 && flags & SYN == 0 => {
            if fin {
                TcpState::FinFromClient
            } else {
                TcpState::Established
            }
        }
        (TcpState::Established, Dir::Original) if fin => TcpState::FinFromClient,
        (TcpState::Established, Dir::Reply) if fin => TcpState::FinFromBackend,
        (TcpState::FinFromClient, Dir::Reply) if fin => TcpState::BothFin,
        (TcpState::FinFromBackend, Dir::Original) if fin => TcpState::BothFin,
        (s, _) => s,
    }
}

/// The timeout class of a flow in `state`; `client_fin_first` tells who
/// closed first (meaningful once both did).
#[inline(always)]
pub const fn timeout_class(state: TcpState, client_fin_first: bool) -> TimeoutClass {
    match state {
        TcpState::SynSent | TcpState::SynRecv => TimeoutClass::Syn,
        TcpState::Established => TimeoutClass::Established,
        TcpState::FinFromClient | TcpState::FinFromBackend => TimeoutClass::HalfClosed,
        TcpState::BothFin if !client_fin_first => TimeoutClass::TimeWait,
        TcpState::BothFin | TcpState::Reset => TimeoutClass::Closed,
    }
}

impl Timeouts {
    /// Seconds an idle flow of a class is kept.
    #[inline(always)]
    pub const fn for_class(&self, class: TimeoutClass) -> u32 {
        match class {
            TimeoutClass::Syn => self.syn,
            TimeoutClass::Established => self.established,
            TimeoutClass::HalfClosed => self.half_closed,
            TimeoutClass::Closed => self.closed,
            TimeoutClass::TimeWait => self.time_wait,
        }
    }

    /// Whether a flow in `state` last seen at `last_seen` (seconds, any
    /// monotonic clock) is expired at `now`.
    #[inline(always)]
    pub const fn expired(&self, state: TcpState, client_fin_first: bool, last_seen: u32, now: u32) -> bool {
        now.wrapping_sub(last_seen) > self.for_class(timeout_class(state, client_fin_first))
    }
}

/// Whether a client SYN on an existing flow starts a new one: the flow is
/// closed (both FINs, or a reset).
#[inline(always)]
pub const fn syn_restarts(state: TcpState) -> bool {
    matches!(state, TcpState::BothFin | TcpState::Reset)
}

/// Whether the local port of a flow that ends is still held by the
/// backend's TIME_WAIT: both closed, the backend first.
#[inline(always)]
pub const fn holds_time_wait(state: TcpState, client_fin_first: bool) -> bool {
    matches!(timeout_class(state, client_fin_first), TimeoutClass::TimeWait)
}

#[cfg(test)]
mod tests {
    use super::Dir::*;
    use super::TcpState::*;
    use super::*;

    #[test]
    fn state_machine_table() {
        let cases: [(&str, TcpState, Dir, u8, TcpState); 16] = [
            ("SYN-ACK", SynSent, Reply, SYN | ACK, SynRecv),
            ("SYN retransmitted", SynSent, Original, SYN, SynSent),
            ("a stray ACK before the SYN-ACK", SynSent, Reply, ACK, SynSent),
            ("handshake ACK", SynRecv, Original, ACK, Established),
            ("handshake ACK lost, data", SynRecv, Original, ACK | 0x08, Established),
            ("handshake ACK with FIN", SynRecv, Original, ACK | FIN, FinFromClient),
            ("SYN-ACK retransmitted", SynRecv, Reply, SYN | ACK, SynRecv),
            ("client FIN", Established, Original, ACK | FIN, FinFromClient),
            ("backend FIN", Established, Reply, ACK | FIN, FinFromBackend),
            ("data while half-closed", FinFromClient, Reply, ACK, FinFromClient),
            ("second FIN", FinFromClient, Reply, ACK | FIN, BothFin),
            ("second FIN the other way", FinFromBackend, Original, ACK | FIN, BothFin),
            ("FIN retransmitted", FinFromClient, Original, ACK | FIN, FinFromClient),
            ("RST from the backend", Established, Reply, RST, Reset),
            ("RST in the handshake", SynSent, Reply, RST | ACK, Reset),
            ("last ACK", BothFin, Original, ACK, BothFin),
        ];
        for (d, s, dir, flags, want) in cases {
            assert_eq!(next_state(s, dir, flags), want, "{d}");
        }
    }

    #[test]
    fn timeouts_by_state() {
        let t = DEFAULT_TIMEOUTS;
        let of = |s, first| t.for_class(timeout_class(s, first));
        assert_eq!(of(SynSent, false), 30);
        assert_eq!(of(Established, false), 900);
        assert_eq!(of(FinFromBackend, false), 120);
        assert_eq!(of(Reset, false), 10);
        assert_eq!(of(BothFin, true), 10, "client closed first: the backend keeps no TIME_WAIT");
        assert_eq!(of(BothFin, false), 60, "backend closed first: its TIME_WAIT");
        assert!(holds_time_wait(BothFin, false) && !holds_time_wait(BothFin, true) && !holds_time_wait(Reset, false));
        assert!(!t.expired(Established, false, 100, 1000));
        assert!(t.expired(Established, false, 100, 1001));
        assert!(t.expired(BothFin, true, u32::MAX - 5, 5), "across the wrap");
        assert!(!t.expired(BothFin, false, 100, 150) && t.expired(BothFin, false, 100, 161));
        assert!(syn_restarts(BothFin) && syn_restarts(Reset) && !syn_restarts(FinFromClient));
        for v in 0..=8u8 {
            let s = TcpState::from_u8(v);
            if (1..=7).contains(&v) {
                assert_eq!(s as u8, v);
            } else {
                assert_eq!(s, Reset);
            }
        }
    }
}
