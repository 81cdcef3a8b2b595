//! Tests of the whole configuration: defaults, every validation rule, all problems
//! at once, and redaction.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn pairs(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(vars: &[(&str, &str)]) -> Loaded {
    Config::load_vars_in(pairs(vars), &InstallRoot::at("/srv/mmt"))
}

fn problems(vars: &[(&str, &str)]) -> Vec<Problem> {
    load(vars).report.problems().to_vec()
}

/// The problems about `variable`, as (severity, message).
fn about(vars: &[(&str, &str)], variable: &str) -> Vec<(Severity, String)> {
    problems(vars)
        .into_iter()
        .filter(|p| p.variable == variable)
        .map(|p| (p.severity, p.message))
        .collect()
}

fn severity_of(vars: &[(&str, &str)], variable: &str) -> Option<Severity> {
    let found = about(vars, variable);
    assert!(found.len() <= 1, "{variable}: {found:?}");
    found.first().map(|(s, _)| *s)
}

const SECRET: &str = "s3cr3t-0123456789-abcdefghijklmnop";

/// A production configuration with no problem at all.
fn good_prod() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ENV", "prod"),
        (
            "DATABASE_URL",
            "postgres://mmt:db-pa55word@db.internal:5432/mmt\
             ?sslmode=verify-full&sslrootcert=/etc/mmt/db-ca.pem",
        ),
        ("INTERNAL_JWT_SECRET", SECRET),
        ("SSL_CERT_FILE", "/etc/mmt/tls.crt"),
        ("SSL_KEY_FILE", "/etc/mmt/tls.key"),
        ("AUDIT_LOG_FILE", "/var/log/mmt/audit.jsonl"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318"),
        ("MMT_ENCRYPTION_KEYS", "/etc/mmt/keyring.json"),
    ]
}

fn with(
    mut base: Vec<(&'static str, &'static str)>,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    for (name, value) in extra {
        base.retain(|(n, _)| n != name);
        base.push((name, value));
    }
    base
}

// ---------------------------------------------------------------- defaults

