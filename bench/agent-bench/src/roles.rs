//! The processes the orchestrator starts inside the namespaces and cgroups
//! (the same binary re-executed with `--role NAME`): they create the sockets,
//! so the eBPF programs attached to those cgroups see them.
//!
//! Each role prints what the orchestrator waits for on stdout, one line at a
//! time, and takes commands on stdin where it has any.

use std::collections::HashMap;
use std::io::{self, BufRead as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::net::{self, Epoll};
use crate::stats::{self, HostCpu};

/// Options of a role, `--key value` pairs.
pub struct Args(HashMap<String, String>);

impl Args {
    /// Parses `--key value` pairs.
    pub fn parse(args: &[String]) -> Args {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k.strip_prefix("--").unwrap_or_else(|| fail(&format!("unexpected argument {k}")));
            let value = it.next().unwrap_or_else(|| fail(&format!("--{key} needs a value")));
            map.insert(key.to_owned(), value.clone());
        }
        Args(map)
    }

    /// A required option.
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or_else(|| fail(&format!("--{key} is required")), String::as_str)
    }

    /// A required option, parsed.
    pub fn num<T: std::str::FromStr>(&self, key: &str) -> T {
        self.get(key).parse().unwrap_or_else(|_| fail(&format!("--{key}: bad value {}", self.get(key))))
    }

    /// An optional option.
    pub fn opt(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn dst(&self) -> SocketAddrV4 {
        self.num("dst")
    }

    fn srcs(&self) -> Vec<Ipv4Addr> {
        self.get("srcs").split(',').map(|s| s.parse().unwrap_or_else(|_| fail(&format!("bad source {s}")))).collect()
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench role: {msg}");
    std::process::exit(2)
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The real client the scale test writes for connection `i`: every
/// connection gets its own address and port.
pub fn indexed_client(i: u32) -> SocketAddrV4 {
    let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    SocketAddrV4::new(ip, 1024 + (i % 64000) as u16)
}

/// Runs role `name`.
pub fn run(name: &str, args: &Args) {
    net::raise_nofile();
    let r = match name {
        "rr-server" => rr_server(args),
        "rr-client" => rr_client(args),
        "syscall-server" => syscall_server(args),
        "sockopt-loop" => sockopt_loop(args),
        "hold-client" => hold_client(args),
        "hold-server" => hold_server(args),
        "open-client" => open_client(args),
        _ => fail(&format!("unknown role {name}")),
    };
    if let Err(e) = r {
        fail(&format!("{name}: {e}"));
    }
}

/// Epoll token of stdin.
const STDIN: u64 = u64::MAX;
/// Epoll token of the (first) listener; listener `i` of several has `LISTENER - i`.
const LISTENER: u64 = u64::MAX - 1;

/// CPU seconds (user + system) this process has used.
fn cpu_secs() -> f64 {
    // SAFETY: all-zero is a valid rusage; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Reads one command line from stdin (the orchestrator writes whole lines).
fn stdin_line() -> Option<String> {
    let mut line = String::new();
    match io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_owned()),
    }
}

/// Moves this process into the cgroup directory `dir`: sockets it creates
/// from now on belong to that cgroup (and to the programs attached there).
fn enter_cgroup(dir: &str) -> io::Result<()> {
    std::fs::write(Path::new(dir).join("cgroup.procs"), "0")
}

/// Listeners on consecutive ports, listener `i` on `--port` + i created in
/// cgroup `i` of `--cgroups` (a comma-separated list); the process then moves
/// to `--home`. The sockets a listener accepts stay in its cgroup.
fn listeners_in_cgroups(args: &Args, reuseport: bool) -> io::Result<Vec<RawFd>> {
    let port: u16 = args.num("port");
    let mut fds = Vec::new();
    for (i, dir) in args.get("cgroups").split(',').enumerate() {
        enter_cgroup(dir)?;
        fds.push(net::listener(port + i as u16, reuseport)?);
    }
    enter_cgroup(args.get("home"))?;
    Ok(fds)
}

/// Short-connection server: accept (with the address, as servers do), read
/// the byte, answer one byte, close on EOF. Listens on one port per cgroup
/// of `--cgroups` (see [`listeners_in_cgroups`]). `report` on stdin prints
/// and resets, per listener, how many connections it accepted and how many
/// of them `accept()` reported as coming from `--expect` (the translated
/// address): `accepted=A0,A1,.. translated=T0,T1,..`.
fn rr_server(args: &Args) -> io::Result<()> {
    let expect: Ipv4Addr = args.num("expect");
    let lsts = listeners_in_cgroups(args, false)?;
    let mut ep = Epoll::new(512)?;
    for (i, &l) in lsts.iter().enumerate() {
        ep.add(l, libc::EPOLLIN as u32, LISTENER - i as u64)?;
    }
    ep.add(0, libc::EPOLLIN as u32, STDIN)?;
    say("listening");
    let (mut accepted, mut translated) = (vec![0u64; lsts.len()], vec![0u64; lsts.len()]);
    let mut buf = [0u8; 64];
    let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    loop {
        let n = ep.wait(-1)?;
        for i in 0..n {
            let (token, _) = ep.event(i);
            match token {
                STDIN => match stdin_line().as_deref() {
                    Some("report") => {
                        say(&format!(
                            "accepted={} translated={} cpu={:.3}",
                            list(&accepted),
                            list(&translated),
                            cpu_secs()
                        ));
                        accepted.iter_mut().chain(translated.iter_mut()).for_each(|c| *c = 0);
                    }
                    Some(_) => {}
                    None => return Ok(()),
                },
                t if t > LISTENER - lsts.len() as u64 => {
                    let k = (LISTENER - t) as usize;
                    while let Some((fd, addr)) = net::accept(lsts[k])? {
                        accepted[k] += 1;
                        translated[k] += u64::from(*addr.ip() == expect);
                        ep.add(fd, libc::EPOLLIN as u32, fd as u64)?;
                    }
                }
                fd => {
                    let fd = fd as RawFd;
                    match net::read(fd, &mut buf) {
                        Ok(Some(0)) | Err(_) => net::close(fd),
                        Ok(Some(_)) => {
                            if net::write(fd, b"y").is_err() {
                                net::close(fd);
                            }
                        }
                        Ok(None) => {}
                    }
                }
            }
        }
    }
}

/// One connection of the short-connection client.
#[derive(Clone, Copy)]
enum Slot {
    Idle,
    Connecting(RawFd),
    Waiting(RawFd),
}

/// Short-connection load: `--parallel` connections in flight on one epoll
/// set, each: connect, write 1 byte, read 1 byte, close; new ones for
/// `--secs` seconds. Reads the host's CPU counters (`/proc/stat`) and the
/// `usage_usec` of the cgroups in `--cpu-cgroups` (comma-separated,
/// optional) right before the first connect and right after the last close,
/// and prints `conns=N errors=E secs=S busy=J idle=J steal=J cg_usec=U`
/// (jiffies of 10 ms; busy excludes steal).
fn rr_client(args: &Args) -> io::Result<()> {
    let dst = args.dst();
    let srcs = args.srcs();
    let parallel: usize = args.num("parallel");
    let secs: f64 = args.num("secs");
    let cgroups: Vec<String> =
        args.opt("cpu-cgroups").map(|s| s.split(',').map(String::from).collect()).unwrap_or_default();
    let cg_usage = || cgroups.iter().map(|c| stats::cgroup_usage_usec(Path::new(c))).sum::<u64>();
    let mut ep = Epoll::new(512)?;
    let mut slots = vec![Slot::Idle; parallel];
    let (mut done, mut errors, mut next_src) = (0u64, 0u64, 0usize);
    let (cpu0, cg0) = (HostCpu::read(), cg_usage());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut open = |slot: usize, ep: &Epoll, errors: &mut u64| -> Slot {
        for _ in 0..10 {
            let src = srcs[next_src % srcs.len()];
            next_src += 1;
            match net::start_connect(src, dst) {
                Ok(fd) => {
                    if ep.add(fd, libc::EPOLLOUT as u32, slot as u64).is_ok() {
                        return Slot::Connecting(fd);
                    }
                    net::close(fd);
                }
                Err(_) => *errors += 1,
            }
        }
        Slot::Idle
    };
    for (i, slot) in slots.iter_mut().enumerate() {
        *slot = open(i, &ep, &mut errors);
    }
    let mut buf = [0u8; 16];
    while slots.iter().any(|s| !matches!(s, Slot::Idle)) {
        let n = ep.wait(1000)?;
        for e in 0..n {
            let (token, bits) = ep.event(e);
            let slot = token as usize;
            match slots[slot] {
                Slot::Connecting(fd) => {
                    if bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 || net::write(fd, b"x").is_err() {
                        errors += 1;
                        net::close(fd);
                        slots[slot] = Slot::Idle;
                    } else {
                        ep.modify(fd, libc::EPOLLIN as u32, token)?;
                        slots[slot] = Slot::Waiting(fd);
                        continue;
                    }
                }
                Slot::Waiting(fd) => match net::read(fd, &mut buf) {
                    Ok(None) => continue,
                    Ok(Some(1..)) => {
                        done += 1;
                        net::close(fd);
                        slots[slot] = Slot::Idle;
                    }
                    Ok(Some(0)) | Err(_) => {
                        errors += 1;
                        net::close(fd);
                        slots[slot] = Slot::Idle;
                    }
                },
                Slot::Idle => continue,
            }
            if Instant::now() < end {
                slots[slot] = open(slot, &ep, &mut errors);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = HostCpu::read().since(&cpu0);
    let cg = cg_usage().saturating_sub(cg0);
    say(&format!(
        "conns={done} errors={errors} secs={secs:.4} busy={} idle={} steal={} cg_usec={cg}",
        cpu.busy, cpu.idle, cpu.steal
    ));
    Ok(())
}

/// Times system calls on accepted sockets in tight loops. One listener per
/// cgroup of `--cgroups` (see [`listeners_in_cgroups`]); accepts one
/// connection on each, then waits for `go` on stdin. Then `--rounds` rounds:
/// in each, every kind of call (`getpeername`, `getsockopt(SO_RCVBUF)`: 4
/// bytes, `getsockopt(TCP_INFO)`: 232 bytes) is timed `--iters` times on
/// every socket back to back, so machine noise hits all alike. Prints, per
/// kind, the median ns/call of each socket and the median of the per-round
/// differences to socket `--base` (the one in a cgroup without programs):
/// `kind=K ns=N0,N1,.. diff=D0,D1,..`; then `peer=ADDR` (socket 0's
/// getpeername) and `done`, and waits for stdin to close.
fn syscall_server(args: &Args) -> io::Result<()> {
    let lsts = listeners_in_cgroups(args, false)?;
    let iters: u32 = args.num("iters");
    let rounds: usize = args.num("rounds");
    let base: usize = args.num("base");
    say("listening");
    let accept_one = |lst: RawFd| -> io::Result<RawFd> {
        loop {
            if let Some((fd, _)) = net::accept(lst)? {
                return Ok(fd);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let fds: Vec<RawFd> = lsts.iter().map(|&l| accept_one(l)).collect::<io::Result<_>>()?;
    say("accepted");
    if stdin_line().as_deref() != Some("go") {
        return Ok(());
    }
    let time = |fd: RawFd, kind: usize| -> f64 {
        // SAFETY: all-zero is valid for these plain C structs.
        let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut small: libc::c_int = 0;
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: valid out buffers of the announced sizes.
            unsafe {
                match kind {
                    0 => {
                        let mut len = net::len_of::<libc::sockaddr_in6>();
                        libc::getpeername(fd, (&raw mut sa).cast(), &mut len);
                    }
                    1 => {
                        let mut len = net::len_of::<libc::c_int>();
                        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw mut small).cast(), &mut len);
                    }
                    _ => {
                        let mut len = net::len_of::<libc::tcp_info>();
                        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len);
                    }
                }
            }
        }
        t.elapsed().as_nanos() as f64 / f64::from(iters)
    };
    const KINDS: [&str; 3] = ["getpeername", "getsockopt_rcvbuf", "getsockopt_tcp_info"];
    let n = fds.len();
    // [kind][socket] -> per-round ns
    let mut ns: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); n]; KINDS.len()];
    for round in 0..rounds {
        for (kind, per_socket) in ns.iter_mut().enumerate() {
            // Rotate the order so no socket is always first.
            for k in 0..n {
                let s = (k + round) % n;
                per_socket[s].push(time(fds[s], kind));
            }
        }
    }
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(",");
    for (kind, per_socket) in ns.iter().enumerate() {
        let medians: Vec<f64> = per_socket.iter().map(|v| stats::Summary::of(v).median).collect();
        let diffs: Vec<f64> = (0..n)
            .map(|s| {
                let d: Vec<f64> = (0..rounds).map(|r| per_socket[s][r] - per_socket[base][r]).collect();
                stats::Summary::of(&d).median
            })
            .collect();
        say(&format!("kind={} ns={} diff={}", KINDS[kind], list(&medians), list(&diffs)));
    }
    say(&format!("peer={}", net::peer(fds[0]).map_or_else(|e| e.to_string(), |p| p.to_string())));
    say("done");
    // Keep the sockets until the orchestrator stops us.
    let _ = stdin_line();
    Ok(())
}

