//! Defects an operator met in the first hour (issue 13), each with the test that
//! failed before its fix.

use crate::util::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_control_socket_path_naming_a_regular_file_is_refused_and_the_file_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("webd.toml");
    std::fs::write(&config, "workers = 1\n").expect("write");
    let root = dir.path().to_string_lossy().into_owned();
    let socket = config.to_string_lossy().into_owned();
    let (code, err) =
        run_webd(&["--root", &root, "--listen", LISTEN_ANY_PORT, "--admin", "off", "--control-socket", &socket]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exists and is not a socket") && err.contains(&socket), "{err}");
    assert_eq!(std::fs::read_to_string(&config).expect("the file is still there"), "workers = 1\n");
    // A directory is refused the same way.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let (code, err) = run_webd(&[
        "--root",
        &root,
        "--listen",
        LISTEN_ANY_PORT,
        "--admin",
        "off",
        "--control-socket",
        &sub.to_string_lossy(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert!(sub.is_dir());
}

#[test]
fn sigterm_to_the_whole_process_group_lets_a_large_download_finish() {
    let mut webd = Webd::start_with(Options {
        own_group: true,
        args: vec!["--grace".into(), "20000".into()],
        ..Default::default()
    });
    let size = 50 * 1024 * 1024;
    std::fs::write(webd.root.join("big.bin"), vec![7u8; size]).expect("write big file");
    let mut stream = connect(webd.addr());
    stream.send(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("send");
    stream.read_at_least(1 << 20, Duration::from_secs(30)).expect("the first MiB");
    let pgid = webd.pid;
    assert!(signal(-pgid, SIGTERM), "SIGTERM to process group {pgid}");
    let end = stream.read_to_close(Duration::from_secs(30));
    assert!(end.eof, "read the rest: timed out {} after {} bytes", end.timed_out, end.bytes.len());
    let received = end.bytes;
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    assert!(received.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&received[..head_end]));
    assert_eq!(received.len() - head_end, size, "the whole body arrived");
    assert_eq!(webd.wait_exit(Duration::from_secs(30)), Some(0), "the daemon stopped cleanly");
}

#[test]
fn scale_racing_a_manager_restart_is_applied_or_refused_never_lost() {
    let webd = Webd::start();
    let mut expected = 2usize;
    for (i, target) in [3usize, 2, 3, 2, 3].into_iter().enumerate() {
        let restart = std::thread::scope(|s| {
            let restart = s.spawn(|| webd.webctl(&["restart", "manager"]));
            std::thread::sleep(Duration::from_millis(10 * i as u64));
            let scale = webd.webctl(&["scale", &target.to_string()]);
            if scale.code == Some(0) {
                expected = target;
            } else {
                assert!(
                    scale.stderr.contains("in progress"),
                    "refused with a reason: {}{}",
                    scale.stdout,
                    scale.stderr
                );
            }
            restart.join().expect("restart thread")
        });
        assert!(
            restart.code == Some(0) || restart.stderr.contains("in progress"),
            "{}{}",
            restart.stdout,
            restart.stderr
        );
        wait_until(Duration::from_secs(20), &format!("a pool of {expected} after try {i}"), || {
            let status = webd.status_json();
            let workers = status["status"]["workers"].as_array().map_or(0, Vec::len);
            let running =
                status["status"]["processes"].as_array().is_some_and(|p| p.iter().all(|p| p["state"] == "running"));
            workers == expected && running
        });
    }
    // The pool the operator last asked for survives the next manager too.
    webd.ctl_ok(&["restart", "manager"]);
    wait_until(Duration::from_secs(20), "the same pool under the next manager", || {
        webd.status_json()["status"]["workers"].as_array().map_or(0, Vec::len) == expected
    });
}

/// Scripts and tests must never find a process by name: another webd (or anything
/// else) may run on the same machine.
#[test]
fn no_script_or_test_finds_a_process_by_name() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut offenders = Vec::new();
    for dir in ["tests", "dashboards", "bench", ".ci", "dist", "admin-cli/tests"] {
        scan(&repo.join(dir), &mut offenders);
    }
    assert!(offenders.is_empty(), "processes found by name in: {offenders:#?}");
}

fn scan(dir: &std::path::Path, offenders: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            scan(&path, offenders);
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        if path.file_name().is_some_and(|n| n == "defects.rs") {
            continue; // this file names them to look for them
        }
        for (n, line) in text.lines().enumerate() {
            let code = line.split('#').next().unwrap_or_default();
            if ["pgrep ", "pkill ", "pidof ", "killall "].iter().any(|w| code.contains(w)) {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
}

/// `cargo build --release` builds webctl too, and the Dockerfile has no instruction
/// with a trailing comment (Docker would read it as arguments).
#[test]
fn install_recipes_build_webctl() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Table =
        std::fs::read_to_string(repo.join("Cargo.toml")).expect("Cargo.toml").parse().expect("toml");
    let members = manifest["workspace"]["default-members"].as_array().expect("default-members");
    assert!(members.iter().any(|m| m.as_str() == Some("admin-cli")), "{members:?}");
    let readme = std::fs::read_to_string(repo.join("dist/README.md")).expect("dist/README.md");
    for line in readme.lines().filter(|l| l.starts_with("COPY ") || l.starts_with("RUN ")) {
        assert!(!line.contains(" #"), "a Dockerfile instruction with a trailing comment: {line}");
    }
}

/// The harness signals with kill(2): where procps' `kill` is missing (PATH empty
/// here) it still stops webd, instead of waiting forever on a child never signalled.
#[test]
fn the_harness_works_without_procps() {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "defects::stop_a_tree_with_the_harness_signals", "--ignored", "--nocapture"])
        .env("PATH", "/nonexistent")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run the test binary");
    let status = exit_within(&mut child, Duration::from_secs(60)).expect("the harness hung without `kill` on PATH");
    assert!(status.success(), "{status}");
}