#[test]
fn no_variables_give_a_clean_dev_configuration() {
    let loaded = load(&[]);
    assert!(loaded.report.is_clean(), "{}", loaded.report);
    let c = loaded.config;
    assert_eq!(c.environment, Environment::Dev);
    assert_eq!(c.database.url.expose(), "sqlite://mmt.db");
    assert_eq!(c.database.url.kind(), DatabaseKind::Sqlite);
    assert!(c.database.url_defaulted);
    assert_eq!(c.audit.log_file, PathBuf::from("audit.jsonl"));
    assert!(c.security.internal_jwt_secret.is_none());
    assert!(c.security.enforce_tls_in_production);
    assert!(c.workers.optimization_enabled);
    assert_eq!(
        (
            c.workers.min_workers_per_core,
            c.workers.max_workers_per_core
        ),
        (0.5, 0.5)
    );
    assert_eq!(c.workers.async_max_workers, 32);
    assert_eq!(c.workers.async_queue_maxsize, 1000);
    assert!(!c.rabbitmq.enabled && c.rabbitmq.host.is_none());
    assert!(!c.redis.enabled && !c.redis.bloom_idempotency);
    assert_eq!(c.redis.bloom_key_prefix, "mmt:idem");
    assert_eq!(c.redis.bloom_ttl, Duration::from_secs(86_400));
    assert_eq!(c.retention.retention_days, 30);
    assert_eq!(c.retention.retention(), Duration::from_secs(30 * 86_400));
    assert_eq!(c.retention.async_task_retention_days, 7);
    assert_eq!(c.reprocess.max_attempts, 5);
    assert_eq!(c.reprocess.backoff_base, Duration::from_secs(2));
    assert!(!c.telemetry.sdk_disabled);
    assert_eq!(c.telemetry.service_name, "mmt");
    assert_eq!(c.telemetry.otlp_protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(
        c.telemetry.effective_otlp_endpoint(),
        "http://localhost:4318"
    );
    assert_eq!(c.telemetry.traces_sampler, Sampler::ParentBasedAlwaysOn);
    assert_eq!(c.telemetry.traces_exporter, [Exporter::Otlp]);
    assert_eq!(
        c.telemetry.propagators,
        [Propagator::TraceContext, Propagator::Baggage]
    );
    assert_eq!(c.telemetry.otlp_timeout, Duration::from_secs(10));
    assert_eq!(c.model.model_dir, PathBuf::from("/srv/mmt/models/tiny.en"));
    assert_eq!(
        c.model.ort_library,
        PathBuf::from(
            "/srv/mmt/.venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"
        )
    );
    assert_eq!(c.model.intra_op_threads, None);
}

#[test]
fn default_is_the_empty_environment_and_from_vars_accepts_it() {
    assert!(Config::from_vars(Vec::new()).is_ok());
    assert_eq!(Config::default().environment, Environment::Dev);
}

#[test]
fn values_are_read_and_typed() {
    let c = load(&[
        ("ENV", "production"),
        ("WORKER_POOL_OPTIMIZATION_ENABLED", "No"),
        ("MIN_WORKERS_PER_CORE", "2"),
        ("MAX_WORKERS_PER_CORE", "4"),
        ("EXTERNAL_REDIS_ENABLED", "YES"),
        ("EXTERNAL_REDIS_HOST", "redis.internal"),
        ("EXTERNAL_RABBITMQ_ENABLED", "1"),
        ("EXTERNAL_RABBITMQ_HOST", "rabbit.internal:5673"),
        ("BACKOFF_BASE_SECONDS", "0.25"),
        ("REDIS_BLOOM_TTL_SECONDS", "3600"),
        ("OTEL_SERVICE_NAME", "mmt-worker"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        ("MMT_MODEL_DIR", "/models/tiny.en"),
        ("ORT_DYLIB_PATH", "/opt/ort/libonnxruntime.so.1.31.1"),
        ("MMT_INTRA_OP_THREADS", "3"),
    ])
    .config;
    assert_eq!(c.environment, Environment::Prod);
    assert!(!c.workers.optimization_enabled);
    assert_eq!(c.workers.max_workers_per_core, 4.0);
    assert_eq!(c.redis.host.as_ref().map(|h| h.port), Some(6379));
    assert_eq!(
        c.rabbitmq.host.as_ref().map(|h| h.to_string()).as_deref(),
        Some("rabbit.internal:5673")
    );
    assert_eq!(c.reprocess.backoff_base, Duration::from_millis(250));
    assert_eq!(c.redis.bloom_ttl, Duration::from_secs(3600));
    assert_eq!(c.telemetry.service_name, "mmt-worker");
    assert_eq!(
        c.telemetry.effective_otlp_endpoint(),
        "http://localhost:4317"
    );
    assert!((c.telemetry.sampling_ratio() - 0.1).abs() < f64::EPSILON);
    assert_eq!(c.telemetry.metrics_exporter, [Exporter::Prometheus]);
    assert_eq!(c.model.model_dir, PathBuf::from("/models/tiny.en"));
    assert_eq!(c.model.intra_op_threads, Some(3));
    assert_eq!(c.worker_plan(8).intra_op_threads, 3);
}

#[test]
fn service_name_falls_back_to_the_resource_attribute() {
    let c = load(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")]).config;
    assert_eq!(c.telemetry.service_name, "from-attrs");
}

#[test]
fn a_good_prod_configuration_is_clean() {
    let loaded = load(&good_prod());
    assert!(loaded.report.is_clean(), "{}", loaded.report);
    assert!(loaded.into_result().is_ok());
}

// ---------------------------------------------------------------- ENV

#[test]
fn an_unknown_env_is_fatal_and_judged_as_prod() {
    let loaded = load(&[("ENV", "prdo")]);
    assert_eq!(loaded.config.environment, Environment::Prod);
    let env = about(&[("ENV", "prdo")], "ENV");
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].0, Severity::Fatal);
    assert!(
        env[0].1.contains("dev, test, staging, prod"),
        "{}",
        env[0].1
    );
    assert!(!env[0].1.contains("prdo"), "no value is repeated");
    // judged as prod: the SQLite default is refused too
    assert_eq!(
        severity_of(&[("ENV", "prdo")], "DATABASE_URL"),
        Some(Severity::Fatal)
    );
}

// ---------------------------------------------------------------- database

#[test]
fn sqlite_is_fatal_in_prod_a_warning_in_staging_fine_in_dev() {
    let sqlite = [("DATABASE_URL", "sqlite://mmt.db")];
    assert_eq!(
        severity_of(&with(good_prod(), &sqlite), "DATABASE_URL"),
        Some(Severity::Fatal)
    );
    let staging = with(good_prod(), &[("ENV", "staging"), sqlite[0]]);
    assert_eq!(
        severity_of(&staging, "DATABASE_URL"),
        Some(Severity::Warning)
    );
    for env in ["dev", "test"] {
        assert_eq!(
            severity_of(&[("ENV", env), sqlite[0]], "DATABASE_URL"),
            None
        );
    }
}

#[test]
fn an_unset_database_url_is_fatal_in_prod() {
    let vars: Vec<_> = good_prod()
        .into_iter()
        .filter(|(n, _)| *n != "DATABASE_URL")
        .collect();
    let found = about(&vars, "DATABASE_URL");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, Severity::Fatal);
    assert!(found[0].1.contains("not set"));
}

