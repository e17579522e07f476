//! The manager role: owns the worker pool and steers connections.
//!
//! Connections do not pass through it: the listener sends each one into a worker's lane
//! (see `ipc`), and the manager tells the listener which lanes have a live worker and
//! how loaded each is. So a manager crash or hang loses and delays no connection. It
//! supervises its workers with the same heartbeat and restart rules the daemon applies
//! to it (`supervise`), and reports their figures to the daemon in its own heartbeat.

mod pool;

use crate::event_loop::{EventLoop, Wake};
use crate::heartbeat::{Delivery, Heartbeater, Report, FINAL_REPORT_WITHIN};
use crate::ipc::{self, FromManager, ManagerControl, Recv, RecvError, Role, SteeringSender, ToManager};
use crate::signals::{Event, Signals};
use crate::supervise::CHECK_INTERVAL;
use anyhow::Context;
use mio::Interest;
use pool::WorkerPool;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

pub fn run(mut control: ManagerControl) -> anyhow::Result<()> {
    let boot = match control.recv_blocking(ipc::BOOTSTRAP_WAIT).context("manager bootstrap")? {
        ToManager::Bootstrap(boot) => *boot,
        other => anyhow::bail!("manager bootstrap: got {other:?} first"),
    };
    let steering = SteeringSender::new(boot.steering.into_owned()?);
    let lifeline = boot.lifeline.into_owned()?;
    let access_log = boot.access_log.map(ipc::Fd::into_owned).transpose()?;
    // Only SIGCHLD: stop requests come from the daemon over the channel, and operator
    // signals are ignored in children (see `ignore_operator_signals`).
    let mut signals = Signals::install(&[Event::Child]).context("signal handlers")?;
    let exe = std::env::current_exe().context("locating our own executable")?;
    let config = boot.config;
    tracing::info!(pid = std::process::id(), workers = config.workers, "manager started");

    let mut event_loop = EventLoop::new(256).context("epoll")?;
    let control_token = event_loop.watch(control.raw_fd(), Interest::READABLE)?;
    let lifeline_token = event_loop.watch(lifeline.as_raw_fd(), Interest::READABLE)?;
    let signals_token = event_loop.watch(signals.as_fd().as_raw_fd(), Interest::READABLE)?;

    let worker_tokens = event_loop.once_only_tokens();
    let mut pool = WorkerPool::new(config.clone(), exe, lifeline, steering, boot.draining, worker_tokens);
    pool.set_access_log(access_log);
    pool.set_tls(boot.tls);
    pool.set_ticket_keys(boot.tickets);
    pool.set_https_port(boot.https_port);
    // The daemon sends the lanes right after the bootstrap; workers start once they are here.
    handle_control(&mut control, &mut pool, event_loop.registry());
    let mut heartbeat = Heartbeater::new(Role::Manager, config.heartbeat_interval.duration());
    let mut next_check = Instant::now() + CHECK_INTERVAL;
    let mut shutdown_deadline: Option<Instant> = None;
    loop {
        let now = Instant::now();
        pool.start_due(event_loop.registry(), now);
        pool.steer();
        pool.advance_op(event_loop.registry(), now);
        pool.run_deferred_reload(event_loop.registry());
        if !pool.outbox.is_empty() {
            // The daemon's status must show the result before it answers the command.
            heartbeat.force(now);
        }
        if heartbeat.until_due(now).is_zero() {
            match heartbeat.tick(now, &mut control, || Report {
                figures: pool.figures(),
                workers: pool.reports(now),
                ..Report::default()
            }) {
                Delivery::Sent => pool.clear_exited(),
                // Only once delivered: a dropped heartbeat's exited workers go in the next.
                Delivery::Dropped if pool.has_exited() => {
                    tracing::debug!("heartbeat dropped: exited workers kept for the next heartbeat")
                }
                _ => {}
            }
        }
        for msg in pool.outbox.drain(..) {
            if let Err(e) = control.send(&msg) {
                tracing::warn!(error = %e, "cannot report to the daemon");
            }
        }
        if let Some(deadline) = shutdown_deadline {
            if pool.is_empty() {
                // A last report, so the daemon counts everything the workers served.
                let _ = heartbeat.send_final(&mut control, FINAL_REPORT_WITHIN, || Report {
                    figures: pool.figures(),
                    workers: pool.reports(Instant::now()),
                    ..Report::default()
                });
                tracing::info!("manager stopped");
                return Ok(());
            }
            if now >= deadline {
                tracing::warn!("shutdown deadline passed: killing remaining workers");
                pool.kill_all();
                return Ok(());
            }
        }
        let wake = Wake::At(heartbeat.due_at()).or_at(next_check).or_at_any(pool.next_deadline());
        event_loop.wait(wake).context("epoll_wait")?;
        while let Some(ready) = event_loop.next_ready() {
            match ready.token {
                token if token == control_token => {
                    if let Some(deadline) = handle_control(&mut control, &mut pool, event_loop.registry()) {
                        shutdown_deadline.get_or_insert(deadline);
                    }
                }
                token if token == lifeline_token => {
                    tracing::warn!("daemon gone: manager exiting");
                    pool.kill_all();
                    return Ok(());
                }
                token if token == signals_token => {
                    if signals.pending().contains(&Event::Child) {
                        pool.reap(event_loop.registry(), Instant::now());
                    }
                }
                worker => {
                    pool.drain_messages(worker, Instant::now());
                    // Room at a worker only matters for connections we hold; stranded
                    // lanes are looked at every check (a heartbeat also wakes us here).
                    if ready.writable {
                        pool.deliver_pending();
                    }
                }
            }
        }
        let now = Instant::now();
        if now >= next_check {
            next_check = now + CHECK_INTERVAL;
            pool.check(now);
            pool.rescue_strays();
        }
        pool.kill_overdue(now);
    }
}

