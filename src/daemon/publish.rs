//! Turning the daemon's view of its tree into the published status and figures.

use super::roles::RoleProcess;
use super::{Daemon, State};
use crate::ipc::WorkerReport;
use crate::observe::{HttpTotals, Observed, RoleFigures};
use std::time::Instant;
use webd_proto::{ConnectionStatus, ProcessStatus, Status, WorkerStatus};

const WORKER_STATES: [&str; 4] = ["idle", "busy", "draining", "starting"];

impl Daemon {
    /// Folds the latest reports into totals and publishes status and figures; returns
    /// whether the tree is ready to serve.
    pub(super) fn publish(&mut self, now: Instant) -> bool {
        self.fold_reports();
        let workers = self.worker_reports();
        let status = self.status(now, &workers);
        let not_ready = self.not_ready(&workers);
        let ready = not_ready.is_none();
        let observed = Observed {
            status: Some(status),
            not_ready,
            draining: self.state == State::Draining,
            roles: [
                ("listener", role_figures(&mut self.listener, now)),
                ("manager", role_figures(&mut self.manager, now)),
                ("worker", self.worker_figures(&workers)),
            ]
            .into_iter()
            .collect(),
            workers_by_state: WORKER_STATES
                .iter()
                .map(|s| (s.to_string(), workers.iter().filter(|w| w.state == *s).count() as u64))
                .collect(),
            worker_utilization: workers
                .iter()
                .filter(|w| w.state != "draining")
                .map(|w| (w.id, w.utilization))
                .collect(),
            connections_accepted: self.listener_totals.accepted,
            connections_active: workers.iter().map(|w| w.counters.active).sum(),
            http: HttpTotals {
                requests_by_code: sorted(self.worker_totals.requests_by_code.iter().map(|(c, n)| (*c, *n)).collect()),
                response_bytes: self.worker_totals.response_bytes,
                duration: self.worker_totals.duration.clone(),
            },
        };
        *self.observed.lock() = observed;
        ready
    }

    fn fold_reports(&mut self) {
        if let (Some(pid), Some(hb)) = (self.listener.slot.pid, self.listener.last.as_ref()) {
            self.listener_totals.fold(pid.as_raw() as u32, &hb.counters);
            self.listener_totals.retain_pids(|p| p == pid.as_raw() as u32);
        }
        if let (Some(pid), Some(hb)) = (self.manager.slot.pid, self.manager.last.as_ref()) {
            self.pool_totals.fold(pid.as_raw() as u32, &hb.counters);
            self.pool_totals.retain_pids(|p| p == pid.as_raw() as u32);
            for w in hb.workers.iter().filter(|w| w.pid != 0) {
                self.worker_totals.fold(w.pid, &w.counters);
            }
            let live: Vec<u32> = hb.workers.iter().map(|w| w.pid).collect();
            self.worker_totals.retain_pids(|p| live.contains(&p));
        }
    }

    fn worker_reports(&self) -> Vec<WorkerReport> {
        if self.manager.slot.pid.is_none() {
            return Vec::new();
        }
        self.manager.last.as_ref().map(|hb| hb.workers.clone()).unwrap_or_default()
    }

    fn status(&mut self, now: Instant, workers: &[WorkerReport]) -> Status {
        Status {
            version: crate::VERSION.to_string(),
            pid: std::process::id(),
            uptime_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
            state: self.state.as_str().to_string(),
            listen: self.inherit.config.listen.iter().map(|a| a.to_string()).collect(),
            processes: vec![process_status(&mut self.listener, now), process_status(&mut self.manager, now)],
            workers: workers
                .iter()
                .map(|w| WorkerStatus {
                    id: w.id,
                    pid: w.pid,
                    state: w.state.clone(),
                    restarts: w.restarts,
                    active_connections: w.counters.active,
                    requests: w.counters.requests,
                    utilization: w.utilization,
                })
                .collect(),
            connections: ConnectionStatus {
                accepted: self.listener_totals.accepted,
                active: workers.iter().map(|w| w.counters.active).sum(),
            },
            requests_total: self.worker_totals.requests_by_code.values().sum(),
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
        if !self.listener.slot.is_up() {
            return Some("listener is not running".into());
        }
        if !self.manager.slot.is_up() {
            return Some("manager is not running".into());
        }
        if !workers.iter().any(|w| w.state == "idle" || w.state == "busy") {
            return Some("no worker is running".into());
        }
        None
    }

    fn worker_figures(&self, workers: &[WorkerReport]) -> RoleFigures {
        let live = workers.iter().filter(|w| w.state != "draining");
        RoleFigures {
            up: workers.iter().any(|w| w.state == "idle" || w.state == "busy"),
            heartbeat_age_seconds: live.map(|w| w.heartbeat_age_ms / 1000.0).fold(0.0, f64::max),
            heartbeats_missed: self.pool_totals.missed_heartbeats,
            restarts: self.pool_totals.restarts,
            heartbeat_latency: self.pool_totals.latency.clone(),
        }
    }
}

fn role_figures(role: &mut RoleProcess, now: Instant) -> RoleFigures {
    RoleFigures {
        up: role.slot.is_up(),
        heartbeat_age_seconds: role.slot.heartbeat_age(now).as_secs_f64(),
        heartbeats_missed: role.slot.missed_total,
        restarts: role.slot.restarts_by_reason,
        heartbeat_latency: role.latency.clone(),
    }
}

fn process_status(role: &mut RoleProcess, now: Instant) -> ProcessStatus {
    ProcessStatus {
        role: role.role.to_string(),
        pid: role.slot.pid.map(|p| p.as_raw() as u32).unwrap_or(0),
        state: role.slot.state(now).to_string(),
        restarts: role.slot.restarts(),
        heartbeat_age_ms: role.slot.heartbeat_age(now).as_secs_f64() * 1000.0,
        heartbeat_latency_ms: role.slot.latency_ns as f64 / 1e6,
    }
}

fn sorted(mut v: Vec<(u16, u64)>) -> Vec<(u16, u64)> {
    v.sort_unstable();
    v
}
