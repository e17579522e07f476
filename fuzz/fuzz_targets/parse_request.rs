//! Fuzz target: arbitrary bytes through the whole per-request path (parse, resolve,
//! respond, error heads, the chunked or sized body that follows a head) against a small
//! document root with symlinks pointing out of it, once with no site rule and once with
//! hidden files denied, a fallback and directory listings on. Crashes are panics; the target also asserts that nothing
//! outside the root is served and that a body never ends past the input.
#![no_main]

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::PathBuf;

use webd::config::{ErrorPages, HiddenFiles, SiteRules};
use webd::worker::body::{BodySkipper, Skip};
use webd::worker::compress_cache::CompressCache;
use webd::worker::date::DateCache;
use webd::worker::path::{resolve, Resolved, Root};
use webd::worker::request::{parse, Limits, Parsed};
use webd::worker::response::{error_head, respond, Body};
use webd::worker::rules::{Matched, Rules};
use libfuzzer_sys::fuzz_target;

/// The document root, the (dev, inode) of the secret file beside it, and the two rule
/// sets each input is tried with.
struct Site {
    root: Root,
    secret: (u64, u64),
    rules: [Rules; 2],
}

/// The site, made once per thread (the root's open-file cache is not shared between
/// threads; libFuzzer runs the target on one).
fn site() -> &'static Site {
    thread_local! {
        static SITE: &'static Site = Box::leak(Box::new(make_site()));
    }
    SITE.with(|site| *site)
}

fn make_site() -> Site {
    {
        // Kept for the life of the fuzzing process: the tempdir is never dropped.
        let base: PathBuf = tempfile::tempdir().expect("tempdir").keep();
        let dir = base.join("root");
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(base.join("secret.txt"), "secret").expect("write");
        std::fs::write(dir.join("a.txt"), "0123456789").expect("write");
        std::fs::write(dir.join("sub/index.html"), "<p>i</p>").expect("write");
        symlink("../secret.txt", dir.join("out")).expect("symlink");
        symlink("..", dir.join("up")).expect("symlink");
        symlink("a.txt", dir.join("in")).expect("symlink");
        let secret = std::fs::metadata(base.join("secret.txt")).expect("stat");
        std::fs::write(dir.join(".env"), "hidden").expect("write");
        let no_pages = Box::leak(Box::new(ErrorPages::new()));
        let strict = SiteRules {
            hidden_files: HiddenFiles::Deny,
            directory_listing: true,
            fallback: Some("/a.txt"),
            error_pages: no_pages,
            headers: &[],
            redirects: &[],
        };
        Site {
            root: Root::open(&dir).expect("root"),
            secret: (secret.dev(), secret.ino()),
            rules: [Rules::NONE, Rules::compile(&strict)],
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let site = site();
    let date = DateCache::new();
    let mut scratch = Vec::new();
    let mut head = Vec::new();
    let mut codings = CompressCache::new(1);
    for rules in &site.rules {
        one_input(site, rules, data, &date, &mut scratch, &mut codings, &mut head);
        head.clear();
    }
});

fn one_input(
    site: &Site,
    rules: &Rules,
    data: &[u8],
    date: &DateCache,
    scratch: &mut Vec<u8>,
    codings: &mut CompressCache,
    head: &mut Vec<u8>,
) {
    // The raw bytes as a target too, so resolve sees far more than valid heads.
    let mut matched = Matched::NONE;
    if let Resolved::File { meta, .. } = resolve(&site.root, rules, data, scratch, &mut matched) {
        assert_ne!(
            (meta.dev(), meta.ino()),
            site.secret,
            "served a file outside the root"
        );
    }

    match parse(data, &Limits::default()) {
        Parsed::Complete { request, head_len } => {
            assert!(head_len <= data.len());
            if let Some(mut skipper) = BodySkipper::new(request.body) {
                if let Skip::Done { used } = skipper.skip(&data[head_len..], &Limits::default().body()) {
                    assert!(head_len + used <= data.len(), "body ends past the input");
                }
            }
            let plan = respond(&request, &site.root, rules, date, (scratch, codings), false, head);
            assert!(head.windows(4).any(|w| w == b"\r\n\r\n"), "head has no end");
            if let Body::File { file, offset, len } = plan.body {
                let meta = file.metadata().expect("fstat");
                assert_ne!((meta.dev(), meta.ino()), site.secret, "served the secret");
                assert!(
                    len > 0 && offset + len <= meta.len(),
                    "span outside the file"
                );
            }
        }
        Parsed::Invalid(kind) => {
            let plan = error_head(kind, date, head);
            assert!(plan.close);
        }
        Parsed::Partial => {}
    }
}
