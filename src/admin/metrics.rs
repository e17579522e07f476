//! The Prometheus exporter: every `webd_*` metric of docs/reference.md, declared once
//! with its help text, plus the daemon's own `process_*` metrics.
//!
//! Nothing here counts anything. The daemon's supervision loop accumulates the figures
//! in [`Observed`] (monotonic across child restarts); at each scrape
//! [`ObservedCollector`] copies them out under a short lock and turns the copy into
//! metric families, so counters are exactly the accumulated totals and never reset.
//! The `prometheus` crate's registry checks the declarations and its text encoder writes
//! format 0.0.4.

use crate::figures::{Histogram, Role, DURATION_BUCKETS, LATENCY_BUCKETS, TLS_HANDSHAKE_BUCKETS};
use crate::observe::{Observed, SharedObserved};
use crate::supervise::Reason;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use std::collections::HashMap;

/// `Content-Type` of a scrape response.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric's declaration: name, help, type and label names.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
}

const fn def(name: &'static str, kind: MetricType, labels: &'static [&'static str], help: &'static str) -> MetricDef {
    MetricDef { name, help, kind, labels }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

pub const HEARTBEAT_LATENCY: MetricDef = def(
    "webd_heartbeat_latency_seconds",
    HISTOGRAM,
    &["role"],
    "Heartbeat latency (receive minus send time, CLOCK_MONOTONIC) per supervised role.",
);
pub const HEARTBEAT_AGE: MetricDef =
    def("webd_heartbeat_age_seconds", GAUGE, &["role"], "Age of the last heartbeat received from the role.");
pub const HEARTBEATS_MISSED: MetricDef = def(
    "webd_heartbeats_missed_total",
    COUNTER,
    &["role"],
    "Heartbeat checks that found the role's heartbeat too old.",
);
pub const RESTARTS: MetricDef = def(
    "webd_restarts_total",
    COUNTER,
    &["role", "reason"],
    "Processes of the role restarted, by reason (crash, hang, manual).",
);
pub const PROCESS_UP: MetricDef =
    def("webd_process_up", GAUGE, &["role"], "1 when the role is up (for workers: at least one worker is up), else 0.");
pub const WORKERS: MetricDef =
    def("webd_workers", GAUGE, &["state"], "Worker processes by state (idle, busy, draining, starting).");
pub const WORKER_UTILIZATION: MetricDef =
    def("webd_worker_utilization_ratio", GAUGE, &["worker"], "Share of recent time the worker spent serving, 0 to 1.");
pub const CONNECTIONS_ACCEPTED: MetricDef =
    def("webd_connections_accepted_total", COUNTER, &[], "TCP connections accepted by the listener.");
pub const CONNECTIONS_ACTIVE: MetricDef =
    def("webd_connections_active", GAUGE, &[], "HTTP connections currently open in the workers.");
pub const CONNECTIONS_RESCUED: MetricDef = def(
    "webd_connections_rescued_total",
    COUNTER,
    &["how"],
    "Connections of retiring or dead workers carried on instead of closed, by how (migrated, idle, replayed, resumed, closed).",
);
pub const POISON_REQUESTS: MetricDef = def(
    "webd_poison_requests_total",
    COUNTER,
    &[],
    "Requests in progress in two worker deaths, answered 500 instead of replayed.",
);
pub const HTTP_REQUESTS: MetricDef =
    def("webd_http_requests_total", COUNTER, &["code"], "HTTP responses sent by the workers, by status code.");
pub const HTTP_REQUESTS_BY_ENCODING: MetricDef = def(
    "webd_http_requests_by_encoding_total",
    COUNTER,
    &["encoding"],
    "HTTP responses sent by the workers, by the content coding of their representation (identity, br, zstd, gzip).",
);
pub const HTTP_REQUEST_DURATION: MetricDef = def(
    "webd_http_request_duration_seconds",
    HISTOGRAM,
    &[],
    "Time from a request's complete head to its response's last byte handed to the kernel.",
);
pub const HTTP_RESPONSE_BYTES: MetricDef =
    def("webd_http_response_bytes_total", COUNTER, &[], "Bytes of HTTP responses (head and body) sent by the workers.");
pub const DRAINING: MetricDef =
    def("webd_draining", GAUGE, &[], "1 while the server drains (readiness fails, no new connections), else 0.");
pub const BUILD_INFO: MetricDef =
    def("webd_build_info", GAUGE, &["version"], "Always 1; the version label names the running webd build.");

pub const UPGRADES: MetricDef = def(
    "webd_upgrades_total",
    COUNTER,
    &[],
    "Zero-downtime binary upgrades this daemon descends from (carried from daemon to daemon).",
);

pub const DAEMON_RESTARTS: MetricDef = def(
    "webd_daemon_restarts_total",
    COUNTER,
    &[],
    "Daemon incarnations that adopted the previous daemon's sockets, lanes and counters from systemd's fd store.",
);

pub const TLS_HANDSHAKES: MetricDef = def(
    "webd_tls_handshakes_total",
    COUNTER,
    &["result", "version"],
    "TLS handshakes by result (ok, failed) and version (TLSv1.2, TLSv1.3, none when failed before one was agreed).",
);
pub const TLS_RESUMED: MetricDef =
    def("webd_tls_resumed_total", COUNTER, &[], "Completed TLS handshakes that resumed a session.");
pub const TLS_HANDSHAKE_DURATION: MetricDef = def(
    "webd_tls_handshake_duration_seconds",
    HISTOGRAM,
    &[],
    "Time from a TLS connection's arrival in a worker to its completed handshake.",
);
pub const TLS_CERTIFICATE_EXPIRY: MetricDef = def(
    "webd_tls_certificate_expiry_timestamp_seconds",
    GAUGE,
    &["name"],
    "notAfter of each certificate served (Unix time), by its first DNS name.",
);

/// Every `webd_*` metric, in exposition order.
pub const ALL: [MetricDef; 23] = [
    HEARTBEAT_LATENCY,
    HEARTBEAT_AGE,
    HEARTBEATS_MISSED,
    RESTARTS,
    PROCESS_UP,
    WORKERS,
    WORKER_UTILIZATION,
    CONNECTIONS_ACCEPTED,
    CONNECTIONS_ACTIVE,
    CONNECTIONS_RESCUED,
    POISON_REQUESTS,
    HTTP_REQUESTS,
    HTTP_REQUESTS_BY_ENCODING,
    HTTP_REQUEST_DURATION,
    HTTP_RESPONSE_BYTES,
    DRAINING,
    BUILD_INFO,
    UPGRADES,
    DAEMON_RESTARTS,
    TLS_HANDSHAKES,
    TLS_RESUMED,
    TLS_HANDSHAKE_DURATION,
    TLS_CERTIFICATE_EXPIRY,
];

/// Roles always exported, so `min(webd_process_up)` sees a role that never came up.
pub const ROLES: [&str; 3] = [Role::Listener.as_str(), Role::Manager.as_str(), Role::Worker.as_str()];
/// `reason` label values, in the order of `ByReason` (`Reason::ALL`).
pub const RESTART_REASONS: [&str; 3] = [Reason::ALL[0].as_str(), Reason::ALL[1].as_str(), Reason::ALL[2].as_str()];
/// Worker states always exported (0 when no worker is in the state).
pub const WORKER_STATES: [&str; 4] = [
    webd_proto::WorkerState::Idle.as_str(),
    webd_proto::WorkerState::Busy.as_str(),
    webd_proto::WorkerState::Draining.as_str(),
    webd_proto::WorkerState::Starting.as_str(),
];

/// Renders the whole scrape: the `webd_*` families and the process collector's.
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    /// Registers the observed-state collector and the daemon's process collector.
    pub fn new(observed: SharedObserved) -> prometheus::Result<Exporter> {
        let registry = Registry::new();
        registry.register(Box::new(ObservedCollector::new(observed)?))?;
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Exporter { registry })
    }

    /// The text exposition (format 0.0.4) of one scrape.
    pub fn render(&self) -> prometheus::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// A `Collector` whose values are read from [`Observed`] at each scrape.
pub struct ObservedCollector {
    observed: SharedObserved,
    descs: Vec<Desc>,
}

impl ObservedCollector {
    pub fn new(observed: SharedObserved) -> prometheus::Result<ObservedCollector> {
        let descs = ALL
            .iter()
            .map(|d| {
                let labels = d.labels.iter().map(|l| l.to_string()).collect();
                Desc::new(d.name.to_string(), d.help.to_string(), labels, HashMap::new())
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(ObservedCollector { observed, descs })
    }
}

impl Collector for ObservedCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let copy = snapshot(&self.observed.lock());
        families(&copy)
    }
}

/// Copies what the metrics need (everything but the status document) out of the lock.
fn snapshot(o: &Observed) -> Observed {
    Observed {
        draining: o.draining,
        roles: o.roles.clone(),
        workers_by_state: o.workers_by_state.clone(),
        worker_utilization: o.worker_utilization.clone(),
        connections_active: o.connections_active,
        figures: o.figures.clone(),
        upgrades: o.upgrades,
        daemon_restarts: o.daemon_restarts,
        certificates: o.certificates.clone(),
        generation: o.generation,
        // Everything but the status document, which metrics do not use.
        status: None,
        not_ready: None,
    }
}

/// Builds every `webd_*` family from a snapshot, in [`ALL`] order. Families without
/// samples (no worker yet, no request yet) are dropped by the registry.
pub fn families(o: &Observed) -> Vec<MetricFamily> {
    let mut out = role_families(o);
    out.extend(worker_families(o));
    out.extend(traffic_families(o));
    out.push(Family::new(&DRAINING).gauge(&[], bool_value(o.draining)).finish());
    out.push(Family::new(&BUILD_INFO).gauge(&[crate::VERSION], 1.0).finish());
    out.push(Family::new(&UPGRADES).counter(&[], o.upgrades).finish());
    out.push(Family::new(&DAEMON_RESTARTS).counter(&[], o.daemon_restarts).finish());
    out.extend(tls_families(o));
    out
}

/// Handshake families only while TLS is on (a certificate is loaded).
fn tls_families(o: &Observed) -> Vec<MetricFamily> {
    if o.certificates.is_empty() {
        return Vec::new();
    }
    let tls = &o.figures.tls;
    let mut handshakes = Family::new(&TLS_HANDSHAKES);
    for (version, n) in ["TLSv1.2", "TLSv1.3"].into_iter().zip(tls.ok) {
        handshakes = handshakes.counter(&["ok", version], n);
    }
    for (version, n) in ["TLSv1.2", "TLSv1.3", "none"].into_iter().zip(tls.failed) {
        handshakes = handshakes.counter(&["failed", version], n);
    }
    let mut expiry = Family::new(&TLS_CERTIFICATE_EXPIRY);
    for (name, not_after) in &o.certificates {
        expiry = expiry.gauge(&[name.as_str()], *not_after as f64);
    }
    vec![
        handshakes.finish(),
        Family::new(&TLS_RESUMED).counter(&[], tls.resumed).finish(),
        Family::new(&TLS_HANDSHAKE_DURATION).histogram(&[], &tls.duration, &TLS_HANDSHAKE_BUCKETS).finish(),
        expiry.finish(),
    ]
}

/// Every role, with zero figures while it has none yet.
fn role_families(o: &Observed) -> Vec<MetricFamily> {
    let mut latency = Family::new(&HEARTBEAT_LATENCY);
    let mut age = Family::new(&HEARTBEAT_AGE);
    let mut missed = Family::new(&HEARTBEATS_MISSED);
    let mut restarts = Family::new(&RESTARTS);
    let mut up = Family::new(&PROCESS_UP);
    for ((role, state), (_, supervised)) in o.roles.iter().zip(o.figures.supervision.iter()) {
        let role = role.as_str();
        latency = latency.histogram(&[role], &supervised.latency, &LATENCY_BUCKETS);
        age = age.gauge(&[role], state.heartbeat_age_seconds);
        missed = missed.counter(&[role], supervised.missed_heartbeats);
        for (reason, n) in supervised.restarts.iter() {
            restarts = restarts.counter(&[role, reason.as_str()], n);
        }
        up = up.gauge(&[role], bool_value(state.up));
    }
    vec![latency.finish(), age.finish(), missed.finish(), restarts.finish(), up.finish()]
}

fn worker_families(o: &Observed) -> Vec<MetricFamily> {
    let mut workers = Family::new(&WORKERS);
    for state in webd_proto::WorkerState::ALL {
        let n: u64 = o.workers_by_state.iter().filter(|(s, _)| s == state).map(|(_, n)| n).sum();
        workers = workers.gauge(&[state.as_str()], n as f64);
    }
    let mut utilization = Family::new(&WORKER_UTILIZATION);
    for (id, ratio) in &o.worker_utilization {
        utilization = utilization.gauge(&[id.to_string().as_str()], *ratio);
    }
    vec![workers.finish(), utilization.finish()]
}

fn traffic_families(o: &Observed) -> Vec<MetricFamily> {
    let mut requests = Family::new(&HTTP_REQUESTS);
    let f = &o.figures;
    for (code, n) in f.responses.iter() {
        requests = requests.counter(&[code.to_string().as_str()], n);
    }
    let mut rescued = Family::new(&CONNECTIONS_RESCUED);
    for (how, n) in f.rescued.iter() {
        rescued = rescued.counter(&[how], n);
    }
    let mut by_encoding = Family::new(&HTTP_REQUESTS_BY_ENCODING);
    for (encoding, n) in f.by_encoding.iter() {
        by_encoding = by_encoding.counter(&[encoding], n);
    }
    vec![
        Family::new(&CONNECTIONS_ACCEPTED).counter(&[], f.accepted).finish(),
        Family::new(&CONNECTIONS_ACTIVE).gauge(&[], o.connections_active as f64).finish(),
        rescued.finish(),
        Family::new(&POISON_REQUESTS).counter(&[], f.rescued.poison).finish(),
        requests.finish(),
        by_encoding.finish(),
        Family::new(&HTTP_REQUEST_DURATION).histogram(&[], &f.duration, &DURATION_BUCKETS).finish(),
        Family::new(&HTTP_RESPONSE_BYTES).counter(&[], f.response_bytes).finish(),
    ]
}

fn bool_value(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Collects the samples of one declared metric; label values are given in the order of
/// the declaration's label names.
struct Family {
    def: &'static MetricDef,
    metrics: Vec<proto::Metric>,
}

impl Family {
    fn new(def: &'static MetricDef) -> Family {
        Family { def, metrics: Vec::new() }
    }

    fn gauge(self, values: &[&str], value: f64) -> Family {
        let mut g = proto::Gauge::default();
        g.set_value(value);
        self.push(values, |m| m.set_gauge(g))
    }

    fn counter(self, values: &[&str], value: u64) -> Family {
        let mut c = proto::Counter::default();
        c.set_value(value as f64);
        self.push(values, |m| m.set_counter(c))
    }

    /// `h.counts` holds per-bucket counts (the last one above every bound); the
    /// exposition wants cumulative counts, ending in `+Inf` = the total, which the
    /// encoder writes from `sample_count`.
    fn histogram(self, values: &[&str], h: &Histogram, bounds: &[f64]) -> Family {
        let mut cumulative = 0u64;
        let buckets = bounds
            .iter()
            .enumerate()
            .map(|(i, bound)| {
                cumulative += h.counts.get(i).copied().unwrap_or(0);
                let mut b = proto::Bucket::default();
                b.set_upper_bound(*bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut ph = proto::Histogram::default();
        ph.set_bucket(buckets);
        ph.set_sample_count(h.count());
        ph.set_sample_sum(h.sum_seconds());
        self.push(values, |m| m.set_histogram(ph))
    }

    fn push(mut self, values: &[&str], set: impl FnOnce(&mut proto::Metric)) -> Family {
        debug_assert_eq!(values.len(), self.def.labels.len(), "label values of {}", self.def.name);
        let labels = self
            .def
            .labels
            .iter()
            .zip(values)
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name(name.to_string());
                pair.set_value(value.to_string());
                pair
            })
            .collect();
        let mut metric = proto::Metric::from_label(labels);
        set(&mut metric);
        self.metrics.push(metric);
        self
    }

    fn finish(self) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(self.def.name.to_string());
        family.set_help(self.def.help.to_string());
        family.set_field_type(self.def.kind);
        family.set_metric(self.metrics);
        family
    }
}
