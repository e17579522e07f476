//! The rescue of a dead worker's connections (SPEC section 8, second bullet): every
//! worker has a keeper sharing its descriptor table; when the worker dies (here SIGKILL,
//! or an abort injected with the fault-file line `crash-on-path`), the keeper sends each
//! connection with what the worker recorded of it to the slot's next worker: idle ones are
//! served on, a request received is answered (a poison request, in progress in two
//! deaths, gets 500), and a download continues from the byte the kernel says the client
//! has been sent.

use crate::util::*;
use std::time::{Duration, Instant};
use webd::worker::{records::DATA, READ_BUF_INITIAL};

fn rescued(admin: u16, how: &str) -> f64 {
    metric(&scrape(admin), "webd_connections_rescued_total", &[("how", how)]).unwrap_or(0.0)
}

/// The keeper of the worker `worker`: its child titled `webd: keeper N`.
fn keeper_of(worker: i32) -> Option<i32> {
    all_processes().into_values().find(|p| p.ppid == worker && p.argv0.starts_with("webd: keeper ")).map(|p| p.pid)
}

/// The worker pids of slot `id` once one other than `old` serves it.
fn replacement(webd: &Webd, argv0: &str, old: i32) -> i32 {
    wait_for(Duration::from_secs(10), "a replacement worker", || webd.pid_of(argv0).filter(|p| *p != old && alive(*p)))
}

/// A tree started with the fault-file line `line` (the file lives as long as the result).
fn with_fault(line: &str, mut opts: Options) -> (Webd, u16, tempfile::NamedTempFile) {
    let fault = tempfile::NamedTempFile::new().expect("fault file");
    std::fs::write(fault.path(), format!("{line}\n")).expect("fault");
    opts.env.push(("WEBD_FAULT_FILE".into(), fault.path().to_string_lossy().into_owned()));
    let (webd, admin) = start_with_admin(opts);
    (webd, admin, fault)
}

fn one_worker() -> (Webd, u16) {
    start_with_admin(Options { workers: 1, ..Default::default() })
}

#[test]
fn every_worker_has_a_keeper_that_exits_with_it_when_it_retires() {
    let webd = Webd::start_with(Options { workers: 2, ..Default::default() });
    let workers = webd.worker_pids();
    assert_eq!(workers.len(), 2, "{:?}", webd.tree());
    let keepers: Vec<i32> =
        workers.iter().map(|w| wait_for(Duration::from_secs(5), "a worker's keeper", || keeper_of(*w))).collect();
    webd.ctl_ok(&["restart", "workers"]);
    wait_until(Duration::from_secs(20), "the retired workers' keepers gone", || keepers.iter().all(|k| !alive(*k)));
    for w in webd.worker_pids() {
        wait_for(Duration::from_secs(5), "a new worker's keeper", || keeper_of(w));
    }
    assert!(!webd.log_text().contains("its keeper sent them on"), "a keeper of a retired worker sent connections");
}

