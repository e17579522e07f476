//! webd: a self-healing, multi-process static web server.
//!
//! Process roles, one module each: [`daemon`] (supervisor, owner of every channel and
//! listening socket), [`listener`] (accepts TCP, sends each connection into a worker's
//! lane), [`manager`] (worker pool and steering), [`worker`] (HTTP). They talk through
//! [`ipc`] messages over seqpacket channels; [`sys`] holds the only `unsafe` code (fd passing, fork+exec).
//! Each role, and the admin server, runs one [`event_loop`].
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod control;
pub mod daemon;
pub mod event_loop;
pub mod fault;
pub mod figures;
pub mod heartbeat;
pub mod http1;
pub mod ipc;
pub mod listener;
pub mod logging;
pub mod manager;
pub mod observe;
pub mod signals;
pub mod supervise;
pub mod sys;
pub mod tls;
pub mod worker;

/// The version every process reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// argv[0] prefix that marks a child role (`webd: listener`, `webd: worker 3`).
pub const ROLE_PREFIX: &str = "webd: ";
