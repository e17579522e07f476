//! The site rules of SPEC section 7, compiled once per worker from the `Config` it was
//! started with (one set per site): hidden files, redirects, header rules, the fallback,
//! error pages, directory listings. Each request consults them on its
//! decoded, normalized path (see [`super::path`]) before any file is opened.
//!
//! With no rule configured a lookup is a length check on an empty slice: the plain path
//! allocates nothing and does no more work than before.

use super::path::{content_type_for, is_path_safe, push_percent_encoded};
use crate::config::{HeaderRule, HiddenFiles, Redirect, SiteRules, MAX_HEADER_RULES};
use std::ffi::{CStr, CString};

/// The first path segment that `hidden_files = "deny"` leaves served (RFC 8615).
const WELL_KNOWN: &[u8] = b"/.well-known";

/// Every rule a worker applies, ready to match.
#[derive(Debug, Default)]
pub struct Rules {
    deny_hidden: bool,
    redirects: Vec<CompiledRedirect>,
    headers: Vec<CompiledHeaders>,
    /// The target served when a path matches no file.
    fallback: Option<Box<[u8]>>,
    /// `error_pages`, a handful at most: a scan beats a map.
    error_pages: Vec<ErrorPage>,
    /// A directory without an index file is listed.
    list_directories: bool,
}

/// One `error_pages` entry, ready to open.
#[derive(Debug)]
pub struct ErrorPage {
    status: u16,
    /// The file's path relative to the root, NUL-terminated: opened without a copy.
    relative: CString,
    /// `Content-Type` from the file's extension.
    pub content_type: &'static str,
}

impl ErrorPage {
    /// `None` for an entry the config check refused (a key that is no status, a NUL).
    fn new(status: &str, path: &str) -> Option<ErrorPage> {
        let status = status.parse().ok()?;
        let relative = CString::new(path.trim_start_matches('/')).ok()?;
        Some(ErrorPage { status, relative, content_type: content_type_for(path.as_bytes()) })
    }

    pub fn relative(&self) -> &CStr {
        &self.relative
    }
}

/// Which `[[headers]]` rules matched a request's path: one bit per rule, so recording
/// them costs no allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Matched([u64; MAX_HEADER_RULES / 64]);

impl Matched {
    pub const NONE: Matched = Matched([0; MAX_HEADER_RULES / 64]);

    fn insert(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    fn contains(&self, index: usize) -> bool {
        self.0[index / 64] & (1 << (index % 64)) != 0
    }
}

/// A `[[headers]]` rule: its glob, split into segments, and its header lines, formatted.
#[derive(Debug)]
struct CompiledHeaders {
    glob: Vec<Segment>,
    /// `Name: value\r\n` for each header the rule sets.
    lines: Box<[u8]>,
}

/// One `/`-separated piece of a glob.
#[derive(Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments, none included.
    Any,
    /// A segment in which `*` is any run of bytes and `?` any one byte.
    Pattern(Box<[u8]>),
}

