//! The child side of heartbeats: when the next one is due, and how it is stamped.

use crate::ipc::{Channel, Counters, Heartbeat, Message, Role, WorkerReport};
use crate::sys::monotonic_ns;
use std::time::{Duration, Instant};

/// Sends a status message every interval.
pub struct Heartbeater {
    role: Role,
    pid: u32,
    seq: u64,
    interval: Duration,
    next_at: Instant,
}

impl Heartbeater {
    pub fn new(role: Role, interval: Duration) -> Heartbeater {
        Heartbeater { role, pid: std::process::id(), seq: 0, interval, next_at: Instant::now() }
    }

    /// Time until the next heartbeat is due (zero when overdue).
    pub fn until_due(&self, now: Instant) -> Duration {
        self.next_at.saturating_duration_since(now)
    }

    /// Makes the next `tick` send at once (fresh figures before a command's answer).
    pub fn force(&mut self, now: Instant) {
        self.next_at = now;
    }

    /// Sends a heartbeat if one is due. A full channel (supervisor not reading) drops
    /// this one: the supervisor will see the gap, which is the truth.
    pub fn tick(&mut self, now: Instant, channel: &mut Channel, counters: &Counters, workers: &[WorkerReport]) {
        if now < self.next_at {
            return;
        }
        self.next_at = now + self.interval;
        self.seq += 1;
        let hb = Heartbeat {
            role: Some(self.role),
            pid: self.pid,
            seq: self.seq,
            sent_ns: monotonic_ns(),
            counters: counters.clone(),
            workers: workers.to_vec(),
        };
        if let Err(e) = channel.send(&Message::Heartbeat(hb), &[]) {
            if e.kind() != std::io::ErrorKind::WouldBlock {
                tracing::debug!(error = %e, "heartbeat not sent");
            }
        }
    }
}
