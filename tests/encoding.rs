//! Content codings against the real binary (docs/reference.md, HTTP, content codings):
//! sidecars chosen by `Accept-Encoding`, on-the-fly compression and its cache, `Vary`,
//! ranges over encoded bytes, and the by-encoding metric.

use crate::util::*;
use std::io::Read;
use std::time::{Duration, UNIX_EPOCH};

/// A fixed modification time (2020-09-13): validators do not depend on the clock.
const MTIME: u64 = 1_600_000_000;
const LIMIT: Duration = Duration::from_secs(10);

fn start(args: &[&str], config_toml: Option<&str>) -> Webd {
    let mut all = vec!["--heartbeat-timeout".to_string(), "3000".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Webd::start_with(Options {
        workers: 1,
        args: all,
        config_toml: config_toml.map(str::to_string),
        ..Default::default()
    })
}

/// Writes `bytes` at `rel` under the root with mtime `MTIME` plus `nanos` nanoseconds.
fn write_at(webd: &Webd, rel: &str, bytes: &[u8], nanos: u32) {
    write_at_time(webd, rel, bytes, Duration::new(MTIME, nanos));
}

fn write_at_time(webd: &Webd, rel: &str, bytes: &[u8], since_epoch: Duration) {
    let path = webd.root.join(rel);
    std::fs::write(&path, bytes).expect("write file");
    let file = std::fs::File::options().write(true).open(&path).expect("open file");
    file.set_modified(UNIX_EPOCH + since_epoch).expect("set mtime");
}

/// Text that compresses well, `len` bytes.
fn text(len: usize, seed: u32) -> Vec<u8> {
    let line = format!("<p>line of text number {seed} for the compressor to chew on</p>\n");
    line.bytes().cycle().take(len).collect()
}

/// GET `path` with extra header lines on a connection of its own.
fn fetch(webd: &Webd, path: &str, headers: &str) -> Response {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n");
    request(webd.addr(), &raw).expect("response")
}

fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "br" => brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out).expect("brotli body"),
        "zstd" => zstd::stream::read::Decoder::new(bytes).expect("zstd").read_to_end(&mut out).expect("zstd body"),
        "gzip" => flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("gzip body"),
        other => panic!("unexpected coding {other}"),
    };
    out
}

