//! The supervised process tree: roles visible in ps, crash and hang recovery without
//! lost requests, backoff, and no child outliving the daemon.

use crate::util::*;
use std::time::{Duration, Instant};

#[test]
fn get_returns_the_files_exact_bytes_and_ps_shows_every_role() {
    let webd = Webd::start_with(Options { workers: 3, ..Default::default() });
    let bytes: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(webd.root.join("blob.bin"), &bytes).expect("write file");
    let r = get(webd.addr(), "/blob.bin").expect("GET");
    assert_eq!(r.status, 200);
    assert!(r.body == bytes, "body differs from the file");

    let names: Vec<String> = webd.tree().into_iter().map(|p| p.argv0).collect();
    assert_eq!(names.iter().filter(|n| *n == "webd: listener").count(), 1, "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "webd: manager").count(), 1, "{names:?}");
    for k in 0..3 {
        assert_eq!(names.iter().filter(|n| **n == format!("webd: worker {k}")).count(), 1, "{names:?}");
    }
}

/// The listener runs under `SCHED_BATCH` (woken by a connection while the cores are busy,
/// it waits for the running worker to yield instead of preempting it); its keeper, the
/// manager and the workers keep the normal policy; a listener restarted sets it again.
#[test]
fn the_listener_alone_runs_under_sched_batch_and_a_restarted_one_too() {
    const BATCH: u32 = 3;
    let webd = Webd::start();
    let listener = webd.pid_of("webd: listener").expect("listener");
    wait_until(Duration::from_secs(5), "the listener under SCHED_BATCH", || sched_policy(listener) == Some(BATCH));
    for p in webd.tree().iter().filter(|p| p.pid != listener) {
        assert_eq!(sched_policy(p.pid), Some(0), "{} ({}) left the normal policy", p.argv0, p.pid);
    }
    kill(listener, SIGKILL);
    let next =
        wait_for(Duration::from_secs(5), "a new listener", || webd.pid_of("webd: listener").filter(|p| *p != listener));
    wait_until(Duration::from_secs(5), "the new listener under SCHED_BATCH", || sched_policy(next) == Some(BATCH));
}

#[test]
fn listener_sigkill_under_load_fails_no_request() {
    let webd = Webd::start();
    let listener = webd.pid_of("webd: listener").expect("listener");
    let load = Load::start(webd.addr(), 4, "/index.html", BODY.to_vec());
    wait_until(Duration::from_secs(5), "load to flow", || load.ok() > 20);
    kill(listener, SIGKILL);
    let killed_at = Instant::now();
    let replacement =
        wait_for(Duration::from_secs(5), "a new listener", || webd.pid_of("webd: listener").filter(|p| *p != listener));
    let replaced_in = killed_at.elapsed();
    // Keep the load on for the rest of the 3 s window, with the new listener serving.
    let before = load.ok();
    wait_until(Duration::from_secs(10), "requests through the new listener", || load.ok() > before + 50);
    while killed_at.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, failed, errors) = load.finish();
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok > 100, "only {ok} requests succeeded");
    assert!(alive(replacement));
    assert!(replaced_in < Duration::from_secs(1), "listener replaced after {replaced_in:?}");
}

#[test]
fn stopped_listener_is_replaced_then_killed_and_reaped() {
    let webd = Webd::start();
    let listener = webd.pid_of("webd: listener").expect("listener");
    kill(listener, SIGSTOP);
    let replacement = wait_for(Duration::from_secs(5), "a new listener", || {
        webd.pids("webd: listener").into_iter().find(|p| *p != listener)
    });
    assert!(get(webd.addr(), "/index.html").is_ok_and(|r| r.status == 200));
    // The stopped one gets the grace period, then SIGKILL and waitpid: no zombie.
    wait_until(Duration::from_secs(5), "the stopped listener to be reaped", || !exists(listener));
    assert!(alive(replacement));
    let log = webd.log_text();
    assert!(log.contains("missed heartbeat"), "no missed-heartbeat warning in log");
    assert!(log.contains("hung"), "no hang in log");
}

