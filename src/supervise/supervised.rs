//! One supervised position and every process of it, written once for the daemon's two
//! roles and the manager's workers: the process serving in the slot, a graceful
//! replacement starting beside it, and those retiring. Each supervisor plugs in what
//! differs: how a process is spawned and bootstrapped (it hands `started` the result),
//! when a replacement is ready, and what it does with reports.

use super::{Check, Reason, Retiring, Slot};
use crate::ipc::{Channel, Message};
use crate::sys::{self, Pid};
use mio::unix::SourceFd;
use mio::{Registry, Token};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// What differs between kinds of supervised child.
pub trait Child {
    /// What the supervisor sends it.
    type Down: Message;
    /// What it reports.
    type Up: Message;
    /// What the supervisor keeps per process beside its channel.
    type State;
    /// The message asking a process to finish what it has and exit within `deadline`.
    fn shutdown<'a>(deadline: Duration) -> <Self::Down as Message>::Lending<'a>;
}

/// One process of a slot, with its channel (registered for readiness under `token`).
pub struct Process<C: Child> {
    pub pid: Pid,
    pub token: Token,
    pub channel: Channel<C::Down, C::Up>,
    pub state: C::State,
}

impl<C: Child> Process<C> {
    fn forget(&self, registry: &Registry) {
        let _ = registry.deregister(&mut SourceFd(&self.channel.raw_fd()));
    }
}

/// Which process of a slot a poll token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Current,
    Incoming,
    Retiring(usize),
}

/// Whose exit a reaped pid was.
pub enum Exited<C: Child> {
    /// The serving process: it crashed (or stopped, when the supervisor is stopping);
    /// the slot is vacated already.
    Current(Process<C>),
    /// A replacement that died before it was up.
    Incoming(Process<C>),
    /// A retiring process finished.
    Retired(Process<C>),
    NotOurs,
}

/// A slot and its processes.
pub struct Supervised<C: Child> {
    pub slot: Slot,
    pub current: Option<Process<C>>,
    /// A graceful replacement: it takes the slot once its supervisor says it is ready.
    pub incoming: Option<Process<C>>,
    pub retiring: Vec<Retiring<Process<C>>>,
}

impl<C: Child> Supervised<C> {
    pub fn new(name: impl Into<String>, now: Instant) -> Self {
        Supervised { slot: Slot::new(name, now), current: None, incoming: None, retiring: Vec::new() }
    }

    /// Takes a process just spawned into the slot; a failed spawn counts as a crash and
    /// is retried after the backoff.
    pub fn started(&mut self, spawned: anyhow::Result<Process<C>>, now: Instant) {
        match spawned {
            Ok(process) => {
                tracing::info!(process = %self.slot.name, pid = process.pid.as_raw(), "spawned");
                self.slot.spawned(process.pid, now);
                self.current = Some(process);
            }
            Err(e) => {
                let delay = self.slot.vacate(Reason::Crash, now);
                tracing::error!(process = %self.slot.name, error = %format!("{e:#}"), retry_ms = delay.as_millis() as u64, "spawn failed");
            }
        }
    }

    /// Why a graceful replacement cannot start now, if it cannot.
    pub fn cannot_replace(&self) -> Option<String> {
        if self.incoming.is_some() {
            return Some(format!("a restart of the {} is already in progress", self.slot.name));
        }
        if !self.slot.is_up() {
            return Some(format!("the {} is not running", self.slot.name));
        }
        None
    }

    /// A replacement spawned beside the current process.
    pub fn replace_with(&mut self, process: Process<C>) {
        tracing::info!(process = %self.slot.name, pid = process.pid.as_raw(), "spawned replacement");
        self.incoming = Some(process);
    }

    /// The replacement is up: the current process retires (finishing by `deadline`,
    /// killed at `kill_at`) and the replacement takes the slot, its first heartbeat
    /// (sent at `sent_ns`) counted.
    pub fn promote(&mut self, deadline: Duration, kill_at: Instant, sent_ns: u64, now: Instant) -> Option<Pid> {
        let incoming = self.incoming.take()?;
        if let Some(delay) = self.retire(Reason::Manual, deadline, kill_at, now) {
            self.slot.log_restart(Reason::Manual, delay, now);
        }
        let pid = incoming.pid;
        self.slot.spawned(pid, now);
        self.slot.heartbeat(sent_ns, sys::monotonic_ns(), now);
        self.current = Some(incoming);
        tracing::info!(process = %self.slot.name, pid = pid.as_raw(), "replacement took over");
        Some(pid)
    }

