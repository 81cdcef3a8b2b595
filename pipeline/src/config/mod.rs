//! The typed configuration of MMT, read from environment variables and validated
//! at start-up.
//!
//! Reading never stops at the first problem: every unparsable variable is reported
//! (as [`Severity::Fatal`], naming the variable and the expected form) and replaced by
//! its default, then [`Config::validate`] applies the rules below, and a [`Report`]
//! renders every problem at once, one line each.
//!
//! # Start-up policy
//!
//! Any fatal problem refuses start-up, in every environment
//! ([`Report::refuses_start`]). The development conveniences are rules whose
//! severity depends on `ENV`:
//!
//! | rule | `dev` / `test` | `staging` | `prod` |
//! |---|---|---|---|
//! | `DATABASE_URL` unset (SQLite default) or SQLite | allowed | warning | fatal |
//! | `INTERNAL_JWT_SECRET` unset (and no `MMT_JWT_PUBLIC_KEYS_DIR` or `VAULT_ADDR`) | allowed | warning | fatal |
//! | `AUDIT_LOG_FILE` unset | allowed | warning | fatal |
//! | `INTERNAL_JWT_SECRET` shorter than 32 characters | warning | warning | fatal |
//! | `SSL_CERT_FILE`/`SSL_KEY_FILE` unset while `ENFORCE_TLS_IN_PRODUCTION` | n/a | n/a | fatal |
//! | `ENFORCE_TLS_IN_PRODUCTION=false` | n/a | n/a | warning |
//! | RabbitMQ, Kafka, Redis or the database on another machine without verified TLS | allowed | warning | fatal |
//! | `VAULT_ADDR` `http` to another machine | allowed | warning | fatal |
//! | external Redis/RabbitMQ host on the local machine | allowed | allowed | warning |
//! | relative `AUDIT_LOG_FILE` | allowed | allowed | warning |
//! | OTLP export with no `OTEL_EXPORTER_OTLP_ENDPOINT` | allowed | allowed | warning |
//! | `MMT_ENCRYPTION_KEYS` unset (PHI stored unencrypted) | allowed | warning | fatal |
//!
//! Fatal everywhere: unparsable values; an unknown `ENV` (the rest is then judged as
//! `prod`, so a typo never turns the conveniences on); only one of
//! `SSL_CERT_FILE`/`SSL_KEY_FILE`; `MIN_WORKERS_PER_CORE` above
//! `MAX_WORKERS_PER_CORE`; `MAX_WORKERS_PER_CORE`, `ASYNC_MAX_WORKERS`,
//! `ASYNC_QUEUE_MAXSIZE`, `RETENTION_DAYS`, `ASYNC_TASK_RETENTION_DAYS` or
//! `REDIS_BLOOM_TTL_SECONDS`, `MMT_API_MAX_QUEUED_JOBS` or
//! `MMT_API_MAX_QUEUED_PER_TENANT` of 0; `MMT_WEBHOOK_SECRET` shorter than 32
//! bytes; `EXTERNAL_*_ENABLED` without its `*_HOST`;
//! `ENABLE_REDIS_BLOOM_IDEMPOTENCY` without external Redis; an `ORT_DYLIB_PATH` that
//! does not name ONNX Runtime; a bad `OTEL_TRACES_SAMPLER_ARG` ratio; a link's TLS
//! files (`MMT_{RABBITMQ,REDIS,KAFKA}_TLS_*_FILE`) set while its TLS is off, or a
//! client certificate without its key; Kafka SASL settings that do not match
//! `MMT_KAFKA_SECURITY_PROTOCOL`; an unknown `sslmode`/`ssl-mode` in `DATABASE_URL`
//! (reported when the store is opened).
//!
//! Verified TLS means the server's certificate is checked against a CA and its
//! host name: `MMT_RABBITMQ_TLS=true`, `MMT_REDIS_TLS=true`,
//! `MMT_KAFKA_SECURITY_PROTOCOL=ssl|sasl_ssl`, `sslmode=verify-full` (PostgreSQL,
//! or `PGSSLMODE`) or `ssl-mode=VERIFY_IDENTITY` (MySQL) in `DATABASE_URL`. The
//! drivers' `prefer` defaults, `require` and `verify-ca` do not count. A server on
//! a loopback address or a Unix socket is exempt (nothing crosses the network).
//!
//! Warnings everywhere: a `*_HOST` set without its switch (ignored);
//! `ASYNC_QUEUE_MAXSIZE` below `ASYNC_MAX_WORKERS`; task records kept longer than
//! transcripts; `MAX_REPROCESS_ATTEMPTS` or `BACKOFF_BASE_SECONDS` of 0, or a last
//! retry delayed over a day; OTLP port of the other protocol; a sampler argument the
//! sampler ignores; `MMT_API_MAX_QUEUED_PER_TENANT` above
//! `MMT_API_MAX_QUEUED_JOBS`; an unknown `MMT_*` variable (probably a typo).
//!
//! Empty values count as unset. Secrets (`INTERNAL_JWT_SECRET`, the password in
//! `DATABASE_URL`, `OTEL_EXPORTER_OTLP_HEADERS`, credentials in URLs) never appear in
//! `Debug`, `Display`, the serialized configuration, or a problem message.
//!
//! [`Config::validate`] does no I/O; [`Config::check_files`] is the separate check
//! that looks at the file system (model, ONNX Runtime, TLS files).

