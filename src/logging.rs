//! tracing set-up shared by every role: stderr, text or JSON, `RUST_LOG` filter.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Environment variable through which the daemon hands its log format to children
/// (they start logging before their bootstrap message arrives).
pub const LOG_FORMAT_ENV: &str = "WEBD_LOG_FORMAT";

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The format a child should log in, from the environment.
pub fn format_from_env() -> LogFormat {
    match std::env::var(LOG_FORMAT_ENV).as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

pub fn format_env_value(format: LogFormat) -> String {
    match format {
        LogFormat::Json => "json".into(),
        LogFormat::Text => "text".into(),
    }
}
