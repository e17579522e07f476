//! TLS for tests: a certificate authority made in the test (rcgen), certificates it
//! issues written as PEM files, and a rustls client that GETs a page and tells which
//! certificate the server presented.

use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A test CA and the roots a client trusts it with.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub der: CertificateDer<'static>,
}

/// A certificate issued by the test CA, as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "webd test CA");
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa { der: cert.der().clone(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A certificate for `names`, written to `<dir>/<stem>.pem` and `<stem>.key`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        self.issue_until(dir, stem, names, None)
    }

    /// The same with notAfter set (to issue an expired one).
    pub fn issue_until(&self, dir: &Path, stem: &str, names: &[&str], not_after: Option<(i32, u8, u8)>) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("leaf params");
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(y - 1, m, d);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        let (cert_path, key_path) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        Issued { cert: cert_path, key: key_path, der: cert.der().clone() }
    }

    /// A client trusting this CA, offering `versions` (both when empty).
    pub fn client(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("CA root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions = if versions.is_empty() { rustls::DEFAULT_VERSIONS } else { versions };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// What a TLS GET saw.
#[derive(Debug)]
pub struct TlsAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    pub peer: CertificateDer<'static>,
    pub version: Option<rustls::ProtocolVersion>,
    pub alpn: Option<Vec<u8>>,
    /// The handshake resumed a session (a ticket from an earlier connection of this
    /// client configuration, whose store keeps them).
    pub resumed: bool,
}

/// GETs `path` over TLS with SNI `name` on an open TCP connection (`Connection: close`).
pub fn tls_get(
    tcp: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
    path: &str,
) -> std::io::Result<TlsAnswer> {
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    let server = ServerName::try_from(name.to_string()).map_err(std::io::Error::other)?;
    let conn = rustls::ClientConnection::new(config.clone(), server).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(tls, "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    let (response, _) =
        super::parse_response(&raw).ok_or_else(|| std::io::Error::other(format!("no response in {raw:?}")))?;
    let peer = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or_else(|| std::io::Error::other("no certificate"))?;
    Ok(TlsAnswer {
        status: response.status,
        body: response.body,
        peer: peer.into_owned(),
        version: tls.conn.protocol_version(),
        alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
        resumed: tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    })
}

/// A TCP connection to `addr` (for `tls_get`), within 5 s.
pub fn tcp_to(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// A ClientHello offering only `version` (0x0301 TLS 1.0, 0x0302 TLS 1.1), with no
/// extensions: what a client too old for webd sends.
pub fn legacy_client_hello(version: u16) -> Vec<u8> {
    let suites: [u16; 4] = [0xc013, 0xc014, 0x002f, 0x0035];
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut handshake = vec![1, 0, (body.len() >> 8) as u8, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, (handshake.len() >> 8) as u8, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

/// The first bytes of a real TLS 1.3 ClientHello, as a rustls client would send them.
pub fn client_hello(config: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(config.clone(), ServerName::try_from("localhost").expect("name"))
        .expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

/// The flags that serve HTTPS on a free port with `cert`.
pub fn tls_args(cert: &Issued) -> Vec<String> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    [
        "--tls-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        path(&cert.cert),
        "--tls-key".into(),
        path(&cert.key),
    ]
    .into()
}

/// The first HTTPS address `webd`'s status names, once it is up.
pub fn tls_addr(webd: &super::Webd) -> SocketAddr {
    super::wait_for(Duration::from_secs(10), "tls_listen in status", || {
        webd.status_json()["status"]["tls_listen"].get(0)?.as_str()?.parse().ok()
    })
}
