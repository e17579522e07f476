//! Test harness: start the real `webd` binary on a port of the kernel's choosing with a
//! temp document root and control socket, find its processes in /proc, talk HTTP, generate load, and
//! clean everything up (printing the daemon's log) even when a test fails.

#![allow(dead_code)]

use std::time::{Duration, Instant};

mod daemon;
mod http;
mod load;
mod metrics;
mod process;
mod tls;

pub use daemon::*;
pub use http::*;
pub use load::*;
pub use metrics::*;
pub use process::*;
pub use tls::*;

pub const WEBD: &str = env!("CARGO_BIN_EXE_webd");

/// Polls `cond` every 20 ms until it holds or `timeout` passes; panics naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Like `wait_until`, returning the first `Some` value.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A listen (or admin) address for which the kernel picks a free port as webd binds it:
/// read back with `Webd::addr` / `Webd::admin_addr`, it is never raced for.
pub const LISTEN_ANY_PORT: &str = "127.0.0.1:0";

/// The body of `/index.html` in every tree `Webd` starts.
pub const BODY: &[u8] = b"<h1>webd</h1>\n";
