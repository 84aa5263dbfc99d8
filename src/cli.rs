//! The command line (SPEC §1): `run` (default), `check`, `demo`; and the one place that decides
//! what each outcome means for the exit code.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::server::{Gateway, StartError};

/// jwtgate: a reverse-proxy API gateway that enforces Okta-issued JWT access tokens.
#[derive(Debug, Parser)]
#[command(name = "jwtgate", version, about)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run(ConfigPath),
    /// Validate a configuration file: exit 0 and print a summary, or print every problem and
    /// exit 2.
    Check(ConfigPath),
    /// Run a local issuer, an echo upstream and the gateway on loopback (not yet available).
    Demo,
}

/// `--config PATH`.
#[derive(Debug, Args)]
pub struct ConfigPath {
    /// Path of the TOML configuration file.
    #[arg(long, short, default_value = "config/jwtgate.toml")]
    pub config: PathBuf,
}

/// Why a command failed; decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration: exit code 2.
    #[error("{0}")]
    Config(String),
    /// Anything else: exit code 1.
    #[error("{0}")]
    Fatal(String),
}

impl CliError {
    /// SPEC §1: 2 for bad configuration, 1 for any other fatal error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => 2,
            CliError::Fatal(_) => 1,
        }
    }
}

/// Runs the command line.
///
/// # Errors
///
/// A [`CliError`] whose [`exit_code`](CliError::exit_code) the binary returns.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        None => run_gateway(Path::new("config/jwtgate.toml")),
        Some(Command::Run(c)) => run_gateway(&c.config),
        Some(Command::Check(c)) => check(&c.config),
        Some(Command::Demo) => Err(CliError::Fatal(
            "`jwtgate demo` arrives with token validation; it is not available in this build"
                .to_owned(),
        )),
    }
}

fn load(path: &Path) -> Result<Config, CliError> {
    Config::load(path).map_err(|errors| {
        let n = errors.0.len();
        let s = if n == 1 { "" } else { "s" };
        CliError::Config(format!("{errors}\n{n} problem{s} in {}", path.display()))
    })
}

fn check(path: &Path) -> Result<(), CliError> {
    let config = load(path)?;
    if let Some(files) = &config.server.tls {
        crate::server::tls::load(files).map_err(|e| CliError::Config(e.to_string()))?;
    }
    print!("{}", config.summary());
    println!("\n{} is valid", path.display());
    Ok(())
}

fn run_gateway(path: &Path) -> Result<(), CliError> {
    let config = load(path)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = config.server.workers {
        runtime.worker_threads(n.get());
    }
    let runtime = runtime
        .build()
        .map_err(|e| CliError::Fatal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let gateway = Gateway::start(config).await.map_err(|e| match e {
            StartError::Tls(e) => CliError::Config(e.to_string()),
            other => CliError::Fatal(other.to_string()),
        })?;
        shutdown_signal().await?;
        tracing::info!("shutdown requested");
        gateway.shutdown();
        gateway.wait().await;
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::Fatal(format!("cannot listen for SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CliError::Fatal(format!("cannot listen for SIGINT: {e}")))?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
