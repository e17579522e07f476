//! Request-head parsing: turns the bytes at the front of a connection's read buffer into a
//! borrowed [`Request`], or says that more bytes are needed, or which error status the
//! head deserves.
//!
//! `httparse` does the tokenising; this module adds the limits (414, 431, 413), the
//! header semantics a static server needs (Host, Connection, Content-Length,
//! Transfer-Encoding, validators, Range) and the mapping of syntax errors to statuses.
//! Nothing here allocates: the header table lives on the stack and every field of
//! [`Request`] borrows from the caller's buffer.
//!
//! Choices where RFC 9112 leaves room:
//! - `Transfer-Encoding` of any kind is answered 413: we accept no request body whose
//!   length is not known up front, and the connection closes.
//! - A version other than HTTP/1.0 or HTTP/1.1 that is still shaped like `HTTP/<digit>...`
//!   (HTTP/2.0, HTTP/1.2, HTTP/3) is 505; anything else in that place is 400.
//! - Repeated `Range` headers make the request's `range` `None` (the full file is sent);
//!   other repeated validators keep the first occurrence.
//! - `Expect` together with a body turns keep-alive off: the client may be waiting for
//!   `100 Continue` and never send the body, so the connection cannot be reused safely.

use std::mem::MaybeUninit;

/// Size of the on-stack header table; `Limits::max_headers` above it is capped to it.
const HEADER_CAPACITY: usize = 128;

/// Bounds on a request head, checked before and while it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request-target accepted, in bytes; longer is 414.
    pub max_uri: usize,
    /// Longest whole head (request line, headers, blank line) accepted; longer is 431.
    pub max_header_bytes: usize,
    /// Most header fields accepted (capped at 128); more is 431.
    pub max_headers: usize,
    /// Largest `Content-Length` the loop will read and discard; larger is 413.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_uri: 8192, max_header_bytes: 16384, max_headers: 64, max_body: 8192 }
    }
}

/// The request method, reduced to what a static file server distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// Any other syntactically valid method; answered 405 with `Allow: GET, HEAD`.
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is some other method.
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => Method::Other,
        }
    }
}

/// Why a head was rejected before a [`Request`] could exist; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed syntax, missing or repeated Host, bad Content-Length.
    BadRequest,
    /// 408: the head did not arrive in time (used by the connection loop, not by `parse`).
    RequestTimeout,
    /// 413: a body larger than `max_body`, or any `Transfer-Encoding`.
    PayloadTooLarge,
    /// 414: the request-target is longer than `max_uri`.
    UriTooLong,
    /// 431: the head is longer than `max_header_bytes` or has too many fields.
    HeadersTooLarge,
    /// 505: an HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
}

impl ErrorKind {
    /// The status code this error is answered with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UriTooLong => 414,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::VersionNotSupported => 505,
        }
    }
}

/// A parsed request head. Every slice borrows from the buffer given to [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The request-target exactly as sent (origin-form, absolute-form or `*`).
    pub target: &'a [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the connection may carry another request after this one's response.
    /// When false the loop need not read the body before closing.
    pub keep_alive: bool,
    /// The Host header value (required for HTTP/1.1).
    pub host: Option<&'a [u8]>,
    /// The If-None-Match header value.
    pub if_none_match: Option<&'a [u8]>,
    /// The If-Modified-Since header value.
    pub if_modified_since: Option<&'a [u8]>,
    /// The If-Range header value.
    pub if_range: Option<&'a [u8]>,
    /// The Range header value (`None` if the header was repeated).
    pub range: Option<&'a [u8]>,
    /// Body bytes that follow the head; the loop reads and discards them.
    pub content_length: u64,
    /// The method as sent, and the Referer and User-Agent values, for the access log.
    pub method_name: &'a [u8],
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// The outcome of parsing the front of a read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole head: `head_len` bytes of the buffer belong to it (the body, if any, and
    /// pipelined requests follow).
    Complete {
        /// The request.
        request: Request<'a>,
        /// Length of the head in bytes, including any empty lines before it.
        head_len: usize,
    },
    /// The head is not complete yet and is still within the limits: read more.
    Partial,
    /// The head can never be accepted; answer with `error_head` and close.
    Invalid(ErrorKind),
}

