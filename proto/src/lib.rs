//! Control-socket protocol shared by `webd` and `webctl`.
//!
//! One JSON object per line each way (docs/reference.md). Requests are tagged by
//! `cmd`; every response carries `ok` and either a payload or an `error` string.
//! This crate has no runtime and no unsafe code: it is only the types and the
//! path rule both sides must agree on.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Longest request line the daemon reads before answering with an error.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request sent to the daemon's control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Restart {
        target: RestartTarget,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u32>,
    },
    Drain,
    Resume,
    Scale {
        workers: u32,
    },
    Stop,
    /// Re-read the config file and certificates and apply them as SIGHUP does; answered
    /// when the rolling worker restart is done, or with why the configuration was refused.
    Reload,
    /// Replace the daemon binary without dropping a connection: a new daemon started
    /// from `binary` (default: the running executable's path) takes over the sockets.
    Upgrade {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
}

/// What `restart` acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartTarget {
    Listener,
    Manager,
    Workers,
    Worker,
}

/// The daemon's answer: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Response { ok: true, error: None, status: None, message: Some(message.into()) }
    }

    pub fn error(reason: impl Into<String>) -> Self {
        Response { ok: false, error: Some(reason.into()), status: None, message: None }
    }

    pub fn status(status: Status) -> Self {
        Response { ok: true, error: None, status: Some(status), message: None }
    }
}

/// The largest worker pool (flags, config file, `scale`).
pub const MAX_WORKERS: u32 = 256;

/// Defines a state enum with its wire form (snake_case, as the status document and the
/// metric labels spell it) and the list of every value.
macro_rules! states {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in the order metrics list them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire form.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

states! {
    /// The daemon as a whole.
    DaemonState { Running => "running", Draining => "draining", Stopping => "stopping" }
}

states! {
    /// A supervised role (listener or manager).
    ProcessState { Running => "running", Starting => "starting", Backoff => "backoff", Stopped => "stopped" }
}

states! {
    /// One worker slot.
    WorkerState { Idle => "idle", Busy => "busy", Draining => "draining", Starting => "starting" }
}

impl WorkerState {
    /// Serving requests (not starting, not draining).
    pub fn is_serving(self) -> bool {
        matches!(self, WorkerState::Idle | WorkerState::Busy)
    }
}

// Not derived: `states!` derives the same traits for every state enum.
#[allow(clippy::derivable_impls)]
impl Default for WorkerState {
    fn default() -> Self {
        WorkerState::Starting
    }
}

/// The status document of docs/reference.md (also admin `GET /status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub state: DaemonState,
    /// The HTTP addresses as bound: a configured port 0 shows the port the kernel chose.
    pub listen: Vec<String>,
    /// The admin endpoint's address as bound; `null` when it is off.
    #[serde(default)]
    pub admin: Option<String>,
    /// The HTTPS addresses as bound (empty when TLS is off).
    #[serde(default)]
    pub tls_listen: Vec<String>,
    /// The certificates served, the default first (empty when TLS is off).
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
    pub processes: Vec<ProcessStatus>,
    pub workers: Vec<WorkerStatus>,
    pub connections: ConnectionStatus,
    pub requests_total: u64,
}

/// One loaded certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// Its first DNS name (the `name` label of its expiry metric).
    pub name: String,
    /// Every DNS name it serves (a wildcard as `*.example.com`).
    pub names: Vec<String>,
    /// Its notAfter, RFC 3339 in UTC.
    pub not_after: String,
    /// The certificate file it was read from.
    pub file: String,
}

/// One supervised role (listener or manager).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub role: String,
    /// 0 while no process runs for the role.
    pub pid: u32,
    pub state: ProcessState,
    pub restarts: u64,
    pub heartbeat_age_ms: f64,
    pub heartbeat_latency_ms: f64,
    /// Listener only: its keeper, the child that sends on a connection the listener
    /// held when it died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeper_pid: Option<u32>,
}

/// One worker slot of the manager's pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: u32,
    pub pid: u32,
    pub state: WorkerState,
    pub restarts: u64,
    pub active_connections: u64,
    pub requests: u64,
    pub utilization: f64,
    /// Its keeper, the child that sends on its connections if it dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeper_pid: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    pub accepted: u64,
    pub active: u64,
}

/// The control socket path both binaries use when none is given (docs/reference.md):
/// `$WEBD_CONTROL_SOCKET`, else `/run/webd/webd.sock` for root, else
/// `$XDG_RUNTIME_DIR/webd.sock`, else `/tmp/webd-<uid>/webd.sock`.
pub fn default_control_socket(uid: u32) -> PathBuf {
    if let Some(path) = std::env::var_os("WEBD_CONTROL_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if uid == 0 {
        return PathBuf::from("/run/webd/webd.sock");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir).join("webd.sock");
    }
    PathBuf::from(format!("/tmp/webd-{uid}/webd.sock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_use_the_spec_wire_form() {
        let cases = [
            (r#"{"cmd":"status"}"#, Request::Status),
            (
                r#"{"cmd":"restart","target":"worker","id":3}"#,
                Request::Restart { target: RestartTarget::Worker, id: Some(3) },
            ),
            (
                r#"{"cmd":"restart","target":"listener"}"#,
                Request::Restart { target: RestartTarget::Listener, id: None },
            ),
            (r#"{"cmd":"scale","workers":2}"#, Request::Scale { workers: 2 }),
            (r#"{"cmd":"drain"}"#, Request::Drain),
            (r#"{"cmd":"reload"}"#, Request::Reload),
            (r#"{"cmd":"upgrade"}"#, Request::Upgrade { binary: None }),
            (
                r#"{"cmd":"upgrade","binary":"/usr/local/bin/webd"}"#,
                Request::Upgrade { binary: Some("/usr/local/bin/webd".into()) },
            ),
        ];
        for (line, want) in cases {
            let got: Request = serde_json::from_str(line).expect(line);
            assert_eq!(got, want);
            assert_eq!(serde_json::to_string(&want).expect("serializes"), line);
        }
    }

    #[test]
    fn unknown_commands_and_targets_are_rejected() {
        for line in [r#"{"cmd":"reboot"}"#, r#"{"cmd":"restart","target":"daemon"}"#, "garbage"] {
            assert!(serde_json::from_str::<Request>(line).is_err(), "{line}");
        }
    }
}
