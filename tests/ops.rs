//! Operations: config file, SIGHUP reload, systemd notify, privilege drop, access log.

use crate::util::*;
use std::time::Duration;

fn config_with(workers: u32, extra: &str) -> String {
    format!(
        "listen = [\"{LISTEN_ANY_PORT}\"]\nroot = \"{{root}}\"\nworkers = {workers}\nadmin = \"off\"\n\
         control_socket = \"{{socket}}\"\naccess_log = \"{{dir}}/access.log\"\n{extra}"
    )
}

#[test]
fn a_config_file_sets_every_key_and_flags_override_it() {
    let webd = Webd::start_with(Options {
        workers: 3,
        only_args: true,
        config_toml: Some(config_with(3, "")),
        ..Default::default()
    });
    assert_eq!(webd.worker_pids().len(), 3);
    assert_eq!(get(webd.addr(), "/index.html").expect("GET").body, BODY);
    assert!(webd.control_socket.exists(), "control_socket key not used");
    wait_until(Duration::from_secs(5), "access log line", || {
        std::fs::read_to_string(webd.dir.path().join("access.log")).is_ok_and(|t| t.contains("GET /index.html"))
    });
    drop(webd);

    let webd = Webd::start_with(Options {
        workers: 1,
        only_args: true,
        config_toml: Some(config_with(3, "")),
        args: vec!["--workers".into(), "1".into()],
        ..Default::default()
    });
    assert_eq!(webd.worker_pids().len(), 1, "--workers must win over the file");
}

#[test]
fn config_errors_name_the_key_and_the_file_and_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    for (text, needle) in [
        ("workers = 2\nno_such_key = 1\n", "no_such_key"),
        ("workers = \"many\"\n", "workers"),
        ("heartbeat_interval = 1\n", "heartbeat_interval"),
        ("listen = [\"not an address\"]\n", "listen"),
        ("this is not toml", "webd.toml"),
    ] {
        let path = dir.path().join("webd.toml");
        std::fs::write(&path, text).expect("write");
        let out = std::process::Command::new(WEBD)
            .arg("--config")
            .arg(&path)
            .env("WEBD_CONTROL_SOCKET", dir.path().join("s.sock"))
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {err}");
        assert!(err.contains(needle) && err.contains("webd.toml"), "{text:?}: {err}");
    }
}

#[test]
fn sighup_under_load_replaces_every_worker_and_a_broken_config_keeps_the_old_one() {
    let webd = Webd::start_with(Options {
        workers: 2,
        only_args: true,
        config_toml: Some(config_with(2, "")),
        ..Default::default()
    });
    let before = webd.worker_pids();
    let load = Load::start(webd.addr(), 4, "/index.html", BODY.to_vec());
    wait_until(Duration::from_secs(5), "load to flow", || load.ok() > 20);
    kill(webd.pid, 1); // SIGHUP
    wait_until(Duration::from_secs(15), "every worker replaced", || {
        let now = webd.worker_pids();
        before.iter().all(|p| !now.contains(p)) && now.len() == 2
    });
    let ok_then = load.ok();
    wait_until(Duration::from_secs(10), "requests after the reload", || load.ok() > ok_then + 50);
    let (ok, failed, errors) = load.finish();
    assert_eq!(failed, 0, "{failed} of {ok} failed during SIGHUP: {errors:?}");

    // A broken file: the reload is refused, the tree and service unchanged.
    let running = webd.worker_pids();
    std::fs::write(webd.dir.path().join("webd.toml"), "workers = \"lots\"\n").expect("break config");
    kill(webd.pid, 1);
    wait_until(Duration::from_secs(5), "refusal in the log", || webd.log_text().contains("configuration refused"));
    assert_eq!(webd.worker_pids(), running);
    assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);
}