#[test]
fn a_br_sidecar_is_served_to_a_client_preferring_br_with_vary_and_its_own_etag() {
    let webd = start(&[], None);
    let js = text(5000, 1);
    write_at(&webd, "app.js", &js, 0);
    let sidecar = b"pretend these are brotli bytes".to_vec();
    write_at(&webd, "app.js.br", &sidecar, 0);

    let encoded = fetch(&webd, "/app.js", "Accept-Encoding: gzip, deflate, br, zstd\r\n");
    assert_eq!(encoded.status, 200);
    assert_eq!(encoded.header("Content-Encoding"), Some("br"));
    assert_eq!(encoded.header("Vary"), Some("Accept-Encoding"));
    assert_eq!(encoded.header("Content-Type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(encoded.body, sidecar, "the sidecar's bytes as they are");
    let tag = encoded.header("ETag").expect("ETag").to_string();
    assert!(tag.ends_with("-br\""), "{tag}");

    let identity = fetch(&webd, "/app.js", "");
    assert_eq!((identity.status, identity.header("Content-Encoding")), (200, None));
    assert_eq!(identity.header("Vary"), Some("Accept-Encoding"), "identity of a resource that varies");
    assert_eq!(identity.body, js);
    assert_ne!(identity.header("ETag"), Some(tag.as_str()));

    let revalidated = fetch(&webd, "/app.js", &format!("Accept-Encoding: br\r\nIf-None-Match: {tag}\r\n"));
    assert_eq!(revalidated.status, 304);
    assert_eq!(revalidated.header("ETag"), Some(tag.as_str()));
    assert_eq!(revalidated.header("Vary"), Some("Accept-Encoding"));
    // The br tag does not validate the identity representation.
    let other = fetch(&webd, "/app.js", &format!("If-None-Match: {tag}\r\n"));
    assert_eq!((other.status, other.body.len()), (200, js.len()));

    let raw = "HEAD /app.js HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br\r\n\r\n";
    let mut conn = connect(webd.addr());
    conn.send(raw.as_bytes()).expect("send HEAD");
    let head = conn.head_response(LIMIT).expect("HEAD response");
    assert_eq!(head.header("Content-Encoding"), Some("br"));
    assert_eq!(head.header("Content-Length"), Some(sidecar.len().to_string().as_str()));
}

#[test]
fn q_values_choose_among_sidecars_and_zero_refuses() {
    let webd = start(&[], None);
    write_at(&webd, "style.css", &text(3000, 2), 0);
    write_at(&webd, "style.css.br", b"BR", 0);
    write_at(&webd, "style.css.gz", b"GZ", 0);
    write_at(&webd, "style.css.zst", b"ZSTD", 0);
    let cases = [
        ("gzip;q=1, br;q=0.5", Some("gzip"), &b"GZ"[..]),
        ("br, gzip, zstd", Some("br"), b"BR"),
        ("zstd, gzip", Some("zstd"), b"ZSTD"),
        ("br;q=0.1, zstd;q=0.2, gzip;q=0.15", Some("zstd"), b"ZSTD"),
        ("*", Some("br"), b"BR"),
        ("br;q=0, *;q=0.5", Some("zstd"), b"ZSTD"),
        ("x-gzip", Some("gzip"), b"GZ"),
    ];
    for (accept, coding, body) in cases {
        let response = fetch(&webd, "/style.css", &format!("Accept-Encoding: {accept}\r\n"));
        assert_eq!(response.status, 200, "{accept}");
        assert_eq!(response.header("Content-Encoding"), coding, "{accept}");
        assert_eq!(response.body, body, "{accept}");
    }
    // Nothing acceptable but identity, or not even identity: identity (RFC 9110 §12.5.3).
    for accept in ["br;q=0, gzip;q=0, zstd;q=0", "identity;q=0", "*;q=0", "", "gzip;q=0.5, identity"] {
        let response = fetch(&webd, "/style.css", &format!("Accept-Encoding: {accept}\r\n"));
        assert_eq!((response.status, response.header("Content-Encoding")), (200, None), "{accept:?}");
        assert_eq!(response.body, text(3000, 2), "{accept:?}");
    }
}

#[test]
fn a_sidecar_older_than_its_file_is_not_served() {
    let webd = start(&[], None);
    let html = text(4000, 3);
    write_at(&webd, "page.html", &html, 500);
    write_at_time(&webd, "page.html.br", b"stale brotli", Duration::new(MTIME - 1, 999_999_999));
    // As `brotli -k` or tar leave it: the file's mtime without its nanoseconds.
    write_at(&webd, "page.html.gz", b"fresh gzip", 0);
    let response = fetch(&webd, "/page.html", "Accept-Encoding: br, gzip\r\n");
    assert_eq!(response.header("Content-Encoding"), Some("gzip"), "the fresh sidecar");
    assert_eq!(response.body, b"fresh gzip");
    let br_only = fetch(&webd, "/page.html", "Accept-Encoding: br\r\n");
    assert_eq!(br_only.header("Content-Encoding"), Some("br"));
    assert_ne!(br_only.body, b"stale brotli", "compressed on the fly instead");
    assert_eq!(decode("br", &br_only.body), html);
}

#[test]
fn range_applies_to_the_encoded_bytes() {
    let webd = start(&[], None);
    write_at(&webd, "data.json", &text(2000, 4), 0);
    let sidecar: Vec<u8> = (0..=255u8).collect();
    write_at(&webd, "data.json.br", &sidecar, 0);
    let partial = fetch(&webd, "/data.json", "Accept-Encoding: br\r\nRange: bytes=10-19\r\n");
    assert_eq!(partial.status, 206);
    assert_eq!(partial.header("Content-Encoding"), Some("br"));
    assert_eq!(partial.header("Content-Range"), Some("bytes 10-19/256"));
    assert_eq!(partial.header("Vary"), Some("Accept-Encoding"));
    assert_eq!(partial.body, &sidecar[10..20]);
    let tag = partial.header("ETag").expect("ETag").to_string();
    let if_range =
        fetch(&webd, "/data.json", &format!("Accept-Encoding: br\r\nRange: bytes=0-0\r\nIf-Range: {tag}\r\n"));
    assert_eq!((if_range.status, if_range.body.as_slice()), (206, &sidecar[..1]));
    let several = fetch(&webd, "/data.json", "Accept-Encoding: br\r\nRange: bytes=0-1,200-201\r\n");
    assert_eq!(several.status, 206);
    assert!(several.header("Content-Type").is_some_and(|t| t.starts_with("multipart/byteranges")));

    // A body compressed on the fly: one range of the compressed bytes.
    let whole = fetch(&webd, "/data.json", "Accept-Encoding: gzip\r\n");
    assert_eq!(whole.header("Content-Encoding"), Some("gzip"));
    let part = fetch(&webd, "/data.json", "Accept-Encoding: gzip\r\nRange: bytes=5-\r\n");
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("Content-Range"),
        Some(format!("bytes 5-{}/{}", whole.body.len() - 1, whole.body.len()).as_str())
    );
    assert_eq!(part.body, &whole.body[5..]);
    let beyond =
        fetch(&webd, "/data.json", &format!("Accept-Encoding: gzip\r\nRange: bytes={}-\r\n", whole.body.len()));
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("Vary"), Some("Accept-Encoding"));
}

