//! What the daemon knows about its tree, published for the control socket and the
//! admin endpoint.
//!
//! The supervision loop is the only writer: it folds heartbeats into an `Observed`
//! value and publishes it; readers (control and admin threads) take a short lock and
//! copy what they need. Counters are accumulated from per-process deltas, so they never
//! go down when a child restarts.

use crate::figures::{ByRole, Figures};
use parking_lot::Mutex;
use std::sync::Arc;

/// How one role is doing now (the counts are in `Observed::figures`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleState {
    /// The role is up (for workers: at least one worker serves).
    pub up: bool,
    /// Age of its last heartbeat (for workers: the oldest of the live ones).
    pub heartbeat_age_seconds: f64,
}

/// Everything the control and admin planes show.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub status: Option<webd_proto::Status>,
    /// `None` when ready to serve; otherwise the reason it is not.
    pub not_ready: Option<String>,
    pub draining: bool,
    pub roles: ByRole<RoleState>,
    /// Workers by state, every state listed.
    pub workers_by_state: Vec<(webd_proto::WorkerState, u64)>,
    /// Utilization per worker id, 0..1.
    pub worker_utilization: Vec<(u32, f64)>,
    pub connections_active: u64,
    /// Everything the tree has counted, since before any upgrade (monotonic).
    pub figures: Figures,
    /// Binary upgrades this tree descends from.
    pub upgrades: u64,
    /// Daemon incarnations that adopted their predecessor's descriptors from systemd's
    /// fd store (a crash or watchdog kill the service came back from).
    pub daemon_restarts: u64,
    /// The certificates served: first DNS name and notAfter (Unix seconds).
    pub certificates: Vec<(String, i64)>,
    /// Bumped by every publication: readers may reuse what they derived from the same one.
    pub generation: u64,
}

/// What a new daemon continues from after a binary upgrade (see the README for what is
/// and is not carried).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CarriedTotals {
    pub upgrades: u64,
    pub figures: Figures,
    /// Older daemons did not carry it: zero then.
    #[serde(default)]
    pub daemon_restarts: u64,
}

/// The handle both planes hold.
pub type SharedObserved = Arc<Mutex<Observed>>;
