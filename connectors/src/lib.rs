//! I/O connectors of MMT: implementations of the store and sink traits of
//! `mmt_core::job`.
//!
//! - [`sql`]: the job store (SQLite; Postgres and MySQL to come).
//! - [`files`]: FHIR NDJSON documents, the JSON Lines audit trail and dead-letter queue.
//! - [`fhir`]: the FHIR R4 resources MMT produces.
//!
//! One error type, [`ConnectorError`], classed for retry and dead-letter routing.

pub mod config;
pub mod error;
pub mod fhir;
pub mod files;
pub mod sql;

pub use config::ConfigProblem;
pub use error::ConnectorError;
pub use files::{
    AuditLogConfig, AuditLogSink, DeadLetterFileConfig, DeadLetterFileSink, FhirNdjsonConfig,
    FhirNdjsonSink,
};
pub use sql::{JobRow, SqlJobStore, SqlJobStoreConfig};
