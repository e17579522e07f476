//! Hostile input: what a web server meets on the internet and from confused local
//! tools. Each scenario runs against a real tree with the admin endpoint on and, for
//! the whole attack:
//!
//! - a normal client (the canary) requesting a page every 50 ms, each of which must be
//!   served correctly;
//! - a probe reading `webd_heartbeat_age_seconds{role}` every 100 ms, so the largest
//!   heartbeat age during the attack is known;
//!
//! and afterwards checks that no worker, listener, manager or daemon was replaced,
//! that no heartbeat was missed (`webd_heartbeats_missed_total` unchanged), that the
//! workers' memory stayed bounded (peak RSS, from VmHWM, within 64 MiB of before) and
//! that the daemon's descriptors and threads came back to their number before.
//! Each prints a markdown summary row (`--nocapture`) for docs/RELIABILITY.md.
//!
//! Bounded: every attack lasts at most a few seconds and a fixed number of
//! connections; every client socket has timeouts. Only 127.0.0.1 is ever contacted.

use crate::util::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const TEN_MIB: usize = 10 << 20;
/// Peak worker RSS allowed above its RSS before the attack.
const WORKER_RSS_BOUND_KIB: u64 = 64 * 1024;
/// Daemon RSS growth allowed across an attack on the daemon's own endpoints.
const DAEMON_RSS_BOUND_KIB: u64 = 8 * 1024;
/// Slowest a canary request may be answered during an attack.
const CANARY_MAX_LATENCY: Duration = Duration::from_secs(3);

// ---- harness --------------------------------------------------------------------------

/// How the normal client connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CanaryMode {
    /// A new connection per request (what a new visitor does).
    NewConnections,
    /// One keep-alive connection, reopened only if the server closes it between
    /// requests (what an existing visitor does).
    KeepAlive,
    /// None: the scenario's own clients are the normal ones (the attack is expected to
    /// cost requests, and the test counts them itself).
    Off,
}

/// A normal client: GET /index.html every 50 ms.
struct Canary {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<CanaryReport>>,
}

#[derive(Default, Debug)]
struct CanaryReport {
    ok: u64,
    failures: Vec<String>,
    max_latency: Duration,
}

impl Canary {
    fn start(addr: SocketAddr, mode: CanaryMode) -> Canary {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut report = CanaryReport::default();
            let started = Instant::now();
            let mut conn = KeepAlive::new(addr, Duration::from_secs(5));
            while mode != CanaryMode::Off
                && !flag.load(Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(120)
            {
                let t = Instant::now();
                let result = match mode {
                    CanaryMode::NewConnections => get(addr, "/index.html"),
                    CanaryMode::KeepAlive | CanaryMode::Off => conn
                        .exchange_retrying(b"GET /index.html HTTP/1.1\r\nHost: canary\r\n\r\n")
                        .0
                        .map_err(Into::into),
                };
                match result {
                    Ok(r) if r.status == 200 && r.body == BODY => report.ok += 1,
                    Ok(r) => {
                        report.failures.push(format!("status {} body {:?}", r.status, String::from_utf8_lossy(&r.body)))
                    }
                    Err(e) => report.failures.push(format!("{e} after {:?}", t.elapsed())),
                }
                report.max_latency = report.max_latency.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(50));
            }
            report
        });
        Canary { stop, handle: Some(handle) }
    }

    fn finish(mut self) -> CanaryReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What is compared before and after an attack.
#[derive(Debug, Clone)]
struct Figures {
    daemon_fds: usize,
    daemon_rss: u64,
    daemon_threads: u64,
    listener: Option<i32>,
    manager: Option<i32>,
    /// (pid, VmRSS KiB, VmHWM KiB) of each worker.
    workers: Vec<(i32, u64, u64)>,
}

fn figures(webd: &Webd) -> Figures {
    let mut pids = webd.worker_pids();
    pids.sort();
    Figures {
        daemon_fds: fd_count(webd.pid).unwrap_or(0),
        daemon_rss: rss_kib(webd.pid).unwrap_or(0),
        daemon_threads: thread_count(webd.pid).unwrap_or(0),
        listener: webd.pid_of("webd: listener"),
        manager: webd.pid_of("webd: manager"),
        workers: pids.into_iter().map(|p| (p, rss_kib(p).unwrap_or(0), status_kib(p, "VmHWM").unwrap_or(0))).collect(),
    }
}

/// One attack in progress: baseline taken, canary and heartbeat probe running.
struct Attack<'a> {
    name: &'static str,
    mode: CanaryMode,
    webd: &'a Webd,
    admin: u16,
    before: Figures,
    missed_before: HashMap<String, f64>,
    probe: HeartbeatProbe,
    canary: Canary,
    started: Instant,
}

/// What an attack's end found, for scenario-specific checks and the summary.
struct Outcome {
    heartbeats: HeartbeatFigures,
    after: Figures,
}

/// Starts a daemon with the admin endpoint for an attack.
fn start(workers: u32, args: &[&str]) -> (Webd, u16) {
    raise_nofile_limit(8192);
    let args = args.iter().map(|a| a.to_string()).collect();
    start_with_admin(Options { workers, args, ..Default::default() })
}

