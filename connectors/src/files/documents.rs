//! FHIR `DocumentReference` resources appended to an NDJSON file.

use std::collections::HashSet;
use std::path::Path;

use mmt_core::job::{CompletedJob, ComponentError, DocumentSink, JobId};
use serde::Deserialize;

use super::log::{FileMode, Record, SharedLog};
use crate::error::{ConnectorError, Result};
use crate::fhir::document_reference;

/// Appends one `DocumentReference` per line to `DocumentReference.ndjson`
/// (FHIR bulk-data format), at most one per job id. The file holds PHI: mode 0600.
///
/// Clones share the file (one per timely worker is fine).
#[derive(Debug, Clone)]
pub struct FhirNdjsonSink {
    log: SharedLog<Documents>,
}

/// Lines of the document file, keyed by resource id (= job id).
struct Documents;

impl Record for Documents {
    type Key = String;
    const NAME: &'static str = "DocumentReference";

    fn key_of(line: &[u8]) -> serde_json::Result<String> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Line {
            resource_type: String,
            id: String,
        }
        let line: Line = serde_json::from_slice(line)?;
        if line.resource_type == "DocumentReference" {
            Ok(line.id)
        } else {
            Err(serde::de::Error::custom("not a DocumentReference"))
        }
    }
}

impl FhirNdjsonSink {
    /// Opens (or creates) the NDJSON file at `path`, repairing a crash's partial
    /// last line. Most callers use [`super::FhirNdjsonConfig::build`].
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            log: SharedLog::open(path, FileMode::PHI)?,
        })
    }

    /// Whether a document for `id` is in the file.
    pub fn contains(&self, id: &JobId) -> bool {
        self.log.lock().contains(&id.0)
    }

    /// Writes the job's document unless the file has one; returns whether it wrote.
    pub fn write_document(&mut self, job: &CompletedJob) -> Result<bool> {
        let mut log = self.log.lock();
        if log.contains(&job.meta.id.0) {
            return Ok(false);
        }
        let document = document_reference(job)?;
        let line = serde_json::to_vec(&document).map_err(|source| ConnectorError::Serialize {
            what: "DocumentReference",
            source,
        })?;
        log.append(document.id, &line)
    }

    /// Removes the documents of `ids`; returns how many were removed.
    pub fn purge_documents(&mut self, ids: &[JobId]) -> Result<u64> {
        let remove: HashSet<String> = ids.iter().map(|id| id.0.clone()).collect();
        self.log.lock().remove(&remove)
    }
}

impl DocumentSink for FhirNdjsonSink {
    fn write(&mut self, job: &CompletedJob) -> Result<(), ComponentError> {
        self.write_document(job).map(drop).map_err(Into::into)
    }

    fn purge(&mut self, ids: &[JobId]) -> Result<u64, ComponentError> {
        self.purge_documents(ids).map_err(Into::into)
    }
}
