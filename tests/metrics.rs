//! Prometheus metrics from the real daemon: every documented name and label, restarts by
//! reason, counters that never go down, and promtool's verdict on the live output.

use crate::util::*;
use std::time::Duration;

/// docs/reference.md: name and the labels every series of it carries.
const DOCUMENTED: [(&str, &[&str]); 14] = [
    ("webd_heartbeat_latency_seconds_bucket", &["role", "le"]),
    ("webd_heartbeat_age_seconds", &["role"]),
    ("webd_heartbeats_missed_total", &["role"]),
    ("webd_restarts_total", &["role", "reason"]),
    ("webd_process_up", &["role"]),
    ("webd_workers", &["state"]),
    ("webd_worker_utilization_ratio", &["worker"]),
    ("webd_connections_accepted_total", &[]),
    ("webd_connections_active", &[]),
    ("webd_http_requests_total", &["code"]),
    ("webd_http_request_duration_seconds_bucket", &["le"]),
    ("webd_http_response_bytes_total", &[]),
    ("webd_draining", &[]),
    ("webd_build_info", &["version"]),
];

#[test]
fn every_spec_metric_is_exported_and_counters_survive_restarts() {
    let (webd, admin) = start_with_admin(Options::default());
    for _ in 0..10 {
        assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);
    }
    let _ = get(webd.addr(), "/missing");
    let samples = wait_for(Duration::from_secs(5), "request counts in /metrics", || {
        let s = scrape(admin);
        let ok = metric(&s, "webd_http_requests_total", &[("code", "200")]).unwrap_or(0.0) >= 10.0;
        let missing = metric(&s, "webd_http_requests_total", &[("code", "404")]).unwrap_or(0.0) >= 1.0;
        (ok && missing).then_some(s)
    });
    for (name, labels) in DOCUMENTED {
        let series: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
        assert!(!series.is_empty(), "{name} missing");
        for s in series {
            for label in labels {
                assert!(s.label(label).is_some(), "{name} without label {label}: {s:?}");
            }
        }
    }
    for role in ["listener", "manager", "worker"] {
        assert_eq!(metric(&samples, "webd_process_up", &[("role", role)]), Some(1.0), "{role}");
        for reason in ["crash", "hang", "manual"] {
            assert!(metric(&samples, "webd_restarts_total", &[("role", role), ("reason", reason)]).is_some());
        }
    }
    assert_eq!(metric(&samples, "webd_http_requests_total", &[("code", "404")]), Some(1.0));

    // A listener crash is counted as such.
    let listener = webd.pid_of("webd: listener").expect("listener");
    kill(listener, SIGKILL);
    wait_until(Duration::from_secs(5), "listener crash counted", || {
        let s = scrape(admin);
        metric(&s, "webd_restarts_total", &[("role", "listener"), ("reason", "crash")]) == Some(1.0)
            && metric(&s, "webd_process_up", &[("role", "listener")]) == Some(1.0)
    });

    // A worker crash does not make the request counter go down.
    let before = metric(&scrape(admin), "webd_http_requests_total", &[("code", "200")]).expect("200s");
    let worker = webd.pid_of("webd: worker 0").expect("worker 0");
    kill(worker, SIGKILL);
    wait_until(Duration::from_secs(5), "worker replaced", || {
        webd.pid_of("webd: worker 0").is_some_and(|p| p != worker)
    });
    for _ in 0..5 {
        let _ = get(webd.addr(), "/index.html");
    }
    wait_until(Duration::from_secs(5), "worker crash counted", || {
        let s = scrape(admin);
        metric(&s, "webd_restarts_total", &[("role", "worker"), ("reason", "crash")]) == Some(1.0)
    });
    let after = metric(&scrape(admin), "webd_http_requests_total", &[("code", "200")]).expect("200s");
    assert!(after >= before, "requests_total went down: {before} -> {after}");
}

/// Counters must be exact, not only monotonic: every restart that replaces a process
/// (graceful or crash, each role) must neither lose nor count twice what it served.
#[test]
fn request_and_connection_counters_are_exact_across_every_kind_of_restart() {
    let (webd, admin) = start_with_admin(Options::default());
    let mut made = 0u64;
    let mut requests = |n: u64| {
        for _ in 0..n {
            assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);
        }
        made += n;
        made
    };
    let counted = || {
        let s = scrape(admin);
        let requests = metric(&s, "webd_http_requests_total", &[("code", "200")]).unwrap_or(0.0) as u64;
        let accepted = metric(&s, "webd_connections_accepted_total", &[]).unwrap_or(0.0) as u64;
        (requests, accepted)
    };
    let expect_exact = |total: u64, after: &str| {
        // Figures travel in heartbeats: wait for them to arrive, then for a little longer
        // to see that nothing is counted twice.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while counted() != (total, total) {
            assert!(std::time::Instant::now() < deadline, "after {after}: counted {:?}, made {total}", counted());
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(counted(), (total, total), "requests and connections counted after {after}");
        }
    };
    // The harness's own readiness requests: settled once three samples agree.
    let mut samples = vec![counted()];
    while samples.len() < 3 || samples[samples.len() - 3..].iter().any(|c| *c != samples[samples.len() - 1]) {
        assert!(samples.len() < 100, "the counters never settled: {samples:?}");
        std::thread::sleep(Duration::from_millis(100));
        samples.push(counted());
    }
    let (base, base_accepted) = samples[samples.len() - 1];
    assert_eq!(base, base_accepted, "the harness's requests each had a connection");
    let total = base + requests(40);
    expect_exact(total, "the first requests");
    for (cmd, what) in [
        (&["restart", "manager"][..], "a manager restart"),
        (&["restart", "listener"][..], "a listener restart"),
        (&["restart", "workers"][..], "a rolling worker restart"),
    ] {
        webd.ctl_ok(cmd);
        let total = base + requests(20);
        expect_exact(total, what);
    }
    let manager = webd.pid_of("webd: manager").expect("manager");
    kill(manager, SIGKILL);
    wait_until(Duration::from_secs(10), "a new manager with its workers", || {
        webd.pid_of("webd: manager").is_some_and(|p| p != manager) && webd.worker_pids().len() == 2
    });
    let total = base + requests(20);
    expect_exact(total, "a manager crash");
}

