//! Starting a real webd tree with a temp root and control socket, webctl, and
//! cleanup of every process it started (printing its log when a test fails).

#![allow(dead_code)]

use super::*;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Options for starting a daemon.
pub struct Options {
    pub workers: u32,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Pass only `args` (the test supplies listen/root/socket itself, e.g. in a config
    /// file); `root` and `control_socket` must then match what it supplies, and it
    /// listens on port 0 ([`LISTEN_ANY_PORT`]) to have `addr()` read back the port.
    pub only_args: bool,
    /// A TOML config written to `<dir>/webd.toml` and passed with `--config`; `{root}`,
    /// `{socket}` and `{dir}` are replaced by this daemon's values.
    pub config_toml: Option<String>,
    /// Start the daemon as the leader of a process group of its own (its pid is the
    /// group id), so a test can signal the whole group as `timeout` or `tini -g` do.
    pub own_group: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { workers: 2, args: Vec::new(), env: Vec::new(), only_args: false, config_toml: None, own_group: false }
    }
}

/// A running webd tree; killed (with all descendants) on drop.
pub struct Webd {
    pub child: Option<Child>,
    pub pid: i32,
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub control_socket: PathBuf,
    pub log: PathBuf,
    pub workers: u32,
    /// Every descendant seen so far, so cleanup finds even reparented ones.
    seen: Mutex<Vec<i32>>,
    /// The addresses the daemon bound, read back from its status once.
    bound: OnceLock<Bound>,
}

/// Where a daemon started on port 0 listens.
#[derive(Debug, Clone, Copy)]
struct Bound {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
}

impl Webd {
    pub fn start() -> Webd {
        Webd::start_with(Options::default())
    }

    /// Starts the daemon and waits until every role is up and HTTP answers.
    pub fn start_with(opts: Options) -> Webd {
        let webd = Webd::spawn(opts);
        webd.wait_ready();
        webd
    }

    /// Starts the daemon without waiting for it.
    pub fn spawn(opts: Options) -> Webd {
        Webd::spawn_command(opts, Command::new(WEBD))
    }

