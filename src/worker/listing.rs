//! Directory listings (`directory_listing = true`): the entries of a directory that has no
//! index file, as an HTML page or, when the client prefers `application/json`, a JSON
//! array of `{"name", "type", "size", "mtime"}` objects.
//!
//! An entry is listed when a request for it would be served: a hidden name is left out
//! when the site denies hidden files, a symlink only when it resolves beneath the root
//! (opened with the same `openat2` containment as a request) to a file or directory, and
//! anything else (FIFO, socket, device, a broken link) not at all. Sizes and times are
//! those of what would be served (a symlink's target). Entries are sorted by name, at most
//! [`MAX_ENTRIES`] of them (the page says how many were left out).
//!
//! Off the plain path: a listing allocates its body (and the names) per request.

use super::encoding::parse_qvalue;
use super::path::{open_regular_or_directory, Root};
use super::rules::Rules;
use nix::dir::{Dir, Type};
use nix::fcntl::AtFlags;
use nix::sys::stat::{fstatat, SFlag};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

/// Most entries one listing shows: a directory of millions must not become a body of
/// hundreds of megabytes.
pub const MAX_ENTRIES: usize = 10_000;

/// The representation a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
}

impl Format {
    pub fn content_type(self) -> &'static [u8] {
        match self {
            Format::Html => b"text/html; charset=utf-8",
            Format::Json => b"application/json",
        }
    }

    /// JSON when the `Accept` lines weight `application/json` above `text/html` (each by
    /// its most specific matching range: `type/sub`, then `type/*`, then `*/*`); HTML
    /// otherwise, also without `Accept` or when neither is acceptable (a listing is
    /// better than a 406 nobody reads).
    pub fn preferred<'a>(accept: impl Iterator<Item = &'a [u8]>) -> Format {
        let mut html = Preference::default();
        let mut json = Preference::default();
        for element in accept.flat_map(|line| line.split(|&b| b == b',')) {
            let Some((media_type, subtype, weight)) = parse_media_range(element) else { continue };
            html.consider(media_type, subtype, weight, b"text", b"html");
            json.consider(media_type, subtype, weight, b"application", b"json");
        }
        if json.weight() > html.weight() {
            Format::Json
        } else {
            Format::Html
        }
    }
}

/// The weight of the most specific range that matched one type so far.
#[derive(Default)]
struct Preference {
    /// 3 `type/sub`, 2 `type/*`, 1 `*/*`, 0 none yet.
    specificity: u8,
    weight: u16,
}

impl Preference {
    fn consider(&mut self, media_type: &[u8], subtype: &[u8], weight: u16, want_type: &[u8], want_sub: &[u8]) {
        let specificity = match (media_type, subtype) {
            (b"*", b"*") => 1,
            (t, b"*") if t.eq_ignore_ascii_case(want_type) => 2,
            (t, s) if t.eq_ignore_ascii_case(want_type) && s.eq_ignore_ascii_case(want_sub) => 3,
            _ => return,
        };
        if specificity > self.specificity || (specificity == self.specificity && weight > self.weight) {
            *self = Preference { specificity, weight };
        }
    }

    fn weight(&self) -> u16 {
        if self.specificity == 0 {
            0
        } else {
            self.weight
        }
    }
}

/// `type/subtype *( ";" param )` with its `q` (1 when absent); `None` when malformed.
fn parse_media_range(element: &[u8]) -> Option<(&[u8], &[u8], u16)> {
    let mut parts = element.split(|&b| b == b';');
    let range = parts.next()?.trim_ascii();
    let slash = range.iter().position(|&b| b == b'/')?;
    let (media_type, subtype) = (&range[..slash], &range[slash + 1..]);
    if media_type.is_empty() || subtype.is_empty() {
        return None;
    }
    let mut weight = 1000;
    for param in parts {
        let param = param.trim_ascii();
        let equals = param.iter().position(|&b| b == b'=')?;
        if param[..equals].trim_ascii().eq_ignore_ascii_case(b"q") {
            weight = parse_qvalue(param[equals + 1..].trim_ascii())?;
        }
    }
    Some((media_type, subtype, weight))
}

/// One listed entry.
struct Entry {
    name: Vec<u8>,
    is_dir: bool,
    size: u64,
    mtime: i64,
}

