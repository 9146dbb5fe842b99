//! Options the codec refuses change nothing and are counted. The segments are
//! written byte by byte through a TUN device, so the test controls every
//! option byte of the handshake's final ACK.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{AgentProc, Lab, READY, require_root};
use integration_test::{packet::mss_option, process::Stream, tun::TunPeer};

const T: Duration = Duration::from_secs(5);

struct Case {
    description: &'static str,
    /// Option bytes of the final ACK.
    options: &'static [u8],
    /// Data offset to declare instead of the written one.
    data_offset: Option<u8>,
    /// The address `accept()` must report ("peer" for the transport address).
    want: &'static str,
    /// The counter that must grow by one.
    counter: &'static str,
}

const VALID: &[u8] = &[254, 8, 0x10, 0x92, 203, 0, 113, 7];

const CASES: &[Case] = &[
    Case {
        description: "valid 254/8 (control)",
        options: VALID,
        data_offset: None,
        want: "203.0.113.7:4242",
        counter: "syn_recv_sock_toa",
    },
    Case {
        description: "length 0",
        options: &[254, 0, 0x10, 0x92, 203, 0, 113, 7],
        data_offset: None,
        want: "peer",
        counter: "toa_malformed",
    },
    Case {
        description: "length 1",
        options: &[254, 1, 0x10, 0x92, 203, 0, 113, 7],
        data_offset: None,
        want: "peer",
        counter: "toa_malformed",
    },
    Case {
        description: "length 7 for kind 254",
        options: &[254, 7, 0x10, 0x92, 203, 0, 113, 0],
        data_offset: None,
        want: "peer",
        counter: "toa_malformed",
    },
    Case {
        description: "length 9 for kind 254",
        options: &[254, 9, 0x10, 0x92, 203, 0, 113, 7, 0, 0, 0, 0],
        data_offset: None,
        want: "peer",
        counter: "toa_malformed",
    },
    Case {
        description: "option running past the header (data offset declares 4 option bytes)",
        options: &[1, 1, 254, 8, 0x10, 0x92, 203, 0, 113, 7, 0, 0],
        data_offset: Some(6),
        want: "peer",
        counter: "toa_malformed",
    },
    Case {
        description: "option after EOL",
        options: &[0, 254, 8, 0x10, 0x92, 203, 0, 113, 7, 0, 0, 0],
        data_offset: None,
        want: "peer",
        counter: "syn_recv_sock_no_toa",
    },
];

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn refused_options_change_nothing_and_are_counted() {
    require_root();
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let mut peer =
        TunPeer::new(&lab.pair.srv.path(), integration_test::tun::SERVER_V4, integration_test::tun::SERVER_V6);
    let mut server = lab.peer_server("0.0.0.0", 9000, "each");
    let listener: SocketAddr = (peer.server_v4(), 9000).into();
    for case in CASES {
        let before = agent.stats();
        let client = peer.client_v4();
        let mut conn = peer.handshake(client, listener, &mss_option(1400), T);
        match case.data_offset {
            Some(words) => {
                peer.send_with_data_offset(&mut conn, integration_test::packet::ACK, case.options, words, b"")
            }
            None => peer.ack(&mut conn, case.options),
        }
        let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("accept="), READY);
        let want = if case.want == "peer" { client.to_string() } else { case.want.to_string() };
        assert_eq!(line, format!("accept={want} getpeername={want}"), "{}", case.description);
        let after = agent.stats();
        let grew = |name: &str| after[name].as_u64().unwrap_or(0) - before[name].as_u64().unwrap_or(0);
        assert_eq!(grew(case.counter), 1, "{}: {} should count it", case.description, case.counter);
        let established = grew("syn_recv_sock_toa") + grew("syn_recv_sock_no_toa");
        assert_eq!(established, 1, "{}: one connection established", case.description);
        peer.reset(&mut conn);
    }
    agent.stop();
}
