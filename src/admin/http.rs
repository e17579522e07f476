//! The little HTTP/1.x the admin endpoint speaks: parse one request head out of a
//! connection's buffer, and encode a response with a known length.
//!
//! Requests are heads only (GET and HEAD have no body); a request announcing a body is
//! answered and its connection closed, so the unread body is never taken for the next
//! request. HTTP/1.1 connections stay open unless the client says `Connection: close`;
//! HTTP/1.0 connections close after one response.

/// Most header lines a request may carry before it is refused with 431.
const MAX_HEADERS: usize = 64;

/// What a connection's buffer holds.
#[derive(Debug)]
pub enum Head {
    /// Not a whole head yet: read more.
    Partial,
    /// A whole head of `Request::len` bytes.
    Complete(Request),
    /// Not HTTP we answer: send this response, then close.
    Invalid(Response),
}

/// One parsed request head.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The target's path, without its query string.
    pub path: String,
    /// Bytes of the head, to drop from the buffer.
    pub len: usize,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

/// Parses the head at the start of `buf`; a buffer of `max_head` bytes or more that
/// holds no whole head is refused with 431.
pub fn parse(buf: &[u8], max_head: usize) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => Head::Complete(request(&req, len)),
        Ok(httparse::Status::Partial) if buf.len() >= max_head => {
            Head::Invalid(Response::text(431, "request head too large\n"))
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Invalid(Response::text(431, "too many header lines\n")),
        Err(e) => Head::Invalid(Response::text(400, format!("malformed request: {e}\n"))),
    }
}

fn request(req: &httparse::Request<'_, '_>, len: usize) -> Request {
    // httparse fills method, path and version whenever it returns Complete.
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default();
    let path = target.split_once('?').map_or(target, |(path, _query)| path).to_string();
    let http11 = req.version == Some(1);
    let keep_alive = http11 && !wants_close(req.headers) && !has_body(req.headers);
    Request { method, path, len, keep_alive }
}

fn wants_close(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
}

fn has_body(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
    })
}

/// A complete response: status, type and body (sent with `Content-Length`).
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Adds `Allow: GET, HEAD` (405 answers).
    pub allow: bool,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, body: body.into(), allow: false }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "application/json", body)
    }

    pub fn method_not_allowed() -> Response {
        Response { allow: true, ..Response::text(405, "method not allowed\n") }
    }

    /// Appends the encoded response to `out`; `head_only` answers a HEAD request (same
    /// headers, no body), `close` announces that the connection closes after it.
    pub fn encode(&self, out: &mut Vec<u8>, head_only: bool, close: bool) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            self.status,
            crate::http1::reason_phrase(self.status),
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.extend_from_slice(b"Allow: GET, HEAD\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> Request {
        match parse(raw, 8192) {
            Head::Complete(r) => r,
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn parses_path_without_query_and_keep_alive() {
        let r = complete(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\nGET /");
        assert_eq!((r.method.as_str(), r.path.as_str(), r.keep_alive), ("GET", "/metrics", true));
        assert_eq!(r.len, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n".len());
    }

    #[test]
    fn closes_for_http10_connection_close_and_bodies() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(!complete(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").keep_alive);
        assert!(!complete(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").keep_alive);
        assert!(complete(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").keep_alive);
    }

    #[test]
    fn refuses_oversized_and_malformed_heads() {
        let big = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 100]].concat();
        assert!(matches!(parse(&big, 64), Head::Invalid(Response { status: 431, .. })));
        assert!(matches!(parse(&big, 8192), Head::Partial));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n\0\r\n\r\n", 8192), Head::Invalid(Response { status: 400, .. })));
    }

    #[test]
    fn head_answers_carry_the_get_length_but_no_body() {
        let mut out = Vec::new();
        Response::method_not_allowed().encode(&mut out, true, true);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{text}");
        assert!(text.contains("Content-Length: 19\r\n") && text.contains("Allow: GET, HEAD\r\n"), "{text}");
        assert!(text.ends_with("Connection: close\r\n\r\n"), "{text}");
    }
}
