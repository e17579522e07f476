//! Response decisions: for a parsed [`Request`], which status, which headers, which bytes of
//! which file; and the heads for errors found before a request exists.
//!
//! The head is appended to the caller's buffer with `extend_from_slice` and hand-rolled
//! integer formatting, so a response costs no allocation once that buffer has grown. Error
//! and redirect responses carry a tiny static HTML body, which is appended to the head
//! buffer after the blank line: whatever `head` holds is sent first, then the [`Body`].
//!
//! Semantics (RFC 9110, nginx where the RFC leaves a choice):
//! - Methods: GET and HEAD are served; `OPTIONS *` is 200 with `Allow: GET, HEAD, OPTIONS`; other
//!   methods we know (OPTIONS on a path, POST, PUT, DELETE, TRACE, CONNECT, PATCH) are 405
//!   with `Allow`; methods we do not know are 501.
//! - Preconditions in RFC 9110 §13.2.2 order, for a file that exists (other statuses
//!   ignore them, §13.2.1): `If-Match` (strong comparison, `*`) else
//!   `If-Unmodified-Since` failing is 412, on GET, HEAD and with Range alike; then
//!   `If-None-Match` (`*`, lists, repeated lines, weak comparison) else
//!   `If-Modified-Since` (ignored if unparsable or in the future) matching is 304, with
//!   `ETag` and `Last-Modified` and no `Content-Length`.
//! - `Range` is honoured for GET only (RFC 9110 §14.2: HEAD must ignore it, so HEAD shows
//!   the 200 headers); what it selects is [`super::range`]'s. One range is 206 with
//!   `Content-Range`; several are 206 with a `multipart/byteranges` body ([`Multipart`]);
//!   none satisfiable is 416. `If-Range` needs the strong `ETag` or exactly the
//!   `Last-Modified` date; otherwise the whole file is sent.
//! - The ETag is strong and honest (RFC 9110 §8.8.1): `"<inode>-<length>-<mtime ns>"` in
//!   hex, so a rewrite of the same length within one second, or a file renamed over
//!   another, gets a new tag.
//! - Content codings are [`super::encoding`]'s: it picks the representation (identity, a
//!   sidecar, or bytes compressed on the fly) and everything above applies to that one:
//!   its validators (the coding appended to the ETag), its length, its ranges.
//! - 400 and 500 close the connection (the client or the server is in a bad state); 403,
//!   404, 405, 412, 416, 501 and 301 keep it if the request allowed that.

use crate::http1::{error_page, reason_phrase};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;

use super::compress_cache::CompressCache;
use super::date::{format_http_date, parse_http_date, DateCache, HTTP_DATE_LEN};
use super::encoding::{self, Coding, Content, Representation};
use super::listing::{self, Format};
use super::path::{open_file_beneath, resolve, Resolved, Root};
use super::range::{parse_ranges, ByteRange, RangeRequest, RangeSet};
use super::request::{ErrorKind, Method, Request};
use super::rules::{Matched, Rules};

/// The interim response to `Expect: 100-continue` (RFC 9110 §15.2.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Server header value.
const SERVER: &[u8] = b"webd";
/// Type of the built-in error and redirect pages.
const HTML: &[u8] = b"text/html; charset=utf-8";

/// What the connection loop must do after writing the head.
#[derive(Debug)]
pub struct Plan {
    /// The status sent, for logs and metrics.
    pub status: u16,
    /// The bytes to send after the head.
    pub body: Body,
    /// Close the connection once the response is sent.
    pub close: bool,
    /// The content coding of the representation it is about (identity for errors).
    pub coding: Coding,
}

impl Plan {
    /// Body bytes this response sends from a file (the access log's size field).
    pub fn body_len(&self) -> u64 {
        match &self.body {
            Body::File { len, .. } => *len,
            Body::Parts { multipart, .. } => multipart.body_len(),
            Body::Memory { len, .. } => *len,
            Body::None => 0,
        }
    }
}

/// Response bytes that follow the head buffer.
#[derive(Debug)]
pub enum Body {
    /// Nothing follows the head buffer.
    None,
    /// `len` bytes of `file` starting at `offset` (sendfile or reads from the page cache).
    File {
        /// The open file (shared with the root's open-file cache).
        file: Rc<File>,
        /// First byte to send.
        offset: u64,
        /// Number of bytes to send; never 0.
        len: u64,
    },
    /// `len` bytes of a body compressed on the fly, from `offset`.
    Memory {
        /// The whole compressed body, shared with the worker's cache.
        bytes: Rc<[u8]>,
        /// First byte to send.
        offset: u64,
        /// Number of bytes to send; never 0.
        len: u64,
    },
    /// A `multipart/byteranges` body of ranges of `file`. Boxed: rare, and this keeps
    /// every connection's pending body small.
    Parts {
        /// The open file (shared with the root's open-file cache).
        file: Rc<File>,
        /// The parts and the framing around them.
        multipart: Box<Multipart>,
    },
}

/// A `multipart/byteranges` body (RFC 9110 §14.6): each range of the file after a
/// delimiter line and its own `Content-Type` and `Content-Range`, then a closing
/// delimiter. The connection loop writes each part's head as it reaches the part; the
/// body's length is known up front, for `Content-Length`.
#[derive(Debug)]
pub struct Multipart {
    parts: RangeSet,
    boundary: [u8; BOUNDARY_LEN],
    content_type: &'static str,
    file_len: u64,
    body_len: u64,
}

/// `webd-` and 16 hex digits.
const BOUNDARY_LEN: usize = 21;

impl Multipart {
    fn new(parts: RangeSet, etag: &ETag, content_type: &'static str, file_len: u64) -> Self {
        let mut multipart = Multipart { parts, boundary: boundary_for(etag), content_type, file_len, body_len: 0 };
        // Measured by writing it to a counter: the length cannot disagree with the bytes.
        let mut length = Length(0);
        for (index, part) in parts.as_slice().iter().enumerate() {
            multipart.write_part_head(index, &mut length);
            length.0 += part.len();
        }
        multipart.write_close(&mut length);
        multipart.body_len = length.0;
        multipart
    }

    /// The ranges, in the order they are sent.
    pub fn parts(&self) -> &[ByteRange] {
        self.parts.as_slice()
    }

    /// The whole body's length: part heads, data and the closing delimiter.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Appends what goes before part `index`'s data.
    pub fn push_part_head(&self, index: usize, out: &mut Vec<u8>) {
        self.write_part_head(index, out);
    }

    /// Appends what follows the last part's data.
    pub fn push_close(&self, out: &mut Vec<u8>) {
        self.write_close(out);
    }

    fn write_part_head(&self, index: usize, out: &mut impl Sink) {
        let Some(range) = self.parts().get(index) else { return };
        if index > 0 {
            out.put(b"\r\n"); // the CRLF before a delimiter belongs to the delimiter
        }
        out.put(b"--");
        out.put(&self.boundary);
        out.put(b"\r\nContent-Type: ");
        out.put(self.content_type.as_bytes());
        out.put(b"\r\nContent-Range: bytes ");
        out.put(Digits::decimal(range.first).as_bytes());
        out.put(b"-");
        out.put(Digits::decimal(range.last).as_bytes());
        out.put(b"/");
        out.put(Digits::decimal(self.file_len).as_bytes());
        out.put(b"\r\n\r\n");
    }

