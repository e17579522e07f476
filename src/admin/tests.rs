//! The admin endpoint over real TCP: every endpoint's answers, the metrics exposition
//! (names, labels, histogram shape, `promtool check metrics`), and the bounds that keep
//! hostile clients from delaying a health check.

use super::metrics::{self, MetricDef, RESTART_REASONS, ROLES, WORKER_STATES};
use super::{bind, serve, Limits};
use crate::figures::{ByCode, ByRole, Figures, Histogram, Supervision, Tls, LATENCY_BUCKETS};
use crate::observe::{Observed, RoleState, SharedObserved};
use prometheus::proto::MetricType;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use webd_proto::WorkerState;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------
// harness

fn histogram(counts: &[u64], sum_seconds: f64) -> Histogram {
    Histogram { counts: counts.to_vec(), sum_ns: (sum_seconds * 1e9).round() as u64 }
}

/// A role's state and supervision figures, distinct per `seed`.
fn role(up: bool, seed: u64) -> (RoleState, Supervision) {
    let mut latency = Histogram::default();
    for (i, value) in [0.000005, 0.00003, 0.0002, 0.003, 0.003, 2.0].iter().enumerate().take(seed as usize + 3) {
        latency.observe(&LATENCY_BUCKETS, Duration::from_secs_f64(*value * (i as f64 + 1.0)));
    }
    let state = RoleState { up, heartbeat_age_seconds: 0.05 * seed as f64 };
    (state, Supervision { missed_heartbeats: seed, restarts: [seed, seed * 2, 1].into(), latency })
}

fn status() -> webd_proto::Status {
    webd_proto::Status {
        version: crate::VERSION.to_string(),
        pid: 4242,
        uptime_seconds: 12.5,
        state: webd_proto::DaemonState::Running,
        listen: vec!["127.0.0.1:8080".into()],
        admin: Some("127.0.0.1:9180".into()),
        tls_listen: Vec::new(),
        certificates: Vec::new(),
        processes: vec![webd_proto::ProcessStatus {
            role: "listener".into(),
            pid: 4243,
            state: webd_proto::ProcessState::Running,
            restarts: 1,
            heartbeat_age_ms: 40.0,
            heartbeat_latency_ms: 0.05,
            keeper_pid: Some(4244),
        }],
        workers: vec![webd_proto::WorkerStatus {
            id: 0,
            pid: 4245,
            state: webd_proto::WorkerState::Busy,
            restarts: 0,
            active_connections: 3,
            requests: 99,
            utilization: 0.25,
            keeper_pid: Some(4246),
        }],
        connections: webd_proto::ConnectionStatus { accepted: 120, active: 3 },
        requests_total: 99,
    }
}

/// An `Observed` with every field filled, as a running daemon would publish it.
fn synthetic() -> Observed {
    let (listener, manager, worker) = (role(true, 1), role(true, 2), role(false, 0));
    let mut responses = ByCode::default();
    for (code, n) in [(200, 90), (404, 8), (503, 1)] {
        responses.add(code, n);
    }
    Observed {
        status: Some(status()),
        not_ready: None,
        draining: false,
        roles: ByRole { listener: listener.0, manager: manager.0, worker: worker.0 },
        workers_by_state: vec![(WorkerState::Busy, 1), (WorkerState::Idle, 2)],
        worker_utilization: vec![(0, 0.25), (1, 0.0), (2, 1.0)],
        connections_active: 3,
        figures: Figures {
            accepted: 120,
            responses,
            response_bytes: 123_456,
            // Per-bucket counts over DURATION_BUCKETS (14 bounds) plus the overflow.
            duration: histogram(&[5, 10, 20, 30, 15, 10, 5, 2, 1, 0, 0, 0, 0, 0, 1], 1.75),
            supervision: ByRole { listener: listener.1, manager: manager.1, worker: worker.1 },
            tls: Tls {
                ok: [3, 40],
                failed: [0, 1, 2],
                resumed: 7,
                duration: histogram(&[1, 2, 30, 5, 3, 2, 0, 0, 0, 0, 0], 0.12),
            },
            ..Figures::default()
        },
        upgrades: 2,
        daemon_restarts: 1,
        certificates: vec![("a.test".into(), 1_900_000_000)],
        generation: 1,
    }
}