#[test]
fn an_unparsable_database_url_is_fatal_once_and_never_echoed() {
    let vars = with(
        good_prod(),
        &[("DATABASE_URL", "postgress://u:hunter2@db/mmt")],
    );
    let found = about(&vars, "DATABASE_URL");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Severity::Fatal);
    assert!(found[0].1.contains("postgres://"));
    assert!(!found[0].1.contains("hunter2"));
}

// ---------------------------------------------------------------- security

#[test]
fn a_short_jwt_secret_is_fatal_in_prod_and_a_warning_elsewhere() {
    let short = [("INTERNAL_JWT_SECRET", "too-short")];
    assert_eq!(
        severity_of(&with(good_prod(), &short), "INTERNAL_JWT_SECRET"),
        Some(Severity::Fatal)
    );
    for env in ["dev", "test", "staging"] {
        assert_eq!(
            severity_of(&[("ENV", env), short[0]], "INTERNAL_JWT_SECRET"),
            Some(Severity::Warning),
            "{env}"
        );
    }
    let message = &about(&with(good_prod(), &short), "INTERNAL_JWT_SECRET")[0].1;
    assert!(!message.contains("too-short"));
}

#[test]
fn a_missing_jwt_secret_is_fatal_in_prod_only() {
    let vars: Vec<_> = good_prod()
        .into_iter()
        .filter(|(n, _)| *n != "INTERNAL_JWT_SECRET")
        .collect();
    assert_eq!(
        severity_of(&vars, "INTERNAL_JWT_SECRET"),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(&[("ENV", "staging")], "INTERNAL_JWT_SECRET"),
        Some(Severity::Warning)
    );
    assert_eq!(severity_of(&[], "INTERNAL_JWT_SECRET"), None);
}

#[test]
fn prod_with_enforced_tls_needs_both_files() {
    let vars: Vec<_> = good_prod()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("SSL_"))
        .collect();
    assert_eq!(severity_of(&vars, "SSL_CERT_FILE"), Some(Severity::Fatal));
    assert_eq!(severity_of(&vars, "SSL_KEY_FILE"), Some(Severity::Fatal));
    // not enforced: allowed, with a warning about the choice
    let relaxed = with(vars, &[("ENFORCE_TLS_IN_PRODUCTION", "false")]);
    assert_eq!(severity_of(&relaxed, "SSL_CERT_FILE"), None);
    assert_eq!(
        severity_of(&relaxed, "ENFORCE_TLS_IN_PRODUCTION"),
        Some(Severity::Warning)
    );
    // outside prod nothing is required
    assert_eq!(severity_of(&[("ENV", "staging")], "SSL_CERT_FILE"), None);
}

#[test]
fn half_a_tls_pair_is_a_warning_when_tls_is_optional() {
    // SSL_CERT_FILE alone is common: OpenSSL reads it as the CA bundle.
    assert_eq!(
        severity_of(&[("SSL_CERT_FILE", "/etc/tls.crt")], "SSL_KEY_FILE"),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(&[("SSL_KEY_FILE", "/etc/tls.key")], "SSL_CERT_FILE"),
        Some(Severity::Warning)
    );
}

// ---------------------------------------------------------------- workers

#[test]
fn min_above_max_workers_is_fatal() {
    let vars = [("MIN_WORKERS_PER_CORE", "3"), ("MAX_WORKERS_PER_CORE", "2")];
    assert_eq!(
        severity_of(&vars, "MIN_WORKERS_PER_CORE"),
        Some(Severity::Fatal)
    );
}

