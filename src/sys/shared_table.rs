//! A child that shares its parent's descriptor table, and what it needs to take over
//! the descriptors its parent left behind.
//!
//! The listener holds each connection it accepts, alone, until it has sent it into a
//! lane. A child forked with `CLONE_FILES` keeps that table alive when the listener dies,
//! even by SIGKILL (the kernel closes a table only when its last user is gone), so the
//! child can find the connection and send it on. A page mapped `MAP_SHARED` before the
//! fork tells it which connection had already been handed to the kernel.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32};

/// Integers in memory shared with every child forked after they were made: what one
/// process stores, the others read, even after it died.
pub struct SharedWords {
    base: NonNull<AtomicI32>,
    len: usize,
}

impl SharedWords {
    /// `len` words, each starting at -1 (no descriptor).
    pub fn new(len: usize) -> io::Result<SharedWords> {
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        let bytes = NonZeroUsize::new(len.max(1) * std::mem::size_of::<AtomicI32>())
            .ok_or_else(|| io::Error::other("empty"))?;
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses: it overlaps
        // no memory Rust knows about.
        let base =
            unsafe { mmap_anonymous(None, bytes, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED) }
                .map_err(|e| io::Error::other(format!("mmap of a shared page: {e}")))?;
        let words = SharedWords { base: base.cast(), len };
        for i in 0..len {
            words.word(i).store(-1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(words)
    }

    pub fn word(&self, i: usize) -> &AtomicI32 {
        assert!(i < self.len, "shared word {i} of {}", self.len);
        // SAFETY: in bounds of a mapping that lives as long as `self`; the page is aligned
        // and zero-filled, a valid `AtomicI32`; it is only ever accessed atomically.
        unsafe { &*self.base.as_ptr().add(i) }
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no reference from `word`
        // outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len.max(1) * std::mem::size_of::<AtomicI32>()) };
    }
}

/// Fixed-size records in memory shared with every child forked after it was made, each
/// a state word followed by bytes. The worker writes one per connection; its keeper
/// reads them only once the worker is dead, so the two never access one at once. Pages
/// are zero until first written (state 0) and take memory only once touched.
pub struct SharedSlots {
    base: NonNull<u8>,
    slots: usize,
    size: usize,
}

/// Where a slot's bytes begin (the state word, padded so they are 8-byte aligned).
const SLOT_BYTES_AT: usize = 8;

impl SharedSlots {
    /// `slots` records of `size` bytes each (a multiple of 8, more than 8).
    pub fn new(slots: usize, size: usize) -> io::Result<SharedSlots> {
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        if size <= SLOT_BYTES_AT || size % 8 != 0 {
            return Err(io::Error::other(format!("shared slot size {size}")));
        }
        let bytes = slots
            .checked_mul(size)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| io::Error::other(format!("{slots} shared slots of {size} bytes")))?;
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses: it overlaps
        // no memory Rust knows about. MAP_NORESERVE: most slots are never touched.
        let flags = MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE;
        let base = unsafe { mmap_anonymous(None, bytes, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, flags) }
            .map_err(|e| io::Error::other(format!("mmap of {bytes} shared bytes: {e}")))?;
        Ok(SharedSlots { base: base.cast(), slots, size })
    }

    pub fn len(&self) -> usize {
        self.slots
    }

    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }

    /// Slot `i`'s state word and bytes, to write; `None` beyond the table.
    pub fn slot_mut(&mut self, i: usize) -> Option<(&AtomicU32, &mut [u8])> {
        if i >= self.slots {
            return None;
        }
        // SAFETY: slot `i` lies within the mapping, which lives as long as `self`; its
        // state word is 8-byte aligned (the mapping is page-aligned, the size a multiple
        // of 8) and only ever accessed atomically; the bytes after it are disjoint from
        // it, and `&mut self` makes this the only reference into the slot.
        unsafe {
            let slot = self.base.as_ptr().add(i * self.size);
            let state = &*slot.cast::<AtomicU32>();
            let bytes = std::slice::from_raw_parts_mut(slot.add(SLOT_BYTES_AT), self.size - SLOT_BYTES_AT);
            Some((state, bytes))
        }
    }