fn shared(o: Observed) -> SharedObserved {
    Arc::new(parking_lot::Mutex::new(o))
}

/// Serves `observed` on a free loopback port; the thread lives until the test binary exits.
fn start_with(observed: SharedObserved, limits: Limits) -> SocketAddr {
    let listener = bind("127.0.0.1:0".parse().expect("literal address")).expect("bind a free loopback port");
    let addr = listener.local_addr().expect("bound address");
    serve(listener, observed, limits).expect("start the admin thread");
    addr
}

fn start(observed: Observed) -> (SocketAddr, SharedObserved) {
    let observed = shared(observed);
    (start_with(observed.clone(), Limits::default()), observed)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the admin endpoint");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("set read timeout");
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).expect("set write timeout");
    stream
}

/// One parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Splits a byte stream holding whole responses (bodies sized by Content-Length);
/// `head_only` marks responses to HEAD (no body despite the length).
fn parse_replies(mut raw: &[u8], head_only: &[bool]) -> Vec<Reply> {
    let mut replies = Vec::new();
    for &head in head_only {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(raw).expect("a well-formed response head") {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("truncated response: {:?}", String::from_utf8_lossy(raw)),
        };
        let headers: Vec<(String, String)> =
            resp.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
        let status = resp.code.expect("a status code");
        let reply = Reply { status, headers, body: String::new() };
        let length: usize =
            reply.header("content-length").expect("every response has Content-Length").parse().expect("a number");
        let body_len = if head { 0 } else { length };
        let body = String::from_utf8_lossy(&raw[len..len + body_len]).into_owned();
        replies.push(Reply { body, ..reply });
        raw = &raw[len + body_len..];
    }
    assert!(raw.is_empty(), "unexpected bytes after the responses: {:?}", String::from_utf8_lossy(raw));
    replies
}

/// Sends `raw` on a new connection and reads until the server closes it.
fn exchange(addr: SocketAddr, raw: &str, head_only: &[bool]) -> Vec<Reply> {
    let mut stream = connect(addr);
    stream.write_all(raw.as_bytes()).expect("send the request");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read until the server closes");
    parse_replies(&out, head_only)
}

fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let raw = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    exchange(addr, &raw, &[method == "HEAD"]).pop().expect("one reply")
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path)
}

/// Sends one keep-alive request on `stream` and reads exactly its response.
fn keep_alive_request(stream: &mut TcpStream, path: &str) -> Reply {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes()).expect("send");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read a response");
        assert!(n > 0, "connection closed before a whole response: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = resp.parse(&raw) {
            let length = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .expect("Content-Length");
            if raw.len() >= len + length {
                return parse_replies(&raw, &[false]).pop().expect("one reply");
            }
        }
    }
}

/// True when the server closed `stream` (EOF) before the client timeout.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// One sample line of the text exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next().unwrap_or_else(|| panic!("unterminated labels in {line:?}"));
            match c {
                '}' => break i,
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "quoted label value in {line:?}");
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '"' => break,
                            '\\' => value.push(match chars.next().map(|(_, c)| c) {
                                Some('n') => '\n',
                                Some(other) => other,
                                None => panic!("dangling escape in {line:?}"),
                            }),
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest.split_whitespace().next().unwrap_or_else(|| panic!("no value in {line:?}"));
    let value = value.parse().unwrap_or_else(|e| panic!("bad value {value:?} in {line:?}: {e}"));
    Sample { name, labels, value }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn value_of(samples: &[Sample], name: &str, pairs: &[(&str, &str)]) -> Option<f64> {
    let want = labels(pairs);
    samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
}

