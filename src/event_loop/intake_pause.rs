//! Pausing a loop's intake of new connections (accepting, or taking them from a
//! channel) while the process is short of descriptors, and logging it without flooding
//! the log: the loop keeps serving the connections it has meanwhile.

use std::time::{Duration, Instant};

/// Least time between two log lines about one run of stalls.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A run of intake stalls, from the first failure to the next success.
#[derive(Debug, Default)]
pub struct IntakePause {
    run: Option<Run>,
    /// A timed pause: no intake is tried before this.
    until: Option<Instant>,
}

#[derive(Debug)]
struct Run {
    stalls: u64,
    logged_at: Instant,
}

impl IntakePause {
    /// Intake stalled at `now`; it waits `pause` when given (otherwise until the owner
    /// tries again). Returns the run's stalls so far when this one is worth a log line:
    /// the first of a run, then one per minute.
    pub fn stalled(&mut self, now: Instant, pause: Option<Duration>) -> Option<u64> {
        if let Some(pause) = pause {
            self.until = Some(now + pause);
        }
        let run = match &mut self.run {
            Some(run) => run,
            None => self.run.insert(Run { stalls: 0, logged_at: now }),
        };
        run.stalls += 1;
        let log = run.stalls == 1 || now.duration_since(run.logged_at) >= LOG_INTERVAL;
        if log {
            run.logged_at = now;
        }
        log.then_some(run.stalls)
    }

    /// Whether a run of stalls is under way (intake failed and has not worked since).
    pub fn is_stalled(&self) -> bool {
        self.run.is_some()
    }

    /// Whether a timed pause holds intake back.
    pub fn is_waiting(&self) -> bool {
        self.until.is_some()
    }

    /// When the timed pause ends, for the loop's wake-up.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Ends a timed pause whose time is over; the run lasts until `recovered`.
    pub fn expire(&mut self, now: Instant) {
        if self.until.is_some_and(|until| until <= now) {
            self.until = None;
        }
    }

    /// Intake works again: ends the run. Returns its stalls, for a log line.
    pub fn recovered(&mut self) -> Option<u64> {
        self.until = None;
        self.run.take().map(|run| run.stalls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_logs_its_first_stall_then_once_a_minute_and_its_end() {
        let t0 = Instant::now();
        let mut pause = IntakePause::default();
        assert_eq!(pause.stalled(t0, Some(Duration::from_millis(100))), Some(1));
        assert_eq!(pause.stalled(t0 + Duration::from_secs(1), None), None);
        assert_eq!(pause.stalled(t0 + LOG_INTERVAL, None), Some(3));
        assert_eq!(pause.recovered(), Some(3));
        assert_eq!(pause.recovered(), None);
    }

    #[test]
    fn a_timed_pause_expires_but_the_run_lasts_until_recovery() {
        let t0 = Instant::now();
        let mut pause = IntakePause::default();
        pause.stalled(t0, Some(Duration::from_millis(100)));
        pause.expire(t0 + Duration::from_millis(99));
        assert_eq!(pause.until(), Some(t0 + Duration::from_millis(100)));
        pause.expire(t0 + Duration::from_millis(100));
        assert!(!pause.is_waiting());
        assert_eq!(pause.recovered(), Some(1));
    }
}
