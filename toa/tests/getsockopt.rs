//! The vendor `getsockopt()` calls and the manuals' C snippets against the
//! agent: Alibaba vtoa (1348), Tencent NAT64 (`TOA_SO_GET_LOOKUP`, 4096,
//! with its getpeername fallback), the EdgeOne accept() demo, our C example
//! (`include/toa.h`), errors for short buffers and missing data, and the
//! `toa::real_peer` library API. The C files are compiled with gcc once per
//! run; a kernel client writes the option through `toa inject`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use common::{AgentProc, Lab, ONE_BYTE_CLIENT, READY, require_root, start_injector};
use integration_test::process::{Spawned, Stream, command_in, spawn};

const CLIENT_V4: &str = "203.0.113.7:4242";
const CLIENT_V6: &str = "[2001:db8:99::7]:4242";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The C programs, compiled once: the manuals' snippets with plain gcc (as
/// their users would), our example with -Wall -Wextra -Werror.
fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("toa-c-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the C build directory");
        let root = repo();
        let c = root.join("examples/c");
        let mut builds: Vec<(String, Vec<String>)> =
            ["vtoa_1348", "vtoa_getpeername", "tencent_nat64", "edgeone_accept"]
                .iter()
                .map(|n| (n.to_string(), vec![c.join(format!("{n}.c")).display().to_string()]))
                .collect();
        builds.push((
            "real_peer_server".into(),
            ["-Wall", "-Wextra", "-Werror", "-I", &root.join("include").display().to_string()]
                .iter()
                .map(|s| s.to_string())
                .chain([c.join("real_peer_server.c").display().to_string()])
                .collect(),
        ));
        for (name, args) in builds {
            let out = Command::new("gcc")
                .args(&args)
                .arg("-o")
                .arg(dir.join(&name))
                .output()
                .unwrap_or_else(|e| panic!("run gcc: {e}"));
            assert!(out.status.success(), "gcc {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        dir
    })
}

/// Starts a compiled program (or any command) in the server namespace and
/// cgroup with BIND PORT and waits until it listens.
fn serve(lab: &Lab, program: &Path, args: &[&str]) -> Spawned {
    let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), program);
    cmd.args(args);
    let mut p = spawn(cmd);
    p.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
    p
}

