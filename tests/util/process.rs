//! Processes of the tree: /proc readings, signals (kill(2), never a `kill` process),
//! descriptor and memory figures.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A process of the tree, from /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub argv0: String,
    pub state: char,
}

/// The processes of `tree` whose title `wanted` accepts, leaving out a child titled as its
/// parent: a keeper just forked by its listener or worker, not yet renamed.
pub fn titled_pids(tree: &[Proc], wanted: impl Fn(&str) -> bool) -> Vec<i32> {
    let fresh_fork = |p: &Proc| tree.iter().any(|q| q.pid == p.ppid && q.argv0 == p.argv0);
    tree.iter().filter(|p| wanted(&p.argv0) && !fresh_fork(p)).map(|p| p.pid).collect()
}

/// The workers in `tree` (titled `webd: worker N`).
pub fn worker_pids_in(tree: &[Proc]) -> Vec<i32> {
    titled_pids(tree, |title| title.starts_with("webd: worker"))
}

/// Every process on the host (pid → Proc).
pub fn all_processes() -> HashMap<i32, Proc> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Some(p) = read_proc(pid) {
            out.insert(pid, p);
        }
    }
    out
}

/// The fields of `/proc/PID/stat` after the comm, from field 3 (the state) on: the comm
/// may contain spaces, the fields after its last ')' are fixed.
fn stat_after_comm(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat[stat.rfind(')')? + 2..].to_string())
}

pub fn read_proc(pid: i32) -> Option<Proc> {
    let rest = stat_after_comm(pid)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|b| *b == 0).next().map(|s| String::from_utf8_lossy(s).into_owned()).unwrap_or_default();
    Some(Proc { pid, ppid, argv0, state })
}

/// The scheduling policy of `pid` (`/proc/PID/stat` field 41: 0 normal, 3 batch).
pub fn sched_policy(pid: i32) -> Option<u32> {
    stat_after_comm(pid)?.split_whitespace().nth(41 - 3)?.parse().ok()
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    read_proc(pid).is_some_and(|p| p.state != 'Z')
}

/// True while `pid` exists at all (zombies included).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `sig` to `pid` with kill(2) (never by spawning `kill`, which a machine may
/// lack). A process already gone is fine; any other failure fails the test.
pub fn kill(pid: i32, sig: i32) {
    use nix::errno::Errno;
    let signal = nix::sys::signal::Signal::try_from(sig).unwrap_or_else(|e| panic!("signal {sig}: {e}"));
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => panic!("kill -{sig} {pid}: {e}"),
    }
}

/// Sets a path's mode (no `chmod` process); a failure fails the test.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;
pub const SIGHUP: i32 = 1;
pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;

// ---- Helpers for the chaos and hostile-input suites ---------------------------------

/// Raises this process's soft RLIMIT_NOFILE towards `want` (never above the hard limit)
/// and returns the soft limit now in force. Daemons started afterwards inherit it, so
/// a test that opens a thousand sockets does not run out on a host whose default soft
/// limit is 1024.
pub fn raise_nofile_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < want {
            let raised = libc::rlimit { rlim_cur: want.min(lim.rlim_max), rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Open descriptors of `pid` (entries of /proc/<pid>/fd).
pub fn fd_count(pid: i32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count())
}

/// `pid`'s descriptor count once it holds still (the same in two reads 100 ms apart,
/// within 3 s): a client that just closed may still be lingering in the daemon.
pub fn stable_fd_count(pid: i32) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = fd_count(pid)?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid)?;
        if now == last || Instant::now() >= deadline {
            return Some(now);
        }
        last = now;
    }
}

/// The highest open descriptor number of `pid`.
pub fn max_fd(pid: i32) -> Option<i32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    dir.flatten().filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok()).max()
}

/// A field of /proc/<pid>/status in kB (e.g. "VmRSS", "VmHWM").
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Threads of `pid`.
pub fn thread_count(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find(|l| l.starts_with("Threads:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) `pid` has used, in seconds.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ppid(1) ... utime is field 14 of the whole line = index 11 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100).max(1) as f64;
    Some((utime + stime) as f64 / hz)
}

/// Sends a signal with kill(2) directly (no `kill` process: cheap enough to call in a
/// loop, and the result tells whether the target existed).
pub fn signal(pid: i32, sig: i32) -> bool {
    let Ok(signal) = nix::sys::signal::Signal::try_from(sig) else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok()
}
