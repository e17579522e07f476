//! The admin endpoint's event loop: one thread, one `mio::Poll`, every connection
//! non-blocking, every resource bounded.
//!
//! Bounds, all in [`Limits`]:
//! - open connections: at the cap, a new connection evicts the oldest one, so a client
//!   that holds many connections open can delay nobody (it only loses its oldest ones);
//! - request head: at most `max_head_bytes` buffered per connection (431 beyond);
//! - time: a connection must send a whole head and take its response within
//!   `idle_timeout` of being accepted or of its previous response (slow or idle clients
//!   are closed at that deadline);
//! - descriptors: when `accept` fails for want of fds or memory (EMFILE, ENFILE,
//!   ENOBUFS, ENOMEM) the loop stops accepting for `accept_pause` instead of spinning,
//!   and keeps serving the connections it has;
//! - fairness: one connection is served at most `REQUESTS_PER_TURN` pipelined requests
//!   before the others get their turn.
//!
//! Closing follows a response with a lingering close: shut down our side, then read and
//! drop what the client still sends for a short while, so a close never turns into a
//! reset that destroys the response in flight.

use super::http::{self, Head};
use super::routes::Endpoints;
use crate::event_loop::{EventLoop, IndexTokens, IntakePause, Slab, Wake};
use crate::http1::{Linger, Lingering};
use crate::sys::retry_eintr;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

/// Bounds on what clients of the admin endpoint can make it hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; a new one beyond this evicts the oldest.
    pub max_connections: usize,
    /// Largest request head (request line and headers) buffered.
    pub max_head_bytes: usize,
    /// Time allowed for a whole exchange (head in, response out), and for idling between
    /// keep-alive requests.
    pub idle_timeout: Duration,
    /// How long a closing connection's leftover input is read and dropped.
    pub linger_timeout: Duration,
    /// How long accepting stops when the process is out of descriptors.
    pub accept_pause: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_head_bytes: 8 * 1024,
            idle_timeout: Duration::from_secs(10),
            linger_timeout: crate::http1::LINGER_TIME,
            accept_pause: Duration::from_millis(100),
        }
    }
}

/// Pipelined requests served on one connection before the others get a turn.
const REQUESTS_PER_TURN: usize = 32;
/// Connections accepted in one go before the open ones get a turn.
const ACCEPTS_PER_TURN: usize = 256;
/// Size of each read from a socket.
const READ_CHUNK: usize = 4096;

/// The server's poll tokens.
struct Tokens {
    listener: Token,
    conns: IndexTokens,
}

/// Stops a running server from another thread.
#[derive(Clone)]
pub struct StopSwitch {
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    waker: std::sync::Arc<mio::Waker>,
}

