//! The settings table against the flags, the config file, the reload rule and
//! docs/reference.md.

use super::*;
use clap::CommandFactory;
use std::collections::BTreeSet;

fn flag_accepts(setting: &Setting, value: &str) -> bool {
    Cli::try_parse_from(["webd".to_string(), format!("--{}={value}", setting.flag())]).is_ok()
}

fn file_accepts(setting: &Setting, value: &str) -> bool {
    file_settings(&format!("{} = {value}\n", setting.key), Path::new("/etc/webd/webd.toml")).is_ok()
}

#[test]
fn every_default_given_as_a_flag_value_parses() {
    let config = Config::with_defaults(Cli::default());
    assert_eq!(config.listen, vec![SocketAddr::from(([127, 0, 0, 1], 8080))]);
    assert_eq!(config.admin, Admin::At(SocketAddr::from(([127, 0, 0, 1], 9180))));
    assert_eq!((config.grace, config.max_connections, config.user), (Millis(1000), 16_384, None));
}

#[test]
fn flag_and_file_accept_the_same_range() {
    let ranged: Vec<_> = SETTINGS.iter().filter(|s| s.range.is_some()).collect();
    assert!(ranged.len() >= 8, "every numeric setting has a range");
    for setting in ranged {
        let range = setting.range.clone().expect("filtered");
        let (min, max) = (i128::from(*range.start()), i128::from(*range.end()));
        for (value, accepted) in [(min, true), (max, true), (min - 1, false), (max + 1, false)] {
            let value = value.to_string();
            if setting.flag {
                assert_eq!(flag_accepts(setting, &value), accepted, "--{} {value}", setting.flag());
            }
            assert_eq!(file_accepts(setting, &value), accepted, "{} = {value}", setting.key);
        }
        let refused = file_settings(&format!("{} = {}\n", setting.key, max + 1), Path::new("/etc/webd/webd.toml"));
        let message = refused.expect_err("out of range").to_string();
        assert!(message.contains(setting.key) && message.contains("/etc/webd/webd.toml"), "{message}");
    }
}

#[test]
fn flag_and_file_accept_the_same_admin_values() {
    let admin = SETTINGS.iter().find(|s| s.key == "admin").expect("admin is a setting");
    for (value, accepted) in [("off", true), ("127.0.0.1:1", true), ("[::1]:1", true), ("bogus", false), ("", false)] {
        assert_eq!(flag_accepts(admin, value), accepted, "--admin {value:?}");
        assert_eq!(file_accepts(admin, &format!("{value:?}")), accepted, "admin = {value:?}");
    }
}

