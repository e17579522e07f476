//! The HTTP contract (docs/reference.md, HTTP) against the real binary: static files, conditional and
//! range requests, keep-alive and pipelining, path escapes, error statuses, timeouts and
//! slow clients. Requests are written raw so nothing normalises them on the way; every
//! test that sends hostile input checks afterwards that no worker died.

use crate::util::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A fixed modification time (2020-09-13), so validators do not depend on the clock.
const MTIME: u64 = 1_600_000_000;
const TEN_MIB: usize = 10 << 20;

/// A daemon whose supervision tolerates a loaded test machine, so a changed worker pid
/// means a crash, not a slow heartbeat.
fn start(workers: u32, args: &[&str]) -> Webd {
    let mut all = vec!["--heartbeat-timeout".to_string(), "3000".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Webd::start_with(Options { workers, args: all, ..Default::default() })
}

fn write_file(webd: &Webd, rel: &str, bytes: &[u8]) {
    let path = webd.root.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create dir");
    }
    std::fs::write(&path, bytes).expect("write file");
    let file = std::fs::File::options().write(true).open(&path).expect("open file");
    file.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME)).expect("set mtime");
}

fn lossy(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(600)];
    format!("{:?}{}", String::from_utf8_lossy(shown), if bytes.len() > 600 { "..." } else { "" })
}

/// Reads until the server closes (EOF or reset); panics if it keeps the connection open.
fn read_until_closed(conn: &mut Conn) -> Vec<u8> {
    let end = conn.read_to_close(IO_TIMEOUT);
    assert!(
        !end.timed_out,
        "server kept the connection open for {IO_TIMEOUT:?}; received so far: {}",
        lossy(&end.bytes)
    );
    assert!(
        end.took < Duration::from_secs(20),
        "connection still streaming after 20 s; received {} bytes",
        end.bytes.len()
    );
    end.bytes
}

/// Writes `raw` on a new connection and returns everything the server sends before closing.
fn send_raw(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut conn = connect(addr);
    conn.send(raw).expect("write request");
    read_until_closed(&mut conn)
}

/// `send_raw`, parsed as one response (framed by Content-Length) followed by nothing.
fn exchange(addr: SocketAddr, raw: &[u8]) -> Response {
    let got = send_raw(addr, raw);
    let (response, used) =
        parse_response(&got).unwrap_or_else(|| panic!("request {} got no response: {}", lossy(raw), lossy(&got)));
    assert_eq!(used, got.len(), "request {} got extra bytes after the response: {}", lossy(raw), lossy(&got));
    response
}

/// GET `path` with extra header lines, closing after the response.
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> Response {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n").as_bytes())
}

/// Sends a request that must be answered with a head and no body at all, then a close.
fn exchange_bodiless(addr: SocketAddr, raw: &str) -> Response {
    let got = send_raw(addr, raw.as_bytes());
    let (response, used) = parse_head(&got).unwrap_or_else(|| panic!("request {raw:?} got: {}", lossy(&got)));
    assert_eq!(used, got.len(), "request {raw:?} got body bytes: {}", lossy(&got));
    response
}

/// Reads one Content-Length-framed response from a connection that stays open.
fn next_response(conn: &mut Conn) -> Response {
    conn.response(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("no whole response: {e}; received so far: {}", lossy(conn.buffered())))
}

/// The media type without parameters (`text/html; charset=utf-8` → `text/html`).
fn media_type(response: &Response) -> &str {
    response.header("Content-Type").unwrap_or("").split(';').next().unwrap_or("").trim()
}

/// Deterministic noise, so a misplaced chunk cannot compare equal by accident.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    out
}

fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!("{what}: got {} bytes, want {}; first difference at byte {at}", got.len(), want.len());
    }
}

fn assert_workers_unchanged(webd: &Webd, before: &[i32]) {
    let tree = webd.tree();
    assert_eq!(worker_pids_in(&tree), before, "worker pids changed: a request crashed a worker; the tree: {tree:?}");
}

// ---- GET and HEAD ------------------------------------------------------------------

#[test]
fn get_serves_files_with_content_type_by_extension_and_date_and_server_headers() {
    let webd = start(1, &[]);
    let files: &[(&str, &str)] = &[
        ("page.html", "text/html"),
        ("style.css", "text/css"),
        ("app.js", "text/javascript"),
        ("logo.png", "image/png"),
        ("data.json", "application/json"),
        ("blob.qqqzz", "application/octet-stream"),
        ("README", "application/octet-stream"),
    ];
    for (i, (name, _)) in files.iter().enumerate() {
        write_file(&webd, name, format!("content of {name} #{i}\n").as_bytes());
    }
    for (i, (name, want_type)) in files.iter().enumerate() {
        let r = get(webd.addr(), &format!("/{name}")).expect("GET");
        assert_eq!(r.status, 200, "/{name}");
        assert_eq!(r.body, format!("content of {name} #{i}\n").as_bytes(), "/{name}");
        assert_eq!(media_type(&r), *want_type, "Content-Type of /{name}: {:?}", r.header("Content-Type"));
        assert_eq!(r.header("Content-Length"), Some(r.body.len().to_string().as_str()), "/{name}");
        assert_eq!(r.header("Server"), Some("webd"));
        let date = r.header("Date").expect("Date header");
        let date = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("Date {date:?} is no HTTP-date: {e}"));
        let skew = date.duration_since(SystemTime::now()).or_else(|_| SystemTime::now().duration_since(date));
        assert!(skew.expect("skew") < Duration::from_secs(60), "Date far from now: {date:?}");
    }
}