impl StopSwitch {
    pub fn stop(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::Release);
        let _ = self.waker.wake();
    }

    fn stopped(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The admin server: listener, connections and the handlers they reach.
pub struct Server {
    event_loop: EventLoop,
    tokens: Tokens,
    listener: TcpListener,
    endpoints: Endpoints,
    limits: Limits,
    conns: Connections,
    /// Accepting paused after a failed `accept` (fd exhaustion), and the run of failures.
    accept_pause: IntakePause,
    /// The backlog may hold more connections than the last turn accepted.
    accept_more: bool,
    /// No earlier deadline than this exists among the connections.
    next_sweep: Instant,
    /// Connections that used up their turn with requests still buffered.
    unfinished: Vec<usize>,
    stop: StopSwitch,
}

impl Server {
    /// Wraps a bound, non-blocking listener; nothing runs until [`Server::run`].
    pub fn new(listener: std::net::TcpListener, endpoints: Endpoints, limits: Limits) -> io::Result<Server> {
        let mut event_loop = EventLoop::new(256)?;
        let mut listener = TcpListener::from_std(listener);
        let listener_token = event_loop.watch_source(&mut listener, Interest::READABLE)?;
        // Wakes the loop to notice a stop request; its events need no handling.
        let (_, waker) = event_loop.waker()?;
        let tokens = Tokens { listener: listener_token, conns: event_loop.index_tokens() };
        let next_sweep = Instant::now() + limits.idle_timeout;
        let stop = StopSwitch { flag: std::sync::Arc::default(), waker: std::sync::Arc::new(waker) };
        Ok(Server {
            stop,
            event_loop,
            tokens,
            listener,
            endpoints,
            limits,
            conns: Connections::default(),
            accept_pause: IntakePause::default(),
            accept_more: false,
            next_sweep,
            unfinished: Vec::new(),
        })
    }

    /// A handle that makes [`Server::run`] return.
    pub fn stop_switch(&self) -> StopSwitch {
        self.stop.clone()
    }

    /// Serves until the process exits or the stop switch is used.
    pub fn run(mut self) {
        while !self.stop.stopped() {
            if let Err(e) = self.event_loop.wait(self.next_wakeup()) {
                tracing::error!(error = %e, "admin endpoint: poll failed");
                std::thread::sleep(self.limits.accept_pause);
                continue;
            }
            let now = Instant::now();
            while let Some(ready) = self.event_loop.next_ready() {
                self.dispatch(ready.token, now);
            }
            for slot in std::mem::take(&mut self.unfinished) {
                self.drive(slot, now);
            }
            self.resume_accepting(now);
            self.sweep(now);
        }
    }

    fn next_wakeup(&self) -> Wake {
        if !self.unfinished.is_empty() || (self.accept_more && !self.accept_pause.is_waiting()) {
            return Wake::Now;
        }
        Wake::At(self.next_sweep).or_at_any(self.accept_pause.until())
    }

    fn dispatch(&mut self, token: Token, now: Instant) {
        if token == self.tokens.listener {
            // While paused, resume_accepting retries when the pause ends.
            if !self.accept_pause.is_waiting() {
                self.accept_more = false;
                self.accept_all(now);
            }
        } else if let Some(slot) = self.tokens.conns.index(token) {
            self.drive(slot, now);
        } // else the waker: the loop looks at the stop switch
    }

    /// Accepts until the backlog is empty (the listener is edge-triggered, so a backlog
    /// left non-empty is remembered in `accept_more`) or the turn is used up.
    fn accept_all(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_TURN {
            match retry_eintr(|| self.listener.accept()) {
                Ok((stream, _peer)) => {
                    self.accept_recovered();
                    self.admit(stream, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_recovered();
                    return;
                }
                Err(e) if is_transient(&e) => continue,
                Err(e) => {
                    self.pause_accepting(&e, now);
                    return;
                }
            }
        }
        self.accept_more = true;
    }

    /// Stops accepting for a while; logs the first failure of a run, then one line a
    /// minute at most, so fd exhaustion cannot flood the log.
    fn pause_accepting(&mut self, e: &io::Error, now: Instant) {
        if let Some(count) = self.accept_pause.stalled(now, Some(self.limits.accept_pause)) {
            let pause_ms = self.limits.accept_pause.as_millis() as u64;
            if crate::sys::net::is_fd_exhaustion(e) {
                tracing::warn!(error = %e, pause_ms, failures = count, open = self.conns.open(),
                    "admin endpoint: out of descriptors or memory; pausing accept");
            } else {
                tracing::error!(error = %e, pause_ms, failures = count, "admin endpoint: accept failed; pausing accept");
            }
        }
        // No event may come for connections already queued: retry when the pause ends.
        self.accept_more = true;
    }

    fn accept_recovered(&mut self) {
        if let Some(failures) = self.accept_pause.recovered() {
            tracing::info!(failures, "admin endpoint: accepting again");
        }
    }

    /// Retries accepting after a pause or a used-up turn.
    fn resume_accepting(&mut self, now: Instant) {
        self.accept_pause.expire(now);
        if self.accept_more && !self.accept_pause.is_waiting() {
            self.accept_more = false;
            self.accept_all(now);
        }
    }

    fn admit(&mut self, stream: TcpStream, now: Instant) {
        if self.conns.open() >= self.limits.max_connections {
            if let Some(slot) = self.conns.oldest() {
                tracing::debug!(slot, "admin endpoint: connection cap reached; closing the oldest");
                self.close(slot);
            }
        }
        let deadline = now + self.limits.idle_timeout;
        let slot = self.conns.insert(Conn::new(stream, deadline));
        let Some(conn) = self.conns.get_mut(slot) else { return };
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.event_loop.registry().register(&mut conn.stream, self.tokens.conns.token(slot), interest) {
            tracing::warn!(error = %e, "admin endpoint: cannot watch a connection; closing it");
            self.conns.remove(slot);
            return;
        }
        self.next_sweep = self.next_sweep.min(deadline);
        // Edge-triggered: the request may already be here, with no event to come for it.
        self.drive(slot, now);
    }

    /// Moves one connection as far as it can go without blocking.
    fn drive(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(slot) else { return };
        match conn.advance(&self.endpoints, &self.limits, now) {
            Step::Wait => {
                self.next_sweep = self.next_sweep.min(conn.deadline);
            }
            Step::Unfinished => self.unfinished.push(slot),
            Step::Close => self.close(slot),
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.remove(slot) {
            // Dropping the stream closes it; deregistering first keeps the poll clean.
            let _ = self.event_loop.registry().deregister(&mut conn.stream);
        }
    }

    /// Closes connections past their deadline; runs only when one may be.
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        let expired: Vec<usize> = self.conns.iter().filter(|(_, c)| c.deadline <= now).map(|(slot, _)| slot).collect();
        for slot in expired {
            self.close(slot);
        }
        let earliest = self.conns.iter().map(|(_, c)| c.deadline).min();
        self.next_sweep = earliest.unwrap_or(now + self.limits.idle_timeout);
    }
}

/// `accept` errors that concern only the connection being accepted.
fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset)
        || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

/// What a connection waits for after a turn.
enum Step {
    /// Readiness of its socket (or its deadline).
    Wait,
    /// Nothing: it has requests buffered but used up its turn.
    Unfinished,
    /// Its end: close it now.
    Close,
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    /// Received bytes not yet parsed (at most `max_head_bytes`).
    input: Vec<u8>,
    /// The response being sent, and how much of it the kernel took.
    output: Vec<u8>,
    written: usize,
    /// Close once `output` is sent.
    close_after_output: bool,
    /// Our side is shut down; input is read and dropped until EOF.
    lingering: Option<Linger>,
    deadline: Instant,
}

impl Conn {
    fn new(stream: TcpStream, deadline: Instant) -> Conn {
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            close_after_output: false,
            lingering: None,
            deadline,
        }
    }

    /// Sends pending output, serves buffered requests, reads more: until the socket
    /// would block, the turn is used up, or the connection is done.
    fn advance(&mut self, endpoints: &Endpoints, limits: &Limits, now: Instant) -> Step {
        let mut served = 0;
        loop {
            if let Some(linger) = self.lingering.as_mut() {
                return match linger.drain(&self.stream) {
                    Lingering::Waiting => Step::Wait,
                    Lingering::Over => Step::Close,
                };
            }
            match self.flush() {
                Ok(true) => {}
                Ok(false) => return Step::Wait,
                Err(_) => return Step::Close,
            }
            if !self.output.is_empty() {
                self.finish_response(limits, now);
                continue;
            }
            if served == REQUESTS_PER_TURN {
                return Step::Unfinished;
            }
            if self.serve_buffered(endpoints, limits.max_head_bytes) {
                served += 1;
                continue;
            }
            match self.read_more(limits.max_head_bytes) {
                Ok(true) => {}
                Ok(false) => return Step::Close, // EOF before a whole head
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(_) => return Step::Close,
            }
        }
    }

    /// Writes pending output; `Ok(true)` once all of it is sent.
    fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.output.len() {
            match retry_eintr(|| self.stream.write(&self.output[self.written..])) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// After a response is sent: start the next exchange, or start closing.
    fn finish_response(&mut self, limits: &Limits, now: Instant) {
        self.output.clear();
        self.written = 0;
        if self.close_after_output {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.input.clear();
            self.lingering = Some(Linger::default());
            self.deadline = self.deadline.min(now + limits.linger_timeout);
        } else {
            self.deadline = now + limits.idle_timeout;
        }
    }

    /// Answers the request at the head of `input`, if a whole one is there.
    fn serve_buffered(&mut self, endpoints: &Endpoints, max_head: usize) -> bool {
        match http::parse(&self.input, max_head) {
            Head::Partial => false,
            Head::Invalid(response) => {
                response.encode(&mut self.output, false, true);
                self.close_after_output = true;
                true
            }
            Head::Complete(request) => {
                self.input.drain(..request.len);
                let response = endpoints.respond(&request.method, &request.path);
                response.encode(&mut self.output, request.method == "HEAD", !request.keep_alive);
                self.close_after_output = !request.keep_alive;
                true
            }
        }
    }

    /// Reads one chunk into `input`; `Ok(false)` at EOF.
    fn read_more(&mut self, max_head: usize) -> io::Result<bool> {
        let mut chunk = [0u8; READ_CHUNK];
        // `input` holds less than `max_head` here: a full buffer was refused with 431.
        let room = max_head.saturating_sub(self.input.len()).clamp(1, READ_CHUNK);
        let n = retry_eintr(|| self.stream.read(&mut chunk[..room]))?;
        self.input.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }
}

/// Open connections by slot (a slot's token comes from `Tokens::conns`), and their
/// accept order for eviction.
#[derive(Default)]
struct Connections {
    slots: Slab<(u64, Conn)>,
    /// (slot, serial) in accept order; entries of closed connections are skipped.
    order: VecDeque<(usize, u64)>,
    next_serial: u64,
}

impl Connections {
    fn insert(&mut self, conn: Conn) -> usize {
        self.next_serial += 1;
        let slot = self.slots.insert((self.next_serial, conn));
        self.order.push_back((slot, self.next_serial));
        if self.order.len() > 2 * self.slots.slots() + 16 {
            self.compact_order();
        }
        slot
    }

    fn open(&self) -> usize {
        self.slots.len()
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slots.get_mut(slot).map(|(_, c)| c)
    }

    fn remove(&mut self, slot: usize) -> Option<Conn> {
        self.slots.remove(slot).map(|(_, c)| c)
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &Conn)> {
        self.slots.iter().map(|(slot, (_, c))| (slot, c))
    }

    fn is_live(&self, slot: usize, serial: u64) -> bool {
        self.slots.get(slot).is_some_and(|(s, _)| *s == serial)
    }
    /// The slot of the longest-open connection.
    fn oldest(&mut self) -> Option<usize> {
        while let Some((slot, serial)) = self.order.pop_front() {
            if self.is_live(slot, serial) {
                return Some(slot);
            }
        }
        None
    }

    /// Drops the order entries of closed connections.
    fn compact_order(&mut self) {
        let order = std::mem::take(&mut self.order);
        self.order = order.into_iter().filter(|(slot, serial)| self.is_live(*slot, *serial)).collect();
    }
}