/// Two flag values of every setting, different from each other.
fn samples(setting: &Setting) -> [String; 2] {
    if let Some(range) = &setting.range {
        return [range.start().to_string(), range.end().to_string()];
    }
    let [a, b] = match setting.key {
        "listen" => ["127.0.0.1:1", "127.0.0.1:2"],
        "root" => ["/srv/a", "/srv/b"],
        "admin" => ["off", "127.0.0.1:3"],
        "control_socket" => ["/run/a.sock", "/run/b.sock"],
        "access_log" => ["off", "-"],
        "log_format" => ["text", "json"],
        "access_log_format" => ["combined", "json"],
        "user" => ["alice", "bob"],
        "tls_listen" => ["127.0.0.1:4431", "127.0.0.1:4432"],
        "tls_cert" => ["/etc/a.pem", "/etc/b.pem"],
        "tls_key" => ["/etc/a.key", "/etc/b.key"],
        "certificates" => [r#"[{cert = "/a.pem", key = "/a.key"}]"#, r#"[{cert = "/b.pem", key = "/b.key"}]"#],
        "hidden_files" => ["\"deny\"", "\"allow\""],
        "fallback" => ["\"/index.html\"", "\"/app.html\""],
        "error_pages" => ["{}", "{ 404 = \"/404.html\" }"],
        "directory_listing" => ["false", "true"],
        "sites" => [
            "[{ hosts = [\"a.org\"], root = \"/\" }]",
            "[{ hosts = [\"b.org\"], root = \"/tmp\", fallback = \"/i.html\" }]",
        ],
        "headers" => ["[]", "[{ match = \"/assets/**\", set = { \"Cache-Control\" = \"no-cache\" } }]"],
        "redirects" => ["[]", "[{ from = \"/old/\", to = \"/new/\", status = 301 }]"],
        "redirect_to_https" => ["false", "true"],
        other => panic!("no sample values for the setting {other}: add two here"),
    };
    [a.to_string(), b.to_string()]
}

/// A configuration with sample `pick` of every setting: flags for those that have one,
/// a config file (the samples are TOML values) for the others.
fn config_with(pick: usize) -> Config {
    let mut argv = vec!["webd".to_string()];
    argv.extend(SETTINGS.iter().filter(|s| s.flag).map(|s| format!("--{}={}", s.flag(), samples(s)[pick])));
    let flags = Cli::try_parse_from(argv).expect("the samples parse");
    let file: String =
        SETTINGS.iter().filter(|s| !s.flag).map(|s| format!("{} = {}\n", s.key, samples(s)[pick])).collect();
    let file = file_settings(&file, Path::new("/etc/webd/webd.toml")).expect("the file samples parse");
    Config::with_defaults(flags.over(file).0)
}

fn by_key(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(config).expect("a Config serializes") {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

#[test]
fn the_reload_rule_covers_every_setting() {
    let (running, new) = (config_with(0), config_with(1));
    let (running_keys, new_keys) = (by_key(&running), by_key(&new));
    let keys: BTreeSet<_> = SETTINGS.iter().map(|s| s.key.to_string()).collect();
    assert_eq!(running_keys.keys().cloned().collect::<BTreeSet<_>>(), keys, "every Config field is a setting");
    let (reloaded, kept) = running.reloaded(new);
    let reloaded = by_key(&reloaded);
    for setting in SETTINGS {
        let key = setting.key;
        assert_ne!(running_keys[key], new_keys[key], "{key}: the samples differ");
        let (wanted, warned) = match setting.reload {
            Reload::Live => (&new_keys[key], false),
            Reload::Fixed => (&running_keys[key], true),
        };
        assert_eq!(&reloaded[key], wanted, "{key} after a reload");
        assert_eq!(kept.contains(&key), warned, "{key}: a reload warns about a fixed setting only");
    }
}

#[test]
fn what_a_reload_changes_live_is_what_it_always_did() {
    let live: Vec<_> = SETTINGS.iter().filter(|s| s.reload == Reload::Live).map(|s| s.key).collect();
    let wanted = [
        "root",
        "workers",
        "access_log",
        "access_log_format",
        "grace",
        "drain_timeout",
        "header_timeout",
        "keepalive_timeout",
        "max_connections",
        "max_header_fields",
        "max_requests_per_connection",
        "tls_cert",
        "tls_key",
        "certificates",
        "hidden_files",
        "redirects",
        "headers",
        "fallback",
        "error_pages",
        "directory_listing",
        "sites",
        "compress_cache_mib",
        "redirect_to_https",
    ];
    assert_eq!(live, wanted);
}

#[test]
fn help_shows_each_default() {
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("Milliseconds between heartbeats of every child [default: 100]"), "{help}");
    assert!(help.contains("Worker processes [default: number of CPUs]"), "{help}");
    assert!(help.contains("missed (3 misses = hung) [default: 200]"), "{help}");
    assert!(help.contains("workers after binding\n"), "--user has no default: {help}");
}

/// The rows of the markdown table under `heading` in docs/reference.md.
fn reference_rows(heading: &str) -> Vec<&'static str> {
    let reference = include_str!("../../docs/reference.md");
    let section = reference.split(heading).nth(1).expect("the reference has the section");
    section.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).skip(2).collect()
}

#[test]
fn the_reference_documents_every_setting_as_the_table_defines_it() {
    let rows = reference_rows("## webd flags and config file");
    for setting in SETTINGS.iter().filter(|s| s.flag) {
        let flag = format!("| `--{} ", setting.flag());
        let row = rows.iter().find(|r| r.starts_with(&flag)).unwrap_or_else(|| panic!("no row for {flag}"));
        assert!(row.contains(&format!("| `{}`", setting.key)), "{row}");
        if let DefaultValue::Flag(value) = setting.default {
            assert!(row.contains(&format!("| `{value}` |")), "default {value}: {row}");
        }
        if let Some(range) = &setting.range {
            assert!(row.contains(&format!("| {}–{}", range.start(), range.end())), "range {range:?}: {row}");
        }
    }
    let flags: BTreeSet<_> = SETTINGS.iter().filter(|s| s.flag).map(|s| format!("--{}", s.flag())).collect();
    for row in rows {
        let documented = row.split('`').nth(1).and_then(|f| f.split(' ').next()).unwrap_or_default();
        let known = flags.contains(documented) || ["--config", "--check-config", "-h", "-V"].contains(&documented);
        assert!(known, "the reference documents a flag that is not a setting: {row}");
    }
}

