//! Supervision rules shared by the daemon (for the listener and manager) and the
//! manager (for its workers): heartbeat deadlines, hang detection, restart backoff.
//!
//! A `Slot` is one supervised position ("listener", "worker 3"); processes come and go
//! in it. The rules (docs/reference.md): a check every 200 ms; a heartbeat older than
//! the timeout is a miss; 3 consecutive misses = hung. Restarts back off 100 ms doubling
//! to 5 s while a slot keeps failing; more than 5 restarts within 10 s is `backoff`.

mod supervised;

pub use supervised::{Child, Exited, Process, Supervised, Which};

use crate::sys::Pid;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use webd_proto::ProcessState;

/// How often supervisors check heartbeats.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Consecutive misses after which a child is hung.
pub const MISSES_FOR_HANG: u32 = 3;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const BACKOFF_WINDOW: Duration = Duration::from_secs(10);
const BACKOFF_BURST: usize = 5;

/// Why a process was restarted (the `reason` label of `webd_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Crash,
    Hang,
    Manual,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Crash => "crash",
            Reason::Hang => "hang",
            Reason::Manual => "manual",
        }
    }

    pub const ALL: [Reason; 3] = [Reason::Crash, Reason::Hang, Reason::Manual];

    /// Position in `ALL`, the order of every per-reason array.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A count per restart reason (crash, hang, manual). On the wire (heartbeats, the
/// upgrade's carried totals) it is the array `[crash, hang, manual]`, as before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "[u64; 3]", into = "[u64; 3]")]
pub struct ByReason([u64; 3]);

impl ByReason {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Each reason with its count, in `Reason::ALL` order.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL.into_iter().zip(self.0)
    }

    /// What grew since `before` (a process's counts only grow; never below zero).
    pub fn growth_since(&self, before: &ByReason) -> ByReason {
        ByReason(std::array::from_fn(|i| self.0[i].saturating_sub(before.0[i])))
    }
}

impl From<[u64; 3]> for ByReason {
    fn from(counts: [u64; 3]) -> Self {
        ByReason(counts)
    }
}

impl From<ByReason> for [u64; 3] {
    fn from(counts: ByReason) -> Self {
        counts.0
    }
}

impl std::ops::Index<Reason> for ByReason {
    type Output = u64;
    fn index(&self, reason: Reason) -> &u64 {
        &self.0[reason.index()]
    }
}

impl std::ops::IndexMut<Reason> for ByReason {
    fn index_mut(&mut self, reason: Reason) -> &mut u64 {
        &mut self.0[reason.index()]
    }
}

impl std::ops::AddAssign for ByReason {
    fn add_assign(&mut self, other: ByReason) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }
}

impl std::ops::Add for ByReason {
    type Output = ByReason;
    fn add(mut self, other: ByReason) -> ByReason {
        self += other;
        self
    }
}

/// What a heartbeat check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Healthy,
    /// The heartbeat is late; the count of consecutive misses so far.
    Missed(u32),
    Hung,
    /// No process in the slot.
    Vacant,
}

/// One supervised position and the process currently in it.
#[derive(Debug)]
pub struct Slot {
    pub name: String,
    pub pid: Option<Pid>,
    last_heartbeat: Instant,
    got_heartbeat: bool,
    misses: u32,
    pub missed_total: u64,
    /// Last heartbeat latency (receive − send, CLOCK_MONOTONIC), nanoseconds.
    pub latency_ns: u64,
    /// When the next process for this slot is due to start.
    pub start_due: Option<Instant>,
    recent_restarts: VecDeque<Instant>,
    pub restarts_by_reason: ByReason,
}

impl Slot {
    pub fn new(name: impl Into<String>, now: Instant) -> Slot {
        Slot {
            name: name.into(),
            pid: None,
            last_heartbeat: now,
            got_heartbeat: false,
            misses: 0,
            missed_total: 0,
            latency_ns: 0,
            start_due: Some(now),
            recent_restarts: VecDeque::new(),
            restarts_by_reason: ByReason::default(),
        }
    }

    pub fn restarts(&self) -> u64 {
        self.restarts_by_reason.total()
    }

    /// A new process now occupies the slot; its heartbeat age counts from its start.
    pub fn spawned(&mut self, pid: Pid, now: Instant) {
        self.pid = Some(pid);
        self.last_heartbeat = now;
        self.got_heartbeat = false;
        self.misses = 0;
        self.start_due = None;
    }

