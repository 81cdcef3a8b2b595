//! `mmt`: the command-line entry point of the MMT transcription engine.

mod bench;
mod cli;
mod run;
mod serve;
mod transcribe;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.command.default_log_level());
    match cli.command.run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mmt: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Structured JSON logs on stderr; `RUST_LOG` overrides the command's default level.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(true)
        .init();
}
