//! What a worker records per connection for its keeper: enough for a successor to carry
//! the connection on if the worker dies (SPEC section 8).
//!
//! Two `MAP_SHARED` tables the keeper shares (`sys::shared_table::SharedSlots`): a small
//! record (104 bytes) per descriptor number, where the kernel hands out the lowest free
//! numbers so the records in use stay few and dense and a connection needs no index of
//! its own; and a pool of page-sized slots for the bytes (a request read, a response
//! head), taken only while a connection has bytes in flight and given back when it goes
//! idle, so an idle connection touches 104 bytes, not a page, and the pages in use stay
//! as few as the connections busy at once. A record says one of:
//! - *waiting*: between requests, or a request received and not answered, with the
//!   bytes read and not processed (at most [`DATA`]; more is *lost*) and the count of
//!   response bytes written so far;
//! - *response*: a response in progress: the count of bytes written on the connection
//!   when its head began, its head and any small body (the bytes in memory), the span
//!   of the file its body comes from with the file's identity, and the bytes of the
//!   next request already read;
//! - *lost*: nothing can be continued (TLS, a body from memory, too large to record);
//! - *leave*: the connection is leaving (handed over, closing): the keeper leaves it.
//!
//! Waiting and response records also hold the count of bytes read from the socket so far:
//! a worker killed between a read and its record leaves a record that misses those bytes,
//! and the successor, finding the kernel's count (`sys::net::byte_counts`) higher, closes
//! the connection instead of waiting for a request that was already sent. That window is
//! closed for a plain connection's reads of a request head: the worker reads straight
//! into the connection's data slot, after the part of the head already read (copied there
//! first), its record saying *landing* first, so whatever moment a SIGKILL takes (during
//! the `recv`, or after it and before the record), the bytes the kernel counts as read
//! past the record are the ones after that part, and the keeper takes them from there
//! ([`read`]). What stays in the window: a read of a request body, and one of a head
//! past the slot's [`DATA`] bytes.
//!
//! Writing costs a few stores and one copy of the bytes (a request, or a response
//! head): no syscall. A slot is marked *writing* first and given its kind last, so a
//! worker killed mid-write leaves a slot that reads as lost, never a torn record.

use super::encoding::Coding;
use crate::ipc::{FileSpan, InProgress, Salvage};
use crate::sys::shared_table::SharedSlots;
use std::os::fd::RawFd;
use std::sync::atomic::{compiler_fence, Ordering};

/// Bytes per record (the state word, then the fields below).
const RECORD_SIZE: usize = 104;
/// Bytes per data slot (one page: the state word, unused, then the bytes).
const DATA_SLOT_SIZE: usize = 4096;
/// Data slots per worker: connections with bytes in flight at once; beyond, lost.
const DATA_SLOTS: usize = 1024;
/// No data slot.
const NO_DATA: u32 = u32::MAX;

const FREE: u32 = 0;
const WRITING: u32 = 1;
const WAITING: u32 = 2;
const RESPONSE: u32 = 3;
const LOST: u32 = 4;
const LEAVE: u32 = 5;

// Field offsets in a slot's bytes (little-endian).
const FD: usize = 0;
const DEATHS: usize = 4;
/// Waiting: response bytes written; response: bytes written when its head began.
const SENT: usize = 8;
const FLAGS: usize = 16;
const CODING: usize = 17;
const STATUS: usize = 18;
const MEMORY_LEN: usize = 20;
const CARRIED_LEN: usize = 24;
const FILE_FD: usize = 28;
const DEV: usize = 32;
const INO: usize = 40;
const SIZE: usize = 48;
const MTIME: usize = 56;
const OFFSET: usize = 64;
const LEN: usize = 72;
/// The data slot holding the bytes (the request, or the head and leftover).
const DATA_SLOT: usize = 80;
/// Bytes read from the socket when the record was written.
const READ: usize = 84;
/// Bytes a slot holds: request bytes, or a response's bytes in memory and the next
/// request's.
pub const DATA: usize = DATA_SLOT_SIZE - 8;

const ANSWERED: u8 = 1;
const CLOSE: u8 = 2;
const HAS_FILE: u8 = 4;
/// Waiting: a read may be landing in the data slot after the carried bytes (see the module
/// doc).
const LANDING: u8 = 8;

