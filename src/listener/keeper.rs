//! The listener's keeper: a child sharing the listener's descriptor table, so that a
//! connection the listener accepted but had not yet sent into a lane outlives the
//! listener, whatever kills it, and is sent on.
//!
//! Per batch of connections the listener stores words in a page it shares with the
//! keeper: the lane it will send into (before the first `accept4`) and the connections it
//! is sending (just before `sendmsg`, cleared once it has closed its copies). When the
//! listener dies, the keeper takes every accepted connection left in the table except
//! those being sent (the kernel has queued them already, unless the listener died in the
//! few instructions before the syscall) and sends them into that lane, each marked TLS or
//! not by the listening socket its local address belongs to.

use super::ACCEPT_BATCH;
use crate::ipc::{LaneSender, Transport};
use crate::sys::shared_table::{self, SharedWords};
use anyhow::Context;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Shared word: the lane the next connections go to.
const LANE: usize = 0;
/// Shared words from here: the connections being sent, then -1s.
const SENDING: usize = 1;
/// How many words there are.
const WORDS: usize = SENDING + ACCEPT_BATCH;
/// How long the keeper waits for room in the lane before giving a connection up.
const ROOM_WAIT: Duration = Duration::from_secs(2);
/// What `ps` shows for the keeper (not `webd: listener`, which names the listener alone).
const TITLE: &str = "webd: keeper";

pub struct Keeper {
    words: Option<SharedWords>,
    pid: Option<Pid>,
    sockets: Sockets,
}

/// The listener's sockets' local addresses and what each serves, so the keeper can tell a
/// TLS connection from a plain one by the address it was accepted on.
#[derive(Debug, Clone, Default)]
pub struct Sockets(Vec<(SocketAddr, Transport)>);

impl Sockets {
    pub fn of(listen: &[(OwnedFd, Transport)]) -> Sockets {
        let local = |fd: &OwnedFd| socket2::SockRef::from(fd).local_addr().ok().and_then(|a| a.as_socket());
        Sockets(listen.iter().filter_map(|(fd, t)| local(fd).map(|a| (a, *t))).collect())
    }

    /// How a connection whose local address is `addr` is served: the socket bound to that
    /// address exactly, else one bound to the wildcard address on its port.
    fn transport_of(&self, addr: Option<SocketAddr>) -> Transport {
        let Some(addr) = addr else { return Transport::Plain };
        let exact = self.0.iter().find(|(a, _)| *a == addr);
        let wildcard = || self.0.iter().find(|(a, _)| a.port() == addr.port() && a.ip().is_unspecified());
        exact.or_else(wildcard).map_or(Transport::Plain, |(_, t)| *t)
    }
}

impl Keeper {
    /// Forks the keeper; call while the listener has a single thread. Without a keeper the
    /// listener still serves, but a connection it holds when it dies is lost; `check`
    /// tries again.
    pub fn start(sockets: Sockets) -> Keeper {
        let words =
            SharedWords::new(WORDS).inspect_err(|e| tracing::error!(error = %e, "no page to share with a keeper")).ok();
        let mut keeper = Keeper { words, pid: None, sockets };
        keeper.spawn();
        keeper
    }

    fn spawn(&mut self) {
        let Some(words) = &self.words else { return };
        let listener = nix::unistd::getpid();
        let sockets = &self.sockets;
        match shared_table::fork_sharing_files(|| run(listener, words, sockets)) {
            Ok(pid) => {
                tracing::debug!(pid = pid.as_raw(), "keeper started");
                self.pid = Some(pid);
            }
            Err(e) => tracing::error!(error = %e, "cannot start a keeper: a connection held at a crash would be lost"),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid.map(|p| p.as_raw() as u32)
    }

    /// Reaps a keeper that exited (someone killed it) and starts another.
    pub fn check(&mut self) {
        if let Some(pid) = self.pid {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                    tracing::warn!(pid = pid.as_raw(), "keeper exited: starting another");
                }
                Err(e) => tracing::warn!(pid = pid.as_raw(), error = %e, "keeper gone: starting another"),
                Ok(_) => return, // alive, stopped or continued
            }
            self.pid = None;
        }
        self.spawn();
    }

    /// The next accepted connection goes to the lane at `fd`.
    pub fn before_accept(&self, lane: RawFd) {
        self.store(LANE, lane);
    }

    /// The connections `fds` are about to be sent: from here the kernel may hold them.
    pub fn sending(&self, fds: &[OwnedFd]) {
        for (i, fd) in fds.iter().take(ACCEPT_BATCH).enumerate() {
            self.store(SENDING + i, fd.as_raw_fd());
        }
    }

    /// The `count` connections being sent are no longer in our table, or were not sent
    /// after all.
    pub fn not_sending(&self, count: usize) {
        for i in 0..count.min(ACCEPT_BATCH) {
            self.store(SENDING + i, -1);
        }
    }

    fn store(&self, word: usize, value: RawFd) {
        if let Some(words) = &self.words {
            words.word(word).store(value, Ordering::Release);
        }
    }
}

