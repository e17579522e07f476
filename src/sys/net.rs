//! accept4 with CLOEXEC|NONBLOCK, returning an owned fd; adopting socket-activated fds.

use nix::errno::Errno;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Accepts one connection; the fd is non-blocking (the worker's event loop needs it)
/// and CLOEXEC (no exec may inherit it).
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd = super::retry_eintr(|| {
        // SAFETY: accept4 with null address pointers is valid; the listener fd is
        // borrowed for the call's duration.
        Errno::result(unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        })
    })?;
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `accept` errors that mean the process or system is out of descriptors or memory:
/// back off instead of retrying at once.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The first descriptor of socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

static LISTEN_FDS_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Socket activation: takes ownership of the `count` descriptors systemd (or whoever
/// set `LISTEN_PID` to our pid) passed as fds 3..3+count, and makes each CLOEXEC so no
/// child inherits it. Each entry is its number and the descriptor, or why it cannot be
/// had (not open). Only the first call takes anything; later calls get nothing.
pub fn adopt_listen_fds(count: usize) -> Vec<(RawFd, io::Result<OwnedFd>)> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::sync::atomic::Ordering;
    if LISTEN_FDS_TAKEN.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    let Ok(count) = RawFd::try_from(count) else { return Vec::new() };
    (LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count))
        .map(|fd| {
            let open = super::probe_fd(fd, |b| fcntl(b, FcntlArg::F_GETFD))
                .map_err(|e| io::Error::new(io::ErrorKind::NotFound, format!("fd {fd} is not open: {e}")));
            let adopted = open.and_then(|_| {
                // SAFETY: fds 3..3+LISTEN_FDS were open when we were exec'd (the socket
                // activation protocol) and this process opened nothing under those
                // numbers since (they were taken); the once-only guard above means no
                // second OwnedFd is ever made for them, so this one is their sole owner.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
                Ok(owned)
            });
            (fd, adopted)
        })
        .collect()
}
