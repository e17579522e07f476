//! Socket activation (SPEC section 2): webd adopts the listening sockets it is passed
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) instead of binding, matched to its
//! configured addresses; a socket no address names, or one that is not a listening TCP
//! socket, is refused with exit 2 naming it.

use crate::util::*;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::time::Duration;

fn listening() -> (OwnedFd, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    (OwnedFd::from(listener), addr)
}

fn environ(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', "\n"))
        .unwrap_or_default()
}

/// The fd flags of `fd` in `pid` (`flags:` in fdinfo, octal).
fn fd_flags(pid: i32, fd: i32) -> Option<u32> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
    u32::from_str_radix(flags.trim(), 8).ok()
}

fn listen_addresses(webd: &Webd) -> Vec<String> {
    let status = webd.status_direct(Duration::from_secs(5)).expect("status");
    status["listen"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[test]
fn an_inherited_socket_is_served_and_other_addresses_are_bound() {
    let (socket, inherited) = listening();
    let opts = Options {
        args: vec!["--listen".into(), inherited.to_string(), "--listen".into(), LISTEN_ANY_PORT.into()],
        ..Default::default()
    };
    let webd = Webd::spawn_activated(opts, vec![(socket, "http")]);
    wait_until(Duration::from_secs(10), "GET on the inherited port", || {
        get(inherited, "/index.html").is_ok_and(|r| r.status == 200 && r.body == BODY)
    });
    let listen = listen_addresses(&webd);
    assert_eq!(listen.len(), 2, "{listen:?}");
    assert_eq!(listen[0], inherited.to_string(), "{listen:?}");
    let bound: SocketAddr = listen[1].parse().expect("second address");
    assert_ne!(bound.port(), 0);
    assert_eq!(get(bound, "/index.html").expect("GET on the bound address").status, 200);
    assert!(webd.log_text().contains("socket activation: adopted"), "{}", webd.log_text());
    // The adopted socket is CLOEXEC like the daemon's own, and no child sees LISTEN_*.
    assert!(fd_flags(webd.pid, 3).is_some_and(|f| f & 0o2000000 != 0), "fd 3 of the daemon is not CLOEXEC");
    let listener = webd.pid_of("webd: listener").expect("listener pid");
    let env = environ(listener);
    assert!(!env.is_empty(), "cannot read the listener's environment");
    assert!(!env.contains("LISTEN_PID") && !env.contains("LISTEN_FDS"), "the listener sees LISTEN_*:\n{env}");
}

#[test]
fn a_socket_named_http_serves_the_one_address_left() {
    let (socket, inherited) = listening();
    // The configuration names another port; the name http says which address it serves.
    let other = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let opts = Options { args: vec!["--listen".into(), other.to_string()], ..Default::default() };
    let webd = Webd::spawn_activated(opts, vec![(socket, "http")]);
    wait_until(Duration::from_secs(10), "GET on the inherited port", || {
        get(inherited, "/index.html").is_ok_and(|r| r.status == 200)
    });
    assert_eq!(listen_addresses(&webd), vec![inherited.to_string()]);
}

#[test]
fn an_inherited_socket_no_address_names_exits_2_naming_it() {
    let (socket, inherited) = listening();
    let other = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let opts = Options { args: vec!["--listen".into(), other.to_string()], ..Default::default() };
    let mut webd = Webd::spawn_activated(opts, vec![(socket, "metrics")]);
    let code = webd.wait_exit(Duration::from_secs(10));
    let log = webd.log_text();
    assert_eq!(code, Some(2), "{log}");
    for part in ["fd 3", &inherited.to_string(), "\"metrics\"", &other.to_string()] {
        assert!(log.contains(part), "the error does not name {part}: {log}");
    }
    assert!(webd.tree().is_empty(), "a child was started: {:?}", webd.tree());
}

#[test]
fn an_inherited_fd_that_is_not_a_listening_tcp_socket_exits_2_naming_it() {
    let (http, _) = listening();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let unlistening = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("tcp");
    for (bad, what) in [(OwnedFd::from(udp), "not a stream socket"), (OwnedFd::from(unlistening), "not listening")] {
        let opts = Options { args: vec!["--listen".into(), LISTEN_ANY_PORT.into()], ..Default::default() };
        let http = http.try_clone().expect("dup");
        let mut webd = Webd::spawn_activated(opts, vec![(http, "http"), (bad, "odd")]);
        let code = webd.wait_exit(Duration::from_secs(10));
        let log = webd.log_text();
        assert_eq!(code, Some(2), "{what}: {log}");
        assert!(log.contains("fd 4") && log.contains("\"odd\"") && log.contains(what), "{what}: {log}");
    }
}

#[test]
fn listen_pid_of_another_process_is_ignored() {
    let (socket, inherited) = listening();
    // LISTEN_PID=1: the sockets are not for us; webd binds its own and serves.
    let opts = Options {
        env: vec![("LISTEN_PID".into(), "1".into()), ("LISTEN_FDS".into(), "1".into())],
        ..Default::default()
    };
    let webd = Webd::start_with(opts);
    drop(socket);
    assert_ne!(webd.addr(), inherited);
    assert!(!webd.log_text().contains("socket activation"), "{}", webd.log_text());
}

#[test]
fn under_systemd_socket_activate_the_first_connection_starts_webd() {
    const TOOL: &str = "/usr/bin/systemd-socket-activate";
    assert!(
        std::path::Path::new(TOOL).exists(),
        "{TOOL} is missing: install Debian's systemd package (apt-get install systemd) to run this test"
    );
    // A free port: systemd-socket-activate cannot be given port 0 and tell us.
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = std::process::Command::new(TOOL);
    cmd.args(["-l", &addr.to_string(), "--fdname=http", WEBD]);
    let opts = Options { args: vec!["--listen".into(), LISTEN_ANY_PORT.into()], ..Default::default() };
    let webd = Webd::spawn_command(opts, cmd);
    // The tool execs webd on the first connection; that connection is served.
    let response = wait_for(Duration::from_secs(10), "the first GET", || get(addr, "/index.html").ok());
    assert_eq!(response.status, 200, "{}", webd.log_text());
    assert_eq!(listen_addresses(&webd), vec![addr.to_string()]);
    assert!(webd.log_text().contains("socket activation: adopted"), "{}", webd.log_text());
}
