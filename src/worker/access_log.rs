//! The access log, in combined format or as JSON lines, written by each worker without a
//! lock.
//!
//! Lines are appended to a per-worker buffer as responses are produced and written with
//! one `write` per event-loop pass (the file is opened `O_APPEND` by the daemon, so the
//! lines of all workers interleave whole). A graceful exit flushes, so retiring workers
//! lose nothing; only a worker killed mid-pass can lose that pass's lines.
//!
//! `--access-log-format combined` (nginx/Apache "combined"):
//! `ADDR - - [25/Nov/2026:02:20:00 +0000] "GET /x HTTP/1.1" 200 1234 "referer" "agent"`
//!
//! `--access-log-format json`, one object per line, always these fields in this order:
//! `{"time":"2026-11-25T02:20:00.123Z","site":"default","client":"ADDR","method":"GET",
//! "path":"/x","status":200,"bytes":1234,"duration_ms":0.042,"user_agent":"agent",
//! "referer":null,"encoding":"br"}`. `path` is the request-target as sent (query included);
//! `method`, `path`, `user_agent` and `referer` are `null` when absent or unparsable; bytes
//! that are not UTF-8 become U+FFFD. Strings are escaped by serde_json, so no request can
//! forge a line or a field. Neither format allocates per line (beyond the buffer's growth).

use super::date::{CLF_DATE_LEN, RFC3339_SECONDS_LEN};
use super::encoding::Coding;
use super::request::Request;
use crate::config::AccessLogFormat;
use std::fs::File;
use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Flush early if a pass produced this much.
const FLUSH_AT: usize = 64 * 1024;

/// The `site` of every line until virtual hosts choose one per request.
pub const DEFAULT_SITE: &str = "default";

/// Where lines go.
pub enum Sink {
    File(File),
    Stderr,
}

/// One answered request, as a line records it.
pub struct Entry<'a> {
    /// The client's address.
    pub client: &'a str,
    /// The site that answered (SPEC section 7).
    pub site: &'a str,
    /// `None` when the head could not be parsed.
    pub request: Option<&'a Request<'a>>,
    pub status: u16,
    /// Body bytes of the response (the head not included).
    pub bytes: u64,
    pub coding: Coding,
    /// When the request began to arrive; the JSON line's `duration_ms` runs from here to
    /// the response being ready to send.
    pub started: Instant,
}

pub struct AccessLog {
    sink: Sink,
    format: AccessLogFormat,
    buf: Vec<u8>,
    /// The second the cached date below shows (in the format's own form).
    date_second: u64,
    clf_date: [u8; CLF_DATE_LEN],
    rfc3339_date: [u8; RFC3339_SECONDS_LEN],
}

impl AccessLog {
    pub fn new(sink: Sink, format: AccessLogFormat) -> AccessLog {
        AccessLog {
            sink,
            format,
            buf: Vec::with_capacity(8 * 1024),
            date_second: u64::MAX,
            clf_date: [b' '; CLF_DATE_LEN],
            rfc3339_date: [b' '; RFC3339_SECONDS_LEN],
        }
    }

    /// Points the log at a reopened file (after logrotate), flushing first.
    pub fn replace(&mut self, file: File) {
        self.flush();
        self.sink = Sink::File(file);
    }