    fn write_close(&self, out: &mut impl Sink) {
        out.put(b"\r\n--");
        out.put(&self.boundary);
        out.put(b"--\r\n");
    }
}

/// A boundary fixed for one version of the file (FNV-1a of its ETag): its content cannot
/// contain the boundary unless made to, from its own inode and nanosecond mtime.
fn boundary_for(etag: &ETag) -> [u8; BOUNDARY_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = etag
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    let mut boundary = *b"webd-0000000000000000";
    for (i, digit) in boundary[5..].iter_mut().enumerate() {
        *digit = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
    }
    boundary
}

/// Where multipart framing is written: the response buffer, or a counter of its length.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

struct Length(u64);

impl Sink for Length {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len() as u64;
    }
}

/// Decides the response to `req` and appends its whole head (status line, headers, blank
/// line, and the small body of an error or redirect) to `head`; the caller clears `head`.
///
/// `force_close` means the connection must close after this response (server draining, or
/// the loop decided so); the request's own `Connection` header is already in
/// `req.keep_alive`. HEAD gets the same headers as GET and `Body::None`. `codings` is
/// the worker's cache of compressed bodies.
pub fn respond(
    req: &Request<'_>,
    root: &Root,
    rules: &Rules,
    date: &DateCache,
    (scratch, codings): (&mut Vec<u8>, &mut CompressCache),
    force_close: bool,
    head: &mut Vec<u8>,
) -> Plan {
    let mut reply = Reply {
        date,
        minor_version: req.minor_version,
        close: force_close || !req.keep_alive,
        omit_body: req.method == Method::Head,
        rules,
        root: Some(root),
        matched: Matched::NONE,
    };
    match req.method {
        Method::Get | Method::Head => {}
        Method::Options if req.target == b"*" => return reply.options(head),
        Method::Options | Method::NotAllowed => return reply.error_with(405, head, push_allow),
        Method::Unknown => return reply.error(501, head),
    }
    let resolved = resolve(root, rules, req.target, scratch, &mut reply.matched);
    match resolved {
        Resolved::File { file, meta, content_type } => {
            let file = (file, meta, content_type);
            let chosen =
                encoding::represent(req.accept_encoding.values(), root, scratch, file, codings, date.now_secs());
            serve_file(req, &reply, chosen, content_type, head)
        }
        Resolved::Directory { dir } => {
            let format = Format::preferred(req.accept.values());
            reply.listing(listing::render(dir, root, rules, scratch, format), format, head)
        }
        Resolved::RedirectToSlash => reply.error_with(301, head, |head| push_header(head, b"Location", scratch)),
        Resolved::Redirect(status) => reply.error_with(status, head, |head| push_header(head, b"Location", scratch)),
        Resolved::NotFound => match rules.fallback() {
            Some(fallback) => match resolve(root, &Rules::NONE, fallback, scratch, &mut Matched::default()) {
                Resolved::File { file, meta, content_type } => {
                    let file = (file, meta, content_type);
                    let chosen = encoding::represent(
                        req.accept_encoding.values(),
                        root,
                        scratch,
                        file,
                        codings,
                        date.now_secs(),
                    );
                    serve_file(req, &reply, chosen, content_type, head)
                }
                _ => reply.error(404, head),
            },
            None => reply.error(404, head),
        },
        Resolved::Hidden => reply.error(404, head),
        Resolved::Forbidden => reply.error(403, head),
        Resolved::BadRequest => reply.closing().error(400, head),
        Resolved::ServerError => reply.closing().error(500, head),
    }
}

/// Appends the head (and small body) for an error found before a [`Request`] exists: a
/// parse error or a timeout. The connection always closes afterwards.
pub fn error_head(kind: ErrorKind, date: &DateCache, head: &mut Vec<u8>) -> Plan {
    static NO_RULES: Rules = Rules::NONE;
    let reply = Reply {
        date,
        minor_version: 1,
        close: true,
        omit_body: false,
        rules: &NO_RULES,
        root: None,
        matched: Matched::NONE,
    };
    reply.error(kind.status(), head)
}

/// Appends a `status` redirect to `location` (with the built-in page, no header rule)
/// for `req`: what `redirect_to_https` answers on plain listeners.
pub fn redirect(
    req: &Request<'_>,
    status: u16,
    location: &[u8],
    date: &DateCache,
    force_close: bool,
    head: &mut Vec<u8>,
) -> Plan {
    static NO_RULES: Rules = Rules::NONE;
    let reply = Reply {
        date,
        minor_version: req.minor_version,
        close: force_close || !req.keep_alive,
        omit_body: req.method == Method::Head,
        rules: &NO_RULES,
        root: None,
        matched: Matched::NONE,
    };
    reply.error_with(status, head, |head| push_header(head, b"Location", location))
}

/// The methods a resource here can be asked with (RFC 9110 §10.2.1).
fn push_allow(head: &mut Vec<u8>) {
    push_header(head, b"Allow", b"GET, HEAD");
}

/// Response-wide facts every head writer needs.
#[derive(Clone, Copy)]
struct Reply<'d> {
    date: &'d DateCache,
    minor_version: u8,
    close: bool,
    omit_body: bool,
    rules: &'d Rules,
    /// Where the site's error pages are; `None` before a request (and its site) is known.
    root: Option<&'d Root>,
    /// The `[[headers]]` rules whose headers this response carries.
    matched: Matched,
}

