//! The site rules a config file gives (SPEC section 7): hidden files, `[[redirects]]`,
//! `[[headers]]`, `fallback`, `error_pages`, `directory_listing`, and `[[sites]]`, the
//! virtual hosts that may carry their own. Here they are plain data, checked when the file is read so a bad rule is
//! a configuration error naming the file and the rule; `worker/rules.rs` compiles them
//! once per worker.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Whether a path with a segment starting with `.` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HiddenFiles {
    /// 404 for any such path, except under `/.well-known/`.
    #[default]
    Deny,
    /// Served like any other file.
    Allow,
}

/// One `[[redirects]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// A path prefix when it ends with `/`, else an exact path.
    pub from: String,
    /// Where to: a path or an absolute URL.
    pub to: String,
    /// 301, 302, 307 or 308.
    pub status: u16,
}

impl Redirect {
    /// The statuses a redirect may have.
    pub const STATUSES: [u16; 4] = [301, 302, 307, 308];

    pub fn is_prefix(&self) -> bool {
        self.from.ends_with('/')
    }

    fn check(&self) -> Result<(), String> {
        if !Redirect::STATUSES.contains(&self.status) {
            return Err(format!("status = {} is not one of 301, 302, 307, 308", self.status));
        }
        if !self.from.starts_with('/') {
            return Err("from must be a path starting with /".into());
        }
        if self.to.is_empty() || !self.to.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err("to must be a non-empty path or URL of visible ASCII (percent-encode the rest)".into());
        }
        Ok(())
    }
}

/// One `[[headers]]` rule: headers set on the responses for paths `match` matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    /// Glob on the decoded path: `*` within a segment, `**` across segments, `?` one byte.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Header name → value.
    pub set: BTreeMap<String, String>,
}

/// Headers webd writes itself: a rule may not set them (a second copy would contradict
/// the first, or break the framing).
pub const MANAGED_HEADERS: &[&str] = &[
    "accept-ranges",
    "allow",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "date",
    "etag",
    "keep-alive",
    "last-modified",
    "location",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Most `[[headers]]` rules: a response records the ones that match in a fixed bit set.
pub const MAX_HEADER_RULES: usize = 256;

impl HeaderRule {
    fn check(&self) -> Result<(), String> {
        check_glob(&self.pattern).map_err(|e| format!("match = {:?}: {e}", self.pattern))?;
        if self.set.is_empty() {
            return Err("set names no header".into());
        }
        for (name, value) in &self.set {
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(format!("header name {name:?} is not a token (RFC 9110 section 5.1)"));
            }
            if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(format!("header {name:?} is written by webd itself and cannot be set"));
            }
            let visible = |b: u8| b == b'\t' || (0x20..0x7f).contains(&b);
            if !value.bytes().all(visible) || value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
                return Err(format!(
                    "header {name:?}: value {value:?} must be visible ASCII without leading or trailing space"
                ));
            }
        }
        Ok(())
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A glob is a path (it starts with `/`) in which `**` stands alone as a segment.
pub fn check_glob(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('/') {
        return Err("a glob on the path starts with /".into());
    }
    for segment in pattern.split('/') {
        if segment.contains("**") && segment != "**" {
            return Err(format!("** must be a whole segment, not part of {segment:?}"));
        }
    }
    Ok(())
}

/// Checks every rule; the error names the rule (`redirects[0]`, counted from 0) and what
/// is wrong with it.
pub fn check_rules(redirects: Option<&[Redirect]>, headers: Option<&[HeaderRule]>) -> Result<(), String> {
    for (index, rule) in redirects.unwrap_or_default().iter().enumerate() {
        rule.check().map_err(|e| format!("redirects[{index}] (from = {:?}): {e}", rule.from))?;
    }
    let headers = headers.unwrap_or_default();
    if headers.len() > MAX_HEADER_RULES {
        return Err(format!("headers: {} rules, at most {MAX_HEADER_RULES}", headers.len()));
    }
    for (index, rule) in headers.iter().enumerate() {
        rule.check().map_err(|e| format!("headers[{index}] (match = {:?}): {e}", rule.pattern))?;
    }
    Ok(())
}

/// `error_pages`: status (a TOML key, so a string: `404`) → path of the page's file.
pub type ErrorPages = BTreeMap<String, String>;

/// The statuses webd answers a parsed request with, so the ones an error page can be for
/// (the errors found before a request is parsed, such as 413 or 431, know no site).
pub const ERROR_PAGE_STATUSES: [u16; 8] = [400, 403, 404, 405, 412, 416, 500, 501];

/// Every `error_pages` key is one of [`ERROR_PAGE_STATUSES`] and every value the path of
/// a file beneath the root. Whether the file exists is not checked here: a page deployed
/// after the configuration is no reason to refuse it (see `Config::warnings`).
pub fn check_error_pages(pages: &ErrorPages) -> Result<(), String> {
    for (key, path) in pages {
        let status = key.parse::<u16>().ok().filter(|status| ERROR_PAGE_STATUSES.contains(status));
        if status.is_none() {
            let statuses = ERROR_PAGE_STATUSES.map(|s| s.to_string()).join(", ");
            return Err(format!(
                "error_pages: key {key:?} is not a status webd answers with a page (one of {statuses})"
            ));
        }
        if !is_file_path(path) {
            return Err(format!(
                "error_pages: {key} = {path:?} must be the path of a file beneath the root, like \"/{key}.html\""
            ));
        }
    }
    Ok(())
}