impl<'a> Attack<'a> {
    fn begin(name: &'static str, webd: &'a Webd, admin: u16) -> Attack<'a> {
        Attack::begin_with(name, webd, admin, CanaryMode::NewConnections)
    }

    fn begin_with(name: &'static str, webd: &'a Webd, admin: u16, mode: CanaryMode) -> Attack<'a> {
        // Warm the daemon's admin and control paths so their first allocations are
        // part of the baseline.
        for _ in 0..3 {
            let _ = try_scrape(admin, Duration::from_secs(5));
            let _ = webd.status_direct(Duration::from_secs(5));
        }
        let missed_before = missed_heartbeats(&scrape(admin));
        stable_fd_count(webd.pid);
        let before = figures(webd);
        assert!(!before.workers.is_empty(), "no worker to watch");
        Attack {
            name,
            mode,
            webd,
            admin,
            before,
            missed_before,
            probe: HeartbeatProbe::start(admin, Duration::from_millis(100)),
            canary: Canary::start(webd.addr(), mode),
            started: Instant::now(),
        }
    }

    /// Ends the attack: checks that nothing crashed, no heartbeat was missed, every
    /// canary request was served, memory stayed bounded; prints the summary row.
    /// `load` describes what was held, `lost` what the attack cost legitimate clients.
    fn end(self, load: &str, lost: &str) -> Outcome {
        let took = self.started.elapsed();
        let canary = self.canary.finish();
        let heartbeats = self.probe.finish();
        let webd = self.webd;
        // Descriptors the attack made the daemon hold (control, admin) are released
        // once our sockets are closed and its threads notice.
        let deadline = Instant::now() + Duration::from_secs(8);
        while (fd_count(webd.pid) != Some(self.before.daemon_fds)
            || thread_count(webd.pid) != Some(self.before.daemon_threads))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let after = figures(webd);
        let missed_after = missed_heartbeats(&scrape(self.admin));
        let missed: Vec<String> = missed_after
            .iter()
            .filter(|(role, n)| **n > self.missed_before.get(*role).copied().unwrap_or(0.0))
            .map(|(role, n)| format!("{role} +{}", n - self.missed_before.get(role).copied().unwrap_or(0.0)))
            .collect();
        let mib = |kib: u64| kib as f64 / 1024.0;
        let largest =
            |f: &Figures, i: usize| f.workers.iter().map(|w| if i == 1 { w.1 } else { w.2 }).max().unwrap_or(0);
        let served = match self.mode {
            CanaryMode::Off => "(scenario's own clients)".to_string(),
            mode => format!(
                "{} ok, {} failed, slowest {} ms{}",
                canary.ok,
                canary.failures.len(),
                canary.max_latency.as_millis(),
                if mode == CanaryMode::KeepAlive { " (keep-alive)" } else { "" }
            ),
        };
        eprintln!(
            "| {} | {} | {} | {} | {} | {:.1} → {:.1} → {:.1} MiB | {} → {} | {:.1} → {:.1} MiB | {} |",
            self.name,
            load,
            served,
            heartbeats.brief(),
            if missed.is_empty() { "0".to_string() } else { missed.join(", ") },
            mib(largest(&self.before, 1)),
            mib(largest(&after, 2)),
            mib(largest(&after, 1)),
            self.before.daemon_fds,
            after.daemon_fds,
            mib(self.before.daemon_rss),
            mib(after.daemon_rss),
            lost
        );
        eprintln!(
            "({} took {:.1} s; heartbeat samples {} ok / {} failed)",
            self.name,
            took.as_secs_f64(),
            heartbeats.samples,
            heartbeats.failed_samples
        );

        assert!(alive(webd.pid), "{}: the daemon died", self.name);
        assert_eq!(after.listener, self.before.listener, "{}: the listener was replaced", self.name);
        assert_eq!(after.manager, self.before.manager, "{}: the manager was replaced", self.name);
        let pids = |f: &Figures| f.workers.iter().map(|w| w.0).collect::<Vec<_>>();
        assert_eq!(pids(&after), pids(&self.before), "{}: a worker was replaced (crash or hang)", self.name);
        assert!(missed.is_empty(), "{}: heartbeats missed during the attack: {missed:?}", self.name);
        assert!(
            canary.failures.is_empty(),
            "{}: normal requests failed during the attack: {:?}",
            self.name,
            canary.failures
        );
        let canary_on = self.mode != CanaryMode::Off;
        assert!(
            canary.ok >= 3 || !canary_on,
            "{}: only {} normal requests completed during the attack",
            self.name,
            canary.ok
        );
        assert!(
            canary.max_latency < CANARY_MAX_LATENCY,
            "{}: a normal request took {:?} during the attack",
            self.name,
            canary.max_latency
        );
        for (w, a) in self.before.workers.iter().zip(&after.workers) {
            assert!(
                a.2 < w.1 + WORKER_RSS_BOUND_KIB,
                "{}: worker {} peaked at {} KiB RSS (was {} KiB)",
                self.name,
                w.0,
                a.2,
                w.1
            );
        }
        assert_eq!(after.daemon_fds, self.before.daemon_fds, "{}: daemon fd count changed", self.name);
        assert_eq!(after.daemon_threads, self.before.daemon_threads, "{}: daemon thread count changed", self.name);
        assert!(
            after.daemon_rss < self.before.daemon_rss + DAEMON_RSS_BOUND_KIB,
            "{}: daemon RSS grew from {} to {} KiB",
            self.name,
            self.before.daemon_rss,
            after.daemon_rss
        );
        // And a request after the attack is served at once.
        let r = get(webd.addr(), "/index.html").expect("GET after the attack");
        assert_eq!((r.status, r.body.as_slice()), (200, BODY), "{}: response after the attack", self.name);
        Outcome { heartbeats, after }
    }
}

fn write_file(webd: &Webd, name: &str, bytes: &[u8]) {
    std::fs::write(webd.root.join(name), bytes).expect("write file");
}

/// Sum of `active_connections` over the workers in status.
fn active_connections(webd: &Webd) -> u64 {
    webd.status_direct(Duration::from_secs(2))
        .and_then(|s| {
            s["workers"].as_array().map(|ws| ws.iter().filter_map(|w| w["active_connections"].as_u64()).sum())
        })
        .unwrap_or(0)
}

// ---- hostile HTTP ----------------------------------------------------------------------

