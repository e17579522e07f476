//! Content codings (RFC 9110 §8.4, §12.5.3): which representation of a file a request
//! gets, identity or `br`, `zstd`, `gzip`, and where its bytes come from.
//!
//! Only compressible types ([`is_compressible`]) have encoded representations; for any
//! other file, and for a request without `Accept-Encoding`, nothing here runs but one
//! check of the type, and the response is what it always was (no `Vary`). For a
//! compressible file:
//! - `Accept-Encoding` is read into one weight per coding we have ([`Accepted`]):
//!   q-values, `*` for the codings not listed, `x-gzip` as `gzip`, identity acceptable
//!   unless `identity;q=0` or `*;q=0` says otherwise. Malformed elements are skipped, never
//!   an error; when nothing acceptable is left, identity is sent anyway (§12.5.3).
//! - Precompressed sidecars first: `FILE.br`, `FILE.zst`, `FILE.gz`, tried in the order of
//!   the client's weights (ties: br, zstd, gzip), opened beneath the root like any file
//!   and kept in the open-file cache like it (`path::open_cached_regular`), used when a
//!   regular file not older than FILE. Served
//!   with sendfile and Range like FILE, with the sidecar's own validators and the coding
//!   appended to the ETag.
//! - Without an acceptable sidecar, a file of at least [`MIN_COMPRESS`] bytes and at most
//!   the cache's admission limit is compressed once into the worker's
//!   [`CompressCache`] (keyed by path, checked against inode, size and nanosecond mtime)
//!   and served from memory; its ETag is the file's with the coding appended.
//! - Every response about a compressible file says `Vary: Accept-Encoding`, identity
//!   ones and 304s included.
//!
//! Cost per request: a sidecar that does not exist is one failed `openat2`; the cache
//! remembers for [`PROBE_TTL_SECS`] which sidecars a file version lacked, so a hot file
//! without sidecars costs one hash lookup and no syscall beyond the file's own open. A hot
//! sidecar costs a hash lookup too, and one `fstatat` per event-loop pass.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::rc::Rc;

use super::compress_cache::{CompressCache, Version};
use super::path::{open_cached_regular, Root};
use crate::figures::ByEncoding;

/// Smallest file compressed on the fly: below this, headers outweigh the gain.
pub const MIN_COMPRESS: u64 = 1024;
/// How long the absence of a file version's sidecars is trusted before they are looked
/// for again (a sidecar written after its file is used from then on).
pub const PROBE_TTL_SECS: u64 = 2;

/// A content coding we can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coding {
    #[default]
    Identity,
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    /// The encoded codings in server preference order (best first, for equal weights).
    pub const ENCODED: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

    /// The token in `Content-Encoding`, and the metric's label.
    pub fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The sidecar's suffix to the file name.
    fn suffix(self) -> &'static [u8] {
        match self {
            Coding::Identity => b"",
            Coding::Br => b".br",
            Coding::Zstd => b".zst",
            Coding::Gzip => b".gz",
        }
    }

    /// Index among [`Coding::ENCODED`]; `None` for identity.
    pub fn index(self) -> Option<usize> {
        match self {
            Coding::Identity => None,
            Coding::Br => Some(0),
            Coding::Zstd => Some(1),
            Coding::Gzip => Some(2),
        }
    }
}

impl std::ops::Index<Coding> for ByEncoding {
    type Output = u64;
    fn index(&self, coding: Coding) -> &u64 {
        match coding {
            Coding::Identity => &self.identity,
            Coding::Br => &self.br,
            Coding::Zstd => &self.zstd,
            Coding::Gzip => &self.gzip,
        }
    }
}

impl std::ops::IndexMut<Coding> for ByEncoding {
    fn index_mut(&mut self, coding: Coding) -> &mut u64 {
        match coding {
            Coding::Identity => &mut self.identity,
            Coding::Br => &mut self.br,
            Coding::Zstd => &mut self.zstd,
            Coding::Gzip => &mut self.gzip,
        }
    }
}

/// Weights in thousandths (q=0.5 is 500), 0 meaning not acceptable.
pub(super) type Weight = u16;

