//! Request-head parsing: turns the bytes at the front of a connection's read buffer into a
//! borrowed [`Request`], or says that more bytes are needed, or which error status the
//! head deserves.
//!
//! `httparse` does the tokenising; this module adds the limits (414, 431, 413), the
//! header semantics a static server needs (Host, Connection, Content-Length,
//! Transfer-Encoding, Expect, validators, Range) and the mapping of syntax errors to
//! statuses. Nothing here allocates: the header table lives on the stack and every field
//! of [`Request`] borrows from the caller's buffer.
//!
//! Choices where RFC 9110 and 9112 leave room:
//! - A body is framed by `Content-Length` or by `Transfer-Encoding: chunked` (see
//!   [`super::body`]); any other transfer coding is 501, both framings at once are 400
//!   (RFC 9112 §6.1: a smuggling attempt, or a broken proxy), and so is a transfer coding
//!   in an HTTP/1.0 request. Each of these closes the connection: its body's end is unknown.
//! - `HTTP/1.x` with x > 1 is read as HTTP/1.1 (RFC 9110 §2.5: same major version); a
//!   version with another major (`HTTP/2.0`, `HTTP/3`, `HTTP/0.9`) is 505; anything else
//!   in that place, including `HTTP/1.10`, is 400.
//! - `Host` must be `uri-host [":" port]` (RFC 9112 §3.2, RFC 3986 §3.2.2): a reg-name,
//!   an IPv4 address or a bracketed IPv6/IPvFuture literal; else 400. An empty Host is
//!   allowed, as RFC 9112 §3.2 asks of clients whose target has no authority.
//! - Repeated `Range` headers make the request's `range` `None` (the full file is sent);
//!   `If-Match` and `If-None-Match` lines are combined (RFC 9110 §5.3); other repeated
//!   validators keep the first occurrence.

use super::body::{BodyLimits, Framing};
use std::mem::MaybeUninit;
use std::net::Ipv6Addr;

/// Size of the on-stack header table; `Limits::max_headers` above it is capped to it.
/// Uninitialised, so its size costs nothing per parse (config caps `max_header_fields` here).
pub const HEADER_CAPACITY: usize = 1024;

/// Bounds on a request head, checked before and while it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request-target accepted, in bytes; longer is 414.
    pub max_uri: usize,
    /// Longest whole head (request line, headers, blank line) accepted; longer is 431.
    /// Also the most framing bytes of a chunked body (size lines, extensions, trailers).
    pub max_header_bytes: usize,
    /// Most header fields accepted (capped at `HEADER_CAPACITY`); more is 431.
    pub max_headers: usize,
    /// Largest body the loop will read and discard; larger is 413.
    pub max_body: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_uri: 8192, max_header_bytes: 16384, max_headers: 100, max_body: 8192 }
    }
}

impl Limits {
    /// The bounds a request body is read within.
    pub fn body(&self) -> BodyLimits {
        BodyLimits { max_body: self.max_body, max_framing: self.max_header_bytes as u64 }
    }
}

/// The request method, reduced to what a static file server distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `OPTIONS`: 200 with `Allow` for `*`, 405 for a path.
    Options,
    /// POST, PUT, DELETE, TRACE, CONNECT, PATCH: methods we know and do not allow (405).
    NotAllowed,
    /// Any other token (501: RFC 9110 §9.1, a method the server does not recognise).
    Unknown,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is some other method.
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            "POST" | "PUT" | "DELETE" | "TRACE" | "CONNECT" | "PATCH" => Method::NotAllowed,
            _ => Method::Unknown,
        }
    }
}