mod audio;
mod audit;
mod database;
mod encryption;
mod environment;
mod external;
mod intake;
mod model;
mod net;
mod problem;
mod rabbitmq;
mod redis;
mod reprocess;
mod retention;
mod secret;
mod security;
mod sources;
mod telemetry;
mod tls;
mod vars;
mod vault;
mod webhook;
mod workers;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Serialize, Serializer};

pub use audio::{AudioConfig, DEFAULT_MAX_AUDIO_SECONDS};
pub use audit::AuditConfig;
pub use database::{DatabaseConfig, DatabaseKind, DatabaseUrl};
pub use encryption::{EncryptionConfig, KeyProviderKind};
pub use environment::Environment;
pub use intake::IntakeConfig;
pub use model::{InstallRoot, ModelConfig, ORT_LIBRARY_FILE};
pub use net::{HostPort, HttpUrl};
pub use problem::{ConfigError, Problem, Report, Severity};
pub use rabbitmq::RabbitMqConfig;
pub use redis::RedisConfig;
pub use reprocess::ReprocessConfig;
pub use retention::RetentionConfig;
pub use secret::{Secret, REDACTED};
pub use security::SecurityConfig;
pub use sources::{KafkaConfig, SinksAndIngestConfig};
pub use telemetry::{Exporter, OtlpProtocol, Propagator, Sampler, TelemetryConfig};
pub use vars::parse_bool;
pub use vault::{VaultCredentialsError, VaultSettings};
pub use webhook::WebhookSettings;
pub use workers::{WorkerLimit, WorkerPlan, WorkersConfig};

use vars::{Echo, Vars};

const ENV: &str = "ENV";

/// Every variable MMT reads, besides the `OTEL_*` ones listed in
/// [`TelemetryConfig`].
pub const VARIABLES: &[&str] = &[
    ENV,
    "DATABASE_URL",
    "AUDIT_LOG_FILE",
    "INTERNAL_JWT_SECRET",
    "ENFORCE_TLS_IN_PRODUCTION",
    "SSL_CERT_FILE",
    "SSL_KEY_FILE",
    "WORKER_POOL_OPTIMIZATION_ENABLED",
    "MIN_WORKERS_PER_CORE",
    "MAX_WORKERS_PER_CORE",
    "ASYNC_MAX_WORKERS",
    "ASYNC_QUEUE_MAXSIZE",
    "EXTERNAL_RABBITMQ_ENABLED",
    "EXTERNAL_RABBITMQ_HOST",
    "EXTERNAL_REDIS_ENABLED",
    "EXTERNAL_REDIS_HOST",
    "ENABLE_REDIS_BLOOM_IDEMPOTENCY",
    "REDIS_BLOOM_KEY_PREFIX",
    "REDIS_BLOOM_TTL_SECONDS",
    "RETENTION_DAYS",
    "ASYNC_TASK_RETENTION_DAYS",
    "MAX_REPROCESS_ATTEMPTS",
    "BACKOFF_BASE_SECONDS",
    "MMT_MODEL_DIR",
    "ORT_DYLIB_PATH",
    "MMT_INTRA_OP_THREADS",
    "MMT_MAX_AUDIO_SECONDS",
];

/// The whole configuration, one section per concern. `Serialize` gives the effective
/// configuration with secrets redacted (for `mmt check --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// `ENV`: `dev` (default), `test`, `staging` or `prod`; `development` and
    /// `production` are accepted too.
    pub environment: Environment,
    /// The job store.
    pub database: DatabaseConfig,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Internal authentication and TLS.
    pub security: SecurityConfig,
    /// The worker pool.
    pub workers: WorkersConfig,
    /// RabbitMQ as the job source.
    pub rabbitmq: RabbitMqConfig,
    /// Redis and the idempotency filter.
    pub redis: RedisConfig,
    /// Kafka as the job source.
    pub kafka: KafkaConfig,
    /// Audio references in job messages, and the FHIR server sink.
    pub sinks: SinksAndIngestConfig,
    /// Retention of jobs and task records.
    pub retention: RetentionConfig,
    /// Retries before dead-lettering.
    pub reprocess: ReprocessConfig,
    /// OpenTelemetry.
    pub telemetry: TelemetryConfig,
    /// The transcription model and ONNX Runtime.
    pub model: ModelConfig,
    /// The bounds of `mmt serve`'s job queue.
    pub intake: IntakeConfig,
    /// Limits on the recordings accepted.
    pub audio: AudioConfig,
    /// Completion webhooks of `mmt serve`.
    pub webhook: WebhookSettings,
    /// Encryption at rest (`MMT_ENCRYPTION_KEYS` or `MMT_VAULT_TRANSIT_KEY`).
    pub encryption: EncryptionConfig,
    /// Vault, the source of the API's token keys when `VAULT_ADDR` is set.
    pub vault: VaultSettings,
}

