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
