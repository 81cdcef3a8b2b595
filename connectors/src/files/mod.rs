//! File sinks of the embedded (single-machine) deployment: FHIR NDJSON documents,
//! the JSON Lines audit trail and the JSON Lines dead-letter queue.
//!
//! All three share one mechanism ([`log`]): append-only, one record per key,
//! `sync_data` before a write returns, a crash's partial last line cut off on open.

mod audit;
pub mod chain;
mod config;
mod dead_letters;
mod dlq_state;
mod documents;
mod log;

pub use audit::AuditLogSink;
pub use config::{AuditLogConfig, DeadLetterFileConfig, FhirNdjsonConfig};
pub use dead_letters::DeadLetterFileSink;
pub use dlq_state::{
    read_dead_letters, Disposition, DlqState, DlqStateFile, DlqStateLock, LetterState,
};
pub use documents::FhirNdjsonSink;
