//! The harness's HTTP client: raw request bytes in, parsed responses out.
//!
//! A [`Conn`] is one connection with what it has read and not yet handed out, so
//! keep-alive and pipelined responses are read one after another, a HEAD answer is read
//! as a head alone, and a test can read part of a response, act, and read the rest.
//! Every read has a deadline; a [`Failure`] says what went wrong and how many bytes had
//! arrived since the request was sent. [`KeepAlive`] is a client library's kept
//! connection (reopened when the server closes it, with the usual one retry), and
//! [`get`] / [`request`] are one request on a connection of their own.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// Connect timeout, and the read and write timeouts a connection's socket starts with.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a one-shot request ([`get`], [`request`]) waits for its answer and the close.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 64 * 1024;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The server said `Connection: close`.
    pub fn closes(&self) -> bool {
        self.header("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Why no (whole) response arrived.
#[derive(Debug, Clone)]
pub struct Failure {
    /// "connect", "eof", "reset", "broken pipe", "refused", "timeout", "io error", or a
    /// test's own word (e.g. "bad response").
    pub kind: &'static str,
    /// Bytes received since the request was sent.
    pub received: usize,
    pub detail: String,
}

impl Failure {
    fn io(e: &std::io::Error, received: usize, what: &str) -> Failure {
        Failure { kind: io_kind(e), received, detail: format!("{what}: {e}") }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} after {} bytes)", self.detail, self.kind, self.received)
    }
}

impl From<Failure> for std::io::Error {
    fn from(f: Failure) -> std::io::Error {
        let kind = match f.kind {
            "timeout" => std::io::ErrorKind::TimedOut,
            "eof" => std::io::ErrorKind::UnexpectedEof,
            "reset" => std::io::ErrorKind::ConnectionReset,
            "refused" => std::io::ErrorKind::ConnectionRefused,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, f.to_string())
    }
}

/// The word a [`Failure`] uses for an I/O error.
pub fn io_kind(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "reset",
        std::io::ErrorKind::BrokenPipe => "broken pipe",
        std::io::ErrorKind::ConnectionRefused => "refused",
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout",
        _ => "io error",
    }
}

/// How a connection ended when read to the end.
#[derive(Debug, Default, Clone)]
pub struct Ending {
    /// Everything received (what was buffered before included).
    pub bytes: Vec<u8>,
    /// EOF (orderly close) rather than a reset.
    pub eof: bool,
    /// The server had neither closed nor had anything more to read once the limit passed.
    pub timed_out: bool,
    pub took: Duration,
}

/// One client connection and the bytes read on it not yet taken as a response. Derefs
/// to its `TcpStream` for raw writes, shutdowns and timeouts; the reads below wait with
/// poll(2), so they leave the socket's own timeouts alone.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    received: usize,
}

