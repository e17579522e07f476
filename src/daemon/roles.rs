//! The daemon's two supervised roles, listener and manager: what each needs at start
//! (its bootstrap and lanes), when a replacement is ready, and what the daemon keeps of
//! their reports. The supervision itself is `supervise::Supervised`.

use super::Inheritance;
use crate::event_loop::Tokens;
use crate::figures::{Histogram, Supervision, LATENCY_BUCKETS};
use crate::ipc::{
    Channel, Fd, FromManager, Heartbeat, ListenerBootstrap, ManagerBootstrap, Message, Role, ToListener, ToManager,
};
use crate::supervise::{Check, Child, Exited, Process, Reason, Supervised, Which};
use crate::sys::{self, fdpass::MAX_FDS_PER_MESSAGE, process::Exit, spawn, Pid};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::signal::Signal;
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// What reading a role's channels found, for the daemon to act on.
#[derive(Debug)]
pub enum RoleEvent {
    /// A graceful replacement is up and has taken over; the old process is retiring.
    Replaced { pid: Pid },
    /// A graceful replacement died before it was up.
    ReplacementFailed { role: Role, reason: String },
    /// The manager finished (or failed) a worker command.
    Done { ok: bool, detail: String },
    /// The manager passed a drain or resume on to its workers.
    Applied,
}

/// What a role's report is to the daemon.
pub enum Report {
    Heartbeat(Box<Heartbeat>),
    Event(RoleEvent),
}

/// What differs between the listener and the manager.
pub trait RoleKind: Child<State = ()> {
    const ROLE: Role;
    /// Its bootstrap: settings and the descriptors it needs.
    fn bootstrap(inherit: &Inheritance, draining: bool) -> <Self::Down as Message>::Lending<'_>;
    /// Descriptors it gets per lane (listener → worker), at most two.
    const FDS_PER_LANE: usize;
    /// The message carrying the lanes of slots `first..`: the ends it needs of each.
    fn lanes(first: u32, lanes: &[(OwnedFd, OwnedFd)]) -> <Self::Down as Message>::Lending<'_>;
    /// A replacement is ready to take over.
    fn is_ready(hb: &Heartbeat) -> bool;
    fn report(up: Self::Up) -> Report;

    /// Sends a new process everything it needs before it can serve: its bootstrap,
    /// then every lane.
    fn send_bootstrap(
        channel: &mut Channel<Self::Down, Self::Up>,
        inherit: &Inheritance,
        draining: bool,
    ) -> io::Result<()> {
        channel.send(&Self::bootstrap(inherit, draining))?;
        Self::send_lanes(channel, &inherit.lanes, 0)
    }

    /// Sends the lanes of slots `first..`, at most `MAX_FDS_PER_MESSAGE` fds a message.
    fn send_lanes(
        channel: &mut Channel<Self::Down, Self::Up>,
        lanes: &[(OwnedFd, OwnedFd)],
        first: usize,
    ) -> io::Result<()> {
        let rest = &lanes[first.min(lanes.len())..];
        let per_message = MAX_FDS_PER_MESSAGE / Self::FDS_PER_LANE;
        for (i, chunk) in rest.chunks(per_message).enumerate() {
            channel.send(&Self::lanes((first + i * per_message) as u32, chunk))?;
        }
        Ok(())
    }
}

pub struct Listener;
pub struct Manager;

impl Child for Listener {
    type Down = ToListener<'static>;
    type Up = Heartbeat;
    type State = ();
    fn shutdown<'a>(deadline: Duration) -> ToListener<'a> {
        ToListener::Shutdown { deadline_ms: deadline.as_millis() as u64 }
    }
}

impl RoleKind for Listener {
    const ROLE: Role = Role::Listener;

    fn bootstrap(inherit: &Inheritance, draining: bool) -> ToListener<'_> {
        ToListener::Bootstrap(Box::new(ListenerBootstrap {
            config: inherit.config.clone(),
            draining,
            listen: inherit.listen.iter().map(Fd::lend).collect(),
            tls_listen: inherit.tls_listen.iter().map(Fd::lend).collect(),
            steering: Fd::lend(&inherit.steering.0),
            lifeline: Fd::lend(&inherit.lifeline_read),
        }))
    }

    /// The sending end of each.
    const FDS_PER_LANE: usize = 1;

    fn lanes(first: u32, lanes: &[(OwnedFd, OwnedFd)]) -> ToListener<'_> {
        ToListener::Lanes { first, lanes: lanes.iter().map(|(send, _)| Fd::lend(send)).collect() }
    }

    /// At its first heartbeat.
    fn is_ready(_: &Heartbeat) -> bool {
        true
    }

    fn report(hb: Heartbeat) -> Report {
        Report::Heartbeat(Box::new(hb))
    }
}

