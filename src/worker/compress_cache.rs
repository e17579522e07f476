//! The worker's cache of files compressed on the fly: compress once, serve many.
//!
//! One entry per path beneath the root, holding the file version it describes (inode,
//! size, nanosecond mtime: [`Version`]), that version's bytes in each coding compressed
//! so far, and which of its sidecars were missing when last looked for. An entry for
//! another version is replaced on first sight, so a stale body is never served: the
//! version is taken from the `fstat` of the descriptor the response is read from.
//!
//! Bounded by bytes (`compress_cache_mib`): an entry costs its path, its compressed
//! bodies and [`ENTRY_OVERHEAD`]. Eviction is least-recently-used in the CLOCK manner:
//! entries queue in insertion order, a hit only stamps the entry, and the evictor
//! re-queues an entry used since it was queued instead of dropping it. A hit costs one
//! hash lookup and an `Rc` clone; no allocation, no syscall.
//!
//! Compression runs in the worker's loop, on the request that first needs it, and is
//! bounded: only files up to [`MAX_INPUT`] (and a quarter of the cache) are compressed,
//! larger ones are sent as identity. Levels, measured on this repository's docs and
//! sources (64 KiB, one core of the 2-core build machine): brotli quality 5 (31.4 % of the
//! input at 17 MB/s; quality 11 gives 28.0 % at 0.9 MB/s), zstd level 6 (32.2 % at
//! 80 MB/s; level 19 30.6 % at 4 MB/s), gzip level 6 (32.5 % at 32 MB/s; level 9 gains
//! 0.1 %). So a 256 KiB file holds the loop for at most about 15 ms once per version and
//! coding.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, VecDeque};
use std::fs::{File, Metadata};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::rc::Rc;

use super::encoding::Coding;

/// Largest file compressed on the fly.
pub const MAX_INPUT: u64 = 256 * 1024;
/// What an entry costs beyond its path and bodies (map slot, queue slot, headers).
pub const ENTRY_OVERHEAD: usize = 192;
const BROTLI_QUALITY: i32 = 5;
const ZSTD_LEVEL: i32 = 6;
const GZIP_LEVEL: u32 = 6;

/// A file version: what must match for a cached body to be that file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    inode: u64,
    len: u64,
    mtime_ns: i128,
}

impl Version {
    pub fn of(meta: &Metadata) -> Version {
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        Version { inode: meta.ino(), len: meta.len(), mtime_ns }
    }
}

#[derive(Debug)]
struct Entry {
    version: Version,
    /// By [`Coding::index`].
    bodies: [Option<Rc<[u8]>>; 3],
    /// Sidecars (bits by [`Coding::index`]) missing at `probed_at`.
    absent_sidecars: u8,
    probed_at: u64,
    /// The cache's clock at the last use.
    used: u64,
}

impl Entry {
    fn new(version: Version) -> Entry {
        Entry { version, bodies: Default::default(), absent_sidecars: 0, probed_at: 0, used: 0 }
    }

    fn body_bytes(&self) -> usize {
        self.bodies.iter().flatten().map(|body| body.len()).sum()
    }
}

/// Counts kept for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub compressed: u64,
    pub evicted: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct CompressCache {
    capacity: usize,
    used_bytes: usize,
    entries: HashMap<Rc<[u8]>, Entry>,
    /// Every key once, with the clock when it was (re)queued.
    queue: VecDeque<(Rc<[u8]>, u64)>,
    clock: u64,
    pub stats: CacheStats,
}

impl CompressCache {
    pub fn new(capacity_mib: u32) -> CompressCache {
        CompressCache {
            capacity: capacity_mib as usize * 1024 * 1024,
            used_bytes: 0,
            entries: HashMap::new(),
            queue: VecDeque::new(),
            clock: 0,
            stats: CacheStats::default(),
        }
    }

    /// Bytes the entries cost now; never above the capacity after an insertion.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Largest file compressed on the fly with this capacity.
    pub fn max_input(&self) -> u64 {
        MAX_INPUT.min(self.capacity as u64 / 4)
    }

    /// The sidecars of `path` at `version` known to be missing (bits by coding index),
    /// if they were looked for less than `PROBE_TTL_SECS` ago.
    pub fn absent_sidecars(&mut self, path: &[u8], version: Version, now_secs: u64) -> u8 {
        match self.entries.get(path) {
            Some(entry)
                if entry.version == version
                    && now_secs.saturating_sub(entry.probed_at) < super::encoding::PROBE_TTL_SECS =>
            {
                entry.absent_sidecars
            }
            _ => 0,
        }
    }

