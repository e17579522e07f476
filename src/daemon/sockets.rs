//! The listening sockets: bound by the daemon once, so no child restart ever closes
//! the port; the kernel backlog queues connections while a listener is replaced.
//!
//! Socket activation (systemd `.socket` units, `systemd-socket-activate`): when
//! `LISTEN_PID` is our pid, the `LISTEN_FDS` sockets at fds 3.. are adopted instead of
//! bound, each matched to a configured address by the address it is bound to (a
//! configured port 0 takes any port on its IP); one named `http` (`LISTEN_FDNAMES`)
//! that matches no address exactly takes the one address left. An inherited socket that
//! no address names is an error; an address no inherited socket serves is bound.

use anyhow::Context;
use socket2::{Domain, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

/// Kernel accept queue length (capped by net.core.somaxconn).
const BACKLOG: i32 = 4096;

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
    let socket: OwnedFd = socket.into();
    crate::sys::net::set_defer_accept(socket.as_fd(), crate::sys::net::DEFER_ACCEPT_SECS)?;
    Ok(socket)
}

/// A start-up refusal that is the operator's to fix (exit code 2, like a bad flag).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Environment of the socket activation protocol (sd_listen_fds(3)).
const LISTEN_PID: &str = "LISTEN_PID";
const LISTEN_FDS: &str = "LISTEN_FDS";
const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// The name `LISTEN_FDNAMES` gives a plain-HTTP socket (`FileDescriptorName=http`).
pub const HTTP_NAME: &str = "http";
/// The name that makes an activated socket an HTTPS one (`FileDescriptorName=https`).
pub const HTTPS_NAME: &str = "https";

/// A socket passed to us by socket activation.
#[derive(Debug)]
pub struct Activated {
    pub fd: std::os::fd::RawFd,
    pub addr: SocketAddr,
    pub name: String,
    pub socket: OwnedFd,
}

impl std::fmt::Display for Activated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inherited socket fd {} ({}, name {:?})", self.fd, self.addr, self.name)
    }
}

/// What systemd passed us at start: activated sockets, and what a previous daemon put in
/// the fd store (names starting with `webd-`, see `fdstore.rs`).
#[derive(Default)]
pub struct Inherited {
    pub activated: Vec<Activated>,
    pub stored: Vec<super::fdstore::Stored>,
}

/// The descriptors socket activation passed us (none when `LISTEN_PID` is not our pid):
/// activated sockets, each checked to be a listening TCP socket, and stored ones.
/// `LISTEN_*` leave our environment either way, so no child or successor sees them.
/// Called once, first thing, before any thread.
pub fn take_activated() -> anyhow::Result<Inherited> {
    let pid = std::env::var(LISTEN_PID).ok();
    let fds = std::env::var(LISTEN_FDS).ok();
    let names = std::env::var(LISTEN_FDNAMES).ok();
    for var in [LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES] {
        std::env::remove_var(var);
    }
    let ours = std::process::id().to_string();
    let mut inherited = Inherited::default();
    if pid.as_deref().map(str::trim) != Some(ours.as_str()) {
        return Ok(inherited);
    }
    let Some(fds) = fds else { return Ok(inherited) };
    let count: usize = fds.trim().parse().map_err(|_| UsageError(format!("{LISTEN_FDS}={fds:?} is not a count")))?;
    let names: Vec<&str> = names.as_deref().map(|n| n.split(':').collect()).unwrap_or_default();
    for (i, (fd, adopted)) in crate::sys::net::adopt_listen_fds(count).into_iter().enumerate() {
        // systemd's name for a socket without FileDescriptorName=.
        let name = names.get(i).copied().filter(|n| !n.is_empty()).unwrap_or("unknown").to_string();
        let socket = adopted.map_err(|e| UsageError(format!("inherited fd {fd} (name {name:?}): {e}")))?;
        if name.starts_with(super::fdstore::PREFIX) {
            inherited.stored.push((name, socket));
        } else {
            inherited.activated.push(Activated::checked(fd, name, socket)?);
        }
    }
    Ok(inherited)
}

