//! Messages between webd's processes and the channel that carries them.
//!
//! Every channel is an AF_UNIX seqpacket socket: one message per packet, JSON-encoded
//! (one encoding for every role; heartbeats are ten a second, so readability wins over
//! a binary format), with fds riding along as SCM_RIGHTS. Control channels
//! (daemon↔listener, daemon↔manager, manager↔worker) are made fresh for each process a
//! supervisor starts, so an old and a new process never read each other's messages
//! during an overlapping restart.
//!
//! Connections travel on *lanes*: one channel per worker slot, listener → worker, made
//! once by the daemon, which holds both ends forever. The listener sends each accepted
//! connection straight into a worker's lane, so no connection ever sits in the manager,
//! and one queued in a lane survives a crash of the listener, the manager or the worker
//! (the slot's next worker reads the same lane). The manager only steers: over the
//! steering channel (manager → listener, also kept by the daemon) it tells the listener
//! which lanes have a worker and how loaded each is.

use crate::config::Config;
use crate::sys::{self, fdpass::MAX_FDS_PER_MESSAGE};
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

/// `Message::Connections { count: 1 }` as `Channel::send` would encode it.
const ONE_CONNECTION: &[u8] = br#"{"connections":{"count":1}}"#;

/// Largest encoded message; a manager's heartbeat with a few hundred workers fits.
pub const MAX_MESSAGE: usize = 128 * 1024;

/// The process roles below the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Listener,
    Manager,
    Worker,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Listener => "listener",
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message on any channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// Supervisor → new child, first message: settings plus the child's fds.
    Bootstrap(Box<Bootstrap>),
    /// Child → supervisor, every heartbeat interval.
    Heartbeat(Heartbeat),
    /// Stop taking work, finish what is in progress, exit. Idle keep-alive connections
    /// are closed when `deadline_ms` has passed, not before.
    Shutdown { deadline_ms: u64 },
    /// Stop accepting (listener) / answer with `Connection: close` (workers).
    Drain,
    /// Undo `Drain`.
    Resume,
    /// `count` connection fds are attached to this message.
    Connections { count: u32 },
    /// Daemon → listener and manager: the lanes of slots `first..`, one fd each (the
    /// listener gets the sending ends, the manager the receiving ends).
    Lanes { first: u32 },
    /// Manager → listener: which lanes to use and how loaded each is, by slot id.
    Steer { lanes: Vec<LaneState> },
    /// Daemon → manager: grow or shrink the worker pool.
    Scale { workers: u32 },
    /// Daemon → manager: rolling restart of every worker, or of one.
    RestartWorkers { id: Option<u32> },
    /// Daemon → manager → workers: the access log was reopened; its fd is attached.
    ReopenLog,
    /// Daemon → manager: a reloaded configuration; the manager resizes its pool and
    /// replaces every worker, one at a time, so all run with it.
    Reconfigure(Box<Config>),
    /// Old daemon → new daemon (binary upgrade): the sockets to serve and the totals to
    /// continue from; the fds are attached.
    Handoff(Box<Handoff>),
    /// New daemon → old daemon: my tree is up and ready to serve.
    Ready,
    /// Old daemon → new daemon: I stopped accepting on the control and admin sockets;
    /// they are yours.
    TakeOver,
    /// Manager → daemon: a drain or resume has been passed on to every worker.
    Applied,
    /// Manager → daemon: a command finished (`ok`) or failed with a reason.
    Done { ok: bool, detail: String },
}

/// What a new child needs to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bootstrap {
    pub config: Config,
    /// Worker slot number; `None` for the listener and manager.
    pub worker_id: Option<u32>,
    /// Meaning of each attached fd, in order.
    pub fds: Vec<FdKind>,
    /// Start in drain mode (the server is draining when this child starts).
    pub draining: bool,
}

/// One lane as the manager steers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneState {
    /// A worker serves (or is about to serve) this lane.
    pub open: bool,
    /// Its worker's open connections at its last heartbeat.
    pub load: u32,
}

