//! What each channel carries, one type per channel and direction: a receiver matches
//! only what its channel can bring, and a message owns the descriptors it carries.
//!
//! | channel | down (supervisor → child) | up (child → supervisor) |
//! |---|---|---|
//! | daemon ↔ listener | [`ToListener`] | [`Heartbeat`] |
//! | daemon ↔ manager | [`ToManager`] | [`FromManager`] |
//! | manager ↔ worker | [`ToWorker`] | [`Heartbeat`] |
//! | lane (listener → worker) | [`Connections`] | – |
//! | steering (manager → listener) | [`Steer`] | – |
//! | upgrade (old ↔ new daemon) | [`ToSuccessor`] | [`ToPredecessor`] |

use super::fd::Fd;
use crate::config::Config;
use crate::figures::Figures;
use crate::tls::tickets::TicketKeys;
use serde::{Deserialize, Serialize};

/// Daemon → listener.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToListener<'a> {
    /// First message: settings and the listener's descriptors.
    Bootstrap(Box<ListenerBootstrap<'a>>),
    /// Stop accepting and exit (connections stay queued for the next listener).
    Shutdown { deadline_ms: u64 },
    /// Stop accepting.
    Drain,
    /// Undo `Drain`.
    Resume,
    /// The sending ends of the lanes of slots `first..`.
    Lanes { first: u32, lanes: Vec<Fd<'a>> },
}

/// Daemon → manager.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToManager<'a> {
    Bootstrap(Box<ManagerBootstrap<'a>>),
    /// Retire every worker within `deadline_ms`, then exit. `hand_over`: another tree's
    /// workers read the same lanes (a manager restart, an upgrade that shares them), so
    /// each worker hands its keep-alive connections into its own slot's lane.
    Shutdown {
        deadline_ms: u64,
        #[serde(default)]
        hand_over: bool,
    },
    /// Workers answer with `Connection: close`; answered with `Applied`.
    Drain,
    /// Undo `Drain`; answered with `Applied`.
    Resume,
    /// The receiving ends of the lanes of slots `first..` (for its workers), and their
    /// sending ends (for a retiring worker's hand-over, [`ToWorker::HandOver`]).
    Lanes {
        first: u32,
        lanes: Vec<Fd<'a>>,
        #[serde(default)]
        senders: Vec<Fd<'a>>,
    },
    /// Grow or shrink the worker pool; answered with `Done`.
    Scale {
        workers: u32,
    },
    /// Rolling restart of every worker, or of one; answered with `Done`.
    RestartWorkers {
        id: Option<u32>,
    },
    /// The access log was reopened (SIGUSR1): here is the new file.
    ReopenLog(Fd<'a>),
    /// Certificates re-read by a reload, for the workers started from now on (sent
    /// before the `Reconfigure` that replaces every worker).
    Tls(Box<crate::tls::TlsMaterial>),
    /// Rotated session-ticket keys: for every worker, running or started from now on.
    TicketKeys(Box<TicketKeys>),
    /// A reloaded configuration: resize the pool and replace every worker, one at a
    /// time, so all run with it.
    Reconfigure(Box<Config>),
}

/// Manager → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker<'a> {
    Bootstrap(Box<WorkerBootstrap<'a>>),
    /// Finish what is in progress and exit; idle keep-alive connections are closed
    /// when `deadline_ms` has passed, not before.
    Shutdown {
        deadline_ms: u64,
    },
    /// Answer with `Connection: close`.
    Drain,
    /// Undo `Drain`.
    Resume,
    /// Switch to this access log file.
    ReopenLog(Fd<'a>),
    /// Connections moved from a lane no worker reads.
    Connections(Connections<'a>),
    /// Rotated session-ticket keys.
    TicketKeys(Box<TicketKeys>),
    /// Sent just before `Shutdown`: the sending end of a live worker's lane. Retiring,
    /// hand each plain keep-alive connection through it at its next request boundary
    /// (with the bytes received and not yet processed) instead of closing it.
    HandOver {
        lane: Fd<'a>,
    },
}

/// Manager → daemon.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromManager {
    Heartbeat(Box<Heartbeat>),
    /// A drain or resume has been passed on to every worker.
    Applied,
    /// A worker command finished (`ok`) or failed with a reason.
    Done {
        ok: bool,
        detail: String,
    },
}

impl From<Heartbeat> for FromManager {
    fn from(hb: Heartbeat) -> Self {
        FromManager::Heartbeat(Box::new(hb))
    }
}

/// What a listener needs to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerBootstrap<'a> {
    pub config: Config,
    /// Start paused (the server is draining).
    pub draining: bool,
    /// Bound, listening TCP sockets, in `config.listen` order.
    pub listen: Vec<Fd<'a>>,
    /// The same for HTTPS, in `config.tls_listen` order.
    #[serde(default)]
    pub tls_listen: Vec<Fd<'a>>,
    /// Receiving end of the steering channel.
    pub steering: Fd<'a>,
    /// Read end of the daemon's lifeline pipe: EOF means the daemon is gone.
    pub lifeline: Fd<'a>,
}

/// What a manager needs to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct ManagerBootstrap<'a> {
    pub config: Config,
    pub draining: bool,
    /// Sending end of the steering channel.
    pub steering: Fd<'a>,
    pub lifeline: Fd<'a>,
    /// The access log, opened O_APPEND by the daemon, for its workers.
    pub access_log: Option<Fd<'a>>,
    /// Certificates for its workers.
    #[serde(default)]
    pub tls: crate::tls::TlsMaterial,
    /// The session-ticket keys its workers share.
    pub tickets: TicketKeys,
    /// The port of the first `tls_listen` socket as bound (`redirect_to_https`).
    #[serde(default)]
    pub https_port: Option<u16>,
}

/// What a worker needs to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerBootstrap<'a> {
    pub config: Config,
    pub draining: bool,
    /// Worker slot number.
    pub id: u32,
    pub lifeline: Fd<'a>,
    /// Receiving end of its slot's lane.
    pub lane: Fd<'a>,
    /// Sending end of the same lane: the worker's keeper sends the connections of a dead
    /// worker into it, for the slot's next worker.
    #[serde(default)]
    pub lane_sender: Option<Fd<'a>>,
    pub access_log: Option<Fd<'a>>,
    /// The certificates to serve TLS connections with.
    #[serde(default)]
    pub tls: crate::tls::TlsMaterial,
    /// The session-ticket keys (None: tickets off, sessions resume on this worker only).
    #[serde(default)]
    pub tickets: Option<TicketKeys>,
    /// Where `redirect_to_https` sends plain requests (the first `tls_listen` port).
    #[serde(default)]
    pub https_port: Option<u16>,
}

