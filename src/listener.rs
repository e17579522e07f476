//! The listener role: accepts TCP connections on the sockets the daemon bound and hands
//! them to the manager over the connection channel, up to 64 fds per message.
//!
//! It never owns the port: the daemon does, so while a listener restarts the kernel
//! keeps queueing connections in the backlog. When the manager is slow (channel full)
//! or fds run out (EMFILE/ENFILE), it pauses accepting instead of spinning.

use crate::heartbeat::Heartbeater;
use crate::ipc::{self, Channel, Counters, Message, Recv, Role};
use crate::sys::fdpass::MAX_FDS_PER_MESSAGE;
use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

const CONTROL: Token = Token(0);
const LIFELINE: Token = Token(1);
const CONNECTIONS: Token = Token(2);
const FIRST_LISTEN: usize = 16;
/// How long accepting pauses after EMFILE/ENFILE.
const FD_EXHAUSTION_PAUSE: Duration = Duration::from_millis(100);

/// Why accepting is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    None,
    /// The operator drained the server.
    Drained,
    /// Out of file descriptors until the instant given.
    FdExhaustion(Instant),
    /// The manager's queue is full; wait for the channel to be writable.
    Backpressure,
}

struct Listener {
    control: Channel,
    connections: Channel,
    listen: Vec<OwnedFd>,
    batch: Vec<OwnedFd>,
    pause: Pause,
    counters: Counters,
    stopping: bool,
    warned_exhaustion_at: Option<Instant>,
}

pub fn run(mut control: Channel) -> anyhow::Result<()> {
    let (boot, fds) = ipc::receive_bootstrap(&mut control).context("listener bootstrap")?;
    let connections = fds.connections.context("bootstrap without a connection channel")?;
    let lifeline = fds.lifeline.context("bootstrap without a lifeline")?;
    anyhow::ensure!(!fds.listen.is_empty(), "bootstrap without listening sockets");
    tracing::info!(pid = std::process::id(), sockets = fds.listen.len(), "listener started");

    let mut poll = Poll::new().context("epoll")?;
    let registry = poll.registry();
    registry.register(&mut SourceFd(&control.raw_fd()), CONTROL, Interest::READABLE)?;
    registry.register(&mut SourceFd(&lifeline.as_raw_fd()), LIFELINE, Interest::READABLE)?;
    for (i, fd) in fds.listen.iter().enumerate() {
        registry.register(&mut SourceFd(&fd.as_raw_fd()), Token(FIRST_LISTEN + i), Interest::READABLE)?;
    }
    let mut me = Listener {
        control,
        connections: Channel::new(connections),
        listen: fds.listen,
        batch: Vec::with_capacity(MAX_FDS_PER_MESSAGE),
        pause: if boot.draining { Pause::Drained } else { Pause::None },
        counters: Counters::default(),
        stopping: false,
        warned_exhaustion_at: None,
    };
    poll.registry().register(&mut SourceFd(&me.connections.raw_fd()), CONNECTIONS, Interest::WRITABLE)?;
    let mut heartbeat = Heartbeater::new(Role::Listener, boot.config.heartbeat_interval());
    let mut events = Events::with_capacity(64);
    me.accept_all();
    loop {
        let now = Instant::now();
        heartbeat.tick(now, &mut me.control, &me.counters, &[]);
        let timeout = heartbeat.until_due(now).min(me.pause_left(now));
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("epoll_wait"),
        }
        for event in events.iter() {
            match event.token() {
                CONTROL => me.handle_control()?,
                LIFELINE => {
                    tracing::warn!("daemon gone: listener exiting");
                    return Ok(());
                }
                CONNECTIONS if me.pause == Pause::Backpressure => me.flush(), // room again
                _ => {}
            }
        }
        if me.stopping {
            me.flush();
            tracing::info!(accepted = me.counters.accepted, "listener stopped");
            return Ok(());
        }
        if let Pause::FdExhaustion(until) = me.pause {
            if Instant::now() >= until {
                me.pause = Pause::None;
            }
        }
        // Accept after every wake-up: edge-triggered readiness may have fired while
        // paused, and an extra accept4 returning EAGAIN is cheap.
        me.accept_all();
    }
}