#[test]
fn head_has_the_same_headers_as_get_and_no_body() {
    let webd = start(1, &[]);
    write_file(&webd, "small.css", b"body { color: red }\n");
    write_file(&webd, "large.bin", &noise(100_000, 7)); // past the inline limit: the sendfile path
    for path in ["/small.css", "/large.bin", "/"] {
        let full = get(webd.addr(), path).expect("GET");
        assert_eq!(full.status, 200, "GET {path}");
        let head =
            exchange_bodiless(webd.addr(), &format!("HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
        assert_eq!(head.status, 200, "HEAD {path}");
        for name in ["Content-Length", "Content-Type", "ETag", "Last-Modified", "Accept-Ranges", "Server"] {
            assert_eq!(head.header(name), full.header(name), "{name} differs between HEAD and GET {path}");
        }
        assert_eq!(head.header("Content-Length"), Some(full.body.len().to_string().as_str()));
        assert!(head.header("Date").is_some());
    }
}

#[test]
fn directories_serve_index_html_redirect_without_slash_and_never_list() {
    let webd = start(1, &[]);
    write_file(&webd, "sub/index.html", b"<h1>sub</h1>\n");
    write_file(&webd, "empty/listing-marker-7f3a.txt", b"x");

    let root = get(webd.addr(), "/").expect("GET /");
    assert_eq!((root.status, root.body.as_slice()), (200, BODY));
    assert_eq!(media_type(&root), "text/html");
    let sub = get(webd.addr(), "/sub/").expect("GET /sub/");
    assert_eq!((sub.status, sub.body.as_slice()), (200, &b"<h1>sub</h1>\n"[..]));

    let redirect = get(webd.addr(), "/sub").expect("GET /sub");
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("Location"), Some("/sub/"));
    let with_query = get(webd.addr(), "/sub?x=1").expect("GET /sub?x=1");
    assert_eq!(with_query.status, 301);
    assert_eq!(with_query.header("Location"), Some("/sub/?x=1"));

    let listing = get(webd.addr(), "/empty/").expect("GET /empty/");
    assert_eq!(listing.status, 404, "a directory without index.html: {:?}", String::from_utf8_lossy(&listing.body));
    assert!(!String::from_utf8_lossy(&listing.body).contains("listing-marker"), "directory listed");
    assert_eq!(get(webd.addr(), "/no-such-file.html").expect("GET").status, 404);
}

// ---- Validators --------------------------------------------------------------------

#[test]
fn etag_and_last_modified_make_conditional_requests_304() {
    let webd = start(1, &[]);
    write_file(&webd, "doc.txt", b"version one\n");
    let first = get(webd.addr(), "/doc.txt").expect("GET");
    assert_eq!(first.status, 200);
    let etag = first.header("ETag").expect("ETag").to_string();
    let last_modified = first.header("Last-Modified").expect("Last-Modified").to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2, "ETag {etag:?} is not a quoted tag");
    assert_eq!(httpdate::parse_http_date(&last_modified).ok(), Some(UNIX_EPOCH + Duration::from_secs(MTIME)));

    let head = |h: &str| format!("GET /doc.txt HTTP/1.1\r\nHost: t\r\n{h}\r\nConnection: close\r\n\r\n");
    let not_modified = exchange_bodiless(webd.addr(), &head(&format!("If-None-Match: {etag}")));
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("ETag"), Some(etag.as_str()));
    let listed = exchange_bodiless(webd.addr(), &head(&format!("If-None-Match: \"other\", {etag}")));
    assert_eq!(listed.status, 304, "an ETag in a list must match");
    let by_date = exchange_bodiless(webd.addr(), &head(&format!("If-Modified-Since: {last_modified}")));
    assert_eq!(by_date.status, 304);

    let stale = get_with(webd.addr(), "/doc.txt", "If-None-Match: \"not-the-etag\"\r\n");
    assert_eq!((stale.status, stale.body.as_slice()), (200, &b"version one\n"[..]));
    let older = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME - 3600));
    let modified_since = get_with(webd.addr(), "/doc.txt", &format!("If-Modified-Since: {older}\r\n"));
    assert_eq!(modified_since.status, 200);
    // If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
    let both =
        get_with(webd.addr(), "/doc.txt", &format!("If-None-Match: \"x\"\r\nIf-Modified-Since: {last_modified}\r\n"));
    assert_eq!(both.status, 200);

    // The file changes: the old ETag no longer matches.
    write_file(&webd, "doc.txt", b"version two, longer\n");
    let changed = get_with(webd.addr(), "/doc.txt", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!((changed.status, changed.body.as_slice()), (200, &b"version two, longer\n"[..]));
    assert_ne!(changed.header("ETag"), Some(etag.as_str()));
}

#[test]
fn if_match_and_if_unmodified_since_fail_with_412_also_with_range_and_on_head() {
    let webd = start(1, &[]);
    write_file(&webd, "doc.txt", b"version one\n");
    let etag = get(webd.addr(), "/doc.txt").expect("GET").header("ETag").expect("ETag").to_string();
    let earlier = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME - 60));
    let last_modified = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME));

    for failing in [
        "If-Match: \"nope\"\r\n".to_string(),
        format!("If-Match: W/{etag}\r\n"),
        format!("If-Unmodified-Since: {earlier}\r\n"),
        format!("If-Match: \"nope\"\r\nIf-None-Match: {etag}\r\n"),
    ] {
        let r = get_with(webd.addr(), "/doc.txt", &failing);
        assert_eq!(r.status, 412, "{failing:?}");
        let ranged = get_with(webd.addr(), "/doc.txt", &format!("{failing}Range: bytes=0-3\r\n"));
        assert_eq!(ranged.status, 412, "{failing:?} with Range");
        let head = exchange_bodiless(
            webd.addr(),
            &format!("HEAD /doc.txt HTTP/1.1\r\nHost: t\r\n{failing}Connection: close\r\n\r\n"),
        );
        assert_eq!(head.status, 412, "{failing:?} on HEAD");
    }
    for holding in [
        format!("If-Match: {etag}\r\n"),
        "If-Match: *\r\n".to_string(),
        format!("If-Match: \"x\"\r\nIf-Match: \"y\", {etag}\r\n"),
        format!("If-Unmodified-Since: {last_modified}\r\n"),
        format!("If-Match: {etag}\r\nIf-Unmodified-Since: {earlier}\r\n"),
    ] {
        let r = get_with(webd.addr(), "/doc.txt", &format!("{holding}Range: bytes=0-6\r\n"));
        assert_eq!((r.status, r.body.as_slice()), (206, &b"version"[..]), "{holding:?}");
    }
    // The case this was written for: a failed If-Match with a Range was a 206.
    let r = get_with(webd.addr(), "/doc.txt", "If-Match: \"nope\"\r\nRange: bytes=0-1\r\n");
    assert_eq!(r.status, 412);
}