/// Parses the request head at the start of `buf`.
///
/// Call it again with the grown buffer after every read while it says `Partial`. Limits are
/// enforced on incomplete input too, so a client cannot make the buffer grow past them.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    if request_target_too_long(buf, limits.max_uri) {
        return Parsed::Invalid(ErrorKind::UriTooLong);
    }
    // Uninitialised slots: httparse writes only those it fills, so no 4 KiB memset per call.
    let mut storage = [const { MaybeUninit::<httparse::Header<'a>>::uninit() }; HEADER_CAPACITY];
    let slots = limits.max_headers.min(HEADER_CAPACITY);
    let mut raw = httparse::Request::new(&mut []);
    match raw.parse_with_uninit_headers(buf, &mut storage[..slots]) {
        Ok(httparse::Status::Partial) if buf.len() > limits.max_header_bytes => {
            Parsed::Invalid(ErrorKind::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Ok(httparse::Status::Complete(head_len)) if head_len > limits.max_header_bytes => {
            Parsed::Invalid(ErrorKind::HeadersTooLarge)
        }
        Ok(httparse::Status::Complete(head_len)) => match interpret(&raw, limits) {
            Ok(request) => Parsed::Complete { request, head_len },
            Err(kind) => Parsed::Invalid(kind),
        },
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid(ErrorKind::HeadersTooLarge),
        Err(httparse::Error::Version) => Parsed::Invalid(classify_version_error(buf)),
        Err(_) => Parsed::Invalid(ErrorKind::BadRequest),
    }
}

/// Whether the request-target (complete or still arriving) is longer than `max_uri`.
///
/// Runs before `httparse` so a long target is 414 as soon as `max_uri + 1` bytes of it
/// have arrived, instead of waiting for the line to end or the head limit to trip.
fn request_target_too_long(buf: &[u8], max_uri: usize) -> bool {
    let line = skip_leading_empty_lines(buf);
    let Some(method_end) = line.iter().position(|&b| b == b' ' || b == b'\n') else {
        return false;
    };
    if line[method_end] != b' ' {
        return false;
    }
    let target = &line[method_end + 1..];
    let scanned = &target[..target.len().min(max_uri + 1)];
    let target_len = scanned.iter().position(|&b| matches!(b, b' ' | b'\r' | b'\n')).unwrap_or(scanned.len());
    target_len > max_uri
}

/// RFC 9112 §2.2: a server SHOULD ignore empty lines received before the request line.
fn skip_leading_empty_lines(buf: &[u8]) -> &[u8] {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    &buf[start..]
}

/// `httparse` reports every version it does not know as one error; a well-formed
/// `HTTP/<digit>` version we do not speak is 505, anything else is garbage (400).
fn classify_version_error(buf: &[u8]) -> ErrorKind {
    let line = skip_leading_empty_lines(buf);
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let mut parts = line.splitn(3, |&b| b == b' ');
    let version = parts.nth(2).unwrap_or_default();
    let version = version.strip_suffix(b"\r").unwrap_or(version);
    let shaped_like_http = version.len() > 5
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[5..].iter().all(|&b| b.is_ascii_digit() || b == b'.');
    if shaped_like_http {
        ErrorKind::VersionNotSupported
    } else {
        ErrorKind::BadRequest
    }
}

/// Applies header semantics to a head `httparse` accepted.
fn interpret<'a>(raw: &httparse::Request<'_, 'a>, limits: &Limits) -> Result<Request<'a>, ErrorKind> {
    let (Some(method), Some(target), Some(minor_version)) = (raw.method, raw.path, raw.version) else {
        return Err(ErrorKind::BadRequest);
    };
    let mut fields = HeaderFields::default();
    for header in raw.headers.iter() {
        fields.absorb(header.name, header.value)?;
    }
    let mut request = fields.into_request(Method::from_token(method), target.as_bytes(), minor_version, limits)?;
    request.method_name = method.as_bytes();
    Ok(request)
}

/// The header fields a static server acts on, gathered in one pass over the head.
#[derive(Default)]
struct HeaderFields<'a> {
    host: Option<&'a [u8]>,
    connection_close: bool,
    connection_keep_alive: bool,
    content_length: Option<u64>,
    transfer_encoding: bool,
    expect: bool,
    if_none_match: Option<&'a [u8]>,
    if_modified_since: Option<&'a [u8]>,
    if_range: Option<&'a [u8]>,
    range: Option<&'a [u8]>,
    range_repeated: bool,
    referer: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
}

impl<'a> HeaderFields<'a> {
    fn absorb(&mut self, name: &str, value: &'a [u8]) -> Result<(), ErrorKind> {
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        // Dispatch on length first: most headers a browser sends match no arm.
        match name.len() {
            4 if is("host") => self.absorb_host(value)?,
            5 if is("range") => self.absorb_range(value),
            6 if is("expect") => self.expect = true,
            7 if is("referer") => keep_first(&mut self.referer, value),
            8 if is("if-range") => keep_first(&mut self.if_range, value),
            10 if is("connection") => self.absorb_connection(value),
            10 if is("user-agent") => keep_first(&mut self.user_agent, value),
            13 if is("if-none-match") => keep_first(&mut self.if_none_match, value),
            14 if is("content-length") => self.absorb_content_length(value)?,
            17 if is("if-modified-since") => keep_first(&mut self.if_modified_since, value),
            17 if is("transfer-encoding") => self.transfer_encoding = true,
            _ => {}
        }
        Ok(())
    }

    /// RFC 9112 §3.2: a request with more than one Host field MUST be answered 400.
    fn absorb_host(&mut self, value: &'a [u8]) -> Result<(), ErrorKind> {
        if self.host.is_some() {
            return Err(ErrorKind::BadRequest);
        }
        self.host = Some(value);
        Ok(())
    }

    fn absorb_range(&mut self, value: &'a [u8]) {
        if self.range.is_some() {
            self.range_repeated = true;
        }
        self.range = Some(value);
    }

    fn absorb_connection(&mut self, value: &[u8]) {
        for option in comma_list(value) {
            if option.eq_ignore_ascii_case(b"close") {
                self.connection_close = true;
            } else if option.eq_ignore_ascii_case(b"keep-alive") {
                self.connection_keep_alive = true;
            }
        }
    }

    /// RFC 9112 §6.3: a list of identical values (`5, 5`) or repeated identical fields is
    /// one length; differing values are a framing error (400).
    fn absorb_content_length(&mut self, value: &[u8]) -> Result<(), ErrorKind> {
        let mut any = false;
        for element in comma_list(value) {
            let length = parse_decimal(element).ok_or(ErrorKind::BadRequest)?;
            match self.content_length {
                Some(seen) if seen != length => return Err(ErrorKind::BadRequest),
                _ => self.content_length = Some(length),
            }
            any = true;
        }
        if any {
            Ok(())
        } else {
            Err(ErrorKind::BadRequest)
        }
    }

    fn into_request(
        self,
        method: Method,
        target: &'a [u8],
        minor_version: u8,
        limits: &Limits,
    ) -> Result<Request<'a>, ErrorKind> {
        if minor_version == 1 && self.host.is_none() {
            return Err(ErrorKind::BadRequest);
        }
        if self.transfer_encoding {
            return Err(ErrorKind::PayloadTooLarge);
        }
        let content_length = self.content_length.unwrap_or(0);
        if content_length > limits.max_body {
            return Err(ErrorKind::PayloadTooLarge);
        }
        let persistent_by_default = minor_version == 1;
        let keep_alive = !self.connection_close
            && (persistent_by_default || self.connection_keep_alive)
            && !(self.expect && content_length > 0);
        Ok(Request {
            method,
            target,
            minor_version,
            keep_alive,
            host: self.host,
            if_none_match: self.if_none_match,
            if_modified_since: self.if_modified_since,
            if_range: self.if_range,
            range: if self.range_repeated { None } else { self.range },
            content_length,
            method_name: b"",
            referer: self.referer,
            user_agent: self.user_agent,
        })
    }
}

fn keep_first<'a>(slot: &mut Option<&'a [u8]>, value: &'a [u8]) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// The non-empty elements of a comma-separated header list, with whitespace trimmed.
fn comma_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|element| !element.is_empty())
}

