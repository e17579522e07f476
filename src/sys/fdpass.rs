//! Unix seqpacket socketpairs and SCM_RIGHTS fd passing.
//!
//! We call `sendmsg`/`recvmsg` ourselves rather than use the `sendfd` crate: `sendfd`
//! receives without `MSG_CMSG_CLOEXEC` (fds would leak into every later exec) and
//! silently drops fds beyond its buffer (no `MSG_CTRUNC` check). Here every received
//! fd carries CLOEXEC, and a truncated control message is an error after the fds that
//! did arrive are closed.

use nix::errno::Errno;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Most fds one message may carry (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 64;

/// Words of a control buffer with room for MAX_FDS_PER_MESSAGE fds: CMSG_SPACE(64 * 4)
/// = 272 bytes, 8-byte aligned as cmsg headers require. On the stack: nix's `sendmsg`
/// would allocate one per call.
const CONTROL_WORDS: usize = 40;

/// A message header naming one buffer and no control data yet.
fn header(iov: &mut libc::iovec) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg
}

/// A connected AF_UNIX SOCK_SEQPACKET pair, both ends CLOEXEC: message boundaries are
/// kept and a closed peer shows as EOF, which plain datagram pairs cannot tell.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
        .map_err(io::Error::from)
}

/// Sends one message with `fds` attached. Never blocks: a full peer gives `WouldBlock`.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    send_with_raw_fds(sock, bytes, &fds.iter().map(|fd| fd.as_raw_fd()).collect::<Vec<_>>(), || {})
}

/// As [`send_with_fds`], with descriptors by number, for a caller whose types keep them
/// open for the call (a message that borrows or owns them; a number that is not open
/// fails the send, EBADF: the kernel checks every one), and calling `announce` once the
/// message is built, right before the syscall. Nothing but libc's wrapper then lies
/// between `announce` and the kernel taking its references to the fds (a SIGKILL is acted
/// on only when the syscall returns): the listener's keeper relies on that to know which
/// connections were already queued.
pub fn send_with_raw_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd], announce: impl FnOnce()) -> io::Result<()> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::other(format!("{} fds in one message (at most {MAX_FDS_PER_MESSAGE})", fds.len())));
    }
    let mut control = [0u64; CONTROL_WORDS];
    // The kernel only reads through `msg_iov` on a send.
    let mut iov = libc::iovec { iov_base: bytes.as_ptr().cast_mut().cast(), iov_len: bytes.len() };
    let mut msg = header(&mut iov);
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        // SAFETY: `control` is 8-byte aligned and larger than CMSG_SPACE(payload) (the
        // count is checked above), so the one header and its data fit inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), *fd);
            }
        }
    }
    announce();
    let n = super::retry_eintr(|| {
        // SAFETY: `msg` points at live buffers of the sizes it states.
        Errno::result(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
    })? as usize;
    if n != bytes.len() {
        return Err(io::Error::other(format!("short seqpacket send: {n} of {} bytes", bytes.len())));
    }
    Ok(())
}

/// One received message: its length (0: the peer closed) and whether passed fds were
/// lost (`MSG_CTRUNC`: the receiver is out of descriptors or the control buffer was too
/// small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub fds_lost: bool,
}

