//! HTTPS (docs/reference.md, HTTPS) against the real binary, with a certificate
//! authority made in the test.

use crate::util::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A daemon serving HTTPS with a certificate for `a.test` (flags, the default) and one
/// for `*.b.test` (`[[certificates]]` in the config file).
struct TlsWebd {
    webd: Webd,
    ca: TestCa,
    a: Issued,
    b: Issued,
    _files: tempfile::TempDir,
}

impl TlsWebd {
    fn start(workers: u32) -> TlsWebd {
        TlsWebd::start_with_env(workers, Vec::new())
    }

    fn start_with_env(workers: u32, env: Vec<(String, String)>) -> TlsWebd {
        TlsWebd::start_with(workers, env, "")
    }

    /// With `env` and `toml` added to the config file.
    fn start_with(workers: u32, env: Vec<(String, String)>, toml: &str) -> TlsWebd {
        let files = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new();
        let a = ca.issue(files.path(), "a", &["a.test"]);
        let b = ca.issue(files.path(), "b", &["*.b.test"]);
        let toml = format!("{toml}\n[[certificates]]\ncert = {:?}\nkey = {:?}\n", b.cert, b.key);
        let mut args = tls_args(&a);
        args.extend(["--admin".to_string(), "127.0.0.1:0".to_string()]);
        let webd = Webd::start_with(Options { workers, args, env, config_toml: Some(toml), ..Options::default() });
        TlsWebd { webd, ca, a, b, _files: files }
    }

    fn tls_addr(&self) -> SocketAddr {
        tls_addr(&self.webd)
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        self.ca.client(&[])
    }
}

#[test]
fn each_sni_name_gets_its_own_certificate_and_the_page() {
    let t = TlsWebd::start(2);
    let (addr, client) = (t.tls_addr(), t.client());
    for (name, want) in [("a.test", &t.a.der), ("www.b.test", &t.b.der), ("other.b.test", &t.b.der)] {
        let answer =
            tls_get(tcp_to(addr), &client, name, "/index.html").unwrap_or_else(|e| panic!("GET via {name}: {e}"));
        assert_eq!(answer.status, 200, "{name}");
        assert_eq!(answer.body, BODY, "{name}");
        assert_eq!(&answer.peer, want, "{name} got another certificate");
        assert_eq!(answer.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let answer = tls_get(tcp_to(addr), &t.ca.client(&[version]), "a.test", "/index.html").expect("GET");
        assert_eq!((answer.status, answer.version), (200, Some(version.version)));
    }
    // Plain HTTP is unchanged beside it.
    assert_eq!(get(t.webd.addr(), "/index.html").expect("plain GET").status, 200);
    let status = t.webd.status_json()["status"].clone();
    let names: Vec<&str> =
        status["certificates"].as_array().expect("certificates").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["a.test", "*.b.test"], "{status}");
    let listed = t.webd.ctl_ok(&["status"]);
    assert!(listed.contains("CERTIFICATE") && listed.contains("*.b.test"), "{listed}");
    // The handshakes are counted (5 completed above, 2 of them TLS 1.2) and each
    // certificate's expiry exported.
    let admin = t.webd.admin_addr().expect("admin address").port();
    let handshakes =
        |version| metric(&scrape(admin), "webd_tls_handshakes_total", &[("result", "ok"), ("version", version)]);
    wait_until(Duration::from_secs(10), "the handshakes counted", || {
        handshakes("TLSv1.2").unwrap_or(0.0) >= 1.0 && handshakes("TLSv1.3").unwrap_or(0.0) >= 4.0
    });
    let samples = scrape(admin);
    for name in ["a.test", "*.b.test"] {
        let expiry = metric(&samples, "webd_tls_certificate_expiry_timestamp_seconds", &[("name", name)]);
        assert!(expiry.is_some_and(|t| t > 1.7e9), "expiry of {name}: {expiry:?}");
    }
    assert!(metric(&samples, "webd_tls_handshake_duration_seconds_count", &[]).is_some_and(|n| n >= 5.0));
}