/// A decimal number: digits only (no sign, no spaces inside). A value too large for u64
/// saturates (for a Content-Length that is far past any `max_body`, so 413 rather than
/// 400; for a byte position, past any file's end).
pub(super) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |value, &digit| value.saturating_mul(10).saturating_add(u64::from(digit - b'0'))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf, &limits()) {
            Parsed::Complete { request, head_len } => (request, head_len),
            other => panic!("expected Complete for {:?}, got {other:?}", buf.escape_ascii()),
        }
    }

    fn invalid(buf: &[u8]) -> ErrorKind {
        match parse(buf, &limits()) {
            Parsed::Invalid(kind) => kind,
            other => panic!("expected Invalid for {:?}, got {other:?}", buf.escape_ascii()),
        }
    }

    #[test]
    fn parses_a_simple_get() {
        let buf = b"GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let (request, head_len) = complete(buf);
        assert_eq!(head_len, buf.len());
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.target, b"/index.html?x=1");
        assert_eq!(request.minor_version, 1);
        assert!(request.keep_alive);
        assert_eq!(request.host, Some(&b"example.com"[..]));
        assert_eq!(request.content_length, 0);
    }

    #[test]
    fn pipelined_buffer_yields_the_first_request_and_its_length() {
        let first = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
        let second = b"HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n";
        let buf = [&first[..], &second[..]].concat();
        let (request, head_len) = complete(&buf);
        assert_eq!(request.target, b"/a");
        assert_eq!(head_len, first.len());
        let (request, head_len) = complete(&buf[head_len..]);
        assert_eq!(request.method, Method::Head);
        assert_eq!(request.target, b"/b");
        assert_eq!(head_len, second.len());
    }

    #[test]
    fn request_borrows_from_the_buffer() {
        let buf = b"GET /x HTTP/1.0\r\nIf-None-Match: \"a\"\r\n\r\n";
        let (request, _) = complete(buf);
        let range = buf.as_ptr_range();
        assert!(range.contains(&request.target.as_ptr()));
        assert!(request.if_none_match.is_some_and(|v| range.contains(&v.as_ptr())));
    }

    #[test]
    fn incomplete_head_is_partial() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: h\r\n", &limits()), Parsed::Partial);
        assert_eq!(parse(b"GE", &limits()), Parsed::Partial);
        assert_eq!(parse(b"", &limits()), Parsed::Partial);
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_counted() {
        let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let (request, head_len) = complete(buf);
        assert_eq!(request.target, b"/");
        assert_eq!(head_len, buf.len());
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let (request, _) = complete(b"GET / HTTP/1.1\nHost: h\n\n");
        assert_eq!(request.target, b"/");
    }

    #[test]
    fn ten_kilobyte_uri_is_414() {
        let target = "a".repeat(10 * 1024);
        let buf = format!("GET /{target} HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(invalid(buf.as_bytes()), ErrorKind::UriTooLong);
    }

    #[test]
    fn long_uri_is_414_before_the_line_ends() {
        let buf = format!("GET /{}", "a".repeat(8192));
        assert_eq!(invalid(buf.as_bytes()), ErrorKind::UriTooLong);
        let just_fits = format!("GET /{}", "a".repeat(8191));
        assert_eq!(parse(just_fits.as_bytes(), &limits()), Parsed::Partial);
    }

    #[test]
    fn twenty_kilobyte_header_is_431() {
        let buf = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n", "b".repeat(20 * 1024));
        assert_eq!(invalid(buf.as_bytes()), ErrorKind::HeadersTooLarge);
    }

    #[test]
    fn head_past_the_limit_is_431_even_while_incomplete() {
        let buf = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}", "b".repeat(17 * 1024));
        assert_eq!(invalid(buf.as_bytes()), ErrorKind::HeadersTooLarge);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut buf = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 0..70 {
            buf.push_str(&format!("X-{i}: v\r\n"));
        }
        buf.push_str("\r\n");
        assert_eq!(invalid(buf.as_bytes()), ErrorKind::HeadersTooLarge);
    }

    #[test]
    fn garbage_request_line_is_400() {
        assert_eq!(invalid(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), ErrorKind::BadRequest);
        assert_eq!(invalid(b"GET /a b HTTP/1.1\r\n\r\n"), ErrorKind::BadRequest);
        assert_eq!(invalid(b"GET / FTP/1.1\r\n\r\n"), ErrorKind::BadRequest);
        assert_eq!(invalid(b"GET / http/1.1\r\n\r\n"), ErrorKind::BadRequest);
        assert_eq!(invalid(b"GET  / HTTP/1.1\r\n\r\n"), ErrorKind::BadRequest);
    }

    #[test]
    fn malformed_header_line_is_400() {
        assert_eq!(invalid(b"GET / HTTP/1.1\r\nHost h\r\n\r\n"), ErrorKind::BadRequest);
        assert_eq!(invalid(b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n"), ErrorKind::BadRequest);
    }

    #[test]
    fn obsolete_line_folding_is_400() {
        let buf = b"GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n two\r\n\r\n";
        assert_eq!(invalid(buf), ErrorKind::BadRequest);
    }

    #[test]
    fn unsupported_versions_are_505() {
        assert_eq!(invalid(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"), ErrorKind::VersionNotSupported);
        assert_eq!(invalid(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n"), ErrorKind::VersionNotSupported);
        assert_eq!(invalid(b"GET / HTTP/3"), ErrorKind::VersionNotSupported);
    }

    #[test]
    fn http11_without_host_is_400() {
        assert_eq!(invalid(b"GET / HTTP/1.1\r\n\r\n"), ErrorKind::BadRequest);
    }

    #[test]
    fn repeated_host_is_400() {
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        assert_eq!(invalid(buf), ErrorKind::BadRequest);
    }

    #[test]
    fn http10_without_host_is_fine_and_closes_by_default() {
        let (request, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(request.minor_version, 0);
        assert_eq!(request.host, None);
        assert!(!request.keep_alive);
    }

    #[test]
    fn http10_keeps_alive_only_when_asked() {
        let (request, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(request.keep_alive);
    }

    #[test]
    fn connection_close_ends_http11_keep_alive() {
        let (request, _) = complete(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: te, close\r\n\r\n");
        assert!(!request.keep_alive);
    }

    #[test]
    fn methods_other_than_get_and_head_parse_as_other() {
        for method in ["POST", "DELETE", "OPTIONS", "get", "BREW"] {
            let buf = format!("{method} / HTTP/1.1\r\nHost: h\r\n\r\n");
            let (request, _) = complete(buf.as_bytes());
            assert_eq!(request.method, Method::Other, "{method}");
        }
        let (request, _) = complete(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(request.target, b"*");
    }

    #[test]
    fn small_body_is_reported_for_discarding() {
        let buf = b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        let (request, head_len) = complete(buf);
        assert_eq!(request.content_length, 5);
        assert_eq!(&buf[head_len..], b"hello");
    }

    #[test]
    fn content_length_over_max_body_is_413() {
        let buf = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8193\r\n\r\n";
        assert_eq!(invalid(buf), ErrorKind::PayloadTooLarge);
        let huge = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(invalid(huge), ErrorKind::PayloadTooLarge);
    }

    #[test]
    fn transfer_encoding_is_413() {
        let buf = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(invalid(buf), ErrorKind::PayloadTooLarge);
    }

    #[test]
    fn invalid_content_length_is_400() {
        for value in ["abc", "-1", "+5", "5 5", "0x10", ""] {
            let buf = format!("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(invalid(buf.as_bytes()), ErrorKind::BadRequest, "{value:?}");
        }
    }

    #[test]
    fn conflicting_content_lengths_are_400_and_identical_ones_are_one() {
        let conflict = b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(invalid(conflict), ErrorKind::BadRequest);
        assert_eq!(invalid(b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n"), ErrorKind::BadRequest);
        let same = b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(complete(same).0.content_length, 3);
    }

    #[test]
    fn expect_with_a_body_turns_keep_alive_off() {
        let buf = b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        assert!(!complete(buf).0.keep_alive);
    }

    #[test]
    fn validator_and_range_headers_are_captured_case_insensitively() {
        let buf = b"GET / HTTP/1.1\r\nhost: h\r\nIF-NONE-MATCH: \"x\"\r\nif-modified-since: d\r\n\
                    If-Range: \"y\"\r\nrange: bytes=0-1\r\n\r\n";
        let (request, _) = complete(buf);
        assert_eq!(request.if_none_match, Some(&b"\"x\""[..]));
        assert_eq!(request.if_modified_since, Some(&b"d"[..]));
        assert_eq!(request.if_range, Some(&b"\"y\""[..]));
        assert_eq!(request.range, Some(&b"bytes=0-1"[..]));
    }

    #[test]
    fn repeated_range_is_dropped() {
        let buf = b"GET / HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n";
        assert_eq!(complete(buf).0.range, None);
    }

    #[test]
    fn error_kinds_map_to_their_statuses() {
        let statuses = [
            (ErrorKind::BadRequest, 400),
            (ErrorKind::RequestTimeout, 408),
            (ErrorKind::PayloadTooLarge, 413),
            (ErrorKind::UriTooLong, 414),
            (ErrorKind::HeadersTooLarge, 431),
            (ErrorKind::VersionNotSupported, 505),
        ];
        for (kind, status) in statuses {
            assert_eq!(kind.status(), status);
        }
    }

    /// Request heads built from pieces a client might send, valid and not.
    fn plausible_head() -> impl Strategy<Value = Vec<u8>> {
        let method = prop::sample::select(vec!["GET", "HEAD", "POST", "", "G\0T"]);
        let target = "(/[a-z%.?=]{0,12}){1,4}|\\*|http://h/x";
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1"]);
        let header = prop::sample::select(vec![
            "Host: h",
            "Connection: close",
            "Connection: keep-alive",
            "Content-Length: 10",
            "Content-Length: x",
            "Transfer-Encoding: chunked",
            "Range: bytes=0-5",
            "If-None-Match: *",
            "Bad Header",
        ]);
        let eol = prop::sample::select(vec!["\r\n", "\n"]);
        (method, target, version, prop::collection::vec(header, 0..6), eol).prop_map(
            |(method, target, version, headers, eol)| {
                let mut head = format!("{method} {target} {version}{eol}");
                for header in headers {
                    head.push_str(header);
                    head.push_str(eol);
                }
                head.push_str(eol);
                head.into_bytes()
            },
        )
    }

    fn assert_sound(buf: &[u8]) -> Result<(), TestCaseError> {
        if let Parsed::Complete { request, head_len } = parse(buf, &limits()) {
            prop_assert!(head_len <= buf.len());
            prop_assert!(head_len <= limits().max_header_bytes);
            prop_assert!(buf.as_ptr_range().contains(&request.target.as_ptr()));
            prop_assert!(request.minor_version <= 1);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
            assert_sound(&buf)?;
        }

        #[test]
        fn never_panics_on_plausible_heads(head in plausible_head(), tail in prop::collection::vec(any::<u8>(), 0..64)) {
            let buf = [head, tail].concat();
            assert_sound(&buf)?;
        }

        #[test]
        fn every_prefix_of_a_valid_head_is_partial(cut in 0usize..46) {
            let buf = b"GET /some/file.txt HTTP/1.1\r\nHost: example\r\n\r\n";
            prop_assert_eq!(buf.len(), 46);
            prop_assert_eq!(parse(&buf[..cut], &limits()), Parsed::Partial);
        }
    }
}
