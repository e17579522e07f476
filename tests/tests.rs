//! Integration tests: each module starts real webd trees (see `util`).
//!
//! - `tree`: the supervised process tree (spawn, crash, hang, backoff, stop, orphans)
//! - `startup`: bad flags and runtime errors at start

mod startup;
mod tree;
mod util;
