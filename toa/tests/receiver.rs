//! End to end: an injector writes the option on the client side, the agent
//! on the server side makes unmodified servers see the injected client.

mod common;

use std::time::Duration;

use common::{AgentProc, LOAD_CLIENT, Lab, READY, eventually, require_root, start_injector};
use integration_test::process::Stream;

const CLIENT_V4: &str = "203.0.113.7";
const CLIENT_V6: &str = "2001:db8:99::7";
const CLIENT_PORT: &str = "4242";

/// The access-log line http.server writes for a request from `host`.
fn logged_from(server: &mut integration_test::process::Spawned, host: &str) -> String {
    server
        .wait_for_line(Stream::Stderr, |l| l.contains("\"GET /"), READY)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("empty log line, wanted {host}"))
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn ipv4_options_of_kinds_254_and_200_reach_an_unmodified_http_server() {
    require_root();
    for kind in ["254", "200"] {
        let lab = Lab::new();
        let agent = AgentProc::start(lab.srv_cg.path(), &[]);
        let _inject = start_injector(
            lab.cli_cg.path(),
            &["--kind", kind, "--addr", &format!("{CLIENT_V4}:{CLIENT_PORT}"), "--packets", "ack"],
        );
        // An IPv4 socket logs the IPv4 client.
        let mut v4 = lab.http_server("192.0.2.2", 8080);
        lab.curl("http://192.0.2.2:8080/");
        assert_eq!(logged_from(&mut v4, CLIENT_V4), CLIENT_V4, "kind {kind}, IPv4 socket");
        // A dual-stack socket logs it IPv4-mapped.
        let mut dual = lab.http_server("::", 8081);
        lab.curl("http://192.0.2.2:8081/");
        assert_eq!(logged_from(&mut dual, CLIENT_V4), format!("::ffff:{CLIENT_V4}"), "kind {kind}, dual-stack socket");
        // Two connections, one accept() each (http.server asks nothing else).
        assert_eq!(agent.counter("syn_recv_sock_toa"), 2, "kind {kind}");
        assert_eq!(agent.counter("getname_toa_ok"), 2, "kind {kind}");
        agent.stop();
    }
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn ipv6_options_of_kinds_253_and_254_reach_an_unmodified_http_server() {
    require_root();
    for kind in ["253", "254"] {
        let lab = Lab::new();
        let agent = AgentProc::start(lab.srv_cg.path(), &[]);
        let _inject = start_injector(
            lab.cli_cg.path(),
            &["--kind", kind, "--addr", &format!("[{CLIENT_V6}]:{CLIENT_PORT}"), "--packets", "ack"],
        );
        let mut server = lab.http_server("::", 8080);
        lab.curl("http://[2001:db8::2]:8080/");
        assert_eq!(logged_from(&mut server, CLIENT_V6), CLIENT_V6, "kind {kind}/20");
        assert_eq!(agent.counter("ip6_address_alloc"), 1);
        agent.stop();
    }
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn ipv4_option_on_an_ipv6_connection_is_presented_mapped() {
    require_root();
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", &format!("{CLIENT_V4}:{CLIENT_PORT}")]);
    let mut server = lab.http_server("::", 8080);
    lab.curl("http://[2001:db8::2]:8080/");
    assert_eq!(logged_from(&mut server, CLIENT_V4), format!("::ffff:{CLIENT_V4}"));
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn accept_and_getpeername_both_return_the_real_client_with_its_port() {
    require_root();
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", &format!("{CLIENT_V4}:{CLIENT_PORT}")]);
    let mut v4 = lab.peer_server("0.0.0.0", 9000, "each");
    let mut v6 = lab.peer_server("::", 9001, "each");
    for (server, url, want) in [
        (&mut v4, "http://192.0.2.2:9000/", format!("{CLIENT_V4}:{CLIENT_PORT}")),
        (&mut v6, "http://192.0.2.2:9001/", format!("::ffff:{CLIENT_V4}:{CLIENT_PORT}")),
    ] {
        // The server closes at once; curl's error does not matter here.
        let _ = lab.client(&["curl", "-s", "--max-time", "5", url]);
        let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("accept="), READY);
        assert_eq!(line, format!("accept={want} getpeername={want}"));
    }
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn a_connection_without_the_option_keeps_its_transport_address() {
    require_root();
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let mut server = lab.peer_server("::", 9000, "each");
    // The server closes without answering: curl's status says nothing, the server's line does.
    let _ = lab.client(&["curl", "-s", "--max-time", "5", "http://192.0.2.2:9000/"]);
    let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("accept="), READY);
    assert!(line.starts_with("accept=::ffff:192.0.2.1:"), "{line}");
    assert_eq!(agent.counter("syn_recv_sock_no_toa"), 1);
    assert_eq!(agent.counter("syn_recv_sock_toa"), 0);
    assert_eq!(agent.counter("getname_toa_empty"), 2, "accept() and getpeername()");
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn ten_thousand_connections_from_four_clients_are_all_translated() {
    require_root();
    const N: u32 = 10_000;
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let _inject =
        start_injector(lab.cli_cg.path(), &["--addr", &format!("{CLIENT_V4}:{CLIENT_PORT}"), "--packets", "ack"]);
    let mut server = lab.peer_server("0.0.0.0", 9000, &format!("count/{N}/{CLIENT_V4}"));
    let out = lab.client(&["python3", "-c", LOAD_CLIENT, "192.0.2.2", "9000", &N.to_string(), "4"]);
    assert!(
        out.status.success(),
        "load client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = server.wait_for_line(Stream::Stdout, |l| l.starts_with("total="), Duration::from_secs(120));
    assert_eq!(summary, format!("total={N} expected={N} other=0"), "{:?}", server.lines_so_far(Stream::Stdout));
    assert_eq!(agent.counter("syn_recv_sock_toa"), u64::from(N));
    assert_eq!(agent.counter("syn_recv_sock_no_toa"), 0);
    agent.stop();
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn every_stored_address_is_released_when_its_connection_closes() {
    require_root();
    const N: u32 = 300;
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", &format!("[{CLIENT_V6}]:{CLIENT_PORT}")]);
    let mut server = lab.peer_server("::", 9000, &format!("count/{N}/{CLIENT_V6}"));
    let out = lab.client(&["python3", "-c", LOAD_CLIENT, "2001:db8::2", "9000", &N.to_string(), "4"]);
    assert!(
        out.status.success(),
        "load client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = server.wait_for_line(Stream::Stdout, |l| l.starts_with("total="), READY);
    assert_eq!(summary, format!("total={N} expected={N} other=0"));
    assert_eq!(agent.counter("ip6_address_alloc"), u64::from(N));
    eventually("every IPv6 address to be released", Duration::from_secs(30), || {
        let s = agent.stats();
        s["ip6_address_free"] == s["ip6_address_alloc"] && s["toa_entry_free"] == s["toa_entry_alloc"]
    });
    agent.stop();
}
