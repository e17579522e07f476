//! The worker pool: one slot per worker id, each with its own control channel and lane;
//! steering the listener toward the least-loaded live worker; crash, hang and
//! retirement handling.
//!
//! Connections never pass through here on their normal path: the listener sends them
//! into the workers' lanes. A connection stranded in a lane that no worker reads (its
//! worker crashed or was scaled away before the listener heard) is moved to a live
//! worker's control channel, and so is one still queued to a dead worker's control
//! channel (read back from the duplicate of its end that we keep). A worker crash thus
//! loses only the requests it was serving.

use crate::config::Config;
use crate::event_loop::Tokens;
use crate::figures::{Figures, Supervision, LATENCY_BUCKETS};
use crate::ipc::{
    Connection, Connections, Fd, FromManager, Heartbeat, LaneReader, LaneState, Recv, RecvError, Steer, SteeringSender,
    ToWorker, WorkerBootstrap, WorkerControl, WorkerLink, WorkerReport,
};
use crate::supervise::{Check, Child, Exited, Process, Reason, Slot, Supervised, Which};
use crate::sys::{self, fdpass::MAX_FDS_PER_MESSAGE, spawn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use webd_proto::{ProcessState, WorkerState};

/// The manager's plug-in for supervising workers.
struct Worker;

impl Child for Worker {
    type Down = ToWorker<'static>;
    type Up = Heartbeat;
    type State = WorkerProcess;
    fn shutdown<'a>(deadline: Duration) -> ToWorker<'a> {
        ToWorker::Shutdown { deadline_ms: deadline.as_millis() as u64 }
    }
}

/// One worker process.
type Current = Process<Worker>;

/// What the manager keeps of a worker process beside its channel.
struct WorkerProcess {
    /// Duplicate of the worker's end: queued connections can be recovered after a crash.
    worker_end: WorkerControl,
    reported: Reported,
}

/// What a worker last reported, and its utilization.
#[derive(Default)]
struct Reported {
    figures: Figures,
    /// Connections open at its last heartbeat.
    active: u64,
    /// For utilization: busy time and clock at the previous heartbeat.
    prev_busy_ns: u64,
    prev_sent_ns: u64,
    utilization: f64,
    keeper_pid: Option<u32>,
    /// Retiring, it takes nothing more from its lane.
    retiring: bool,
}

struct WorkerSlot {
    id: u32,
    /// Its processes: serving, replacing (rolling restart), retiring.
    sup: Supervised<Worker>,
    /// False once the slot is scaled away: it starts nothing new.
    wanted: bool,
}

/// A worker command in progress, answered with `Done` when finished.
enum WorkerOp {
    /// Replace these workers one at a time, each new one up before the old one drains;
    /// done when the old ones (`leaving`) have said they take nothing more from their
    /// lanes, so after the answer every new connection reaches a new worker.
    Rolling { queue: VecDeque<u32>, replaced: u32, leaving: Vec<Pid>, deadline: Instant },
    /// Wait for these new workers to come up.
    ScaleUp { ids: Vec<u32>, workers: u32, deadline: Instant },
}

/// Longest a worker command may take.
const OP_TIMEOUT: Duration = Duration::from_secs(50);

/// A retiring worker's report while it drains, and the final one once it exited.
fn retiree_report(id: u32, retiree: &Current) -> WorkerReport {
    WorkerReport {
        id,
        pid: retiree.pid.as_raw() as u32,
        state: WorkerState::Draining,
        active: retiree.state.reported.active,
        figures: retiree.state.reported.figures.clone(),
        ..Default::default()
    }
}

pub struct WorkerPool {
    config: Config,
    exe: PathBuf,
    lifeline: OwnedFd,
    /// Receiving ends of the lanes, by slot id (from the daemon).
    lanes: Vec<Option<LaneReader>>,
    /// Their sending ends, lent to a retiring worker for its hand-over.
    lane_senders: Vec<Option<OwnedFd>>,
    /// To the listener: which lanes to use.
    steering: SteeringSender,
    /// The lanes' state changed (or it is time to repeat it for a new listener).
    steer_due: bool,
    slots: Vec<WorkerSlot>,
    /// Stranded connections taken but not yet delivered (every worker full or starting),
    /// each with any bytes a retiring worker handed over with it.
    pending: Vec<Connection<'static>>,
    draining: bool,
    shutting_down: bool,
    /// Poll tokens for the workers' channels.
    tokens: Tokens,
    op: Option<WorkerOp>,
    /// Messages for the daemon (command results).
    pub outbox: Vec<FromManager>,
    /// The access log file every worker appends to.
    access_log: Option<OwnedFd>,
    /// The certificates new workers get.
    tls: crate::tls::TlsMaterial,
    /// The session-ticket keys every worker gets (from the daemon's bootstrap on).
    tickets: Option<crate::tls::tickets::TicketKeys>,
    /// The first `tls_listen` port, for `redirect_to_https`.
    https_port: Option<u16>,
    /// Workers that exited since the last heartbeat: reported once more with their final
    /// figures, so the daemon counts everything they served.
    exited: Vec<WorkerReport>,
    /// A reload that arrived while a command was in progress, and one ready to run.
    pending_reload: Option<Config>,
    reload_after_op: Option<Config>,
    /// Descriptor headroom, re-measured at each heartbeat check.
    fds: crate::sys::process::FdBudget,
    /// How supervising the workers went, monotonic over this manager's life.
    supervision: Supervision,
}

impl WorkerPool {
    pub fn new(
        config: Config,
        exe: PathBuf,
        lifeline: OwnedFd,
        steering: SteeringSender,
        draining: bool,
        tokens: Tokens,
    ) -> WorkerPool {
        let now = Instant::now();
        let slots = (0..config.workers).map(|id| WorkerSlot::new(id, now)).collect();
        WorkerPool {
            config,
            exe,
            lifeline,
            lanes: Vec::new(),
            lane_senders: Vec::new(),
            steering,
            steer_due: true,
            slots,
            pending: Vec::new(),
            draining,
            shutting_down: false,
            tokens,
            fds: crate::sys::process::FdBudget::measure(),
            op: None,
            outbox: Vec::new(),
            pending_reload: None,
            reload_after_op: None,
            access_log: None,
            tls: Default::default(),
            tickets: None,
            https_port: None,
            exited: Vec::new(),
            supervision: Supervision::default(),
        }
    }

    /// Starts every worker whose start is due.
    pub fn start_due(&mut self, registry: &Registry, now: Instant) {
        if self.shutting_down {
            return;
        }
        for i in 0..self.slots.len() {
            // A slot starts once the daemon has sent its lane.
            let has_lane = self.lanes.get(self.slots[i].id as usize).is_some_and(Option::is_some);
            let due = has_lane && self.slots[i].wanted && self.slots[i].sup.slot.start_due.is_some_and(|t| t <= now);
            if due {
                self.start(i, registry, now);
            }
        }
    }

    fn start(&mut self, index: usize, registry: &Registry, now: Instant) {
        let spawned = self.spawn(self.slots[index].id, registry);
        self.slots[index].sup.started(spawned, now);
        self.steer_due = true;
    }

    fn spawn(&mut self, id: u32, registry: &Registry) -> anyhow::Result<Current> {
        let (ours, theirs) = sys::seqpacket_pair()?;
        let worker_end = WorkerControl::new(theirs.try_clone()?);
        let argv0 = format!("{}worker {id}", crate::ROLE_PREFIX);
        let env = [(crate::logging::LOG_FORMAT_ENV, crate::logging::format_env_value(self.config.log_format))];
        let pid = spawn::spawn(spawn::SpawnSpec {
            exe: &self.exe,
            argv0: &argv0,
            channel: theirs,
            // A worker outlives a crashed manager to finish its requests; the lifeline
            // ends it with the daemon.
            die_with_parent: false,
            env: &env,
            // Workers inherit the manager's (already dropped) identity.
            credentials: None,
            args: &[],
            keep_notify_socket: false,
        })?;
        let mut channel = WorkerLink::new(ours);
        let lane = self.lanes.get(id as usize).and_then(Option::as_ref);
        let lane = lane.ok_or_else(|| anyhow::anyhow!("no lane for worker {id} yet"))?;
        let boot = WorkerBootstrap {
            config: self.config.clone(),
            draining: self.draining,
            id,
            lifeline: Fd::lend(&self.lifeline),
            lane: Fd::lend(lane),
            lane_sender: self.lane_senders.get(id as usize).and_then(Option::as_ref).map(Fd::lend),
            access_log: self.access_log.as_ref().map(Fd::lend),
            tls: self.tls.clone(),
            tickets: self.tickets.clone(),
            https_port: self.https_port,
        };
        if let Err(e) = channel.send(&ToWorker::Bootstrap(Box::new(boot))) {
            sys::process::signal(pid, Signal::SIGKILL);
            anyhow::bail!("sending bootstrap to worker {id} (pid {pid}): {e}");
        }
        let token = self.tokens.allocate();
        // Writable: a worker that had no room for connections has room again.
        registry.register(&mut SourceFd(&channel.raw_fd()), token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Process { pid, token, channel, state: WorkerProcess { worker_end, reported: Reported::default() } })
    }

    /// Takes the receiving and sending ends of lanes `first..` from the daemon.
    pub fn add_lanes(&mut self, first: u32, lanes: Vec<Fd<'_>>, senders: Vec<Fd<'_>>) {
        for (i, fd) in lanes.into_iter().enumerate() {
            let id = first as usize + i;
            if self.lanes.len() <= id {
                self.lanes.resize_with(id + 1, || None);
            }
            match fd.into_owned() {
                Ok(fd) => self.lanes[id] = Some(LaneReader::new(fd)),
                Err(e) => tracing::error!(lane = id, error = %e, "cannot keep a lane"),
            }
        }
        for (i, fd) in senders.into_iter().enumerate() {
            let id = first as usize + i;
            if self.lane_senders.len() <= id {
                self.lane_senders.resize_with(id + 1, || None);
            }
            match fd.into_owned() {
                Ok(fd) => self.lane_senders[id] = Some(fd),
                // Only hand-overs need it: that slot's retirees close as before.
                Err(e) => tracing::warn!(lane = id, error = %e, "cannot keep a lane's sending end"),
            }
        }
        self.steer_due = true;
    }

    /// Tells the listener which lanes have a worker and how loaded each is, when that
    /// changed or is due again. A listener that is down misses nothing lasting: this is
    /// repeated at every check.
    pub fn steer(&mut self) {
        // A manager on its way out says nothing: its successor steers the same listener.
        if !self.steer_due || self.shutting_down {
            return;
        }
        self.steer_due = false;
        let mut lanes = vec![LaneState::default(); self.lanes.len()];
        for ws in self.slots.iter().filter(|ws| ws.wanted) {
            if let (Some(state), Some(current)) = (lanes.get_mut(ws.id as usize), ws.sup.current.as_ref()) {
                *state = LaneState { open: true, load: current.state.reported.active.min(u32::MAX as u64) as u32 };
            }
        }
        match self.steering.send(&Steer { lanes }) {
            Ok(()) => {}
            // The listener is not reading (restarting): it gets the next one.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::warn!(error = %e, "cannot steer the listener"),
        }
    }

    /// Delivers stranded connections we hold, then takes those stranded in lanes no
    /// worker reads, one message at a time while a live worker has room for them.
    pub fn rescue_strays(&mut self) {
        self.deliver_pending();
        if self.shutting_down || !self.pending.is_empty() || !self.has_live_worker() {
            return;
        }
        let limit = crate::sys::process::FdBudget::current_limit();
        for id in 0..self.lanes.len() {
            if self.lane_has_reader(id) {
                continue;
            }
            loop {
                let free = self.fds.free(limit, self.pending.len());
                let Some(lane) = self.lanes[id].as_mut() else { break };
                if !lane.next_fits(free, crate::sys::process::WORKING_ROOM) {
                    return;
                }
                match lane.recv() {
                    Ok(Recv::Message(conns)) => {
                        tracing::info!(
                            lane = id,
                            connections = conns.0.len(),
                            "moving connections from a lane no worker reads"
                        );
                        take_connections(conns, &mut self.pending);
                        self.deliver_pending();
                        if !self.pending.is_empty() {
                            return; // every worker is full; a writable one calls us again
                        }
                    }
                    Err(RecvError::Protocol(e)) => {
                        tracing::warn!(lane = id, error = %e, "bad message in a stranded lane")
                    }
                    Ok(Recv::Empty) | Ok(Recv::Closed) => break,
                    Err(e) => {
                        tracing::warn!(lane = id, error = %e, "reading a stranded lane");
                        break;
                    }
                }
            }
        }
    }

    /// Whether a worker process of slot `id` reads its lane (or is about to).
    fn lane_has_reader(&self, id: usize) -> bool {
        self.slots.iter().any(|ws| ws.id as usize == id && (ws.sup.current.is_some() || ws.sup.incoming.is_some()))
    }

    fn has_live_worker(&self) -> bool {
        self.slots.iter().any(|ws| ws.wanted && ws.sup.current.is_some() && ws.sup.slot.pid.is_some())
    }

    /// Sends held connections to the least-loaded workers that have room, a batch per
    /// worker; keeps them only if no worker can take them now.
    pub fn deliver_pending(&mut self) {
        while !self.pending.is_empty() {
            let take = self.pending.len().min(self.fair_share());
            let mut delivered = false;
            for index in self.by_load() {
                let Some(current) = self.slots[index].sup.current.as_mut() else { continue };
                let conns = Connections(self.pending[..take].iter().map(Connection::lend).collect());
                match current.channel.send(&ToWorker::Connections(conns)) {
                    Ok(()) => {
                        delivered = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        tracing::warn!(worker = self.slots[index].id, error = %e, "cannot move a stranded connection to a worker")
                    }
                }
            }
            if !delivered {
                return; // every worker is full or gone; a writable worker calls us again
            }
            self.pending.drain(..take); // our copies close: the worker has the connections
        }
    }

    /// How many connections one worker gets per message when several are waiting, so a
    /// burst spreads over the pool.
    fn fair_share(&self) -> usize {
        let live = self.slots.iter().filter(|ws| ws.sup.current.is_some()).count().max(1);
        self.pending.len().div_ceil(live).clamp(1, MAX_FDS_PER_MESSAGE)
    }

    /// Live, wanted workers, least loaded first; workers that answered a heartbeat
    /// before those still starting.
    fn by_load(&self) -> Vec<usize> {
        let mut live: Vec<(usize, (bool, u64))> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, ws)| ws.wanted && ws.sup.slot.pid.is_some())
            .filter_map(|(i, ws)| ws.sup.current.as_ref().map(|c| (i, (!ws.sup.slot.is_up(), c.state.reported.active))))
            .collect();
        live.sort_by_key(|(_, load)| *load);
        live.into_iter().map(|(i, _)| i).collect()
    }

    /// Reads the heartbeats of a draining worker.
    fn absorb_heartbeats(current: &mut Current) {
        let Current { channel, state, .. } = current;
        let _ = channel.drain(|hb| state.reported.absorb(&hb));
    }

    /// Reads the messages on the channel with poll token `token` (none for a token no
    /// worker has, such as a late event for one gone).
    pub fn drain_messages(&mut self, token: Token, now: Instant) {
        let Some((index, which)) =
            self.slots.iter().enumerate().find_map(|(i, ws)| ws.sup.owner(token).map(|w| (i, w)))
        else {
            return;
        };
        let ws = &mut self.slots[index];
        let Some(process) = ws.sup.process_mut(which) else { return };
        if let Which::Retiring(_) = which {
            return Self::absorb_heartbeats(process);
        }
        let mut first_heartbeat = false;
        let latency = &mut self.supervision.latency;
        let Current { channel, state, .. } = process;
        let mut up_at = None;
        let drained = channel.drain(|hb| {
            let received = sys::monotonic_ns();
            match which {
                Which::Current => up_at = Some((hb.sent_ns, received, hb.pid)),
                _ => first_heartbeat = true,
            }
            latency.observe(&LATENCY_BUCKETS, Duration::from_nanos(received.saturating_sub(hb.sent_ns)));
            state.reported.absorb(&hb);
        });
        if let Err(e) = drained {
            tracing::warn!(worker = ws.id, error = %e, "reading a worker's channel");
        }
        if let Some((sent, received, pid)) = up_at {
            if ws.sup.slot.heartbeat(sent, received, now) {
                tracing::info!(worker = ws.id, pid, "worker up");
            }
        }
        if first_heartbeat {
            self.promote(index, now);
        }
    }

    /// A rolling restart's new worker is up: the old one drains, the new one serves.
    fn promote(&mut self, index: usize, now: Instant) {
        let drain = self.config.drain_timeout.duration();
        let kill_at = now + drain + self.config.grace.duration();
        let Some(sent_ns) = self.slots[index].sup.incoming.as_ref().map(|p| p.state.reported.prev_sent_ns) else {
            return;
        };
        // The replacement reads the slot's lane: the old worker hands its connections there.
        self.offer_hand_over(index, Some(self.slots[index].id));
        let ws = &mut self.slots[index];
        let old = ws.sup.current.as_ref().map(|c| c.pid);
        if ws.sup.promote(drain, kill_at, sent_ns, now).is_some() {
            self.count_restart(index, Reason::Manual);
            if let Some(WorkerOp::Rolling { replaced, leaving, .. }) = self.op.as_mut() {
                *replaced += 1;
                leaving.extend(old);
            }
        }
    }

    /// The 200 ms heartbeat check of every worker.
    pub fn check(&mut self, now: Instant) {
        // Out of descriptors, rescue waits (connections stay queued in the kernel);
        // re-measure and carry on when there is room again.
        self.fds = crate::sys::process::FdBudget::measure();
        self.steer_due = true;
        let timeout = self.config.heartbeat_timeout.duration();
        for index in 0..self.slots.len() {
            match self.slots[index].sup.check(now, timeout) {
                Check::Healthy | Check::Vacant => {}
                Check::Missed(_) => self.supervision.missed_heartbeats += 1,
                Check::Hung => {
                    self.supervision.missed_heartbeats += 1;
                    self.retire(index, Reason::Hang, self.config.grace.duration(), now);
                }
            }
        }
    }

    /// Takes the slot's process out of service: it finishes what it has (its queued
    /// connections included) and exits by `deadline`, or is killed `grace` after it.
    fn retire(&mut self, index: usize, reason: Reason, deadline: Duration, now: Instant) {
        let kill_at = now + deadline + self.config.grace.duration();
        // A hung worker cannot hand anything over; at a full stop no one would take it.
        if reason == Reason::Manual && !self.shutting_down {
            self.offer_hand_over(index, self.hand_over_target(index));
        }
        let ws = &mut self.slots[index];
        let Some(delay) = ws.sup.retire(reason, deadline, kill_at, now) else { return };
        self.steer_due = true;
        if ws.wanted && !self.shutting_down {
            ws.sup.slot.log_restart(reason, delay, now);
            self.count_restart(index, reason);
        }
    }

    /// The worker a retiree of slot `index` hands its connections to: the least loaded
    /// worker that is up in another wanted slot (`None`: no one, it closes them).
    fn hand_over_target(&self, index: usize) -> Option<u32> {
        let live = self.slots.iter().enumerate().filter(|(i, ws)| *i != index && ws.wanted && ws.sup.slot.is_up());
        let loads = live.filter_map(|(_, ws)| ws.sup.current.as_ref().map(|c| (c.state.reported.active, ws.id)));
        loads.min().map(|(_, id)| id)
    }

    /// Lends slot `index`'s serving worker, about to retire, the sending end of lane `to`:
    /// it hands its plain keep-alive connections through it instead of closing them. Sent
    /// ahead of its `Shutdown`, on the same channel, so it is there when retirement begins.
    fn offer_hand_over(&mut self, index: usize, to: Option<u32>) {
        let Some(lane) = to.and_then(|to| self.lane_senders.get(to as usize)).and_then(Option::as_ref) else {
            return;
        };
        let ws = &mut self.slots[index];
        let Some(retiree) = ws.sup.current.as_mut() else { return };
        if let Err(e) = retiree.channel.send(&ToWorker::HandOver { lane: Fd::lend(lane) }) {
            tracing::debug!(worker = ws.id, error = %e, "hand-over lane not delivered: its connections close");
        }
    }

    /// Counts a restart in the pool's figures, unless the slot is going away.
    fn count_restart(&mut self, index: usize, reason: Reason) {
        if self.slots[index].wanted && !self.shutting_down {
            self.supervision.restarts[reason] += 1;
        }
    }

    /// Reaps exited workers: crashes are restarted, and any connections still queued
    /// to a dead worker go to another.
    pub fn reap(&mut self, registry: &Registry, now: Instant) {
        for (pid, exit) in sys::process::reap_exited() {
            let exited =
                self.slots.iter_mut().enumerate().find_map(|(i, ws)| match ws.sup.on_exit(pid, false, registry, now) {
                    Exited::NotOurs => None,
                    exited => Some((i, exited)),
                });
            let Some((index, exited)) = exited else {
                tracing::debug!(pid = pid.as_raw(), %exit, "reaped unknown child");
                continue;
            };
            let id = self.slots[index].id;
            match exited {
                Exited::Retired(mut retiree) => {
                    tracing::info!(worker = id, pid = pid.as_raw(), %exit, "retired worker exited");
                    // Its last heartbeat (sent as it exits) may still be queued.
                    Self::absorb_heartbeats(&mut retiree);
                    self.exited.push(retiree_report(id, &retiree));
                    self.recover_queued(&mut retiree.state.worker_end);
                }
                Exited::Incoming(_) => {
                    tracing::error!(worker = id, pid = pid.as_raw(), %exit, "replacement worker died");
                    self.finish_op(false, format!("replacement for worker {id} exited ({exit}) before it was up"));
                }
                Exited::Current(mut crashed) => {
                    tracing::error!(worker = id, pid = pid.as_raw(), %exit, "worker crashed");
                    // What it reported before it died still counts (a rescue's figures,
                    // say, sent just before a replay killed it).
                    Self::absorb_heartbeats(&mut crashed);
                    self.exited.push(retiree_report(id, &crashed));
                    self.steer_due = true;
                    self.count_restart(index, Reason::Crash);
                    self.recover_queued(&mut crashed.state.worker_end);
                }
                Exited::NotOurs => {}
            }
        }
        self.slots.retain(|ws| ws.wanted || ws.sup.has_processes());
        self.steer_due = true;
        self.rescue_strays();
    }

    /// Reads back connections that were sent to a worker that never took them.
    fn recover_queued(&mut self, worker_end: &mut WorkerControl) {
        let recovered = take_queued_connections(worker_end, &mut self.pending);
        if recovered > 0 {
            tracing::info!(connections = recovered, "recovered connections queued to a dead worker");
        }
    }

    pub fn kill_overdue(&mut self, now: Instant) {
        for ws in &mut self.slots {
            ws.sup.kill_overdue(now);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let starts = self.slots.iter().filter(|ws| ws.wanted).filter_map(|ws| ws.sup.slot.start_due);
        let kills = self.slots.iter().flat_map(|ws| ws.sup.retiring.iter().map(|r| r.kill_at));
        starts.chain(kills).min()
    }

    /// Stops taking connections (leaving them queued for the next manager) and asks every
    /// worker to finish within `deadline`.
    /// `hand_over`: the next tree's workers read these lanes, so each worker hands its
    /// keep-alive connections into its own slot's lane instead of closing them.
    pub fn shutdown(&mut self, deadline: Duration, hand_over: bool) {
        if self.shutting_down {
            return;
        }
        if hand_over {
            for index in 0..self.slots.len() {
                self.offer_hand_over(index, Some(self.slots[index].id));
            }
        }
        // Workers take what is queued in their lanes as they begin to retire; in a
        // manager restart the new manager's workers read the same lanes on.
        self.deliver_pending();
        self.shutting_down = true;
        self.steer_due = true;
        let now = Instant::now();
        for index in 0..self.slots.len() {
            self.slots[index].wanted = false;
            self.retire(index, Reason::Manual, deadline, now);
        }
        // Held connections cannot be put back in a lane; with every worker retiring
        // there is no one left to serve them.
        if !self.pending.is_empty() {
            tracing::warn!(connections = self.pending.len(), "closing undelivered connections at shutdown");
            self.pending.clear();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|ws| !ws.sup.has_processes())
    }

    pub fn kill_all(&mut self) {
        for ws in &self.slots {
            ws.sup.kill_all();
        }
    }

    /// Certificates for the workers started from now on.
    pub fn set_tls(&mut self, tls: crate::tls::TlsMaterial) {
        self.tls = tls;
    }

    /// Session-ticket keys (at bootstrap, then at each rotation): new workers get them,
    /// running ones are sent them.
    pub fn set_ticket_keys(&mut self, keys: crate::tls::tickets::TicketKeys) {
        for current in self.serving_mut() {
            if let Err(e) = current.channel.send(&ToWorker::TicketKeys(Box::new(keys.clone()))) {
                tracing::warn!(error = %e, "cannot hand the rotated ticket keys to a worker");
            }
        }
        self.tickets = Some(keys);
    }

    pub fn set_https_port(&mut self, port: Option<u16>) {
        self.https_port = port;
    }

    /// A (re)opened access log: new workers get it, running ones are told to switch.
    pub fn set_access_log(&mut self, log: Option<OwnedFd>) {
        let Some(log) = log else { return };
        for current in self.serving_mut() {
            if let Err(e) = current.channel.send(&ToWorker::ReopenLog(Fd::lend(&log))) {
                tracing::warn!(error = %e, "cannot hand the reopened access log to a worker");
            }
        }
        self.access_log = Some(log);
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
        let msg = if draining { ToWorker::Drain } else { ToWorker::Resume };
        for current in self.serving_mut() {
            let _ = current.channel.send(&msg);
        }
    }

    /// Every worker process that serves or is about to: current and incoming.
    fn serving_mut(&mut self) -> impl Iterator<Item = &mut Current> {
        self.slots.iter_mut().flat_map(|ws| ws.sup.serving_mut())
    }

    /// Grows or shrinks the pool to ids `0..workers`; removed workers drain. Answers
    /// once the new workers are up (shrinking answers at once).
    pub fn scale(&mut self, workers: u32, registry: &Registry) {
        if self.op.is_some() {
            self.outbox.push(done(false, "another worker command is in progress"));
            return;
        }
        let now = Instant::now();
        for index in 0..self.slots.len() {
            if self.slots[index].id >= workers && self.slots[index].wanted {
                self.slots[index].wanted = false;
                self.retire(index, Reason::Manual, self.config.drain_timeout.duration(), now);
            }
        }
        self.slots.retain(|ws| ws.wanted || ws.sup.has_processes());
        let mut added = Vec::new();
        for id in 0..workers {
            match self.slots.iter_mut().find(|ws| ws.id == id) {
                Some(ws) if ws.wanted => {}
                // Scaled away and still draining: wanted again, it starts a new worker.
                Some(ws) => {
                    ws.wanted = true;
                    ws.sup.slot.start_due = Some(now);
                    added.push(id);
                }
                None => {
                    self.slots.push(WorkerSlot::new(id, now));
                    added.push(id);
                }
            }
        }
        self.slots.sort_by_key(|ws| ws.id);
        self.config.workers = workers;
        tracing::info!(workers, "pool scaled");
        self.op = Some(WorkerOp::ScaleUp { ids: added, workers, deadline: now + OP_TIMEOUT });
        self.advance_op(registry, now);
    }

    /// Rolling restart of worker `id`, or of every worker in id order.
    pub fn restart(&mut self, id: Option<u32>, registry: &Registry) {
        if self.op.is_some() {
            self.outbox.push(done(false, "another worker command is in progress"));
            return;
        }
        let queue: VecDeque<u32> =
            self.slots.iter().filter(|ws| ws.wanted && id.is_none_or(|id| ws.id == id)).map(|ws| ws.id).collect();
        if let (Some(id), true) = (id, queue.is_empty()) {
            self.outbox.push(done(false, &format!("no worker {id}")));
            return;
        }
        let now = Instant::now();
        self.op = Some(WorkerOp::Rolling { queue, replaced: 0, leaving: Vec::new(), deadline: now + OP_TIMEOUT });
        self.advance_op(registry, now);
    }

    /// A reloaded configuration: resize the pool, then replace every worker that was
    /// already running, one at a time, so all of them serve with the new settings.
    pub fn reconfigure(&mut self, config: Config, registry: &Registry) {
        if self.op.is_some() {
            tracing::warn!("reload arrived during a worker command; applying it when that finishes");
            self.pending_reload = Some(config);
            return;
        }
        let workers = config.workers;
        let existing: VecDeque<u32> =
            self.slots.iter().filter(|ws| ws.wanted && ws.id < workers).map(|ws| ws.id).collect();
        self.config = config;
        self.scale(workers, registry);
        // Scaling answered (or is waiting for new workers); the reload itself answers no one.
        self.op = None;
        self.outbox.retain(|m| !matches!(m, FromManager::Done { .. }));
        let now = Instant::now();
        self.op =
            Some(WorkerOp::Rolling { queue: existing, replaced: 0, leaving: Vec::new(), deadline: now + OP_TIMEOUT });
        self.advance_op(registry, now);
    }

    /// Moves the worker command in progress forward; answers it when done.
    pub fn advance_op(&mut self, registry: &Registry, now: Instant) {
        let Some(op) = self.op.as_mut() else { return };
        match op {
            WorkerOp::Rolling { deadline, .. } | WorkerOp::ScaleUp { deadline, .. } if now >= *deadline => {
                self.abandon_incoming(registry);
                self.finish_op(false, "timed out".into());
            }
            WorkerOp::ScaleUp { ids, workers, .. } => {
                let up = |id: &u32| self.slots.iter().any(|ws| ws.id == *id && ws.sup.slot.is_up());
                if ids.iter().all(up) {
                    let detail = format!("scaled to {}", workers_phrase(*workers as usize));
                    self.finish_op(true, detail);
                }
            }
            WorkerOp::Rolling { queue, replaced, leaving, .. } => {
                if self.slots.iter().any(|ws| ws.sup.incoming.is_some()) {
                    return; // the current replacement is still coming up
                }
                // An old worker that has not read its shutdown may still take a
                // connection from the lane (with the old settings); one gone takes none.
                let still_reading = |pid: &Pid| {
                    self.slots
                        .iter()
                        .flat_map(|ws| &ws.sup.retiring)
                        .any(|r| r.pid == *pid && !r.channel.state.reported.retiring)
                };
                leaving.retain(still_reading);
                if !leaving.is_empty() {
                    return;
                }
                // A worker still starting was spawned with what it had before: replace
                // it once it is up (a slot with no process starts afresh anyway).
                let starting =
                    |id: &u32| self.slots.iter().any(|ws| ws.id == *id && ws.wanted && ws.sup.slot.is_coming_up());
                if queue.front().is_some_and(starting) {
                    return;
                }
                let Some(id) = queue.pop_front() else {
                    let detail = format!("restarted {}", workers_phrase(*replaced as usize));
                    self.finish_op(true, detail);
                    return;
                };
                self.start_replacement(id, registry);
            }
        }
    }

    fn start_replacement(&mut self, id: u32, registry: &Registry) {
        let Some(index) = self.slots.iter().position(|ws| ws.id == id && ws.wanted) else { return };
        if self.slots[index].sup.cannot_replace().is_some() {
            // Not running (crashed, waiting to restart): its next start is a fresh process.
            return;
        }
        match self.spawn(id, registry) {
            Ok(process) => self.slots[index].sup.replace_with(process),
            Err(e) => self.finish_op(false, format!("cannot start a replacement for worker {id}: {e:#}")),
        }
    }

    fn abandon_incoming(&mut self, registry: &Registry) {
        for ws in &mut self.slots {
            ws.sup.abandon_incoming(registry);
        }
    }

    fn finish_op(&mut self, ok: bool, detail: String) {
        if self.op.take().is_some() {
            tracing::info!(ok, %detail, "worker command finished");
            self.outbox.push(FromManager::Done { ok, detail });
        }
        if let Some(config) = self.pending_reload.take() {
            self.reload_after_op = Some(config);
        }
    }

    /// Starts a reload that waited for a command to finish.
    pub fn run_deferred_reload(&mut self, registry: &Registry) {
        if let Some(config) = self.reload_after_op.take() {
            self.reconfigure(config, registry);
        }
    }

    /// Pool-wide supervision figures for the manager's own heartbeat.
    pub fn figures(&self) -> Figures {
        let mut figures = Figures::default();
        figures.supervision.worker.clone_from(&self.supervision);
        figures
    }

    /// True while exited workers wait to be reported.
    pub fn has_exited(&self) -> bool {
        !self.exited.is_empty()
    }

    /// Forgets the exited workers once a heartbeat has reported them.
    pub fn clear_exited(&mut self) {
        self.exited.clear();
    }

    /// One report per worker process, current and draining.
    pub fn reports(&mut self, now: Instant) -> Vec<WorkerReport> {
        let mut out = Vec::with_capacity(self.slots.len() + self.exited.len());
        for ws in self.slots.iter_mut().filter(|ws| ws.wanted) {
            let state = ws.sup.slot.state(now);
            let reported = ws.sup.current.as_ref().map(|c| &c.state.reported);
            let utilization = reported.map_or(0.0, |r| r.utilization);
            let active = reported.map_or(0, |r| r.active);
            let figures = reported.map(|r| r.figures.clone()).unwrap_or_default();
            let keeper_pid = reported.and_then(|r| r.keeper_pid);
            let state = match state {
                ProcessState::Running if utilization > 0.0 || active > 0 => WorkerState::Busy,
                ProcessState::Running => WorkerState::Idle,
                // A slot waiting for (or in) its next process is starting it.
                ProcessState::Starting | ProcessState::Backoff | ProcessState::Stopped => WorkerState::Starting,
            };
            let report = WorkerReport {
                active,
                utilization,
                figures,
                keeper_pid,
                ..slot_report(ws.id, state, &ws.sup.slot, now)
            };
            out.push(report);
        }
        out.extend(self.exited.iter().cloned());
        for ws in &self.slots {
            out.extend(ws.sup.retiring.iter().map(|r| retiree_report(ws.id, &r.channel)));
        }
        out
    }
}

