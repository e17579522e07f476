//! Integration tests: each module starts real webd trees (see `util`).
//!
//! - `control`: webctl and the control socket against the real daemon
//! - `tree`: the supervised process tree (spawn, crash, hang, backoff, stop, orphans)
//! - `metrics`: /metrics, /readyz, /status against the real daemon
//! - `ops`: config file, SIGHUP, systemd notify, --user, access log
//! - `startup`: bad flags and runtime errors at start
//! - `http`: the HTTP contract (SPEC §4) against the real binary

mod control;
mod http;
mod metrics;
mod ops;
mod startup;
mod tree;
mod util;