/// What `Accept-Encoding` allows, one weight per coding we have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// By [`Coding::index`].
    encoded: [Weight; 3],
    identity: Weight,
    /// Identity's weight when the client gave one (listed, or by `*`): a coding weighted
    /// below it is not worth sending. Unlisted, identity outranks no coding.
    identity_floor: Weight,
}

impl Accepted {
    /// Reads the field's lines (taken together, RFC 9110 §5.3). An element that is not
    /// `token *( OWS ";" OWS param )` with a valid `q` is ignored.
    pub fn parse<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Accepted {
        let mut listed: [Option<Weight>; 3] = [None; 3];
        let (mut identity, mut star) = (None, None);
        for element in lines.flat_map(|line| line.split(|&b| b == b',')) {
            let Some((name, weight)) = parse_element(element) else { continue };
            let slot = match name {
                _ if name.eq_ignore_ascii_case(b"br") => &mut listed[0],
                _ if name.eq_ignore_ascii_case(b"zstd") => &mut listed[1],
                _ if name.eq_ignore_ascii_case(b"gzip") || name.eq_ignore_ascii_case(b"x-gzip") => &mut listed[2],
                _ if name.eq_ignore_ascii_case(b"identity") => &mut identity,
                b"*" => &mut star,
                _ => continue,
            };
            // Listed twice: the kinder weight.
            *slot = Some(slot.map_or(weight, |seen: Weight| seen.max(weight)));
        }
        let identity = identity.or(star);
        Accepted {
            encoded: listed.map(|weight| weight.or(star).unwrap_or(0)),
            identity: identity.unwrap_or(1000),
            identity_floor: identity.unwrap_or(0),
        }
    }

    /// The weight of `coding`.
    pub fn weight(&self, coding: Coding) -> Weight {
        coding.index().map_or(self.identity, |index| self.encoded[index])
    }

    /// The encoded codings worth sending instead of identity, best first: weight above 0
    /// and not below identity's if the client weighted identity; ties in server preference
    /// order. On the stack.
    pub fn ranked(&self) -> impl Iterator<Item = Coding> {
        let mut order = Coding::ENCODED;
        // Stable: equal weights keep the preference order.
        order.sort_by_key(|&coding| std::cmp::Reverse(self.weight(coding)));
        let floor = self.identity_floor;
        let accepted = *self;
        order.into_iter().filter(move |&coding| {
            let weight = accepted.weight(coding);
            weight > 0 && weight >= floor
        })
    }
}

