//! Integration tests: each module starts real webd trees (see `util`).
//!
//! - `activation`: socket activation (LISTEN_FDS): adopted, matched, refused
//! - `chaos`: random SIGKILL/SIGSTOP of listener, manager and workers under load; every
//!   failed request attributed to its fault (`WEBD_SOAK_SECS` for long runs)
//! - `control`: webctl and the control socket against the real daemon
//! - `encoding`: content codings (sidecars, on-the-fly compression and its cache, Vary,
//!   ranges of encoded bytes, the by-encoding metric)
//! - `flags`: --max-requests-per-connection, --access-log-format json, --check-config
//! - `defects`: defects an operator met in the first hour, each with its test
//! - `handover`: keep-alive connections handed to live workers at graceful retirement
//!   (restart, scale down, SIGHUP): no client connection closed; TLS ones still close
//! - `systemd`: the dist/systemd units under a real systemd (systemd-sandbox; needs root)
//! - `tree`: the supervised process tree (spawn, crash, hang, backoff, stop, orphans)
//! - `metrics`: /metrics, /readyz, /status against the real daemon
//! - `ops`: config file, SIGHUP, systemd notify, --user, access log
//! - `sites`: site rules from the config file (hidden files, redirects, header rules,
//!   fallback, error pages, directory listings)
//! - `startup`: bad flags and runtime errors at start
//! - `upgrade`: zero-downtime binary upgrade and rollback
//! - `http`: the HTTP contract (docs/reference.md, HTTP) against the real binary
//! - `tls`: HTTPS against the real binary with a CA made in the test: SNI, versions,
//!   bad certificate files, a listener crash, hostile TLS input
//! - `vhosts`: `[[sites]]` virtual hosts by Host and SNI, per-site rules, reload
//! - `rescue`: a dead worker's connections taken over through its keeper: idle ones
//!   served on, downloads continued from the exact byte, poison requests answered 500
//! - `hostile`: hostile HTTP, control and admin clients and fd exhaustion, with a normal
//!   client served throughout and heartbeats measured

mod activation;
mod chaos;
mod control;
mod defects;
mod encoding;
mod flags;
mod handover;
mod hostile;
mod http;
mod metrics;
mod ops;
mod rescue;
mod sites;
mod startup;
mod systemd;
mod tls;
mod tls_faults;
mod tree;
mod upgrade;
mod util;
mod vhosts;
