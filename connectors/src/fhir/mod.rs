//! FHIR R4 resources MMT produces, and the FHIR server sink that sends them.
//!
//! - [`document`]: the `DocumentReference` a completed job becomes.
//! - [`config`]: [`FhirServerConfig`], the typed configuration of the server sink.
//! - [`client`]: [`FhirServerSink`], a `DocumentSink` over HTTP (conditional
//!   create and delete, retries, `OperationOutcome` errors without PHI).

pub mod client;
pub mod config;
pub mod document;

pub use client::{FhirServerSink, ServerInfo, WriteOutcome};
pub use config::FhirServerConfig;
pub use document::{document_reference, DocumentReference};
