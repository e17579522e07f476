//! What a SIGHUP reload may change in a running tree.
//!
//! Workers pick up a new configuration when they are replaced, so everything a worker
//! reads can change live: pool size, document root, HTTP timeouts, connection and header-field caps,
//! access log, drain and grace periods. The listening addresses, control socket, admin
//! address, heartbeat settings, log format and user are fixed at start: changing them
//! needs a restart, and a reload that asks for it says so in the log.

use crate::config::Config;

/// The running configuration with the live-changeable settings taken from `new`.
pub fn apply_live(running: &Config, new: Config) -> Config {
    warn_fixed(running, &new);
    Config {
        workers: new.workers,
        root: new.root,
        header_timeout_ms: new.header_timeout_ms,
        keepalive_timeout_ms: new.keepalive_timeout_ms,
        max_connections: new.max_connections,
        max_header_fields: new.max_header_fields,
        access_log: new.access_log,
        drain_timeout_ms: new.drain_timeout_ms,
        grace_ms: new.grace_ms,
        ..running.clone()
    }
}

fn warn_fixed(running: &Config, new: &Config) {
    let fixed = [
        ("listen", running.listen != new.listen),
        ("control_socket", running.control_socket != new.control_socket),
        ("admin", running.admin != new.admin),
        ("heartbeat_interval", running.heartbeat_interval_ms != new.heartbeat_interval_ms),
        ("heartbeat_timeout", running.heartbeat_timeout_ms != new.heartbeat_timeout_ms),
        ("log_format", running.log_format != new.log_format),
        ("user", running.user != new.user),
    ];
    for (key, changed) in fixed {
        if changed {
            tracing::warn!(key, "changing this setting needs a restart; keeping the running value");
        }
    }
}