    /// Records a heartbeat; returns true when it is the process's first.
    pub fn heartbeat(&mut self, sent_ns: u64, received_ns: u64, now: Instant) -> bool {
        self.latency_ns = received_ns.saturating_sub(sent_ns);
        self.last_heartbeat = now;
        self.misses = 0;
        let first = !self.got_heartbeat;
        self.got_heartbeat = true;
        first
    }

    /// Spawned, and no heartbeat from it yet.
    pub fn is_coming_up(&self) -> bool {
        self.pid.is_some() && !self.got_heartbeat
    }

    /// True once the current process has sent a heartbeat.
    pub fn is_up(&self) -> bool {
        self.pid.is_some() && self.got_heartbeat
    }

    pub fn heartbeat_age(&self, now: Instant) -> Duration {
        if self.pid.is_none() {
            return Duration::ZERO;
        }
        now.saturating_duration_since(self.last_heartbeat)
    }

    /// The periodic check: counts a miss when the last heartbeat is older than `timeout`.
    pub fn check(&mut self, now: Instant, timeout: Duration) -> Check {
        if self.pid.is_none() {
            return Check::Vacant;
        }
        if self.heartbeat_age(now) <= timeout {
            return Check::Healthy;
        }
        self.misses += 1;
        self.missed_total += 1;
        if self.misses >= MISSES_FOR_HANG {
            Check::Hung
        } else {
            Check::Missed(self.misses)
        }
    }

    /// The process left the slot (exited, or was declared hung and is being retired):
    /// counts a restart and schedules the next start after the backoff delay.
    pub fn vacate(&mut self, reason: Reason, now: Instant) -> Duration {
        self.pid = None;
        self.got_heartbeat = false;
        let delay = self.record_restart(reason, now);
        self.start_due = Some(now + delay);
        delay
    }

    /// Counts a restart; returns how long to wait before the next start.
    fn record_restart(&mut self, reason: Reason, now: Instant) -> Duration {
        self.restarts_by_reason[reason] += 1;
        self.prune(now);
        if reason == Reason::Manual {
            // An operator's restart is not a failure: it neither feeds the backoff nor
            // forgives the failures before it.
            return Duration::ZERO;
        }
        self.recent_restarts.push_back(now);
        let failures = self.recent_restarts.len() as u32;
        BACKOFF_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(BACKOFF_MAX)
    }

    fn prune(&mut self, now: Instant) {
        while let Some(t) = self.recent_restarts.front() {
            if now.saturating_duration_since(*t) > BACKOFF_WINDOW {
                self.recent_restarts.pop_front();
            } else {
                break;
            }
        }
    }

    /// More than 5 restarts within 10 s and not yet healthy again.
    pub fn in_backoff(&mut self, now: Instant) -> bool {
        self.prune(now);
        self.recent_restarts.len() > BACKOFF_BURST && !self.is_up()
    }

    /// Logs a restart just scheduled by `vacate`, as a backoff warning once the slot is
    /// failing repeatedly.
    pub fn log_restart(&mut self, reason: Reason, delay: Duration, now: Instant) {
        let backoff = self.in_backoff(now);
        let (name, restarts, retry_ms) = (self.name.as_str(), self.restarts(), delay.as_millis() as u64);
        if reason == Reason::Manual {
            tracing::info!(process = name, restarts, "restarting on request");
        } else if backoff {
            tracing::warn!(
                process = name,
                reason = reason.as_str(),
                restarts,
                retry_ms,
                "backoff: more than 5 restarts in 10 s"
            );
        } else {
            tracing::info!(process = name, reason = reason.as_str(), restarts, retry_ms, "restart scheduled");
        }
    }

    /// The slot's state as status and metrics show it.
    pub fn state(&mut self, now: Instant) -> ProcessState {
        if self.in_backoff(now) {
            ProcessState::Backoff
        } else if self.is_up() {
            ProcessState::Running
        } else if self.pid.is_some() || self.start_due.is_some() {
            ProcessState::Starting
        } else {
            ProcessState::Stopped
        }
    }
}