/// Why a request was rejected before it could be answered; each maps to one status, and
/// the connection closes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed syntax, missing, repeated or invalid Host, bad framing.
    BadRequest,
    /// 408: the request did not arrive in time (used by the connection loop, not by `parse`).
    RequestTimeout,
    /// 413: a body larger than `max_body`.
    PayloadTooLarge,
    /// 414: the request-target is longer than `max_uri`.
    UriTooLong,
    /// 431: the head is longer than `max_header_bytes` or has too many fields.
    HeadersTooLarge,
    /// 501: a transfer coding other than `chunked`.
    NotImplemented,
    /// 505: an HTTP major version other than 1.
    VersionNotSupported,
    /// 500: a poison request, in progress in two worker deaths (used by the worker when
    /// it takes over a dead worker's connection, not by `parse`).
    Poison,
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
            ErrorKind::NotImplemented => 501,
            ErrorKind::VersionNotSupported => 505,
            ErrorKind::Poison => 500,
        }
    }
}

/// A list-valued field (`If-Match`, `If-None-Match`) that may arrive as several field
/// lines, which mean what one line with their values joined by commas means (RFC 9110
/// §5.3). It holds the first value and, only when there were more lines, the head to find
/// them in again: combining costs nothing unless a client repeats the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLines<'a> {
    name: &'static str,
    first: Option<&'a [u8]>,
    /// The whole head, when the field came on more than one line.
    repeated_in: Option<&'a [u8]>,
}

impl<'a> FieldLines<'a> {
    /// Whether the field was sent at all.
    pub fn is_present(&self) -> bool {
        self.first.is_some()
    }

    /// The value of each line of the field, in order.
    pub fn values(&self) -> impl Iterator<Item = &'a [u8]> {
        let name = self.name;
        let single = if self.repeated_in.is_none() { self.first } else { None };
        single.into_iter().chain(self.repeated_in.into_iter().flat_map(move |head| field_values(head, name)))
    }
}

/// The values of every `name` field line in `head`, a head `httparse` accepted: one field
/// per line, the name straight before the colon, no obs-fold.
fn field_values<'a>(head: &'a [u8], name: &'static str) -> impl Iterator<Item = &'a [u8]> {
    let fields = skip_leading_empty_lines(head).split(|&b| b == b'\n').skip(1);
    fields.filter_map(move |line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon].eq_ignore_ascii_case(name.as_bytes()).then(|| line[colon + 1..].trim_ascii())
    })
}

/// A parsed request head. Every slice borrows from the buffer given to [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method.
    pub method: Method,
    /// The request-target exactly as sent (origin-form, absolute-form or `*`).
    pub target: &'a [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1 (and for HTTP/1.2 to 1.9, answered as 1.1).
    pub minor_version: u8,
    /// Whether the connection may carry another request after this one's response.
    pub keep_alive: bool,
    /// The Host header value (required for HTTP/1.1).
    pub host: Option<&'a [u8]>,
    /// The If-Match field lines.
    pub if_match: FieldLines<'a>,
    /// The If-Unmodified-Since header value.
    pub if_unmodified_since: Option<&'a [u8]>,
    /// The If-None-Match field lines.
    pub if_none_match: FieldLines<'a>,
    /// The If-Modified-Since header value.
    pub if_modified_since: Option<&'a [u8]>,
    /// The If-Range header value.
    pub if_range: Option<&'a [u8]>,
    /// The Range header value (`None` if the header was repeated).
    pub range: Option<&'a [u8]>,
    /// The Accept-Encoding field lines.
    pub accept_encoding: FieldLines<'a>,
    /// The Accept field lines (a directory listing's format).
    pub accept: FieldLines<'a>,
    /// How the body that follows the head is framed; the loop reads and discards it.
    pub body: Framing,
    /// `Expect: 100-continue` in an HTTP/1.1 request (HTTP/1.0 ones are ignored, RFC
    /// 9110 §10.1.1): the client may wait for `100 Continue` before sending the body.
    pub expect_continue: bool,
    /// The method as sent, and the Referer and User-Agent values, for the access log.
    pub method_name: &'a [u8],
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// The outcome of parsing the front of a read buffer.
// Moved once per request on the stack; boxing the large variant would allocate per request.
#[allow(clippy::large_enum_variant)]
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

/// The request line's parts, as `httparse` (or [`parse_later_minor`]) found them.
struct RequestLine<'a> {
    method: &'a str,
    target: &'a [u8],
    minor_version: u8,
}