    /// Records one response.
    pub fn record(&mut self, entry: &Entry<'_>) {
        let millis = self.refresh_date();
        match self.format {
            AccessLogFormat::Combined => self.combined_line(entry),
            AccessLogFormat::Json => self.json_line(entry, millis),
        }
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    fn combined_line(&mut self, entry: &Entry<'_>) {
        let buf = &mut self.buf;
        let request = entry.request;
        buf.extend_from_slice(entry.client.as_bytes());
        buf.extend_from_slice(b" - - [");
        buf.extend_from_slice(&self.clf_date);
        buf.extend_from_slice(b"] \"");
        match request {
            Some(r) => {
                escape_into(buf, r.method_name);
                buf.push(b' ');
                escape_into(buf, r.target);
                buf.extend_from_slice(if r.minor_version == 0 { b" HTTP/1.0" } else { b" HTTP/1.1" });
            }
            None => buf.push(b'-'),
        }
        let _ = write!(buf, "\" {} {} \"", entry.status, entry.bytes);
        escape_into(buf, request.and_then(|r| r.referer).unwrap_or(b"-"));
        buf.extend_from_slice(b"\" \"");
        escape_into(buf, request.and_then(|r| r.user_agent).unwrap_or(b"-"));
        buf.extend_from_slice(b"\"\n");
    }

    fn json_line(&mut self, entry: &Entry<'_>, millis: u32) {
        let buf = &mut self.buf;
        let request = entry.request;
        let took = entry.started.elapsed();
        buf.extend_from_slice(b"{\"time\":\"");
        buf.extend_from_slice(&self.rfc3339_date);
        let _ = write!(buf, ".{millis:03}Z\",\"site\":");
        json_string(buf, Some(entry.site.as_bytes()));
        buf.extend_from_slice(b",\"client\":");
        json_string(buf, Some(entry.client.as_bytes()));
        buf.extend_from_slice(b",\"method\":");
        json_string(buf, request.map(|r| r.method_name));
        buf.extend_from_slice(b",\"path\":");
        json_string(buf, request.map(|r| r.target));
        let duration_ms = took.as_secs_f64() * 1000.0;
        let _ = write!(buf, ",\"status\":{},\"bytes\":{},\"duration_ms\":{duration_ms:.3}", entry.status, entry.bytes);
        buf.extend_from_slice(b",\"user_agent\":");
        json_string(buf, request.and_then(|r| r.user_agent));
        buf.extend_from_slice(b",\"referer\":");
        json_string(buf, request.and_then(|r| r.referer));
        buf.extend_from_slice(b",\"encoding\":\"");
        buf.extend_from_slice(entry.coding.name().as_bytes());
        buf.extend_from_slice(b"\"}\n");
    }

    /// Writes the buffered lines (one write for the lot).
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let result = match &mut self.sink {
            Sink::File(f) => f.write_all(&self.buf),
            Sink::Stderr => std::io::stderr().lock().write_all(&self.buf),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, lost = self.buf.len(), "access log write failed");
        }
        self.buf.clear();
    }

    /// Re-reads the clock: the cached date of the line's format is reformatted once per
    /// second. Returns the milliseconds into the second.
    fn refresh_date(&mut self) -> u32 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = now.as_secs();
        if secs != self.date_second {
            self.date_second = secs;
            match self.format {
                AccessLogFormat::Combined => self.clf_date = super::date::format_clf_date(secs),
                AccessLogFormat::Json => self.rfc3339_date = super::date::format_rfc3339_seconds(secs),
            }
        }
        now.subsec_millis()
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A JSON string (escaped by serde_json; bytes that are not UTF-8 become U+FFFD, which
/// allocates only for such input), or `null`.
fn json_string(buf: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            if serde_json::to_writer(&mut *buf, &String::from_utf8_lossy(bytes)).is_err() {
                buf.extend_from_slice(b"null"); // cannot happen: writing into a Vec
            }
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// Copies `value`, escaping `"`, `\` and non-printable bytes as `\xHH` (as nginx does),
/// so a client cannot forge log lines.
fn escape_into(buf: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(buf, "\\x{b:02X}");
        } else {
            buf.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::request::{parse, Limits, Parsed};

    /// The lines `format` writes for `raw` answered 200 with 1234 bytes of br, then for an
    /// unparsable head answered 400.
    fn lines(format: AccessLogFormat, raw: &[u8]) -> Vec<String> {
        let Parsed::Complete { request, .. } = parse(raw, &Limits::default()) else { panic!("parse") };
        let path = std::env::temp_dir().join(format!("webd-access-{}-{format:?}.log", std::process::id()));
        let file = File::create(&path).expect("create");
        let mut log = AccessLog::new(Sink::File(file), format);
        let started = Instant::now();
        let entry = |request, status, bytes, coding| Entry {
            client: "127.0.0.1",
            site: DEFAULT_SITE,
            request,
            status,
            bytes,
            coding,
            started,
        };
        log.record(&entry(Some(&request), 200, 1234, Coding::Br));
        log.record(&entry(None, 400, 0, Coding::Identity));
        log.flush();
        let text = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        text.lines().map(str::to_string).collect()
    }

    const RAW: &[u8] = b"GET /a\"b HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: t\"\\\tx\xff\n\r\n";

    #[test]
    fn lines_are_combined_format_and_escape_quotes() {
        let lines = lines(AccessLogFormat::Combined, RAW);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("127.0.0.1 - - ["), "{}", lines[0]);
        assert!(
            lines[0].ends_with(r#""GET /a\x22b HTTP/1.1" 200 1234 "http://r/" "t\x22\x5C\x09x\xFF""#),
            "{}",
            lines[0]
        );
        assert!(lines[1].ends_with(r#""-" 400 0 "-" "-""#), "{}", lines[1]);
    }

    #[test]
    fn json_lines_are_objects_with_every_field_escaped() {
        let lines = lines(AccessLogFormat::Json, RAW);
        assert_eq!(lines.len(), 2);
        let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON object");
        assert_eq!(first["site"], "default");
        assert_eq!(first["client"], "127.0.0.1");
        assert_eq!(first["method"], "GET");
        assert_eq!(first["path"], "/a\"b");
        assert_eq!(first["status"], 200);
        assert_eq!(first["bytes"], 1234);
        assert_eq!(first["user_agent"], "t\"\\\tx\u{fffd}");
        assert!(lines[0].contains(r#""user_agent":"t\"\\\tx"#), "{}", lines[0]);
        assert_eq!(first["referer"], "http://r/");
        assert_eq!(first["encoding"], "br");
        assert!(first["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{}", lines[0]);
        let time = first["time"].as_str().expect("time is a string");
        assert!(time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("a JSON object");
        assert_eq!((second["status"].clone(), second["method"].clone()), (400.into(), serde_json::Value::Null));
        assert_eq!(second["user_agent"], serde_json::Value::Null);
    }
}
