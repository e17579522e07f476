//! The harness's HTTP client: one request per connection, raw bytes, responses parsed
//! by Content-Length.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// GET `path` on a new connection with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"))
}

/// Sends raw bytes on a new connection and reads the response until EOF.
pub fn request(addr: SocketAddr, raw: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(raw.as_bytes())?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    parse_response(&buf)
        .map(|(r, _)| r)
        .ok_or_else(|| std::io::Error::other(format!("bad response: {:?}", String::from_utf8_lossy(&buf))))
}

/// Parses one response from the start of `buf`; returns it and the bytes it used.
/// The body length comes from Content-Length (absent: the rest of the buffer).
pub fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body_len = match len {
        Some(n) if status != 304 => n,
        Some(_) => 0,
        None => buf.len() - head_end,
    };
    if buf.len() < head_end + body_len {
        return None;
    }
    let body = buf[head_end..head_end + body_len].to_vec();
    Some((Response { status, headers, body }, head_end + body_len))
}
