//! Settings: each is one row of the table below, with its key (the flag is the same name
//! in kebab-case), its default, the values it accepts and whether a reload may change it
//! live. From the table come the flags (`Cli`), the config file's keys and their check,
//! the validated `Config` every process runs with, and the reload rule (`Config::reloaded`,
//! used by `daemon/reload.rs`); `declare.rs` says how. docs/reference.md lists the same
//! settings, and a unit test keeps it in step.
//!
//! The daemon parses and checks; children receive the result in their bootstrap message,
//! so they never parse flags themselves.
//!
//! A new setting is one row plus its use; a path in it, also a line in `file_settings`
//! (relative to the file's directory), and a check across settings, one in `Config::checked`.

#[macro_use]
mod declare;
mod rules;
mod summary;

pub use rules::{
    ErrorPages, HeaderRule, HiddenFiles, Redirect, Site, SiteRules, ERROR_PAGE_STATUSES, MAX_HEADER_RULES,
};
pub use summary::summary;

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

settings! {
    /// TCP address to serve HTTP on (repeatable)
    listen: Vec<SocketAddr> { flag: "ADDR", parser: parse_listen, default: "127.0.0.1:8080", reload: Fixed }
    /// Document root
    root: PathBuf { flag: "DIR", default: ".", reload: Live }
    /// Worker processes
    workers: u32 {
        flag: "N", range: 1..=webd_proto::MAX_WORKERS as u64, default: ("number of CPUs", default_workers), reload: Live
    }
    /// Admin HTTP endpoint address, or `off`
    admin: Admin { flag: "ADDR", default: "127.0.0.1:9180", reload: Fixed }
    /// Control Unix socket path
    control_socket: PathBuf {
        flag: "PATH",
        default: (
            "$WEBD_CONTROL_SOCKET, /run/webd/webd.sock for root, $XDG_RUNTIME_DIR/webd.sock, else /tmp/webd-<uid>/webd.sock",
            default_control_socket
        ),
        reload: Fixed,
    }
    /// Access log: a path, `-` for stderr, or `off`
    access_log: AccessLogTarget { flag: "PATH", default: "off", reload: Live }
    /// Access log line format: `combined` (nginx/Apache) or `json` (one object per line)
    access_log_format: AccessLogFormat { flag: "FORMAT", default: "combined", reload: Live }
    /// Log format on stderr
    log_format: LogFormat { flag: "FORMAT", default: "text", reload: Fixed }
    /// Milliseconds between heartbeats of every child
    heartbeat_interval: Millis { flag: "MS", range: 10..=60_000, default: "100", reload: Fixed }
    /// Heartbeat age in milliseconds after which a check counts as missed (3 misses = hung)
    heartbeat_timeout: Millis { flag: "MS", range: 20..=600_000, default: "200", reload: Fixed }
    /// Milliseconds a stopping process gets before SIGKILL
    grace: Millis { flag: "MS", range: 0..=600_000, default: "1000", reload: Live }
    /// Longest a draining process waits for its connections before closing them, in milliseconds
    drain_timeout: Millis { flag: "MS", range: 0..=3_600_000, default: "30000", reload: Live }
    /// Drop privileges to this user for listener, manager and workers after binding
    user: String { flag: "NAME", default: none, reload: Fixed }
    /// Milliseconds a client has to send a complete request head
    header_timeout: Millis { flag: "MS", range: 100..=600_000, default: "10000", reload: Live }
    /// Milliseconds an idle keep-alive connection is kept open
    keepalive_timeout: Millis { flag: "MS", range: 100..=3_600_000, default: "75000", reload: Live }
    /// Most connections one worker holds at once
    max_connections: u32 { flag: "N", range: 1..=1_000_000, default: "16384", reload: Live }
    /// Most header fields one request head may carry (Host included); more is 431. The top
    /// is the worker's on-stack header table (`request::HEADER_CAPACITY`).
    max_header_fields: u32 { flag: "N", range: 1..=1024, default: "100", reload: Live }
    /// Requests one connection may carry: the last one's response says `Connection: close`
    max_requests_per_connection: u32 { flag: "N", range: 1..=1_000_000_000, default: "10000", reload: Live }
    /// TCP address to serve HTTPS on (repeatable)
    tls_listen: Vec<SocketAddr> { flag: "ADDR", parser: parse_listen, default: none, reload: Fixed }
    /// Default certificate chain (PEM); more in the config file's [[certificates]]
    tls_cert: PathBuf { flag: "PATH", default: none, reload: Live }
    /// Private key (PEM) of --tls-cert
    tls_key: PathBuf { flag: "PATH", default: none, reload: Live }

    file only:
    /// More certificates (`[[certificates]]` tables of `cert` and `key`), chosen by SNI
    certificates: Vec<crate::tls::CertificateFiles> { default: Vec::new(), reload: Live }
    /// `deny`: a path with a segment starting with `.` is 404, except under `/.well-known/`
    hidden_files: HiddenFiles { default: HiddenFiles::Deny, reload: Live }
    /// `[[redirects]]`: `from` (a prefix when it ends with `/`), `to`, `status` (301, 302, 307, 308)
    redirects: Vec<Redirect> { default: Vec::new(), reload: Live }
    /// `[[headers]]`: `match` (a glob on the decoded path), `set` (header name to value); all matching rules apply
    headers: Vec<HeaderRule> { default: Vec::new(), reload: Live }
    /// A path served (200) for a GET or HEAD that matches no file, e.g. `/index.html`
    fallback: Option<String> { default: None, reload: Live }
    /// `error_pages`: a status (`404 = "/404.html"`) to the file beneath the root whose content is its body
    error_pages: ErrorPages { default: ErrorPages::new(), reload: Live }
    /// `true`: a directory without `index.html` is listed (HTML, or JSON for `Accept: application/json`)
    directory_listing: bool { default: false, reload: Live }
    /// `[[sites]]`: virtual hosts by `Host` (`hosts`, `root`, and any of the rule keys above)
    sites: Vec<Site> { default: Vec::new(), reload: Live }
    /// MiB of compressed bodies each worker keeps (on-the-fly compression, LRU by bytes)
    compress_cache_mib: u32 { range: 1..=65_536, default: 64, reload: Live }
    /// `true`: every plain `listen` address answers 308 to the same target on HTTPS (the first `tls_listen` port)
    redirect_to_https: bool { default: false, reload: Live }
}

