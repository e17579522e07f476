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

const REDIRECTS: &str = r#"
[[redirects]]
from = "/old/"
to = "/new/"
status = 301

[[redirects]]
from = "/page"
to = "/other.html"
status = 307

[[redirects]]
from = "/away/"
to = "https://example.org/"
status = 308
"#;

fn redirect(webd: &Webd, path: &str) -> (u16, Option<String>) {
    let response = get(webd.addr(), path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (response.status, response.header("location").map(str::to_string))
}

#[test]
fn redirects_by_prefix_keep_the_rest_and_the_query_and_exact_ones_match_exactly() {
    let webd = start(REDIRECTS, &[("old/kept.txt", "not served\n"), ("page/index.html", "dir\n")]);
    assert_eq!(redirect(&webd, "/old/a/b.html?x=1&y=2"), (301, Some("/new/a/b.html?x=1&y=2".into())));
    assert_eq!(redirect(&webd, "/old/kept.txt"), (301, Some("/new/kept.txt".into())), "before the file");
    assert_eq!(redirect(&webd, "/old/%C3%A9t%C3%A9"), (301, Some("/new/%C3%A9t%C3%A9".into())));
    assert_eq!(redirect(&webd, "/page?q=1"), (307, Some("/other.html?q=1".into())));
    assert_eq!(redirect(&webd, "/page/"), (200, None), "exact means exact");
    assert_eq!(redirect(&webd, "/away/x/y"), (308, Some("https://example.org/x/y".into())));
    assert_eq!(redirect(&webd, "/oldish"), (404, None));
    let response = get(webd.addr(), "/old/").expect("GET");
    assert!(!response.body.is_empty() && response.header("content-type").is_some(), "a small body");
    let mut conn = connect(webd.addr());
    conn.send(b"HEAD /page HTTP/1.1\r\nHost: t\r\n\r\nGET /plain.txt HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let head = conn.head_response(IO_TIMEOUT).expect("HEAD");
    assert_eq!((head.status, head.header("location")), (307, Some("/other.html")));
    assert_eq!(conn.response(IO_TIMEOUT).expect("the next response").status, 404, "no body after the head");
}

#[test]
fn a_bad_redirect_status_exits_2_naming_the_file_and_the_rule() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("webd.toml");
    let text = format!("{REDIRECTS}\n[[redirects]]\nfrom = \"/x\"\nto = \"/y\"\nstatus = 303\n");
    std::fs::write(&path, text).expect("write");
    let (code, err) = run_webd(&["--config", &path.to_string_lossy(), "--admin", "off"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("webd.toml") && err.contains("redirects[3]") && err.contains("303"), "{err}");
}

#[test]
fn header_rules_apply_to_matching_paths_only_every_match_in_order() {
    let rules = r#"
[[headers]]
match = "/assets/**"
set = { "Cache-Control" = "public, max-age=31536000, immutable" }

[[headers]]
match = "/**/*.css"
set = { "X-Kind" = "style", "X-Extra" = "1" }

[[headers]]
match = "/*.txt"
set = { "X-Top" = "text" }
"#;
    let files =
        [("assets/app.js", "js\n"), ("assets/css/site.css", "css\n"), ("plain.txt", "plain\n"), ("sub/a.txt", "a\n")];
    let webd = start(rules, &files);
    let header = |path: &str, name: &str| {
        let response = get(webd.addr(), path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (response.status, response.header(name).map(str::to_string))
    };
    let immutable = Some("public, max-age=31536000, immutable".to_string());
    assert_eq!(header("/assets/app.js", "cache-control"), (200, immutable.clone()));
    assert_eq!(header("/assets/css/site.css", "cache-control"), (200, immutable.clone()));
    assert_eq!(header("/assets/css/site.css", "x-kind"), (200, Some("style".into())));
    assert_eq!(header("/assets/css/site.css", "x-extra"), (200, Some("1".into())));
    assert_eq!(header("/assets/missing.js", "cache-control"), (404, immutable.clone()), "4xx of a path too");
    assert_eq!(header("/assets/app.js", "x-kind"), (200, None));
    assert_eq!(header("/plain.txt", "x-top"), (200, Some("text".into())));
    assert_eq!(header("/sub/a.txt", "x-top"), (200, None), "* stays within a segment");
    assert_eq!(header("/plain.txt", "cache-control"), (200, None));
    assert_eq!(header("/", "cache-control"), (200, None));
    let bad = request(webd.addr(), "GET /assets/%zz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("GET");
    assert_eq!((bad.status, bad.header("cache-control")), (400, None), "not on a 400");
}

#[test]
fn a_bad_header_rule_exits_2_naming_the_file_and_the_rule() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("webd.toml");
    std::fs::write(&path, "[[headers]]\nmatch = \"/a\"\nset = { \"Bad Name\" = \"1\" }\n").expect("write");
    let (code, err) = run_webd(&["--config", &path.to_string_lossy(), "--admin", "off"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("webd.toml") && err.contains("headers[0]") && err.contains("Bad Name"), "{err}");
}

#[test]
fn fallback_serves_its_file_with_200_for_paths_that_match_no_file() {
    let files = [("app.html", "<p>app</p>\n"), ("real.txt", "real\n"), (".env", "SECRET=1\n")];
    let webd = start("fallback = \"/app.html\"\n", &files);
    for path in ["/some/route", "/missing.js?x=1", "/deep/er/path/"] {
        let response = get(webd.addr(), path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!((response.status, response.body.as_slice()), (200, &b"<p>app</p>\n"[..]), "{path}");
        assert_eq!(response.header("content-type"), Some("text/html; charset=utf-8"), "{path}");
    }
    let real = get(webd.addr(), "/real.txt").expect("GET");
    assert_eq!((real.status, real.body.as_slice()), (200, &b"real\n"[..]));
    assert_eq!(status(&webd, "/.env"), 404, "a hidden path is not a route");
    assert_eq!(status(&webd, "/../x"), 403);
}

const ERROR_PAGES: &str = r#"
error_pages = { 404 = "/errors/404.html", 403 = "/403.txt", 405 = "/missing.html" }
"#;

#[test]
fn error_pages_keep_the_status_with_the_file_as_body_and_missing_ones_fall_back() {
    let files = [("errors/404.html", "<h1>lost</h1>\n"), ("403.txt", "no\n"), (".env", "SECRET=1\n")];
    let webd = start(ERROR_PAGES, &files);
    for path in ["/nope", "/deep/er/", "/.env"] {
        let response = get(webd.addr(), path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!((response.status, response.body.as_slice()), (404, &b"<h1>lost</h1>\n"[..]), "{path}");
        assert_eq!(response.header("content-type"), Some("text/html; charset=utf-8"), "{path}");
        assert_eq!(response.header("content-length"), Some("14"), "{path}");
        for validator in ["etag", "last-modified", "accept-ranges"] {
            assert_eq!(response.header(validator), None, "{path}: no {validator} on an error page");
        }
    }
    let ranged = request(
        webd.addr(),
        "GET /nope HTTP/1.1\r\nHost: t\r\nRange: bytes=0-3\r\nIf-None-Match: *\r\nConnection: close\r\n\r\n",
    )
    .expect("GET");
    assert_eq!((ranged.status, ranged.body.len()), (404, 14), "no 206 or 304 of an error page");
    let forbidden = get(webd.addr(), "/../x").expect("GET");
    assert_eq!((forbidden.status, forbidden.body.as_slice()), (403, &b"no\n"[..]));
    assert_eq!(forbidden.header("content-type"), Some("text/plain; charset=utf-8"));
    let builtin = request(webd.addr(), "POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("POST");
    assert_eq!((builtin.status, builtin.header("allow")), (405, Some("GET, HEAD")), "a missing page: the built-in one");
    assert!(String::from_utf8_lossy(&builtin.body).contains("405"), "{:?}", builtin.body);
    let mut conn = connect(webd.addr());
    conn.send(b"HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /403.txt HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let head = conn.head_response(IO_TIMEOUT).expect("HEAD");
    assert_eq!((head.status, head.header("content-length")), (404, Some("14")));
    let next = conn.response(IO_TIMEOUT).expect("the next response");
    assert_eq!((next.status, next.body.as_slice()), (200, &b"no\n"[..]), "no body after the HEAD's head");
    let log = webd.log_text();
    assert!(log.contains("405") && log.contains("missing.html") && log.contains("built-in page"), "{log}");
}

#[test]
fn a_bad_error_page_key_exits_2_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("webd.toml");
    std::fs::write(&path, "error_pages = { 404 = \"/404.html\", 4O4 = \"/x.html\" }\n").expect("write");
    let (code, err) = run_webd(&["--config", &path.to_string_lossy(), "--admin", "off"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("webd.toml") && err.contains("error_pages") && err.contains("4O4"), "{err}");
}

const LISTED: &[(&str, &str)] =
    &[("pub/a b.txt", "hello"), ("pub/sub/x", "x\n"), ("pub/.hidden", "h\n"), ("pub/<i>&.txt", "i\n")];

/// `pub/` of `LISTED` plus symlinks: one inside the root, one leading out, one broken.
fn start_listing(rules: &str) -> Webd {
    let webd = start(rules, LISTED);
    let link = |target: &str, name: &str| {
        std::os::unix::fs::symlink(target, webd.root.join("pub").join(name)).expect("symlink");
    };
    link("a b.txt", "in");
    link("../../webd.toml", "out");
    link("nowhere", "broken");
    webd
}

fn listing(webd: &Webd, accept: Option<&str>) -> Response {
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    request(webd.addr(), &format!("GET /pub/ HTTP/1.1\r\nHost: t\r\n{accept}Connection: close\r\n\r\n")).expect("GET")
}

#[test]
fn directory_listing_lists_servable_entries_as_html_or_json() {
    let webd = start_listing("directory_listing = true\n");
    let page = listing(&webd, Some("text/html,application/xhtml+xml,*/*;q=0.8"));
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(page.header("vary"), Some("Accept"));
    let html = String::from_utf8(page.body.clone()).expect("UTF-8");
    assert!(html.contains("<a href=\"a%20b.txt\">a b.txt</a></td><td>5</td>"), "{html}");
    assert!(html.contains("<a href=\"sub/\">sub/</a></td><td>-</td>"), "{html}");
    assert!(html.contains("<a href=\"%3Ci%3E%26.txt\">&lt;i&gt;&amp;.txt</a>"), "{html}");
    assert!(html.contains("<a href=\"in\">in</a></td><td>5</td>"), "a link inside the root: {html}");
    assert!(html.contains("<a href=\"../\">"), "{html}");
    for absent in [".hidden", "out", "broken"] {
        assert!(!html.contains(&format!(">{absent}<")), "{absent} is not listed: {html}");
    }
    let json = listing(&webd, Some("application/json"));
    assert_eq!((json.status, json.header("content-type")), (200, Some("application/json")));
    assert_eq!(json.header("vary"), Some("Accept"));
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&json.body).expect("a JSON array");
    let names: Vec<&str> = entries.iter().map(|e| e["name"].as_str().expect("a name")).collect();
    assert_eq!(names, ["<i>&.txt", "a b.txt", "in", "sub"]);
    assert_eq!((entries[1]["type"].as_str(), entries[1]["size"].as_u64()), (Some("file"), Some(5)));
    assert_eq!((entries[3]["type"].as_str(), entries[3]["size"].is_null()), (Some("directory"), true));
    assert!(entries[1]["mtime"].as_str().is_some_and(|t| t.len() == 20 && t.ends_with('Z')), "{:?}", entries[1]);
    let mut conn = connect(webd.addr());
    conn.send(b"HEAD /pub/ HTTP/1.1\r\nHost: t\r\n\r\nGET /pub/a%20b.txt HTTP/1.1\r\nHost: t\r\n\r\n").expect("send");
    let head = conn.head_response(IO_TIMEOUT).expect("HEAD");
    assert_eq!((head.status, head.header("content-length")), (200, Some(page.body.len().to_string().as_str())));
    assert_eq!(conn.response(IO_TIMEOUT).expect("the file").body, b"hello", "no body after the HEAD's head");
    assert_eq!(redirect(&webd, "/pub"), (301, Some("/pub/".into())));
    assert_eq!(status(&webd, "/"), 200, "a directory with an index serves it");
    assert_eq!(status(&webd, "/pub/sub/"), 200);
    assert_eq!(status(&webd, "/pub/.hidden/"), 404);
}

#[test]
fn directory_listing_is_off_by_default_and_shows_hidden_entries_when_allowed() {
    let webd = start_listing("");
    assert_eq!(listing(&webd, None).status, 404, "no listing unless asked for");
    drop(webd);
    let webd = start_listing("directory_listing = true\nhidden_files = \"allow\"\n");
    let html = String::from_utf8(listing(&webd, None).body).expect("UTF-8");
    assert!(html.contains("<a href=\".hidden\">.hidden</a>"), "{html}");
    assert!(!html.contains(">out<"), "{html}");
}
