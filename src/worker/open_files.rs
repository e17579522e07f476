//! The open-file cache of one document root: regular files recently served stay open,
//! with the metadata their validators come from, so a keep-alive request for a hot file
//! costs one `fstatat` instead of `openat2` + `statx` + `close`.
//!
//! Keyed by the normalized path (index file included), looked up only after the rules
//! (redirects, hidden files, the site) have decided the path may be served. A hit is
//! revalidated once per pass of the worker's event loop: the path is `fstatat`ed beneath
//! the root fd, following symlinks as `openat2` does, and the cached fd is used only if
//! device, inode, size, mtime and ctime (both to the nanosecond) are what they were when
//! it was opened; otherwise the entry is dropped and the file opened the normal way. The
//! requests of one pass (the events of one `epoll_wait`, microseconds apart) share that
//! look, as they would share the state of a file changing between one request's stat and
//! its read: a change is seen by the next pass.
//!
//! Why that is safe:
//! - Content is never cached, only the fd: a file rewritten in place is read through the
//!   same inode, so its current bytes go out, exactly as with a fresh open; its changed
//!   size, mtime or ctime also make a miss, so the validators are the file's current ones.
//! - A file replaced (rename over it, delete and recreate) is another inode: a miss.
//! - The stat is not contained the way `openat2(RESOLVE_BENEATH)` is: a symlink swapped to
//!   point outside the root makes it name another inode, so it misses and the `openat2`
//!   path refuses it. It can only hit if it reaches the very inode that was opened
//!   beneath the root, whose bytes were already servable.
//! - A chmod (ctime) is a miss, so a file made unreadable is refused by the next open.
//!
//! One fd serves many responses at once: every reader gives its own offset (`pread`,
//! `sendfile` with an offset), none uses or moves the file position.
//!
//! Bounded: [`CAPACITY`] entries, least recently used evicted; entries not used between
//! two worker sweeps are closed (a deleted file's space is not held for long). The fds it
//! holds are counted in [`held`], which the worker adds to its descriptor budget, and
//! given back when the worker runs short ([`OpenFiles::clear`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::{File, Metadata};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use nix::fcntl::AtFlags;
use nix::sys::stat::{fstatat, FileStat};

/// Most files one root keeps open.
pub const CAPACITY: usize = 256;

/// Descriptors held by every cache of this process, and their number at the worker's
/// last descriptor count.
static HELD: AtomicUsize = AtomicUsize::new(0);
static HELD_AT_MEASURE: AtomicUsize = AtomicUsize::new(0);

/// The worker's event-loop pass: entries looked at in this pass are not looked at again.
static PASS: AtomicU64 = AtomicU64::new(1);

/// A new pass of the event loop begins: every entry is revalidated at its next use.
pub fn next_pass() {
    PASS.fetch_add(1, Ordering::Relaxed);
}

/// Descriptors the open-file caches of this process hold now.
pub fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// The worker counted its open descriptors (cached ones included) just now.
pub fn measured() {
    HELD_AT_MEASURE.store(held(), Ordering::Relaxed);
}

/// Descriptors the caches took since the last count: not yet in the worker's budget.
pub fn grown_since_measure() -> usize {
    held().saturating_sub(HELD_AT_MEASURE.load(Ordering::Relaxed))
}

struct Entry {
    file: Rc<File>,
    meta: Metadata,
    /// Tick of the last use, for LRU eviction.
    last_used: u64,
    /// Used since the last sweep.
    recent: bool,
    /// The pass in which the path was last seen to name the file unchanged.
    checked_in: u64,
}

impl Entry {
    fn new(file: Rc<File>, meta: Metadata, tick: u64) -> Entry {
        HELD.fetch_add(1, Ordering::Relaxed);
        Entry { file, meta, last_used: tick, recent: true, checked_in: PASS.load(Ordering::Relaxed) }
    }

    /// The path still names the inode we hold, unchanged since it was opened.
    #[allow(clippy::unnecessary_cast)] // libc's `stat` field types differ between targets
    fn still_matches(&self, now: &FileStat) -> bool {
        let m = &self.meta;
        m.dev() == now.st_dev as u64
            && m.ino() == now.st_ino as u64
            && m.size() == now.st_size as u64
            && m.mtime() == now.st_mtime as i64
            && m.mtime_nsec() == now.st_mtime_nsec as i64
            && m.ctime() == now.st_ctime as i64
            && m.ctime_nsec() == now.st_ctime_nsec as i64
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // The fd itself closes when the last response using it is done.
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One root's cache (the worker is single-threaded: a `RefCell` in the root).
#[derive(Default)]
pub struct OpenFiles {
    entries: RefCell<Cache>,
}

#[derive(Default)]
struct Cache {
    by_path: HashMap<Box<[u8]>, Entry>,
    tick: u64,
}

impl std::fmt::Debug for OpenFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenFiles({} open)", self.entries.borrow().by_path.len())
    }
}

impl OpenFiles {
    /// The cached file for `path` (normalized, from `/`) if the path, `fstatat`ed as
    /// `relative` beneath `root` (once per pass), still names it unchanged. A stale entry
    /// is dropped. No syscall when `path` is not cached or was looked at in this pass.
    pub fn get(&self, root: BorrowedFd<'_>, path: &[u8], relative: &CStr) -> Option<(Rc<File>, Metadata)> {
        let mut cache = self.entries.borrow_mut();
        cache.tick += 1;
        let tick = cache.tick;
        let pass = PASS.load(Ordering::Relaxed);
        let entry = cache.by_path.get_mut(path)?;
        let unchanged = entry.checked_in == pass
            || fstatat(root, relative, AtFlags::empty()).is_ok_and(|now| entry.still_matches(&now));
        if !unchanged {
            cache.by_path.remove(path);
            return None;
        }
        entry.last_used = tick;
        entry.recent = true;
        entry.checked_in = pass;
        Some((Rc::clone(&entry.file), entry.meta.clone()))
    }

    /// Keeps `file` (a regular file just opened beneath the root) for `path`; returns it
    /// shared. The least recently used entry makes room when the cache is full.
    pub fn insert(&self, path: &[u8], file: File, meta: &Metadata) -> Rc<File> {
        let file = Rc::new(file);
        let mut cache = self.entries.borrow_mut();
        if cache.by_path.len() >= CAPACITY && !cache.by_path.contains_key(path) {
            cache.evict_least_recent();
        }
        let tick = cache.tick;
        cache.by_path.insert(path.into(), Entry::new(Rc::clone(&file), meta.clone(), tick));
        file
    }

    /// Closes the entries not used since the last sweep.
    pub fn sweep(&self) {
        let mut cache = self.entries.borrow_mut();
        cache.by_path.retain(|_, entry| std::mem::take(&mut entry.recent));
    }

    /// Closes every entry (the process is short of descriptors). True if any was held.
    pub fn clear(&self) -> bool {
        let mut cache = self.entries.borrow_mut();
        let had = !cache.by_path.is_empty();
        cache.by_path.clear();
        had
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.borrow().by_path.len()
    }
}

impl Cache {
    /// O(entries), paid only on a miss that found the cache full (the miss itself costs
    /// an `openat2`).
    fn evict_least_recent(&mut self) {
        let oldest = self.by_path.iter().min_by_key(|(_, e)| e.last_used).map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            self.by_path.remove(&key);
        }
    }
}