const AFTER_HELP: &str = "\
Signals (to the daemon; its children leave them to it):
  SIGTERM, SIGINT  graceful stop      SIGHUP  reload the config file, rolling worker restart
  SIGUSR1          reopen logs        SIGUSR2 binary upgrade
Logging: RUST_LOG sets the level and filters (e.g. RUST_LOG=debug, RUST_LOG=webd=info).
Exit codes: 0 clean stop, 1 runtime error (address in use, unreadable root),
  2 usage or configuration error.
Reference (flags, config keys, control protocol, metrics): docs/reference.md";

/// One row of the settings table, for what goes over every setting.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The config file's key; the flag is the same in kebab-case.
    pub key: &'static str,
    /// Whether a flag sets it too (else only the config file does).
    pub flag: bool,
    pub default: DefaultValue,
    /// The numbers a numeric setting accepts, as a flag and in a file.
    pub range: Option<RangeInclusive<u64>>,
    pub reload: Reload,
}

impl Setting {
    /// The flag's name, without the leading `--`.
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }
}

/// A setting's default, as `--help` and docs/reference.md show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// A value as it would follow the flag, and parsed like one.
    Flag(&'static str),
    /// Computed at start; this says how.
    Computed(&'static str),
    /// Unset unless given.
    Unset,
}

/// What a SIGHUP does with a changed setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// Taken at once; workers pick it up as they are replaced.
    Live,
    /// Fixed at start: the running value is kept, and the reload says so.
    Fixed,
}

/// A duration in milliseconds, as flags and files give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl From<u64> for Millis {
    fn from(ms: u64) -> Millis {
        Millis(ms)
    }
}

impl From<Millis> for u64 {
    fn from(ms: Millis) -> u64 {
        ms.0
    }
}

/// Where the admin HTTP endpoint listens: `IP:PORT`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Admin {
    Off,
    At(SocketAddr),
}

