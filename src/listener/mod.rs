//! The listener role: accepts TCP connections on the sockets the daemon bound and sends
//! each one straight into a worker's lane, the one the manager's steering says is least
//! loaded.
//!
//! It never owns the port: the daemon does, so while a listener restarts the kernel
//! keeps queueing connections in the backlog. It accepts only when a lane has room, so
//! it never holds a connection waiting for one; when every lane is full or fds run out
//! (EMFILE/ENFILE), it pauses accepting instead of spinning. What one wake-up finds queued
//! goes in batches, one `sendmsg` each (one lane-room check, one message for the worker
//! to read). It runs under `SCHED_BATCH`: woken by a connection while the cores are busy,
//! it waits for the running worker to yield instead of preempting it, and then finds a
//! dozen queued instead of one or two. Between `accept4` and the send a connection exists
//! only in our descriptor table, which a [`keeper`] child shares: if we die in that
//! window, the keeper sends the connection on.

mod keeper;

use crate::event_loop::{EventLoop, IndexTokens, Wake};
use crate::fault::{self, ListenerStop};
use crate::figures::Figures;
use crate::heartbeat::{Heartbeater, Report};
use crate::ipc::{self, LaneSender, LaneState, ListenerControl, Recv, Role, SteeringReader, ToListener, Transport};
use anyhow::Context;
use mio::unix::SourceFd;
use mio::{Interest, Registry};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How long accepting pauses after EMFILE/ENFILE.
const FD_EXHAUSTION_PAUSE: Duration = Duration::from_millis(100);
/// How many connections in a row may go to the lane of the last one, when that was less
/// than [`STICKY_WINDOW`] ago. A worker just sent a connection is awake; sending it the
/// next too spares waking another (strict least-load alternated between the workers
/// under a stream of short connections, and each one woke a sleeping worker:
/// bench/README.md has the figures). A run ends at this length and the next connection
/// goes by least load, so a burst of long-lived connections still spreads (a bound on
/// the loads' difference instead put a whole burst of keep-alive clients on one worker:
/// loads count the connections sent since the last steering, the same for a burst as for
/// a stream of short connections long closed).
const STICKY_RUN: u32 = 16;
/// Connections further apart than this go by least load alone: at a light load every
/// worker serves (a new worker after `scale` at once), and only a stream of connections
/// arriving faster than a worker sleeps is kept together.
const STICKY_WINDOW: Duration = Duration::from_micros(250);
/// The most connections accepted before they are sent, in one message: a run at most.
pub const ACCEPT_BATCH: usize = STICKY_RUN as usize;
/// How often the listener makes sure its keeper lives.
const KEEPER_CHECK: Duration = Duration::from_millis(200);

/// Why accepting is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    None,
    /// The operator drained the server.
    Drained,
    /// Out of file descriptors until the instant given.
    FdExhaustion(Instant),
    /// No open lane has room; wait for one to become writable or for new steering.
    Backpressure,
}

/// A worker slot's lane as this listener sees it.
struct Lane {
    channel: LaneSender,
    state: LaneState,
    /// Connections sent since the last steering, added to its reported load.
    sent: u32,
}

impl Lane {
    fn load(&self) -> u32 {
        self.state.load.saturating_add(self.sent)
    }
}

/// Connections sent one after another to one lane.
#[derive(Debug, Clone, Copy)]
struct Run {
    lane: usize,
    length: u32,
    last: Instant,
}

impl Run {
    /// The run under way at `now`, if the next connection may still join it.
    fn going_on(run: Option<Run>, now: Instant) -> Option<Run> {
        run.filter(|run| run.length < STICKY_RUN && now.saturating_duration_since(run.last) < STICKY_WINDOW)
    }

    /// The run once `sent` connections went to `lane`: the one under way longer, or a
    /// new one.
    fn after(run: Option<Run>, lane: usize, sent: u32) -> Run {
        let now = Instant::now();
        let length = Run::going_on(run, now).filter(|r| r.lane == lane).map_or(0, |r| r.length);
        Run { lane, length: length + sent, last: now }
    }

    /// How many more connections the run may take.
    fn room(run: Option<Run>, lane: usize) -> u32 {
        run.filter(|r| r.lane == lane).map_or(STICKY_RUN, |r| STICKY_RUN.saturating_sub(r.length))
    }
}