impl Activated {
    /// `socket` (inherited as `fd`) if it is a listening TCP socket, made non-blocking.
    pub fn checked(fd: std::os::fd::RawFd, name: String, socket: OwnedFd) -> anyhow::Result<Activated> {
        let addr = check_listening_tcp(&socket)
            .map_err(|why| UsageError(format!("inherited fd {fd} (name {name:?}) is not usable: {why}")))?;
        let sock = socket2::SockRef::from(&socket);
        sock.set_nonblocking(true).with_context(|| format!("inherited fd {fd} ({addr}): O_NONBLOCK"))?;
        sock.set_tcp_nodelay(true).with_context(|| format!("inherited fd {fd} ({addr}): TCP_NODELAY"))?;
        defer_accept_unless_set(&socket).with_context(|| format!("inherited fd {fd} ({addr}): TCP_DEFER_ACCEPT"))?;
        Ok(Activated { fd, addr, name, socket })
    }
}

/// Deferred accept on an inherited socket too (the same wake-ups saved), unless it has
/// one already: the operator's `DeferAcceptSec=` is kept.
fn defer_accept_unless_set(socket: &OwnedFd) -> std::io::Result<()> {
    use crate::sys::net::{defer_accept, set_defer_accept, DEFER_ACCEPT_SECS};
    if defer_accept(socket.as_fd())? == 0 {
        set_defer_accept(socket.as_fd(), DEFER_ACCEPT_SECS)?;
    }
    Ok(())
}

/// The activated sockets, then the listening sockets a previous daemon stored (fd
/// store) that a configured address still names; a stored one no address names any more
/// (the configuration changed) is closed with a warning rather than refused.
pub fn adopted(
    stored: Vec<super::fdstore::Stored>,
    addrs: &[SocketAddr],
    mut activated: Vec<Activated>,
) -> anyhow::Result<Vec<Activated>> {
    use std::os::fd::AsRawFd;
    for (name, socket) in stored {
        let fd = socket.as_raw_fd();
        let socket = Activated::checked(fd, name, socket)?;
        let named = addrs.iter().any(|a| *a == socket.addr || (a.port() == 0 && a.ip() == socket.addr.ip()));
        let taken = activated.iter().any(|a| a.addr == socket.addr);
        if named && !taken {
            tracing::info!(address = %socket.addr, name = %socket.name, "fd store: adopted a listening socket");
            activated.push(socket);
        } else {
            tracing::warn!(address = %socket.addr, name = %socket.name, "fd store: a listening socket no address names, closed");
        }
    }
    Ok(activated)
}

/// The address of `socket` if it is a listening TCP (IPv4/IPv6 stream) socket.
fn check_listening_tcp(socket: &OwnedFd) -> Result<SocketAddr, String> {
    let sock = socket2::SockRef::from(socket);
    let ty = sock.r#type().map_err(|e| format!("not a socket ({e})"))?;
    let addr = sock.local_addr().map_err(|e| format!("getsockname: {e}"))?;
    let Some(addr) = addr.as_socket() else {
        return Err("not an IPv4/IPv6 socket (a TCP socket is needed)".into());
    };
    if ty != Type::STREAM {
        return Err(format!("{addr} is not a stream socket (a TCP socket is needed)"));
    }
    if !sock.is_listener().map_err(|e| format!("{addr}: SO_ACCEPTCONN: {e}"))? {
        return Err(format!("{addr} is not listening (ListenStream= makes a listening socket)"));
    }
    Ok(addr)
}