impl Conn {
    /// Connects within [`IO_TIMEOUT`]; read and write timeouts [`IO_TIMEOUT`], no Nagle.
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        Conn::open_within(addr, IO_TIMEOUT)
    }

    /// Connects within `timeout`, which also becomes the socket's read and write timeout.
    pub fn open_within(addr: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        Conn::wrap(TcpStream::connect_timeout(&addr, timeout)?, timeout)
    }

    /// A connection whose receive buffer cannot grow (loopback autotuning would otherwise
    /// take a whole 10 MiB response), so a server writing to it that is not read blocks.
    pub fn open_small_rcvbuf(addr: SocketAddr) -> std::io::Result<Conn> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_recv_buffer_size(16 * 1024)?;
        socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
        Conn::wrap(socket.into(), IO_TIMEOUT)
    }

    fn wrap(stream: TcpStream, timeout: Duration) -> std::io::Result<Conn> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::new(), received: 0 })
    }

    /// Writes one request (or several, pipelined); counts what arrives from now on.
    pub fn send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.received = 0;
        self.stream.write_all(raw)
    }

    /// Bytes received since the last `send`.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Bytes received and not yet taken as a response.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next response, framed by Content-Length (see [`parse_response`]), waiting at
    /// most `limit` for it.
    pub fn response(&mut self, limit: Duration) -> Result<Response, Failure> {
        self.next(limit, parse_response)
    }

    /// The next response as a head alone (a HEAD or 304 answer has no body).
    pub fn head_response(&mut self, limit: Duration) -> Result<Response, Failure> {
        self.next(limit, parse_head)
    }

    fn next(&mut self, limit: Duration, parse: fn(&[u8]) -> Option<(Response, usize)>) -> Result<Response, Failure> {
        self.read_for(limit, "a whole response", |buf| {
            let (response, used) = parse(buf)?;
            buf.drain(..used);
            Some(response)
        })
    }

    /// Reads until at least `n` bytes are buffered (the start of a long response, say),
    /// waiting at most `limit`.
    pub fn read_at_least(&mut self, n: usize, limit: Duration) -> Result<&[u8], Failure> {
        self.read_for(limit, &format!("{n} bytes"), |buf| (buf.len() >= n).then_some(()))?;
        Ok(&self.buf)
    }

    /// Reads until `take` finds what it wants in the buffer (`wanted` names it for a
    /// failure), waiting at most `limit`.
    fn read_for<T>(
        &mut self,
        limit: Duration,
        wanted: &str,
        mut take: impl FnMut(&mut Vec<u8>) -> Option<T>,
    ) -> Result<T, Failure> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = take(&mut self.buf) {
                return Ok(found);
            }
            let (kind, detail) = match self.read_some(deadline) {
                Ok(Some(0)) => ("eof", format!("closed before {wanted}")),
                Ok(Some(_)) => continue,
                Ok(None) => ("timeout", format!("not {wanted} within {limit:?}")),
                Err(e) => return Err(Failure::io(&e, self.received, "read")),
            };
            return Err(Failure { kind, received: self.received, detail });
        }
    }

    /// Everything until the server closes (what was buffered first), giving up once
    /// `limit` has passed and nothing more is there to read.
    pub fn read_to_close(&mut self, limit: Duration) -> Ending {
        let started = Instant::now();
        let mut end = Ending::default();
        loop {
            match self.read_some(started + limit) {
                Ok(Some(0)) => {
                    end.eof = true;
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    end.timed_out = true;
                    break;
                }
                Err(_) => break,
            }
        }
        end.bytes = std::mem::take(&mut self.buf);
        end.took = started.elapsed();
        end
    }

    /// Waits until there is something to read, or `deadline` (None: it passed with
    /// nothing to read), then reads once into the buffer (Some(0): EOF).
    fn read_some(&mut self, deadline: Instant) -> std::io::Result<Option<usize>> {
        use nix::poll::{poll, PollFd, PollFlags};
        use std::os::fd::AsFd;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up, so a wait never ends just short of the deadline.
            let ms = u16::try_from(left.as_micros().div_ceil(1000).min(60_000)).unwrap_or(60_000);
            let mut fds = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(0) if left.is_zero() => return Ok(None),
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            let at = self.buf.len();
            self.buf.resize(at + READ_CHUNK, 0);
            let read = self.stream.read(&mut self.buf[at..]);
            self.buf.truncate(at + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(n) => {
                    self.received += n;
                    return Ok(Some(n));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Deref for Conn {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// A connection (see [`Conn::open`]); failing to connect fails the test.
pub fn connect(addr: SocketAddr) -> Conn {
    Conn::open(addr).expect("connect")
}

/// A connection with a small receive buffer (see [`Conn::open_small_rcvbuf`]).
pub fn connect_small_rcvbuf(addr: SocketAddr) -> Conn {
    Conn::open_small_rcvbuf(addr).expect("connect with a small receive buffer")
}

/// GET `path` on a new connection with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"))
}

/// Sends raw bytes on a new connection and reads the response until the server closes.
pub fn request(addr: SocketAddr, raw: &str) -> std::io::Result<Response> {
    request_within(addr, raw.as_bytes(), REQUEST_LIMIT)
}

/// `request` for a caller with a deadline of its own (a probe): connect, answer and
/// close within `limit`.
pub fn request_within(addr: SocketAddr, raw: &[u8], limit: Duration) -> std::io::Result<Response> {
    let mut conn = Conn::open_within(addr, limit.min(IO_TIMEOUT))?;
    conn.send(raw)?;
    let end = conn.read_to_close(limit);
    let lossy = || String::from_utf8_lossy(&end.bytes[..end.bytes.len().min(600)]).into_owned();
    if end.timed_out {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("not closed in {limit:?}: {:?}", lossy()),
        ));
    }
    if !end.eof {
        return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, format!("reset: {:?}", lossy())));
    }
    parse_response(&end.bytes)
        .map(|(r, _)| r)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", lossy())))
}