#[test]
fn compressible_files_are_compressed_on_the_fly_and_decode_to_the_file() {
    let webd = start(&[], None);
    let small = text(1023, 5);
    write_at(&webd, "small.txt", &small, 0);
    // 100 KiB: sent from memory past the inline limit, in several writes.
    let big = text(100 * 1024, 6);
    write_at(&webd, "big.txt", &big, 0);
    write_at(&webd, "image.png", &text(5000, 7), 0);
    for coding in ["br", "zstd", "gzip"] {
        let response = fetch(&webd, "/big.txt", &format!("Accept-Encoding: {coding}\r\n"));
        assert_eq!(response.status, 200, "{coding}");
        assert_eq!(response.header("Content-Encoding"), Some(coding));
        assert_eq!(response.header("Vary"), Some("Accept-Encoding"));
        assert!(response.body.len() < big.len() / 10, "{coding}: {} bytes", response.body.len());
        assert_eq!(decode(coding, &response.body), big, "{coding}");
        assert!(response.header("ETag").is_some_and(|tag| tag.ends_with(&format!("-{coding}\""))));
    }
    let below_minimum = fetch(&webd, "/small.txt", "Accept-Encoding: gzip\r\n");
    assert_eq!((below_minimum.header("Content-Encoding"), &below_minimum.body), (None, &small));
    assert_eq!(below_minimum.header("Vary"), Some("Accept-Encoding"));
    let image = fetch(&webd, "/image.png", "Accept-Encoding: gzip, br\r\n");
    assert_eq!((image.header("Content-Encoding"), image.header("Vary")), (None, None), "not a compressible type");
    let plain = fetch(&webd, "/big.txt", "");
    assert_eq!((plain.header("Content-Encoding"), plain.body.len()), (None, big.len()), "no Accept-Encoding");
}

#[test]
fn the_cache_never_serves_a_stale_version() {
    let webd = start(&[], None);
    let (first, second) = (text(8000, 10), text(8000, 11));
    assert_eq!(first.len(), second.len());
    write_at(&webd, "doc.txt", &first, 1);
    let mut conn = KeepAlive::new(webd.addr(), LIMIT);
    let raw = b"GET /doc.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n";
    let before = conn.exchange(raw).expect("response");
    assert_eq!(decode("gzip", &before.body), first);
    // Same inode, same size, same second: only the nanoseconds differ.
    write_at(&webd, "doc.txt", &second, 2);
    let after = conn.exchange(raw).expect("response");
    assert_eq!(decode("gzip", &after.body), second);
    assert_ne!(before.header("ETag"), after.header("ETag"));
    assert_eq!(before.header("Last-Modified"), after.header("Last-Modified"));
}

/// Resident memory of the process in KiB, from /proc.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS value")
}

#[test]
fn the_cache_stays_within_compress_cache_mib() {
    let webd = start(&[], Some("compress_cache_mib = 1\n"));
    let worker = wait_for(LIMIT, "a worker", || webd.worker_pids().first().copied());
    // Hex digits: compressible to about half, so each body costs ~100 KiB in the cache.
    let files = 150;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for n in 0..files {
        let body: Vec<u8> = (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b"0123456789abcdef"[(state & 15) as usize]
            })
            .collect();
        write_at(&webd, &format!("f{n}.txt"), &body, 0);
    }
    let mut conn = KeepAlive::new(webd.addr(), LIMIT);
    let mut get = |n: usize| {
        let raw = format!("GET /f{n}.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
        let response = conn.exchange(raw.as_bytes()).expect("response");
        assert_eq!(response.header("Content-Encoding"), Some("gzip"), "f{n}");
        response.body.len()
    };
    for n in 0..10 {
        get(n);
    }
    let warm = rss_kib(worker);
    let served: usize = (10..files).map(&mut get).sum();
    let grown = rss_kib(worker).saturating_sub(warm);
    eprintln!("worker grew by {grown} KiB while serving {served} compressed bytes");
    assert!(served > 12 << 20, "the bodies add up to far more than the cache: {served} bytes");
    assert!(grown < 6 * 1024, "the worker grew by {grown} KiB while serving {served} compressed bytes");
    // Still correct after many evictions.
    let raw = "GET /f0.txt HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n";
    let again = request(webd.addr(), raw).expect("response");
    let file = std::fs::read(webd.root.join("f0.txt")).expect("read f0");
    assert_eq!(decode("gzip", &again.body), file);
    assert_eq!(webd.worker_pids(), vec![worker], "no worker died");
}

