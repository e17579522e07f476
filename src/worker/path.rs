//! File resolution: maps a request-target onto a regular file beneath the document root,
//! refusing every way out of it.
//!
//! Steps, in order: cut the query and fragment off the target (absolute-form reduces to
//! its path); percent-decode into the caller's scratch buffer (`%2f` becomes `/` *before*
//! dot segments are resolved, so an encoded slash cannot hide a `..`); normalize dot
//! segments in place, refusing a `..` that would climb above the root (403, never clamped);
//! then apply the redirect rules and refuse a hidden path if the rules say so
//! ([`super::rules`], 404); then open the result relative to the root's directory fd with `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, so the kernel refuses symlinks that lead out
//! of the root (EXDEV → 403). Kernels without `openat2` (ENOSYS) fall back to
//! canonicalizing the path and comparing prefixes.
//!
//! Files are opened `O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC`: `O_NONBLOCK` keeps a
//! FIFO in the root from blocking the worker in `open`, and has no effect on regular files.
//! Anything that is not a regular file or directory (FIFO, socket, device) is 404. A
//! directory without an index file is 404, or [`Resolved::Directory`] when the rules list
//! directories ([`super::listing`] renders it).
//!
//! A regular file once opened stays open in the root's open-file cache
//! ([`super::open_files`]): the next request for the same path, after the same rules,
//! revalidates it with one `fstatat` and opens it again only if it changed.

use std::ffi::{CStr, OsStr};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use super::open_files::OpenFiles;
use super::rules::{Matched, Rules};

/// Name tried inside a directory requested with a trailing slash.
const INDEX_FILE: &[u8] = b"index.html";

/// Type sent when the extension is unknown.
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// How often an `openat2` that raced a rename (EAGAIN) is retried.
const OPENAT2_ATTEMPTS: usize = 3;

/// The document root: an `O_PATH` directory fd every lookup starts from.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
    /// Canonical form of `path`, for the prefix check when `openat2` is missing.
    canonical: PathBuf,
    /// Cleared the first time the kernel answers ENOSYS, so we ask only once.
    openat2_available: AtomicBool,
    /// Regular files recently served from this root, kept open.
    files: OpenFiles,
}

impl Root {
    /// Opens `path` as the document root. The error names the path.
    pub fn open(path: &Path) -> io::Result<Root> {
        let with_path =
            |error: io::Error| io::Error::new(error.kind(), format!("document root {}: {error}", path.display()));
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let dir = nix::fcntl::open(path, flags, Mode::empty()).map_err(|errno| with_path(errno.into()))?;
        let canonical = std::fs::canonicalize(path).map_err(with_path)?;
        Ok(Root {
            dir,
            path: path.to_path_buf(),
            canonical,
            openat2_available: AtomicBool::new(true),
            files: OpenFiles::default(),
        })
    }

    /// The path the root was opened with, for logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the files this root keeps open: entries unused since the last sweep, or
    /// all of them (`all`, when the worker runs short of descriptors). True if any were
    /// open before.
    pub fn sweep_open_files(&self, all: bool) -> bool {
        if all {
            return self.files.clear();
        }
        self.files.sweep();
        false
    }

    #[cfg(test)]
    fn use_fallback_only(&self) {
        self.openat2_available.store(false, Ordering::Relaxed);
    }
}

/// What a request-target resolves to.
#[derive(Debug)]
pub enum Resolved {
    /// A regular file, open for reading. `scratch` then holds its normalized path
    /// (index file included) and a NUL, where `encoding` finds its sidecars.
    File {
        /// The open file, shared with the root's open-file cache.
        file: Rc<File>,
        /// Its metadata, from `fstat` on the open fd (so it describes what will be sent).
        meta: Metadata,
        /// `Content-Type` from the file name's extension.
        content_type: &'static str,
    },
    /// A directory named with its trailing slash that has no index file, when the rules
    /// list directories. `scratch` then holds its normalized path (ending in `/`).
    Directory {
        /// The directory, open for reading its entries.
        dir: File,
    },
    /// A directory named without its trailing slash. `scratch` then holds the complete
    /// `Location` value: the normalized path re-encoded, `/`, and the query if any.
    RedirectToSlash,
    /// A `[[redirects]]` rule matched, with this status; `scratch` holds the `Location`.
    Redirect(u16),
    /// No such file, a directory without `index.html`, or not a regular file (404).
    NotFound,
    /// A hidden path that the rules deny (404, and no fallback).
    Hidden,
    /// Outside the root, or not readable (403).
    Forbidden,
    /// Not a path we can serve: bad target form, bad percent escape, encoded NUL (400).
    BadRequest,
    /// The server could not open the file for its own reasons, e.g. out of fds (500).
    ServerError,
}

/// Why a path cannot be served; the error half of resolution's inner steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// See [`Resolved::NotFound`].
    NotFound,
    /// See [`Resolved::Forbidden`].
    Forbidden,
    /// See [`Resolved::BadRequest`].
    BadRequest,
    /// See [`Resolved::ServerError`].
    ServerError,
}

