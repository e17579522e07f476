//! The only place in webd with `unsafe`: fd passing, fork+exec of roles, and the few
//! process-level syscalls nix does not wrap safely. Everything here turns raw fds into
//! `OwnedFd` at once and creates every descriptor with CLOEXEC.
#![allow(unsafe_code)]

pub mod fdpass;
pub mod net;
pub mod process;
pub mod shared_table;
pub mod spawn;

pub use fdpass::{recv_with_fds, send_with_fds, send_with_raw_fds, seqpacket_pair};
pub use process::{monotonic_ns, Pid};

use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

/// An anonymous file in memory (memfd_create(2)), close-on-exec: the daemon's totals in
/// systemd's fd store.
pub fn memfd(name: &str) -> std::io::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(std::io::Error::from)
}

/// An error that can say "a signal interrupted the call before it did anything" (EINTR).
pub trait Interruptible {
    fn interrupted(&self) -> bool;
}

impl Interruptible for nix::errno::Errno {
    fn interrupted(&self) -> bool {
        *self == nix::errno::Errno::EINTR
    }
}

impl Interruptible for std::io::Error {
    fn interrupted(&self) -> bool {
        self.kind() == std::io::ErrorKind::Interrupted
    }
}

/// Makes `call` (one syscall, raw through `nix::errno::Errno::result`, nix or std) again
/// for as long as it fails with EINTR; returns its first other result. The one place
/// webd retries an interrupted call. A call with a timeout should compute what is left of
/// its deadline inside `call`, so a retry does not restart the wait.
#[inline]
pub fn retry_eintr<T, E: Interruptible>(mut call: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    loop {
        match call() {
            Err(e) if e.interrupted() => continue,
            result => return result,
        }
    }
}

/// Lends `f` a descriptor number that nothing here owns, only to probe it (fcntl F_GETFD,
/// getsockopt, getsockname). The borrow cannot leave `f`.
pub(crate) fn probe_fd<T>(fd: RawFd, f: impl FnOnce(BorrowedFd<'_>) -> T) -> T {
    // SAFETY: the borrow lives only for the call to `f`, which gets it as
    // `BorrowedFd<'_>` and cannot keep it; callers only probe the number, which is
    // harmless on any number: a closed one yields EBADF and nothing is read or written
    // through it.
    f(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Gives the allocator's free memory back to the kernel (glibc's malloc_trim(3)): glibc
/// returns only the top of its heap by itself, so after thousands of connections closed,
/// their freed TLS state and buffers in the middle would stay resident. Elsewhere a no-op.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes
    // the arena locks itself, and touches no memory the program still owns.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::errno::Errno;

    #[test]
    fn retry_eintr_retries_only_interrupted_calls() {
        let mut calls = 0;
        let r: Result<u32, Errno> = retry_eintr(|| {
            calls += 1;
            if calls < 3 {
                Err(Errno::EINTR)
            } else {
                Ok(7)
            }
        });
        assert_eq!((r, calls), (Ok(7), 3));

        let mut calls = 0;
        let r: std::io::Result<()> = retry_eintr(|| {
            calls += 1;
            Err(std::io::Error::from(std::io::ErrorKind::WouldBlock))
        });
        assert_eq!((r.map_err(|e| e.kind()), calls), (Err(std::io::ErrorKind::WouldBlock), 1));

        let mut calls = 0;
        let r: std::io::Result<()> = retry_eintr(|| {
            calls += 1;
            if calls == 1 {
                Err(Errno::EINTR.into())
            } else {
                Ok(())
            }
        });
        assert_eq!((r.is_ok(), calls), (true, 2));
    }

    #[test]
    fn probe_fd_answers_for_open_and_closed_numbers() {
        use std::os::fd::AsRawFd;
        let (a, _b) = seqpacket_pair().expect("pair");
        let getfd = |fd: BorrowedFd<'_>| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD);
        assert!(probe_fd(a.as_raw_fd(), getfd).is_ok());
        // Far above any limit, so no other test's descriptor can have this number.
        assert_eq!(probe_fd(i32::MAX - 1, getfd), Err(Errno::EBADF));
    }
}
