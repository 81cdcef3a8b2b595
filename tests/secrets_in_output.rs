//! Secrets never reach a log (issue 15, item 8): passwords and tokens in
//! `DATABASE_URL`, the RabbitMQ password, OpenTelemetry credentials and the
//! signing secrets are given to the real binary, and everything it prints —
//! `mmt check`'s report and effective configuration, the JSON log at trace
//! level (dependencies included), error messages, and every file it wrote —
//! is scanned for them.

// The helpers below are test code too: a failed set-up step should panic.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/scan.rs"]
mod scan;

use common::postgres::{unique, Schema, POSTGRES};
use common::{model_ready, require_service, root};
use scan::{assert_absent, with_files};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const SECRETS: [&str; 8] = [
    "PG-SECRET-1",
    "PG-SECRET-2",
    "SECRET123",
    "RABBIT-SECRET-3",
    "OTEL-SECRET-4",
    "OTEL-SECRET-5",
    "JWT-SECRET-6",
    "HOOK-SECRET-7",
];

/// Every secret-bearing variable MMT reads, each holding its secret.
fn secret_vars(database_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("MMT_RABBITMQ_PASSWORD", "RABBIT-SECRET-3".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://OTEL-SECRET-4@collector.invalid:4318".to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key=OTEL-SECRET-5".to_owned(),
        ),
        (
            "INTERNAL_JWT_SECRET",
            "JWT-SECRET-6-0123456789abcdef-0123456789".to_owned(),
        ),
        (
            "MMT_WEBHOOK_SECRET",
            "HOOK-SECRET-7-0123456789abcdef-0123456789".to_owned(),
        ),
    ]
}

/// `mmt <args>` with `vars`, logging everything at trace level.
fn mmt(args: &[&str], vars: &[(&'static str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(args)
        .current_dir(root())
        .env_remove("AUDIT_LOG_FILE")
        .env_remove("EXTERNAL_RABBITMQ_ENABLED")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_KEY_FILE")
        .env("RUST_LOG", "trace")
        .envs(vars.iter().map(|(name, value)| (*name, value.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn texts(outputs: &[&Output], out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut texts = Vec::new();
    for (i, output) in outputs.iter().enumerate() {
        texts.push((format!("stdout of command {i}"), output.stdout.clone()));
        texts.push((format!("stderr of command {i}"), output.stderr.clone()));
    }
    with_files(texts, out)
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[test]
fn mmt_check_shows_no_secret_in_its_report_or_effective_configuration() {
    let vars = secret_vars(
        "postgres://mmt:PG-SECRET-1@db.invalid:5432/mmt?sslmode=verify-full&password=PG-SECRET-2",
    );
    let report = mmt(&["check"], &vars);
    let json = mmt(&["check", "--json"], &vars);
    let shown = text(&json);
    assert!(
        shown.contains("postgres://mmt:***@db.invalid:5432/mmt?sslmode=verify-full&password=***"),
        "the effective configuration shows the redacted URL:\n{shown}"
    );
    assert!(
        shown.contains("https://***@collector.invalid:4318"),
        "{shown}"
    );
    let out = tempfile::tempdir().unwrap();
    assert_absent(&texts(&[&report, &json], out.path()), &SECRETS);
}

#[test]
fn an_unknown_database_url_parameter_is_refused_by_name_never_by_value() {
    let out = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    let vars = secret_vars("postgres://postgres@127.0.0.1:5432/test?token=SECRET123");
    let check = mmt(&["check"], &vars);
    let run = mmt(
        &[
            "run",
            "--no-progress",
            "--input",
            &input.path().display().to_string(),
            "--out",
            &out.path().display().to_string(),
        ],
        &vars,
    );
    for output in [&check, &run] {
        assert!(!output.status.success(), "refused:\n{}", text(output));
        assert!(
            text(output).contains("DATABASE_URL: has the parameter `token`"),
            "the problem names the parameter:\n{}",
            text(output)
        );
    }
    assert_absent(&texts(&[&check, &run], out.path()), &SECRETS);
}

#[test]
fn runs_log_no_database_or_broker_password_at_trace_level() {
    if !model_ready()
        || !require_service("PostgreSQL", POSTGRES)
        || !require_service("RabbitMQ", "127.0.0.1:5672")
    {
        return;
    }
    let schema = Schema::create(&unique("mmt_secrets"));
    // Trust authentication: the passwords are sent and ignored.
    let database_url = format!(
        "postgres://postgres:PG-SECRET-1@127.0.0.1:5432/test?options[search_path]={}&password=PG-SECRET-2",
        schema.0
    );
    let vars = secret_vars(&database_url);
    let out = tempfile::tempdir().unwrap();
    let input = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("samples/dict_001.wav"),
        input.path().join("a.wav"),
    )
    .unwrap();
    let out_arg = out.path().display().to_string();

    // Through the store (sqlx connects, migrates, writes a job).
    let directory = mmt(
        &[
            "run",
            "--no-progress",
            "--input",
            &input.path().display().to_string(),
            "--out",
            &out_arg,
        ],
        &vars,
    );
    assert!(directory.status.success(), "{}", text(&directory));
    assert!(
        text(&directory).contains("1 transcribed"),
        "{}",
        text(&directory)
    );

    // Through the broker: the password is wrong, so the login is refused.
    let broker = mmt(
        &[
            "run",
            "--source",
            "rabbitmq",
            "--no-progress",
            "--idle-exit",
            "2",
            "--out",
            &out_arg,
        ],
        &vars,
    );
    assert!(!broker.status.success(), "the login is refused");
    assert!(
        text(&broker).contains("ACCESS_REFUSED"),
        "{}",
        text(&broker)
    );
    assert_absent(&texts(&[&directory, &broker], out.path()), &SECRETS);
}
