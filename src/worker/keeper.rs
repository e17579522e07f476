//! A worker's keeper: a child sharing the worker's descriptor table, so that the
//! connections a worker holds outlive it, whatever kills it (SIGKILL, abort, a panic,
//! which aborts), and go to the slot's next worker with what it recorded of each
//! ([`super::records`]).
//!
//! It waits for the worker to exit. A worker that exits on purpose says so first (a
//! shared word) and the keeper leaves. Otherwise it takes every accepted TCP connection
//! left in the table, reads each one's record, and sends them, with the file a response
//! in progress was sending, into the worker's own lane (whose sending end the worker got
//! at bootstrap): the slot's next worker reads it, or, while the slot has no worker, the
//! manager moves them to a live one. The receiver decides what each becomes (served on,
//! replayed, resumed, or closed) and counts it; the keeper only carries.

use super::records::{self, Found};
use crate::ipc::{Connection, Connections, Fd, LaneSender, Salvage, Transport};
use crate::sys::shared_table::{self, SharedWords};
use anyhow::Context;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Shared word: 1 once the worker exits on purpose (nothing to rescue).
const EXITING: usize = 0;
/// Shared word: the lane's sending end.
const LANE: usize = 1;
/// How long the keeper waits for room in the lane (the slot's next worker may be
/// starting, or backing off) before closing what is left.
const ROOM_WAIT: Duration = Duration::from_secs(10);
/// Encoded bytes per message, below `ipc::MAX_MESSAGE` with room for the JSON around.
const BYTES_PER_MESSAGE: usize = 96 * 1024;

pub struct Keeper {
    words: Option<SharedWords>,
    pid: Option<Pid>,
    worker: u32,
}

impl Keeper {
    /// Forks the keeper of worker `worker` (call while the worker has a single thread),
    /// to send its connections into the lane at `lane` when it dies. Without a lane or a
    /// table there is nothing to keep: the worker serves as before.
    pub fn start(worker: u32, lane: Option<RawFd>, table: Option<&records::Tables>) -> Keeper {
        let words = match (lane, table) {
            (Some(lane), Some(_)) => SharedWords::new(2)
                .inspect(|words| words.word(LANE).store(lane, Ordering::Release))
                .inspect_err(|e| tracing::error!(worker, error = %e, "no page to share with a keeper"))
                .ok(),
            _ => None,
        };
        let mut keeper = Keeper { words, pid: None, worker };
        keeper.spawn(table);
        keeper
    }

    fn spawn(&mut self, table: Option<&records::Tables>) {
        let (Some(words), Some(table)) = (&self.words, table) else { return };
        let worker = nix::unistd::getpid();
        let id = self.worker;
        match shared_table::fork_sharing_files(|| run(worker, id, words, table)) {
            Ok(pid) => {
                tracing::debug!(worker = id, pid = pid.as_raw(), "worker keeper started");
                self.pid = Some(pid);
            }
            Err(e) => {
                tracing::error!(worker = id, error = %e, "cannot start a keeper: connections would die with this worker")
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid.map(|p| p.as_raw() as u32)
    }

    /// Reaps a keeper that exited (someone killed it) and starts another.
    pub fn check(&mut self, table: Option<&records::Tables>) {
        if let Some(pid) = self.pid {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => {
                    tracing::warn!(worker = self.worker, pid = pid.as_raw(), "worker keeper exited: starting another");
                }
                Err(e) => {
                    tracing::warn!(worker = self.worker, pid = pid.as_raw(), error = %e, "worker keeper gone: starting another")
                }
                Ok(_) => return,
            }
            self.pid = None;
        }
        self.spawn(table);
    }

    /// The worker is exiting on purpose: whatever is left closes with it.
    pub fn exiting(&self) {
        if let Some(words) = &self.words {
            words.word(EXITING).store(1, Ordering::Release);
        }
    }
}

/// The keeper's whole life; returns its exit code.
fn run(worker: Pid, id: u32, words: &SharedWords, table: &records::Tables) -> i32 {
    if let Err(e) = shared_table::retitle(&format!("{}keeper {id}", crate::ROLE_PREFIX)) {
        tracing::warn!(worker = id, error = %e, "worker keeper keeps the worker's title");
    }
    if let Err(e) = shared_table::wait_for_parent_exit(worker) {
        tracing::error!(worker = id, error = %e, "worker keeper cannot watch its worker");
        return 1;
    }
    if words.word(EXITING).load(Ordering::Acquire) == 1 {
        return 0;
    }
    match rescue(words, table) {
        Ok(Rescue { sent: 0, .. }) => 0,
        Ok(Rescue { sent, left }) => {
            tracing::warn!(
                worker = id,
                pid = worker.as_raw(),
                connections = sent,
                left,
                "worker died holding connections: its keeper sent them on"
            );
            0
        }
        Err(e) => {
            tracing::error!(worker = id, pid = worker.as_raw(), error = %format!("{e:#}"), "worker keeper could not send on the dead worker's connections");
            1
        }
    }
}

/// What a rescue did: connections sent on, and those left to close (leaving anyway).
struct Rescue {
    sent: usize,
    left: usize,
}

/// One connection to send on, owning what the dead worker left.
struct Held {
    fd: OwnedFd,
    salvage: Salvage,
    carried: Vec<u8>,
    /// Shared: connections sending the same file share the worker's one fd of it.
    file: Option<Rc<OwnedFd>>,
}

impl Held {
    /// Bytes it adds to a message (hex doubles the carried ones).
    fn encoded_len(&self) -> usize {
        let memory = match &self.salvage {
            Salvage::Response(r) => r.memory.len(),
            _ => 0,
        };
        256 + 2 * (memory + self.carried.len())
    }

