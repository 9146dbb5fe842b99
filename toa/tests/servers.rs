//! Real, unmodified servers in other languages behind the agent: nginx
//! (`$remote_addr:$remote_port` in its access log), a Go net/http server, the
//! Java ServerSocket demo of the EdgeOne manual and a Node.js net server.
//! A kernel client on the other side of a veth pair writes the option
//! through `toa inject`; each server must log the injected client.
//! A server whose runtime is not installed fails the test with a message
//! (`scripts/setup --test` installs them all).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{AgentProc, Lab, ONE_BYTE_CLIENT, READY, eventually, require_root, start_injector};
use integration_test::process::{Spawned, Stream, command_in, spawn};

const CLIENT: &str = "203.0.113.7:4242";

/// Fails the calling test unless `tool` is on PATH.
#[track_caller]
fn require_tool(tool: &str) {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    assert!(found, "{tool} is not installed: scripts/setup --test installs it");
}

/// A fresh directory for one test's files (under cargo's per-target tmp dir).
fn workdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create work directory");
    dir
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The agent, an injector writing 203.0.113.7:4242 into the handshake ACK,
/// and a server started by `start` in the server namespace and cgroup; `check`
/// makes `connections` connections to it.
fn behind_agent(connections: u64, start: impl FnOnce(&Lab) -> Spawned, check: impl FnOnce(&Lab, &mut Spawned)) {
    let lab = Lab::new();
    let agent = AgentProc::start(lab.srv_cg.path(), &[]);
    let _inject = start_injector(lab.cli_cg.path(), &["--addr", CLIENT, "--packets", "ack"]);
    let mut server = start(&lab);
    check(&lab, &mut server);
    assert_eq!(agent.counter("syn_recv_sock_toa"), connections, "connections that carried the option");
    // How often a runtime asks for the peer is its own business; at least once per connection.
    let asked = agent.counter("getname_toa_ok");
    assert!(asked >= connections, "{asked} translated accept()/getpeername() calls for {connections} connections");
    drop(server);
    agent.stop();
}

fn listening(lab: &Lab, port: u16) {
    eventually(&format!("a listener on port {port}"), READY, || {
        lab.pair.srv.output(&["ss", "-Hltn", &format!("sport = :{port}")]).contains("LISTEN")
    });
}

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn nginx_logs_the_real_client() {
    require_root();
    require_tool("nginx");
    let dir = workdir("nginx");
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pid};\nerror_log stderr warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  log_format toa '$remote_addr:$remote_port \"$request\"';\n  access_log /dev/stdout toa;\n\
             \x20 server {{\n    listen 0.0.0.0:8080;\n    listen [::]:8081 ipv6only=off;\n    \
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
            pid = dir.join("nginx.pid").display()
        ),
    )
    .expect("write nginx.conf");
    behind_agent(
        2,
        |lab| {
            let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), "nginx");
            cmd.arg("-p").arg(&dir).arg("-c").arg(&conf).args(["-e", "stderr"]);
            let server = spawn(cmd);
            listening(lab, 8080);
            listening(lab, 8081);
            server
        },
        |lab, server| {
            lab.curl("http://192.0.2.2:8080/");
            let line = server.wait_for_line(Stream::Stdout, |l| l.contains("\"GET /"), READY);
            assert_eq!(line, format!("{CLIENT} \"GET / HTTP/1.1\""), "IPv4 listener");
            lab.curl("http://192.0.2.2:8081/");
            let line = server.wait_for_line(Stream::Stdout, |l| l.contains("\"GET /"), READY);
            assert_eq!(line, "::ffff:203.0.113.7:4242 \"GET / HTTP/1.1\"", "dual-stack listener");
        },
    );
}

const GO_SERVER: &str = r#"package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
)

func main() {
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		panic(err)
	}
	fmt.Println("listening")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("remote=%s\n", r.RemoteAddr)
		fmt.Fprintln(w, "ok")
	})
	panic(http.Serve(ln, nil))
}
"#;

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn go_net_http_logs_the_real_client() {
    require_root();
    require_tool("go");
    let dir = workdir("go");
    std::fs::write(dir.join("server.go"), GO_SERVER).expect("write server.go");
    // A throwaway build cache and GOPATH: nothing is kept between runs.
    run_ok(
        Command::new("go")
            .args(["build", "-o", "server", "server.go"])
            .current_dir(&dir)
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GO111MODULE", "off")
            .env("GOFLAGS", ""),
    );
    behind_agent(
        1,
        |lab| {
            // ":8082" is Go's default dual-stack listener.
            let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), dir.join("server"));
            cmd.arg(":8082");
            let mut server = spawn(cmd);
            server.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
            server
        },
        |lab, server| {
            lab.curl("http://192.0.2.2:8082/");
            // Go prints a v4-mapped peer in IPv4 form.
            let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("remote="), READY);
            assert_eq!(line, format!("remote={CLIENT}"));
        },
    );
}