/// Receives one message into `buf`, appending every fd the kernel installed to `fds`
/// (with CLOEXEC) — also when some were lost, so none leaks. Never blocks.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<Received> {
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut msg = header(&mut iov);
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = super::retry_eintr(|| {
        // SAFETY: `msg` points at live buffers of the sizes it states.
        Errno::result(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) })
    })? as usize;
    // SAFETY: the kernel filled `msg_control` with well-formed cmsg headers up to
    // `msg_controllen`; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it, and each SCM_RIGHTS
    // payload holds `(cmsg_len - CMSG_LEN(0)) / 4` descriptors just installed for us,
    // which nothing else owns.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::other("message larger than the receive buffer"));
    }
    Ok(Received { len: n, fds_lost: msg.msg_flags & libc::MSG_CTRUNC != 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn cloexec(fd: BorrowedFd<'_>) -> bool {
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
        nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn passed_fds_arrive_with_cloexec_and_message_intact() {
        let (a, b) = seqpacket_pair().expect("pair");
        let (x, y) = seqpacket_pair().expect("pair");
        send_with_fds(a.as_fd(), b"hello", &[x.as_fd(), y.as_fd()]).expect("send");
        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let got = recv_with_fds(b.as_fd(), &mut buf, &mut fds).expect("recv");
        assert_eq!(&buf[..got.len], b"hello");
        assert!(!got.fds_lost);
        assert_eq!(fds.len(), 2);
        assert!(fds.iter().all(|fd| cloexec(fd.as_fd())));
    }

    #[test]
    fn announce_runs_once_before_the_message_is_queued_and_not_for_a_refused_one() {
        let (a, b) = seqpacket_pair().expect("pair");
        let (x, _y) = seqpacket_pair().expect("pair");
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let mut announced = 0;
        send_with_raw_fds(a.as_fd(), b"one", &[x.as_raw_fd()], || {
            // Nothing is queued yet when the caller is told.
            let queued = recv_with_fds(b.as_fd(), &mut [0u8; 16], &mut Vec::new());
            assert_eq!(queued.map_err(|e| e.kind()).err(), Some(io::ErrorKind::WouldBlock));
            announced += 1;
        })
        .expect("send");
        assert_eq!(announced, 1);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).expect("recv").len, 3);
        assert_eq!(fds.len(), 1);

        let too_many = vec![x.as_raw_fd(); MAX_FDS_PER_MESSAGE + 1];
        let refused = send_with_raw_fds(a.as_fd(), b"x", &too_many, || announced += 1);
        assert!(refused.is_err() && announced == 1, "an oversized message was sent or announced");
    }

    #[test]
    fn closed_peer_reads_as_eof_and_empty_queue_would_block() {
        let (a, b) = seqpacket_pair().expect("pair");
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let err = recv_with_fds(b.as_fd(), &mut buf, &mut fds).expect_err("nothing queued");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).expect("eof").len, 0);
    }

    #[test]
    fn fds_lost_to_exhaustion_are_reported_and_those_installed_are_kept() {
        let (a, b) = seqpacket_pair().expect("pair");
        let pairs: Vec<_> = (0..4).map(|_| seqpacket_pair().expect("pair")).collect();
        let fds: Vec<BorrowedFd<'_>> = pairs.iter().flat_map(|(p, q)| [p.as_fd(), q.as_fd()]).collect();
        send_with_fds(a.as_fd(), b"x", &fds).expect("send");
        // Receive in a child process whose descriptor limit leaves room for only a few.
        // SAFETY: the child only calls async-signal-safe syscalls (setrlimit, recvmsg,
        // _exit) plus a read_dir of /proc before them; the test harness thread that
        // forks holds no lock the child needs.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // The limit bounds descriptor numbers: leave exactly three free ones.
                let used: Vec<u64> = std::fs::read_dir("/proc/self/fd")
                    .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
                    .unwrap_or_default();
                let mut free = 0;
                let limit = (0u64..).find(|n| {
                    if !used.contains(n) {
                        free += 1;
                    }
                    free == 3
                });
                let limit = limit.unwrap_or(64) + 1;
                let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit, limit);
                let mut buf = [0u8; 8];
                let mut got = Vec::new();
                let code = match recv_with_fds(b.as_fd(), &mut buf, &mut got) {
                    Ok(r) if r.fds_lost && !got.is_empty() && got.len() < 8 => 0,
                    _ => 1,
                };
                // SAFETY: _exit ends the forked child without running the parent's
                // destructors or test harness.
                unsafe { libc::_exit(code) };
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                let status = nix::sys::wait::waitpid(child, None).expect("wait");
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0), "loss not reported or fds not kept");
            }
            Err(e) => panic!("fork: {e}"),
        }
    }
}
