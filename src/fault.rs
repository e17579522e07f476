//! Fault injection for tests, off unless `WEBD_FAULT_FILE` is set.
//!
//! When `WEBD_FAULT_FILE` names a file, each role reads it as it starts; a line equal to
//! the role's name (`listener`, `manager`, `worker`) makes that role exit with code 70
//! at once, as a process that fails at every start would. Deleting the file (or the
//! line) removes the fault for the next start. The variable is passed down to children
//! through the environment like any other; production never sets it.
//!
//! Other lines inject other faults: `listener-stop-after-accept` and
//! `listener-stop-after-send` (below), and `<role>-channel-full` (heartbeats dropped as
//! if the channel to the supervisor were full, while the line is there), and
//! `rotate-ticket-keys` (the daemon rotates the TLS session-ticket keys once per line),
//! and `crash-on-path /PATH` (a worker aborts when it is about to answer a request for
//! that target, read as each worker starts: a poison request), and `crash-after-read
//! /PATH` (a worker aborts right after reading bytes that hold that text, before it
//! records them: bytes a successor cannot know), and `no-worker-keeper`
//! (workers start without a keeper and record nothing: what the rescue records cost per
//! request is measured against it, `bench/README.md`).

use crate::ipc::Role;

/// Exit code of a role that failed because of an injected fault.
pub const FAULT_EXIT_CODE: i32 = 70;

/// Exits the process if a fault is injected for `role`.
pub fn exit_if_injected(role: Role) {
    if has_line(file().as_deref(), role.as_str()) {
        tracing::error!(role = %role, "injected fault: exiting at start");
        std::process::exit(FAULT_EXIT_CODE);
    }
}

/// Where a listener stops itself (SIGSTOP), so that a test can kill it holding a
/// connection: a fault-file line `listener-stop-after-accept` (accepted, not yet sent)
/// or `listener-stop-after-send` (sent, its own copy not yet closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerStop {
    AfterAccept,
    /// With a whole batch accepted, before it is sent.
    BeforeSend,
    AfterSend,
}

/// The listener's injected stop, read once as it starts.
pub fn listener_stop() -> Option<ListenerStop> {
    let text = std::fs::read_to_string(file()?).ok()?;
    text.lines().find_map(|line| match line.trim() {
        "listener-stop-after-accept" => Some(ListenerStop::AfterAccept),
        "listener-stop-before-send" => Some(ListenerStop::BeforeSend),
        "listener-stop-after-send" => Some(ListenerStop::AfterSend),
        _ => None,
    })
}

/// Stops this process if `at` is the injected stop.
pub fn stop_if(injected: Option<ListenerStop>, at: ListenerStop) {
    if injected == Some(at) {
        tracing::warn!(?at, "injected fault: stopping");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}

/// The fault file, if tests set one (read once per process; production never does).
pub fn file() -> Option<std::path::PathBuf> {
    std::env::var_os("WEBD_FAULT_FILE").map(std::path::PathBuf::from)
}

/// True while the fault file has a line `<role>-channel-full`: that role's heartbeats
/// are dropped as if its supervisor had stopped reading. Read at each heartbeat, so a
/// test can turn it on and off in a running tree.
pub fn channel_full(file: Option<&std::path::Path>, role: Role) -> bool {
    has_line(file, &format!("{}-channel-full", role.as_str()))
}

/// True if `file` has a line that is exactly `wanted` (surrounding blanks aside).
fn has_line(file: Option<&std::path::Path>, wanted: &str) -> bool {
    file.and_then(|f| std::fs::read_to_string(f).ok())
        .is_some_and(|text| text.lines().any(|line| line.trim() == wanted))
}

/// How many session-ticket key rotations the fault file asks for: one per line
/// `rotate-ticket-keys`. The daemon (which alone reads this, at each check) rotates once
/// per line it has not acted on yet, so a test need not wait the 12 h of
/// `tls::tickets::ROTATION_INTERVAL`; lines are counted from the daemon's start.
pub fn ticket_rotations(file: Option<&std::path::Path>) -> u64 {
    let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) else { return 0 };
    text.lines().filter(|line| line.trim() == "rotate-ticket-keys").count() as u64
}

/// The request target a worker aborts on instead of answering (a fault-file line
/// `crash-on-path /boom`), read once as the worker starts; `None` in production.
pub fn crash_on_path() -> Option<Vec<u8>> {
    argument_of("crash-on-path ")
}

/// What follows `prefix` on the first fault-file line that starts with it.
fn argument_of(prefix: &str) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string(file()?).ok()?;
    text.lines().find_map(|line| Some(line.trim().strip_prefix(prefix)?.trim().as_bytes().to_vec()))
}

/// The text whose arrival a worker aborts on, read and not recorded (a fault-file line
/// `crash-after-read /PATH`), read once as the worker starts; `None` in production.
pub fn crash_after_read() -> Option<Vec<u8>> {
    argument_of("crash-after-read ")
}

/// True if the fault file has a line `no-worker-keeper`: workers run as before the
/// rescue existed (no keeper, no records), for measuring what the records cost.
pub fn no_worker_keeper() -> bool {
    has_line(file().as_deref(), "no-worker-keeper")
}
