//! The site rules a config file gives (SPEC section 7): hidden files, `[[redirects]]`,
//! `[[headers]]`. Here they are plain data, checked when the file is read so a bad rule is
//! a configuration error naming the file and the rule; `worker/rules.rs` compiles them
//! once per worker.

use serde::{Deserialize, Serialize};

/// Whether a path with a segment starting with `.` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HiddenFiles {
    /// 404 for any such path, except under `/.well-known/`.
    #[default]
    Deny,
    /// Served like any other file.
    Allow,
}

/// One `[[redirects]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// A path prefix when it ends with `/`, else an exact path.
    pub from: String,
    /// Where to: a path or an absolute URL.
    pub to: String,
    /// 301, 302, 307 or 308.
    pub status: u16,
}

impl Redirect {
    /// The statuses a redirect may have.
    pub const STATUSES: [u16; 4] = [301, 302, 307, 308];

    pub fn is_prefix(&self) -> bool {
        self.from.ends_with('/')
    }

    fn check(&self) -> Result<(), String> {
        if !Redirect::STATUSES.contains(&self.status) {
            return Err(format!("status = {} is not one of 301, 302, 307, 308", self.status));
        }
        if !self.from.starts_with('/') {
            return Err("from must be a path starting with /".into());
        }
        if self.to.is_empty() || !self.to.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err("to must be a non-empty path or URL of visible ASCII (percent-encode the rest)".into());
        }
        Ok(())
    }
}

/// Checks every rule; the error names the rule (`redirects[0]`, counted from 0) and what
/// is wrong with it.
pub fn check_rules(redirects: Option<&[Redirect]>) -> Result<(), String> {
    for (index, rule) in redirects.unwrap_or_default().iter().enumerate() {
        rule.check().map_err(|e| format!("redirects[{index}] (from = {:?}): {e}", rule.from))?;
    }
    Ok(())
}