impl WorkerSlot {
    fn new(id: u32, now: Instant) -> WorkerSlot {
        WorkerSlot { id, sup: Supervised::new(format!("worker {id}"), now), wanted: true }
    }
}

impl Reported {
    /// Takes a heartbeat's figures, updating utilization: the share of the interval
    /// since the previous heartbeat during which at least one request was in progress.
    fn absorb(&mut self, hb: &Heartbeat) {
        let wall = hb.sent_ns.saturating_sub(self.prev_sent_ns);
        if self.prev_sent_ns != 0 && wall > 0 {
            let busy = hb.figures.busy_ns.saturating_sub(self.prev_busy_ns);
            self.utilization = (busy as f64 / wall as f64).clamp(0.0, 1.0);
        }
        self.prev_sent_ns = hb.sent_ns;
        self.prev_busy_ns = hb.figures.busy_ns;
        self.figures.clone_from(&hb.figures);
        self.active = hb.active;
        self.keeper_pid = hb.keeper_pid;
        self.retiring = hb.retiring;
    }
}

/// Reads every message queued to a worker that will never read it, keeping the
/// connections in `into`; returns how many. Only those are handed on: the fds of any
/// other message (a reopened access log, an unread bootstrap) are closed.
fn take_queued_connections(channel: &mut WorkerControl, into: &mut Vec<Connection<'static>>) -> usize {
    let before = into.len();
    let _ = channel.drain(|msg| match msg {
        ToWorker::Connections(conns) => take_connections(conns, into),
        ToWorker::Bootstrap(_)
        | ToWorker::Shutdown { .. }
        | ToWorker::Drain
        | ToWorker::Resume
        | ToWorker::ReopenLog(_)
        | ToWorker::TicketKeys(_)
        | ToWorker::HandOver { .. } => {}
    });
    into.len() - before
}