impl CompiledHeaders {
    fn new(rule: &HeaderRule) -> CompiledHeaders {
        let pattern = rule.pattern.strip_prefix('/').unwrap_or(&rule.pattern);
        let glob = pattern
            .split('/')
            .map(|segment| if segment == "**" { Segment::Any } else { Segment::Pattern(segment.as_bytes().into()) })
            .collect();
        let mut lines = Vec::new();
        for (name, value) in &rule.set {
            lines.extend_from_slice(name.as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        CompiledHeaders { glob, lines: lines.into() }
    }

    /// Whether the glob matches the whole normalized `path` (which starts with `/`).
    fn matches(&self, path: &[u8]) -> bool {
        match_segments(&self.glob, Some(path.strip_prefix(b"/").unwrap_or(path)))
    }
}

/// Splits the first segment off `rest` (`None`: no segment left).
fn next_segment(rest: Option<&[u8]>) -> Option<(&[u8], Option<&[u8]>)> {
    let rest = rest?;
    Some(match rest.iter().position(|&b| b == b'/') {
        Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
        None => (rest, None),
    })
}

fn match_segments(glob: &[Segment], rest: Option<&[u8]>) -> bool {
    match glob.split_first() {
        None => rest.is_none(),
        Some((Segment::Any, after)) => {
            match_segments(after, rest)
                || next_segment(rest).is_some_and(|(_, remaining)| match_segments(glob, remaining))
        }
        Some((Segment::Pattern(pattern), after)) => next_segment(rest)
            .is_some_and(|(segment, remaining)| match_wildcards(pattern, segment) && match_segments(after, remaining)),
    }
}

/// `*` and `?` within one segment, by the usual backtrack to the last `*`.
fn match_wildcards(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&b) if b == b'?' || b == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
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
    pub const NONE: Rules = Rules {
        deny_hidden: false,
        redirects: Vec::new(),
        headers: Vec::new(),
        fallback: None,
        error_pages: Vec::new(),
        list_directories: false,
    };

    /// Compiles one site's rules. The config file's check already refused bad rules.
    pub fn compile(site: &SiteRules<'_>) -> Rules {
        Rules {
            deny_hidden: site.hidden_files == HiddenFiles::Deny,
            redirects: site.redirects.iter().map(CompiledRedirect::new).collect(),
            headers: site.headers.iter().take(MAX_HEADER_RULES).map(CompiledHeaders::new).collect(),
            fallback: site.fallback.map(|path| path.as_bytes().into()),
            error_pages: site.error_pages.iter().filter_map(|(status, path)| ErrorPage::new(status, path)).collect(),
            list_directories: site.directory_listing,
        }
    }

    /// The page configured for `status`, if any.
    pub fn error_page(&self, status: u16) -> Option<&ErrorPage> {
        self.error_pages.iter().find(|page| page.status == status)
    }

    /// Whether a directory without an index file is listed rather than `404`.
    pub fn lists_directories(&self) -> bool {
        self.list_directories
    }

    /// The target to serve instead of a `404` for a path that matches no file.
    pub fn fallback(&self) -> Option<&[u8]> {
        self.fallback.as_deref()
    }

    /// The `[[headers]]` rules whose glob matches the normalized `path`.
    pub fn headers_for(&self, path: &[u8]) -> Matched {
        let mut matched = Matched::NONE;
        for (index, rule) in self.headers.iter().enumerate() {
            if rule.matches(path) {
                matched.insert(index);
            }
        }
        matched
    }

    /// Appends the header lines of the `matched` rules, in the order of the rules.
    pub fn push_headers(&self, matched: Matched, head: &mut Vec<u8>) {
        if matched == Matched::NONE {
            return;
        }
        for (index, rule) in self.headers.iter().enumerate() {
            if matched.contains(index) {
                head.extend_from_slice(&rule.lines);
            }
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

    fn glob(pattern: &str) -> CompiledHeaders {
        let rule = HeaderRule { pattern: pattern.into(), set: [("X".to_string(), "1".to_string())].into() };
        CompiledHeaders::new(&rule)
    }

    #[test]
    fn globs_match_within_and_across_segments() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("/assets/**", &["/assets/a.css", "/assets/a/b/c.js", "/assets/", "/assets"], &["/asset/a", "/x/assets/a"]),
            ("/*.html", &["/index.html", "/.html"], &["/a/index.html", "/index.htm"]),
            ("/**/*.css", &["/a.css", "/x/y/a.css"], &["/a.cssx", "/x/a.js"]),
            ("/a/*/c", &["/a/b/c", "/a//c"], &["/a/b/d/c", "/a/c"]),
            ("/f?o*", &["/foo", "/fxobar"], &["/fo", "/f/o"]),
            ("/**", &["/", "/a/b"], &[]),
            ("/", &["/"], &["/a"]),
            ("/docs/", &["/docs/"], &["/docs", "/docs/a"]),
        ];
        for (pattern, yes, no) in cases {
            let compiled = glob(pattern);
            for path in *yes {
                assert!(compiled.matches(path.as_bytes()), "{pattern} matches {path}");
            }
            for path in *no {
                assert!(!compiled.matches(path.as_bytes()), "{pattern} does not match {path}");
            }
        }
    }

    #[test]
    fn every_matching_rule_applies_in_order() {
        let rule = |pattern: &str, name: &str, value: &str| HeaderRule {
            pattern: pattern.into(),
            set: [(name.to_string(), value.to_string())].into(),
        };
        let rules = Rules {
            headers: [rule("/**", "X-All", "1"), rule("/a/**", "Cache-Control", "no-store"), rule("/b", "X-B", "2")]
                .iter()
                .map(CompiledHeaders::new)
                .collect(),
            ..Rules::NONE
        };
        let mut head = Vec::new();
        rules.push_headers(rules.headers_for(b"/a/x"), &mut head);
        assert_eq!(head, b"X-All: 1\r\nCache-Control: no-store\r\n");
        assert_eq!(Rules::NONE.headers_for(b"/a/x"), Matched::NONE);
        let mut matched = Matched::NONE;
        matched.insert(255);
        assert!(matched.contains(255) && !matched.contains(0));
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
