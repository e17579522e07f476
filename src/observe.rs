//! What the daemon knows about its tree, published for the control socket and the
//! admin endpoint.
//!
//! The supervision loop is the only writer: it folds heartbeats into an `Observed`
//! value and publishes it; readers (control and admin threads) take a short lock and
//! copy what they need. Counters are accumulated from per-process deltas, so they never
//! go down when a child restarts.

use crate::ipc::{Counters, DURATION_BUCKETS};
use crate::supervise::ByReason;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Upper bounds (seconds) of the heartbeat-latency histogram: microseconds to a second.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0];

/// A cumulative histogram: `counts[i]` observations fell in bucket `i` (not cumulative
/// per bucket; the exporter sums), the last entry counts those above every bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Histogram {
    pub fn with_buckets(n: usize) -> Histogram {
        Histogram { counts: vec![0; n + 1], sum: 0.0 }
    }

    pub fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.len() != bounds.len() + 1 {
            self.counts = vec![0; bounds.len() + 1];
        }
        let i = bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += value;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// Figures of one role (listener, manager, or the workers taken together).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleFigures {
    /// 1 when the role is up (for workers: at least one worker up).
    pub up: bool,
    pub heartbeat_age_seconds: f64,
    pub heartbeats_missed: u64,
    pub restarts: ByReason,
    pub heartbeat_latency: Histogram,
}

/// Totals over every worker process that ever ran (monotonic).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpTotals {
    pub requests_by_code: Vec<(u16, u64)>,
    pub response_bytes: u64,
    /// Request durations in `DURATION_BUCKETS`.
    pub duration: Histogram,
}

/// Everything the control and admin planes show.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub status: Option<webd_proto::Status>,
    /// `None` when ready to serve; otherwise the reason it is not.
    pub not_ready: Option<String>,
    pub draining: bool,
    pub roles: HashMap<&'static str, RoleFigures>,
    /// Workers by state (`idle`, `busy`, `draining`, `starting`).
    pub workers_by_state: Vec<(String, u64)>,
    /// Utilization per worker id, 0..1.
    pub worker_utilization: Vec<(u32, f64)>,
    pub connections_accepted: u64,
    pub connections_active: u64,
    pub http: HttpTotals,
    /// Binary upgrades this tree descends from.
    pub upgrades: u64,
    /// Bumped by every publication: readers may reuse what they derived from the same one.
    pub generation: u64,
}

/// Counters a new daemon continues from after a binary upgrade (see the README for
/// what is and is not carried).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CarriedTotals {
    pub upgrades: u64,
    pub connections_accepted: u64,
    pub requests_by_code: Vec<(u16, u64)>,
    pub response_bytes: u64,
    pub duration_counts: Vec<u64>,
    pub duration_sum: f64,
    /// Restarts by role (listener, manager, worker) and reason (crash, hang, manual).
    pub restarts: [ByReason; 3],
}

/// The handle both planes hold.
pub type SharedObserved = Arc<Mutex<Observed>>;

/// Folds per-process cumulative counters into monotonic totals.
///
/// Each process reports counters that grow from zero over its life; we remember the
/// last value per pid and add only the growth, so a restart (a new pid starting at
/// zero) never makes a total go down.
#[derive(Debug, Default)]
pub struct Accumulator {
    last: HashMap<u32, Counters>,
    pub accepted: u64,
    pub requests_by_code: HashMap<u16, u64>,
    pub response_bytes: u64,
    pub duration: Histogram,
    pub missed_heartbeats: u64,
    pub restarts: ByReason,
    pub latency: Histogram,
}

impl Accumulator {
    /// Adds the growth of `counters` since the last report of `pid`.
    pub fn fold(&mut self, pid: u32, counters: &Counters) {
        let prev = self.last.entry(pid).or_default();
        self.accepted += counters.accepted.saturating_sub(prev.accepted);
        self.response_bytes += counters.response_bytes.saturating_sub(prev.response_bytes);
        for (code, n) in &counters.codes {
            let before = prev.codes.iter().find(|(c, _)| c == code).map_or(0, |(_, n)| *n);
            *self.requests_by_code.entry(*code).or_default() += n.saturating_sub(before);
        }
        fold_histogram(&mut self.duration, DURATION_BUCKETS.len(), &counters.duration_buckets, &prev.duration_buckets);
        self.duration.sum += counters.duration_sum_ns.saturating_sub(prev.duration_sum_ns) as f64 / 1e9;
        fold_histogram(&mut self.latency, LATENCY_BUCKETS.len(), &counters.latency_buckets, &prev.latency_buckets);
        self.latency.sum += counters.latency_sum_ns.saturating_sub(prev.latency_sum_ns) as f64 / 1e9;
        self.missed_heartbeats += counters.missed_heartbeats.saturating_sub(prev.missed_heartbeats);
        self.restarts += counters.restarts.growth_since(&prev.restarts);
        *prev = counters.clone();
    }

    /// Forgets pids that are gone (their final growth was folded already).
    pub fn retain_pids(&mut self, live: impl Fn(u32) -> bool) {
        self.last.retain(|pid, _| live(*pid));
    }
}

/// Adds the per-bucket growth from `before` to `now` into `into`.
fn fold_histogram(into: &mut Histogram, bounds: usize, now: &[u64], before: &[u64]) {
    if into.counts.len() != bounds + 1 {
        *into = Histogram::with_buckets(bounds);
    }
    for (i, n) in now.iter().enumerate().take(into.counts.len()) {
        into.counts[i] += n.saturating_sub(before.get(i).copied().unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_never_go_down_when_a_process_restarts() {
        let mut acc = Accumulator::default();
        let c = |requests: u64, bytes: u64| Counters {
            requests,
            response_bytes: bytes,
            codes: vec![(200, requests)],
            ..Default::default()
        };
        acc.fold(10, &c(5, 500));
        acc.fold(10, &c(8, 800));
        // pid 10 crashed; its replacement starts from zero.
        acc.fold(11, &c(1, 100));
        assert_eq!(acc.requests_by_code.get(&200), Some(&9));
        assert_eq!(acc.response_bytes, 900);
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::default();
        h.observe(&LATENCY_BUCKETS, 0.00002);
        h.observe(&LATENCY_BUCKETS, 5.0);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[LATENCY_BUCKETS.len()], 1);
        assert_eq!(h.count(), 2);
    }
}