/// A response as a successor would continue it.
pub struct ResponseRecord<'a> {
    /// Bytes written on the connection when the head began.
    pub head_start: u64,
    /// The head and whatever body follows it in memory.
    pub memory: &'a [u8],
    /// The descriptor and span of the file the rest of the body comes from.
    pub file: Option<(RawFd, FileSpan)>,
    pub status: u16,
    pub coding: u8,
    pub close: bool,
    /// Bytes of the next request(s) already read.
    pub leftover: &'a [u8],
    /// Bytes read from the socket so far (the leftover among them).
    pub read: u64,
}

/// What a keeper reads: the records by descriptor, and the data slots.
pub struct Tables {
    records: SharedSlots,
    data: SharedSlots,
}

/// The worker's side of the tables; records nothing when it has none (no keeper).
#[derive(Default)]
pub struct Records {
    tables: Option<Tables>,
    /// Data slots not in use, the most recently freed last (its page is warm).
    free: Vec<u32>,
    /// The data slot each descriptor holds, or `NO_DATA`.
    held: Vec<u32>,
}

impl Records {
    /// Tables for descriptors below `capacity`.
    pub fn new(capacity: usize) -> std::io::Result<Records> {
        let slots = DATA_SLOTS.min(capacity);
        let tables = Tables {
            records: SharedSlots::new(capacity, RECORD_SIZE)?,
            data: SharedSlots::new(slots, DATA_SLOT_SIZE)?,
        };
        Ok(Records { tables: Some(tables), free: (0..slots as u32).rev().collect(), held: vec![NO_DATA; capacity] })
    }

    pub fn table(&self) -> Option<&Tables> {
        self.tables.as_ref()
    }

    /// The data slot for `fd`'s bytes: the one it holds, else a free one.
    fn data_slot(&mut self, fd: usize) -> Option<u32> {
        let held = *self.held.get(fd)?;
        if held != NO_DATA {
            return Some(held);
        }
        let slot = self.free.pop()?;
        self.held[fd] = slot;
        Some(slot)
    }

    /// `fd` has no bytes in flight any more: its data slot goes back to the pool. Called
    /// once its record no longer names the slot.
    fn release(&mut self, fd: usize) {
        if let Some(held) = self.held.get_mut(fd) {
            if *held != NO_DATA {
                self.free.push(std::mem::replace(held, NO_DATA));
            }
        }
    }

    /// Between requests, or a request read (`carried`) and not answered.
    pub fn waiting(&mut self, fd: RawFd, sent: u64, read: u64, deaths: u32, answered: bool, carried: &[u8]) {
        let Ok(i) = usize::try_from(fd) else { return };
        let data = if carried.is_empty() || carried.len() > DATA { None } else { self.data_slot(i) };
        let Some(Tables { records, data: slots }) = self.tables.as_mut() else { return };
        let Some((state, b)) = records.slot_mut(i) else { return };
        if carried.len() > DATA || (!carried.is_empty() && data.is_none()) {
            return state.store(LOST, Ordering::Release);
        }
        begin(state);
        put_i32(b, FD, fd);
        put_u32(b, DEATHS, deaths);
        put_u64(b, SENT, sent);
        put_u64(b, READ, read);
        b[FLAGS] = if answered { ANSWERED } else { 0 };
        put_u32(b, MEMORY_LEN, 0);
        put_u32(b, CARRIED_LEN, carried.len() as u32);
        put_u32(b, DATA_SLOT, data.unwrap_or(NO_DATA));
        if let Some((_, bytes)) = data.and_then(|d| slots.slot_mut(d as usize)) {
            bytes[..carried.len()].copy_from_slice(carried);
        }
        end(state, WAITING);
        if data.is_none() {
            self.release(i);
        }
    }