/// Accepts one connection on each listener of `--cgroups` (see
/// [`listeners_in_cgroups`]), says `accepted`, then on every `loop K SECS`
/// line calls `getsockopt(SO_RCVBUF)` on socket K for SECS seconds (what a
/// profile of the pass-through watches) and says `done N` (calls made).
fn sockopt_loop(args: &Args) -> io::Result<()> {
    let lsts = listeners_in_cgroups(args, false)?;
    say("listening");
    let mut fds = Vec::new();
    for &l in &lsts {
        let fd = loop {
            if let Some((fd, _)) = net::accept(l)? {
                break fd;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        fds.push(fd);
    }
    say("accepted");
    while let Some(line) = stdin_line() {
        let mut f = line.split_whitespace();
        if f.next() != Some("loop") {
            continue;
        }
        let k: usize = f.next().and_then(|x| x.parse().ok()).unwrap_or(0);
        let secs: f64 = f.next().and_then(|x| x.parse().ok()).unwrap_or(1.0);
        let fd = fds[k.min(fds.len() - 1)];
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        let mut small: libc::c_int = 0;
        while Instant::now() < end {
            for _ in 0..1000 {
                let mut len = net::len_of::<libc::c_int>();
                // SAFETY: valid out buffer of the announced size.
                unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&raw mut small).cast(), &mut len) };
            }
            n += 1000;
        }
        say(&format!("done {n}"));
    }
    Ok(())
}