impl From<Refusal> for Resolved {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound => Resolved::NotFound,
            Refusal::Forbidden => Resolved::Forbidden,
            Refusal::BadRequest => Resolved::BadRequest,
            Refusal::ServerError => Resolved::ServerError,
        }
    }
}

/// Resolves `target` against `root` under `rules`: a redirect rule answers first, a hidden
/// path is 404 before anything is opened, and `matched` is set to the header rules whose
/// glob matches the decoded path (left as it is when there is no such path, e.g. `400`).
///
/// `scratch` is the caller's reusable buffer (cleared here); once it has grown to the
/// longest path seen, resolution allocates nothing.
pub fn resolve(root: &Root, rules: &Rules, target: &[u8], scratch: &mut Vec<u8>, matched: &mut Matched) -> Resolved {
    let Some(parts) = split_target(target) else {
        return Resolved::BadRequest;
    };
    scratch.clear();
    if let Err(refusal) = percent_decode_into(parts.path, scratch) {
        return refusal.into();
    }
    if let Err(refusal) = normalize_dot_segments(scratch) {
        return refusal.into();
    }
    *matched = rules.headers_for(scratch);
    if let Some(status) = rules.redirect(parts.query, scratch) {
        return Resolved::Redirect(status);
    }
    if rules.hides(scratch) {
        return Resolved::Hidden;
    }
    open_normalized(root, parts.query, rules.lists_directories(), scratch)
}

/// A request-target split into the path to decode and the query (with its `?`, or empty).
struct TargetParts<'a> {
    path: &'a [u8],
    query: &'a [u8],
}

/// Cuts off the fragment and query; reduces absolute-form to its path. `None` for
/// asterisk-form, authority-form and anything else that is not a path.
fn split_target(target: &[u8]) -> Option<TargetParts<'_>> {
    let target = &target[..find_byte(target, b'#').unwrap_or(target.len())];
    let path_and_query = if target.first() == Some(&b'/') { target } else { strip_scheme_and_authority(target)? };
    let query_start = find_byte(path_and_query, b'?').unwrap_or(path_and_query.len());
    let (path, query) = path_and_query.split_at(query_start);
    // RFC 9112 §3.2.2: an absolute-form target with an empty path means "/".
    let path = if path.is_empty() { &b"/"[..] } else { path };
    Some(TargetParts { path, query })
}

/// `http://host:port/p?q` → `/p?q`; `http://host` → empty. `None` if not http(s).
fn strip_scheme_and_authority(target: &[u8]) -> Option<&[u8]> {
    let after_scheme =
        strip_prefix_ignore_case(target, b"http://").or_else(|| strip_prefix_ignore_case(target, b"https://"))?;
    let authority_len = after_scheme.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(after_scheme.len());
    Some(&after_scheme[authority_len..])
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = bytes.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &bytes[prefix.len()..])
}

fn find_byte(bytes: &[u8], wanted: u8) -> Option<usize> {
    bytes.iter().position(|&b| b == wanted)
}