    /// A read of request bytes is about to land in `fd`'s data slot, after `carried`, the
    /// part of the request read so far (usually none): records the connection as waiting
    /// with `carried` in the slot, and returns the rest of the slot to read into. `None`
    /// (no table, no slot free, no room after `carried`) leaves the record as it was:
    /// read elsewhere.
    pub fn landing(
        &mut self,
        fd: RawFd,
        sent: u64,
        read: u64,
        deaths: u32,
        answered: bool,
        carried: &[u8],
    ) -> Option<&mut [u8]> {
        if carried.len() >= DATA {
            return None;
        }
        let i = usize::try_from(fd).ok()?;
        // A descriptor with a place in `held` has a record: `data_slot` checked it.
        let data = self.data_slot(i)?;
        let Tables { records, data: slots } = self.tables.as_mut()?;
        let (state, b) = records.slot_mut(i)?;
        let (_, bytes) = slots.slot_mut(data as usize)?;
        begin(state);
        put_i32(b, FD, fd);
        put_u32(b, DEATHS, deaths);
        put_u64(b, SENT, sent);
        put_u64(b, READ, read);
        b[FLAGS] = LANDING | if answered { ANSWERED } else { 0 };
        put_u32(b, MEMORY_LEN, 0);
        put_u32(b, CARRIED_LEN, carried.len() as u32);
        put_u32(b, DATA_SLOT, data);
        bytes[..carried.len()].copy_from_slice(carried);
        end(state, WAITING);
        Some(&mut bytes[carried.len()..])
    }

    /// The read [`Records::landing`] announced took `len` bytes (`read` in all now): they
    /// join the carried request. Nothing to copy, they are in the slot already.
    pub fn landed(&mut self, fd: RawFd, read: u64, len: usize) {
        let Ok(i) = usize::try_from(fd) else { return };
        if len == 0 {
            return self.release_landing(i);
        }
        let Some((state, b)) = self.tables.as_mut().and_then(|t| t.records.slot_mut(i)) else { return };
        let carried = (get_u32(b, CARRIED_LEN) as usize).saturating_add(len).min(DATA);
        begin(state);
        put_u64(b, READ, read);
        put_u32(b, CARRIED_LEN, carried as u32);
        b[FLAGS] &= !LANDING;
        end(state, WAITING);
    }

    /// Nothing landed: the record stays waiting with what it carried, and the slot goes
    /// back if that is nothing.
    fn release_landing(&mut self, i: usize) {
        let Some((state, b)) = self.tables.as_mut().and_then(|t| t.records.slot_mut(i)) else { return };
        let carries = get_u32(b, CARRIED_LEN) != 0;
        begin(state);
        b[FLAGS] &= !LANDING;
        if !carries {
            put_u32(b, DATA_SLOT, NO_DATA);
        }
        end(state, WAITING);
        if !carries {
            self.release(i);
        }
    }

    pub fn response(&mut self, fd: RawFd, r: &ResponseRecord<'_>) {
        let Ok(i) = usize::try_from(fd) else { return };
        let (memory, leftover) = (r.memory.len(), r.leftover.len());
        let data = if memory + leftover == 0 || memory + leftover > DATA { None } else { self.data_slot(i) };
        let Some(Tables { records, data: slots }) = self.tables.as_mut() else { return };
        let Some((state, b)) = records.slot_mut(i) else { return };
        if memory + leftover > DATA || (memory + leftover > 0 && data.is_none()) {
            return state.store(LOST, Ordering::Release);
        }
        begin(state);
        put_i32(b, FD, fd);
        put_u32(b, DEATHS, 0);
        put_u64(b, SENT, r.head_start);
        put_u64(b, READ, r.read);
        b[FLAGS] = ANSWERED | if r.close { CLOSE } else { 0 } | if r.file.is_some() { HAS_FILE } else { 0 };
        b[CODING] = r.coding;
        b[STATUS..STATUS + 2].copy_from_slice(&r.status.to_le_bytes());
        put_u32(b, MEMORY_LEN, memory as u32);
        put_u32(b, CARRIED_LEN, leftover as u32);
        if let Some((file_fd, span)) = r.file {
            put_i32(b, FILE_FD, file_fd);
            put_u64(b, DEV, span.dev);
            put_u64(b, INO, span.ino);
            put_u64(b, SIZE, span.size);
            put_u64(b, MTIME, span.mtime_ns as u64);
            put_u64(b, OFFSET, span.offset);
            put_u64(b, LEN, span.len);
        }
        put_u32(b, DATA_SLOT, data.unwrap_or(NO_DATA));
        if let Some((_, bytes)) = data.and_then(|d| slots.slot_mut(d as usize)) {
            bytes[..memory].copy_from_slice(r.memory);
            bytes[memory..memory + leftover].copy_from_slice(r.leftover);
        }
        end(state, RESPONSE);
        if data.is_none() {
            self.release(i);
        }
    }