struct Listener {
    control: ListenerControl,
    steering: SteeringReader,
    lanes: Vec<Option<Lane>>,
    /// Until the manager steers, lanes of slots below this are open.
    configured_workers: u32,
    /// The listening sockets and what their connections speak.
    listen: Vec<(OwnedFd, Transport)>,
    pause: Pause,
    figures: Figures,
    stopping: bool,
    warned_exhaustion_at: Option<Instant>,
    warned_no_lane_at: Option<Instant>,
    /// Lanes are watched for room only while every lane is full: otherwise each
    /// connection a worker takes would wake us for nothing.
    watching_lanes: bool,
    keeper: keeper::Keeper,
    /// A lane's token, by its slot id.
    lane_tokens: IndexTokens,
    /// A test's injected stop (`fault`); `None` in production.
    stop_at: Option<ListenerStop>,
    /// The run of connections sent to one lane (see [`STICKY_RUN`]).
    run: Option<Run>,
    /// Connections accepted and not yet sent (at most [`ACCEPT_BATCH`]; kept for its
    /// capacity).
    batch: Vec<OwnedFd>,
}

/// How accepting a batch ended.
enum Accepted {
    /// The batch is full; more may be queued.
    Full,
    /// Nothing more is queued on this socket now (or a transient error).
    Drained,
    /// Out of descriptors.
    OutOfFds(io::Error),
}

pub fn run(mut control: ListenerControl) -> anyhow::Result<()> {
    let boot = match control.recv_blocking(ipc::BOOTSTRAP_WAIT).context("listener bootstrap")? {
        ToListener::Bootstrap(boot) => *boot,
        other => anyhow::bail!("listener bootstrap: got {other:?} first"),
    };
    let steering = boot.steering.into_owned()?;
    let lifeline = boot.lifeline.into_owned()?;
    let with = |transport| move |fd: ipc::Fd<'_>| fd.into_owned().map(|fd| (fd, transport));
    let listen = boot.listen.into_iter().map(with(Transport::Plain));
    let tls_listen = boot.tls_listen.into_iter().map(with(Transport::Tls));
    let listen = listen.chain(tls_listen).collect::<std::io::Result<Vec<_>>>()?;
    anyhow::ensure!(!listen.is_empty(), "bootstrap without listening sockets");
    tracing::info!(pid = std::process::id(), sockets = listen.len(), "listener started");
    // First, while we have one thread.
    let keeper = keeper::Keeper::start(keeper::Sockets::of(&listen));
    // After the keeper's fork: it keeps the normal policy, to rescue at once.
    if let Err(e) = crate::sys::process::schedule_in_batches(true) {
        tracing::warn!(error = %e, "cannot run the listener under SCHED_BATCH: a context switch per connection or two");
    }

    let mut event_loop = EventLoop::new(64).context("epoll")?;
    let control_token = event_loop.watch(control.raw_fd(), Interest::READABLE)?;
    let lifeline_token = event_loop.watch(lifeline.as_raw_fd(), Interest::READABLE)?;
    let steering_token = event_loop.watch(steering.as_raw_fd(), Interest::READABLE)?;
    // Their events need no telling apart: every wake-up accepts on all of them.
    for (fd, _) in &listen {
        event_loop.watch(fd.as_raw_fd(), Interest::READABLE)?;
    }
    let lane_tokens = event_loop.index_tokens();
    let mut me = Listener {
        control,
        steering: SteeringReader::new(steering),
        lanes: Vec::new(),
        configured_workers: boot.config.workers,
        listen,
        pause: if boot.draining { Pause::Drained } else { Pause::None },
        figures: Figures::default(),
        stopping: false,
        warned_exhaustion_at: None,
        warned_no_lane_at: None,
        watching_lanes: false,
        keeper,
        lane_tokens,
        stop_at: fault::listener_stop(),
        run: None,
        batch: Vec::with_capacity(ACCEPT_BATCH),
    };
    // The daemon sends the lanes right after the bootstrap.
    me.handle_control(event_loop.registry())?;
    let mut heartbeat = Heartbeater::new(Role::Listener, boot.config.heartbeat_interval.duration());
    heartbeat.set_keeper_pid(me.keeper.pid());
    me.accept_all(event_loop.registry());
    let mut keeper_checked = Instant::now();
    loop {
        let now = Instant::now();
        if now.duration_since(keeper_checked) >= KEEPER_CHECK {
            keeper_checked = now;
            me.keeper.check();
            heartbeat.set_keeper_pid(me.keeper.pid());
        }
        heartbeat.tick(now, &mut me.control, || Report::of(me.figures.clone()));
        let wake = Wake::At(heartbeat.due_at()).or_at(keeper_checked + KEEPER_CHECK).or_at_any(me.pause_ends());
        event_loop.wait(wake).context("epoll_wait")?;
        while let Some(ready) = event_loop.next_ready() {
            match ready.token {
                token if token == control_token => me.handle_control(event_loop.registry())?,
                token if token == steering_token => me.read_steering(event_loop.registry()),
                token if token == lifeline_token => {
                    tracing::warn!("daemon gone: listener exiting");
                    return Ok(());
                }
                // A lane has room again; the accept below finds it.
                token if me.lane_tokens.index(token).is_some() => me.unpause_backpressure(event_loop.registry()),
                _ => {} // a listening socket: the accept below serves it
            }
        }
        if me.stopping {
            tracing::info!(accepted = me.figures.accepted, "listener stopped");
            return Ok(());
        }
        if let Pause::FdExhaustion(until) = me.pause {
            if Instant::now() >= until {
                me.pause = Pause::None;
            }
        }
        // Accept after every wake-up: edge-triggered readiness may have fired while
        // paused, and an extra accept4 returning EAGAIN is cheap.
        me.accept_all(event_loop.registry());
    }
}

