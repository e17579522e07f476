//! The only place in webd with `unsafe`: fd passing, fork+exec of roles, and the few
//! process-level syscalls nix does not wrap safely. Everything here turns raw fds into
//! `OwnedFd` at once and creates every descriptor with CLOEXEC.
#![allow(unsafe_code)]

pub mod fdpass;
pub mod net;
pub mod process;
pub mod shared_table;
pub mod spawn;

pub use fdpass::{recv_with_fds, send_with_fds, send_with_fds_announced, seqpacket_pair};
pub use process::{monotonic_ns, Pid};

/// Borrows a raw descriptor number only to probe it (fcntl F_GETFD, getsockopt,
/// getsockname).
pub(crate) fn borrow_for_probe(fd: std::os::fd::RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: callers only probe the number, which is harmless on any number: a closed
    // one yields EBADF and nothing is read or written through it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}
