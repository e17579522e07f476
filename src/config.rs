//! Command-line flags (docs/reference.md), validated into the `Config` every process
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
#[derive(Parser, Debug, Clone, Default, PartialEq, Deserialize)]
#[command(name = "webd", version, about, after_help = AFTER_HELP)]
#[serde(deny_unknown_fields)]
pub struct Cli {
    /// TCP address to serve HTTP on (repeatable) [default: 127.0.0.1:8080].
    #[arg(long = "listen", value_name = "ADDR", value_parser = parse_listen)]
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Document root [default: .].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Worker processes [default: number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(WORKERS.min as i64..=WORKERS.max as i64))]
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
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(HEARTBEAT_INTERVAL.min..=HEARTBEAT_INTERVAL.max))]
    pub heartbeat_interval: Option<u64>,
    /// Heartbeat age in milliseconds after which a check counts as missed (3 misses =
    /// hung) [default: 200].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(HEARTBEAT_TIMEOUT.min..=HEARTBEAT_TIMEOUT.max))]
    pub heartbeat_timeout: Option<u64>,
    /// Milliseconds a stopping process gets before SIGKILL [default: 1000].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(GRACE.min..=GRACE.max))]
    pub grace: Option<u64>,
    /// Longest a draining process waits for its connections before closing them, in
    /// milliseconds [default: 30000].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(DRAIN_TIMEOUT.min..=DRAIN_TIMEOUT.max))]
    pub drain_timeout: Option<u64>,
    /// Drop privileges to this user for listener, manager and workers after binding.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Milliseconds a client has to send a complete request head [default: 10000].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(HEADER_TIMEOUT.min..=HEADER_TIMEOUT.max))]
    pub header_timeout: Option<u64>,
    /// Milliseconds an idle keep-alive connection is kept open [default: 75000].
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(KEEPALIVE_TIMEOUT.min..=KEEPALIVE_TIMEOUT.max))]
    pub keepalive_timeout: Option<u64>,
    /// Most connections one worker holds at once [default: 16384].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(MAX_CONNECTIONS.min as i64..=MAX_CONNECTIONS.max as i64))]
    pub max_connections: Option<u32>,
    /// Most header fields one request head may carry (Host included); more is 431
    /// [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(MAX_HEADER_FIELDS.min as i64..=MAX_HEADER_FIELDS.max as i64))]
    pub max_header_fields: Option<u32>,
}

const AFTER_HELP: &str = "\
Signals (to the daemon; its children leave them to it):
  SIGTERM, SIGINT  graceful stop      SIGHUP  reload the config file, rolling worker restart
  SIGUSR1          reopen logs        SIGUSR2 binary upgrade
Logging: RUST_LOG sets the level and filters (e.g. RUST_LOG=debug, RUST_LOG=webd=info).
Exit codes: 0 clean stop, 1 runtime error (address in use, unreadable root),
  2 usage or configuration error.
Reference (flags, config keys, control protocol, metrics): docs/reference.md";

/// `--listen` takes a numeric IP and a port: a host name would resolve to addresses
/// nobody chose, and a bare IP leaves the port to guess.
fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{value:?} has no port: give IP:PORT, e.g. {value}:8080"));
    }
    Err(format!(
        "{value:?} is not IP:PORT (an IP address and a port, e.g. 127.0.0.1:8080; host names are not accepted)"
    ))
}

/// A numeric setting: its key (the flag is the same name in kebab-case) and the values
/// it accepts. Each is defined once here; the flag parser and the config-file check
/// both read it, so a flag and a file accept exactly the same values.
#[derive(Debug, Clone, Copy)]
pub struct Bounded {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
}

impl Bounded {
    /// `Err` names the key and the range when `value` is outside it.
    fn check(&self, value: Option<u64>) -> Result<(), String> {
        match value {
            Some(v) if !(self.min..=self.max).contains(&v) => {
                Err(format!("{} = {v} is not in {}..={}", self.key, self.min, self.max))
            }
            _ => Ok(()),
        }
    }
}

