//! Under a real systemd (`tests/tools/systemd-sandbox`, or `WEBD_SYSTEMD_SANDBOX`):
//! the real `dist/systemd/webd.socket` and `webd.service`, with only `ExecStart=`, the
//! port and paths changed by drop-ins. `systemctl start webd.socket` opens the port, the
//! first connection from outside starts the service and is answered, and `systemctl
//! restart webd` under load refuses no connection. Where it cannot run (not root, no
//! systemd, no sandbox tool) it fails saying why: it never passes without having run.

use crate::util::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SYSTEMD: &str = "/lib/systemd/systemd";
/// Where each run's directory (binary, root, config, control socket) is made.
const TEST_BASE: &str = "/var/lib/webd-tests";
/// The repository's copy of the sandbox tool: systemd as PID 1 of a private PID and
/// mount namespace (read its header).
const DEFAULT_SANDBOX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/systemd-sandbox");

fn sandbox_tool() -> PathBuf {
    std::env::var_os("WEBD_SYSTEMD_SANDBOX").map(PathBuf::from).unwrap_or_else(|| DEFAULT_SANDBOX.into())
}

/// Why this machine cannot run the test, if it cannot.
fn cannot_run() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("must run as root (systemd-sandbox boots systemd in a PID + mount namespace)".into());
    }
    if !Path::new(SYSTEMD).exists() {
        return Some(format!("no {SYSTEMD}: install Debian's systemd package (apt-get install systemd)"));
    }
    let tool = sandbox_tool();
    if !tool.exists() {
        return Some(format!("no {} (set WEBD_SYSTEMD_SANDBOX to the systemd-sandbox tool)", tool.display()));
    }
    None
}

/// A booted sandbox; always stopped on drop, also when the test fails.
struct Sandbox {
    state: PathBuf,
}

impl Sandbox {
    fn start(state: &Path, units: &[PathBuf]) -> Sandbox {
        let sandbox = Sandbox { state: state.to_path_buf() };
        let out =
            Command::new(sandbox_tool()).arg("start").arg(state).args(units).output().expect("run systemd-sandbox");
        assert!(out.status.success(), "systemd-sandbox start failed: {}", String::from_utf8_lossy(&out.stderr));
        sandbox
    }

    /// Runs `args` inside; (success, stdout, stderr).
    fn exec(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(sandbox_tool())
            .arg("exec")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("run systemd-sandbox exec");
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    fn systemctl(&self, args: &[&str]) -> String {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.exec(&all);
        assert!(ok, "systemctl {args:?} failed: {out} {err}\n{}", self.journal());
        out
    }

    fn show(&self, unit: &str, property: &str) -> String {
        let (_, out, _) = self.exec(&["systemctl", "show", "-p", property, "--value", unit]);
        out
    }

    fn journal(&self) -> String {
        let (_, out, err) =
            self.exec(&["journalctl", "--no-pager", "-n", "200", "-u", "webd.service", "-u", "webd.socket"]);
        format!("---- journal ----\n{out}{err}")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.journal());
        }
        let _ = Command::new(sandbox_tool()).arg("stop").arg(&self.state).status();
    }
}

