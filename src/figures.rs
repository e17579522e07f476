//! What the tree counts, in one shape from the process that counts to `/metrics`.
//!
//! Every process counts its own `Figures` from zero and sends them whole in each
//! heartbeat; the daemon adds up each process's growth since its previous report
//! (`Accumulator`), so a restart never makes a total go down and a report folded twice
//! adds nothing. Totals are `Figures` too: what a binary upgrade carries to the new daemon
//! is the accumulator's starting value, and `/metrics` reads the same fields.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::{AddAssign, Index, IndexMut};
use std::time::Duration;

pub use crate::ipc::Role;
pub use crate::supervise::ByReason;

/// Upper bounds (seconds) of the request-duration histogram.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Upper bounds (seconds) of the heartbeat-latency histogram: microseconds to a second.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0];

/// Upper bounds (seconds) of the TLS handshake duration histogram.
pub const TLS_HANDSHAKE_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// Everything counted, monotonic within one process's life.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Figures {
    /// Listener: connections accepted.
    pub accepted: u64,
    /// Worker: connections received (from its lane, or moved to it by the manager).
    pub received: u64,
    /// Worker: responses by status code.
    pub responses: ByCode,
    /// Worker: responses by the content coding of their representation.
    pub by_encoding: ByEncoding,
    /// Worker: response bytes written (head and body).
    pub response_bytes: u64,
    /// Worker: request durations over `DURATION_BUCKETS`.
    pub duration: Histogram,
    /// Worker: nanoseconds during which at least one request was in progress.
    pub busy_ns: u64,
    /// Worker: TLS handshakes.
    pub tls: Tls,
    /// Worker: connections of retiring or dead workers carried on, by how.
    pub rescued: Rescued,
    /// Supervision of each role: the daemon's of listener and manager, the manager's of
    /// its workers.
    pub supervision: ByRole<Supervision>,
}

/// TLS handshakes of a worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tls {
    /// Completed, by version: TLSv1.2, TLSv1.3.
    pub ok: [u64; 2],
    /// Failed, by version: TLSv1.2, TLSv1.3, none (before a version was agreed).
    pub failed: [u64; 3],
    /// Completed handshakes that resumed a session.
    pub resumed: u64,
    /// Durations of completed handshakes over `TLS_HANDSHAKE_BUCKETS`.
    pub duration: Histogram,
}

/// Connections a retiring (or dying) worker did not simply close, by how (the `how`
/// label of `webd_connections_rescued_total`). A retiring worker counts `migrated`; the
/// other kinds belong to the rescue of a dead worker's connections (SPEC section 8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rescued {
    /// Handed at a request boundary to a live worker, with the bytes received so far.
    pub migrated: u64,
    pub idle: u64,
    pub replayed: u64,
    pub resumed: u64,
    pub closed: u64,
    /// Requests in progress in two worker deaths, answered 500 instead of replayed
    /// (`webd_poison_requests_total`; not a `how`).
    pub poison: u64,
}

impl Rescued {
    /// Label value and count, in the order `/metrics` shows them.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let Rescued { migrated, idle, replayed, resumed, closed, poison: _ } = *self;
        [("migrated", migrated), ("idle", idle), ("replayed", replayed), ("resumed", resumed), ("closed", closed)]
            .into_iter()
    }
}

/// How the supervision of one role went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Supervision {
    pub missed_heartbeats: u64,
    pub restarts: ByReason,
    /// Heartbeat latencies over `LATENCY_BUCKETS`.
    pub latency: Histogram,
}

/// One value per supervised role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ByRole<T> {
    pub listener: T,
    pub manager: T,
    pub worker: T,
}

impl<T> ByRole<T> {
    /// The roles with their values, in the order metrics list them.
    pub fn iter(&self) -> impl Iterator<Item = (Role, &T)> {
        [(Role::Listener, &self.listener), (Role::Manager, &self.manager), (Role::Worker, &self.worker)].into_iter()
    }
}

impl<T> Index<Role> for ByRole<T> {
    type Output = T;
    fn index(&self, role: Role) -> &T {
        match role {
            Role::Listener => &self.listener,
            Role::Manager => &self.manager,
            Role::Worker => &self.worker,
        }
    }
}

