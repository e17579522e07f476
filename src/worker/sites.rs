//! Virtual hosts (`[[sites]]`): each site's root and compiled rules, and the choice of the
//! site for a request.
//!
//! The site is the one whose `hosts` name the request's host: the authority of an
//! absolute-form target (RFC 9112 §3.2.2: it wins over `Host`), else the `Host` field,
//! else (no Host, or an empty one: HTTP/1.0) the TLS SNI name. The port and one trailing
//! dot are ignored, letters compared in any case. An exact name wins over a wildcard
//! (`*.example.org` covers one label: `www.example.org`, not `example.org` nor
//! `a.b.example.org`, as for certificates). No match: the default site (the top level's
//! `root` and rules).
//!
//! Per request this is a few slice comparisons in place, no allocation; with no
//! `[[sites]]` it is one emptiness test.

use super::path::Root;
use super::rules::Rules;
use crate::config::Config;
use anyhow::Context;

/// One site as a worker serves it.
#[derive(Debug)]
pub struct Site {
    /// Its first host name, or `default`: what logs call it.
    pub name: Box<str>,
    pub root: Root,
    pub rules: Rules,
}

/// The default site and the virtual hosts, with their names ready to compare.
#[derive(Debug)]
pub struct Sites {
    default: Site,
    hosts: Vec<Site>,
    /// Exact names (lowercase) and the index of their site in `hosts`.
    exact: Vec<(Box<[u8]>, usize)>,
    /// What follows `*.` in a wildcard (lowercase), and its site's index.
    wildcards: Vec<(Box<[u8]>, usize)>,
}

impl Sites {
    /// Opens every site's root and compiles its rules; the error names the site's root.
    pub fn open(config: &Config) -> anyhow::Result<Sites> {
        let top = config.default_site_rules();
        let open_root =
            |path: &std::path::Path| Root::open(path).with_context(|| format!("document root {}", path.display()));
        let default = Site { name: "default".into(), root: open_root(&config.root)?, rules: Rules::compile(&top) };
        let (mut exact, mut wildcards, mut hosts) = (Vec::new(), Vec::new(), Vec::new());
        for (index, site) in config.sites.iter().enumerate() {
            for host in &site.hosts {
                let host = host.to_ascii_lowercase().into_bytes();
                match host.strip_prefix(b"*.") {
                    Some(suffix) => wildcards.push((suffix.into(), index)),
                    None => exact.push((host.into(), index)),
                }
            }
            let root = open_root(&site.root)?;
            hosts.push(Site { name: site.name().into(), root, rules: Rules::compile(&site.rules(&top)) });
        }
        Ok(Sites { default, hosts, exact, wildcards })
    }

    /// Closes the files the sites' roots keep open: those unused since the last sweep,
    /// or all (`all`). True if `all` closed any.
    pub fn sweep_open_files(&self, all: bool) -> bool {
        let mut closed = false;
        for site in std::iter::once(&self.default).chain(&self.hosts) {
            closed |= site.root.sweep_open_files(all);
        }
        closed
    }

    /// Only the default site, at `root` with `rules` (unit tests).
    pub fn single(root: Root, rules: Rules) -> Sites {
        let default = Site { name: "default".into(), root, rules };
        Sites { default, hosts: Vec::new(), exact: Vec::new(), wildcards: Vec::new() }
    }

    /// The site for a request to `target` with `Host` value `host`, on a connection
    /// whose TLS SNI name is `sni`.
    pub fn pick(&self, target: &[u8], host: Option<&[u8]>, sni: Option<&str>) -> &Site {
        if self.hosts.is_empty() {
            return &self.default;
        }
        let named = absolute_form_authority(target)
            .or(host)
            .filter(|h| !h.is_empty())
            .or(sni.map(str::as_bytes))
            .map(host_name);
        match named.and_then(|name| self.find(name)) {
            Some(index) => &self.hosts[index],
            None => &self.default,
        }
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        if let Some((_, index)) = self.exact.iter().find(|(exact, _)| name.eq_ignore_ascii_case(exact)) {
            return Some(*index);
        }
        let dot = name.iter().position(|&b| b == b'.').filter(|&dot| dot > 0)?;
        let tail = &name[dot + 1..];
        self.wildcards.iter().find(|(suffix, _)| tail.eq_ignore_ascii_case(suffix)).map(|(_, index)| *index)
    }
}

