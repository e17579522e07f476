//! TLS session tickets that every worker can open: resumption on any worker, after any
//! restart of a worker, the manager or (through `upgrade`) the daemon.
//!
//! The daemon owns the keys ([`TicketKeys`]): it makes them from the OS's randomness at
//! start (or takes them from the daemon it replaces), rotates them every
//! [`ROTATION_INTERVAL`] keeping the previous key, and sends them to the manager, which
//! hands them to every worker it starts and forwards each rotation to the running ones.
//! A worker seals tickets with the current key and opens tickets made with the current or
//! the previous one ([`Ticketer`], rustls' `ProducesTickets`): a ticket stays usable for
//! one to two intervals, and none outlives two rotations (forward secrecy is bounded by
//! that). Tickets serve TLS 1.3 and TLS 1.2 (RFC 5077) alike.
//!
//! A ticket is `key name (16) | nonce (12) | AES-256-GCM(state) | tag (16)`, the key name
//! as additional data. Nonces are random: at 2^32 tickets per key (beyond what 12 h of
//! handshakes make) that stays within GCM's bound for random nonces.
//!
//! `TicketKeys` is plain serde data (its `Debug` leaves the secrets out), so the handoff
//! of an upgrade carries it as is, and so could a future store of the daemon's state.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a key is the current one; the previous key is accepted for as long again.
pub const ROTATION_INTERVAL: Duration = Duration::from_secs(12 * 3600);

const NAME_LEN: usize = 16;
const SECRET_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// The OS gave no randomness (aws-lc's generator is seeded from `getrandom`).
#[derive(Debug, thiserror::Error)]
#[error("no randomness for TLS session ticket keys")]
pub struct NoRandomness;

/// The ticket keys the daemon owns and every worker uses.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKeys {
    /// 1 for the first key, one more at each rotation (for logs).
    pub generation: u64,
    /// When `current` was made, in seconds since the epoch: it is replaced
    /// [`ROTATION_INTERVAL`] later (wall clock, so an upgraded daemon keeps the schedule).
    pub rotated_at: u64,
    pub current: TicketKey,
    /// The key before `current`, still accepted.
    pub previous: Option<TicketKey>,
}

/// One AES-256-GCM key and the name tickets made with it start with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKey {
    #[serde(with = "hex")]
    pub name: [u8; NAME_LEN],
    #[serde(with = "hex")]
    secret: [u8; SECRET_LEN],
}

impl std::fmt::Debug for TicketKeys {
    // The secrets stay out of logs; the names say which keys are meant.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("generation", &self.generation)
            .field("rotated_at", &self.rotated_at)
            .field("current", &self.current)
            .field("previous", &self.previous)
            .finish()
    }
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKey({})", hex::encode(&self.name))
    }
}

impl TicketKey {
    fn random() -> Result<TicketKey, NoRandomness> {
        let mut key = TicketKey { name: [0; NAME_LEN], secret: [0; SECRET_LEN] };
        aws_lc_rs::rand::fill(&mut key.name).map_err(|_| NoRandomness)?;
        aws_lc_rs::rand::fill(&mut key.secret).map_err(|_| NoRandomness)?;
        Ok(key)
    }
}

impl TicketKeys {
    /// A first key, made `now` (seconds since the epoch).
    pub fn generate(now: u64) -> Result<TicketKeys, NoRandomness> {
        Ok(TicketKeys { generation: 1, rotated_at: now, current: TicketKey::random()?, previous: None })
    }

    /// A new current key; the current one becomes the previous, the previous is dropped.
    pub fn rotate(&mut self, now: u64) -> Result<(), NoRandomness> {
        let next = TicketKey::random()?;
        self.previous = Some(std::mem::replace(&mut self.current, next));
        self.generation += 1;
        self.rotated_at = now;
        Ok(())
    }

    /// Whether the current key has been current for `interval` at `now`.
    pub fn rotation_due(&self, now: u64, interval: Duration) -> bool {
        now >= self.rotated_at.saturating_add(interval.as_secs())
    }
}

/// Seconds since the epoch by the wall clock (0 before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A worker's side: seals and opens tickets with the keys last installed. Shared by every
/// connection's rustls configuration; a rotation swaps the keys under a lock taken once
/// per ticket (a handshake), never per request.
#[derive(Debug)]
pub struct Ticketer {
    keys: RwLock<Sealers>,
}

#[derive(Debug)]
struct Sealers {
    current: Sealer,
    previous: Option<Sealer>,
}

struct Sealer {
    name: [u8; NAME_LEN],
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({})", hex::encode(&self.name))
    }
}

impl Sealer {
    fn new(key: &TicketKey) -> Sealer {
        let unbound = UnboundKey::new(&AES_256_GCM, &key.secret).expect("a 32-byte key is an AES-256-GCM key");
        Sealer { name: key.name, key: LessSafeKey::new(unbound) }
    }
}

impl Sealers {
    fn new(keys: &TicketKeys) -> Sealers {
        Sealers { current: Sealer::new(&keys.current), previous: keys.previous.as_ref().map(Sealer::new) }
    }

    fn named(&self, name: &[u8]) -> Option<&Sealer> {
        std::iter::once(&self.current).chain(&self.previous).find(|s| s.name[..] == *name)
    }
}

impl Ticketer {
    pub fn new(keys: &TicketKeys) -> Ticketer {
        Ticketer { keys: RwLock::new(Sealers::new(keys)) }
    }