/// Connects to every address of `--dsts` (comma-separated), writes a byte on
/// each and keeps them until the server closes the first.
fn hold_client(args: &Args) -> io::Result<()> {
    let dsts: Vec<SocketAddrV4> =
        args.get("dsts").split(',').map(|d| d.parse().unwrap_or_else(|_| fail(&format!("bad address {d}")))).collect();
    let mut conns = Vec::new();
    for d in dsts {
        let mut s = std::net::TcpStream::connect(d)?;
        s.write_all(b"x")?;
        conns.push(s);
    }
    let mut buf = [0u8; 16];
    if let Some(s) = conns.first_mut() {
        while std::io::Read::read(s, &mut buf)? > 0 {}
    }
    Ok(())
}

/// What `hold-server` expects `getpeername()` to return.
enum Expect {
    Any,
    Fixed(SocketAddrV4),
    Indexed,
}

/// Accepts connections and keeps them open. The first bytes of each are its
/// index (u32, little endian); `getpeername()` is checked against
/// `--expect` (`any`, `fixed:IP:PORT`, or `indexed`: [`indexed_client`]).
/// Closes a connection when the client does. `count` on stdin prints
/// `accepted=A verified=V bad=B closed=C`.
fn hold_server(args: &Args) -> io::Result<()> {
    let expect = match args.get("expect") {
        "any" => Expect::Any,
        "indexed" => Expect::Indexed,
        s => Expect::Fixed(
            s.strip_prefix("fixed:").and_then(|a| a.parse().ok()).unwrap_or_else(|| fail(&format!("bad --expect {s}"))),
        ),
    };
    let lst = net::listener(args.num("port"), args.opt("reuseport") == Some("1"))?;
    let mut ep = Epoll::new(1024)?;
    ep.add(lst, libc::EPOLLIN as u32, LISTENER)?;
    ep.add(0, libc::EPOLLIN as u32, STDIN)?;
    say("listening");
    let (mut accepted, mut verified, mut bad, mut closed) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = [0u8; 64];
    loop {
        let n = ep.wait(-1)?;
        for i in 0..n {
            match ep.event(i).0 {
                LISTENER => {
                    while let Some((fd, _)) = net::accept(lst)? {
                        accepted += 1;
                        ep.add(fd, (libc::EPOLLIN | libc::EPOLLRDHUP) as u32, fd as u64)?;
                    }
                }
                STDIN => match stdin_line().as_deref() {
                    Some("count") => say(&format!("accepted={accepted} verified={verified} bad={bad} closed={closed}")),
                    Some(_) => {}
                    None => return Ok(()),
                },
                fd => {
                    let fd = fd as RawFd;
                    match net::read(fd, &mut buf) {
                        Ok(None) => {}
                        Ok(Some(n)) if n >= 4 => {
                            let index = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                            let got = net::peer(fd).ok();
                            let ok = match expect {
                                Expect::Any => got.is_some(),
                                Expect::Fixed(a) => got == Some(a),
                                Expect::Indexed => got == Some(indexed_client(index)),
                            };
                            if ok {
                                verified += 1;
                            } else {
                                bad += 1;
                                if bad <= 5 {
                                    eprintln!("hold-server: connection {index}: getpeername {got:?}");
                                }
                            }
                        }
                        Ok(Some(_)) | Err(_) => {
                            closed += 1;
                            let _ = ep.delete(fd);
                            net::close(fd);
                        }
                    }
                }
            }
        }
    }
}

