//! Control commands in the supervision loop: each is started here and answered when its
//! effect is real (the new process is up, the manager reports done) or has failed.

use super::roles::RoleEvent;
use super::{Daemon, State};
use crate::control::{CommandRequest, COMMAND_TIMEOUT};
use crate::ipc::{Role, ToListener, ToManager};
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

/// Longest a drain or resume waits for the manager to confirm its workers have it.
const APPLIED_TIMEOUT: Duration = Duration::from_secs(2);
use webd_proto::{Request, Response, RestartTarget};

/// What a pending reply waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaiting {
    /// A graceful replacement of this role taking over.
    Replacement(Role),
    /// The manager's `Done` for a worker command.
    ManagerDone,
    /// The manager's word that a drain or resume reached every worker.
    Applied,
}

pub struct PendingReply {
    pub awaiting: Awaiting,
    pub reply: SyncSender<Response>,
    pub deadline: Instant,
    pub what: String,
}

impl Daemon {
    /// Takes every queued control command.
    pub(super) fn take_commands(&mut self) {
        let mut answered = Vec::new();
        while let Ok(CommandRequest { request, reply }) = self.commands.try_recv() {
            // The request as its wire form, not Rust's debug notation.
            let line = serde_json::to_string(&request).unwrap_or_default();
            tracing::info!(request = %line, "control command");
            if let Some(response) = self.start_command(request.clone(), &reply) {
                answered.push((reply, response));
            }
        }
        if !answered.is_empty() {
            // Status and /readyz must show the effect (e.g. draining) before the reply.
            self.publish(Instant::now());
        }
        for (reply, response) in answered {
            let _ = reply.try_send(response);
        }
    }

    /// Starts a command; returns its response now, or `None` when it is answered later.
    fn start_command(&mut self, request: Request, reply: &SyncSender<Response>) -> Option<Response> {
        if request == Request::Stop {
            // A stop already under way is joined (begin_stop does nothing more); every
            // stop is answered once the sockets are released (see `release_sockets`).
            self.begin_stop("control command");
            self.stop_replies.push(reply.clone());
            return None;
        }
        if self.state == State::Stopping {
            return Some(Response::error("daemon is stopping"));
        }
        let draining = self.state == State::Draining;
        match request {
            Request::Status => Some(Response::error("status is served by the control thread")),
            Request::Stop => None, // taken above
            Request::Drain => self.set_draining(true, reply),
            Request::Resume => self.set_draining(false, reply),
            Request::Restart { target: RestartTarget::Listener, .. } => {
                let result =
                    self.listener.replace(&self.inherit, self.event_loop.registry(), &mut self.tokens, draining);
                self.await_or_fail(result, Awaiting::Replacement(Role::Listener), "restart listener", reply)
            }
            Request::Restart { target: RestartTarget::Manager, .. } => {
                if self.worker_command_pending() {
                    // Its manager would be retired mid-way; the pool's next size would
                    // depend on which of the two got there first.
                    return Some(Response::error(
                        "restart manager: a worker command is in progress; retry when it is answered",
                    ));
                }
                let result =
                    self.manager.replace(&self.inherit, self.event_loop.registry(), &mut self.tokens, draining);
                self.await_or_fail(result, Awaiting::Replacement(Role::Manager), "restart manager", reply)
            }
            Request::Restart { target: RestartTarget::Workers, .. } => {
                self.forward_to_manager(ToManager::RestartWorkers { id: None }, "restart workers", reply)
            }
            Request::Restart { target: RestartTarget::Worker, id } => {
                self.forward_to_manager(ToManager::RestartWorkers { id }, "restart worker", reply)
            }
            Request::Scale { workers } => match self.ensure_lanes(workers) {
                Ok(()) => {
                    let answer = self.forward_to_manager(ToManager::Scale { workers }, "scale", reply);
                    if answer.is_none() {
                        // Forwarded: the next manager (after a crash or restart) starts
                        // this many workers too.
                        self.inherit.config.workers = workers;
                    }
                    answer
                }
                Err(e) => Some(Response::error(format!("scale: {e:#}"))),
            },
            Request::Upgrade { binary } => self.start_upgrade(binary, Some(reply.clone())),
            Request::Reload => self.reload_by_command(reply),
        }
    }

    fn await_or_fail(
        &mut self,
        started: anyhow::Result<()>,
        awaiting: Awaiting,
        what: &str,
        reply: &SyncSender<Response>,
    ) -> Option<Response> {
        match started {
            Ok(()) => {
                // A drain or resume is in force once sent (readiness, the listener, new
                // workers); the manager's word only confirms it, so it is not waited for long.
                let timeout = if awaiting == Awaiting::Applied { APPLIED_TIMEOUT } else { COMMAND_TIMEOUT };
                self.pending.push(PendingReply {
                    awaiting,
                    reply: reply.clone(),
                    deadline: Instant::now() + timeout,
                    what: what.to_string(),
                });
                None
            }
            Err(e) => Some(Response::error(format!("{what}: {e:#}"))),
        }
    }