impl<T> IndexMut<Role> for ByRole<T> {
    fn index_mut(&mut self, role: Role) -> &mut T {
        match role {
            Role::Listener => &mut self.listener,
            Role::Manager => &mut self.manager,
            Role::Worker => &mut self.worker,
        }
    }
}

/// Counts by HTTP status code, kept sorted by code (a handful of codes: a short vector
/// beats a map, and the order is what `/metrics` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ByCode(Vec<(u16, u64)>);

impl ByCode {
    pub fn add(&mut self, code: u16, n: u64) {
        match self.0.binary_search_by_key(&code, |(c, _)| *c) {
            Ok(i) => self.0[i].1 += n,
            Err(i) => self.0.insert(i, (code, n)),
        }
    }

    pub fn get(&self, code: u16) -> u64 {
        self.0.binary_search_by_key(&code, |(c, _)| *c).map_or(0, |i| self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        self.0.iter().copied()
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

/// Counts by content coding, one field per coding a worker sends (the `encoding` label).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ByEncoding {
    pub identity: u64,
    pub br: u64,
    pub zstd: u64,
    pub gzip: u64,
}

impl ByEncoding {
    /// Label value and count, in the order `/metrics` shows them.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [("identity", self.identity), ("br", self.br), ("zstd", self.zstd), ("gzip", self.gzip)].into_iter()
    }
}

/// Observations per bucket (not cumulative; the exporter sums), the last entry counting
/// those above every bound, and their sum in nanoseconds (an integer, so growth between
/// two reports is exact).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum_ns: u64,
}

