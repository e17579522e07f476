//! The access log in combined format, written by each worker without a lock.
//!
//! Lines are appended to a per-worker buffer as responses are produced and written with
//! one `write` per event-loop pass (the file is opened `O_APPEND` by the daemon, so the
//! lines of all workers interleave whole). A graceful exit flushes, so retiring workers
//! lose nothing; only a worker killed mid-pass can lose that pass's lines.
//!
//! Format (nginx/Apache "combined"):
//! `ADDR - - [25/Nov/2026:02:20:00 +0000] "GET /x HTTP/1.1" 200 1234 "referer" "agent"`

use super::date::CLF_DATE_LEN;
use super::request::Request;
use std::fs::File;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Flush early if a pass produced this much.
const FLUSH_AT: usize = 64 * 1024;

/// Where lines go.
pub enum Sink {
    File(File),
    Stderr,
}

pub struct AccessLog {
    sink: Sink,
    buf: Vec<u8>,
    clf_second: u64,
    clf_date: [u8; CLF_DATE_LEN],
}

impl AccessLog {
    pub fn new(sink: Sink) -> AccessLog {
        AccessLog { sink, buf: Vec::with_capacity(8 * 1024), clf_second: u64::MAX, clf_date: [b' '; CLF_DATE_LEN] }
    }

    /// Points the log at a reopened file (after logrotate), flushing first.
    pub fn replace(&mut self, file: File) {
        self.flush();
        self.sink = Sink::File(file);
    }

    /// Records one response. `request` is `None` when the head could not be parsed.
    pub fn record(&mut self, peer: &str, request: Option<&Request<'_>>, status: u16, body_bytes: u64) {
        self.refresh_date();
        let buf = &mut self.buf;
        buf.extend_from_slice(peer.as_bytes());
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
        let _ = write!(buf, "\" {status} {body_bytes} \"");
        escape_into(buf, request.and_then(|r| r.referer).unwrap_or(b"-"));
        buf.extend_from_slice(b"\" \"");
        escape_into(buf, request.and_then(|r| r.user_agent).unwrap_or(b"-"));
        buf.extend_from_slice(b"\"\n");
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
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

    /// `25/Nov/2026:02:20:00 +0000`, recomputed once per second.
    fn refresh_date(&mut self) {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if secs == self.clf_second {
            return;
        }
        self.clf_second = secs;
        self.clf_date = super::date::format_clf_date(secs);
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
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

    #[test]
    fn lines_are_combined_format_and_escape_quotes() {
        let raw = b"GET /a\"b HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: t\"\n\r\n";
        let Parsed::Complete { request, .. } = parse(raw, &Limits::default()) else { panic!("parse") };
        let path = std::env::temp_dir().join(format!("webd-access-{}.log", std::process::id()));
        let file = File::create(&path).expect("create");
        let mut log = AccessLog::new(Sink::File(file));
        log.record("127.0.0.1", Some(&request), 200, 1234);
        log.record("127.0.0.1", None, 400, 0);
        log.flush();
        let text = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("127.0.0.1 - - ["), "{}", lines[0]);
        assert!(lines[0].ends_with(r#""GET /a\x22b HTTP/1.1" 200 1234 "http://r/" "t\x22""#), "{}", lines[0]);
        assert!(lines[1].ends_with(r#""-" 400 0 "-" "-""#), "{}", lines[1]);
    }
}
