//! Test harness: start the real `webd` binary on a free port with a temp document root
//! and control socket, find its processes in /proc, talk HTTP, generate load, and
//! clean everything up (printing the daemon's log) even when a test fails.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const WEBD: &str = env!("CARGO_BIN_EXE_webd");

/// Polls `cond` every 20 ms until it holds or `timeout` passes; panics naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like `wait_until`, returning the first `Some` value.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A process of the tree, from /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub argv0: String,
    pub state: char,
}

/// Every process on the host (pid → Proc).
pub fn all_processes() -> HashMap<i32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Some(p) = read_proc(pid) {
            out.insert(pid, p);
        }
    }
    out
}

pub fn read_proc(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces: fields after the last ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().map(|s| String::from_utf8_lossy(s).into_owned()).unwrap_or_default();
    Some(Proc { pid, ppid, argv0, state })
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    read_proc(pid).is_some_and(|p| p.state != 'Z')
}

/// True while `pid` exists at all (zombies included).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `sig` to `pid` with kill(2) (never by spawning `kill`, which a machine may
/// lack). A process already gone is fine; any other failure fails the test.
pub fn kill(pid: i32, sig: i32) {
    use nix::errno::Errno;
    let signal = nix::sys::signal::Signal::try_from(sig).unwrap_or_else(|e| panic!("signal {sig}: {e}"));
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => panic!("kill -{sig} {pid}: {e}"),
    }
}

/// Sets a path's mode (no `chmod` process); a failure fails the test.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGHUP: i32 = 1;
pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;

/// The body of `/index.html` in every tree `Webd` starts.
pub const BODY: &[u8] = b"<h1>webd</h1>\n";

/// Options for starting a daemon.
pub struct Options {
    pub workers: u32,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Pass only `args` (the test supplies listen/root/socket itself, e.g. in a config
    /// file); `port`, `root` and `control_socket` must then match what it supplies.
    pub only_args: bool,
    /// A TOML config written to `<dir>/webd.toml` and passed with `--config`; `{port}`,
    /// `{root}`, `{socket}` and `{dir}` are replaced by this daemon's values.
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
    pub port: u16,
    pub control_socket: PathBuf,
    pub log: PathBuf,
    pub workers: u32,
    /// Every descendant seen so far, so cleanup finds even reparented ones.
    seen: Mutex<Vec<i32>>,
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
        let dir = tempfile::Builder::new().prefix("webd-test-").tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root dir");
        std::fs::write(root.join("index.html"), BODY).expect("index");
        let port = free_port();
        let control_socket = dir.path().join("ctl").join("webd.sock");
        let log = dir.path().join("webd.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(WEBD);
        if !opts.only_args {
            let defaults = [
                ("--listen", format!("127.0.0.1:{port}")),
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
                .replace("{port}", &port.to_string())
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
            port,
            control_socket,
            log,
            workers: opts.workers,
            seen: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn wait_ready(&self) {
        let workers = self.workers as usize;
        wait_until(Duration::from_secs(10), "listener, manager and all workers", || {
            let tree = self.tree();
            tree.iter().filter(|p| p.argv0 == "webd: listener").count() == 1
                && tree.iter().filter(|p| p.argv0 == "webd: manager").count() == 1
                && tree.iter().filter(|p| p.argv0.starts_with("webd: worker")).count() >= workers
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

    /// The pids with exactly this argv[0].
    pub fn pids(&self, argv0: &str) -> Vec<i32> {
        self.tree().into_iter().filter(|p| p.argv0 == argv0).map(|p| p.pid).collect()
    }

    /// The single live process with this argv[0].
    pub fn pid_of(&self, argv0: &str) -> Option<i32> {
        let pids = self.pids(argv0);
        (pids.len() == 1).then(|| pids[0])
    }

    pub fn worker_pids(&self) -> Vec<i32> {
        self.tree().into_iter().filter(|p| p.argv0.starts_with("webd: worker")).map(|p| p.pid).collect()
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

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// GET `path` on a new connection with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"))
}

/// Sends raw bytes on a new connection and reads the response until EOF.
pub fn request(addr: SocketAddr, raw: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(raw.as_bytes())?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    parse_response(&buf)
        .map(|(r, _)| r)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&buf))))
}

/// Parses one response from the start of `buf`; returns it and the bytes it used.
/// The body length comes from Content-Length (absent: the rest of the buffer).
pub fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body_len = match len {
        Some(n) if status != 304 => n,
        Some(_) => 0,
        None => buf.len() - head_end,
    };
    if buf.len() < head_end + body_len {
        return None;
    }
    let body = buf[head_end..head_end + body_len].to_vec();
    Some((Response { status, headers, body }, head_end + body_len))
}

/// Client threads that each make requests in a loop until stopped, counting successes
/// (status 200 with the expected body) and failures. Bounded: every thread stops after
/// 60 s regardless.
pub struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

/// One client's way of making a request; the state it keeps between requests (a kept
/// connection, say) is its own.
type Requester = Box<dyn FnMut() -> std::io::Result<Response> + Send>;

impl Clients {
    /// `clients` threads, each making requests with a requester from `make`.
    pub fn start(clients: usize, expect: Vec<u8>, make: impl Fn() -> Requester) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let expect = Arc::new(expect);
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, errors, expect) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone(), expect.clone());
                let mut request = make();
                std::thread::spawn(move || {
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                        let error = match request() {
                            Ok(r) if r.status == 200 && r.body == *expect => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Ok(r) => format!("status {} body {} bytes", r.status, r.body.len()),
                            Err(e) => e.to_string(),
                        };
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap_or_else(|e| e.into_inner()).push(error);
                    }
                })
            })
            .collect();
        Clients { stop, ok, failed, errors, threads }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; returns (succeeded, failed, error samples).
    pub fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), errors)
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Clients that open a new connection per request.
pub struct Load;

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, path: &str, expect: Vec<u8>) -> Clients {
        let path = path.to_string();
        Clients::start(clients, expect, || {
            let path = path.clone();
            Box::new(move || get(addr, &path))
        })
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

/// Starts a daemon with the admin endpoint on a free port; returns it and the port.
pub fn start_with_admin(mut opts: Options) -> (Webd, u16) {
    let admin = free_port();
    opts.args.extend(["--admin".to_string(), format!("127.0.0.1:{admin}")]);
    let webd = Webd::start_with(opts);
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));
    wait_until(Duration::from_secs(10), "/readyz 200", || get(addr, "/readyz").is_ok_and(|r| r.status == 200));
    (webd, admin)
}