/// A client's kept-alive connection: opened on first use, and again after the server
/// said `Connection: close` or a request on it failed.
pub struct KeepAlive {
    addr: SocketAddr,
    /// For each response (and each write).
    limit: Duration,
    conn: Option<Conn>,
    /// The last response said close: the next request opens a new connection.
    closing: bool,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr, limit: Duration) -> KeepAlive {
        KeepAlive { addr, limit, conn: None, closing: false }
    }

    /// Whether the next request goes on a connection that already carried one.
    pub fn reused(&self) -> bool {
        self.conn.is_some() && !self.closing
    }

    /// Sends one request and reads its response.
    pub fn exchange(&mut self, raw: &[u8]) -> Result<Response, Failure> {
        if std::mem::take(&mut self.closing) {
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let opened = Conn::open(self.addr)
                    .and_then(|c| c.set_write_timeout(Some(self.limit)).map(|_| c))
                    .map_err(|e| Failure { kind: "connect", received: 0, detail: e.to_string() })?;
                self.conn.insert(opened)
            }
        };
        let result = conn.send(raw).map_err(|e| Failure::io(&e, 0, "write")).and_then(|_| conn.response(self.limit));
        match &result {
            Ok(r) => self.closing = r.closes(),
            Err(_) => self.conn = None,
        }
        result
    }

    /// `exchange` as client libraries do it: a request on a reused connection that fails
    /// before any byte of its response arrives (the server closed the connection as the
    /// request went out), and not by a timeout, is retried once on a new connection.
    /// Returns the outcome, and the first attempt's failure if there was a retry.
    pub fn exchange_retrying(&mut self, raw: &[u8]) -> (Result<Response, Failure>, Option<Failure>) {
        let reused = self.reused();
        match self.exchange(raw) {
            Err(first) if reused && first.received == 0 && first.kind != "timeout" => (self.exchange(raw), Some(first)),
            result => (result, None),
        }
    }

    /// Bytes received for the last request.
    pub fn received(&self) -> usize {
        self.conn.as_ref().map_or(0, Conn::received)
    }

    /// Bytes received after the last response (a server that sends more than it was
    /// asked for).
    pub fn extra(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.buffered().len())
    }

    /// Drops the connection: the next request opens a new one.
    pub fn close(&mut self) {
        self.conn = None;
    }
}

/// Parses one response from the start of `buf`; returns it and the bytes it used.
/// The body length comes from Content-Length (absent: the rest of the buffer).
pub fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    let (mut response, head_end) = parse_head(buf)?;
    let len = response.header("Content-Length").and_then(|v| v.parse::<usize>().ok());
    let body_len = match len {
        Some(n) if response.status != 304 => n,
        Some(_) => 0,
        None => buf.len() - head_end,
    };
    if buf.len() < head_end + body_len {
        return None;
    }
    response.body = buf[head_end..head_end + body_len].to_vec();
    Some((response, head_end + body_len))
}

/// Parses a response head only (HEAD and 304 answers carry no body); returns it and the
/// head's length.
pub fn parse_head(buf: &[u8]) -> Option<(Response, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    Some((Response { status, headers, body: Vec::new() }, head_end))
}

/// The status code of the response `bytes` start with, from its status line alone.
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("HTTP/1.")?.split_whitespace().nth(1)?.parse().ok()
}
