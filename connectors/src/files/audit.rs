//! The audit trail as an append-only JSON Lines file.

use std::path::Path;

use mmt_core::job::{AuditAction, AuditEvent, AuditSink, ComponentError, JobId};
use mmt_core::phi::{mask_reference, mask_text};

use super::log::{FileMode, Record, SharedLog};
use crate::error::{ConnectorError, Result};

/// Appends `AuditEvent`s as JSON lines to the `AUDIT_LOG_FILE`, at most one per
/// [`AuditEvent::key`] (job id, action and occurrence): a replayed commit
/// writes nothing twice, a second deletion of a resubmitted job is a second line.
///
/// The audit trail never holds transcript text or references in the clear: as a
/// last line of defence, `detail` values under keys that name references are
/// masked to their resource type and values under keys that name free text
/// (`text`, `transcript`, `source`, `file`, `name`) to their length.
///
/// Clones share the file (one per timely worker is fine).
#[derive(Debug, Clone)]
pub struct AuditLogSink {
    log: SharedLog<AuditEvents>,
}

struct AuditEvents;

impl Record for AuditEvents {
    type Key = (JobId, AuditAction, String);
    const NAME: &'static str = "audit event";

    fn key_of(line: &[u8]) -> serde_json::Result<Self::Key> {
        serde_json::from_slice::<AuditEvent>(line).map(|event| event.key())
    }
}

impl AuditLogSink {
    /// Opens (or creates) the audit file at `path`, repairing a crash's partial
    /// last line. Most callers use [`super::AuditLogConfig::build`].
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            log: SharedLog::open(path, FileMode::PHI)?,
        })
    }

    /// Appends the event unless one with its key is in the file; returns whether it wrote.
    pub fn record_event(&mut self, event: &AuditEvent) -> Result<bool> {
        let mut log = self.log.lock();
        let key = event.key();
        if log.contains(&key) {
            return Ok(false);
        }
        let line =
            serde_json::to_vec(&sanitised(event)).map_err(|source| ConnectorError::Serialize {
                what: "audit event",
                source,
            })?;
        log.append(key, &line)
    }
}

impl AuditSink for AuditLogSink {
    fn record(&mut self, event: &AuditEvent) -> Result<(), ComponentError> {
        self.record_event(event).map(drop).map_err(Into::into)
    }
}

/// The event with PHI-looking detail values masked.
fn sanitised(event: &AuditEvent) -> AuditEvent {
    let mut event = event.clone();
    for (key, value) in &mut event.detail {
        let key = key.to_ascii_lowercase();
        if ["patient", "encounter", "reference", "subject"]
            .iter()
            .any(|word| key.contains(word))
        {
            if !value.ends_with("***") {
                *value = mask_reference(value);
            }
        } else if ["text", "transcript", "source", "file", "name"]
            .iter()
            .any(|word| key.contains(word))
            && !value.starts_with("[redacted ")
        {
            *value = mask_text(value);
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_in_detail_is_masked() {
        let mut event = AuditEvent {
            at: 1,
            action: AuditAction::JobCompleted,
            job_id: JobId("ab".into()),
            tenant: "t".into(),
            correlation_id: "c".into(),
            actor: "pipeline".into(),
            detail: Default::default(),
        };
        event.detail.insert("patient".into(), "Patient/123".into());
        event
            .detail
            .insert("encounter_reference".into(), "Patient/***".into());
        event
            .detail
            .insert("transcript".into(), "Mr Smith has diabetes".into());
        event
            .detail
            .insert("source_file".into(), "smith.wav".into());
        event.detail.insert("segments".into(), "4".into());
        let clean = sanitised(&event);
        assert_eq!(clean.detail["patient"], "Patient/***");
        assert_eq!(clean.detail["encounter_reference"], "Patient/***");
        assert_eq!(clean.detail["transcript"], "[redacted 21 chars]");
        assert_eq!(clean.detail["source_file"], "[redacted 9 chars]");
        assert_eq!(clean.detail["segments"], "4");
        assert_eq!(clean.key(), event.key());
    }

    fn deleted(correlation_id: &str) -> AuditEvent {
        AuditEvent {
            at: 1,
            action: AuditAction::JobDeleted,
            job_id: JobId("ab".into()),
            tenant: "t".into(),
            correlation_id: correlation_id.into(),
            actor: "api:someone".into(),
            detail: Default::default(),
        }
    }

    #[test]
    fn a_replay_is_written_once_and_a_second_occurrence_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut sink = AuditLogSink::open(&path).expect("open");
        assert!(sink.record_event(&deleted("generation-1")).expect("write"));
        assert!(
            !sink.record_event(&deleted("generation-1")).expect("replay"),
            "a replay of the same occurrence writes nothing"
        );
        assert!(
            sink.record_event(&deleted("generation-2")).expect("write"),
            "the same job deleted again after a resubmission is another event"
        );
        drop(sink);
        // The keys survive a reopen (a restarted process replaying its commit).
        let mut reopened = AuditLogSink::open(&path).expect("reopen");
        assert!(!reopened
            .record_event(&deleted("generation-2"))
            .expect("replay"));
        let lines = std::fs::read_to_string(&path).expect("read");
        assert_eq!(lines.lines().count(), 2, "{lines}");
    }
}