    /// Nothing about this connection can be continued.
    pub fn lost(&mut self, fd: RawFd) {
        self.mark(fd, LOST);
    }

    /// The connection is leaving this worker (handed over, or closing): not the keeper's.
    pub fn leave(&mut self, fd: RawFd) {
        self.mark(fd, LEAVE);
    }

    /// The descriptor is about to close: its number may name another connection next.
    pub fn clear(&mut self, fd: RawFd) {
        self.mark(fd, FREE);
    }

    /// A kind that carries no bytes: the data slot, if any, is free again.
    fn mark(&mut self, fd: RawFd, kind: u32) {
        let Ok(i) = usize::try_from(fd) else { return };
        if let Some((state, _)) = self.tables.as_mut().and_then(|t| t.records.slot_mut(i)) {
            state.store(kind, Ordering::Release);
        }
        self.release(i);
    }
}

/// The slot reads as lost until `end`: the stores between cannot be moved before this.
fn begin(state: &std::sync::atomic::AtomicU32) {
    state.store(WRITING, Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
}

fn end(state: &std::sync::atomic::AtomicU32, kind: u32) {
    state.store(kind, Ordering::Release);
}

/// What a keeper found for the connection at descriptor `fd` of its dead worker.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Leaving or closing: not to be sent on.
    Leave,
    /// To send on with the salvage, the bytes it carries, and the descriptor of the file
    /// a response in progress was sending.
    Salvage { salvage: Salvage, carried: Vec<u8>, file: Option<RawFd> },
}

impl Found {
    fn lost() -> Found {
        Found::Salvage { salvage: Salvage::Lost, carried: Vec::new(), file: None }
    }
}

/// Reads the record of `fd` from a dead worker's table. A connection with no record has
/// arrived and not been looked at (a new connection, nothing read or sent); one beyond
/// the table, or whose record was being written, is lost. A request that was waiting
/// for its answer counts one more worker death. A read that was landing is resolved by
/// `kernel_read`, the bytes the kernel says were read from the socket: those past the
/// record are the slot's next ones after the carried bytes (more than the slot holds, or
/// no count: the record as it stands, which the successor then finds short and closes).
pub fn read(tables: &Tables, fd: RawFd, kernel_read: impl FnOnce() -> Option<u64>) -> Found {
    let Some((state, b)) = usize::try_from(fd).ok().and_then(|i| tables.records.slot(i)) else { return Found::lost() };
    let kind = state.load(Ordering::Acquire);
    let recorded_for = get_u32(b, FD) as RawFd;
    if matches!(kind, WAITING | RESPONSE) && recorded_for != fd {
        return Found::lost();
    }
    let memory = (get_u32(b, MEMORY_LEN) as usize).min(DATA);
    let carried_len = (get_u32(b, CARRIED_LEN) as usize).min(DATA - memory);
    let bytes = match tables.data.slot(get_u32(b, DATA_SLOT) as usize) {
        Some((_, bytes)) => bytes,
        None if memory + carried_len == 0 => &[][..],
        None => return Found::lost(),
    };
    let carried = || bytes[memory..memory + carried_len].to_vec();
    match kind {
        FREE => Found::Salvage {
            salvage: Salvage::Waiting { sent: 0, read: Some(0), deaths: 0, answered: false },
            carried: Vec::new(),
            file: None,
        },
        LEAVE => Found::Leave,
        WAITING => {
            let (read, carried) = match b[FLAGS] & LANDING != 0 {
                true => landed_bytes(get_u64(b, READ), &bytes[..carried_len], &bytes[carried_len..], kernel_read),
                false => (get_u64(b, READ), carried()),
            };
            let deaths = get_u32(b, DEATHS).saturating_add(u32::from(!carried.is_empty()));
            let answered = b[FLAGS] & ANSWERED != 0;
            Found::Salvage {
                salvage: Salvage::Waiting { sent: get_u64(b, SENT), read: Some(read), deaths, answered },
                carried,
                file: None,
            }
        }
        RESPONSE => {
            let has_file = b[FLAGS] & HAS_FILE != 0;
            let span = has_file.then(|| FileSpan {
                dev: get_u64(b, DEV),
                ino: get_u64(b, INO),
                size: get_u64(b, SIZE),
                mtime_ns: get_u64(b, MTIME) as i64,
                offset: get_u64(b, OFFSET),
                len: get_u64(b, LEN),
            });
            let in_progress = InProgress {
                head_start: get_u64(b, SENT),
                memory: bytes[..memory].to_vec(),
                file: span,
                status: u16::from_le_bytes([b[STATUS], b[STATUS + 1]]),
                coding: b[CODING],
                close: b[FLAGS] & CLOSE != 0,
                read: Some(get_u64(b, READ)),
            };
            let file = has_file.then(|| get_u32(b, FILE_FD) as RawFd);
            Found::Salvage { salvage: Salvage::Response(Box::new(in_progress)), carried: carried(), file }
        }
        _ => Found::lost(), // LOST, WRITING, or anything else
    }
}

