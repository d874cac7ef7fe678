//! The `overlayd` binary: parse the command line, set up logging, dispatch.
//!
//! `overlayd --role ROLE [options]` runs one device of the overlay; `overlayd keygen`,
//! `check-topology`, `status`, `trace`, `core-scenario` and `netns` are tools. The options, their
//! checks and their conversion into each role's configuration are `overlayd::cli`; this file
//! turns the outcome into an exit status. Every error is one line on stderr: exit status 2 for
//! a bad argument, 1 for anything else, never a panic or a backtrace.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;

use overlayd::cli::{self, CliError, Command};
use overlayd::roles;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().collect()) {
        Ok(command) => command,
        Err(code) => return code,
    };
    if let Some(level) = command.log_level() {
        init_logging(level);
    }
    match run(command) {
        Ok(code) => code,
        Err(CliError::Usage(reason)) => {
            eprintln!("overlayd: {reason}");
            ExitCode::from(2)
        }
        Err(CliError::Failed(e)) => {
            // One line: the chain of causes joined, never a backtrace.
            eprintln!("overlayd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Tool(tool) => return Ok(tool.run()?),
        Command::Bootstrapper(args) => {
            let cfg = roles::bootstrapper::BootstrapperConfig::try_from(args)?;
            runtime()?.block_on(async {
                let b = roles::bootstrapper::bind(cfg).await?;
                b.run(roles::shutdown_signal()).await;
                anyhow::Ok(())
            })?;
        }
        Command::Server(args) => {
            let cfg = roles::overlay::OverlayRoleConfig::try_from(args)?;
            runtime()?.block_on(roles::overlay::run(cfg))?;
        }
        Command::Node(args) => {
            let cfg = roles::overlay::OverlayRoleConfig::try_from(args)?;
            runtime()?.block_on(roles::overlay::run(cfg))?;
        }
        Command::Client(args) => {
            let cfg = roles::client::ClientConfig::try_from(args)?;
            runtime()?.block_on(roles::client::run(cfg))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
