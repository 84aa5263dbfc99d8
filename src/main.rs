//! The `jwtgate` binary: parse arguments, start logging, run, map the outcome to an exit code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use jwtgate::cli::LogFormat;
use tracing_subscriber::EnvFilter;

// mimalloc's per-thread free lists: a request allocates and frees a few dozen small blocks
// (headers, bodies, futures), and glibc's malloc showed up at about 6% of a profile under load.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = jwtgate::cli::Cli::parse();
    let terminal = std::io::stderr().is_terminal();
    let json = match cli.log_format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Text) => false,
        None => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(terminal && !json)
        // A closed or full stderr must not take the gateway down: tracing-subscriber would
        // otherwise report the failed write with `eprintln!`, which panics.
        .log_internal_errors(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    match jwtgate::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
