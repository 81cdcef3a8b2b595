//! I/O connectors of MMT: implementations of the store and sink traits of
//! `mmt_core::job`.
//!
//! - [`sql`]: the job store (PostgreSQL, MySQL/MariaDB; SQLite for development).
//! - [`files`]: FHIR NDJSON documents, the JSON Lines audit trail and dead-letter queue.
//! - [`fhir`]: the FHIR R4 resources MMT produces, and the FHIR server sink.
//! - [`rabbitmq`]: the RabbitMQ job source and event publisher.
//! - [`kafka`]: the Kafka job source.
//! - [`redis`]: the Redis idempotency filter (RedisBloom, or plain Redis bitmaps).
//! - [`envelope`]: the job message both brokers carry.
//! - [`tls`]: the TLS files of the links to brokers, Redis and databases, and
//!   how each link is protected ([`tls::Transport`]).
//! - [`reference`]: audio named by reference, per tenant under a shared root.
//! - [`vault`]: HashiCorp Vault: AppRole login, token renewal, the API's token keys.
//!
//! One error type, [`ConnectorError`], classed for retry and dead-letter routing.

pub mod breaker;
pub mod config;
pub mod envelope;
pub mod error;
pub mod fhir;
pub mod files;
pub mod kafka;
pub mod rabbitmq;
pub mod redis;
pub mod reference;
pub mod sql;
pub mod tls;
pub mod vault;

pub use config::ConfigProblem;
pub use error::ConnectorError;
pub use files::{
    AuditLogConfig, AuditLogSink, DeadLetterFileConfig, DeadLetterFileSink, FhirNdjsonConfig,
    FhirNdjsonSink,
};
pub use sql::{JobRow, SqlJobStore, SqlJobStoreConfig};