/// Runs the one-shot snippet `name` on BIND:PORT, connects once, returns the line it printed.
fn snippet(lab: &Lab, name: &str, bind: &str, port: u16, connect: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut server = serve(lab, &binaries().join(name), &[bind, &port.to_string(), "1"]);
    let out = lab.client(&["python3", "-c", ONE_BYTE_CLIENT, connect, &port.to_string()]);
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    let line = server.wait_for_line(Stream::Stdout, pred, READY);
    server.wait_exit(READY);
    line
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn the_manuals_snippets_see_an_ipv4_client_unchanged() {
    require_root();
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", CLIENT_V4, "--packets", "ack"]);
    let line = snippet(&lab, "vtoa_1348", "0.0.0.0", 9100, "192.0.2.2", |l| l.starts_with("vtoa"));
    assert_eq!(line, "vtoa 1348: family=2 203.0.113.7:4242 optlen=16");
    let line = snippet(&lab, "vtoa_getpeername", "0.0.0.0", 9101, "192.0.2.2", |l| l.starts_with("getpeername"));
    assert_eq!(line, "getpeername: family=2 203.0.113.7:4242");
    // 4096 answers only IPv6 clients (EINVAL here): the sample falls back to getpeername.
    let line = snippet(&lab, "tencent_nat64", "0.0.0.0", 9102, "192.0.2.2", |l| l.starts_with("real client"));
    assert_eq!(line, "real client v4 [203.0.113.7]:4242");
    let line = snippet(&lab, "edgeone_accept", "0.0.0.0", 9103, "192.0.2.2", |l| l.contains("getpeername"));
    assert_eq!(line, "AF_INET accept getpeername 203.0.113.7 : 4242 successful");
    // Our example, on a dual-stack socket: accept() mapped, toa_real_peer() the IPv4 client.
    let line = snippet(&lab, "real_peer_server", "::", 9104, "192.0.2.2", |l| l.starts_with("accept="));
    assert_eq!(line, "accept=[::ffff:203.0.113.7]:4242 real=203.0.113.7:4242");
    // 1348 from the vtoa snippet and from toa_real_peer(); 4096 refused for the IPv4 client.
    assert_eq!((agent.counter("getsockopt_toa_ok"), agent.counter("getsockopt_toa_fail")), (2, 1));
    // accept() of the EdgeOne demo and our example, getpeername() of the vtoa and Tencent snippets.
    assert_eq!(agent.counter("getname_toa_ok"), 4);
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn the_manuals_snippets_see_a_nat64_client() {
    require_root();
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    // An IPv6 client in an option of an IPv4 connection (Tencent NAT64 CLB).
    let _inject = start_injector(lab.cli_cg.path(), &["--kind", "253", "--addr", CLIENT_V6, "--packets", "ack"]);
    let line = snippet(&lab, "tencent_nat64", "0.0.0.0", 9110, "192.0.2.2", |l| l.starts_with("real client"));
    assert_eq!(line, "real client v6 [2001:db8:99::7]:4242");
    // The vtoa manual passes a struct sockaddr (16 bytes): too short for a
    // sockaddr_in6, so the call fails instead of truncating the address.
    let line = snippet(&lab, "vtoa_1348", "0.0.0.0", 9111, "192.0.2.2", |l| l.starts_with("vtoa"));
    assert_eq!(line, "vtoa 1348: errno=EINVAL");
    // An IPv4 socket cannot hold an IPv6 peer: getpeername is left as is.
    let line = snippet(&lab, "vtoa_getpeername", "0.0.0.0", 9112, "192.0.2.2", |l| l.starts_with("getpeername"));
    assert!(line.starts_with("getpeername: family=2 192.0.2.1:"), "{line}");
    // EdgeOne's demo asks accept() for a sockaddr_in6 on an IPv4 listener;
    // the kernel fills a sockaddr_in there, so it sees the transport address
    // (EdgeOne's module would hand out AF_INET6; a deliberate difference).
    let line = snippet(&lab, "edgeone_accept", "0.0.0.0", 9113, "192.0.2.2", |l| l.contains("getpeername"));
    assert!(line.starts_with("AF_INET accept getpeername 192.0.2.1 : "), "{line}");
    let line = snippet(&lab, "real_peer_server", "0.0.0.0", 9114, "192.0.2.2", |l| l.starts_with("accept="));
    assert!(line.starts_with("accept=192.0.2.1:") && line.ends_with(" real=[2001:db8:99::7]:4242"), "{line}");
    // accept() of the EdgeOne demo and our example, getpeername() of the vtoa snippet.
    assert_eq!(agent.counter("getname_toa_bypass"), 3);
    // 4096 from the Tencent snippet and 1348 from toa_real_peer(); the 16-byte 1348 refused.
    assert_eq!((agent.counter("getsockopt_toa_ok"), agent.counter("getsockopt_toa_fail")), (2, 1));
    agent.stop();
}

/// Asks 1348 and 4096 with several buffer sizes, plus calls that must pass
/// through untouched; prints one `NAME=RESULT` word each.
const PROBE: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.recv(1)
    out = []
    for name, level, opt, size in [("v16", 0, 1348, 16), ("v15", 0, 1348, 15), ("v28", 0, 1348, 28),
                                   ("v27", 0, 1348, 27), ("n20", 0, 4096, 20), ("n19", 0, 4096, 19),
                                   ("tcp1348", socket.IPPROTO_TCP, 1348, 28), ("ip1347", 0, 1347, 28),
                                   ("tos", 0, socket.IP_TOS, 4), ("nodelay", socket.IPPROTO_TCP, socket.TCP_NODELAY, 4)]:
        try:
            b = c.getsockopt(level, opt, size)
            out.append(f"{name}=ok{len(b)}")
        except OSError as e:
            out.append(f"{name}={errno.errorcode[e.errno]}")
    print(" ".join(out), flush=True)
    c.close()
"#;

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn short_buffers_and_missing_data_fail_and_everything_else_passes_through() {
    require_root();
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), "python3");
    cmd.args(["-u", "-c", PROBE, "9120"]);
    let mut probe = spawn(cmd);
    probe.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
    let passthrough = "tcp1348=ENOPROTOOPT ip1347=ENOPROTOOPT tos=ok4 nodelay=ok4";
    let cases: [(&[&str], String); 3] = [
        (&[], format!("v16=ENOENT v15=ENOENT v28=ENOENT v27=ENOENT n20=EINVAL n19=EINVAL {passthrough}")),
        (&["--addr", CLIENT_V4], format!("v16=ok16 v15=EINVAL v28=ok16 v27=ok16 n20=EINVAL n19=EINVAL {passthrough}")),
        (
            &["--kind", "253", "--addr", CLIENT_V6],
            format!("v16=EINVAL v15=EINVAL v28=ok28 v27=EINVAL n20=ok20 n19=EINVAL {passthrough}"),
        ),
    ];
    for (inject, want) in cases {
        let _inject = (!inject.is_empty()).then(|| start_injector(lab.cli_cg.path(), inject));
        let out = lab.client(&["python3", "-c", ONE_BYTE_CLIENT, "192.0.2.2", "9120"]);
        assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
        let line = probe.wait_for_line(Stream::Stdout, |l| l.starts_with("v16="), READY);
        assert_eq!(line, want, "injecting {inject:?}");
    }
    agent.stop();
}

