//! One HTTP connection: read, parse, respond, write, repeat.
//!
//! Hot path. A connection holds its read and write buffers only while it reads a request
//! or writes a response: at the end of a turn with nothing half-read or unsent it gives
//! them back to the worker's [`BufferPool`] and takes a pair again on its next turn, so
//! an idle keep-alive connection holds none, and a steady one allocates nothing per
//! request. Pipelined requests are answered in order, their
//! responses batched into one write. Bodies up to `INLINE_BODY_MAX` are copied after
//! the head so a small response is a single `send`; larger ones go out with sendfile, or
//! with `send` from the compression cache's buffer for a body compressed on the fly.
//!
//! A request with a body is answered once the body has been read and discarded: only
//! then is it known that a chunked body stays within the cap (413 otherwise). While it
//! arrives, the head stays at the front of the read buffer and each piece of body is
//! dropped as soon as it is read; the head is parsed again for the answer. A client that
//! sent `Expect: 100-continue` gets `100 Continue` first, so it sends the body at all.
//! The whole request, head and body, must arrive within the header timeout; one begun
//! but not complete by then is answered `408` before the close.
//!
//! A TLS connection (`tls` set) runs the same machine over a [`Session`]: reads decrypt,
//! buffered output is encrypted and flushed, and a file body is read into the write
//! buffer a chunk at a time instead of sendfile (there is no kTLS here). A plain
//! connection pays one `Option` test per read and write for it.

use super::access_log::{self, Entry};
use super::body::{BodySkipper, Skip};
use super::buffers::BufferPool;
use super::encoding::Coding;
use super::records::{Records, ResponseRecord};
use super::request::{self, ErrorKind, Parsed, Request};
use super::response::{self, Body, Multipart, Plan};
use super::tls::Session;
use super::{Shared, Stats};
use crate::http1::{Linger, Lingering, LINGER_TIME};
use crate::ipc::{FileSpan, InProgress};
use crate::sys::retry_eintr;
use nix::sys::socket::{send, MsgFlags};
use std::fs::File;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bodies up to this size are read into the write buffer (one send with the head).
const INLINE_BODY_MAX: u64 = 16 * 1024;
/// Most requests one connection has answered per turn of the worker's loop: a client
/// that pipelines thousands cannot hold the worker (its heartbeats, its other
/// connections) until every one is answered; it is driven again on the next turn.
const REQUESTS_PER_TURN: u32 = 64;
/// Stop producing pipelined responses once this much output is waiting.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Largest sendfile call, so one big download does not monopolise the loop.
const SENDFILE_CHUNK: usize = 1 << 20;
/// A TLS connection's file body is read into the write buffer this much at a time (four
/// full TLS records; rustls buffers 64 KiB of records before it takes more).
const TLS_FILE_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Keep,
    Close,
    /// Its turn's share is used up with more to do: drive it again next turn (epoll,
    /// edge-triggered, would not report it again).
    Again,
}

/// The part of a response sent from a file: one span, or the parts of a multipart body.
struct FileBody {
    file: std::rc::Rc<File>,
    offset: i64,
    remaining: u64,
    /// For a multipart body: its layout, and which part is being sent.
    multipart: Option<(Box<Multipart>, usize)>,
}

impl FileBody {
    /// The current span is out: appends to `out` what follows it (the next part's head,
    /// or the closing delimiter), and moves to the next span. False when the body is done.
    fn next_part(&mut self, out: &mut Vec<u8>) -> bool {
        let Some((multipart, index)) = self.multipart.as_mut() else {
            return false;
        };
        *index += 1;
        let Some(&part) = multipart.parts().get(*index) else {
            multipart.push_close(out);
            return false;
        };
        multipart.push_part_head(*index, out);
        self.offset = part.first as i64;
        self.remaining = part.len();
        true
    }
}

/// The part of a response sent from memory (a body compressed on the fly, shared with the
/// worker's cache): `bytes[sent..end]` is still to go.
struct MemoryBody {
    bytes: Rc<[u8]>,
    sent: usize,
    end: usize,
}

/// A request whose head sits at `rbuf[rstart..rstart + head_len]` while its body is read.
struct PendingBody {
    head_len: usize,
    skipper: BodySkipper,
    /// Bytes of the `100 Continue` sent for it, counted with its response.
    interim_bytes: u64,
}

/// What one read of `Conn::fill` took.
struct Filled {
    len: usize,
    /// It landed in the connection's data slot: recorded by `Records::landed`.
    landed: bool,
}

/// A response produced but not yet fully written, for the statistics.
struct Unflushed {
    status: u16,
    coding: Coding,
    bytes: u64,
    started: Instant,
}

