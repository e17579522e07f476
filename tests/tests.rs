//! Integration tests: each module starts real webd trees (see `util`).
//!
//! - `control`: webctl and the control socket against the real daemon
//! - `tree`: the supervised process tree (spawn, crash, hang, backoff, stop, orphans)
//! - `startup`: bad flags and runtime errors at start

mod control;
mod startup;
mod tree;
mod util;
