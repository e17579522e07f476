//! systemd integration (Type=notify): READY=1 once the tree first serves, WATCHDOG=1 every
//! half `WATCHDOG_USEC` from the supervision loop itself (a stuck loop stops the pings,
//! and systemd restarts us), STOPPING=1 when a graceful stop begins. Without
//! `NOTIFY_SOCKET` every call is a no-op. Children never see these variables (`spawn`
//! removes them).

use sd_notify::NotifyState;
use std::time::{Duration, Instant};

pub struct Systemd {
    watchdog_every: Option<Duration>,
    next_watchdog: Instant,
    ready_sent: bool,
}

impl Systemd {
    pub fn from_env(now: Instant) -> Systemd {
        let watchdog_every = sd_notify::watchdog_enabled().map(|usec| usec / 2).filter(|d| !d.is_zero());
        if let Some(every) = watchdog_every {
            tracing::info!(every_ms = every.as_millis() as u64, "systemd watchdog enabled");
        }
        Systemd { watchdog_every, next_watchdog: now, ready_sent: false }
    }

    /// Tells systemd we are ready, the first time only.
    pub fn ready(&mut self) {
        if !self.ready_sent {
            self.ready_sent = true;
            send(&[NotifyState::Ready, NotifyState::Status("serving")]);
        }
    }

    /// Pings the watchdog when due. Called from the supervision loop only.
    pub fn tick(&mut self, now: Instant) {
        if let Some(every) = self.watchdog_every {
            if now >= self.next_watchdog {
                self.next_watchdog = now + every;
                send(&[NotifyState::Watchdog]);
            }
        }
    }

    /// A binary upgrade moved the service to a new daemon: systemd must watch it now.
    pub fn main_pid(&self, pid: u32) {
        send(&[NotifyState::MainPid(pid)]);
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }

    /// When the loop must wake up next for the watchdog.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.watchdog_every.map(|_| self.next_watchdog)
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}
