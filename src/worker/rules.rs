//! The site rules of SPEC section 7, compiled once per worker from the `Config` it was
//! started with: hidden files, redirects, header rules. Each request consults them on its
//! decoded, normalized path (see [`super::path`]) before any file is opened.
//!
//! With no rule configured a lookup is a length check on an empty slice: the plain path
//! allocates nothing and does no more work than before.

use crate::config::{Config, HiddenFiles};

/// The first path segment that `hidden_files = "deny"` leaves served (RFC 8615).
const WELL_KNOWN: &[u8] = b"/.well-known";

/// Every rule a worker applies, ready to match.
#[derive(Debug, Default)]
pub struct Rules {
    deny_hidden: bool,
}

impl Rules {
    /// No rule at all: every path is looked up as it is (unit tests of the resolver).
    pub const NONE: Rules = Rules { deny_hidden: false };

    /// Compiles the rules of `config`. The config file's check already refused bad rules.
    pub fn compile(config: &Config) -> Rules {
        Rules { deny_hidden: config.hidden_files == HiddenFiles::Deny }
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
        assert!(Rules { deny_hidden: true }.hides(b"/.env"));
    }
}
