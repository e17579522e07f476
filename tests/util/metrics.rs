//! Prometheus scrapes of the admin endpoint, and a background heartbeat-age probe.

#![allow(dead_code)]

use super::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One Prometheus text-format sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Scrapes `/metrics` on the admin port and parses every sample.
pub fn scrape(admin_port: u16) -> Vec<Sample> {
    let r = get(SocketAddr::from(([127, 0, 0, 1], admin_port)), "/metrics").expect("scrape /metrics");
    assert_eq!(r.status, 200);
    parse_metrics(&String::from_utf8_lossy(&r.body))
}

/// Parses Prometheus text format 0.0.4 samples (comments skipped).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().expect("numeric sample value"),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("label k=v");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// The value of the sample `name` whose labels include all of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples.iter().find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v))).map(|s| s.value)
}

/// Scrapes /metrics without panicking (for background probes): None on any error.
pub fn try_scrape(admin_port: u16, timeout: Duration) -> Option<Vec<Sample>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let r = request_within(addr, b"GET /metrics HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n", timeout).ok()?;
    (r.status == 200).then(|| parse_metrics(&String::from_utf8_lossy(&r.body)))
}

/// `webd_heartbeats_missed_total` per role (listener, manager, worker).
pub fn missed_heartbeats(samples: &[Sample]) -> HashMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name == "webd_heartbeats_missed_total")
        .filter_map(|s| s.label("role").map(|r| (r.to_string(), s.value)))
        .collect()
}

/// The largest heartbeat ages seen by a background probe, per role, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatFigures {
    pub max_age_ms: std::collections::BTreeMap<String, f64>,
    pub samples: u64,
    pub failed_samples: u64,
}

impl HeartbeatFigures {
    /// `listener 105 / manager 98 / worker 120` (ms), for summaries.
    pub fn brief(&self) -> String {
        let parts: Vec<String> = ["listener", "manager", "worker"]
            .iter()
            .map(|r| match self.max_age_ms.get(*r) {
                Some(ms) => format!("{r} {ms:.0}"),
                None => format!("{r} -"),
            })
            .collect();
        parts.join(" / ")
    }
}

/// Samples `webd_heartbeat_age_seconds{role}` from /metrics every `period` on a thread
/// of its own, keeping the largest value per role, until `finish`.
pub struct HeartbeatProbe {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<HeartbeatFigures>>,
}

impl HeartbeatProbe {
    pub fn start(admin_port: u16, period: Duration) -> HeartbeatProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut figures = HeartbeatFigures::default();
            let started = Instant::now();
            // Bounded: a probe never outlives 15 minutes even if `finish` is never called.
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(900) {
                match try_scrape(admin_port, Duration::from_secs(2)) {
                    Some(samples) => {
                        figures.samples += 1;
                        for s in samples.iter().filter(|s| s.name == "webd_heartbeat_age_seconds") {
                            if let Some(role) = s.label("role") {
                                let ms = s.value * 1000.0;
                                let max = figures.max_age_ms.entry(role.to_string()).or_insert(0.0);
                                *max = max.max(ms);
                            }
                        }
                    }
                    None => figures.failed_samples += 1,
                }
                std::thread::sleep(period);
            }
            figures
        });
        HeartbeatProbe { stop, handle: Some(handle) }
    }

    pub fn finish(mut self) -> HeartbeatFigures {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for HeartbeatProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
