//! One supervised role of the daemon (listener or manager): starting a process in its
//! slot with the bootstrap it needs, reading its heartbeats, and retiring or replacing
//! it when it crashes or hangs.

use super::Inheritance;
use crate::ipc::{Bootstrap, Channel, FdKind, Heartbeat, Message, Recv, Role};
use crate::observe::{Histogram, LATENCY_BUCKETS};
use crate::supervise::{Check, Reason, Retiring, Slot};
use crate::sys::{self, fdpass::MAX_FDS_PER_MESSAGE, process::Exit, spawn, Pid};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::signal::Signal;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// A replacement started by a graceful restart: it takes the slot once it is up.
struct Incoming {
    pid: Pid,
    channel: Channel,
}

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

pub struct RoleProcess {
    pub role: Role,
    token: Token,
    incoming_token: Token,
    pub slot: Slot,
    channel: Option<Channel>,
    incoming: Option<Incoming>,
    /// The current process's latest heartbeat.
    pub last: Option<Heartbeat>,
    pub retiring: Vec<Retiring<Channel>>,
    /// Latest heartbeat of each retiring (or just exited) process, so what it did while
    /// draining is counted.
    pub retiring_reports: Vec<Heartbeat>,
    /// Every heartbeat received since the daemon last folded them into its totals. Not
    /// just the latest: a manager reports a worker that exited in one heartbeat only.
    pub unfolded: Vec<Heartbeat>,
    pub latency: Histogram,
}

impl RoleProcess {
    pub fn new(role: Role, token: Token, incoming_token: Token, now: Instant) -> RoleProcess {
        RoleProcess {
            role,
            token,
            incoming_token,
            slot: Slot::new(role.as_str(), now),
            channel: None,
            incoming: None,
            last: None,
            retiring: Vec::new(),
            retiring_reports: Vec::new(),
            unfolded: Vec::new(),
            latency: Histogram::with_buckets(LATENCY_BUCKETS.len()),
        }
    }

    /// Starts a process in the slot; a failure counts as a crash and is retried.
    pub fn start(&mut self, inherit: &Inheritance, registry: &Registry, draining: bool, now: Instant) {
        match self.spawn(inherit, registry, draining, self.token) {
            Ok((pid, channel)) => {
                self.slot.spawned(pid, now);
                self.channel = Some(channel);
                self.last = None;
                tracing::info!(role = %self.role, pid = pid.as_raw(), "spawned");
            }
            Err(e) => {
                let delay = self.slot.vacate(Reason::Crash, now);
                tracing::error!(role = %self.role, error = %format!("{e:#}"), retry_ms = delay.as_millis() as u64, "spawn failed");
            }
        }
    }

    /// Graceful restart: starts a replacement beside the current process; it takes over
    /// once up (for the manager: once its whole pool is up).
    pub fn replace(&mut self, inherit: &Inheritance, registry: &Registry, draining: bool) -> anyhow::Result<()> {
        anyhow::ensure!(self.incoming.is_none(), "a restart of the {} is already in progress", self.role);
        anyhow::ensure!(self.slot.is_up(), "the {} is not running", self.role);
        let (pid, channel) = self.spawn(inherit, registry, draining, self.incoming_token)?;
        tracing::info!(role = %self.role, pid = pid.as_raw(), "spawned replacement");
        self.incoming = Some(Incoming { pid, channel });
        Ok(())
    }

    fn spawn(
        &self,
        inherit: &Inheritance,
        registry: &Registry,
        draining: bool,
        token: Token,
    ) -> anyhow::Result<(Pid, Channel)> {
        let (ours, theirs) = sys::seqpacket_pair()?;
        let argv0 = format!("{}{}", crate::ROLE_PREFIX, self.role);
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
        let (kinds, fds) = bootstrap_fds(self.role, inherit);
        let boot = Bootstrap { config: inherit.config.clone(), worker_id: None, fds: kinds, draining };
        let sent = channel
            .send(&Message::Bootstrap(Box::new(boot)), &fds)
            .and_then(|()| send_lanes(&mut channel, self.role, &inherit.lanes, 0));
        if let Err(e) = sent {
            sys::process::signal(pid, Signal::SIGKILL);
            anyhow::bail!("sending bootstrap to {} (pid {pid}): {e}", self.role);
        }
        registry.register(&mut SourceFd(&channel.raw_fd()), token, Interest::READABLE)?;
        Ok((pid, channel))
    }