/// Appends the percent-decoded `path` to `out`. A malformed escape or a NUL (encoded or
/// raw: it would cut the C string short) is `BadRequest`.
pub fn percent_decode_into(path: &[u8], out: &mut Vec<u8>) -> Result<(), Refusal> {
    out.reserve(path.len());
    let mut rest = path;
    while let Some((&byte, after)) = rest.split_first() {
        let (decoded, after) = if byte == b'%' {
            let high = after.first().copied().and_then(hex_value);
            let low = after.get(1).copied().and_then(hex_value);
            let (Some(high), Some(low)) = (high, low) else {
                return Err(Refusal::BadRequest);
            };
            (high << 4 | low, &after[2..])
        } else {
            (byte, after)
        };
        if decoded == 0 {
            return Err(Refusal::BadRequest);
        }
        out.push(decoded);
        rest = after;
    }
    Ok(())
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Resolves `.` and `..` segments of an absolute decoded path in place and merges runs
/// of slashes (as nginx's `merge_slashes` does).
///
/// The result starts with `/`, has no empty, `.` or `..` segments, and ends with `/` when
/// the input named a directory (`/a/`, `/a/.`, `/a/b/..`). A `..` with nothing left to
/// climb out of is `Forbidden`: such a request is an attack, not a typo to clamp.
///
/// Works in place: the output is never longer than the input consumed so far, so the write
/// cursor never passes the read cursor.
pub fn normalize_dot_segments(path: &mut Vec<u8>) -> Result<(), Refusal> {
    if path.first() != Some(&b'/') {
        return Err(Refusal::BadRequest);
    }
    let len = path.len();
    let mut read = 0;
    let mut write = 0; // path[..write] is the output so far: "" or "/seg/seg".
    let mut trailing_slash = false;
    while read < len {
        while read < len && path[read] == b'/' {
            read += 1;
        }
        let start = read;
        while read < len && path[read] != b'/' {
            read += 1;
        }
        let is_last = read == len;
        match &path[start..read] {
            b"" | b"." => trailing_slash = is_last,
            b".." => {
                if write == 0 {
                    return Err(Refusal::Forbidden);
                }
                write = path[..write].iter().rposition(|&b| b == b'/').unwrap_or(0);
                trailing_slash = is_last;
            }
            _ => {
                path[write] = b'/';
                path.copy_within(start..read, write + 1);
                write += 1 + (read - start);
                trailing_slash = false;
            }
        }
    }
    path.truncate(write);
    if trailing_slash || write == 0 {
        path.push(b'/');
    }
    Ok(())
}

/// Opens the normalized path held in `scratch` and decides what it resolves to.
/// `list`: a directory without an index file is [`Resolved::Directory`], not `NotFound`.
fn open_normalized(root: &Root, query: &[u8], list: bool, scratch: &mut Vec<u8>) -> Resolved {
    let path_len = scratch.len();
    let names_directory = scratch.ends_with(b"/");
    if let Some((file, meta)) = cached_file(root, names_directory, scratch) {
        let name_end = scratch.len() - 1;
        return Resolved::File { file, meta, content_type: content_type_for(&scratch[..name_end]) };
    }
    scratch.truncate(path_len);
    let (file, meta) = match open_regular_or_directory(root, scratch) {
        Ok(opened) => opened,
        Err(refusal) => return refusal.into(),
    };
    if meta.is_file() {
        let content_type = content_type_for(&scratch[..path_len]);
        let file = root.files.insert(&scratch[..path_len], file, &meta);
        return Resolved::File { file, meta, content_type };
    }
    if !meta.is_dir() {
        return Resolved::NotFound;
    }
    if !names_directory {
        scratch.truncate(path_len);
        write_slash_location(scratch, query);
        return Resolved::RedirectToSlash;
    }
    scratch.truncate(path_len);
    scratch.extend_from_slice(INDEX_FILE);
    match open_regular_or_directory(root, scratch) {
        Ok((file, meta)) if meta.is_file() => {
            let file = root.files.insert(&scratch[..scratch.len() - 1], file, &meta);
            Resolved::File { file, meta, content_type: content_type_for(INDEX_FILE) }
        }
        Ok(_) | Err(Refusal::NotFound) if list => {
            scratch.truncate(path_len);
            Resolved::Directory { dir: file }
        }
        Ok(_) => Resolved::NotFound,
        Err(refusal) => refusal.into(),
    }
}

/// The root's cached file for the normalized path in `scratch` (its index file when it
/// names a directory), revalidated (see [`super::open_files`]). On a hit `scratch` holds
/// the file's path and a NUL, as after [`open_regular_or_directory`]; on a miss, anything.
fn cached_file(root: &Root, names_directory: bool, scratch: &mut Vec<u8>) -> Option<(Rc<File>, Metadata)> {
    if names_directory {
        scratch.extend_from_slice(INDEX_FILE);
    }
    let path_len = scratch.len();
    scratch.push(0);
    // The leading '/' is dropped: the path is relative to the root fd.
    let relative = CStr::from_bytes_with_nul(&scratch[1..]).ok()?;
    root.files.get(root.dir.as_fd(), &scratch[..path_len], relative)
}

/// The regular file at the absolute normalized path in `scratch`, from the root's
/// open-file cache, or opened beneath the root and kept there: how `encoding` opens a
/// file's sidecars, so a hot sidecar costs what its file does (no `openat2`, `statx` and
/// `close` per request). Leaves `scratch` holding the path and a NUL. `None`: no regular
/// file there that may be opened.
pub fn open_cached_regular(root: &Root, scratch: &mut Vec<u8>) -> Option<(Rc<File>, Metadata)> {
    let path_len = scratch.len();
    if let Some(hit) = cached_file(root, false, scratch) {
        return Some(hit);
    }
    scratch.truncate(path_len);
    let (file, meta) = open_regular_or_directory(root, scratch).ok()?;
    if !meta.is_file() {
        return None;
    }
    Some((root.files.insert(&scratch[..path_len], file, &meta), meta))
}

/// Opens the absolute normalized path in `scratch` beneath the root and `fstat`s it.
/// Leaves a NUL terminator (and `.` for the root itself) appended to `scratch`.
pub fn open_regular_or_directory(root: &Root, scratch: &mut Vec<u8>) -> Result<(File, Metadata), Refusal> {
    if scratch.len() == 1 {
        scratch.push(b'.'); // The root itself: openat2 refuses an empty path.
    }
    scratch.push(0);
    // The leading '/' is dropped: the path is relative to the root fd.
    let relative = CStr::from_bytes_with_nul(&scratch[1..]).map_err(|_| Refusal::BadRequest)?;
    let file = open_beneath(root, relative).map_err(refusal_for_errno)?;
    let meta = file.metadata().map_err(|_| Refusal::ServerError)?;
    Ok((file, meta))
}

/// Opens the regular file at `relative` (no leading `/`) beneath the root, for a page the
/// configuration names (an error page): not a request's path, so no rule applies.
pub fn open_file_beneath(root: &Root, relative: &CStr) -> Result<(File, Metadata), Refusal> {
    let file = open_beneath(root, relative).map_err(refusal_for_errno)?;
    let meta = file.metadata().map_err(|_| Refusal::ServerError)?;
    if !meta.is_file() {
        return Err(Refusal::NotFound);
    }
    Ok((file, meta))
}

fn open_beneath(root: &Root, relative: &CStr) -> Result<File, Errno> {
    match open_beneath_once(root, relative) {
        // Out of descriptors while the cache holds some: give them back, try again.
        Err(Errno::EMFILE | Errno::ENFILE) if root.files.clear() => open_beneath_once(root, relative),
        result => result,
    }
}

fn open_beneath_once(root: &Root, relative: &CStr) -> Result<File, Errno> {
    if root.openat2_available.load(Ordering::Relaxed) {
        match open_with_openat2(root, relative) {
            Err(Errno::ENOSYS) => root.openat2_available.store(false, Ordering::Relaxed),
            result => return result,
        }
    }
    open_by_canonical_prefix(root, relative)
}

fn file_open_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC
}