/// What a read landing in `rest` (the slot after the `carried` bytes) took when its worker
/// died: the bytes read by then, and `carried` with as many of `rest`'s first bytes as
/// the kernel counts read past `recorded`. Just `carried` if the count is missing or more
/// than the slot holds: the record as it stands.
fn landed_bytes(
    recorded: u64,
    carried: &[u8],
    rest: &[u8],
    kernel_read: impl FnOnce() -> Option<u64>,
) -> (u64, Vec<u8>) {
    let landed = kernel_read()
        .and_then(|k| k.checked_sub(recorded))
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= rest.len());
    match landed {
        Some(n) => (recorded + n as u64, [carried, &rest[..n]].concat()),
        None => (recorded, carried.to_vec()),
    }
}

/// A content coding as a record holds it.
pub fn coding_code(coding: Coding) -> u8 {
    match coding {
        Coding::Identity => 0,
        Coding::Br => 1,
        Coding::Zstd => 2,
        Coding::Gzip => 3,
    }
}

/// The content coding a record holds (identity for anything unknown).
pub fn coding_of(code: u8) -> Coding {
    match code {
        1 => Coding::Br,
        2 => Coding::Zstd,
        3 => Coding::Gzip,
        _ => Coding::Identity,
    }
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_i32(b: &mut [u8], at: usize, v: i32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the keeper reads it, with no kernel count to resolve a landing read.
    fn read(t: &Tables, fd: RawFd) -> Found {
        super::read(t, fd, || None)
    }

    fn table() -> Records {
        Records::new(16).expect("table")
    }

    #[test]
    fn an_unrecorded_connection_is_new_and_one_beyond_the_table_is_lost() {
        let records = table();
        let t = records.table().expect("table");
        let fresh = Salvage::Waiting { sent: 0, read: Some(0), deaths: 0, answered: false };
        assert_eq!(read(t, 3), Found::Salvage { salvage: fresh, carried: Vec::new(), file: None });
        assert_eq!(read(t, 16), Found::lost());
        assert_eq!(read(t, -1), Found::lost());
    }

    #[test]
    fn a_waiting_request_counts_one_more_death_and_an_idle_connection_none() {
        let mut records = table();
        records.waiting(5, 900, 640, 1, true, b"GET /boom HTTP/1.1\r\n\r\n");
        records.waiting(6, 120, 33, 0, true, b"");
        let t = records.table().expect("table");
        let Found::Salvage { salvage, carried, file } = read(t, 5) else { panic!("leave") };
        assert_eq!(salvage, Salvage::Waiting { sent: 900, read: Some(640), deaths: 2, answered: true });
        assert_eq!((carried.as_slice(), file), (&b"GET /boom HTTP/1.1\r\n\r\n"[..], None));
        let Found::Salvage { salvage, .. } = read(t, 6) else { panic!("leave") };
        assert_eq!(salvage, Salvage::Waiting { sent: 120, read: Some(33), deaths: 0, answered: true });
    }

    #[test]
    fn a_response_reads_back_with_its_file_span_and_leftover() {
        let mut records = table();
        let span = FileSpan { dev: 1, ino: 2, size: 3 << 20, mtime_ns: -5, offset: 10, len: 1 << 20 };
        let r = ResponseRecord {
            head_start: 4242,
            memory: b"HTTP/1.1 206 Partial Content\r\n\r\n",
            file: Some((9, span)),
            status: 206,
            coding: 2,
            close: true,
            leftover: b"GET /next",
            read: 512,
        };
        records.response(7, &r);
        let Found::Salvage { salvage, carried, file } = read(records.table().expect("table"), 7) else {
            panic!("leave")
        };
        let want = InProgress {
            head_start: 4242,
            memory: r.memory.to_vec(),
            file: Some(span),
            status: 206,
            coding: 2,
            close: true,
            read: Some(512),
        };
        assert_eq!(salvage, Salvage::Response(Box::new(want)));
        assert_eq!((carried.as_slice(), file), (&b"GET /next"[..], Some(9)));
    }

    /// Records for `capacity` descriptors with only `slots` data slots.
    fn with_data_slots(capacity: usize, slots: usize) -> Records {
        let tables = Tables {
            records: SharedSlots::new(capacity, RECORD_SIZE).expect("records"),
            data: SharedSlots::new(slots, DATA_SLOT_SIZE).expect("data"),
        };
        Records { tables: Some(tables), free: (0..slots as u32).rev().collect(), held: vec![NO_DATA; capacity] }
    }

    #[test]
    fn only_connections_with_bytes_in_flight_hold_a_data_slot_and_idle_ones_give_it_back() {
        let mut records = with_data_slots(8, 2);
        records.waiting(3, 0, 0, 0, false, b"GET /a HTTP/1.1\r\n");
        records.waiting(4, 0, 0, 0, false, b"GET /b HTTP/1.1\r\n");
        for fd in 5..8 {
            records.waiting(fd, 7, 0, 0, true, b""); // idle: no data slot needed
        }
        assert!(records.free.is_empty(), "the two requests in flight hold both slots");
        records.waiting(5, 0, 0, 0, false, b"GET /c HTTP/1.1\r\n");
        assert_eq!(read(records.table().expect("tables"), 5), Found::lost(), "no slot left: lost");
        let slot = records.held[3];
        records.waiting(3, 100, 0, 0, true, b""); // answered, idle now
        assert_eq!(records.free, vec![slot]);
        records.waiting(6, 0, 0, 0, false, b"GET /d HTTP/1.1\r\n");
        let t = records.table().expect("tables");
        let Found::Salvage { carried, .. } = read(t, 6) else { panic!("leave") };
        assert_eq!(carried, b"GET /d HTTP/1.1\r\n", "the freed slot serves another connection");
        let Found::Salvage { salvage, carried, .. } = read(t, 3) else { panic!("leave") };
        assert_eq!(
            (salvage, carried.len()),
            (Salvage::Waiting { sent: 100, read: Some(0), deaths: 0, answered: true }, 0)
        );
        records.clear(4);
        assert_eq!(records.free.len(), 1, "a closed connection's slot is free again");
    }

    #[test]
    fn a_read_landing_when_its_worker_died_is_what_the_kernel_counts_past_the_record() {
        let mut records = table();
        let request = b"GET /a HTTP/1.1\r\n\r\n";
        let slot = records.landing(5, 300, 120, 0, true, b"").expect("a slot");
        slot[..request.len()].copy_from_slice(request); // as the recv would, then SIGKILL
        let t = records.table().expect("table");
        let read_with = |kernel: Option<u64>| super::read(t, 5, || kernel);
        let Found::Salvage { salvage, carried, .. } = read_with(Some(120 + request.len() as u64)) else {
            panic!("leave")
        };
        let want = Salvage::Waiting { sent: 300, read: Some(120 + request.len() as u64), deaths: 1, answered: true };
        assert_eq!((salvage, carried.as_slice()), (want, &request[..]));
        // Killed before the recv took anything: idle, whatever the slot held before.
        let idle = Salvage::Waiting { sent: 300, read: Some(120), deaths: 0, answered: true };
        assert_eq!(read_with(Some(120)), Found::Salvage { salvage: idle.clone(), carried: Vec::new(), file: None });
        // A count the slot cannot explain, or none: the record as it stands (closed by the successor).
        for kernel in [Some(120 + DATA as u64 + 1), Some(100), None] {
            assert_eq!(read_with(kernel), Found::Salvage { salvage: idle.clone(), carried: Vec::new(), file: None });
        }
    }

    #[test]
    fn a_read_landing_after_part_of_a_head_carries_both_parts_and_one_that_took_nothing_keeps_the_part() {
        let mut records = with_data_slots(8, 1);
        let (start, rest) = (&b"GET /split"[..], &b"-head HTTP/1.1\r\n\r\n"[..]);
        records.waiting(3, 40, 50, 0, true, start); // the head's start, read and recorded
        let slot = records.landing(3, 40, 50, 0, true, start).expect("the slot it holds");
        assert_eq!(slot.len(), DATA - start.len(), "the read lands after the part carried");
        slot[..rest.len()].copy_from_slice(rest); // as the recv would, then SIGKILL
        let t = records.table().expect("table");
        let read_with = |kernel: u64| super::read(t, 3, || Some(kernel));
        let Found::Salvage { salvage, carried, .. } = read_with(50 + rest.len() as u64) else { panic!("leave") };
        let want = Salvage::Waiting { sent: 40, read: Some(50 + rest.len() as u64), deaths: 1, answered: true };
        assert_eq!((salvage, carried), (want, [start, rest].concat()));
        let Found::Salvage { carried, .. } = read_with(50) else { panic!("leave") };
        assert_eq!(carried, start, "killed before the recv took anything: the part read before");
        records.landed(3, 50, 0);
        assert!(records.free.is_empty(), "the part carried keeps its slot");
        let Found::Salvage { carried, .. } = read(records.table().expect("table"), 3) else { panic!("leave") };
        assert_eq!(carried, start);
        assert!(records.landing(3, 40, 50, 0, true, &[b'a'; DATA]).is_none(), "no room after a full slot");
    }

    #[test]
    fn a_landed_read_is_carried_and_one_that_took_nothing_gives_its_slot_back() {
        let mut records = with_data_slots(8, 1);
        let slot = records.landing(3, 0, 0, 0, false, b"").expect("a slot");
        slot[..5].copy_from_slice(b"GET /");
        records.landed(3, 5, 5);
        let t = records.table().expect("table");
        let Found::Salvage { salvage, carried, .. } = super::read(t, 3, || Some(999)) else { panic!("leave") };
        let want = Salvage::Waiting { sent: 0, read: Some(5), deaths: 1, answered: false };
        assert_eq!((salvage, carried.as_slice()), (want, &b"GET /"[..]), "no longer landing: the kernel is not asked");
        assert!(records.landing(4, 0, 0, 0, false, b"").is_none(), "the one slot is held by fd 3");
        records.waiting(3, 80, 5, 0, true, b"");
        assert!(records.landing(4, 0, 0, 0, false, b"").is_some());
        records.landed(4, 0, 0);
        assert_eq!(records.free.len(), 1, "a read that took nothing holds no slot");
        let Found::Salvage { salvage, carried, .. } = read(records.table().expect("table"), 4) else { panic!("leave") };
        assert_eq!(
            (salvage, carried.len()),
            (Salvage::Waiting { sent: 0, read: Some(0), deaths: 0, answered: false }, 0)
        );
    }

    #[test]
    fn too_much_to_record_is_lost_and_leaving_or_cleared_slots_read_so() {
        let mut records = table();
        records.waiting(3, 0, 0, 0, false, &vec![b'a'; DATA + 1]);
        records.leave(4);
        records.waiting(5, 0, 0, 0, true, b"x");
        records.clear(5);
        let t = records.table().expect("table");
        assert_eq!(read(t, 3), Found::lost());
        assert_eq!(read(t, 4), Found::Leave);
        assert!(matches!(read(t, 5), Found::Salvage { salvage: Salvage::Waiting { sent: 0, .. }, .. }));
    }
}
