//! `webctl`: command-line client for the webd control socket (docs/reference.md).
//!
//! Parses the command line ([`cli`]), sends one request over the control socket
//! ([`client`]), prints the answer (a table for `status`, see [`status`]) and
//! exits with the code the spec fixes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | the daemon answered `ok:true` |
//! | 1 | the daemon refused or the action failed (`ok:false`), or its answer was unreadable |
//! | 2 | usage error (clap) |
//! | 3 | the daemon is unreachable (the message names the socket path tried) |
#![forbid(unsafe_code)]

mod cli;
mod client;
mod status;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use client::Reply;

fn main() -> ExitCode {
    // Usage errors exit 2 and --help/--version exit 0, both through clap.
    let cli = Cli::parse();
    let mut stdout = io::stdout().lock();

    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "webctl", &mut stdout);
        return flush(stdout);
    }
    let request = cli.command.request().expect("every command but `completions` sends a request");

    let path = cli.control_socket.clone().unwrap_or_else(default_control_socket);
    let reply = match client::exchange(&path, &request, cli.timeout_for(&request)) {
        Ok(reply) => reply,
        Err(err) => {
            eprintln!("webctl: {err}");
            if cli.json {
                // Scripts reading stdout get an answer of the daemon's shape too.
                let line = serde_json::json!({ "ok": false, "error": err.to_string() });
                let _ = writeln!(stdout, "{line}");
                let _ = stdout.flush();
            }
            return ExitCode::from(err.exit_code());
        }
    };
    let code = report(&cli, &reply, &mut stdout);
    match flush(stdout) {
        ExitCode::SUCCESS => code,
        failed => failed,
    }
}

/// Prints the daemon's answer and returns the exit code it implies.
fn report(cli: &Cli, reply: &Reply, out: &mut impl Write) -> ExitCode {
    let response = &reply.response;
    let text = if cli.json {
        format!("{}\n", reply.raw)
    } else if !response.ok {
        let reason = response.error.as_deref().unwrap_or("webd refused the request");
        eprintln!("webctl: {reason}");
        return ExitCode::from(1);
    } else if let Command::Status = cli.command {
        match &response.status {
            Some(status) => status::render(status),
            None => {
                eprintln!("webctl: webd answered status without a status document");
                return ExitCode::from(1);
            }
        }
    } else {
        format!("{}\n", response.message.as_deref().unwrap_or("ok"))
    };
    if let Err(err) = out.write_all(text.as_bytes()) {
        return stdout_failed(err);
    }
    if response.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The spec's default path for the uid we run as.
fn default_control_socket() -> PathBuf {
    webd_proto::default_control_socket(nix::unistd::getuid().as_raw())
}

fn flush(mut out: impl Write) -> ExitCode {
    match out.flush() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => stdout_failed(err),
    }
}

/// Output that cannot be written (e.g. `webctl status | head -0`) is a failure,
/// reported once instead of a panic from `println!`.
fn stdout_failed(err: io::Error) -> ExitCode {
    if err.kind() != io::ErrorKind::BrokenPipe {
        eprintln!("webctl: cannot write to stdout: {err}");
    }
    ExitCode::from(1)
}