/// `name` and its weight from one list element; `None` for an empty or malformed one.
fn parse_element(element: &[u8]) -> Option<(&[u8], Weight)> {
    let mut parts = element.split(|&b| b == b';');
    let name = parts.next()?.trim_ascii();
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let mut weight = 1000;
    for param in parts {
        let param = param.trim_ascii();
        let (key, value) = param.split_at(param.iter().position(|&b| b == b'=')?);
        if key.trim_ascii().eq_ignore_ascii_case(b"q") {
            weight = parse_qvalue(value[1..].trim_ascii())?;
        }
    }
    Some((name, weight))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )` in thousandths.
pub(super) fn parse_qvalue(text: &[u8]) -> Option<Weight> {
    let (&unit, rest) = text.split_first()?;
    let fraction = match rest {
        [] => &[][..],
        [b'.', digits @ ..] if digits.len() <= 3 && digits.iter().all(u8::is_ascii_digit) => digits,
        _ => return None,
    };
    let mut thousandths: Weight = 0;
    for place in 0..3 {
        thousandths = thousandths * 10 + fraction.get(place).map_or(0, |&d| Weight::from(d - b'0'));
    }
    match unit {
        b'0' => Some(thousandths),
        b'1' if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Types whose bodies compress: text, JSON, JavaScript, XML, SVG, wasm.
pub fn is_compressible(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim_ascii_end();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(essence, "application/json" | "application/javascript" | "application/xml" | "application/wasm")
}

/// Where the chosen representation's bytes are.
#[derive(Debug)]
pub enum Content {
    /// An open file (the file itself, or its sidecar).
    File(Rc<File>),
    /// Bytes compressed on the fly, shared with the cache.
    Memory(Rc<[u8]>),
}

/// The representation a response is about.
#[derive(Debug)]
pub struct Representation {
    pub content: Content,
    /// Whose inode, size and mtime make the validators: the sidecar's, else the file's.
    pub meta: Metadata,
    /// The bytes the representation has (the compressed length for memory).
    pub len: u64,
    pub coding: Coding,
    /// Another request could get another coding: say `Vary: Accept-Encoding`.
    pub vary: bool,
}

impl Representation {
    fn identity(file: Rc<File>, meta: Metadata, vary: bool) -> Representation {
        let len = meta.len();
        Representation { content: Content::File(file), meta, len, coding: Coding::Identity, vary }
    }
}

/// Chooses the representation of the file `resolve` opened, whose path beneath the root
/// is `path` followed by a NUL (as `resolve` leaves its scratch buffer; left that way).
pub fn represent<'a>(
    accept_encoding: impl Iterator<Item = &'a [u8]>,
    root: &Root,
    path: &mut Vec<u8>,
    (file, meta, content_type): (Rc<File>, Metadata, &str),
    cache: &mut CompressCache,
    now_secs: u64,
) -> Representation {
    if !is_compressible(content_type) {
        return Representation::identity(file, meta, false);
    }
    let mut accept_encoding = accept_encoding.peekable();
    if accept_encoding.peek().is_none() {
        return Representation::identity(file, meta, true);
    }
    let accepted = Accepted::parse(accept_encoding);
    let Some(name_len) = path.len().checked_sub(1) else {
        return Representation::identity(file, meta, true);
    };
    let version = Version::of(&meta);
    let known_absent = cache.absent_sidecars(&path[..name_len], version, now_secs);
    let mut absent = known_absent;
    for coding in accepted.ranked() {
        let bit = 1 << coding.index().unwrap_or_default();
        if absent & bit != 0 {
            continue;
        }
        match open_sidecar(root, path, name_len, coding, &meta) {
            Some((sidecar, sidecar_meta)) => {
                let len = sidecar_meta.len();
                return Representation { content: Content::File(sidecar), meta: sidecar_meta, len, coding, vary: true };
            }
            None => absent |= bit,
        }
    }
    if absent != known_absent {
        cache.note_absent_sidecars(&path[..name_len], version, absent, now_secs);
    }
    let Some(coding) = accepted.ranked().next() else {
        return Representation::identity(file, meta, true);
    };
    if meta.len() < MIN_COMPRESS {
        return Representation::identity(file, meta, true);
    }
    match cache.encoded(&path[..name_len], version, coding, &file) {
        Some(bytes) => {
            let len = bytes.len() as u64;
            Representation { content: Content::Memory(bytes), meta, len, coding, vary: true }
        }
        None => Representation::identity(file, meta, true),
    }
}

/// Opens `FILE` + the coding's suffix beneath the root (through the open-file cache), if
/// it is a regular file at least as new as FILE (to the second). `path` holds FILE's path
/// and a NUL, and does so again afterwards.
fn open_sidecar(
    root: &Root,
    path: &mut Vec<u8>,
    name_len: usize,
    coding: Coding,
    file_meta: &Metadata,
) -> Option<(Rc<File>, Metadata)> {
    path.truncate(name_len);
    path.extend_from_slice(coding.suffix());
    let opened = open_cached_regular(root, path);
    path.truncate(name_len);
    path.push(0);
    let (sidecar, meta) = opened?;
    // Whole seconds: `brotli -k`, tar and many deploy tools copy a file's mtime without its
    // nanoseconds, and such a sidecar is as fresh as its file, not older.
    let not_older = meta.mtime() >= file_meta.mtime();
    not_older.then_some((sidecar, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn accepted(value: &str) -> Accepted {
        Accepted::parse(std::iter::once(value.as_bytes()))
    }

    fn ranked(value: &str) -> Vec<&'static str> {
        accepted(value).ranked().map(Coding::name).collect()
    }

    #[test]
    fn equal_weights_follow_server_preference() {
        assert_eq!(ranked("gzip, deflate, br, zstd"), ["br", "zstd", "gzip"]);
        assert_eq!(ranked("gzip"), ["gzip"]);
        assert_eq!(ranked("x-gzip"), ["gzip"]);
        assert_eq!(ranked("GZIP, BR"), ["br", "gzip"]);
    }

    #[test]
    fn q_values_order_the_codings() {
        assert_eq!(ranked("gzip;q=1, br;q=0.5"), ["gzip", "br"]);
        assert_eq!(ranked("br;q=0.2, zstd;q=0.3 , gzip ; q=0.25"), ["zstd", "gzip", "br"]);
        assert_eq!(ranked("br;q=0, gzip"), ["gzip"]);
        assert_eq!(ranked("br;Q=0.001"), ["br"]);
    }

    #[test]
    fn star_covers_what_is_not_listed() {
        assert_eq!(ranked("*"), ["br", "zstd", "gzip"]);
        assert_eq!(ranked("br;q=0, *"), ["zstd", "gzip"]);
        assert_eq!(ranked("*;q=0"), Vec::<&str>::new());
        assert_eq!(accepted("*;q=0").weight(Coding::Identity), 0);
        assert_eq!(accepted("*;q=0, identity").weight(Coding::Identity), 1000);
        assert_eq!(accepted("gzip").weight(Coding::Identity), 1000, "identity is acceptable unless refused");
    }

    #[test]
    fn identity_preferred_over_a_coding_wins() {
        assert_eq!(ranked("gzip;q=0.5, identity"), Vec::<&str>::new());
        assert_eq!(ranked("gzip;q=0.5, identity;q=0.5"), ["gzip"], "a tie goes to the coding");
        assert_eq!(ranked("identity;q=0, gzip;q=0.1"), ["gzip"]);
        assert_eq!(ranked("*;q=0.5, gzip;q=0.3"), ["br", "zstd"], "`*` weights identity too: gzip is below it");
    }

    #[test]
    fn malformed_elements_are_skipped() {
        for value in ["", ",,", "br;q=2", "br;q=0.0001", "br;q=", "br;q=1.5", "br;q", "b r", "br;q=abc", "\u{e9}"] {
            assert_eq!(ranked(value), Vec::<&str>::new(), "{value:?}");
            assert_eq!(accepted(value).weight(Coding::Identity), 1000, "{value:?}");
        }
        assert_eq!(ranked("br;q=x, gzip"), ["gzip"]);
        assert_eq!(ranked("br;level=3"), ["br"], "other parameters are ignored");
        assert_eq!(ranked("compress, deflate"), Vec::<&str>::new(), "codings we lack");
    }

    #[test]
    fn repeated_lines_are_one_list() {
        let lines = [&b"gzip;q=0.3"[..], b"br;q=0.9"];
        let accepted = Accepted::parse(lines.into_iter());
        assert_eq!(accepted.ranked().map(Coding::name).collect::<Vec<_>>(), ["br", "gzip"]);
    }

    #[test]
    fn compressible_types() {
        for yes in ["text/html; charset=utf-8", "text/css", "application/json", "image/svg+xml", "application/wasm"] {
            assert!(is_compressible(yes), "{yes}");
        }
        for yes in ["application/manifest+json", "application/xml", "application/atom+xml"] {
            assert!(is_compressible(yes), "{yes}");
        }
        for no in ["image/png", "application/octet-stream", "font/woff2", "video/mp4", "application/gzip"] {
            assert!(!is_compressible(no), "{no}");
        }
    }

    proptest! {
        #[test]
        fn any_field_value_parses_to_weights_in_range(value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let accepted = Accepted::parse(std::iter::once(&value[..]));
            for coding in [Coding::Identity, Coding::Br, Coding::Zstd, Coding::Gzip] {
                prop_assert!(accepted.weight(coding) <= 1000);
            }
            let ranked: Vec<_> = accepted.ranked().collect();
            prop_assert!(ranked.len() <= 3);
            prop_assert!(ranked.windows(2).all(|pair| accepted.weight(pair[0]) >= accepted.weight(pair[1])));
        }

        #[test]
        fn listed_weights_are_read_back(br in 0u16..=1000, gzip in 0u16..=1000) {
            let value = format!("br;q={}.{:03}, gzip;q={}.{:03}", br / 1000, br % 1000, gzip / 1000, gzip % 1000);
            let accepted = accepted(&value);
            prop_assert_eq!((accepted.weight(Coding::Br), accepted.weight(Coding::Gzip)), (br, gzip));
            prop_assert_eq!(accepted.weight(Coding::Zstd), 0);
        }
    }
}
