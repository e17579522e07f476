//! The listening sockets: bound by the daemon once, so no child restart ever closes
//! the port; the kernel backlog queues connections while a listener is replaced.

use anyhow::Context;
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

/// Kernel accept queue length (capped by net.core.somaxconn).
const BACKLOG: i32 = 4096;

/// Binds every address; the first failure names its address.
pub fn bind_all(addrs: &[SocketAddr]) -> anyhow::Result<Vec<OwnedFd>> {
    addrs.iter().map(|addr| bind(*addr).with_context(|| format!("cannot listen on {addr}"))).collect()
}

fn bind(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    // socket2 creates the socket with SOCK_CLOEXEC.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit it: heads and small bodies go out in one send, so there
    // is no reason to wait for Nagle, and no setsockopt per connection.
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Whether `sockets` are bound to exactly `addrs` (a successor in a binary upgrade must
/// not serve addresses its configuration no longer names).
pub fn serve_addresses(sockets: &[OwnedFd], addrs: &[SocketAddr]) -> bool {
    let mut bound: Vec<SocketAddr> = sockets
        .iter()
        .filter_map(|fd| socket2::SockRef::from(fd).local_addr().ok().and_then(|a| a.as_socket()))
        .collect();
    let mut wanted = addrs.to_vec();
    bound.sort();
    wanted.sort();
    bound == wanted
}
