//! The child side of heartbeats: when the next one is due, and how it is stamped.

use crate::ipc::{Channel, Counters, Heartbeat, Message, Role, WorkerReport};
use crate::sys::monotonic_ns;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// Sends a status message every interval.
pub struct Heartbeater {
    role: Role,
    pid: u32,
    seq: u64,
    interval: Duration,
    next_at: Instant,
    keeper_pid: Option<u32>,
}

impl Heartbeater {
    pub fn new(role: Role, interval: Duration) -> Heartbeater {
        Heartbeater { role, pid: std::process::id(), seq: 0, interval, next_at: Instant::now(), keeper_pid: None }
    }

    /// The listener's keeper, reported with every heartbeat from now on.
    pub fn set_keeper_pid(&mut self, pid: Option<u32>) {
        self.keeper_pid = pid;
    }

    /// Time until the next heartbeat is due (zero when overdue).
    pub fn until_due(&self, now: Instant) -> Duration {
        self.next_at.saturating_duration_since(now)
    }

    /// Makes the next `tick` send at once (fresh figures before a command's answer).
    pub fn force(&mut self, now: Instant) {
        self.next_at = now;
    }

    /// Sends a heartbeat if one is due, with the figures `figures` builds (called only
    /// then, and moved into the message). A full channel (supervisor not reading) drops
    /// this one: the supervisor will see the gap, which is the truth. Returns false when
    /// the supervisor is gone (its end of the channel is closed).
    pub fn tick(
        &mut self,
        now: Instant,
        channel: &mut Channel,
        figures: impl FnOnce() -> (Counters, Vec<WorkerReport>),
    ) -> bool {
        if now < self.next_at {
            return true;
        }
        self.next_at = now + self.interval;
        self.seq += 1;
        let (counters, workers) = figures();
        let hb = Heartbeat {
            role: Some(self.role),
            pid: self.pid,
            seq: self.seq,
            sent_ns: monotonic_ns(),
            counters,
            workers,
            keeper_pid: self.keeper_pid,
        };
        match channel.send(&Message::Heartbeat(hb), &[]) {
            Ok(()) => true,
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => false,
            Err(e) => {
                if e.kind() != ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
                true
            }
        }
    }
}
