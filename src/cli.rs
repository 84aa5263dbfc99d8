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
    /// Log format: `json` (one object per line) or `text`. Default: text on a terminal, json
    /// otherwise. `RUST_LOG` filters what is logged (default `info`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run(ConfigPath),
    /// Validate a configuration file: exit 0 and print a summary, or print every problem and
    /// exit 2.
    Check(ConfigPath),
    /// Run a local Okta-compatible issuer, an echo upstream and the gateway on loopback, and
    /// print the curl commands to try them.
    Demo(DemoConfigPath),
    /// Ask a running gateway's admin listener whether it is healthy: exit 0 if `/healthz`
    /// (or `--path`) answers 200, 1 otherwise. Needs no shell, for container health checks.
    Health(HealthArgs),
}

/// `--config PATH`.
#[derive(Debug, Args)]
pub struct ConfigPath {
    /// Path of the TOML configuration file.
    #[arg(long, short, default_value = "config/jwtgate.toml")]
    pub config: PathBuf,
}

/// Arguments of `jwtgate health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Configuration whose `server.admin_listen` is asked.
    #[arg(long, short, default_value = "config/jwtgate.toml")]
    pub config: PathBuf,
    /// Admin path to ask: `/healthz` (alive) or `/readyz` (ready for traffic).
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Full URL to ask instead of the configuration's admin address.
    #[arg(long)]
    pub url: Option<String>,
}

/// `--config PATH` for the demo.
#[derive(Debug, Args)]
pub struct DemoConfigPath {
    /// Path of the demo configuration file.
    #[arg(long, short, default_value = "config/demo.toml")]
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
        Some(Command::Demo(c)) => demo(&c.config),
        Some(Command::Health(h)) => health(&h),
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

fn runtime(config: &Config) -> Result<tokio::runtime::Runtime, CliError> {
    // One worker means one thread: tokio's current-thread scheduler runs every task on the
    // thread that drives it, with no work-stealing queues or cross-thread wake-ups to pay for
    // (measured in docs/performance.md). More workers use the multi-threaded scheduler.
    let mut runtime = match config.server.workers {
        Some(n) if n.get() == 1 => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n.get());
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime
        .enable_all()
        .build()
        .map_err(|e| CliError::Fatal(format!("cannot start the runtime: {e}")))
}

fn demo(path: &Path) -> Result<(), CliError> {
    let config = load(path)?;
    runtime(&config)?.block_on(async {
        // Installed before anything is announced, so a signal sent right after never meets
        // the default action.
        let signals = Signals::install()?;
        let demo = crate::demo::Demo::start(config)
            .await
            .map_err(|e| match e {
                crate::demo::DemoError::Config(m) => CliError::Config(m),
                crate::demo::DemoError::Gateway(StartError::Tls(e)) => {
                    CliError::Config(e.to_string())
                }
                other => CliError::Fatal(other.to_string()),
            })?;
        println!("{}", demo.walkthrough());
        signals.recv().await;
        tracing::info!("shutdown requested");
        demo.gateway.shutdown();
        demo.gateway.wait().await;
        Ok(())
    })
}

fn health(args: &HealthArgs) -> Result<(), CliError> {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => admin_url(args)?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Fatal(format!("cannot start the runtime: {e}")))?;
    let status = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<crate::body::Body>();
        let request = http::Request::get(&url)
            .body(crate::body::empty())
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(std::time::Duration::from_secs(3), client.request(request)).await
        {
            Ok(Ok(response)) => Ok(response.status()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 3s".to_owned()),
        }
    });
    match status {
        Ok(s) if s.is_success() => {
            println!("{url}: {s}");
            Ok(())
        }
        Ok(s) => Err(CliError::Fatal(format!("{url}: {s}"))),
        Err(e) => Err(CliError::Fatal(format!("{url}: {e}"))),
    }
}

fn admin_url(args: &HealthArgs) -> Result<String, CliError> {
    let config = load(&args.config)?;
    let Some(mut admin) = config.server.admin_listen else {
        return Err(CliError::Config(format!(
            "{}: server.admin_listen is not set, so there is nothing to ask",
            args.config.display()
        )));
    };
    if admin.ip().is_unspecified() {
        admin.set_ip(if admin.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(format!("http://{admin}{}", args.path))
}

fn run_gateway(path: &Path) -> Result<(), CliError> {
    let config = load(path)?;
    if config.demo.is_some() {
        tracing::info!("the [demo] table is read only by `jwtgate demo`");
    }
    runtime(&config)?.block_on(async {
        let signals = Signals::install()?;
        // SIGHUP too is listened for before the gateway announces itself: its default action
        // ends the process, and a reload sent right after start must not.
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| CliError::Fatal(format!("cannot listen for SIGHUP: {e}")))?;
        let gateway = Gateway::start(config).await.map_err(|e| match e {
            StartError::Tls(e) => CliError::Config(e.to_string()),
            other => CliError::Fatal(other.to_string()),
        })?;
        let reloader = crate::reload::spawn(path.to_path_buf(), gateway.control(), Some(hangup))
            .map_err(|e| CliError::Fatal(format!("cannot watch {}: {e}", path.display())))?;
        signals.recv().await;
        reloader.abort();
        tracing::info!("shutdown requested");
        gateway.shutdown();
        gateway.wait().await;
        Ok(())
    })
}

/// SIGTERM and SIGINT listeners, installed before the gateway announces itself.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, CliError> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())
            .map_err(|e| CliError::Fatal(format!("cannot listen for SIGTERM: {e}")))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| CliError::Fatal(format!("cannot listen for SIGINT: {e}")))?;
        Ok(Signals { term, int })
    }

    /// Resolves on the first SIGTERM or SIGINT.
    async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