/// Which inherited socket serves each configured address (`None`: bind it), or the
/// index of an inherited socket that no address names. Exact addresses first, then a
/// configured port 0 takes any port on its IP, then a socket named `name_for_rest`
/// that matched nothing takes the one address left (if exactly one is).
pub fn match_activated(
    configured: &[SocketAddr],
    inherited: &[(SocketAddr, &str)],
    name_for_rest: &str,
) -> Result<Vec<Option<usize>>, usize> {
    let mut serves: Vec<Option<usize>> = vec![None; configured.len()];
    let mut claimed = vec![false; inherited.len()];
    let mut claim = |serves: &mut Vec<Option<usize>>, want: &dyn Fn(&SocketAddr, &SocketAddr) -> bool| {
        for (c, addr) in configured.iter().enumerate() {
            if serves[c].is_some() {
                continue;
            }
            if let Some(i) = (0..inherited.len()).find(|&i| !claimed[i] && want(addr, &inherited[i].0)) {
                claimed[i] = true;
                serves[c] = Some(i);
            }
        }
    };
    claim(&mut serves, &|want, got| want.port() != 0 && want == got);
    claim(&mut serves, &|want, got| want.port() == 0 && want.ip() == got.ip());
    let left: Vec<usize> = (0..configured.len()).filter(|&c| serves[c].is_none()).collect();
    let named: Vec<usize> = (0..inherited.len()).filter(|&i| !claimed[i] && inherited[i].1 == name_for_rest).collect();
    if let ([c], [i]) = (left.as_slice(), named.as_slice()) {
        serves[*c] = Some(*i);
        claimed[*i] = true;
    }
    match claimed.iter().position(|taken| !taken) {
        Some(i) => Err(i),
        None => Ok(serves),
    }
}

