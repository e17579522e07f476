//! HTTP/1 pieces shared by the workers and the admin endpoint: one table of status
//! codes, their reason phrases and built-in pages, and the lingering close.

use crate::sys::retry_eintr;
use std::io::{self, Read};
use std::time::Duration;

/// How long a lingering close reads and drops the client's input.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// Bytes a lingering close reads and drops before it gives up on the client.
pub const LINGER_BYTES: usize = 64 * 1024;

/// A lingering close (RFC 9112 §9.6). Closing with unread input makes the kernel send
/// RST, which can destroy the response before the client reads it: so the caller shuts
/// its side down, then reads and drops what the client still sends until it closes,
/// for a bounded time (the caller's deadline, `LINGER_TIME`) and amount (`LINGER_BYTES`).
#[derive(Debug, Default)]
pub struct Linger {
    dropped: usize,
}

/// Where a lingering close stands after a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lingering {
    /// Nothing more to read for now: wait for input (or the deadline).
    Waiting,
    /// The client closed, failed or sent too much: close now.
    Over,
}

impl Linger {
    /// Reads and drops what `input` holds.
    pub fn drain(&mut self, mut input: impl Read) -> Lingering {
        let mut sink = [0u8; 4096];
        loop {
            match retry_eintr(|| input.read(&mut sink)) {
                Ok(0) => return Lingering::Over,
                Ok(n) => {
                    self.dropped += n;
                    if self.dropped > LINGER_BYTES {
                        return Lingering::Over;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Lingering::Waiting,
                Err(_) => return Lingering::Over,
            }
        }
    }
}

/// One table for reason phrases and built-in pages, so the two cannot disagree.
macro_rules! statuses {
    ($($code:literal => $reason:literal,)*) => {
        /// The reason phrase of `status` (empty for a code the table lacks).
        pub fn reason_phrase(status: u16) -> &'static str {
            match status {
                $($code => $reason,)*
                _ => "",
            }
        }

        /// The built-in HTML page for `status` (empty for a code the table lacks).
        pub fn error_page(status: u16) -> &'static [u8] {
            match status {
                $($code => concat!(
                    "<html><head><title>", $code, " ", $reason, "</title></head>",
                    "<body><h1>", $code, " ", $reason, "</h1></body></html>\n"
                ).as_bytes(),)*
                _ => b"",
            }
        }
    };
}

statuses! {
    200 => "OK",
    206 => "Partial Content",
    301 => "Moved Permanently",
    302 => "Found",
    304 => "Not Modified",
    307 => "Temporary Redirect",
    308 => "Permanent Redirect",
    400 => "Bad Request",
    403 => "Forbidden",
    404 => "Not Found",
    405 => "Method Not Allowed",
    408 => "Request Timeout",
    412 => "Precondition Failed",
    413 => "Content Too Large",
    414 => "URI Too Long",
    416 => "Range Not Satisfiable",
    431 => "Request Header Fields Too Large",
    500 => "Internal Server Error",
    501 => "Not Implemented",
    503 => "Service Unavailable",
    505 => "HTTP Version Not Supported",
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input that yields `chunks`, then would block.
    struct Trickle(Vec<usize>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop() {
                Some(n) => Ok(n.min(buf.len())),
                None => Err(io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    #[test]
    fn a_linger_waits_for_more_until_eof_or_too_much() {
        let mut linger = Linger::default();
        assert_eq!(linger.drain(Trickle(vec![100, 4096])), Lingering::Waiting);
        assert_eq!(linger.drain(Trickle(vec![0])), Lingering::Over);
        let mut flood = Linger::default();
        assert_eq!(flood.drain(Trickle(vec![4096; LINGER_BYTES / 4096 + 1])), Lingering::Over);
    }
}