/// The unit files from dist/systemd/ and drop-ins that change only the port, ExecStart=
/// and paths (plus `service_extra` lines in the service's drop-in), in `dir`.
fn units(dir: &Path, port: u16, webd_extra: &str, service_extra: &str) -> Vec<PathBuf> {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("index.html"), BODY).expect("index");
    let units = dir.join("units");
    std::fs::create_dir_all(units.join("webd.service.d")).expect("drop-in dir");
    std::fs::create_dir_all(units.join("webd.socket.d")).expect("drop-in dir");
    for unit in ["webd.socket", "webd.service"] {
        std::fs::copy(dist.join(unit), units.join(unit)).expect("copy unit");
    }
    // The host's port 8080 may be taken (the network namespace is shared).
    std::fs::write(
        units.join("webd.socket.d/test.conf"),
        format!("[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"),
    )
    .expect("socket drop-in");
    let binary = dir.join("webd");
    std::fs::copy(WEBD, &binary).expect("copy the webd binary");
    let d = dir.display();
    std::fs::write(
        units.join("webd.service.d/test.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart={d}/webd --root {d}/root --listen 127.0.0.1:{port} \
             --workers 2 --drain-timeout 5 --control-socket {d}/ctl/webd.sock {webd_extra}\n\
             # ProtectSystem=strict: the control socket lives in the test's directory.\n\
             ReadWritePaths={d}\n\
             # No /var/log/webd on the host (the sandbox shares its filesystem).\n\
             LogsDirectory=\n\
             {service_extra}\n"
        ),
    )
    .expect("service drop-in");
    vec![
        units.join("webd.socket"),
        units.join("webd.service"),
        units.join("webd.socket.d"),
        units.join("webd.service.d"),
    ]
}

#[test]
fn socket_activation_under_real_systemd_starts_on_connect_and_restarts_without_refusing() {
    if let Some(why) = cannot_run() {
        panic!("cannot run the systemd socket activation test: {why}");
    }
    // Outside /tmp and /var/tmp, which are private in the sandbox (so is a checkout or a
    // target directory there: the binary is copied in).
    std::fs::create_dir_all(TEST_BASE).expect("test base directory");
    let dir = tempfile::Builder::new().prefix("webd-systemd-").tempdir_in(TEST_BASE).expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let units = units(dir.path(), port, "--admin off", "");
    let sandbox = Sandbox::start(&dir.path().join("state"), &units);

    sandbox.systemctl(&["start", "webd.socket"]);
    assert_eq!(sandbox.show("webd.socket", "ActiveState"), "active");
    assert_eq!(sandbox.show("webd.service", "ActiveState"), "inactive", "webd started before any connection");

    // The first connection from outside starts the service and is answered.
    let response = get(addr, "/index.html").unwrap_or_else(|e| panic!("first GET: {e}\n{}", sandbox.journal()));
    assert_eq!((response.status, response.body.as_slice()), (200, BODY));
    // READY=1 may reach systemd just after the first answer.
    wait_until(Duration::from_secs(10), "webd.service active (READY=1)", || {
        sandbox.show("webd.service", "ActiveState") == "active"
    });
    let first_pid = sandbox.show("webd.service", "MainPID");
    assert_ne!(first_pid, "0");
    assert!(sandbox.journal().contains("socket activation: adopted"), "{}", sandbox.journal());

    // `systemctl restart webd` under load: the socket stays open, so nothing is refused.
    let load = Load::start(addr, 4, "/index.html", BODY.to_vec());
    wait_until(Duration::from_secs(5), "load flowing", || load.ok() > 50);
    let started = Instant::now();
    sandbox.systemctl(&["restart", "webd.service"]);
    let restart_took = started.elapsed();
    let before = load.ok();
    wait_until(Duration::from_secs(10), "load served by the new daemon", || load.ok() > before + 200);
    let (ok, failed, errors) = load.finish();
    let second_pid = sandbox.show("webd.service", "MainPID");
    eprintln!("restart took {restart_took:?}; {ok} ok, {failed} failed; MainPID {first_pid} -> {second_pid}");
    assert_ne!(second_pid, first_pid, "the daemon was not replaced");
    assert_ne!(second_pid, "0");
    let refused = errors.iter().filter(|e| e.contains("refused")).count();
    assert_eq!(refused, 0, "connections refused during the restart: {errors:?}");
    assert_eq!(failed, 0, "requests failed during the restart: {errors:?}");
}