/// One Prometheus text-format sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Scrapes `/metrics` on the admin port and parses every sample.
pub fn scrape(admin_port: u16) -> Vec<Sample> {
    let r = get(SocketAddr::from(([127, 0, 0, 1], admin_port)), "/metrics").expect("scrape /metrics");
    assert_eq!(r.status, 200);
    parse_metrics(&String::from_utf8_lossy(&r.body))
}

/// Parses Prometheus text format 0.0.4 samples (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("numeric sample value"),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("label k=v");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v))).map(|s| s.value)
}

/// Clients that keep a connection open for many requests (HTTP/1.1 keep-alive), opening
/// a new one only when the server says `Connection: close` or after a failure.
pub struct KeepAliveLoad;

impl KeepAliveLoad {
    pub fn start(addr: SocketAddr, clients: usize, path: &str, expect: Vec<u8>) -> Clients {
        let path = path.to_string();
        Clients::start(clients, expect, || {
            let path = path.clone();
            let mut conn: Option<(TcpStream, Vec<u8>)> = None;
            Box::new(move || {
                let result = keep_alive_get(&mut conn, addr, &path);
                if result.is_err() {
                    conn = None;
                }
                result
            })
        })
    }
}

/// One GET on the kept connection (opening one if needed); drops the connection when
/// the response says close.
fn keep_alive_get(conn: &mut Option<(TcpStream, Vec<u8>)>, addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        *conn = Some((s, Vec::new()));
    }
    let (stream, buf) = conn.as_mut().expect("connection just opened");
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
    loop {
        if let Some((r, used)) = parse_response(buf) {
            buf.drain(..used);
            if r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                *conn = None;
            }
            return Ok(r);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// ---- Helpers for the chaos and hostile-input suites ---------------------------------

/// Raises this process's soft RLIMIT_NOFILE towards `want` (never above the hard limit)
/// and returns the soft limit now in force. Daemons started afterwards inherit it, so
/// a test that opens a thousand sockets does not run out on a host whose default soft
/// limit is 1024.
pub fn raise_nofile_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < want {
            let raised = libc::rlimit { rlim_cur: want.min(lim.rlim_max), rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Open descriptors of `pid` (entries of /proc/<pid>/fd).
pub fn fd_count(pid: i32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count())
}

/// `pid`'s descriptor count once it holds still (the same in two reads 100 ms apart,
/// within 3 s): a client that just closed may still be lingering in the daemon.
pub fn stable_fd_count(pid: i32) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = fd_count(pid)?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid)?;
        if now == last || Instant::now() >= deadline {
            return Some(now);
        }
        last = now;
    }
}

