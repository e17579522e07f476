//! Zero-downtime binary upgrade (`webctl upgrade`, SIGUSR2).
//!
//! The running daemon starts the new executable with our command line and a channel,
//! and hands it (SCM_RIGHTS) the listening sockets, the control socket and the admin
//! socket, plus the counters and the TLS session-ticket keys to continue from (so
//! sessions resume on the new tree). The new daemon starts its own tree on the
//! same listening sockets (both trees accept meanwhile: the port never closes) and says
//! `Ready` once its listener, manager and a worker are up. We then stop accepting on the
//! control and admin sockets and send `TakeOver`; the new daemon serves them from then
//! on (same sockets, so no gap), systemd is told the new MAINPID, and our tree drains and
//! exits. If the new daemon exits or is not ready in time, we kill it and go on serving:
//! the upgrade fails with the reason and nothing else changed.

use super::{Daemon, State};
use crate::ipc::{Fd, Handoff, PredecessorLink, Recv, SuccessorLink, ToPredecessor, ToSuccessor};
use crate::observe::CarriedTotals;
use crate::sys::{self, process::Exit, spawn, Pid};
use anyhow::Context;
use mio::unix::SourceFd;
use mio::Interest;
use nix::sys::signal::Signal;
use std::os::fd::OwnedFd;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};
use webd_proto::Response;

/// Longest a new daemon may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where an upgrade stands, seen from this daemon.
pub enum Upgrade {
    Idle,
    /// We started a successor and wait for it to be ready.
    Starting {
        pid: Pid,
        channel: SuccessorLink,
        deadline: Instant,
        reply: Option<SyncSender<Response>>,
    },
    /// We are the successor: say `Ready` once up, then wait for `TakeOver`.
    Successor {
        channel: PredecessorLink,
        ready_sent: bool,
    },
    /// We handed everything to a successor and are draining out; our final totals go
    /// to it over `channel` just before we exit.
    HandedOver {
        channel: SuccessorLink,
    },
    /// We are the successor and took over; the old daemon may still send its final totals.
    TookOver {
        channel: PredecessorLink,
    },
}

impl Daemon {
    /// Starts an upgrade to `binary` (default: our own executable). Returns a response
    /// now when it cannot start; otherwise `reply` is answered when it ends.
    pub(super) fn start_upgrade(
        &mut self,
        binary: Option<String>,
        reply: Option<SyncSender<Response>>,
    ) -> Option<Response> {
        if !matches!(self.upgrade, Upgrade::Idle) {
            return Some(Response::error("upgrade: another upgrade is in progress"));
        }
        if self.state != State::Running {
            return Some(Response::error(format!("upgrade: the daemon is {}", self.state.as_str())));
        }
        let exe = binary.map(std::path::PathBuf::from).unwrap_or_else(|| self.inherit.exe.clone());
        match self.spawn_successor(&exe) {
            Ok((pid, channel)) => {
                tracing::info!(pid = pid.as_raw(), binary = %exe.display(), "upgrade: new daemon started");
                self.upgrade = Upgrade::Starting { pid, channel, deadline: Instant::now() + READY_TIMEOUT, reply };
                None
            }
            Err(e) => Some(Response::error(format!("upgrade: {e:#}"))),
        }
    }