/// A configuration and every problem found reading and validating it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration, with defaults wherever a value was unparsable.
    pub config: Config,
    /// Every problem, parse and validation alike.
    pub report: Report,
}

impl Loaded {
    /// Adds the problems of [`Config::check_files`] (the file system) to the
    /// report, as `mmt check` and start-up see them.
    pub fn with_file_checks(self) -> Self {
        let mut problems = self.report.problems().to_vec();
        problems.extend(self.config.check_files());
        Self {
            report: Report::new(self.report.environment(), problems),
            config: self.config,
        }
    }

    /// The configuration if start-up may proceed, else every problem.
    pub fn into_result(self) -> Result<Config, ConfigError> {
        if self.report.refuses_start() {
            Err(ConfigError::Refused {
                report: self.report,
            })
        } else {
            Ok(self.config)
        }
    }
}

impl Config {
    /// Reads the process environment and validates it; `Err` carries every problem
    /// when start-up must be refused. Warnings are in [`Config::validate`].
    /// Default paths are resolved with [`InstallRoot::discover`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load_env().into_result()
    }

    /// [`Config::from_env`] for an explicit set of variables: pure, no process
    /// environment and no file system (default paths use [`InstallRoot::compiled`]).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        Self::load_vars(vars).into_result()
    }

    /// Reads and validates the process environment, keeping every problem; never
    /// fails (for `mmt check`). A variable whose value is not UTF-8 is a fatal problem.
    pub fn load_env() -> Loaded {
        let mut pairs = Vec::new();
        let mut not_utf8 = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Ok(name) = name.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => pairs.push((name, value)),
                Err(_) => not_utf8.extend(known_variable(&name)),
            }
        }
        let mut vars = Vars::new(pairs);
        for variable in not_utf8 {
            vars.report(Problem::fatal(variable, "is not valid UTF-8"));
        }
        Self::load(vars, &InstallRoot::discover())
    }

    /// Reads and validates `vars`, keeping every problem; pure; never fails.
    pub fn load_vars(vars: impl IntoIterator<Item = (String, String)>) -> Loaded {
        Self::load_vars_in(vars, &InstallRoot::compiled())
    }

    /// [`Config::load_vars`] with default paths resolved under `root`.
    pub fn load_vars_in(
        vars: impl IntoIterator<Item = (String, String)>,
        root: &InstallRoot,
    ) -> Loaded {
        Self::load(Vars::new(vars), root)
    }

    fn load(mut vars: Vars, root: &InstallRoot) -> Loaded {
        let config = Self::read(&mut vars, root);
        warn_unknown(&mut vars);
        let parse_problems = vars.into_problems();
        let unparsable: BTreeSet<&'static str> = parse_problems
            .iter()
            .filter(|p| p.is_fatal())
            .map(|p| p.variable)
            .collect();
        let mut problems = parse_problems;
        // A value that did not parse was replaced by its default: judging the
        // default as well would only add a misleading second problem.
        problems.extend(
            config
                .validate()
                .into_iter()
                .filter(|p| !unparsable.contains(p.variable)),
        );
        let judged_as = config.environment;
        Loaded {
            config,
            report: Report::new(judged_as, problems),
        }
    }

    fn read(vars: &mut Vars, root: &InstallRoot) -> Self {
        let environment = vars
            .parse(ENV, Environment::EXPECTED, Echo::Value, |s| s.parse().ok())
            .unwrap_or(if vars.is_set(ENV) {
                Environment::Prod
            } else {
                Environment::Dev
            });
        Self {
            environment,
            database: DatabaseConfig::from_vars(vars),
            audit: AuditConfig::from_vars(vars),
            security: SecurityConfig::from_vars(vars),
            workers: WorkersConfig::from_vars(vars),
            rabbitmq: RabbitMqConfig::from_vars(vars),
            redis: RedisConfig::from_vars(vars),
            kafka: KafkaConfig::from_vars(vars),
            sinks: SinksAndIngestConfig::from_vars(vars),
            retention: RetentionConfig::from_vars(vars),
            reprocess: ReprocessConfig::from_vars(vars),
            telemetry: TelemetryConfig::from_vars(vars),
            model: ModelConfig::from_vars(vars, root),
            intake: IntakeConfig::from_vars(vars),
            audio: AudioConfig::from_vars(vars),
            webhook: WebhookSettings::from_vars(vars),
            encryption: EncryptionConfig::from_vars(vars),
            vault: VaultSettings::from_vars(vars),
        }
    }

    /// Every rule of the module documentation, applied to this configuration.
    /// Pure: no I/O.
    pub fn validate(&self) -> Vec<Problem> {
        let env = self.environment;
        let mut out = Vec::new();
        self.database.validate(env, &mut out);
        self.audit.validate(env, &mut out);
        self.security.validate(env, &mut out);
        self.workers.validate(env, &mut out);
        self.rabbitmq.validate(env, &mut out);
        self.redis.validate(env, &mut out);
        self.kafka.validate(env, &mut out);
        self.sinks.validate(env, &mut out);
        self.retention.validate(env, &mut out);
        self.reprocess.validate(env, &mut out);
        self.telemetry.validate(env, &mut out);
        self.model.validate(env, &mut out);
        self.intake.validate(env, &mut out);
        self.audio.validate(env, &mut out);
        self.webhook.validate(env, &mut out);
        self.encryption
            .validate(env, self.vault.vault.is_some(), &mut out);
        self.vault.validate(
            env,
            self.security.jwt_public_keys_dir.is_some(),
            self.database.url.kind() == DatabaseKind::Sqlite,
            &mut out,
        );
        out
    }

    /// [`Config::validate`] as a report.
    pub fn report(&self) -> Report {
        Report::new(self.environment, self.validate())
    }

    /// The checks that need the file system: the model directory and the ONNX
    /// Runtime library exist; the TLS files, when set, exist; the audit trail
    /// can be written. Separate from the pure
    /// [`Config::validate`]; `mmt check` runs both.
    pub fn check_files(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        self.model.check_files(&mut out);
        self.audit.check_files(&mut out);
        self.security.check_files(&mut out);
        self.encryption
            .check_files(self.vault.vault.as_ref(), &mut out);
        let tls = [
            ("SSL_CERT_FILE", &self.security.ssl_cert_file),
            ("SSL_KEY_FILE", &self.security.ssl_key_file),
        ];
        let server_files = tls
            .iter()
            .filter_map(|(variable, file)| Some((*variable, file.as_deref()?)));
        let client_files = self
            .rabbitmq
            .tls_file_paths()
            .into_iter()
            .chain(self.redis.tls_file_paths())
            .chain(self.kafka.tls_file_paths())
            .chain(self.vault.file_paths());
        for (variable, path) in server_files.chain(client_files) {
            if !path.is_file() {
                // The path is not repeated: no value is (see `vars::Echo`).
                out.push(Problem::fatal(variable, "does not name a readable file"));
            }
        }
        out
    }

    /// The worker pool for a machine with `cores` cores; the formula is on
    /// [`WorkerPlan`].
    pub fn worker_plan(&self, cores: usize) -> WorkerPlan {
        self.workers.plan(cores, self.model.intra_op_threads)
    }
}

