//! systemd's file descriptor store (SPEC section 8): what lets a daemon killed by SIGKILL
//! or by the watchdog come back without losing a connection.
//!
//! Under systemd (`NOTIFY_SOCKET` set, `FileDescriptorStoreMax=` in the unit) the daemon
//! hands systemd, with named `FDSTORE=1` notifications, the listening sockets it bound
//! itself, both ends of every lane and of the steering channel, and a memfd holding its
//! totals and the TLS session-ticket keys ([`State`]), rewritten in place as they change. systemd keeps them while
//! it restarts the service and passes them to the next daemon like activated sockets
//! (`LISTEN_FDS`, names in `LISTEN_FDNAMES`). That daemon adopts them: the backlog and the
//! connections queued in the lanes are served by its tree, and the counters continue.
//! Sockets from a socket unit (`webd.socket`) are systemd's already and are not stored.
//!
//! Every name starts with `webd-`, so stored descriptors are told apart from activated
//! sockets (`http`, `https`, or a unit's own names).

use crate::observe::CarriedTotals;
use crate::tls::tickets::TicketKeys;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};

/// The prefix of every name we store under.
pub const PREFIX: &str = "webd-";
const STATE: &str = "webd-state";
const LISTEN: &str = "webd-listen-";
const TLS_LISTEN: &str = "webd-tls-";
const LANE: &str = "webd-lane-";
const STEERING: &str = "webd-steering-";
/// A state larger than this is not ours.
const STATE_MAX: u64 = 1 << 20;

/// What the state memfd holds: the counters a successor continues from, and the ticket
/// keys, so sessions resume across a daemon crash too. The memfd is reachable only by
/// root and systemd, like the keys in the daemon's memory.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub totals: CarriedTotals,
    #[serde(default)]
    pub tickets: Option<TicketKeys>,
}

/// A descriptor the previous daemon stored, by its name.
pub type Stored = (String, OwnedFd);

/// What a daemon found in the store.
#[derive(Default)]
pub struct Adopted {
    /// Listening sockets the previous daemon bound, plain and TLS.
    pub listen: Vec<Stored>,
    pub tls_listen: Vec<Stored>,
    /// Lanes by slot; a slot whose two ends did not both come back is left out, and so
    /// is every slot after it (slots are contiguous).
    pub lanes: Vec<(OwnedFd, OwnedFd)>,
    pub steering: Option<(OwnedFd, OwnedFd)>,
    pub state: Option<(File, State)>,
}

impl Adopted {
    /// Sorts `stored` by name. What is not recognised is closed and logged.
    pub fn sort(stored: Vec<Stored>) -> Adopted {
        let mut adopted = Adopted::default();
        let mut lane_ends: Vec<[Option<OwnedFd>; 2]> = Vec::new();
        let mut steering: [Option<OwnedFd>; 2] = [None, None];
        for (name, fd) in stored {
            if name == STATE {
                match read_state(fd) {
                    Ok(found) => adopted.state = Some(found),
                    Err(e) => tracing::warn!(name, error = %e, "fd store: unreadable state, counting from zero"),
                }
            } else if name.starts_with(LISTEN) {
                adopted.listen.push((name, fd));
            } else if name.starts_with(TLS_LISTEN) {
                adopted.tls_listen.push((name, fd));
            } else if let Some((slot, end)) = lane_name(&name) {
                if lane_ends.len() <= slot {
                    lane_ends.resize_with(slot + 1, || [None, None]);
                }
                lane_ends[slot][end] = Some(fd);
            } else if let Some(end) = name.strip_prefix(STEERING).and_then(end_index) {
                steering[end] = Some(fd);
            } else {
                tracing::warn!(name, "fd store: a descriptor we do not know, closed");
            }
        }
        for ends in lane_ends {
            match ends {
                [Some(a), Some(b)] => adopted.lanes.push((a, b)),
                _ => break,
            }
        }
        if let [Some(a), Some(b)] = steering {
            adopted.steering = Some((a, b));
        }
        adopted
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.listen.is_empty()
            && self.tls_listen.is_empty()
            && self.lanes.is_empty()
            && self.steering.is_none()
            && self.state.is_none()
    }
}

/// `webd-lane-<slot>-<end>` → (slot, end).
fn lane_name(name: &str) -> Option<(usize, usize)> {
    let (slot, end) = name.strip_prefix(LANE)?.split_once('-')?;
    Some((slot.parse().ok()?, end_index(end)?))
}

fn end_index(end: &str) -> Option<usize> {
    match end {
        "0" => Some(0),
        "1" => Some(1),
        _ => None,
    }
}

fn read_state(fd: OwnedFd) -> anyhow::Result<(File, State)> {
    let mut file = File::from(fd);
    let len = file.metadata()?.len();
    anyhow::ensure!(len <= STATE_MAX, "{len} bytes");
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_string(&mut text)?;
    let totals = serde_json::from_str(&text)?;
    Ok((file, totals))
}

/// The daemon's side of the store: where to send, and the state file it keeps current.
pub struct FdStore {
    enabled: bool,
    /// Addresses whose sockets a socket unit holds: not stored again.
    unit_sockets: Vec<std::net::SocketAddr>,
    state: Option<File>,
    last_state: Vec<u8>,
}

impl FdStore {
    /// Enabled under systemd's notify protocol; a unit without `FileDescriptorStoreMax=`
    /// ignores what we send (systemd logs it once per notification).
    pub fn from_env(state: Option<File>, unit_sockets: Vec<std::net::SocketAddr>) -> FdStore {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        FdStore { enabled, unit_sockets, state, last_state: Vec::new() }
    }