impl Admin {
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Admin::Off => None,
            Admin::At(addr) => Some(addr),
        }
    }
}

impl FromStr for Admin {
    type Err = String;
    fn from_str(value: &str) -> Result<Admin, String> {
        if value == "off" {
            return Ok(Admin::Off);
        }
        value.parse().map(Admin::At).map_err(|_| "expected IP:PORT or off".to_string())
    }
}

impl TryFrom<String> for Admin {
    type Error = String;
    fn try_from(value: String) -> Result<Admin, String> {
        value.parse()
    }
}

impl From<Admin> for String {
    fn from(admin: Admin) -> String {
        admin.addr().map_or_else(|| "off".to_string(), |addr| addr.to_string())
    }
}

/// Where access log lines go: a file, stderr (`-`), or nowhere (`off` or empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum AccessLogTarget {
    Off,
    Stderr,
    File(PathBuf),
}

impl From<String> for AccessLogTarget {
    fn from(value: String) -> AccessLogTarget {
        match value.as_str() {
            "off" | "" => AccessLogTarget::Off,
            "-" => AccessLogTarget::Stderr,
            _ => AccessLogTarget::File(value.into()),
        }
    }
}

impl From<AccessLogTarget> for String {
    fn from(target: AccessLogTarget) -> String {
        match target {
            AccessLogTarget::Off => "off".into(),
            AccessLogTarget::Stderr => "-".into(),
            AccessLogTarget::File(path) => path.to_string_lossy().into_owned(),
        }
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How the access log writes a line.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    /// nginx/Apache "combined".
    #[default]
    Combined,
    /// One JSON object per line (`worker/access_log.rs` lists its fields).
    Json,
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
    /// The default site's rules: the top-level keys.
    pub fn default_site_rules(&self) -> SiteRules<'_> {
        SiteRules {
            hidden_files: self.hidden_files,
            directory_listing: self.directory_listing,
            fallback: self.fallback.as_deref(),
            error_pages: &self.error_pages,
            headers: &self.headers,
            redirects: &self.redirects,
        }
    }

    /// What is accepted but probably not meant: an error page whose file does not exist
    /// (yet) under its site's root. The built-in page is sent until it does; a deploy that
    /// writes the pages after the configuration must not make a start or reload fail.
    pub fn warnings(&self) -> Vec<String> {
        let top = self.default_site_rules();
        let sites = self.sites.iter().map(|site| (site.name(), site.root.as_path(), site.rules(&top)));
        let mut warnings = Vec::new();
        for (site, root, rules) in std::iter::once(("default", self.root.as_path(), top)).chain(sites) {
            for (status, path) in rules.error_pages {
                let file = root.join(path.trim_start_matches('/'));
                if !file.is_file() {
                    warnings.push(format!(
                        "site {site}: error_pages: {status} = {path:?}: {} is not a file; the built-in page is sent",
                        file.display()
                    ));
                }
            }
        }
        warnings
    }

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
        Ok((Config::with_defaults(merged).checked()?, overridden))
    }

    /// What no single setting's parser can check: the document root exists (and is made
    /// absolute and canonical), no two addresses collide, the user exists, and the
    /// heartbeat timeout is at least the interval.
    fn checked(mut self) -> Result<Config, ConfigError> {
        self.root = resolve_root(&self.root)?;
        let served: Vec<SocketAddr> = self.listen.iter().chain(self.tls_listen.iter().flatten()).copied().collect();
        check_addresses(&served, self.admin.addr())?;
        if let Some(name) = &self.user {
            check_user(name)?;
        }
        if self.redirect_to_https && self.tls_listen.as_ref().is_none_or(Vec::is_empty) {
            return Err(ConfigError::Usage(
                "redirect_to_https = true needs an HTTPS address to send clients to: give tls_listen".into(),
            ));
        }
        let (interval, timeout) = (self.heartbeat_interval.0, self.heartbeat_timeout.0);
        if timeout < interval {
            return Err(ConfigError::Usage(format!(
                "heartbeat_timeout ({timeout} ms) must be at least heartbeat_interval ({interval} ms)"
            )));
        }
        Ok(self)
    }
}