    /// Remembers which sidecars of `path` at `version` were missing at `now_secs`.
    pub fn note_absent_sidecars(&mut self, path: &[u8], version: Version, absent: u8, now_secs: u64) {
        let entry = self.entry(path, version);
        entry.absent_sidecars = absent;
        entry.probed_at = now_secs;
        self.evict_beyond_capacity();
    }

    /// `file` (at `version`, its `fstat`) in `coding`, compressed now unless cached.
    /// `None` when it is not worth it: too large for the cache, unreadable, or no smaller
    /// compressed (the entry remembers that, so it is tried once per version).
    pub fn encoded(&mut self, path: &[u8], version: Version, coding: Coding, file: &File) -> Option<Rc<[u8]>> {
        let index = coding.index()?;
        if version.len > self.max_input() {
            return None;
        }
        let entry = self.entry(path, version);
        if let Some(body) = &entry.bodies[index] {
            return (!body.is_empty()).then(|| Rc::clone(body));
        }
        let compressed = compress(coding, file, version.len).filter(|bytes| (bytes.len() as u64) < version.len);
        // An empty body marks "tried, not worth it".
        let body: Rc<[u8]> = compressed.map_or_else(|| Rc::from(&[][..]), Rc::from);
        self.stats.compressed += 1;
        self.used_bytes += body.len();
        if let Some(entry) = self.entries.get_mut(path) {
            entry.bodies[index] = Some(Rc::clone(&body));
        }
        self.evict_beyond_capacity();
        (!body.is_empty()).then_some(body)
    }

    /// The entry of `path`, created or replaced for `version`, stamped as used.
    fn entry(&mut self, path: &[u8], version: Version) -> &mut Entry {
        self.clock += 1;
        let clock = self.clock;
        // Looked up by slice first: a hit allocates nothing.
        if !self.entries.contains_key(path) {
            let key: Rc<[u8]> = Rc::from(path);
            self.queue.push_back((Rc::clone(&key), clock));
            self.used_bytes += key.len() + ENTRY_OVERHEAD;
            self.entries.insert(key, Entry::new(version));
        }
        let entry = self.entries.get_mut(path).expect("inserted above");
        if entry.version != version {
            self.used_bytes -= entry.body_bytes();
            *entry = Entry::new(version);
        }
        entry.used = clock;
        entry
    }

    fn evict_beyond_capacity(&mut self) {
        while self.used_bytes > self.capacity {
            let Some((key, queued)) = self.queue.pop_front() else { return };
            let Slot::Occupied(slot) = self.entries.entry(key) else { continue };
            if slot.get().used > queued {
                // Used since it was queued: a second chance at the back.
                let used = slot.get().used;
                let key = Rc::clone(slot.key());
                self.queue.push_back((key, used));
                continue;
            }
            let (key, entry) = slot.remove_entry();
            self.used_bytes -= key.len() + ENTRY_OVERHEAD + entry.body_bytes();
            self.stats.evicted += 1;
        }
    }
}

