//! Turning the daemon's view of its tree into the published status and figures.

use super::roles::{RoleKind, RoleProcess};
use super::{Daemon, State};
use crate::figures::{ByRole, Figures};
use crate::ipc::WorkerReport;
use crate::observe::{Observed, RoleState};
use std::time::Instant;
use webd_proto::WorkerState;
use webd_proto::{ConnectionStatus, ProcessStatus, Status, WorkerStatus};

impl Daemon {
    /// Folds the latest reports into totals and publishes status and figures; returns
    /// whether the tree is ready to serve.
    pub(super) fn publish(&mut self, now: Instant) -> bool {
        let folded = self.fold_reports();
        let workers = self.worker_reports();
        let figures = self.figures();
        if folded && self.fd_store.keeps_state() {
            let state = self.state_with(figures.clone());
            self.fd_store.keep_state(|| state);
        }
        let connections =
            ConnectionStatus { accepted: figures.accepted, active: workers.iter().map(|w| w.active).sum() };
        let status = self.status(now, &workers, connections.clone(), figures.responses.total());
        let not_ready = self.not_ready(&workers);
        let ready = not_ready.is_none();
        let observed = Observed {
            status: Some(status),
            not_ready,
            draining: self.state == State::Draining,
            roles: ByRole {
                listener: role_state(&self.listener, now),
                manager: role_state(&self.manager, now),
                worker: worker_state(&workers),
            },
            workers_by_state: WorkerState::ALL
                .iter()
                .map(|s| (*s, workers.iter().filter(|w| w.state == *s).count() as u64))
                .collect(),
            worker_utilization: workers
                .iter()
                .filter(|w| w.state != WorkerState::Draining)
                .map(|w| (w.id, w.utilization))
                .collect(),
            connections_active: connections.active,
            figures,
            upgrades: self.upgrades,
            daemon_restarts: self.daemon_restarts,
            certificates: self.inherit.tls.certificates.iter().map(|c| (c.name(), c.not_after)).collect(),
            generation: 0,
        };
        let mut shared = self.observed.lock();
        let generation = shared.generation + 1;
        *shared = Observed { generation, ..observed };
        ready
    }

    /// Everything the tree counted: the children's reports and the daemon's own
    /// supervision of listener and manager, over what the daemon we replaced counted.
    pub(super) fn figures(&self) -> Figures {
        let mut figures = self.totals.total();
        figures.supervision.listener += &self.listener.supervision();
        figures.supervision.manager += &self.manager.supervision();
        figures
    }

    /// Folds every report into the monotonic totals. Reports are cumulative per process
    /// and keyed by the pid inside them, so folding one twice adds nothing; a pid is
    /// forgotten only once no report mentions it any more. True when a report came in.
    fn fold_reports(&mut self) -> bool {
        self.listener.read_retiring_reports();
        self.manager.read_retiring_reports();
        // Every heartbeat in the order received: an exited worker's final figures are in
        // one manager heartbeat only, which a newer one may already have followed.
        let mut folded = false;
        for hb in self.listener.unfolded.drain(..).chain(self.manager.unfolded.drain(..)) {
            folded = true;
            self.totals.fold(hb.pid, &hb.figures);
            for w in hb.workers.iter().filter(|w| w.pid != 0) {
                self.totals.fold(w.pid, &w.figures);
            }
        }
        let reports = || {
            let listeners = self.listener.last.iter().chain(&self.listener.retiring_reports);
            listeners.chain(self.manager.last.iter().chain(&self.manager.retiring_reports))
        };
        let live: Vec<u32> =
            reports().flat_map(|hb| std::iter::once(hb.pid).chain(hb.workers.iter().map(|w| w.pid))).collect();
        self.totals.retain_pids(|p| live.contains(&p));
        // Exited processes' final reports are folded now; drop them.
        let (listener_gone, manager_gone) = (self.listener.exited_pids(), self.manager.exited_pids());
        self.listener.retiring_reports.retain(|hb| !listener_gone.contains(&hb.pid));
        self.manager.retiring_reports.retain(|hb| !manager_gone.contains(&hb.pid));
        folded
    }

    fn worker_reports(&self) -> Vec<WorkerReport> {
        if self.manager.slot().pid.is_none() {
            return Vec::new();
        }
        self.manager.last.as_ref().map(|hb| hb.workers.clone()).unwrap_or_default()
    }

    fn status(
        &mut self,
        now: Instant,
        workers: &[WorkerReport],
        connections: ConnectionStatus,
        requests_total: u64,
    ) -> Status {
        Status {
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            uptime_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
            state: self.state,
            listen: self.listen_bound.iter().map(|a| a.to_string()).collect(),
            admin: self.planes.admin_bound().map(|a| a.to_string()),
            tls_listen: self.tls_listen_bound.iter().map(|a| a.to_string()).collect(),
            certificates: self.inherit.tls.certificates.iter().map(crate::tls::Certificate::status).collect(),
            processes: vec![process_status(&mut self.listener, now), process_status(&mut self.manager, now)],
            workers: workers
                .iter()
                .map(|w| WorkerStatus {
                    id: w.id,
                    pid: w.pid,
                    state: w.state,
                    restarts: w.restarts,
                    active_connections: w.active,
                    requests: w.figures.responses.total(),
                    utilization: w.utilization,
                    keeper_pid: w.keeper_pid,
                })
                .collect(),
            connections,
            requests_total,
        }
    }

    /// Why `/readyz` fails, or `None` when listener, manager and a worker are up and
    /// the daemon is not draining.
    fn not_ready(&self, workers: &[WorkerReport]) -> Option<String> {
        match self.state {
            State::Stopping => return Some("stopping".into()),
            State::Draining => return Some("draining".into()),
            State::Running => {}
        }
        if !self.listener.slot().is_up() {
            return Some("listener is not running".into());
        }
        if !self.manager.slot().is_up() {
            return Some("manager is not running".into());
        }
        if !workers.iter().any(|w| w.state.is_serving()) {
            return Some("no worker is running".into());
        }
        None
    }
}

fn role_state<K: RoleKind>(role: &RoleProcess<K>, now: Instant) -> RoleState {
    RoleState { up: role.sup.slot.is_up(), heartbeat_age_seconds: role.sup.slot.heartbeat_age(now).as_secs_f64() }
}

/// Workers are up while one serves; their heartbeat age is the oldest live one's.
fn worker_state(workers: &[WorkerReport]) -> RoleState {
    let live = workers.iter().filter(|w| w.state != WorkerState::Draining);
    RoleState {
        up: workers.iter().any(|w| w.state.is_serving()),
        heartbeat_age_seconds: live.map(|w| w.heartbeat_age_ms / 1000.0).fold(0.0, f64::max),
    }
}

fn process_status<K: RoleKind>(role: &mut RoleProcess<K>, now: Instant) -> ProcessStatus {
    ProcessStatus {
        role: K::ROLE.to_string(),
        pid: role.sup.slot.pid.map(|p| p.as_raw() as u32).unwrap_or(0),
        state: role.sup.slot.state(now),
        restarts: role.sup.slot.restarts(),
        heartbeat_age_ms: role.sup.slot.heartbeat_age(now).as_secs_f64() * 1000.0,
        heartbeat_latency_ms: role.sup.slot.latency_ns as f64 / 1e6,
        keeper_pid: role
            .last
            .as_ref()
            .filter(|hb| role.sup.slot.pid.is_some_and(|p| p.as_raw() as u32 == hb.pid))
            .and_then(|hb| hb.keeper_pid),
    }
}
