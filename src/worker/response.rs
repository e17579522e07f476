//! TEMPORARY signature stub; replaced by the real module.
use super::date::DateCache;
use super::path::Root;
use super::request::{ErrorKind, Request};
pub struct Plan {
    pub status: u16,
    pub body: Body,
    pub close: bool,
}
pub enum Body {
    None,
    File { file: std::fs::File, offset: u64, len: u64 },
}
pub fn respond(
    _req: &Request,
    _root: &Root,
    _date: &DateCache,
    _scratch: &mut Vec<u8>,
    _force_close: bool,
    head: &mut Vec<u8>,
) -> Plan {
    head.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    Plan { status: 404, body: Body::None, close: false }
}
pub fn error_head(_kind: ErrorKind, _date: &DateCache, head: &mut Vec<u8>) -> Plan {
    head.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Plan { status: 400, body: Body::None, close: true }
}
