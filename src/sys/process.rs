//! Process-level helpers: monotonic clock, signals to children, reaping, subreaper.

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use std::io;
use std::os::fd::OwnedFd;

pub use nix::unistd::Pid;

/// CLOCK_MONOTONIC in nanoseconds: the clock heartbeats are stamped with, shared by all
/// processes on the host so receive minus send time is a real latency.
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64).saturating_mul(1_000_000_000) + ts.tv_nsec() as u64,
        Err(_) => 0, // cannot fail for CLOCK_MONOTONIC on Linux
    }
}

/// How a reaped child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(sig) => write!(f, "signal {sig}"),
        }
    }
}

/// Reaps every exited child without blocking.
pub fn reap_exited() -> Vec<(Pid, Exit)> {
    let mut out = Vec::new();
    loop {
        match super::retry_eintr(|| waitpid(None, Some(WaitPidFlag::WNOHANG))) {
            Ok(WaitStatus::Exited(pid, code)) => out.push((pid, Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => out.push((pid, Exit::Signal(sig))),
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return out,
            Ok(_) => continue, // stopped/continued: not an exit
            Err(_) => return out,
        }
    }
}

/// Sends `sig` to `pid`; a process already gone is not an error.
pub fn signal(pid: Pid, sig: Signal) {
    match nix::sys::signal::kill(pid, sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid = pid.as_raw(), sig = sig.as_str(), error = %e, "kill failed"),
    }
}

/// Raises the soft descriptor limit to the hard one (children inherit it): a shell's
/// default of 1024 would cap a server meant to hold thousands of connections. Returns
/// the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the descriptor limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// Puts the calling process under `SCHED_BATCH` (`batch`), or back under the normal
/// policy. Under batch, woken, it does not preempt the task running on its CPU, and runs
/// once that one yields or its slice ends. For the listener: a connection arriving while
/// the cores are busy no longer costs a context switch of its own; the listener runs a
/// little later and takes everything queued by then in one batch. Only the CPU's order
/// changes: the process keeps its full share of CPU time.
pub fn schedule_in_batches(batch: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        let policy = if batch { libc::SCHED_BATCH } else { libc::SCHED_OTHER };
        // SAFETY: sched_setscheduler reads one sched_param from a pointer to a live value
        // on our stack; pid 0 is the calling thread (the process's only one when called).
        nix::errno::Errno::result(unsafe { libc::sched_setscheduler(0, policy, &param) })?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = batch;
    Ok(())
}

/// Makes orphaned descendants (workers of a crashed manager) our children, so we reap
/// them and none is left a zombie.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// A pipe whose write end only the daemon holds: when the daemon dies, however it dies,
/// every process holding the read end sees EOF. Workers use it to outlive their manager
/// (finishing requests) but never the daemon.
pub fn lifeline() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).map_err(io::Error::from)
}

/// In a child role: ignore the signals an operator means for the daemon (SIGINT from a
/// terminal's Ctrl-C reaches the whole process group, and so does the SIGTERM of
/// `timeout`, supervisord's `stopasgroup` or `tini -g`; `systemctl kill` without
/// `--kill-whom=main` reaches the whole unit). The daemon acts on them and tells its
/// children what to do over their channels, so a stop sent to the group is as graceful
/// as one sent to the daemon. Inherited by the workers across exec.
pub fn ignore_operator_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    const OPERATOR_SIGNALS: [Signal; 6] =
        [Signal::SIGINT, Signal::SIGTERM, Signal::SIGQUIT, Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2];
    for sig in OPERATOR_SIGNALS {
        // SAFETY: installing SIG_IGN runs no handler code, so nothing here can violate
        // async-signal safety; it is done at start-up of a child before any thread.
        if let Err(e) = unsafe { signal(sig, SigHandler::SigIgn) } {
            tracing::warn!(sig = sig.as_str(), error = %e, "cannot ignore signal");
        }
    }
}

/// How many more descriptors this process may open, measured now and then.
///
/// A process that receives passed fds without room for them loses them (the kernel
/// closes them and reports MSG_CTRUNC), so receivers check the budget first and leave
/// connections queued in the kernel while they are short.
pub struct FdBudget {
    /// Open descriptor numbers, sorted (the limit bounds numbers, not a count).
    open: Vec<u32>,
}

/// Descriptors a receiver keeps for its own work (the file of the request it serves).
pub const WORKING_ROOM: usize = 1;

impl FdBudget {
    /// Lists the open descriptors (a directory read: done now and then, not per fd).
    pub fn measure() -> FdBudget {
        let open = match std::fs::read_dir("/proc/self/fd") {
            Ok(dir) => {
                let mut fds: Vec<u32> =
                    dir.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect();
                fds.sort_unstable();
                // The listing includes its own directory descriptor, closed by now.
                fds.retain(|fd| {
                    super::probe_fd(*fd as i32, |fd| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok())
                });
                fds
            }
            // Listing needs a descriptor itself: if none is free, there is no room.
            Err(_) => (0..=u16::MAX as u32).collect(),
        };
        FdBudget { open }
    }

    /// The soft descriptor limit now (read live: an operator may lower it with prlimit).
    /// Read it once per batch of receives and pass it to `free`.
    pub fn current_limit() -> usize {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
            .unwrap_or(1024)
    }

    /// Descriptor numbers still free below `limit` if `extra` more than at the last
    /// listing are open.
    pub fn free(&self, limit: usize, extra: usize) -> usize {
        let used_below = self.open.partition_point(|fd| (*fd as usize) < limit);
        limit.saturating_sub(used_below.saturating_add(extra))
    }
}
