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

use super::FIRST_WORKER;
use crate::config::Config;
use crate::ipc::{Bootstrap, Channel, Counters, FdKind, LaneState, Message, Recv, WorkerReport};
use crate::observe::{Histogram, LATENCY_BUCKETS};
use crate::supervise::{ByReason, Check, Reason, Retiring, Slot};
use crate::sys::{self, fdpass::MAX_FDS_PER_MESSAGE, process::Exit, spawn, Pid};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::signal::Signal;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use webd_proto::{ProcessState, WorkerState};

/// The process currently serving in a slot.
struct Current {
    /// Poll token of its channel, unique per process.
    token: usize,
    channel: Channel,
    /// Duplicate of the worker's end: queued connections can be recovered after a crash.
    worker_end: Channel,
    /// Its latest reported figures.
    counters: Counters,
    /// For utilization: busy time and clock at the previous heartbeat.
    prev_busy_ns: u64,
    prev_sent_ns: u64,
    utilization: f64,
}

struct WorkerSlot {
    id: u32,
    slot: Slot,
    current: Option<Current>,
    /// A replacement started by a rolling restart; it takes over once up.
    incoming: Option<(Pid, Current)>,
    /// False once the slot is scaled away: it starts nothing new.
    wanted: bool,
}

/// A worker command in progress, answered with `Done` when finished.
enum WorkerOp {
    /// Replace these workers one at a time, each new one up before the old one drains.
    Rolling { queue: VecDeque<u32>, replaced: u32, deadline: Instant },
    /// Wait for these new workers to come up.
    ScaleUp { ids: Vec<u32>, workers: u32, deadline: Instant },
}

/// Longest a worker command may take.
const OP_TIMEOUT: Duration = Duration::from_secs(50);

/// A worker taken out of service; its heartbeats are still read, so the figures of
/// what it serves while draining are reported too.
struct Retiree {
    id: u32,
    current: Current,
}

impl Retiree {
    /// Its report while it drains, and the final one once it exited.
    fn report(&self, pid: Pid) -> WorkerReport {
        WorkerReport {
            id: self.id,
            pid: pid.as_raw() as u32,
            state: WorkerState::Draining,
            counters: self.current.counters.clone(),
            ..Default::default()
        }
    }
}

pub struct WorkerPool {
    config: Config,
    exe: PathBuf,
    lifeline: OwnedFd,
    /// Receiving ends of the lanes, by slot id (from the daemon).
    lanes: Vec<Option<Channel>>,
    /// To the listener: which lanes to use.
    steering: Channel,
    /// The lanes' state changed (or it is time to repeat it for a new listener).
    steer_due: bool,
    slots: Vec<WorkerSlot>,
    retiring: Vec<Retiring<Retiree>>,
    /// Stranded connections taken but not yet delivered (every worker full or starting).
    pending: Vec<OwnedFd>,
    draining: bool,
    shutting_down: bool,
    next_token: usize,
    op: Option<WorkerOp>,
    /// Messages for the daemon (command results).
    pub outbox: Vec<Message>,
    /// The access log file every worker appends to.
    access_log: Option<OwnedFd>,
    /// Workers that exited since the last heartbeat: reported once more with their final
    /// figures, so the daemon counts everything they served.
    exited: Vec<WorkerReport>,
    /// A reload that arrived while a command was in progress, and one ready to run.
    pending_reload: Option<Config>,
    reload_after_op: Option<Config>,
    /// Descriptor headroom, re-measured at each heartbeat check.
    fds: crate::sys::process::FdBudget,
    /// Pool-wide supervision figures, monotonic over this manager's life.
    missed_total: u64,
    restarts: ByReason,
    latency: Histogram,
}

impl WorkerPool {
    pub fn new(config: Config, exe: PathBuf, lifeline: OwnedFd, steering: Channel, draining: bool) -> WorkerPool {
        let now = Instant::now();
        let slots = (0..config.workers).map(|id| WorkerSlot::new(id, now)).collect();
        WorkerPool {
            config,
            exe,
            lifeline,
            lanes: Vec::new(),
            steering,
            steer_due: true,
            slots,
            retiring: Vec::new(),
            pending: Vec::new(),
            draining,
            shutting_down: false,
            next_token: FIRST_WORKER,
            fds: crate::sys::process::FdBudget::measure(),
            op: None,
            outbox: Vec::new(),
            pending_reload: None,
            reload_after_op: None,
            access_log: None,
            exited: Vec::new(),
            missed_total: 0,
            restarts: ByReason::default(),
            latency: Histogram::with_buckets(LATENCY_BUCKETS.len()),
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
            let due = has_lane && self.slots[i].wanted && self.slots[i].slot.start_due.is_some_and(|t| t <= now);
            if due {
                self.start(i, registry, now);
            }
        }
    }

