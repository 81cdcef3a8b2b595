//! `mmt`: the command-line entry point of the MMT transcription engine.

mod audit;
mod bench;
mod cli;
mod dlq;
mod jwt_keys;
mod keys;
mod otel;
mod run;
mod serve;
mod transcribe;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return_large_buffers_to_the_system();
    let cli = cli::Cli::parse();
    // Flushes the spans not yet exported when the command returns.
    let _tracing = init_logging(cli.command.default_log_level());
    match cli.command.run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("mmt: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Dependencies' log events that print values which must never reach a log,
/// capped whatever `RUST_LOG` asks for (added after it, so they win).
const CAPPED_LOG_TARGETS: &[&str] = &[
    // axum's extractor rejections quote the request (a form's or JSON body's
    // values, which may be PHI).
    "axum::rejection=off",
    // sqlx logs an unrecognised connect parameter with its value (a token in
    // `DATABASE_URL`). The configuration refuses such URLs; this covers any
    // other way a URL reaches the driver.
    "sqlx_postgres::options=error",
    // lapin's trace events print every frame: the credentials of
    // connection.start-ok, and message bodies (audio, patient references).
    "lapin=debug",
];

/// Structured JSON logs on stderr; `RUST_LOG` overrides the command's default
/// level. Spans go to OpenTelemetry as well (see [`otel`]); a log line inside
/// one carries its `trace_id` and `span_id`.
fn init_logging(default_level: &str) -> otel::Tracing {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    for directive in CAPPED_LOG_TARGETS {
        match directive.parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            Err(err) => eprintln!("mmt: a log filter directive does not parse: {err}"),
        }
    }
    // Problems in the OTEL_* variables are `mmt check`'s to report; here the
    // defaults stand in for values that do not parse.
    let telemetry = mmt_pipeline::config::Config::load_env().config.telemetry;
    let (tracer, guard) = otel::tracer(&telemetry);
    let spans = tracer.map(|tracer| tracing_opentelemetry::layer().with_tracer(tracer));
    let json = tracing_subscriber::fmt::format()
        .json()
        .with_current_span(true);
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(std::io::stderr)
        .event_format(otel::WithTraceIds(json));
    // One filter for both layers (tracing-subscriber's per-layer filters lost
    // some of the job's spans here), and it filters spans too: with export on
    // and no RUST_LOG, MMT's own crates run at info, so `mmt run` and `mmt
    // submit` (default `warn`) still trace, and their info lines show as well.
    // An operator's RUST_LOG is taken as written.
    if spans.is_some() && std::env::var_os("RUST_LOG").is_none() {
        match "mmt=info".parse() {
            Ok(directive) => filter = filter.add_directive(directive),
            Err(err) => eprintln!("mmt: a log filter directive does not parse: {err}"),
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(spans)
        .with(logs)
        .init();
    guard
}

/// Buffers of 4 MB or more (audio, encoder activations, cross-attention K/V,
/// freed after every batch) get mappings of their own, which go back to the
/// system when freed. By default glibc raises this threshold after the first
/// such buffer is freed (up to 32 MB), after which they come from the heap and
/// stay resident: about 260 MB of a 2-worker run's peak on a 10-minute file.
/// ONNX Runtime allocates through the same malloc, so this covers it too. (At
/// 1 MB the decoder's per-step buffers would be mapped and faulted in afresh
/// every step, which costs a fifth of the throughput.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_large_buffers_to_the_system() {
    // SAFETY: mallopt only sets a malloc tunable; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
