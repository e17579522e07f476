//! Virtual hosts (`[[sites]]`, docs/reference.md "Config-file-only keys" and HTTP) against
//! the real binary: the site picked by Host (exact, wildcard, any case, port ignored), by
//! SNI when there is no Host, an unknown Host served by the default site, per-site rules
//! over the top level's, a reload switching a site's root, and bad sites refused.

use crate::util::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Site roots made before the daemon starts (a site's root must exist when it loads).
struct SiteRoots {
    dir: tempfile::TempDir,
}

impl SiteRoots {
    fn new(files: &[(&str, &str)]) -> SiteRoots {
        let dir = tempfile::tempdir().expect("tmp");
        let roots = SiteRoots { dir };
        roots.write(files);
        roots
    }

    fn write(&self, files: &[(&str, &str)]) {
        for (rel, content) in files {
            let path = self.path(rel);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&path, content).expect("write");
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `text` with `{sites}` replaced by this directory.
    fn config(&self, text: &str) -> String {
        text.replace("{sites}", &self.dir.path().to_string_lossy())
    }
}

fn start(config: String, top_files: &[(&str, &str)], extra_args: &[&str]) -> Webd {
    let mut args = vec!["--heartbeat-timeout".to_string(), "3000".to_string()];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let webd = Webd::spawn(Options { workers: 1, args, config_toml: Some(config), ..Default::default() });
    for (rel, content) in top_files {
        std::fs::write(webd.root.join(rel), content).expect("write");
    }
    webd.wait_ready();
    webd
}

fn get_host(webd: &Webd, host: &str, path: &str) -> Response {
    request(webd.addr(), &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
        .unwrap_or_else(|e| panic!("GET {path} for {host}: {e}"))
}

fn body_for(webd: &Webd, host: &str) -> String {
    String::from_utf8_lossy(&get_host(webd, host, "/").body).into_owned()
}

const SITES: &str = r#"
error_pages = { 404 = "/404.html" }

[[headers]]
match = "/**"
set = { "X-Top" = "1" }

[[sites]]
hosts = ["example.org", "*.example.org"]
root = "{sites}/a"
directory_listing = true
headers = []

[[sites]]
hosts = ["Other.test"]
root = "{sites}/b"
hidden_files = "allow"
error_pages = { 404 = "/missing.html" }
"#;

const SITE_FILES: &[(&str, &str)] = &[
    ("a/index.html", "site a\n"),
    ("a/404.html", "a 404\n"),
    ("a/dir/f.txt", "f\n"),
    ("b/index.html", "site b\n"),
    ("b/.env", "B=1\n"),
];

#[test]
fn a_site_is_picked_by_host_exact_or_wildcard_and_an_unknown_host_gets_the_default() {
    let roots = SiteRoots::new(SITE_FILES);
    let webd = start(roots.config(SITES), &[("404.html", "top 404\n"), (".env", "TOP=1\n")], &[]);
    let default = String::from_utf8_lossy(BODY).into_owned();
    assert_eq!(body_for(&webd, "example.org"), "site a\n");
    assert_eq!(body_for(&webd, "EXAMPLE.org:8080"), "site a\n", "any case, port ignored");
    assert_eq!(body_for(&webd, "www.example.org"), "site a\n", "wildcard");
    assert_eq!(body_for(&webd, "a.b.example.org"), default, "a wildcard covers one label");
    assert_eq!(body_for(&webd, "other.test"), "site b\n");
    assert_eq!(body_for(&webd, "unknown.test"), default);
    assert_eq!(body_for(&webd, "127.0.0.1"), default);
    let http10 = request(webd.addr(), "GET / HTTP/1.0\r\n\r\n").expect("GET");
    assert_eq!(String::from_utf8_lossy(&http10.body), default, "no Host: the default site");
    let absolute =
        request(webd.addr(), "GET http://other.test/ HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\n\r\n")
            .expect("GET");
    assert_eq!(absolute.body, b"site b\n", "an absolute-form target's authority wins over Host");
}

#[test]
fn a_site_s_own_rules_override_the_top_level_and_the_rest_is_inherited() {
    let roots = SiteRoots::new(SITE_FILES);
    let webd = start(roots.config(SITES), &[("404.html", "top 404\n"), (".env", "TOP=1\n")], &[]);
    // Top level: header rule, hidden files denied, its 404 page, no listing.
    let top = get_host(&webd, "unknown.test", "/nope");
    assert_eq!((top.status, top.body.as_slice(), top.header("x-top")), (404, &b"top 404\n"[..], Some("1")));
    assert_eq!(get_host(&webd, "unknown.test", "/.env").status, 404);
    // Site a: its own (empty) header rules and listing; the top level's error_pages,
    // read beneath its own root.
    let a = get_host(&webd, "example.org", "/nope");
    assert_eq!((a.status, a.body.as_slice(), a.header("x-top")), (404, &b"a 404\n"[..], None));
    let listing = get_host(&webd, "example.org", "/dir/");
    assert_eq!((listing.status, listing.header("vary")), (200, Some("Accept")));
    assert!(String::from_utf8_lossy(&listing.body).contains("<a href=\"f.txt\">f.txt</a>"), "{listing:?}");
    assert_eq!(get_host(&webd, "example.org", "/.env").status, 404, "hidden files: the top level's deny");
    // Site b: hidden files allowed; its error page file missing, so the built-in page;
    // the top level's header rules.
    let env = get_host(&webd, "other.test", "/.env");
    assert_eq!((env.status, env.body.as_slice(), env.header("x-top")), (200, &b"B=1\n"[..], Some("1")));
    let missing = get_host(&webd, "other.test", "/nope");
    assert_eq!(missing.status, 404);
    assert!(String::from_utf8_lossy(&missing.body).contains("404") && missing.body != b"top 404\n");
    let log = webd.log_text();
    assert!(log.contains("site Other.test") && log.contains("missing.html"), "the missing page is a warning: {log}");
}

#[test]
fn a_reload_switches_a_site_s_root_and_a_bad_site_is_refused_changing_nothing() {
    let roots = SiteRoots::new(&[("a/index.html", "site a\n"), ("c/index.html", "site c\n")]);
    let config =
        |root: &str| roots.config(&format!("[[sites]]\nhosts = [\"example.org\"]\nroot = \"{{sites}}/{root}\"\n"));
    let webd = start(config("a"), &[], &[]);
    assert_eq!(body_for(&webd, "example.org"), "site a\n");
    let path = webd.dir.path().join("webd.toml");
    std::fs::write(&path, config("c")).expect("rewrite config");
    let out = webd.webctl(&["reload"]);
    assert_eq!(out.code, Some(0), "reload: {}{}", out.stdout, out.stderr);
    assert_eq!(body_for(&webd, "example.org"), "site c\n", "the new root once the reload answered");
    std::fs::write(&path, config("gone")).expect("rewrite config");
    let out = webd.webctl(&["reload"]);
    assert_ne!(out.code, Some(0), "a missing site root is refused: {}{}", out.stdout, out.stderr);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("webd.toml") && said.contains("sites[0]") && said.contains("gone"), "{said}");
    assert_eq!(body_for(&webd, "example.org"), "site c\n", "still the running configuration");
}

#[test]
fn two_sites_claiming_one_host_exit_2_naming_the_file_and_the_site() {
    let roots = SiteRoots::new(&[("a/index.html", "a\n")]);
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("webd.toml");
    let text = "[[sites]]\nhosts = [\"a.org\"]\nroot = \"{sites}/a\"\n[[sites]]\nhosts = [\"b.org\", \"A.ORG\"]\nroot = \"{sites}/a\"\n";
    std::fs::write(&path, roots.config(text)).expect("write");
    let (code, err) = run_webd(&["--config", &path.to_string_lossy(), "--admin", "off"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("webd.toml") && err.contains("sites[1]") && err.contains("claimed by sites[0]"), "{err}");
    std::fs::write(&path, roots.config("[[sites]]\nhosts = [\"a.org\"]\nroot = \"{sites}/nope\"\n")).expect("write");
    let (code, err) = run_webd(&["--config", &path.to_string_lossy(), "--admin", "off"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("webd.toml") && err.contains("sites[0]") && err.contains("nope"), "{err}");
}

/// An HTTP/1.0 GET without Host over TLS with SNI `name`: the body.
fn tls_get_without_host(addr: std::net::SocketAddr, ca: &TestCa, name: &str) -> Vec<u8> {
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("a DNS name");
    let conn = rustls::ClientConnection::new(ca.client(&[]), server).expect("client connection");
    let mut tls = rustls::StreamOwned::new(conn, tcp_to(addr));
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("send");
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => panic!("read over TLS: {e}"),
    }
    parse_response(&raw).unwrap_or_else(|| panic!("no response in {raw:?}")).0.body
}

#[test]
fn on_https_the_sni_name_picks_the_site_when_there_is_no_host() {
    let roots = SiteRoots::new(&[("a/index.html", "site a\n")]);
    let ca = TestCa::new();
    let cert = ca.issue(roots.dir.path(), "cert", &["a.test", "example.org"]);
    let text = roots.config("[[sites]]\nhosts = [\"example.org\"]\nroot = \"{sites}/a\"\n");
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let (cert_path, key_path) = (path(&cert.cert), path(&cert.key));
    let args = ["--tls-listen", "127.0.0.1:0", "--tls-cert", &cert_path, "--tls-key", &key_path];
    let webd = start(text, &[], &args);
    let addr = wait_for(std::time::Duration::from_secs(10), "tls_listen in status", || {
        webd.status_json()["status"]["tls_listen"].get(0)?.as_str()?.parse().ok()
    });
    assert_eq!(tls_get_without_host(addr, &ca, "example.org"), b"site a\n");
    assert_eq!(tls_get_without_host(addr, &ca, "a.test"), BODY, "an SNI name no site claims: the default");
    let with_host = tls_get(tcp_to(addr), &ca.client(&[]), "a.test", "/").expect("GET");
    assert_eq!(with_host.body, BODY, "Host (a.test) wins over SNI");
}