/// A response to an old ClientHello: the first record's content type (0x15 alert,
/// 0x16 handshake), or None when the server just closed.
fn answer_to(addr: SocketAddr, hello: &[u8]) -> Option<u8> {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    tcp.write_all(hello).expect("send hello");
    let mut first = [0u8; 1];
    match tcp.read(&mut first) {
        Ok(1) => Some(first[0]),
        _ => None,
    }
}

#[test]
fn tls_1_0_and_1_1_are_refused() {
    let t = TlsWebd::start(1);
    let addr = t.tls_addr();
    for version in [0x0301, 0x0302] {
        let answer = answer_to(addr, &legacy_client_hello(version));
        assert!(answer == Some(0x15) || answer.is_none(), "version {version:#x}: answered {answer:?}, not an alert");
    }
    assert_eq!(tls_get(tcp_to(addr), &t.client(), "a.test", "/").expect("a modern client still served").status, 200);
}

#[test]
fn bad_certificate_files_are_config_errors_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let good = ca.issue(dir.path(), "good", &["a.test"]);
    let other = ca.issue(dir.path(), "other", &["a.test"]);
    let expired = ca.issue_until(dir.path(), "expired", &["a.test"], Some((2020, 1, 1)));
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n").expect("write");
    let missing = dir.path().join("missing.pem");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let cases = [
        ("missing certificate", s(&missing), s(&good.key), s(&missing)),
        ("unparsable certificate", s(&garbage), s(&good.key), s(&garbage)),
        ("unparsable key", s(&good.cert), s(&garbage), s(&garbage)),
        ("key of another certificate", s(&good.cert), s(&other.key), s(&other.key)),
        ("expired certificate", s(&expired.cert), s(&expired.key), s(&expired.cert)),
    ];
    for (what, cert, key, named) in cases {
        let args = [
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
        ];
        let (code, stderr) = run_webd(&args);
        assert_eq!(code, Some(2), "{what}: {stderr}");
        assert!(stderr.contains(&named), "{what}: the error names {named}: {stderr}");
    }
}

/// The listener dies (SIGKILL) with TLS connections waiting in the kernel's queue: the
/// next listener takes them, marked TLS, and every one completes its handshake and GET.
#[test]
fn a_listener_killed_with_tls_connections_queued_loses_none() {
    let t = TlsWebd::start(2);
    let (addr, client) = (t.tls_addr(), t.client());
    let listener = |webd: &Webd| -> Option<i32> {
        let status = webd.status_json()["status"].clone();
        let p = status["processes"].as_array()?.iter().find(|p| p["role"] == "listener")?.clone();
        p["pid"].as_i64().filter(|pid| *pid > 0).map(|pid| pid as i32)
    };
    let old = wait_for(Duration::from_secs(5), "listener pid", || listener(&t.webd));
    kill(old, libc::SIGSTOP);
    // Connected means queued in the backlog: the stopped listener accepts nothing.
    let queued: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    kill(old, libc::SIGKILL);
    let answers: Vec<_> = queued
        .into_iter()
        .map(|tcp| {
            let client = client.clone();
            std::thread::spawn(move || tls_get(tcp, &client, "a.test", "/index.html").map(|a| a.status))
        })
        .collect();
    for (i, answer) in answers.into_iter().enumerate() {
        let result = answer.join().expect("client thread");
        assert_eq!(result.as_ref().ok(), Some(&200), "queued TLS connection {i}: {result:?}");
    }
    wait_until(Duration::from_secs(10), "a new listener", || listener(&t.webd).is_some_and(|p| p != old));
}

