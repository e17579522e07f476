//! HTTPS keeps every guarantee plain HTTP has: TLS clients (a full handshake per request)
//! while the listener and the manager are killed and gracefully restarted, the workers
//! restarted, and the certificate replaced and reloaded with `webctl reload`.

use crate::util::*;
use std::net::SocketAddr;
use std::time::Duration;

/// The pid `status` shows for `role` (listener, manager), once it is up.
fn role_pid(webd: &Webd, role: &str) -> Option<i32> {
    let status = webd.status_json()["status"].clone();
    let p = status["processes"].as_array()?.iter().find(|p| p["role"] == role)?.clone();
    p["pid"].as_i64().filter(|pid| *pid > 0).map(|pid| pid as i32)
}

/// The certificate a new handshake gets now.
fn presented(addr: SocketAddr, ca: &TestCa) -> Vec<u8> {
    let answer = tls_get(tcp_to(addr), &ca.client(&[]), "a.test", "/index.html").expect("TLS GET");
    answer.peer.to_vec()
}

#[test]
fn tls_clients_lose_nothing_through_crashes_restarts_and_a_certificate_reload() {
    let files = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let first = ca.issue(files.path(), "a", &["a.test"]);
    let args = tls_args(&first);
    let webd = Webd::start_with(Options { workers: 2, args, ..Options::default() });
    let addr = tls_addr(&webd);
    let body = std::fs::read(webd.root.join("index.html")).expect("index.html");
    let client = ca.client(&[]);
    let load = Clients::start(4, body, || {
        let client = client.clone();
        Box::new(move || {
            let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            let answer = tls_get(tcp, &client, "a.test", "/index.html")?;
            Ok(Response { status: answer.status, headers: Vec::new(), body: answer.body })
        })
    });
    let progress = |what: &str| {
        let then = load.ok();
        wait_until(Duration::from_secs(20), &format!("TLS requests served after {what}"), || load.ok() > then + 20);
    };
    progress("start");

    for role in ["listener", "manager"] {
        let old = wait_for(Duration::from_secs(10), "pid", || role_pid(&webd, role));
        kill(old, libc::SIGKILL);
        wait_until(Duration::from_secs(10), &format!("a new {role}"), || {
            role_pid(&webd, role).is_some_and(|p| p != old)
        });
        progress(&format!("kill -9 of the {role}"));
    }
    for target in ["listener", "manager", "workers"] {
        let out = webd.webctl(&["restart", target]);
        assert_eq!(out.code, Some(0), "restart {target}: {}{}", out.stdout, out.stderr);
        progress(&format!("webctl restart {target}"));
    }

    // A renewed certificate under the same file names, then a reload: new handshakes get
    // it, and none fails during the switch.
    assert_eq!(presented(addr, &ca), first.der.to_vec(), "the first certificate before the reload");
    let renewed = ca.issue(files.path(), "a", &["a.test"]);
    let out = webd.webctl(&["reload"]);
    assert_eq!(out.code, Some(0), "reload: {}{}", out.stdout, out.stderr);
    assert_eq!(presented(addr, &ca), renewed.der.to_vec(), "new handshakes get the renewed certificate");
    progress("webctl reload");

    let (ok, failed, errors) = load.finish();
    eprintln!("{ok} TLS requests ok, {failed} failed through 2 kills, 3 restarts and a certificate reload");
    assert_eq!(failed, 0, "TLS requests failed: {errors:?}");
}

/// A reload is answered once every old worker has stopped taking connections: from then
/// on no handshake reaches one still holding the old certificate (one did, now and then,
/// when the answer came as soon as the last replacement was up).
#[test]
fn every_handshake_after_a_reload_answer_gets_the_renewed_certificate() {
    let files = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let first = ca.issue(files.path(), "a", &["a.test"]);
    let webd = Webd::start_with(Options { workers: 2, args: tls_args(&first), ..Options::default() });
    let addr = tls_addr(&webd);
    // Plain new connections keep the old workers reading their lanes at the switch.
    let body = std::fs::read(webd.root.join("index.html")).expect("index.html");
    let load = Load::start(webd.addr(), 4, "/index.html", body);
    for round in 0..6 {
        let renewed = ca.issue(files.path(), "a", &["a.test"]);
        let out = webd.webctl(&["reload"]);
        assert_eq!(out.code, Some(0), "reload {round}: {}{}", out.stdout, out.stderr);
        for handshake in 0..8 {
            assert!(
                presented(addr, &ca) == renewed.der.to_vec(),
                "reload {round}, handshake {handshake}: the old certificate after the reload's answer"
            );
        }
    }
    let (ok, failed, errors) = load.finish();
    assert!(ok > 0, "the plain load made progress");
    assert_eq!(failed, 0, "plain requests failed through 6 reloads: {errors:?}");
}