    fn spawn_successor(&mut self, exe: &std::path::Path) -> anyhow::Result<(Pid, SuccessorLink)> {
        let meta = std::fs::metadata(exe).with_context(|| format!("new binary {}", exe.display()))?;
        anyhow::ensure!(meta.is_file(), "new binary {} is not a file", exe.display());
        let (ours, theirs) = sys::seqpacket_pair()?;
        let pid = spawn::spawn(spawn::SpawnSpec {
            exe,
            argv0: &self.argv0,
            channel: theirs,
            // It must outlive us: it is the daemon from now on.
            die_with_parent: false,
            env: &[],
            credentials: None,
            args: &self.args,
            keep_notify_socket: true,
        })?;
        let mut channel = SuccessorLink::new(ours);
        let totals = self.carried_totals();
        let lanes = lanes_for_successor(&self.inherit);
        self.lanes_shared = !lanes.is_empty();
        let handoff = Handoff {
            listen: self.inherit.listen.iter().map(Fd::lend).collect(),
            tls_listen: self.inherit.tls_listen.iter().map(Fd::lend).collect(),
            control: Fd::lend(&self.planes.control),
            admin: self.planes.admin.as_ref().map(|admin| Fd::lend(&admin.socket)),
            totals,
            tickets: Some(self.inherit.tickets.clone()),
            lanes,
        };
        if let Err(e) = channel.send(&ToSuccessor::Handoff(Box::new(handoff))) {
            // Most likely it already exited: its exit status is the useful reason.
            let reason = match wait_for_exit(pid, Duration::from_secs(1)) {
                Some(exit) => format!("the new daemon exited ({exit}) before it was ready"),
                None => format!("handing the sockets to the new daemon (pid {pid}): {e}"),
            };
            anyhow::bail!(reason);
        }
        self.event_loop.registry().register(
            &mut SourceFd(&channel.raw_fd()),
            self.sources.upgrade,
            Interest::READABLE,
        )?;
        Ok((pid, channel))
    }

    /// Messages on the upgrade channel, on either side.
    pub(super) fn upgrade_readable(&mut self) {
        match &mut self.upgrade {
            Upgrade::Starting { channel, .. } => {
                let mut ready = false;
                let _ = channel.drain(|ToPredecessor::Ready| ready = true);
                if ready {
                    self.hand_over();
                }
            }
            Upgrade::Successor { .. } | Upgrade::TookOver { .. } => self.read_predecessor(),
            Upgrade::Idle | Upgrade::HandedOver { .. } => {}
        }
    }

    /// New side: the old daemon's totals and its `TakeOver`; its end closing means it
    /// is gone.
    fn read_predecessor(&mut self) {
        loop {
            let (Upgrade::Successor { channel, .. } | Upgrade::TookOver { channel }) = &mut self.upgrade else {
                return;
            };
            match channel.recv() {
                Ok(Recv::Message(ToSuccessor::Totals(totals))) => self.continue_from_predecessor(*totals),
                Ok(Recv::Message(ToSuccessor::Handoff(_))) => tracing::warn!("upgrade: a second handoff ignored"),
                Ok(Recv::Message(ToSuccessor::TakeOver)) => {
                    tracing::info!("upgrade: the old daemon handed over; serving control and admin");
                    self.take_over();
                }
                Ok(Recv::Empty) => return,
                Ok(Recv::Closed) | Err(_) => {
                    match std::mem::replace(&mut self.upgrade, Upgrade::Idle) {
                        Upgrade::Successor { channel, .. } => {
                            // The old daemon is gone: everything is ours now.
                            tracing::warn!("upgrade: the old daemon went away; taking over");
                            self.upgrade = Upgrade::Successor { channel, ready_sent: true };
                            self.take_over();
                        }
                        Upgrade::TookOver { channel } => {
                            let _ = self.event_loop.registry().deregister(&mut SourceFd(&channel.raw_fd()));
                        }
                        other => self.upgrade = other,
                    }
                    return;
                }
            }
        }
    }

    /// The old daemon's latest (or final) figures replace the base.
    fn continue_from_predecessor(&mut self, totals: CarriedTotals) {
        let (requests, accepted) = (totals.figures.responses.total(), totals.figures.accepted);
        tracing::info!(requests, accepted, "upgrade: totals from the old daemon");
        self.totals.set_base(totals.figures);
    }