#[test]
fn a_thousand_slowloris_connections_starve_nobody_and_are_cut_at_the_header_timeout() {
    let (webd, admin) = start(2, &["--header-timeout", "2500"]);
    let attack = Attack::begin("1,000 slowloris connections", &webd, admin);
    let mut conns: Vec<Option<Conn>> = (0..1000)
        .map(|_| {
            let mut s = connect(webd.addr());
            s.set_write_timeout(Some(Duration::from_millis(100))).expect("timeout");
            s.write_all(b"GET /index.html HTTP/1.1\r\nHost: slow\r\nX-Slow: ").expect("partial head");
            Some(s)
        })
        .collect();
    let opened = Instant::now();
    wait_until(Duration::from_secs(5), "the workers to hold the slowloris connections", || {
        active_connections(&webd) >= 1000
    });
    // One byte per connection every 100 ms: each keeps "making progress".
    let mut cut = Vec::new();
    while opened.elapsed() < Duration::from_millis(4000) {
        for slot in conns.iter_mut() {
            if let Some(s) = slot {
                if s.write_all(b"a").is_err() {
                    cut.push(opened.elapsed());
                    *slot = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Past the header timeout: the server must have dropped the rest too (a write may
    // still succeed into a closed socket once; a read sees the close).
    let mut still_open = 0;
    for s in conns.iter_mut().flatten() {
        let end = s.read_to_close(Duration::from_millis(50));
        if end.timed_out {
            still_open += 1;
        }
    }
    drop(conns);
    attack.end("1,000 connections trickling a header byte each per 100 ms for 4 s (header timeout 2.5 s)", "nothing");
    eprintln!(
        "slowloris: {} of 1000 seen cut while trickling (first after {:?}), {still_open} still open at 4 s (header timeout 2.5 s)",
        cut.len(),
        cut.first()
    );
    assert_eq!(still_open, 0, "slowloris connections outlived the header timeout");
}

#[test]
fn header_floods_are_refused_with_431_and_cost_no_memory() {
    let (webd, admin) = start(2, &[]);
    let attack = Attack::begin("header floods", &webd, admin);
    let lines: Vec<u8> = (0..4000).flat_map(|i| format!("X-Flood-{i}: {}\r\n", "v".repeat(8)).into_bytes()).collect();
    let tiny: Vec<u8> = b"a: b\r\n".repeat(10_000);
    let one_line: Vec<u8> = std::iter::once(&b"X-Huge: "[..])
        .chain(std::iter::repeat_n(&b"h"[..], 256 * 1024))
        .flatten()
        .copied()
        .collect();
    let shapes: [(&str, &[u8]); 3] =
        [("64+ KiB of header lines", &lines), ("10,000 tiny headers", &tiny), ("one 256 KiB header line", &one_line)];
    let tallies: Vec<Mutex<HashMap<String, u64>>> = (0..3).map(|_| Mutex::new(HashMap::new())).collect();
    let until = Instant::now() + Duration::from_secs(3);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (shapes, tallies, addr) = (&shapes, &tallies, webd.addr());
            s.spawn(move || {
                let mut n = t;
                while Instant::now() < until {
                    let (_, body) = shapes[n % 3];
                    let mut c = connect(addr);
                    let _ = c.write_all(b"GET /index.html HTTP/1.1\r\nHost: flood\r\n");
                    let _ = c.write_all(body); // the server may stop reading (and close) first
                    let end = c.read_to_close(Duration::from_secs(5));
                    let what = match (status_of(&end.bytes), end.timed_out) {
                        (_, true) => "hung".to_string(),
                        (Some(code), _) => code.to_string(),
                        (None, _) if end.eof => "closed".to_string(),
                        (None, _) => "reset".to_string(),
                    };
                    *tallies[n % 3].lock().unwrap().entry(what).or_default() += 1;
                    n += 1;
                }
            });
        }
    });
    let results: Vec<(&str, HashMap<String, u64>)> =
        shapes.iter().zip(&tallies).map(|((name, _), t)| (*name, t.lock().unwrap().clone())).collect();
    let total: u64 = results.iter().flat_map(|(_, t)| t.values()).sum();
    attack.end(
        &format!("4 clients, {total} flood connections in 3 s (64 KiB lines / 10,000 headers / 256 KiB line)"),
        "nothing",
    );
    eprintln!("header floods: {results:?}");
    for (name, tally) in &results {
        assert!(!tally.contains_key("hung"), "{name}: a flood connection was neither answered nor closed: {tally:?}");
        assert!(!tally.contains_key("200"), "{name}: a flood was served as a request: {tally:?}");
        let answered = tally.get("431").copied().unwrap_or(0);
        assert!(answered > 0, "{name}: never answered 431: {tally:?}");
    }
}

#[test]
fn ten_thousand_pipelined_requests_on_one_connection_are_answered_in_order() {
    let (webd, admin) = start(2, &[]);
    write_file(&webd, "a.txt", b"response A\n");
    write_file(&webd, "b.txt", b"response B, longer\n");
    let attack = Attack::begin("10,000 pipelined requests", &webd, admin);
    const N: usize = 10_000;
    let mut stream = connect(webd.addr());
    stream.set_write_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let started = Instant::now();
    let write = std::thread::spawn(move || {
        let mut all = Vec::with_capacity(N * 40);
        for i in 0..N {
            let path = if i % 2 == 0 { "/a.txt" } else { "/b.txt" };
            let close = if i == N - 1 { "Connection: close\r\n" } else { "" };
            all.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: p\r\n{close}\r\n").as_bytes());
        }
        writer.write_all(&all).map(|_| all.len())
    });
    // Read nothing for a second: the server must stop reading rather than buffer
    // 10,000 responses.
    std::thread::sleep(Duration::from_secs(1));
    let end = stream.read_to_close(Duration::from_secs(30));
    let written = write.join().expect("writer").expect("write the pipeline");
    let took = started.elapsed();
    let mut at = 0;
    let mut answered = 0;
    while let Some((r, used)) = parse_response(&end.bytes[at..]) {
        let want: &[u8] = if answered % 2 == 0 { b"response A\n" } else { b"response B, longer\n" };
        assert_eq!((r.status, r.body.as_slice()), (200, want), "response {answered} out of order or wrong");
        at += used;
        answered += 1;
    }
    let outcome = attack.end(
        &format!("{N} GETs ({} KiB) written at once on one connection, read after 1 s", written / 1024),
        "nothing",
    );
    eprintln!(
        "pipelining: {answered} responses ({} KiB) in {:?}; worker peak RSS {} KiB",
        end.bytes.len() / 1024,
        took,
        outcome.after.workers.iter().map(|w| w.2).max().unwrap_or(0)
    );
    assert_eq!(
        answered, N,
        "only {answered} of {N} pipelined requests answered; eof {} timed out {}",
        end.eof, end.timed_out
    );
    assert_eq!(at, end.bytes.len(), "bytes after the last response");
}

#[test]
fn random_bytes_never_crash_a_worker_and_always_end_in_an_answer_or_a_close() {
    let (webd, admin) = start(2, &["--header-timeout", "1000"]);
    let seed = Rng::seed_from_env();
    eprintln!("random bytes: seed {seed} (WEBD_TEST_SEED={seed} replays it)");
    let attack = Attack::begin("random bytes", &webd, admin);
    let outcomes: Mutex<HashMap<String, u64>> = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (outcomes, addr) = (&outcomes, webd.addr());
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let until = Instant::now() + Duration::from_secs(2);
                for _ in 0..2000 {
                    if Instant::now() >= until {
                        break;
                    }
                    let len = rng.range(1, 16 * 1024) as usize;
                    let mut payload = match rng.range(0, 4) {
                        0 => rng.bytes(len),
                        1 => [&b"GET /"[..], &rng.bytes(len)].concat(),
                        2 => [&b"GET /index.html HTTP/1.1\r\nHost: r\r\n"[..], &rng.bytes(len)].concat(),
                        _ => [&b"GET /index.html HTTP/1.1\r\nHost: r\r\n\r\n"[..], &rng.bytes(len)].concat(),
                    };
                    // End any head, so the server never has to wait for the timeout.
                    payload.extend_from_slice(b"\r\n\r\n");
                    let mut c = connect(addr);
                    let _ = c.write_all(&payload);
                    let end = c.read_to_close(Duration::from_secs(5));
                    let what = match (status_of(&end.bytes), end.timed_out) {
                        (_, true) => "hung".to_string(),
                        (Some(code), _) => code.to_string(),
                        (None, _) if end.bytes.is_empty() && end.eof => "closed".to_string(),
                        (None, _) if end.bytes.is_empty() => "reset".to_string(),
                        (None, _) => format!(
                            "garbage answer {:?}",
                            String::from_utf8_lossy(&end.bytes[..end.bytes.len().min(40)])
                        ),
                    };
                    *outcomes.lock().unwrap().entry(what).or_default() += 1;
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    let total: u64 = outcomes.values().sum();
    attack.end(&format!("4 clients for 2 s: {total} connections of 1 B–16 KiB random bytes (4 shapes)"), "nothing");
    eprintln!("random bytes: outcomes {outcomes:?}");
    assert!(!outcomes.contains_key("hung"), "a connection was neither answered nor closed: {outcomes:?}");
    assert!(!outcomes.keys().any(|k| k.starts_with("garbage")), "a non-HTTP answer: {outcomes:?}");
}

#[test]
fn half_closed_clients_get_their_whole_response_or_a_prompt_close() {
    let (webd, admin) = start(2, &[]);
    let big: Vec<u8> = Rng::new(7).bytes(1 << 20);
    write_file(&webd, "big.bin", &big);
    write_file(&webd, "ten.bin", &Rng::new(8).bytes(TEN_MIB));
    let attack = Attack::begin("half-closed sockets", &webd, admin);
    let started = Instant::now();
    let mut rounds = 0;
    let mut slowest_close = [Duration::ZERO; 2];
    // Rounds of every case for 2 s (at least one round), so the canary runs alongside.
    while rounds == 0 || (started.elapsed() < Duration::from_secs(2) && rounds < 50) {
        rounds += 1;
        // (a) request, then FIN: the whole response, then the server's FIN.
        for (path, want) in [("/index.html", BODY), ("/big.bin", big.as_slice())] {
            for _ in 0..5 {
                let mut c = connect(webd.addr());
                c.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).expect("write");
                c.shutdown(Shutdown::Write).expect("shutdown write");
                let end = c.read_to_close(Duration::from_secs(5));
                let r = parse_response(&end.bytes).map(|(r, _)| r);
                assert!(
                    r.as_ref().is_some_and(|r| r.status == 200 && r.body == want) && end.eof,
                    "{path} with the client's write side shut: {} bytes, eof {}, timed out {}",
                    end.bytes.len(),
                    end.eof,
                    end.timed_out
                );
            }
        }
        // (b) FIN with nothing sent, and (c) FIN in the middle of a head: closed at once
        // (not at the 10 s header timeout), at most with an error answer.
        for (i, (what, sent)) in
            [("nothing", &b""[..]), ("half a head", &b"GET /index.html HTTP/1.1\r\nHo"[..])].into_iter().enumerate()
        {
            for _ in 0..5 {
                let mut c = connect(webd.addr());
                c.write_all(sent).expect("write");
                c.shutdown(Shutdown::Write).expect("shutdown write");
                let end = c.read_to_close(Duration::from_secs(5));
                assert!(!end.timed_out, "{what} then FIN: still open after 5 s");
                assert!(
                    end.bytes.is_empty() || status_of(&end.bytes).is_some_and(|s| s >= 400),
                    "{what} then FIN: {:?}",
                    String::from_utf8_lossy(&end.bytes)
                );
                slowest_close[i] = slowest_close[i].max(end.took);
            }
        }
        // (d) a client that shuts its read side and goes away in the middle of a 10 MiB
        // sendfile (RST): the worker's send fails; it must not crash.
        for _ in 0..4 {
            let mut c = connect_small_rcvbuf(webd.addr());
            c.write_all(b"GET /ten.bin HTTP/1.1\r\nHost: h\r\n\r\n").expect("write");
            let _ = c.read_at_least(1, IO_TIMEOUT);
            let _ = c.shutdown(Shutdown::Read);
            drop(c); // unread data in the receive buffer: the close sends RST
        }
    }
    attack.end(
        &format!(
            "{rounds} rounds of: 5+5 requests then FIN (14 B, 1 MiB), 5 FIN only, 5 FIN mid-head, 4 resets mid-10 MiB"
        ),
        "nothing",
    );
    eprintln!(
        "half-closed: FIN-only closed within {} ms, FIN mid-head within {} ms",
        slowest_close[0].as_millis(),
        slowest_close[1].as_millis()
    );
    for (what, t) in ["FIN only", "FIN mid-head"].iter().zip(slowest_close) {
        assert!(t < Duration::from_secs(2), "{what}: closed only after {t:?} (the header timeout, not the FIN)");
    }
}

#[test]
fn clients_that_never_read_a_10_mib_response_pin_no_memory_and_are_cut_after_the_keepalive_timeout() {
    let (webd, admin) = start(2, &["--keepalive-timeout", "1500"]);
    let content = Rng::new(11).bytes(TEN_MIB);
    write_file(&webd, "ten.bin", &content);
    let attack = Attack::begin("never-reading clients", &webd, admin);
    let mut stalled: Vec<Conn> = (0..20)
        .map(|_| {
            let mut s = connect_small_rcvbuf(webd.addr());
            s.write_all(b"GET /ten.bin HTTP/1.1\r\nHost: stall\r\n\r\n").expect("write");
            s
        })
        .collect();
    // Nothing is read for 3.5 s: twice the keep-alive timeout without progress.
    let started = Instant::now();
    wait_until(Duration::from_secs(5), "the stalled downloads to be in the workers", || {
        active_connections(&webd) >= 20
    });
    std::thread::sleep(Duration::from_millis(3500).saturating_sub(started.elapsed()));
    // Now read: what the kernel buffered arrives, then the server's close.
    let mut received = Vec::new();
    for s in &mut stalled {
        let end = s.read_to_close(Duration::from_secs(10));
        assert!(!end.timed_out, "a stalled download still open after 3.5 s + reading 10 s");
        received.push(end.bytes.len());
    }
    let outcome = attack.end(
        "20 clients with a 16 KiB receive buffer requesting 10 MiB and not reading for 3.5 s",
        "nothing (the stalled downloads are cut by design)",
    );
    let max = received.iter().max().copied().unwrap_or(0);
    eprintln!(
        "never-reading: each got at most {} KiB of 10 MiB before the server closed; worker peak RSS {} KiB",
        max / 1024,
        outcome.after.workers.iter().map(|w| w.2).max().unwrap_or(0)
    );
    assert!(received.iter().all(|n| *n < TEN_MIB), "a stalled client got the whole file: the timeout never fired");
}

/// Starts a download of `path` (10 MiB) through a small receive buffer, reads its
/// first 64 KiB, then lets `mutate` act on the file and reads the rest.
fn download_while(webd: &Webd, name: &str, mutate: &dyn Fn(&std::path::Path)) -> Ending {
    let mut c = connect_small_rcvbuf(webd.addr());
    c.write_all(format!("GET /{name} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n").as_bytes()).expect("write");
    c.read_at_least(64 * 1024, IO_TIMEOUT).expect("first 64 KiB");
    mutate(&webd.root.join(name));
    c.read_to_close(Duration::from_secs(15))
}

#[test]
fn a_file_truncated_while_being_sent_ends_the_response_short_and_closes() {
    let (webd, admin) = start(2, &[]);
    let attack = Attack::begin("file truncated mid-send", &webd, admin);
    let mut shortest = usize::MAX;
    let mut zero_tails: Vec<usize> = Vec::new();
    for i in 0..4 {
        let name = format!("shrinks{i}.bin");
        let content = Rng::new(20 + i).bytes(TEN_MIB);
        write_file(&webd, &name, &content);
        let end = download_while(&webd, &name, &|path| {
            let f = std::fs::OpenOptions::new().write(true).open(path).expect("open");
            f.set_len(1024).expect("truncate to 1 KiB");
        });
        assert!(!end.timed_out, "download of a truncated file hung");
        let head_len = end.bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        let body = &end.bytes[head_len..];
        assert!(body.len() < TEN_MIB, "the whole 10 MiB arrived although the file shrank to 1 KiB");
        // What the client read before the truncation is the file's. What was sent after
        // it may not be: sendfile can splice the vanished pages as zeros before it sees
        // the new size. The response is short of its Content-Length, so every client
        // discards it; the server's part is to close, which it does.
        let before = 64 * 1024 - head_len;
        assert!(body[..before] == content[..before], "bytes read before the truncation are not the file's");
        let differs = body.iter().zip(&content).position(|(a, b)| a != b);
        if let Some(at) = differs {
            zero_tails.push(body[at..].iter().filter(|b| **b == 0).count());
        }
        shortest = shortest.min(body.len());
        // The shrunk file is served as it is now.
        let r = get(webd.addr(), &format!("/{name}")).expect("GET after truncation");
        assert_eq!((r.status, r.body.as_slice()), (200, &content[..1024]));
    }
    attack.end(
        "4 slow 10 MiB downloads whose file is truncated to 1 KiB mid-send",
        "the rest of each truncated body (by design: closed early)",
    );
    eprintln!(
        "truncated: shortest body {} KiB of 10 MiB; {} of 4 bodies carried zeros after the truncation point ({:?} zero bytes)",
        shortest / 1024,
        zero_tails.len(),
        zero_tails
    );
}

#[test]
fn a_file_deleted_while_being_sent_is_still_sent_whole() {
    let (webd, admin) = start(2, &[]);
    let attack = Attack::begin("file deleted mid-send", &webd, admin);
    for i in 0..4 {
        let name = format!("goes{i}.bin");
        let content = Rng::new(40 + i).bytes(TEN_MIB);
        write_file(&webd, &name, &content);
        let end = download_while(&webd, &name, &|path| std::fs::remove_file(path).expect("delete"));
        assert!(!end.timed_out && end.eof, "download of a deleted file: timed out {} eof {}", end.timed_out, end.eof);
        let (r, used) = parse_response(&end.bytes).expect("a whole response");
        assert_eq!(r.status, 200);
        assert!(r.body == content, "the body of the deleted file differs ({} bytes)", r.body.len());
        assert_eq!(used, end.bytes.len());
        assert_eq!(get(webd.addr(), &format!("/{name}")).expect("GET after delete").status, 404);
    }
    attack.end("4 slow 10 MiB downloads whose file is deleted mid-send", "nothing (the open file is sent whole)");
}

// ---- hostile control plane -------------------------------------------------------------

#[test]
fn a_hundred_hostile_control_clients_do_not_slow_supervision() {
    let (webd, admin) = start(2, &[]);
    let attack = Attack::begin("100 hostile control clients", &webd, admin);
    let until = Instant::now() + Duration::from_secs(3);
    let replies = AtomicU64::new(0);
    let legit_ok = AtomicU64::new(0);
    let legit_refused = AtomicU64::new(0);
    std::thread::scope(|s| {
        for i in 0..100 {
            let (sock, replies) = (&webd.control_socket, &replies);
            s.spawn(move || {
                let mut rng = Rng::new(i + 1);
                while Instant::now() < until {
                    let Ok(mut c) = UnixStream::connect(sock) else { continue };
                    let _ = c.set_read_timeout(Some(Duration::from_secs(6)));
                    let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                    match i % 3 {
                        // Garbage lines, answered one by one.
                        0 => {
                            for _ in 0..20 {
                                let len = rng.range(1, 200) as usize;
                                let mut line: Vec<u8> = rng.bytes(len);
                                line.retain(|b| *b != b'\n');
                                line.push(b'\n');
                                if c.write_all(&line).is_err() {
                                    break;
                                }
                                let mut buf = [0u8; 4096];
                                match c.read(&mut buf) {
                                    Ok(n) if n > 0 => {
                                        replies.fetch_add(1, Ordering::Relaxed);
                                    }
                                    _ => break,
                                }
                            }
                        }
                        // A 4 MiB line without a newline.
                        1 => {
                            let _ = c.write_all(&vec![b'{'; 4 << 20]);
                            let mut buf = [0u8; 4096];
                            if c.read(&mut buf).is_ok_and(|n| n > 0) {
                                replies.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        // Nothing at all: connect and hold until the end.
                        _ => {
                            std::thread::sleep(until.saturating_duration_since(Instant::now()));
                        }
                    }
                }
            });
        }
        // An operator's status requests during the attack.
        s.spawn(|| {
            while Instant::now() < until {
                match webd.status_direct(Duration::from_secs(2)) {
                    Some(_) => legit_ok.fetch_add(1, Ordering::Relaxed),
                    None => legit_refused.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    });
    attack.end(
        "100 control clients for 3 s: garbage lines, 4 MiB lines, silent connections",
        &format!(
            "{} of {} operator status requests refused during the attack",
            legit_refused.load(Ordering::Relaxed),
            legit_ok.load(Ordering::Relaxed) + legit_refused.load(Ordering::Relaxed)
        ),
    );
    eprintln!("control flood: {} error replies to hostile clients", replies.load(Ordering::Relaxed));
    assert_eq!(webd.status_json()["ok"], true, "webctl status after the attack");
}

/// Opens `count` connections to the admin port, cycling through `shapes`: 0 silent,
/// 1 half a request head, 2 one request never read, 3 fifty pipelined scrapes never read.
fn flood_admin(admin: u16, count: usize, shapes: &[u8]) -> Vec<Conn> {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let Ok(mut c) = Conn::open_within(addr, Duration::from_secs(2)) else { continue };
        let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = match shapes[i % shapes.len()] {
            0 => Ok(()),
            1 => c.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nX-Slow: "),
            2 => c.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
            _ => c.write_all(&b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n".repeat(50)),
        };
        held.push(c);
    }
    held
}

/// For `hold`: a scrape every 200 ms (2 s timeout each) and, on a thread of its own, a
/// control status request every 200 ms. Returns (scrapes answered, scrapes tried,
/// status answers, slowest scrape).
fn admin_and_control_while(webd: &Webd, admin: u16, hold: Duration) -> (u32, u32, u32, Duration) {
    let until = Instant::now() + hold;
    std::thread::scope(|s| {
        let statuses = s.spawn(|| {
            let mut answered = 0;
            while Instant::now() < until {
                if webd.status_direct(Duration::from_secs(2)).is_some() {
                    answered += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            answered
        });
        let (mut scrapes, mut attempts, mut slowest) = (0, 0, Duration::ZERO);
        while Instant::now() < until {
            let t = Instant::now();
            attempts += 1;
            if try_scrape(admin, Duration::from_secs(2)).is_some() {
                scrapes += 1;
            }
            slowest = slowest.max(t.elapsed());
            std::thread::sleep(Duration::from_millis(200));
        }
        (scrapes, attempts, statuses.join().expect("status thread"), slowest)
    })
}

#[test]
fn a_thousand_admin_connections_do_not_slow_supervision() {
    let (webd, admin) = start(2, &[]);
    let attack = Attack::begin("1,000 admin connections", &webd, admin);
    let held = flood_admin(admin, 1000, &[0, 1, 2]);
    let opened = held.len();
    let (scrapes, attempts, statuses, slowest) = admin_and_control_while(&webd, admin, Duration::from_secs(3));
    drop(held);
    let outcome = attack.end(
        &format!("{opened} admin connections held 3 s (silent / half a head / a scrape never read)"),
        &format!("nothing; {scrapes} of {attempts} scrapes answered while held (slowest {} ms)", slowest.as_millis()),
    );
    eprintln!(
        "admin flood: {scrapes}/{attempts} scrapes (slowest {slowest:?}) and {statuses} control status answers while held; probe {} ok / {} failed",
        outcome.heartbeats.samples, outcome.heartbeats.failed_samples
    );
    assert_eq!(scrapes, attempts, "scrapes failed while 1,000 admin connections were held");
    assert!(statuses >= 5, "control status answered only {statuses} times while the admin endpoint was flooded");
}

/// 333 connections each pipelining 50 scrapes and never reading: 16,650 renders of
/// /metrics queued ahead of Prometheus. Supervision is not slowed (a thread of its
/// own), but a new scrape should still be answered within a couple of seconds (and
/// must be within Prometheus's default 10 s scrape timeout).
/// Beyond the admin endpoint's cap (1,024 open connections) each new connection evicts
/// the oldest, so a flood can never lock a scraper out: the first connections of the
/// flood are closed by the server, and scrapes made afterwards are all answered.
#[test]
fn admin_connections_beyond_the_cap_evict_the_oldest_and_scrapes_still_succeed() {
    let (webd, admin) = start(1, &[]);
    let attack = Attack::begin("1,500 admin connections", &webd, admin);
    let mut held = flood_admin(admin, 1500, &[0]);
    let opened = held.len();
    let (scrapes, attempts, _, slowest) = admin_and_control_while(&webd, admin, Duration::from_secs(1));
    // The oldest silent connections were evicted: the server closed them.
    let evicted = held
        .iter_mut()
        .take(100)
        .map(|c| {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            match c.read(&mut [0u8; 1]) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        })
        .filter(|closed| *closed)
        .count();
    drop(held);
    attack.end(
        &format!("{opened} silent admin connections (cap 1,024)"),
        &format!(
            "nothing; {scrapes} of {attempts} scrapes answered (slowest {} ms); {evicted} of the 100 oldest evicted",
            slowest.as_millis()
        ),
    );
    assert!(opened > 1024, "only {opened} connections opened: the cap was not reached");
    assert_eq!(scrapes, attempts, "scrapes failed beyond the admin connection cap");
    assert_eq!(evicted, 100, "the oldest connections were not evicted at the cap");
}

#[test]
fn a_pipelined_scrape_flood_does_not_lock_prometheus_out_of_the_admin_endpoint() {
    let (webd, admin) = start(2, &[]);
    let attack = Attack::begin("pipelined /metrics flood", &webd, admin);
    let held = flood_admin(admin, 333, &[3]);
    let opened = held.len();
    let statuses = std::thread::scope(|s| {
        let statuses = s.spawn(|| {
            let until = Instant::now() + Duration::from_secs(3);
            let mut answered = 0;
            while Instant::now() < until {
                answered += u32::from(webd.status_direct(Duration::from_secs(2)).is_some());
                std::thread::sleep(Duration::from_millis(200));
            }
            answered
        });
        let t = Instant::now();
        let scraped = try_scrape(admin, Duration::from_secs(12)).is_some();
        let latency = t.elapsed();
        (statuses.join().expect("status thread"), scraped, latency)
    });
    let (statuses, scraped, latency) = statuses;
    drop(held);
    attack.end(
        &format!("{opened} admin connections pipelining 50 scrapes each, never read"),
        &format!("a new scrape waited {} ms (answered: {scraped})", latency.as_millis()),
    );
    eprintln!(
        "pipelined scrape flood: scrape answered {scraped} after {latency:?}; {statuses} control status answers in 3 s"
    );
    assert!(statuses >= 5, "control status answered only {statuses} times");
    assert!(scraped, "no scrape answered within 12 s");
    assert!(latency < Duration::from_secs(2), "a scrape waited {latency:?} behind the pipelined flood");
}

// ---- exhaustion ------------------------------------------------------------------------

/// Sets `pid`'s soft RLIMIT_NOFILE (the hard limit is kept, so it can be raised again
/// without privileges); returns the soft limit it had.
fn set_nofile_soft(pid: i32, soft: u64) -> u64 {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit reads `old` of another process of ours; pointers are valid.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit get: {}", std::io::Error::last_os_error());
    let new = libc::rlimit { rlim_cur: soft, rlim_max: old.rlim_max };
    // SAFETY: as above; `new` is a valid rlimit.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit set: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// The lowest descriptor number `pid` does not use: with the soft limit set to it, no
/// new descriptor can be created.
fn lowest_free_fd(pid: i32) -> u64 {
    let used: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).expect("a free number")
}

/// The soft descriptor limit that leaves `pid` exactly `free` descriptor numbers to open
/// (the limit bounds numbers, and the table may have holes below its highest fd).
fn limit_leaving_free(pid: i32, free: usize) -> u64 {
    let used: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect();
    (0..).filter(|n| !used.contains(n)).nth(free.saturating_sub(1)).expect("a free number") + 1
}

/// `pid` has a descriptor open on `path`.
fn holds_open(pid: i32, path: &std::path::Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|target| target == path)))
        .unwrap_or(false)
}

/// A worker that cannot open the requested file (no descriptor left) answers 500 and
/// closes, rather than hanging or crashing, and serves normally once it has room again.
#[test]
fn a_worker_that_cannot_open_a_file_for_lack_of_descriptors_answers_500_and_recovers() {
    let (webd, _admin) = start(1, &[]);
    let worker = webd.worker_pids()[0];
    let mut c = connect(webd.addr());
    c.send(b"GET /index.html HTTP/1.1\r\nHost: e\r\n\r\n").expect("write");
    assert_eq!(c.response(IO_TIMEOUT).expect("first response").status, 200);
    // The worker's open-file cache closes the file once it is unused for a sweep (until
    // then a request for it needs no new descriptor).
    let served = std::fs::canonicalize(webd.root.join("index.html")).expect("canonical path");
    let deadline = Instant::now() + Duration::from_secs(3);
    while holds_open(worker, &served) {
        assert!(Instant::now() < deadline, "the worker still holds {} open after 3 s unused", served.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Not one descriptor left (measured once the first request's file is closed): the
    // next request's file cannot be opened.
    stable_fd_count(worker).expect("worker fds");
    let original = set_nofile_soft(worker, lowest_free_fd(worker));
    c.write_all(b"GET /index.html HTTP/1.1\r\nHost: e\r\n\r\n").expect("write");
    let ending = c.read_to_close(Duration::from_secs(5));
    set_nofile_soft(worker, original);
    assert_eq!(outcome_of(&ending), "500", "a request whose file cannot be opened: {ending:?}");
    let r = get(webd.addr(), "/index.html").expect("GET after");
    assert_eq!(r.status, 200);
    assert_eq!(webd.worker_pids(), vec![worker], "the worker was replaced");
}

#[test]
fn listener_out_of_descriptors_backs_off_without_spinning_keeps_serving_and_recovers() {
    let (webd, admin) = start(1, &[]);
    // New connections wait in the backlog while the listener has no descriptor (that
    // is the design); the canary is an existing keep-alive client, which must be served.
    let attack = Attack::begin_with("listener EMFILE", &webd, admin, CanaryMode::KeepAlive);
    let listener = webd.pid_of("webd: listener").expect("listener");
    // A keep-alive connection opened before the exhaustion.
    let mut held = connect(webd.addr());
    let keep_alive_request = |held: &mut Conn| {
        held.send(b"GET /index.html HTTP/1.1\r\nHost: k\r\n\r\n").expect("write on the held connection");
        held.response(IO_TIMEOUT).unwrap_or_else(|e| panic!("the held connection: {e}")).status
    };
    assert_eq!(keep_alive_request(&mut held), 200);

    // The listener closes its copy of the held connection just after handing it on,
    // possibly after the worker has already answered: measure once it settled.
    let fds_before = stable_fd_count(listener).expect("listener fds");
    let limit = lowest_free_fd(listener);
    let original = set_nofile_soft(listener, limit);
    let exhausted_at = Instant::now();
    let cpu_before = cpu_seconds(listener).expect("listener cpu");
    // New connections during the exhaustion: the kernel completes them and queues them
    // in the backlog; none may be refused or lost.
    let pending: Vec<JoinHandle<(std::io::Result<Response>, Duration)>> = (0..20)
        .map(|_| {
            let addr = webd.addr();
            std::thread::spawn(move || {
                let t = Instant::now();
                (get(addr, "/index.html"), t.elapsed())
            })
        })
        .collect();
    let mut held_served = 0;
    while exhausted_at.elapsed() < Duration::from_millis(1500) {
        assert_eq!(keep_alive_request(&mut held), 200, "the held connection during the exhaustion");
        held_served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let window = exhausted_at.elapsed();
    let cpu = cpu_seconds(listener).expect("listener cpu") - cpu_before;
    let served_during = pending.iter().filter(|h| h.is_finished()).count();
    // The warning is written by another process: allow it a moment to reach the log.
    let log_deadline = Instant::now() + Duration::from_secs(2);
    let mut log_says = webd.log_text().contains("out of file descriptors");
    while !log_says && Instant::now() < log_deadline {
        std::thread::sleep(Duration::from_millis(20));
        log_says = webd.log_text().contains("out of file descriptors");
    }
    // Recovery.
    set_nofile_soft(listener, original);
    let restored_at = Instant::now();
    let mut waited = Vec::new();
    for h in pending {
        let (result, took) = h.join().expect("client thread");
        let r = result.expect("a request queued during the exhaustion");
        assert_eq!((r.status, r.body.as_slice()), (200, BODY));
        waited.push(took);
    }
    let recovered_in = restored_at.elapsed();
    assert_eq!(keep_alive_request(&mut held), 200);
    drop(held);
    attack.end(
        &format!(
            "listener soft RLIMIT_NOFILE = {limit} (no free descriptor) for {:.1} s; 20 new connections + 1 keep-alive",
            window.as_secs_f64()
        ),
        "nothing: the 20 connections waited in the backlog and were served on recovery",
    );
    eprintln!(
        "EMFILE: listener fds {fds_before}, limit {limit}; CPU {:.0} ms over {:.0} ms ({:.1} %); held connection served {held_served} times; \
         {served_during} of 20 new connections served while exhausted; all 20 served {} ms after the limit was restored (slowest waited {} ms); log warns: {log_says}",
        cpu * 1000.0,
        window.as_secs_f64() * 1000.0,
        100.0 * cpu / window.as_secs_f64(),
        recovered_in.as_millis(),
        waited.iter().max().map_or(0, |d| d.as_millis())
    );
    assert!(cpu < 0.3 * window.as_secs_f64(), "the listener spun: {cpu:.2} s of CPU in {window:?}");
    assert!(log_says, "no 'out of file descriptors' warning in the log");
    assert_eq!(served_during, 0, "connections were accepted although no descriptor was free (the limit did not bite)");
    assert!(recovered_in < Duration::from_secs(2), "recovery took {recovered_in:?}");
}

/// Socket descriptors `pid` holds.
fn socket_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

/// `n` clients, each on a thread: one `Connection: close` GET, read until the server
/// closes or `timeout` passes.
fn close_requests(addr: SocketAddr, n: usize, timeout: Duration) -> Vec<JoinHandle<Ending>> {
    (0..n)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                c.write_all(b"GET /index.html HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").expect("write");
                c.read_to_close(timeout)
            })
        })
        .collect()
}

/// `n` keep-alive connections, each answered once and left open.
fn held_keep_alive(addr: SocketAddr, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|_| {
            let mut c = connect(addr);
            c.send(b"GET /index.html HTTP/1.1\r\nHost: held\r\n\r\n").expect("write");
            assert_eq!(c.response(IO_TIMEOUT).expect("a response on a held connection").status, 200);
            c
        })
        .collect()
}

fn outcome_of(e: &Ending) -> String {
    match (status_of(&e.bytes), e.timed_out) {
        (Some(code), _) => code.to_string(),
        (None, true) => "no answer, still open".to_string(),
        (None, false) => "closed without an answer".to_string(),
    }
}

/// A worker whose descriptor table is full cannot receive the connections the listener
/// passes it: recvmsg truncates the SCM_RIGHTS message (MSG_CTRUNC), the kernel closes
/// the fds it could not install, and the ones it did install are in the worker's table.
/// Every connection the server accepted must still get an answer (served, 500 or 503)
/// or wait to be served; none may be closed unanswered or left open with nobody
/// serving it, and no descriptor may leak.
#[test]
fn a_worker_out_of_descriptors_answers_every_connection_it_is_given() {
    let (webd, admin) = start(1, &[]);
    let attack = Attack::begin_with("worker EMFILE", &webd, admin, CanaryMode::Off);
    let worker = webd.worker_pids()[0];
    stable_fd_count(worker).expect("worker fds");
    let sockets_before = socket_fds(worker);
    // Room for 12 more descriptors: the held connections below, the file each request
    // opens, and a few of the extra connections.
    let limit = limit_leaving_free(worker, 12);
    let original = set_nofile_soft(worker, limit);
    let held = held_keep_alive(webd.addr(), 8);
    // Now more connections than the worker has descriptors for. They are served a few at
    // a time as descriptors free up (intake pauses and resumes at each re-measure), so the
    // patience here is generous: the test asserts that each is answered, not how fast.
    let extra = close_requests(webd.addr(), 12, Duration::from_secs(15));
    let endings: Vec<Ending> = extra.into_iter().map(|h| h.join().expect("client")).collect();
    set_nofile_soft(worker, original);
    drop(held);
    let mut tally: HashMap<String, u64> = HashMap::new();
    for e in &endings {
        *tally.entry(outcome_of(e)).or_default() += 1;
    }
    // With every client gone, the worker holds its channel sockets only.
    let deadline = Instant::now() + Duration::from_secs(3);
    while socket_fds(worker) > sockets_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let leaked = socket_fds(worker).saturating_sub(sockets_before);
    let unanswered = tally.get("closed without an answer").copied().unwrap_or(0);
    let hung = tally.get("no answer, still open").copied().unwrap_or(0);
    attack.end(
        &format!("worker soft RLIMIT_NOFILE {limit} (12 free): 8 held keep-alive + 12 new connections"),
        &format!("{unanswered} of 12 closed unanswered, {hung} left open unanswered, {leaked} socket fd(s) leaked in the worker"),
    );
    eprintln!("worker EMFILE: outcomes {tally:?}; {leaked} socket descriptor(s) leaked");
    assert_eq!(unanswered + hung, 0, "connections handed to a worker out of descriptors were not answered: {tally:?}");
    assert_eq!(leaked, 0, "the worker leaked {leaked} connection descriptor(s)");
    assert_eq!(get(webd.addr(), "/index.html").expect("GET after").status, 200);
}

/// A worker whose descriptors its idle keep-alive clients hold closes the ones longest
/// without a request to take new connections (as a keep-alive timeout would, and as nginx
/// reuses idle connections), rather than holding the new ones queued for the 75 s of
/// those clients' keep-alive timeouts.
#[test]
fn a_worker_out_of_descriptors_closes_idle_keep_alive_connections_for_new_ones() {
    let (webd, _admin) = start(1, &[]);
    let worker = webd.worker_pids()[0];
    stable_fd_count(worker).expect("worker fds");
    // Room for 7 connections and the file they are served: the 8th held one and every
    // new one after it need an idle one closed.
    let limit = limit_leaving_free(worker, 8);
    let original = set_nofile_soft(worker, limit);
    let held = held_keep_alive(webd.addr(), 8);
    let endings: Vec<Ending> = close_requests(webd.addr(), 4, Duration::from_secs(15))
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    set_nofile_soft(worker, original);
    let outcomes: Vec<String> = endings.iter().map(outcome_of).collect();
    assert!(
        outcomes.iter().all(|o| o == "200"),
        "new connections to a worker whose idle clients hold its descriptors: {outcomes:?}"
    );
    // The held connections the server closed see EOF; the rest still serve.
    let mut closed = 0;
    for mut c in held {
        let again =
            c.send(b"GET /index.html HTTP/1.1\r\nHost: held\r\n\r\n").ok().and_then(|()| c.response(IO_TIMEOUT).ok());
        match again {
            Some(r) => assert_eq!(r.status, 200, "a held connection left open answers"),
            None => closed += 1,
        }
    }
    assert!(closed >= 1, "no idle connection was closed to make room");
    assert!(
        webd.log_text().contains("closed idle keep-alive connections for new ones"),
        "the worker says why it closed them"
    );
}

/// The same for the manager: out of descriptors, it cannot start or steer workers with
/// new fds, but connections do not pass through it (listener → worker lane), so none
/// may be lost or held up while it is starved.
#[test]
fn a_manager_out_of_descriptors_loses_no_connection() {
    let (webd, admin) = start(1, &[]);
    // A manager without descriptors can take no new connection at all: the requests made
    // during the attack are the scenario's own clients, and every one must be served
    // once it has descriptors again.
    let attack = Attack::begin_with("manager EMFILE", &webd, admin, CanaryMode::Off);
    let manager = webd.pid_of("webd: manager").expect("manager");
    let limit = lowest_free_fd(manager);
    let original = set_nofile_soft(manager, limit);
    let clients = close_requests(webd.addr(), 10, Duration::from_secs(5));
    // The manager stays without descriptors for a second, then recovers.
    let exhausted = Instant::now();
    while exhausted.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(50));
    }
    set_nofile_soft(manager, original);
    let endings: Vec<Ending> = clients.into_iter().map(|h| h.join().expect("client")).collect();
    let mut tally: HashMap<String, u64> = HashMap::new();
    for e in &endings {
        *tally.entry(outcome_of(e)).or_default() += 1;
    }
    let served = tally.get("200").copied().unwrap_or(0);
    attack.end(
        &format!("manager soft RLIMIT_NOFILE {limit} (no free descriptor) for 1 s; 10 new connections"),
        &format!("{} of 10 connections not served", 10 - served),
    );
    eprintln!("manager EMFILE: outcomes {tally:?}");
    assert_eq!(served, 10, "connections arriving while the manager was out of descriptors were lost: {tally:?}");
}