/// Connections, on a lane or moved to a worker.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Connections<'a>(pub Vec<Connection<'a>>);

/// One accepted connection and how it is to be served.
#[derive(Debug)]
pub struct Connection<'a> {
    pub fd: Fd<'a>,
    pub transport: Transport,
    /// A hand-over: the request bytes the retiring worker read from it and did not
    /// process (often none), which the receiver takes as if it had just read them.
    /// `None` for a new connection. For a rescue, the bytes after the response in
    /// progress (or the request's, for [`Salvage::Waiting`]).
    pub carried: Option<Vec<u8>>,
    /// A rescue: what the dead worker's keeper found recorded for the connection.
    pub salvage: Option<Box<Salvage>>,
    /// A rescue of a response in progress: the file its body was being sent from.
    pub file: Option<Fd<'a>>,
}

impl<'a> Connection<'a> {
    pub fn plain(fd: Fd<'a>) -> Connection<'a> {
        Connection::new(fd, Transport::Plain)
    }

    pub fn new(fd: Fd<'a>, transport: Transport) -> Connection<'a> {
        Connection { fd, transport, carried: None, salvage: None, file: None }
    }

    /// The same connection, lending its descriptors (to send a copy of what we hold).
    pub fn lend(&self) -> Connection<'_> {
        Connection {
            fd: Fd::lend(&self.fd),
            transport: self.transport,
            carried: self.carried.clone(),
            salvage: self.salvage.clone(),
            file: self.file.as_ref().map(Fd::lend),
        }
    }

    /// A received connection, owning its descriptors.
    pub fn into_owned(self) -> std::io::Result<Connection<'static>> {
        let file = self.file.map(Fd::into_owned).transpose()?.map(Fd::Owned);
        let fd = Fd::Owned(self.fd.into_owned()?);
        Ok(Connection { fd, transport: self.transport, carried: self.carried, salvage: self.salvage, file })
    }
}

