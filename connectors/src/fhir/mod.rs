//! FHIR R4 resources MMT produces.

pub mod document;

pub use document::{document_reference, DocumentReference};