    /// Worker commands are the manager's to carry out; one at a time.
    fn forward_to_manager(&mut self, msg: ToManager<'_>, what: &str, reply: &SyncSender<Response>) -> Option<Response> {
        if let Some(refusal) = self.refuse_worker_command(what) {
            return Some(refusal);
        }
        self.manager.send(&msg);
        self.await_or_fail(Ok(()), Awaiting::ManagerDone, what, reply)
    }

    /// Why a worker command cannot be taken now, if it cannot.
    fn refuse_worker_command(&self, what: &str) -> Option<Response> {
        if self.worker_command_pending() {
            return Some(Response::error(format!("{what}: another worker command is in progress")));
        }
        if self.manager.sup.incoming.is_some() {
            // The current manager is about to retire and its successor was bootstrapped
            // with the pool as it was: sent to either, the command could be lost.
            return Some(Response::error(format!(
                "{what}: a manager restart is in progress; retry when it is answered"
            )));
        }
        if !self.manager.slot().is_up() {
            return Some(Response::error(format!("{what}: the manager is not running")));
        }
        None
    }

    /// `reload`: refused at once when the configuration does not load (nothing changes);
    /// otherwise answered when the manager has restarted every worker with it.
    fn reload_by_command(&mut self, reply: &SyncSender<Response>) -> Option<Response> {
        // Checked before anything is read, so a refusal changes nothing.
        if let Some(refusal) = self.refuse_worker_command("reload") {
            return Some(refusal);
        }
        match self.reloaded_config() {
            Ok(config) => {
                tracing::info!(
                    workers = config.workers,
                    "webctl reload: configuration reloaded; rolling worker restart"
                );
                self.forward_to_manager(ToManager::Reconfigure(Box::new(config)), "reload", reply)
            }
            Err(e) => {
                tracing::error!(error = %e, "webctl reload: refused; keeping the running configuration");
                Some(Response::error(format!("reload refused, the running configuration is kept: {e}")))
            }
        }
    }

    fn worker_command_pending(&self) -> bool {
        self.pending.iter().any(|p| p.awaiting == Awaiting::ManagerDone)
    }

    /// Drains or resumes; answers once the workers' channels carry it, so the next
    /// response on any keep-alive connection already follows it.
    fn set_draining(&mut self, draining: bool, reply: &SyncSender<Response>) -> Option<Response> {
        self.state = if draining { State::Draining } else { State::Running };
        self.listener.send(&if draining { ToListener::Drain } else { ToListener::Resume });
        self.manager.send(&if draining { ToManager::Drain } else { ToManager::Resume });
        tracing::info!(draining, "drain state changed");
        let what = if draining { "draining" } else { "resumed" };
        if !self.manager.slot().is_up() {
            // Its next workers start in the new state.
            return Some(Response::ok(what));
        }
        self.await_or_fail(Ok(()), Awaiting::Applied, what, reply)
    }

    /// Answers the replies that `events` complete, and those past their deadline.
    pub(super) fn settle_replies(&mut self, events: Vec<RoleEvent>) {
        for event in events {
            let (awaiting, response) = match event {
                RoleEvent::Replaced { pid } => {
                    let role = if self.listener.slot().pid == Some(pid) { Role::Listener } else { Role::Manager };
                    (Awaiting::Replacement(role), Response::ok(format!("{role} restarted (new pid {pid})")))
                }
                RoleEvent::ReplacementFailed { role, reason } => (Awaiting::Replacement(role), Response::error(reason)),
                RoleEvent::Done { ok: true, detail } => (Awaiting::ManagerDone, Response::ok(detail)),
                RoleEvent::Done { ok: false, detail } => (Awaiting::ManagerDone, Response::error(detail)),
                RoleEvent::Applied => {
                    let what = self.pending.iter().find(|p| p.awaiting == Awaiting::Applied).map(|p| p.what.clone());
                    (Awaiting::Applied, Response::ok(what.unwrap_or_default()))
                }
            };
            self.answer(awaiting, response);
        }
        let now = Instant::now();
        let (expired, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.pending).into_iter().partition(|p| now >= p.deadline);
        self.pending = kept;
        for p in expired {
            if let Awaiting::Replacement(role) = p.awaiting {
                let registry = self.event_loop.registry();
                match role {
                    Role::Listener => self.listener.sup.abandon_incoming(registry),
                    _ => self.manager.sup.abandon_incoming(registry),
                }
            }
            let response = match p.awaiting {
                Awaiting::Applied => {
                    Response::ok(format!("{} (the manager has not confirmed its workers got it yet)", p.what))
                }
                _ => Response::error(format!("{}: timed out", p.what)),
            };
            let _ = p.reply.try_send(response);
        }
    }

    fn answer(&mut self, awaiting: Awaiting, response: Response) {
        if let Some(i) = self.pending.iter().position(|p| p.awaiting == awaiting) {
            let p = self.pending.swap_remove(i);
            let _ = p.reply.try_send(response);
        }
    }
}
