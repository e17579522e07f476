//! What a SIGHUP reload may change in a running tree.
//!
//! Workers pick up a new configuration when they are replaced, so everything a worker
//! reads can change live: pool size, document root, HTTP timeouts, connection and header-field caps,
//! access log, drain and grace periods. The rest (addresses, control socket, heartbeat
//! settings, log format, user) is fixed at start: changing it needs a restart, and a
//! reload that asks for it says so in the log. Which setting is which is its `reload:`
//! in the settings table of `config.rs`; `Config::reloaded` applies it.

use crate::config::Config;

/// The running configuration with the live-changeable settings taken from `new`.
pub fn apply_live(running: &Config, new: Config) -> Config {
    let (config, kept) = running.reloaded(new);
    for key in kept {
        tracing::warn!(key, "changing this setting needs a restart; keeping the running value");
    }
    config
}
