//! Operator flags against the real binary: `--max-requests-per-connection`,
//! `--access-log-format json` and `--check-config`.

use crate::util::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

fn get_keep_alive(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

#[test]
fn the_nth_request_on_a_connection_is_answered_with_close_and_others_are_unaffected() {
    let webd = Webd::start_with(Options {
        workers: 1,
        args: vec!["--max-requests-per-connection".into(), "3".into()],
        ..Default::default()
    });
    let (mut first, mut second) = (connect(webd.addr()), connect(webd.addr()));
    for n in 1..=2 {
        first.send(&get_keep_alive("/index.html")).expect("send");
        let response = first.response(LIMIT).unwrap_or_else(|e| panic!("request {n}: {e}"));
        assert!(!response.closes() && response.status == 200, "request {n} of 3: {response:?}");
    }
    // Another connection counts its own requests.
    second.send(&get_keep_alive("/index.html")).expect("send");
    assert!(!second.response(LIMIT).expect("second connection").closes());

    first.send(&get_keep_alive("/index.html")).expect("send");
    let third = first.response(LIMIT).expect("request 3");
    assert_eq!((third.status, third.closes(), third.body.as_slice()), (200, true, BODY), "{third:?}");
    let end = first.read_to_close(LIMIT);
    assert!(end.eof && end.bytes.is_empty(), "after the 3rd response: EOF and nothing more, got {end:?}");

    second.send(&get_keep_alive("/index.html")).expect("send");
    assert!(!second.response(LIMIT).expect("second connection, request 2").closes());

    // Pipelined: three answers, the third says close, the fourth request is not answered.
    let mut pipelined = connect(webd.addr());
    pipelined.send(&get_keep_alive("/index.html").repeat(4)).expect("send");
    for n in 1..=3 {
        let response = pipelined.response(LIMIT).unwrap_or_else(|e| panic!("pipelined {n}: {e}"));
        assert_eq!(response.closes(), n == 3, "pipelined {n}: {response:?}");
    }
    let end = pipelined.read_to_close(LIMIT);
    assert!(end.eof && end.bytes.is_empty(), "nothing after the 3rd pipelined response: {end:?}");
}

#[test]
fn the_default_limit_leaves_a_long_keep_alive_connection_open() {
    let webd = Webd::start_with(Options { workers: 1, ..Default::default() });
    let mut conn = connect(webd.addr());
    for n in 1..=50 {
        conn.send(&get_keep_alive("/index.html")).expect("send");
        assert!(!conn.response(LIMIT).unwrap_or_else(|e| panic!("request {n}: {e}")).closes(), "request {n}");
    }
}

/// The JSON access log's lines, once `count` are written.
fn json_lines(log: &Path, count: usize) -> Vec<serde_json::Value> {
    let text = wait_for(LIMIT, &format!("{count} access log lines"), || {
        let text = std::fs::read_to_string(log).ok()?;
        (text.lines().count() >= count).then_some(text)
    });
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}")))
        .collect()
}

fn line_of<'a>(lines: &'a [serde_json::Value], user_agent: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["user_agent"] == user_agent)
        .unwrap_or_else(|| panic!("no line with user_agent {user_agent:?}: {lines:#?}"))
}

