//! Opening what a run reads from and writes to, from the configuration.
//!
//! | what | embedded default | production |
//! |---|---|---|
//! | source | a folder (`--input`) | RabbitMQ queue, Kafka topic |
//! | job store | SQLite under `--out` | `DATABASE_URL` (PostgreSQL, MySQL/MariaDB) |
//! | documents | `fhir/DocumentReference.ndjson` | `MMT_FHIR_BASE_URL` (FHIR server) |
//! | audit | `audit.jsonl` (or `AUDIT_LOG_FILE`) | the same, plus job events on RabbitMQ |
//! | dead letters | `dlq.jsonl` | the same, plus the broker's dead-letter queue |
//! | dedupe | the job store | a Redis Bloom filter in front of it |

use super::source::DirectorySource;
use super::{setup, OutputPaths, Resources, RunError};
use crate::config::Config;
use mmt_connectors::envelope::EnvelopeReader;
use mmt_connectors::rabbitmq::{
    RabbitMqConfig as AmqpConfig, RabbitMqEventPublisher, RabbitMqSource,
};
use mmt_connectors::redis::RedisFilterConfig;
use mmt_connectors::sql::SqlJobStoreConfig;
use mmt_core::idempotency::IdempotencyFilter;
use mmt_core::job::{AuditEvent, AuditSink, ComponentError, DocumentSink, JobStore};
use mmt_core::source::JobSource;
use mmt_core::telemetry::Metrics;
use mmt_operators::commit::Sinks;
use std::path::PathBuf;
use std::time::Duration;

/// Where a run takes its jobs from.
#[derive(Debug, Clone)]
pub enum SourceChoice {
    /// Audio files in a folder (`<file>.json` sidecars give tenant and references).
    Directory {
        input: PathBuf,
        /// Keep watching, rescanning this often.
        follow: Option<Duration>,
        tenant: String,
    },
    /// Job envelopes from the RabbitMQ queue of the configuration.
    RabbitMq,
    /// Job envelopes from the Kafka topic of the configuration.
    Kafka,
}

/// Tenant recorded for a broker message whose envelope cannot be read at all.
const UNKNOWN_TENANT: &str = "unknown";

/// Opens the source, the per-worker stores and filters, and worker 0's sinks.
pub fn open_resources(
    config: &Config,
    choice: &SourceChoice,
    paths: &OutputPaths,
    workers: usize,
    metrics: &Metrics,
) -> Result<Resources, RunError> {
    let source = open_source(config, choice)?;
    let sinks = open_sinks(config, paths)?;
    let publish_events = matches!(choice, SourceChoice::RabbitMq);
    open_resources_for(
        config,
        source,
        sinks,
        publish_events,
        paths,
        workers,
        metrics,
    )
}

/// Like [`open_resources`], for a source and sinks opened by the caller (the
/// API's intake, sinks it shares); `publish_events` adds RabbitMQ job events
/// to the audit trail.
pub fn open_resources_for(
    config: &Config,
    source: Box<dyn JobSource>,
    mut sinks: Sinks,
    publish_events: bool,
    paths: &OutputPaths,
    workers: usize,
    metrics: &Metrics,
) -> Result<Resources, RunError> {
    let stores = (0..workers.max(1))
        .map(|_| open_store(config, &paths.database_url))
        .collect::<Result<Vec<_>, _>>()?;
    let filters = (0..workers.max(1))
        .map(|_| open_filter(config))
        .collect::<Result<Vec<_>, _>>()?;
    if publish_events {
        let events = RabbitMqEventPublisher::connect(&amqp_config(config), Some(metrics.clone()))
            .map_err(|err| setup("RabbitMQ event publisher", err))?;
        sinks.audit = Box::new(AuditWithEvents {
            audit: sinks.audit,
            events,
        });
    }
    let screen = open_store(config, &paths.database_url)?;
    Ok(Resources {
        source,
        sinks,
        stores,
        screen,
        filters,
    })
}

fn open_source(config: &Config, choice: &SourceChoice) -> Result<Box<dyn JobSource>, RunError> {
    match choice {
        SourceChoice::Directory {
            input,
            follow,
            tenant,
        } => {
            if !input.is_dir() {
                return Err(RunError::Input {
                    path: input.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
                });
            }
            let source = DirectorySource::new(input, tenant);
            Ok(Box::new(match follow {
                Some(interval) => source.following(*interval),
                None => source,
            }))
        }
        SourceChoice::Kafka => {
            let kafka = &config.kafka;
            // A short session timeout: a worker that dies hands its partitions
            // over within seconds, and a new one joins the group quickly.
            let mut source = kafka
                .source_config()
                .session_timeout(Duration::from_secs(10))
                .fallback_tenant(UNKNOWN_TENANT);
            if let Some(root) = &config.sinks.audio_reference_root {
                source = source.reference_root(root);
            }
            let source = source.connect().map_err(|err| setup("Kafka source", err))?;
            Ok(Box::new(source))
        }
        SourceChoice::RabbitMq => {
            let source = RabbitMqSource::connect(&amqp_config(config), envelope_reader(config))
                .map_err(|err| setup("RabbitMQ source", err))?;
            Ok(Box::new(source))
        }
    }
}