/// A free port on 127.0.0.1 (the network namespace is the host's).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The sum of a counter's samples, scraped from the admin endpoint once it answers.
fn counter_total(admin_port: u16, name: &str) -> Option<f64> {
    let samples = try_scrape(admin_port, Duration::from_secs(2))?;
    let matching: Vec<f64> = samples.iter().filter(|s| s.name == name).map(|s| s.value).collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Waits for systemd to have replaced the daemon `old_pid` with an active new one.
fn wait_replaced(sandbox: &Sandbox, old_pid: &str, why: &str) -> String {
    let mut pid = String::new();
    wait_until(Duration::from_secs(30), why, || {
        pid = sandbox.show("webd.service", "MainPID");
        pid != old_pid && pid != "0" && sandbox.show("webd.service", "ActiveState") == "active"
    });
    pid
}

#[test]
fn a_killed_or_hung_daemon_comes_back_from_the_fd_store_losing_nothing() {
    if let Some(why) = cannot_run() {
        panic!("cannot run the systemd fd store test: {why}");
    }
    std::fs::create_dir_all(TEST_BASE).expect("test base directory");
    let dir = tempfile::Builder::new().prefix("webd-fdstore-").tempdir_in(TEST_BASE).expect("dir");
    let (port, admin_port) = (free_port(), free_port());
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // A short watchdog, so the hung daemon is replaced within the test's patience.
    let units = units(dir.path(), port, &format!("--admin 127.0.0.1:{admin_port}"), "WatchdogSec=2s");
    let sandbox = Sandbox::start(&dir.path().join("state"), &units);
    sandbox.systemctl(&["start", "webd.socket", "webd.service"]);
    wait_until(Duration::from_secs(10), "webd.service active", || {
        sandbox.show("webd.service", "ActiveState") == "active"
    });
    let load = Load::start(addr, 4, "/index.html", BODY.to_vec());
    wait_until(Duration::from_secs(10), "load flowing", || load.ok() > 50);

    let mut pid = sandbox.show("webd.service", "MainPID");
    for (round, signal) in [(1.0, "-KILL"), (2.0, "-STOP")] {
        let mut requests_before = 0.0;
        wait_until(Duration::from_secs(10), "requests counted", || {
            requests_before = counter_total(admin_port, "webd_http_requests_total").unwrap_or(0.0);
            requests_before > 0.0
        });
        let (killed, out, err) = sandbox.exec(&["kill", signal, &pid]);
        assert!(killed, "kill {signal} {pid}: {out} {err}");
        let served_before = load.ok();
        let new_pid = wait_replaced(&sandbox, &pid, &format!("the daemon replaced after kill {signal}"));
        wait_until(Duration::from_secs(15), "load served by the new tree", || load.ok() > served_before + 200);
        let mut restarts = None;
        wait_until(Duration::from_secs(10), "the new daemon's metrics", || {
            restarts = counter_total(admin_port, "webd_daemon_restarts_total");
            restarts.is_some()
        });
        let requests_after = counter_total(admin_port, "webd_http_requests_total").unwrap_or(0.0);
        eprintln!(
            "kill {signal}: MainPID {pid} -> {new_pid}; restarts {restarts:?}; requests {requests_before} -> {requests_after}"
        );
        assert_eq!(restarts, Some(round), "webd_daemon_restarts_total after kill {signal}\n{}", sandbox.journal());
        assert!(
            requests_after >= requests_before,
            "webd_http_requests_total went back: {requests_before} -> {requests_after}"
        );
        pid = new_pid;
    }
    let (ok, failed, errors) = load.finish();
    eprintln!("{ok} ok, {failed} failed over a SIGKILL and a watchdog kill of the daemon");
    let refused = errors.iter().filter(|e| e.contains("refused")).count();
    assert_eq!(refused, 0, "connections refused: {errors:?}");
    assert_eq!(failed, 0, "requests failed: {errors:?}\n{}", sandbox.journal());
    let journal = sandbox.journal();
    assert!(journal.contains("fd store: the previous daemon died"), "{journal}");
    // The ticket keys come back with the counters, so TLS sessions resume after a crash.
    assert!(journal.contains("TLS session ticket keys taken from the old daemon"), "{journal}");
}