/// The body listing `dir`, the directory at the normalized `path` (ending in `/`) beneath
/// `root`, in `format`.
pub fn render(dir: File, root: &Root, rules: &Rules, path: &[u8], format: Format) -> Vec<u8> {
    let (entries, left_out) = read_entries(dir, root, rules, path);
    match format {
        Format::Html => html(path, &entries, left_out),
        Format::Json => json(&entries),
    }
}

fn read_entries(dir: File, root: &Root, rules: &Rules, path: &[u8]) -> (Vec<Entry>, usize) {
    let stat_fd = match dir.try_clone() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "directory listing: cannot duplicate the directory's fd");
            return (Vec::new(), 0);
        }
    };
    let mut dir = match Dir::from_fd(dir.into()) {
        Ok(dir) => dir,
        Err(e) => {
            tracing::warn!(error = %e, "directory listing: cannot read the directory");
            return (Vec::new(), 0);
        }
    };
    let mut entries = Vec::new();
    let mut left_out = 0;
    let mut full_path = Vec::with_capacity(path.len() + 256);
    for entry in dir.iter().flatten() {
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        full_path.clear();
        full_path.extend_from_slice(path);
        full_path.extend_from_slice(name);
        if rules.hides(&full_path) {
            continue;
        }
        let Some((is_dir, size, mtime)) = servable(&stat_fd, root, entry.file_type(), name, &mut full_path) else {
            continue;
        };
        if entries.len() == MAX_ENTRIES {
            left_out += 1;
            continue;
        }
        entries.push(Entry { name: name.to_vec(), is_dir, size, mtime });
    }
    entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    (entries, left_out)
}

/// Whether the entry `name` of the directory `dir` would be served, and as what: a
/// directory or not, its size and mtime. A symlink is followed the way a request is
/// (beneath the root); `full_path` holds its normalized path and is used for that.
fn servable(
    dir: &File,
    root: &Root,
    kind: Option<Type>,
    name: &[u8],
    full_path: &mut Vec<u8>,
) -> Option<(bool, u64, i64)> {
    if kind != Some(Type::Symlink) {
        let stat = fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        return match format {
            SFlag::S_IFDIR => Some((true, 0, stat.st_mtime)),
            SFlag::S_IFREG => Some((false, stat.st_size as u64, stat.st_mtime)),
            // A link whose type the directory did not report: resolve it as a request would.
            SFlag::S_IFLNK => followed(root, full_path),
            _ => None,
        };
    }
    followed(root, full_path)
}

fn followed(root: &Root, full_path: &mut Vec<u8>) -> Option<(bool, u64, i64)> {
    let (_, meta) = open_regular_or_directory(root, full_path).ok()?;
    match () {
        _ if meta.is_dir() => Some((true, 0, meta.mtime())),
        _ if meta.is_file() => Some((false, meta.len(), meta.mtime())),
        _ => None,
    }
}

fn html(path: &[u8], entries: &[Entry], left_out: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(512 + entries.len() * 160);
    out.extend_from_slice(b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of ");
    push_html_escaped(&mut out, path);
    out.extend_from_slice(b"</title></head>\n<body><h1>Index of ");
    push_html_escaped(&mut out, path);
    out.extend_from_slice(b"</h1>\n<table>\n<tr><th>Name</th><th>Size</th><th>Modified</th></tr>\n");
    if path != b"/" {
        out.extend_from_slice(b"<tr><td><a href=\"../\">../</a></td><td></td><td></td></tr>\n");
    }
    for entry in entries {
        out.extend_from_slice(b"<tr><td><a href=\"");
        push_href(&mut out, &entry.name);
        if entry.is_dir {
            out.push(b'/');
        }
        out.extend_from_slice(b"\">");
        push_html_escaped(&mut out, &entry.name);
        if entry.is_dir {
            out.push(b'/');
        }
        out.extend_from_slice(b"</a></td><td>");
        if entry.is_dir {
            out.push(b'-');
        } else {
            let _ = write!(out, "{}", entry.size);
        }
        out.extend_from_slice(b"</td><td>");
        out.extend_from_slice(crate::tls::rfc3339(entry.mtime).as_bytes());
        out.extend_from_slice(b"</td></tr>\n");
    }
    out.extend_from_slice(b"</table>\n");
    if left_out > 0 {
        let _ = writeln!(out, "<p>{left_out} more entries not listed.</p>");
    }
    out.extend_from_slice(b"</body></html>\n");
    out
}

fn json(entries: &[Entry]) -> Vec<u8> {
    let listed: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            serde_json::json!({
                "name": String::from_utf8_lossy(&entry.name),
                "type": if entry.is_dir { "directory" } else { "file" },
                "size": if entry.is_dir { None } else { Some(entry.size) },
                "mtime": crate::tls::rfc3339(entry.mtime),
            })
        })
        .collect();
    let mut out = serde_json::to_vec(&listed).expect("JSON values serialize");
    out.push(b'\n');
    out
}

