//! The control socket: newline-delimited JSON requests from `webctl` (docs/reference.md).
//!
//! Served on threads of its own, so a slow or hostile client never delays supervision:
//! one accept thread, one short-lived thread per client (at most `MAX_CLIENTS` at once),
//! each with read/write timeouts and a 64 KiB request cap. Peers are checked with
//! SO_PEERCRED: only root and the daemon's own uid are served. `status` is answered
//! from the published snapshot; every other command goes to the supervision loop,
//! which replies once the effect is real (or with the reason it failed).

use crate::observe::SharedObserved;
use anyhow::Context;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use webd_proto::{Request, Response, MAX_REQUEST_BYTES};

/// Most clients served at once; more are told to retry.
const MAX_CLIENTS: usize = 64;
/// How long a client may take to send a request line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a mutating command may take before the client gets an error.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A mutating request on its way to the supervision loop, with where to answer.
pub struct CommandRequest {
    pub request: Request,
    pub reply: mpsc::SyncSender<Response>,
}

/// How the control threads reach the supervision loop.
#[derive(Clone)]
pub struct LoopHandle {
    pub commands: mpsc::Sender<CommandRequest>,
    pub waker: Arc<mio::Waker>,
}

/// Binds the control socket: parent directory 0700, socket 0600. A stale socket file
/// left by a crashed daemon is replaced; a live daemon on the path is an error.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating control socket directory {}", dir.display()))?;
        }
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

/// Removes what a crashed daemon left at `path`, which must be a socket no daemon
/// answers on. Anything else (a regular file, a directory, a live daemon) is refused
/// and left untouched: a mistyped path must never cost an operator a file.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("control socket {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!("control socket {} exists and is not a socket", path.display());
    }
    if UnixStream::connect(path).is_ok() {
        anyhow::bail!("another webd is already running on control socket {}", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale control socket {}", path.display()))?;
    tracing::info!(path = %path.display(), "replaced stale control socket");
    Ok(())
}

/// Removes the control socket at exit, only if a socket is still what the path names.
pub fn remove_own_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Serves the control socket on a thread of its own until `stop` is set (a binary
/// upgrade hands the socket to the new daemon; clients already connected are still
/// answered).
/// Returns the count of clients being served, so the daemon can let replies finish
/// before it exits.
pub fn spawn(
    listener: UnixListener,
    observed: SharedObserved,
    handle: LoopHandle,
    stop: Arc<AtomicBool>,
) -> io::Result<Arc<AtomicUsize>> {
    let allowed_uid = nix::unistd::geteuid().as_raw();
    listener.set_nonblocking(true)?;
    let active = Arc::new(AtomicUsize::new(0));
    let clients = Arc::clone(&active);
    std::thread::Builder::new().name("control".into()).spawn(move || {
        while !stop.load(Ordering::Acquire) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(false).is_ok() {
                        admit(stream, &active, allowed_uid, &observed, &handle);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Wake at least every 100 ms to notice `stop`.
                    let _ = crate::ipc::wait_readable(std::os::fd::AsFd::as_fd(&listener), Duration::from_millis(100));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "control accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        tracing::info!("control socket handed over");
    })?;
    Ok(clients)
}

fn admit(mut stream: UnixStream, active: &Arc<AtomicUsize>, uid: u32, observed: &SharedObserved, handle: &LoopHandle) {
    if active.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
        active.fetch_sub(1, Ordering::AcqRel);
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let _ = write_response(&mut stream, &Response::error("too many control clients; retry"));
        return;
    }
    let (active, observed, handle) = (Arc::clone(active), observed.clone(), handle.clone());
    let spawned = std::thread::Builder::new().name("control-client".into()).spawn(move || {
        if let Err(e) = serve_client(stream, uid, &observed, &handle) {
            tracing::debug!(error = %e, "control client ended");
        }
        active.fetch_sub(1, Ordering::AcqRel);
    });
    if spawned.is_err() {
        tracing::warn!("cannot start a control client thread");
    }
}

/// Serves requests on one connection until EOF, an error or a timeout.
fn serve_client(
    stream: UnixStream,
    allowed_uid: u32,
    observed: &SharedObserved,
    handle: &LoopHandle,
) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let peer_uid = peer_uid(&stream)?;
    let permitted = peer_uid == 0 || peer_uid == allowed_uid;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        // Refuse only after reading the request: closing with unread input would
        // reset the connection and could destroy the refusal before it is read.
        if !permitted {
            tracing::warn!(peer_uid, "control client refused");
            return write_response(&mut writer, &Response::error("permission denied"));
        }
        if line.len() > MAX_REQUEST_BYTES {
            write_response(&mut writer, &Response::error(format!("request exceeds {MAX_REQUEST_BYTES} bytes")))?;
            return Ok(()); // the rest of an oversized line is not worth reading
        }
        let response = answer(&line, observed, handle);
        write_response(&mut writer, &response)?;
    }
}

/// Decodes one request line and produces its response.
pub fn answer(line: &[u8], observed: &SharedObserved, handle: &LoopHandle) -> Response {
    let text = match std::str::from_utf8(line) {
        Ok(t) => t.trim(),
        Err(_) => return Response::error("request is not UTF-8"),
    };
    if text.is_empty() {
        return Response::error("empty request");
    }
    let request: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => return Response::error(format!("invalid request: {e}")),
    };
    if let Err(reason) = validate(&request) {
        return Response::error(reason);
    }
    match request {
        Request::Status => match observed.lock().status.clone() {
            Some(status) => Response::status(status),
            None => Response::error("status not available yet"),
        },
        request => send_to_loop(request, handle),
    }
}

fn validate(request: &Request) -> Result<(), String> {
    use webd_proto::RestartTarget;
    match request {
        Request::Restart { target: RestartTarget::Worker, id: None } => Err("restart worker needs an id".into()),
        Request::Restart { target, id: Some(_) } if *target != RestartTarget::Worker => {
            Err("only `restart worker` takes an id".into())
        }
        Request::Scale { workers } if !(1..=webd_proto::MAX_WORKERS).contains(workers) => {
            Err(format!("scale: workers must be between 1 and {}, not {workers}", webd_proto::MAX_WORKERS))
        }
        _ => Ok(()),
    }
}

fn send_to_loop(request: Request, handle: &LoopHandle) -> Response {
    let (reply, answer) = mpsc::sync_channel(1);
    if handle.commands.send(CommandRequest { request, reply }).is_err() {
        return Response::error("daemon is shutting down");
    }
    if handle.waker.wake().is_err() {
        return Response::error("cannot wake the supervision loop");
    }
    answer.recv_timeout(COMMAND_TIMEOUT).unwrap_or_else(|_| Response::error("timed out waiting for the daemon"))
}

fn write_response(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let creds = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(creds.uid())
}