/// A process taken out of its slot that is being stopped: it got a shutdown message
/// and is killed if still alive at `kill_at`.
#[derive(Debug)]
pub struct Retiring<C> {
    pub pid: Pid,
    pub kill_at: Instant,
    /// Kept open so the process drains instead of taking EOF as "supervisor gone".
    pub channel: C,
}

/// `kill_at` of a process already sent SIGKILL: its exit arrives by SIGCHLD.
const KILLED: Duration = Duration::from_secs(3600);

impl<C> Retiring<C> {
    /// A process SIGKILLed already, kept until it is reaped.
    pub fn killed(pid: Pid, channel: C, now: Instant) -> Retiring<C> {
        Retiring { pid, kill_at: now + KILLED, channel }
    }

    /// SIGKILLs the process if its time is up; true when it did.
    pub fn kill_if_overdue(&mut self, now: Instant) -> bool {
        if now < self.kill_at {
            return false;
        }
        crate::sys::process::signal(self.pid, nix::sys::signal::Signal::SIGKILL);
        self.kill_at = now + KILLED;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_late_checks_make_a_hang_and_a_heartbeat_resets_them() {
        let t0 = Instant::now();
        let mut slot = Slot::new("listener", t0);
        slot.spawned(Pid::from_raw(42), t0);
        let timeout = Duration::from_millis(200);
        assert_eq!(slot.check(t0 + Duration::from_millis(100), timeout), Check::Healthy);
        assert_eq!(slot.check(t0 + Duration::from_millis(300), timeout), Check::Missed(1));
        slot.heartbeat(0, 0, t0 + Duration::from_millis(350));
        assert_eq!(slot.check(t0 + Duration::from_millis(600), timeout), Check::Missed(1));
        assert_eq!(slot.check(t0 + Duration::from_millis(800), timeout), Check::Missed(2));
        assert_eq!(slot.check(t0 + Duration::from_millis(1000), timeout), Check::Hung);
    }

    #[test]
    fn failures_back_off_doubling_to_five_seconds_and_mark_backoff() {
        let t0 = Instant::now();
        let mut slot = Slot::new("manager", t0);
        let mut delays = Vec::new();
        for i in 0..8 {
            let now = t0 + Duration::from_millis(10 * i);
            slot.spawned(Pid::from_raw(100 + i as i32), now);
            delays.push(slot.vacate(Reason::Crash, now).as_millis());
        }
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert!(slot.in_backoff(t0 + Duration::from_millis(100)));
        assert_eq!(slot.state(t0 + Duration::from_millis(100)), ProcessState::Backoff);
        // After a quiet window the count starts over.
        let later = t0 + Duration::from_secs(30);
        assert!(!slot.in_backoff(later));
        slot.spawned(Pid::from_raw(9), later);
        assert_eq!(slot.vacate(Reason::Crash, later).as_millis(), 100);
        assert_eq!(slot.restarts(), 9);
    }

    #[test]
    fn manual_restarts_start_at_once() {
        let t0 = Instant::now();
        let mut slot = Slot::new("worker 0", t0);
        slot.spawned(Pid::from_raw(5), t0);
        assert_eq!(slot.vacate(Reason::Manual, t0), Duration::ZERO);
        assert_eq!(slot.restarts_by_reason, ByReason::from([0, 0, 1]));
    }

    #[test]
    fn manual_restarts_neither_feed_nor_reset_the_backoff() {
        let t0 = Instant::now();
        let mut slot = Slot::new("manager", t0);
        for i in 0..7 {
            slot.spawned(Pid::from_raw(10 + i), t0);
            assert_eq!(slot.vacate(Reason::Manual, t0), Duration::ZERO);
        }
        slot.spawned(Pid::from_raw(20), t0);
        assert_eq!(slot.vacate(Reason::Crash, t0).as_millis(), 100, "first failure after manual restarts");
        assert_ne!(slot.state(t0), ProcessState::Backoff);
        slot.spawned(Pid::from_raw(21), t0);
        assert_eq!(slot.vacate(Reason::Crash, t0).as_millis(), 200);
        slot.spawned(Pid::from_raw(22), t0);
        assert_eq!(slot.vacate(Reason::Manual, t0), Duration::ZERO);
        slot.spawned(Pid::from_raw(23), t0);
        assert_eq!(slot.vacate(Reason::Crash, t0).as_millis(), 400, "a manual restart forgives nothing");
    }
}