/// What a dead worker recorded for one of its connections (`worker::records`), as its
/// keeper sends it on (SPEC section 8: the rescue of a dead worker's connections).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Salvage {
    /// Between requests, or a request received and not answered (its bytes are the
    /// connection's `carried`): `sent` response bytes had been written by then.
    Waiting {
        sent: u64,
        /// Bytes read from the socket by then (`None` from a keeper that did not say).
        #[serde(default)]
        read: Option<u64>,
        /// Worker deaths the carried request was in progress for (poison at two).
        deaths: u32,
        /// A response had been sent on it (else it is still owed its first).
        answered: bool,
    },
    /// A response in progress.
    Response(Box<InProgress>),
    /// Nothing that can be continued safely: TLS, a body from memory, a record too large
    /// or interrupted while written. The receiver closes it.
    Lost,
}

/// A response a worker died writing: its bytes from `head_start` (a count of bytes
/// written on the connection) are `memory` (the head, and a small body), then `file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProgress {
    pub head_start: u64,
    #[serde(with = "hex_text")]
    pub memory: Vec<u8>,
    pub file: Option<FileSpan>,
    pub status: u16,
    /// The representation's content coding, as `worker::records` numbers it.
    pub coding: u8,
    /// The connection closes after it.
    pub close: bool,
    /// Bytes read from the socket by then (`None` from a keeper that did not say).
    #[serde(default)]
    pub read: Option<u64>,
}

impl Salvage {
    /// Bytes the dead worker had read from the socket when it recorded this (`None`:
    /// not said, or nothing to continue).
    pub fn read(&self) -> Option<u64> {
        match self {
            Salvage::Waiting { read, .. } => *read,
            Salvage::Response(response) => response.read,
            Salvage::Lost => None,
        }
    }
}

/// The part of a response body sent from a file, and the file's identity when the
/// response began: it is continued only from the same, unchanged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpan {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub offset: u64,
    pub len: u64,
}

/// Bytes as lower-case hex text in JSON.
mod hex_text {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        use serde::de::Error as _;
        let text = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        super::unhex(&text).ok_or_else(|| D::Error::custom("bytes are not hex"))
    }
}

/// What a connection speaks: HTTP, or HTTP inside TLS (accepted on a `tls_listen` socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls,
}

/// On the wire a plain connection is its descriptor's index, as it always was (`[0]`), a
/// TLS one `{"tls":index}`, and a plain one handed over with bytes
/// `{"plain":index,"carried":"<hex>"}` (TLS connections are never handed over).
/// The variants are tried in order, and a failed try builds an error message: the
/// common ones come first (a plain connection is then read without one).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WireConnection<F> {
    Plain(F),
    Tls {
        tls: F,
    },
    /// A rescue: `{"rescued":index,"over_tls":bool,"salvage":…,"carried":"<hex>","file":index}`.
    Rescued {
        rescued: F,
        over_tls: bool,
        salvage: Box<Salvage>,
        carried: String,
        file: Option<F>,
    },
    Carrying {
        plain: F,
        carried: String,
    },
}

impl Serialize for Connection<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(salvage) = &self.salvage {
            let carried = hex(self.carried.as_deref().unwrap_or_default());
            let over_tls = self.transport == Transport::Tls;
            let (rescued, salvage, file) = (&self.fd, salvage.clone(), self.file.as_ref());
            return WireConnection::Rescued { rescued, over_tls, salvage, carried, file }.serialize(s);
        }
        match (self.transport, &self.carried) {
            (Transport::Plain, None) => WireConnection::Plain(&self.fd).serialize(s),
            (Transport::Plain, Some(carried)) => {
                WireConnection::Carrying { plain: &self.fd, carried: hex(carried) }.serialize(s)
            }
            (Transport::Tls, _) => WireConnection::Tls { tls: &self.fd }.serialize(s),
        }
    }
}

