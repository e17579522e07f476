//! Entry point: run as the daemon, or as the child role named in argv[0].
//!
//! Exit codes: 0 clean stop, 1 runtime error (port in use, unreadable root), 2 usage or
//! configuration error (including inherited sockets that do not fit the configuration).

use clap::Parser;
use std::process::ExitCode;
use webd::config::{Cli, Config, ConfigError};
use webd::ipc::Role;

fn main() -> ExitCode {
    let argv0 = std::env::args().next().unwrap_or_default();
    if let Some(role) = argv0.strip_prefix(webd::ROLE_PREFIX) {
        return run_child(role);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("webd: {e}");
            return ExitCode::from(match e {
                ConfigError::Usage(_) => 2,
                ConfigError::Runtime(_) => 1,
            });
        }
    };
    // Certificates are part of the configuration: a bad file is a usage error too.
    let tls = match webd::tls::TlsMaterial::load(&config) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("webd: {e}");
            return ExitCode::from(2);
        }
    };
    webd::logging::init(config.log_format);
    match webd::daemon::run(config, cli, tls) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webd: {e:#}");
            ExitCode::from(if e.downcast_ref::<webd::daemon::UsageError>().is_some() { 2 } else { 1 })
        }
    }
}

/// Runs a child role; `role` is argv[0] after the `webd: ` prefix.
fn run_child(role: &str) -> ExitCode {
    webd::logging::init(webd::logging::format_from_env());
    let result = match role.split_whitespace().next() {
        Some("listener") => run_role(Role::Listener, webd::listener::run),
        Some("manager") => run_role(Role::Manager, webd::manager::run),
        Some("worker") => run_role(Role::Worker, webd::worker::run),
        _ => {
            eprintln!("webd: unknown role {role:?}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(role, error = %format!("{e:#}"), "role failed");
            ExitCode::from(1)
        }
    }
}

fn run_role<S: webd::ipc::Message, R: webd::ipc::Message>(
    role: Role,
    body: fn(webd::ipc::Channel<S, R>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    webd::sys::process::ignore_operator_signals();
    webd::fault::exit_if_injected(role);
    let channel = webd::sys::spawn::take_inherited_channel()?;
    body(webd::ipc::Channel::new(channel))
}