impl Reply<'_> {
    /// For a `400` or `500`: the connection closes, and no header rule applies (they are
    /// for the responses about files).
    fn closing(self) -> Self {
        Reply { close: true, matched: Matched::NONE, ..self }
    }

    /// Status line plus the headers every response carries.
    fn start(&self, status: u16, head: &mut Vec<u8>) {
        head.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(head, u64::from(status));
        head.push(b' ');
        head.extend_from_slice(reason_phrase(status).as_bytes());
        head.extend_from_slice(b"\r\n");
        push_header(head, b"Server", SERVER);
        push_header(head, b"Date", self.date.get());
    }

    /// The headers of the matching `[[headers]]` rules, `Connection` as needed, then the
    /// blank line.
    fn finish(&self, head: &mut Vec<u8>) {
        self.rules.push_headers(self.matched, head);
        if self.close {
            push_header(head, b"Connection", b"close");
        } else if self.minor_version == 0 {
            // HTTP/1.0 closes by default: say that this one stays open.
            push_header(head, b"Connection", b"keep-alive");
        }
        head.extend_from_slice(b"\r\n");
    }

    fn error(&self, status: u16, head: &mut Vec<u8>) -> Plan {
        self.error_with(status, head, |_| {})
    }

    /// A response whose body is the site's error page for `status` or else the built-in
    /// one; `extra` adds headers.
    fn error_with(&self, status: u16, head: &mut Vec<u8>, extra: impl FnOnce(&mut Vec<u8>)) -> Plan {
        if let Some((file, len, content_type)) = self.site_error_page(status) {
            self.start(status, head);
            extra(head);
            push_header(head, b"Content-Type", content_type.as_bytes());
            push_decimal_header(head, b"Content-Length", len);
            self.finish(head);
            let body = if self.omit_body || len == 0 { Body::None } else { Body::File { file, offset: 0, len } };
            return self.plan(status, body);
        }
        let page = error_page(status);
        self.start(status, head);
        extra(head);
        push_header(head, b"Content-Type", HTML);
        push_decimal_header(head, b"Content-Length", page.len() as u64);
        self.finish(head);
        if !self.omit_body {
            head.extend_from_slice(page);
        }
        self.plan(status, Body::None)
    }

    /// The `error_pages` file for `status`, open, with its length and type. A page that
    /// cannot be opened (missing, a directory, out of the root) leaves the built-in one.
    /// Not a representation of the resource: no validators, no ranges, no 304.
    fn site_error_page(&self, status: u16) -> Option<(Rc<File>, u64, &'static str)> {
        let page = self.rules.error_page(status)?;
        let (file, meta) = open_file_beneath(self.root?, page.relative()).ok()?;
        Some((Rc::new(file), meta.len(), page.content_type))
    }

    /// `OPTIONS *`: what the server as a whole allows, no content (RFC 9110 §9.3.7).
    /// `OPTIONS *`: the server as a whole, which answers OPTIONS too (HTTPolice 1115).
    fn options(&self, head: &mut Vec<u8>) -> Plan {
        self.start(200, head);
        push_header(head, b"Allow", b"GET, HEAD, OPTIONS");
        push_decimal_header(head, b"Content-Length", 0);
        self.finish(head);
        self.plan(200, Body::None)
    }

    /// A directory listing: its own representation per `Accept`, no validators.
    fn listing(&self, body: Vec<u8>, format: Format, head: &mut Vec<u8>) -> Plan {
        let len = body.len() as u64;
        self.start(200, head);
        push_header(head, b"Content-Type", format.content_type());
        push_decimal_header(head, b"Content-Length", len);
        push_header(head, b"Vary", b"Accept");
        self.finish(head);
        let body =
            if self.omit_body || len == 0 { Body::None } else { Body::Memory { bytes: body.into(), offset: 0, len } };
        self.plan(200, body)
    }

    fn not_modified(&self, validators: &Validators, head: &mut Vec<u8>) -> Plan {
        self.start(304, head);
        validators.push_headers(head);
        self.finish(head);
        self.plan(304, Body::None)
    }

    fn whole_file(&self, content: Content, validators: &Validators, content_type: &str, head: &mut Vec<u8>) -> Plan {
        self.start(200, head);
        push_header(head, b"Content-Type", content_type.as_bytes());
        validators.push_coding(head);
        push_decimal_header(head, b"Content-Length", validators.len);
        validators.push_headers(head);
        push_header(head, b"Accept-Ranges", b"bytes");
        self.finish(head);
        self.plan(200, self.file_body(content, 0, validators.len))
    }

    fn partial_file(
        &self,
        content: Content,
        range: ByteRange,
        validators: &Validators,
        content_type: &str,
        head: &mut Vec<u8>,
    ) -> Plan {
        self.start(206, head);
        push_header(head, b"Content-Type", content_type.as_bytes());
        validators.push_coding(head);
        push_decimal_header(head, b"Content-Length", range.len());
        head.extend_from_slice(b"Content-Range: bytes ");
        push_decimal(head, range.first);
        head.push(b'-');
        push_decimal(head, range.last);
        head.push(b'/');
        push_decimal(head, validators.len);
        head.extend_from_slice(b"\r\n");
        validators.push_headers(head);
        push_header(head, b"Accept-Ranges", b"bytes");
        self.finish(head);
        self.plan(206, self.file_body(content, range.first, range.len()))
    }

    fn multipart_file(
        &self,
        file: Rc<File>,
        parts: RangeSet,
        validators: &Validators,
        content_type: &'static str,
        head: &mut Vec<u8>,
    ) -> Plan {
        let multipart = Multipart::new(parts, &validators.etag, content_type, validators.len);
        self.start(206, head);
        head.extend_from_slice(b"Content-Type: multipart/byteranges; boundary=");
        head.extend_from_slice(&multipart.boundary);
        head.extend_from_slice(b"\r\n");
        validators.push_coding(head);
        push_decimal_header(head, b"Content-Length", multipart.body_len);
        validators.push_headers(head);
        push_header(head, b"Accept-Ranges", b"bytes");
        self.finish(head);
        let body = if self.omit_body { Body::None } else { Body::Parts { file, multipart: Box::new(multipart) } };
        self.plan(206, body)
    }

    fn range_not_satisfiable(&self, validators: &Validators, head: &mut Vec<u8>) -> Plan {
        self.error_with(416, head, |head| {
            head.extend_from_slice(b"Content-Range: bytes */");
            push_decimal(head, validators.len);
            head.extend_from_slice(b"\r\n");
            validators.push_vary(head);
        })
    }

    /// An empty body is `Body::None` so the loop drops the fd and skips a syscall.
    fn file_body(&self, content: Content, offset: u64, len: u64) -> Body {
        match content {
            _ if self.omit_body || len == 0 => Body::None,
            Content::File(file) => Body::File { file, offset, len },
            Content::Memory(bytes) => Body::Memory { bytes, offset, len },
        }
    }

    fn plan(&self, status: u16, body: Body) -> Plan {
        Plan { status, body, close: self.close, coding: Coding::Identity }
    }
}

fn serve_file(
    req: &Request<'_>,
    reply: &Reply<'_>,
    chosen: Representation,
    content_type: &'static str,
    head: &mut Vec<u8>,
) -> Plan {
    let validators = Validators::of(&chosen);
    let mut plan = match evaluate_preconditions(req, &validators, reply.date.now_secs()) {
        Precondition::Holds => match (requested_range(req, &validators), chosen.content) {
            (RangeRequest::Whole, content) => reply.whole_file(content, &validators, content_type, head),
            (RangeRequest::Part(range), content) => reply.partial_file(content, range, &validators, content_type, head),
            (RangeRequest::Parts(parts), Content::File(file)) => {
                reply.multipart_file(file, parts, &validators, content_type, head)
            }
            // Several ranges of a body compressed on the fly: the whole body (§14.2 allows it).
            (RangeRequest::Parts(_), content) => reply.whole_file(content, &validators, content_type, head),
            (RangeRequest::NotSatisfiable, _) => reply.range_not_satisfiable(&validators, head),
        },
        Precondition::Failed => reply.error_with(412, head, |head| validators.push_vary(head)),
        Precondition::NotModified => reply.not_modified(&validators, head),
    };
    plan.coding = chosen.coding;
    plan
}