/// What a bootstrap fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdKind {
    /// A bound, listening TCP socket.
    ListenSocket,
    /// The steering channel (manager: send end, listener: receive end).
    Steering,
    /// A worker's lane (receiving end).
    Lane,
    /// Read end of the daemon's lifeline pipe: EOF means the daemon is gone.
    Lifeline,
    /// The access log file, opened O_APPEND by the daemon.
    AccessLog,
    /// The control Unix socket (listening), handed over in a binary upgrade.
    ControlSocket,
    /// The admin HTTP socket (listening), handed over in a binary upgrade.
    AdminSocket,
}

/// What an old daemon hands a new one in a binary upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handoff {
    /// Meaning of each attached fd, in order.
    pub fds: Vec<FdKind>,
    /// Counters the new daemon continues from, so they do not reset.
    pub totals: crate::observe::CarriedTotals,
}

/// A status report: liveness plus the figures the supervisor aggregates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    pub role: Option<Role>,
    pub pid: u32,
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds at send time.
    pub sent_ns: u64,
    pub counters: Counters,
    /// Manager only: one report per worker slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerReport>,
    /// Listener only: the pid of its keeper (`listener::keeper`), if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeper_pid: Option<u32>,
}

/// Cumulative figures of one process (or of all workers, in a manager's heartbeat).
/// Counters only grow within one process's life; the daemon accumulates deltas across
/// restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Listener: connections accepted.
    pub accepted: u64,
    /// Worker: connections received (from its lane, or moved to it by the manager).
    pub received: u64,
    /// Worker: connections open now.
    pub active: u64,
    /// Worker: requests answered.
    pub requests: u64,
    /// Worker: response bytes written (head and body).
    pub response_bytes: u64,
    /// Worker: nanoseconds during which at least one request was in progress.
    pub busy_ns: u64,
    /// Worker: responses by status code, as `[code, count]` pairs.
    pub codes: Vec<(u16, u64)>,
    /// Worker: request durations histogram counts per bucket of `DURATION_BUCKETS`
    /// (the last entry counts the rest), and their sum in nanoseconds.
    pub duration_buckets: Vec<u64>,
    pub duration_sum_ns: u64,
    /// Manager: worker heartbeats missed, over all its workers.
    pub missed_heartbeats: u64,
    /// Manager: worker restarts by reason.
    pub restarts: crate::supervise::ByReason,
    /// Manager: worker heartbeat latencies per bucket of `observe::LATENCY_BUCKETS`
    /// (last entry: above every bound) and their sum in nanoseconds.
    pub latency_buckets: Vec<u64>,
    pub latency_sum_ns: u64,
}

/// A worker slot as the manager sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub id: u32,
    pub pid: u32,
    pub state: webd_proto::WorkerState,
    pub restarts: u64,
    pub missed_heartbeats: u64,
    pub heartbeat_age_ms: f64,
    pub heartbeat_latency_ms: f64,
    pub utilization: f64,
    pub counters: Counters,
}

/// How a receive ended.
// A heartbeat is a couple of hundred bytes, received ten times a second and moved once:
// boxing it would add an allocation for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Recv {
    Message(Message),
    /// Nothing queued now.
    Empty,
    /// The peer end is closed and the queue is drained.
    Closed,
}

/// A seqpacket channel with reusable encode/decode buffers.
pub struct Channel {
    fd: OwnedFd,
    rx: Box<[u8]>,
    tx: Vec<u8>,
}

impl Channel {
    pub fn new(fd: OwnedFd) -> Self {
        Channel { fd, rx: vec![0u8; MAX_MESSAGE].into_boxed_slice(), tx: Vec::with_capacity(512) }
    }

    /// Sends `msg` with `fds` attached. `WouldBlock` when the peer's queue is full.
    pub fn send(&mut self, msg: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.tx.clear();
        serde_json::to_writer(&mut self.tx, msg).map_err(io::Error::other)?;
        sys::send_with_fds(self.fd.as_fd(), &self.tx, fds)
    }

    /// Sends one connection fd: `Connections { count: 1 }`, pre-encoded, because between
    /// the listener's accept4 and this send the connection exists only in the listener.
    pub fn send_connection(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.send_connection_announced(fd, || {})
    }

    /// As `send_connection`, calling `announce` right before the syscall (see
    /// `sys::send_with_fds_announced`).
    pub fn send_connection_announced(&mut self, fd: BorrowedFd<'_>, announce: impl FnOnce()) -> io::Result<()> {
        sys::send_with_fds_announced(self.fd.as_fd(), ONE_CONNECTION, &[fd], announce)
    }