/// Applies the daemon's messages; returns a deadline when told to shut down.
fn handle_control(control: &mut ManagerControl, pool: &mut WorkerPool, registry: &mio::Registry) -> Option<Instant> {
    let mut deadline = None;
    loop {
        let msg = match control.recv() {
            Ok(Recv::Message(msg)) => msg,
            Ok(Recv::Empty) => return deadline,
            Err(RecvError::Protocol(e)) => {
                tracing::warn!(error = %e, "bad message from the daemon skipped");
                continue;
            }
            Ok(Recv::Closed) | Err(RecvError::Io(_)) => {
                tracing::warn!("control channel closed: manager shutting down");
                pool.shutdown(Duration::from_millis(0), false);
                return Some(Instant::now());
            }
        };
        match msg {
            ToManager::ReopenLog(fd) => match fd.into_owned() {
                Ok(fd) => pool.set_access_log(Some(fd)),
                Err(e) => tracing::warn!(error = %e, "cannot take the reopened access log"),
            },
            ToManager::Lanes { first, lanes, senders } => pool.add_lanes(first, lanes, senders),
            ToManager::Shutdown { deadline_ms, hand_over } => {
                let grace = Duration::from_millis(deadline_ms);
                pool.shutdown(grace, hand_over);
                deadline = Some(Instant::now() + grace);
            }
            ToManager::Drain | ToManager::Resume => {
                pool.set_draining(matches!(msg, ToManager::Drain));
                // Queued to every worker ahead of anything the operator does next.
                pool.outbox.push(FromManager::Applied);
            }
            ToManager::Scale { workers } => pool.scale(workers, registry),
            ToManager::RestartWorkers { id } => pool.restart(id, registry),
            ToManager::Tls(tls) => pool.set_tls(*tls),
            ToManager::TicketKeys(keys) => pool.set_ticket_keys(*keys),
            ToManager::Reconfigure(config) => pool.reconfigure(*config, registry),
            ToManager::Bootstrap(_) => tracing::warn!("a second bootstrap: ignored"),
        }
    }
}