    /// Slot `i`'s state word and bytes, to read; `None` beyond the table.
    pub fn slot(&self, i: usize) -> Option<(&AtomicU32, &[u8])> {
        if i >= self.slots {
            return None;
        }
        // SAFETY: as for `slot_mut`; `&self` excludes a writer in this process, and the
        // process that wrote the slot is dead when a keeper reads it.
        unsafe {
            let slot = self.base.as_ptr().add(i * self.size);
            let state = &*slot.cast::<AtomicU32>();
            let bytes = std::slice::from_raw_parts(slot.add(SLOT_BYTES_AT), self.size - SLOT_BYTES_AT);
            Some((state, bytes))
        }
    }
}

impl Drop for SharedSlots {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no slot reference outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.slots * self.size) };
    }
}

/// Exit code of a table-sharing child whose body panicked (Rust's own code for a panic).
pub const PANIC_EXIT: i32 = 101;

/// Forks a child that shares our descriptor table but not our memory, runs `body` in it
/// and ends the child with the code `body` returns ([`PANIC_EXIT`] if it panics); returns
/// the child's pid to the parent. A descriptor either opens or closes is opened or closed
/// for both, and the table outlives whichever dies first.
///
/// The child never returns or unwinds into the caller's frames: the values they own are
/// the parent's too (an `OwnedFd` dropped there would close the parent's descriptor), so
/// it leaves by `_exit` with no destructor run but those of `body` itself. For the same
/// reason `body` should borrow what it needs rather than own descriptors.
///
/// Refused unless this process has a single thread (the child gets only the calling one,
/// and a lock another thread held would stay locked forever).
pub fn fork_sharing_files(body: impl FnOnce() -> i32) -> io::Result<nix::unistd::Pid> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .map_err(|e| io::Error::new(e.kind(), format!("/proc/self/task: {e}")))?;
    if threads != 1 {
        return Err(io::Error::other(format!("cannot fork a table-sharing child from {threads} threads")));
    }
    let flags = (libc::CLONE_FILES | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone with a null stack behaves as fork: the child runs on a copy-on-write
    // copy of our memory and returns 0 here, where it runs `body` and `_exit`s without
    // leaving this frame. We have one thread (checked above), so the child inherits no
    // lock held by a thread it lacks.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
                Ok(code) => code,
                Err(payload) => {
                    // Dropping the payload could panic again, and unwind past us.
                    std::mem::forget(payload);
                    PANIC_EXIT
                }
            };
            exit_now(code)
        }
        pid => Ok(nix::unistd::Pid::from_raw(pid as i32)),
    }
}