/// Moves received connections into `into`.
fn take_connections(conns: Connections<'_>, into: &mut Vec<Connection<'static>>) {
    for conn in conns.0 {
        match conn.into_owned() {
            Ok(conn) => into.push(conn),
            Err(e) => tracing::warn!(error = %e, "cannot take a connection"),
        }
    }
}

fn done(ok: bool, detail: &str) -> FromManager {
    FromManager::Done { ok, detail: detail.to_string() }
}

/// What the slot knows of its current worker; its figures are the caller's to add.
fn slot_report(id: u32, state: WorkerState, slot: &Slot, now: Instant) -> WorkerReport {
    WorkerReport {
        id,
        pid: slot.pid.map(|p| p.as_raw() as u32).unwrap_or(0),
        state,
        restarts: slot.restarts(),
        heartbeat_age_ms: slot.heartbeat_age(now).as_secs_f64() * 1000.0,
        heartbeat_latency_ms: slot.latency_ns as f64 / 1e6,
        ..WorkerReport::default()
    }
}

/// "1 worker", "3 workers".
fn workers_phrase(n: usize) -> String {
    if n == 1 {
        "1 worker".to_string()
    } else {
        format!("{n} workers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::Transport;

    /// A dead worker's queue may hold more than connections; only those are recovered.
    #[test]
    fn only_connection_fds_are_recovered_from_a_dead_workers_queue() {
        let (ours, theirs) = sys::seqpacket_pair().expect("pair");
        let (conn, _peer) = sys::seqpacket_pair().expect("pair");
        let (log, _log_peer) = sys::seqpacket_pair().expect("pair");
        let mut manager = WorkerLink::new(ours);
        manager.send(&ToWorker::ReopenLog(Fd::lend(&log))).expect("send");
        let tls = Connection::new(Fd::lend(&conn), Transport::Tls);
        manager.send(&ToWorker::Connections(Connections(vec![tls]))).expect("send");
        manager.send(&ToWorker::Drain).expect("send");
        let mut worker_end = WorkerControl::new(theirs);
        let mut recovered = Vec::new();
        assert_eq!(take_queued_connections(&mut worker_end, &mut recovered), 1);
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].transport, Transport::Tls, "a TLS connection stays one");
    }
}