    /// The periodic heartbeat check, logged; the caller retires a hung process.
    pub fn check(&mut self, now: Instant, timeout: Duration) -> Check {
        let age_ms = self.slot.heartbeat_age(now).as_millis() as u64;
        let pid = self.slot.pid.map_or(0, |p| p.as_raw());
        let check = self.slot.check(now, timeout);
        match check {
            Check::Healthy | Check::Vacant => {}
            Check::Missed(missed) => tracing::warn!(process = %self.slot.name, pid, age_ms, missed, "missed heartbeat"),
            Check::Hung => {
                tracing::error!(process = %self.slot.name, pid, age_ms, "hung: 3 missed heartbeats; restarting")
            }
        }
        check
    }

    /// Takes the current process out of the slot: it is told to finish by `deadline`
    /// and is killed at `kill_at` if still alive; the slot's next start is scheduled
    /// (with backoff). Returns the delay, or `None` when the slot was empty.
    pub fn retire(&mut self, reason: Reason, deadline: Duration, kill_at: Instant, now: Instant) -> Option<Duration> {
        let mut process = self.current.take()?;
        if let Err(e) = process.channel.send(&C::shutdown(deadline)) {
            tracing::debug!(process = %self.slot.name, pid = process.pid.as_raw(), error = %e, "shutdown not delivered");
        }
        self.retiring.push(Retiring { pid: process.pid, kill_at, channel: process });
        Some(self.slot.vacate(reason, now))
    }

    /// Handles the exit of `pid` if it is one of ours. A current process's exit is a
    /// crash (restarted with backoff) unless the supervisor is `stopping`.
    pub fn on_exit(&mut self, pid: Pid, stopping: bool, registry: &Registry, now: Instant) -> Exited<C> {
        if self.incoming.as_ref().is_some_and(|p| p.pid == pid) {
            let Some(process) = self.incoming.take() else { return Exited::NotOurs };
            process.forget(registry);
            return Exited::Incoming(process);
        }
        if let Some(i) = self.retiring.iter().position(|r| r.pid == pid) {
            let process = self.retiring.swap_remove(i).channel;
            process.forget(registry);
            return Exited::Retired(process);
        }
        if self.slot.pid != Some(pid) {
            return Exited::NotOurs;
        }
        let current = self.current.take();
        if stopping {
            self.slot.pid = None;
        } else {
            let delay = self.slot.vacate(Reason::Crash, now);
            self.slot.log_restart(Reason::Crash, delay, now);
        }
        match current {
            Some(process) => {
                process.forget(registry);
                Exited::Current(process)
            }
            None => Exited::NotOurs,
        }
    }

    /// SIGKILLs retiring processes whose time is up.
    pub fn kill_overdue(&mut self, now: Instant) {
        for r in &mut self.retiring {
            if r.kill_if_overdue(now) {
                tracing::warn!(process = %self.slot.name, pid = r.pid.as_raw(), "did not exit in time: SIGKILL");
            }
        }
    }

    /// Gives up a replacement that did not come up in time: killed, reaped later.
    pub fn abandon_incoming(&mut self, registry: &Registry) {
        if let Some(process) = self.incoming.take() {
            process.forget(registry);
            sys::process::signal(process.pid, Signal::SIGKILL);
            self.retiring.push(Retiring::killed(process.pid, process, Instant::now()));
        }
    }

    /// SIGKILL to every process of the slot.
    pub fn kill_all(&self) {
        for pid in self.pids() {
            sys::process::signal(pid, Signal::SIGKILL);
        }
    }

    /// Every live process of the slot: current, incoming, retiring.
    pub fn pids(&self) -> impl Iterator<Item = Pid> + '_ {
        let serving = self.current.iter().chain(&self.incoming).map(|p| p.pid);
        serving.chain(self.retiring.iter().map(|r| r.pid))
    }

    pub fn has_processes(&self) -> bool {
        self.pids().next().is_some()
    }

    /// Instants at which the slot needs attention: its next start, retirees' kills.
    pub fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.slot.start_due.into_iter().chain(self.retiring.iter().map(|r| r.kill_at))
    }

    /// Which of our processes `token` belongs to.
    pub fn owner(&self, token: Token) -> Option<Which> {
        if self.current.as_ref().is_some_and(|p| p.token == token) {
            return Some(Which::Current);
        }
        if self.incoming.as_ref().is_some_and(|p| p.token == token) {
            return Some(Which::Incoming);
        }
        self.retiring.iter().position(|r| r.channel.token == token).map(Which::Retiring)
    }

    pub fn process_mut(&mut self, which: Which) -> Option<&mut Process<C>> {
        match which {
            Which::Current => self.current.as_mut(),
            Which::Incoming => self.incoming.as_mut(),
            Which::Retiring(i) => self.retiring.get_mut(i).map(|r| &mut r.channel),
        }
    }

    /// The processes that serve or are about to: current and incoming (a message that
    /// changes how the slot serves goes to both).
    pub fn serving_mut(&mut self) -> impl Iterator<Item = &mut Process<C>> {
        self.current.iter_mut().chain(self.incoming.iter_mut())
    }
}
