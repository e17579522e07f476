//! The worker's pool of connection buffers.
//!
//! A connection holds its read and write buffers only while a request is being read or a
//! response written; between requests it gives them back here and takes a pair again when
//! it becomes readable. An idle keep-alive connection then costs its slab entry and little
//! else (8 KiB less each), and a worker that served 10,000 connections holds no more
//! buffers afterwards than one that served a few. The pool is bounded: buffers given back
//! beyond the bound, or grown past the sizes worth keeping, are freed, so memory comes back
//! after a burst. Taking and giving are a `Vec` pop and push: no allocation per request.
//!
//! What a connection frees when it closes (its TLS state above all, ~8 KiB) glibc keeps in
//! the middle of its heap; [`BufferPool::connections_open`], called at each sweep, asks
//! the allocator to give free memory back once many connections have closed since the
//! last time, so RSS comes back after a burst of 10,000 TLS connections too.

/// A fresh read buffer's length (its whole length is readable room).
pub const READ_BUF_INITIAL: usize = 4 * 1024;
/// Room for a response head plus a small inline body without growing the buffer.
pub const WRITE_BUF_INITIAL: usize = 4 * 1024;
/// Write buffers up to this capacity are kept: one that grew for an inline body (up to
/// 16 KiB after the head) stays useful; a TLS file chunk's 64 KiB is freed.
const WRITE_BUF_KEPT: usize = 32 * 1024;
/// Buffers of each kind kept. Connections give theirs back at the end of each turn, so
/// in steady state the pool needs about one pair; the rest is slack for connections
/// caught mid-response (slow readers, partial heads).
const POOL_MAX: usize = 64;
/// Connections closed since the last high water that make a trim worth its cost (a walk
/// of the heap, well under a millisecond for a few MiB): a steady stream of short
/// connections never triggers one.
const TRIM_AFTER_CLOSED: usize = 1024;

#[derive(Default)]
pub struct BufferPool {
    read: Vec<Vec<u8>>,
    write: Vec<Vec<u8>>,
    /// Most connections open since memory was last given back.
    open_high_water: usize,
    /// Connections open at the previous sweep.
    open_before: usize,
}

impl BufferPool {
    /// A read buffer `READ_BUF_INITIAL` long. Its bytes may be another connection's old
    /// input; only what a read puts in is ever parsed.
    pub fn take_read(&mut self) -> Vec<u8> {
        self.read.pop().unwrap_or_else(|| vec![0; READ_BUF_INITIAL])
    }

    /// An empty write buffer with at least `WRITE_BUF_INITIAL` of capacity.
    pub fn take_write(&mut self) -> Vec<u8> {
        self.write.pop().unwrap_or_else(|| Vec::with_capacity(WRITE_BUF_INITIAL))
    }

    /// Keeps a read buffer of the ordinary length (one grown for a long head is freed).
    pub fn give_read(&mut self, buf: Vec<u8>) {
        if buf.len() == READ_BUF_INITIAL && self.read.len() < POOL_MAX {
            self.read.push(buf);
        }
    }

    /// Keeps a write buffer, emptied, unless it is oversized or the pool is full.
    pub fn give_write(&mut self, mut buf: Vec<u8>) {
        if (WRITE_BUF_INITIAL..=WRITE_BUF_KEPT).contains(&buf.capacity()) && self.write.len() < POOL_MAX {
            buf.clear();
            self.write.push(buf);
        }
    }

    /// `open` connections are open now (called once per sweep). True when the allocator
    /// should give free memory back: at least `TRIM_AFTER_CLOSED` fewer are open than at
    /// the high water, and the closing has paused (none closed since the last sweep), so
    /// one trim comes after the whole burst rather than in its middle, leaving the rest.
    pub fn connections_open(&mut self, open: usize) -> bool {
        let closing = open < self.open_before;
        self.open_before = open;
        self.open_high_water = self.open_high_water.max(open);
        if closing || self.open_high_water < open + TRIM_AFTER_CLOSED {
            return false;
        }
        self.open_high_water = open;
        true
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.read.len(), self.write.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_given_back_are_taken_again() {
        let mut pool = BufferPool::default();
        let read = pool.take_read();
        assert_eq!(read.len(), READ_BUF_INITIAL);
        let mut write = pool.take_write();
        assert!(write.is_empty() && write.capacity() >= WRITE_BUF_INITIAL);
        write.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let (read_ptr, write_ptr) = (read.as_ptr(), write.as_ptr());
        pool.give_read(read);
        pool.give_write(write);
        assert_eq!(pool.held(), (1, 1));
        let read = pool.take_read();
        assert_eq!(read.as_ptr(), read_ptr);
        let again = pool.take_write();
        assert_eq!(again.as_ptr(), write_ptr);
        assert!(again.is_empty(), "a write buffer comes back empty");
    }

    #[test]
    fn the_pool_is_bounded_and_frees_odd_sizes() {
        let mut pool = BufferPool::default();
        for _ in 0..POOL_MAX + 10 {
            pool.give_read(vec![0; READ_BUF_INITIAL]);
            pool.give_write(Vec::with_capacity(WRITE_BUF_INITIAL));
        }
        assert_eq!(pool.held(), (POOL_MAX, POOL_MAX));

        let mut pool = BufferPool::default();
        pool.give_read(vec![0; READ_BUF_INITIAL * 2]); // grown for a long head
        pool.give_read(Vec::new()); // a connection that held none
        pool.give_write(Vec::with_capacity(64 * 1024)); // a TLS file chunk's
        pool.give_write(Vec::new());
        assert_eq!(pool.held(), (0, 0));
    }

    #[test]
    fn memory_is_given_back_after_many_connections_closed_and_not_for_a_few() {
        let mut pool = BufferPool::default();
        assert!(!pool.connections_open(5000));
        assert!(!pool.connections_open(5000 - TRIM_AFTER_CLOSED + 1), "too few closed");
        assert!(!pool.connections_open(5000 - TRIM_AFTER_CLOSED + 1), "too few closed");
        let trimmed_at = 5000 - TRIM_AFTER_CLOSED;
        assert!(!pool.connections_open(trimmed_at), "still closing");
        assert!(pool.connections_open(trimmed_at), "enough closed, and the closing paused");
        assert!(!pool.connections_open(trimmed_at), "once");
        assert!(!pool.connections_open(trimmed_at - TRIM_AFTER_CLOSED + 1), "counted from the last trim");
        assert!(!pool.connections_open(trimmed_at - TRIM_AFTER_CLOSED + 1));
        assert!(!pool.connections_open(8000), "opening is no drop");
        assert!(!pool.connections_open(0), "still closing");
        assert!(pool.connections_open(1));
    }

    /// What an idle plain connection holds in user space besides the kernel's socket: its
    /// slab entry (312 bytes today) and, once it has answered, the `unflushed` list's
    /// allocation (4 entries, about 140 bytes). The bound keeps
    /// memory per idle connection within 1.5 KB (bench/run.sh idle-10k).
    #[test]
    fn an_idle_connection_is_a_small_slab_entry() {
        let size = std::mem::size_of::<Option<crate::worker::conn::Conn>>();
        assert!(size <= 512, "a connection's slab entry is {size} bytes");
    }
}
