//! Zero-downtime binary upgrade: `webctl upgrade` under load, and rollback.

use crate::util::*;
use std::time::Duration;

/// Kills a daemon tree that is no longer the harness's child (a successor).
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let all = all_processes();
        for p in all.values().filter(|p| p.ppid == self.0) {
            for q in all.values().filter(|q| q.ppid == p.pid) {
                kill(q.pid, SIGKILL);
            }
            kill(p.pid, SIGKILL);
        }
        kill(self.0, SIGKILL);
    }
}

#[test]
fn upgrade_under_load_replaces_every_process_without_a_failed_request() {
    let (mut webd, admin) = start_with_admin(Options::default());
    let new_binary = webd.dir.path().join("webd-new");
    std::fs::copy(WEBD, &new_binary).expect("copy the binary");
    let old: Vec<i32> = std::iter::once(webd.pid).chain(webd.tree().into_iter().map(|p| p.pid)).collect();
    let fresh = Load::start(webd.addr(), 2, "/index.html", BODY.to_vec());
    let kept = KeepAliveLoad::start(webd.addr(), 2, "/index.html", BODY.to_vec());
    wait_until(Duration::from_secs(5), "load to flow", || fresh.ok() > 20 && kept.ok() > 20);

    let heartbeats_seen =
        |role: &str| metric(&scrape(admin), "webd_heartbeat_latency_seconds_count", &[("role", role)]).unwrap_or(0.0);
    let seen_before: Vec<f64> = ["listener", "manager", "worker"].map(heartbeats_seen).to_vec();
    let out = webd.webctl(&["upgrade", "--binary", &new_binary.to_string_lossy()]);
    // "upgraded: new daemon pid N": clean the successor up whatever happens next.
    let announced: Option<i32> = out.stdout.rsplit(' ').next().and_then(|p| p.trim().parse().ok());
    let _guard = announced.map(KillOnDrop);
    assert_eq!(out.code, Some(0), "upgrade failed: {}{}", out.stdout, out.stderr);
    let status = webd.status_json();
    let new_pid = status["status"]["pid"].as_i64().expect("pid") as i32;
    assert_eq!(announced, Some(new_pid), "webctl named another pid than status shows");
    assert_ne!(new_pid, webd.pid, "the daemon answering is still the old one");

    // Traffic goes on through the new tree; the old daemon drains and exits.
    let (fresh_before, kept_before) = (fresh.ok(), kept.ok());
    wait_until(Duration::from_secs(10), "requests through the new tree", || {
        fresh.ok() > fresh_before + 50 && kept.ok() > kept_before + 50
    });
    assert_eq!(webd.wait_exit(Duration::from_secs(10)), Some(0), "old daemon did not exit cleanly");
    let (ok_fresh, failed_fresh, errors_fresh) = fresh.finish();
    let (ok_kept, failed_kept, errors_kept) = kept.finish();
    assert_eq!(failed_fresh, 0, "new-connection requests failed ({ok_fresh} ok): {errors_fresh:?}");
    assert_eq!(failed_kept, 0, "keep-alive requests failed ({ok_kept} ok): {errors_kept:?}");

    // Every process is new.
    let all = all_processes();
    let new_tree: Vec<i32> = all
        .values()
        .filter(|p| p.ppid == new_pid || all.get(&p.ppid).is_some_and(|pp| pp.ppid == new_pid))
        .map(|p| p.pid)
        .collect();
    assert!(new_tree.len() >= 4, "new tree: {new_tree:?}");
    assert!(new_tree.iter().chain([&new_pid]).all(|p| !old.contains(p)));
    wait_until(Duration::from_secs(5), "old processes gone", || old.iter().all(|p| !alive(*p)));

    // The same control socket and admin port, served by the new daemon, with the
    // upgrade counted and the request counter carried over.
    // The old daemon's final totals (sent as it exits) are in the new daemon's counters.
    assert_eq!(metric(&scrape(admin), "webd_upgrades_total", &[]), Some(1.0));
    let served_by_clients = ok_fresh + ok_kept;
    let counted = || metric(&scrape(admin), "webd_http_requests_total", &[("code", "200")]).unwrap_or(0.0) as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counted() < served_by_clients && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(counted() >= served_by_clients, "counted {} of {served_by_clients} requests", counted());
    // Supervision figures carry over too: no counter resets.
    for (role, before) in ["listener", "manager", "worker"].into_iter().zip(seen_before) {
        assert!(
            heartbeats_seen(role) > before,
            "{role} heartbeat latency count went from {before} to {}",
            heartbeats_seen(role)
        );
    }
}

#[test]
fn upgrade_to_a_binary_that_exits_at_start_rolls_back() {
    let webd = Webd::start();
    let broken = webd.dir.path().join("webd-broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").expect("write script");
    chmod(&broken, 0o755);
    let before: Vec<i32> = webd.tree().into_iter().map(|p| p.pid).collect();

    let out = webd.webctl(&["upgrade", "--binary", &broken.to_string_lossy()]);
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("exit code 3"), "reason not given: {}", out.stderr);

    assert_eq!(webd.status_json()["status"]["pid"].as_i64(), Some(webd.pid as i64));
    let after: Vec<i32> = webd.tree().into_iter().map(|p| p.pid).collect();
    assert_eq!(before, after, "the running tree changed");
    assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);

    // A missing binary is refused up front.
    let out = webd.webctl(&["upgrade", "--binary", "/nonexistent/webd"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("/nonexistent/webd"), "{}", out.stderr);
}