/// A canary served over TLS and plain HTTP while `attack` runs, on a single worker: a
/// hostile client that pinned it would stop the canary.
fn canary_during(t: &TlsWebd, what: &str, attack: impl FnOnce(SocketAddr) + Send + 'static) {
    let (addr, client) = (t.tls_addr(), t.client());
    let attacker = std::thread::spawn(move || attack(addr));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut served = 0;
    while Instant::now() < deadline || !attacker.is_finished() {
        let started = Instant::now();
        let answer = tls_get(tcp_to(addr), &client, "a.test", "/index.html");
        assert_eq!(answer.as_ref().map(|a| a.status).ok(), Some(200), "{what}: TLS canary: {answer:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{what}: TLS canary took {:?}", started.elapsed());
        assert_eq!(get(t.webd.addr(), "/index.html").map(|r| r.status).ok(), Some(200), "{what}: plain canary");
        served += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    attacker.join().expect("attacker");
    assert!(served >= 3, "{what}: only {served} canary requests");
}

#[test]
fn hostile_tls_input_never_crashes_or_pins_a_worker() {
    let t = TlsWebd::start_with_header_timeout(1, 1500);
    let worker = t.webd.worker_pids();
    let hello = client_hello(&t.client());
    canary_during(&t, "random bytes", |addr| {
        let mut rng = Rng::new(14);
        for _ in 0..50 {
            let bytes: Vec<u8> = (0..rng.range(1, 4096)).map(|_| rng.next_u64() as u8).collect();
            if let Ok(mut tcp) = TcpStream::connect(addr) {
                let _ = tcp.write_all(&bytes);
            }
        }
    });
    let truncated = hello[..hello.len() / 2].to_vec();
    canary_during(&t, "truncated ClientHello", move |addr| hold(addr, 20, &truncated));
    let slow = hello.clone();
    canary_during(&t, "a handshake sent one byte per second", move |addr| {
        let Ok(mut tcp) = TcpStream::connect(addr) else { return };
        for byte in slow.iter().take(4) {
            if tcp.write_all(&[*byte]).is_err() {
                return; // closed at the header timeout: as it should be
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let flood = hello.clone();
    // Whole ClientHellos, never a second flight.
    canary_during(&t, "handshakes that never finish", move |addr| hold(addr, 200, &flood));
    canary_during(&t, "renegotiation attempt", renegotiate);
    assert_eq!(t.webd.worker_pids(), worker, "the worker was not replaced (no crash, no hang)");
}

/// Opens `count` connections, sends `bytes` on each and holds them open for 2 s.
fn hold(addr: SocketAddr, count: usize, bytes: &[u8]) {
    let held: Vec<TcpStream> = (0..count)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .map(|mut tcp| {
            let _ = tcp.write_all(bytes);
            tcp
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    drop(held);
}

/// TLS 1.2 with `openssl s_client`, asking it to renegotiate (`R`) after a request.
fn renegotiate(addr: SocketAddr) {
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("openssl")
        .args(["s_client", "-tls1_2", "-connect", &addr.to_string(), "-servername", "a.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("no openssl: renegotiation case skipped");
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"R\n");
        std::thread::sleep(Duration::from_millis(500));
        let _ = stdin.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\nR\n");
        std::thread::sleep(Duration::from_millis(500));
    }
    if exit_within(&mut child, Duration::from_secs(5)).is_none() {
        let _ = child.kill();
    }
}

impl TlsWebd {
    fn start_with_header_timeout(workers: u32, ms: u32) -> TlsWebd {
        let files = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new();
        let a = ca.issue(files.path(), "a", &["a.test"]);
        let b = ca.issue(files.path(), "b", &["*.b.test"]);
        let mut args = tls_args(&a);
        args.extend(["--header-timeout".to_string(), ms.to_string()]);
        let webd = Webd::start_with(Options { workers, args, ..Options::default() });
        TlsWebd { webd, ca, a, b, _files: files }
    }
}

/// GETs over a new connection with `client` (whose store keeps the session tickets);
/// Some(resumed) when it is answered 200.
fn get_resuming(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> Result<bool, String> {
    let answer = tls_get(tcp_to(addr), client, "a.test", "/index.html").map_err(|e| e.to_string())?;
    if answer.status != 200 {
        return Err(format!("status {}", answer.status));
    }
    Ok(answer.resumed)
}

/// Requests served so far by each worker process, by pid, from status.
fn requests_by_worker(webd: &Webd) -> std::collections::HashMap<i64, u64> {
    let status = webd.status_json()["status"].clone();
    let workers = status["workers"].as_array().cloned().unwrap_or_default();
    workers.iter().filter_map(|w| Some((w["pid"].as_i64()?, w["requests"].as_u64()?))).collect()
}

/// `count` connections per client, each of which must resume its session; then waits
/// until every worker now running has served some of them. Its first resumed
/// connection used a ticket another worker (or a process gone since) had sealed.
fn resumes_on_every_worker(t: &TlsWebd, clients: &[(&str, Arc<rustls::ClientConfig>)], phase: &str, count: usize) {
    let addr = t.tls_addr();
    let before = requests_by_worker(&t.webd);
    for (what, client) in clients {
        for i in 0..count {
            let resumed = get_resuming(addr, client).unwrap_or_else(|e| panic!("{phase}, {what}, GET {i}: {e}"));
            assert!(resumed, "{phase}, {what}: connection {i} made a full handshake");
        }
    }
    wait_until(Duration::from_secs(10), &format!("{phase}: every worker served resumed sessions"), || {
        let now = requests_by_worker(&t.webd);
        now.len() == t.webd.workers as usize && now.iter().all(|(pid, n)| *n > before.get(pid).copied().unwrap_or(0))
    });
}

/// Sessions resume on any worker, since every worker seals and opens tickets with the
/// daemon's keys: across two workers, after `webctl restart workers` (new processes) and
/// after `webctl upgrade` (the keys carried to the new daemon), for TLS 1.3 and TLS 1.2.
#[test]
fn sessions_resume_on_any_worker_after_a_rolling_restart_and_after_an_upgrade() {
    let t = TlsWebd::start(2);
    let addr = t.tls_addr();
    let clients =
        [("TLS 1.3", t.ca.client(&[&rustls::version::TLS13])), ("TLS 1.2", t.ca.client(&[&rustls::version::TLS12]))];
    for (what, client) in &clients {
        assert_eq!(get_resuming(addr, client), Ok(false), "{what}: the first connection is a full handshake");
    }
    resumes_on_every_worker(&t, &clients, "two workers", 8);

    let old_workers = t.webd.worker_pids();
    t.webd.ctl_ok(&["restart", "workers"]);
    wait_until(Duration::from_secs(10), "every worker replaced", || {
        let now = requests_by_worker(&t.webd);
        now.len() == 2 && now.keys().all(|pid| !old_workers.contains(&(*pid as i32)))
    });
    resumes_on_every_worker(&t, &clients, "after restart workers", 4);

    let admin = t.webd.admin_addr().expect("admin address").port();
    let resumed_before = metric(&scrape(admin), "webd_tls_resumed_total", &[]).unwrap_or(0.0);
    let mut webd_pid = t.webd.pid;
    let out = t.webd.webctl(&["upgrade"]);
    let announced: Option<i32> = out.stdout.rsplit(' ').next().and_then(|p| p.trim().parse().ok());
    let _successor = announced.map(crate::upgrade::KillOnDrop);
    assert_eq!(out.code, Some(0), "upgrade failed: {}{}", out.stdout, out.stderr);
    // Only the new tree serves once the old daemon has drained out.
    wait_until(Duration::from_secs(15), "the old daemon gone", || !alive(webd_pid));
    webd_pid = announced.expect("new daemon pid");
    assert_eq!(t.webd.status_json()["status"]["pid"].as_i64(), Some(i64::from(webd_pid)));
    resumes_on_every_worker(&t, &clients, "after upgrade", 4);
    // 2 clients × (8 + 4 + 4) resumptions, the counter carried over the upgrade. Both
    // bounds are waited for: `resumed_before` may have been read before the last
    // resumptions of the restart phase were reported.
    wait_until(Duration::from_secs(10), "webd_tls_resumed_total counts them", || {
        let resumed = metric(&scrape(admin), "webd_tls_resumed_total", &[]).unwrap_or(0.0);
        resumed >= resumed_before + 8.0 && resumed >= 32.0
    });
}

/// How many workers logged that they installed ticket keys of `generation`.
fn installed(webd: &Webd, generation: u64) -> usize {
    let wanted = format!("generation={generation}");
    webd.log_text().lines().filter(|l| l.contains("TLS session ticket keys installed") && l.contains(&wanted)).count()
}

/// A ticket sealed before a key rotation still resumes after it (the previous key is
/// kept), and not after a second one; `rotate-ticket-keys` fault-file lines stand in for
/// the 12 h between rotations.
#[test]
fn a_ticket_resumes_after_one_key_rotation_and_not_after_two() {
    let files = tempfile::tempdir().expect("tempdir");
    let fault = files.path().join("faults");
    std::fs::write(&fault, "").expect("fault file");
    let env = vec![("WEBD_FAULT_FILE".to_string(), fault.to_string_lossy().into_owned())];
    let t = TlsWebd::start_with_env(2, env);
    let addr = t.tls_addr();
    let once = t.ca.client(&[&rustls::version::TLS13]);
    let once_tls12 = t.ca.client(&[&rustls::version::TLS12]);
    let twice = t.ca.client(&[&rustls::version::TLS13]);
    for client in [&once, &once_tls12, &twice] {
        assert_eq!(get_resuming(addr, client), Ok(false), "a first connection is a full handshake");
    }
    let rotate = |generation: u64| {
        let mut file = std::fs::OpenOptions::new().append(true).open(&fault).expect("open fault file");
        file.write_all(b"rotate-ticket-keys\n").expect("append");
        wait_until(Duration::from_secs(10), &format!("both workers on key generation {generation}"), || {
            installed(&t.webd, generation) >= 2
        });
    };
    rotate(2);
    assert_eq!(get_resuming(addr, &once), Ok(true), "TLS 1.3: the previous key still opens the ticket");
    assert_eq!(get_resuming(addr, &once_tls12), Ok(true), "TLS 1.2: the previous key still opens the ticket");
    rotate(3);
    assert_eq!(get_resuming(addr, &twice), Ok(false), "two rotations later the ticket's key is gone");
    assert_eq!(get_resuming(addr, &twice), Ok(true), "and the new ticket resumes");
}

/// `redirect_to_https = true`: plain HTTP answers 308 to the same target on the HTTPS
/// port, for any method, and the HTTPS listener serves as before.
#[test]
fn redirect_to_https_answers_plain_requests_with_308_to_the_tls_port() {
    let t = TlsWebd::start_with(1, Vec::new(), "redirect_to_https = true");
    let (plain, tls) = (t.webd.addr(), t.tls_addr());
    let port = tls.port();
    let cases = [
        (
            "GET /index.html?x=1&y HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
            "https://a.test:{port}/index.html?x=1&y",
        ),
        (
            "POST /form HTTP/1.1\r\nHost: [::1]:80\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
            "https://[::1]:{port}/form",
        ),
        (
            "GET http://b.test/abs?q HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            "https://b.test:{port}/abs?q",
        ),
        ("GET /old HTTP/1.0\r\n\r\n", "https://127.0.0.1:{port}/old"),
    ];
    for (raw, want) in cases {
        let want = want.replace("{port}", &port.to_string());
        let response = request(plain, raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert_eq!(response.status, 308, "{raw:?}");
        assert_eq!(response.header("location"), Some(want.as_str()), "{raw:?}");
    }
    let mut head = connect(plain);
    head.send(b"HEAD /missing HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n").expect("send HEAD");
    let response = head.head_response(Duration::from_secs(5)).expect("HEAD answered");
    assert_eq!(response.status, 308);
    assert_eq!(response.header("location"), Some(format!("https://a.test:{port}/missing").as_str()));
    assert!(head.read_to_close(Duration::from_secs(5)).bytes.is_empty(), "HEAD has no body");
    // Where it points is served.
    let answer = tls_get(tcp_to(tls), &t.client(), "a.test", "/index.html?x=1&y").expect("GET over TLS");
    assert_eq!((answer.status, answer.body.as_slice()), (200, BODY));
    // Keep-alive goes on after a redirect.
    let mut conn = KeepAlive::new(plain, Duration::from_secs(5));
    for _ in 0..2 {
        let response = conn.exchange(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").expect("keep-alive redirect");
        assert_eq!(response.status, 308);
    }
    assert!(conn.reused(), "the connection stayed open");
}

#[test]
fn redirect_to_https_without_tls_listen_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("webd.toml");
    std::fs::write(&config, "redirect_to_https = true\n").expect("write config");
    let config = config.to_string_lossy().into_owned();
    let (code, stderr) = run_webd(&["--config", &config, "--listen", "127.0.0.1:0", "--admin", "off"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("redirect_to_https") && stderr.contains("tls_listen"), "{stderr}");
}