impl Listener {
    fn handle_control(&mut self, registry: &Registry) -> anyhow::Result<()> {
        loop {
            match self.control.recv().context("control channel")? {
                Recv::Empty => return Ok(()),
                Recv::Closed => {
                    tracing::warn!("control channel closed: listener exiting");
                    self.stopping = true;
                    return Ok(());
                }
                Recv::Message(ToListener::Shutdown { .. }) => self.stopping = true,
                Recv::Message(ToListener::Drain) => self.pause = Pause::Drained,
                Recv::Message(ToListener::Lanes { first, lanes }) => self.add_lanes(first, lanes, registry),
                Recv::Message(ToListener::Resume) => {
                    if self.pause == Pause::Drained {
                        self.pause = Pause::None;
                    }
                }
                Recv::Message(ToListener::Bootstrap(_)) => tracing::warn!("a second bootstrap: ignored"),
            }
        }
    }

    /// When a timed pause ends (nothing else about a pause has a deadline).
    fn pause_ends(&self) -> Option<Instant> {
        match self.pause {
            Pause::FdExhaustion(until) => Some(until),
            _ => None,
        }
    }

    /// Takes the sending ends of lanes `first..` from the daemon.
    fn add_lanes(&mut self, first: u32, lanes: Vec<ipc::Fd<'_>>, registry: &Registry) {
        for (i, fd) in lanes.into_iter().enumerate() {
            let id = first as usize + i;
            let fd = match fd.into_owned() {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::error!(lane = id, error = %e, "cannot keep a lane");
                    continue;
                }
            };
            if self.lanes.len() <= id {
                self.lanes.resize_with(id + 1, || None);
            }
            let open = (id as u32) < self.configured_workers;
            self.lanes[id] = Some(Lane { channel: LaneSender::new(fd), state: LaneState { open, load: 0 }, sent: 0 });
        }
        self.unpause_backpressure(registry);
    }

    /// Lanes or their steering changed, or one has room: try accepting again.
    fn unpause_backpressure(&mut self, registry: &Registry) {
        if self.pause == Pause::Backpressure {
            self.pause = Pause::None;
        }
        if self.watching_lanes {
            self.watching_lanes = false;
            for lane in self.lanes.iter().flatten() {
                let _ = registry.deregister(&mut SourceFd(&lane.channel.raw_fd()));
            }
        }
    }

    /// Every lane is full: wake when one has room. Registering reports a lane that got
    /// room since we looked, so none is missed.
    fn watch_lanes(&mut self, registry: &Registry) {
        if self.watching_lanes {
            return;
        }
        self.watching_lanes = true;
        for (id, lane) in self.lanes.iter().enumerate() {
            if let Some(lane) = lane {
                let token = self.lane_tokens.token(id);
                if let Err(e) = registry.register(&mut SourceFd(&lane.channel.raw_fd()), token, Interest::WRITABLE) {
                    tracing::error!(lane = id, error = %e, "cannot watch a lane for room");
                }
            }
        }
    }

    /// Applies the manager's newest steering.
    fn read_steering(&mut self, registry: &Registry) {
        let mut newest = None;
        if let Err(e) = self.steering.drain(|steer| newest = Some(steer.lanes)) {
            tracing::warn!(error = %e, "reading the steering channel");
        }
        let Some(states) = newest else { return };
        for (id, lane) in self.lanes.iter_mut().enumerate() {
            if let Some(lane) = lane {
                lane.state = states.get(id).copied().unwrap_or_default();
                lane.sent = 0;
            }
        }
        self.unpause_backpressure(registry);
    }

    /// The lane of the run of connections under way (see [`STICKY_RUN`]), else the open
    /// lane with the least load that has room now. Either almost always has room: one
    /// poll per connection.
    fn pick_lane(&self) -> Option<usize> {
        let open =
            || self.lanes.iter().enumerate().filter_map(|(i, l)| l.as_ref().filter(|l| l.state.open).map(|l| (i, l)));
        let run_lane = Run::going_on(self.run, Instant::now()).and_then(|run| open().find(|(j, _)| *j == run.lane));
        if let Some((last, l)) = run_lane {
            if l.channel.has_room() {
                return Some(last);
            }
        }
        let (least, lane) = open().min_by_key(|(_, l)| l.load())?;
        if lane.channel.has_room() {
            return Some(least);
        }
        open().filter(|(i, l)| *i != least && l.channel.has_room()).min_by_key(|(_, l)| l.load()).map(|(i, _)| i)
    }

    /// Accepts until every socket would block or no lane has room.
    fn accept_all(&mut self, registry: &Registry) {
        if self.pause != Pause::None || self.stopping {
            return;
        }
        for i in 0..self.listen.len() {
            loop {
                // Accept only what a lane can take at once: a connection we hold while
                // waiting for room would die with us.
                let Some(lane) = self.pick_lane() else {
                    self.on_no_lane(registry);
                    return;
                };
                self.keeper.before_accept(self.lane_fd(lane));
                let accepted = self.accept_batch(i, Run::room(Run::going_on(self.run, Instant::now()), lane));
                self.send_batch(lane, self.listen[i].1);
                match accepted {
                    Accepted::Full => {}
                    Accepted::Drained => break,
                    Accepted::OutOfFds(e) => {
                        self.on_fd_exhaustion(&e);
                        return;
                    }
                }
            }
        }
    }

    /// Accepts up to `room` connections (at least one) on socket `i` into the batch.
    fn accept_batch(&mut self, i: usize, room: u32) -> Accepted {
        let room = (room.max(1) as usize).min(ACCEPT_BATCH);
        let socket = self.listen[i].0.as_fd();
        while self.batch.len() < room {
            match crate::sys::net::accept(socket) {
                Ok(fd) => {
                    self.figures.accepted += 1;
                    self.batch.push(fd);
                    fault::stop_if(self.stop_at, ListenerStop::AfterAccept);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::Drained,
                Err(e) if crate::sys::net::is_fd_exhaustion(&e) => return Accepted::OutOfFds(e),
                // The client gave up before we accepted (ECONNABORTED) or a transient
                // network error: the next accept is unaffected.
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    return Accepted::Drained;
                }
            }
        }
        Accepted::Full
    }

    fn lane_fd(&self, index: usize) -> RawFd {
        self.lanes.get(index).and_then(Option::as_ref).map_or(-1, |l| l.channel.raw_fd())
    }

    /// Hands the batch to a worker's lane at once, in one message: between accept and
    /// send its connections exist only in this process's descriptor table (and the
    /// keeper's, which shares it).
    fn send_batch(&mut self, index: usize, transport: Transport) {
        if self.batch.is_empty() {
            return;
        }
        fault::stop_if(self.stop_at, ListenerStop::BeforeSend);
        let Some(lane) = self.lanes.get_mut(index).and_then(Option::as_mut) else { return };
        let (keeper, batch) = (&self.keeper, &self.batch);
        let count = batch.len();
        // Told at the last instant before the syscall: the shorter the time the keeper
        // believes connections queued that are not, the rarer a kill there loses them.
        match lane.channel.send_connections_announced(batch, transport, || keeper.sending(batch)) {
            Ok(()) => {
                lane.sent = lane.sent.saturating_add(count as u32);
                self.run = Some(Run::after(self.run, index, count as u32));
                fault::stop_if(self.stop_at, ListenerStop::AfterSend);
                self.batch.clear();
                self.keeper.not_sending(count);
            }
            Err(e) => {
                self.keeper.not_sending(count);
                // Cannot happen while the lane had room (the daemon holds its other end).
                // Try the other lanes rather than drop the connections.
                tracing::error!(lane = index, error = %e, "cannot hand connections to their lane");
                lane.state.open = false;
                match self.pick_lane() {
                    Some(other) => {
                        self.keeper.before_accept(self.lane_fd(other));
                        self.send_batch(other, transport);
                    }
                    None => self.batch.clear(),
                }
            }
        }
    }

    fn on_no_lane(&mut self, registry: &Registry) {
        self.pause = Pause::Backpressure;
        if self.lanes.iter().flatten().any(|l| l.state.open) {
            self.watch_lanes(registry); // all full: wait for room
            return;
        }
        // None open: wait for the manager's steering.
        let now = Instant::now();
        if self.warned_no_lane_at.is_none_or(|t| now.duration_since(t) > Duration::from_secs(5)) {
            self.warned_no_lane_at = Some(now);
            tracing::warn!("no worker lane is open: not accepting until the manager steers");
        }
    }

    fn on_fd_exhaustion(&mut self, e: &io::Error) {
        let now = Instant::now();
        self.pause = Pause::FdExhaustion(now + FD_EXHAUSTION_PAUSE);
        if self.warned_exhaustion_at.is_none_or(|t| now.duration_since(t) > Duration::from_secs(5)) {
            self.warned_exhaustion_at = Some(now);
            tracing::warn!(error = %e, pause_ms = FD_EXHAUSTION_PAUSE.as_millis() as u64, "out of file descriptors: pausing accept");
        }
    }
}