impl Child for Manager {
    type Down = ToManager<'static>;
    type Up = FromManager;
    type State = ();
    fn shutdown<'a>(deadline: Duration) -> ToManager<'a> {
        // A graceful manager restart: the new manager's workers read the same lanes.
        ToManager::Shutdown { deadline_ms: deadline.as_millis() as u64, hand_over: true }
    }
}

impl RoleKind for Manager {
    const ROLE: Role = Role::Manager;

    fn bootstrap(inherit: &Inheritance, draining: bool) -> ToManager<'_> {
        ToManager::Bootstrap(Box::new(ManagerBootstrap {
            config: inherit.config.clone(),
            draining,
            steering: Fd::lend(&inherit.steering.1),
            lifeline: Fd::lend(&inherit.lifeline_read),
            access_log: inherit.access_log.as_ref().map(Fd::lend),
            tls: inherit.tls.clone(),
            tickets: inherit.tickets.clone(),
            https_port: inherit.https_port,
        }))
    }

    /// Both ends: the receiving end for its workers, the sending end for a retiring
    /// worker's hand-over of its keep-alive connections to a live one.
    const FDS_PER_LANE: usize = 2;

    fn lanes(first: u32, lanes: &[(OwnedFd, OwnedFd)]) -> ToManager<'_> {
        ToManager::Lanes {
            first,
            lanes: lanes.iter().map(|(_, receive)| Fd::lend(receive)).collect(),
            senders: lanes.iter().map(|(send, _)| Fd::lend(send)).collect(),
        }
    }

    /// Once every worker of its new pool is up.
    fn is_ready(hb: &Heartbeat) -> bool {
        !hb.workers.is_empty() && hb.workers.iter().all(|w| w.state.is_serving())
    }

    fn report(up: FromManager) -> Report {
        match up {
            FromManager::Heartbeat(hb) => Report::Heartbeat(hb),
            FromManager::Applied => Report::Event(RoleEvent::Applied),
            FromManager::Done { ok, detail } => Report::Event(RoleEvent::Done { ok, detail }),
        }
    }
}

/// One role's slot and what the daemon keeps of its reports.
pub struct RoleProcess<K: RoleKind> {
    pub sup: Supervised<K>,
    /// The current process's latest heartbeat.
    pub last: Option<Heartbeat>,
    /// Latest heartbeat of each retiring (or just exited) process, so what it did while
    /// draining is counted.
    pub retiring_reports: Vec<Heartbeat>,
    /// Every heartbeat received since the daemon last folded them into its totals. Not
    /// just the latest: a manager reports a worker that exited in one heartbeat only.
    pub unfolded: Vec<Heartbeat>,
    /// Latencies of its heartbeats, over this daemon's life.
    latency: Histogram,
}

impl<K: RoleKind> RoleProcess<K> {
    pub fn new(now: Instant) -> Self {
        RoleProcess {
            sup: Supervised::new(K::ROLE.as_str(), now),
            last: None,
            retiring_reports: Vec::new(),
            unfolded: Vec::new(),
            latency: Histogram::default(),
        }
    }

    /// How supervising this role went, over this daemon's life.
    pub fn supervision(&self) -> Supervision {
        Supervision {
            missed_heartbeats: self.sup.slot.missed_total,
            restarts: self.sup.slot.restarts_by_reason,
            latency: self.latency.clone(),
        }
    }

    pub fn slot(&self) -> &crate::supervise::Slot {
        &self.sup.slot
    }

    /// Starts a process in the slot; a failure counts as a crash and is retried.
    pub fn start(
        &mut self,
        inherit: &Inheritance,
        registry: &Registry,
        tokens: &mut Tokens,
        draining: bool,
        now: Instant,
    ) {
        let spawned = spawn_role::<K>(inherit, registry, tokens.allocate(), draining);
        self.sup.started(spawned, now);
        self.last = None;
    }

    /// Graceful restart: starts a replacement beside the current process; it takes over
    /// once ready.
    pub fn replace(
        &mut self,
        inherit: &Inheritance,
        registry: &Registry,
        tokens: &mut Tokens,
        draining: bool,
    ) -> anyhow::Result<()> {
        if let Some(why) = self.sup.cannot_replace() {
            anyhow::bail!(why);
        }
        let process = spawn_role::<K>(inherit, registry, tokens.allocate(), draining)?;
        self.sup.replace_with(process);
        Ok(())
    }

