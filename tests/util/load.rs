//! Load: client threads (new connection per request, or keep-alive) counting
//! successes and failures, and a seeded random generator.

#![allow(dead_code)]

use super::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Client threads that each make requests in a loop until stopped, counting successes
/// (status 200 with the expected body) and failures. Bounded: every thread stops after
/// 60 s regardless.
pub struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

/// One client's way of making a request; the state it keeps between requests (a kept
/// connection, say) is its own.
type Requester = Box<dyn FnMut() -> std::io::Result<Response> + Send>;

impl Clients {
    /// `clients` threads, each making requests with a requester from `make`.
    pub fn start(clients: usize, expect: Vec<u8>, make: impl Fn() -> Requester) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let expect = Arc::new(expect);
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, errors, expect) =
                    (stop.clone(), ok.clone(), failed.clone(), errors.clone(), expect.clone());
                let mut request = make();
                std::thread::spawn(move || {
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                        let error = match request() {
                            Ok(r) if r.status == 200 && r.body == *expect => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            Ok(r) => format!("status {} body {} bytes", r.status, r.body.len()),
                            Err(e) => e.to_string(),
                        };
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap_or_else(|e| e.into_inner()).push(error);
                    }
                })
            })
            .collect();
        Clients { stop, ok, failed, errors, threads }
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; returns (succeeded, failed, error samples).
    pub fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), errors)
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Clients that open a new connection per request.
pub struct Load;

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, path: &str, expect: Vec<u8>) -> Clients {
        let path = path.to_string();
        Clients::start(clients, expect, || {
            let path = path.clone();
            Box::new(move || get(addr, &path))
        })
    }
}

/// Clients that keep a connection open for many requests (HTTP/1.1 keep-alive), opening
/// a new one only when the server says `Connection: close` or after a failure.
pub struct KeepAliveLoad;

impl KeepAliveLoad {
    pub fn start(addr: SocketAddr, clients: usize, path: &str, expect: Vec<u8>) -> Clients {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        Clients::start(clients, expect, || {
            let request = request.clone();
            let mut conn = KeepAlive::new(addr, Duration::from_secs(10));
            Box::new(move || conn.exchange(request.as_bytes()).map_err(std::io::Error::from))
        })
    }
}

/// Deterministic xorshift64* generator: the suites need randomness without a crate,
/// and a printed seed makes a run reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// A seed from `WEBD_TEST_SEED` if set, else from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("WEBD_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` (hi exclusive, hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}
