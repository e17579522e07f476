//! hyper-probe: the smallest fair hyper 1.x static-file server, for measuring how many
//! instructions per request hyper's HTTP/1.1 stack costs next to webd's hand-written
//! httparse + mio worker.
//!
//! - hyper 1.x, `server::conn::http1` only, keep-alive on (hyper's default).
//! - One current-thread tokio runtime, one thread: the shape one webd worker would have.
//! - GET/HEAD of regular files under `--root`; the file is read per request with
//!   blocking `std::fs` calls (open + fstat + read + close, like `std::fs::read`): for
//!   page-cached small files this is what a single-threaded server would do, and
//!   `tokio::fs` would hop to a blocking thread pool instead. Nothing is cached between
//!   requests except hyper's own cached `Date` header.
//! - Headers: Server, Date (hyper's), Content-Type (fixed text/html), Content-Length,
//!   Last-Modified, ETag (nginx style `"<mtime hex>-<len hex>"`), Accept-Ranges —
//!   the same set webd sends for a 200.
//!
//! Usage: hyper-probe --listen 127.0.0.1:PORT --root DIR
//! Exits cleanly on SIGTERM or SIGINT (so profilers can write their output).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::UNIX_EPOCH;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

fn usage() -> ! {
    eprintln!("usage: hyper-probe --listen 127.0.0.1:PORT --root DIR");
    std::process::exit(2);
}

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut root: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().and_then(|v| v.parse().ok()),
            "--root" => root = args.next().map(PathBuf::from),
            _ => usage(),
        }
    }
    let (Some(listen), Some(root)) = (listen, root) else { usage() };
    let root = std::fs::canonicalize(&root).unwrap_or_else(|e| {
        eprintln!("hyper-probe: root {}: {e}", root.display());
        std::process::exit(1);
    });

    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("tokio runtime");
    // A LocalSet lets connection tasks borrow `Rc` state: no Arc, no Send bounds.
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(listen, Rc::new(root)));
}

async fn serve(listen: SocketAddr, root: Rc<PathBuf>) {
    let listener = TcpListener::bind(listen).await.expect("bind");
    eprintln!("hyper-probe: listening on {listen}, root {}", root.display());
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut served_conns: u64 = 0;
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => { eprintln!("hyper-probe: accept: {e}"); continue; }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        served_conns += 1;
        let _ = stream.set_nodelay(true);
        let root = root.clone();
        tokio::task::spawn_local(async move {
            let service = service_fn(move |req| {
                let root = root.clone();
                async move { Ok::<_, Infallible>(handle(&root, req)) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                if !e.is_incomplete_message() {
                    eprintln!("hyper-probe: connection: {e}");
                }
            }
        });
    }
    eprintln!("hyper-probe: stopping after {served_conns} connections");
}

fn handle(root: &Path, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let head_only = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => return status(StatusCode::METHOD_NOT_ALLOWED),
    };
    let Some(path) = resolve(root, req.uri().path()) else { return status(StatusCode::NOT_FOUND) };
    let (body, mtime) = match read_file(&path) {
        Ok(found) => found,
        Err(_) => return status(StatusCode::NOT_FOUND),
    };
    let len = body.len() as u64;
    let mut etag = String::with_capacity(32);
    use std::fmt::Write;
    let _ = write!(etag, "\"{:x}-{:x}\"", mtime, len);
    let mut resp = Response::new(Full::new(if head_only { Bytes::new() } else { Bytes::from(body) }));
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static("hyper-probe"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(mtime)))
            .expect("date"),
    );
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("etag"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    resp
}

/// Maps a URL path onto `root`, refusing anything but plain segments.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let rel = url_path.strip_prefix('/')?;
    if rel.is_empty() || rel.split('/').any(|s| s.is_empty() || s == "." || s == ".." || s.contains('%')) {
        return None;
    }
    Some(root.join(rel))
}

/// open + fstat + read + close: the contents and the mtime (seconds).
fn read_file(path: &Path) -> std::io::Result<(Vec<u8>, u64)> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let mtime = meta.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut body = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut body)?;
    Ok((body, mtime))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}
