//! Entry point: run as the daemon, or as the child role named in argv[0].
//!
//! Exit codes: 0 clean stop, 1 runtime error (port in use, unreadable root), 2 usage or
//! configuration error (including inherited sockets that do not fit the configuration).
//! `--check-config` loads the configuration as a start does and exits 0 or 2.

use clap::Parser;
use std::process::ExitCode;
use webd::config::{Cli, Config, ConfigError};
use webd::ipc::Role;
use webd::tls::TlsMaterial;

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
    let loaded = load(&cli);
    if cli.check_config {
        return check_config(&cli, loaded);
    }
    let (config, tls) = match loaded {
        Ok(loaded) => loaded,
        Err((message, code)) => {
            eprintln!("webd: {message}");
            return ExitCode::from(code);
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

/// The configuration a start runs with: flags, config file and its rules, then the
/// certificates. `Err` holds the message (naming the file and key) and the exit code.
fn load(cli: &Cli) -> Result<(Config, TlsMaterial), (String, u8)> {
    let config = Config::load(cli).map_err(|e| {
        let code = match e {
            ConfigError::Usage(_) => 2,
            ConfigError::Runtime(_) => 1,
        };
        (e.to_string(), code)
    })?;
    // Certificates are part of the configuration: a bad file is a usage error too.
    let tls = TlsMaterial::load(&config).map_err(|e| (e.to_string(), 2))?;
    Ok((config, tls))
}

/// `--check-config`: the summary on stdout and 0, or the error on stderr and 2 (whatever
/// a start would exit with: the configuration is what is wrong). Nothing is started.
fn check_config(cli: &Cli, loaded: Result<(Config, TlsMaterial), (String, u8)>) -> ExitCode {
    match loaded {
        Ok((config, tls)) => {
            print!("{}", webd::config::summary(&config, &tls, cli.config.as_deref()));
            ExitCode::SUCCESS
        }
        Err((message, _)) => {
            eprintln!("webd: {message}");
            ExitCode::from(2)
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
