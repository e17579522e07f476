//! Fault injection for tests, off unless `WEBD_FAULT_FILE` is set.
//!
//! When `WEBD_FAULT_FILE` names a file, each role reads it as it starts; a line equal to
//! the role's name (`listener`, `manager`, `worker`) makes that role exit with code 70
//! at once, as a process that fails at every start would. Deleting the file (or the
//! line) removes the fault for the next start. The variable is passed down to children
//! through the environment like any other; production never sets it.

use crate::ipc::Role;

/// Exit code of a role that failed because of an injected fault.
pub const FAULT_EXIT_CODE: i32 = 70;

/// Exits the process if a fault is injected for `role`.
pub fn exit_if_injected(role: Role) {
    let Some(path) = std::env::var_os("WEBD_FAULT_FILE") else { return };
    let Ok(text) = std::fs::read_to_string(&path) else { return };
    if text.lines().any(|line| line.trim() == role.as_str()) {
        tracing::error!(role = %role, "injected fault: exiting at start");
        std::process::exit(FAULT_EXIT_CODE);
    }
}