#[test]
fn zero_pool_sizes_are_fatal() {
    for variable in [
        "MAX_WORKERS_PER_CORE",
        "ASYNC_MAX_WORKERS",
        "ASYNC_QUEUE_MAXSIZE",
    ] {
        let vars = [(variable, "0"), ("MIN_WORKERS_PER_CORE", "0")];
        assert_eq!(
            severity_of(&vars, variable),
            Some(Severity::Fatal),
            "{variable}"
        );
    }
}

#[test]
fn a_queue_smaller_than_the_pool_is_a_warning() {
    let vars = [("ASYNC_QUEUE_MAXSIZE", "4"), ("ASYNC_MAX_WORKERS", "8")];
    assert_eq!(
        severity_of(&vars, "ASYNC_QUEUE_MAXSIZE"),
        Some(Severity::Warning)
    );
}

#[test]
fn worker_plan_follows_the_configuration() {
    let c = load(&[("MAX_WORKERS_PER_CORE", "2"), ("ASYNC_MAX_WORKERS", "12")]).config;
    let plan = c.worker_plan(8);
    assert_eq!((plan.workers, plan.intra_op_threads), (12, 1));
    assert_eq!(plan.limited_by, WorkerLimit::AsyncMaxWorkers);
    let plan = c.worker_plan(4);
    assert_eq!(
        (plan.workers, plan.limited_by),
        (8, WorkerLimit::PerCoreMax)
    );
}

#[test]
fn workers_per_core_may_be_a_fraction_but_not_negative() {
    let c = load(&[
        ("MAX_WORKERS_PER_CORE", "0.25"),
        ("MIN_WORKERS_PER_CORE", "0.25"),
    ])
    .config;
    let plan = c.worker_plan(8);
    assert_eq!((plan.workers, plan.intra_op_threads), (2, 4));
    assert!(!plan.below_min_per_core);
    assert_eq!(
        severity_of(&[("MAX_WORKERS_PER_CORE", "-1")], "MAX_WORKERS_PER_CORE"),
        Some(Severity::Fatal)
    );
}

// ---------------------------------------------------------------- brokers

#[test]
fn an_enabled_external_service_needs_its_host() {
    for (switch, host) in [
        ("EXTERNAL_RABBITMQ_ENABLED", "EXTERNAL_RABBITMQ_HOST"),
        ("EXTERNAL_REDIS_ENABLED", "EXTERNAL_REDIS_HOST"),
    ] {
        assert_eq!(
            severity_of(&[(switch, "true")], host),
            Some(Severity::Fatal),
            "{host}"
        );
        assert_eq!(
            severity_of(&[(host, "broker")], host),
            Some(Severity::Warning),
            "{host}"
        );
        assert_eq!(
            severity_of(&[(switch, "true"), (host, "broker")], host),
            None
        );
    }
}

#[test]
fn a_local_external_host_is_a_warning_in_prod_only() {
    for (switch, host) in [
        ("EXTERNAL_RABBITMQ_ENABLED", "EXTERNAL_RABBITMQ_HOST"),
        ("EXTERNAL_REDIS_ENABLED", "EXTERNAL_REDIS_HOST"),
    ] {
        let local = [(switch, "true"), (host, "localhost")];
        assert_eq!(
            severity_of(&with(good_prod(), &local), host),
            Some(Severity::Warning)
        );
        assert_eq!(severity_of(&local, host), None);
        let remote = with(good_prod(), &[(switch, "true"), (host, "10.0.3.4")]);
        assert_eq!(severity_of(&remote, host), None);
    }
}

#[test]
fn a_host_with_credentials_is_rejected_without_echoing_them() {
    let vars = [
        ("EXTERNAL_RABBITMQ_ENABLED", "true"),
        ("EXTERNAL_RABBITMQ_HOST", "amqp://guest:rabbit-pw@rabbit"),
    ];
    let found = about(&vars, "EXTERNAL_RABBITMQ_HOST");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, Severity::Fatal);
    assert!(!found[0].1.contains("rabbit-pw"));
}