#[test]
fn promtool_accepts_the_live_output() {
    let Ok(status) = std::process::Command::new("promtool").arg("--version").output() else {
        eprintln!("skipped: promtool not installed (.ci/run installs Debian's prometheus)");
        return;
    };
    assert!(status.status.success());
    let (webd, admin) = start_with_admin(Options::default());
    let _ = get(webd.addr(), "/index.html");
    let body = get(std::net::SocketAddr::from(([127, 0, 0, 1], admin)), "/metrics").expect("scrape").body;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), &body).expect("pipe metrics");
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn readyz_and_status_follow_drain() {
    let (webd, admin) = start_with_admin(Options::default());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    assert_eq!(get(addr, "/readyz").expect("readyz").status, 200);
    assert_eq!(get(addr, "/healthz").expect("healthz").status, 200);
    webd.ctl_ok(&["drain"]);
    let r = get(addr, "/readyz").expect("readyz");
    assert_eq!(r.status, 503, "readyz must fail at once on drain");
    assert!(String::from_utf8_lossy(&r.body).contains("draining"));
    assert_eq!(metric(&scrape(admin), "webd_draining", &[]), Some(1.0));
    let status: serde_json::Value = serde_json::from_slice(&get(addr, "/status").expect("status").body).expect("JSON");
    assert_eq!(status["state"], "draining");
    webd.ctl_ok(&["resume"]);
    assert_eq!(get(addr, "/readyz").expect("readyz").status, 200);
    let post = request(addr, "POST /readyz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .expect("POST");
    assert_eq!(post.status, 405);
    assert!(post.header("allow").is_some_and(|a| a.contains("GET")));
}

#[test]
fn admin_idle_connections_do_not_stop_readiness_or_supervision() {
    let (webd, admin) = start_with_admin(Options::default());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], admin));
    let idle: Vec<Conn> = (0..500).filter_map(|_| Conn::open_within(addr, Duration::from_secs(2)).ok()).collect();
    assert!(idle.len() >= 450, "only {} idle connections opened", idle.len());
    let started = std::time::Instant::now();
    let r = get(addr, "/readyz").expect("readyz with 500 idle connections");
    eprintln!("/readyz with {} idle admin connections: {:?}", idle.len(), started.elapsed());
    assert_eq!(r.status, 200);
    let missed = metric(&scrape(admin), "webd_heartbeats_missed_total", &[("role", "listener")]);
    assert_eq!(missed, Some(0.0));
    drop(idle);
    assert!(webd.log_text().matches("missed heartbeat").count() == 0, "a heartbeat was missed");
}

/// The manager reports a retired worker's final figures once; a heartbeat dropped on
/// a full channel must not take them along (it used to: the report was cleared as if
/// delivered, and the last interval of every worker retired meanwhile was lost).
#[test]
fn counters_are_exact_after_retiring_workers_while_the_managers_channel_is_full() {
    let fault = tempfile::NamedTempFile::new().expect("fault file");
    let (webd, admin) = start_with_admin(Options {
        env: vec![
            ("WEBD_FAULT_FILE".into(), fault.path().to_string_lossy().into_owned()),
            ("RUST_LOG".into(), "info,webd::manager=debug".into()),
        ],
        // Dropped heartbeats must not make the daemon call the manager hung meanwhile.
        args: vec!["--heartbeat-timeout".into(), "60000".into()],
        ..Default::default()
    });
    let counted = || metric(&scrape(admin), "webd_http_requests_total", &[("code", "200")]).unwrap_or(0.0) as u64;
    let mut samples = vec![counted()];
    while samples.len() < 3 || samples[samples.len() - 3..].iter().any(|c| *c != samples[samples.len() - 1]) {
        assert!(samples.len() < 100, "the counters never settled: {samples:?}");
        std::thread::sleep(Duration::from_millis(100));
        samples.push(counted());
    }
    let base = samples[samples.len() - 1];
    std::fs::write(fault.path(), "manager-channel-full\n").expect("inject");
    for _ in 0..30 {
        assert_eq!(get(webd.addr(), "/index.html").expect("GET").status, 200);
    }
    let old_workers = webd.worker_pids();
    webd.ctl_ok(&["restart", "workers"]);
    wait_until(Duration::from_secs(20), "the retired workers gone", || old_workers.iter().all(|pid| !alive(*pid)));
    wait_until(Duration::from_secs(10), "a dropped heartbeat carrying the exited workers", || {
        webd.log_text().contains("exited workers kept for the next heartbeat")
    });
    std::fs::write(fault.path(), "").expect("clear the fault");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counted() != base + 30 {
        assert!(std::time::Instant::now() < deadline, "counted {}, made {}", counted(), base + 30);
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(counted(), base + 30, "counted once");
    }
}
