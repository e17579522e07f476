//! One supervised role of the daemon (listener or manager): starting a process in its
//! slot with the bootstrap it needs, reading its heartbeats, and retiring or replacing
//! it when it crashes or hangs.

use super::Inheritance;
use crate::ipc::{Bootstrap, Channel, FdKind, Heartbeat, Message, Recv, Role};
use crate::supervise::{Check, Reason, Retiring, Slot};
use crate::sys::{self, process::Exit, spawn, Pid};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::signal::Signal;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

pub struct RoleProcess {
    pub role: Role,
    token: Token,
    pub slot: Slot,
    channel: Option<Channel>,
    /// The current process's latest heartbeat.
    pub last: Option<Heartbeat>,
    pub retiring: Vec<Retiring<Channel>>,
}

impl RoleProcess {
    pub fn new(role: Role, token: Token, now: Instant) -> RoleProcess {
        RoleProcess {
            role,
            token,
            slot: Slot::new(role.as_str(), now),
            channel: None,
            last: None,
            retiring: Vec::new(),
        }
    }

    /// Starts a process in the slot; a failure counts as a crash and is retried.
    pub fn start(&mut self, inherit: &Inheritance, registry: &Registry, draining: bool, now: Instant) {
        match self.spawn(inherit, registry, draining) {
            Ok((pid, channel)) => {
                self.slot.spawned(pid, now);
                self.channel = Some(channel);
                self.last = None;
                tracing::info!(role = %self.role, %pid, "spawned");
            }
            Err(e) => {
                let delay = self.slot.vacate(Reason::Crash, now);
                tracing::error!(role = %self.role, error = %format!("{e:#}"), retry_ms = delay.as_millis() as u64, "spawn failed");
            }
        }
    }

