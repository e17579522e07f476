//! Unix seqpacket socketpairs and SCM_RIGHTS fd passing.
//!
//! We use nix `sendmsg`/`recvmsg` directly rather than the `sendfd` crate: `sendfd`
//! receives without `MSG_CMSG_CLOEXEC` (fds would leak into every later exec) and
//! silently drops fds beyond its buffer (no `MSG_CTRUNC` check). Here every received
//! fd carries CLOEXEC, and a truncated control message is an error after the fds that
//! did arrive are closed.

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Most fds one message may carry (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS_PER_MESSAGE: usize = 64;

/// A connected AF_UNIX SOCK_SEQPACKET pair, both ends CLOEXEC: message boundaries are
/// kept and a closed peer shows as EOF, which plain datagram pairs cannot tell.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
        .map_err(io::Error::from)
}

/// Sends one message with `fds` attached. Never blocks: a full peer gives `WouldBlock`.
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    debug_assert!(fds.len() <= MAX_FDS_PER_MESSAGE);
    let raw: smallvec_fds::Fds = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(raw.as_slice())];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => return Err(io::Error::other(format!("short seqpacket send: {n} of {} bytes", bytes.len()))),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message into `buf`, appending any passed fds to `fds` (with CLOEXEC).
/// Returns the message length; `Ok(0)` means the peer closed. Never blocks.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut cmsg_buf = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_buf),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(msg) => break msg,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let first_new = fds.len();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: the kernel just installed `fd` in our table for this message;
                // nothing else owns it, so taking ownership here is the only reference.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        fds.truncate(first_new); // closes the ones that did arrive
        return Err(io::Error::other("control message truncated: passed fds were lost"));
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        fds.truncate(first_new);
        return Err(io::Error::other("message larger than the receive buffer"));
    }
    Ok(msg.bytes)
}

/// A fixed-capacity list of raw fds so a send allocates nothing.
mod smallvec_fds {
    use super::{RawFd, MAX_FDS_PER_MESSAGE};

    pub struct Fds {
        fds: [RawFd; MAX_FDS_PER_MESSAGE],
        len: usize,
    }

    impl Fds {
        pub fn as_slice(&self) -> &[RawFd] {
            &self.fds[..self.len]
        }
    }

    impl FromIterator<RawFd> for Fds {
        fn from_iter<I: IntoIterator<Item = RawFd>>(iter: I) -> Self {
            let mut out = Fds { fds: [-1; MAX_FDS_PER_MESSAGE], len: 0 };
            for fd in iter.into_iter().take(MAX_FDS_PER_MESSAGE) {
                out.fds[out.len] = fd;
                out.len += 1;
            }
            out
        }
    }
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
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).expect("recv");
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        assert!(fds.iter().all(|fd| cloexec(fd.as_fd())));
    }

    #[test]
    fn closed_peer_reads_as_eof_and_empty_queue_would_block() {
        let (a, b) = seqpacket_pair().expect("pair");
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let err = recv_with_fds(b.as_fd(), &mut buf, &mut fds).expect_err("nothing queued");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).expect("eof"), 0);
    }

    #[test]
    fn too_many_fds_is_an_error_not_a_silent_loss() {
        let (a, b) = seqpacket_pair().expect("pair");
        let pairs: Vec<_> = (0..MAX_FDS_PER_MESSAGE / 2).map(|_| seqpacket_pair().expect("pair")).collect();
        let fds: Vec<BorrowedFd<'_>> = pairs.iter().flat_map(|(p, q)| [p.as_fd(), q.as_fd()]).collect();
        send_with_fds(a.as_fd(), b"x", &fds).expect("send");
        // Receive with a deliberately small control buffer to provoke MSG_CTRUNC.
        let mut cmsg_buf = nix::cmsg_space!([RawFd; 2]);
        let mut data = [0u8; 4];
        let mut iov = [IoSliceMut::new(&mut data)];
        let msg =
            recvmsg::<()>(b.as_raw_fd(), &mut iov, Some(&mut cmsg_buf), MsgFlags::MSG_CMSG_CLOEXEC).expect("recvmsg");
        assert!(msg.flags.contains(MsgFlags::MSG_CTRUNC), "kernel reports the truncation we check for");
    }
}