/// Reads job envelopes, resolving audio references under the configured root.
pub fn envelope_reader(config: &Config) -> EnvelopeReader {
    EnvelopeReader::new(config.sinks.audio_reference_root.clone(), UNKNOWN_TENANT)
}

/// The connector's RabbitMQ settings from the environment's.
pub fn amqp_config(config: &Config) -> AmqpConfig {
    let mut amqp = AmqpConfig::new(config.rabbitmq.url())
        .with_queue(&config.rabbitmq.queue)
        .with_tls(config.rabbitmq.tls_files.clone());
    amqp.prefetch = u16::try_from(config.rabbitmq.prefetch).unwrap_or(u16::MAX);
    amqp
}

fn open_store(config: &Config, url: &str) -> Result<Box<dyn JobStore>, RunError> {
    let store = SqlJobStoreConfig::new(url)
        .build(config.environment.is_prod())
        .map_err(|err| setup("job store", err))?
        .with_sealer(sealer(config)?);
    Ok(Box::new(store))
}

/// The sealer of transcripts and uploads (`MMT_ENCRYPTION_KEYS` or Vault
/// transit), `None` when encryption is off; the keyring is loaded and
/// checked, or the transit key read from Vault.
pub fn sealer(config: &Config) -> Result<Option<mmt_core::crypt::Sealer>, RunError> {
    config
        .encryption
        .sealer(config.vault.vault.as_ref())
        .map_err(|err| setup("encryption keys", err))
}

/// The Redis idempotency filter, when ENABLE_REDIS_BLOOM_IDEMPOTENCY is on. It
/// connects lazily: a worker starts (deduping through the job store alone)
/// while Redis is down, and uses the filter once Redis answers.
fn open_filter(config: &Config) -> Result<Option<Box<dyn IdempotencyFilter>>, RunError> {
    let redis = &config.redis;
    if !redis.bloom_idempotency {
        return Ok(None);
    }
    let filter = RedisFilterConfig::new(redis.url())
        .with_tls(redis.tls_files.clone())
        .key_prefix(&redis.bloom_key_prefix)
        .ttl(redis.bloom_ttl)
        .build_lazy()
        .map_err(|err| setup("Redis idempotency filter", err))?;
    Ok(Some(Box::new(filter)))
}

/// Opens the sinks of the commit stage (one writer each: the commit stage or a purge).
pub fn open_sinks(config: &Config, paths: &OutputPaths) -> Result<Sinks, RunError> {
    Ok(open_shared_sinks(config, paths)?.sinks)
}

/// The commit stage's sinks, plus a second handle on its document sink and
/// audit trail for another writer in the process (the API's deletions). File
/// sinks are one shared log per file, never two (each would miss the other's
/// records); a FHIR server sink is a stateless client, so it is opened twice.
pub fn open_shared_sinks(config: &Config, paths: &OutputPaths) -> Result<SharedSinks, RunError> {
    let (documents, shared_documents): (Box<dyn DocumentSink>, Box<dyn DocumentSink>) =
        match &config.sinks.fhir {
            Some(server) => {
                let open = || {
                    server
                        .build(config.environment.is_prod())
                        .map_err(|e| setup("FHIR server", e))
                };
                (Box::new(open()?), Box::new(open()?))
            }
            None => {
                let sink = paths
                    .documents()
                    .build()
                    .map_err(|e| setup("FHIR NDJSON sink", e))?;
                (Box::new(sink.clone()), Box::new(sink))
            }
        };
    let audit = paths.audit().build().map_err(|e| setup("audit log", e))?;
    let sinks = Sinks {
        documents,
        audit: Box::new(audit.clone()),
        dead_letters: Box::new(
            paths
                .dead_letters()
                .build()
                .map_err(|e| setup("dead-letter queue", e))?,
        ),
        store: open_store(config, &paths.database_url)?,
    };
    Ok(SharedSinks {
        sinks,
        documents: shared_documents,
        audit: Box::new(audit),
    })
}

/// The commit stage's sinks and a second handle on two of them.
pub struct SharedSinks {
    pub sinks: Sinks,
    pub documents: Box<dyn DocumentSink>,
    pub audit: Box<dyn AuditSink>,
}

impl std::fmt::Debug for SharedSinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSinks { .. }")
    }
}

/// The audit trail first, then the same event published as a job event: the
/// file is the record of what happened; the event tells subscribers.
struct AuditWithEvents {
    audit: Box<dyn AuditSink>,
    events: RabbitMqEventPublisher,
}

impl AuditSink for AuditWithEvents {
    fn record(&mut self, event: &AuditEvent) -> Result<(), ComponentError> {
        self.audit.record(event)?;
        self.events.record(event)
    }
}