#[test]
fn manager_sigkill_brings_a_new_manager_with_a_full_pool() {
    let webd = Webd::start_with(Options { workers: 2, ..Default::default() });
    let manager = webd.pid_of("webd: manager").expect("manager");
    let old_workers = webd.worker_pids();
    kill(manager, SIGKILL);
    let new_manager =
        wait_for(Duration::from_secs(5), "a new manager", || webd.pid_of("webd: manager").filter(|p| *p != manager));
    wait_until(Duration::from_secs(5), "a full new pool", || {
        let tree = webd.tree();
        tree.iter().filter(|p| p.ppid == new_manager && p.argv0.starts_with("webd: worker")).count() == 2
    });
    for _ in 0..20 {
        let r = get(webd.addr(), "/index.html").expect("GET after manager crash");
        assert_eq!(r.status, 200);
    }
    // The old workers had nothing to finish: they exit and are reaped.
    wait_until(Duration::from_secs(5), "old workers gone", || old_workers.iter().all(|p| !exists(*p)));
}

#[test]
fn worker_sigkill_is_replaced_and_other_workers_are_unaffected() {
    let webd = Webd::start_with(Options { workers: 2, ..Default::default() });
    let victim = webd.pid_of("webd: worker 0").expect("worker 0");
    let survivor = webd.pid_of("webd: worker 1").expect("worker 1");
    let load = Load::start(webd.addr(), 4, "/index.html", BODY.to_vec());
    wait_until(Duration::from_secs(5), "load to flow", || load.ok() > 20);
    kill(victim, SIGKILL);
    let replacement =
        wait_for(Duration::from_secs(5), "a new worker 0", || webd.pid_of("webd: worker 0").filter(|p| *p != victim));
    let before = load.ok();
    wait_until(Duration::from_secs(10), "requests after the crash", || load.ok() > before + 50);
    let (ok, failed, errors) = load.finish();
    // Only requests in progress inside the killed worker may fail: at most one per client.
    assert!(failed <= 4, "{failed} failed of {ok}: {errors:?}");
    assert_eq!(webd.pid_of("webd: worker 1"), Some(survivor), "worker 1 was disturbed");
    assert!(alive(replacement));
    assert!(!exists(victim), "killed worker not reaped");
}

#[test]
fn sigterm_stops_every_child_within_grace() {
    let mut webd = Webd::start();
    let children: Vec<i32> = webd.tree().into_iter().map(|p| p.pid).collect();
    assert!(children.len() >= 4);
    kill(webd.pid, SIGTERM);
    let code = webd.wait_exit(Duration::from_secs(3));
    assert_eq!(code, Some(0), "daemon did not exit cleanly");
    wait_until(Duration::from_secs(1), "every child gone", || children.iter().all(|p| !alive(*p)));
}

#[test]
fn sigkill_of_the_daemon_takes_every_child_down() {
    let mut webd = Webd::start();
    // A keep-alive connection held open in a worker must not keep it alive.
    let mut held = connect(webd.addr());
    held.send(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let children: Vec<i32> = webd.tree().into_iter().map(|p| p.pid).collect();
    kill(webd.pid, SIGKILL);
    let _ = webd.wait_exit(Duration::from_secs(2));
    wait_until(Duration::from_secs(1), "every child gone", || children.iter().all(|p| !alive(*p)));
}

#[test]
fn a_role_failing_at_every_start_backs_off_and_recovers_when_fixed() {
    let fault = tempfile::NamedTempFile::new().expect("fault file");
    let fault_path = fault.path().to_string_lossy().into_owned();
    let webd =
        Webd::start_with(Options { env: vec![("WEBD_FAULT_FILE".into(), fault_path.clone())], ..Default::default() });
    std::fs::write(&fault_path, "listener\n").expect("inject fault");
    let listener = webd.pid_of("webd: listener").expect("listener");
    kill(listener, SIGKILL);
    wait_until(Duration::from_secs(15), "backoff in the log", || webd.log_text().contains("backoff"));
    assert!(alive(webd.pid), "daemon must stay up");
    std::fs::write(&fault_path, "").expect("remove fault");
    // The next start may be a capped backoff delay (5 s) away, on a loaded machine.
    wait_until(Duration::from_secs(20), "a healthy listener again", || {
        webd.pid_of("webd: listener").is_some() && get(webd.addr(), "/index.html").is_ok_and(|r| r.status == 200)
    });
}

#[test]
fn a_stopped_then_killed_manager_delays_and_loses_no_connection() {
    let webd = Webd::start();
    let manager = webd.pid_of("webd: manager").expect("manager");
    // Connections go listener → worker lane; the manager only steers. Stopped, it
    // holds nothing up.
    kill(manager, SIGSTOP);
    let addr = webd.addr();
    for _ in 0..5 {
        let r = get(addr, "/index.html").expect("served while the manager is stopped");
        assert_eq!((r.status, r.body.as_slice()), (200, BODY));
    }
    // Killed, its workers finish and exit, and the next manager's workers read the same
    // lanes: connections made meanwhile wait there and are served.
    let clients: Vec<_> = (0..5).map(|_| std::thread::spawn(move || get(addr, "/index.html"))).collect();
    kill(manager, SIGKILL);
    let more: Vec<_> = (0..5).map(|_| std::thread::spawn(move || get(addr, "/index.html"))).collect();
    for client in clients.into_iter().chain(more) {
        let r = client.join().expect("client thread").expect("request served across the manager crash");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, BODY);
    }
}

