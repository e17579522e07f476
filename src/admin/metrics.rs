//! The Prometheus exporter: every `webd_*` metric of SPEC.md section 5, declared once
//! with its help text, plus the daemon's own `process_*` metrics.
//!
//! Nothing here counts anything. The daemon's supervision loop accumulates the figures
//! in [`Observed`] (monotonic across child restarts); at each scrape
//! [`ObservedCollector`] copies them out under a short lock and turns the copy into
//! metric families, so counters are exactly the accumulated totals and never reset.
//! The `prometheus` crate's registry checks the declarations and its text encoder writes
//! format 0.0.4.

use crate::ipc::DURATION_BUCKETS;
use crate::observe::{self, Observed, SharedObserved, LATENCY_BUCKETS};
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

const fn def(
    name: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
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
pub const HEARTBEATS_MISSED: MetricDef =
    def("webd_heartbeats_missed_total", COUNTER, &["role"], "Heartbeat checks that found the role's heartbeat too old.");
pub const RESTARTS: MetricDef = def(
    "webd_restarts_total",
    COUNTER,
    &["role", "reason"],
    "Processes of the role restarted, by reason (crash, hang, manual).",
);
pub const PROCESS_UP: MetricDef = def(
    "webd_process_up",
    GAUGE,
    &["role"],
    "1 when the role is up (for workers: at least one worker is up), else 0.",
);
pub const WORKERS: MetricDef =
    def("webd_workers", GAUGE, &["state"], "Worker processes by state (idle, busy, draining, starting).");
pub const WORKER_UTILIZATION: MetricDef =
    def("webd_worker_utilization_ratio", GAUGE, &["worker"], "Share of recent time the worker spent serving, 0 to 1.");
pub const CONNECTIONS_ACCEPTED: MetricDef =
    def("webd_connections_accepted_total", COUNTER, &[], "TCP connections accepted by the listener.");
pub const CONNECTIONS_ACTIVE: MetricDef =
    def("webd_connections_active", GAUGE, &[], "HTTP connections currently open in the workers.");
pub const HTTP_REQUESTS: MetricDef =
    def("webd_http_requests_total", COUNTER, &["code"], "HTTP responses sent by the workers, by status code.");
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

/// Every `webd_*` metric, in exposition order.
pub const ALL: [MetricDef; 14] = [
    HEARTBEAT_LATENCY,
    HEARTBEAT_AGE,
    HEARTBEATS_MISSED,
    RESTARTS,
    PROCESS_UP,
    WORKERS,
    WORKER_UTILIZATION,
    CONNECTIONS_ACCEPTED,
    CONNECTIONS_ACTIVE,
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    HTTP_RESPONSE_BYTES,
    DRAINING,
    BUILD_INFO,
];

/// Roles always exported, so `min(webd_process_up)` sees a role that never came up.
pub const ROLES: [&str; 3] = ["listener", "manager", "worker"];
/// `reason` label values, in the order of `RoleFigures::restarts`.
pub const RESTART_REASONS: [&str; 3] = ["crash", "hang", "manual"];
/// Worker states always exported (0 when no worker is in the state).
pub const WORKER_STATES: [&str; 4] = ["idle", "busy", "draining", "starting"];

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
        connections_accepted: o.connections_accepted,
        connections_active: o.connections_active,
        http: o.http.clone(),
        ..Observed::default()
    }
}

/// Builds every `webd_*` family from a snapshot. Families without samples (no worker
/// yet, no request yet) are dropped by the registry.
pub fn families(o: &Observed) -> Vec<MetricFamily> {
    let roles = role_figures(o);
    let per_role = |f: &dyn Fn(&observe::RoleFigures) -> proto::Metric| roles.iter().map(|(_, r)| f(r)).collect();
    vec![
        family(
            &HEARTBEAT_LATENCY,
            roles.iter().map(|(n, r)| histogram(&[n], &r.heartbeat_latency, &LATENCY_BUCKETS)).collect(),
        ),
        family(&HEARTBEAT_AGE, roles.iter().map(|(n, r)| gauge(&[n], r.heartbeat_age_seconds)).collect()),
        family(&HEARTBEATS_MISSED, roles.iter().map(|(n, r)| counter(&[n], r.heartbeats_missed)).collect()),
        family(&RESTARTS, restarts(&roles)),
        family(&PROCESS_UP, roles.iter().map(|(n, r)| gauge(&[n], f64::from(u8::from(r.up)))).collect()),
        family(&WORKERS, workers_by_state(o)),
        family(&WORKER_UTILIZATION, o.worker_utilization.iter().map(|(id, u)| gauge(&[&id.to_string()], *u)).collect()),
        family(&CONNECTIONS_ACCEPTED, vec![counter(&[], o.connections_accepted)]),
        family(&CONNECTIONS_ACTIVE, vec![gauge(&[], o.connections_active as f64)]),
        family(&HTTP_REQUESTS, o.http.requests_by_code.iter().map(|(c, n)| counter(&[&c.to_string()], *n)).collect()),
        family(&HTTP_REQUEST_DURATION, vec![histogram(&[], &o.http.duration, &DURATION_BUCKETS)]),
        family(&HTTP_RESPONSE_BYTES, vec![counter(&[], o.http.response_bytes)]),
        family(&DRAINING, vec![gauge(&[], f64::from(u8::from(o.draining)))]),
        family(&BUILD_INFO, vec![gauge(&[crate::VERSION], 1.0)]),
    ]
    .into_iter()
    .zip(ALL.iter())
    .map(|(metrics, d)| with_labels(d, metrics))
    .collect::<Vec<_>>()
    .into_iter()
    .chain(std::iter::empty::<MetricFamily>().take({
        let _ = per_role;
        0
    }))
    .collect()
}