    /// Receives one message, appending its fds to `fds`.
    pub fn recv(&mut self, fds: &mut Vec<OwnedFd>) -> io::Result<Recv> {
        let mut received = sys::recv_with_fds(self.fd.as_fd(), &mut self.rx, fds);
        if received.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset) {
            // The peer died with messages of ours unread. The kernel reports that once,
            // before the messages the peer had sent us: read on, they are still queued
            // (and end-of-file follows them).
            received = sys::recv_with_fds(self.fd.as_fd(), &mut self.rx, fds);
        }
        match received {
            Ok(r) if r.len == 0 => Ok(Recv::Closed),
            Ok(r) => match serde_json::from_slice(&self.rx[..r.len]) {
                // The fds that arrived are kept and used; say loudly that some did not.
                Ok(msg) if r.fds_lost => {
                    tracing::error!(arrived = fds.len(), "passed descriptors lost: this process is out of descriptors");
                    Ok(Recv::Message(msg))
                }
                Ok(msg) => Ok(Recv::Message(msg)),
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad message: {e}"))),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Recv::Empty),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout` for one message (used only for the bootstrap).
    pub fn recv_blocking(&mut self, fds: &mut Vec<OwnedFd>, timeout: Duration) -> io::Result<Message> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.recv(fds)? {
                Recv::Message(msg) => return Ok(msg),
                Recv::Closed => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "channel closed")),
                Recv::Empty => {}
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no message in time"));
            }
            wait_readable(self.fd.as_fd(), left)?;
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// How many fds the next queued message carries, without taking it (`None`: nothing
    /// queued). A peek without a control buffer leaves the fds in the queue.
    pub fn peek_fd_count(&mut self) -> io::Result<Option<usize>> {
        let mut resets = 0;
        let n = loop {
            match crate::sys::retry_eintr(|| {
                nix::sys::socket::recv(
                    self.fd.as_raw_fd(),
                    &mut self.rx,
                    nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                )
            }) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                // Reported once when the peer died with our messages unread (see `recv`).
                Err(nix::errno::Errno::ECONNRESET) if resets == 0 => resets += 1,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Ok(Some(0)); // the peer closed: receiving it costs nothing
        }
        Ok(Some(match serde_json::from_slice(&self.rx[..n]) {
            Ok(Message::Connections { count }) => count as usize,
            Ok(Message::Bootstrap(boot)) => boot.fds.len(),
            Ok(Message::Handoff(h)) => h.fds.len(),
            Ok(Message::Lanes { .. }) => MAX_FDS_PER_MESSAGE,
            Ok(Message::ReopenLog) => 1,
            _ => 0,
        }))
    }

    /// Whether the next message's fds fit in `free` descriptors (keeping `room` for our
    /// own work). Cheap when there is plenty of room; peeks at the message otherwise.
    pub fn next_fits(&mut self, free: usize, room: usize) -> bool {
        if free >= MAX_FDS_PER_MESSAGE + room {
            return true;
        }
        match self.peek_fd_count() {
            Ok(Some(n)) => n + room <= free,
            Ok(None) => true, // nothing queued: a receive just finds it empty
            Err(_) => false,
        }
    }

    /// Whether a message would be accepted now (the peer's queue is not full). Unix
    /// seqpacket queues hold only `net.unix.max_dgram_qlen` messages (10 by default), so
    /// callers check this before taking a connection into their hands.
    pub fn has_room(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            && fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLOUT))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Blocks until `fd` is readable or `timeout` passes.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let deadline = std::time::Instant::now() + Duration::from_millis(ms.into());
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    crate::sys::retry_eintr(|| {
        let polled = poll(&mut fds, PollTimeout::from(ms));
        // A signal does not restart the wait: a retry gets what is left of it.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        polled
    })?;
    Ok(())
}

/// Upper bounds in seconds of the request-duration histogram buckets (shared by the
/// workers that count and the daemon that exports).
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Receives the bootstrap message a supervisor sends first, and sorts its fds.
pub fn receive_bootstrap(channel: &mut Channel) -> io::Result<(Bootstrap, BootstrapFds)> {
    let mut fds = Vec::new();
    match channel.recv_blocking(&mut fds, Duration::from_secs(10))? {
        Message::Bootstrap(boot) => {
            let boot = *boot;
            let sorted = sort_fds(&boot.fds, fds)?;
            Ok((boot, sorted))
        }
        other => Err(io::Error::other(format!("expected bootstrap, got {other:?}"))),
    }
}