    fn spawn(&self, inherit: &Inheritance, registry: &Registry, draining: bool) -> anyhow::Result<(Pid, Channel)> {
        let (ours, theirs) = sys::seqpacket_pair()?;
        let argv0 = format!("{}{}", crate::ROLE_PREFIX, self.role);
        let env = [(crate::logging::LOG_FORMAT_ENV, crate::logging::format_env_value(inherit.config.log_format))];
        let pid = spawn::spawn(spawn::SpawnSpec {
            exe: &inherit.exe,
            argv0: &argv0,
            channel: theirs,
            die_with_parent: true,
            env: &env,
        })?;
        let mut channel = Channel::new(ours);
        let (kinds, fds) = bootstrap_fds(self.role, inherit);
        let boot = Bootstrap { config: inherit.config.clone(), worker_id: None, fds: kinds, draining };
        if let Err(e) = channel.send(&Message::Bootstrap(boot), &fds) {
            sys::process::signal(pid, Signal::SIGKILL);
            anyhow::bail!("sending bootstrap to {} (pid {pid}): {e}", self.role);
        }
        registry.register(&mut SourceFd(&channel.raw_fd()), self.token, Interest::READABLE)?;
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

    /// Reads every queued message from the current process.
    pub fn drain_messages(&mut self) {
        let Some(channel) = self.channel.as_mut() else { return };
        let mut fds = Vec::new();
        loop {
            match channel.recv(&mut fds) {
                Ok(Recv::Message(Message::Heartbeat(hb))) => {
                    let now = Instant::now();
                    if self.slot.heartbeat(hb.sent_ns, sys::monotonic_ns(), now) {
                        tracing::info!(role = %self.role, pid = hb.pid, "up (first heartbeat)");
                    }
                    self.last = Some(hb);
                }
                Ok(Recv::Message(other)) => tracing::debug!(role = %self.role, ?other, "unexpected message"),
                Ok(Recv::Empty) | Ok(Recv::Closed) => return, // exits arrive by SIGCHLD
                Err(e) => {
                    tracing::warn!(role = %self.role, error = %e, "bad message from child");
                    return;
                }
            }
        }
    }

    /// The 200 ms heartbeat check.
    pub fn check(&mut self, now: Instant, timeout: Duration, grace: Duration, registry: &Registry) {
        let age_ms = self.slot.heartbeat_age(now).as_millis() as u64;
        match self.slot.check(now, timeout) {
            Check::Healthy | Check::Vacant => {}
            Check::Missed(n) => {
                tracing::warn!(role = %self.role, pid = ?self.slot.pid, age_ms, missed = n, "missed heartbeat")
            }
            Check::Hung => {
                tracing::error!(role = %self.role, pid = ?self.slot.pid, age_ms, "hung: 3 missed heartbeats; restarting");
                self.retire_current(Reason::Hang, grace, registry, now);
            }
        }
    }

    /// Takes the current process out of the slot: it gets a shutdown message and
    /// `grace` to exit before SIGKILL; a replacement is scheduled at once (with backoff).
    pub fn retire_current(&mut self, reason: Reason, grace: Duration, registry: &Registry, now: Instant) {
        let Some(pid) = self.slot.pid else { return };
        if let Some(mut channel) = self.channel.take() {
            let _ = registry.deregister(&mut SourceFd(&channel.raw_fd()));
            let _ = channel.send(&Message::Shutdown { deadline_ms: grace.as_millis() as u64 }, &[]);
            self.retiring.push(Retiring { name: self.role.to_string(), pid, kill_at: now + grace, channel });
        }
        let delay = self.slot.vacate(reason, now);
        self.log_restart(reason, delay, now);
    }

    /// Handles the exit of `pid` if it is ours; returns whether it was.
    pub fn on_exit(&mut self, pid: Pid, exit: Exit, stopping: bool, registry: &Registry, now: Instant) -> bool {
        if let Some(i) = self.retiring.iter().position(|r| r.pid == pid) {
            self.retiring.swap_remove(i);
            tracing::info!(role = %self.role, %pid, %exit, "retired process exited");
            return true;
        }
        if self.slot.pid != Some(pid) {
            return false;
        }
        if let Some(channel) = self.channel.take() {
            let _ = registry.deregister(&mut SourceFd(&channel.raw_fd()));
        }
        if stopping {
            self.slot.pid = None;
            tracing::info!(role = %self.role, %pid, %exit, "exited");
            return true;
        }
        tracing::error!(role = %self.role, %pid, %exit, "crashed");
        let delay = self.slot.vacate(Reason::Crash, now);
        self.log_restart(Reason::Crash, delay, now);
        true
    }

    fn log_restart(&mut self, reason: Reason, delay: Duration, now: Instant) {
        let restarts = self.slot.restarts();
        if self.slot.in_backoff(now) {
            tracing::warn!(role = %self.role, reason = reason.as_str(), restarts, retry_ms = delay.as_millis() as u64,
                "backoff: more than 5 restarts in 10 s");
        } else {
            tracing::info!(role = %self.role, reason = reason.as_str(), restarts, retry_ms = delay.as_millis() as u64, "restart scheduled");
        }
    }

    pub fn kill_overdue_retirees(&mut self, now: Instant) {
        for r in self.retiring.iter_mut().filter(|r| now >= r.kill_at) {
            tracing::warn!(role = %self.role, pid = %r.pid, "grace period over: SIGKILL");
            sys::process::signal(r.pid, Signal::SIGKILL);
            r.kill_at = now + Duration::from_secs(3600); // reaped by SIGCHLD
        }
    }

    /// Instants at which this role needs attention.
    pub fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.slot.start_due.into_iter().chain(self.retiring.iter().map(|r| r.kill_at))
    }

    pub fn has_processes(&self) -> bool {
        self.slot.pid.is_some() || !self.retiring.is_empty()
    }

    /// SIGKILL to every process of this role, and to the workers the manager reported.
    pub fn kill_all(&mut self) {
        let workers = self.last.iter().flat_map(|hb| hb.workers.iter().map(|w| w.pid));
        for pid in workers.filter(|p| *p > 0) {
            sys::process::signal(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for pid in self.slot.pid.iter().chain(self.retiring.iter().map(|r| &r.pid)) {
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
    kinds.push(FdKind::Connections);
    fds.push(match role {
        Role::Listener => inherit.connections.0.as_fd(),
        _ => inherit.connections.1.as_fd(),
    });
    kinds.push(FdKind::Lifeline);
    fds.push(inherit.lifeline_read.as_fd());
    (kinds, fds)
}