#[test]
fn if_none_match_field_lines_are_combined_and_star_matches() {
    let webd = start(1, &[]);
    write_file(&webd, "doc.txt", b"version one\n");
    let etag = get(webd.addr(), "/doc.txt").expect("GET").header("ETag").expect("ETag").to_string();
    let head = |h: &str| format!("GET /doc.txt HTTP/1.1\r\nHost: t\r\n{h}Connection: close\r\n\r\n");
    for matching in [
        format!("If-None-Match: \"a\"\r\nIf-None-Match: \"b\", {etag}\r\n"),
        format!("If-None-Match: \"a\"\r\nX-Other: 1\r\nif-none-match: W/{etag}\r\n"),
        "If-None-Match: *\r\n".to_string(),
        format!("If-None-Match: {etag}\r\nRange: bytes=0-1\r\n"),
    ] {
        let r = exchange_bodiless(webd.addr(), &head(&matching));
        assert_eq!(r.status, 304, "{matching:?}");
        assert_eq!(r.header("ETag"), Some(etag.as_str()));
    }
    let r = get_with(webd.addr(), "/doc.txt", "If-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n");
    assert_eq!(r.status, 200);
}

#[test]
fn etag_changes_on_a_same_size_rewrite_within_one_second() {
    let webd = start(1, &[]);
    let path = webd.root.join("doc.txt");
    let etag_now = || get(webd.addr(), "/doc.txt").expect("GET").header("ETag").expect("ETag").to_string();
    // Timestamps set exactly: the same second, the same size, the same inode.
    let mut seen = Vec::new();
    for nanos in [100, 200] {
        std::fs::write(&path, if nanos == 100 { "aaaa" } else { "bbbb" }).expect("write");
        let file = std::fs::File::options().write(true).open(&path).expect("open");
        file.set_modified(UNIX_EPOCH + Duration::new(MTIME, nanos)).expect("set mtime");
        seen.push(etag_now());
    }
    assert_ne!(seen[0], seen[1], "two versions within one second share an ETag");
    let stale = get_with(webd.addr(), "/doc.txt", &format!("If-None-Match: {}\r\n", seen[0]));
    assert_eq!((stale.status, stale.body.as_slice()), (200, &b"bbbb"[..]));
    // Real rewrites, as fast as they come: whenever the file's stat shows a change, the
    // ETag shows it too. (How fine the mtime is, is the filesystem's and the kernel's: with
    // multigrain timestamps, Linux 6.13+, every rewrite here gets a new one.)
    let stat = || {
        let meta = std::fs::metadata(&path).expect("stat");
        (meta.modified().expect("mtime"), std::os::unix::fs::MetadataExt::ino(&meta), meta.len())
    };
    let mut previous = (stat(), etag_now());
    for round in 0..5 {
        std::fs::write(&path, format!("v{round:03}")).expect("rewrite");
        let now = (stat(), etag_now());
        if now.0 != previous.0 {
            assert_ne!(now.1, previous.1, "rewrite {round} changed the file's stat but kept the ETag");
        }
        previous = now;
    }
    // Replaced by a rename of a file with the same size and mtime: another inode.
    let next = webd.root.join("doc.next");
    std::fs::write(&next, "cccc").expect("write");
    std::fs::File::options()
        .write(true)
        .open(&next)
        .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::new(MTIME, 200)))
        .expect("set mtime");
    std::fs::write(&path, "bbbb").expect("write");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::new(MTIME, 200)))
        .expect("set mtime");
    let before = etag_now();
    std::fs::rename(&next, &path).expect("rename");
    assert_ne!(etag_now(), before, "a file renamed into place kept the ETag");
}

// ---- Range -------------------------------------------------------------------------

#[test]
fn single_byte_ranges_are_206_and_unsatisfiable_is_416() {
    let webd = start(1, &[]);
    let content: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
    write_file(&webd, "letters.txt", &content);
    let len = content.len();
    let etag = get(webd.addr(), "/letters.txt").expect("GET").header("ETag").expect("ETag").to_string();

    let cases: &[(&str, usize, usize)] =
        &[("bytes=0-9", 0, 9), ("bytes=-5", 95, 99), ("bytes=5-", 5, 99), ("bytes=90-500", 90, 99)];
    for &(range, first, last) in cases {
        let r = get_with(webd.addr(), "/letters.txt", &format!("Range: {range}\r\n"));
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.header("Content-Range"), Some(format!("bytes {first}-{last}/{len}").as_str()), "{range}");
        assert_eq!(r.body, &content[first..=last], "{range}");
        assert_eq!(r.header("Content-Length"), Some((last - first + 1).to_string().as_str()), "{range}");
    }

    let unsatisfiable = get_with(webd.addr(), "/letters.txt", "Range: bytes=999999-\r\n");
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(unsatisfiable.header("Content-Range"), Some(format!("bytes */{len}").as_str()));

    let if_range = get_with(webd.addr(), "/letters.txt", &format!("Range: bytes=0-9\r\nIf-Range: {etag}\r\n"));
    assert_eq!((if_range.status, if_range.body.as_slice()), (206, &content[..10]));
    let lm = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME));
    let by_date = get_with(webd.addr(), "/letters.txt", &format!("Range: bytes=0-9\r\nIf-Range: {lm}\r\n"));
    assert_eq!(by_date.status, 206, "If-Range with the Last-Modified date");
    let other = get_with(webd.addr(), "/letters.txt", "Range: bytes=0-9\r\nIf-Range: \"some-other-etag\"\r\n");
    assert_eq!((other.status, other.body.as_slice()), (200, content.as_slice()), "If-Range mismatch sends it all");
}

/// The parts of a `multipart/byteranges` body: each part's Content-Range and bytes.
/// Panics on framing that does not follow RFC 9110 §14.6 and RFC 2046.
fn multipart_parts(response: &Response) -> Vec<(String, Vec<u8>)> {
    let content_type = response.header("Content-Type").expect("Content-Type");
    let boundary = content_type.strip_prefix("multipart/byteranges; boundary=").expect("multipart/byteranges");
    let delimiter = format!("--{boundary}");
    let close = format!("\r\n--{boundary}--\r\n");
    let body = response.body.as_slice();
    assert!(
        body.ends_with(close.as_bytes()),
        "no closing delimiter: {}",
        lossy(&body[body.len().saturating_sub(80)..])
    );
    let mut rest = body.strip_prefix(delimiter.as_bytes()).expect("body starts with a delimiter");
    let mut parts = Vec::new();
    loop {
        let head_end = rest.windows(4).position(|w| w == b"\r\n\r\n").expect("part head end") + 4;
        let head = std::str::from_utf8(&rest[..head_end]).expect("part head text");
        let content_range =
            head.lines().find_map(|line| line.strip_prefix("Content-Range: ")).expect("part Content-Range").to_string();
        assert!(head.contains("\r\nContent-Type: "), "part without Content-Type: {head:?}");
        let (first, last) = content_range
            .strip_prefix("bytes ")
            .and_then(|r| r.split_once('/'))
            .and_then(|(span, _)| span.split_once('-'))
            .map(|(a, b)| (a.parse::<usize>().expect("first"), b.parse::<usize>().expect("last")))
            .expect("bytes a-b/len");
        let data_end = head_end + last - first + 1;
        parts.push((content_range, rest[head_end..data_end].to_vec()));
        rest = &rest[data_end..];
        if rest == close.as_bytes() {
            return parts;
        }
        rest = rest.strip_prefix(format!("\r\n{delimiter}").as_bytes()).expect("a delimiter between parts");
    }
}