#[test]
fn malformed_accept_encoding_is_never_an_error() {
    let webd = start(&[], None);
    let css = text(4000, 12);
    write_at(&webd, "a.css", &css, 0);
    let workers = webd.worker_pids();
    let values = [
        "br;q=2",
        ";;;,,,",
        "gzip;q=abc",
        "br;q=0.0001, gzip;q=-1",
        "gzip;q=\u{e9}, \u{e9}t\u{e9}",
        "identity;q=0, *;q=0",
        "gzip;;q=0.5=",
        &"br, ".repeat(2000),
    ];
    for value in values {
        let response = fetch(&webd, "/a.css", &format!("Accept-Encoding: {value}\r\n"));
        assert_eq!(response.status, 200, "{value:?}");
        match response.header("Content-Encoding") {
            None => assert_eq!(response.body, css, "{value:?}"),
            Some(coding) => assert_eq!(decode(coding, &response.body), css, "{value:?}"),
        }
    }
    // Two lines are one list: the second adds br.
    let split = fetch(&webd, "/a.css", "Accept-Encoding: gzip;q=0.1\r\nAccept-Encoding: br\r\n");
    assert_eq!(split.header("Content-Encoding"), Some("br"));
    assert_eq!(webd.worker_pids(), workers, "no worker died");
}

#[test]
fn responses_are_counted_by_encoding() {
    let (webd, admin) = start_with_admin(Options {
        workers: 1,
        args: vec!["--heartbeat-timeout".into(), "3000".into()],
        ..Default::default()
    });
    write_at(&webd, "m.txt", &text(4000, 13), 0);
    write_at(&webd, "m.txt.zst", b"zstd sidecar", 0);
    let count =
        |encoding: &str| metric(&scrape(admin), "webd_http_requests_by_encoding_total", &[("encoding", encoding)]);
    // The harness's readiness GET of /index.html is counted first, as identity.
    wait_until(LIMIT, "the readiness request counted", || count("identity").is_some_and(|n| n >= 1.0));
    let before: Vec<f64> = ["identity", "br", "zstd", "gzip"].iter().map(|e| count(e).unwrap_or(0.0)).collect();
    assert_eq!(before[1..], [0.0; 3], "every encoding is exported from the start");
    for (accept, times) in [("br", 2), ("gzip", 3), ("zstd", 1), ("", 4)] {
        for _ in 0..times {
            assert_eq!(fetch(&webd, "/m.txt", &format!("Accept-Encoding: {accept}\r\n")).status, 200);
        }
    }
    let wanted = [4.0, 2.0, 1.0, 3.0];
    wait_until(LIMIT, "by-encoding counts", || {
        let now: Vec<f64> = ["identity", "br", "zstd", "gzip"].iter().map(|e| count(e).unwrap_or(0.0)).collect();
        now.iter().zip(&before).map(|(n, b)| n - b).collect::<Vec<_>>() == wanted
    });
}

/// A sidecar is kept open by the worker's open-file cache, as its file is (a hot `.br`
/// costs no `openat2` per request), and never served stale from it: renamed over with the
/// same length and mtime, rewritten in place, or deleted (then the file is compressed on
/// the fly), on the same keep-alive connection.
#[test]
fn a_cached_sidecar_replaced_rewritten_or_deleted_is_never_served_stale() {
    let webd = start(&[], None);
    let css = text(6000, 5);
    write_at(&webd, "site.css", &css, 0);
    write_at(&webd, "site.css.br", b"brotli version 1", 0);
    let mut conn = connect(webd.addr());
    let mut get_br = |what: &str| {
        conn.send(b"GET /site.css HTTP/1.1\r\nHost: t\r\nAccept-Encoding: br\r\n\r\n").expect("request");
        let response = conn.response(LIMIT).unwrap_or_else(|e| panic!("{what}: {}", e.kind));
        assert_eq!((response.status, response.header("Content-Encoding")), (200, Some("br")), "{what}");
        response.body
    };
    for _ in 0..3 {
        assert_eq!(get_br("hot"), b"brotli version 1");
    }
    let worker = webd.pid_of("webd: worker 0").expect("worker");
    let held = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .expect("the worker's fds")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|target| target.ends_with("site.css.br"));
    assert!(held, "the worker does not hold the sidecar open");

    write_at(&webd, ".staged", b"brotli version 2", 0); // same length and mtime, another inode
    std::fs::rename(webd.root.join(".staged"), webd.root.join("site.css.br")).expect("rename over");
    assert_eq!(get_br("after a rename over"), b"brotli version 2");
    write_at(&webd, "site.css.br", b"brotli version 3", 0);
    assert_eq!(get_br("after a rewrite in place"), b"brotli version 3");
    std::fs::remove_file(webd.root.join("site.css.br")).expect("remove");
    let compressed = get_br("after a delete");
    assert_eq!(decode("br", &compressed), css, "the file compressed on the fly");
}