    /// Sends a message to the current process, if any.
    pub fn send(&mut self, msg: &Message) {
        if let Some(channel) = self.channel.as_mut() {
            if let Err(e) = channel.send(msg, &[]) {
                tracing::warn!(role = %self.role, error = %e, "message not delivered");
            }
        }
    }

    /// Sends lanes `first..` to the current process and its replacement, if any.
    pub fn send_lanes(&mut self, lanes: &[(OwnedFd, OwnedFd)], first: usize) {
        let role = self.role;
        let channels = self.channel.iter_mut().chain(self.incoming.iter_mut().map(|i| &mut i.channel));
        for channel in channels {
            if let Err(e) = send_lanes(channel, role, lanes, first) {
                tracing::error!(%role, error = %e, "cannot hand new lanes over");
            }
        }
    }

    /// Sends a message with one fd attached to the current process, if any.
    pub fn send_with_fd(&mut self, msg: &Message, fd: &OwnedFd) {
        if let Some(channel) = self.channel.as_mut() {
            if let Err(e) = channel.send(msg, &[fd.as_fd()]) {
                tracing::warn!(role = %self.role, error = %e, "message not delivered");
            }
        }
    }

    /// Reads every queued message from the current process.
    pub fn drain_messages(&mut self, events: &mut Vec<RoleEvent>) {
        let Some(channel) = self.channel.as_mut() else { return };
        let mut fds = Vec::new();
        loop {
            match channel.recv(&mut fds) {
                Ok(Recv::Message(Message::Heartbeat(hb))) => {
                    let now = Instant::now();
                    let received = sys::monotonic_ns();
                    if self.slot.heartbeat(hb.sent_ns, received, now) {
                        tracing::info!(role = %self.role, pid = hb.pid, "up (first heartbeat)");
                    }
                    self.latency.observe(&LATENCY_BUCKETS, self.slot.latency_ns as f64 / 1e9);
                    self.unfolded.push(hb.clone());
                    self.last = Some(hb);
                }
                Ok(Recv::Message(Message::Done { ok, detail })) => events.push(RoleEvent::Done { ok, detail }),
                Ok(Recv::Message(Message::Applied)) => events.push(RoleEvent::Applied),
                Ok(Recv::Message(other)) => tracing::debug!(role = %self.role, ?other, "unexpected message"),
                Ok(Recv::Empty) | Ok(Recv::Closed) => return, // exits arrive by SIGCHLD
                Err(e) => {
                    tracing::warn!(role = %self.role, error = %e, "bad message from child");
                    return;
                }
            }
        }
    }

    /// Reads the replacement's messages; promotes it once it is up.
    pub fn drain_incoming(
        &mut self,
        registry: &Registry,
        retire_deadline: Duration,
        kill_after: Duration,
        events: &mut Vec<RoleEvent>,
    ) {
        let Some(incoming) = self.incoming.as_mut() else { return };
        let mut fds = Vec::new();
        let mut ready = None;
        loop {
            match incoming.channel.recv(&mut fds) {
                Ok(Recv::Message(Message::Heartbeat(hb))) => {
                    if is_ready(self.role, &hb) {
                        ready = Some(hb);
                    }
                }
                Ok(Recv::Message(_)) => {}
                Ok(Recv::Empty) | Ok(Recv::Closed) | Err(_) => break,
            }
        }
        if let Some(hb) = ready {
            self.promote(hb, registry, retire_deadline, kill_after, events);
        }
    }

    /// The replacement is up: the current process retires and the replacement takes
    /// its slot and its token.
    fn promote(
        &mut self,
        hb: Heartbeat,
        registry: &Registry,
        retire_deadline: Duration,
        kill_after: Duration,
        events: &mut Vec<RoleEvent>,
    ) {
        let Some(incoming) = self.incoming.take() else { return };
        let now = Instant::now();
        self.retire_current(Reason::Manual, retire_deadline, kill_after, registry, now);
        let _ = registry.deregister(&mut SourceFd(&incoming.channel.raw_fd()));
        if let Err(e) = registry.register(&mut SourceFd(&incoming.channel.raw_fd()), self.token, Interest::READABLE) {
            tracing::error!(role = %self.role, error = %e, "cannot watch the replacement's channel");
        }
        self.slot.spawned(incoming.pid, now);
        self.slot.heartbeat(hb.sent_ns, sys::monotonic_ns(), now);
        self.channel = Some(incoming.channel);
        self.unfolded.push(hb.clone());
        self.last = Some(hb);
        tracing::info!(role = %self.role, pid = incoming.pid.as_raw(), "replacement took over");
        events.push(RoleEvent::Replaced { pid: incoming.pid });
    }