#[test]
fn a_killed_workers_idle_keep_alive_connections_are_served_on() {
    let (webd, admin) = one_worker();
    let mut conns: Vec<KeepAlive> = (0..5).map(|_| KeepAlive::new(webd.addr(), Duration::from_secs(10))).collect();
    for c in &mut conns {
        let r = c.exchange(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").expect("first request");
        assert_eq!((r.status, r.body.as_slice()), (200, BODY));
    }
    let worker = webd.pid_of("webd: worker 0").expect("worker");
    let keeper = wait_for(Duration::from_secs(5), "the worker's keeper", || keeper_of(worker));
    kill(worker, SIGKILL);
    wait_until(Duration::from_secs(5), "the keeper to finish", || !alive(keeper));
    replacement(&webd, "webd: worker 0", worker);
    for (i, c) in conns.iter_mut().enumerate() {
        // `exchange`, not `exchange_retrying`: the same connection must answer.
        let r = c.exchange(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n");
        let r =
            r.unwrap_or_else(|e| panic!("connection {i} lost with its worker: {} after {} bytes", e.kind, e.received));
        assert_eq!((r.status, r.body.as_slice()), (200, BODY), "connection {i}");
    }
    wait_until(Duration::from_secs(5), "idle rescues counted", || rescued(admin, "idle") >= 5.0);
    assert_eq!(rescued(admin, "closed"), 0.0);
    let log = webd.log_text();
    assert!(log.contains("its keeper sent them on"), "no word from the keeper:\n{log}");
}

/// A 10 MiB download whose client reads slowly is in progress when its worker is
/// killed: it continues from the exact byte, and the body is the file's.
#[test]
fn a_download_in_progress_continues_from_the_byte_the_client_has() {
    let (webd, admin) = one_worker();
    let body: Vec<u8> = Rng::new(0x10_7e5c).bytes(10 << 20);
    std::fs::write(webd.root.join("10m.bin"), &body).expect("write file");
    let mut conn = connect_small_rcvbuf(webd.addr());
    conn.send(b"GET /10m.bin HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
    conn.read_at_least(1 << 20, Duration::from_secs(10)).unwrap_or_else(|e| panic!("first MiB: {}", e.kind));
    let worker = webd.pid_of("webd: worker 0").expect("worker");
    kill(worker, SIGKILL);
    let response = conn
        .response(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("download cut after {} bytes: {} {}", e.received, e.kind, e.detail));
    assert_eq!(response.status, 200);
    assert!(response.body == body, "body of {} bytes differs from the file", response.body.len());
    // The same connection serves on.
    conn.send(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").expect("next request");
    let next = conn.response(Duration::from_secs(10)).expect("next response");
    assert_eq!((next.status, next.body.as_slice()), (200, BODY));
    wait_until(Duration::from_secs(5), "the resumed download counted", || rescued(admin, "resumed") >= 1.0);
}

/// Three downloads of one file are in progress on one worker when it is killed. The
/// open-file cache gives them one fd of the file: each must go on with it (the keeper once
/// sent the shared fd with the first only, and the others were closed mid-body).
#[test]
fn downloads_sharing_the_cached_file_all_continue_when_their_worker_dies() {
    let (webd, admin) = one_worker();
    let body: Vec<u8> = Rng::new(0x5ba7ed).bytes(10 << 20);
    std::fs::write(webd.root.join("10m.bin"), &body).expect("write file");
    let mut conns: Vec<_> = (0..3).map(|_| connect_small_rcvbuf(webd.addr())).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send(b"GET /10m.bin HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
        conn.read_at_least(1 << 20, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{i}: first MiB: {}", e.kind));
    }
    let worker = webd.pid_of("webd: worker 0").expect("worker");
    kill(worker, SIGKILL);
    for (i, conn) in conns.iter_mut().enumerate() {
        let response = conn
            .response(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("download {i} cut after {} bytes: {} {}", e.received, e.kind, e.detail));
        assert_eq!(response.status, 200, "download {i}");
        assert!(response.body == body, "download {i}: body of {} bytes differs from the file", response.body.len());
    }
    wait_until(Duration::from_secs(5), "three resumed downloads counted", || rescued(admin, "resumed") >= 3.0);
    assert_eq!(rescued(admin, "closed"), 0.0);
}

/// The file of a download in progress changes before the successor continues it: the
/// connection is closed rather than sending bytes of another file.
#[test]
fn a_download_whose_file_changed_is_closed_not_continued() {
    let (webd, admin) = one_worker();
    let path = webd.root.join("10m.bin");
    std::fs::write(&path, vec![b'a'; 10 << 20]).expect("write file");
    let mut conn = connect_small_rcvbuf(webd.addr());
    conn.send(b"GET /10m.bin HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
    conn.read_at_least(1 << 20, Duration::from_secs(10)).unwrap_or_else(|e| panic!("first MiB: {}", e.kind));
    let worker = webd.pid_of("webd: worker 0").expect("worker");
    signal(worker, SIGSTOP);
    // Rewritten in place: the same inode, another size and mtime.
    std::fs::write(&path, vec![b'b'; 5 << 20]).expect("rewrite file");
    kill(worker, SIGKILL);
    // What was queued on the socket still arrives (and, sendfile queueing page-cache
    // pages, may show the new bytes): then the connection ends, the body incomplete.
    let end = conn.read_to_close(Duration::from_secs(20));
    assert!(!end.timed_out, "the connection was neither closed nor continued");
    assert!(end.bytes.len() < 10 << 20, "the whole body arrived ({} bytes)", end.bytes.len());
    wait_until(Duration::from_secs(5), "the closed rescue counted", || rescued(admin, "closed") >= 1.0);
    assert_eq!(rescued(admin, "resumed"), 0.0);
}

/// One worker that aborts after a read bringing `/unrecorded` (long timeouts), and a
/// connection whose first request was answered 200, sent with `then` after it; with the
/// worker's pid.
fn served_once_by_a_worker_crashing_after_reading(then: &[u8]) -> (Webd, u16, tempfile::NamedTempFile, Conn, i32) {
    let args = ["--keepalive-timeout", "60000", "--header-timeout", "60000"].map(String::from).to_vec();
    let (webd, admin, fault) =
        with_fault("crash-after-read /unrecorded", Options { workers: 1, args, ..Default::default() });
    let mut conn = connect(webd.addr());
    conn.send(&[&b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n"[..], then].concat()).expect("first request");
    let first = conn.response(Duration::from_secs(10)).expect("first response");
    assert_eq!((first.status, first.body.as_slice()), (200, BODY));
    let worker = webd.pid_of("webd: worker 0").expect("worker");
    (webd, admin, fault, conn, worker)
}

/// A worker killed between reading a request and recording it (the fault-file line
/// `crash-after-read`, after the `recv`): the request's first bytes were read straight
/// into the connection's shared data slot, so its keeper finds them there (the kernel's
/// count says how many) and the successor answers the request, on the same connection.
#[test]
fn a_request_read_by_a_worker_killed_before_recording_it_is_answered_by_its_successor() {
    answered_by_the_successor_once_its_worker_crashed(b"", b"GET /unrecorded HTTP/1.1\r\nHost: t\r\n\r\n");
}

/// The same with a head split across reads: the read of its rest lands in the data slot
/// after the start (copied there first), and the successor answers the whole request.
#[test]
fn a_split_head_read_by_a_worker_killed_before_recording_its_rest_is_answered_by_its_successor() {
    // The second request's start arrives with the first, its rest once the first is
    // answered (the worker has read the start by then).
    answered_by_the_successor_once_its_worker_crashed(b"GET /unrec", b"orded HTTP/1.1\r\nHost: t\r\n\r\n");
}

/// A request for `/unrecorded` (its bytes: `start`, sent with a first request, then
/// `rest`) kills the worker that reads its end; the successor answers it 404 on the same
/// connection, which then serves on.
fn answered_by_the_successor_once_its_worker_crashed(start: &[u8], rest: &[u8]) {
    let (webd, admin, _fault, mut conn, worker) = served_once_by_a_worker_crashing_after_reading(start);
    conn.send(rest).expect("second request");
    let second = conn
        .response(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no answer: {} after {} bytes\n{}", e.kind, e.received, webd.log_text()));
    assert_eq!(second.status, 404, "the successor answers the request the dead worker read");
    assert!(!alive(worker), "the fault did not kill the worker");
    wait_until(Duration::from_secs(5), "the replay counted", || rescued(admin, "replayed") >= 1.0);
    conn.send(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").expect("third request");
    let third = conn.response(Duration::from_secs(10)).expect("the connection serves on");
    assert_eq!((third.status, third.body.as_slice()), (200, BODY));
}

/// The window that stays: a head longer than the data slot holds is read past it into
/// the worker's own buffer, and a worker killed before recording that read leaves a
/// record that misses those bytes. The successor sees from the kernel's count that more
/// was read than recorded and closes the connection at once: the client sees a close (as
/// in the keep-alive race it retries on), not a request that nobody will ever answer
/// waiting out the keep-alive timeout.
#[test]
fn a_request_read_and_not_recorded_by_a_dead_worker_closes_its_connection_at_once() {
    let (webd, admin, _fault, mut conn, worker) = served_once_by_a_worker_crashing_after_reading(b"");
    // One write of it all: the first read fills the slot (DATA bytes, recorded), the next
    // one, into the rest of the read buffer, cannot land in the slot, and it completes the
    // fault's text (which ends in those bytes) before any record is written.
    let (start, then) = ("GET /index.html HTTP/1.1\r\nHost: t\r\nX-Pad: ", "\r\nX-Then: /unrecorded");
    const _: () = assert!(DATA < READ_BUF_INITIAL, "the second read is past the slot");
    let text_end = (DATA + READ_BUF_INITIAL) / 2;
    let pad = "a".repeat(text_end - start.len() - then.len());
    let head = format!("{start}{pad}{then}\r\n\r\n");
    conn.send(head.as_bytes()).expect("second request");
    let end = conn.read_to_close(Duration::from_secs(10));
    assert!(!end.timed_out, "the connection was left open with its request unanswered");
    assert!(end.bytes.is_empty(), "{} bytes came back for a request nobody could know", end.bytes.len());
    assert!(!alive(worker), "the fault did not kill the worker");
    wait_until(Duration::from_secs(5), "the closed rescue counted", || rescued(admin, "closed") >= 1.0);
    let log = webd.log_text();
    assert!(log.contains("the dead worker read bytes it had not recorded"), "no reason logged:\n{log}");
    // The pool serves on.
    let r = get(webd.addr(), "/index.html").expect("a request after the rescue");
    assert_eq!(r.status, 200);
}

/// A request that aborts every worker that answers it: the first two crashes are
/// rescued (the request replayed), the third attempt is answered 500 and logged, the
/// pool recovers, and keep-alive clients beside it see nothing.
#[test]
fn a_request_that_crashes_workers_is_answered_500_after_two_deaths() {
    let (webd, admin, _fault) = with_fault("crash-on-path /boom", Options { workers: 2, ..Default::default() });
    let load = KeepAliveLoad::start(webd.addr(), 4, "/index.html", BODY.to_vec());
    wait_until(Duration::from_secs(5), "load to flow", || load.ok() > 50);
    let started = Instant::now();
    let mut conn = connect(webd.addr());
    conn.send(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
    let response = conn.response(Duration::from_secs(30)).unwrap_or_else(|e| {
        panic!("no answer to the poison request: {} after {} bytes\n{}", e.kind, e.received, webd.log_text())
    });
    eprintln!("poison request answered {} after {} ms", response.status, started.elapsed().as_millis());
    assert_eq!(response.status, 500);
    assert_eq!(response.header("connection"), Some("close"));
    wait_until(Duration::from_secs(10), "both workers up again", || {
        webd.status_json()["status"]["workers"]
            .as_array()
            .is_some_and(|ws| ws.len() == 2 && ws.iter().all(|w| w["state"] == "idle" || w["state"] == "busy"))
    });
    let ok = load.ok();
    wait_until(Duration::from_secs(10), "load after the recovery", || load.ok() > ok + 50);
    let (ok, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{failed} of {ok} requests beside the poison one failed: {errors:?}");
    let samples = scrape(admin);
    let poison = metric(&samples, "webd_poison_requests_total", &[]);
    let crashes = metric(&samples, "webd_restarts_total", &[("role", "worker"), ("reason", "crash")]);
    eprintln!("poison {poison:?}, worker crashes {crashes:?}, replayed {}", rescued(admin, "replayed"));
    assert_eq!(poison, Some(1.0));
    assert_eq!(crashes, Some(2.0), "the poison request was replayed more than once");
    assert!(rescued(admin, "replayed") >= 1.0);
    let log = webd.log_text();
    let line = log.lines().find(|l| l.contains("poison request")).unwrap_or_else(|| panic!("not logged:\n{log}"));
    assert!(line.contains("/boom") && line.contains("127.0.0.1"), "path or client missing: {line}");
    assert_eq!(get(webd.addr(), "/index.html").expect("GET after").status, 200);
}

/// A worker that dies serving the first of several connections that arrived at once
/// leaves the others untouched (in its table, or still in its lane): its keeper sends
/// them on as new, or its successor reads them, and each is answered.
#[test]
fn connections_queued_behind_one_that_kills_its_worker_are_all_served() {
    let (webd, _admin, _fault) =
        with_fault("crash-after-read /unrecorded", Options { workers: 1, ..Default::default() });
    // Drained, the listener takes nothing: the connections queue in the backlog, and the
    // resume finds them all at once.
    webd.ctl_ok(&["drain"]);
    let worker = webd.pid_of("webd: worker 0").expect("worker");
    let mut first = connect(webd.addr());
    first.send(b"GET /unrecorded HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("first request");
    let mut rest: Vec<Conn> = (0..4).map(|_| connect(webd.addr())).collect();
    for conn in &mut rest {
        conn.send(b"GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("request");
    }
    webd.ctl_ok(&["resume"]);
    // The crashing request itself is replayed from its data slot and answered (404).
    let end = first.read_to_close(Duration::from_secs(10));
    let answer = parse_response(&end.bytes).map(|(r, _)| r.status);
    assert_eq!(answer, Some(404), "the crashing request: {} bytes, timed out {}", end.bytes.len(), end.timed_out);
    assert!(!alive(worker), "the fault did not kill the worker");
    for (n, conn) in rest.iter_mut().enumerate() {
        let end = conn.read_to_close(Duration::from_secs(10));
        let response = parse_response(&end.bytes).map(|(r, _)| r);
        assert!(
            response.as_ref().is_some_and(|r| r.status == 200 && r.body == BODY),
            "connection {n} queued behind the dead worker's: {} bytes, timed out {}\n{}",
            end.bytes.len(),
            end.timed_out,
            webd.log_text()
        );
    }
}

/// A client that sends its request and then its FIN (`shutdown(SHUT_WR)`, as `nc -N` or an
/// HTTP/1.0 tool does) still has it answered when the worker dies on it: the FIN's
/// sequence number is not taken for a request byte the dead worker read unrecorded (it
/// was, and the successor closed the connection unanswered).
#[test]
fn a_half_closed_clients_request_survives_its_workers_death() {
    use std::io::{Read, Write};
    let (webd, _admin, _fault) = with_fault("crash-on-path /boom", Options { workers: 2, ..Default::default() });
    let mut client = std::net::TcpStream::connect(webd.addr()).expect("connect");
    client.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    client.write_all(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
    client.shutdown(std::net::Shutdown::Write).expect("half close");
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    let response = parse_response(&answer).map(|(r, _)| r);
    // Two workers die on it; the third attempt answers the poison request.
    assert!(
        response.as_ref().is_some_and(|r| r.status == 500),
        "no answer after the worker's death ({} bytes)\n{}",
        answer.len(),
        webd.log_text()
    );
}
