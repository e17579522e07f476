//! The control plane: webctl against the real daemon; graceful restarts that lose no
//! request; scale; drain/resume; hostile control clients.

use crate::util::*;
use std::time::Duration;

fn pid_set(webd: &Webd) -> Vec<i32> {
    let mut pids: Vec<i32> = webd.tree().into_iter().map(|p| p.pid).collect();
    pids.sort();
    pids
}

#[test]
fn status_matches_the_process_table() {
    let webd = Webd::start_with(Options { workers: 3, ..Default::default() });
    let status = webd.status_json();
    assert_eq!(status["ok"], true);
    let s = &status["status"];
    assert_eq!(s["pid"].as_i64(), Some(webd.pid as i64));
    assert_eq!(s["state"], "running");
    for role in ["listener", "manager"] {
        let p = s["processes"].as_array().expect("processes").iter().find(|p| p["role"] == role).expect(role);
        assert_eq!(p["pid"].as_i64(), webd.pid_of(&format!("webd: {role}")).map(i64::from), "{role}");
        assert_eq!(p["state"], "running");
        if role == "listener" {
            assert_eq!(p["keeper_pid"].as_i64(), webd.pid_of("webd: keeper").map(i64::from), "keeper");
        }
    }
    let workers = s["workers"].as_array().expect("workers");
    assert_eq!(workers.len(), 3);
    for w in workers {
        let id = w["id"].as_i64().expect("id");
        assert_eq!(w["pid"].as_i64(), webd.pid_of(&format!("webd: worker {id}")).map(i64::from));
    }
    // The human table names every process with its pid (a worker's keeper once its
    // worker's first heartbeat has reported it).
    let named = || {
        let table = webd.ctl_ok(&["status"]);
        pid_set(&webd).into_iter().all(|pid| table.contains(&pid.to_string()))
    };
    wait_until(Duration::from_secs(5), "every process in the status table", named);
}