/// Opens `--n` connections (indices `--base`..) from the `--srcs` addresses
/// round robin, at most `--window` handshakes in flight, writes each one's
/// index and keeps it open. With `--inject CGROUP` it attaches its own
/// option writer to that cgroup and gives every connection its own real
/// client ([`indexed_client`]). Prints `progress K` now and then and
/// `open N errors E` at the end, then closes everything when stdin closes
/// and prints `closed`.
fn open_client(args: &Args) -> io::Result<()> {
    let dst = args.dst();
    let srcs = args.srcs();
    let n: u32 = args.num("n");
    let base: u32 = args.num("base");
    let window: usize = args.num("window");
    let mut injector = match args.opt("inject") {
        Some(cg) => Some(toa::forwarder::inject::Injector::attach(Path::new(cg)).map_err(io::Error::other)?),
        None => None,
    };
    let mut ep = Epoll::new(1024)?;
    let mut fds: Vec<RawFd> = Vec::with_capacity(n as usize);
    // Handshakes in flight: fd -> (index, cookie of its writer target).
    let mut pending: HashMap<RawFd, (u32, Option<u64>)> = HashMap::new();
    let (mut next, mut errors) = (0u32, 0u32);
    let mut last_progress = Instant::now();
    let report = |e: &dyn std::fmt::Display, errors: &mut u32| {
        *errors += 1;
        if *errors <= 5 {
            eprintln!("open-client: {e}");
        }
    };
    while (fds.len() as u32) + errors < n {
        while next < n && pending.len() < window {
            let index = base + next;
            next += 1;
            let src = srcs[index as usize % srcs.len()];
            let fd = match net::client_socket(src) {
                Ok(fd) => fd,
                Err(e) => {
                    report(&e, &mut errors);
                    continue;
                }
            };
            let mut cookie = None;
            if let Some(inj) = injector.as_mut() {
                let spec = toa::forwarder::inject::spec_for(
                    indexed_client(index).into(),
                    254,
                    None,
                    toa_common::inject::packets::ACK,
                )
                .map_err(io::Error::other)?;
                // SAFETY: `fd` is open for the duration of the call.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                cookie = Some(inj.set_for_socket(borrowed, spec).map_err(io::Error::other)?);
            }
            if let Err(e) = net::connect(fd, dst).and_then(|()| ep.add(fd, libc::EPOLLOUT as u32, fd as u64)) {
                report(&e, &mut errors);
                if let (Some(inj), Some(c)) = (injector.as_mut(), cookie) {
                    let _ = inj.forget(c);
                }
                net::close(fd);
                continue;
            }
            pending.insert(fd, (index, cookie));
        }
        let k = ep.wait(1000)?;
        for e in 0..k {
            let (token, bits) = ep.event(e);
            let fd = token as RawFd;
            let Some((index, cookie)) = pending.remove(&fd) else { continue };
            let _ = ep.delete(fd);
            if let (Some(inj), Some(c)) = (injector.as_mut(), cookie) {
                let _ = inj.forget(c);
            }
            let err = net::so_error(fd);
            if bits & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 || err != 0 {
                report(&io::Error::from_raw_os_error(err), &mut errors);
                net::close(fd);
                continue;
            }
            if let Err(e) = net::write(fd, &index.to_le_bytes()) {
                report(&e, &mut errors);
                net::close(fd);
                continue;
            }
            fds.push(fd);
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            say(&format!("progress {}", fds.len()));
            last_progress = Instant::now();
        }
    }
    say(&format!("open {} errors {errors}", fds.len()));
    let _ = stdin_line();
    for fd in fds {
        net::close(fd);
    }
    say("closed");
    Ok(())
}