    /// Takes rotated keys: new tickets are sealed with the new current key.
    pub fn install(&self, keys: &TicketKeys) {
        *self.keys.write() = Sealers::new(keys);
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    /// What every ticket is good for at least: a ticket sealed just before a rotation
    /// lasts one more interval, under the previous key.
    fn lifetime(&self) -> u32 {
        ROTATION_INTERVAL.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let keys = self.keys.read();
        let sealer = &keys.current;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&sealer.name);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        sealer
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&sealer.name), &mut sealed)
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// Attacker-controlled input: every length is checked before it is sliced, and an
    /// unknown key name, a short ticket or a failed tag is just `None` (a full handshake).
    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.read();
        let sealer = keys.named(name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = sealed.to_vec();
        let plain_len = sealer.key.open_in_place(nonce, Aad::from(name), &mut in_out).ok()?.len();
        in_out.truncate(plain_len);
        Some(in_out)
    }
}

/// Fixed-size byte arrays as lower-case hex strings in JSON.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let invalid = || serde::de::Error::custom(format!("expected {} hex digits", 2 * N));
        if text.len() != 2 * N || !text.is_ascii() {
            return Err(invalid());
        }
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    const STATE: &[u8] = b"a session's resumption state";

    fn keys() -> TicketKeys {
        TicketKeys::generate(1_000).expect("randomness")
    }

    #[test]
    fn a_ticket_opens_to_what_was_sealed_and_hides_it() {
        let ticketer = Ticketer::new(&keys());
        let ticket = ticketer.encrypt(STATE).expect("sealed");
        assert_eq!(ticket.len(), NAME_LEN + NONCE_LEN + STATE.len() + TAG_LEN);
        assert!(!ticket.windows(STATE.len()).any(|w| w == STATE), "the state is encrypted");
        assert_eq!(ticketer.decrypt(&ticket).as_deref(), Some(STATE));
        let again = ticketer.encrypt(STATE).expect("sealed");
        assert_ne!(ticket, again, "a fresh nonce per ticket");
    }

    #[test]
    fn another_worker_with_the_same_keys_opens_it() {
        let keys = keys();
        let (one, other) = (Ticketer::new(&keys), Ticketer::new(&keys));
        let ticket = one.encrypt(STATE).expect("sealed");
        assert_eq!(other.decrypt(&ticket).as_deref(), Some(STATE));
        // Through JSON, as the keys travel to workers and to an upgraded daemon.
        let carried: TicketKeys = serde_json::from_str(&serde_json::to_string(&keys).expect("json")).expect("parse");
        assert_eq!(carried, keys);
        assert_eq!(Ticketer::new(&carried).decrypt(&ticket).as_deref(), Some(STATE));
    }

    #[test]
    fn after_one_rotation_the_previous_key_still_opens_after_two_it_does_not() {
        let mut keys = keys();
        let ticketer = Ticketer::new(&keys);
        let old = ticketer.encrypt(STATE).expect("sealed");
        keys.rotate(2_000).expect("rotate");
        ticketer.install(&keys);
        assert_eq!(ticketer.decrypt(&old).as_deref(), Some(STATE), "previous key accepted");
        let newer = ticketer.encrypt(STATE).expect("sealed");
        assert_eq!(&newer[..NAME_LEN], &keys.current.name, "sealed with the new key");
        keys.rotate(3_000).expect("rotate");
        ticketer.install(&keys);
        assert_eq!(ticketer.decrypt(&old), None, "two rotations back: unknown");
        assert_eq!(ticketer.decrypt(&newer).as_deref(), Some(STATE));
        assert_eq!((keys.generation, keys.rotated_at), (3, 3_000));
    }

    #[test]
    fn a_ticket_of_unknown_keys_is_refused() {
        let ticket = Ticketer::new(&keys()).encrypt(STATE).expect("sealed");
        assert_eq!(Ticketer::new(&keys()).decrypt(&ticket), None);
        // Same name, another secret: the tag fails.
        let mut forged = keys();
        forged.current.name.copy_from_slice(&ticket[..NAME_LEN]);
        assert_eq!(Ticketer::new(&forged).decrypt(&ticket), None);
    }

    #[test]
    fn a_tampered_or_short_ticket_is_refused() {
        let ticketer = Ticketer::new(&keys());
        let ticket = ticketer.encrypt(STATE).expect("sealed");
        for i in 0..ticket.len() {
            let mut tampered = ticket.clone();
            tampered[i] ^= 0x40;
            assert_eq!(ticketer.decrypt(&tampered), None, "byte {i} flipped");
        }
        for len in 0..ticket.len() {
            assert_eq!(ticketer.decrypt(&ticket[..len]), None, "cut to {len} bytes");
        }
        assert_eq!(ticketer.decrypt(&[]), None);
    }

    #[test]
    fn rotation_is_due_after_the_interval() {
        let keys = keys();
        let interval = ROTATION_INTERVAL;
        assert!(!keys.rotation_due(1_000, interval));
        assert!(!keys.rotation_due(1_000 + interval.as_secs() - 1, interval));
        assert!(keys.rotation_due(1_000 + interval.as_secs(), interval));
        assert!(!keys.rotation_due(0, interval), "a clock set back does not rotate");
    }

    #[test]
    fn debug_output_names_keys_and_never_shows_secrets() {
        let keys = keys();
        let shown = format!("{keys:?}");
        assert!(shown.contains(&hex::encode(&keys.current.name)), "{shown}");
        assert!(!shown.contains(&hex::encode(&keys.current.secret)), "{shown}");
    }

    #[test]
    fn bad_hex_in_carried_keys_is_an_error() {
        let mut json: serde_json::Value = serde_json::to_value(keys()).expect("json");
        json["current"]["secret"] = "zz".into();
        assert!(serde_json::from_value::<TicketKeys>(json).is_err());
    }
}
