//! End-to-end tests of the `webctl` binary against a stand-in for the daemon's
//! side of the control protocol (docs/reference.md): a Unix-socket server thread
//! in a unique temp dir that records the request line and sends a scripted answer.
//!
//! They check the wire format of every command, `--json` passthrough, and the
//! exit codes: 0 ok, 1 refused or unreadable, 2 usage, 3 unreachable.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Longest a test waits for anything; far above any healthy run.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the fake daemon does once it has read the request line.
enum Answer {
    /// Writes this line and a newline.
    Line(&'static str),
    /// Writes these bytes and closes.
    Bytes(&'static [u8]),
    /// Never answers; holds the connection until the client goes away.
    Silence,
}

/// The daemon side of one control-socket exchange, on a fresh socket.
struct FakeDaemon {
    dir: tempfile::TempDir,
    path: PathBuf,
    requests: mpsc::Receiver<String>,
}

impl FakeDaemon {
    fn start(answer: Answer) -> FakeDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("webd.sock");
        let listener = UnixListener::bind(&path).expect("bind fake control socket");
        let (sender, requests) = mpsc::channel();
        thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let _ = stream.set_read_timeout(Some(DEADLINE));
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let _ = sender.send(line);
            let _ = match answer {
                Answer::Line(line) => (&stream).write_all(format!("{line}\n").as_bytes()),
                Answer::Bytes(bytes) => (&stream).write_all(bytes),
                Answer::Silence => reader.read_to_end(&mut Vec::new()).map(drop),
            };
        });
        FakeDaemon { dir, path, requests }
    }

    fn socket(&self) -> &str {
        self.path.to_str().expect("temp paths are UTF-8")
    }

    /// The request line webctl sent, newline included.
    fn request(&self) -> String {
        self.requests
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|err| panic!("no request reached the fake daemon in {}: {err}", self.dir.path().display()))
    }
}

/// One finished run of the binary.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn expect_code(self, code: i32) -> Run {
        assert_eq!(self.code, Some(code), "webctl {:?}: {self:#?}", self.args);
        self
    }
}

fn webctl(args: &[&str]) -> Run {
    webctl_with_env(args, None)
}

fn webctl_with_env(args: &[&str], control_socket_env: Option<&Path>) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_webctl"));
    command.args(args).env_remove("WEBD_CONTROL_SOCKET");
    if let Some(path) = control_socket_env {
        command.env("WEBD_CONTROL_SOCKET", path);
    }
    let output = command.output().expect("run webctl");
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A status answer in the exact form docs/reference.md documents.
const STATUS: &str = r#"{"ok":true,"status":{"version":"0.1.0","pid":4242,"uptime_seconds":3725.4,"state":"running","listen":["127.0.0.1:8080"],"processes":[{"role":"listener","pid":4243,"state":"running","restarts":0,"heartbeat_age_ms":12.3,"heartbeat_latency_ms":0.1},{"role":"manager","pid":4244,"state":"running","restarts":1,"heartbeat_age_ms":40.0,"heartbeat_latency_ms":0.2}],"workers":[{"id":0,"pid":4250,"state":"busy","restarts":0,"active_connections":3,"requests":10234,"utilization":0.4},{"id":1,"pid":4251,"state":"idle","restarts":2,"active_connections":0,"requests":7,"utilization":0.0}],"connections":{"accepted":1520,"active":3},"requests_total":10241}}"#;

#[test]
fn status_prints_a_header_and_an_aligned_table() {
    let daemon = FakeDaemon::start(Answer::Line(STATUS));
    let run = webctl(&["--control-socket", daemon.socket(), "status"]).expect_code(0);
    assert_eq!(daemon.request(), "{\"cmd\":\"status\"}\n");
    let want = "\
webd 0.1.0 (pid 4242) running, up 1h 2m 5s; listen 127.0.0.1:8080; \
connections 1520 accepted, 3 active; requests 10241

ROLE      ID   PID  STATE    RESTARTS  HB AGE  CONNS  REQUESTS
listener   -  4243  running         0    12ms      -         -
manager    -  4244  running         1    40ms      -         -
worker     0  4250  busy            0       -      3     10234
worker     1  4251  idle            2       -      0         7
";
    assert_eq!(run.stdout, want, "{run:#?}");
    assert_eq!(run.stderr, "");
}

