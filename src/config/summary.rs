//! What `webd --check-config` prints once a configuration has loaded: the sites with their
//! rules, the addresses, the certificates (names, notAfter, file) and the process
//! settings an operator checks before a start or a reload. Plain text for people, one
//! item per line; the checking itself is `Config::load` and `TlsMaterial::load`, the code
//! a start and a reload use.

use super::{AccessLogTarget, Admin, Config, HeaderRule, Redirect};
use crate::tls::TlsMaterial;
use std::fmt::Write;
use std::net::SocketAddr;

/// The summary of `config` and its certificates, ending with a newline.
pub fn summary(config: &Config, tls: &TlsMaterial, file: Option<&std::path::Path>) -> String {
    let mut out = String::new();
    match file {
        Some(path) => line(&mut out, 0, "configuration OK", &path.display()),
        None => line(&mut out, 0, "configuration OK", &"flags only, no config file"),
    }
    default_site(&mut out, config);
    listeners(&mut out, config, tls);
    process_settings(&mut out, config);
    out
}

/// One `key: value` line, indented `depth` levels.
fn line(out: &mut String, depth: usize, key: &str, value: &dyn std::fmt::Display) {
    let _ = writeln!(out, "{:indent$}{key}: {value}", "", indent = depth * 2);
}

/// The default site: its root and every rule that applies to it.
fn default_site(out: &mut String, config: &Config) {
    line(out, 0, "site", &"default (any Host)");
    line(out, 1, "root", &config.root.display());
    line(out, 1, "hidden_files", &format!("{:?}", config.hidden_files).to_lowercase());
    line(out, 1, "fallback", &config.fallback.as_deref().unwrap_or("none"));
    header_rules(out, &config.headers);
    redirects(out, &config.redirects);
}

fn header_rules(out: &mut String, rules: &[HeaderRule]) {
    line(out, 1, "headers", &count(rules.len(), "rule"));
    for (index, rule) in rules.iter().enumerate() {
        let set: Vec<String> = rule.set.iter().map(|(name, value)| format!("{name}: {value}")).collect();
        line(out, 2, &format!("headers[{index}] match {}", rule.pattern), &set.join("; "));
    }
}

fn redirects(out: &mut String, rules: &[Redirect]) {
    line(out, 1, "redirects", &count(rules.len(), "rule"));
    for (index, rule) in rules.iter().enumerate() {
        let kind = if rule.is_prefix() { "prefix" } else { "exact" };
        line(out, 2, &format!("redirects[{index}] {} ({kind})", rule.from), &format!("{} {}", rule.status, rule.to));
    }
}

/// Where it listens, and the certificates HTTPS serves.
fn listeners(out: &mut String, config: &Config, tls: &TlsMaterial) {
    line(out, 0, "listen", &addresses(&config.listen));
    line(out, 0, "tls_listen", &addresses(config.tls_listen.as_deref().unwrap_or_default()));
    line(out, 0, "certificates", &count(tls.certificates.len(), "certificate"));
    for certificate in &tls.certificates {
        let names = certificate.names.join(", ");
        line(out, 1, &certificate.files.cert.display().to_string(), &format!("names {names}"));
        line(out, 2, "not after", &crate::tls::rfc3339(certificate.not_after));
        line(out, 2, "key", &certificate.files.key.display());
    }
    let admin = match config.admin {
        Admin::Off => "off".to_string(),
        Admin::At(addr) => addr.to_string(),
    };
    line(out, 0, "admin", &admin);
    line(out, 0, "control_socket", &config.control_socket.display());
}

fn process_settings(out: &mut String, config: &Config) {
    let access_log = match &config.access_log {
        AccessLogTarget::Off => "off".to_string(),
        AccessLogTarget::Stderr => "stderr".to_string(),
        AccessLogTarget::File(path) => path.display().to_string(),
    };
    let format = format!("{:?}", config.access_log_format).to_lowercase();
    line(out, 0, "access_log", &format!("{access_log} ({format})"));
    line(out, 0, "workers", &config.workers);
    line(out, 0, "user", &config.user.as_deref().unwrap_or("none"));
    line(out, 0, "max_connections", &config.max_connections);
    line(out, 0, "max_requests_per_connection", &config.max_requests_per_connection);
}

fn addresses(list: &[SocketAddr]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ")
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