/// The listening sockets for `addrs`, in their order: the activated ones that match,
/// bound for the rest (the first failure names its address). An activated socket no
/// address names is a [`UsageError`].
pub fn activated_or_bound(
    addrs: &[SocketAddr],
    activated: Vec<Activated>,
    name_for_rest: &str,
) -> anyhow::Result<Vec<OwnedFd>> {
    let keys: Vec<(SocketAddr, &str)> = activated.iter().map(|a| (a.addr, a.name.as_str())).collect();
    let serves = match_activated(addrs, &keys, name_for_rest).map_err(|i| {
        let list = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ");
        UsageError(format!(
            "{} matches no --listen address ({list}): listen on its address or drop it from the socket unit",
            activated[i]
        ))
    })?;
    let mut activated: Vec<Option<Activated>> = activated.into_iter().map(Some).collect();
    addrs
        .iter()
        .zip(serves)
        .map(|(addr, serve)| match serve.and_then(|i| activated[i].take()) {
            Some(a) => {
                tracing::info!(fd = a.fd, address = %a.addr, name = %a.name, configured = %addr, "socket activation: adopted");
                Ok(a.socket)
            }
            None => bind(*addr).with_context(|| format!("cannot listen on {addr}")),
        })
        .collect()
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
        let sockets =
            activated_or_bound(&[addr("127.0.0.1:0"), addr("127.0.0.1:0")], Vec::new(), HTTP_NAME).expect("bind");
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

    fn matched(configured: &[&str], inherited: &[(&str, &str)]) -> Result<Vec<Option<usize>>, usize> {
        let configured: Vec<SocketAddr> = configured.iter().map(|a| addr(a)).collect();
        let inherited: Vec<(SocketAddr, &str)> = inherited.iter().map(|(a, n)| (addr(a), *n)).collect();
        match_activated(&configured, &inherited, HTTP_NAME)
    }

    #[test]
    fn inherited_sockets_match_configured_addresses_exactly_first() {
        // Order of the fds does not matter; each goes to its own address.
        assert_eq!(
            matched(&["127.0.0.1:8080", "127.0.0.1:8081"], &[("127.0.0.1:8081", "b"), ("127.0.0.1:8080", "a")]),
            Ok(vec![Some(1), Some(0)])
        );
        // An exact match wins over a port-0 address on the same IP, whatever the order.
        assert_eq!(
            matched(&["127.0.0.1:0", "127.0.0.1:8080"], &[("127.0.0.1:8080", "x"), ("127.0.0.1:9000", "y")]),
            Ok(vec![Some(1), Some(0)])
        );
    }

    #[test]
    fn a_configured_port_0_takes_any_port_on_its_ip_only() {
        assert_eq!(matched(&["127.0.0.1:0"], &[("127.0.0.1:4321", "unknown")]), Ok(vec![Some(0)]));
        assert_eq!(matched(&["127.0.0.2:0"], &[("127.0.0.1:4321", "unknown")]), Err(0));
    }

    #[test]
    fn addresses_without_an_inherited_socket_are_left_to_bind() {
        assert_eq!(matched(&["127.0.0.1:8080", "127.0.0.1:8081"], &[("127.0.0.1:8081", "x")]), Ok(vec![None, Some(0)]));
        assert_eq!(matched(&["127.0.0.1:8080"], &[]), Ok(vec![None]));
    }

    #[test]
    fn a_socket_named_http_takes_the_one_address_left() {
        // systemd binds 0.0.0.0:80, the configuration says 127.0.0.1:8080: the name decides.
        assert_eq!(matched(&["127.0.0.1:8080"], &[("0.0.0.0:80", "http")]), Ok(vec![Some(0)]));
        assert_eq!(
            matched(&["127.0.0.1:8080", "127.0.0.1:9090"], &[("127.0.0.1:9090", "x"), ("[::]:80", "http")]),
            Ok(vec![Some(1), Some(0)])
        );
        // Two addresses left: which one is meant is not known, so the socket is unnamed.
        assert_eq!(matched(&["127.0.0.1:8080", "127.0.0.1:9090"], &[("0.0.0.0:80", "http")]), Err(0));
        // Only the name http counts; two of them for one address: neither is taken.
        assert_eq!(matched(&["127.0.0.1:8080"], &[("0.0.0.0:80", "https")]), Err(0));
        assert_eq!(matched(&["127.0.0.1:8080"], &[("0.0.0.0:80", "http"), ("0.0.0.0:81", "http")]), Err(0));
    }

    #[test]
    fn an_inherited_socket_no_address_names_is_reported_by_index() {
        assert_eq!(matched(&["127.0.0.1:8080"], &[("127.0.0.1:8080", "http"), ("127.0.0.1:9999", "other")]), Err(1));
        assert_eq!(matched(&["127.0.0.1:8080"], &[("127.0.0.1:8080", "a"), ("127.0.0.1:8080", "b")]), Err(1));
    }

    #[test]
    fn a_non_listening_or_non_tcp_socket_is_refused_naming_why() {
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("udp");
        udp.bind(&addr("127.0.0.1:0").into()).expect("bind udp");
        let err = check_listening_tcp(&OwnedFd::from(udp)).expect_err("udp refused");
        assert!(err.contains("not a stream socket"), "{err}");
        let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).expect("tcp");
        tcp.bind(&addr("127.0.0.1:0").into()).expect("bind tcp");
        let err = check_listening_tcp(&OwnedFd::from(tcp)).expect_err("unlistening refused");
        assert!(err.contains("not listening"), "{err}");
        let (unix, _peer) = std::os::unix::net::UnixStream::pair().expect("pair");
        let err = check_listening_tcp(&OwnedFd::from(unix)).expect_err("unix refused");
        assert!(err.contains("not an IPv4/IPv6"), "{err}");
        let file = std::fs::File::open("/dev/null").expect("file");
        let err = check_listening_tcp(&OwnedFd::from(file)).expect_err("file refused");
        assert!(err.contains("not a socket"), "{err}");
        let ok = activated_or_bound(&[addr("127.0.0.1:0")], Vec::new(), HTTP_NAME).expect("bind");
        let ok = ok.into_iter().next().expect("one");
        assert!(check_listening_tcp(&ok).is_ok());
    }
}
