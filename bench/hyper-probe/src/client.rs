//! hp-client: sends exactly N GETs to a server on 127.0.0.1 and checks every response is
//! a 200 with the expected Content-Length and that many body bytes. Sequential, one
//! request in flight, so per-request costs are not blurred by pipelining.
//!
//! Usage: hp-client --addr 127.0.0.1:PORT --path /1k.html --len 1024 --n 5000
//!                  --mode keepalive|close [--deadline-secs 300]
//!   keepalive: one connection, N requests on it, then the client closes.
//!   close:     N connections, one request each with `Connection: close`; the client
//!              reads the response and then waits for the server's EOF.
//! Prints `requests=N connections=C elapsed_secs=S` on success; exits 1 on any error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(60);

struct Args {
    addr: SocketAddr,
    path: String,
    len: usize,
    n: u64,
    close: bool,
    deadline: Duration,
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:8080".parse().unwrap(),
        path: "/1k.html".into(),
        len: 1024,
        n: 1,
        close: false,
        deadline: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| die(&format!("{k} needs a value")));
        match k.as_str() {
            "--addr" => a.addr = v.parse().unwrap_or_else(|_| die("bad --addr")),
            "--path" => a.path = v,
            "--len" => a.len = v.parse().unwrap_or_else(|_| die("bad --len")),
            "--n" => a.n = v.parse().unwrap_or_else(|_| die("bad --n")),
            "--mode" => {
                a.close = match v.as_str() {
                    "keepalive" => false,
                    "close" => true,
                    _ => die("--mode keepalive|close"),
                }
            }
            "--deadline-secs" => a.deadline = Duration::from_secs(v.parse().unwrap_or_else(|_| die("bad deadline"))),
            _ => die(&format!("unknown flag {k}")),
        }
    }
    if !a.addr.ip().is_loopback() {
        die("only loopback targets are allowed");
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("hp-client: {msg}");
    std::process::exit(1);
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| die(&format!("connect: {e}")));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    BufReader::with_capacity(16 * 1024, s)
}

/// Writes one request and reads one response; checks status, length and body size.
fn exchange(conn: &mut BufReader<TcpStream>, request: &[u8], want_len: usize, body: &mut Vec<u8>, i: u64) {
    conn.get_mut().write_all(request).unwrap_or_else(|e| die(&format!("request {i}: write: {e}")));
    let mut line = String::new();
    conn.read_line(&mut line).unwrap_or_else(|e| die(&format!("request {i}: read: {e}")));
    if !line.starts_with("HTTP/1.1 200 ") {
        die(&format!("request {i}: status line {line:?}"));
    }
    let mut content_length = None;
    loop {
        line.clear();
        let n = conn.read_line(&mut line).unwrap_or_else(|e| die(&format!("request {i}: read: {e}")));
        if n == 0 {
            die(&format!("request {i}: EOF in head"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse::<usize>().ok();
            }
        }
    }
    if content_length != Some(want_len) {
        die(&format!("request {i}: content-length {content_length:?}, want {want_len}"));
    }
    body.resize(want_len, 0);
    conn.read_exact(body).unwrap_or_else(|e| die(&format!("request {i}: body: {e}")));
}

fn main() {
    let a = parse_args();
    let mut req = format!("GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: hp-client\r\nAccept: */*\r\n", a.path);
    if a.close {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    let req = req.into_bytes();
    let mut body = Vec::with_capacity(a.len);
    let start = Instant::now();
    let mut connections = 0u64;
    let mut conn = None;
    for i in 0..a.n {
        if start.elapsed() > a.deadline {
            die(&format!("deadline passed after {i} requests"));
        }
        if a.close || conn.is_none() {
            conn = Some(connect(a.addr));
            connections += 1;
        }
        let c = conn.as_mut().unwrap();
        exchange(c, &req, a.len, &mut body, i);
        if a.close {
            // The server must close: the next read is EOF, not more bytes.
            let mut extra = [0u8; 1];
            match c.read(&mut extra) {
                Ok(0) => {}
                Ok(_) => die(&format!("request {i}: bytes after the response on a closing connection")),
                Err(e) => die(&format!("request {i}: waiting for close: {e}")),
            }
            conn = None;
        }
    }
    drop(conn);
    println!("requests={} connections={} elapsed_secs={:.3}", a.n, connections, start.elapsed().as_secs_f64());
}