/// Parses the request head at the start of `buf`.
///
/// Call it again with the grown buffer after every read while it says `Partial`. Limits are
/// enforced on incomplete input too, so a client cannot make the buffer grow past them.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    if request_target_too_long(buf, limits.max_uri) {
        return Parsed::Invalid(ErrorKind::UriTooLong);
    }
    // Uninitialised slots: httparse writes only those it fills, so no memset per call.
    let mut storage = [const { MaybeUninit::<httparse::Header<'a>>::uninit() }; HEADER_CAPACITY];
    let slots = limits.max_headers.min(HEADER_CAPACITY);
    let mut raw = httparse::Request::new(&mut []);
    match raw.parse_with_uninit_headers(buf, &mut storage[..slots]) {
        Ok(httparse::Status::Partial) => partial(buf, limits),
        Ok(httparse::Status::Complete(head_len)) => {
            let (Some(method), Some(target), Some(minor_version)) = (raw.method, raw.path, raw.version) else {
                return Parsed::Invalid(ErrorKind::BadRequest);
            };
            let line = RequestLine { method, target: target.as_bytes(), minor_version };
            accept(line, raw.headers, &buf[..head_len], limits)
        }
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid(ErrorKind::HeadersTooLarge),
        Err(httparse::Error::Version) => parse_later_minor(buf, limits),
        Err(_) => Parsed::Invalid(ErrorKind::BadRequest),
    }
}

/// An incomplete head: read more, unless it is already past the size limit.
fn partial<'a>(buf: &[u8], limits: &Limits) -> Parsed<'a> {
    if buf.len() > limits.max_header_bytes {
        Parsed::Invalid(ErrorKind::HeadersTooLarge)
    } else {
        Parsed::Partial
    }
}

/// Applies the limits and header semantics to a head whose syntax was accepted.
fn accept<'a>(line: RequestLine<'a>, headers: &[httparse::Header<'a>], head: &'a [u8], limits: &Limits) -> Parsed<'a> {
    if head.len() > limits.max_header_bytes {
        return Parsed::Invalid(ErrorKind::HeadersTooLarge);
    }
    let mut fields = HeaderFields::default();
    for header in headers {
        if let Err(kind) = fields.absorb(header.name, header.value) {
            return Parsed::Invalid(kind);
        }
    }
    match fields.into_request(line, head, limits) {
        Ok(request) => Parsed::Complete { request, head_len: head.len() },
        Err(kind) => Parsed::Invalid(kind),
    }
}

/// `httparse` knows HTTP/1.0 and 1.1 only and stops at any other version. A later minor
/// version of HTTP/1 is read as HTTP/1.1 (RFC 9110 §2.5): the request line by hand
/// (httparse has checked its method and target before reaching the version), the fields
/// by httparse. Rare, so its header table may be initialised. Any other version is 505
/// or 400.
#[cold]
fn parse_later_minor<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    let line_start = buf.len() - skip_leading_empty_lines(buf).len();
    let rest = &buf[line_start..];
    let Some(line_end) = rest.iter().position(|&b| b == b'\n') else {
        let version = rest.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default();
        return match version.strip_suffix(b"\r").unwrap_or(version) {
            v if is_later_http1_minor(v) => partial(buf, limits),
            _ => Parsed::Invalid(classify_version_error(buf)),
        };
    };
    let line = rest[..line_end].strip_suffix(b"\r").unwrap_or(&rest[..line_end]);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Parsed::Invalid(ErrorKind::BadRequest);
    };
    let Ok(method) = std::str::from_utf8(method) else {
        return Parsed::Invalid(ErrorKind::BadRequest);
    };
    if !is_later_http1_minor(version) {
        return Parsed::Invalid(classify_version_error(buf));
    }
    let fields_start = line_start + line_end + 1;
    let mut table = [httparse::EMPTY_HEADER; HEADER_CAPACITY];
    let slots = limits.max_headers.min(HEADER_CAPACITY);
    match httparse::parse_headers(&buf[fields_start..], &mut table[..slots]) {
        Ok(httparse::Status::Complete((fields_len, headers))) => {
            let line = RequestLine { method, target, minor_version: 1 };
            accept(line, headers, &buf[..fields_start + fields_len], limits)
        }
        Ok(httparse::Status::Partial) => partial(buf, limits),
        Err(httparse::Error::TooManyHeaders) => Parsed::Invalid(ErrorKind::HeadersTooLarge),
        Err(_) => Parsed::Invalid(ErrorKind::BadRequest),
    }
}

