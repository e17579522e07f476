//! Fuzz target: arbitrary bytes through the whole per-request path (parse, resolve,
//! respond, error heads, the body that follows a head) against a small document root with
//! symlinks pointing out of it. Crashes are panics; the target also asserts that nothing
//! outside the root is served and that a body never ends past the input.
#![no_main]

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::PathBuf;
use std::sync::OnceLock;

use webd::worker::body::{BodySkipper, Skip};
use webd::worker::date::DateCache;
use webd::worker::path::{resolve, Resolved, Root};
use webd::worker::request::{parse, Limits, Parsed};
use webd::worker::response::{error_head, respond, Body};
use libfuzzer_sys::fuzz_target;

/// The document root and the (dev, inode) of the secret file beside it.
struct Site {
    root: Root,
    secret: (u64, u64),
}

fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
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
        Site {
            root: Root::open(&dir).expect("root"),
            secret: (secret.dev(), secret.ino()),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let site = site();
    let date = DateCache::new();
    let mut scratch = Vec::new();
    let mut head = Vec::new();

    // The raw bytes as a target too, so resolve sees far more than valid heads.
    if let Resolved::File { meta, .. } = resolve(&site.root, data, &mut scratch) {
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
            let plan = respond(&request, &site.root, &date, &mut scratch, false, &mut head);
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
            let plan = error_head(kind, &date, &mut head);
            assert!(plan.close);
        }
        Parsed::Partial => {}
    }
});
