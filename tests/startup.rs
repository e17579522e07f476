//! Bad input at start: a clear error, the right exit code, and no process left behind.

use crate::util::*;

fn no_children_of_pidless_runs() -> bool {
    // Children carry argv[0] "webd: ..." and would be reparented to init here.
    all_processes().values().all(|p| !(p.argv0.starts_with("webd: ") && p.ppid == 1))
}

#[test]
fn unknown_flag_exits_2() {
    let (code, err) = run_webd(&["--no-such-flag"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]
fn missing_root_exits_1_naming_the_path() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nope");
    let missing = missing.to_string_lossy();
    let (code, err) = run_webd(&["--root", &missing, "--listen", LISTEN_ANY_PORT, "--admin", "off"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&*missing), "{err}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
}

#[test]
fn port_in_use_exits_1_naming_the_address_and_leaves_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().to_string_lossy().into_owned();
    let (code, err) = run_webd(&["--root", &root, "--listen", &addr, "--admin", "off"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(no_children_of_pidless_runs());
}

#[test]
fn bad_values_exit_2() {
    for args in [
        &["--workers", "0"][..],
        &["--workers", "many"],
        &["--listen", "not-an-address"],
        &["--admin", "nowhere"],
        &["--heartbeat-interval", "500", "--heartbeat-timeout", "100"],
    ] {
        let (code, err) = run_webd(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
    }
}