    fn fds(&self) -> usize {
        1 + usize::from(self.file.is_some())
    }

    fn lend(&self) -> Connection<'_> {
        Connection {
            carried: Some(self.carried.clone()),
            salvage: Some(Box::new(self.salvage.clone())),
            file: self.file.as_deref().map(Fd::lend),
            ..Connection::new(Fd::lend(&self.fd), Transport::Plain)
        }
    }
}

/// Sends every connection the dead worker left in the table into its lane.
fn rescue(words: &SharedWords, table: &records::Tables) -> anyhow::Result<Rescue> {
    let found = shared_table::orphaned_connections(&[]).context("listing the worker's descriptors")?;
    if found.is_empty() {
        return Ok(Rescue { sent: 0, left: 0 });
    }
    // The open-file cache shares one fd among every connection sending that file, so a
    // file is taken once and lent to each. A stale record naming an fd since reused for
    // another file is refused by the receiver, which checks the file's identity.
    let mut files: HashMap<RawFd, Option<Rc<OwnedFd>>> = HashMap::new();
    let mut held = Vec::new();
    let mut left = 0;
    for fd in found {
        match records::read(table, fd.as_raw_fd(), || kernel_read(&fd)) {
            Found::Leave => left += 1, // closes as the keeper exits
            Found::Salvage { salvage, carried, file } => {
                let file = file.and_then(|raw| {
                    files.entry(raw).or_insert_with(|| shared_table::orphaned_file(raw).map(Rc::new)).clone()
                });
                held.push(Held { fd, salvage, carried, file });
            }
        }
    }
    if held.is_empty() {
        return Ok(Rescue { sent: 0, left });
    }
    let lane = words.word(LANE).load(Ordering::Acquire);
    let lane = shared_table::orphaned_seqpacket(lane).with_context(|| format!("no lane at fd {lane}"))?;
    let mut lane = LaneSender::new(lane);
    let mut rest = &held[..];
    while !rest.is_empty() {
        let n = next_batch(rest);
        let conns = Connections(rest[..n].iter().map(Held::lend).collect());
        send_when_room(&mut lane, &conns).context("sending into the lane")?;
        rest = &rest[n..];
    }
    Ok(Rescue { sent: held.len(), left })
}

/// Bytes the kernel says were read from `fd` (by the dead worker: nobody else reads it).
fn kernel_read(fd: &OwnedFd) -> Option<u64> {
    use std::os::fd::AsFd;
    crate::sys::net::byte_counts(fd.as_fd()).ok().map(|counts| counts.read)
}

/// How many of `held` go in the next message: at most `MAX_FDS_PER_MESSAGE` descriptors
/// and `BYTES_PER_MESSAGE` encoded bytes (at least one connection).
fn next_batch(held: &[Held]) -> usize {
    let (mut fds, mut bytes, mut count) = (0, 0, 0);
    for h in held {
        fds += h.fds();
        bytes += h.encoded_len();
        if count > 0 && (fds > crate::sys::fdpass::MAX_FDS_PER_MESSAGE || bytes > BYTES_PER_MESSAGE) {
            break;
        }
        count += 1;
    }
    count
}

/// The lane holds only a few messages, and its next reader may be starting.
fn send_when_room(lane: &mut LaneSender, conns: &Connections<'_>) -> io::Result<()> {
    let deadline = Instant::now() + ROOM_WAIT;
    loop {
        match lane.send(conns) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            result => return result,
        }
    }
}
