//! The site rules of SPEC section 7, compiled once per worker from the `Config` it was
//! started with: hidden files, redirects, header rules. Each request consults them on its
//! decoded, normalized path (see [`super::path`]) before any file is opened.
//!
//! With no rule configured a lookup is a length check on an empty slice: the plain path
//! allocates nothing and does no more work than before.

use super::path::{is_path_safe, push_percent_encoded};
use crate::config::{Config, HiddenFiles, Redirect};

/// The first path segment that `hidden_files = "deny"` leaves served (RFC 8615).
const WELL_KNOWN: &[u8] = b"/.well-known";

/// Every rule a worker applies, ready to match.
#[derive(Debug, Default)]
pub struct Rules {
    deny_hidden: bool,
    redirects: Vec<CompiledRedirect>,
}

/// A `[[redirects]]` rule as bytes.
#[derive(Debug)]
struct CompiledRedirect {
    from: Box<[u8]>,
    to: Box<[u8]>,
    prefix: bool,
    status: u16,
}

impl CompiledRedirect {
    fn new(rule: &Redirect) -> CompiledRedirect {
        CompiledRedirect {
            from: rule.from.as_bytes().into(),
            to: rule.to.as_bytes().into(),
            prefix: rule.is_prefix(),
            status: rule.status,
        }
    }

    fn matches(&self, path: &[u8]) -> bool {
        if self.prefix {
            path.starts_with(&self.from)
        } else {
            path == &*self.from
        }
    }
}

impl Rules {
    /// No rule at all: every path is looked up as it is (unit tests of the resolver).
    pub const NONE: Rules = Rules { deny_hidden: false, redirects: Vec::new() };

    /// Compiles the rules of `config`. The config file's check already refused bad rules.
    pub fn compile(config: &Config) -> Rules {
        Rules {
            deny_hidden: config.hidden_files == HiddenFiles::Deny,
            redirects: config.redirects.iter().map(CompiledRedirect::new).collect(),
        }
    }

    /// The first redirect rule that matches the normalized path in `scratch`: its status,
    /// with `scratch` replaced by the `Location`, which is `to`, then (for a prefix rule)
    /// the rest of the path re-encoded, then the request's `query` (after a `&` when `to`
    /// has a query of its own). Matched on the decoded, normalized path, so `/old/../x`
    /// is not under `/old/` and `/%6Fld/x` is.
    pub fn redirect(&self, query: &[u8], scratch: &mut Vec<u8>) -> Option<u16> {
        let rule = self.redirects.iter().find(|rule| rule.matches(scratch))?;
        let path_len = scratch.len();
        scratch.extend_from_slice(&rule.to);
        if rule.prefix {
            for index in rule.from.len()..path_len {
                let byte = scratch[index];
                push_percent_encoded(scratch, byte, is_path_safe(byte));
            }
        }
        if let Some(query) = query.strip_prefix(b"?").filter(|q| !q.is_empty()) {
            scratch.push(if rule.to.contains(&b'?') { b'&' } else { b'?' });
            for &byte in query {
                // As sent, except bytes that do not belong in a header value.
                push_percent_encoded(scratch, byte, (0x21..0x7f).contains(&byte));
            }
        }
        scratch.drain(..path_len);
        Some(rule.status)
    }

    /// Whether the normalized `path` must be 404 because a segment is hidden.
    pub fn hides(&self, path: &[u8]) -> bool {
        self.deny_hidden && is_hidden(path)
    }
}

/// A segment of the normalized `path` (no `.` or `..` segments, no empty ones) starts
/// with `.`; `/.well-known` as the first segment does not count, hidden segments beneath
/// it do.
fn is_hidden(path: &[u8]) -> bool {
    let rest = match path.strip_prefix(WELL_KNOWN) {
        Some(rest) if rest.is_empty() || rest.starts_with(b"/") => rest,
        _ => path,
    };
    rest.windows(2).any(|pair| pair == b"/.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_segments_anywhere_but_well_known() {
        for path in ["/.git/config", "/.env", "/a/.htaccess", "/a/.b/c", "/...", "/.well-known/.x"] {
            assert!(is_hidden(path.as_bytes()), "{path}");
        }
        for path in ["/", "/a.b", "/a/b.c/d", "/.well-known/x", "/.well-known/", "/.well-known", "/x/.well-known-ish"] {
            let hidden = is_hidden(path.as_bytes());
            assert_eq!(hidden, path == "/x/.well-known-ish", "{path}");
        }
    }

    #[test]
    fn allow_and_none_hide_nothing() {
        assert!(!Rules::NONE.hides(b"/.env"));
        assert!(Rules { deny_hidden: true, ..Rules::NONE }.hides(b"/.env"));
    }

    fn redirected(rules: &Rules, path: &str, query: &str) -> Option<(u16, String)> {
        let mut scratch = path.as_bytes().to_vec();
        let status = rules.redirect(query.as_bytes(), &mut scratch)?;
        Some((status, String::from_utf8(scratch).expect("a Location is ASCII")))
    }

    #[test]
    fn redirects_by_prefix_or_exact_path_keeping_rest_and_query() {
        let rule = |from: &str, to: &str, status| Redirect { from: from.into(), to: to.into(), status };
        let rules = Rules {
            redirects: [
                rule("/old/", "/new/", 301),
                rule("/page", "https://example.org/p?x=1", 302),
                rule("/old/deeper/", "/never/", 308),
            ]
            .iter()
            .map(CompiledRedirect::new)
            .collect(),
            ..Rules::NONE
        };
        assert_eq!(redirected(&rules, "/old/a/b c", "?q=1"), Some((301, "/new/a/b%20c?q=1".into())));
        assert_eq!(redirected(&rules, "/old/", ""), Some((301, "/new/".into())));
        assert_eq!(redirected(&rules, "/old/deeper/x", "?"), Some((301, "/new/deeper/x".into())), "first rule wins");
        assert_eq!(redirected(&rules, "/page", "?y=2"), Some((302, "https://example.org/p?x=1&y=2".into())));
        assert_eq!(redirected(&rules, "/page/", ""), None, "exact means exact");
        assert_eq!(redirected(&rules, "/old", ""), None, "/old is not under /old/");
        assert_eq!(redirected(&rules, "/pages", ""), None);
        assert_eq!(redirected(&Rules::NONE, "/old/a", ""), None);
    }
}