/// Text for HTML content and attribute values. A name that is not UTF-8 is shown with
/// replacement characters; its link (percent-encoded bytes) still names it exactly.
fn push_html_escaped(out: &mut Vec<u8>, text: &[u8]) {
    for c in String::from_utf8_lossy(text).chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\'' => out.extend_from_slice(b"&#39;"),
            c => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// A relative link to `name`: every byte but RFC 3986 unreserved ones percent-encoded, so
/// a `:` cannot make it a scheme, nor `?`, `#`, `&` or a quote end the path or attribute.
fn push_href(out: &mut Vec<u8>, name: &[u8]) {
    for &byte in name {
        let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
        super::path::push_percent_encoded(out, byte, unreserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preferred(accept: &str) -> Format {
        Format::preferred(std::iter::once(accept.as_bytes()))
    }

    #[test]
    fn json_only_when_preferred_over_html() {
        assert_eq!(Format::preferred(std::iter::empty()), Format::Html);
        for accept in ["application/json", "application/json, text/html;q=0.9", "application/*", "text/html;q=0, */*"] {
            assert_eq!(preferred(accept), Format::Json, "{accept}");
        }
        for accept in [
            "text/html",
            "*/*",
            "application/json, text/html",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "image/png",
            "application/json;q=0",
            "application/json;q=x",
            "garbage",
        ] {
            assert_eq!(preferred(accept), Format::Html, "{accept}");
        }
        let lines = [&b"text/html;q=0.5"[..], b"application/json"];
        assert_eq!(Format::preferred(lines.into_iter()), Format::Json, "lines taken together");
    }

    #[test]
    fn names_are_escaped_and_links_encoded() {
        let entry = |name: &[u8], is_dir| Entry { name: name.to_vec(), is_dir, size: 5, mtime: 0 };
        let entries = [entry(b"a<b>&\"c'.txt", false), entry(b"x:y ?#", true), entry(b"\xff", false)];
        let page = String::from_utf8(html(b"/d&/", &entries, 2)).expect("UTF-8");
        assert!(page.contains("<title>Index of /d&amp;/</title>"), "{page}");
        assert!(page.contains("<a href=\"a%3Cb%3E%26%22c%27.txt\">a&lt;b&gt;&amp;&quot;c&#39;.txt</a>"), "{page}");
        assert!(page.contains("<a href=\"x%3Ay%20%3F%23/\">x:y ?#/</a></td><td>-</td>"), "{page}");
        assert!(page.contains("<a href=\"%FF\">\u{fffd}</a></td><td>5</td><td>1970-01-01T00:00:00Z</td>"), "{page}");
        assert!(page.contains("<a href=\"../\">"), "{page}");
        assert!(page.contains("2 more entries not listed"), "{page}");
        assert!(!String::from_utf8(html(b"/", &[], 0)).expect("UTF-8").contains("../"), "no parent at the root");
        let listed: serde_json::Value = serde_json::from_slice(&json(&entries)).expect("JSON");
        assert_eq!(listed[0]["name"], "a<b>&\"c'.txt");
        assert_eq!((listed[0]["type"].as_str(), listed[0]["size"].as_u64()), (Some("file"), Some(5)));
        assert_eq!((listed[1]["type"].as_str(), listed[1]["size"].is_null()), (Some("directory"), true));
        assert_eq!(listed[2]["mtime"], "1970-01-01T00:00:00Z");
    }
}