    /// The 200 ms heartbeat check.
    pub fn check(&mut self, now: Instant, timeout: Duration, grace: Duration, registry: &Registry) {
        let age_ms = self.slot.heartbeat_age(now).as_millis() as u64;
        match self.slot.check(now, timeout) {
            Check::Healthy | Check::Vacant => {}
            Check::Missed(n) => {
                tracing::warn!(role = %self.role, pid = self.slot.pid.map_or(0, |p| p.as_raw()), age_ms, missed = n, "missed heartbeat")
            }
            Check::Hung => {
                tracing::error!(role = %self.role, pid = self.slot.pid.map_or(0, |p| p.as_raw()), age_ms, "hung: 3 missed heartbeats; restarting");
                self.retire_current(Reason::Hang, grace, grace, registry, now);
            }
        }
    }

    /// Takes the current process out of the slot: it gets a shutdown message telling it
    /// to finish by `deadline`, and SIGKILL `kill_after` from now; a replacement is
    /// scheduled (with backoff) unless one is already taking over.
    pub fn retire_current(
        &mut self,
        reason: Reason,
        deadline: Duration,
        kill_after: Duration,
        registry: &Registry,
        now: Instant,
    ) {
        let Some(pid) = self.slot.pid else { return };
        // Its figures stay known (and its workers' pids live) until it exits: otherwise
        // the next fold would forget them and count its next report again from zero.
        if let Some(hb) = self.last.clone() {
            upsert_report(&mut self.retiring_reports, hb);
        }
        if let Some(mut channel) = self.channel.take() {
            let _ = registry.deregister(&mut SourceFd(&channel.raw_fd()));
            let _ = channel.send(&Message::Shutdown { deadline_ms: deadline.as_millis() as u64 }, &[]);
            self.retiring.push(Retiring { pid, kill_at: now + kill_after, channel });
        }
        let delay = self.slot.vacate(reason, now);
        self.slot.log_restart(reason, delay, now);
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
        if self.incoming.as_ref().is_some_and(|i| i.pid == pid) {
            if let Some(incoming) = self.incoming.take() {
                let _ = registry.deregister(&mut SourceFd(&incoming.channel.raw_fd()));
            }
            tracing::error!(role = %self.role, pid = pid.as_raw(), %exit, "replacement died before it was up");
            events.push(RoleEvent::ReplacementFailed {
                role: self.role,
                reason: format!("new {} exited ({exit}) before it was up", self.role),
            });
            return true;
        }
        if let Some(i) = self.retiring.iter().position(|r| r.pid == pid) {
            let mut retired = self.retiring.swap_remove(i);
            latest_report(&mut retired.channel, &mut self.retiring_reports, &mut self.unfolded);
            tracing::info!(role = %self.role, pid = pid.as_raw(), %exit, "retired process exited");
            return true;
        }
        if self.slot.pid != Some(pid) {
            return false;
        }
        // Its last heartbeat may still be queued: read it before the channel goes.
        self.drain_messages(&mut Vec::new());
        if let Some(channel) = self.channel.take() {
            let _ = registry.deregister(&mut SourceFd(&channel.raw_fd()));
        }
        if stopping {
            self.slot.pid = None;
            tracing::info!(role = %self.role, pid = pid.as_raw(), %exit, "exited");
            return true;
        }
        tracing::error!(role = %self.role, pid = pid.as_raw(), %exit, "crashed");
        let delay = self.slot.vacate(Reason::Crash, now);
        self.slot.log_restart(Reason::Crash, delay, now);
        true
    }

    /// Pids of reports whose process is neither current nor retiring any more.
    pub fn exited_pids(&self) -> Vec<u32> {
        let live = |pid: u32| {
            self.slot.pid.is_some_and(|p| p.as_raw() as u32 == pid)
                || self.retiring.iter().any(|r| r.pid.as_raw() as u32 == pid)
        };
        self.retiring_reports.iter().map(|hb| hb.pid).filter(|p| !live(*p)).collect()
    }

    /// Reads what retiring processes reported since the last call.
    pub fn read_retiring_reports(&mut self) {
        for r in &mut self.retiring {
            latest_report(&mut r.channel, &mut self.retiring_reports, &mut self.unfolded);
        }
    }

    pub fn kill_overdue_retirees(&mut self, now: Instant) {
        for r in &mut self.retiring {
            if r.kill_if_overdue(now) {
                tracing::warn!(role = %self.role, pid = r.pid.as_raw(), "grace period over: SIGKILL");
            }
        }
    }

