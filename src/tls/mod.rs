//! TLS material the daemon owns and hands down: the certificates, read and checked once
//! (at start and at each reload) and sent to the manager, which gives them to every
//! worker it starts (`worker::tls` builds the rustls configuration from them).
//!
//! The daemon reads the files, not the workers: a key readable by root alone still
//! works with `--user`, and a worker never sees a file that did not pass the checks. A
//! certificate is refused, naming its file, when the file cannot be read, holds no PEM
//! certificate (or key), is not X.509, has expired, or its key does not match it.
//!
//! The session-ticket keys every worker shares are in [`tickets`].

pub mod tickets;

use crate::config::Config;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The crypto provider every TLS use in webd shares.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate chain and its key, as `--tls-cert/--tls-key` or one `[[certificates]]`
/// table names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl CertificateFiles {
    /// The pair with relative paths taken relative to `dir` (a config file's directory).
    pub fn relative_to(self, dir: &Path) -> CertificateFiles {
        CertificateFiles { cert: dir.join(self.cert), key: dir.join(self.key) }
    }
}

/// Every certificate the workers serve, the default (first) one first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsMaterial {
    pub certificates: Vec<Certificate>,
}

/// One checked certificate with its key, as PEM text (it travels in JSON messages).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    pub files: CertificateFiles,
    pub chain_pem: String,
    pub key_pem: String,
    /// The DNS names of its subjectAltName (a wildcard as `*.example.com`), lower case;
    /// the subject's common name when it has none.
    pub names: Vec<String>,
    /// Its notAfter, in seconds since the epoch.
    pub not_after: i64,
}

impl std::fmt::Debug for Certificate {
    // The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("files", &self.files)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// What status and metrics call it: its first DNS name (else its file).
    pub fn name(&self) -> String {
        self.names.first().cloned().unwrap_or_else(|| self.files.cert.display().to_string())
    }

    /// How status shows it.
    pub fn status(&self) -> webd_proto::CertificateStatus {
        webd_proto::CertificateStatus {
            name: self.name(),
            names: self.names.clone(),
            not_after: rfc3339(self.not_after),
            file: self.files.cert.display().to_string(),
        }
    }
}

/// A certificate or key file that cannot be served; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertificateError(String);

impl TlsMaterial {
    /// Reads and checks the certificates `config` names: `--tls-cert/--tls-key` first,
    /// then the `[[certificates]]` tables in order. Empty when TLS is off.
    pub fn load(config: &Config) -> Result<TlsMaterial, CertificateError> {
        let mut files = Vec::new();
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => files.push(CertificateFiles { cert: cert.clone(), key: key.clone() }),
            (None, None) => {}
            (Some(_), None) => return Err(CertificateError("--tls-cert is given without --tls-key".into())),
            (None, Some(_)) => return Err(CertificateError("--tls-key is given without --tls-cert".into())),
        }
        files.extend(config.certificates.iter().cloned());
        let tls_listen = config.tls_listen.as_ref().is_some_and(|l| !l.is_empty());
        if tls_listen && files.is_empty() {
            return Err(CertificateError(
                "tls_listen needs a certificate: give --tls-cert and --tls-key, or [[certificates]] in the config file"
                    .into(),
            ));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let provider = provider();
        let certificates = files.into_iter().map(|f| Certificate::load(f, &provider, now)).collect::<Result<_, _>>()?;
        Ok(TlsMaterial { certificates })
    }

    pub fn is_empty(&self) -> bool {
        self.certificates.is_empty()
    }
}

impl Certificate {
    fn load(files: CertificateFiles, provider: &CryptoProvider, now: i64) -> Result<Certificate, CertificateError> {
        let (cert_path, key_path) = (files.cert.display().to_string(), files.key.display().to_string());
        let at_cert = |what: String| CertificateError(format!("certificate file {cert_path}: {what}"));
        let at_key = |what: String| CertificateError(format!("key file {key_path}: {what}"));
        let chain_pem = std::fs::read_to_string(&files.cert).map_err(|e| at_cert(e.to_string()))?;
        let key_pem = std::fs::read_to_string(&files.key).map_err(|e| at_key(e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| at_cert(format!("not PEM: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(at_cert("holds no PEM certificate".into()));
        };
        let (names, not_after) = inspect(leaf).map_err(at_cert)?;
        if not_after < now {
            return Err(at_cert(format!("the certificate expired at {}", httpdate_of(not_after))));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| at_key(format!("no PEM private key: {e}")))?;
        let signing = provider.key_provider.load_private_key(key).map_err(|e| at_key(format!("unusable key: {e}")))?;
        match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
            // Unknown: the key type does not tell its public key; the handshake would.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => return Err(at_key(format!("the key does not match the certificate in {cert_path}"))),
        }
        Ok(Certificate { files, chain_pem, key_pem, names, not_after })
    }
}

/// The DNS names and notAfter of a DER certificate.
fn inspect(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("bad subjectAltName: {e}")),
    };
    if names.is_empty() {
        names.extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase));
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// An instant in seconds since the epoch as an HTTP date.
fn httpdate_of(secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    httpdate::fmt_http_date(at)
}

/// Seconds since the epoch as an RFC 3339 UTC time (`2027-03-01T12:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Whether SNI `name` is served by a certificate for `pattern`: equal (ASCII, any case),
/// or `*.rest` covering exactly one label in front of `rest` (RFC 6125 §6.4.3).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => {
            name.split_once('.').is_some_and(|(label, tail)| !label.is_empty() && tail.eq_ignore_ascii_case(rest))
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_in_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_803_902_645), "2027-03-01T12:04:05Z");
    }

    #[test]
    fn a_wildcard_covers_one_label() {
        assert!(name_matches("*.example.com", "www.example.com"));
        assert!(name_matches("*.example.com", "WWW.Example.COM"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("example.com", "EXAMPLE.com"));
        assert!(!name_matches("example.com", "www.example.com"));
    }
}