/// A path beneath the root naming a file: absolute, not a directory, no `..`, no NUL.
fn is_file_path(path: &str) -> bool {
    path.starts_with('/') && !path.ends_with('/') && !path.contains('\0') && !path.split('/').any(|s| s == "..")
}

/// The rules one site applies, borrowed from the configuration: the site's own where it
/// sets them, the top level's otherwise. The worker compiles one `Rules` from each.
#[derive(Debug, Clone, Copy)]
pub struct SiteRules<'a> {
    pub hidden_files: HiddenFiles,
    pub directory_listing: bool,
    pub fallback: Option<&'a str>,
    pub error_pages: &'a ErrorPages,
    pub headers: &'a [HeaderRule],
    pub redirects: &'a [Redirect],
}

/// `fallback` names a path beneath the root: it starts with `/`, and it is a file's path.
pub fn check_fallback(path: &str) -> Result<(), String> {
    if !is_file_path(path) {
        return Err(format!("fallback = {path:?}: must be the path of a file beneath the root, like \"/index.html\""));
    }
    Ok(())
}

/// One `[[sites]]` table: a virtual host, chosen by the request's `Host` (or the TLS SNI
/// name when there is none). Every rule it leaves out is the top level's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Names (`example.org`) and one-label wildcards (`*.example.org`), any case, no port.
    pub hosts: Vec<String>,
    /// Its document root; relative to the config file's directory, made canonical.
    pub root: PathBuf,
    pub hidden_files: Option<HiddenFiles>,
    pub directory_listing: Option<bool>,
    pub fallback: Option<String>,
    pub error_pages: Option<ErrorPages>,
    pub headers: Option<Vec<HeaderRule>>,
    pub redirects: Option<Vec<Redirect>>,
}

impl Site {
    /// What the site is called in logs: its first host name.
    pub fn name(&self) -> &str {
        self.hosts.first().map_or("?", String::as_str)
    }

    /// The site's rules, the top level's (`top`) where it sets none.
    pub fn rules<'a>(&'a self, top: &SiteRules<'a>) -> SiteRules<'a> {
        SiteRules {
            hidden_files: self.hidden_files.unwrap_or(top.hidden_files),
            directory_listing: self.directory_listing.unwrap_or(top.directory_listing),
            fallback: self.fallback.as_deref().or(top.fallback),
            error_pages: self.error_pages.as_ref().unwrap_or(top.error_pages),
            headers: self.headers.as_deref().unwrap_or(top.headers),
            redirects: self.redirects.as_deref().unwrap_or(top.redirects),
        }
    }

    /// `sites[2] (hosts = ["a.org"])`, for errors.
    fn label(&self, index: usize) -> String {
        format!("sites[{index}] (hosts = {:?})", self.hosts)
    }
}

/// Checks every `[[sites]]` table of a file in `dir`: its hosts (valid, and each claimed
/// by one site only), its rules, and its root, which is made absolute and canonical. The
/// error names the site.
pub fn check_sites(sites: &mut [Site], dir: &Path) -> Result<(), String> {
    let mut claimed: Vec<(String, usize)> = Vec::new();
    for (index, site) in sites.iter_mut().enumerate() {
        let label = site.label(index);
        let in_site = |message: String| format!("{label}: {message}");
        if site.hosts.is_empty() {
            return Err(in_site("hosts = [] names no host".into()));
        }
        for host in &site.hosts {
            check_host(host).map_err(|e| in_site(format!("host {host:?}: {e}")))?;
            let host = host.to_ascii_lowercase();
            if let Some((_, other)) = claimed.iter().find(|(seen, _)| *seen == host) {
                return Err(in_site(format!("host {host:?} is also claimed by sites[{other}]")));
            }
            claimed.push((host, index));
        }
        check_rules(site.redirects.as_deref(), site.headers.as_deref()).map_err(in_site)?;
        if let Some(fallback) = &site.fallback {
            check_fallback(fallback).map_err(in_site)?;
        }
        if let Some(pages) = &site.error_pages {
            check_error_pages(pages).map_err(in_site)?;
        }
        let root = dir.join(&site.root);
        let canonical = std::fs::canonicalize(&root).map_err(|e| in_site(format!("root {}: {e}", root.display())))?;
        if !canonical.is_dir() {
            return Err(in_site(format!("root {} is not a directory", canonical.display())));
        }
        site.root = canonical;
    }
    Ok(())
}

/// A host name as a `Host` field would carry it without the port (letters, digits, `-`,
/// `_`, dot-separated labels, or a bracketed IPv6 literal), or `*.` and such a name.
fn check_host(host: &str) -> Result<(), String> {
    if host.starts_with('[') && host.ends_with(']') && host.len() > 2 {
        let inner = &host[1..host.len() - 1];
        return match inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            true => Ok(()),
            false => Err("not a bracketed IPv6 address".into()),
        };
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err("a wildcard is \"*.\" in front of a name (\"*.example.org\"), nothing else".into());
    }
    if name.contains(':') {
        return Err("give the name without a port (the port is not looked at)".into());
    }
    let label_ok =
        |label: &str| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name.split('.').all(label_ok) {
        return Err("not a host name (letters, digits, - and _ in dot-separated labels)".into());
    }
    Ok(())
}