#[test]
fn bloom_idempotency_needs_external_redis_and_a_ttl() {
    assert_eq!(
        severity_of(
            &[("ENABLE_REDIS_BLOOM_IDEMPOTENCY", "true")],
            "ENABLE_REDIS_BLOOM_IDEMPOTENCY"
        ),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(
            &[("REDIS_BLOOM_TTL_SECONDS", "0")],
            "REDIS_BLOOM_TTL_SECONDS"
        ),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(
            &[("REDIS_BLOOM_TTL_SECONDS", "1.5")],
            "REDIS_BLOOM_TTL_SECONDS"
        ),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(
            &[("REDIS_BLOOM_KEY_PREFIX", "a b")],
            "REDIS_BLOOM_KEY_PREFIX"
        ),
        Some(Severity::Fatal)
    );
    let ok = [
        ("ENABLE_REDIS_BLOOM_IDEMPOTENCY", "yes"),
        ("EXTERNAL_REDIS_ENABLED", "yes"),
        ("EXTERNAL_REDIS_HOST", "redis:6380"),
    ];
    assert!(problems(&ok).is_empty());
}

// ---------------------------------------------------------------- retention, reprocess

#[test]
fn zero_retention_is_fatal() {
    assert_eq!(
        severity_of(&[("RETENTION_DAYS", "0")], "RETENTION_DAYS"),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(
            &[("ASYNC_TASK_RETENTION_DAYS", "0")],
            "ASYNC_TASK_RETENTION_DAYS"
        ),
        Some(Severity::Fatal)
    );
}

#[test]
fn task_records_outliving_transcripts_is_a_warning() {
    let vars = [("RETENTION_DAYS", "7"), ("ASYNC_TASK_RETENTION_DAYS", "30")];
    assert_eq!(
        severity_of(&vars, "ASYNC_TASK_RETENTION_DAYS"),
        Some(Severity::Warning)
    );
}

#[test]
fn reprocess_warnings() {
    assert_eq!(
        severity_of(&[("MAX_REPROCESS_ATTEMPTS", "0")], "MAX_REPROCESS_ATTEMPTS"),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(&[("BACKOFF_BASE_SECONDS", "0")], "BACKOFF_BASE_SECONDS"),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(
            &[("MAX_REPROCESS_ATTEMPTS", "30")],
            "MAX_REPROCESS_ATTEMPTS"
        ),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(&[("BACKOFF_BASE_SECONDS", "-2")], "BACKOFF_BASE_SECONDS"),
        Some(Severity::Fatal)
    );
}

// ---------------------------------------------------------------- audit, model

#[test]
fn audit_log_rules() {
    assert_eq!(
        severity_of(&[("AUDIT_LOG_FILE", "/var/log/mmt/")], "AUDIT_LOG_FILE"),
        Some(Severity::Fatal)
    );
    let relative = with(good_prod(), &[("AUDIT_LOG_FILE", "audit.jsonl")]);
    assert_eq!(
        severity_of(&relative, "AUDIT_LOG_FILE"),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(&[("AUDIT_LOG_FILE", "audit.jsonl")], "AUDIT_LOG_FILE"),
        None
    );
    // Mandatory in prod, a warning in staging, the `--out` default in dev.
    let unset: Vec<_> = good_prod()
        .into_iter()
        .filter(|(name, _)| *name != "AUDIT_LOG_FILE")
        .collect();
    assert_eq!(severity_of(&unset, "AUDIT_LOG_FILE"), Some(Severity::Fatal));
    let staging = with(unset, &[("ENV", "staging")]);
    assert_eq!(
        severity_of(&staging, "AUDIT_LOG_FILE"),
        Some(Severity::Warning)
    );
    assert_eq!(severity_of(&[], "AUDIT_LOG_FILE"), None);
    assert_eq!(
        severity_of(&[("MMT_AUDIT_ROTATE_MB", "lots")], "MMT_AUDIT_ROTATE_MB"),
        Some(Severity::Fatal)
    );
    let never = load(&[("MMT_AUDIT_ROTATE_MB", "0")]);
    assert!(never.report.is_clean(), "{}", never.report);
    assert_eq!(never.config.audit.rotate_bytes(), None);
}

#[test]
fn ort_library_rules() {
    assert_eq!(
        severity_of(&[("ORT_DYLIB_PATH", "/opt/models")], "ORT_DYLIB_PATH"),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(
            &[("ORT_DYLIB_PATH", "/opt/libonnxruntime.so.1.20.0")],
            "ORT_DYLIB_PATH"
        ),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(
            &[("ORT_DYLIB_PATH", "/opt/libonnxruntime.so")],
            "ORT_DYLIB_PATH"
        ),
        None
    );
}

