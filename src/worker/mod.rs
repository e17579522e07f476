//! The worker role: serves HTTP/1.1 on the connections the listener sends into its lane
//! (and the few the manager moves to it from a dead worker's lane).
//!
//! One edge-triggered epoll loop holds thousands of connections; each is a small state
//! machine in [`conn`]. Request parsing, path resolution, site rules and response heads live in
//! [`request`], [`path`], [`rules`], [`response`] and [`date`]. A worker that loses its manager
//! keeps serving what it has and exits when done; one that loses the daemon (lifeline
//! EOF) takes nothing new, closes its idle connections, finishes its responses within the
//! grace period and exits (a daemon restarted by systemd adopts our lane, section 8).
//!
//! **Hand-over at retirement** (SPEC section 8). A worker retired gracefully (rolling
//! restart, reload, scale down) is lent, just before its `Shutdown`, the sending end of a
//! live worker's lane (`ToWorker::HandOver`). From then on each plain connection, once at
//! a request boundary (idle, or its last response written), goes into that lane with the
//! bytes read and not yet processed, as many per message as fit; the receiver takes those
//! bytes as if it had read them. So a request in progress is finished here, and nothing
//! is lost or answered twice: the fd and its bytes leave together, in one `sendmsg`.
//! TLS connections answer `Connection: close` as before (their state cannot move). A full
//! lane is retried when it turns writable; a failed one ends the hand-over and the rest
//! close as before. Costs one `bool` test per connection turn; the rest runs only while
//! retiring.
//!
//! **Rescue at death** (SPEC section 8). A `keeper` forked at start shares our
//! descriptor table; each connection keeps its entry in the shared table of [`records`]
//! current (a copy of the request bytes after each read, a short record after each
//! response). If we die, the keeper sends every connection with its record into our lane,
//! and the worker that takes it (`Worker::accept_rescued`) serves it on, replays its
//! request, continues its response from the kernel's byte count, or closes it; a request
//! in progress in two deaths is answered 500. A panic aborts (unwinding would close the
//! sockets the keeper is there to save).

pub mod access_log;
pub mod body;
mod buffers;
/// A fresh read buffer's length (tests place a request's bytes by it).
pub use buffers::READ_BUF_INITIAL;
pub mod compress_cache;
mod conn;
pub mod date;
pub mod encoding;
pub mod https_redirect;
mod keeper;
pub mod listing;
mod open_files;
pub mod path;
pub mod range;
pub mod records;
pub mod request;
pub mod response;
pub mod rules;
pub mod sites;
mod tls;