pub struct Conn {
    sock: TcpStream,
    /// TLS state, for a connection accepted on a TLS socket.
    tls: Option<Box<Session>>,
    /// Empty (no allocation) between turns when nothing is half-read; see `BufferPool`.
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Empty with no capacity between turns when nothing is unsent.
    wbuf: Vec<u8>,
    wpos: usize,
    body: Option<FileBody>,
    memory: Option<MemoryBody>,
    /// The request whose body is being read, if any.
    pending: Option<PendingBody>,
    close_after: bool,
    unflushed: Vec<Unflushed>,
    /// When the current (incomplete) request head started, for the header timeout.
    head_started: Option<Instant>,
    deadline: Instant,
    /// Requests this connection may still have answered in the current turn.
    turn_left: u32,
    /// The client's address, looked up only when the access log is on.
    peer: String,
    /// Requests this connection may still carry (`max_requests_per_connection`); the
    /// response to the last one closes it.
    requests_left: u32,
    /// An error response was sent with input possibly unread: close gracefully.
    linger_on_close: bool,
    /// Half-closed, draining input until EOF.
    lingering: Option<Linger>,
    /// A response has been sent in full: from then on, silence means the client is idle.
    answered: bool,
    /// Bytes written on the connection since it was opened (by this worker, or before it
    /// came here, as the kernel counted them): where each response begins, for the record.
    sent: u64,
    /// Bytes read from the socket since it was opened (by this worker, or before it came
    /// here, as the kernel counted them): a successor compares it with the kernel's count
    /// to know that no byte read by a dead worker went unrecorded.
    read: u64,
    /// The last read took less than it had room for: the socket was empty then, and any
    /// byte arriving since raises a new edge-triggered event, so reading again before
    /// that event would only say EAGAIN (a syscall saved per keep-alive request).
    drained: bool,
    /// Worker deaths the request being read or answered was in progress for (a rescue's).
    deaths: u32,
    /// The last response produced, whole in the write buffer and not yet recorded: it
    /// is recorded only if it cannot be written at once (see [`Conn::record_response`]).
    unrecorded: Option<Unrecorded>,
}

/// A response whose bytes are all in the write buffer from `head_at`.
#[derive(Clone, Copy)]
struct Unrecorded {
    head_at: usize,
    status: u16,
    coding: Coding,
}

impl Conn {
    pub fn new(fd: OwnedFd, tls: Option<Box<Session>>, shared: &Shared, now: Instant) -> Conn {
        // TCP_NODELAY is inherited from the listening socket.
        let sock = TcpStream::from(fd);
        let peer = match shared.access_log {
            Some(_) => sock.peer_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "-".into()),
            None => String::new(),
        };
        Conn {
            peer,
            requests_left: shared.max_requests_per_connection,
            linger_on_close: false,
            lingering: None,
            answered: false,
            sent: 0,
            read: 0,
            drained: false,
            deaths: 0,
            unrecorded: None,
            sock,
            tls,
            rbuf: Vec::new(),
            rstart: 0,
            rend: 0,
            wbuf: Vec::new(),
            wpos: 0,
            body: None,
            memory: None,
            pending: None,
            close_after: false,
            unflushed: Vec::new(),
            head_started: Some(now),
            deadline: now + shared.header_timeout,
            turn_left: REQUESTS_PER_TURN,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// A connection another worker handed over: `carried` is what it had read and not
    /// processed, taken as if just read here. With nothing carried it is an idle
    /// keep-alive connection (the keep-alive timeout, not the header timeout, applies).
    pub fn take_carried(&mut self, carried: &[u8], shared: &Shared, now: Instant) {
        if carried.is_empty() {
            self.head_started = None;
            self.deadline = now + shared.keepalive_timeout;
            return;
        }
        // Idle connections hold no buffer (the pool has it): room for the rest of the head too.
        let room = carried.len().max(super::buffers::READ_BUF_INITIAL);
        if self.rbuf.len() < room {
            self.rbuf.resize(room, 0);
        }
        self.rbuf[..carried.len()].copy_from_slice(carried);
        self.rend = carried.len();
    }

    /// At a request boundary, so a retiring worker may hand it to another: plain, every
    /// response written, no body being read, not closing. Bytes of a next request may
    /// have been read ([`Conn::unprocessed`]); they travel with it.
    pub fn can_hand_over(&self) -> bool {
        self.tls.is_none()
            && self.lingering.is_none()
            && self.pending.is_none()
            && !self.close_after
            && self.unflushed.is_empty()
            && !self.has_output()
    }

    /// Arrived from elsewhere (handed over or rescued): `written` bytes had been written
    /// on it, as the kernel counts them.
    pub fn written_before(&mut self, written: u64) {
        self.sent = written;
    }

    /// Arrived from elsewhere: `read` bytes had been read from it (the bytes carried
    /// with it among them), as the kernel counts them.
    pub fn read_before(&mut self, read: u64) {
        self.read = read;
    }

    /// A rescued connection whose request (in `carried`, taken with [`Conn::take_carried`])
    /// was in progress in `deaths` worker deaths.
    pub fn in_progress_in(&mut self, deaths: u32) {
        self.deaths = deaths;
    }

    /// A rescued connection that had been answered before: idle, not owed a first answer.
    pub fn was_answered(&mut self) {
        self.answered = true;
    }

    /// Continues a dead worker's response from the byte the client has been sent: `p`
    /// bytes of it were written (`written` on the connection minus `head_start`). The rest
    /// of its bytes in memory go first, then the file's span from the right offset, only
    /// if `file` is the same, unchanged file; then the next request's bytes (`carried`).
    /// Err (close it) when the count does not place within this response, or the file
    /// changed or is missing.
    pub fn resume(
        &mut self,
        response: &InProgress,
        file: Option<File>,
        written: u64,
        shared: &mut Shared,
        now: Instant,
    ) -> Result<(), &'static str> {
        let done = written.checked_sub(response.head_start).ok_or("an earlier response was not all written")?;
        let memory = response.memory.len() as u64;
        let file_len = response.file.map_or(0, |span| span.len);
        if done > memory + file_len {
            return Err("more was written than the response holds");
        }
        if done < memory {
            self.wbuf.extend_from_slice(&response.memory[done as usize..]);
        }
        if let Some(span) = response.file {
            let skip = done.saturating_sub(memory);
            let file = file.ok_or("the body's file did not come with it")?;
            if !same_file(&file, &span) {
                return Err("the file changed since the response began");
            }
            if skip < span.len {
                let offset = i64::try_from(span.offset + skip).map_err(|_| "offset out of range")?;
                self.body = Some(FileBody {
                    file: std::rc::Rc::new(file),
                    offset,
                    remaining: span.len - skip,
                    multipart: None,
                });
            }
        }
        self.sent = written;
        self.head_started = None;
        self.close_after = response.close;
        shared.stats.request_started(now);
        let (status, coding) = (response.status, super::records::coding_of(response.coding));
        self.unflushed.push(Unflushed { status, coding, bytes: memory + file_len - done, started: now });
        if !self.has_output() {
            // Written in full before the death: only its accounting was left.
            self.flushed(&mut shared.stats, now);
        }
        // Recorded as it was, so a second death continues it too.
        let file = self.body.as_ref().zip(response.file).map(|(body, span)| (body.file.as_raw_fd(), span));
        let record = ResponseRecord {
            head_start: response.head_start,
            memory: &response.memory,
            file,
            status,
            coding: response.coding,
            close: response.close,
            leftover: self.unprocessed(),
            read: self.read,
        };
        shared.records.response(self.raw_fd(), &record);
        Ok(())
    }

