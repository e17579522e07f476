//! Admin HTTP endpoint: read-only views of the daemon for operators and Prometheus.
//!
//! Endpoints (GET and HEAD; any other method is 405 with `Allow: GET, HEAD`; any other
//! path is 404):
//! - `GET /metrics`: Prometheus text format 0.0.4, every metric of docs/reference.md
//!   plus the daemon's `process_*` metrics (see [`metrics`]);
//! - `GET /status`: the status document of the control socket, as JSON (503 until the
//!   daemon has published one);
//! - `GET /healthz`: 200 `ok` for as long as the daemon runs;
//! - `GET /readyz`: 200 `ready` when listener, manager and a worker are up and nothing
//!   drains, otherwise 503 with the reason as body.
//!
//! Mutations go through the control socket only. The endpoint is bound to loopback by
//! default; binding elsewhere logs a warning.
//!
//! It runs on one dedicated thread with non-blocking sockets (`mio`), not `tiny_http`:
//! tiny_http spends a thread per connection, has no read timeout and stops accepting for
//! good after one `accept` error, so a few hundred idle clients or a moment of fd
//! exhaustion would take the daemon's health checks down. Every resource a client can
//! make this thread hold is bounded (see [`server`] and [`Limits`]).

pub mod http;
pub mod metrics;
pub mod routes;
pub mod server;

#[cfg(test)]
mod tests;

use crate::observe::SharedObserved;
pub use server::Limits;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Connections the kernel queues for the admin thread before refusing them.
const BACKLOG: i32 = 1024;

/// Binds `addr` now (so "address in use" is reported at start) and serves the admin
/// endpoint on a thread of its own, with the default [`Limits`] (the connection cap
/// lowered to a quarter of `RLIMIT_NOFILE` if that is smaller).
pub fn spawn(addr: SocketAddr, observed: SharedObserved) -> io::Result<AdminHandle> {
    let listener = bind(addr).map_err(|e| io::Error::new(e.kind(), format!("admin endpoint {addr}: {e}")))?;
    start(listener, addr, observed)
}

/// Serves on a listening socket handed over by the daemon this one replaces (binary
/// upgrade): the port never closes.
pub fn spawn_inherited(listener: std::net::TcpListener, observed: SharedObserved) -> io::Result<AdminHandle> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    start(listener, addr, observed)
}

/// A running admin endpoint: its socket (for a binary upgrade to hand over) and a way
/// to stop accepting on it.
pub struct AdminHandle {
    pub socket: std::net::TcpListener,
    stop: server::StopSwitch,
    thread: std::thread::JoinHandle<()>,
}

impl AdminHandle {
    /// Stops accepting and closes this process's copy of the socket; a new daemon that
    /// holds another copy keeps serving on it.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// Stops serving and returns once the port is closed in this process (the serving
    /// thread has dropped its socket, and so has this handle).
    pub fn close(self) {
        self.stop.stop();
        let _ = self.thread.join();
    }
}

fn start(listener: std::net::TcpListener, addr: SocketAddr, observed: SharedObserved) -> io::Result<AdminHandle> {
    let socket = listener.try_clone()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "admin endpoint bound to a non-loopback address: metrics and status are visible to the network");
    }
    let limits = Limits { max_connections: connection_budget(Limits::default().max_connections), ..Limits::default() };
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), max_connections = limits.max_connections, "admin endpoint listening");
    let (stop, thread) = serve(listener, observed, limits)?;
    Ok(AdminHandle { socket, stop, thread })
}

/// Admin connections use the daemon's descriptors: keep them to a quarter of its
/// `RLIMIT_NOFILE`, so no admin client can starve supervision of fds.
fn connection_budget(max: usize) -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _hard)) => {
            let quarter = usize::try_from(soft / 4).unwrap_or(usize::MAX);
            max.min(quarter.max(16))
        }
        Err(_) => max,
    }
}

/// Serves on an already bound, non-blocking listener from a new thread.
fn serve(
    listener: std::net::TcpListener,
    observed: SharedObserved,
    limits: Limits,
) -> io::Result<(server::StopSwitch, std::thread::JoinHandle<()>)> {
    let endpoints = routes::Endpoints::new(observed).map_err(io::Error::other)?;
    let server = server::Server::new(listener, endpoints, limits)?;
    let stop = server.stop_switch();
    let thread = std::thread::Builder::new().name("webd-admin".into()).spawn(move || server.run())?;
    Ok((stop, thread))
}

/// A non-blocking, close-on-exec listening socket with a deep backlog.
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}
