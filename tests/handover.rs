//! Hand-over at graceful worker retirement (SPEC section 8, first bullet): under keep-alive
//! load, `webctl restart workers`, `webctl scale` down and SIGHUP close no client's
//! connection and fail no request; the retiring workers' plain connections move to live
//! workers (`webd_connections_rescued_total{how="migrated"}`), while TLS connections still
//! get `Connection: close`.

use crate::util::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A connection a client keeps: plain TCP or TLS over it.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

type Opener = Arc<dyn Fn() -> std::io::Result<Box<dyn Stream>> + Send + Sync>;

/// Keep-alive clients that count, beside requests that succeeded and failed, every
/// connection they had to open again because the server ended theirs: after a response
/// with `Connection: close` (also counted in `announced`), or after a failure.
struct KeptLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    reopened: Arc<AtomicU64>,
    announced: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

/// What a load saw, once stopped.
#[derive(Debug)]
struct Seen {
    ok: u64,
    failed: u64,
    /// Connections the server ended (a close announced, or a failure).
    reopened: u64,
    /// Responses that said `Connection: close`.
    announced: u64,
    errors: Vec<String>,
}

impl KeptLoad {
    fn start(clients: usize, host: &str, open: Opener) -> KeptLoad {
        let load = KeptLoad {
            stop: Arc::default(),
            ok: Arc::default(),
            failed: Arc::default(),
            reopened: Arc::default(),
            announced: Arc::default(),
            errors: Arc::default(),
            threads: Vec::new(),
        };
        let request = format!("GET /index.html HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let mut load = load;
        load.threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (load.stop.clone(), load.ok.clone(), load.failed.clone());
                let (reopened, announced, errors) =
                    (load.reopened.clone(), load.announced.clone(), load.errors.clone());
                let (open, request) = (open.clone(), request.clone());
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut conn: Option<Box<dyn Stream>> = None;
                    let mut opened_before = false;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(90) {
                        let stream = match conn.as_mut() {
                            Some(stream) => stream,
                            None => {
                                if std::mem::replace(&mut opened_before, true) {
                                    reopened.fetch_add(1, Ordering::Relaxed);
                                }
                                match open() {
                                    Ok(stream) => conn.insert(stream),
                                    Err(e) => {
                                        failed.fetch_add(1, Ordering::Relaxed);
                                        errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!("connect: {e}"));
                                        continue;
                                    }
                                }
                            }
                        };
                        match exchange(stream, request.as_bytes()) {
                            Ok(r) if r.status == 200 && r.body == BODY => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if r.closes() {
                                    announced.fetch_add(1, Ordering::Relaxed);
                                    conn = None;
                                }
                            }
                            outcome => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                let error = match outcome {
                                    Ok(r) => format!("status {} body {} bytes", r.status, r.body.len()),
                                    Err(e) => e.to_string(),
                                };
                                errors.lock().unwrap_or_else(|e| e.into_inner()).push(error);
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        load
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let count = |n: &AtomicU64| n.load(Ordering::Relaxed);
        Seen {
            ok: count(&self.ok),
            failed: count(&self.failed),
            reopened: count(&self.reopened),
            announced: count(&self.announced),
            errors: self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

impl Drop for KeptLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends one request and reads its response (framed by Content-Length).
fn exchange(stream: &mut Box<dyn Stream>, request: &[u8]) -> std::io::Result<Response> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((response, _)) = parse_response(&buf) {
            return Ok(response);
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                let what = if buf.is_empty() { "closed before a response" } else { "closed mid-response" };
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e),
        }
    }
}

fn plain(addr: SocketAddr) -> Opener {
    Arc::new(move || {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Box::new(tcp) as Box<dyn Stream>)
    })
}

fn tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>, name: &'static str) -> Opener {
    Arc::new(move || {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let server = rustls::pki_types::ServerName::try_from(name).map_err(std::io::Error::other)?;
        let conn = rustls::ClientConnection::new(config.clone(), server).map_err(std::io::Error::other)?;
        Ok(Box::new(rustls::StreamOwned::new(conn, tcp)) as Box<dyn Stream>)
    })
}

fn migrated(admin: u16) -> f64 {
    metric(&scrape(admin), "webd_connections_rescued_total", &[("how", "migrated")]).unwrap_or(0.0)
}