/// `len` bytes of `file` compressed in `coding`; `None` if the file cannot be read whole.
fn compress(coding: Coding, file: &File, len: u64) -> Option<Vec<u8>> {
    let mut input = vec![0; usize::try_from(len).ok()?];
    file.read_exact_at(&mut input, 0).ok()?;
    match coding {
        Coding::Identity => None,
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: BROTLI_QUALITY,
                lgwin: 22,
                size_hint: input.len(),
                ..Default::default()
            };
            let mut out = Vec::with_capacity(input.len() / 3);
            brotli::BrotliCompress(&mut &input[..], &mut out, &params).ok()?;
            Some(out)
        }
        Coding::Zstd => zstd::bulk::compress(&input, ZSTD_LEVEL).ok(),
        Coding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(input.len() / 3),
                flate2::Compression::new(GZIP_LEVEL),
            );
            encoder.write_all(&input).ok()?;
            encoder.finish().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::{Duration, UNIX_EPOCH};

    fn text(len: usize) -> Vec<u8> {
        b"the quick brown fox jumps over the lazy dog; ".iter().copied().cycle().take(len).collect()
    }

    fn write(dir: &std::path::Path, name: &str, content: &[u8]) -> (File, Version) {
        let path = dir.join(name);
        std::fs::write(&path, content).expect("write");
        let file = File::open(&path).expect("open");
        let version = Version::of(&file.metadata().expect("fstat"));
        (file, version)
    }

    /// 200 000 bytes of decimal numbers: compresses to tens of KiB, so 1 MiB holds a few.
    fn numbers(dir: &std::path::Path) -> (File, Version) {
        let content: Vec<u8> = (0..200_000u32).flat_map(|n| n.to_string().into_bytes()).take(200_000).collect();
        write(dir, "numbers.txt", &content)
    }

    fn decode(coding: Coding, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match coding {
            Coding::Br => brotli::Decompressor::new(bytes, 4096).read_to_end(&mut out).expect("brotli"),
            Coding::Zstd => zstd::stream::read::Decoder::new(bytes).expect("zstd").read_to_end(&mut out).expect("zstd"),
            Coding::Gzip => flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("gzip"),
            Coding::Identity => unreachable!("not a coding"),
        };
        out
    }

    #[test]
    fn each_coding_decodes_to_the_file_and_is_compressed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = text(10_000);
        let (file, version) = write(dir.path(), "a.txt", &content);
        let mut cache = CompressCache::new(1);
        for coding in Coding::ENCODED {
            let body = cache.encoded(b"/a.txt", version, coding, &file).expect("compressed");
            assert!(body.len() < content.len() / 4, "{coding:?}: {}", body.len());
            assert_eq!(decode(coding, &body), content, "{coding:?}");
            let again = cache.encoded(b"/a.txt", version, coding, &file).expect("cached");
            assert!(Rc::ptr_eq(&body, &again), "{coding:?} served from the cache");
        }
        assert_eq!(cache.stats.compressed, 3);
    }

    #[test]
    fn another_version_is_compressed_anew() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, version) = write(dir.path(), "a.txt", &text(4000));
        let mut cache = CompressCache::new(1);
        let first = cache.encoded(b"/a.txt", version, Coding::Gzip, &file).expect("compressed");
        // Same size, another nanosecond: another version.
        file.set_modified(UNIX_EPOCH + Duration::new(1_000_000_000, 7)).ok();
        let mut changed = text(4000);
        changed[0] = b'T';
        std::fs::write(dir.path().join("a.txt"), &changed).expect("rewrite");
        let version2 = Version::of(&file.metadata().expect("fstat"));
        assert_ne!(version, version2);
        let second = cache.encoded(b"/a.txt", version2, Coding::Gzip, &file).expect("compressed");
        assert_eq!(decode(Coding::Gzip, &second), changed);
        assert!(!Rc::ptr_eq(&first, &second));
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = CompressCache::new(1);
        let (file, version) = numbers(dir.path());
        for n in 0..40 {
            let path = format!("/f{n}.txt");
            cache.encoded(path.as_bytes(), version, Coding::Gzip, &file).expect("compressed");
            assert!(cache.used_bytes() <= 1024 * 1024, "{} after {n}", cache.used_bytes());
        }
        assert!(cache.stats.evicted > 0);
        assert_eq!(cache.max_input(), 256 * 1024);
    }

    #[test]
    fn recently_used_entries_survive_eviction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = CompressCache::new(1);
        let (file, version) = numbers(dir.path());
        let hot = cache.encoded(b"/hot", version, Coding::Zstd, &file).expect("compressed");
        for n in 0..40 {
            let path = format!("/cold{n}");
            cache.encoded(path.as_bytes(), version, Coding::Zstd, &file).expect("compressed");
            let again = cache.encoded(b"/hot", version, Coding::Zstd, &file).expect("cached");
            assert!(Rc::ptr_eq(&hot, &again), "the hot entry was evicted after {n}");
        }
    }

    #[test]
    fn too_large_or_incompressible_files_are_not_encoded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = CompressCache::new(64);
        let (big, big_version) = write(dir.path(), "big.txt", &text(MAX_INPUT as usize + 1));
        assert!(cache.encoded(b"/big.txt", big_version, Coding::Br, &big).is_none());
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let (random, version) = write(dir.path(), "noise.txt", &noise);
        assert!(cache.encoded(b"/noise.txt", version, Coding::Gzip, &random).is_none());
        assert!(cache.encoded(b"/noise.txt", version, Coding::Gzip, &random).is_none());
        assert_eq!(cache.stats.compressed, 1, "tried once per version");
    }

    #[test]
    fn absent_sidecars_are_trusted_for_a_while_and_per_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_file, version) = write(dir.path(), "a.txt", b"x");
        let mut cache = CompressCache::new(1);
        cache.note_absent_sidecars(b"/a.txt", version, 0b101, 100);
        assert_eq!(cache.absent_sidecars(b"/a.txt", version, 101), 0b101);
        assert_eq!(cache.absent_sidecars(b"/a.txt", version, 102), 0, "looked for again");
        let other = Version { len: 2, ..version };
        assert_eq!(cache.absent_sidecars(b"/a.txt", other, 100), 0, "another version");
        assert_eq!(cache.absent_sidecars(b"/b.txt", version, 100), 0);
    }
}
