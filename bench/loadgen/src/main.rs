//! Load generator and servers for `bench/proxy`.
//!
//! ```text
//! toa-loadgen serve ADDR                      rr server: 1 byte in, 1 byte out, wait for EOF, close;
//!                                             a connection whose first byte is 'B' is sunk instead,
//!                                             one whose first byte is 'P' has every byte echoed
//! toa-loadgen ping ADDR SECONDS               1-byte round trips on one connection; prints
//!                                             "rtt_p50_us X rtt_p99_us Y count N"
//! toa-loadgen rr ADDR PARALLEL SECONDS        short connections; prints "conns_per_s N errors E"
//! toa-loadgen bulk ADDR STREAMS SECONDS       one-way bulk upload; prints "gbit_per_s X"
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: toa-loadgen serve ADDR | rr ADDR PARALLEL SECONDS | bulk ADDR STREAMS SECONDS | ping ADDR SECONDS");
        std::process::exit(2)
    };
    if args.len() < 3 {
        usage();
    }
    let addr: SocketAddr = args[2].parse().unwrap_or_else(|_| usage());
    let num = |i: usize| -> u64 { args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()) };
    match args[1].as_str() {
        "serve" => serve(addr),
        "rr" => rr(addr, num(3) as usize, num(4)),
        "bulk" => bulk(addr, num(3) as usize, num(4)),
        "ping" => ping(addr, num(3)),
        _ => usage(),
    }
}

fn serve(addr: SocketAddr) {
    let listener = Arc::new(TcpListener::bind(addr).expect("bind"));
    println!("listening");
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let l = Arc::clone(&listener);
            std::thread::spawn(move || {
                loop {
                    let Ok((mut c, _)) = l.accept() else { continue };
                    let mut b = [0u8; 1];
                    if c.read_exact(&mut b).is_err() {
                        continue;
                    }
                    if b[0] == b'P' {
                        std::thread::spawn(move || {
                            let _ = c.set_nodelay(true);
                            let mut b = [0u8; 1];
                            while matches!(c.read(&mut b), Ok(1)) {
                                if c.write_all(&b).is_err() {
                                    break;
                                }
                            }
                        });
                        continue;
                    }
                    if b[0] == b'B' {
                        std::thread::spawn(move || {
                            let mut buf = vec![0u8; 1 << 20];
                            while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                        });
                        continue;
                    }
                    let _ = c.write_all(b"y");
                    while matches!(c.read(&mut b), Ok(n) if n > 0) {}
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn rr(addr: SocketAddr, par: usize, secs: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..par)
        .map(|_| {
            let (stop, done, errors) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&errors));
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let ok = (|| -> std::io::Result<()> {
                        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                        c.set_read_timeout(Some(Duration::from_secs(5)))?;
                        c.set_nodelay(true)?;
                        c.write_all(b"x")?;
                        let mut b = [0u8; 1];
                        c.read_exact(&mut b)?;
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => done.fetch_add(1, Relaxed),
                        Err(_) => errors.fetch_add(1, Relaxed),
                    };
                }
            })
        })
        .collect();
    // Warm up for a moment, then count.
    std::thread::sleep(Duration::from_millis(300));
    let (d0, t0) = (done.load(Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (d1, t1) = (done.load(Relaxed), Instant::now());
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let rate = (d1 - d0) as f64 / (t1 - t0).as_secs_f64();
    println!("conns_per_s {rate:.0} errors {}", errors.load(Relaxed));
}

fn bulk(addr: SocketAddr, streams: usize, secs: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..streams)
        .map(|_| {
            let (stop, bytes) = (Arc::clone(&stop), Arc::clone(&bytes));
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(addr).expect("connect");
                c.write_all(b"B").expect("write");
                let buf = vec![0x5au8; 1 << 20];
                while !stop.load(Relaxed) {
                    match c.write(&buf) {
                        Ok(n) => bytes.fetch_add(n as u64, Relaxed),
                        Err(e) => panic!("bulk write: {e}"),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (b0, t0) = (bytes.load(Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (b1, t1) = (bytes.load(Relaxed), Instant::now());
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let gbit = (b1 - b0) as f64 * 8.0 / (t1 - t0).as_secs_f64() / 1e9;
    println!("gbit_per_s {gbit:.2}");
}

fn ping(addr: SocketAddr, secs: u64) {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    c.write_all(b"P").expect("write");
    let mut b = [0u8; 1];
    let mut rtts = Vec::new();
    let warm = Instant::now() + Duration::from_millis(300);
    let end = warm + Duration::from_secs(secs);
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        c.write_all(b"x").expect("write");
        c.read_exact(&mut b).expect("read");
        if t >= warm {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    rtts.sort_unstable();
    let pct = |p: usize| rtts.get(rtts.len().saturating_sub(1) * p / 100).copied().unwrap_or(0) as f64 / 1000.0;
    println!("rtt_p50_us {:.1} rtt_p99_us {:.1} count {}", pct(50), pct(99), rtts.len());
}
