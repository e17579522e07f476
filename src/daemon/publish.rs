//! Turning the daemon's view of its tree into the published status and figures.

use super::roles::{RoleKind, RoleProcess};
use super::{Daemon, State};
use crate::ipc::WorkerReport;
use crate::observe::{HttpTotals, Observed, RoleFigures};
use crate::supervise::ByReason;
use std::time::Instant;
use webd_proto::WorkerState;
use webd_proto::{ConnectionStatus, ProcessStatus, Status, WorkerStatus};

impl Daemon {
    /// Folds the latest reports into totals and publishes status and figures; returns
    /// whether the tree is ready to serve.
    pub(super) fn publish(&mut self, now: Instant) -> bool {
        self.fold_reports();
        let workers = self.worker_reports();
        let http = self.http_totals();
        let connections = ConnectionStatus {
            accepted: self.carried.connections_accepted + self.listener_totals.accepted,
            active: workers.iter().map(|w| w.counters.active).sum(),
        };
        let requests_total = http.requests_by_code.iter().map(|(_, n)| n).sum();
        let status = self.status(now, &workers, connections.clone(), requests_total);
        let not_ready = self.not_ready(&workers);
        let ready = not_ready.is_none();
        let observed = Observed {
            status: Some(status),
            not_ready,
            draining: self.state == State::Draining,
            roles: [
                ("listener", role_figures(&mut self.listener, now, self.carried.restarts[0])),
                ("manager", role_figures(&mut self.manager, now, self.carried.restarts[1])),
                ("worker", self.worker_figures(&workers)),
            ]
            .into_iter()
            .collect(),
            workers_by_state: WorkerState::ALL
                .iter()
                .map(|s| (s.to_string(), workers.iter().filter(|w| w.state == *s).count() as u64))
                .collect(),
            worker_utilization: workers
                .iter()
                .filter(|w| w.state != WorkerState::Draining)
                .map(|w| (w.id, w.utilization))
                .collect(),
            connections_accepted: connections.accepted,
            connections_active: connections.active,
            upgrades: self.carried.upgrades,
            http,
            generation: 0,
        };
        let mut shared = self.observed.lock();
        let generation = shared.generation + 1;
        *shared = Observed { generation, ..observed };
        ready
    }

    /// Folds every report into the monotonic totals. Reports are cumulative per process
    /// and keyed by the pid inside them, so folding one twice adds nothing; a pid is
    /// forgotten only once no report mentions it any more.
    fn fold_reports(&mut self) {
        self.listener.read_retiring_reports();
        self.manager.read_retiring_reports();
        // Every heartbeat in the order received: an exited worker's final figures are in
        // one manager heartbeat only, which a newer one may already have followed.
        for hb in self.listener.unfolded.drain(..) {
            self.listener_totals.fold(hb.pid, &hb.counters);
        }
        for hb in self.manager.unfolded.drain(..) {
            self.pool_totals.fold(hb.pid, &hb.counters);
            for w in hb.workers.iter().filter(|w| w.pid != 0) {
                self.worker_totals.fold(w.pid, &w.counters);
            }
        }
        let managers: Vec<&crate::ipc::Heartbeat> =
            self.manager.last.iter().chain(&self.manager.retiring_reports).collect();
        let live_workers: Vec<u32> = managers.iter().flat_map(|hb| hb.workers.iter().map(|w| w.pid)).collect();
        let live_managers: Vec<u32> = managers.iter().map(|hb| hb.pid).collect();
        self.worker_totals.retain_pids(|p| live_workers.contains(&p));
        self.pool_totals.retain_pids(|p| live_managers.contains(&p));
        let live_listeners: Vec<u32> =
            self.listener.last.iter().chain(&self.listener.retiring_reports).map(|hb| hb.pid).collect();
        self.listener_totals.retain_pids(|p| live_listeners.contains(&p));
        // Exited processes' final reports are folded now; drop them.
        let (listener_gone, manager_gone) = (self.listener.exited_pids(), self.manager.exited_pids());
        self.listener.retiring_reports.retain(|hb| !listener_gone.contains(&hb.pid));
        self.manager.retiring_reports.retain(|hb| !manager_gone.contains(&hb.pid));
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
                    active_connections: w.counters.active,
                    requests: w.counters.requests,
                    utilization: w.utilization,
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

    fn worker_figures(&self, workers: &[WorkerReport]) -> RoleFigures {
        let live = workers.iter().filter(|w| w.state != WorkerState::Draining);
        RoleFigures {
            up: workers.iter().any(|w| w.state.is_serving()),
            heartbeat_age_seconds: live.map(|w| w.heartbeat_age_ms / 1000.0).fold(0.0, f64::max),
            heartbeats_missed: self.pool_totals.missed_heartbeats,
            restarts: self.pool_totals.restarts + self.carried.restarts[2],
            heartbeat_latency: self.pool_totals.latency.clone(),
        }
    }

    /// HTTP totals of our workers on top of those carried from the daemon we replaced.
    pub(super) fn http_totals(&self) -> HttpTotals {
        let mut by_code = self.worker_totals.requests_by_code.clone();
        for (code, n) in &self.carried.requests_by_code {
            *by_code.entry(*code).or_default() += n;
        }
        let mut duration = self.worker_totals.duration.clone();
        if duration.counts.len() == self.carried.duration_counts.len() {
            for (total, carried) in duration.counts.iter_mut().zip(&self.carried.duration_counts) {
                *total += carried;
            }
        } else if duration.count() == 0 {
            duration.counts = self.carried.duration_counts.clone();
        }
        duration.sum += self.carried.duration_sum;
        HttpTotals {
            requests_by_code: sorted(by_code.into_iter().collect()),
            response_bytes: self.carried.response_bytes + self.worker_totals.response_bytes,
            duration,
        }
    }
}

fn role_figures<K: RoleKind>(role: &mut RoleProcess<K>, now: Instant, carried_restarts: ByReason) -> RoleFigures {
    RoleFigures {
        up: role.sup.slot.is_up(),
        heartbeat_age_seconds: role.sup.slot.heartbeat_age(now).as_secs_f64(),
        heartbeats_missed: role.sup.slot.missed_total,
        restarts: role.sup.slot.restarts_by_reason + carried_restarts,
        heartbeat_latency: role.latency.clone(),
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

fn sorted(mut v: Vec<(u16, u64)>) -> Vec<(u16, u64)> {
    v.sort_unstable();
    v
}