    /// Records where this connection stands, for the keeper: between requests (or with a
    /// request read and not answered), leaving, or not to be continued.
    pub fn record(&self, records: &mut Records) {
        let fd = self.raw_fd();
        if self.tls.is_some() || self.pending.is_some() {
            records.lost(fd);
        } else if self.lingering.is_some() {
            records.leave(fd);
        } else {
            records.waiting(fd, self.sent, self.read, self.deaths, self.answered, self.unprocessed());
        }
    }

    /// Records the response just started (its head at `wbuf[head_at..]`): what a
    /// successor needs to continue it. A body from memory or in parts is not continued.
    /// One whose bytes are all in the buffer is recorded only once a write of it would
    /// block, the buffer still whole (it is cleared only once all of it is written): a
    /// death within the turn that produced and wrote it leaves the record of its request,
    /// whose byte count then no longer matches, and the connection is closed.
    fn record_response(&self, head_at: usize, status: u16, coding: Coding, records: &mut Records) {
        let fd = self.raw_fd();
        let file = match (&self.body, &self.memory) {
            (None, None) => None,
            (Some(body), None) if body.multipart.is_none() => match span_of(body) {
                Some(span) => Some((body.file.as_raw_fd(), span)),
                None => return records.lost(fd),
            },
            _ => return records.lost(fd),
        };
        // `wbuf[..wpos]` is written already: `sent` counts it.
        let head_start = (self.sent - self.wpos as u64) + head_at as u64;
        let record = ResponseRecord {
            head_start,
            memory: &self.wbuf[head_at..],
            file,
            status,
            coding: super::records::coding_code(coding),
            close: self.close_after,
            leftover: self.unprocessed(),
            read: self.read,
        };
        records.response(fd, &record);
    }

    /// Bytes read and not processed yet.
    pub fn unprocessed(&self) -> &[u8] {
        &self.rbuf[self.rstart..self.rend]
    }

    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Makes all the progress the socket allows, with buffers from the worker's pool for
    /// the turn; what it leaves unused goes back.
    pub fn drive(&mut self, shared: &mut Shared, now: Instant) -> Outcome {
        if self.lingering.is_some() {
            return self.drain_input();
        }
        self.take_buffers(&mut shared.buffers);
        let outcome = self.serve(shared, now);
        if outcome != Outcome::Again {
            self.give_back_buffers(&mut shared.buffers, outcome == Outcome::Close);
        }
        outcome
    }

    fn take_buffers(&mut self, pool: &mut BufferPool) {
        if self.rbuf.is_empty() {
            self.rbuf = pool.take_read();
        }
        if self.wbuf.capacity() == 0 {
            self.wbuf = pool.take_write();
        }
    }