/// Set when [`the_library_returns_the_real_client`] re-executes this binary
/// inside the server namespace and cgroup: the address to serve on.
const HELPER_BIND: &str = "TOA_REAL_PEER_HELPER";

/// The re-executed side: accepts one connection and prints what each library
/// call returns for it.
fn serve_one_and_print_the_real_peer(bind: &str) {
    let listener = std::net::TcpListener::bind(bind).expect("bind");
    println!("listening");
    let (stream, _) = listener.accept().expect("accept");
    let after = toa::peer::real_peer_when_readable(&stream, Duration::from_secs(10)).expect("real_peer_when_readable");
    let (addr, source) = toa::peer::real_peer_source(&stream).expect("real_peer_source");
    let ready = std::future::ready(Ok::<(), std::io::Error>(()));
    let async_addr = block_on(toa::peer::real_peer_after(&stream, ready)).expect("real_peer_after");
    let plain = toa::real_peer(&stream).expect("real_peer");
    println!("real={addr} source={source:?} after={after} async={async_addr} plain={plain}");
}

/// Polls a future that never waits (enough for the ready future above).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn the_library_returns_the_real_client() {
    require_root();
    if let Ok(bind) = std::env::var(HELPER_BIND) {
        return serve_one_and_print_the_real_peer(&bind);
    }
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    for (inject, bind, want) in [
        (&["--addr", CLIENT_V4][..], "0.0.0.0:9130", format!("real={CLIENT_V4} source=Vtoa")),
        (&["--kind", "253", "--addr", CLIENT_V6][..], "0.0.0.0:9131", format!("real={CLIENT_V6} source=Vtoa")),
        (&[][..], "[::]:9132", "real=[::ffff:192.0.2.1]:".to_string()),
    ] {
        let _inject = (!inject.is_empty()).then(|| start_injector(lab.cli_cg.path(), inject));
        let exe = std::env::current_exe().expect("test binary");
        let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), exe);
        cmd.args(["--exact", "the_library_returns_the_real_client", "--include-ignored", "--nocapture"]);
        cmd.args(["--test-threads", "1"]).env(HELPER_BIND, bind);
        let mut helper = spawn(cmd);
        // libtest prints "test the_library_returns_the_real_client ... " in front of it.
        helper.wait_for_line(Stream::Stdout, |l| l.ends_with("listening"), READY);
        let port = bind.rsplit(':').next().expect("port");
        let out = lab.client(&["python3", "-c", ONE_BYTE_CLIENT, "192.0.2.2", port]);
        assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
        let line = helper.wait_for_line(Stream::Stdout, |l| l.starts_with("real="), READY);
        assert!(line.starts_with(&want), "{line} (wanted {want}…)");
        let addr = line.split_whitespace().next().and_then(|w| w.strip_prefix("real=")).expect("real=");
        for key in ["after", "async", "plain"] {
            assert!(line.contains(&format!(" {key}={addr}")), "{key} differs: {line}");
        }
        if inject.is_empty() {
            assert!(line.contains("source=Getpeername"), "{line}");
        }
        helper.wait_exit(READY);
    }
    agent.stop();
}