    /// Instants at which this role needs attention.
    pub fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.slot.start_due.into_iter().chain(self.retiring.iter().map(|r| r.kill_at))
    }

    /// True while a graceful replacement is starting beside the current process.
    pub fn replacing(&self) -> bool {
        self.incoming.is_some()
    }

    pub fn has_processes(&self) -> bool {
        self.slot.pid.is_some() || !self.retiring.is_empty() || self.incoming.is_some()
    }

    /// Abandons a replacement that did not come up in time.
    pub fn abandon_incoming(&mut self, registry: &Registry) {
        if let Some(incoming) = self.incoming.take() {
            let _ = registry.deregister(&mut SourceFd(&incoming.channel.raw_fd()));
            sys::process::signal(incoming.pid, Signal::SIGKILL);
            self.retiring.push(Retiring::killed(incoming.pid, incoming.channel, Instant::now()));
        }
    }

    /// SIGKILL to every process of this role, and to the workers the manager reported.
    pub fn kill_all(&mut self) {
        let workers = self.last.iter().flat_map(|hb| hb.workers.iter().map(|w| w.pid));
        for pid in workers.filter(|p| *p > 0) {
            sys::process::signal(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let incoming = self.incoming.iter().map(|i| &i.pid);
        for pid in self.slot.pid.iter().chain(self.retiring.iter().map(|r| &r.pid)).chain(incoming) {
            sys::process::signal(*pid, Signal::SIGKILL);
        }
    }
}

/// The fds a role gets in its bootstrap, and what each is.
fn bootstrap_fds(role: Role, inherit: &Inheritance) -> (Vec<FdKind>, Vec<BorrowedFd<'_>>) {
    let mut kinds = Vec::new();
    let mut fds = Vec::new();
    if role == Role::Listener {
        for fd in &inherit.listen {
            kinds.push(FdKind::ListenSocket);
            fds.push(fd.as_fd());
        }
    }
    kinds.push(FdKind::Steering);
    fds.push(match role {
        Role::Listener => inherit.steering.0.as_fd(),
        _ => inherit.steering.1.as_fd(),
    });
    kinds.push(FdKind::Lifeline);
    fds.push(inherit.lifeline_read.as_fd());
    if let (Role::Manager, Some(log)) = (role, inherit.access_log.as_ref()) {
        kinds.push(FdKind::AccessLog);
        fds.push(log.as_fd());
    }
    (kinds, fds)
}

/// Sends the lanes of slots `first..`: the listener gets the sending ends, the manager
/// the receiving ends (for its workers).
fn send_lanes(channel: &mut Channel, role: Role, lanes: &[(OwnedFd, OwnedFd)], first: usize) -> std::io::Result<()> {
    let mut at = first;
    for chunk in lanes[first.min(lanes.len())..].chunks(MAX_FDS_PER_MESSAGE) {
        let fds: Vec<BorrowedFd<'_>> =
            chunk.iter().map(|(tx, rx)| if role == Role::Listener { tx.as_fd() } else { rx.as_fd() }).collect();
        channel.send(&Message::Lanes { first: at as u32 }, &fds)?;
        at += chunk.len();
    }
    Ok(())
}

/// A replacement is ready to take over: the listener at its first heartbeat, the
/// manager once every worker of its new pool is up.
fn is_ready(role: Role, hb: &Heartbeat) -> bool {
    match role {
        Role::Manager => !hb.workers.is_empty() && hb.workers.iter().all(|w| w.state.is_serving()),
        _ => true,
    }
}

/// Reads every queued message on `channel`, keeping the newest heartbeat per pid in
/// `reports` and every one in `unfolded`.
fn latest_report(channel: &mut Channel, reports: &mut Vec<Heartbeat>, unfolded: &mut Vec<Heartbeat>) {
    let mut fds = Vec::new();
    while let Ok(Recv::Message(msg)) = channel.recv(&mut fds) {
        if let Message::Heartbeat(hb) = msg {
            unfolded.push(hb.clone());
            upsert_report(reports, hb);
        }
    }
}

/// Replaces the report of `hb`'s pid in `reports`, or adds it.
fn upsert_report(reports: &mut Vec<Heartbeat>, hb: Heartbeat) {
    match reports.iter_mut().find(|r| r.pid == hb.pid) {
        Some(r) => *r = hb,
        None => reports.push(hb),
    }
}
