//! `redirect_to_https`: a request on a plain listener is answered 308 to the same
//! request-target on HTTPS, `https://HOST[:PORT]/path?query`, where HOST is the request's
//! (the absolute-form target's authority, else `Host`, else the address the client
//! connected to) without its port, and PORT the first `tls_listen` port (left out when
//! it is 443). 308 keeps the method and body, so a POST is redirected as a POST.

use std::net::IpAddr;

/// Where redirected requests go: the port part of the `Location`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsRedirect {
    /// `:8443`, or empty for 443.
    port_suffix: String,
}

impl HttpsRedirect {
    pub fn new(port: u16) -> HttpsRedirect {
        let port_suffix = if port == 443 { String::new() } else { format!(":{port}") };
        HttpsRedirect { port_suffix }
    }

    /// Writes the `Location` for `target` into `out` (cleared first). `host` is the
    /// request's `Host` value (validated by the parser, so it holds no byte that could
    /// end the header); `local` gives the address connected to, asked only when no host
    /// is known (an HTTP/1.0 request without `Host`). None for `*` (`OPTIONS *`), which
    /// names no resource to redirect to.
    pub fn location(
        &self,
        target: &[u8],
        host: Option<&[u8]>,
        local: impl FnOnce() -> Option<IpAddr>,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        out.clear();
        let (authority, path) = split_absolute(target).map_or((host, target), |(a, p)| (Some(a), p));
        // An absolute-form target may go straight from the authority to its query.
        let needs_slash = path.is_empty() || path.starts_with(b"?");
        if !needs_slash && !path.starts_with(b"/") {
            return None;
        }
        out.extend_from_slice(b"https://");
        match authority.map(without_port).filter(|h| !h.is_empty()) {
            Some(host) => out.extend_from_slice(host),
            None => match local()? {
                IpAddr::V4(ip) => out.extend_from_slice(ip.to_string().as_bytes()),
                IpAddr::V6(ip) => out.extend_from_slice(format!("[{ip}]").as_bytes()),
            },
        }
        out.extend_from_slice(self.port_suffix.as_bytes());
        if needs_slash {
            out.push(b'/');
        }
        out.extend_from_slice(path);
        Some(())
    }
}

/// An absolute-form target (`http://host:port/path?q`) as its authority and the rest.
fn split_absolute(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let scheme_end = target.windows(3).position(|w| w == b"://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let authority_end = rest.iter().position(|&b| matches!(b, b'/' | b'?')).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    // userinfo@ is not part of the host
    let authority = authority.iter().rposition(|&b| b == b'@').map_or(authority, |at| &authority[at + 1..]);
    Some((authority, path))
}

/// `host[:port]` or `[v6]:port` without the port.
fn without_port(host: &[u8]) -> &[u8] {
    if host.starts_with(b"[") {
        return host.iter().position(|&b| b == b']').map_or(host, |end| &host[..=end]);
    }
    host.iter().position(|&b| b == b':').map_or(host, |colon| &host[..colon])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(port: u16, target: &str, host: Option<&str>) -> Option<String> {
        let mut out = Vec::new();
        let local = || Some(IpAddr::from([192, 0, 2, 7]));
        HttpsRedirect::new(port).location(target.as_bytes(), host.map(str::as_bytes), local, &mut out)?;
        Some(String::from_utf8(out).expect("ascii"))
    }

    #[test]
    fn the_same_target_on_the_https_port_443_left_out() {
        assert_eq!(location(443, "/a/b?x=1&y", Some("example.org")).as_deref(), Some("https://example.org/a/b?x=1&y"));
        assert_eq!(location(8443, "/", Some("example.org:8080")).as_deref(), Some("https://example.org:8443/"));
        assert_eq!(location(8443, "/p", Some("[::1]:8080")).as_deref(), Some("https://[::1]:8443/p"));
        assert_eq!(location(443, "/p", Some("[2001:db8::1]")).as_deref(), Some("https://[2001:db8::1]/p"));
    }

    #[test]
    fn an_absolute_form_target_names_the_host() {
        let moved = location(443, "http://other.test:80/x?q", Some("example.org"));
        assert_eq!(moved.as_deref(), Some("https://other.test/x?q"));
        assert_eq!(location(443, "http://user@h.test", None).as_deref(), Some("https://h.test/"));
        assert_eq!(location(443, "HTTP://h.test?q", None).as_deref(), Some("https://h.test/?q"));
    }

    #[test]
    fn without_host_the_address_connected_to() {
        assert_eq!(location(8443, "/x", None).as_deref(), Some("https://192.0.2.7:8443/x"));
        let mut out = Vec::new();
        let v6 = || Some(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]));
        HttpsRedirect::new(443).location(b"/", None, v6, &mut out).expect("location");
        assert_eq!(out, b"https://[::1]/");
    }

    #[test]
    fn options_star_is_not_redirected() {
        assert_eq!(location(443, "*", Some("example.org")), None);
    }
}