#[test]
fn the_reference_sorts_settings_into_live_and_fixed_as_the_table_does() {
    let rows = reference_rows("## Reload (SIGHUP)");
    let cells: Vec<_> = rows[0].split('|').collect();
    for setting in SETTINGS {
        let column = match setting.reload {
            Reload::Live => cells[1],
            Reload::Fixed => cells[2],
        };
        assert!(column.contains(&format!("`{}`", setting.key)), "{} is {:?}: {column}", setting.key, setting.reload);
    }
}

#[test]
fn the_reference_documents_every_file_only_setting() {
    let rows = reference_rows("## Config-file-only keys");
    for setting in SETTINGS.iter().filter(|s| !s.flag) {
        let key = format!("| `{}`", setting.key);
        assert!(rows.iter().any(|r| r.starts_with(&key)), "no row for {key} under Config-file-only keys");
    }
}

#[test]
fn a_bad_redirect_is_refused_naming_the_file_and_the_rule() {
    let ok = "[[redirects]]\nfrom = \"/a/\"\nto = \"/b/\"\nstatus = 308\n";
    for (bad, needle) in [
        ("from = \"/x\"\nto = \"/y\"\nstatus = 303\n", "status = 303"),
        ("from = \"x\"\nto = \"/y\"\nstatus = 301\n", "from"),
        ("from = \"/x\"\nto = \"/y z\"\nstatus = 301\n", "to"),
    ] {
        let text = format!("{ok}[[redirects]]\n{bad}");
        let refused = file_settings(&text, Path::new("/etc/webd/webd.toml")).expect_err(bad).to_string();
        assert!(refused.contains("/etc/webd/webd.toml") && refused.contains("redirects[1]"), "{refused}");
        assert!(refused.contains(needle), "{refused}");
    }
    let file = file_settings(ok, Path::new("/etc/webd/webd.toml")).expect("a good rule");
    assert_eq!(file.redirects.expect("given")[0].status, 308);
}

#[test]
fn a_bad_header_rule_is_refused_naming_the_file_and_the_rule() {
    for (bad, needle) in [
        ("match = \"assets/*\"\nset = { X = \"1\" }\n", "starts with /"),
        ("match = \"/a**\"\nset = { X = \"1\" }\n", "whole segment"),
        ("match = \"/a\"\nset = { \"X Y\" = \"1\" }\n", "token"),
        ("match = \"/a\"\nset = { X = \"a\\r\\nInjected: 1\" }\n", "visible ASCII"),
        ("match = \"/a\"\nset = { \"content-length\" = \"1\" }\n", "written by webd"),
        ("match = \"/a\"\nset = {}\n", "no header"),
    ] {
        let text = format!("[[headers]]\nmatch = \"/**\"\nset = {{ X-Ok = \"1\" }}\n[[headers]]\n{bad}");
        let refused = file_settings(&text, Path::new("/etc/webd/webd.toml")).expect_err(bad).to_string();
        assert!(refused.contains("/etc/webd/webd.toml") && refused.contains("headers[1]"), "{refused}");
        assert!(refused.contains(needle), "{needle}: {refused}");
    }
}

#[test]
fn a_bad_error_page_is_refused_naming_the_file_and_the_key() {
    for (bad, needle) in [
        ("{ 401 = \"/401.html\" }", "\"401\""),
        ("{ nope = \"/x.html\" }", "\"nope\""),
        ("{ 404 = \"404.html\" }", "404 = \"404.html\""),
        ("{ 404 = \"/errors/\" }", "beneath the root"),
        ("{ 404 = \"/../404.html\" }", "beneath the root"),
    ] {
        let text = format!("error_pages = {bad}\n");
        let refused = file_settings(&text, Path::new("/etc/webd/webd.toml")).expect_err(bad).to_string();
        assert!(refused.contains("/etc/webd/webd.toml") && refused.contains("error_pages"), "{refused}");
        assert!(refused.contains(needle), "{needle}: {refused}");
    }
    let file = file_settings("error_pages = { 404 = \"/404.html\", 403 = \"/e/403.htm\" }\n", Path::new("/w.toml"))
        .expect("good pages");
    assert_eq!(file.error_pages.expect("given").len(), 2);
}