#[test]
fn several_ranges_are_206_multipart_byteranges_coalesced_and_at_most_sixteen() {
    let webd = start(1, &[]);
    let content: Vec<u8> = (0..100u8).map(|i| b'a' + i % 26).collect();
    write_file(&webd, "letters.txt", &content);

    let r = get_with(webd.addr(), "/letters.txt", "Range: bytes=0-4, 90-, 10-14, 3-7, -2\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.header("Content-Range"), None);
    assert_eq!(r.header("Content-Length"), Some(r.body.len().to_string().as_str()));
    let parts = multipart_parts(&r);
    let want: Vec<(String, Vec<u8>)> = [(0, 7), (90, 99), (10, 14)]
        .iter()
        .map(|&(first, last)| (format!("bytes {first}-{last}/100"), content[first..=last].to_vec()))
        .collect();
    assert_eq!(parts, want, "overlapping ranges coalesce in the place of the first");

    let sixteen: Vec<String> = (0..16).map(|i| format!("{0}-{0}", i * 3)).collect();
    let r = get_with(webd.addr(), "/letters.txt", &format!("Range: bytes={}\r\n", sixteen.join(",")));
    assert_eq!((r.status, multipart_parts(&r).len()), (206, 16));
    let r = get_with(webd.addr(), "/letters.txt", &format!("Range: bytes={},60-60\r\n", sixteen.join(",")));
    assert_eq!((r.status, r.body.as_slice()), (200, content.as_slice()), "17 parts: the whole file");
    let r = get_with(webd.addr(), "/letters.txt", "Range: bytes=5-9,0-2,1-7\r\n");
    assert_eq!((r.status, r.header("Content-Range")), (206, Some("bytes 0-9/100")), "all coalesced: one part");
    let r = get_with(webd.addr(), "/letters.txt", "Range: bytes=200-300,500-\r\n");
    assert_eq!(r.status, 416);

    // Parts too large to inline go out with sendfile, their heads in between.
    let big = noise(TEN_MIB, 77);
    write_file(&webd, "big.bin", &big);
    let r = get_with(webd.addr(), "/big.bin", "Range: bytes=100-3000099,-1000000,5000000-5000009\r\n");
    assert_eq!(r.status, 206);
    let parts = multipart_parts(&r);
    let spans = [(100, 3_000_099), (TEN_MIB - 1_000_000, TEN_MIB - 1), (5_000_000, 5_000_009)];
    assert_eq!(parts.len(), spans.len());
    for ((content_range, bytes), (first, last)) in parts.iter().zip(spans) {
        assert_eq!(content_range, &format!("bytes {first}-{last}/{TEN_MIB}"));
        assert_same_bytes(bytes, &big[first..=last], content_range);
    }
    // On a kept-alive connection, the next response follows the closing delimiter.
    let mut stream = connect(webd.addr());
    stream.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0,-1\r\n\r\nGET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let r = next_response(&mut stream);
    assert_eq!(multipart_parts(&r).len(), 2);
    let r = next_response(&mut stream);
    assert_eq!((r.status, r.body.as_slice()), (200, BODY));
}

// ---- Connections -------------------------------------------------------------------

#[test]
fn keep_alive_answers_many_requests_on_one_connection_until_connection_close() {
    let webd = start(1, &[]);
    write_file(&webd, "a.txt", b"aaa\n");
    let mut stream = connect(webd.addr());
    for i in 0..5 {
        let path = if i % 2 == 0 { "/a.txt" } else { "/index.html" };
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).expect("write");
        let r = next_response(&mut stream);
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.body, if i % 2 == 0 { &b"aaa\n"[..] } else { BODY }, "request {i}");
        assert_ne!(r.header("Connection"), Some("close"), "request {i} closed a keep-alive connection");
    }
    stream.write_all(b"GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    let rest = read_until_closed(&mut stream);
    let (last, used) = parse_response(&rest).unwrap_or_else(|| panic!("last response: {}", lossy(&rest)));
    assert_eq!((last.status, last.body.as_slice(), used), (200, &b"aaa\n"[..], rest.len()));
    assert_eq!(last.header("Connection"), Some("close"));
}

