//! One request/response exchange over the daemon's control socket.
//!
//! Wire format (docs/reference.md): one JSON [`Request`] line out, one JSON
//! [`Response`] line back, on a Unix stream socket. Every step is bounded by the
//! caller's timeout: connect (via `SO_SNDTIMEO`, which Linux applies to a
//! `connect(2)` waiting on a full accept backlog), the write, and the read.
//!
//! Errors say which socket they concern and whether the daemon was reached at
//! all, because that decides the exit code (3 unreachable, 1 otherwise).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use webd_proto::{Request, Response};

/// Longest response line accepted; a status document with thousands of workers
/// is far below this.
const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// The daemon's answer: the line exactly as received (without its newline) and
/// its parsed form.
#[derive(Debug)]
pub struct Reply {
    pub raw: String,
    pub response: Response,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made: the daemon is not running, the path is
    /// wrong, or we may not open it.
    #[error("cannot reach webd at {}: {}{}", path.display(), describe(source), hint(source))]
    Unreachable { path: PathBuf, source: io::Error },
    /// Connected, but sending the request or reading the answer failed.
    #[error("no answer from webd at {}: {}", path.display(), describe(source))]
    NoAnswer { path: PathBuf, source: io::Error },
    /// Connected, but the daemon closed the connection without a full line.
    #[error("webd at {} closed the connection without answering", path.display())]
    Closed { path: PathBuf },
    /// The answer is not a control-protocol response.
    #[error("unreadable response from webd at {}: {source}: {excerpt}", path.display())]
    Unreadable { path: PathBuf, source: serde_json::Error, excerpt: String },
}

impl ClientError {
    /// The process exit code this error maps to (docs/reference.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => 3,
            _ => 1,
        }
    }
}

/// Sends `request` to the daemon listening on `path` and returns its answer.
pub fn exchange(path: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let stream = connect(path, timeout).map_err(|source| ClientError::Unreachable { path: path.to_owned(), source })?;
    let no_answer = |source| ClientError::NoAnswer { path: path.to_owned(), source };

    let mut line = serde_json::to_string(request).expect("a Request always serializes");
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(no_answer)?;
    // No half-close after the request: a daemon may take EOF as the client
    // giving up and drop the answer to a command that is still taking effect.

    let mut raw = String::new();
    BufReader::new((&stream).take(MAX_RESPONSE_BYTES)).read_line(&mut raw).map_err(no_answer)?;
    let Some(raw) = raw.strip_suffix('\n') else {
        return Err(ClientError::Closed { path: path.to_owned() });
    };
    let raw = raw.strip_suffix('\r').unwrap_or(raw).to_owned();
    match serde_json::from_str(&raw) {
        Ok(response) => Ok(Reply { raw, response }),
        Err(source) => {
            Err(ClientError::Unreadable { path: path.to_owned(), source, excerpt: raw.chars().take(200).collect() })
        }
    }
}

/// Connects with every step bounded by `timeout`.
fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let address = SockAddr::unix(path)?;
    // socket2 creates the socket with CLOEXEC set.
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_write_timeout(Some(timeout))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(&address)?;
    Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
}

/// The OS message without Rust's " (os error N)" suffix, and timeouts in words.
fn describe(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_owned(),
        _ => {
            let text = err.to_string();
            match text.find(" (os error ") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
    }
}

/// A nudge for the two common reasons a socket is unreachable.
fn hint(err: &io::Error) -> &'static str {
    match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => " (is webd running?)",
        io::ErrorKind::PermissionDenied => " (webd serves only root and its own user)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_message_names_the_path_and_reason() {
        let err = ClientError::Unreachable {
            path: PathBuf::from("/run/webd/webd.sock"),
            source: io::Error::from_raw_os_error(2),
        };
        assert_eq!(
            err.to_string(),
            "cannot reach webd at /run/webd/webd.sock: No such file or directory (is webd running?)"
        );
        assert_eq!(err.exit_code(), 3);
    }

    #[test]
    fn errors_after_connecting_exit_1() {
        let path = PathBuf::from("/s");
        let timed_out = io::Error::from(io::ErrorKind::WouldBlock);
        let err = ClientError::NoAnswer { path: path.clone(), source: timed_out };
        assert_eq!(err.to_string(), "no answer from webd at /s: timed out");
        assert_eq!(err.exit_code(), 1);
        assert_eq!(ClientError::Closed { path }.exit_code(), 1);
    }

    #[test]
    fn exchange_sends_one_line_and_reads_one_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("webd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).expect("read request");
            (&stream).write_all(b"{\"ok\":true,\"message\":\"drained\"}\r\n").expect("reply");
            line
        });
        let reply = exchange(&path, &Request::Drain, Duration::from_secs(5)).expect("exchange");
        assert_eq!(reply.raw, r#"{"ok":true,"message":"drained"}"#);
        assert_eq!(reply.response, Response::ok("drained"));
        assert_eq!(server.join().expect("server thread"), "{\"cmd\":\"drain\"}\n");
    }
}