    /// Sends a message to the current process, if any.
    pub fn send(&mut self, msg: &<K::Down as Message>::Lending<'_>) {
        if let Some(process) = self.sup.current.as_mut() {
            if let Err(e) = process.channel.send(msg) {
                tracing::warn!(role = %K::ROLE, error = %e, "message not delivered");
            }
        }
    }

    /// Sends lanes `first..` to the current process and its replacement, if any.
    pub fn send_lanes(&mut self, lanes: &[(OwnedFd, OwnedFd)], first: usize) {
        for process in self.sup.serving_mut() {
            if let Err(e) = K::send_lanes(&mut process.channel, lanes, first) {
                tracing::error!(role = %K::ROLE, error = %e, "cannot hand new lanes over");
            }
        }
    }

    /// True when `token` is one of this role's channels.
    pub fn owns(&self, token: Token) -> bool {
        self.sup.owner(token).is_some()
    }

    /// Reads what the process whose channel is `token` sent: the current one's reports,
    /// a replacement's readiness (it is promoted), a retiree's last figures.
    pub fn readable(&mut self, token: Token, deadlines: RetireTimes, events: &mut Vec<RoleEvent>) {
        match self.sup.owner(token) {
            Some(Which::Current) => self.read_current(events),
            Some(Which::Incoming) => self.read_incoming(deadlines, events),
            Some(Which::Retiring(_)) => self.read_retiring_reports(),
            None => {}
        }
    }

    fn read_current(&mut self, events: &mut Vec<RoleEvent>) {
        let Some(process) = self.sup.current.as_mut() else { return };
        let mut reports = Vec::new();
        if let Err(e) = process.channel.drain(|up| reports.push(K::report(up))) {
            tracing::warn!(role = %K::ROLE, error = %e, "reading the channel");
        }
        for report in reports {
            match report {
                Report::Heartbeat(hb) => self.heartbeat(*hb),
                Report::Event(event) => events.push(event),
            }
        }
    }

    fn heartbeat(&mut self, hb: Heartbeat) {
        let now = Instant::now();
        if self.sup.slot.heartbeat(hb.sent_ns, sys::monotonic_ns(), now) {
            tracing::info!(role = %K::ROLE, pid = hb.pid, "up (first heartbeat)");
        }
        self.latency.observe(&LATENCY_BUCKETS, Duration::from_nanos(self.sup.slot.latency_ns));
        self.unfolded.push(hb.clone());
        self.last = Some(hb);
    }

    /// Promotes the replacement at its first report that says it is ready.
    fn read_incoming(&mut self, times: RetireTimes, events: &mut Vec<RoleEvent>) {
        let Some(process) = self.sup.incoming.as_mut() else { return };
        let mut ready = None;
        let _ = process.channel.drain(|up| {
            if let Report::Heartbeat(hb) = K::report(up) {
                if K::is_ready(&hb) {
                    ready = Some(*hb);
                }
            }
        });
        let Some(hb) = ready else { return };
        let now = Instant::now();
        self.keep_current_report();
        if let Some(pid) = self.sup.promote(times.deadline, now + times.kill_after, hb.sent_ns, now) {
            self.unfolded.push(hb.clone());
            self.last = Some(hb);
            events.push(RoleEvent::Replaced { pid });
        }
    }

    /// The 200 ms heartbeat check; a hung process is retired and replaced.
    pub fn check(&mut self, now: Instant, timeout: Duration, grace: Duration) {
        if self.sup.check(now, timeout) == Check::Hung {
            self.retire_current(Reason::Hang, grace, grace, now);
        }
    }

    /// Takes the current process out of the slot: it is told to finish by `deadline`
    /// and killed `kill_after` from now; a replacement is scheduled (with backoff)
    /// unless one is already taking over.
    pub fn retire_current(&mut self, reason: Reason, deadline: Duration, kill_after: Duration, now: Instant) {
        self.keep_current_report();
        if let Some(delay) = self.sup.retire(reason, deadline, now + kill_after, now) {
            self.sup.slot.log_restart(reason, delay, now);
        }
    }

    /// The current process's figures stay known (and its workers' pids live) until it
    /// exits: otherwise the next fold would forget them and count its next report again
    /// from zero.
    fn keep_current_report(&mut self) {
        if let (Some(hb), Some(_)) = (self.last.clone(), self.sup.current.as_ref()) {
            upsert_report(&mut self.retiring_reports, hb);
        }
    }