    fn start(&mut self, index: usize, registry: &Registry, now: Instant) {
        let id = self.slots[index].id;
        match self.spawn(id, registry) {
            Ok((pid, current)) => {
                let ws = &mut self.slots[index];
                ws.slot.spawned(pid, now);
                ws.current = Some(current);
                self.steer_due = true;
                tracing::info!(worker = id, pid = pid.as_raw(), "worker spawned");
            }
            Err(e) => {
                let delay = self.slots[index].slot.vacate(Reason::Crash, now);
                tracing::error!(worker = id, error = %format!("{e:#}"), retry_ms = delay.as_millis() as u64, "worker spawn failed");
            }
        }
    }

    fn spawn(&mut self, id: u32, registry: &Registry) -> anyhow::Result<(Pid, Current)> {
        let (ours, theirs) = sys::seqpacket_pair()?;
        let worker_end = Channel::new(theirs.try_clone()?);
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
        let mut channel = Channel::new(ours);
        let lane = self.lanes.get(id as usize).and_then(Option::as_ref);
        let lane = lane.ok_or_else(|| anyhow::anyhow!("no lane for worker {id} yet"))?;
        let mut kinds = vec![FdKind::Lifeline, FdKind::Lane];
        let mut fds = vec![self.lifeline.as_fd(), lane.as_fd()];
        if let Some(log) = &self.access_log {
            kinds.push(FdKind::AccessLog);
            fds.push(log.as_fd());
        }
        let boot = Bootstrap { config: self.config.clone(), worker_id: Some(id), fds: kinds, draining: self.draining };
        if let Err(e) = channel.send(&Message::Bootstrap(Box::new(boot)), &fds) {
            sys::process::signal(pid, Signal::SIGKILL);
            anyhow::bail!("sending bootstrap to worker {id} (pid {pid}): {e}");
        }
        let token = self.next_token;
        self.next_token += 1;
        // Writable: a worker that had no room for connections has room again.
        registry.register(&mut SourceFd(&channel.raw_fd()), Token(token), Interest::READABLE | Interest::WRITABLE)?;
        let current = Current {
            token,
            channel,
            worker_end,
            counters: Counters::default(),
            prev_busy_ns: 0,
            prev_sent_ns: 0,
            utilization: 0.0,
        };
        Ok((pid, current))
    }