/// The configuration read from no variables at all: every default, `ENV=dev`.
impl Default for Config {
    fn default() -> Self {
        Self::load_vars(std::iter::empty()).config
    }
}

/// The `&'static` name of a variable this configuration reads.
fn known_variable(name: &str) -> Option<&'static str> {
    VARIABLES
        .iter()
        .chain(telemetry::VARIABLES)
        .chain(database::VARIABLES)
        .chain(rabbitmq::VARIABLES)
        .chain(redis::VARIABLES)
        .chain(sources::VARIABLES)
        .chain(intake::VARIABLES)
        .chain(audit::VARIABLES)
        .chain(security::VARIABLES)
        .chain(webhook::VARIABLES)
        .chain(encryption::VARIABLES)
        .chain(vault::VARIABLES)
        .find(|known| **known == name)
        .copied()
}

/// An `MMT_*` variable nobody reads is most likely a typo.
fn warn_unknown(vars: &mut Vars) {
    let unknown: Vec<String> = vars
        .names()
        .filter(|name| name.starts_with("MMT_") && known_variable(name).is_none())
        .map(str::to_owned)
        .collect();
    for name in unknown {
        vars.report(Problem::warning(
            "MMT_*",
            format!("{name} is not a variable MMT reads (a typo?)"),
        ));
    }
}

/// Serializes a duration as a number of seconds.
fn serialize_seconds<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}
