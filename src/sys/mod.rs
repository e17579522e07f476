//! The only place in webd with `unsafe`: fd passing, fork+exec of roles, and the few
//! process-level syscalls nix does not wrap safely. Everything here turns raw fds into
//! `OwnedFd` at once and creates every descriptor with CLOEXEC.
#![allow(unsafe_code)]

pub mod fdpass;
pub mod net;
pub mod process;
pub mod spawn;

pub use fdpass::{recv_with_fds, send_with_fds, seqpacket_pair};
pub use process::{monotonic_ns, Pid};