fn scrape(addr: SocketAddr) -> (Reply, Vec<Sample>) {
    let reply = get(addr, "/metrics");
    assert_eq!(reply.status, 200, "{reply:?}");
    let samples = parse_exposition(&reply.body);
    (reply, samples)
}

// ---------------------------------------------------------------------------------
// endpoints

#[test]
fn healthz_readyz_and_status_answer_when_ready() {
    let (addr, _) = start(synthetic());

    let health = get(addr, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"), "{health:?}");
    assert_eq!(health.header("connection"), Some("close"));

    let ready = get(addr, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready"), "{ready:?}");

    let status = get(addr, "/status");
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!(status.header("content-type"), Some("application/json"));
    let parsed: webd_proto::Status = serde_json::from_str(&status.body).expect("status JSON");
    assert_eq!(parsed, self::status());
}

#[test]
fn readyz_gives_the_reason_and_status_waits_for_the_daemon() {
    let (addr, _) = start(Observed { not_ready: Some("no worker is up".into()), ..Observed::default() });

    let ready = get(addr, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (503, "no worker is up"), "{ready:?}");

    let status = get(addr, "/status");
    assert_eq!(status.status, 503, "{status:?}");
    assert!(status.body.contains("not available"), "{status:?}");

    assert_eq!(get(addr, "/healthz").status, 200);
}

#[test]
fn readiness_follows_the_observed_state() {
    let (addr, observed) = start(synthetic());
    assert_eq!(get(addr, "/readyz").status, 200);
    observed.lock().not_ready = Some("draining".into());
    let ready = get(addr, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining"));
}

#[test]
fn other_methods_get_405_with_allow_and_unknown_paths_404() {
    let (addr, _) = start(synthetic());

    for (method, path) in [("POST", "/metrics"), ("PUT", "/readyz"), ("DELETE", "/status"), ("OPTIONS", "/healthz")] {
        let reply = request(addr, method, path);
        assert_eq!(reply.status, 405, "{method} {path}: {reply:?}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{method} {path}");
    }
    // A POST with a body is answered and its connection closed, body unread.
    let raw = "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let reply = exchange(addr, raw, &[false]).pop().expect("one reply");
    assert_eq!((reply.status, reply.header("connection")), (405, Some("close")));

    let missing = get(addr, "/nope");
    assert_eq!(missing.status, 404, "{missing:?}");
}

#[test]
fn head_is_answered_like_get_without_a_body() {
    let (addr, _) = start(synthetic());
    for path in ["/healthz", "/readyz", "/status", "/metrics"] {
        let head = request(addr, "HEAD", path);
        assert_eq!(head.status, 200, "HEAD {path}: {head:?}");
        assert!(head.body.is_empty());
        let length: usize = head.header("content-length").expect("length").parse().expect("number");
        assert!(length > 0, "HEAD {path} announces the GET body length");
    }
    assert_eq!(request(addr, "HEAD", "/healthz").header("content-length"), Some("2"));
}

#[test]
fn keep_alive_serves_pipelined_requests_in_order() {
    let (addr, _) = start(synthetic());
    let raw = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nHEAD /readyz HTTP/1.1\r\nHost: a\r\n\r\n\
               GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let replies = exchange(addr, raw, &[false, true, false]);
    let summary: Vec<(u16, &str, Option<&str>)> =
        replies.iter().map(|r| (r.status, r.body.as_str(), r.header("connection"))).collect();
    assert_eq!(summary, [(200, "ok", None), (200, "", None), (200, "ready", Some("close"))]);

    let mut stream = connect(addr);
    for _ in 0..3 {
        assert_eq!(keep_alive_request(&mut stream, "/healthz").body, "ok");
    }
}

#[test]
fn oversized_and_malformed_heads_are_refused() {
    let (addr, _) = start(synthetic());

    let huge = format!("GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "a".repeat(9000));
    let mut stream = connect(addr);
    // The server may close before taking every byte: a failed write is fine.
    let _ = stream.write_all(huge.as_bytes());
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 431 "), "{:?}", String::from_utf8_lossy(&out));

    let bad = exchange(addr, "GET /\0 HTTP/1.1\r\n\r\n", &[false]).pop().expect("one reply");
    assert_eq!((bad.status, bad.header("connection")), (400, Some("close")), "{bad:?}");

    let mut too_many = String::from("GET /healthz HTTP/1.1\r\n");
    for i in 0..100 {
        too_many.push_str(&format!("X-{i}: y\r\n"));
    }
    too_many.push_str("\r\n");
    assert_eq!(exchange(addr, &too_many, &[false]).pop().expect("one reply").status, 431);
}

// ---------------------------------------------------------------------------------
// metrics

fn expected_samples(def: &MetricDef) -> Vec<String> {
    match def.kind {
        MetricType::HISTOGRAM => ["_bucket", "_sum", "_count"].iter().map(|s| format!("{}{s}", def.name)).collect(),
        _ => vec![def.name.to_string()],
    }
}

#[test]
fn metrics_expose_every_spec_name_and_label_set() {
    let (addr, _) = start(synthetic());
    let (reply, samples) = scrape(addr);
    assert_eq!(reply.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));

    let spec: [(&str, &str, &[&str]); 23] = [
        ("webd_heartbeat_latency_seconds", "histogram", &["role"]),
        ("webd_heartbeat_age_seconds", "gauge", &["role"]),
        ("webd_heartbeats_missed_total", "counter", &["role"]),
        ("webd_restarts_total", "counter", &["role", "reason"]),
        ("webd_process_up", "gauge", &["role"]),
        ("webd_workers", "gauge", &["state"]),
        ("webd_worker_utilization_ratio", "gauge", &["worker"]),
        ("webd_connections_accepted_total", "counter", &[]),
        ("webd_connections_active", "gauge", &[]),
        ("webd_connections_rescued_total", "counter", &["how"]),
        ("webd_poison_requests_total", "counter", &[]),
        ("webd_http_requests_total", "counter", &["code"]),
        ("webd_http_requests_by_encoding_total", "counter", &["encoding"]),
        ("webd_http_request_duration_seconds", "histogram", &[]),
        ("webd_http_response_bytes_total", "counter", &[]),
        ("webd_draining", "gauge", &[]),
        ("webd_build_info", "gauge", &["version"]),
        ("webd_upgrades_total", "counter", &[]),
        ("webd_daemon_restarts_total", "counter", &[]),
        ("webd_tls_handshakes_total", "counter", &["result", "version"]),
        ("webd_tls_resumed_total", "counter", &[]),
        ("webd_tls_handshake_duration_seconds", "histogram", &[]),
        ("webd_tls_certificate_expiry_timestamp_seconds", "gauge", &["name"]),
    ];
    for ((name, kind, label_names), def) in spec.iter().zip(metrics::ALL.iter()) {
        assert_eq!((*name, *label_names), (def.name, def.labels), "declaration matches docs/reference.md, Metrics");
        assert!(reply.body.contains(&format!("# HELP {name} ")), "help text of {name}");
        assert!(reply.body.contains(&format!("# TYPE {name} {kind}\n")), "type of {name}");
        for sample_name in expected_samples(def) {
            let found: Vec<&Sample> = samples.iter().filter(|s| s.name == sample_name).collect();
            assert!(!found.is_empty(), "no {sample_name} sample");
            for s in found {
                let mut names: Vec<&str> = s.labels.keys().map(String::as_str).filter(|k| *k != "le").collect();
                names.sort_unstable();
                let mut want = label_names.to_vec();
                want.sort_unstable();
                assert_eq!(names, want, "labels of {s:?}");
            }
        }
    }

    for role in ROLES {
        assert!(value_of(&samples, "webd_process_up", &[("role", role)]).is_some(), "process_up {role}");
        for reason in RESTART_REASONS {
            let n = value_of(&samples, "webd_restarts_total", &[("role", role), ("reason", reason)]);
            assert!(n.is_some(), "restarts {role} {reason}");
        }
    }
    for state in WORKER_STATES {
        assert!(value_of(&samples, "webd_workers", &[("state", state)]).is_some(), "workers {state}");
    }
    assert_eq!(value_of(&samples, "webd_build_info", &[("version", crate::VERSION)]), Some(1.0));
    for process_metric in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"] {
        assert!(samples.iter().any(|s| s.name == process_metric), "{process_metric}");
    }
}

#[test]
fn metric_values_are_the_observed_figures() {
    let (addr, observed) = start(synthetic());
    let (_, samples) = scrape(addr);
    let at = |name: &str, pairs: &[(&str, &str)]| value_of(&samples, name, pairs);
    assert_eq!(at("webd_process_up", &[("role", "manager")]), Some(1.0));
    assert_eq!(at("webd_process_up", &[("role", "worker")]), Some(0.0));
    assert_eq!(at("webd_restarts_total", &[("role", "manager"), ("reason", "hang")]), Some(4.0));
    assert_eq!(at("webd_restarts_total", &[("role", "worker"), ("reason", "crash")]), Some(0.0));
    assert_eq!(at("webd_heartbeats_missed_total", &[("role", "manager")]), Some(2.0));
    assert_eq!(at("webd_heartbeat_age_seconds", &[("role", "listener")]), Some(0.05));
    assert_eq!(at("webd_workers", &[("state", "idle")]), Some(2.0));
    assert_eq!(at("webd_workers", &[("state", "draining")]), Some(0.0));
    assert_eq!(at("webd_worker_utilization_ratio", &[("worker", "0")]), Some(0.25));
    assert_eq!(at("webd_http_requests_total", &[("code", "404")]), Some(8.0));
    assert_eq!(at("webd_http_response_bytes_total", &[]), Some(123_456.0));
    assert_eq!(at("webd_http_request_duration_seconds_sum", &[]), Some(1.75));
    assert_eq!(at("webd_draining", &[]), Some(0.0));
    assert_eq!(at("webd_tls_handshakes_total", &[("result", "ok"), ("version", "TLSv1.3")]), Some(40.0));
    assert_eq!(at("webd_tls_handshakes_total", &[("result", "failed"), ("version", "none")]), Some(2.0));
    assert_eq!(at("webd_tls_resumed_total", &[]), Some(7.0));
    assert_eq!(at("webd_tls_certificate_expiry_timestamp_seconds", &[("name", "a.test")]), Some(1.9e9));

    // Each scrape reads the accumulated totals afresh.
    {
        let mut o = observed.lock();
        o.figures.accepted = 500;
        o.draining = true;
        o.generation += 1; // as the daemon does on every publication
    }
    let (_, samples) = scrape(addr);
    assert_eq!(value_of(&samples, "webd_connections_accepted_total", &[]), Some(500.0));
    assert_eq!(value_of(&samples, "webd_draining", &[]), Some(1.0));
}

#[test]
fn histogram_buckets_are_cumulative_and_end_at_count() {
    let (addr, _) = start(synthetic());
    let (_, samples) = scrape(addr);
    let histograms: Vec<&MetricDef> = metrics::ALL.iter().filter(|d| d.kind == MetricType::HISTOGRAM).collect();
    let mut checked = 0;
    for def in histograms {
        let bucket_name = format!("{}_bucket", def.name);
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(String, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == bucket_name) {
            let mut key = s.labels.clone();
            let le = key.remove("le").expect("every bucket has le");
            series.entry(key).or_default().push((le, s.value));
        }
        assert!(!series.is_empty(), "no buckets for {}", def.name);
        for (key, buckets) in series {
            let counts: Vec<f64> = buckets.iter().map(|(_, v)| *v).collect();
            assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{} {key:?} not cumulative: {buckets:?}", def.name);
            let (last_le, last) = buckets.last().expect("at least one bucket");
            assert_eq!(last_le, "+Inf", "{} {key:?} ends with +Inf", def.name);
            let pairs: Vec<(&str, &str)> = key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count = value_of(&samples, &format!("{}_count", def.name), &pairs);
            assert_eq!(Some(*last), count, "{} {key:?}: +Inf bucket equals _count", def.name);
            checked += 1;
        }
    }
    assert_eq!(checked, ROLES.len() + 2, "one latency series per role, the request and the TLS handshake durations");

    // The request-duration buckets: per-bucket counts 5, 10, 20, ... summed; 1 overflow.
    let le = |bound: &str| value_of(&samples, "webd_http_request_duration_seconds_bucket", &[("le", bound)]);
    assert_eq!(le("0.0001"), Some(5.0));
    assert_eq!(le("0.00025"), Some(15.0));
    assert_eq!(le("5"), Some(98.0));
    assert_eq!(le("+Inf"), Some(99.0));
}

fn promtool_available() -> bool {
    Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn promtool_accepts_the_exposition() {
    if !promtool_available() {
        println!("note: promtool not on PATH; skipping `promtool check metrics`");
        return;
    }
    let (addr, _) = start(synthetic());
    let (reply, _) = scrape(addr);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().expect("piped stdin").write_all(reply.body.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("promtool check metrics: {} {report}", out.status);
    assert!(out.status.success(), "promtool check metrics failed:\n{report}\n--- exposition ---\n{}", reply.body);
}

// ---------------------------------------------------------------------------------
// bounds

/// Lets this test process hold a thousand sockets (both ends of 500 connections).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < 4096 && hard > soft {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(4096), hard);
        }
    }
}

#[test]
fn idle_connections_do_not_delay_readyz() {
    raise_fd_limit();
    let (addr, _) = start(synthetic());
    let mut idle = Vec::with_capacity(500);
    for i in 0..500 {
        let mut stream = connect(addr);
        if i % 2 == 0 {
            // Half of them are slow clients stuck in the middle of a head.
            stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: slow\r\n").expect("send a partial head");
        }
        idle.push(stream);
    }
    let started = Instant::now();
    let ready = get(addr, "/readyz");
    let elapsed = started.elapsed();
    println!("/readyz with {} idle connections open: {:?}", idle.len(), elapsed);
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready"));
    assert!(elapsed < Duration::from_secs(5), "readyz took {elapsed:?}");
    drop(idle);
}

#[test]
fn silent_connections_are_closed_at_the_deadline() {
    // Long enough that a loaded machine still sends a request in time, short for a test.
    let limits = Limits { idle_timeout: Duration::from_secs(1), ..Limits::default() };
    let addr = start_with(shared(synthetic()), limits);

    let mut silent = connect(addr);
    let mut slow = connect(addr);
    slow.write_all(b"GET /readyz HTTP/1.1\r\n").expect("send a partial head");
    let started = Instant::now();
    assert!(closed_by_server(&mut silent), "a silent connection is closed");
    assert!(closed_by_server(&mut slow), "a slow head is closed");
    println!("idle connections closed after {:?} (timeout 1s)", started.elapsed());

    // A keep-alive connection is closed once idle too, after its answers.
    let mut kept = connect(addr);
    assert_eq!(keep_alive_request(&mut kept, "/healthz").status, 200);
    assert!(closed_by_server(&mut kept), "an idle keep-alive connection is closed");
}

#[test]
fn at_the_connection_cap_the_oldest_connection_makes_room() {
    let limits = Limits { max_connections: 4, ..Limits::default() };
    let addr = start_with(shared(synthetic()), limits);

    // Each keep-alive exchange proves its connection was accepted before the next.
    let mut held: Vec<TcpStream> = (0..4).map(|_| connect(addr)).collect();
    for stream in &mut held {
        assert_eq!(keep_alive_request(stream, "/healthz").status, 200);
    }
    let ready = get(addr, "/readyz");
    assert_eq!(ready.status, 200, "a new client is served at the cap");
    assert!(closed_by_server(&mut held[0]), "the oldest connection was evicted");
    let newest = held.last_mut().expect("four connections");
    assert_eq!(keep_alive_request(newest, "/readyz").status, 200, "newer connections keep working");
}