fn restart_under_load(target: &[&str], replaced: &dyn Fn(&Webd) -> Vec<i32>) {
    let webd = Webd::start();
    let before = replaced(&webd);
    let load = Load::start(webd.addr(), 4, "/index.html", BODY.to_vec());
    wait_until(Duration::from_secs(5), "load to flow", || load.ok() > 20);
    let mut args = vec!["restart"];
    args.extend_from_slice(target);
    webd.ctl_ok(&args);
    // The command answers once the replacement serves; the old processes then drain out.
    wait_until(Duration::from_secs(10), "the old processes gone", || before.iter().all(|p| !alive(*p)));
    let after = replaced(&webd);
    assert!(!after.is_empty() && after.iter().all(|p| !before.contains(p)), "{target:?}: {before:?} -> {after:?}");
    let ok_then = load.ok();
    wait_until(Duration::from_secs(10), "requests after the restart", || load.ok() > ok_then + 50);
    let (ok, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{target:?}: {failed} of {ok} failed: {errors:?}");
}

#[test]
fn restart_listener_under_load_fails_no_request() {
    restart_under_load(&["listener"], &|w| w.pids("webd: listener"));
}

#[test]
fn restart_manager_under_load_fails_no_request() {
    restart_under_load(&["manager"], &|w| w.pids("webd: manager"));
}

#[test]
fn restart_workers_under_load_fails_no_request() {
    restart_under_load(&["workers"], &|w| {
        let tree = w.tree();
        let manager = w.pid_of("webd: manager").unwrap_or(0);
        tree.into_iter().filter(|p| p.ppid == manager && p.argv0.starts_with("webd: worker")).map(|p| p.pid).collect()
    });
}

#[test]
fn restart_worker_n_replaces_exactly_that_worker_and_scale_resizes() {
    let webd = Webd::start_with(Options { workers: 2, ..Default::default() });
    let w0 = webd.pid_of("webd: worker 0").expect("worker 0");
    let w1 = webd.pid_of("webd: worker 1").expect("worker 1");
    webd.ctl_ok(&["restart", "worker", "1"]);
    wait_until(Duration::from_secs(5), "old worker 1 gone", || !alive(w1));
    assert_eq!(webd.pid_of("webd: worker 0"), Some(w0));
    assert!(webd.pid_of("webd: worker 1").is_some_and(|p| p != w1));

    webd.ctl_ok(&["scale", "3"]);
    assert_eq!(serving_workers(&webd), 3);
    wait_until(Duration::from_secs(5), "3 worker processes", || webd.worker_pids().len() == 3);
    webd.ctl_ok(&["scale", "1"]);
    assert_eq!(serving_workers(&webd), 1);
    wait_until(Duration::from_secs(5), "1 worker process", || webd.worker_pids().len() == 1);
    assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);

    let out = webd.webctl(&["restart", "worker", "7"]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
}

#[test]
fn scaling_beyond_the_starting_pool_serves_on_every_new_worker_and_survives_a_manager_restart() {
    let webd = Webd::start_with(Options { workers: 1, ..Default::default() });
    // Slots 1..4 get lanes made on the fly; each new worker must actually serve.
    webd.ctl_ok(&["scale", "4"]);
    wait_until(Duration::from_secs(5), "4 worker processes", || webd.worker_pids().len() == 4);
    let served_by_all = || {
        let status = webd.status_json();
        let workers = status["status"]["workers"].as_array().cloned().unwrap_or_default();
        workers.len() == 4 && workers.iter().all(|w| w["requests"].as_u64().unwrap_or(0) > 0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !served_by_all() {
        assert!(std::time::Instant::now() < deadline, "not every new worker served: {}", webd.status_json());
        for _ in 0..20 {
            assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);
        }
    }
    // The size is the daemon's too: a new manager starts 4 workers, not the initial 1.
    webd.ctl_ok(&["restart", "manager"]);
    wait_until(Duration::from_secs(5), "4 workers under the new manager", || {
        serving_workers(&webd) == 4 && webd.worker_pids().len() == 4
    });
    assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);
}

/// Workers in status that are not draining away.
fn serving_workers(webd: &Webd) -> usize {
    let status = webd.status_json();
    let workers = status["status"]["workers"].as_array().cloned().unwrap_or_default();
    workers.iter().filter(|w| w["state"] != "draining").count()
}

#[test]
fn drain_holds_new_connections_until_resume() {
    let webd = Webd::start();
    webd.ctl_ok(&["drain"]);
    assert_eq!(webd.status_json()["status"]["state"], "draining");
    // A request opened during the drain waits in the backlog and completes on resume.
    let addr = webd.addr();
    let pending = std::thread::spawn(move || get(addr, "/index.html"));
    std::thread::sleep(Duration::from_millis(300)); // give it time to be (not) served
    assert!(!pending.is_finished(), "request served while draining");
    webd.ctl_ok(&["resume"]);
    let r = pending.join().expect("client thread").expect("GET after resume");
    assert_eq!(r.status, 200);
    assert_eq!(webd.status_json()["status"]["state"], "running");
}

#[test]
fn hostile_control_input_gets_errors_and_changes_nothing() {
    let webd = Webd::start();
    let before = pid_set(&webd);
    for line in [
        &b"garbage\n"[..],
        b"{\"cmd\":\"reboot\"}\n",
        b"{\"cmd\":\"restart\",\"target\":\"daemon\"}\n",
        b"{\"cmd\":\"scale\",\"workers\":0}\n",
        b"\xff\xfe\n",
    ] {
        let reply = webd.control_raw(line).expect("a reply");
        let v: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
        assert_eq!(v["ok"], false, "{reply}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{reply}");
    }
    // An 8 MB line: an error or a closed connection, nothing else.
    let mut huge = vec![b'x'; 8 * 1024 * 1024];
    huge.push(b'\n');
    if let Some(reply) = webd.control_raw(&huge) {
        assert!(reply.contains("\"ok\":false"), "{reply}");
    }
    assert_eq!(pid_set(&webd), before, "hostile input changed the tree");
    assert_eq!(webd.status_json()["ok"], true);
    assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);
}