/// The representation's validators and coding, formatted once per response.
struct Validators {
    /// The representation's length (the encoded bytes, for an encoded one).
    len: u64,
    /// Whole seconds, as `Last-Modified` and the HTTP-dates compared with it carry.
    mtime: u64,
    etag: ETag,
    last_modified: [u8; HTTP_DATE_LEN],
    coding: Coding,
    vary: bool,
}

impl Validators {
    fn of(chosen: &Representation) -> Self {
        let meta = &chosen.meta;
        // A file dated before 1970 is treated as dated at the epoch.
        let mtime = u64::try_from(meta.mtime()).unwrap_or(0);
        let nanos = u64::try_from(meta.mtime_nsec()).unwrap_or(0);
        let mtime_ns = mtime.saturating_mul(1_000_000_000).saturating_add(nanos);
        Validators {
            len: chosen.len,
            mtime,
            etag: ETag::new(meta.ino(), meta.len(), mtime_ns, chosen.coding),
            last_modified: format_http_date(mtime),
            coding: chosen.coding,
            vary: chosen.vary,
        }
    }

    /// What a 304 repeats of a 200 (RFC 9110 §15.4.5): validators and `Vary`.
    fn push_headers(&self, head: &mut Vec<u8>) {
        push_header(head, b"Last-Modified", &self.last_modified);
        push_header(head, b"ETag", self.etag.as_bytes());
        self.push_vary(head);
    }

    fn push_vary(&self, head: &mut Vec<u8>) {
        if self.vary {
            push_header(head, b"Vary", b"Accept-Encoding");
        }
    }

    fn push_coding(&self, head: &mut Vec<u8>) {
        if self.coding != Coding::Identity {
            push_header(head, b"Content-Encoding", self.coding.name().as_bytes());
        }
    }
}

/// A strong entity tag, `"<inode hex>-<length hex>-<mtime ns hex>"` and `-<coding>` for
/// an encoded representation, on the stack. The nanoseconds tell apart two writes of the
/// same length within one second; the inode, a file replaced by rename (whose mtime may be
/// older); the coding, the encoded bytes from the identity ones of the same file.
struct ETag {
    bytes: [u8; ETag::MAX_LEN],
    len: usize,
}

impl ETag {
    /// Two quotes, three dashes, three 16-digit numbers, the longest coding name.
    const MAX_LEN: usize = 2 + 3 + 3 * 16 + 4;

    fn new(inode: u64, file_len: u64, mtime_ns: u64, coding: Coding) -> Self {
        let mut etag = ETag { bytes: [0; ETag::MAX_LEN], len: 0 };
        etag.push(b"\"");
        etag.push(Digits::hex(inode).as_bytes());
        etag.push(b"-");
        etag.push(Digits::hex(file_len).as_bytes());
        etag.push(b"-");
        etag.push(Digits::hex(mtime_ns).as_bytes());
        if coding != Coding::Identity {
            etag.push(b"-");
            etag.push(coding.name().as_bytes());
        }
        etag.push(b"\"");
        etag
    }

    fn push(&mut self, part: &[u8]) {
        self.bytes[self.len..self.len + part.len()].copy_from_slice(part);
        self.len += part.len();
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// What the preconditions of a request for an existing file decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precondition {
    /// Serve it (200, 206 or 416).
    Holds,
    /// 412.
    Failed,
    /// 304 (GET and HEAD are all we serve).
    NotModified,
}

/// RFC 9110 §13.2.2, steps 1 to 4; step 5 (If-Range) is left to [`requested_range`].
fn evaluate_preconditions(req: &Request<'_>, validators: &Validators, now: u64) -> Precondition {
    let etag = validators.etag.as_bytes();
    if req.if_match.is_present() {
        if !req.if_match.values().any(|list| etag_list_matches(list, etag, Comparison::Strong)) {
            return Precondition::Failed;
        }
    } else if let Some(since) = req.if_unmodified_since.and_then(parse_http_date) {
        if validators.mtime > since {
            return Precondition::Failed;
        }
    }
    if req.if_none_match.is_present() {
        if req.if_none_match.values().any(|list| etag_list_matches(list, etag, Comparison::Weak)) {
            return Precondition::NotModified;
        }
    } else if is_not_modified_since(req.if_modified_since, validators.mtime, now) {
        return Precondition::NotModified;
    }
    Precondition::Holds
}

/// `If-Modified-Since` holds a date at or after the file's; a date in the future is
/// invalid (RFC 9110 §13.1.3) and must not hide updates.
fn is_not_modified_since(since: Option<&[u8]>, mtime: u64, now: u64) -> bool {
    since.and_then(parse_http_date).is_some_and(|since| since <= now && mtime <= since)
}

/// How two entity tags are compared (RFC 9110 §8.8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    /// Both must be strong and equal (If-Match, If-Range).
    Strong,
    /// Equal once `W/` is ignored on both (If-None-Match).
    Weak,
}

/// `*`, or any listed tag equal to ours under `comparison` (ours is strong). Stops at the
/// first malformed element: the rest cannot be trusted to be tags.
fn etag_list_matches(list: &[u8], etag: &[u8], comparison: Comparison) -> bool {
    let mut rest = list;
    loop {
        rest = skip_list_separators(rest);
        if rest.is_empty() {
            return false;
        }
        if let Some(after) = rest.strip_prefix(b"*") {
            // `*` matches any current representation; `*x` is no tag.
            return after.first().is_none_or(|&b| matches!(b, b' ' | b'\t' | b','));
        }
        let (weak, tag) = match rest.strip_prefix(b"W/") {
            Some(tag) => (true, tag),
            None => (false, rest),
        };
        let Some(tag_len) = quoted_len(tag) else {
            return false;
        };
        if &tag[..tag_len] == etag && (comparison == Comparison::Weak || !weak) {
            return true;
        }
        rest = &tag[tag_len..];
    }
}

fn skip_list_separators(list: &[u8]) -> &[u8] {
    let start = list.iter().position(|&b| !matches!(b, b' ' | b'\t' | b',')).unwrap_or(list.len());
    &list[start..]
}

/// Length of the `"..."` at the start of `text`, quotes included.
fn quoted_len(text: &[u8]) -> Option<usize> {
    let inner = text.strip_prefix(b"\"")?;
    let closing = inner.iter().position(|&b| b == b'"')?;
    Some(closing + 2)
}

fn requested_range(req: &Request<'_>, validators: &Validators) -> RangeRequest {
    let (Method::Get, Some(range)) = (req.method, req.range) else {
        return RangeRequest::Whole;
    };
    if req.if_range.is_some_and(|condition| !if_range_matches(condition, validators)) {
        return RangeRequest::Whole;
    }
    parse_ranges(range, validators.len)
}

/// If-Range holds an entity tag (strong comparison: a weak tag never matches) or a date
/// (exactly our Last-Modified).
fn if_range_matches(condition: &[u8], validators: &Validators) -> bool {
    let condition = condition.trim_ascii();
    if condition.starts_with(b"\"") {
        condition == validators.etag.as_bytes()
    } else if condition.starts_with(b"W/") {
        false
    } else {
        parse_http_date(condition) == Some(validators.mtime)
    }
}

fn push_header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