/// `HTTP/1.2` to `HTTP/1.9`: the grammar's `DIGIT "." DIGIT`, past what httparse knows.
fn is_later_http1_minor(version: &[u8]) -> bool {
    matches!(version, [b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'])
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
pub(super) fn skip_leading_empty_lines(buf: &[u8]) -> &[u8] {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    &buf[start..]
}

/// A well-formed `HTTP/<major>.<minor>` (or `HTTP/<major>`) version whose major is not 1
/// is 505 (RFC 9110 §15.6.6); HTTP/1 with a malformed minor, or anything else, is 400.
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
    let major = version.get(5..).unwrap_or_default().split(|&b| b == b'.').next().unwrap_or_default();
    if shaped_like_http && major != b"1" {
        ErrorKind::VersionNotSupported
    } else {
        ErrorKind::BadRequest
    }
}

/// The header fields a static server acts on, gathered in one pass over the head.
#[derive(Default)]
struct HeaderFields<'a> {
    host: Option<&'a [u8]>,
    connection_close: bool,
    connection_keep_alive: bool,
    content_length: Option<u64>,
    transfer_codings: TransferCodings,
    expect_continue: bool,
    if_match: Option<&'a [u8]>,
    if_match_repeated: bool,
    if_unmodified_since: Option<&'a [u8]>,
    if_none_match: Option<&'a [u8]>,
    if_none_match_repeated: bool,
    if_modified_since: Option<&'a [u8]>,
    if_range: Option<&'a [u8]>,
    range: Option<&'a [u8]>,
    range_repeated: bool,
    accept_encoding: Option<&'a [u8]>,
    accept_encoding_repeated: bool,
    accept: Option<&'a [u8]>,
    accept_repeated: bool,
    referer: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
}

/// What the `Transfer-Encoding` lines of a request said, all lines taken together.
#[derive(Default, Clone, Copy)]
struct TransferCodings {
    present: bool,
    chunked: u32,
    /// A coding other than `chunked` (gzip, or one we have never heard of).
    other: bool,
}

impl<'a> HeaderFields<'a> {
    fn absorb(&mut self, name: &str, value: &'a [u8]) -> Result<(), ErrorKind> {
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        // Dispatch on length first: most headers a browser sends match no arm.
        match name.len() {
            4 if is("host") => self.absorb_host(value)?,
            5 if is("range") => self.absorb_range(value),
            6 if is("expect") => self.expect_continue |= has_element(value, b"100-continue"),
            6 if is("accept") => note_line(&mut self.accept, &mut self.accept_repeated, value),
            7 if is("referer") => keep_first(&mut self.referer, value),
            8 if is("if-match") => note_line(&mut self.if_match, &mut self.if_match_repeated, value),
            8 if is("if-range") => keep_first(&mut self.if_range, value),
            10 if is("connection") => self.absorb_connection(value),
            10 if is("user-agent") => keep_first(&mut self.user_agent, value),
            13 if is("if-none-match") => note_line(&mut self.if_none_match, &mut self.if_none_match_repeated, value),
            14 if is("content-length") => self.absorb_content_length(value)?,
            15 if is("accept-encoding") => {
                note_line(&mut self.accept_encoding, &mut self.accept_encoding_repeated, value);
            }
            17 if is("if-modified-since") => keep_first(&mut self.if_modified_since, value),
            17 if is("transfer-encoding") => self.absorb_transfer_encoding(value)?,
            19 if is("if-unmodified-since") => keep_first(&mut self.if_unmodified_since, value),
            _ => {}
        }
        Ok(())
    }

    /// RFC 9112 §3.2: a request with more than one Host field, or an invalid one, MUST
    /// be answered 400.
    fn absorb_host(&mut self, value: &'a [u8]) -> Result<(), ErrorKind> {
        if self.host.is_some() || !is_valid_host(value) {
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

    /// `Transfer-Encoding: 1#transfer-coding`, each coding a token with optional
    /// parameters; `chunked` takes none. An empty list is 400.
    fn absorb_transfer_encoding(&mut self, value: &[u8]) -> Result<(), ErrorKind> {
        let codings = &mut self.transfer_codings;
        let mut any = false;
        for coding in comma_list(value) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                codings.chunked += 1;
            } else {
                codings.other = true;
            }
            any = true;
        }
        codings.present = true;
        if any {
            Ok(())
        } else {
            Err(ErrorKind::BadRequest)
        }
    }

    /// RFC 9112 §6.1 and §6.3: how the body is framed, or why it cannot be read.
    fn framing(&self, minor_version: u8, limits: &Limits) -> Result<Framing, ErrorKind> {
        let codings = self.transfer_codings;
        if codings.present {
            if self.content_length.is_some() || minor_version == 0 {
                return Err(ErrorKind::BadRequest);
            }
            if codings.other {
                return Err(ErrorKind::NotImplemented);
            }
            // `chunked` twice would frame the body twice: a sender MUST NOT do that.
            return if codings.chunked == 1 { Ok(Framing::Chunked) } else { Err(ErrorKind::BadRequest) };
        }
        match self.content_length {
            Some(length) if length > limits.max_body => Err(ErrorKind::PayloadTooLarge),
            Some(length) if length > 0 => Ok(Framing::Length(length)),
            _ => Ok(Framing::None),
        }
    }

    fn into_request(self, line: RequestLine<'a>, head: &'a [u8], limits: &Limits) -> Result<Request<'a>, ErrorKind> {
        let RequestLine { method, target, minor_version } = line;
        if minor_version == 1 && self.host.is_none() {
            return Err(ErrorKind::BadRequest);
        }
        let body = self.framing(minor_version, limits)?;
        let persistent_by_default = minor_version == 1;
        let keep_alive = !self.connection_close && (persistent_by_default || self.connection_keep_alive);
        let lines = |name, first, repeated: bool| FieldLines { name, first, repeated_in: repeated.then_some(head) };
        Ok(Request {
            method: Method::from_token(method),
            target,
            minor_version,
            keep_alive,
            host: self.host,
            if_match: lines("if-match", self.if_match, self.if_match_repeated),
            if_unmodified_since: self.if_unmodified_since,
            if_none_match: lines("if-none-match", self.if_none_match, self.if_none_match_repeated),
            if_modified_since: self.if_modified_since,
            if_range: self.if_range,
            range: if self.range_repeated { None } else { self.range },
            accept_encoding: lines("accept-encoding", self.accept_encoding, self.accept_encoding_repeated),
            accept: lines("accept", self.accept, self.accept_repeated),
            body,
            expect_continue: self.expect_continue && minor_version == 1 && body != Framing::None,
            method_name: method.as_bytes(),
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

/// Keeps the first line of a list-valued field and notes whether more followed.
fn note_line<'a>(first: &mut Option<&'a [u8]>, repeated: &mut bool, value: &'a [u8]) {
    if first.is_some() {
        *repeated = true;
    } else {
        *first = Some(value);
    }
}

/// Whether the comma-separated list `value` holds `wanted` (ASCII case-insensitive).
fn has_element(value: &[u8], wanted: &[u8]) -> bool {
    comma_list(value).any(|element| element.eq_ignore_ascii_case(wanted))
}

/// The non-empty elements of a comma-separated header list, with whitespace trimmed.
fn comma_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|element| !element.is_empty())
}

/// `Host = uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2 and §3.2.3).
fn is_valid_host(value: &[u8]) -> bool {
    // The port follows the first colon after a closing bracket, if any.
    let host_end = value.iter().rposition(|&b| b == b']').map_or(0, |i| i + 1);
    let (host, port) = match value[host_end..].iter().position(|&b| b == b':') {
        Some(colon) => (&value[..host_end + colon], &value[host_end + colon + 1..]),
        None => (value, &b""[..]),
    };
    port.iter().all(u8::is_ascii_digit) && (is_ip_literal(host) || is_reg_name(host))
}

/// `"[" ( IPv6address / IPvFuture ) "]"`.
fn is_ip_literal(host: &[u8]) -> bool {
    let Some(inner) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) else {
        return false;
    };
    match inner {
        // IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
        [b'v' | b'V', rest @ ..] => {
            let Some(dot) = rest.iter().position(|&b| b == b'.') else { return false };
            let (version, address) = (&rest[..dot], &rest[dot + 1..]);
            !version.is_empty()
                && version.iter().all(u8::is_ascii_hexdigit)
                && !address.is_empty()
                && address.iter().all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':')
        }
        _ => std::str::from_utf8(inner).is_ok_and(|text| text.parse::<Ipv6Addr>().is_ok()),
    }
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`; IPv4 addresses are of this
/// shape too.
fn is_reg_name(host: &[u8]) -> bool {
    let mut bytes = host.iter();
    while let Some(&b) = bytes.next() {
        let valid = match b {
            b'%' => bytes.next().is_some_and(u8::is_ascii_hexdigit) && bytes.next().is_some_and(u8::is_ascii_hexdigit),
            _ => is_unreserved(b) || is_sub_delim(b),
        };
        if !valid {
            return false;
        }
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=')
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
        assert_eq!(request.body, Framing::None);
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
        assert!(request.if_none_match.values().all(|v| range.contains(&v.as_ptr())));
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

    fn head_with_fields(count: usize) -> String {
        let mut buf = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
        for i in 1..count {
            buf.push_str(&format!("X-{i}: v\r\n"));
        }
        buf + "\r\n"
    }

    #[test]
    fn a_hundred_header_fields_are_accepted_and_more_is_431() {
        complete(head_with_fields(100).as_bytes());
        assert_eq!(invalid(head_with_fields(101).as_bytes()), ErrorKind::HeadersTooLarge);
    }

    #[test]
    fn max_headers_sets_the_field_count_limit() {
        let limits = Limits { max_headers: 500, ..Limits::default() };
        assert!(matches!(parse(head_with_fields(500).as_bytes(), &limits), Parsed::Complete { .. }));
        let limits = Limits { max_headers: 10, ..Limits::default() };
        assert!(matches!(parse(head_with_fields(10).as_bytes(), &limits), Parsed::Complete { .. }));
        assert_eq!(parse(head_with_fields(11).as_bytes(), &limits), Parsed::Invalid(ErrorKind::HeadersTooLarge));
        let capped = Limits { max_headers: usize::MAX, max_header_bytes: 1 << 20, ..Limits::default() };
        let over = head_with_fields(HEADER_CAPACITY + 1);
        assert_eq!(parse(over.as_bytes(), &capped), Parsed::Invalid(ErrorKind::HeadersTooLarge));
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
    fn other_major_versions_are_505() {
        assert_eq!(invalid(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"), ErrorKind::VersionNotSupported);
        assert_eq!(invalid(b"GET / HTTP/3"), ErrorKind::VersionNotSupported);
        assert_eq!(invalid(b"GET / HTTP/0.9\r\n\r\n"), ErrorKind::VersionNotSupported);
    }

    #[test]
    fn malformed_http1_minor_versions_are_400() {
        for version in ["HTTP/1.10", "HTTP/1.", "HTTP/1", "HTTP/1.x", "HTTP/1.2x"] {
            let buf = format!("GET / {version}\r\nHost: h\r\n\r\n");
            assert_eq!(invalid(buf.as_bytes()), ErrorKind::BadRequest, "{version}");
        }
    }

    #[test]
    fn later_http1_minor_versions_are_read_as_http11() {
        let buf = b"\r\nGET /x?y HTTP/1.2\r\nHost: h\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\nGET";
        let (request, head_len) = complete(buf);
        assert_eq!(head_len, buf.len() - 3);
        assert_eq!((request.minor_version, request.target, request.method), (1, &b"/x?y"[..], Method::Get));
        assert!(request.keep_alive);
        assert_eq!(request.if_none_match.values().collect::<Vec<_>>(), [&b"\"a\""[..], b"\"b\""]);
        assert_eq!(complete(b"HEAD / HTTP/1.9\nHost: h\n\n").0.method, Method::Head);
        assert_eq!(invalid(b"GET / HTTP/1.5\r\n\r\n"), ErrorKind::BadRequest, "no Host");
    }

    #[test]
    fn later_http1_minor_heads_arrive_in_pieces() {
        let buf = b"GET / HTTP/1.3\r\nHost: h\r\n\r\n";
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut], &limits()), Parsed::Partial, "{cut}");
        }
        let big = format!("GET / HTTP/1.3\r\nHost: h\r\nX: {}", "v".repeat(17 * 1024));
        assert_eq!(invalid(big.as_bytes()), ErrorKind::HeadersTooLarge);
        assert_eq!(invalid(head_with_fields(101).replace("1.1", "1.4").as_bytes()), ErrorKind::HeadersTooLarge);
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
    fn methods_are_told_apart_case_sensitively() {
        let cases = [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("OPTIONS", Method::Options),
            ("POST", Method::NotAllowed),
            ("PUT", Method::NotAllowed),
            ("DELETE", Method::NotAllowed),
            ("TRACE", Method::NotAllowed),
            ("CONNECT", Method::NotAllowed),
            ("PATCH", Method::NotAllowed),
            ("get", Method::Unknown),
            ("BREW", Method::Unknown),
            ("PROPFIND", Method::Unknown),
        ];
        for (token, method) in cases {
            let buf = format!("{token} / HTTP/1.1\r\nHost: h\r\n\r\n");
            let (request, _) = complete(buf.as_bytes());
            assert_eq!(request.method, method, "{token}");
            assert_eq!(request.method_name, token.as_bytes());
        }
        let (request, _) = complete(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(request.target, b"*");
    }

    #[test]
    fn valid_hosts_are_accepted() {
        for host in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com.",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[2001:db8::7]:",
            "[::ffff:192.0.2.1]",
            "[v1.fe80::a+en1]",
            "xn--nxasmq6b.example",
            "a_b~c!$&'()*+,;=",
            "%41%42",
            "",
            "h:",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(complete(buf.as_bytes()).0.host, Some(host.as_bytes()), "{host:?}");
        }
    }

    #[test]
    fn invalid_hosts_are_400() {
        for host in [
            "a b/c", "a/b", "a@b", "a:b", "a:80:90", "h:8o", "[::1", "::1", "[::1]x", "[::1]:x", "[nope]", "[v.x]",
            "[v1.]", "x]:80", "%4", "%zz", "a\"b", "a\\b", "a?b", "a#b",
        ] {
            let buf = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(invalid(buf.as_bytes()), ErrorKind::BadRequest, "{host:?}");
        }
        assert_eq!(invalid(b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n"), ErrorKind::BadRequest);
    }

    #[test]
    fn small_body_is_reported_for_discarding() {
        let buf = b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        let (request, head_len) = complete(buf);
        assert_eq!(request.body, Framing::Length(5));
        assert_eq!(&buf[head_len..], b"hello");
        let zero = b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(complete(zero).0.body, Framing::None);
    }

    #[test]
    fn content_length_over_max_body_is_413() {
        let buf = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8193\r\n\r\n";
        assert_eq!(invalid(buf), ErrorKind::PayloadTooLarge);
        let huge = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert_eq!(invalid(huge), ErrorKind::PayloadTooLarge);
    }

    #[test]
    fn chunked_transfer_encoding_frames_the_body() {
        for value in ["chunked", "Chunked", " chunked ", "chunked,"] {
            let buf = format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {value}\r\n\r\n");
            assert_eq!(complete(buf.as_bytes()).0.body, Framing::Chunked, "{value:?}");
        }
    }

    #[test]
    fn other_transfer_codings_are_501() {
        for value in ["gzip", "gzip, chunked", "chunked, gzip", "chunked;x=1", "identity"] {
            let buf = format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {value}\r\n\r\n");
            assert_eq!(invalid(buf.as_bytes()), ErrorKind::NotImplemented, "{value:?}");
        }
        let split = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(invalid(split), ErrorKind::NotImplemented);
    }

    #[test]
    fn ambiguous_framing_is_400() {
        let both = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(invalid(both), ErrorKind::BadRequest);
        let both_gzip = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(invalid(both_gzip), ErrorKind::BadRequest);
        let twice = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n";
        assert_eq!(invalid(twice), ErrorKind::BadRequest);
        let empty = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n\r\n";
        assert_eq!(invalid(empty), ErrorKind::BadRequest);
        let http10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(invalid(http10), ErrorKind::BadRequest);
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
        assert_eq!(complete(same).0.body, Framing::Length(3));
    }

    #[test]
    fn expect_100_continue_is_noted_for_http11_requests_with_a_body() {
        let buf = b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n";
        let (request, _) = complete(buf);
        assert!(request.expect_continue && request.keep_alive);
        let chunked = b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(complete(chunked).0.expect_continue);
        let no_body = b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n";
        assert!(!complete(no_body).0.expect_continue);
        let http10 = b"PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
        assert!(!complete(http10).0.expect_continue);
        let other = b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: something\r\nContent-Length: 4\r\n\r\n";
        assert!(!complete(other).0.expect_continue);
    }

    #[test]
    fn if_match_and_if_none_match_lines_are_combined() {
        let buf = b"GET / HTTP/1.1\r\nIf-None-Match: \"a\"\r\nHost: h\r\nif-none-match:  \"b\", \"c\" \r\n\
                    If-Match: *\r\nX-If-None-Match: \"no\"\r\nIF-NONE-MATCH: W/\"d\"\r\n\r\n";
        let (request, _) = complete(buf);
        let values: Vec<&[u8]> = request.if_none_match.values().collect();
        assert_eq!(values, [&b"\"a\""[..], b"\"b\", \"c\"", b"W/\"d\""]);
        assert_eq!(request.if_match.values().collect::<Vec<_>>(), [&b"*"[..]]);
        let (request, _) = complete(b"GET / HTTP/1.1\r\nHost: h\r\nIf-Unmodified-Since: d\r\n\r\n");
        assert!(!request.if_match.is_present() && !request.if_none_match.is_present());
        assert_eq!(request.if_none_match.values().count(), 0);
        assert_eq!(request.if_unmodified_since, Some(&b"d"[..]));
    }

    #[test]
    fn validator_and_range_headers_are_captured_case_insensitively() {
        let buf = b"GET / HTTP/1.1\r\nhost: h\r\nIF-NONE-MATCH: \"x\"\r\nif-modified-since: d\r\n\
                    If-Range: \"y\"\r\nrange: bytes=0-1\r\n\r\n";
        let (request, _) = complete(buf);
        assert_eq!(request.if_none_match.values().collect::<Vec<_>>(), [&b"\"x\""[..]]);
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
            (ErrorKind::NotImplemented, 501),
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
        let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1", "HTTP/1.2"]);
        let header = prop::sample::select(vec![
            "Host: h",
            "Connection: close",
            "Connection: keep-alive",
            "Content-Length: 10",
            "Content-Length: x",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip",
            "Expect: 100-continue",
            "Host: a b",
            "Host: [::1]:80",
            "If-Match: \"x\"",
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