#[test]
fn another_uid_is_refused() {
    if !nix_is_root() {
        eprintln!("skipped: needs root to run a client as nobody");
        return;
    }
    let webd = Webd::start();
    // The socket is 0600 inside a 0700 dir; open the dir so only SO_PEERCRED decides.
    let dir = webd.control_socket.parent().expect("dir").to_path_buf();
    let sock = webd.control_socket.clone();
    chmod(webd.dir.path(), 0o711);
    chmod(&dir, 0o777);
    chmod(&sock, 0o666);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(webctl_path())
        .arg("--control-socket")
        .arg(&sock)
        .arg("--json")
        .arg("status")
        .output()
        .expect("setpriv");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Exit 1 with the daemon's refusal (3 would mean the socket was not even reachable).
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("permission denied"), "{stdout}");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[test]
fn webctl_exit_codes_for_unreachable_daemon_and_bad_arguments() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("absent.sock");
    let out = std::process::Command::new(webctl_path())
        .arg("--control-socket")
        .arg(&sock)
        .arg("status")
        .output()
        .expect("webctl");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&*sock.to_string_lossy()));
    let out = std::process::Command::new(webctl_path()).args(["scale", "many"]).output().expect("webctl");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let webd = Webd::start();
    let (code, err) = run_webd(&[
        "--listen",
        LISTEN_ANY_PORT,
        "--root",
        &webd.root.to_string_lossy(),
        "--admin",
        "off",
        "--control-socket",
        &webd.control_socket.to_string_lossy(),
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already running"));
    assert_eq!(webd.status_json()["ok"], true, "first daemon disturbed");
}

/// A drain is in force as soon as the daemon has it (readiness, the listener, any new
/// workers); a stopped manager that cannot confirm it must not make `webctl drain` fail
/// (it runs in Kubernetes preStop hooks).
#[test]
fn drain_and_resume_with_a_stopped_manager_still_take_effect_and_answer_ok() {
    let webd = Webd::start();
    let manager = webd.pid_of("webd: manager").expect("manager");
    kill(manager, SIGSTOP);
    let out = webd.ctl_ok(&["drain"]);
    assert!(out.contains("draining"), "{out}");
    assert_eq!(webd.status_json()["status"]["state"], "draining");
    kill(manager, SIGCONT);
    webd.ctl_ok(&["resume"]);
    assert_eq!(webd.status_json()["status"]["state"], "running");
    wait_until(Duration::from_secs(10), "serving again after resume", || {
        get(webd.addr(), "/index.html").is_ok_and(|r| r.status == 200)
    });
}

#[test]
fn drain_answers_with_connection_close_and_closes_idle_keep_alive_at_the_drain_timeout() {
    let webd = Webd::start_with(Options {
        args: vec!["--drain-timeout".into(), "400".into(), "--keepalive-timeout".into(), "60000".into()],
        ..Default::default()
    });
    let limit = Duration::from_secs(10);
    let mut busy = connect(webd.addr());
    let mut idle = connect(webd.addr());
    for s in [&mut busy, &mut idle] {
        s.send(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        assert_eq!(s.response(limit).expect("first response").status, 200);
    }
    webd.ctl_ok(&["drain"]);
    // The next response on a keep-alive connection says close.
    busy.send(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let end = busy.read_to_close(limit);
    assert!(end.eof, "response then close: timed out {}", end.timed_out);
    let (r, _) = parse_response(&end.bytes).expect("response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    // The idle one is closed at the drain timeout, long before the keep-alive timeout.
    let end = idle.read_to_close(limit);
    assert!(end.eof && end.bytes.is_empty(), "closed, not reset: {end:?}");
}

#[test]
fn operator_signals_sent_to_every_process_do_not_kill_children() {
    let webd = Webd::start();
    let children: Vec<i32> = webd.tree().into_iter().map(|p| p.pid).collect();
    for sig in [2, 10, 12] {
        // SIGINT (a terminal's Ctrl-C reaches the whole group), SIGUSR1, SIGUSR2
        for pid in &children {
            kill(*pid, sig);
        }
    }
    kill(children[0], 1); // SIGHUP to a child only
    assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);
    wait_until(Duration::from_secs(2), "status after the signals", || webd.status_json()["ok"] == true);
    for pid in &children {
        assert!(alive(*pid), "child {pid} died of an operator signal");
    }
}