    /// Old side: the successor is ready. Stop accepting on the control and admin sockets,
    /// tell it to take over, and drain our own tree out.
    fn hand_over(&mut self) {
        let Upgrade::Starting { pid, mut channel, reply, .. } = std::mem::replace(&mut self.upgrade, Upgrade::Idle)
        else {
            return;
        };
        self.planes.stop();
        // systemd must know the new main process before it stores its descriptors.
        self.systemd.main_pid(pid.as_raw() as u32);
        let totals = ToSuccessor::Totals(Box::new(self.carried_totals()));
        if let Err(e) = channel.send(&totals).and_then(|()| channel.send(&ToSuccessor::TakeOver)) {
            tracing::warn!(error = %e, "upgrade: cannot tell the new daemon to take over");
        }
        self.upgrade = Upgrade::HandedOver { channel };
        tracing::info!(new_pid = pid.as_raw(), "upgrade: handed over; draining the old tree");
        if let Some(reply) = reply {
            let _ = reply.try_send(Response::ok(format!("upgraded: new daemon pid {pid}")));
        }
        self.handed_over = true;
        let drain = self.inherit.config.drain_timeout.duration();
        self.begin_stop_with("binary upgrade", drain);
    }

    /// New side: our tree is up; tell the old daemon once.
    pub(super) fn announce_ready(&mut self) {
        if let Upgrade::Successor { channel, ready_sent } = &mut self.upgrade {
            if !*ready_sent {
                *ready_sent = true;
                tracing::info!("upgrade: ready; asking the old daemon to hand over");
                if channel.send(&ToPredecessor::Ready).is_err() {
                    self.take_over();
                }
            }
        }
    }

    /// Old side, just before exiting: our exact final totals, so the successor's counters
    /// include what we served while draining.
    pub(super) fn send_final_totals(&mut self) {
        let totals = self.carried_totals();
        if let Upgrade::HandedOver { channel } = &mut self.upgrade {
            let _ = channel.send(&ToSuccessor::Totals(Box::new(totals)));
        }
    }

    /// New side: serve the control and admin sockets we were handed.
    fn take_over(&mut self) {
        if let Upgrade::Successor { channel, .. } = std::mem::replace(&mut self.upgrade, Upgrade::Idle) {
            // Keep listening: the old daemon sends its final totals before it exits.
            self.upgrade = Upgrade::TookOver { channel };
        }
        // systemd takes our notifications now that we are its main process.
        self.store_descriptors();
        if let Err(e) = self.planes.start(&self.observed) {
            tracing::error!(error = %format!("{e:#}"), "upgrade: cannot serve the handed-over control/admin sockets");
        }
    }

    /// Old side: the successor exited before it was ready.
    pub(super) fn upgrade_child_exited(&mut self, pid: Pid, exit: Exit) -> bool {
        match &self.upgrade {
            Upgrade::Starting { pid: p, .. } if *p == pid => {
                self.roll_back(format!("the new daemon exited ({exit}) before it was ready"));
                true
            }
            _ => false,
        }
    }

    /// Old side: give up on a successor that is not ready in time.
    pub(super) fn check_upgrade_deadline(&mut self, now: Instant) {
        if let Upgrade::Starting { deadline, .. } = &self.upgrade {
            if now >= *deadline {
                self.roll_back(format!("the new daemon was not ready within {} s", READY_TIMEOUT.as_secs()));
            }
        }
    }

