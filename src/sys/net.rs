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

/// How long a listening socket holds back a connection whose client has sent nothing
/// (`TCP_DEFER_ACCEPT`): the shortest the kernel offers, one SYN-ACK retransmission.
pub const DEFER_ACCEPT_SECS: u32 = 1;

/// Sets `TCP_DEFER_ACCEPT` on a listening TCP socket: the kernel completes the handshake
/// but queues the connection for `accept` only once its first data (the request, or a
/// TLS ClientHello) is there, so the listener and the worker are woken once per
/// connection instead of twice. A client that sends nothing is still queued after about
/// `secs` (the kernel rounds up to its SYN-ACK retransmission schedule), and the header
/// timeout runs from then on. Linux only; elsewhere a no-op.
pub fn set_defer_accept(listener: BorrowedFd<'_>, secs: u32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a pointer to a live
        // c_int on our stack; the fd is borrowed for the call's duration.
        Errno::result(unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (listener, secs);
    Ok(())
}

/// The socket's `TCP_DEFER_ACCEPT` in seconds as the kernel reports it (0: off). An
/// activated socket may carry the operator's own (systemd's `DeferAcceptSec=`).
pub fn defer_accept(listener: BorrowedFd<'_>) -> io::Result<u32> {
    #[cfg(target_os = "linux")]
    {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the live c_int it points
        // to and updates `len`; the fd is borrowed for the call's duration.
        Errno::result(unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok(u32::try_from(value).unwrap_or(0))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = listener;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn defer_accept_is_set_and_read_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert_eq!(defer_accept(listener.as_fd()).expect("get"), 0);
        set_defer_accept(listener.as_fd(), DEFER_ACCEPT_SECS).expect("set");
        // The kernel stores retransmissions and reports them back as seconds.
        assert!(defer_accept(listener.as_fd()).expect("get") >= DEFER_ACCEPT_SECS);
    }
}