#[test]
#[ignore = "run by the_harness_works_without_procps with an empty PATH"]
fn stop_a_tree_with_the_harness_signals() {
    let mut webd = Webd::start_with(Options { workers: 1, ..Default::default() });
    kill(webd.pid, SIGTERM);
    assert_eq!(webd.wait_exit(Duration::from_secs(20)), Some(0));
}

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("webd.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

#[test]
fn an_empty_listen_list_in_a_config_file_is_an_error_naming_key_and_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = write_config(dir.path(), "listen = []\nadmin = \"off\"\n");
    let (code, err) = run_webd(&["--config", &config]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("listen") && err.contains(&config), "{err}");
}

#[test]
fn a_bad_admin_value_in_a_config_file_names_key_and_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = write_config(dir.path(), "admin = \"bogus\"\n");
    let (code, err) = run_webd(&["--config", &config, "--listen", LISTEN_ANY_PORT]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("admin") && err.contains(&config) && err.contains("bogus"), "{err}");
    assert!(!err.contains("--admin"), "not a flag: {err}");
}

#[test]
fn webctl_stop_answers_once_the_ports_and_the_socket_path_are_free() {
    for _ in 0..2 {
        let (mut webd, admin) = start_with_admin(Options::default());
        webd.ctl_ok(&["stop"]);
        // What `webctl stop && webd …` needs, the moment stop has answered.
        std::net::TcpListener::bind(webd.addr()).expect("the listen port is free");
        std::net::TcpListener::bind(("127.0.0.1", admin)).expect("the admin port is free");
        assert!(!webd.control_socket.exists(), "the control socket path is free");
        assert_eq!(webd.wait_exit(Duration::from_secs(20)), Some(0));
    }
}

#[test]
fn address_mistakes_are_named_as_such() {
    // A port held here: webd must refuse before binding it, never with "in use".
    let held = std::net::TcpListener::bind(LISTEN_ANY_PORT).expect("bind");
    let addr = held.local_addr().expect("bound address").to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["--listen", &addr, "--listen", &addr, "--admin", "off"], "given twice"),
        (&["--listen", &addr, "--admin", &addr], "also a listen address"),
        (&["--listen", "localhost:80", "--admin", "off"], "IP:PORT"),
        (&["--listen", "127.0.0.1", "--admin", "off"], "no port"),
    ];
    for (args, wanted) in cases {
        let (code, err) = run_webd(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
        assert!(!err.contains("in use"), "{args:?}: {err}");
    }
}

#[test]
fn an_unknown_user_is_a_configuration_error() {
    let (code, err) = run_webd(&["--listen", LISTEN_ANY_PORT, "--admin", "off", "--user", "no-such-user-webd"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no-such-user-webd"), "{err}");
}

#[test]
fn relative_paths_in_a_config_file_are_relative_to_its_directory() {
    let dir = tempfile::tempdir().expect("tmp");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("site")).expect("mkdir");
    let config = write_config(&etc, "root = \"missing-site\"\nadmin = \"off\"\n");
    let (code, err) = run_webd(&["--config", &config, "--listen", LISTEN_ANY_PORT]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&etc.join("missing-site").to_string_lossy().into_owned()), "the resolved path: {err}");
}

#[test]
fn toml_errors_keep_their_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = write_config(dir.path(), "admin = \"off\"\nworkers = \"two\"\n");
    let (code, err) = run_webd(&["--config", &config]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_reload_names_file_values_a_flag_overrides() {
    let webd = Webd::start_with(Options {
        args: vec!["--grace".into(), "700".into()],
        config_toml: Some("grace = 500\nheader_timeout = 5000\n".into()),
        ..Default::default()
    });
    kill(webd.pid, SIGHUP);
    wait_until(Duration::from_secs(10), "the reload's override warning", || {
        let log = webd.log_text();
        log.lines().any(|l| l.contains("overridden by a command-line flag") && l.contains("grace"))
    });
    assert!(!webd.log_text().lines().any(|l| l.contains("overridden") && l.contains("header_timeout")));
}

/// A flag and a config file accept exactly the same values (max_connections above a
/// million was refused as a flag and accepted in a file).
#[test]
fn flag_and_file_accept_the_same_values() {
    let dir = tempfile::tempdir().expect("tmp");
    for (key, value) in [("max_connections", "1000001"), ("workers", "257"), ("grace", "600001")] {
        let flag = format!("--{}", key.replace('_', "-"));
        let (flag_code, flag_err) = run_webd(&[&flag, value, "--listen", LISTEN_ANY_PORT, "--admin", "off"]);
        let config = write_config(dir.path(), &format!("{key} = {value}\nadmin = \"off\"\n"));
        let (file_code, file_err) = run_webd(&["--config", &config, "--listen", LISTEN_ANY_PORT]);
        assert_eq!((flag_code, file_code), (Some(2), Some(2)), "{key} = {value}: {flag_err} / {file_err}");
        assert!(file_err.contains(key) && file_err.contains(&config), "{file_err}");
    }
}