/// The EdgeOne manual's Java demo (IPv4 variant), unchanged.
const JAVA_SERVER: &str = r#"import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketAddress;


public class ServerDemo {


/** 若采用 IPv4 的地址结构搭建服务,使用 IPV4_HOST */
public static final String IPV4_HOST = "0.0.0.0";


/** 若采用 IPv6 的地址结构搭建服务,使用 IPV6_HOST */
public static final String IPV6_HOST = "::";


public static void main(String[] args) {
int serverPort = 10000;
try (ServerSocket serverSocket = new ServerSocket()) {
// 设置地址复用
serverSocket.setReuseAddress(true);
// 绑定服务器地址和端口,这里使用 IPv4
serverSocket.bind(new InetSocketAddress(InetAddress.getByName(IPV4_HOST), serverPort));
System.out.println("Server is listening on port " + serverPort);


while (true) {
// 接受客户端连接
Socket clientSocket = serverSocket.accept();
System.out.println("New client connected: " + clientSocket.getRemoteSocketAddress());


// 处理客户端请求
handleClientRequest(clientSocket);
}
} catch (IOException e) {
System.err.println("Failed to create server socket: " + e.getMessage());
}
}


/**
* 处理函数,具体业务具体实现,这里只做为示例
* 此函数的作用是将 client 的输入原封不动的返回给 client
*/
private static void handleClientRequest(Socket clientSocket) {
try (InputStream inputStream = clientSocket.getInputStream();
OutputStream outputStream = clientSocket.getOutputStream()) {


// 读取客户端发来的数据
byte[] buffer = new byte[1024];
int bytesRead;
while ((bytesRead = inputStream.read(buffer)) != -1) {
// 将接收到的数据原样回复给客户端
outputStream.write(buffer, 0, bytesRead);
}


} catch (IOException e) {
// 当客户端断开连接后
System.err.println("Failed to handle client request: " + e.getMessage());
} finally {
try {
clientSocket.close();
} catch (IOException e) {
System.err.println("Failed to close client socket: " + e.getMessage());
}
}
}
}
"#;

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn java_server_socket_logs_the_real_client() {
    require_root();
    require_tool("javac");
    require_tool("java");
    let dir = workdir("java");
    std::fs::write(dir.join("ServerDemo.java"), JAVA_SERVER).expect("write ServerDemo.java");
    run_ok(Command::new("javac").args(["-encoding", "UTF-8", "-d"]).arg(&dir).arg(dir.join("ServerDemo.java")));
    behind_agent(
        1,
        |lab| {
            let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), "java");
            cmd.arg("-cp").arg(&dir).arg("ServerDemo");
            let mut server = spawn(cmd);
            server.wait_for_line(Stream::Stdout, |l| l.starts_with("Server is listening"), READY);
            server
        },
        |lab, server| {
            let out = lab.client(&["python3", "-c", ONE_BYTE_CLIENT, "192.0.2.2", "10000"]);
            assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
            let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("New client connected"), READY);
            assert_eq!(line, format!("New client connected: /{CLIENT}"));
        },
    );
}

const NODE_SERVER: &str = r#"
const net = require("net");
const server = net.createServer((s) => {
  console.log(`remote=${s.remoteAddress}:${s.remotePort}`);
  s.on("data", (d) => s.end(d));
  s.on("error", () => {});
});
// node -e SCRIPT PORT HOST: the arguments start at argv[1].
server.listen(Number(process.argv[1]), process.argv[2], () => console.log("listening"));
"#;

#[test]
#[ignore = "needs root: BPF, network namespaces, cgroups"]
fn node_net_server_logs_the_real_client() {
    require_root();
    require_tool("node");
    behind_agent(
        1,
        |lab| {
            let mut cmd = command_in(Some(&lab.pair.srv.path()), Some(lab.srv_cg.path()), "node");
            cmd.args(["-e", NODE_SERVER, "8084", "::"]);
            let mut server = spawn(cmd);
            server.wait_for_line(Stream::Stdout, |l| l == "listening", READY);
            server
        },
        |lab, server| {
            let out = lab.client(&["python3", "-c", ONE_BYTE_CLIENT, "192.0.2.2", "8084"]);
            assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
            let line = server.wait_for_line(Stream::Stdout, |l| l.starts_with("remote="), Duration::from_secs(30));
            assert_eq!(line, "remote=::ffff:203.0.113.7:4242");
        },
    );
}