/// The highest open descriptor number of `pid`.
pub fn max_fd(pid: i32) -> Option<i32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    dir.flatten().filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok()).max()
}

/// A field of /proc/<pid>/status in kB (e.g. "VmRSS", "VmHWM").
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Threads of `pid`.
pub fn thread_count(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find(|l| l.starts_with("Threads:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) `pid` has used, in seconds.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) ... utime is field 14 of the whole line = index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as f64;
    Some((utime + stime) as f64 / hz)
}

/// Sends a signal with kill(2) directly (no `kill` process: cheap enough to call in a
/// loop, and the result tells whether the target existed).
pub fn signal(pid: i32, sig: i32) -> bool {
    let Ok(signal) = nix::sys::signal::Signal::try_from(sig) else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok()
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

/// Scrapes /metrics without panicking (for background probes): None on any error.
pub fn try_scrape(admin_port: u16, timeout: Duration) -> Option<Vec<Sample>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let (r, _) = parse_response(&buf)?;
    (r.status == 200).then(|| parse_metrics(&String::from_utf8_lossy(&r.body)))
}

/// `webd_heartbeats_missed_total` per role (listener, manager, worker).
pub fn missed_heartbeats(samples: &[Sample]) -> HashMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name == "webd_heartbeats_missed_total")
        .filter_map(|s| s.label("role").map(|r| (r.to_string(), s.value)))
        .collect()
}

/// The largest heartbeat ages seen by a background probe, per role, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatFigures {
    pub max_age_ms: std::collections::BTreeMap<String, f64>,
    pub samples: u64,
    pub failed_samples: u64,
}

impl HeartbeatFigures {
    /// `listener 105 / manager 98 / worker 120` (ms), for summaries.
    pub fn brief(&self) -> String {
        let parts: Vec<String> = ["listener", "manager", "worker"]
            .iter()
            .map(|r| match self.max_age_ms.get(*r) {
                Some(ms) => format!("{r} {ms:.0}"),
                None => format!("{r} -"),
            })
            .collect();
        parts.join(" / ")
    }
}

/// Samples `webd_heartbeat_age_seconds{role}` from /metrics every `period` on a thread
/// of its own, keeping the largest value per role, until `finish`.
pub struct HeartbeatProbe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<HeartbeatFigures>>,
}

impl HeartbeatProbe {
    pub fn start(admin_port: u16, period: Duration) -> HeartbeatProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut figures = HeartbeatFigures::default();
            let started = Instant::now();
            // Bounded: a probe never outlives 15 minutes even if `finish` is never called.
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(900) {
                match try_scrape(admin_port, Duration::from_secs(2)) {
                    Some(samples) => {
                        figures.samples += 1;
                        for s in samples.iter().filter(|s| s.name == "webd_heartbeat_age_seconds") {
                            if let Some(role) = s.label("role") {
                                let ms = s.value * 1000.0;
                                let max = figures.max_age_ms.entry(role.to_string()).or_insert(0.0);
                                *max = max.max(ms);
                            }
                        }
                    }
                    None => figures.failed_samples += 1,
                }
                std::thread::sleep(period);
            }
            figures
        });
        HeartbeatProbe { stop, handle: Some(handle) }
    }

    pub fn finish(mut self) -> HeartbeatFigures {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for HeartbeatProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Deterministic xorshift64* generator: the suites need randomness without a crate,
/// and a printed seed makes a run reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// A seed from `WEBD_TEST_SEED` if set, else from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("WEBD_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` (hi exclusive, hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}