use crate::config::AccessLogTarget;
use crate::event_loop::{EventLoop, IndexTokens, IntakePause, Slab, Wake};
use crate::figures::{Figures, DURATION_BUCKETS};
use crate::heartbeat::{Delivery, Heartbeater, Report, FINAL_REPORT_WITHIN};
use crate::ipc::{
    self, Connection, Connections, LaneReader, LaneSender, Recv, RecvError, Role, ToWorker, Transport, WorkerControl,
};
use anyhow::Context;
use conn::{Conn, Outcome};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How often idle and slow connections are checked against their deadlines.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Carried bytes per hand-over message (hex doubles them; `ipc::MAX_MESSAGE` bounds the
/// packet). A connection carrying more travels alone: a read buffer is at most ~33 KiB.
const CARRIED_PER_MESSAGE: usize = 32 * 1024;

/// What every connection shares: the sites (roots and rules), limits, cached date, counters.
pub struct Shared {
    /// The default site and the `[[sites]]`: roots and rules, compiled once, at start.
    pub sites: sites::Sites,
    pub limits: request::Limits,
    pub date: date::DateCache,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// Requests one connection may carry before its response says `Connection: close`.
    pub max_requests_per_connection: u32,
    /// Every response closes its connection (drain or shutdown).
    pub force_close: bool,
    /// Retiring with a hand-over: responses on TLS connections close them (plain ones
    /// are handed over instead).
    pub close_tls: bool,
    pub stats: Stats,
    /// Reused buffer for path decoding.
    pub scratch: Vec<u8>,
    /// Connections' read and write buffers, lent for a turn (idle connections hold none).
    pub buffers: buffers::BufferPool,
    /// Bodies compressed on the fly (`compress_cache_mib`).
    pub codings: compress_cache::CompressCache,
    /// The access log, when enabled.
    pub access_log: Option<access_log::AccessLog>,
    /// What TLS connections start from; `None` when no certificate is configured.
    pub tls: Option<tls::Acceptor>,
    /// `redirect_to_https`: where plain requests are sent instead of being served.
    pub https_redirect: Option<https_redirect::HttpsRedirect>,
    /// Where each connection stands, for the keeper (`records`).
    pub records: records::Records,
    /// A test's injected fault: abort instead of answering this target (`fault`).
    pub crash_on: Option<Vec<u8>>,
    /// A test's injected fault: abort on reading this text, before recording it.
    pub crash_after_read: Option<Vec<u8>>,
}

/// The worker's cumulative figures, reported in heartbeats.
#[derive(Default)]
pub struct Stats {
    pub figures: Figures,
    in_progress: u32,
    busy_since: Option<Instant>,
}

impl Stats {
    /// A request's head was parsed: it is in progress until its response is written.
    pub fn request_started(&mut self, now: Instant) {
        if self.in_progress == 0 {
            self.busy_since = Some(now);
        }
        self.in_progress += 1;
    }

    /// A response was fully written.
    pub fn request_finished(
        &mut self,
        status: u16,
        coding: encoding::Coding,
        bytes: u64,
        took: Duration,
        now: Instant,
    ) {
        let f = &mut self.figures;
        f.responses.add(status, 1);
        f.by_encoding[coding] += 1;
        f.response_bytes += bytes;
        f.duration.observe(&DURATION_BUCKETS, took);
        self.requests_ended(1, now);
    }

    /// A connection closed with requests still in progress.
    pub fn requests_abandoned(&mut self, count: u32, now: Instant) {
        self.requests_ended(count, now);
    }

    /// `count` requests are no longer in progress; a busy stretch ends with the last.
    fn requests_ended(&mut self, count: u32, now: Instant) {
        self.in_progress = self.in_progress.saturating_sub(count);
        if self.in_progress == 0 {
            if let Some(since) = self.busy_since.take() {
                self.figures.busy_ns += now.saturating_duration_since(since).as_nanos() as u64;
            }
        }
    }

    /// Busy time including the current busy stretch, for a heartbeat.
    fn snapshot(&mut self, now: Instant) -> &Figures {
        if let Some(since) = self.busy_since {
            self.figures.busy_ns += now.saturating_duration_since(since).as_nanos() as u64;
            self.busy_since = Some(now);
        }
        &self.figures
    }
}

struct Worker {
    id: u32,
    control: WorkerControl,
    /// This slot's lane; shared with the slot's next worker, so it is read only until
    /// this one starts to retire.
    lane: LaneReader,
    conns: Slab<Conn>,
    /// A connection's poll token, by its index in `conns`.
    conn_tokens: IndexTokens,
    shared: Shared,
    max_connections: usize,
    /// Set by shutdown: exit when no connection is left, or at this instant.
    shutdown_at: Option<Instant>,
    /// Our manager's end of the channel is closed.
    manager_gone: bool,
    /// Set by drain: idle keep-alive connections are closed from this instant on.
    drain_idle_at: Option<Instant>,
    /// Descriptor headroom at the last sweep, and the connections open then.
    fds: crate::sys::process::FdBudget,
    conns_at_measure: usize,
    /// Intake paused for lack of descriptors (until the next re-measure): connections
    /// wait in our channel.
    intake_pause: IntakePause,
    /// Descriptors were given back for intake since the last sweep ([`Worker::make_room`]).
    room_made: bool,
    drain_timeout: Duration,
    /// How long responses in progress may take once the daemon is gone.
    grace: Duration,
    /// Connections whose turn ended with more to do (`Outcome::Again`), and a spare
    /// list to swap in while they are driven, so no turn allocates.
    again: Vec<usize>,
    again_spare: Vec<usize>,
    /// Retiring: the live worker's lane our plain connections are handed to.
    hand_over: HandOver,
    /// Our keeper, which sends our connections on if we die.
    keeper: keeper::Keeper,
    /// The sending end of our lane, for the keeper (held open here, at a number it knows).
    _lane_sender: Option<OwnedFd>,
    /// Send a heartbeat before anything else (a replay's count, before the replay).
    report_due: bool,
}

/// A retiring worker's hand-over of its plain connections (see the module doc).
struct HandOver {
    /// The lane lent by the manager (`ToWorker::HandOver`), watched for writability
    /// under `token` while it is full.
    lane: Option<LaneSender>,
    token: Token,
    /// Retirement has begun with a lane: connections at a boundary go.
    active: bool,
    /// Connections that may be at a boundary, to look at after this pass.
    due: Vec<usize>,
}

pub fn run(mut control: WorkerControl) -> anyhow::Result<()> {
    let boot = match control.recv_blocking(ipc::BOOTSTRAP_WAIT).context("worker bootstrap")? {
        ToWorker::Bootstrap(boot) => *boot,
        other => anyhow::bail!("worker bootstrap: got {other:?} first"),
    };
    let lifeline = boot.lifeline.into_owned()?;
    let lane = LaneReader::new(boot.lane.into_owned()?);
    let lane_sender = boot.lane_sender.map(ipc::Fd::into_owned).transpose()?;
    let id = boot.id;
    let config = boot.config;
    abort_on_panic();
    let records = keeper_records(config.max_connections as usize, id);
    // First, while we have one thread (we always have).
    let keeper = keeper::Keeper::start(id, lane_sender.as_ref().map(AsRawFd::as_raw_fd), records.table());
    let format = config.access_log_format;
    let access_log = match (boot.access_log.map(ipc::Fd::into_owned).transpose()?, &config.access_log) {
        (Some(fd), _) => Some(access_log::AccessLog::new(access_log::Sink::File(fd.into()), format)),
        (None, AccessLogTarget::Stderr) => Some(access_log::AccessLog::new(access_log::Sink::Stderr, format)),
        _ => None,
    };
    let sites = sites::Sites::open(&config)?;
    let tls = tls::Acceptor::new(&boot.tls, boot.tickets.as_ref()).context("TLS certificates")?;
    tracing::info!(worker = id, pid = std::process::id(), "worker started");

    let mut event_loop = EventLoop::new(1024).context("epoll")?;
    let control_token = event_loop.watch(control.raw_fd(), Interest::READABLE)?;
    let lifeline_token = event_loop.watch(lifeline.as_raw_fd(), Interest::READABLE)?;
    let lane_token = event_loop.watch(lane.raw_fd(), Interest::READABLE)?;
    let hand_over_token = event_loop.reserve_token();
    let mut worker = Worker {
        id,
        control,
        lane,
        conns: Slab::default(),
        conn_tokens: event_loop.index_tokens(),
        shared: Shared {
            sites,
            limits: request::Limits { max_headers: config.max_header_fields as usize, ..request::Limits::default() },
            date: date::DateCache::new(),
            header_timeout: config.header_timeout.duration(),
            keepalive_timeout: config.keepalive_timeout.duration(),
            max_requests_per_connection: config.max_requests_per_connection,
            force_close: boot.draining,
            close_tls: false,
            stats: Stats::default(),
            scratch: Vec::with_capacity(1024),
            buffers: buffers::BufferPool::default(),
            codings: compress_cache::CompressCache::new(config.compress_cache_mib),
            access_log,
            tls,
            https_redirect: boot
                .https_port
                .filter(|_| config.redirect_to_https)
                .map(https_redirect::HttpsRedirect::new),
            records,
            crash_on: crate::fault::crash_on_path(),
            crash_after_read: crate::fault::crash_after_read(),
        },
        max_connections: config.max_connections as usize,
        shutdown_at: None,
        manager_gone: false,
        fds: crate::sys::process::FdBudget::measure(),
        conns_at_measure: 0,
        intake_pause: IntakePause::default(),
        room_made: false,
        drain_idle_at: if boot.draining { Some(Instant::now() + config.drain_timeout.duration()) } else { None },
        drain_timeout: config.drain_timeout.duration(),
        grace: config.grace.duration(),
        again: Vec::new(),
        again_spare: Vec::new(),
        hand_over: HandOver { lane: None, token: hand_over_token, active: false, due: Vec::new() },
        keeper,
        _lane_sender: lane_sender,
        report_due: false,
    };
    let mut heartbeat = Heartbeater::new(Role::Worker, config.heartbeat_interval.duration());
    heartbeat.set_keeper_pid(worker.keeper.pid());
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    // Connections may have queued in the lane before we started.
    worker.read_lane(event_loop.registry(), Instant::now());
    loop {
        let now = Instant::now();
        if std::mem::take(&mut worker.report_due) {
            heartbeat.force(now);
        }
        if heartbeat.until_due(now).is_zero() {
            let report = worker.report(now);
            if heartbeat.tick(now, &mut worker.control, || report) == Delivery::PeerGone {
                // Take what is still queued to us before giving up on the manager.
                worker.handle_control(event_loop.registry(), now);
                worker.manager_gone(event_loop.registry(), now);
            }
        }
        if let Some(at) = worker.shutdown_at {
            if worker.conns.is_empty() || now >= at {
                // A last heartbeat, so the figures of the final requests are counted.
                let report = worker.report(now);
                let requests = report.figures.responses.total();
                let _ = heartbeat.send_final(&mut worker.control, FINAL_REPORT_WITHIN, || report.clone());
                tracing::info!(worker = id, open = worker.conns.len(), requests, "worker exiting");
                worker.keeper.exiting();
                return Ok(());
            }
        }
        let wake = if worker.again.is_empty() {
            Wake::At(heartbeat.due_at()).or_at(next_sweep)
        } else {
            Wake::Now // connections wait for their next turn: only look for events
        };
        event_loop.wait(wake).context("epoll_wait")?;
        open_files::next_pass();
        let now = Instant::now();
        worker.shared.date.refresh();
        // Control first: a drain queued before a request arrived applies to its answer.
        if event_loop.is_ready(control_token) {
            worker.handle_control(event_loop.registry(), now);
        }
        // Last turn's unfinished connections first; those this turn's events leave
        // unfinished wait for the next (after the heartbeat at the top of the loop).
        worker.drive_again(now);
        while let Some(ready) = event_loop.next_ready() {
            match ready.token {
                token if token == control_token => {}
                token if token == lane_token => worker.read_lane(event_loop.registry(), now),
                token if token == hand_over_token => worker.retry_hand_over(),
                token if token == lifeline_token => {
                    let _ = event_loop.registry().deregister(&mut SourceFd(&lifeline.as_raw_fd()));
                    worker.daemon_gone(event_loop.registry(), now);
                }
                token => {
                    if let Some(index) = worker.conn_tokens.index(token) {
                        worker.drive(index, now);
                    }
                }
            }
        }
        if now >= next_sweep {
            next_sweep = now + SWEEP_INTERVAL;
            worker.retry_hand_over();
            worker.keeper.check(worker.shared.records.table());
            heartbeat.set_keeper_pid(worker.keeper.pid());
            worker.sweep(now);
            worker.remeasure_fds(event_loop.registry(), now);
        }
        worker.hand_over_due(event_loop.registry());
        if let Some(log) = worker.shared.access_log.as_mut() {
            log.flush(); // one write per pass for every line it produced
        }
    }
}

impl Worker {
    fn report(&mut self, now: Instant) -> Report {
        Report {
            figures: self.shared.stats.snapshot(now).clone(),
            active: self.conns.len() as u64,
            workers: Vec::new(),
            retiring: self.shutdown_at.is_some(),
        }
    }

    fn handle_control(&mut self, registry: &Registry, now: Instant) {
        let limit = crate::sys::process::FdBudget::current_limit();
        loop {
            if !self.room_for_next(Intake::Control, limit, now) {
                return;
            }
            match self.control.recv() {
                Ok(Recv::Message(ToWorker::Connections(conns))) => self.accept_all(conns, registry, now),
                Ok(Recv::Message(ToWorker::Shutdown { deadline_ms })) => {
                    self.begin_shutdown(Duration::from_millis(deadline_ms), now, registry)
                }
                Ok(Recv::Message(ToWorker::ReopenLog(fd))) => {
                    match (fd.into_owned(), self.shared.access_log.as_mut()) {
                        (Ok(fd), Some(log)) => log.replace(fd.into()),
                        (Err(e), _) => {
                            tracing::warn!(worker = self.id, error = %e, "cannot take the reopened access log")
                        }
                        (Ok(_), None) => {}
                    }
                }
                Ok(Recv::Message(ToWorker::Drain)) => {
                    self.shared.force_close = true;
                    self.drain_idle_at.get_or_insert(now + self.drain_timeout);
                }
                Ok(Recv::Message(ToWorker::Resume)) => {
                    if self.shutdown_at.is_none() {
                        self.shared.force_close = false;
                        self.drain_idle_at = None;
                    }
                }
                Ok(Recv::Message(ToWorker::TicketKeys(keys))) => self.install_ticket_keys(&keys),
                Ok(Recv::Message(ToWorker::HandOver { lane })) => match lane.into_owned() {
                    Ok(lane) => self.take_hand_over_lane(LaneSender::new(lane), registry),
                    Err(e) => tracing::warn!(worker = self.id, error = %e, "cannot take the hand-over lane"),
                },
                Ok(Recv::Message(ToWorker::Bootstrap(_))) => {
                    tracing::warn!(worker = self.id, "a second bootstrap: ignored")
                }
                Ok(Recv::Empty) => return,
                Ok(Recv::Closed) => return self.manager_gone(registry, now),
                // The message was consumed; read on, or a close behind it is never seen
                // (the channel is edge-triggered).
                Err(RecvError::Protocol(e)) => tracing::warn!(worker = self.id, error = %e, "bad control message"),
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "control channel failed: treating the manager as gone");
                    return self.manager_gone(registry, now);
                }
            }
        }
    }

    /// Rotated session-ticket keys: handshakes from now on seal with the new key.
    fn install_ticket_keys(&self, keys: &crate::tls::tickets::TicketKeys) {
        if self.shared.tls.as_ref().is_some_and(|acceptor| acceptor.install_ticket_keys(keys)) {
            tracing::info!(worker = self.id, generation = keys.generation, "TLS session ticket keys installed");
        }
    }

    /// Takes the connections queued in our lane, as long as their fds fit.
    fn read_lane(&mut self, registry: &Registry, now: Instant) {
        // A retiring worker leaves its lane to the slot's next worker.
        if self.shutdown_at.is_some() {
            return;
        }
        let limit = crate::sys::process::FdBudget::current_limit();
        while self.room_for_next(Intake::Lane, limit, now) {
            match self.lane.recv() {
                Ok(Recv::Message(conns)) => self.accept_all(conns, registry, now),
                Ok(Recv::Empty) | Ok(Recv::Closed) => break,
                Err(RecvError::Protocol(e)) => tracing::warn!(worker = self.id, error = %e, "bad lane message"),
                Err(e) => {
                    tracing::error!(worker = self.id, error = %e, "cannot read the lane");
                    break;
                }
            }
        }
    }

    fn accept_all(&mut self, conns: Connections<'_>, registry: &Registry, now: Instant) {
        for conn in conns.0 {
            let Connection { fd, transport, carried, salvage, file } = conn;
            let file = file.map(ipc::Fd::into_owned).transpose();
            match (fd.into_owned(), salvage, file) {
                (Ok(fd), Some(salvage), Ok(file)) => {
                    let carried = carried.unwrap_or_default();
                    self.accept_rescued(fd, transport, *salvage, &carried, file, registry, now)
                }
                (Ok(fd), None, _) => self.accept(fd, transport, carried.as_deref(), registry, now),
                (Err(e), ..) | (_, _, Err(e)) => {
                    tracing::warn!(worker = self.id, error = %e, "cannot take a connection")
                }
            }
        }
    }

    /// Whether the next message on `from` fits in our descriptors. Each connection holds
    /// its socket (files are opened per request, and an EMFILE there is a 500); a message
    /// whose fds do not fit waits in its channel rather than losing them.
    fn room_for_next(&mut self, from: Intake, limit: usize, now: Instant) -> bool {
        let Some(missing) = self.fds_missing(from, limit) else { return false };
        // Once between two sweeps' re-measures: what can be given back is, then intake
        // waits for the next re-measure.
        let fits = missing == 0
            || (!std::mem::replace(&mut self.room_made, true) && self.make_room(from, limit, missing, now));
        if fits {
            if let Some(stalls) = self.intake_pause.recovered() {
                tracing::info!(worker = self.id, stalls, "descriptors available again: resuming intake");
            }
            return true;
        }
        if self.intake_pause.stalled(now, None).is_some() {
            let free = self.fds.free(limit, self.fds_grown());
            tracing::warn!(worker = self.id, open = self.conns.len(), free, "out of descriptors: pausing intake");
        }
        false
    }

    /// Descriptors the next message on `from` lacks (None: its channel cannot be read).
    fn fds_missing(&mut self, from: Intake, limit: usize) -> Option<usize> {
        let free = self.fds.free(limit, self.fds_grown());
        let room = crate::sys::process::WORKING_ROOM;
        let missing = match from {
            Intake::Control => self.control.fds_missing(free, room),
            Intake::Lane => self.lane.fds_missing(free, room),
        };
        missing.ok()
    }

    /// Descriptors taken since the last measure: connections and kept files.
    fn fds_grown(&self) -> usize {
        self.conns.len().saturating_sub(self.conns_at_measure) + open_files::grown_since_measure()
    }

    /// Gives back descriptors for `missing` more: the kept files first, then the idle
    /// keep-alive connections longest without a request (as nginx reuses its idle
    /// connections). Closing those is what a keep-alive timeout does, and a client reopens
    /// an idle connection closed under it; leaving them would hold every new connection
    /// queued until their timeouts. True if the next message fits now.
    fn make_room(&mut self, from: Intake, limit: usize, missing: usize, now: Instant) -> bool {
        self.shared.sites.sweep_open_files(true);
        self.measure_fds();
        let missing = match self.fds_missing(from, limit) {
            Some(0) => return true,
            Some(still) => still.min(missing),
            None => return false,
        };
        let mut idle: Vec<(Instant, usize)> =
            self.conns.iter().filter(|(_, c)| c.is_idle()).map(|(i, c)| (c.deadline(), i)).collect();
        if idle.is_empty() {
            return false;
        }
        idle.sort_unstable();
        let closed = idle.len().min(missing);
        for &(_, index) in &idle[..closed] {
            self.close(index, now);
        }
        tracing::warn!(
            worker = self.id,
            closed,
            open = self.conns.len(),
            "out of descriptors: closed idle keep-alive connections for new ones"
        );
        self.measure_fds();
        matches!(self.fds_missing(from, limit), Some(0))
    }

    /// Counts our open descriptors (the budget's base until the next count).
    fn measure_fds(&mut self) {
        self.fds = crate::sys::process::FdBudget::measure();
        self.conns_at_measure = self.conns.len();
        open_files::measured();
    }

    /// Our manager is gone: finish what we have, take nothing new, then exit.
    fn manager_gone(&mut self, registry: &Registry, now: Instant) {
        if !self.manager_gone {
            self.manager_gone = true;
            tracing::warn!(worker = self.id, open = self.conns.len(), "manager gone: draining");
            self.begin_shutdown(self.drain_timeout, now, registry);
            let _ = registry.deregister(&mut SourceFd(&self.control.raw_fd()));
        }
    }

    /// The daemon is gone. Its successor (systemd's fd store) adopts our lane, so we
    /// leave what is queued there to it, close idle connections, and give the responses
    /// in progress the grace period: requests in flight in a killed daemon's tree finish.
    fn daemon_gone(&mut self, registry: &Registry, now: Instant) {
        tracing::warn!(worker = self.id, open = self.conns.len(), "daemon gone: finishing responses, then exiting");
        let _ = registry.deregister(&mut SourceFd(&self.lane.raw_fd()));
        self.hand_over.active = false;
        self.shared.force_close = true;
        self.drain_idle_at = Some(now);
        let at = now + self.grace;
        self.shutdown_at = Some(self.shutdown_at.map_or(at, |t| t.min(at)));
        self.sweep(now);
    }

    /// Re-reads the descriptor headroom; resumes a paused intake when there is room.
    fn remeasure_fds(&mut self, registry: &Registry, now: Instant) {
        self.measure_fds();
        self.room_made = false;
        if self.intake_pause.is_stalled() {
            self.handle_control(registry, now);
            self.read_lane(registry, now);
        }
    }

    /// Stop taking work. With a hand-over lane (and no drain in force) plain connections
    /// move to a live worker at their next request boundary and TLS responses close;
    /// otherwise every response closes its connection. Idle ones close at `deadline`.
    fn begin_shutdown(&mut self, deadline: Duration, now: Instant, registry: &Registry) {
        // What is queued in our lane now was meant for us; take it before retiring (at a
        // full stop no other worker would). Later arrivals wait for the slot's next worker.
        self.read_lane(registry, now);
        let at = now + deadline;
        self.shutdown_at = Some(self.shutdown_at.map_or(at, |t| t.min(at)));
        // Tells the manager at once that the lane is left to the slot's next worker.
        self.report_due = true;
        if self.hand_over.lane.is_some() && !self.shared.force_close {
            self.hand_over.active = true;
            self.shared.close_tls = true;
            self.retry_hand_over();
            self.hand_over_due(registry);
        } else {
            self.shared.force_close = true;
        }
    }

    /// Takes a connection: new from the listener, moved by the manager, or handed over
    /// by a retiring worker with the bytes it had read (`carried`, processed first).
    fn accept(&mut self, fd: OwnedFd, transport: Transport, carried: Option<&[u8]>, registry: &Registry, now: Instant) {
        self.shared.stats.figures.received += 1;
        let session = match (transport, &self.shared.tls) {
            (Transport::Plain, _) => None,
            (Transport::Tls, Some(acceptor)) => match tls::Session::new(acceptor, now) {
                Ok(session) => Some(Box::new(session)),
                Err(e) => return tracing::warn!(worker = self.id, error = %e, "cannot start a TLS session"),
            },
            (Transport::Tls, None) => return tracing::warn!(worker = self.id, "a TLS connection, and no certificate"),
        };
        if self.conns.len() >= self.max_connections {
            // A plain client reads a 503; a TLS one could not, before a handshake.
            if session.is_none() {
                conn::refuse_overloaded(fd, &mut self.shared);
            }
            return;
        }
        // The request has usually arrived while the fd travelled here: serve it before
        // touching epoll, so a `Connection: close` exchange costs no epoll_ctl at all.
        let mut conn = Conn::new(fd, session, &self.shared, now);
        if let (Transport::Plain, Some(carried)) = (transport, carried) {
            conn.take_carried(carried, &self.shared, now);
            // Handed over: its responses so far were written by another worker.
            let counts = crate::sys::net::byte_counts(conn.socket().as_fd()).unwrap_or_default();
            conn.written_before(counts.written);
            conn.read_before(counts.read);
        }
        conn.record(&mut self.shared.records);
        self.serve(conn, registry, now);
    }

    /// Takes a connection a dead worker's keeper sent on (SPEC section 8), as its record
    /// says: an idle one is served on; a request received and not answered is answered
    /// from the carried bytes (a poison request, in progress in two deaths, gets 500);
    /// a response in progress continues from the byte the kernel says was written, if
    /// its file is unchanged. TLS connections, and anything else, are closed. Counted
    /// by how in `webd_connections_rescued_total`.
    #[allow(clippy::too_many_arguments)]
    fn accept_rescued(
        &mut self,
        fd: OwnedFd,
        transport: Transport,
        salvage: ipc::Salvage,
        carried: &[u8],
        file: Option<OwnedFd>,
        registry: &Registry,
        now: Instant,
    ) {
        self.shared.stats.figures.received += 1;
        let counts = crate::sys::net::byte_counts(fd.as_fd());
        let (recorded_read, kernel) = (salvage.read(), counts.as_ref().ok().map(|c| (c.read, c.written)));
        let mut conn = Conn::new(fd, None, &self.shared, now);
        let how = match (transport, salvage, counts) {
            (Transport::Tls, ..) => Err("a TLS connection: its state died with its worker"),
            (_, ipc::Salvage::Lost, _) => Err("nothing recorded could be continued"),
            (_, _, Err(_)) => Err("the kernel's byte counts are unavailable"),
            // Killed between a read and its record: whatever those bytes held, nobody can
            // answer it.
            (_, salvage, Ok(counts)) if salvage.read().is_some_and(|recorded| recorded != counts.read) => {
                Err("the dead worker read bytes it had not recorded")
            }
            (_, ipc::Salvage::Waiting { sent, .. }, Ok(counts)) if sent != counts.written => {
                Err("more was written than recorded")
            }
            (_, ipc::Salvage::Waiting { deaths, answered, .. }, Ok(counts)) => {
                conn.written_before(counts.written);
                conn.read_before(counts.read);
                if answered {
                    conn.was_answered();
                }
                conn.take_carried(carried, &self.shared, now);
                if carried.is_empty() {
                    Ok(How::Idle)
                } else if deaths >= 2 {
                    Ok(How::Poison)
                } else {
                    conn.in_progress_in(deaths);
                    Ok(How::Replayed)
                }
            }
            (_, ipc::Salvage::Response(response), Ok(counts)) => {
                let file = file.map(std::fs::File::from);
                conn.read_before(counts.read);
                conn.take_carried(carried, &self.shared, now);
                conn.resume(&response, file, counts.written, &mut self.shared, now).map(|()| How::Resumed)
            }
        };
        let rescued = &mut self.shared.stats.figures.rescued;
        match how {
            Err(why) => {
                rescued.closed += 1;
                tracing::info!(worker = self.id, why, ?recorded_read, ?kernel, "a dead worker's connection closed");
                return;
            }
            Ok(How::Poison) => {
                rescued.poison += 1;
                return self.answer_poison(conn, carried, registry, now);
            }
            Ok(How::Idle) => rescued.idle += 1,
            Ok(How::Replayed) => {
                rescued.replayed += 1;
                // Reported before it is answered, should it kill us too: not driven now
                // but watched, its first event comes on the next pass, after the
                // heartbeat forced at the top of the loop.
                self.report_due = true;
                conn.record(&mut self.shared.records);
                return self.watch(conn, Outcome::Keep, registry, now);
            }
            Ok(How::Resumed) => {
                rescued.resumed += 1;
                return self.serve(conn, registry, now); // `resume` recorded it
            }
        }
        conn.record(&mut self.shared.records);
        self.serve(conn, registry, now);
    }

    /// A request that was in progress in two worker deaths: answered 500 and closed, never
    /// replayed again, so a request that crashes workers cannot take the pool down.
    fn answer_poison(&mut self, mut conn: Conn, carried: &[u8], registry: &Registry, now: Instant) {
        let path = match request::parse(carried, &self.shared.limits) {
            request::Parsed::Complete { request, .. } => String::from_utf8_lossy(request.target).into_owned(),
            _ => "-".into(),
        };
        let client = conn.socket().peer_addr().map_or_else(|_| "-".into(), |a| a.to_string());
        tracing::error!(
            worker = self.id,
            %client,
            %path,
            "poison request: in progress in two worker deaths; answered 500, not replayed"
        );
        // Closes gracefully after the answer: lingering, it is served only to drain input.
        if conn.answer_error(request::ErrorKind::Poison, &mut self.shared, now) == Outcome::Close {
            return self.finish(conn, now);
        }
        self.serve(conn, registry, now);
    }

    /// Drives a connection just taken, then watches it: the request has usually arrived
    /// while the fd travelled here, so serving it before touching epoll makes a
    /// `Connection: close` exchange cost no epoll_ctl at all.
    fn serve(&mut self, mut conn: Conn, registry: &Registry, now: Instant) {
        let outcome = conn.drive(&mut self.shared, now);
        self.watch(conn, outcome, registry, now);
    }

    /// Watches a connection, driven already (`outcome`) or not (`Again`: on the next turn).
    fn watch(&mut self, conn: Conn, outcome: Outcome, registry: &Registry, now: Instant) {
        if outcome == Outcome::Close {
            return self.finish(conn, now);
        }
        let raw = conn.raw_fd();
        let index = self.conns.insert(conn);
        if outcome == Outcome::Again {
            self.again.push(index);
        }
        // Registering reports readiness that arrived since the last read: nothing is missed.
        let token = self.conn_tokens.token(index);
        if let Err(e) = registry.register(&mut SourceFd(&raw), token, Interest::READABLE | Interest::WRITABLE) {
            tracing::warn!(error = %e, "cannot watch a connection");
            return self.close(index, now);
        }
        if self.hand_over.active {
            self.hand_over.due.push(index);
        }
    }

    fn drive(&mut self, index: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(index) else { return };
        match conn.drive(&mut self.shared, now) {
            Outcome::Close => return self.close(index, now),
            Outcome::Again => self.again.push(index),
            Outcome::Keep => {}
        }
        // The one cost of hand-over on the data path: looked at after this pass.
        if self.hand_over.active {
            self.hand_over.due.push(index);
        }
    }

    /// The manager lent us a live worker's lane for our retirement (a later one replaces it).
    fn take_hand_over_lane(&mut self, lane: LaneSender, registry: &Registry) {
        if let Some(old) = self.hand_over.lane.take() {
            let _ = registry.deregister(&mut SourceFd(&old.raw_fd()));
        }
        // Edge-triggered: an event each time a full lane gets room again.
        let token = self.hand_over.token;
        if let Err(e) = registry.register(&mut SourceFd(&lane.raw_fd()), token, Interest::WRITABLE) {
            tracing::warn!(worker = self.id, error = %e, "cannot watch the hand-over lane: its room is polled");
        }
        self.hand_over.lane = Some(lane);
    }

    /// Looks at every connection again (the lane has room, or a sweep is due).
    fn retry_hand_over(&mut self) {
        if self.hand_over.active {
            self.hand_over.due.extend(self.conns.iter().map(|(index, _)| index));
        }
    }

    /// Hands the due connections that are at a request boundary to the live worker's
    /// lane, as many per message as fit. A full lane keeps the rest for its next room;
    /// a failed one ends the hand-over (the rest close as without one).
    fn hand_over_due(&mut self, registry: &Registry) {
        if self.hand_over.due.is_empty() {
            return;
        }
        let mut due = std::mem::take(&mut self.hand_over.due);
        due.sort_unstable();
        due.dedup();
        due.retain(|&index| self.conns.get(index).is_some_and(Conn::can_hand_over));
        let mut rest = &due[..];
        while !rest.is_empty() && self.hand_over.active {
            let Some(lane) = self.hand_over.lane.as_mut() else { break };
            let batch = &rest[..next_batch(rest, &self.conns)];
            rest = &rest[batch.len()..];
            let conns = batch.iter().filter_map(|&index| self.conns.get(index)).map(|conn| Connection {
                carried: Some(conn.unprocessed().to_vec()),
                ..Connection::plain(ipc::Fd::lend(conn.socket()))
            });
            let conns: Vec<Connection<'_>> = conns.collect();
            let carried: usize = conns.iter().filter_map(|c| c.carried.as_ref()).map(Vec::len).sum();
            // From the send on, the lane holds them: our keeper must not send them too.
            for conn in batch.iter().filter_map(|&index| self.conns.get(index)) {
                self.shared.records.leave(conn.raw_fd());
            }
            let sent = lane.send(&Connections(conns));
            if sent.is_err() {
                for conn in batch.iter().filter_map(|&index| self.conns.get(index)) {
                    conn.record(&mut self.shared.records);
                }
            }
            match sent {
                Ok(()) => {
                    tracing::info!(
                        worker = self.id,
                        connections = batch.len(),
                        carried,
                        "handed over to a live worker"
                    );
                    self.handed_over(batch, registry)
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "hand-over lane failed: closing connections instead");
                    self.hand_over.active = false;
                    self.shared.force_close = true;
                }
            }
        }
        due.clear();
        self.hand_over.due = due; // keeps its capacity
    }

    /// The connections of `batch` are in the lane: our copies go (they left epoll
    /// explicitly, as the in-flight fds keep the sockets open).
    fn handed_over(&mut self, batch: &[usize], registry: &Registry) {
        for &index in batch {
            if let Some(conn) = self.conns.remove(index) {
                let fd = conn.raw_fd();
                let _ = registry.deregister(&mut SourceFd(&fd));
                self.shared.stats.figures.rescued.migrated += 1;
                drop(conn);
                self.shared.records.clear(fd); // after the close: see `finish`
            }
        }
    }

    /// Drives again every connection whose last turn ended with more to do. (A slot
    /// closed and reused meanwhile is only driven once more: a read that would block.)
    fn drive_again(&mut self, now: Instant) {
        let mut turn = std::mem::replace(&mut self.again, std::mem::take(&mut self.again_spare));
        for index in turn.drain(..) {
            self.drive(index, now);
        }
        self.again_spare = turn;
    }

    /// Closing the fd removes it from epoll; no epoll_ctl needed. (Should another copy
    /// of the socket still be open for a moment, a stray event for a reused token only
    /// makes that connection try a read that would block.)
    fn close(&mut self, index: usize, now: Instant) {
        if let Some(conn) = self.conns.remove(index) {
            self.finish(conn, now);
        }
    }

    /// Closes a connection, then forgets its record: in that order, a death in between
    /// leaves the keeper a record for no descriptor, never a closing connection to send.
    fn finish(&mut self, conn: Conn, now: Instant) {
        let fd = conn.raw_fd();
        conn.finish(&mut self.shared.stats, now);
        self.shared.records.clear(fd);
    }

    /// Times out connections past their header, keep-alive or write deadline (a request
    /// begun gets 408 first), and closes idle ones once the shutdown deadline has come.
    fn sweep(&mut self, now: Instant) {
        let shutdown_due = self.shutdown_at.into_iter().chain(self.drain_idle_at).any(|t| now >= t);
        let due: Vec<(usize, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.expired(now) || (shutdown_due && c.is_idle()))
            .map(|(i, c)| (i, c.expired(now)))
            .collect();
        for (index, expired) in due {
            let outcome = match self.conns.get_mut(index) {
                Some(conn) if expired => conn.time_out(&mut self.shared, now),
                _ => Outcome::Close,
            };
            if outcome == Outcome::Close {
                self.close(index, now);
            }
        }
        self.conns.shrink();
        self.shared.sites.sweep_open_files(false);
        if self.shared.buffers.connections_open(self.conns.len()) {
            crate::sys::release_free_memory();
        }
    }
}