/// The kernel resolves the path and refuses any step out of the root, including through
/// symlinks (EXDEV) and /proc magic links (ELOOP).
fn open_with_openat2(root: &Root, relative: &CStr) -> Result<File, Errno> {
    let how = OpenHow::new()
        .flags(file_open_flags())
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match openat2(&root.dir, relative, how) {
            // EAGAIN: a concurrent rename may have moved a path component; the kernel
            // asks us to retry rather than risk a wrong answer.
            Err(Errno::EAGAIN) if attempts < OPENAT2_ATTEMPTS => continue,
            result => return result.map(File::from),
        }
    }
}

/// Fallback for kernels before 5.6: resolve symlinks in user space and check the result
/// is still under the canonical root. Racy against concurrent renames inside the root,
/// which is why it is only the fallback.
fn open_by_canonical_prefix(root: &Root, relative: &CStr) -> Result<File, Errno> {
    let joined = root.canonical.join(OsStr::from_bytes(relative.to_bytes()));
    let canonical = std::fs::canonicalize(&joined).map_err(errno_of)?;
    if !canonical.starts_with(&root.canonical) {
        return Err(Errno::EXDEV);
    }
    nix::fcntl::open(&canonical, file_open_flags(), Mode::empty()).map(File::from)
}

fn errno_of(error: io::Error) -> Errno {
    error.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

fn refusal_for_errno(errno: Errno) -> Refusal {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG | Errno::ENXIO | Errno::ENODEV => Refusal::NotFound,
        // EXDEV: a path or symlink left the root; ELOOP: a magic link or a symlink loop.
        Errno::EXDEV | Errno::ELOOP | Errno::EACCES | Errno::EPERM => Refusal::Forbidden,
        _ => Refusal::ServerError,
    }
}

/// Replaces the decoded path in `scratch` with the `Location` for its slash form.
///
/// Built from the normalized path, not the raw target, so `//evil.example/dir` cannot
/// become a protocol-relative redirect off-site (slashes were merged). The encoded form
/// is appended after the decoded one and then moved to the front: no second buffer.
fn write_slash_location(scratch: &mut Vec<u8>, query: &[u8]) {
    let decoded_len = scratch.len();
    for index in 0..decoded_len {
        let byte = scratch[index];
        push_percent_encoded(scratch, byte, is_path_safe(byte));
    }
    scratch.push(b'/');
    for &byte in query {
        // The query stays as sent, except bytes that do not belong in a header value.
        push_percent_encoded(scratch, byte, (0x21..0x7f).contains(&byte));
    }
    scratch.drain(..decoded_len);
}

/// RFC 3986 `pchar` plus `/`: everything that may stand unencoded in a path.
pub(super) fn is_path_safe(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte)
}

pub(super) fn push_percent_encoded(out: &mut Vec<u8>, byte: u8, keep: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if keep {
        out.push(byte);
    } else {
        out.extend_from_slice(&[b'%', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
    }
}

/// `Content-Type` for a file name, from its extension; all static strings.
pub(super) fn content_type_for(path: &[u8]) -> &'static str {
    let name = &path[path.iter().rposition(|&b| b == b'/').map_or(0, |slash| slash + 1)..];
    let Some(dot) = name.iter().rposition(|&b| b == b'.') else {
        return DEFAULT_CONTENT_TYPE;
    };
    let Ok(extension) = std::str::from_utf8(&name[dot + 1..]) else {
        return DEFAULT_CONTENT_TYPE;
    };
    match COMMON_TYPES.iter().find(|(ext, _)| ext.eq_ignore_ascii_case(extension)) {
        Some((_, common)) => common,
        None => guessed_type(extension),
    }
}

/// `mime_guess`'s type for `extension`, with `with_charset` applied.
fn guessed_type(extension: &str) -> &'static str {
    mime_guess::from_ext(extension).first_raw().map_or(DEFAULT_CONTENT_TYPE, with_charset)
}