impl Listener {
    fn handle_control(&mut self) -> anyhow::Result<()> {
        let mut fds = Vec::new();
        loop {
            match self.control.recv(&mut fds).context("control channel")? {
                Recv::Empty => return Ok(()),
                Recv::Closed => {
                    tracing::warn!("control channel closed: listener exiting");
                    self.stopping = true;
                    return Ok(());
                }
                Recv::Message(Message::Shutdown { .. }) => self.stopping = true,
                Recv::Message(Message::Drain) => {
                    self.flush();
                    self.pause = Pause::Drained;
                }
                Recv::Message(Message::Resume) => {
                    if self.pause == Pause::Drained {
                        self.pause = Pause::None;
                    }
                }
                Recv::Message(other) => tracing::debug!(?other, "listener ignores message"),
            }
        }
    }

    fn pause_left(&self, now: Instant) -> Duration {
        match self.pause {
            Pause::FdExhaustion(until) => until.saturating_duration_since(now),
            _ => Duration::from_secs(3600),
        }
    }

    /// Accepts until every socket would block, a batch at a time.
    fn accept_all(&mut self) {
        if self.pause != Pause::None || self.stopping {
            return;
        }
        for i in 0..self.listen.len() {
            loop {
                // Accept only what the manager's queue can take at once: a connection
                // we hold while waiting for room would die with us.
                if !self.connections.has_room() {
                    self.pause = Pause::Backpressure;
                    return;
                }
                match crate::sys::net::accept(self.listen[i].as_fd()) {
                    Ok(fd) => {
                        self.counters.accepted += 1;
                        self.batch.push(fd);
                        // Hand each connection over at once: between accept and send it
                        // exists only in this process, and a crash here would lose it.
                        // Batching would save a few syscalls and multiply that window.
                        self.flush();
                        if self.pause != Pause::None {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if is_fd_exhaustion(&e) => {
                        self.on_fd_exhaustion(&e);
                        self.flush();
                        return;
                    }
                    // The client gave up before we accepted (ECONNABORTED) or a
                    // transient network error: the next accept is unaffected.
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        break;
                    }
                }
            }
        }
        self.flush();
    }

    fn on_fd_exhaustion(&mut self, e: &io::Error) {
        let now = Instant::now();
        self.pause = Pause::FdExhaustion(now + FD_EXHAUSTION_PAUSE);
        if self.warned_exhaustion_at.is_none_or(|t| now.duration_since(t) > Duration::from_secs(5)) {
            self.warned_exhaustion_at = Some(now);
            tracing::warn!(error = %e, pause_ms = FD_EXHAUSTION_PAUSE.as_millis() as u64, "out of file descriptors: pausing accept");
        }
    }

    /// Sends the pending batch to the manager; on a full channel keeps it and pauses.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            if self.pause == Pause::Backpressure {
                self.pause = Pause::None;
            }
            return;
        }
        let count = self.batch.len() as u32;
        let fds: Vec<_> = self.batch.iter().map(|fd| fd.as_fd()).collect();
        match self.connections.send(&Message::Connections { count }, &fds) {
            Ok(()) => {
                drop(fds);
                self.batch.clear(); // our copies close; the connections live in the queue
                if self.pause == Pause::Backpressure {
                    self.pause = Pause::None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.pause = Pause::Backpressure,
            Err(e) => {
                // Should not happen: the daemon holds the receiving end forever. Keep
                // the batch and retry after a pause rather than drop connections.
                tracing::error!(error = %e, "cannot hand connections to the manager");
                self.pause = Pause::FdExhaustion(Instant::now() + FD_EXHAUSTION_PAUSE);
            }
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
