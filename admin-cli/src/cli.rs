//! The `webctl` command line (docs/reference.md): flags, subcommands, and the
//! control-protocol [`Request`] each subcommand sends.
//!
//! Every usage error (unknown command, missing or malformed argument) is a clap
//! error and therefore exits 2; nothing here can fail after parsing.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use webd_proto::{Request, RestartTarget};

/// How long `status` waits for the daemon: it answers from memory.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a mutating command waits: the daemon answers only once the effect is
/// real (e.g. the new listener has sent its first heartbeat), which can take a
/// worker's grace period and more.
const ACTION_TIMEOUT: Duration = Duration::from_secs(35);
/// An upgrade waits for a whole new tree to become ready (the daemon gives up after 30 s).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(65);

/// Control a running webd daemon through its control socket.
#[derive(Parser, Debug)]
#[command(name = "webctl", version, about)]
pub struct Cli {
    /// Control socket path (default: $WEBD_CONTROL_SOCKET, /run/webd/webd.sock for root,
    /// $XDG_RUNTIME_DIR/webd.sock, else /tmp/webd-<uid>/webd.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Print the daemon's raw JSON response.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the daemon's answer (default: 5 for status, 35 for
    /// commands that change something).
    #[arg(long, global = true, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum Command {
    /// Show the daemon, its processes and workers.
    Status,
    /// Gracefully restart the listener, the manager, all workers (rolling) or one worker.
    Restart {
        #[command(subcommand)]
        target: RestartCommand,
    },
    /// Stop accepting connections; keep-alive connections are told to close.
    Drain,
    /// Accept connections again after a drain.
    Resume,
    /// Grow or shrink the worker pool to N workers (removed workers are drained).
    Scale {
        /// Number of workers wanted.
        #[arg(value_name = "N", value_parser = clap::value_parser!(u32).range(1..=webd_proto::MAX_WORKERS as i64))]
        workers: u32,
    },
    /// Gracefully stop the daemon, like SIGTERM.
    Stop,
    /// Re-read the config file and certificates, like SIGHUP; waits for the rolling worker
    /// restart (exit 1 with the reason if the configuration is refused).
    Reload,
    /// Replace the running daemon with a new binary without dropping a connection; rolls
    /// back (exit 1 with the reason) if the new daemon does not become ready.
    Upgrade {
        /// The new executable (default: the path the daemon was started from).
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
    },
    /// Print a shell completion script to stdout.
    Completions {
        /// Shell to generate completions for.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum RestartCommand {
    /// Restart the listener (the listening sockets stay open).
    Listener,
    /// Restart the manager.
    Manager,
    /// Restart every worker, one at a time.
    Workers,
    /// Restart one worker.
    Worker {
        /// Worker id, as shown by `webctl status`.
        #[arg(value_name = "N")]
        id: u32,
    },
}

impl Command {
    /// The request this command sends, or `None` for commands that never talk to
    /// the daemon (`completions`).
    pub fn request(&self) -> Option<Request> {
        let request = match self {
            Command::Status => Request::Status,
            Command::Restart { target } => {
                let (target, id) = match target {
                    RestartCommand::Listener => (RestartTarget::Listener, None),
                    RestartCommand::Manager => (RestartTarget::Manager, None),
                    RestartCommand::Workers => (RestartTarget::Workers, None),
                    RestartCommand::Worker { id } => (RestartTarget::Worker, Some(*id)),
                };
                Request::Restart { target, id }
            }
            Command::Drain => Request::Drain,
            Command::Resume => Request::Resume,
            Command::Scale { workers } => Request::Scale { workers: *workers },
            Command::Stop => Request::Stop,
            Command::Reload => Request::Reload,
            Command::Upgrade { binary } => Request::Upgrade {
                // The daemon resolves the path; make a relative one mean "from here".
                binary: binary
                    .as_ref()
                    .map(|b| std::path::absolute(b).unwrap_or_else(|_| b.clone()).to_string_lossy().into_owned()),
            },
            Command::Completions { .. } => return None,
        };
        Some(request)
    }
}

impl Cli {
    /// How long to wait for the daemon's answer to `request`.
    pub fn timeout_for(&self, request: &Request) -> Duration {
        match (self.timeout, request) {
            (Some(secs), _) => Duration::from_secs(secs),
            (None, Request::Status) => STATUS_TIMEOUT,
            (None, Request::Upgrade { .. }) => UPGRADE_TIMEOUT,
            (None, _) => ACTION_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("webctl").chain(args.iter().copied()))
    }

    fn request(args: &[&str]) -> Option<Request> {
        parse(args).expect("valid arguments").command.request()
    }

    #[test]
    fn subcommands_map_to_protocol_requests() {
        let worker = |id| Request::Restart { target: RestartTarget::Worker, id: Some(id) };
        let restart = |target| Request::Restart { target, id: None };
        let cases: &[(&[&str], Request)] = &[
            (&["status"], Request::Status),
            (&["restart", "listener"], restart(RestartTarget::Listener)),
            (&["restart", "manager"], restart(RestartTarget::Manager)),
            (&["restart", "workers"], restart(RestartTarget::Workers)),
            (&["restart", "worker", "3"], worker(3)),
            (&["drain"], Request::Drain),
            (&["resume"], Request::Resume),
            (&["scale", "4"], Request::Scale { workers: 4 }),
            (&["stop"], Request::Stop),
        ];
        for (args, want) in cases {
            assert_eq!(request(args).as_ref(), Some(want), "{args:?}");
        }
        assert_eq!(request(&["completions", "bash"]), None);
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        for args in [
            &["--json", "--control-socket", "/x/y.sock", "status"][..],
            &["status", "--control-socket=/x/y.sock", "--json"][..],
        ] {
            let cli = parse(args).expect("valid arguments");
            assert!(cli.json, "{args:?}");
            assert_eq!(cli.control_socket, Some(PathBuf::from("/x/y.sock")), "{args:?}");
        }
    }

    #[test]
    fn timeouts_default_by_command_and_can_be_overridden() {
        let cli = parse(&["status"]).expect("valid");
        assert_eq!(cli.timeout_for(&Request::Status), STATUS_TIMEOUT);
        assert_eq!(cli.timeout_for(&Request::Drain), ACTION_TIMEOUT);
        let cli = parse(&["--timeout", "90", "restart", "workers"]).expect("valid");
        assert_eq!(cli.timeout_for(&Request::Drain), Duration::from_secs(90));
    }

    #[test]
    fn usage_errors_exit_with_code_2() {
        let bad: &[&[&str]] = &[
            &[],
            &["bogus"],
            &["restart"],
            &["restart", "worker"],
            &["restart", "worker", "x"],
            &["restart", "worker", "-1"],
            &["restart", "daemon"],
            &["restart", "listener", "1"],
            &["scale"],
            &["scale", "-1"],
            &["scale", "two"],
            &["scale", "4294967296"],
            &["status", "extra"],
            &["status", "--nope"],
            &["--control-socket"],
            &["--timeout", "0", "status"],
            &["completions"],
            &["completions", "cmd.exe"],
        ];
        for args in bad {
            let err = parse(args).expect_err(&format!("{args:?} should be rejected"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn help_and_version_are_not_errors() {
        for args in [&["--help"][..], &["restart", "--help"][..], &["--version"][..]] {
            let err = parse(args).expect_err("clap reports help/version as an early exit");
            assert!(matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion));
            assert_eq!(err.exit_code(), 0, "{args:?}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
