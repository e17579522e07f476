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

mod fd;
mod messages;

pub use fd::Fd;
pub use messages::*;

use crate::sys::{self, fdpass::MAX_FDS_PER_MESSAGE};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

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

/// A message type of one channel direction. `Lending<'a>` is the same type with its
/// descriptors lent for `'a`: what a sender that keeps them builds.
pub trait Message: DeserializeOwned {
    type Lending<'a>: Serialize;
}

/// What a channel direction that carries nothing receives: no message decodes as one.
#[derive(Debug, Serialize, Deserialize)]
pub enum Nothing {}

macro_rules! messages {
    (lending: $($lending:ident),+; plain: $($plain:ident),+) => {
        $(impl Message for $lending<'static> { type Lending<'a> = $lending<'a>; })+
        $(impl Message for $plain { type Lending<'a> = $plain; })+
    };
}
messages!(
    lending: ToListener, ToManager, ToWorker, Connections, ToSuccessor;
    plain: Heartbeat, FromManager, Steer, ToPredecessor, Nothing
);

// Each channel's two ends, named by who holds them.
/// The daemon's end of its channel to a listener.
pub type ListenerLink = Channel<ToListener<'static>, Heartbeat>;
/// The listener's end of its channel to the daemon.
pub type ListenerControl = Channel<Heartbeat, ToListener<'static>>;
/// The daemon's end of its channel to a manager.
pub type ManagerLink = Channel<ToManager<'static>, FromManager>;
/// The manager's end of its channel to the daemon.
pub type ManagerControl = Channel<FromManager, ToManager<'static>>;
/// The manager's end of its channel to a worker.
pub type WorkerLink = Channel<ToWorker<'static>, Heartbeat>;
/// The worker's end of its channel to the manager.
pub type WorkerControl = Channel<Heartbeat, ToWorker<'static>>;
/// The listener's end of a lane.
pub type LaneSender = Channel<Connections<'static>, Nothing>;
/// A worker's end of its lane (the manager also reads lanes no worker reads).
pub type LaneReader = Channel<Nothing, Connections<'static>>;
/// The manager's end of the steering channel.
pub type SteeringSender = Channel<Steer, Nothing>;
/// The listener's end of the steering channel.
pub type SteeringReader = Channel<Nothing, Steer>;
/// An old daemon's end of the upgrade channel.
pub type SuccessorLink = Channel<ToSuccessor<'static>, ToPredecessor>;
/// A new daemon's end of the upgrade channel.
pub type PredecessorLink = Channel<ToPredecessor, ToSuccessor<'static>>;

/// How long a new process waits for its bootstrap (or a new daemon for its handoff).
pub const BOOTSTRAP_WAIT: Duration = Duration::from_secs(10);

/// How a receive ended.
#[derive(Debug)]
pub enum Recv<R> {
    Message(R),
    /// Nothing queued now.
    Empty,
    /// The peer end is closed and the queue is drained.
    Closed,
}

/// Where a `drain` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing more is queued now.
    Empty,
    /// The peer is gone; everything it sent has been read.
    Closed,
}

/// Why a receive failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A packet that is not a message of this channel (it was consumed; the next one
    /// may be fine).
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// One end of a seqpacket channel that sends `S` and receives `R`, with reusable
/// buffers. A packet is one byte counting the attached descriptors (so a receiver can
/// tell whether it has room for them before taking any), then the message as JSON.
pub struct Channel<S, R> {
    fd: OwnedFd,
    rx: Box<[u8]>,
    tx: Vec<u8>,
    _types: PhantomData<fn(S) -> R>,
}

impl<S: Message, R: Message> Channel<S, R> {
    pub fn new(fd: OwnedFd) -> Self {
        Channel { fd, rx: vec![0u8; MAX_MESSAGE].into_boxed_slice(), tx: Vec::with_capacity(512), _types: PhantomData }
    }

    /// Sends `msg` with the descriptors it names. `WouldBlock` when the peer's queue is
    /// full.
    pub fn send(&mut self, msg: &S::Lending<'_>) -> io::Result<()> {
        self.tx.clear();
        self.tx.push(0); // the descriptor count, known once encoded
        let fds = fd::encode(msg, &mut self.tx).map_err(io::Error::other)?;
        self.tx[0] = u8::try_from(fds.len()).map_err(|_| io::Error::other("too many descriptors in one message"))?;
        // `msg`, borrowed for this call, keeps every named descriptor open.
        sys::send_with_raw_fds(self.fd.as_fd(), &self.tx, &fds, || {})
    }

    /// Receives one message.
    pub fn recv(&mut self) -> Result<Recv<R>, RecvError> {
        let mut fds = Vec::new();
        let mut received = sys::recv_with_fds(self.fd.as_fd(), &mut self.rx, &mut fds);
        if received.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset) {
            // The peer died with messages of ours unread. The kernel reports that once,
            // before the messages the peer had sent us: read on, they are still queued
            // (and end-of-file follows them).
            received = sys::recv_with_fds(self.fd.as_fd(), &mut self.rx, &mut fds);
        }
        let received = match received {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Recv::Empty),
            Err(e) => return Err(e.into()),
        };
        if received.len == 0 {
            return Ok(Recv::Closed);
        }
        if received.fds_lost {
            tracing::error!(arrived = fds.len(), "passed descriptors lost: this process is out of descriptors");
        }
        let json = &self.rx[1..received.len];
        fd::decode(json, fds).map(Recv::Message).map_err(RecvError::Protocol)
    }

    /// Receives every queued message, handing each to `each`; a packet that is not a
    /// message of this channel is logged and skipped.
    pub fn drain(&mut self, mut each: impl FnMut(R)) -> Result<Drained, RecvError> {
        loop {
            match self.recv() {
                Ok(Recv::Message(msg)) => each(msg),
                Ok(Recv::Empty) => return Ok(Drained::Empty),
                Ok(Recv::Closed) => return Ok(Drained::Closed),
                Err(RecvError::Protocol(e)) => tracing::warn!(error = %e, "bad message skipped"),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits up to `timeout` for one message (used only for a bootstrap or a handoff).
    pub fn recv_blocking(&mut self, timeout: Duration) -> Result<R, RecvError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.recv()? {
                Recv::Message(msg) => return Ok(msg),
                Recv::Closed => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "channel closed").into()),
                Recv::Empty => {}
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no message in time").into());
            }
            wait_readable(self.fd.as_fd(), left)?;
        }
    }

    /// How many descriptors the next queued message carries, without taking it
    /// (`None`: nothing queued; `Some(0)` also for a closed peer, whose end costs
    /// nothing to receive). Reads only the count byte: a peek takes no descriptors.
    pub fn next_fd_count(&mut self) -> io::Result<Option<usize>> {
        use nix::sys::socket::{recv, MsgFlags};
        let mut count = [0u8; 1];
        let mut resets = 0;
        loop {
            match sys::retry_eintr(|| {
                recv(self.fd.as_raw_fd(), &mut count, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT)
            }) {
                Ok(0) => return Ok(Some(0)),
                Ok(_) => return Ok(Some(count[0] as usize)),
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                // Reported once when the peer died with our messages unread (see `recv`).
                Err(nix::errno::Errno::ECONNRESET) if resets == 0 => resets += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the next message's fds fit in `free` descriptors (keeping `room` for our
    /// own work). Cheap when there is plenty of room; peeks at the message otherwise.
    pub fn next_fits(&mut self, free: usize, room: usize) -> bool {
        matches!(self.fds_missing(free, room), Ok(0))
    }

    /// How many descriptors short of `free` the next message is (keeping `room`): 0 when
    /// it fits or nothing is queued.
    pub fn fds_missing(&mut self, free: usize, room: usize) -> io::Result<usize> {
        if free >= MAX_FDS_PER_MESSAGE + room {
            return Ok(0);
        }
        // Nothing queued: a receive just finds it empty.
        Ok(self.next_fd_count()?.map_or(0, |n| (n + room).saturating_sub(free)))
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

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl<R: Message> Channel<Connections<'static>, R> {
    /// Sends connections in one message, encoded here as `Channel::send` would: between
    /// the listener's accept4 and this send the connections exist only in the listener,
    /// so nothing that can fail (or allocate: the buffer holds a full batch) comes before
    /// the syscall. `announce` runs right before it (see `sys::send_with_raw_fds`).
    pub fn send_connections_announced(
        &mut self,
        fds: &[OwnedFd],
        transport: Transport,
        announce: impl FnOnce(),
    ) -> io::Result<()> {
        let mut raw = [-1 as RawFd; MAX_FDS_PER_MESSAGE];
        let raw = raw.get_mut(..fds.len()).ok_or_else(|| io::Error::other("too many connections in one message"))?;
        for (slot, fd) in raw.iter_mut().zip(fds) {
            *slot = fd.as_raw_fd();
        }
        encode_connections(&mut self.tx, fds.len(), transport);
        sys::send_with_raw_fds(self.fd.as_fd(), &self.tx, raw, announce)
    }

    pub fn send_connection(&mut self, fd: BorrowedFd<'_>, transport: Transport) -> io::Result<()> {
        encode_connections(&mut self.tx, 1, transport);
        sys::send_with_raw_fds(self.fd.as_fd(), &self.tx, &[fd.as_raw_fd()], || {})
    }
}

/// `Connections` of descriptors #0..count, all of one transport, as `Channel::send`
/// encodes them: the count byte, then `[0,1]` (plain) or `[{"tls":0},{"tls":1}]`.
fn encode_connections(tx: &mut Vec<u8>, count: usize, transport: Transport) {
    tx.clear();
    tx.push(count as u8);
    tx.push(b'[');
    for i in 0..count {
        if i > 0 {
            tx.push(b',');
        }
        if transport == Transport::Tls {
            tx.extend_from_slice(b"{\"tls\":");
        }
        if i >= 10 {
            tx.push(b'0' + (i / 10 % 10) as u8);
        }
        tx.push(b'0' + (i % 10) as u8);
        if transport == Transport::Tls {
            tx.push(b'}');
        }
    }
    tx.push(b']');
}

impl<S, R> AsFd for Channel<S, R> {
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

#[cfg(test)]
mod tests {
    use super::*;

    type Lane = LaneSender;

    #[test]
    fn a_batch_of_connections_is_encoded_as_channel_send_encodes_it() {
        let (a, b) = sys::seqpacket_pair().expect("pair");
        let mut lane = Lane::new(a);
        let mut reader = LaneReader::new(b);
        let conns: Vec<OwnedFd> = (0..MAX_FDS_PER_MESSAGE).map(|_| sys::seqpacket_pair().expect("pair").0).collect();
        for transport in [Transport::Plain, Transport::Tls] {
            for n in [1, 2, 9, 10, 11, 16, MAX_FDS_PER_MESSAGE] {
                let batch = &conns[..n];
                lane.send(&Connections(batch.iter().map(|fd| Connection::new(Fd::lend(fd), transport)).collect()))
                    .expect("send");
                let by_serde = lane.tx.clone();
                lane.send_connections_announced(batch, transport, || {}).expect("send");
                assert_eq!(String::from_utf8_lossy(&lane.tx), String::from_utf8_lossy(&by_serde), "{n} {transport:?}");
                for _ in 0..2 {
                    match reader.recv() {
                        Ok(Recv::Message(Connections(got))) => {
                            assert_eq!(got.len(), n);
                            assert!(got.iter().all(|c| c.transport == transport));
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn messages_round_trip_owning_their_fds() {
        let (a, b) = sys::seqpacket_pair().expect("pair");
        let (x, _y) = sys::seqpacket_pair().expect("pair");
        let mut tx: Channel<ToWorker<'static>, Heartbeat> = Channel::new(a);
        let mut rx: Channel<Heartbeat, ToWorker<'static>> = Channel::new(b);
        let two = vec![Connection::plain(Fd::lend(&x)), Connection::new(Fd::lend(&x), Transport::Tls)];
        tx.send(&ToWorker::Connections(Connections(two))).expect("send");
        tx.send(&ToWorker::ReopenLog(Fd::lend(&x))).expect("send");
        tx.send(&ToWorker::Shutdown { deadline_ms: 7 }).expect("send");
        rx.send(&Heartbeat { pid: 7, seq: 3, sent_ns: 11, ..Default::default() }).expect("send");
        match rx.recv() {
            Ok(Recv::Message(ToWorker::Connections(Connections(conns)))) => {
                let transports: Vec<_> = conns.iter().map(|c| c.transport).collect();
                assert_eq!(transports, [Transport::Plain, Transport::Tls]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(rx.recv(), Ok(Recv::Message(ToWorker::ReopenLog(Fd::Owned(_))))));
        assert!(matches!(rx.recv(), Ok(Recv::Message(ToWorker::Shutdown { deadline_ms: 7 }))));
        assert!(matches!(rx.recv(), Ok(Recv::Empty)));
        match tx.recv() {
            Ok(Recv::Message(hb)) => assert_eq!((hb.pid, hb.seq, hb.sent_ns), (7, 3, 11)),
            other => panic!("unexpected {other:?}"),
        }
        drop(tx);
        assert!(matches!(rx.recv(), Ok(Recv::Closed)));
    }

    /// A hand-over carries the bytes the retiring worker read and did not process, any
    /// bytes at all, beside connections that carry none.
    #[test]
    fn a_handed_over_connection_arrives_with_its_carried_bytes() {
        let (a, b) = sys::seqpacket_pair().expect("pair");
        let (x, _y) = sys::seqpacket_pair().expect("pair");
        let mut lane = Lane::new(a);
        let mut reader = LaneReader::new(b);
        let carried: Vec<u8> = b"GET / HTTP/1.1\r\nHo".iter().copied().chain([0, 0xff, b'"']).collect();
        let handed = |carried| Connection { carried: Some(carried), ..Connection::plain(Fd::lend(&x)) };
        let conns = vec![Connection::plain(Fd::lend(&x)), handed(Vec::new()), handed(carried.clone())];
        lane.send(&Connections(conns)).expect("send");
        match reader.recv() {
            Ok(Recv::Message(Connections(conns))) => {
                let got: Vec<_> = conns.iter().map(|c| (c.transport, c.carried.clone())).collect();
                let want = [None, Some(Vec::new()), Some(carried)].map(|c| (Transport::Plain, c));
                assert_eq!(got, want, "a new connection, an idle one handed over, one with bytes");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A rescue carries the dead worker's record, its bytes and the file a response in
    /// progress was sent from, beside connections of every other kind.
    #[test]
    fn a_rescued_connection_arrives_with_its_salvage_and_file() {
        let (a, b) = sys::seqpacket_pair().expect("pair");
        let (x, _y) = sys::seqpacket_pair().expect("pair");
        let file = tempfile::tempfile().expect("file");
        let mut lane = Lane::new(a);
        let mut reader = LaneReader::new(b);
        let span = FileSpan { dev: 1, ino: 2, size: 30, mtime_ns: 4, offset: 5, len: 6 };
        let response = InProgress {
            head_start: 77,
            memory: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            file: Some(span),
            status: 200,
            coding: 0,
            close: false,
            read: Some(88),
        };
        let rescued = |salvage, file| Connection {
            carried: Some(b"GET /next".to_vec()),
            salvage: Some(Box::new(salvage)),
            file,
            ..Connection::plain(Fd::lend(&x))
        };
        let waiting = Salvage::Waiting { sent: 9, read: None, deaths: 1, answered: true };
        let conns = vec![
            rescued(Salvage::Response(Box::new(response.clone())), Some(Fd::lend(&file))),
            rescued(waiting.clone(), None),
            Connection { salvage: Some(Box::new(Salvage::Lost)), ..Connection::new(Fd::lend(&x), Transport::Tls) },
            Connection::plain(Fd::lend(&x)),
        ];
        lane.send(&Connections(conns)).expect("send");
        match reader.recv() {
            Ok(Recv::Message(Connections(conns))) => {
                let got: Vec<_> =
                    conns.iter().map(|c| (c.transport, c.salvage.as_deref().cloned(), c.file.is_some())).collect();
                let want = vec![
                    (Transport::Plain, Some(Salvage::Response(Box::new(response))), true),
                    (Transport::Plain, Some(waiting), false),
                    (Transport::Tls, Some(Salvage::Lost), false),
                    (Transport::Plain, None, false),
                ];
                assert_eq!(got, want);
                assert_eq!(conns[0].carried.as_deref(), Some(&b"GET /next"[..]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_message_of_another_channel_or_with_unnamed_fds_is_a_protocol_error() {
        let (a, b) = sys::seqpacket_pair().expect("pair");
        let (x, _y) = sys::seqpacket_pair().expect("pair");
        let mut steering: Channel<Steer, Nothing> = Channel::new(a.try_clone().expect("dup"));
        let mut reader: LaneReader = Channel::new(b);
        steering.send(&Steer::default()).expect("send");
        assert!(matches!(reader.recv(), Err(RecvError::Protocol(_))));
        // A packet carrying more descriptors than it names.
        sys::send_with_fds(a.as_fd(), b"\x01[]", &[x.as_fd()]).expect("send");
        assert!(matches!(reader.recv(), Err(RecvError::Protocol(_))));
        let mut lane = Lane::new(a);
        lane.send_connection(x.as_fd(), Transport::Plain).expect("send");
        assert!(matches!(reader.recv(), Ok(Recv::Message(Connections(fds))) if fds.len() == 1));
    }

    /// A peer that dies with our messages unread makes the kernel report ECONNRESET
    /// once, ahead of the messages it had sent us. Those must still be read (they may
    /// carry connections), then the close: with edge-triggered polling there is no
    /// second event to learn of it from.
    #[test]
    fn a_peer_dying_with_unread_messages_still_delivers_its_own_then_reads_as_closed() {
        let (a, b) = sys::seqpacket_pair().expect("pair");
        let (x, _y) = sys::seqpacket_pair().expect("pair");
        let mut ours: Channel<Heartbeat, ToWorker<'static>> = Channel::new(a);
        let mut peer: Channel<ToWorker<'static>, Heartbeat> = Channel::new(b);
        ours.send(&Heartbeat::default()).expect("send");
        peer.send(&ToWorker::Connections(Connections(vec![Connection::plain(Fd::lend(&x))]))).expect("send");
        drop(peer);
        assert!(matches!(ours.next_fd_count(), Ok(Some(1))));
        assert!(matches!(ours.recv(), Ok(Recv::Message(ToWorker::Connections(Connections(fds)))) if fds.len() == 1));
        assert!(matches!(ours.next_fd_count(), Ok(Some(0))));
        assert!(matches!(ours.recv(), Ok(Recv::Closed)));
        assert!(matches!(ours.recv(), Ok(Recv::Closed)));
    }
}