/// How many of `due` (connections at a boundary) go in the next hand-over message: at
/// most `MAX_FDS_PER_MESSAGE`, carrying at most `CARRIED_PER_MESSAGE` bytes (at least one).
fn next_batch(due: &[usize], conns: &Slab<Conn>) -> usize {
    let mut carried = 0;
    let mut count = 0;
    for &index in due.iter().take(crate::sys::fdpass::MAX_FDS_PER_MESSAGE) {
        carried += conns.get(index).map_or(0, |c| c.unprocessed().len());
        if count > 0 && carried > CARRIED_PER_MESSAGE {
            break;
        }
        count += 1;
    }
    count
}

/// What became of a dead worker's connection taken here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Idle,
    Replayed,
    Resumed,
    /// In progress in two worker deaths: answered 500.
    Poison,
}

/// A panic must not unwind: unwinding would close every connection (each `Conn` drop
/// closes its socket) that the keeper is there to send on. Aborting leaves them open.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// The table our keeper reads: a slot per descriptor number we may use, two per
/// connection (its socket, and the file a response is sent from) and some for our own.
fn keeper_records(max_connections: usize, id: u32) -> records::Records {
    if crate::fault::no_worker_keeper() {
        tracing::warn!(worker = id, "injected: no keeper, no records");
        return records::Records::default();
    }
    let limit = crate::sys::process::FdBudget::current_limit();
    let capacity = max_connections.saturating_mul(2).saturating_add(64).min(limit.max(64));
    records::Records::new(capacity)
        .inspect_err(|e| tracing::error!(worker = id, error = %e, "no table for a keeper: connections would die with this worker"))
        .unwrap_or_default()
}

/// Where connection fds come from.
#[derive(Clone, Copy)]
enum Intake {
    Control,
    Lane,
}