#[test]
fn check_files_looks_at_the_file_system() -> std::io::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = InstallRoot::at(dir.path());
    let missing = Config::load_vars_in(
        pairs(&[
            ("SSL_CERT_FILE", "/nonexistent/crt"),
            ("SSL_KEY_FILE", "/nonexistent/key"),
            ("AUDIT_LOG_FILE", "/nonexistent/audit.jsonl"),
        ]),
        &root,
    )
    .config;
    let variables: Vec<&str> = missing.check_files().iter().map(|p| p.variable).collect();
    assert_eq!(
        variables,
        [
            "MMT_MODEL_DIR",
            "ORT_DYLIB_PATH",
            "AUDIT_LOG_FILE",
            "SSL_CERT_FILE",
            "SSL_KEY_FILE"
        ]
    );

    std::fs::create_dir_all(root.default_model_dir())?;
    let library = root.default_ort_library().to_owned();
    if let Some(parent) = library.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&library, b"")?;
    let present = Config::load_vars_in(Vec::new(), &root).config;
    assert!(present.check_files().is_empty());
    Ok(())
}

// ---------------------------------------------------------------- telemetry

#[test]
fn telemetry_rules() {
    let ratio = |arg| {
        [
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", arg),
        ]
    };
    assert_eq!(
        severity_of(&ratio("1.5"), "OTEL_TRACES_SAMPLER_ARG"),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(&ratio("half"), "OTEL_TRACES_SAMPLER_ARG"),
        Some(Severity::Fatal)
    );
    assert_eq!(severity_of(&ratio("0.5"), "OTEL_TRACES_SAMPLER_ARG"), None);
    assert_eq!(
        severity_of(
            &[
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5")
            ],
            "OTEL_TRACES_SAMPLER_ARG"
        ),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(
            &[("OTEL_TRACES_SAMPLER", "sometimes")],
            "OTEL_TRACES_SAMPLER"
        ),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")],
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        ),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")],
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(
            &[("OTEL_TRACES_EXPORTER", "prometheus")],
            "OTEL_TRACES_EXPORTER"
        ),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(&[("OTEL_LOGS_EXPORTER", "otlp,none")], "OTEL_LOGS_EXPORTER"),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(
            &[("OTEL_PROPAGATORS", "tracecontext,w3c")],
            "OTEL_PROPAGATORS"
        ),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(
            &[("OTEL_RESOURCE_ATTRIBUTES", "oops")],
            "OTEL_RESOURCE_ATTRIBUTES"
        ),
        Some(Severity::Fatal)
    );
    assert_eq!(
        severity_of(&[("OTEL_SDK_DISABLED", "perhaps")], "OTEL_SDK_DISABLED"),
        Some(Severity::Fatal)
    );
}

#[test]
fn prod_without_a_collector_endpoint_is_a_warning_unless_disabled() {
    let vars: Vec<_> = good_prod()
        .into_iter()
        .filter(|(n, _)| *n != "OTEL_EXPORTER_OTLP_ENDPOINT")
        .collect();
    assert_eq!(
        severity_of(&vars, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some(Severity::Warning)
    );
    let disabled = with(vars, &[("OTEL_SDK_DISABLED", "true")]);
    assert_eq!(severity_of(&disabled, "OTEL_EXPORTER_OTLP_ENDPOINT"), None);
}

// ---------------------------------------------------------------- typos

#[test]
fn unknown_mmt_variables_are_warned_about() {
    let found = about(&[("MMT_MODEL_DRI", "/m")], "MMT_*");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, Severity::Warning);
    assert!(found[0].1.contains("MMT_MODEL_DRI"));
    assert!(problems(&[("HOME", "/root"), ("OTEL_FOO", "x")]).is_empty());
}

// ---------------------------------------------------------------- all at once