impl Cli {
    /// The defaults given as flag values (`--grace 1000`), parsed as a command line: a
    /// default is what the same flag would give, and help shows the text it comes from.
    fn literal_defaults() -> Cli {
        let mut argv = vec!["webd".to_string()];
        for setting in SETTINGS.iter().filter(|s| s.flag) {
            if let DefaultValue::Flag(value) = setting.default {
                argv.push(format!("--{}={value}", setting.flag()));
            }
        }
        Cli::try_parse_from(argv).expect("every default given as a flag value parses (unit-tested)")
    }
}

/// A flag's help: the row's doc comment, then its default as clap would show one.
fn help_text(doc: &[&str], default: DefaultValue) -> String {
    let text = doc.iter().map(|line| line.trim()).collect::<Vec<_>>().join(" ");
    match default {
        DefaultValue::Flag(value) | DefaultValue::Computed(value) => format!("{text} [default: {value}]"),
        DefaultValue::Unset => text,
    }
}

/// `Err` names the key and the range when `value` is outside it.
fn check_range(key: &str, range: RangeInclusive<u64>, value: Option<u64>) -> Result<(), String> {
    match value {
        Some(v) if !range.contains(&v) => Err(format!("{key} = {v} is not in {}..={}", range.start(), range.end())),
        _ => Ok(()),
    }
}

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

/// Each address once, and the admin endpoint on none of them: said as such rather than
/// as the "Address already in use" the second bind would report. Port 0 (the kernel
/// picks a free port, a different one for each socket) clashes with nothing.
fn check_addresses(listen: &[SocketAddr], admin: Option<SocketAddr>) -> Result<(), ConfigError> {
    let named: Vec<&SocketAddr> = listen.iter().filter(|a| a.port() != 0).collect();
    for (i, addr) in named.iter().enumerate() {
        if named[..i].contains(addr) {
            return Err(ConfigError::Usage(format!("listen address {addr} is given twice")));
        }
    }
    match admin {
        Some(admin) if admin.port() != 0 && listen.contains(&admin) => {
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
fn read_file(path: &Path) -> Result<Cli, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Usage(format!("config file {}: {e}", path.display())))?;
    file_settings(&text, path)
}

/// The settings a config file's `text` gives, checked with the same parsers and ranges
/// as the flags. Relative paths in it are relative to the file's own directory.
fn file_settings(text: &str, path: &Path) -> Result<Cli, ConfigError> {
    let in_file = |message: String| ConfigError::Usage(format!("config file {}: {message}", path.display()));
    let mut file: Cli = toml::from_str(text).map_err(|e| in_file(toml_error(text, &e)))?;
    if file.listen.as_ref().is_some_and(Vec::is_empty) {
        return Err(in_file("listen = [] names no address: give at least one IP:PORT, or leave the key out".into()));
    }
    file.check_ranges().map_err(in_file)?;
    rules::check_rules(file.redirects.as_deref(), file.headers.as_deref()).map_err(in_file)?;
    if let Some(Some(fallback)) = &file.fallback {
        rules::check_fallback(fallback).map_err(in_file)?;
    }
    if let Some(pages) = &file.error_pages {
        rules::check_error_pages(pages).map_err(in_file)?;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(sites) = file.sites.as_mut() {
        rules::check_sites(sites, dir).map_err(in_file)?;
    }
    file.root = file.root.map(|p| dir.join(p));
    file.control_socket = file.control_socket.map(|p| dir.join(p));
    file.access_log = file.access_log.map(|target| match target {
        AccessLogTarget::File(p) => AccessLogTarget::File(dir.join(p)),
        other => other,
    });
    file.tls_cert = file.tls_cert.map(|p| dir.join(p));
    file.tls_key = file.tls_key.map(|p| dir.join(p));
    file.certificates = file.certificates.map(|list| list.into_iter().map(|c| c.relative_to(dir)).collect());
    Ok(file)
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

fn resolve_root(root: &Path) -> Result<PathBuf, ConfigError> {
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

fn default_workers() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}

fn default_control_socket() -> PathBuf {
    webd_proto::default_control_socket(nix::unistd::getuid().as_raw())
}

#[cfg(test)]
mod tests;
