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

/// What the kernel counts as moved on a TCP socket since it was connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteCounts {
    /// Bytes written: those the peer acknowledged (`tcpi_bytes_acked`) plus those still
    /// queued (`SIOCOUTQ`: sent but unacknowledged, or not sent yet). The queued ones
    /// reach the peer as long as the socket stays open, so this is where a successor
    /// continues a response from, whatever the writer believed it had sent.
    pub written: u64,
    /// Bytes read, by any process: received in order (`tcpi_bytes_received`) less those
    /// still queued to be read (`SIOCINQ`). More than a dead worker recorded means it read
    /// bytes it died before recording, which nobody can replay.
    pub read: u64,
}

/// The byte counts of TCP socket `sock` (see [`ByteCounts`]).
pub fn byte_counts(sock: BorrowedFd<'_>) -> io::Result<ByteCounts> {
    // Several syscalls, not one snapshot: an acknowledgement or a segment arriving between
    // them moves bytes between a queue and its count, and the sum would be off by them (a
    // dead worker's socket goes on sending and receiving while it is measured). So the
    // queues are read between two reads of the counts, and only a pair that agrees is used.
    for _ in 0..MEASURE_TRIES {
        let before = tcp_info(sock)?;
        let (unsent, unread) = (queued_bytes(sock)?, unread_bytes(sock)?);
        let after = tcp_info(sock)?;
        if (after.tcpi_bytes_acked, after.tcpi_bytes_received) == (before.tcpi_bytes_acked, before.tcpi_bytes_received)
        {
            // The peer's FIN takes a sequence number, which the received count includes.
            let fin = u64::from(PEER_FIN_RECEIVED.contains(&before.tcpi_state));
            return Ok(ByteCounts {
                written: before.tcpi_bytes_acked + unsent,
                read: before.tcpi_bytes_received.saturating_sub(unread).saturating_sub(fin),
            });
        }
    }
    Err(io::Error::other(format!("the peer kept sending or acknowledging through {MEASURE_TRIES} measurements")))
}

/// `tcpi_state`s once the peer's FIN has arrived.
const PEER_FIN_RECEIVED: [u8; 4] = [TCP_TIME_WAIT, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING];
// TCP states as include/net/tcp_states.h numbers them (libc does not name them).
const TCP_TIME_WAIT: u8 = 6;
/// The peer has sent its FIN and we have not closed.
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_CLOSING: u8 = 11;

/// Attempts at a consistent measurement before giving up (the connection is then closed).
const MEASURE_TRIES: usize = 1000;

fn tcp_info(sock: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a buffer of that size,
    // and stores the length written in `len`; the socket is borrowed for the call.
    Errno::result(unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    })?;
    // Linux has reported tcpi_bytes_acked and tcpi_bytes_received since 4.1 (received
    // comes after acked); an older kernel's shorter struct would leave them unwritten.
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_bytes_received) + std::mem::size_of::<u64>();
    if (len as usize) < needed {
        return Err(io::Error::other("TCP_INFO without tcpi_bytes_received (kernel older than 4.1)"));
    }
    // SAFETY: zero-initialised, then filled by the kernel; every field is an integer,
    // valid for any bit pattern.
    Ok(unsafe { info.assume_init() })
}

/// `SIOCINQ`: bytes received and not read yet.
fn unread_bytes(sock: BorrowedFd<'_>) -> io::Result<u64> {
    let mut unread: libc::c_int = 0;
    // SAFETY: SIOCINQ (FIONREAD) stores one int at the pointer given.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut unread) })?;
    Ok(u64::try_from(unread).unwrap_or(0))
}

/// `SIOCOUTQ`: bytes written and not acknowledged yet (sent or not).
fn queued_bytes(sock: BorrowedFd<'_>) -> io::Result<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) stores one int at the pointer given.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) })?;
    Ok(u64::try_from(queued).unwrap_or(0))
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
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    /// Written bytes are counted whether the peer has read them, or they are still queued.
    #[test]
    fn bytes_written_counts_acknowledged_and_queued_bytes() {
        fn bytes_written(fd: BorrowedFd<'_>) -> io::Result<u64> {
            byte_counts(fd).map(|c| c.written)
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        assert_eq!(bytes_written(server.as_fd()).expect("fresh"), 0);
        server.write_all(&[7u8; 1000]).expect("write");
        assert_eq!(bytes_written(server.as_fd()).expect("queued or acked"), 1000);
        let mut got = [0u8; 1000];
        client.read_exact(&mut got).expect("read");
        server.write_all(b"abc").expect("write");
        assert_eq!(bytes_written(server.as_fd()).expect("after a read"), 1003);
        // Bytes the client sent do not count.
        client.write_all(b"request").expect("client write");
        assert_eq!(bytes_written(server.as_fd()).expect("after input"), 1003);
    }

    /// A client that sent its request and then its FIN (`shutdown(SHUT_WR)`): the FIN
    /// takes a sequence number, not a byte of the request.
    #[test]
    fn bytes_read_count_the_request_and_not_the_clients_fin() {
        fn bytes_read(fd: BorrowedFd<'_>) -> u64 {
            byte_counts(fd).expect("counts").read
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(b"0123456789").expect("write");
        client.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while tcp_info(server.as_fd()).expect("info").tcpi_state != TCP_CLOSE_WAIT {
            assert!(std::time::Instant::now() < deadline, "the FIN did not arrive");
            std::thread::yield_now();
        }
        assert_eq!(bytes_read(server.as_fd()), 0, "nothing read yet, FIN queued");
        let mut got = [0u8; 4];
        server.read_exact(&mut got).expect("read");
        assert_eq!(bytes_read(server.as_fd()), 4);
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).expect("read to the FIN");
        assert_eq!(bytes_read(server.as_fd()), 10, "the FIN read as end of file");
    }

    #[test]
    fn defer_accept_is_set_and_read_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert_eq!(defer_accept(listener.as_fd()).expect("get"), 0);
        set_defer_accept(listener.as_fd(), DEFER_ACCEPT_SECS).expect("set");
        // The kernel stores retransmissions and reports them back as seconds.
        assert!(defer_accept(listener.as_fd()).expect("get") >= DEFER_ACCEPT_SECS);
    }
}