#[test]
fn every_problem_is_reported_at_once() {
    let vars = [
        ("ENV", "prod"),
        ("DATABASE_URL", "sqlite://mmt.db"),
        ("INTERNAL_JWT_SECRET", "short"),
        ("MIN_WORKERS_PER_CORE", "4"),
        ("MAX_WORKERS_PER_CORE", "2"),
        ("ASYNC_MAX_WORKERS", "lots"),
        ("RETENTION_DAYS", "0"),
        ("EXTERNAL_REDIS_ENABLED", "true"),
        ("EXTERNAL_RABBITMQ_ENABLED", "maybe"),
        ("BACKOFF_BASE_SECONDS", "soon"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
    ];
    let loaded = load(&vars);
    let fatal: BTreeSet<&str> = loaded
        .report
        .problems()
        .iter()
        .filter(|p| p.is_fatal())
        .map(|p| p.variable)
        .collect();
    let expected: BTreeSet<&str> = [
        "DATABASE_URL",
        "AUDIT_LOG_FILE",
        "INTERNAL_JWT_SECRET",
        "SSL_CERT_FILE",
        "SSL_KEY_FILE",
        "MIN_WORKERS_PER_CORE",
        "ASYNC_MAX_WORKERS",
        "RETENTION_DAYS",
        "EXTERNAL_REDIS_HOST",
        "EXTERNAL_RABBITMQ_ENABLED",
        "BACKOFF_BASE_SECONDS",
        "MMT_ENCRYPTION_KEYS",
    ]
    .into_iter()
    .collect();
    assert_eq!(fatal, expected, "{}", loaded.report);
    assert!(loaded.report.refuses_start());

    let rendered = loaded.report.to_string();
    assert_eq!(rendered.lines().count(), loaded.report.problems().len());
    assert!(rendered
        .lines()
        .all(|l| l.starts_with("FATAL ") || l.starts_with("WARNING ")));
    assert!(rendered.contains("FATAL RETENTION_DAYS: must be at least 1"));
    assert!(rendered.contains("FATAL ASYNC_MAX_WORKERS: expected a whole number"));

    let Err(error) = loaded.into_result() else {
        panic!("start-up must be refused");
    };
    assert_eq!(error.report().fatal_count(), expected.len());
    assert!(error.to_string().contains("FATAL EXTERNAL_REDIS_HOST"));
}

#[test]
fn dev_with_warnings_only_starts() {
    let loaded = load(&[
        ("INTERNAL_JWT_SECRET", "short"),
        ("MAX_REPROCESS_ATTEMPTS", "0"),
    ]);
    assert_eq!(loaded.report.warning_count(), 2);
    assert!(!loaded.report.refuses_start());
    assert!(loaded.into_result().is_ok());
}

#[test]
fn fatal_problems_refuse_start_outside_prod_too() {
    assert!(Config::from_vars(pairs(&[("RETENTION_DAYS", "0")])).is_err());
}

// ---------------------------------------------------------------- redaction

#[test]
fn secrets_never_appear_in_debug_display_json_or_problems() {
    let vars = with(
        good_prod(),
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=otel-t0ken-value"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://user:endpoint-pw@collector:4318",
            ),
            // make sure problem messages are produced too
            ("RETENTION_DAYS", "0"),
        ],
    );
    let loaded = load(&vars);
    let json = serde_json::to_string(&loaded.config).expect("serializes");
    let report_json = serde_json::to_string(&loaded.report).expect("serializes");
    let shown = [
        format!("{:?}", loaded.config),
        format!("{:#?}", loaded.config),
        json.clone(),
        loaded.report.to_string(),
        report_json,
        loaded.config.database.url.to_string(),
    ];
    for text in &shown {
        for secret in [SECRET, "db-pa55word", "otel-t0ken-value", "endpoint-pw"] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
    assert!(json.contains(REDACTED));
    assert!(json.contains("postgres://mmt:***@db.internal:5432/mmt"));
    // the values are still there for the code that needs them
    let c = &loaded.config;
    assert_eq!(
        c.security.internal_jwt_secret.as_ref().map(Secret::expose),
        Some(SECRET)
    );
    assert!(c.database.url.expose().contains("db-pa55word"));
}

#[test]
fn effective_config_serializes_with_readable_units() -> Result<(), serde_json::Error> {
    let value = serde_json::to_value(load(&[]).config)?;
    assert_eq!(value["environment"], "dev");
    assert_eq!(value["reprocess"]["backoff_base"], 2.0);
    assert_eq!(value["redis"]["bloom_ttl"], 86400.0);
    assert_eq!(value["telemetry"]["otlp_protocol"], "http/protobuf");
    assert_eq!(value["database"]["url"], "sqlite://mmt.db");
    assert!(value["security"]["internal_jwt_secret"].is_null());
    Ok(())
}