fn push_decimal_header(head: &mut Vec<u8>, name: &[u8], value: u64) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    push_decimal(head, value);
    head.extend_from_slice(b"\r\n");
}

fn push_decimal(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(Digits::decimal(value).as_bytes());
}

/// An integer's digits, right-aligned in a stack buffer: formatting without `fmt`.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn decimal(value: u64) -> Self {
        Self::in_radix(value, 10)
    }

    fn hex(value: u64) -> Self {
        Self::in_radix(value, 16)
    }

    fn in_radix(mut value: u64, radix: u64) -> Self {
        const SYMBOLS: &[u8; 16] = b"0123456789abcdef";
        let mut digits = Digits { buf: [0; 20], start: 20 };
        loop {
            digits.start -= 1;
            digits.buf[digits.start] = SYMBOLS[(value % radix) as usize];
            value /= radix;
            if value == 0 {
                return digits;
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::{parse, Limits, Parsed};
    use super::*;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, UNIX_EPOCH};
    use tempfile::TempDir;

    /// Sun, 06 Nov 1994 08:49:37 GMT, the mtime of every fixture file.
    const MTIME: u64 = 784_111_777;
    const MTIME_TEXT: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    /// A "now" comfortably after MTIME.
    const NOW: u64 = 1_700_000_000;

    struct Fixture {
        _dir: TempDir,
        root: Root,
        date: DateCache,
        codings: std::cell::RefCell<CompressCache>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root_dir = dir.path().join("root");
        std::fs::create_dir_all(root_dir.join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("secret.txt"), "secret").expect("write");
        for (name, content) in [("a.txt", "0123456789"), ("empty.txt", ""), ("sub/index.html", "<p>i</p>")] {
            let path = root_dir.join(name);
            std::fs::write(&path, content).expect("write");
            let file = File::options().write(true).open(&path).expect("open");
            file.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME)).expect("set mtime");
        }
        symlink("../secret.txt", root_dir.join("out")).expect("symlink");
        let mut date = DateCache::new();
        date.refresh_to(UNIX_EPOCH + Duration::from_secs(NOW));
        let codings = std::cell::RefCell::new(CompressCache::new(1));
        Fixture { root: Root::open(&root_dir).expect("root"), _dir: dir, date, codings }
    }

    /// The parts of a response a test looks at.
    struct Sent {
        plan: Plan,
        status: u16,
        headers: Vec<(String, String)>,
        page: Vec<u8>,
    }

    impl Sent {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
        }

        fn file_span(&self) -> Option<(u64, u64)> {
            match &self.plan.body {
                Body::File { offset, len, .. } => Some((*offset, *len)),
                Body::Parts { .. } | Body::Memory { .. } | Body::None => None,
            }
        }

        /// A multipart body as the connection loop writes it: part heads, the file's
        /// bytes, the closing delimiter.
        fn multipart_body(&self) -> Option<Vec<u8>> {
            let Body::Parts { file, multipart } = &self.plan.body else { return None };
            let mut body = Vec::new();
            for (index, part) in multipart.parts().iter().enumerate() {
                multipart.push_part_head(index, &mut body);
                let mut data = vec![0; part.len() as usize];
                std::os::unix::fs::FileExt::read_exact_at(&**file, &mut data, part.first).expect("read part");
                body.extend_from_slice(&data);
            }
            multipart.push_close(&mut body);
            Some(body)
        }
    }

    fn read_head(plan: Plan, head: &[u8]) -> Sent {
        let mut storage = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut storage);
        let head_len = match response.parse(head) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("unparsable head {other:?}: {}", head.escape_ascii()),
        };
        assert_eq!(response.code, Some(plan.status));
        Sent {
            status: plan.status,
            headers: response
                .headers
                .iter()
                .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                .collect(),
            page: head[head_len..].to_vec(),
            plan,
        }
    }

    fn send_with(fixture: &Fixture, raw: &str, force_close: bool) -> Sent {
        crate::worker::open_files::next_pass(); // each request its own event-loop pass
        let request = match parse(raw.as_bytes(), &Limits::default()) {
            Parsed::Complete { request, .. } => request,
            other => panic!("test request did not parse: {other:?}"),
        };
        let mut scratch = Vec::new();
        let mut head = Vec::new();
        let codings = &mut *fixture.codings.borrow_mut();
        let plan = respond(
            &request,
            &fixture.root,
            &Rules::NONE,
            &fixture.date,
            (&mut scratch, codings),
            force_close,
            &mut head,
        );
        read_head(plan, &head)
    }

    fn get(fixture: &Fixture, target: &str, extra_headers: &str) -> Sent {
        send_with(fixture, &format!("GET {target} HTTP/1.1\r\nHost: h\r\n{extra_headers}\r\n"), false)
    }

    /// The ETag of `a.txt`: inode, length 10, mtime in nanoseconds.
    fn etag(fixture: &Fixture) -> String {
        let meta = std::fs::metadata(fixture.root.path().join("a.txt")).expect("stat a.txt");
        format!("\"{:x}-a-{:x}\"", meta.ino(), MTIME * 1_000_000_000)
    }

    fn assert_page_matches_length(sent: &Sent) {
        let length: usize = sent.header("Content-Length").expect("Content-Length").parse().expect("number");
        assert_eq!(sent.page.len(), length);
        assert!(!sent.page.is_empty());
    }

    #[test]
    fn get_sends_the_whole_file_with_all_headers() {
        let fixture = fixture();
        let sent = get(&fixture, "/a.txt", "");
        assert_eq!(sent.status, 200);
        assert_eq!(sent.header("Server"), Some("webd"));
        assert_eq!(sent.header("Date"), Some("Tue, 14 Nov 2023 22:13:20 GMT"));
        assert_eq!(sent.header("Content-Type"), Some("text/plain; charset=utf-8"));
        assert_eq!(sent.header("Content-Length"), Some("10"));
        assert_eq!(sent.header("Last-Modified"), Some(MTIME_TEXT));
        assert_eq!(sent.header("ETag"), Some(etag(&fixture).as_str()));
        assert_eq!(sent.header("Accept-Ranges"), Some("bytes"));
        assert_eq!(sent.header("Connection"), None);
        assert_eq!(sent.file_span(), Some((0, 10)));
        assert!(!sent.plan.close);
        assert!(sent.page.is_empty());
    }

    #[test]
    fn head_gets_get_headers_and_no_body() {
        let fixture = fixture();
        let sent = send_with(&fixture, "HEAD /a.txt HTTP/1.1\r\nHost: h\r\n\r\n", false);
        assert_eq!(sent.status, 200);
        assert_eq!(sent.header("Content-Length"), Some("10"));
        assert_eq!(sent.header("ETag"), Some(etag(&fixture).as_str()));
        assert_eq!(sent.file_span(), None);
    }

    #[test]
    fn head_ignores_range() {
        let fixture = fixture();
        let sent = send_with(&fixture, "HEAD /a.txt HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\n", false);
        assert_eq!(sent.status, 200);
        assert_eq!(sent.header("Content-Length"), Some("10"));
    }

    #[test]
    fn empty_file_has_no_body_to_send() {
        let fixture = fixture();
        let sent = get(&fixture, "/empty.txt", "");
        assert_eq!(sent.status, 200);
        assert_eq!(sent.header("Content-Length"), Some("0"));
        assert_eq!(sent.file_span(), None);
        let sent = get(&fixture, "/empty.txt", "Range: bytes=0-\r\n");
        assert_eq!(sent.status, 416);
        assert_eq!(sent.header("Content-Range"), Some("bytes */0"));
    }

    #[test]
    fn connection_header_follows_version_and_closing() {
        let fixture = fixture();
        let sent = send_with(&fixture, "GET /a.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", false);
        assert_eq!(sent.header("Connection"), Some("keep-alive"));
        assert!(!sent.plan.close);
        let sent = send_with(&fixture, "GET /a.txt HTTP/1.0\r\n\r\n", false);
        assert_eq!(sent.header("Connection"), Some("close"));
        assert!(sent.plan.close);
        let sent = send_with(&fixture, "GET /a.txt HTTP/1.1\r\nHost: h\r\n\r\n", true);
        assert_eq!(sent.header("Connection"), Some("close"));
        assert!(sent.plan.close);
        let sent = send_with(&fixture, "GET /a.txt HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false);
        assert!(sent.plan.close);
    }

    #[test]
    fn single_ranges_are_206() {
        let fixture = fixture();
        let cases = [
            ("bytes=0-9", "bytes 0-9/10", (0, 10)),
            ("bytes=-5", "bytes 5-9/10", (5, 5)),
            ("bytes=5-", "bytes 5-9/10", (5, 5)),
            ("bytes=2-4", "bytes 2-4/10", (2, 3)),
            ("bytes=0-100", "bytes 0-9/10", (0, 10)),
            ("bytes=-100", "bytes 0-9/10", (0, 10)),
            ("Bytes=9-9 ", "bytes 9-9/10", (9, 1)),
        ];
        for (range, content_range, span) in cases {
            let sent = get(&fixture, "/a.txt", &format!("Range: {range}\r\n"));
            assert_eq!(sent.status, 206, "{range}");
            assert_eq!(sent.header("Content-Range"), Some(content_range), "{range}");
            assert_eq!(sent.header("Content-Length"), Some(span.1.to_string().as_str()), "{range}");
            assert_eq!(sent.file_span(), Some(span), "{range}");
        }
    }

    #[test]
    fn unsatisfiable_ranges_are_416() {
        let fixture = fixture();
        for range in ["bytes=100-", "bytes=10-20", "bytes=-0", "bytes=99999999999999999999999-"] {
            let sent = get(&fixture, "/a.txt", &format!("Range: {range}\r\n"));
            assert_eq!(sent.status, 416, "{range}");
            assert_eq!(sent.header("Content-Range"), Some("bytes */10"), "{range}");
            assert_page_matches_length(&sent);
            assert!(!sent.plan.close);
        }
    }

    #[test]
    fn multiple_or_malformed_ranges_send_the_whole_file() {
        let fixture = fixture();
        for range in
            ["bytes=0-1,5-2", "bytes = 0-1", "bytes=5-2", "items=0-1", "bytes=", "bytes=-", "bytes=a-b", "bytes=1-2-3"]
        {
            let sent = get(&fixture, "/a.txt", &format!("Range: {range}\r\n"));
            assert_eq!(sent.status, 200, "{range}");
            assert_eq!(sent.file_span(), Some((0, 10)), "{range}");
        }
    }

    #[test]
    fn several_ranges_are_206_multipart_byteranges() {
        let fixture = fixture();
        let sent = get(&fixture, "/a.txt", "Range: bytes=0-1, 7-, 1-2\r\n");
        assert_eq!(sent.status, 206);
        let content_type = sent.header("Content-Type").expect("Content-Type");
        let boundary = content_type.strip_prefix("multipart/byteranges; boundary=").expect("multipart type");
        assert_eq!(sent.header("Content-Range"), None);
        let body = sent.multipart_body().expect("a multipart body");
        let length: usize = sent.header("Content-Length").expect("Content-Length").parse().expect("number");
        assert_eq!(body.len(), length);
        let want = format!(
            "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 0-2/10\r\n\r\n012\r\n\
             --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 7-9/10\r\n\r\n789\r\n\
             --{boundary}--\r\n"
        );
        assert_eq!(String::from_utf8(body).expect("utf-8"), want, "0-1 and 1-2 coalesce in the place of 0-1");
        assert_eq!(sent.plan.body_len(), length as u64);
    }

    #[test]
    fn ranges_that_coalesce_into_one_are_a_plain_206() {
        let fixture = fixture();
        let sent = get(&fixture, "/a.txt", "Range: bytes=2-4,3-6,0-2\r\n");
        assert_eq!(sent.status, 206);
        assert_eq!(sent.header("Content-Range"), Some("bytes 0-6/10"));
        assert_eq!(sent.file_span(), Some((0, 7)));
    }

    #[test]
    fn the_boundary_is_fixed_per_file_version() {
        let fixture = fixture();
        let boundary = |fixture: &Fixture| {
            get(fixture, "/a.txt", "Range: bytes=0-0,2-2\r\n").header("Content-Type").map(str::to_string)
        };
        let first = boundary(&fixture);
        assert_eq!(boundary(&fixture), first);
        let path = fixture.root.path().join("a.txt");
        File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(UNIX_EPOCH + Duration::new(MTIME, 5))
            .expect("mtime");
        assert_ne!(boundary(&fixture), first);
    }

    #[test]
    fn if_none_match_gives_304() {
        let fixture = fixture();
        let ours = etag(&fixture);
        let weak = format!("W/{ours}");
        let listed = format!("\"x\", {ours}");
        for candidates in [ours.as_str(), weak.as_str(), listed.as_str(), "*"] {
            let sent = get(&fixture, "/a.txt", &format!("If-None-Match: {candidates}\r\n"));
            assert_eq!(sent.status, 304, "{candidates}");
            assert_eq!(sent.header("ETag"), Some(ours.as_str()));
            assert_eq!(sent.header("Last-Modified"), Some(MTIME_TEXT));
            assert_eq!(sent.header("Content-Length"), None);
            assert_eq!(sent.file_span(), None);
            assert!(sent.page.is_empty());
        }
    }

    #[test]
    fn if_none_match_mismatch_gives_200_and_overrides_if_modified_since() {
        let fixture = fixture();
        for candidates in ["\"other\"", "W/\"other\", \"x\"", "garbage"] {
            let headers = format!("If-None-Match: {candidates}\r\nIf-Modified-Since: {MTIME_TEXT}\r\n");
            assert_eq!(get(&fixture, "/a.txt", &headers).status, 200, "{candidates}");
        }
    }

    #[test]
    fn if_modified_since_gives_304_when_not_modified_since() {
        let fixture = fixture();
        let later = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME + 3600));
        for since in [MTIME_TEXT, later.as_str(), "Sunday, 06-Nov-94 08:49:37 GMT"] {
            let sent = get(&fixture, "/a.txt", &format!("If-Modified-Since: {since}\r\n"));
            assert_eq!(sent.status, 304, "{since}");
        }
    }

    #[test]
    fn if_modified_since_earlier_future_or_invalid_gives_200() {
        let fixture = fixture();
        let earlier = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME - 1));
        let future = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(NOW + 3600));
        for since in [earlier.as_str(), future.as_str(), "not a date"] {
            let sent = get(&fixture, "/a.txt", &format!("If-Modified-Since: {since}\r\n"));
            assert_eq!(sent.status, 200, "{since}");
        }
    }

    #[test]
    fn if_range_match_honours_range() {
        let fixture = fixture();
        for condition in [etag(&fixture), MTIME_TEXT.to_string()] {
            let sent = get(&fixture, "/a.txt", &format!("Range: bytes=0-1\r\nIf-Range: {condition}\r\n"));
            assert_eq!(sent.status, 206, "{condition}");
        }
    }

    #[test]
    fn if_range_mismatch_sends_the_whole_file() {
        let fixture = fixture();
        let later = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME + 1));
        for condition in ["\"other\"".to_string(), format!("W/{}", etag(&fixture)), later] {
            let sent = get(&fixture, "/a.txt", &format!("Range: bytes=0-1\r\nIf-Range: {condition}\r\n"));
            assert_eq!(sent.status, 200, "{condition}");
            assert_eq!(sent.file_span(), Some((0, 10)));
        }
    }

    #[test]
    fn known_methods_other_than_get_and_head_are_405_with_allow() {
        let fixture = fixture();
        for method in ["POST", "PUT", "DELETE", "TRACE", "PATCH", "OPTIONS"] {
            let sent = send_with(&fixture, &format!("{method} /a.txt HTTP/1.1\r\nHost: h\r\n\r\n"), false);
            assert_eq!(sent.status, 405, "{method}");
            assert_eq!(sent.header("Allow"), Some("GET, HEAD"), "{method}");
            assert_page_matches_length(&sent);
            assert!(!sent.plan.close);
        }
        let sent = send_with(&fixture, "CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", false);
        assert_eq!(sent.status, 405);
    }

    #[test]
    fn unknown_methods_are_501() {
        let fixture = fixture();
        for method in ["BREW", "get", "PROPFIND"] {
            let sent = send_with(&fixture, &format!("{method} /a.txt HTTP/1.1\r\nHost: h\r\n\r\n"), false);
            assert_eq!(sent.status, 501, "{method}");
            assert_eq!(sent.header("Allow"), None, "{method}");
            assert_page_matches_length(&sent);
            assert!(!sent.plan.close);
        }
    }

    #[test]
    fn options_star_is_200_with_allow_and_no_content() {
        let fixture = fixture();
        let sent = send_with(&fixture, "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", false);
        assert_eq!(sent.status, 200);
        assert_eq!(sent.header("Allow"), Some("GET, HEAD, OPTIONS"));
        assert_eq!(sent.header("Content-Length"), Some("0"));
        assert!(sent.page.is_empty() && sent.file_span().is_none() && !sent.plan.close);
    }

    #[test]
    fn if_match_holds_for_our_strong_tag_or_star() {
        let fixture = fixture();
        let ours = etag(&fixture);
        let listed = format!("\"x\", {ours}");
        for condition in [ours.as_str(), listed.as_str(), "*"] {
            let sent = get(&fixture, "/a.txt", &format!("If-Match: {condition}\r\n"));
            assert_eq!(sent.status, 200, "{condition}");
            let ranged = get(&fixture, "/a.txt", &format!("If-Match: {condition}\r\nRange: bytes=0-1\r\n"));
            assert_eq!(ranged.status, 206, "{condition}");
        }
        let split = get(&fixture, "/a.txt", &format!("If-Match: \"x\"\r\nIf-Match: {ours}\r\n"));
        assert_eq!(split.status, 200, "If-Match lines are combined");
    }

    #[test]
    fn if_match_failing_is_412_also_with_range_and_on_head() {
        let fixture = fixture();
        let weak = format!("W/{}", etag(&fixture));
        for condition in ["\"nope\"", weak.as_str(), "garbage"] {
            let sent = get(&fixture, "/a.txt", &format!("If-Match: {condition}\r\n"));
            assert_eq!(sent.status, 412, "{condition}");
            assert_page_matches_length(&sent);
            assert!(sent.file_span().is_none() && !sent.plan.close);
            let ranged = get(&fixture, "/a.txt", &format!("If-Match: {condition}\r\nRange: bytes=0-1\r\n"));
            assert_eq!(ranged.status, 412, "{condition} with Range");
            let raw = format!("HEAD /a.txt HTTP/1.1\r\nHost: h\r\nIf-Match: {condition}\r\n\r\n");
            let head = send_with(&fixture, &raw, false);
            assert_eq!(head.status, 412, "{condition} on HEAD");
            assert!(head.page.is_empty());
        }
        // Preconditions are ignored when the answer would not be 2xx (RFC 9110 §13.2.1).
        assert_eq!(get(&fixture, "/missing", "If-Match: \"nope\"\r\n").status, 404);
    }

    #[test]
    fn if_unmodified_since_earlier_than_the_file_is_412() {
        let fixture = fixture();
        let earlier = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(MTIME - 1));
        let sent = get(&fixture, "/a.txt", &format!("If-Unmodified-Since: {earlier}\r\nRange: bytes=0-1\r\n"));
        assert_eq!(sent.status, 412);
        for since in [MTIME_TEXT, "not a date"] {
            assert_eq!(get(&fixture, "/a.txt", &format!("If-Unmodified-Since: {since}\r\n")).status, 200, "{since}");
        }
        // If-Match, when present, decides instead (step 1 before step 2).
        let ours = etag(&fixture);
        let both = get(&fixture, "/a.txt", &format!("If-Match: {ours}\r\nIf-Unmodified-Since: {earlier}\r\n"));
        assert_eq!(both.status, 200);
    }

    #[test]
    fn failed_if_match_wins_over_a_matching_if_none_match() {
        let fixture = fixture();
        let ours = etag(&fixture);
        let sent = get(&fixture, "/a.txt", &format!("If-Match: \"nope\"\r\nIf-None-Match: {ours}\r\n"));
        assert_eq!(sent.status, 412);
    }

    #[test]
    fn if_none_match_lines_are_combined_and_checked_before_range() {
        let fixture = fixture();
        let ours = etag(&fixture);
        let split = get(&fixture, "/a.txt", &format!("If-None-Match: \"x\"\r\nIf-None-Match: W/{ours}\r\n"));
        assert_eq!(split.status, 304);
        let ranged = get(&fixture, "/a.txt", &format!("If-None-Match: {ours}\r\nRange: bytes=0-1\r\n"));
        assert_eq!(ranged.status, 304);
        let star_line = get(&fixture, "/a.txt", "If-None-Match: \"x\"\r\nIf-None-Match: *\r\n");
        assert_eq!(star_line.status, 304);
        let not_star = get(&fixture, "/a.txt", "If-None-Match: *x\r\n");
        assert_eq!(not_star.status, 200);
    }

    #[test]
    fn etag_follows_nanoseconds_and_inode() {
        let fixture = fixture();
        let path = fixture.root.path().join("a.txt");
        let before = get(&fixture, "/a.txt", "").header("ETag").map(str::to_string);
        let file = File::options().write(true).open(&path).expect("open");
        file.set_modified(UNIX_EPOCH + Duration::new(MTIME, 1)).expect("set mtime");
        let one_ns_later = get(&fixture, "/a.txt", "");
        assert_eq!(one_ns_later.header("Last-Modified"), Some(MTIME_TEXT), "the same second");
        assert_ne!(one_ns_later.header("ETag").map(str::to_string), before, "1 ns later, same length");
        // Replaced by rename with the same length and mtime: another inode.
        let copy = fixture.root.path().join("a.new");
        std::fs::write(&copy, "0123456789").expect("write");
        File::options()
            .write(true)
            .open(&copy)
            .expect("open")
            .set_modified(UNIX_EPOCH + Duration::new(MTIME, 1))
            .expect("mtime");
        std::fs::rename(&copy, &path).expect("rename");
        let renamed = get(&fixture, "/a.txt", "");
        assert_ne!(renamed.header("ETag"), one_ns_later.header("ETag"), "another inode");
    }

    #[test]
    fn directory_without_slash_is_301_with_location() {
        let fixture = fixture();
        let sent = get(&fixture, "/sub?page=2", "");
        assert_eq!(sent.status, 301);
        assert_eq!(sent.header("Location"), Some("/sub/?page=2"));
        assert_page_matches_length(&sent);
        assert_eq!(get(&fixture, "/sub/", "").status, 200);
    }

    #[test]
    fn missing_escaping_and_bad_paths_get_their_errors() {
        let fixture = fixture();
        let cases = [("/missing", 404, false), ("/out", 403, false), ("/../a.txt", 403, false), ("/%zz", 400, true)];
        for (target, status, close) in cases {
            let sent = get(&fixture, target, "");
            assert_eq!(sent.status, status, "{target}");
            assert_eq!(sent.plan.close, close, "{target}");
            assert_eq!(sent.header("Content-Type"), Some("text/html; charset=utf-8"));
            assert_page_matches_length(&sent);
        }
        let sent = send_with(&fixture, "GET * HTTP/1.1\r\nHost: h\r\n\r\n", false);
        assert_eq!(sent.status, 400);
        assert_eq!(sent.header("Connection"), Some("close"));
    }

    #[test]
    fn head_of_an_error_has_length_but_no_page() {
        let fixture = fixture();
        let sent = send_with(&fixture, "HEAD /missing HTTP/1.1\r\nHost: h\r\n\r\n", false);
        assert_eq!(sent.status, 404);
        assert!(sent.header("Content-Length").is_some_and(|length| length != "0"));
        assert!(sent.page.is_empty());
    }

    #[test]
    fn error_heads_close_and_carry_their_page() {
        let date = DateCache::new();
        let kinds = [
            ErrorKind::BadRequest,
            ErrorKind::RequestTimeout,
            ErrorKind::PayloadTooLarge,
            ErrorKind::UriTooLong,
            ErrorKind::HeadersTooLarge,
            ErrorKind::NotImplemented,
            ErrorKind::VersionNotSupported,
            ErrorKind::Poison,
        ];
        for kind in kinds {
            let mut head = Vec::new();
            let sent = read_head(error_head(kind, &date, &mut head), &head);
            assert_eq!(sent.status, kind.status());
            assert!(sent.plan.close);
            assert_eq!(sent.header("Connection"), Some("close"));
            assert_eq!(sent.header("Server"), Some("webd"));
            assert_page_matches_length(&sent);
            let page = String::from_utf8(sent.page.clone()).expect("utf-8 page");
            assert!(page.contains(&kind.status().to_string()), "{page}");
        }
    }

    #[test]
    fn head_buffer_stops_growing_once_warm() {
        let fixture = fixture();
        let raw = b"GET /a.txt HTTP/1.1\r\nHost: h\r\nRange: bytes=1-2\r\n\r\n";
        let Parsed::Complete { request, .. } = parse(raw, &Limits::default()) else {
            panic!("test request did not parse");
        };
        let (mut scratch, mut head) = (Vec::with_capacity(64), Vec::with_capacity(512));
        let capacities = (scratch.capacity(), head.capacity());
        for _ in 0..50 {
            head.clear();
            let codings = &mut *fixture.codings.borrow_mut();
            let plan = respond(
                &request,
                &fixture.root,
                &Rules::NONE,
                &fixture.date,
                (&mut scratch, codings),
                false,
                &mut head,
            );
            assert_eq!(plan.status, 206);
        }
        assert_eq!((scratch.capacity(), head.capacity()), capacities);
    }

    #[test]
    fn a_cached_encoding_is_served_without_growing_anything() {
        let fixture = fixture();
        std::fs::write(fixture.root.path().join("big.txt"), "compress me ".repeat(200)).expect("write");
        let raw = b"GET /big.txt HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip, br\r\n\r\n";
        let Parsed::Complete { request, .. } = parse(raw, &Limits::default()) else {
            panic!("test request did not parse");
        };
        let (mut scratch, mut head) = (Vec::with_capacity(64), Vec::with_capacity(512));
        let mut codings = CompressCache::new(1);
        let mut respond_once = |scratch: &mut Vec<u8>, head: &mut Vec<u8>| {
            head.clear();
            let plan =
                respond(&request, &fixture.root, &Rules::NONE, &fixture.date, (scratch, &mut codings), false, head);
            let sent = read_head(plan, head);
            assert_eq!((sent.status, sent.header("Content-Encoding")), (200, Some("br")));
            assert_eq!(sent.header("Vary"), Some("Accept-Encoding"));
            assert!(sent.header("ETag").is_some_and(|tag| tag.ends_with("-br\"")));
        };
        respond_once(&mut scratch, &mut head);
        let capacities = (scratch.capacity(), head.capacity());
        for _ in 0..50 {
            respond_once(&mut scratch, &mut head);
        }
        assert_eq!((scratch.capacity(), head.capacity()), capacities);
        assert_eq!(codings.stats.compressed, 1, "compressed once, served many");
    }

    #[test]
    fn digits_format_extremes() {
        assert_eq!(Digits::decimal(0).as_bytes(), b"0");
        assert_eq!(Digits::decimal(u64::MAX).as_bytes(), b"18446744073709551615");
        assert_eq!(Digits::hex(0).as_bytes(), b"0");
        assert_eq!(Digits::hex(u64::MAX).as_bytes(), b"ffffffffffffffff");
        assert_eq!(ETag::new(u64::MAX, u64::MAX, u64::MAX, Coding::Identity).as_bytes().len(), ETag::MAX_LEN - 5);
        assert_eq!(ETag::new(u64::MAX, u64::MAX, u64::MAX, Coding::Zstd).as_bytes().len(), ETag::MAX_LEN);
    }
}
