//! Signals as events in a poll loop.
//!
//! The handler (installed by signal-hook) only sets a flag and writes a byte to a
//! socket that the loop polls; the loop then asks which signals are pending.
//!
//! Daemon: SIGTERM/SIGINT/SIGQUIT = graceful stop, SIGHUP = rolling worker restart,
//! SIGCHLD = reap children. Manager: SIGCHLD = reap workers.

use signal_hook::consts::signal::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The signals a webd process reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM, SIGINT or SIGQUIT: graceful stop.
    Stop,
    /// SIGHUP: reload (rolling worker restart).
    Reload,
    /// SIGCHLD: one or more children changed state.
    Child,
    /// SIGUSR1: reopen logs.
    ReopenLogs,
    /// SIGUSR2: binary upgrade.
    Upgrade,
}

const MAP: [(i32, Event); 7] = [
    (SIGTERM, Event::Stop),
    (SIGINT, Event::Stop),
    (SIGQUIT, Event::Stop),
    (SIGHUP, Event::Reload),
    (SIGCHLD, Event::Child),
    (SIGUSR1, Event::ReopenLogs),
    (SIGUSR2, Event::Upgrade),
];

/// Pending-signal flags plus the wake-up socket the poll loop watches.
pub struct Signals {
    wake: UnixStream,
    flags: Vec<(Event, Arc<AtomicBool>)>,
}

impl Signals {
    /// Installs handlers for `events` (each maps from one or more signals).
    pub fn install(events: &[Event]) -> io::Result<Signals> {
        let (wake, notify) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        notify.set_nonblocking(true)?;
        let mut flags = Vec::new();
        for (sig, event) in MAP.iter().filter(|(_, e)| events.contains(e)) {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(*sig, Arc::clone(&flag))?;
            signal_hook::low_level::pipe::register(*sig, OwnedFd::from(notify.try_clone()?))?;
            flags.push((*event, flag));
        }
        Ok(Signals { wake, flags })
    }

    /// The signals that arrived since the last call (each at most once).
    pub fn pending(&mut self) -> Vec<Event> {
        let mut sink = [0u8; 64];
        while matches!(self.wake.read(&mut sink), Ok(n) if n > 0) {}
        let mut out = Vec::new();
        for (event, flag) in &self.flags {
            if flag.swap(false, Ordering::AcqRel) && !out.contains(event) {
                out.push(*event);
            }
        }
        out
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}