impl Histogram {
    pub fn observe(&mut self, bounds: &[f64], value: Duration) {
        if self.counts.len() != bounds.len() + 1 {
            self.counts = vec![0; bounds.len() + 1];
        }
        let secs = value.as_secs_f64();
        let i = bounds.iter().position(|b| secs <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum_ns += value.as_nanos() as u64;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

/// Growth from an earlier report of the same process (every field only grows).
trait Growth {
    fn growth_since(&self, before: &Self) -> Self;
}

impl Growth for u64 {
    fn growth_since(&self, before: &u64) -> u64 {
        self.saturating_sub(*before)
    }
}

impl Growth for ByCode {
    fn growth_since(&self, before: &ByCode) -> ByCode {
        ByCode(self.0.iter().map(|&(code, n)| (code, n.saturating_sub(before.get(code)))).collect())
    }
}

impl Growth for ByEncoding {
    fn growth_since(&self, before: &ByEncoding) -> ByEncoding {
        ByEncoding {
            identity: self.identity.growth_since(&before.identity),
            br: self.br.growth_since(&before.br),
            zstd: self.zstd.growth_since(&before.zstd),
            gzip: self.gzip.growth_since(&before.gzip),
        }
    }
}

impl Growth for Histogram {
    fn growth_since(&self, before: &Histogram) -> Histogram {
        let earlier = |i: usize| before.counts.get(i).copied().unwrap_or(0);
        Histogram {
            counts: self.counts.iter().enumerate().map(|(i, n)| n.saturating_sub(earlier(i))).collect(),
            sum_ns: self.sum_ns.growth_since(&before.sum_ns),
        }
    }
}

impl Growth for ByReason {
    fn growth_since(&self, before: &ByReason) -> ByReason {
        ByReason::growth_since(self, before)
    }
}

impl<const N: usize> Growth for [u64; N] {
    fn growth_since(&self, before: &[u64; N]) -> [u64; N] {
        std::array::from_fn(|i| self[i].saturating_sub(before[i]))
    }
}

impl Growth for Tls {
    fn growth_since(&self, before: &Tls) -> Tls {
        Tls {
            ok: self.ok.growth_since(&before.ok),
            failed: self.failed.growth_since(&before.failed),
            resumed: self.resumed.growth_since(&before.resumed),
            duration: self.duration.growth_since(&before.duration),
        }
    }
}

impl Growth for Rescued {
    fn growth_since(&self, before: &Rescued) -> Rescued {
        Rescued {
            migrated: self.migrated.growth_since(&before.migrated),
            idle: self.idle.growth_since(&before.idle),
            replayed: self.replayed.growth_since(&before.replayed),
            resumed: self.resumed.growth_since(&before.resumed),
            closed: self.closed.growth_since(&before.closed),
            poison: self.poison.growth_since(&before.poison),
        }
    }
}

impl Growth for Supervision {
    fn growth_since(&self, before: &Supervision) -> Supervision {
        Supervision {
            missed_heartbeats: self.missed_heartbeats.growth_since(&before.missed_heartbeats),
            restarts: self.restarts.growth_since(&before.restarts),
            latency: self.latency.growth_since(&before.latency),
        }
    }
}

impl<T: Growth> Growth for ByRole<T> {
    fn growth_since(&self, before: &ByRole<T>) -> ByRole<T> {
        ByRole {
            listener: self.listener.growth_since(&before.listener),
            manager: self.manager.growth_since(&before.manager),
            worker: self.worker.growth_since(&before.worker),
        }
    }
}

impl Growth for Figures {
    fn growth_since(&self, before: &Figures) -> Figures {
        Figures {
            accepted: self.accepted.growth_since(&before.accepted),
            received: self.received.growth_since(&before.received),
            responses: self.responses.growth_since(&before.responses),
            by_encoding: self.by_encoding.growth_since(&before.by_encoding),
            response_bytes: self.response_bytes.growth_since(&before.response_bytes),
            duration: self.duration.growth_since(&before.duration),
            busy_ns: self.busy_ns.growth_since(&before.busy_ns),
            tls: self.tls.growth_since(&before.tls),
            rescued: self.rescued.growth_since(&before.rescued),
            supervision: self.supervision.growth_since(&before.supervision),
        }
    }
}

impl AddAssign<&ByCode> for ByCode {
    fn add_assign(&mut self, other: &ByCode) {
        for (code, n) in other.iter() {
            self.add(code, n);
        }
    }
}

impl AddAssign<&ByEncoding> for ByEncoding {
    fn add_assign(&mut self, other: &ByEncoding) {
        self.identity += other.identity;
        self.br += other.br;
        self.zstd += other.zstd;
        self.gzip += other.gzip;
    }
}

impl AddAssign<&Histogram> for Histogram {
    fn add_assign(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (total, n) in self.counts.iter_mut().zip(&other.counts) {
            *total += n;
        }
        self.sum_ns += other.sum_ns;
    }
}

impl AddAssign<&Tls> for Tls {
    fn add_assign(&mut self, other: &Tls) {
        for (total, n) in self.ok.iter_mut().zip(other.ok) {
            *total += n;
        }
        for (total, n) in self.failed.iter_mut().zip(other.failed) {
            *total += n;
        }
        self.resumed += other.resumed;
        self.duration += &other.duration;
    }
}

impl AddAssign<&Rescued> for Rescued {
    fn add_assign(&mut self, other: &Rescued) {
        self.migrated += other.migrated;
        self.idle += other.idle;
        self.replayed += other.replayed;
        self.resumed += other.resumed;
        self.closed += other.closed;
        self.poison += other.poison;
    }
}

impl AddAssign<&Supervision> for Supervision {
    fn add_assign(&mut self, other: &Supervision) {
        self.missed_heartbeats += other.missed_heartbeats;
        self.restarts += other.restarts;
        self.latency += &other.latency;
    }
}

impl<T: for<'a> AddAssign<&'a T>> AddAssign<&ByRole<T>> for ByRole<T> {
    fn add_assign(&mut self, other: &ByRole<T>) {
        self.listener += &other.listener;
        self.manager += &other.manager;
        self.worker += &other.worker;
    }
}

impl AddAssign<&Figures> for Figures {
    fn add_assign(&mut self, other: &Figures) {
        self.accepted += other.accepted;
        self.received += other.received;
        self.responses += &other.responses;
        self.by_encoding += &other.by_encoding;
        self.response_bytes += other.response_bytes;
        self.duration += &other.duration;
        self.busy_ns += other.busy_ns;
        self.tls += &other.tls;
        self.rescued += &other.rescued;
        self.supervision += &other.supervision;
    }
}

/// Folds the cumulative `Figures` of many processes into monotonic totals, on top of a
/// base (what the daemon we replaced had counted, refreshed while it drains).
#[derive(Debug, Default)]
pub struct Accumulator {
    /// Each process's last report, by pid.
    last: HashMap<u32, Figures>,
    base: Figures,
    grown: Figures,
}

impl Accumulator {
    /// Counts from `base` on, replacing the previous base.
    pub fn set_base(&mut self, base: Figures) {
        self.base = base;
    }

    /// Adds the growth of `figures` since the last report of `pid`.
    pub fn fold(&mut self, pid: u32, figures: &Figures) {
        let previous = self.last.entry(pid).or_default();
        self.grown += &figures.growth_since(previous);
        previous.clone_from(figures);
    }

    /// Forgets pids that are gone (their final growth was folded already).
    pub fn retain_pids(&mut self, live: impl Fn(u32) -> bool) {
        self.last.retain(|pid, _| live(*pid));
    }

    /// The base plus everything folded since.
    pub fn total(&self) -> Figures {
        let mut total = self.base.clone();
        total += &self.grown;
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(requests: u64, bytes: u64) -> Figures {
        let mut f = Figures { response_bytes: bytes, ..Default::default() };
        f.responses.add(200, requests);
        f
    }

    #[test]
    fn totals_never_go_down_when_a_process_restarts() {
        let mut acc = Accumulator::default();
        acc.fold(10, &served(5, 500));
        acc.fold(10, &served(8, 800));
        acc.fold(10, &served(8, 800)); // the same report again adds nothing
                                       // pid 10 crashed; its replacement starts from zero.
        acc.fold(11, &served(1, 100));
        assert_eq!(acc.total().responses.get(200), 9);
        assert_eq!(acc.total().response_bytes, 900);
    }

    #[test]
    fn an_accumulator_continues_from_its_latest_base() {
        let mut acc = Accumulator::default();
        acc.set_base(served(100, 10_000));
        acc.fold(7, &served(2, 20));
        acc.set_base(served(150, 15_000)); // the old daemon served on while draining
        assert_eq!((acc.total().responses.total(), acc.total().response_bytes), (152, 15_020));
    }

    #[test]
    fn histograms_bucket_by_upper_bound_and_add_up() {
        let mut h = Histogram::default();
        h.observe(&LATENCY_BUCKETS, Duration::from_micros(20));
        h.observe(&LATENCY_BUCKETS, Duration::from_secs(5));
        assert_eq!((h.counts[1], h.counts[LATENCY_BUCKETS.len()], h.count()), (1, 1, 2));
        let mut total = Histogram::default();
        total += &h;
        total += &h;
        assert_eq!((total.count(), total.sum_ns), (4, 2 * 5_000_020_000));
    }

    #[test]
    fn encodings_grow_and_add_up_per_process() {
        let mut acc = Accumulator::default();
        let report =
            |br, gzip| Figures { by_encoding: ByEncoding { br, gzip, ..Default::default() }, ..Default::default() };
        acc.fold(1, &report(3, 1));
        acc.fold(1, &report(5, 1));
        acc.fold(2, &report(1, 0)); // another worker
        let total = acc.total().by_encoding;
        assert_eq!((total.identity, total.br, total.zstd, total.gzip), (0, 6, 0, 1));
        assert_eq!(total.iter().map(|(name, _)| name).collect::<Vec<_>>(), ["identity", "br", "zstd", "gzip"]);
    }

    #[test]
    fn rescued_connections_grow_and_add_up_per_process() {
        let mut acc = Accumulator::default();
        let report = |migrated| Figures { rescued: Rescued { migrated, ..Default::default() }, ..Default::default() };
        acc.fold(1, &report(3));
        acc.fold(1, &report(5));
        acc.fold(2, &report(2)); // another worker
        let total = acc.total().rescued;
        assert_eq!(
            total.iter().collect::<Vec<_>>(),
            [("migrated", 7), ("idle", 0), ("replayed", 0), ("resumed", 0), ("closed", 0)]
        );
    }

    #[test]
    fn codes_stay_sorted() {
        let mut codes = ByCode::default();
        for code in [404, 200, 304, 200] {
            codes.add(code, 1);
        }
        assert_eq!(codes.iter().collect::<Vec<_>>(), vec![(200, 2), (304, 1), (404, 1)]);
    }
}
