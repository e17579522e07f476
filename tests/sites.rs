//! Site rules (SPEC section 7, docs/reference.md "Config-file-only keys") against the real
//! binary: hidden files, redirects, header rules. Each test writes its rules in a config
//! file beside a fresh document root.

use crate::util::*;

/// A daemon serving `files` (path under the root, content) with `rules` as its config file.
fn start(rules: &str, files: &[(&str, &str)]) -> Webd {
    let webd = Webd::spawn(Options {
        workers: 1,
        args: vec!["--heartbeat-timeout".into(), "3000".into()],
        config_toml: Some(rules.to_string()),
        ..Default::default()
    });
    for (rel, content) in files {
        let path = webd.root.join(rel);
        std::fs::create_dir_all(path.parent().expect("a file has a parent")).expect("create dir");
        std::fs::write(&path, content).expect("write file");
    }
    webd.wait_ready();
    webd
}

fn status(webd: &Webd, path: &str) -> u16 {
    get(webd.addr(), path).unwrap_or_else(|e| panic!("GET {path}: {e}")).status
}

const DOTFILES: &[(&str, &str)] = &[
    (".git/config", "[core]\n"),
    (".env", "SECRET=1\n"),
    ("a/.htaccess", "deny\n"),
    (".well-known/x", "well known\n"),
    (".well-known/acme-challenge/token", "token\n"),
    ("docs/index.html", "<p>docs</p>\n"),
    ("plain.txt", "plain\n"),
];

#[test]
fn hidden_files_are_404_by_default_except_well_known() {
    let webd = start("", DOTFILES);
    for path in ["/.git/config", "/.env", "/a/.htaccess", "/%2egit/config", "/a/../.env", "/.git/", "/.git"] {
        assert_eq!(status(&webd, path), 404, "{path}");
    }
    let known = get(webd.addr(), "/.well-known/x").expect("GET");
    assert_eq!((known.status, known.body.as_slice()), (200, &b"well known\n"[..]));
    assert_eq!(status(&webd, "/.well-known/acme-challenge/token"), 200);
    assert_eq!(status(&webd, "/docs/"), 200, "a directory index is unaffected");
    assert_eq!(status(&webd, "/"), 200);
    assert_eq!(status(&webd, "/plain.txt"), 200);
}

#[test]
fn hidden_files_allow_serves_them() {
    let webd = start("hidden_files = \"allow\"\n", DOTFILES);
    let env = get(webd.addr(), "/.env").expect("GET");
    assert_eq!((env.status, env.body.as_slice()), (200, &b"SECRET=1\n"[..]));
    assert_eq!(status(&webd, "/.git/config"), 200);
}

#[test]
fn a_bad_hidden_files_value_exits_2_naming_the_file_and_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("webd.toml");
    std::fs::write(&path, "hidden_files = \"maybe\"\n").expect("write");
    let (code, err) = run_webd(&["--config", &path.to_string_lossy(), "--admin", "off"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("webd.toml") && err.contains("hidden_files"), "{err}");
}
