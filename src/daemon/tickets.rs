//! The TLS session-ticket keys over the daemon's life: made at start (or taken from the
//! daemon an upgrade replaces), rotated every `ROTATION_INTERVAL` by the wall clock, and
//! sent to the manager at each rotation (its bootstrap carries them too, see `roles`).
//! A test rotates them at will with `rotate-ticket-keys` lines in the fault file.

use super::Daemon;
use crate::ipc::ToManager;
use crate::tls::tickets::{unix_now, TicketKeys, ROTATION_INTERVAL};
use anyhow::Context;

/// The keys this daemon starts with: its predecessor's, else new ones.
pub fn initial(inherited: Option<TicketKeys>) -> anyhow::Result<TicketKeys> {
    match inherited {
        Some(keys) => {
            tracing::info!(generation = keys.generation, "TLS session ticket keys taken from the old daemon");
            Ok(keys)
        }
        None => TicketKeys::generate(unix_now()).context("making TLS session ticket keys"),
    }
}

/// Rotations asked for through the fault file and already made.
#[derive(Debug, Default)]
pub struct ForcedRotations {
    pub file: Option<std::path::PathBuf>,
    pub done: u64,
}

impl Daemon {
    /// At each check: rotates the keys when their interval is over (or a test asks),
    /// and hands the new ones to the manager for every worker.
    pub(super) fn rotate_ticket_keys_when_due(&mut self) {
        let now = unix_now();
        let forced = self.forced_rotations.file.is_some()
            && crate::fault::ticket_rotations(self.forced_rotations.file.as_deref()) > self.forced_rotations.done;
        if !forced && !self.inherit.tickets.rotation_due(now, ROTATION_INTERVAL) {
            return;
        }
        // On failure the running keys stay (still valid) and the next check tries again.
        if let Err(e) = self.inherit.tickets.rotate(now) {
            return tracing::error!(error = %e, "cannot rotate the TLS session ticket keys; keeping them");
        }
        if forced {
            self.forced_rotations.done += 1;
        }
        let keys = &self.inherit.tickets;
        tracing::info!(generation = keys.generation, forced, "TLS session ticket keys rotated");
        self.manager.send(&ToManager::TicketKeys(Box::new(keys.clone())));
    }
}