/// Blocks until process `pid`, our parent, has exited. Returns at once if it already has.
pub fn wait_for_parent_exit(pid: nix::unistd::Pid) -> io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ESRCH) { Ok(()) } else { Err(e) };
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    // The pid may already name another process if ours died and was reaped before the
    // open: a reparented child knows its parent is gone.
    if nix::unistd::getppid() != pid {
        return Ok(());
    }
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match super::retry_eintr(|| poll(&mut fds, PollTimeout::NONE)) {
            Ok(_) if fds[0].revents().is_some_and(|r| !r.is_empty()) => return Ok(()),
            Ok(_) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Accepted TCP connections (inet or inet6 stream sockets that are not listening) open in
/// our descriptor table, apart from those in `except`. Only for a child whose
/// table-sharing parent has died: it takes ownership of them, and nothing else in it may
/// use them.
pub fn orphaned_connections(except: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else { continue };
        if except.contains(&fd) || !super::probe_fd(fd, is_accepted_tcp) {
            continue;
        }
        // SAFETY: the descriptor is open (it answered getsockopt as a socket) and its
        // owner, the parent, is dead; this child takes it over and uses it alone.
        found.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(found)
}

/// A seqpacket socket our dead table-sharing parent left at `fd` (a lane it was sending
/// into), taken over by this child; `None` if `fd` is not one.
pub fn orphaned_seqpacket(fd: RawFd) -> Option<OwnedFd> {
    use nix::sys::socket::{getsockopt, sockopt::SockType as SoType, SockType};
    if fd < 0 || super::probe_fd(fd, |fd| getsockopt(&fd, SoType)).ok()? != SockType::SeqPacket {
        return None;
    }
    // SAFETY: as for `orphaned_connections`: open, and its owner is dead.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A regular file our dead table-sharing parent left open at `fd` (a response body it was
/// sending), taken over by this child; `None` if `fd` is not one.
pub fn orphaned_file(fd: RawFd) -> Option<OwnedFd> {
    let regular =
        super::probe_fd(fd, |fd| nix::sys::stat::fstat(fd)).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
    if fd < 0 || !regular {
        return None;
    }
    // SAFETY: as for `orphaned_connections`: open, and its owner is dead.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn is_accepted_tcp(fd: BorrowedFd<'_>) -> bool {
    use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};
    let stream = matches!(getsockopt(&fd, sockopt::SockType), Ok(SockType::Stream));
    let listening = getsockopt(&fd, sockopt::AcceptConn).unwrap_or(true);
    let inet = getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .and_then(|a| a.family())
        .is_some_and(|f| matches!(f, AddressFamily::Inet | AddressFamily::Inet6));
    stream && !listening && inet
}

/// Rewrites what `ps` shows as our command line, within argv's original length, so a
/// child forked (not exec'd) from a role is not taken for that role.
pub fn retitle(title: &str) -> io::Result<()> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields 48 and 49 of proc(5), arg_start and arg_end; the text after the command
    // name's closing parenthesis starts at field 3.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<usize>().ok());
    let (Some(start), Some(end)) = (field(48), field(49)) else {
        return Err(io::Error::other("no argument range in /proc/self/stat"));
    };
    let room = end.saturating_sub(start);
    if room == 0 {
        return Err(io::Error::other("empty argument range"));
    }
    let n = title.len().min(room - 1);
    // SAFETY: [arg_start, arg_end) holds our own argv strings, in our writable stack
    // mapping; nothing holds a Rust reference into it. The last byte stays NUL.
    unsafe {
        std::ptr::write_bytes(start as *mut u8, 0, room);
        std::ptr::copy_nonoverlapping(title.as_ptr(), start as *mut u8, n);
    }
    Ok(())
}

/// Ends this process at once: no destructors, no atexit handlers (a forked child must
/// not flush or free what its parent owns).
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an int and never returns.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};

    /// What the table-sharing child's exit status was, or why the check failed (as an exit
    /// code of the single-threaded process that ran it).
    fn in_single_thread(check: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child runs `check` alone on a copy of the test process and ends with
        // `_exit`; what it uses (clone, waitpid, fcntl, a pipe) takes no lock another test
        // thread could have held at the fork, apart from malloc's, which glibc resets in
        // the child.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).unwrap_or(90);
                // SAFETY: ends the forked child without running the harness's destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
                WaitStatus::Exited(_, code) => code,
                other => panic!("single-threaded check ended with {other:?}"),
            },
        }
    }

    /// Forks a table-sharing child running `body` from a frame that owns a descriptor, and
    /// reports: 3 if the child came back into this frame, 4 if the descriptor was closed
    /// (the child dropped it), else the child's exit code.
    fn share_and_wait(body: fn() -> i32) -> i32 {
        let (held, _other) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let raw = held.as_raw_fd();
        let me = nix::unistd::getpid();
        let forked = fork_sharing_files(body);
        if nix::unistd::getpid() != me {
            return 3; // the child is running its caller's code
        }
        let Ok(pid) = forked else { return 5 };
        let code = match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => code,
            _ => return 6,
        };
        if nix::fcntl::fcntl(held.as_fd(), nix::fcntl::FcntlArg::F_GETFD).is_err() || held.as_raw_fd() != raw {
            return 4;
        }
        code
    }

    #[test]
    fn the_child_exits_with_what_its_body_returns() {
        assert_eq!(in_single_thread(|| share_and_wait(|| 7)), 7);
    }

    #[test]
    fn a_panicking_body_exits_with_the_panic_code_and_leaves_the_parent_fds_open() {
        assert_eq!(in_single_thread(|| share_and_wait(|| panic!("body panics"))), PANIC_EXIT);
    }

    #[test]
    fn refused_from_a_process_with_threads() {
        let _second = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(200)));
        let ran = std::sync::atomic::AtomicBool::new(false);
        assert!(fork_sharing_files(|| {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            0
        })
        .is_err());
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