    /// Starts the daemon as socket activation does: `passed` at fds 3.., `LISTEN_FDS`,
    /// `LISTEN_FDNAMES` and `LISTEN_PID` set to the daemon's own pid (a shell sets it to
    /// `$$` and execs webd, so the pid stays the same).
    pub fn spawn_activated(opts: Options, passed: Vec<(std::os::fd::OwnedFd, &str)>) -> Webd {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let names = passed.iter().map(|(_, name)| *name).collect::<Vec<_>>().join(":");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES='{names}'; exec \"$0\" \"$@\"",
                passed.len()
            ))
            .arg(WEBD);
        let raw: Vec<i32> = passed.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        // SAFETY: runs in the forked child before exec and only calls dup2 and close,
        // which are async-signal-safe; `raw` was built before the fork and is only read.
        // Two phases (via 1000+i) so a source already at 3..3+N is not overwritten.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 1000 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for i in 0..raw.len() as i32 {
                    if libc::dup2(1000 + i, 3 + i) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(1000 + i);
                }
                Ok(())
            });
        }
        let webd = Webd::spawn_command(opts, cmd);
        drop(passed);
        webd
    }

    /// Starts `cmd` (webd, or a tool that execs it: pid stays the same) with the usual
    /// arguments appended.
    pub fn spawn_command(opts: Options, mut cmd: Command) -> Webd {
        let dir = tempfile::Builder::new().prefix("webd-test-").tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root dir");
        std::fs::write(root.join("index.html"), BODY).expect("index");
        let control_socket = dir.path().join("ctl").join("webd.sock");
        let log = dir.path().join("webd.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        if !opts.only_args {
            let defaults = [
                ("--listen", LISTEN_ANY_PORT.to_string()),
                ("--root", root.to_string_lossy().into_owned()),
                ("--workers", opts.workers.to_string()),
                ("--admin", "off".to_string()),
                ("--control-socket", control_socket.to_string_lossy().into_owned()),
            ];
            // A flag the test gives itself replaces the default.
            for (flag, value) in defaults.iter().filter(|(f, _)| !opts.args.iter().any(|a| a == f)) {
                cmd.arg(flag).arg(value);
            }
        }
        if let Some(toml) = &opts.config_toml {
            let path = dir.path().join("webd.toml");
            let text = toml
                .replace("{root}", &root.to_string_lossy())
                .replace("{socket}", &control_socket.to_string_lossy())
                .replace("{dir}", &dir.path().to_string_lossy());
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        cmd.args(&opts.args)
            .env("RUST_LOG", "info")
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file);
        if opts.own_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let child = cmd.spawn().expect("spawn webd");
        let pid = child.id() as i32;
        Webd {
            child: Some(child),
            pid,
            dir,
            root,
            control_socket,
            log,
            workers: opts.workers,
            seen: Mutex::new(Vec::new()),
            bound: OnceLock::new(),
        }
    }

    /// The (first) HTTP address the daemon bound.
    pub fn addr(&self) -> SocketAddr {
        self.bound().listen
    }

    /// The admin endpoint's address, None when it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.bound().admin
    }

    /// The bound addresses from status (`listen`, `admin`): the daemon is given port 0,
    /// so no two tests can race for a port between choosing and binding it.
    fn bound(&self) -> &Bound {
        self.bound.get_or_init(|| {
            wait_for(Duration::from_secs(10), "the bound addresses in status", || {
                let status = self.status_direct(Duration::from_secs(2))?;
                let listen = status["listen"].get(0)?.as_str()?.parse().ok()?;
                let admin = status["admin"].as_str().and_then(|a| a.parse().ok());
                Some(Bound { listen, admin })
            })
        })
    }

    pub fn wait_ready(&self) {
        let workers = self.workers as usize;
        // Keepers included: a tree taken before the last one forked would lack it (a test
        // comparing the tree before and after something saw it appear).
        wait_until(Duration::from_secs(10), "listener, manager, all workers and their keepers", || {
            let tree = self.tree();
            let keepers = titled_pids(&tree, |title| title.starts_with("webd: keeper")).len();
            tree.iter().filter(|p| p.argv0 == "webd: listener").count() == 1
                && tree.iter().filter(|p| p.argv0 == "webd: manager").count() == 1
                && worker_pids_in(&tree).len() >= workers
                && keepers > workers
        });
        wait_until(Duration::from_secs(10), "HTTP answer", || get(self.addr(), "/index.html").is_ok());
    }

    /// The daemon's live descendants.
    pub fn tree(&self) -> Vec<Proc> {
        let all = all_processes();
        let mut out: Vec<Proc> =
            all.values().filter(|p| p.state != 'Z' && descends_from(&all, p.pid, self.pid)).cloned().collect();
        out.sort_by_key(|p| p.pid);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for p in &out {
            if !seen.contains(&p.pid) {
                seen.push(p.pid);
            }
        }
        out
    }

    /// The pids with exactly this argv[0] (see [`titled_pids`]).
    pub fn pids(&self, argv0: &str) -> Vec<i32> {
        titled_pids(&self.tree(), |title| title == argv0)
    }

    /// The single live process with this argv[0].
    pub fn pid_of(&self, argv0: &str) -> Option<i32> {
        let pids = self.pids(argv0);
        (pids.len() == 1).then(|| pids[0])
    }

    pub fn worker_pids(&self) -> Vec<i32> {
        worker_pids_in(&self.tree())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the daemon to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every pid ever seen in this tree.
    pub fn seen_pids(&self) -> Vec<i32> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn descends_from(all: &HashMap<i32, Proc>, mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..64 {
        let Some(p) = all.get(&pid) else { return false };
        if p.ppid == ancestor {
            return true;
        }
        if p.ppid <= 1 {
            return false;
        }
        pid = p.ppid;
    }
    false
}

impl Drop for Webd {
    fn drop(&mut self) {
        let _ = self.tree();
        // `signal`, not `kill`: a failure here must not panic inside a drop.
        signal(self.pid, SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        for pid in self.seen_pids() {
            if alive(pid) {
                signal(pid, SIGKILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("---- webd log ({}) ----\n{}", self.dir.path().display(), self.log_text());
        }
    }
}

/// The `webctl` binary, built beside `webd` by `cargo test --workspace`.
pub fn webctl_path() -> PathBuf {
    let path = Path::new(WEBD).with_file_name("webctl");
    assert!(path.exists(), "{} missing: run the tests with `cargo test --workspace`", path.display());
    path
}

/// Output of one `webctl` run.
pub struct CtlOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Webd {
    /// Runs `webctl --control-socket <ours> args...`.
    pub fn webctl(&self, args: &[&str]) -> CtlOutput {
        let out = Command::new(webctl_path())
            .arg("--control-socket")
            .arg(&self.control_socket)
            .args(args)
            .output()
            .expect("run webctl");
        CtlOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs webctl and asserts it succeeded.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.webctl(args);
        assert_eq!(out.code, Some(0), "webctl {args:?} failed: {}{}", out.stdout, out.stderr);
        out.stdout
    }

    /// `webctl --json status`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.ctl_ok(&["--json", "status"]);
        serde_json::from_str(&out).expect("status JSON")
    }

    /// Sends one raw line to the control socket and reads one line back (None: closed).
    pub fn control_raw(&self, line: &[u8]) -> Option<String> {
        use std::io::BufRead;
        let mut s = std::os::unix::net::UnixStream::connect(&self.control_socket).expect("connect control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        if s.write_all(line).is_err() {
            return None;
        }
        let mut reply = String::new();
        match std::io::BufReader::new(s).read_line(&mut reply) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(reply),
        }
    }
}

/// Starts a daemon with the admin endpoint on a port of the kernel's choosing (on
/// 127.0.0.1); returns it and the port.
pub fn start_with_admin(mut opts: Options) -> (Webd, u16) {
    opts.args.extend(["--admin".to_string(), LISTEN_ANY_PORT.to_string()]);
    let webd = Webd::start_with(opts);
    let addr = webd.admin_addr().expect("status names the admin address");
    wait_until(Duration::from_secs(10), "/readyz 200", || get(addr, "/readyz").is_ok_and(|r| r.status == 200));
    (webd, addr.port())
}

impl Webd {
    /// Descendants of the daemon that are zombies (exited, not yet reaped).
    pub fn zombies(&self) -> Vec<Proc> {
        let all = all_processes();
        all.values().filter(|p| p.state == 'Z' && descends_from(&all, p.pid, self.pid)).cloned().collect()
    }

    /// `status` over the control socket directly (no webctl process: cheap enough to
    /// poll). None when the daemon does not answer within `timeout`.
    pub fn status_direct(&self, timeout: Duration) -> Option<serde_json::Value> {
        use std::io::BufRead;
        let mut s = std::os::unix::net::UnixStream::connect(&self.control_socket).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.set_write_timeout(Some(timeout)).ok()?;
        s.write_all(b"{\"cmd\":\"status\"}\n").ok()?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).ok()?;
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        (v["ok"] == true).then(|| v["status"].clone())
    }
}

/// Runs webd expecting it to refuse at once; one that starts serving instead is killed
/// at the deadline (its tree with it: PR_SET_PDEATHSIG) and fails the test.
pub fn run_webd(args: &[&str]) -> (Option<i32>, String) {
    let log = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = Command::new(WEBD)
        .args(args)
        .env("WEBD_CONTROL_SOCKET", "/nonexistent/webd.sock")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().expect("stderr fd"))
        .spawn()
        .expect("run webd");
    let status = exit_within(&mut child, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("webd {args:?} did not refuse: it was still running after 20 s"));
    (status.code(), std::fs::read_to_string(log.path()).unwrap_or_default())
}

/// The child's exit status, or `None` (and the child killed) if it is still running
/// after `limit`.
pub fn exit_within(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