#[test]
#[ignore = "prints a sample report; run with --ignored --nocapture"]
fn print_sample_report() {
    let loaded = load(&[
        ("ENV", "prod"),
        ("DATABASE_URL", "sqlite://mmt.db"),
        ("INTERNAL_JWT_SECRET", "short"),
        ("MIN_WORKERS_PER_CORE", "4"),
        ("MAX_WORKERS_PER_CORE", "2"),
        ("RETENTION_DAYS", "0"),
        ("EXTERNAL_REDIS_ENABLED", "true"),
        ("EXTERNAL_RABBITMQ_ENABLED", "maybe"),
    ]);
    println!("{}\n{}", loaded.report.summary(), loaded.report);
}

// ---------------------------------------------------------------- JWT

#[test]
fn an_rs256_deployment_needs_no_hs256_secret() {
    let without_secret = || {
        good_prod()
            .into_iter()
            .filter(|(name, _)| *name != "INTERNAL_JWT_SECRET")
            .collect::<Vec<_>>()
    };
    assert_eq!(
        severity_of(&without_secret(), "INTERNAL_JWT_SECRET"),
        Some(Severity::Fatal),
        "no key at all"
    );
    let rs256_only = with(
        without_secret(),
        &[("MMT_JWT_PUBLIC_KEYS_DIR", "/etc/mmt/jwt-keys")],
    );
    // Exactly what the HS256 production configuration gets: nothing more.
    assert_eq!(problems(&rs256_only), problems(&good_prod()));
    let config = load(&rs256_only).config;
    assert!(config.security.internal_jwt_secret.is_none());
    assert_eq!(
        config.security.jwt_public_keys_dir,
        Some(PathBuf::from("/etc/mmt/jwt-keys"))
    );
}

#[test]
fn jwt_leeway_is_validated() {
    assert_eq!(load(&[]).config.security.jwt_leeway_seconds, 60);
    assert_eq!(
        load(&[("MMT_JWT_LEEWAY_SECONDS", "0")])
            .config
            .security
            .jwt_leeway_seconds,
        0
    );
    for bad in ["301", "-1", "a minute"] {
        assert_eq!(
            severity_of(&[("MMT_JWT_LEEWAY_SECONDS", bad)], "MMT_JWT_LEEWAY_SECONDS"),
            Some(Severity::Fatal),
            "{bad}"
        );
    }
    assert!(about(&[("MMT_JWT_AUDIENCE", "mmt")], "MMT_*").is_empty());
}

#[test]
fn a_missing_rs256_key_folder_is_a_file_problem() {
    let config = load(&[("MMT_JWT_PUBLIC_KEYS_DIR", "/nonexistent/keys")]).config;
    assert!(config
        .check_files()
        .iter()
        .any(|p| p.variable == "MMT_JWT_PUBLIC_KEYS_DIR" && p.is_fatal()));
}

#[test]
fn amqp_url_escapes_credentials_and_vhost() {
    let config = load(&[
        ("MMT_RABBITMQ_USER", "mmt@clinic"),
        ("MMT_RABBITMQ_PASSWORD", "p%41ss:w/rd@1"),
        ("MMT_RABBITMQ_VHOST", "/"),
    ])
    .config;
    assert_eq!(
        config.rabbitmq.url(),
        "amqp://mmt%40clinic:p%2541ss%3Aw%2Frd%401@127.0.0.1:5672/%2F"
    );
}

#[test]
fn traces_are_exported_only_to_a_configured_http_protobuf_endpoint() {
    let url = |vars: &[(&str, &str)]| load(vars).config.telemetry.otlp_traces_url();
    assert_eq!(url(&[]), None, "off when unset");
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318/");
    assert_eq!(
        url(&[endpoint]).as_deref(),
        Some("http://otel-collector:4318/v1/traces")
    );
    assert_eq!(url(&[endpoint, ("OTEL_SDK_DISABLED", "true")]), None);
    assert_eq!(url(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]), None);
    let grpc = [endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
    assert_eq!(url(&grpc), None);
    assert_eq!(
        severity_of(&grpc, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        Some(Severity::Warning)
    );
    let https = [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")];
    assert_eq!(url(&https), None);
    assert_eq!(
        severity_of(&https, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some(Severity::Warning)
    );
    assert_eq!(
        severity_of(
            &[endpoint, ("OTEL_TRACES_SAMPLER", "xray")],
            "OTEL_TRACES_SAMPLER"
        ),
        Some(Severity::Warning)
    );
}