    pub(super) fn upgrade_deadline(&self) -> Option<Instant> {
        match &self.upgrade {
            Upgrade::Starting { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    fn roll_back(&mut self, reason: String) {
        let Upgrade::Starting { pid, channel, reply, .. } = std::mem::replace(&mut self.upgrade, Upgrade::Idle) else {
            return;
        };
        let _ = self.event_loop.registry().deregister(&mut SourceFd(&channel.raw_fd()));
        // Its own children follow it (parent-death signal, lifeline).
        sys::process::signal(pid, Signal::SIGKILL);
        tracing::error!(%reason, "upgrade failed; the running tree keeps serving");
        if let Some(reply) = reply {
            let _ = reply.try_send(Response::error(format!("upgrade rolled back: {reason}")));
        }
    }

    /// The counters a successor continues from.
    /// Everything counted so far, ours on top of what we inherited.
    fn carried_totals(&mut self) -> CarriedTotals {
        CarriedTotals { upgrades: self.upgrades + 1, figures: self.figures(), daemon_restarts: self.daemon_restarts }
    }
}

/// Waits up to `timeout` for `pid` to exit and reaps it; kills it if it does not.
fn wait_for_exit(pid: Pid, timeout: Duration) -> Option<Exit> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Some(Exit::Code(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Some(Exit::Signal(sig)),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                sys::process::signal(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
                return None;
            }
        }
    }
}

/// What a new daemon takes from the one it replaces.
pub struct Inherited {
    pub listen: Vec<OwnedFd>,
    pub tls_listen: Vec<OwnedFd>,
    pub control: OwnedFd,
    pub admin: Option<OwnedFd>,
    pub totals: CarriedTotals,
    /// The session-ticket keys (None from a daemon that did not send them).
    pub tickets: Option<crate::tls::tickets::TicketKeys>,
    /// The old daemon's lanes, slot by slot (empty: make our own).
    pub lanes: Vec<(OwnedFd, OwnedFd)>,
    pub channel: PredecessorLink,
}

/// New side, at start: the handoff from the daemon we replace, if we are a successor.
/// Both ends of every lane, for the successor to read them too: then our workers hand
/// their keep-alive connections to its tree at retirement. None when they would not fit
/// one message beside the sockets (SCM_RIGHTS carries at most 253 descriptors).
fn lanes_for_successor(i: &super::Inheritance) -> Vec<Fd<'_>> {
    const MAX_FDS: usize = 253;
    let sockets = i.listen.len() + i.tls_listen.len() + 2;
    if sockets + 2 * i.lanes.len() > MAX_FDS {
        tracing::info!(lanes = i.lanes.len(), "upgrade: too many lanes to share; the new tree makes its own");
        return Vec::new();
    }
    i.lanes.iter().flat_map(|(a, b)| [Fd::lend(a), Fd::lend(b)]).collect()
}

fn lane_pairs(ends: Vec<Fd<'_>>) -> anyhow::Result<Vec<(OwnedFd, OwnedFd)>> {
    anyhow::ensure!(ends.len() % 2 == 0, "the old daemon sent {} lane ends, not pairs", ends.len());
    let mut ends = ends.into_iter().map(Fd::into_owned);
    let mut pairs = Vec::new();
    while let (Some(a), Some(b)) = (ends.next(), ends.next()) {
        pairs.push((a?, b?));
    }
    Ok(pairs)
}

pub fn receive_handoff() -> anyhow::Result<Option<Inherited>> {
    if std::env::var_os(spawn::CHANNEL_FD_ENV).is_none() {
        return Ok(None);
    }
    let mut channel = PredecessorLink::new(spawn::take_inherited_channel().context("upgrade channel")?);
    let handoff = match channel.recv_blocking(crate::ipc::BOOTSTRAP_WAIT).context("receiving the handoff")? {
        ToSuccessor::Handoff(handoff) => *handoff,
        other => anyhow::bail!("expected a handoff from the old daemon, got {other:?}"),
    };
    Ok(Some(Inherited {
        listen: handoff.listen.into_iter().map(Fd::into_owned).collect::<std::io::Result<_>>()?,
        tls_listen: handoff.tls_listen.into_iter().map(Fd::into_owned).collect::<std::io::Result<_>>()?,
        control: handoff.control.into_owned()?,
        admin: handoff.admin.map(Fd::into_owned).transpose()?,
        totals: handoff.totals,
        tickets: handoff.tickets,
        lanes: lane_pairs(handoff.lanes)?,
        channel,
    }))
}