/// Runs `retire` under keep-alive load once the load flows, waits until every worker
/// that served before is gone and the load has gone on, then stops it.
fn under_keep_alive_load(webd: &Webd, clients: usize, retire: impl FnOnce()) -> Seen {
    let load = KeptLoad::start(clients, "test", plain(webd.addr()));
    wait_until(Duration::from_secs(10), "keep-alive load to flow", || load.ok() > 100);
    let before = webd.worker_pids();
    retire();
    wait_until(Duration::from_secs(30), "every retired worker gone", || {
        let now = webd.worker_pids();
        before.iter().all(|pid| !now.contains(pid))
    });
    let ok_then = load.ok();
    wait_until(Duration::from_secs(10), "requests after the retirement", || load.ok() > ok_then + 100);
    load.finish()
}

/// No request failed, no connection was closed, and at least `moved` connections were
/// handed over (counted once the retirees' last heartbeats are in).
fn assert_nothing_closed(what: &str, seen: &Seen, admin: u16, moved: usize) {
    eprintln!("{what}: {seen:?}");
    assert_eq!(seen.failed, 0, "{what}: {} of {} requests failed: {:?}", seen.failed, seen.ok, seen.errors);
    assert_eq!(seen.reopened, 0, "{what}: the server closed {} client connections", seen.reopened);
    wait_until(Duration::from_secs(10), "migrated connections counted", || migrated(admin) >= moved as f64);
    eprintln!("{what}: webd_connections_rescued_total{{how=\"migrated\"}} {}", migrated(admin));
}

#[test]
fn a_rolling_restart_under_keep_alive_load_closes_no_connection() {
    let (webd, admin) = start_with_admin(Options { workers: 2, ..Default::default() });
    let samples = scrape(admin);
    for how in ["migrated", "idle", "replayed", "resumed", "closed"] {
        let n = metric(&samples, "webd_connections_rescued_total", &[("how", how)]);
        assert_eq!(n, Some(0.0), "webd_connections_rescued_total{{how={how:?}}} exported as 0 from the start");
    }
    let seen = under_keep_alive_load(&webd, 6, || {
        webd.ctl_ok(&["restart", "workers"]);
    });
    // Every worker was replaced, so every client's connection moved at least once.
    assert_nothing_closed("restart workers", &seen, admin, 6);
}

#[test]
fn scaling_down_under_keep_alive_load_closes_no_connection() {
    let (webd, admin) = start_with_admin(Options { workers: 3, ..Default::default() });
    let load = KeptLoad::start(6, "test", plain(webd.addr()));
    wait_until(Duration::from_secs(10), "keep-alive load to flow", || load.ok() > 100);
    let status = webd.status_json();
    let leaving: Vec<i64> = status["status"]["workers"]
        .as_array()
        .expect("workers in status")
        .iter()
        .filter(|w| w["id"].as_u64().is_some_and(|id| id >= 1))
        .filter_map(|w| w["pid"].as_i64())
        .collect();
    assert_eq!(leaving.len(), 2, "{status}");
    webd.ctl_ok(&["scale", "1"]);
    wait_until(Duration::from_secs(30), "the scaled-away workers gone", || {
        leaving.iter().all(|pid| !alive(*pid as i32))
    });
    let ok_then = load.ok();
    wait_until(Duration::from_secs(10), "requests after the scale-down", || load.ok() > ok_then + 100);
    assert_nothing_closed("scale 3 -> 1", &load.finish(), admin, 1);
}

#[test]
fn a_sighup_reload_under_keep_alive_load_closes_no_connection() {
    let config =
        format!("listen = [\"{LISTEN_ANY_PORT}\"]\nroot = \"{{root}}\"\nworkers = 2\nadmin = \"{LISTEN_ANY_PORT}\"\ncontrol_socket = \"{{socket}}\"\n");
    let webd =
        Webd::start_with(Options { workers: 2, only_args: true, config_toml: Some(config), ..Default::default() });
    let admin = webd.admin_addr().expect("status names the admin address").port();
    let seen = under_keep_alive_load(&webd, 6, || kill(webd.pid, 1)); // SIGHUP
    assert_nothing_closed("SIGHUP", &seen, admin, 6);
}

