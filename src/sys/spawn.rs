//! fork+exec of a role from our own executable.
//!
//! The child gets argv[0] `webd: <role>` (what `ps` shows), exactly one inherited fd (its
//! control channel, number in `WEBD_CHANNEL_FD`), and everything else by SCM_RIGHTS over
//! that channel. `std::process::Command` does the fork+exec; we only add a pre-exec hook.

use super::process::Pid;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Environment variable carrying the inherited control-channel fd number.
pub const CHANNEL_FD_ENV: &str = "WEBD_CHANNEL_FD";

/// The identity a child runs as after `--user`.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Credentials {
    /// Looks `name` up (before any fork: the lookup is not async-signal-safe).
    pub fn for_user(name: &str) -> io::Result<Credentials> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| io::Error::other(format!("looking up user {name:?}: {e}")))?
            .ok_or_else(|| io::Error::other(format!("no such user {name:?}")))?;
        let cname = std::ffi::CString::new(name).map_err(|_| io::Error::other("user name contains NUL"))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| io::Error::other(format!("groups of user {name:?}: {e}")))?;
        Ok(Credentials {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
        })
    }
}

/// What to start and how it is tied to us.
pub struct SpawnSpec<'a> {
    pub exe: &'a Path,
    pub argv0: &'a str,
    /// The child's end of its control channel; inherited, then closed here.
    pub channel: OwnedFd,
    /// Kill the child with SIGKILL if the spawning thread dies (listener, manager).
    pub die_with_parent: bool,
    pub env: &'a [(&'a str, String)],
    /// Drop to this identity before exec (setgroups, setgid, setuid, in that order).
    pub credentials: Option<&'a Credentials>,
    /// Arguments after argv[0] (roles take none; an upgraded daemon takes ours).
    pub args: &'a [std::ffi::OsString],
    /// Keep systemd's NOTIFY_SOCKET (a new daemon in an upgrade becomes the main PID).
    pub keep_notify_socket: bool,
}

/// Forks and execs `spec.exe`; returns the child's pid.
pub fn spawn(spec: SpawnSpec<'_>) -> io::Result<Pid> {
    let channel_raw = spec.channel.as_raw_fd();
    let parent = nix::unistd::getpid();
    let die_with_parent = spec.die_with_parent;
    let creds = spec.credentials.cloned();
    let mut cmd = Command::new(spec.exe);
    cmd.arg0(spec.argv0)
        .args(spec.args)
        .env(CHANNEL_FD_ENV, channel_raw.to_string())
        // The watchdog is tied to our pid; a successor daemon sets up its own.
        .env_remove("WATCHDOG_PID")
        .envs(spec.env.iter().map(|(k, v)| (*k, v.as_str())));
    if !spec.keep_notify_socket {
        // systemd's notify socket belongs to the daemon alone.
        cmd.env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC");
    }
    // SAFETY: the hook runs in the forked child before exec and calls only
    // async-signal-safe syscalls (fcntl, prctl, getppid, _exit); it allocates nothing
    // and touches no lock.
    unsafe {
        cmd.pre_exec(move || {
            // The channel was created CLOEXEC; clear the flag in this child only.
            if libc::fcntl(channel_raw, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            if let Some(c) = &creds {
                // Supplementary groups first, while we may still change them.
                if libc::setgroups(c.groups.len(), c.groups.as_ptr()) == -1
                    || libc::setgid(c.gid) == -1
                    || libc::setuid(c.uid) == -1
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // After any credential change, which clears the parent-death signal.
            if die_with_parent {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent.as_raw() {
                    libc::_exit(1);
                }
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("exec {} as {:?}: {e}", spec.exe.display(), spec.argv0)))?;
    let pid = Pid::from_raw(child.id() as i32);
    // We reap with waitpid ourselves; dropping `Child` neither waits nor kills.
    drop(child);
    drop(spec.channel);
    Ok(pid)
}

/// In a child: takes ownership of the control channel named by `WEBD_CHANNEL_FD`,
/// re-marks it CLOEXEC so it does not leak into our own children, and clears the
/// variable.
pub fn take_inherited_channel() -> io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let raw: i32 = std::env::var(CHANNEL_FD_ENV)
        .map_err(|_| io::Error::other(format!("{CHANNEL_FD_ENV} is not set: roles are started by webd itself")))?
        .parse()
        .map_err(|_| io::Error::other(format!("{CHANNEL_FD_ENV} is not an fd number")))?;
    if super::probe_fd(raw, |fd| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)).is_err() {
        return Err(io::Error::other(format!("inherited fd {raw} is not open")));
    }
    // SAFETY: the fd is open (checked above) and was inherited across exec for us alone
    // (the parent cleared CLOEXEC for exactly this number in this child); nothing in this
    // process owns it yet.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let stat = nix::sys::stat::fstat(&fd).map_err(|e| io::Error::other(format!("inherited fd {raw}: {e}")))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other(format!("inherited fd {raw} is not a socket")));
    }
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    std::env::remove_var(CHANNEL_FD_ENV);
    Ok(fd)
}