/// What [`guessed_type`] answers for the extensions most requests have,
/// without its case-folding binary search of its whole table (a unit test keeps them
/// equal).
const COMMON_TYPES: [(&str, &str); 12] = [
    ("html", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("svg", "image/svg+xml"),
    ("webp", "image/webp"),
    ("woff2", "font/woff2"),
    ("json", "application/json"),
    ("ico", "image/x-icon"),
    ("txt", "text/plain; charset=utf-8"),
    ("bin", "application/octet-stream"),
];

/// Adds `charset=utf-8` to the textual types browsers would otherwise sniff or decode as
/// windows-1252. `application/json` gets none: RFC 8259 defines no charset parameter.
fn with_charset(mime: &'static str) -> &'static str {
    match mime {
        "text/html" => "text/html; charset=utf-8",
        "text/plain" => "text/plain; charset=utf-8",
        "text/css" => "text/css; charset=utf-8",
        "text/csv" => "text/csv; charset=utf-8",
        "text/markdown" => "text/markdown; charset=utf-8",
        "text/xml" => "text/xml; charset=utf-8",
        // RFC 9239 made text/javascript the one type for JavaScript.
        "text/javascript" | "application/javascript" | "application/x-javascript" => "text/javascript; charset=utf-8",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::os::unix::fs::{symlink, MetadataExt};
    use tempfile::TempDir;

    /// A tempdir `base/` holding `secret.txt` beside the document root `base/root/`.
    struct Fixture {
        _base: TempDir,
        root: Root,
        secret: (u64, u64),
    }

    fn fixture() -> Fixture {
        let base = tempfile::tempdir().expect("create tempdir");
        let dir = base.path().join("root");
        let write = |relative: &str, content: &str| {
            std::fs::write(dir.join(relative), content).expect("write fixture file");
        };
        std::fs::create_dir_all(dir.join("sub/empty")).expect("create dirs");
        std::fs::create_dir_all(dir.join("with index")).expect("create dirs");
        std::fs::write(base.path().join("secret.txt"), "secret").expect("write secret");
        write("a.txt", "0123456789");
        write("page.html", "<p>hi</p>");
        write("app.js", "1");
        write("data.json", "{}");
        write("blob.unknownext", "?");
        write("sub/b.css", "b{}");
        write("with index/index.html", "<h1>index</h1>");
        symlink("a.txt", dir.join("link_in")).expect("symlink");
        symlink("..", dir.join("sub/empty/up")).expect("symlink");
        symlink("../secret.txt", dir.join("link_out")).expect("symlink");
        symlink(base.path().join("secret.txt"), dir.join("link_abs")).expect("symlink");
        symlink("..", dir.join("link_parent")).expect("symlink");
        symlink("/proc/self/root/etc", dir.join("link_proc")).expect("symlink");
        let root = Root::open(&dir).expect("open root");
        let secret_meta = std::fs::metadata(base.path().join("secret.txt")).expect("stat");
        Fixture { _base: base, root, secret: (secret_meta.dev(), secret_meta.ino()) }
    }

    fn resolve_str(fixture: &Fixture, target: &str) -> (Resolved, Vec<u8>) {
        crate::worker::open_files::next_pass(); // each request its own event-loop pass
        let mut scratch = Vec::new();
        let resolved = resolve(&fixture.root, &Rules::NONE, target.as_bytes(), &mut scratch, &mut Matched::default());
        (resolved, scratch)
    }

    fn served_content(fixture: &Fixture, target: &str) -> String {
        match resolve_str(fixture, target).0 {
            Resolved::File { file, meta, .. } => {
                // By offset, as the connection reads: the fd is shared with the cache.
                let mut content = vec![0; meta.len() as usize];
                std::os::unix::fs::FileExt::read_exact_at(&*file, &mut content, 0).expect("read served file");
                String::from_utf8(content).expect("utf-8 fixture")
            }
            other => panic!("expected a file for {target}, got {other:?}"),
        }
    }

    fn served_file(fixture: &Fixture, target: &str) -> Rc<File> {
        match resolve_str(fixture, target).0 {
            Resolved::File { file, .. } => file,
            other => panic!("expected a file for {target}, got {other:?}"),
        }
    }

    #[test]
    fn served_files_stay_open_until_the_path_names_another_or_a_changed_file() {
        let fixture = fixture();
        let first = served_file(&fixture, "/a.txt");
        assert!(Rc::ptr_eq(&first, &served_file(&fixture, "/sub/../a.txt")), "a hit shares the fd");
        assert!(Rc::ptr_eq(&served_file(&fixture, "/with%20index/"), &served_file(&fixture, "/with index/index.html")));
        // Replaced by rename: another inode, so a fresh open.
        let dir = fixture.root.path().to_path_buf();
        std::fs::write(dir.join("staged"), "9876543210").expect("write");
        std::fs::rename(dir.join("staged"), dir.join("a.txt")).expect("rename");
        let second = served_file(&fixture, "/a.txt");
        assert!(!Rc::ptr_eq(&first, &second));
        assert_eq!(served_content(&fixture, "/a.txt"), "9876543210");
        // A symlink swapped to lead out of the root: a miss, then refused by openat2.
        std::fs::remove_file(dir.join("a.txt")).expect("remove");
        symlink("../secret.txt", dir.join("a.txt")).expect("symlink out");
        assert_resolves(&fixture, "/a.txt", |r| matches!(r, Resolved::Forbidden));
        // Unused between two sweeps: closed.
        let _ = served_file(&fixture, "/page.html");
        assert!(fixture.root.files.len() > 0);
        fixture.root.sweep_open_files(false);
        fixture.root.sweep_open_files(false);
        assert_eq!(fixture.root.files.len(), 0);
    }

    #[test]
    fn the_open_file_cache_keeps_at_most_its_capacity() {
        let fixture = fixture();
        let dir = fixture.root.path().to_path_buf();
        for i in 0..super::super::open_files::CAPACITY + 10 {
            std::fs::write(dir.join(format!("f{i}")), "x").expect("write");
            let _ = served_file(&fixture, &format!("/f{i}"));
        }
        assert_eq!(fixture.root.files.len(), super::super::open_files::CAPACITY);
        assert!(fixture.root.sweep_open_files(true));
        assert_eq!(fixture.root.files.len(), 0);
    }

    fn assert_resolves(fixture: &Fixture, target: &str, expected: fn(&Resolved) -> bool) {
        let (resolved, _) = resolve_str(fixture, target);
        assert!(expected(&resolved), "{target} resolved to {resolved:?}");
    }

    fn is_forbidden(resolved: &Resolved) -> bool {
        matches!(resolved, Resolved::Forbidden)
    }
    fn is_not_found(resolved: &Resolved) -> bool {
        matches!(resolved, Resolved::NotFound)
    }
    fn is_bad_request(resolved: &Resolved) -> bool {
        matches!(resolved, Resolved::BadRequest)
    }

    fn normalized(path: &str) -> Result<String, &'static str> {
        let mut buf = path.as_bytes().to_vec();
        match normalize_dot_segments(&mut buf) {
            Ok(()) => Ok(String::from_utf8(buf).expect("utf-8 in, utf-8 out")),
            Err(Refusal::Forbidden) => Err("forbidden"),
            Err(_) => Err("bad"),
        }
    }

    #[test]
    fn normalizes_dot_segments_and_slashes() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/", "/a/"),
            ("//a///b//", "/a/b/"),
            ("/a/..", "/"),
            ("/...", "/..."),
            ("/..a/b..", "/..a/b.."),
        ];
        for (input, expected) in cases {
            assert_eq!(normalized(input), Ok(expected.to_string()), "{input}");
        }
    }

    #[test]
    fn climbing_above_the_root_is_forbidden_not_clamped() {
        for input in ["/..", "/../x", "/a/../..", "/a/../../x", "//..//x"] {
            assert_eq!(normalized(input), Err("forbidden"), "{input}");
        }
    }

    #[test]
    fn decodes_percent_escapes_and_refuses_bad_ones() {
        let mut out = Vec::new();
        assert!(percent_decode_into(b"/a%20b%2Fc%e2%82%ac", &mut out).is_ok());
        assert_eq!(out, "/a b/c€".as_bytes());
        for bad in [&b"/%"[..], b"/%4", b"/%zz", b"/%00", b"/a\0"] {
            out.clear();
            assert!(matches!(percent_decode_into(bad, &mut out), Err(Refusal::BadRequest)), "{:?}", bad.escape_ascii());
        }
    }

    #[test]
    fn traversal_attempts_are_forbidden() {
        let fixture = fixture();
        for target in [
            "/../x",
            "/%2e%2e/x",
            "/%2E%2E/secret.txt",
            "/a/..%2f..%2fx",
            "/sub/..%2f..%2fsecret.txt",
            "/..%2fsecret.txt",
            "http://host/../secret.txt",
        ] {
            assert_resolves(&fixture, target, is_forbidden);
        }
    }

    #[test]
    fn symlinks_out_of_the_root_are_forbidden() {
        let fixture = fixture();
        for target in ["/link_out", "/link_abs", "/link_parent/secret.txt", "/link_proc/passwd"] {
            assert_resolves(&fixture, target, is_forbidden);
        }
    }

    #[test]
    fn symlinks_inside_the_root_are_followed() {
        let fixture = fixture();
        assert_eq!(served_content(&fixture, "/link_in"), "0123456789");
        assert_eq!(served_content(&fixture, "/sub/empty/up/b.css"), "b{}");
    }

    #[test]
    fn fallback_without_openat2_also_refuses_escapes() {
        let fixture = fixture();
        fixture.root.use_fallback_only();
        for target in ["/link_out", "/link_abs", "/link_parent/secret.txt"] {
            assert_resolves(&fixture, target, is_forbidden);
        }
        assert_eq!(served_content(&fixture, "/link_in"), "0123456789");
        assert_eq!(served_content(&fixture, "/with%20index/"), "<h1>index</h1>");
        assert_resolves(&fixture, "/missing", is_not_found);
        assert_resolves(&fixture, "/a.txt/", is_not_found);
    }

    #[test]
    fn serves_files_with_query_and_fragment_stripped() {
        let fixture = fixture();
        assert_eq!(served_content(&fixture, "/a.txt?v=1#top"), "0123456789");
        assert_eq!(served_content(&fixture, "/./sub/../a.txt"), "0123456789");
        assert_eq!(served_content(&fixture, "/%61.txt"), "0123456789");
    }

    #[test]
    fn absolute_form_reduces_to_its_path() {
        let fixture = fixture();
        assert_eq!(served_content(&fixture, "http://example.com/a.txt"), "0123456789");
        assert_eq!(served_content(&fixture, "HTTPS://example.com:8443/a.txt?q"), "0123456789");
        let (resolved, location) = resolve_str(&fixture, "http://example.com");
        assert!(matches!(resolved, Resolved::NotFound), "{resolved:?} {location:?}");
    }

    #[test]
    fn non_path_targets_are_bad_requests() {
        let fixture = fixture();
        for target in ["*", "example.com:443", "ftp://host/a.txt", "a.txt", ""] {
            assert_resolves(&fixture, target, is_bad_request);
        }
        assert_resolves(&fixture, "/a%00.txt", is_bad_request);
        assert_resolves(&fixture, "/a%zz", is_bad_request);
    }

    #[test]
    fn missing_things_are_not_found() {
        let fixture = fixture();
        for target in ["/missing", "/a.txt/", "/a.txt/x", "/sub/", "/sub/missing.css"] {
            assert_resolves(&fixture, target, is_not_found);
        }
        let long = format!("/{}", "x".repeat(300));
        assert_resolves(&fixture, &long, is_not_found);
    }

    #[test]
    fn fifo_is_not_found_and_does_not_block() {
        let fixture = fixture();
        let fifo = fixture.root.path().join("pipe");
        nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
        assert_resolves(&fixture, "/pipe", is_not_found);
    }

    #[test]
    fn directory_without_slash_redirects_keeping_the_query() {
        let fixture = fixture();
        let (resolved, location) = resolve_str(&fixture, "/sub?x=1");
        assert!(matches!(resolved, Resolved::RedirectToSlash));
        assert_eq!(location, b"/sub/?x=1");
        let (resolved, location) = resolve_str(&fixture, "/with%20index");
        assert!(matches!(resolved, Resolved::RedirectToSlash));
        assert_eq!(location, b"/with%20index/");
    }

    #[test]
    fn redirect_cannot_become_protocol_relative() {
        let fixture = fixture();
        let (resolved, location) = resolve_str(&fixture, "//sub");
        assert!(matches!(resolved, Resolved::RedirectToSlash));
        assert_eq!(location, b"/sub/");
    }

    #[test]
    fn directory_with_slash_serves_index_html() {
        let fixture = fixture();
        assert_eq!(served_content(&fixture, "/with%20index/"), "<h1>index</h1>");
        let (resolved, _) = resolve_str(&fixture, "/with%20index/");
        assert!(matches!(resolved, Resolved::File { content_type, .. } if content_type == "text/html; charset=utf-8"));
    }

    #[test]
    fn root_without_index_is_not_found() {
        let fixture = fixture();
        assert_resolves(&fixture, "/", is_not_found);
    }

    #[test]
    fn unreadable_file_is_forbidden() {
        let fixture = fixture();
        let path = fixture.root.path().join("locked.txt");
        std::fs::write(&path, "x").expect("write");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o000)).expect("chmod");
        let readable_anyway = File::open(&path).is_ok(); // root ignores permission bits
        if !readable_anyway {
            assert_resolves(&fixture, "/locked.txt", is_forbidden);
        }
    }

    #[test]
    fn content_types_come_from_the_extension() {
        let cases = [
            ("/a.txt", "text/plain; charset=utf-8"),
            ("/page.html", "text/html; charset=utf-8"),
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/data.json", "application/json"),
            ("/sub/b.css", "text/css; charset=utf-8"),
            ("/blob.unknownext", "application/octet-stream"),
            ("/link_in", "application/octet-stream"),
        ];
        let fixture = fixture();
        for (target, expected) in cases {
            match resolve_str(&fixture, target).0 {
                Resolved::File { content_type, .. } => {
                    assert_eq!(content_type, expected, "{target}")
                }
                other => panic!("{target}: {other:?}"),
            }
        }
        assert_eq!(content_type_for(b"/x/IMAGE.PNG"), "image/png");
        for (ext, common) in COMMON_TYPES {
            assert_eq!(common, guessed_type(ext), "the short list answers .{ext} as mime_guess does");
        }
        assert_eq!(content_type_for(b"/x.d/noext"), DEFAULT_CONTENT_TYPE);
    }

    #[test]
    fn scratch_is_reused_without_growing() {
        let fixture = fixture();
        let mut scratch = Vec::with_capacity(256);
        let capacity = scratch.capacity();
        for _ in 0..100 {
            let _ = resolve(&fixture.root, &Rules::NONE, b"/sub/../a.txt?x", &mut scratch, &mut Matched::default());
            let _ = resolve(&fixture.root, &Rules::NONE, b"/sub", &mut scratch, &mut Matched::default());
        }
        assert_eq!(scratch.capacity(), capacity);
    }

    #[test]
    fn root_open_error_names_the_path() {
        let error = Root::open(Path::new("/nonexistent/webd-root")).expect_err("must fail");
        assert!(error.to_string().contains("/nonexistent/webd-root"), "{error}");
    }

    /// Reference normalizer: a plain stack of segments, allocating freely.
    fn normalize_by_stack(path: &[u8]) -> Option<Vec<u8>> {
        let mut stack: Vec<&[u8]> = Vec::new();
        let segments: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
        let mut trailing = false;
        for (index, segment) in segments.iter().enumerate() {
            let is_last = index + 1 == segments.len();
            match *segment {
                b"" | b"." => trailing = is_last,
                b".." => {
                    stack.pop()?;
                    trailing = is_last;
                }
                other => {
                    stack.push(other);
                    trailing = false;
                }
            }
        }
        let mut out = Vec::new();
        for segment in &stack {
            out.push(b'/');
            out.extend_from_slice(segment);
        }
        if trailing || out.is_empty() {
            out.push(b'/');
        }
        Some(out)
    }

    fn path_pieces() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "a",
            "b",
            "sub",
            ".",
            "..",
            "...",
            "",
            "%2e",
            "%2E%2e",
            "%2f",
            "%2F",
            "%",
            "%00",
            "a.txt",
            "secret.txt",
            "link_in",
            "link_out",
            "link_abs",
            "link_parent",
            "link_proc",
            "empty",
            "up",
            "with%20index",
            "index.html",
            "pipe",
            "?",
            "#",
            "?x=/..",
            "%3f",
        ]);
        prop::collection::vec(piece, 0..8).prop_map(|pieces| format!("/{}", pieces.join("/")))
    }

    fn file_identities_under(root: &Path) -> HashSet<(u64, u64)> {
        let mut found = HashSet::new();
        let mut pending = vec![root.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
                let meta = entry.metadata().expect("lstat"); // does not follow symlinks
                if meta.is_dir() {
                    pending.push(entry.path());
                } else if meta.is_file() {
                    found.insert((meta.dev(), meta.ino()));
                }
            }
        }
        found
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(path in path_pieces()) {
            let mut once = Vec::new();
            if percent_decode_into(path.as_bytes(), &mut once).is_ok()
                && normalize_dot_segments(&mut once).is_ok()
            {
                let mut twice = once.clone();
                prop_assert!(normalize_dot_segments(&mut twice).is_ok());
                prop_assert_eq!(&twice, &once);
            }
        }

        #[test]
        fn normalization_matches_a_segment_stack(path in "/[ab./]{0,16}") {
            let mut in_place = path.as_bytes().to_vec();
            let result = normalize_dot_segments(&mut in_place).ok().map(|()| in_place);
            prop_assert_eq!(result, normalize_by_stack(path.as_bytes()));
        }

        #[test]
        fn normalization_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut path = [&b"/"[..], &bytes].concat();
            let _ = normalize_dot_segments(&mut path);
        }
    }

    #[test]
    fn resolve_never_opens_anything_outside_the_root() {
        let fixture = fixture();
        let allowed = file_identities_under(fixture.root.path());
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(512));
        let targets = prop_oneof![
            path_pieces(),
            path_pieces().prop_map(|path| format!("http://h{path}")),
            prop::collection::vec(any::<u8>(), 0..48).prop_map(|bytes| format!("/{}", String::from_utf8_lossy(&bytes))),
        ];
        let result = runner.run(&targets, |target| {
            let mut scratch = Vec::new();
            for fallback in [false, true] {
                if fallback {
                    fixture.root.use_fallback_only();
                }
                if let Resolved::File { file, meta, .. } =
                    resolve(&fixture.root, &Rules::NONE, target.as_bytes(), &mut scratch, &mut Matched::default())
                {
                    let identity = (meta.dev(), meta.ino());
                    let opened = file.metadata().expect("fstat");
                    prop_assert_eq!(identity, (opened.dev(), opened.ino()));
                    prop_assert_ne!(identity, fixture.secret, "{} leaked the secret", target);
                    prop_assert!(allowed.contains(&identity), "{} opened a file outside the root", target);
                }
            }
            fixture.root.openat2_available.store(true, Ordering::Relaxed);
            Ok(())
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }
}