#[test]
fn the_json_access_log_writes_one_parsable_object_per_response() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("access.json");
    let webd = Webd::spawn(Options {
        workers: 1,
        args: vec![
            "--access-log".into(),
            log.to_string_lossy().into_owned(),
            "--access-log-format".into(),
            "json".into(),
        ],
        ..Default::default()
    });
    std::fs::write(webd.root.join("style.css"), "body { color: red }\n".repeat(50)).expect("css");
    std::fs::write(webd.root.join("style.css.br"), b"pretend-brotli").expect("sidecar");
    webd.wait_ready();
    let ask = |raw: &[u8]| request_within(webd.addr(), raw, LIMIT).expect("a response");
    let ok = ask(
        b"GET /index.html?x=1 HTTP/1.1\r\nHost: t\r\nUser-Agent: ok\r\nReferer: http://r/\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        ask(b"GET /missing HTTP/1.1\r\nHost: t\r\nUser-Agent: missing\r\nConnection: close\r\n\r\n").status,
        404
    );
    let mut head = connect(webd.addr());
    head.send(b"HEAD /index.html HTTP/1.1\r\nHost: t\r\nUser-Agent: head\r\nConnection: close\r\n\r\n").expect("send");
    assert_eq!(head.head_response(LIMIT).expect("HEAD").status, 200);
    let range = ask(
        b"GET /index.html HTTP/1.1\r\nHost: t\r\nRange: bytes=0-3\r\nUser-Agent: range\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((range.status, range.body.as_slice()), (206, &BODY[..4]));
    let br = ask(
        b"GET /style.css HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br\r\nUser-Agent: br\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((br.status, br.header("Content-Encoding")), (200, Some("br")));
    // A quote, a backslash, a tab and non-ASCII in the target and the user agent.
    let hostile =
        ask(b"GET /a\"b\\c%09\xc3\xa9?q=\"x\" HTTP/1.1\r\nHost: t\r\nUser-Agent: h\"o\\s\ttile \xc3\xa9\xff\r\nConnection: close\r\n\r\n");
    assert_eq!(hostile.status, 404);
    // A control character in the target: unparsable, 400, logged without method or path.
    assert_eq!(ask(b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n").status, 400);

    // Ours, and the readiness probe's GET.
    let lines = json_lines(&log, 8);
    assert_eq!(lines.len(), 8, "{lines:#?}");
    let fields = [
        "time",
        "site",
        "client",
        "method",
        "path",
        "status",
        "bytes",
        "duration_ms",
        "user_agent",
        "referer",
        "encoding",
    ];
    for line in &lines {
        let keys: Vec<&str> = line.as_object().expect("an object").keys().map(String::as_str).collect();
        let mut wanted = fields.to_vec();
        wanted.sort_unstable();
        assert_eq!(keys, wanted, "{line}");
        assert_eq!((&line["site"], &line["client"]), (&"default".into(), &"127.0.0.1".into()), "{line}");
        let time = line["time"].as_str().expect("time is a string");
        assert!(time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T", "{time}");
        assert!(line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
    }
    let ok = line_of(&lines, "ok");
    assert_eq!((&ok["method"], &ok["path"], &ok["status"]), (&"GET".into(), &"/index.html?x=1".into(), &200.into()));
    assert_eq!(
        (&ok["bytes"], &ok["referer"], &ok["encoding"]),
        (&BODY.len().into(), &"http://r/".into(), &"identity".into())
    );
    let missing = line_of(&lines, "missing");
    assert_eq!((&missing["status"], &missing["referer"]), (&404.into(), &serde_json::Value::Null));
    let head = line_of(&lines, "head");
    assert_eq!((&head["method"], &head["status"], &head["bytes"]), (&"HEAD".into(), &200.into(), &0.into()));
    let range = line_of(&lines, "range");
    assert_eq!((&range["status"], &range["bytes"]), (&206.into(), &4.into()));
    let br = line_of(&lines, "br");
    assert_eq!((&br["encoding"], &br["bytes"]), (&"br".into(), &"pretend-brotli".len().into()));
    let hostile = line_of(&lines, "h\"o\\s\ttile é\u{fffd}");
    assert_eq!((&hostile["path"], &hostile["status"]), (&"/a\"b\\c%09é?q=\"x\"".into(), &404.into()));
    let unparsable = lines.iter().find(|l| l["status"] == 400).expect("the 400 is logged");
    assert_eq!((&unparsable["method"], &unparsable["path"]), (&serde_json::Value::Null, &serde_json::Value::Null));
}

/// `webd --check-config ARGS`: its exit code, stdout and stderr; it must exit by itself.
fn check_config(args: &[&str], dir: &Path) -> (Option<i32>, String, String) {
    let (out, err) = (dir.join("check.out"), dir.join("check.err"));
    let mut child = Command::new(WEBD)
        .arg("--check-config")
        .args(args)
        .env("WEBD_CONTROL_SOCKET", dir.join("env-ctl").join("webd.sock"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run webd --check-config");
    let status = exit_within(&mut child, LIMIT).expect("--check-config exits by itself");
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    (status.code(), read(&out), read(&err))
}

/// A config file in `dir` serving `dir/root` with one header rule, one redirect and a
/// fallback, on `listen`, with `extra` appended.
fn write_config(dir: &Path, listen: &str, extra: &str) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("root")).expect("root");
    let text = format!(
        "root = \"root\"\nlisten = [\"{listen}\"]\ncontrol_socket = \"ctl/webd.sock\"\naccess_log = \"logs/access.log\"\n\
         fallback = \"/index.html\"\n{extra}\n\
         [[headers]]\nmatch = \"/assets/**\"\nset = {{ \"Cache-Control\" = \"public, max-age=31536000, immutable\" }}\n\
         [[redirects]]\nfrom = \"/old/\"\nto = \"/new/\"\nstatus = 308\n"
    );
    let path = dir.join("webd.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn check_config_summarises_a_good_configuration_and_starts_binds_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    // The addresses are taken: a start would fail on them, the check does not bind them.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_tls = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = taken.local_addr().expect("addr").to_string();
    let tls_listen = taken_tls.local_addr().expect("addr").to_string();
    let ca = TestCa::new();
    let issued = ca.issue_until(dir.path(), "site", &["example.org", "*.example.org"], Some((2035, 6, 1)));
    let extra = format!(
        "tls_listen = [\"{tls_listen}\"]\n[[certificates]]\ncert = \"{}\"\nkey = \"{}\"",
        issued.cert.display(),
        issued.key.display()
    );
    let config = write_config(dir.path(), &listen, &extra);
    let before: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    let (code, out, err) = check_config(&["--config", &config.to_string_lossy(), "--workers", "3"], dir.path());
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    let root = std::fs::canonicalize(dir.path().join("root")).expect("root");
    for needle in [
        format!("root: {}", root.display()),
        format!("listen: {listen}"),
        format!("tls_listen: {tls_listen}"),
        "names example.org, *.example.org".to_string(),
        "not after: 2035-06-01T00:00:00Z".to_string(),
        issued.cert.display().to_string(),
        "headers[0] match /assets/**: Cache-Control: public, max-age=31536000, immutable".to_string(),
        "redirects[0] /old/ (prefix): 308 /new/".to_string(),
        "fallback: /index.html".to_string(),
        "workers: 3".to_string(),
    ] {
        assert!(out.contains(&needle), "{needle:?} missing from the summary:\n{out}");
    }
    let mut after: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    after.retain(|name| name != "check.out" && name != "check.err");
    assert_eq!(after.len(), before.len(), "created {after:?}, had {before:?}");
    assert!(!dir.path().join("ctl").exists() && !dir.path().join("logs").exists(), "no socket directory, no log");
    assert!(!dir.path().join("env-ctl").exists());
    drop((taken, taken_tls));
}

#[test]
fn check_config_names_a_bad_key_a_bad_certificate_and_a_bad_glob_and_exits_2() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").expect("write");
    std::fs::write(dir.path().join("garbage.key"), "not a key\n").expect("write");
    let bad_certificate = "[[certificates]]\ncert = \"garbage.pem\"\nkey = \"garbage.key\"";
    for (extra, needles) in [
        ("no_such_key = 1", vec!["webd.toml", "no_such_key"]),
        ("max_requests_per_connection = 0", vec!["webd.toml", "max_requests_per_connection"]),
        ("access_log_format = \"xml\"", vec!["webd.toml", "access_log_format"]),
        (bad_certificate, vec!["garbage.pem"]),
        ("[[headers]]\nmatch = \"/a**\"\nset = { X-A = \"1\" }", vec!["webd.toml", "headers[1]", "whole segment"]),
    ] {
        // A key goes before the file's tables, a table after them (a bad rule is headers[1]).
        let config = write_config(dir.path(), "127.0.0.1:0", "");
        let text = std::fs::read_to_string(&config).expect("read");
        let text = if extra.starts_with("[[") { format!("{text}{extra}\n") } else { format!("{extra}\n{text}") };
        std::fs::write(&config, text).expect("write");
        let (code, out, err) = check_config(&["--config", &config.to_string_lossy()], dir.path());
        assert_eq!(code, Some(2), "{extra:?}: stdout {out}, stderr {err}");
        assert!(out.is_empty(), "{extra:?}: no summary: {out}");
        for needle in needles {
            assert!(err.contains(needle), "{extra:?}: {needle:?} not in {err}");
        }
        assert!(!dir.path().join("ctl").exists() && !dir.path().join("logs").exists());
    }
    // What a start refuses with exit 1 (a missing root) is a refused configuration here.
    let (code, _, err) = check_config(&["--root", &dir.path().join("nowhere").to_string_lossy()], dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nowhere"), "{err}");
    // Flags are checked too.
    let (code, _, err) = check_config(&["--max-requests-per-connection", "0"], dir.path());
    assert_eq!(code, Some(2), "{err}");
}