    /// Handles the exit of `pid` if it is ours; returns whether it was.
    pub fn on_exit(
        &mut self,
        pid: Pid,
        exit: Exit,
        stopping: bool,
        registry: &Registry,
        now: Instant,
        events: &mut Vec<RoleEvent>,
    ) -> bool {
        // Its last heartbeat may still be queued: read it before the channel goes.
        if self.sup.current.as_ref().is_some_and(|p| p.pid == pid) {
            self.read_current(&mut Vec::new());
        }
        match self.sup.on_exit(pid, stopping, registry, now) {
            Exited::NotOurs => return false,
            Exited::Incoming(_) => {
                tracing::error!(role = %K::ROLE, pid = pid.as_raw(), %exit, "replacement died before it was up");
                events.push(RoleEvent::ReplacementFailed {
                    role: K::ROLE,
                    reason: format!("new {} exited ({exit}) before it was up", K::ROLE),
                });
            }
            Exited::Retired(mut process) => {
                latest_report::<K>(&mut process.channel, &mut self.retiring_reports, &mut self.unfolded);
                tracing::info!(role = %K::ROLE, pid = pid.as_raw(), %exit, "retired process exited");
            }
            Exited::Current(_) if stopping => tracing::info!(role = %K::ROLE, pid = pid.as_raw(), %exit, "exited"),
            Exited::Current(_) => tracing::error!(role = %K::ROLE, pid = pid.as_raw(), %exit, "crashed"),
        }
        true
    }

    /// Pids of reports whose process is neither current nor retiring any more.
    pub fn exited_pids(&self) -> Vec<u32> {
        let live = |pid: u32| self.sup.pids().any(|p| p.as_raw() as u32 == pid);
        self.retiring_reports.iter().map(|hb| hb.pid).filter(|p| !live(*p)).collect()
    }

    /// Reads what retiring processes reported since the last call.
    pub fn read_retiring_reports(&mut self) {
        for r in &mut self.sup.retiring {
            latest_report::<K>(&mut r.channel.channel, &mut self.retiring_reports, &mut self.unfolded);
        }
    }

    /// SIGKILL to every process of this role, and to the workers the manager reported.
    pub fn kill_all(&mut self) {
        let workers = self.last.iter().flat_map(|hb| hb.workers.iter().map(|w| w.pid));
        for pid in workers.filter(|p| *p > 0) {
            sys::process::signal(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        self.sup.kill_all();
    }
}

/// How a process a replacement takes over from retires.
#[derive(Debug, Clone, Copy)]
pub struct RetireTimes {
    /// It finishes what it has by then.
    pub deadline: Duration,
    /// It is killed this long after being told.
    pub kill_after: Duration,
}

/// Spawns a process of role `K` with its bootstrap, its channel watched under `token`.
fn spawn_role<K: RoleKind>(
    inherit: &Inheritance,
    registry: &Registry,
    token: Token,
    draining: bool,
) -> anyhow::Result<Process<K>> {
    let (ours, theirs) = sys::seqpacket_pair()?;
    let argv0 = format!("{}{}", crate::ROLE_PREFIX, K::ROLE);
    let env = [(crate::logging::LOG_FORMAT_ENV, crate::logging::format_env_value(inherit.config.log_format))];
    let pid = spawn::spawn(spawn::SpawnSpec {
        exe: &inherit.exe,
        argv0: &argv0,
        channel: theirs,
        die_with_parent: true,
        env: &env,
        credentials: inherit.credentials.as_ref(),
        args: &[],
        keep_notify_socket: false,
    })?;
    let mut channel = Channel::new(ours);
    if let Err(e) = K::send_bootstrap(&mut channel, inherit, draining) {
        sys::process::signal(pid, Signal::SIGKILL);
        anyhow::bail!("sending bootstrap to {} (pid {pid}): {e}", K::ROLE);
    }
    registry.register(&mut SourceFd(&channel.raw_fd()), token, Interest::READABLE)?;
    Ok(Process { pid, token, channel, state: () })
}

/// Reads every queued message on `channel`, keeping the newest heartbeat per pid in
/// `reports` and every one in `unfolded`.
fn latest_report<K: RoleKind>(
    channel: &mut Channel<K::Down, K::Up>,
    reports: &mut Vec<Heartbeat>,
    unfolded: &mut Vec<Heartbeat>,
) {
    let _ = channel.drain(|up| {
        if let Report::Heartbeat(hb) = K::report(up) {
            unfolded.push((*hb).clone());
            upsert_report(reports, *hb);
        }
    });
}

/// Replaces the report of `hb`'s pid in `reports`, or adds it.
fn upsert_report(reports: &mut Vec<Heartbeat>, hb: Heartbeat) {
    match reports.iter_mut().find(|r| r.pid == hb.pid) {
        Some(r) => *r = hb,
        None => reports.push(hb),
    }
}