/// Lower-case hex: JSON carries text, and request bytes need not be UTF-8.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// The bytes of `hex`'s output; `None` for anything else.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let text = text.as_bytes();
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// Keeps the connections that arrived when some did not (a receiver out of
/// descriptors, `MSG_CTRUNC`, which `Channel::recv` reports): each one is a client.
impl<'de> Deserialize<'de> for Connections<'_> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let wire = Vec::<WireConnection<u64>>::deserialize(d)?;
        let take = |i: u64| super::fd::take_incoming(i as usize).map(Fd::Owned);
        let mut conns = Vec::with_capacity(wire.len());
        for c in wire {
            let conn = match c {
                WireConnection::Plain(i) => take(i).map(|fd| Connection::new(fd, Transport::Plain)),
                WireConnection::Tls { tls } => take(tls).map(|fd| Connection::new(fd, Transport::Tls)),
                WireConnection::Carrying { plain, carried } => {
                    let carried = unhex(&carried).ok_or_else(|| D::Error::custom("carried bytes are not hex"))?;
                    take(plain).map(|fd| Connection { carried: Some(carried), ..Connection::plain(fd) })
                }
                WireConnection::Rescued { rescued, over_tls, salvage, carried, file } => {
                    let carried = unhex(&carried).ok_or_else(|| D::Error::custom("carried bytes are not hex"))?;
                    let transport = if over_tls { Transport::Tls } else { Transport::Plain };
                    let file = file.and_then(take);
                    take(rescued).map(|fd| Connection {
                        carried: Some(carried),
                        salvage: Some(salvage),
                        file,
                        ..Connection::new(fd, transport)
                    })
                }
            };
            conns.extend(conn);
        }
        Ok(Connections(conns))
    }
}

/// Manager → listener: which lanes to use and how loaded each is, by slot id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Steer {
    pub lanes: Vec<LaneState>,
}

/// One lane as the manager steers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneState {
    /// A worker serves (or is about to serve) this lane.
    pub open: bool,
    /// Its worker's open connections at its last heartbeat.
    pub load: u32,
}

/// Old daemon → new daemon in a binary upgrade.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToSuccessor<'a> {
    /// First message: the sockets to serve and the totals to continue from.
    Handoff(Box<Handoff<'a>>),
    /// The latest (or, just before the old daemon exits, final) totals.
    Totals(Box<crate::observe::CarriedTotals>),
    /// I stopped accepting on the control and admin sockets; they are yours.
    TakeOver,
}

/// New daemon → old daemon in a binary upgrade.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToPredecessor {
    /// My tree is up and ready to serve.
    Ready,
}

/// What an old daemon hands a new one.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handoff<'a> {
    /// The listening sockets, in the old daemon's `config.listen` order.
    pub listen: Vec<Fd<'a>>,
    /// The HTTPS ones, in its `config.tls_listen` order.
    #[serde(default)]
    pub tls_listen: Vec<Fd<'a>>,
    /// The control Unix socket (listening).
    pub control: Fd<'a>,
    /// The admin HTTP socket (listening), when the endpoint is on.
    pub admin: Option<Fd<'a>>,
    /// Counters the new daemon continues from, so they do not reset.
    pub totals: crate::observe::CarriedTotals,
    /// The session-ticket keys, so sessions resume on the new tree (absent from a daemon
    /// too old to send them: the new one makes its own).
    #[serde(default)]
    pub tickets: Option<TicketKeys>,
    /// Both ends of every lane, slot by slot (`[a0, b0, a1, b1, ...]`): the new tree reads
    /// the lanes the old one does, so the old workers hand their connections over to it.
    /// Empty when they would not fit one message (the new daemon makes its own).
    #[serde(default)]
    pub lanes: Vec<Fd<'a>>,
}

/// A status report: liveness plus the figures the supervisor aggregates.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    pub pid: u32,
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds at send time.
    pub sent_ns: u64,
    /// What this process counted since it started (the manager: its supervision of
    /// workers; each worker's are in `workers`).
    pub figures: Figures,
    /// Worker: connections open now.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub active: u64,
    /// Manager only: one report per worker process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerReport>,
    /// Listener and worker: the pid of its keeper (`listener::keeper`, `worker::keeper`),
    /// if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeper_pid: Option<u32>,
    /// Worker: retiring, it takes nothing more from its lane (so a rolling restart's
    /// answer means every new connection reaches a new worker).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retiring: bool,
}

/// A worker process as the manager sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub id: u32,
    pub pid: u32,
    pub state: webd_proto::WorkerState,
    pub restarts: u64,
    pub heartbeat_age_ms: f64,
    pub heartbeat_latency_ms: f64,
    pub utilization: f64,
    /// Connections open now.
    pub active: u64,
    pub figures: Figures,
    /// Its keeper (`worker::keeper`), if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeper_pid: Option<u32>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