pub const WORKERS: Bounded = Bounded { key: "workers", min: 1, max: webd_proto::MAX_WORKERS as u64 };
pub const MAX_CONNECTIONS: Bounded = Bounded { key: "max_connections", min: 1, max: 1_000_000 };
const HEARTBEAT_INTERVAL: Bounded = Bounded { key: "heartbeat_interval", min: 10, max: 60_000 };
const HEARTBEAT_TIMEOUT: Bounded = Bounded { key: "heartbeat_timeout", min: 20, max: 600_000 };
const GRACE: Bounded = Bounded { key: "grace", min: 0, max: 600_000 };
const DRAIN_TIMEOUT: Bounded = Bounded { key: "drain_timeout", min: 0, max: 3_600_000 };
const HEADER_TIMEOUT: Bounded = Bounded { key: "header_timeout", min: 100, max: 600_000 };
const KEEPALIVE_TIMEOUT: Bounded = Bounded { key: "keepalive_timeout", min: 100, max: 3_600_000 };
/// The top is the worker's on-stack header table (`request::HEADER_CAPACITY`).
const MAX_HEADER_FIELDS: Bounded = Bounded { key: "max_header_fields", min: 1, max: 1024 };

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
    /// Most header fields in one request head.
    pub max_header_fields: u32,
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
        Config::load_noting_overrides(cli).map(|(config, _)| config)
    }

    /// Like `load`, also naming the keys the file sets that a flag overrides with
    /// another value (a reload says so: editing them in the file has no effect).
    pub fn load_noting_overrides(cli: &Cli) -> Result<(Config, Vec<&'static str>), ConfigError> {
        let (merged, overridden) = match &cli.config {
            Some(path) => cli.clone().over(read_file(path)?),
            None => (cli.clone(), Vec::new()),
        };
        Ok((Config::from_cli(merged)?, overridden))
    }

    /// Checks merged settings and resolves defaults.
    fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let listen = if cli.listen.is_empty() { vec![SocketAddr::from(([127, 0, 0, 1], 8080))] } else { cli.listen };
        let root = resolve_root(cli.root.as_deref().unwrap_or(std::path::Path::new(".")))?;
        let admin = match cli.admin.as_deref() {
            Some(admin) => parse_admin(admin).map_err(|e| ConfigError::Usage(format!("--admin {e}")))?,
            None => parse_admin("127.0.0.1:9180").map_err(ConfigError::Usage)?,
        };
        check_addresses(&listen, admin)?;
        if let Some(name) = &cli.user {
            check_user(name)?;
        }
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
            max_header_fields: cli.max_header_fields.unwrap_or(100),
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
    /// These flags, with every setting they leave unset taken from `file`, and the keys
    /// both set to different values (the flag wins; a reload says so).
    fn over(self, file: Cli) -> (Cli, Vec<&'static str>) {
        let mut overridden = Vec::new();
        let mut note = |key: &'static str, differs: bool| {
            if differs {
                overridden.push(key);
            }
        };
        note("listen", !self.listen.is_empty() && !file.listen.is_empty() && self.listen != file.listen);
        // Each setting named once: merged, and noted when the flag overrides the file.
        macro_rules! merged {
            ($($field:ident),+) => {
                Cli {
                    listen: if self.listen.is_empty() { file.listen } else { self.listen },
                    config: self.config,
                    $($field: {
                        note(stringify!($field), matches!((&self.$field, &file.$field), (Some(a), Some(b)) if a != b));
                        self.$field.or(file.$field)
                    },)+
                }
            };
        }
        let cli = merged!(
            root,
            workers,
            admin,
            control_socket,
            access_log,
            log_format,
            heartbeat_interval,
            heartbeat_timeout,
            grace,
            drain_timeout,
            user,
            header_timeout,
            keepalive_timeout,
            max_connections,
            max_header_fields
        );
        (cli, overridden)
    }
}

/// Each address once, and the admin endpoint on none of them: said as such rather than
/// as the "Address already in use" the second bind would report.
fn check_addresses(listen: &[SocketAddr], admin: Option<SocketAddr>) -> Result<(), ConfigError> {
    for (i, addr) in listen.iter().enumerate() {
        if listen[..i].contains(addr) {
            return Err(ConfigError::Usage(format!("listen address {addr} is given twice")));
        }
    }
    match admin {
        Some(admin) if listen.contains(&admin) => {
            Err(ConfigError::Usage(format!("admin address {admin} is also a listen address")))
        }
        _ => Ok(()),
    }
}

/// `--user` must name an existing user: found now, it is a configuration error (2),
/// not a failure after the sockets are bound.
fn check_user(name: &str) -> Result<(), ConfigError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ConfigError::Usage(format!("user {name:?}: no such user"))),
        Err(e) => Err(ConfigError::Usage(format!("user {name:?}: cannot look it up: {e}"))),
    }
}

/// Reads and checks a TOML config file; every error names the file (and the key).
/// Relative paths in it are relative to the file's own directory.
fn read_file(path: &std::path::Path) -> Result<Cli, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Usage(format!("config file {}: {e}", path.display())))?;
    let mut file: Cli = toml::from_str(&text)
        .map_err(|e| ConfigError::Usage(format!("config file {}: {}", path.display(), toml_error(&text, &e))))?;
    let in_file = |message: String| ConfigError::Usage(format!("config file {}: {message}", path.display()));
    if file.listen.is_empty() && names_key(&text, "listen") {
        return Err(in_file("listen = [] names no address: give at least one IP:PORT, or leave the key out".into()));
    }
    if let Some(admin) = &file.admin {
        parse_admin(admin).map_err(|e| in_file(format!("admin = {e}")))?;
    }
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    file.root = file.root.map(|p| dir.join(p));
    file.control_socket = file.control_socket.map(|p| dir.join(p));
    file.access_log = file.access_log.map(|log| match log.as_str() {
        "-" | "off" | "" => log,
        _ => dir.join(&log).to_string_lossy().into_owned(),
    });
    let checks = [
        (WORKERS, file.workers.map(u64::from)),
        (MAX_CONNECTIONS, file.max_connections.map(u64::from)),
        (HEARTBEAT_INTERVAL, file.heartbeat_interval),
        (HEARTBEAT_TIMEOUT, file.heartbeat_timeout),
        (GRACE, file.grace),
        (DRAIN_TIMEOUT, file.drain_timeout),
        (HEADER_TIMEOUT, file.header_timeout),
        (KEEPALIVE_TIMEOUT, file.keepalive_timeout),
        (MAX_HEADER_FIELDS, file.max_header_fields.map(u64::from)),
    ];
    for (setting, value) in checks {
        setting.check(value).map_err(in_file)?;
    }
    Ok(file)
}

/// True when the TOML document sets `key` at its top level.
fn names_key(text: &str, key: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|table| table.contains_key(key))
}

/// toml's message with the line and column it points at, on one line (its source
/// excerpt, which spans several, is left out).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - start + 1;
            let source = text[start..].lines().next().unwrap_or_default().trim();
            format!("line {line}, column {column} ({source}): {message}")
        }
        None => message.to_string(),
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

fn parse_admin(admin: &str) -> Result<Option<SocketAddr>, String> {
    if admin == "off" {
        return Ok(None);
    }
    admin.parse().map(Some).map_err(|_| format!("{admin:?}: expected IP:PORT or off"))
}

fn default_workers() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

fn current_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}