/// The authority of an `http://` or `https://` target, `None` for origin-form.
fn absolute_form_authority(target: &[u8]) -> Option<&[u8]> {
    if target.first() == Some(&b'/') {
        return None;
    }
    let scheme_len = [&b"http://"[..], b"https://"]
        .into_iter()
        .find(|scheme| target.get(..scheme.len()).is_some_and(|head| head.eq_ignore_ascii_case(scheme)))?
        .len();
    let rest = &target[scheme_len..];
    let end = rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    // userinfo is not allowed in an http(s) URI's authority (RFC 9110 §4.2.4): no site.
    Some(&rest[..end]).filter(|authority| !authority.contains(&b'@'))
}

/// `host[:port]` without the port and one trailing dot; a bracketed IPv6 literal keeps
/// its brackets.
fn host_name(host: &[u8]) -> &[u8] {
    let name = if host.first() == Some(&b'[') {
        host.iter().position(|&b| b == b']').map_or(host, |close| &host[..=close])
    } else {
        host.iter().rposition(|&b| b == b':').map_or(host, |colon| &host[..colon])
    };
    name.strip_suffix(b".").unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Site as SiteConfig};

    fn sites(dir: &std::path::Path) -> Sites {
        let mut config = Config::with_defaults(Cli::default());
        config.root = dir.to_path_buf();
        let site = |hosts: &[&str]| SiteConfig {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            root: dir.to_path_buf(),
            hidden_files: None,
            directory_listing: None,
            fallback: None,
            error_pages: None,
            headers: None,
            redirects: None,
        };
        config.sites = vec![site(&["example.org", "*.example.org"]), site(&["www.example.org", "[::1]"])];
        Sites::open(&config).expect("sites open")
    }

    #[test]
    fn sites_are_picked_by_host_then_sni_exact_before_wildcard() {
        let dir = tempfile::tempdir().expect("tmp");
        let sites = sites(dir.path());
        let pick = |target: &str, host: Option<&str>, sni: Option<&str>| {
            &*sites.pick(target.as_bytes(), host.map(str::as_bytes), sni).name
        };
        assert_eq!(pick("/", Some("example.org"), None), "example.org");
        assert_eq!(pick("/", Some("EXAMPLE.org:8080"), None), "example.org");
        assert_eq!(pick("/", Some("example.org."), None), "example.org");
        assert_eq!(pick("/", Some("a.example.org"), None), "example.org", "wildcard");
        assert_eq!(pick("/", Some("Www.Example.Org"), None), "www.example.org", "exact beats wildcard");
        assert_eq!(pick("/", Some("a.b.example.org"), None), "default", "one label");
        assert_eq!(pick("/", Some(".example.org"), None), "default");
        assert_eq!(pick("/", Some("other.org"), Some("example.org")), "default", "Host wins over SNI");
        assert_eq!(pick("/", None, Some("a.example.org")), "example.org", "SNI without Host");
        assert_eq!(pick("/", Some(""), Some("www.example.org")), "www.example.org", "an empty Host is none");
        assert_eq!(pick("/", None, None), "default");
        assert_eq!(pick("/", Some("[::1]:8080"), None), "www.example.org");
        assert_eq!(pick("http://WWW.example.org:80/x", Some("other.org"), None), "www.example.org");
        assert_eq!(pick("https://u@example.org/x", Some("other.org"), None), "default");
        assert_eq!(pick("/", Some("xexample.org"), None), "default");
    }

    #[test]
    fn no_sites_is_the_default_site() {
        let dir = tempfile::tempdir().expect("tmp");
        let sites = Sites::single(Root::open(dir.path()).expect("root"), Rules::NONE);
        assert_eq!(&*sites.pick(b"/", Some(b"example.org"), None).name, "default");
    }
}
