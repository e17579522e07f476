//! Command-line flags (SPEC.md section 2), validated into the `Config` every process
//! runs with. The daemon parses and checks; children receive the result in their
//! bootstrap message, so they never parse flags themselves.

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Self-healing, observable, multi-process static web server.
#[derive(Parser, Debug, Clone)]
#[command(name = "webd", version, about)]
pub struct Cli {
    /// TCP address to serve HTTP on (repeatable).
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Document root.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub root: PathBuf,
    /// Worker processes (default: number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: Option<u32>,
    /// Admin HTTP endpoint address, or `off`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9180")]
    pub admin: String,
    /// Control Unix socket path.
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// TOML file with the same keys (flags win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Access log: a path, `-` for stderr, or `off`.
    #[arg(long, value_name = "PATH", default_value = "off")]
    pub access_log: String,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Milliseconds between heartbeats of every child.
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_interval: u64,
    /// Heartbeat age in milliseconds after which a check counts as missed (3 misses = hung).
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(20..=600_000))]
    pub heartbeat_timeout: u64,
    /// Milliseconds a stopping process gets before SIGKILL.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub grace: u64,
    /// Longest a draining process waits for its connections before closing them (ms).
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub drain_timeout: u64,
    /// Drop privileges to this user for listener, manager and workers after binding.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Milliseconds a client has to send a complete request head.
    #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub header_timeout: u64,
    /// Milliseconds an idle keep-alive connection is kept open.
    #[arg(long, value_name = "MS", default_value_t = 75_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub keepalive_timeout: u64,
    /// Most connections one worker holds at once.
    #[arg(long, value_name = "N", default_value_t = 16_384, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated settings shared by every process of one daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Addresses the daemon binds and the listener accepts on.
    pub listen: Vec<SocketAddr>,
    /// Absolute, canonical document root.
    pub root: PathBuf,
    /// Size of the worker pool.
    pub workers: u32,
    /// Admin HTTP address; `None` when disabled.
    pub admin: Option<SocketAddr>,
    /// Control Unix socket path.
    pub control_socket: PathBuf,
    /// Access log destination; `None` when off, `-` for stderr.
    pub access_log: Option<String>,
    pub log_format: LogFormat,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    pub grace_ms: u64,
    pub drain_timeout_ms: u64,
    /// User the children run as.
    pub user: Option<String>,
    pub header_timeout_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub max_connections: u32,
}

/// Why a configuration was refused: usage errors (exit 2) or runtime errors (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

impl Config {
    /// Checks the flags and resolves defaults.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        if cli.config.is_some() {
            return Err(ConfigError::Usage("--config is not supported yet".into()));
        }
        let listen = if cli.listen.is_empty() { vec![SocketAddr::from(([127, 0, 0, 1], 8080))] } else { cli.listen };
        let root = resolve_root(&cli.root)?;
        let admin = parse_admin(&cli.admin)?;
        let access_log = match cli.access_log.as_str() {
            "off" | "" => None,
            other => Some(other.to_string()),
        };
        if cli.heartbeat_timeout < cli.heartbeat_interval {
            return Err(ConfigError::Usage(format!(
                "--heartbeat-timeout ({} ms) must be at least --heartbeat-interval ({} ms)",
                cli.heartbeat_timeout, cli.heartbeat_interval
            )));
        }
        let control_socket = cli.control_socket.unwrap_or_else(|| webd_proto::default_control_socket(current_uid()));
        Ok(Config {
            listen,
            root,
            workers: cli.workers.unwrap_or_else(default_workers),
            admin,
            control_socket,
            access_log,
            log_format: cli.log_format,
            heartbeat_interval_ms: cli.heartbeat_interval,
            heartbeat_timeout_ms: cli.heartbeat_timeout,
            grace_ms: cli.grace,
            drain_timeout_ms: cli.drain_timeout,
            user: cli.user,
            header_timeout_ms: cli.header_timeout,
            keepalive_timeout_ms: cli.keepalive_timeout,
            max_connections: cli.max_connections,
        })
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

fn resolve_root(root: &std::path::Path) -> Result<PathBuf, ConfigError> {
    let canonical = std::fs::canonicalize(root)
        .map_err(|e| ConfigError::Runtime(format!("document root {}: {e}", root.display())))?;
    let meta = std::fs::metadata(&canonical)
        .map_err(|e| ConfigError::Runtime(format!("document root {}: {e}", canonical.display())))?;
    if !meta.is_dir() {
        return Err(ConfigError::Runtime(format!("document root {} is not a directory", canonical.display())));
    }
    std::fs::read_dir(&canonical)
        .map_err(|e| ConfigError::Runtime(format!("document root {} is not readable: {e}", canonical.display())))?;
    Ok(canonical)
}

fn parse_admin(admin: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if admin == "off" {
        return Ok(None);
    }
    admin.parse().map(Some).map_err(|_| ConfigError::Usage(format!("--admin {admin:?}: expected ADDR:PORT or off")))
}

fn default_workers() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

fn current_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}