/// A child's fds from its bootstrap, by meaning.
#[derive(Default)]
pub struct BootstrapFds {
    pub listen: Vec<OwnedFd>,
    pub steering: Option<OwnedFd>,
    pub lane: Option<OwnedFd>,
    pub lifeline: Option<OwnedFd>,
    pub access_log: Option<OwnedFd>,
    pub control: Option<OwnedFd>,
    pub admin: Option<OwnedFd>,
}

/// Sorts fds by the kinds announced beside them.
pub fn sort_fds(kinds: &[FdKind], fds: Vec<OwnedFd>) -> io::Result<BootstrapFds> {
    if kinds.len() != fds.len() {
        return Err(io::Error::other(format!("announced {} fds but carried {}", kinds.len(), fds.len())));
    }
    let mut sorted = BootstrapFds::default();
    for (kind, fd) in kinds.iter().zip(fds) {
        match kind {
            FdKind::ListenSocket => sorted.listen.push(fd),
            FdKind::Steering => sorted.steering = Some(fd),
            FdKind::Lane => sorted.lane = Some(fd),
            FdKind::Lifeline => sorted.lifeline = Some(fd),
            FdKind::AccessLog => sorted.access_log = Some(fd),
            FdKind::ControlSocket => sorted.control = Some(fd),
            FdKind::AdminSocket => sorted.admin = Some(fd),
        }
    }
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pre_encoded_connection_message_is_the_encoding_of_one_connection() {
        let encoded = serde_json::to_vec(&Message::Connections { count: 1 }).expect("encode");
        assert_eq!(encoded, ONE_CONNECTION);
    }

    #[test]
    fn messages_round_trip_with_fds() {
        let (a, b) = sys::seqpacket_pair().expect("pair");
        let (x, _y) = sys::seqpacket_pair().expect("pair");
        let mut tx = Channel::new(a);
        let mut rx = Channel::new(b);
        tx.send(&Message::Connections { count: 1 }, &[x.as_fd()]).expect("send");
        let hb = Heartbeat { role: Some(Role::Worker), pid: 7, seq: 3, sent_ns: 11, ..Default::default() };
        tx.send(&Message::Heartbeat(hb), &[]).expect("send");
        let mut fds = Vec::new();
        assert!(matches!(rx.recv(&mut fds), Ok(Recv::Message(Message::Connections { count: 1 }))));
        assert_eq!(fds.len(), 1);
        match rx.recv(&mut fds) {
            Ok(Recv::Message(Message::Heartbeat(hb))) => assert_eq!((hb.pid, hb.seq, hb.sent_ns), (7, 3, 11)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(rx.recv(&mut fds), Ok(Recv::Empty)));
        drop(tx);
        assert!(matches!(rx.recv(&mut fds), Ok(Recv::Closed)));
    }

    /// A peer that dies with our messages unread makes the kernel report ECONNRESET
    /// once, ahead of the messages it had sent us. Those must still be read (they may
    /// carry connections), then the close: with edge-triggered polling there is no
    /// second event to learn of it from.
    #[test]
    fn a_peer_dying_with_unread_messages_still_delivers_its_own_then_reads_as_closed() {
        let (a, b) = sys::seqpacket_pair().expect("pair");
        let (x, _y) = sys::seqpacket_pair().expect("pair");
        let mut ours = Channel::new(a);
        let mut peer = Channel::new(b);
        ours.send(&Message::Drain, &[]).expect("send");
        peer.send(&Message::Connections { count: 1 }, &[x.as_fd()]).expect("send");
        drop(peer);
        let mut fds = Vec::new();
        assert!(matches!(ours.peek_fd_count(), Ok(Some(1))));
        assert!(matches!(ours.recv(&mut fds), Ok(Recv::Message(Message::Connections { count: 1 }))));
        assert_eq!(fds.len(), 1);
        assert!(matches!(ours.peek_fd_count(), Ok(Some(0))));
        assert!(matches!(ours.recv(&mut fds), Ok(Recv::Closed)));
        assert!(matches!(ours.recv(&mut fds), Ok(Recv::Closed)));
    }
}