    /// Takes the receiving ends of lanes `first..` from the daemon.
    pub fn add_lanes(&mut self, first: u32, fds: Vec<OwnedFd>) {
        for (i, fd) in fds.into_iter().enumerate() {
            let id = first as usize + i;
            if self.lanes.len() <= id {
                self.lanes.resize_with(id + 1, || None);
            }
            self.lanes[id] = Some(Channel::new(fd));
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
            if let (Some(state), Some(current)) = (lanes.get_mut(ws.id as usize), ws.current.as_ref()) {
                *state = LaneState { open: true, load: current.counters.active.min(u32::MAX as u64) as u32 };
            }
        }
        match self.steering.send(&Message::Steer { lanes }, &[]) {
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
        let mut fds = Vec::new();
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
                fds.clear();
                match lane.recv(&mut fds) {
                    Ok(Recv::Message(Message::Connections { .. })) => {
                        tracing::info!(
                            lane = id,
                            connections = fds.len(),
                            "moving connections from a lane no worker reads"
                        );
                        self.pending.append(&mut fds);
                        self.deliver_pending();
                        if !self.pending.is_empty() {
                            return; // every worker is full; a writable one calls us again
                        }
                    }
                    Ok(Recv::Message(_)) => {}
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
        self.slots.iter().any(|ws| ws.id as usize == id && (ws.current.is_some() || ws.incoming.is_some()))
    }

    fn has_live_worker(&self) -> bool {
        self.slots.iter().any(|ws| ws.wanted && ws.current.is_some() && ws.slot.pid.is_some())
    }

    /// Sends held connections to the least-loaded workers that have room, a batch per
    /// worker; keeps them only if no worker can take them now.
    pub fn deliver_pending(&mut self) {
        while !self.pending.is_empty() {
            let take = self.pending.len().min(self.fair_share());
            let mut delivered = false;
            for index in self.by_load() {
                let current = self.slots[index].current.as_mut().expect("by_load returns live slots");
                let fds: Vec<BorrowedFd<'_>> = self.pending[..take].iter().map(|fd| fd.as_fd()).collect();
                match current.channel.send(&Message::Connections { count: take as u32 }, &fds) {
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
        let live = self.slots.iter().filter(|ws| ws.current.is_some()).count().max(1);
        self.pending.len().div_ceil(live).clamp(1, MAX_FDS_PER_MESSAGE)
    }

    /// Live, wanted workers, least loaded first; workers that answered a heartbeat
    /// before those still starting.
    fn by_load(&self) -> Vec<usize> {
        let mut live: Vec<(usize, (bool, u64))> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, ws)| ws.wanted && ws.slot.pid.is_some())
            .filter_map(|(i, ws)| ws.current.as_ref().map(|c| (i, (!ws.slot.is_up(), c.counters.active))))
            .collect();
        live.sort_by_key(|(_, load)| *load);
        live.into_iter().map(|(i, _)| i).collect()
    }

    /// Reads the heartbeats of a draining worker.
    fn absorb_heartbeats(current: &mut Current) {
        let mut fds = Vec::new();
        while let Ok(Recv::Message(msg)) = current.channel.recv(&mut fds) {
            if let Message::Heartbeat(hb) = msg {
                current.absorb(hb.sent_ns, hb.counters);
            }
        }
    }

    /// Reads the messages on the channel with poll token `token`.
    pub fn drain_messages(&mut self, token: usize, now: Instant) {
        if let Some(r) = self.retiring.iter_mut().find(|r| r.channel.current.token == token) {
            Self::absorb_heartbeats(&mut r.channel.current);
            return;
        }
        let Some(index) = self.slots.iter().position(|ws| {
            ws.current.as_ref().is_some_and(|c| c.token == token)
                || ws.incoming.as_ref().is_some_and(|(_, c)| c.token == token)
        }) else {
            return;
        };
        let ws = &mut self.slots[index];
        let is_current = ws.current.as_ref().is_some_and(|c| c.token == token);
        let current = if is_current { ws.current.as_mut() } else { ws.incoming.as_mut().map(|(_, c)| c) };
        let Some(current) = current else { return };
        let mut first_heartbeat = false;
        let mut fds = Vec::new();
        loop {
            match current.channel.recv(&mut fds) {
                Ok(Recv::Message(Message::Heartbeat(hb))) => {
                    let received = sys::monotonic_ns();
                    if is_current {
                        if ws.slot.heartbeat(hb.sent_ns, received, now) {
                            tracing::info!(worker = ws.id, pid = hb.pid, "worker up");
                        }
                    } else {
                        first_heartbeat = true;
                    }
                    let latency = received.saturating_sub(hb.sent_ns);
                    self.latency.observe(&LATENCY_BUCKETS, latency as f64 / 1e9);
                    current.absorb(hb.sent_ns, hb.counters);
                }
                Ok(Recv::Message(other)) => tracing::debug!(worker = ws.id, ?other, "unexpected message"),
                Ok(Recv::Empty) | Ok(Recv::Closed) => break,
                Err(e) => {
                    tracing::warn!(worker = ws.id, error = %e, "bad message from worker");
                    break;
                }
            }
        }
        if first_heartbeat {
            self.promote(index, now);
        }
    }

    /// A rolling restart's new worker is up: the old one drains, the new one serves.
    fn promote(&mut self, index: usize, now: Instant) {
        let Some((pid, current)) = self.slots[index].incoming.take() else { return };
        let drain = self.config.drain_timeout.duration();
        self.retire(index, Reason::Manual, drain, now);
        let ws = &mut self.slots[index];
        ws.slot.spawned(pid, now);
        ws.slot.heartbeat(current.prev_sent_ns, sys::monotonic_ns(), now);
        ws.current = Some(current);
        tracing::info!(worker = ws.id, pid = pid.as_raw(), "replacement worker took over");
        if let Some(WorkerOp::Rolling { replaced, .. }) = self.op.as_mut() {
            *replaced += 1;
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
            let ws = &mut self.slots[index];
            let age_ms = ws.slot.heartbeat_age(now).as_millis() as u64;
            match ws.slot.check(now, timeout) {
                Check::Healthy | Check::Vacant => {}
                Check::Missed(n) => {
                    self.missed_total += 1;
                    tracing::warn!(
                        worker = ws.id,
                        pid = ws.slot.pid.map_or(0, |p| p.as_raw()),
                        age_ms,
                        missed = n,
                        "worker missed heartbeat"
                    )
                }
                Check::Hung => {
                    self.missed_total += 1;
                    tracing::error!(
                        worker = ws.id,
                        pid = ws.slot.pid.map_or(0, |p| p.as_raw()),
                        age_ms,
                        "worker hung: 3 missed heartbeats; restarting"
                    );
                    self.retire(index, Reason::Hang, self.config.grace.duration(), now);
                }
            }
        }
    }

    /// Takes the slot's process out of service: it finishes what it has (its queued
    /// connections included) and exits by `deadline`, or is killed `grace` after it.
    fn retire(&mut self, index: usize, reason: Reason, deadline: Duration, now: Instant) {
        let ws = &mut self.slots[index];
        let (Some(pid), Some(mut current)) = (ws.slot.pid, ws.current.take()) else { return };
        let _ = current.channel.send(&Message::Shutdown { deadline_ms: deadline.as_millis() as u64 }, &[]);
        let kill_at = now + deadline + self.config.grace.duration();
        let retiree = Retiree { id: ws.id, current };
        self.retiring.push(Retiring { pid, kill_at, channel: retiree });
        self.vacate(index, reason, now);
    }

    /// Empties slot `index` (its next start backs off as `Slot` says) and counts and
    /// logs the restart, unless the slot is going away.
    fn vacate(&mut self, index: usize, reason: Reason, now: Instant) {
        let ws = &mut self.slots[index];
        let delay = ws.slot.vacate(reason, now);
        self.steer_due = true;
        if ws.wanted && !self.shutting_down {
            self.restarts[reason] += 1;
            ws.slot.log_restart(reason, delay, now);
        }
    }

    /// Reaps exited workers: crashes are restarted, and any connections still queued
    /// to a dead worker go to another.
    pub fn reap(&mut self, registry: &Registry, now: Instant) {
        for (pid, exit) in sys::process::reap_exited() {
            if let Some(i) = self.retiring.iter().position(|r| r.pid == pid) {
                let retired = self.retiring.swap_remove(i);
                let mut retiree = retired.channel;
                tracing::info!(worker = retiree.id, pid = pid.as_raw(), %exit, "retired worker exited");
                // Its last heartbeat (sent as it exits) may still be queued.
                Self::absorb_heartbeats(&mut retiree.current);
                self.exited.push(retiree.report(pid));
                let _ = registry.deregister(&mut SourceFd(&retiree.current.channel.raw_fd()));
                self.recover_queued(&mut retiree.current.worker_end);
                continue;
            }
            if let Some(ws) = self.slots.iter_mut().find(|ws| ws.incoming.as_ref().is_some_and(|(p, _)| *p == pid)) {
                if let Some((_, c)) = ws.incoming.take() {
                    let _ = registry.deregister(&mut SourceFd(&c.channel.raw_fd()));
                }
                let detail = format!("replacement for worker {} exited ({exit}) before it was up", ws.id);
                tracing::error!(worker = ws.id, pid = pid.as_raw(), %exit, "replacement worker died");
                self.finish_op(false, detail);
                continue;
            }
            let Some(index) = self.slots.iter().position(|ws| ws.slot.pid == Some(pid)) else {
                tracing::debug!(pid = pid.as_raw(), %exit, "reaped unknown child");
                continue;
            };
            self.on_crash(index, pid, exit, registry, now);
        }
        self.slots.retain(|ws| ws.wanted || ws.slot.pid.is_some());
        self.steer_due = true;
        self.rescue_strays();
    }

    fn on_crash(&mut self, index: usize, pid: Pid, exit: Exit, registry: &Registry, now: Instant) {
        let ws = &mut self.slots[index];
        if let Some(mut current) = ws.current.take() {
            let _ = registry.deregister(&mut SourceFd(&current.channel.raw_fd()));
            tracing::error!(worker = ws.id, pid = pid.as_raw(), %exit, "worker crashed");
            self.vacate(index, Reason::Crash, now);
            self.recover_queued(&mut current.worker_end);
        }
    }

    /// Reads back connections that were sent to a worker that never took them.
    fn recover_queued(&mut self, worker_end: &mut Channel) {
        let recovered = take_queued_connections(worker_end, &mut self.pending);
        if recovered > 0 {
            tracing::info!(connections = recovered, "recovered connections queued to a dead worker");
        }
    }

    pub fn kill_overdue(&mut self, now: Instant) {
        for r in &mut self.retiring {
            if r.kill_if_overdue(now) {
                tracing::warn!(worker = r.channel.id, pid = r.pid.as_raw(), "worker did not exit in time: SIGKILL");
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let starts = self.slots.iter().filter(|ws| ws.wanted).filter_map(|ws| ws.slot.start_due);
        starts.chain(self.retiring.iter().map(|r| r.kill_at)).min()
    }

    /// Stops taking connections (leaving them queued for the next manager) and asks every
    /// worker to finish within `deadline`.
    pub fn shutdown(&mut self, deadline: Duration) {
        if self.shutting_down {
            return;
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
        self.retiring.is_empty() && self.slots.iter().all(|ws| ws.slot.pid.is_none() && ws.incoming.is_none())
    }

    pub fn kill_all(&mut self) {
        let incoming = self.slots.iter().filter_map(|ws| ws.incoming.as_ref().map(|(p, _)| *p));
        let pids =
            self.slots.iter().filter_map(|ws| ws.slot.pid).chain(self.retiring.iter().map(|r| r.pid)).chain(incoming);
        for pid in pids {
            sys::process::signal(pid, Signal::SIGKILL);
        }
    }

    /// A (re)opened access log: new workers get it, running ones are told to switch.
    pub fn set_access_log(&mut self, log: Option<OwnedFd>) {
        let Some(log) = log else { return };
        for current in self.serving_mut() {
            if let Err(e) = current.channel.send(&Message::ReopenLog, &[log.as_fd()]) {
                tracing::warn!(error = %e, "cannot hand the reopened access log to a worker");
            }
        }
        self.access_log = Some(log);
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
        let msg = if draining { Message::Drain } else { Message::Resume };
        for current in self.serving_mut() {
            let _ = current.channel.send(&msg, &[]);
        }
    }

    /// Every worker process that serves or is about to: current and incoming.
    fn serving_mut(&mut self) -> impl Iterator<Item = &mut Current> {
        self.slots.iter_mut().flat_map(|ws| ws.current.iter_mut().chain(ws.incoming.iter_mut().map(|(_, c)| c)))
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
        self.slots.retain(|ws| ws.wanted || ws.slot.pid.is_some());
        let mut added = Vec::new();
        for id in 0..workers {
            if !self.slots.iter().any(|ws| ws.id == id) {
                self.slots.push(WorkerSlot::new(id, now));
                added.push(id);
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
        self.op = Some(WorkerOp::Rolling { queue, replaced: 0, deadline: now + OP_TIMEOUT });
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
        self.outbox.retain(|m| !matches!(m, Message::Done { .. }));
        let now = Instant::now();
        self.op = Some(WorkerOp::Rolling { queue: existing, replaced: 0, deadline: now + OP_TIMEOUT });
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
                let up = |id: &u32| self.slots.iter().any(|ws| ws.id == *id && ws.slot.is_up());
                if ids.iter().all(up) {
                    let detail = format!("scaled to {}", workers_phrase(*workers as usize));
                    self.finish_op(true, detail);
                }
            }
            WorkerOp::Rolling { queue, replaced, .. } => {
                if self.slots.iter().any(|ws| ws.incoming.is_some()) {
                    return; // the current replacement is still coming up
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
        if !self.slots[index].slot.is_up() {
            // Not running (crashed, starting): its next start is a fresh process anyway.
            return;
        }
        match self.spawn(id, registry) {
            Ok((pid, current)) => {
                tracing::info!(worker = id, pid = pid.as_raw(), "replacement worker spawned");
                self.slots[index].incoming = Some((pid, current));
            }
            Err(e) => self.finish_op(false, format!("cannot start a replacement for worker {id}: {e:#}")),
        }
    }

    fn abandon_incoming(&mut self, registry: &Registry) {
        for ws in &mut self.slots {
            if let Some((pid, c)) = ws.incoming.take() {
                let _ = registry.deregister(&mut SourceFd(&c.channel.raw_fd()));
                sys::process::signal(pid, Signal::SIGKILL);
            }
        }
    }

    fn finish_op(&mut self, ok: bool, detail: String) {
        if self.op.take().is_some() {
            tracing::info!(ok, %detail, "worker command finished");
            self.outbox.push(Message::Done { ok, detail });
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
    pub fn counters(&self) -> Counters {
        Counters {
            missed_heartbeats: self.missed_total,
            restarts: self.restarts,
            latency_buckets: self.latency.counts.clone(),
            latency_sum_ns: (self.latency.sum * 1e9) as u64,
            ..Default::default()
        }
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
        let mut out = Vec::with_capacity(self.slots.len() + self.retiring.len());
        for ws in self.slots.iter_mut().filter(|ws| ws.wanted) {
            let state = ws.slot.state(now);
            let (counters, utilization) =
                ws.current.as_ref().map(|c| (c.counters.clone(), c.utilization)).unwrap_or_default();
            let state = match state {
                ProcessState::Running if utilization > 0.0 || counters.active > 0 => WorkerState::Busy,
                ProcessState::Running => WorkerState::Idle,
                // A slot waiting for (or in) its next process is starting it.
                ProcessState::Starting | ProcessState::Backoff | ProcessState::Stopped => WorkerState::Starting,
            };
            out.push(report(ws.id, ws.slot.pid, state, &ws.slot, now, utilization, counters));
        }
        out.extend(self.exited.iter().cloned());
        out.extend(self.retiring.iter().map(|r| r.channel.report(r.pid)));
        out
    }
}

impl WorkerSlot {
    fn new(id: u32, now: Instant) -> WorkerSlot {
        WorkerSlot { id, slot: Slot::new(format!("worker {id}"), now), current: None, incoming: None, wanted: true }
    }
}

impl Current {
    /// Takes a heartbeat's figures, updating utilization: the share of the interval
    /// since the previous heartbeat during which at least one request was in progress.
    fn absorb(&mut self, sent_ns: u64, counters: Counters) {
        let wall = sent_ns.saturating_sub(self.prev_sent_ns);
        if self.prev_sent_ns != 0 && wall > 0 {
            let busy = counters.busy_ns.saturating_sub(self.prev_busy_ns);
            self.utilization = (busy as f64 / wall as f64).clamp(0.0, 1.0);
        }
        self.prev_sent_ns = sent_ns;
        self.prev_busy_ns = counters.busy_ns;
        self.counters = counters;
    }
}

/// Reads every message queued in `channel`, appending the fds of `Connections` messages
/// to `into`; returns how many. Only those carry connections: the fds of any other
/// message (a reopened access log, an unread bootstrap) are closed, never handed on.
fn take_queued_connections(channel: &mut Channel, into: &mut Vec<OwnedFd>) -> usize {
    let before = into.len();
    let mut fds = Vec::new();
    loop {
        fds.clear();
        match channel.recv(&mut fds) {
            Ok(Recv::Message(Message::Connections { .. })) => into.append(&mut fds),
            Ok(Recv::Message(_)) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            Ok(Recv::Empty) | Ok(Recv::Closed) | Err(_) => break,
        }
    }
    into.len() - before
}

fn done(ok: bool, detail: &str) -> Message {
    Message::Done { ok, detail: detail.to_string() }
}

fn report(
    id: u32,
    pid: Option<Pid>,
    state: WorkerState,
    slot: &Slot,
    now: Instant,
    utilization: f64,
    counters: Counters,
) -> WorkerReport {
    WorkerReport {
        id,
        pid: pid.map(|p| p.as_raw() as u32).unwrap_or(0),
        state,
        restarts: slot.restarts(),
        missed_heartbeats: slot.missed_total,
        heartbeat_age_ms: slot.heartbeat_age(now).as_secs_f64() * 1000.0,
        heartbeat_latency_ms: slot.latency_ns as f64 / 1e6,
        utilization,
        counters,
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

    /// A dead worker's queue may hold more than connections; only those are recovered.
    #[test]
    fn only_connection_fds_are_recovered_from_a_dead_workers_queue() {
        let (ours, theirs) = sys::seqpacket_pair().expect("pair");
        let (conn, _peer) = sys::seqpacket_pair().expect("pair");
        let (log, _log_peer) = sys::seqpacket_pair().expect("pair");
        let mut manager = Channel::new(ours);
        manager.send(&Message::ReopenLog, &[log.as_fd()]).expect("send");
        manager.send(&Message::Connections { count: 1 }, &[conn.as_fd()]).expect("send");
        manager.send(&Message::Drain, &[]).expect("send");
        let mut worker_end = Channel::new(theirs);
        let mut recovered = Vec::new();
        assert_eq!(take_queued_connections(&mut worker_end, &mut recovered), 1);
        assert_eq!(recovered.len(), 1);
    }
}
