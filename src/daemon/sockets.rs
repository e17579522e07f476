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

/// The addresses `sockets` are bound to (for a configured port 0, the port the kernel
/// chose).
pub fn local_addrs(sockets: &[OwnedFd]) -> Vec<SocketAddr> {
    sockets.iter().filter_map(|fd| socket2::SockRef::from(fd).local_addr().ok().and_then(|a| a.as_socket())).collect()
}

/// Whether `sockets` are bound to exactly `addrs` (a successor in a binary upgrade must
/// not serve addresses its configuration no longer names). A configured port 0 stands
/// for whichever port the kernel chose on that IP.
pub fn serve_addresses(sockets: &[OwnedFd], addrs: &[SocketAddr]) -> bool {
    let mut bound = local_addrs(sockets);
    if bound.len() != addrs.len() || bound.len() != sockets.len() {
        return false;
    }
    // Exact addresses first, so a port 0 cannot take the socket a named port needs.
    let (any_port, exact): (Vec<&SocketAddr>, Vec<&SocketAddr>) = addrs.iter().partition(|a| a.port() == 0);
    let wanted = exact.iter().map(|a| (**a, false)).chain(any_port.iter().map(|a| (**a, true)));
    for (want, any) in wanted {
        match bound.iter().position(|b| b.ip() == want.ip() && (any || b.port() == want.port())) {
            Some(i) => {
                bound.swap_remove(i);
            }
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn a_configured_port_0_is_served_by_the_port_the_kernel_chose() {
        let sockets = bind_all(&[addr("127.0.0.1:0"), addr("127.0.0.1:0")]).expect("bind");
        let bound = local_addrs(&sockets);
        assert!(bound.iter().all(|a| a.port() != 0), "{bound:?}");
        assert!(serve_addresses(&sockets, &[addr("127.0.0.1:0"), addr("127.0.0.1:0")]));
        assert!(serve_addresses(&sockets, &[bound[1], addr("127.0.0.1:0")]));
        assert!(serve_addresses(&sockets, &bound));
        assert!(!serve_addresses(&sockets, &[addr("127.0.0.1:0")]));
        assert!(!serve_addresses(&sockets, &[addr("127.0.0.2:0"), addr("127.0.0.1:0")]));
        let other = SocketAddr::new(bound[0].ip(), if bound[0].port() == 1 { 2 } else { 1 });
        assert!(!serve_addresses(&sockets, &[other, addr("127.0.0.1:0")]));
    }
}