#[test]
fn workers_of_a_dead_manager_finish_their_requests_then_exit() {
    let webd = Webd::start_with(Options { workers: 1, ..Default::default() });
    let big: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(webd.root.join("big.bin"), &big).expect("write");
    let old_worker = webd.pid_of("webd: worker 0").expect("worker");
    // A slow download in progress in the worker.
    let limit = Duration::from_secs(20);
    let mut s = connect_small_rcvbuf(webd.addr());
    s.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("request");
    s.read_at_least(1, limit).expect("first bytes");

    let manager = webd.pid_of("webd: manager").expect("manager");
    kill(manager, SIGKILL);
    let end = s.read_to_close(limit);
    assert!(end.eof, "the rest of the body: timed out {} after {} bytes", end.timed_out, end.bytes.len());
    let got = end.bytes;
    let received = got.len();
    let (r, _) = parse_response(&got).expect("a whole response");
    assert_eq!(r.status, 200);
    assert!(r.body == big, "body differs ({received} bytes received)");
    wait_until(Duration::from_secs(5), "the old worker to exit once done", || !exists(old_worker));
}

#[test]
fn a_killed_keeper_is_replaced_by_its_listener_and_status_follows() {
    let webd = Webd::start();
    let listener = webd.pid_of("webd: listener").expect("listener");
    let keeper = webd.pid_of("webd: keeper").expect("keeper");
    assert_eq!(read_proc(keeper).map(|p| p.ppid), Some(listener), "the keeper is the listener's child");
    kill(keeper, SIGKILL);
    let next = wait_for(Duration::from_secs(5), "a new keeper reported in status", || {
        let status = webd.status_json();
        let listener_status =
            status["status"]["processes"].as_array()?.iter().find(|p| p["role"] == "listener")?.clone();
        let reported = listener_status["keeper_pid"].as_i64()? as i32;
        (reported != keeper && webd.pid_of("webd: keeper") == Some(reported)).then_some(reported)
    });
    assert_eq!(read_proc(next).map(|p| p.ppid), Some(listener));
    // Forked by a listener under SCHED_BATCH: a rescue should not wait for a CPU's slice.
    wait_until(Duration::from_secs(5), "the new keeper under the normal policy", || sched_policy(next) == Some(0));
    assert!(!exists(keeper), "the killed keeper was not reaped");
    assert_eq!(webd.pid_of("webd: listener"), Some(listener), "the listener must be unaffected");
    let r = get(webd.addr(), "/index.html").expect("GET");
    assert_eq!((r.status, r.body.as_slice()), (200, BODY));
}

/// A burst of long-lived connections (clients reconnecting at once after a restart, a
/// load balancer opening its pool) spreads over the workers: the listener keeps only
/// short runs of connections on one awake worker.
#[test]
fn a_burst_of_keep_alive_connections_spreads_over_the_workers() {
    let webd = Webd::start_with(Options { workers: 2, ..Default::default() });
    let burst: Vec<std::net::TcpStream> =
        (0..64).map(|_| std::net::TcpStream::connect(webd.addr()).expect("connect")).collect();
    let per_worker = wait_for(Duration::from_secs(10), "64 connections in the workers' status", || {
        let status = webd.status_direct(Duration::from_secs(2))?;
        let active: Vec<u64> =
            status["workers"].as_array()?.iter().filter_map(|w| w["active_connections"].as_u64()).collect();
        (active.iter().sum::<u64>() == 64).then_some(active)
    });
    assert!(per_worker.iter().all(|&n| n >= 16), "64 connections opened at once, per worker: {per_worker:?}");
    drop(burst);
}