#[test]
fn a_missing_error_page_file_is_a_warning_naming_it() {
    let root = tempfile::tempdir().expect("tmp");
    std::fs::write(root.path().join("404.html"), "gone").expect("write");
    let mut config = Config::with_defaults(Cli::default());
    config.root = root.path().to_path_buf();
    config.error_pages = [("404", "/404.html"), ("403", "/403.html")].map(|(k, v)| (k.into(), v.into())).into();
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("403") && warnings[0].contains("403.html"), "{warnings:?}");
}

#[test]
fn a_bad_site_is_refused_naming_the_file_and_the_site() {
    let good = "[[sites]]\nhosts = [\"a.org\", \"*.a.org\"]\nroot = \"/\"\n";
    for (bad, needle) in [
        ("hosts = [\"A.org\"]\nroot = \"/\"\n", "also claimed by sites[0]"),
        ("hosts = []\nroot = \"/\"\n", "names no host"),
        ("hosts = [\"b.*.org\"]\nroot = \"/\"\n", "wildcard"),
        ("hosts = [\"*\"]\nroot = \"/\"\n", "wildcard"),
        ("hosts = [\"b.org:8080\"]\nroot = \"/\"\n", "port"),
        ("hosts = [\"b..org\"]\nroot = \"/\"\n", "not a host name"),
        ("hosts = [\"b.org\"]\nroot = \"/no/such/dir/here\"\n", "/no/such/dir/here"),
        ("hosts = [\"b.org\"]\nroot = \"/\"\nfallback = \"x\"\n", "fallback"),
        ("hosts = [\"b.org\"]\nroot = \"/\"\nerror_pages = { 999 = \"/x.html\" }\n", "999"),
        (
            "hosts = [\"b.org\"]\nroot = \"/\"\n[[sites.redirects]]\nfrom = \"/a\"\nto = \"/b\"\nstatus = 303\n",
            "redirects[0]",
        ),
    ] {
        let text = format!("{good}[[sites]]\n{bad}");
        let refused = file_settings(&text, Path::new("/etc/webd/webd.toml")).expect_err(bad).to_string();
        assert!(refused.contains("/etc/webd/webd.toml") && refused.contains("sites[1] (hosts = ["), "{refused}");
        assert!(refused.contains(needle), "{needle}: {refused}");
    }
    let unknown = format!("{good}[[sites]]\nhosts = [\"b.org\"]\nroot = \"/\"\nlisting = true\n");
    let refused = file_settings(&unknown, Path::new("/etc/webd/webd.toml")).expect_err("unknown key").to_string();
    assert!(refused.contains("line 7") && refused.contains("unknown field `listing`"), "{refused}");
    let file = file_settings(
        &format!("{good}[[sites]]\nhosts = [\"[::1]\", \"b_c.org\"]\nroot = \"tmp/..\"\n"),
        Path::new("/w.toml"),
    )
    .expect("good sites");
    let sites = file.sites.expect("given");
    assert_eq!(sites[1].root, Path::new("/"), "relative to the file's directory, canonical");
}

#[test]
fn a_site_takes_the_rules_it_does_not_set_from_the_top_level() {
    let text =
        "fallback = \"/app.html\"\ndirectory_listing = true\n[[headers]]\nmatch = \"/**\"\nset = { X = \"1\" }\n\
                [[sites]]\nhosts = [\"a.org\"]\nroot = \"/\"\nhidden_files = \"allow\"\nheaders = []\n";
    let mut config = Config::with_defaults(file_settings(text, Path::new("/w.toml")).expect("parses"));
    config.root = "/tmp".into();
    let top = config.default_site_rules();
    let site = config.sites[0].rules(&top);
    assert_eq!((site.hidden_files, top.hidden_files), (HiddenFiles::Allow, HiddenFiles::Deny));
    assert_eq!((site.headers.len(), top.headers.len()), (0, 1), "the site's own list replaces the top level's");
    assert_eq!((site.fallback, site.directory_listing), (Some("/app.html"), true), "inherited");
}
