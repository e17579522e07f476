//! Command-line flags (SPEC.md section 2), validated into the `Config` every process
//! runs with. The daemon parses and checks; children receive the result in their
//! bootstrap message, so they never parse flags themselves.

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Self-healing, observable, multi-process static web server.
///
/// Every setting can also come from `--config FILE` (TOML, the same keys in
/// snake_case); a flag given on the command line wins over the file.
#[derive(Parser, Debug, Clone, Default, Deserialize)]
#[command(name = "webd", version, about)]
#[serde(deny_unknown_fields)]
pub struct Cli {
    /// TCP address to serve HTTP on (repeatable) [default: 127.0.0.1:8080].
    #[arg(long = "listen", value_name = "ADDR")]
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Document root [default: .].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Worker processes [default: number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub workers: Option<u32>,
    /// Admin HTTP endpoint address, or `off` [default: 127.0.0.1:9180].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Control Unix socket path [default: $WEBD_CONTROL_SOCKET, /run/webd/webd.sock for
    /// root, $XDG_RUNTIME_DIR/webd.sock, else /tmp/webd-<uid>/webd.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// TOML file with the same keys (flags win).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Access log: a path, `-` for stderr, or `off` [default: off].
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<String>,
    /// Log format on stderr [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Milliseconds between heartbeats of every child [default: 100].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(HEARTBEAT_INTERVAL.0..=HEARTBEAT_INTERVAL.1))]
    pub heartbeat_interval: Option<u64>,
    /// Heartbeat age in milliseconds after which a check counts as missed (3 misses =
    /// hung) [default: 200].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(HEARTBEAT_TIMEOUT.0..=HEARTBEAT_TIMEOUT.1))]
    pub heartbeat_timeout: Option<u64>,
    /// Milliseconds a stopping process gets before SIGKILL [default: 1000].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(GRACE.0..=GRACE.1))]
    pub grace: Option<u64>,
    /// Longest a draining process waits for its connections before closing them, in
    /// milliseconds [default: 30000].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(DRAIN_TIMEOUT.0..=DRAIN_TIMEOUT.1))]
    pub drain_timeout: Option<u64>,
    /// Drop privileges to this user for listener, manager and workers after binding.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Milliseconds a client has to send a complete request head [default: 10000].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(HEADER_TIMEOUT.0..=HEADER_TIMEOUT.1))]
    pub header_timeout: Option<u64>,
    /// Milliseconds an idle keep-alive connection is kept open [default: 75000].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(KEEPALIVE_TIMEOUT.0..=KEEPALIVE_TIMEOUT.1))]
    pub keepalive_timeout: Option<u64>,
    /// Most connections one worker holds at once [default: 16384].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,
}

// Allowed ranges, shared by the flag parser and the config-file check.
const HEARTBEAT_INTERVAL: (u64, u64) = (10, 60_000);
const HEARTBEAT_TIMEOUT: (u64, u64) = (20, 600_000);
const GRACE: (u64, u64) = (0, 600_000);
const DRAIN_TIMEOUT: (u64, u64) = (0, 3_600_000);
const HEADER_TIMEOUT: (u64, u64) = (100, 600_000);
const KEEPALIVE_TIMEOUT: (u64, u64) = (100, 3_600_000);

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
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
    /// Reads the config file named by `--config` (if any), lets the flags win over it,
    /// checks the result and resolves defaults.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let merged = match &cli.config {
            Some(path) => cli.clone().over(read_file(path)?),
            None => cli.clone(),
        };
        Config::from_cli(merged)
    }

    /// Checks merged settings and resolves defaults.
    fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let listen = if cli.listen.is_empty() { vec![SocketAddr::from(([127, 0, 0, 1], 8080))] } else { cli.listen };
        let root = resolve_root(cli.root.as_deref().unwrap_or(std::path::Path::new(".")))?;
        let admin = parse_admin(cli.admin.as_deref().unwrap_or("127.0.0.1:9180"))?;
        let access_log = match cli.access_log.as_deref() {
            None | Some("off") | Some("") => None,
            Some(other) => Some(other.to_string()),
        };
        let heartbeat_interval = cli.heartbeat_interval.unwrap_or(100);
        let heartbeat_timeout = cli.heartbeat_timeout.unwrap_or(200);
        if heartbeat_timeout < heartbeat_interval {
            return Err(ConfigError::Usage(format!(
                "heartbeat_timeout ({heartbeat_timeout} ms) must be at least heartbeat_interval ({heartbeat_interval} ms)"
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
            log_format: cli.log_format.unwrap_or_default(),
            heartbeat_interval_ms: heartbeat_interval,
            heartbeat_timeout_ms: heartbeat_timeout,
            grace_ms: cli.grace.unwrap_or(1000),
            drain_timeout_ms: cli.drain_timeout.unwrap_or(30_000),
            user: cli.user,
            header_timeout_ms: cli.header_timeout.unwrap_or(10_000),
            keepalive_timeout_ms: cli.keepalive_timeout.unwrap_or(75_000),
            max_connections: cli.max_connections.unwrap_or(16_384),
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

impl Cli {
    /// These flags, with every setting they leave unset taken from `file`.
    fn over(self, file: Cli) -> Cli {
        Cli {
            listen: if self.listen.is_empty() { file.listen } else { self.listen },
            root: self.root.or(file.root),
            workers: self.workers.or(file.workers),
            admin: self.admin.or(file.admin),
            control_socket: self.control_socket.or(file.control_socket),
            config: self.config,
            access_log: self.access_log.or(file.access_log),
            log_format: self.log_format.or(file.log_format),
            heartbeat_interval: self.heartbeat_interval.or(file.heartbeat_interval),
            heartbeat_timeout: self.heartbeat_timeout.or(file.heartbeat_timeout),
            grace: self.grace.or(file.grace),
            drain_timeout: self.drain_timeout.or(file.drain_timeout),
            user: self.user.or(file.user),
            header_timeout: self.header_timeout.or(file.header_timeout),
            keepalive_timeout: self.keepalive_timeout.or(file.keepalive_timeout),
            max_connections: self.max_connections.or(file.max_connections),
        }
    }
}

/// Reads and checks a TOML config file; every error names the file (and the key).
fn read_file(path: &std::path::Path) -> Result<Cli, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Usage(format!("config file {}: {e}", path.display())))?;
    let file: Cli = toml::from_str(&text)
        .map_err(|e| ConfigError::Usage(format!("config file {}: {}", path.display(), one_line(&e.to_string()))))?;
    let checks: [(&str, Option<u64>, (u64, u64)); 6] = [
        ("heartbeat_interval", file.heartbeat_interval, HEARTBEAT_INTERVAL),
        ("heartbeat_timeout", file.heartbeat_timeout, HEARTBEAT_TIMEOUT),
        ("grace", file.grace, GRACE),
        ("drain_timeout", file.drain_timeout, DRAIN_TIMEOUT),
        ("header_timeout", file.header_timeout, HEADER_TIMEOUT),
        ("keepalive_timeout", file.keepalive_timeout, KEEPALIVE_TIMEOUT),
    ];
    for (key, value, (lo, hi)) in checks {
        if let Some(v) = value.filter(|v| !(lo..=hi).contains(v)) {
            return Err(ConfigError::Usage(format!(
                "config file {}: {key} = {v} is not in {lo}..={hi}",
                path.display()
            )));
        }
    }
    if let Some(w) = file.workers.filter(|w| !(1..=256).contains(w)) {
        return Err(ConfigError::Usage(format!("config file {}: workers = {w} is not in 1..=256", path.display())));
    }
    if let Some(m) = file.max_connections.filter(|m| *m == 0) {
        return Err(ConfigError::Usage(format!(
            "config file {}: max_connections = {m} must be at least 1",
            path.display()
        )));
    }
    Ok(file)
}

/// toml's errors span several lines (a source excerpt); keep the message on one.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
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