#[test]
fn json_prints_the_daemons_line_verbatim() {
    // Spacing and an unknown field must survive: --json is the daemon's bytes.
    const LINE: &str = r#"{ "ok": true, "message": "draining", "future_field": [1, 2] }"#;
    let daemon = FakeDaemon::start(Answer::Line(LINE));
    let run = webctl(&["drain", "--json", "--control-socket", daemon.socket()]).expect_code(0);
    assert_eq!(daemon.request(), "{\"cmd\":\"drain\"}\n");
    assert_eq!(run.stdout, format!("{LINE}\n"));

    let daemon = FakeDaemon::start(Answer::Line(STATUS));
    let run = webctl(&["--json", "--control-socket", daemon.socket(), "status"]).expect_code(0);
    assert_eq!(run.stdout, format!("{STATUS}\n"));
}

#[test]
fn every_command_sends_its_spec_request_and_prints_the_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["restart", "listener"], r#"{"cmd":"restart","target":"listener"}"#),
        (&["restart", "manager"], r#"{"cmd":"restart","target":"manager"}"#),
        (&["restart", "workers"], r#"{"cmd":"restart","target":"workers"}"#),
        (&["restart", "worker", "3"], r#"{"cmd":"restart","target":"worker","id":3}"#),
        (&["drain"], r#"{"cmd":"drain"}"#),
        (&["resume"], r#"{"cmd":"resume"}"#),
        (&["scale", "6"], r#"{"cmd":"scale","workers":6}"#),
        (&["stop"], r#"{"cmd":"stop"}"#),
    ];
    for (args, request) in cases {
        let daemon = FakeDaemon::start(Answer::Line(r#"{"ok":true,"message":"done: it worked"}"#));
        let mut argv = vec!["--control-socket", daemon.socket()];
        argv.extend_from_slice(args);
        let run = webctl(&argv).expect_code(0);
        assert_eq!(daemon.request(), format!("{request}\n"), "{args:?}");
        assert_eq!(run.stdout, "done: it worked\n", "{run:#?}");
    }

    let daemon = FakeDaemon::start(Answer::Line(r#"{"ok":true}"#));
    let run = webctl(&["--control-socket", daemon.socket(), "resume"]).expect_code(0);
    assert_eq!(run.stdout, "ok\n");
}

#[test]
fn a_refusal_exits_1_with_the_daemons_reason() {
    const NO: &str = r#"{"ok":false,"error":"no worker 7"}"#;
    let daemon = FakeDaemon::start(Answer::Line(NO));
    let run = webctl(&["--control-socket", daemon.socket(), "restart", "worker", "7"]);
    let run = run.expect_code(1);
    assert_eq!(run.stderr, "webctl: no worker 7\n");
    assert_eq!(run.stdout, "");

    let daemon = FakeDaemon::start(Answer::Line(NO));
    let run = webctl(&["--json", "--control-socket", daemon.socket(), "scale", "1"]);
    let run = run.expect_code(1);
    assert_eq!(run.stdout, format!("{NO}\n"));
}

#[test]
fn a_missing_socket_exits_3_naming_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("absent.sock");
    let socket = path.to_str().expect("UTF-8 path");
    for args in [&["--control-socket", socket, "status"][..], &["--control-socket", socket, "stop"]] {
        let run = webctl(args).expect_code(3);
        assert_eq!(
            run.stderr,
            format!(
                "webctl: cannot reach webd at {socket}: No such file or directory \
                 (is webd running?)\n"
            ),
        );
        assert_eq!(run.stdout, "");
    }
}

#[test]
fn a_socket_nobody_listens_on_exits_3() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&path).expect("bind"));
    let socket = path.to_str().expect("UTF-8 path");
    let run = webctl(&["--control-socket", socket, "status"]).expect_code(3);
    assert!(run.stderr.contains(&format!("cannot reach webd at {socket}: Connection refused")));
}

#[test]
fn json_prints_an_error_object_when_the_daemon_is_unreachable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("absent.sock");
    let socket = socket.to_str().expect("UTF-8 path");
    let run = webctl(&["--json", "--control-socket", socket, "status"]).expect_code(3);
    let answer: serde_json::Value = serde_json::from_str(&run.stdout).expect("a JSON object on stdout");
    assert_eq!(answer["ok"], false);
    assert!(answer["error"].as_str().is_some_and(|e| e.contains(socket)), "{answer}");
}

#[test]
fn the_default_socket_honours_webd_control_socket() {
    let daemon = FakeDaemon::start(Answer::Line(r#"{"ok":true,"message":"resumed"}"#));
    let run = webctl_with_env(&["resume"], Some(&daemon.path)).expect_code(0);
    assert_eq!(daemon.request(), "{\"cmd\":\"resume\"}\n");
    assert_eq!(run.stdout, "resumed\n");

    let dir = tempfile::tempdir().expect("temp dir");
    let absent = dir.path().join("nope.sock");
    let run = webctl_with_env(&["status"], Some(&absent)).expect_code(3);
    assert!(run.stderr.contains(&absent.display().to_string()), "{run:#?}");
}

#[test]
fn unusable_answers_exit_1() {
    let cases = [
        (Answer::Line("this is not json"), "unreadable response from webd at"),
        (Answer::Line(r#"{"status":{}}"#), "unreadable response from webd at"),
        (Answer::Bytes(b"{\"ok\":true"), "closed the connection without answering"),
        (Answer::Bytes(b""), "closed the connection without answering"),
        (Answer::Line(r#"{"ok":true}"#), "webd answered status without a status document"),
    ];
    for (answer, message) in cases {
        let daemon = FakeDaemon::start(answer);
        let run = webctl(&["--control-socket", daemon.socket(), "status"]).expect_code(1);
        assert!(run.stderr.starts_with("webctl: "), "{run:#?}");
        assert!(run.stderr.contains(message), "want {message:?}: {run:#?}");
        assert_eq!(run.stdout, "");
    }
}

#[test]
fn a_silent_daemon_times_out_with_exit_1() {
    let daemon = FakeDaemon::start(Answer::Silence);
    let started = Instant::now();
    let run = webctl(&["--timeout", "1", "--control-socket", daemon.socket(), "drain"]);
    let run = run.expect_code(1);
    assert!(started.elapsed() < DEADLINE, "took {:?}", started.elapsed());
    assert_eq!(daemon.request(), "{\"cmd\":\"drain\"}\n");
    assert_eq!(run.stderr, format!("webctl: no answer from webd at {}: timed out\n", daemon.socket()));
}

#[test]
fn usage_errors_exit_2_without_touching_the_socket() {
    let daemon = FakeDaemon::start(Answer::Line(r#"{"ok":true}"#));
    for args in [
        &[][..],
        &["frobnicate"],
        &["restart", "worker"],
        &["scale", "-1"],
        &["scale", "0"],
        &["scale", "257"],
        &["scale", "--", "-1"],
        &["restart", "everything"],
        &["--json"],
    ] {
        let mut argv = vec!["--control-socket", daemon.socket()];
        argv.extend_from_slice(args);
        let run = webctl(&argv).expect_code(2);
        assert!(run.stderr.starts_with("error: "), "{run:#?}");
    }
    assert!(daemon.requests.try_recv().is_err(), "a usage error reached the daemon");
}

#[test]
fn completions_print_a_script_for_each_shell() {
    for (shell, marker) in [("bash", "_webctl()"), ("zsh", "#compdef webctl"), ("fish", "complete -c webctl")] {
        let run = webctl(&["completions", shell]).expect_code(0);
        assert!(run.stdout.contains(marker), "{shell}: {run:#?}");
        assert!(run.stdout.contains("restart"), "{shell}");
    }
}