#[test]
fn http10_without_host_is_served_and_closed_unless_keep_alive_is_asked() {
    let webd = start(1, &[]);
    let r = exchange(webd.addr(), b"GET / HTTP/1.0\r\n\r\n"); // exchange asserts the close
    assert_eq!((r.status, r.body.as_slice()), (200, BODY));

    let mut stream = connect(webd.addr());
    stream.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").expect("write");
    let first = next_response(&mut stream);
    assert_eq!(first.status, 200);
    assert!(first.header("Connection").is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")), "{first:?}");
    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").expect("write second request");
    let rest = read_until_closed(&mut stream);
    let (second, _) = parse_response(&rest).unwrap_or_else(|| panic!("second response: {}", lossy(&rest)));
    assert_eq!((second.status, second.body.as_slice()), (200, BODY));
}

#[test]
fn pipelined_requests_in_one_write_are_answered_in_order() {
    let webd = start(1, &[]);
    let middle = noise(100_000, 42); // large enough to go out with sendfile between two small ones
    write_file(&webd, "one.txt", b"first\n");
    write_file(&webd, "two.bin", &middle);
    write_file(&webd, "three.css", b"third {}\n");
    let mut stream = connect(webd.addr());
    stream
        .write_all(
            b"GET /one.txt HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /two.bin HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /three.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .expect("write pipeline");
    let all = read_until_closed(&mut stream);
    let mut at = 0;
    let mut responses = Vec::new();
    for i in 0..3 {
        let (r, used) = parse_response(&all[at..]).unwrap_or_else(|| panic!("response {i}: {}", lossy(&all[at..])));
        at += used;
        responses.push(r);
    }
    assert_eq!(at, all.len(), "bytes after the third response");
    assert_eq!((responses[0].status, responses[0].body.as_slice()), (200, &b"first\n"[..]));
    assert_eq!(responses[1].status, 200);
    assert_same_bytes(&responses[1].body, &middle, "second pipelined body");
    assert_eq!((responses[2].status, responses[2].body.as_slice()), (200, &b"third {}\n"[..]));
    assert_eq!(media_type(&responses[2]), "text/css");
}

/// Idle connections lend their buffers to the worker's pool between requests: interleaved
/// connections that each stop mid-head keep their bytes, a connection whose long head grew
/// its read buffer goes on with a fresh one, and a connection's old input or output never
/// shows up on another.
#[test]
fn connections_that_go_idle_mid_head_and_between_requests_keep_their_own_bytes() {
    let webd = start(1, &[]);
    for i in 0..20 {
        write_file(&webd, &format!("f{i}.txt"), format!("file {i}\n").as_bytes());
    }
    let mut conns: Vec<Conn> = (0..20).map(|_| connect(webd.addr())).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.write_all(format!("GET /f{i}.txt HTTP/1.1\r\nHo").as_bytes()).expect("first half");
    }
    std::thread::sleep(Duration::from_millis(100)); // pacing: the halves are read apart
    for (i, c) in conns.iter_mut().enumerate().rev() {
        c.write_all(b"st: t\r\nX-Pad: ").expect("second piece");
        c.write_all(format!("{i}\r\n\r\n").as_bytes()).expect("end of head");
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let r = next_response(c);
        assert_eq!((r.status, r.body.as_slice()), (200, format!("file {i}\n").as_bytes()), "connection {i}");
    }
    // A head longer than a pooled read buffer, then ordinary requests, on every connection.
    let long_head = format!("GET /f0.txt HTTP/1.1\r\nHost: t\r\nX-Long: {}\r\n\r\n", "x".repeat(6000));
    conns[3].write_all(long_head.as_bytes()).expect("long head");
    let r = next_response(&mut conns[3]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"file 0\n"[..]));
    for round in 0..3 {
        for (i, c) in conns.iter_mut().enumerate() {
            let n = (i + round) % 20;
            c.write_all(format!("GET /f{n}.txt HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).expect("request");
        }
        for (i, c) in conns.iter_mut().enumerate() {
            let n = (i + round) % 20;
            let r = next_response(c);
            assert_eq!((r.status, r.body.as_slice()), (200, format!("file {n}\n").as_bytes()), "round {round}, {i}");
            assert!(c.buffered().is_empty(), "bytes after response {round} on connection {i}");
        }
    }
}

// ---- Path escapes ------------------------------------------------------------------

#[test]
fn paths_escaping_the_root_are_refused_and_never_leak_the_secret() {
    const MARKER: &str = "TOP-SECRET-5b1e9c";
    let webd = start(2, &[]);
    let before = webd.worker_pids();
    let outside = webd.dir.path();
    std::fs::write(outside.join("secret.txt"), format!("{MARKER}\n")).expect("secret");
    write_file(&webd, "sub/index.html", b"<h1>sub</h1>\n");
    let link = |target: &std::path::Path, name: &str| {
        std::os::unix::fs::symlink(target, webd.root.join(name)).expect("symlink");
    };
    link(&outside.join("secret.txt"), "leak-abs.txt");
    link(std::path::Path::new("../secret.txt"), "leak-rel.txt");
    link(outside, "up-abs");
    link(std::path::Path::new(".."), "up-rel");
    link(std::path::Path::new("sub/index.html"), "alias.html"); // inside the root: fine

    let refused_403_404 = [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/a/..%2f..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/sub/../../secret.txt",
        "/./../secret.txt",
        "//../secret.txt",
        "/..%5csecret.txt",
        "/%252e%252e/secret.txt",
        "/..",
        "http://t/../secret.txt",
        "/leak-abs.txt",
        "/leak-rel.txt",
        "/up-abs/secret.txt",
        "/up-rel/secret.txt",
        "/up-abs/",
        "/up-rel/root/../secret.txt",
    ];
    let refused_any = ["/%00", "/secret.txt%00", "/index.html%00.txt", "/..%00/secret.txt"];
    for target in refused_403_404.iter().chain(&refused_any) {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let got = send_raw(webd.addr(), raw.as_bytes());
        assert!(!String::from_utf8_lossy(&got).contains(MARKER), "{target} leaked the secret: {}", lossy(&got));
        let (r, _) = parse_response(&got).unwrap_or_else(|| panic!("{target}: no response: {}", lossy(&got)));
        let allowed: &[u16] = if refused_any.contains(target) { &[400, 403, 404] } else { &[403, 404] };
        assert!(allowed.contains(&r.status), "{target}: status {} not in {allowed:?}", r.status);
    }
    // A raw NUL in the request line.
    let got = send_raw(webd.addr(), b"GET /secret.txt\0 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(!String::from_utf8_lossy(&got).contains(MARKER), "raw NUL leaked the secret");
    assert!(parse_response(&got).is_some_and(|(r, _)| r.status == 400), "raw NUL: {}", lossy(&got));

    // Dot segments and symlinks that stay inside the root still work.
    let inside = get(webd.addr(), "/sub/../index.html").expect("GET");
    assert_eq!((inside.status, inside.body.as_slice()), (200, BODY));
    let alias = get(webd.addr(), "/alias.html").expect("GET");
    assert_eq!((alias.status, alias.body.as_slice()), (200, &b"<h1>sub</h1>\n"[..]));
    assert_workers_unchanged(&webd, &before);
}

// ---- Errors ------------------------------------------------------------------------

#[test]
fn malformed_and_oversized_requests_get_their_status_and_the_connection_closes() {
    let webd = start(2, &[]);
    let before = webd.worker_pids();
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(10 * 1024));
    let big_header = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(20 * 1024));
    let cases: &[(&str, &[u8], u16)] = &[
        ("garbage request line", b"this is not http at all\r\n\r\n", 400),
        ("TLS client hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
        ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n", 400),
        ("repeated Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("header without colon", b"GET / HTTP/1.1\r\nHost t\r\n\r\n", 400),
        ("bad Content-Length", b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", 400),
        ("bad percent escape", b"GET /%zz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        ("HTTP/3.0 request line", b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505),
        ("HTTP/1.10 request line", b"GET / HTTP/1.10\r\nHost: t\r\n\r\n", 400),
        ("invalid Host", b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400),
        ("Host with a path", b"GET / HTTP/1.1\r\nHost: a/c\r\n\r\n", 400),
        ("Host with a bad port", b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", 400),
        ("10 KB URI", long_uri.as_bytes(), 414),
        ("20 KB header", big_header.as_bytes(), 431),
        ("Content-Length 100000 on GET", b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n", 413),
        ("Transfer-Encoding gzip", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (
            "Transfer-Encoding gzip, chunked",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        (
            "Transfer-Encoding and Content-Length",
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            400,
        ),
        ("Transfer-Encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("malformed chunk size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ];
    for &(what, raw, status) in cases {
        let got = send_raw(webd.addr(), raw); // asserts the server closes
        let (r, _) = parse_response(&got).unwrap_or_else(|| panic!("{what}: no response: {}", lossy(&got)));
        assert_eq!(r.status, status, "{what}: {}", lossy(&got));
        assert_eq!(r.header("Connection"), Some("close"), "{what}");
        assert_eq!(r.header("Server"), Some("webd"), "{what}");
    }
    assert_eq!(get(webd.addr(), "/").expect("GET after the errors").status, 200);
    assert_workers_unchanged(&webd, &before);
}

#[test]
fn known_methods_are_405_with_allow_unknown_ones_501_and_the_connection_stays_usable() {
    let webd = start(1, &[]);
    let before = webd.worker_pids();
    let mut stream = connect(webd.addr());
    let cases: [(&[u8], u16); 10] = [
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 405),
        (b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 405),
        (b"DELETE /index.html HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        (b"OPTIONS /index.html HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        (b"TRACE / HTTP/1.1\r\nHost: t\r\n\r\n", 405),
        (b"CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", 405),
        (b"PATCH / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", 405),
        (b"get / HTTP/1.1\r\nHost: t\r\n\r\n", 501),
        (b"BREW /pot HTTP/1.1\r\nHost: t\r\n\r\n", 501),
        (b"PROPFIND / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n<a>", 501),
    ];
    for (request, status) in cases {
        stream.write_all(request).expect("write");
        let r = next_response(&mut stream);
        assert_eq!(r.status, status, "{}", lossy(request));
        assert_ne!(r.header("Connection"), Some("close"), "{}", lossy(request));
        if status == 405 {
            assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{}", lossy(request));
        }
    }
    // OPTIONS * asks about the server as a whole.
    stream.write_all(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let r = next_response(&mut stream);
    assert_eq!((r.status, r.header("Allow"), r.body.len()), (200, Some("GET, HEAD, OPTIONS"), 0));
    // The bodies were skipped, not taken for the next request.
    stream.write_all(b"GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let r = next_response(&mut stream);
    assert_eq!((r.status, r.body.as_slice()), (200, BODY));
    assert_workers_unchanged(&webd, &before);
}

// ---- Request bodies, versions, header fields ---------------------------------------

/// Writes `pieces` one by one with a pause between, so the server reads them apart.
fn write_in_pieces(stream: &mut Conn, pieces: &[&[u8]]) {
    for piece in pieces {
        stream.write_all(piece).expect("write a piece");
        stream.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(30)); // pacing, not synchronisation
    }
}

#[test]
fn content_length_and_chunked_bodies_arriving_in_pieces_are_skipped_and_pipelined_requests_after_them_served() {
    let webd = start(1, &[]);
    let before = webd.worker_pids();
    write_file(&webd, "a.txt", b"aaa\n");
    let mut stream = connect(webd.addr());
    write_in_pieces(
        &mut stream,
        &[
            b"GET /a.txt HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01",
            b"2345",
            b"6789GET /index.html HTTP/1.1\r\nHost: t\r\n\r\n",
        ],
    );
    let r = next_response(&mut stream);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"aaa\n"[..]));
    let r = next_response(&mut stream);
    assert_eq!((r.status, r.body.as_slice()), (200, BODY));

    // Chunk sizes, extensions, data and trailers split anywhere, then two pipelined requests.
    write_in_pieces(
        &mut stream,
        &[
            b"GET /a.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"1",
            b"0;name=\"va",
            b"lue\"\r\n0123456",
            b"789abcdef\r",
            b"\n3\r\nxyz\r\n0\r\nX-Trail",
            b"er: 1\r\n",
            b"\r\nGET /index.html HTTP/1.1\r\nHost: t\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n",
        ],
    );
    for want in [&b"aaa\n"[..], BODY, b"aaa\n"] {
        let r = next_response(&mut stream);
        assert_eq!((r.status, r.body.as_slice()), (200, want));
    }
    // A whole chunked body in one write, pipelined with the next request.
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("write");
    assert_eq!(next_response(&mut stream).status, 405);
    assert_eq!(next_response(&mut stream).body, b"aaa\n");
    assert_workers_unchanged(&webd, &before);
}

#[test]
fn a_chunked_body_over_the_cap_is_413_and_closes() {
    let webd = start(1, &[]);
    let before = webd.worker_pids();
    // One chunk announcing more than the 8192-byte cap: refused at its size line.
    let got = send_raw(webd.addr(), b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2001\r\n");
    let (r, _) = parse_response(&got).unwrap_or_else(|| panic!("no response: {}", lossy(&got)));
    assert_eq!((r.status, r.header("Connection")), (413, Some("close")));
    // Small chunks that add up past it.
    let mut raw = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..9 {
        raw.extend_from_slice(b"400\r\n");
        raw.extend_from_slice(&[b'x'; 0x400]);
        raw.extend_from_slice(b"\r\n");
    }
    let got = send_raw(webd.addr(), &raw);
    assert!(got.starts_with(b"HTTP/1.1 413 "), "{}", lossy(&got));
    // At the cap exactly, it is read and the request answered.
    let mut raw = b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..8 {
        raw.extend_from_slice(b"400\r\n");
        raw.extend_from_slice(&[b'x'; 0x400]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = exchange(webd.addr(), &raw);
    assert_eq!((r.status, r.body.as_slice()), (200, BODY));
    assert_workers_unchanged(&webd, &before);
}

#[test]
fn expect_100_continue_gets_100_before_the_body_is_read() {
    let webd = start(1, &[]);
    let mut stream = connect(webd.addr());
    stream
        .write_all(b"PUT /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .expect("write head");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("an interim response before the body");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").expect("write body");
    let r = next_response(&mut stream);
    assert_eq!((r.status, r.header("Connection")), (405, None));

    // Chunked, and the connection is reused afterwards.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("write head");
    stream.read_exact(&mut interim).expect("an interim response before the chunked body");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"2\r\nhi\r\n0\r\n\r\nGET /index.html HTTP/1.1\r\nHost: t\r\n\r\n").expect("write body");
    for _ in 0..2 {
        let r = next_response(&mut stream);
        assert_eq!((r.status, r.body.as_slice()), (200, BODY));
    }

    // A client that sent the body without waiting needs no 100.
    let r = exchange(
        webd.addr(),
        b"GET / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn later_http1_minor_versions_are_answered_as_http11() {
    let webd = start(1, &[]);
    let mut stream = connect(webd.addr());
    for version in ["HTTP/1.2", "HTTP/1.9"] {
        stream.write_all(format!("GET /index.html {version}\r\nHost: t\r\n\r\n").as_bytes()).expect("write");
        let r = next_response(&mut stream);
        assert_eq!((r.status, r.body.as_slice()), (200, BODY), "{version}");
        assert_ne!(r.header("Connection"), Some("close"), "{version} is persistent like 1.1");
    }
    let got = send_raw(webd.addr(), b"GET /index.html HTTP/1.2\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{}", lossy(&got));
}

#[test]
fn a_hundred_header_fields_are_accepted_and_max_header_fields_sets_the_limit() {
    let head = |fields: usize| {
        let mut raw = String::from("GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        for i in 2..fields {
            raw.push_str(&format!("X-Field-{i}: {i}\r\n"));
        }
        raw + "\r\n"
    };
    let webd = start(1, &[]);
    assert_eq!(exchange(webd.addr(), head(100).as_bytes()).status, 200);
    assert_eq!(exchange(webd.addr(), head(101).as_bytes()).status, 431);
    drop(webd);

    let webd = start(1, &["--max-header-fields", "300"]);
    assert_eq!(exchange(webd.addr(), head(300).as_bytes()).status, 200);
    assert_eq!(exchange(webd.addr(), head(301).as_bytes()).status, 431);
    drop(webd);

    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(config.path(), "max_header_fields = 20\n").expect("write config");
    let webd = start(1, &["--config", config.path().to_str().expect("utf-8 path")]);
    assert_eq!(exchange(webd.addr(), head(20).as_bytes()).status, 200);
    assert_eq!(exchange(webd.addr(), head(21).as_bytes()).status, 431);
}

// ---- Slow, stalled and idle clients ------------------------------------------------

#[test]
fn three_hundred_clients_stalled_mid_headers_do_not_delay_a_normal_request() {
    let webd = start(1, &[]); // one worker: every stalled client lands where the normal one does
    let before = webd.worker_pids();
    let stalled: Vec<Conn> = (0..300)
        .map(|_| {
            let mut s = connect(webd.addr());
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").expect("write partial head");
            s
        })
        .collect();
    let started = Instant::now();
    let r = exchange(webd.addr(), b"GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    eprintln!("GET with 300 stalled clients took {:?}", started.elapsed());
    assert_eq!((r.status, r.body.as_slice()), (200, BODY));
    drop(stalled);
    assert_workers_unchanged(&webd, &before);
}

#[test]
fn header_timeout_sends_408_to_a_begun_request_and_closes_silent_stalled_and_trickling_clients() {
    let webd = start(1, &["--header-timeout", "500"]);
    let before = webd.worker_pids();
    let mut silent = connect(webd.addr());
    let mut stalled = connect(webd.addr());
    stalled.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").expect("write partial head");
    let started = Instant::now();
    for (what, stream) in [("silent client", &mut silent), ("stalled client", &mut stalled)] {
        let got = read_until_closed(stream); // panics if still open after IO_TIMEOUT
        eprintln!("{what} disconnected after {:?}", started.elapsed());
        if what == "silent client" {
            assert!(got.is_empty(), "a client that sent nothing got {}", lossy(&got));
        } else {
            let (r, used) = parse_response(&got).unwrap_or_else(|| panic!("{what} got {}", lossy(&got)));
            assert_eq!((r.status, r.header("Connection"), used), (408, Some("close"), got.len()), "{what}");
        }
    }
    // A body that stops arriving is timed out the same way.
    let stalled_bodies: [&[u8]; 2] = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ];
    let mut streams: Vec<Conn> = stalled_bodies
        .iter()
        .map(|raw| {
            let mut stream = connect(webd.addr());
            stream.write_all(raw).expect("write part of a body");
            stream
        })
        .collect();
    for (raw, stream) in stalled_bodies.iter().zip(&mut streams) {
        let got = read_until_closed(stream);
        assert!(got.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"), "{} got {}", lossy(raw), lossy(&got));
    }

    // One byte every 100 ms: trickling must not extend the deadline (bounded: 60 bytes).
    let mut trickle = connect(webd.addr());
    trickle.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    trickle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").expect("write");
    let started = Instant::now();
    let mut closed = false;
    for _ in 0..60 {
        if trickle.write_all(b"a").is_err() {
            closed = true;
            break;
        }
        let mut byte = [0u8; 256];
        match trickle.read(&mut byte) {
            Ok(_) => {
                closed = true; // EOF, or a 408 just before it
                break;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "a client trickling one header byte per 100 ms stayed connected for 60 bytes");
    eprintln!("trickling client disconnected after {:?}", started.elapsed());
    assert_eq!(get(webd.addr(), "/").expect("GET").status, 200);
    assert_workers_unchanged(&webd, &before);
}

/// The listening sockets defer accept (`TCP_DEFER_ACCEPT`, 1 s): a client that stays
/// silent past it is still taken (the kernel queues it after the defer period), served
/// when it speaks, and closed by the header timeout when it never does.
#[test]
fn deferred_accept_still_serves_a_late_speaker_and_closes_a_silent_client() {
    let webd = start(1, &["--header-timeout", "1500"]);
    let mut silent = connect(webd.addr());
    let mut late = connect(webd.addr());
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1200)); // the client's silence, past the defer period
    late.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write late request");
    let got = read_until_closed(&mut late);
    let (r, _) = parse_response(&got).unwrap_or_else(|| panic!("late client got {}", lossy(&got)));
    assert_eq!(r.status, 200, "late client");
    let got = read_until_closed(&mut silent);
    assert!(got.is_empty(), "a client that sent nothing got {}", lossy(&got));
    eprintln!("silent client disconnected after {:?}", started.elapsed());
}

/// The worker keeps served files open (its open-file cache); a file replaced by a rename
/// over it, or rewritten in place, with the same size and the same mtime to the
/// nanosecond, is never served stale on the same keep-alive connection.
#[test]
fn a_replaced_or_rewritten_file_is_never_served_stale_from_the_open_file_cache() {
    let webd = start(1, &[]);
    write_file(&webd, "hot.txt", b"first version");
    let mut conn = connect(webd.addr());
    let request = b"GET /hot.txt HTTP/1.1\r\nHost: t\r\n\r\n";
    for _ in 0..3 {
        conn.write_all(request).expect("write");
        assert_eq!(next_response(&mut conn).body, b"first version");
    }
    // Same length, same mtime (write_file sets it), another inode: renamed over.
    let staged = webd.root.join(".staged");
    std::fs::write(&staged, b"secnd version").expect("write staged");
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .and_then(|f| f.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME)))
        .expect("set mtime");
    std::fs::rename(&staged, webd.root.join("hot.txt")).expect("rename over");
    conn.write_all(request).expect("write");
    assert_eq!(lossy(&next_response(&mut conn).body), lossy(b"secnd version"), "after a rename over");
    // Same inode rewritten in place, same length and mtime.
    write_file(&webd, "hot.txt", b"third version");
    conn.write_all(request).expect("write");
    assert_eq!(lossy(&next_response(&mut conn).body), lossy(b"third version"), "after a rewrite in place");
    // Deleted: 404, not the cached fd.
    std::fs::remove_file(webd.root.join("hot.txt")).expect("remove");
    conn.write_all(request).expect("write");
    assert_eq!(next_response(&mut conn).status, 404, "after a delete");
}

#[test]
fn idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let webd = start(1, &["--keepalive-timeout", "300"]);
    let mut stream = connect(webd.addr());
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    assert_eq!(next_response(&mut stream).status, 200);
    let started = Instant::now();
    let rest = read_until_closed(&mut stream); // header timeout is 10 s: this is the idle one
    assert!(rest.is_empty(), "unexpected bytes on an idle connection: {}", lossy(&rest));
    eprintln!("idle keep-alive connection closed after {:?}", started.elapsed());
}

#[test]
fn connections_beyond_max_connections_get_503_until_one_closes() {
    let webd = start(1, &["--max-connections", "2"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(webd.addr());
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
        assert_eq!(next_response(&mut s).status, 200);
        held.push(s);
    }
    let mut extra = connect(webd.addr());
    let got = read_until_closed(&mut extra);
    let (r, _) = parse_response(&got).unwrap_or_else(|| panic!("over the cap: {}", lossy(&got)));
    assert_eq!(r.status, 503, "{}", lossy(&got));
    assert!(r.header("Retry-After").is_some(), "503 without Retry-After");
    drop(held.pop());
    wait_until(Duration::from_secs(5), "a free connection slot again", || {
        get(webd.addr(), "/").is_ok_and(|r| r.status == 200)
    });
}

// ---- Large files -------------------------------------------------------------------

#[test]
fn ten_mib_file_arrives_byte_exact_whole_and_as_a_middle_range() {
    let webd = start(1, &[]);
    let content = noise(TEN_MIB, 0x9e37_79b9_7f4a_7c15);
    write_file(&webd, "big.bin", &content);
    let whole = get(webd.addr(), "/big.bin").expect("GET big");
    assert_eq!(whole.status, 200);
    assert_same_bytes(&whole.body, &content, "10 MiB GET");

    let (first, last) = (3_333_333, 7_777_776);
    let part = get_with(webd.addr(), "/big.bin", &format!("Range: bytes={first}-{last}\r\n"));
    assert_eq!(part.status, 206);
    assert_eq!(part.header("Content-Range"), Some(format!("bytes {first}-{last}/{TEN_MIB}").as_str()));
    assert_same_bytes(&part.body, &content[first..=last], "middle range of 10 MiB");
}

#[test]
fn a_client_that_does_not_read_a_large_response_does_not_block_others() {
    let webd = start(1, &[]); // one worker: the slow reader and the others share it
    let before = webd.worker_pids();
    let content = noise(TEN_MIB, 0x0123_4567_89ab_cdef);
    write_file(&webd, "big.bin", &content);
    let mut slow = connect_small_rcvbuf(webd.addr());
    slow.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    // The worker has started the response; at most a few MiB fit in the socket buffers.
    slow.read_at_least(1, IO_TIMEOUT).expect("first byte of the big response");
    for _ in 0..3 {
        let r = exchange(webd.addr(), b"GET /index.html HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!((r.status, r.body.as_slice()), (200, BODY));
    }
    // The slow reader then gets its whole response intact.
    let all = read_until_closed(&mut slow);
    let (r, _) = parse_response(&all).unwrap_or_else(|| panic!("big response: {} bytes", all.len()));
    assert_eq!(r.status, 200);
    assert_same_bytes(&r.body, &content, "10 MiB body read late");
    assert_workers_unchanged(&webd, &before);
}

#[test]
fn an_error_answer_to_a_request_with_unread_body_ends_in_a_clean_close_not_a_reset() {
    let webd = Webd::start();
    for _ in 0..3 {
        let mut s = connect(webd.addr());
        s.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n").expect("head");
        // The server may stop reading early; a failed write here is fine.
        let _ = s.write_all(&vec![b'x'; 100_000]);
        let end = s.read_to_close(IO_TIMEOUT);
        let got = &end.bytes;
        assert!(end.eof, "connection reset instead of a graceful close: timed out {}", end.timed_out);
        assert!(got.starts_with(b"HTTP/1.1 413"), "{:?}", String::from_utf8_lossy(&got[..got.len().min(40)]));
    }
}