/// The keeper's whole life: wait for the listener to die, send on what it held. Returns
/// the keeper's exit code.
fn run(listener: Pid, words: &SharedWords, sockets: &Sockets) -> i32 {
    if let Err(e) = shared_table::retitle(TITLE) {
        tracing::warn!(error = %e, "keeper keeps the listener's title");
    }
    // One the listener restarts inherits its SCHED_BATCH: a rescue should not wait.
    if let Err(e) = crate::sys::process::schedule_in_batches(false) {
        tracing::warn!(error = %e, "keeper keeps the listener's SCHED_BATCH");
    }
    if let Err(e) = shared_table::wait_for_parent_exit(listener) {
        tracing::error!(error = %e, "keeper cannot watch the listener");
        return 1;
    }
    match rescue(words, sockets) {
        Ok(0) => 0,
        Ok(sent) => {
            tracing::warn!(%listener, connections = sent, "the listener died holding connections: the keeper sent them on");
            0
        }
        Err(e) => {
            tracing::error!(%listener, error = %format!("{e:#}"), "keeper could not send on the listener's connections");
            1
        }
    }
}

/// Sends every connection the dead listener left in the table into its chosen lane.
fn rescue(words: &SharedWords, sockets: &Sockets) -> anyhow::Result<usize> {
    let lane = words.word(LANE).load(Ordering::Acquire);
    let mut sending = [-1; ACCEPT_BATCH];
    for (i, fd) in sending.iter_mut().enumerate() {
        *fd = words.word(SENDING + i).load(Ordering::Acquire);
    }
    let held = shared_table::orphaned_connections(&sending).context("listing the listener's descriptors")?;
    if held.is_empty() {
        return Ok(0);
    }
    let lane = shared_table::orphaned_seqpacket(lane).with_context(|| format!("no lane at fd {lane}"))?;
    let mut lane = LaneSender::new(lane);
    for fd in &held {
        let local = socket2::SockRef::from(fd).local_addr().ok().and_then(|a| a.as_socket());
        send_when_room(&mut lane, fd.as_fd(), sockets.transport_of(local)).context("sending into the lane")?;
    }
    Ok(held.len())
}

/// The lane had room when the listener chose it, but workers may be slow to read.
fn send_when_room(lane: &mut LaneSender, fd: BorrowedFd<'_>, transport: Transport) -> io::Result<()> {
    let deadline = Instant::now() + ROOM_WAIT;
    loop {
        match lane.send_connection(fd, transport) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rescued_connection_is_tls_when_its_address_is_a_tls_sockets() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("test address");
        let sockets = Sockets(vec![
            (addr("127.0.0.1:80"), Transport::Plain),
            (addr("0.0.0.0:443"), Transport::Tls),
            (addr("127.0.0.2:443"), Transport::Plain),
        ]);
        assert_eq!(sockets.transport_of(Some(addr("127.0.0.1:80"))), Transport::Plain);
        assert_eq!(sockets.transport_of(Some(addr("10.1.2.3:443"))), Transport::Tls);
        assert_eq!(sockets.transport_of(Some(addr("127.0.0.2:443"))), Transport::Plain, "exact match first");
        assert_eq!(sockets.transport_of(None), Transport::Plain);
    }
}