#[test]
fn systemd_gets_ready_once_watchdog_pings_and_stopping() {
    let dir = tempfile::tempdir().expect("tmp");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let mut webd = Webd::start_with(Options {
        env: vec![
            ("NOTIFY_SOCKET".into(), notify_path.to_string_lossy().into_owned()),
            ("WATCHDOG_USEC".into(), "1000000".into()),
        ],
        ..Default::default()
    });
    let mut seen: Vec<String> = Vec::new();
    let read_until = |seen: &mut Vec<String>, what: &str, count: usize| {
        wait_until(Duration::from_secs(10), what, || {
            let mut buf = [0u8; 512];
            if let Ok(n) = notify.recv(&mut buf) {
                seen.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string));
            }
            seen.iter().filter(|l| l.as_str() == what).count() >= count
        })
    };
    read_until(&mut seen, "READY=1", 1);
    read_until(&mut seen, "WATCHDOG=1", 3);
    kill(webd.pid, SIGTERM);
    read_until(&mut seen, "STOPPING=1", 1);
    assert_eq!(webd.wait_exit(Duration::from_secs(5)), Some(0));
    assert_eq!(seen.iter().filter(|l| l.as_str() == "READY=1").count(), 1, "{seen:?}");
    // Children never inherit the notify socket.
    assert!(!webd.log_text().contains("systemd notification failed"));
}

#[test]
fn children_do_not_inherit_notify_socket() {
    let dir = tempfile::tempdir().expect("tmp");
    let notify_path = dir.path().join("notify.sock");
    let _notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind");
    let webd = Webd::start_with(Options {
        env: vec![("NOTIFY_SOCKET".into(), notify_path.to_string_lossy().into_owned())],
        ..Default::default()
    });
    for p in webd.tree() {
        let env = std::fs::read(format!("/proc/{}/environ", p.pid)).unwrap_or_default();
        assert!(!env.windows(13).any(|w| w == b"NOTIFY_SOCKET"), "{} has NOTIFY_SOCKET", p.argv0);
    }
}

fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn user_flag_runs_children_as_that_user_and_the_daemon_as_root() {
    if uid_of(std::process::id() as i32) != Some(0) {
        eprintln!("skipped: needs root");
        return;
    }
    let webd = Webd::spawn(Options { args: vec!["--user".into(), "nobody".into()], ..Default::default() });
    // The temp dir is 0700: let nobody reach the document root.
    chmod(webd.dir.path(), 0o755);
    webd.wait_ready();
    let nobody = 65534;
    assert_eq!(uid_of(webd.pid), Some(0));
    for p in webd.tree() {
        assert_eq!(uid_of(p.pid), Some(nobody), "{} runs as {:?}", p.argv0, uid_of(p.pid));
    }
    assert_eq!(get(webd.addr(), "/index.html").expect("GET").body, BODY);
    assert_eq!(webd.status_json()["ok"], true, "control socket unusable by root");
}

#[test]
fn a_get_is_logged_in_combined_format() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("access.log");
    let webd = Webd::start_with(Options {
        args: vec!["--access-log".into(), log.to_string_lossy().into_owned()],
        ..Default::default()
    });
    request(
        webd.addr(),
        "GET /index.html HTTP/1.1\r\nHost: t\r\nUser-Agent: ua/1\r\nReferer: http://r/\r\nConnection: close\r\n\r\n",
    )
    .expect("GET");
    let line = wait_for(Duration::from_secs(5), "an access log line", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.lines().find(|l| l.contains("ua/1")).map(str::to_string)
    });
    let re_ok = line.starts_with("127.0.0.1 - - [")
        && line.contains("] \"GET /index.html HTTP/1.1\" 200 14 \"http://r/\" \"ua/1\"");
    assert!(re_ok, "not a combined-format line: {line}");
}

#[test]
fn webctl_reload_answers_once_applied_and_refuses_a_broken_file_changing_nothing() {
    let webd = Webd::start_with(Options {
        workers: 1,
        only_args: true,
        config_toml: Some(config_with(1, "")),
        ..Default::default()
    });
    let config = webd.dir.path().join("webd.toml");
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(&config, text.replace("workers = 1", "workers = 2")).expect("edit config");
    let before = webd.worker_pids();
    let out = webd.webctl(&["reload"]);
    assert_eq!(out.code, Some(0), "reload: {}{}", out.stdout, out.stderr);
    // Answered when applied: every worker already replaced and the pool at its new size.
    let now = webd.worker_pids();
    assert_eq!(now.len(), 2, "workers after the reload: {now:?}");
    assert!(before.iter().all(|p| !now.contains(p)), "a worker was not replaced: {before:?} -> {now:?}");

    // A broken file: refused with the file named, and nothing changes.
    std::fs::write(&config, "workers = \"lots\"\n").expect("break config");
    let out = webd.webctl(&["reload"]);
    assert_eq!(out.code, Some(1), "a broken file was accepted: {}{}", out.stdout, out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("webd.toml") && said.contains("workers"), "{said}");
    assert_eq!(webd.worker_pids(), now);
    assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);
}
