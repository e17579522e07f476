//! TLS in the worker: the rustls server configuration made from the daemon's
//! certificates ([`Acceptor`]), and one connection's TLS state ([`Session`]), which
//! `conn` drives without blocking in the same event loop as plain connections.
//!
//! TLS 1.2 and 1.3 only, with the provider's default suites (AEADs only: AES-GCM and
//! ChaCha20-Poly1305, ECDHE key exchange); ALPN `http/1.1`. The certificate is chosen by
//! the SNI name among the certificates' DNS names (wildcards too), the first certificate
//! otherwise. Session tickets are sealed with the daemon's keys (`tls::tickets`), so a
//! session resumes on any worker; keys rotated meanwhile are installed in place
//! ([`Acceptor::install_ticket_keys`]). The handshake has no timer of its own: it is part of the first request,
//! which must be complete within the header timeout of the connection's arrival.

use crate::figures::{Tls as TlsCounters, TLS_HANDSHAKE_BUCKETS};
use crate::tls::tickets::{TicketKeys, Ticketer};
use crate::tls::{name_matches, TlsMaterial};
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ProtocolVersion, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

/// What every TLS connection of this worker starts from.
pub struct Acceptor {
    config: Arc<ServerConfig>,
    /// The configuration's ticketer, for rotations (None: no keys were given, so
    /// sessions resume on this worker only, from rustls' in-memory cache).
    tickets: Option<Arc<Ticketer>>,
}

impl Acceptor {
    /// The configuration for `material`; `None` when there is no certificate (TLS off).
    pub fn new(material: &TlsMaterial, tickets: Option<&TicketKeys>) -> anyhow::Result<Option<Acceptor>> {
        if material.is_empty() {
            return Ok(None);
        }
        let provider = crate::tls::provider();
        let mut certificates = Vec::new();
        for cert in &material.certificates {
            let path = cert.files.cert.display();
            let chain = CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("certificate file {path}"))?;
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
                .with_context(|| format!("key file {}", cert.files.key.display()))?;
            let key = provider
                .key_provider
                .load_private_key(key)
                .with_context(|| format!("key file {}", cert.files.key.display()))?;
            certificates.push((cert.names.clone(), Arc::new(CertifiedKey::new(chain, key))));
        }
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(BySni { certificates }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Our suite order (AES-256-GCM, ChaCha20, AES-128-GCM: the provider's) wins over
        // a client's, so a client that prefers something weaker still gets the strongest.
        config.ignore_client_order = true;
        let tickets = tickets.map(|keys| Arc::new(Ticketer::new(keys)));
        if let Some(ticketer) = &tickets {
            config.ticketer = ticketer.clone();
        }
        Ok(Some(Acceptor { config: Arc::new(config), tickets }))
    }

    /// Takes rotated ticket keys; false when this acceptor seals no tickets.
    pub fn install_ticket_keys(&self, keys: &TicketKeys) -> bool {
        self.tickets.as_ref().map(|t| t.install(keys)).is_some()
    }
}

/// Picks the certificate for a ClientHello's SNI name.
#[derive(Debug)]
struct BySni {
    /// DNS names and certificate, the default first.
    certificates: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|sni| {
            self.certificates.iter().find(|(names, _)| names.iter().any(|pattern| name_matches(pattern, sni)))
        });
        chosen.or(self.certificates.first()).map(|(_, key)| key.clone())
    }
}

/// One connection's TLS state. The socket stays the connection's; every call is given it.
pub struct Session {
    tls: ServerConnection,
    started: Instant,
    /// The handshake is under way (and not yet counted).
    handshaking: bool,
    /// Bytes came from the client (a connection closed before saying anything is no
    /// failed handshake, just a probe).
    heard: bool,
}

impl Session {
    pub fn new(acceptor: &Acceptor, now: Instant) -> io::Result<Session> {
        let tls = ServerConnection::new(acceptor.config.clone()).map_err(io::Error::other)?;
        Ok(Session { tls, started: now, handshaking: true, heard: false })
    }

    /// Reads decrypted request bytes into `buf`, running the handshake (and sending what
    /// it needs sent) on the way. `Ok(0)` at the client's close; `WouldBlock` when no
    /// application data is to be had now.
    pub fn read(&mut self, sock: &TcpStream, buf: &mut [u8], counters: &mut TlsCounters) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Closed without close_notify after some data: the same as a TCP close.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            self.flush(sock)?;
            let mut from: &TcpStream = sock;
            match self.tls.read_tls(&mut from) {
                Ok(0) => return Ok(0),
                Ok(_) => self.heard = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                let _ = self.flush(sock); // the alert that says why
                self.handshake_failed(counters);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if self.handshaking && !self.tls.is_handshaking() {
                self.handshake_done(counters);
            }
        }
    }

    /// Encrypts as much of `data` as the session buffers; the caller flushes.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.tls.writer().write(data)
    }

    /// Sends the TLS records waiting. Ok(false) when the socket is full.
    pub fn flush(&mut self, sock: &TcpStream) -> io::Result<bool> {
        while self.tls.wants_write() {
            let mut to: &TcpStream = sock;
            match self.tls.write_tls(&mut to) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The SNI name the client sent, once the ClientHello is in.
    pub fn server_name(&self) -> Option<&str> {
        self.tls.server_name()
    }

    /// TLS records are waiting to be sent.
    pub fn wants_write(&self) -> bool {
        self.tls.wants_write()
    }

    /// Queues close_notify and tries once to send it (a close that follows must not
    /// wait on a slow client).
    pub fn close_notify(&mut self, sock: &TcpStream) {
        self.tls.send_close_notify();
        let _ = self.flush(sock);
    }

    /// The connection ends: a handshake still under way after the client said something
    /// counts as failed (it timed out, or the client gave up).
    pub fn ended(&mut self, counters: &mut TlsCounters) {
        if self.handshaking && self.heard {
            self.handshake_failed(counters);
        }
    }

    fn handshake_done(&mut self, counters: &mut TlsCounters) {
        self.handshaking = false;
        let version = version_index(self.tls.protocol_version());
        if let Some(ok) = counters.ok.get_mut(version) {
            *ok += 1;
        }
        if self.tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            counters.resumed += 1;
        }
        counters.duration.observe(&TLS_HANDSHAKE_BUCKETS, self.started.elapsed());
    }

    fn handshake_failed(&mut self, counters: &mut TlsCounters) {
        if !self.handshaking {
            return; // an error after the handshake is the connection's, not the handshake's
        }
        self.handshaking = false;
        let version = version_index(self.tls.protocol_version());
        if let Some(failed) = counters.failed.get_mut(version) {
            *failed += 1;
        }
    }
}

/// `TlsCounters`' index for a negotiated version: TLSv1.2, TLSv1.3, none.
fn version_index(version: Option<ProtocolVersion>) -> usize {
    match version {
        Some(ProtocolVersion::TLSv1_2) => 0,
        Some(ProtocolVersion::TLSv1_3) => 1,
        _ => 2,
    }
}
