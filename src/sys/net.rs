//! accept4 with CLOEXEC|NONBLOCK, returning an owned fd.

use nix::errno::Errno;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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