    /// Gives back what this connection does not need while it waits: the read buffer
    /// unless it holds part of a request, the write buffer unless output is unsent; both
    /// when it closes or lingers (nothing in them will be used again).
    fn give_back_buffers(&mut self, pool: &mut BufferPool, closing: bool) {
        let done = closing || self.lingering.is_some();
        if done || (self.rstart == self.rend && self.pending.is_none()) {
            self.rstart = 0;
            self.rend = 0;
            pool.give_read(std::mem::take(&mut self.rbuf));
        }
        if done || (self.wpos == self.wbuf.len() && !self.body_pending()) {
            self.wpos = 0;
            pool.give_write(std::mem::take(&mut self.wbuf));
        }
    }

    fn serve(&mut self, shared: &mut Shared, now: Instant) -> Outcome {
        self.turn_left = REQUESTS_PER_TURN;
        loop {
            let needs_input = self.produce(shared, now);
            if self.has_output() {
                match self.write_out() {
                    // One clock read per flush: `now` is when this pass began, which
                    // would make a request served within one pass take no time at all.
                    Ok(true) => {
                        self.flushed(&mut shared.stats, Instant::now());
                        self.unrecorded = None;
                        if self.tls.is_none() {
                            self.record(&mut shared.records);
                        }
                    }
                    Ok(false) => {
                        if let Some(u) = self.unrecorded.take() {
                            self.record_response(u.head_at, u.status, u.coding, &mut shared.records);
                        }
                        // The client is slow to read: give it the keep-alive timeout
                        // per stretch without progress.
                        self.deadline = now + shared.keepalive_timeout;
                        return Outcome::Keep;
                    }
                    Err(_) => return Outcome::Close,
                }
                continue;
            }
            if self.close_after {
                if self.linger_on_close || self.rstart < self.rend || self.pending.is_some() {
                    return self.begin_linger(&mut shared.records, now);
                }
                return Outcome::Close;
            }
            if self.turn_left == 0 {
                return Outcome::Again;
            }
            if !needs_input {
                continue;
            }
            if std::mem::take(&mut self.drained) {
                self.set_wait_deadline(shared, now);
                return Outcome::Keep;
            }
            match self.fill(&mut shared.stats, &mut shared.records) {
                Ok(Filled { len: 0, .. }) => return Outcome::Close,
                Ok(Filled { len, landed }) => {
                    if let Some(text) = shared.crash_after_read.as_deref() {
                        crash_if_read(text, self.unprocessed());
                    }
                    if landed {
                        shared.records.landed(self.raw_fd(), self.read, len);
                    } else if self.tls.is_none() {
                        self.record(&mut shared.records);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.set_wait_deadline(shared, now);
                    return Outcome::Keep;
                }
                Err(_) => return Outcome::Close,
            }
        }
    }

    /// Answers every complete request already read, until output piles up or a large
    /// body is pending. Returns true when more input is needed to go on.
    fn produce(&mut self, shared: &mut Shared, now: Instant) -> bool {
        loop {
            if self.close_after || self.body_pending() || self.wbuf.len() >= WRITE_HIGH_WATER || self.turn_left == 0 {
                return false;
            }
            let head_start = self.wbuf.len();
            let Some((plan, interim_bytes)) = self.next_request(shared, now) else {
                return true;
            };
            self.head_started = None;
            self.turn_left -= 1;
            let head_bytes = (self.wbuf.len() - head_start) as u64 + interim_bytes;
            self.start_response(plan, head_start, head_bytes, shared, now);
        }
    }

    /// Answers the next request in the read buffer once it is complete, body included;
    /// `None` when more input is needed first. With the plan come the bytes of an interim
    /// `100 Continue` sent for it earlier, for its response's byte count.
    fn next_request(&mut self, shared: &mut Shared, now: Instant) -> Option<(Plan, u64)> {
        if self.pending.is_some() {
            return self.read_pending_body(shared, now);
        }
        if self.rstart == self.rend {
            return None;
        }
        let buf = &self.rbuf[self.rstart..self.rend];
        match request::parse(buf, &shared.limits) {
            Parsed::Complete { request, head_len } => {
                let exchange = exchange!(self, now);
                let Some(mut skipper) = BodySkipper::new(request.body) else {
                    let plan = answer(&request, shared, exchange, &mut self.wbuf);
                    self.rstart += head_len;
                    return Some((plan, 0));
                };
                match skipper.skip(&buf[head_len..], &shared.limits.body()) {
                    Skip::Done { used } => {
                        let plan = answer(&request, shared, exchange, &mut self.wbuf);
                        self.rstart += head_len + used;
                        Some((plan, 0))
                    }
                    Skip::More => {
                        // RFC 9110 §10.1.1: no need for 100 once some body is here
                        // uninvited, but a client may have sent a piece and be waiting.
                        let mut interim_bytes = 0;
                        if request.expect_continue {
                            self.wbuf.extend_from_slice(response::CONTINUE);
                            interim_bytes = response::CONTINUE.len() as u64;
                        }
                        self.rend = self.rstart + head_len; // the body read so far is skipped
                        self.pending = Some(PendingBody { head_len, skipper, interim_bytes });
                        self.head_started.get_or_insert(now);
                        None
                    }
                    Skip::Invalid(kind) => Some((self.reject(kind, shared), 0)),
                }
            }
            Parsed::Partial => {
                self.head_started.get_or_insert(now);
                None
            }
            Parsed::Invalid(kind) => Some((self.reject(kind, shared), 0)),
        }
    }

    /// Skips what arrived of the pending request's body; answers the request (its head
    /// parsed again) once the body is complete.
    fn read_pending_body(&mut self, shared: &mut Shared, now: Instant) -> Option<(Plan, u64)> {
        let pending = self.pending.as_mut()?;
        let (head_len, interim_bytes) = (pending.head_len, pending.interim_bytes);
        let body_start = self.rstart + head_len;
        match pending.skipper.skip(&self.rbuf[body_start..self.rend], &shared.limits.body()) {
            Skip::More => {
                self.rend = body_start;
                None
            }
            Skip::Done { used } => {
                self.pending = None;
                let exchange = exchange!(self, now);
                let plan = match request::parse(&self.rbuf[self.rstart..body_start], &shared.limits) {
                    Parsed::Complete { request, .. } => answer(&request, shared, exchange, &mut self.wbuf),
                    // The same bytes parsed before: cannot happen, and if it does, no guessing.
                    Parsed::Partial | Parsed::Invalid(_) => self.reject(ErrorKind::BadRequest, shared),
                };
                self.rstart = body_start + used;
                Some((plan, interim_bytes))
            }
            Skip::Invalid(kind) => Some((self.reject(kind, shared), interim_bytes)),
        }
    }

    /// A request that cannot be answered normally: its error, then a (lingering) close.
    fn reject(&mut self, kind: ErrorKind, shared: &mut Shared) -> Plan {
        self.rstart = self.rend;
        self.pending = None;
        self.linger_on_close = true;
        let mut plan = response::error_head(kind, &shared.date, &mut self.wbuf);
        plan.close = true;
        if let Some(log) = shared.access_log.as_mut() {
            let started = self.head_started.unwrap_or_else(Instant::now);
            let (status, coding) = (plan.status, Coding::Identity);
            log.record(&Entry {
                client: &self.peer,
                site: access_log::DEFAULT_SITE,
                request: None,
                status,
                bytes: 0,
                coding,
                started,
            });
        }
        plan
    }

    fn start_response(&mut self, plan: Plan, head_at: usize, head_bytes: u64, shared: &mut Shared, now: Instant) {
        shared.stats.request_started(now);
        self.deaths = 0;
        let body_bytes = plan.body_len();
        // A body the head promised but we cannot deliver: the only honest end is to
        // close after what was sent.
        let delivered = match plan.body {
            Body::None => true,
            Body::File { file, offset, len } if len <= INLINE_BODY_MAX => self.inline_body(&file, offset, len).is_ok(),
            Body::File { file, offset, len } => {
                self.body = Some(FileBody { file, offset: offset as i64, remaining: len, multipart: None });
                true
            }
            Body::Parts { file, multipart } if multipart.body_len() <= INLINE_BODY_MAX => {
                self.inline_parts(&file, &multipart).is_ok()
            }
            Body::Parts { file, multipart } => {
                self.start_parts(file, multipart);
                true
            }
            Body::Memory { bytes, offset, len } => self.start_memory(bytes, offset, len),
        };
        if !delivered {
            self.close_after = true;
        }
        if plan.close {
            self.close_after = true;
            self.linger_on_close |= plan.status >= 400;
        }
        let (status, coding) = (plan.status, plan.coding);
        self.unflushed.push(Unflushed { status, coding, bytes: head_bytes + body_bytes, started: now });
        self.unrecorded = None;
        match (self.tls.is_some(), delivered) {
            (true, _) => {} // recorded lost once, as it arrived
            // All in the buffer: it usually goes out in the same turn, and a record would
            // cost a copy of it; recorded only if the socket cannot take it at once.
            (false, true) if !self.body_pending() => self.unrecorded = Some(Unrecorded { head_at, status, coding }),
            (false, true) => self.record_response(head_at, status, coding, &mut shared.records),
            (false, false) => shared.records.lost(self.raw_fd()),
        }
    }

    fn inline_body(&mut self, file: &File, offset: u64, len: u64) -> io::Result<()> {
        let start = self.wbuf.len();
        self.wbuf.resize(start + len as usize, 0);
        let result = file.read_exact_at(&mut self.wbuf[start..], offset);
        if result.is_err() {
            self.wbuf.truncate(start);
        }
        result
    }

    /// A small multipart body, read whole into the write buffer.
    fn inline_parts(&mut self, file: &File, multipart: &Multipart) -> io::Result<()> {
        for (index, part) in multipart.parts().iter().enumerate() {
            multipart.push_part_head(index, &mut self.wbuf);
            self.inline_body(file, part.first, part.len())?;
        }
        multipart.push_close(&mut self.wbuf);
        Ok(())
    }

    /// A large multipart body: the first part's head goes out with the response head, its
    /// data and the rest with sendfile.
    fn start_parts(&mut self, file: std::rc::Rc<File>, multipart: Box<Multipart>) {
        let Some(&first) = multipart.parts().first() else { return };
        multipart.push_part_head(0, &mut self.wbuf);
        let multipart = Some((multipart, 0));
        self.body = Some(FileBody { file, offset: first.first as i64, remaining: first.len(), multipart });
    }

    /// A body from memory: a small one copied after the head, a larger one sent from the
    /// shared buffer. False if the range lies outside it (cannot happen: it was cut from
    /// this buffer's length).
    fn start_memory(&mut self, bytes: Rc<[u8]>, offset: u64, len: u64) -> bool {
        let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else { return false };
        let Some(end) = start.checked_add(len).filter(|&end| end <= bytes.len()) else { return false };
        if len as u64 <= INLINE_BODY_MAX {
            self.wbuf.extend_from_slice(&bytes[start..end]);
        } else {
            self.memory = Some(MemoryBody { bytes, sent: start, end });
        }
        true
    }

    /// A body follows the write buffer.
    fn body_pending(&self) -> bool {
        self.body.is_some() || self.memory.is_some()
    }

    fn has_output(&self) -> bool {
        self.wpos < self.wbuf.len() || self.body_pending() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes buffered output, then the file body (a multipart body's part heads go
    /// through the buffer between its spans). Ok(true) when all of it is out.
    fn write_out(&mut self) -> io::Result<bool> {
        loop {
            if !self.send_buffered()? {
                return Ok(false);
            }
            if let Some(memory) = self.memory.as_mut() {
                while memory.sent < memory.end {
                    let rest = &memory.bytes[memory.sent..memory.end];
                    match retry_eintr(|| send(self.sock.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL)) {
                        Ok(n) => {
                            memory.sent += n;
                            self.sent += n as u64;
                        }
                        Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                        Err(e) => return Err(e.into()),
                    }
                }
                self.memory = None;
                continue;
            }
            let Some(body) = self.body.as_mut() else {
                return Ok(true);
            };
            if self.tls.is_some() {
                // The buffer is empty: refill it from the file, and encrypt it next turn.
                if body.remaining > 0 {
                    let count = body.remaining.min(TLS_FILE_CHUNK as u64) as usize;
                    self.wbuf.resize(count, 0);
                    let n = retry_eintr(|| body.file.read_at(&mut self.wbuf, body.offset as u64))?;
                    self.wbuf.truncate(n);
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file truncated while sending"));
                    }
                    body.offset += n as i64;
                    body.remaining -= n as u64;
                } else if !body.next_part(&mut self.wbuf) {
                    self.body = None;
                }
                continue;
            }
            while body.remaining > 0 {
                let count = body.remaining.min(SENDFILE_CHUNK as u64) as usize;
                match retry_eintr(|| {
                    nix::sys::sendfile::sendfile64(self.sock.as_fd(), body.file.as_fd(), Some(&mut body.offset), count)
                }) {
                    // The file shrank under us: the promised length cannot be met.
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file truncated while sending")),
                    Ok(n) => {
                        body.remaining -= n as u64;
                        self.sent += n as u64;
                    }
                    Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                    Err(e) => return Err(e.into()),
                }
            }
            if !body.next_part(&mut self.wbuf) {
                self.body = None;
            }
        }
    }

    /// Sends the write buffer. Ok(false) when the socket is full.
    fn send_buffered(&mut self) -> io::Result<bool> {
        if let Some(tls) = self.tls.as_mut() {
            return send_encrypted(tls, &self.sock, &mut self.wbuf, &mut self.wpos);
        }
        while self.wpos < self.wbuf.len() {
            // More follows from the file: let the kernel merge it with the head.
            let flags =
                if self.body_pending() { MsgFlags::from_bits_retain(libc::MSG_MORE) } else { MsgFlags::empty() };
            match retry_eintr(|| send(self.sock.as_raw_fd(), &self.wbuf[self.wpos..], flags | MsgFlags::MSG_NOSIGNAL)) {
                Ok(n) => {
                    self.wpos += n;
                    self.sent += n as u64;
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(true)
    }

    fn flushed(&mut self, stats: &mut Stats, now: Instant) {
        self.answered |= !self.unflushed.is_empty();
        for u in self.unflushed.drain(..) {
            stats.request_finished(u.status, u.coding, u.bytes, now.saturating_duration_since(u.started), now);
        }
    }

    /// A close that cannot destroy the response in flight (`http1::Linger`): shut our
    /// side, then drain the client's input for a bounded time and amount.
    fn begin_linger(&mut self, records: &mut Records, now: Instant) -> Outcome {
        records.leave(self.raw_fd());
        if let Some(tls) = self.tls.as_mut() {
            tls.close_notify(&self.sock);
        }
        if self.sock.shutdown(std::net::Shutdown::Write).is_err() {
            return Outcome::Close;
        }
        self.lingering = Some(Linger::default());
        self.deadline = now + LINGER_TIME;
        self.drain_input()
    }

    fn drain_input(&mut self) -> Outcome {
        match self.lingering.as_mut().map(|linger| linger.drain(&self.sock)) {
            Some(Lingering::Waiting) => Outcome::Keep,
            Some(Lingering::Over) | None => Outcome::Close,
        }
    }

    /// Reads more request bytes, compacting or growing the buffer as needed. A plain
    /// connection's read of a request head lands in its data slot first, after the part
    /// already read (`Records::landing`): the caller records it with `Records::landed`.
    fn fill(&mut self, stats: &mut Stats, records: &mut Records) -> io::Result<Filled> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        } else if self.rend == self.rbuf.len() && self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rend == self.rbuf.len() {
            // Full of one incomplete head: grow (the parser turns oversize into 431).
            let grown = (self.rbuf.len() * 2).min(request::Limits::default().max_header_bytes * 2 + 1024);
            if grown <= self.rbuf.len() {
                return Err(io::Error::other("request head exceeds the read buffer"));
            }
            self.rbuf.resize(grown, 0);
        }
        if self.tls.is_none() && self.pending.is_none() {
            let head = self.unprocessed();
            if let Some(slot) = records.landing(self.raw_fd(), self.sent, self.read, self.deaths, self.answered, head) {
                let filled = self.fill_through(slot);
                if filled.is_err() {
                    records.landed(self.raw_fd(), self.read, 0); // nothing landed
                }
                return filled;
            }
        }
        let room = self.rbuf.len() - self.rend;
        let n = match self.tls.as_mut() {
            None => {
                let n = retry_eintr(|| (&self.sock).read(&mut self.rbuf[self.rend..]))?;
                self.drained = n > 0 && n < room;
                self.read += n as u64;
                n
            }
            Some(tls) => tls.read(&self.sock, &mut self.rbuf[self.rend..], &mut stats.figures.tls)?,
        };
        self.rend += n;
        Ok(Filled { len: n, landed: false })
    }

    /// The read of `fill` into the data slot, then copied to the read buffer.
    fn fill_through(&mut self, slot: &mut [u8]) -> io::Result<Filled> {
        let room = slot.len().min(self.rbuf.len() - self.rend);
        let n = retry_eintr(|| (&self.sock).read(&mut slot[..room]))?;
        self.rbuf[self.rend..self.rend + n].copy_from_slice(&slot[..n]);
        self.drained = n > 0 && n < room;
        self.read += n as u64;
        self.rend += n;
        Ok(Filled { len: n, landed: true })
    }

    /// Waiting for input: a started (or first) request head must complete within the
    /// header timeout, counted from its start so trickling bytes cannot extend it; an
    /// idle keep-alive connection gets the keep-alive timeout.
    fn set_wait_deadline(&mut self, shared: &Shared, now: Instant) {
        self.deadline = match self.head_started {
            Some(started) => started + shared.header_timeout,
            None => now + shared.keepalive_timeout,
        };
    }

    /// When the connection times out (for an idle one: its keep-alive deadline, so the
    /// earliest is the one longest without a request).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The deadline has passed. A request begun but not complete (part of a head, or a
    /// body still arriving) is answered `408` (RFC 9110 §15.5.9) before a lingering
    /// close; a silent or idle connection, a slow reader or a lingering one is closed.
    pub fn time_out(&mut self, shared: &mut Shared, now: Instant) -> Outcome {
        let request_begun =
            self.pending.is_some() || !request::skip_leading_empty_lines(&self.rbuf[self.rstart..self.rend]).is_empty();
        if self.lingering.is_some() || self.has_output() || !request_begun {
            return Outcome::Close;
        }
        self.answer_error(ErrorKind::RequestTimeout, shared, now)
    }

    /// Answers `kind`'s error with nothing else waiting to be sent (a timeout, or a poison
    /// request), then closes gracefully.
    pub fn answer_error(&mut self, kind: ErrorKind, shared: &mut Shared, now: Instant) -> Outcome {
        let head_at = self.wbuf.len();
        let plan = self.reject(kind, shared);
        let head_bytes = (self.wbuf.len() - head_at) as u64;
        self.start_response(plan, head_at, head_bytes, shared, now);
        // Nothing else was waiting to be sent, so the short head fits the socket at once.
        match self.write_out() {
            Ok(true) => self.flushed(&mut shared.stats, now),
            Ok(false) | Err(_) => return Outcome::Close,
        }
        self.begin_linger(&mut shared.records, now)
    }

    /// Between requests with nothing in flight: safe to close at a shutdown deadline. A
    /// connection that has not had its first answer is not idle: its request is on the
    /// way (the listener accepted it because a client connected to send one).
    pub fn is_idle(&self) -> bool {
        self.lingering.is_some()
            || (self.answered && self.rstart == self.rend && !self.has_output() && self.unflushed.is_empty())
    }

    /// Accounts for requests that die with the connection.
    pub fn finish(mut self, stats: &mut Stats, now: Instant) {
        if let Some(tls) = self.tls.as_mut() {
            tls.ended(&mut stats.figures.tls);
            if self.lingering.is_none() {
                tls.close_notify(&self.sock);
            }
        }
        if !self.unflushed.is_empty() {
            stats.requests_abandoned(self.unflushed.len() as u32, now);
        }
    }
}

/// Encrypts `wbuf[*wpos..]` and sends it with whatever TLS records wait. Ok(true) when
/// all is out (the buffer is cleared), Ok(false) when the socket is full.
fn send_encrypted(tls: &mut Session, sock: &TcpStream, wbuf: &mut Vec<u8>, wpos: &mut usize) -> io::Result<bool> {
    loop {
        if *wpos < wbuf.len() {
            *wpos += tls.write(&wbuf[*wpos..])?;
        }
        if !tls.flush(sock)? {
            return Ok(false);
        }
        if *wpos == wbuf.len() {
            wbuf.clear();
            *wpos = 0;
            return Ok(true);
        }
    }
}

/// A connection's `Exchange`, from its fields (a macro, not a method: the read and
/// write buffers are borrowed beside it).
macro_rules! exchange {
    ($conn:expr, $now:expr) => {
        Exchange {
            peer: &$conn.peer,
            sock: &$conn.sock,
            tls: $conn.tls.as_deref(),
            requests_left: &mut $conn.requests_left,
            started: $conn.head_started.unwrap_or($now),
        }
    };
}
use exchange;

/// What `answer` needs of the connection a request came on.
struct Exchange<'a> {
    /// The client's address, for the access log.
    peer: &'a str,
    /// The socket, for the address a redirect names when the request has no Host.
    sock: &'a TcpStream,
    /// The TLS session it came over: never redirected to HTTPS; its SNI name picks the
    /// site when the request names no host.
    tls: Option<&'a Session>,
    /// Counted down by each request; the one that takes the last makes its response close.
    requests_left: &'a mut u32,
    /// When the request began to arrive.
    started: Instant,
}

/// The `crash-after-read` fault: aborts if `read` holds `text` (a worker killed between a
/// read and its record).
fn crash_if_read(text: &[u8], read: &[u8]) {
    if !text.is_empty() && read.windows(text.len()).any(|w| w == text) {
        tracing::error!(text = %String::from_utf8_lossy(text), "injected fault: crashing before recording what was read");
        std::process::abort();
    }
}

/// Answers a complete request (its body, if any, already read) into `wbuf` from its site
/// (by Host, else the TLS session's SNI name), and logs it. A retiring worker closes a TLS
/// connection after its response (`close_tls`): unlike a plain one, it cannot be handed over.
fn answer(request: &Request<'_>, shared: &mut Shared, exchange: Exchange<'_>, wbuf: &mut Vec<u8>) -> Plan {
    let last = *exchange.requests_left <= 1;
    *exchange.requests_left = exchange.requests_left.saturating_sub(1);
    if shared.crash_on.as_deref().is_some_and(|path| path == request.target) {
        tracing::error!(path = %String::from_utf8_lossy(request.target), "injected fault: crashing on this path");
        std::process::abort();
    }
    let close = shared.force_close || last || (shared.close_tls && exchange.tls.is_some());
    let site = shared.sites.pick(request.target, request.host, exchange.tls.and_then(Session::server_name));
    let plan = match shared.https_redirect.as_ref().filter(|_| exchange.tls.is_none()) {
        Some(to)
            if to
                .location(
                    request.target,
                    request.host,
                    || Some(exchange.sock.local_addr().ok()?.ip()),
                    &mut shared.scratch,
                )
                .is_some() =>
        {
            response::redirect(request, 308, &shared.scratch, &shared.date, close, wbuf)
        }
        _ => {
            let buffers = (&mut shared.scratch, &mut shared.codings);
            response::respond(request, &site.root, &site.rules, &shared.date, buffers, close, wbuf)
        }
    };
    if let Some(log) = shared.access_log.as_mut() {
        log.record(&Entry {
            client: exchange.peer,
            site: &site.name,
            request: Some(request),
            status: plan.status,
            bytes: plan.body_len(),
            coding: plan.coding,
            started: exchange.started,
        });
    }
    plan
}

/// Answers a connection beyond the worker's cap with 503 and closes it.
pub fn refuse_overloaded(fd: OwnedFd, shared: &mut Shared) {
    const BODY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: webd\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n";
    let _ = send(fd.as_raw_fd(), BODY, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT);
    shared.stats.request_started(Instant::now());
    shared.stats.request_finished(503, Coding::Identity, BODY.len() as u64, Duration::ZERO, Instant::now());
}

/// The span a file body covers, with the file's identity now (one fstat, only for a body
/// too large to go out with its head).
fn span_of(body: &FileBody) -> Option<FileSpan> {
    use std::os::unix::fs::MetadataExt;
    let meta = body.file.metadata().ok()?;
    Some(FileSpan {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
        offset: u64::try_from(body.offset).ok()?,
        len: body.remaining,
    })
}

/// Whether `file` is the one `span` was recorded from, unchanged (device, inode, size
/// and modification time).
fn same_file(file: &File, span: &FileSpan) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().is_ok_and(|meta| {
        let mtime_ns = meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
        (meta.dev(), meta.ino(), meta.size(), mtime_ns) == (span.dev, span.ino, span.size, span.mtime_ns)
    })
}