    /// Stores everything a successor needs; descriptors already stored are ignored by
    /// systemd (it compares them), so calling this again after a change is safe.
    pub fn store_all(
        &mut self,
        listen: &[OwnedFd],
        tls_listen: &[OwnedFd],
        lanes: &[(OwnedFd, OwnedFd)],
        steering: &(OwnedFd, OwnedFd),
    ) {
        if !self.enabled {
            return;
        }
        for (i, socket) in listen.iter().enumerate().filter(|(_, s)| !self.held_by_unit(s)) {
            store(&format!("{LISTEN}{i}"), socket);
        }
        for (i, socket) in tls_listen.iter().enumerate().filter(|(_, s)| !self.held_by_unit(s)) {
            store(&format!("{TLS_LISTEN}{i}"), socket);
        }
        self.store_lanes(lanes, 0);
        store(&format!("{STEERING}0"), &steering.0);
        store(&format!("{STEERING}1"), &steering.1);
        if self.state.is_none() {
            match crate::sys::memfd("webd-state") {
                Ok(fd) => {
                    store(STATE, &fd);
                    self.state = Some(File::from(fd));
                }
                Err(e) => tracing::warn!(error = %e, "fd store: cannot create the state memfd"),
            }
        } else if let Some(file) = &self.state {
            store(STATE, file);
        }
    }

    fn held_by_unit(&self, socket: &OwnedFd) -> bool {
        let addr = socket2::SockRef::from(socket).local_addr().ok().and_then(|a| a.as_socket());
        addr.is_some_and(|a| self.unit_sockets.contains(&a))
    }

    /// Stores the lanes of slots `first..` (new ones after a scale-up).
    pub fn store_lanes(&self, lanes: &[(OwnedFd, OwnedFd)], first: usize) {
        if !self.enabled {
            return;
        }
        for (slot, (a, b)) in lanes.iter().enumerate().skip(first) {
            store(&format!("{LANE}{slot}-0"), a);
            store(&format!("{LANE}{slot}-1"), b);
        }
    }

    /// Whether `keep_state` writes anything (under systemd, with a state memfd): lets a
    /// caller skip building the state on every heartbeat otherwise.
    pub fn keeps_state(&self) -> bool {
        self.enabled && self.state.is_some()
    }

    /// Rewrites the totals in the state memfd when they changed. Called each time reports
    /// are folded (a few times a second: heartbeats), so the store never holds less than
    /// `/metrics` has shown, and a successor's counters never go back.
    pub fn keep_state(&mut self, state: impl FnOnce() -> State) {
        let Some(file) = self.state.as_mut().filter(|_| self.enabled) else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec(&state()) else { return };
        if bytes == self.last_state {
            return;
        }
        // Written in place: the memfd systemd holds is this same file.
        let written = file.set_len(0).and_then(|_| file.seek(SeekFrom::Start(0))).and_then(|_| file.write_all(&bytes));
        match written {
            Ok(()) => self.last_state = bytes,
            Err(e) => tracing::warn!(error = %e, "fd store: cannot write the state memfd"),
        }
    }
}

/// Stores `fd` as the one descriptor named `name`: whatever an earlier daemon stored
/// under it (a binary upgrade's predecessor) goes first. `FDPOLL=0`: none of these is a
/// connection whose hang-up should make systemd drop it.
fn store(name: &str, fd: &impl AsFd) {
    use sd_notify::NotifyState;
    let remove = [NotifyState::FdStoreRemove, NotifyState::FdName(name)];
    let add = [NotifyState::FdStore, NotifyState::FdName(name), NotifyState::Custom("FDPOLL=0")];
    let sent = sd_notify::notify(&remove).and_then(|()| sd_notify::notify_with_fds(&add, &[fd.as_fd()]));
    if let Err(e) = sent {
        tracing::warn!(name, error = %e, "fd store: cannot store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        crate::sys::seqpacket_pair().expect("socketpair")
    }

    #[test]
    fn lanes_come_back_by_slot_and_stop_at_the_first_gap() {
        let (a0, b0) = pair();
        let (a1, b1) = pair();
        let (a3, b3) = pair();
        let stored = vec![
            ("webd-lane-1-1".to_string(), b1),
            ("webd-lane-0-0".to_string(), a0),
            ("webd-lane-1-0".to_string(), a1),
            ("webd-lane-0-1".to_string(), b0),
            ("webd-lane-3-0".to_string(), a3),
            ("webd-lane-3-1".to_string(), b3),
        ];
        let adopted = Adopted::sort(stored);
        assert_eq!(adopted.lanes.len(), 2, "slot 2 is missing, so slot 3 is not a lane");
        assert!(adopted.steering.is_none() && adopted.state.is_none());
    }

    #[test]
    fn names_we_do_not_know_are_dropped() {
        let (a, b) = pair();
        let adopted = Adopted::sort(vec![("webd-lane-x-0".to_string(), a), ("webd-steering-2".to_string(), b)]);
        assert!(adopted.is_empty());
    }

    #[test]
    fn the_state_round_trips_through_a_memfd() {
        let fd = crate::sys::memfd("test-state").expect("memfd");
        let mut store =
            FdStore { enabled: true, unit_sockets: Vec::new(), state: Some(File::from(fd)), last_state: Vec::new() };
        let mut state = State { totals: CarriedTotals { upgrades: 2, ..Default::default() }, tickets: None };
        state.totals.figures.accepted = 41;
        state.tickets = Some(TicketKeys::generate(1_000).expect("keys"));
        store.keep_state(|| state.clone());
        let file = store.state.take().expect("state");
        let (_, read) = read_state(OwnedFd::from(file)).expect("state reads back");
        assert!(read == state, "counters and ticket keys come back");
    }
}