#[test]
fn tls_connections_still_get_connection_close_and_fail_nothing() {
    let files = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let cert = ca.issue(files.path(), "a", &["a.test"]);
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let args = ["--tls-listen", LISTEN_ANY_PORT, "--tls-cert", &path(&cert.cert), "--tls-key", &path(&cert.key)];
    let (webd, admin) =
        start_with_admin(Options { workers: 2, args: args.map(String::from).to_vec(), ..Default::default() });
    let tls_addr = tls_addr(&webd);
    let secure = KeptLoad::start(2, "a.test", tls(tls_addr, ca.client(&[]), "a.test"));
    let seen = under_keep_alive_load(&webd, 4, || {
        wait_until(Duration::from_secs(10), "TLS load to flow", || secure.ok() > 20);
        webd.ctl_ok(&["restart", "workers"]);
    });
    assert_nothing_closed("restart workers, plain beside TLS", &seen, admin, 4);
    let secure = secure.finish();
    eprintln!("TLS: {secure:?}");
    assert_eq!(secure.failed, 0, "{} of {} TLS requests failed: {:?}", secure.failed, secure.ok, secure.errors);
    assert!(secure.announced > 0, "TLS keep-alive connections of a retiring worker get Connection: close");
}

/// A request head half read by the retiring worker travels with its connection: the
/// rest of it, sent after the hand-over, completes it at the live worker.
#[test]
fn a_request_head_half_received_is_completed_at_the_live_worker() {
    let (webd, admin) = start_with_admin(Options { workers: 1, ..Default::default() });
    let mut conn: Box<dyn Stream> = plain(webd.addr())().expect("connect");
    let first = exchange(&mut conn, b"GET /index.html HTTP/1.1\r\nHost: test\r\n\r\n").expect("first request");
    assert_eq!((first.status, first.closes()), (200, false));
    conn.write_all(b"GET /index.html HTTP/1.1\r\nHo").expect("half a head");
    let before = webd.worker_pids();
    webd.ctl_ok(&["restart", "workers"]);
    wait_until(Duration::from_secs(30), "the retired worker gone", || {
        let now = webd.worker_pids();
        before.iter().all(|pid| !now.contains(pid))
    });
    let second = exchange(&mut conn, b"st: test\r\n\r\n").expect("the completed request");
    assert_eq!((second.status, second.body.as_slice(), second.closes()), (200, BODY, false));
    let third = exchange(&mut conn, b"GET /index.html HTTP/1.1\r\nHost: test\r\n\r\n").expect("one more");
    assert_eq!((third.status, third.closes()), (200, false));
    wait_until(Duration::from_secs(10), "the connection counted as migrated", || migrated(admin) >= 1.0);
}

#[test]
fn a_manager_restart_under_keep_alive_load_closes_no_connection() {
    // The new manager's workers read the same lanes: the old ones hand over into them.
    let (webd, admin) = start_with_admin(Options { workers: 2, ..Default::default() });
    let seen = under_keep_alive_load(&webd, 6, || {
        webd.ctl_ok(&["restart", "manager"]);
    });
    assert_nothing_closed("restart manager", &seen, admin, 6);
}

#[test]
fn a_binary_upgrade_under_keep_alive_load_closes_no_connection() {
    // The new daemon reads the old one's lanes, so the old tree's workers hand their
    // connections to the new tree's as they retire.
    let (mut webd, _) = start_with_admin(Options { workers: 2, ..Default::default() });
    let new_binary = webd.dir.path().join("webd-new");
    std::fs::copy(WEBD, &new_binary).expect("copy the binary");
    let load = KeptLoad::start(6, "test", plain(webd.addr()));
    wait_until(Duration::from_secs(10), "keep-alive load to flow", || load.ok() > 100);
    let out = webd.webctl(&["upgrade", "--binary", &new_binary.to_string_lossy()]);
    let announced: Option<i32> = out.stdout.rsplit(' ').next().and_then(|p| p.trim().parse().ok());
    let _guard = announced.map(crate::upgrade::KillOnDrop);
    assert_eq!(out.code, Some(0), "upgrade failed: {}{}", out.stdout, out.stderr);
    assert_eq!(webd.wait_exit(Duration::from_secs(40)), Some(0), "the old daemon did not exit cleanly");
    let ok_then = load.ok();
    wait_until(Duration::from_secs(10), "requests through the new tree", || load.ok() > ok_then + 100);
    let seen = load.finish();
    eprintln!("upgrade: {seen:?}");
    assert_eq!(seen.failed, 0, "upgrade: {} of {} requests failed: {:?}", seen.failed, seen.ok, seen.errors);
    assert_eq!(seen.reopened, 0, "upgrade: the server closed {} client connections", seen.reopened);
    let admin = wait_for(Duration::from_secs(10), "the new daemon's admin address", || {
        webd.status_json()["status"]["admin"].as_str()?.parse::<SocketAddr>().ok()
    });
    wait_until(Duration::from_secs(10), "migrated connections counted", || migrated(admin.port()) >= 6.0);
}
