//! The child side of heartbeats: when the next one is due, and how it is stamped.

use crate::figures::Figures;
use crate::ipc::{Channel, Heartbeat, Message, Role, WorkerReport};

/// A channel a child reports on: its heartbeats, in whatever message type its
/// supervisor reads (`Heartbeat` itself, or `FromManager`).
pub trait ReportChannel {
    fn send_heartbeat(&mut self, hb: Heartbeat) -> std::io::Result<()>;
}

impl<S, R: Message> ReportChannel for Channel<S, R>
where
    S: Message,
    for<'a> S::Lending<'a>: From<Heartbeat>,
{
    fn send_heartbeat(&mut self, hb: Heartbeat) -> std::io::Result<()> {
        self.send(&hb.into())
    }
}
use crate::sys::monotonic_ns;
use std::io::ErrorKind;
use std::time::{Duration, Instant};

/// What one heartbeat reports besides liveness.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub figures: Figures,
    /// Worker: connections open now.
    pub active: u64,
    /// Manager: one report per worker process.
    pub workers: Vec<WorkerReport>,
    /// Worker: retiring, it takes nothing more from its lane.
    pub retiring: bool,
}

impl Report {
    pub fn of(figures: Figures) -> Report {
        Report { figures, ..Report::default() }
    }
}

/// How long a process about to exit retries its last heartbeat on a full channel.
pub const FINAL_REPORT_WITHIN: Duration = Duration::from_secs(1);

/// What became of a heartbeat `tick` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Not due yet: nothing was sent.
    NotDue,
    /// Queued on the channel: the supervisor will read it.
    Sent,
    /// Not queued (the channel is full: the supervisor is not reading). Figures that
    /// are reported only once must be kept for the next heartbeat.
    Dropped,
    /// The supervisor is gone (its end of the channel is closed).
    PeerGone,
}

/// Sends a status message every interval.
pub struct Heartbeater {
    role: Role,
    pid: u32,
    seq: u64,
    interval: Duration,
    next_at: Instant,
    keeper_pid: Option<u32>,
    /// Test-only fault: while this file says so, heartbeats are dropped as if the
    /// channel were full (`None` unless `WEBD_FAULT_FILE` is set).
    fault_file: Option<std::path::PathBuf>,
    dropping: bool,
}

impl Heartbeater {
    pub fn new(role: Role, interval: Duration) -> Heartbeater {
        Heartbeater {
            role,
            pid: std::process::id(),
            seq: 0,
            interval,
            next_at: Instant::now(),
            keeper_pid: None,
            fault_file: crate::fault::file(),
            dropping: false,
        }
    }

    /// The listener's keeper, reported with every heartbeat from now on.
    pub fn set_keeper_pid(&mut self, pid: Option<u32>) {
        self.keeper_pid = pid;
    }

    /// When the next heartbeat is due.
    pub fn due_at(&self) -> Instant {
        self.next_at
    }

    /// Time until the next heartbeat is due (zero when overdue).
    pub fn until_due(&self, now: Instant) -> Duration {
        self.next_at.saturating_duration_since(now)
    }

    /// Makes the next `tick` send at once (fresh figures before a command's answer).
    pub fn force(&mut self, now: Instant) {
        self.next_at = now;
    }

    /// Sends a heartbeat if one is due, with what `report` builds (called only
    /// then, and moved into the message). A full channel (supervisor not reading) drops
    /// this one: the supervisor will see the gap, which is the truth, and the caller
    /// learns it (`Dropped`) so that it keeps what it reports only once.
    pub fn tick(
        &mut self,
        now: Instant,
        channel: &mut impl ReportChannel,
        report: impl FnOnce() -> Report,
    ) -> Delivery {
        if now < self.next_at {
            return Delivery::NotDue;
        }
        self.next_at = now + self.interval;
        self.seq += 1;
        let Report { figures, active, workers, retiring } = report();
        let hb = Heartbeat {
            pid: self.pid,
            seq: self.seq,
            sent_ns: monotonic_ns(),
            figures,
            active,
            workers,
            keeper_pid: self.keeper_pid,
            retiring,
        };
        let result = if crate::fault::channel_full(self.fault_file.as_deref(), self.role) {
            Err(ErrorKind::WouldBlock.into())
        } else {
            channel.send_heartbeat(hb)
        };
        let delivery = match result {
            Ok(()) => Delivery::Sent,
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => Delivery::PeerGone,
            Err(e) => {
                if e.kind() != ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "heartbeat not sent");
                }
                Delivery::Dropped
            }
        };
        self.note_drops(delivery);
        delivery
    }

    /// Logs the start and the end of a run of dropped heartbeats (not each one).
    fn note_drops(&mut self, delivery: Delivery) {
        match (self.dropping, delivery) {
            (false, Delivery::Dropped) => {
                self.dropping = true;
                tracing::debug!(role = %self.role, "heartbeats dropped: the channel to the supervisor is full");
            }
            (true, Delivery::Sent) => {
                self.dropping = false;
                tracing::debug!(role = %self.role, "heartbeats delivered again");
            }
            _ => {}
        }
    }

    /// A last heartbeat before exit: sent now, and retried for up to `within` while the
    /// channel is full, so the figures of the final requests are counted.
    pub fn send_final(
        &mut self,
        channel: &mut impl ReportChannel,
        within: Duration,
        mut report: impl FnMut() -> Report,
    ) -> Delivery {
        let deadline = Instant::now() + within;
        loop {
            let now = Instant::now();
            self.force(now);
            let delivery = self.tick(now, channel, &mut report);
            if delivery != Delivery::Dropped || now >= deadline {
                return delivery;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_is_reported_as_dropped_and_a_closed_one_as_gone() {
        let (ours, theirs) = crate::sys::seqpacket_pair().expect("socketpair");
        let mut channel: Channel<Heartbeat, Heartbeat> = Channel::new(ours);
        let mut beat = Heartbeater::new(Role::Manager, Duration::ZERO);
        let mut sent = 0;
        let first_drop = loop {
            match beat.tick(Instant::now(), &mut channel, Report::default) {
                Delivery::Sent => sent += 1,
                other => break other,
            }
            assert!(sent < 1_000_000, "the channel never filled");
        };
        assert!(sent > 0);
        assert_eq!(first_drop, Delivery::Dropped, "a full channel is not a delivery");
        drop(theirs);
        let gone = beat.tick(Instant::now(), &mut channel, Report::default);
        assert_eq!(gone, Delivery::PeerGone);
    }
}
