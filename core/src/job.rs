//! Jobs and what the pipeline reports about them: identity, status, dead letters,
//! audit events, and the traits of the stores and sinks that record them.
//!
//! Implementations live in `connectors` (SQL stores, files, FHIR servers); the
//! pipeline only sees these traits. Every write is idempotent by job id, so a
//! redelivered job never produces a second document, audit event or row.

use crate::error::ErrorClass;
use crate::transcript::Transcript;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// Seconds since the Unix epoch now (0 if the clock is before 1970).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A job's identity: derived from the tenant and the audio's content, so the
/// same audio submitted twice by one tenant is the same job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job stands. Transitions only move forward (see [`JobStatus::can_become`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Processing,
    Completed,
    Failed,
    DeadLettered,
}

impl JobStatus {
    /// Whether the job has reached an end state (no further work will happen).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::DeadLettered)
    }

    /// Monotonic transitions: queued → processing → completed | failed | dead_lettered;
    /// a failed job may be retried (processing) or dead-lettered.
    pub fn can_become(self, next: Self) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Queued, Processing | Completed | Failed | DeadLettered)
                | (Processing, Completed | Failed | DeadLettered)
                | (Failed, Processing | Completed | DeadLettered)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// What is known about a job before it is transcribed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMeta {
    pub id: JobId,
    pub tenant: String,
    /// Hex SHA-256 of the audio bytes.
    pub content_hash: String,
    /// Where the job came from (file name, message id). May hold PHI: never logged.
    pub source: String,
    /// FHIR reference of the patient, e.g. `Patient/123` (PHI: never logged).
    pub patient_reference: Option<String>,
    /// FHIR reference of the encounter, e.g. `Encounter/456` (PHI: never logged).
    pub encounter_reference: Option<String>,
    /// Correlation id carried by logs, audit events and dead letters of this job.
    pub correlation_id: String,
    /// Unix seconds when the job was received.
    pub received_at: i64,
    /// W3C `traceparent` of the submitter's trace, carried to the job's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

/// A transcribed job, ready for the sinks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletedJob {
    pub meta: JobMeta,
    pub transcript: Transcript,
    /// Unix seconds when transcription finished.
    pub completed_at: i64,
}

/// The pipeline stage where a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Decode,
    Dedupe,
    Chunk,
    Inference,
    Assemble,
    Sink,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::Dedupe => "dedupe",
            Self::Chunk => "chunk",
            Self::Inference => "inference",
            Self::Assemble => "assemble",
            Self::Sink => "sink",
        }
    }
}

/// A job that left the pipeline unfinished. Carries ids and a reason, never PHI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job_id: JobId,
    pub tenant: String,
    pub correlation_id: String,
    pub stage: Stage,
    pub class: ErrorClass,
    /// Human-readable reason without PHI (e.g. "not decodable audio: unsupported format").
    pub reason: String,
    /// Attempts made so far (1 on the first failure).
    pub attempts: u32,
    /// Unix seconds.
    pub at: i64,
}

impl DeadLetter {
    /// What a dead letter tells of its job: identity, tenant and correlation,
    /// received when it was dead-lettered (no content, source or references).
    pub fn job_meta(&self) -> JobMeta {
        JobMeta {
            id: self.job_id.clone(),
            tenant: self.tenant.clone(),
            content_hash: String::new(),
            source: String::new(),
            patient_reference: None,
            encounter_reference: None,
            correlation_id: self.correlation_id.clone(),
            received_at: self.at,
            trace_parent: None,
        }
    }
}

/// What an audit event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    JobReceived,
    JobDuplicate,
    JobCompleted,
    JobDeadLettered,
    JobPurged,
    JobDeleted,
    /// A transcript was served to a caller.
    TranscriptRead,
    /// The DLQ reprocessor retried a dead letter and its job completed.
    DeadLetterReprocessed,
    /// A dead letter was parked: never retried again (a permanent failure,
    /// its attempts exhausted, or an operator's decision).
    DeadLetterParked,
    /// A request was refused for want of a valid token (`job_id` and
    /// `tenant` empty: nothing the token claims is trusted).
    AuthenticationFailed,
}

/// One line of the audit trail: who/what/when by id, PHI masked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unix seconds.
    pub at: i64,
    pub action: AuditAction,
    pub job_id: JobId,
    pub tenant: String,
    pub correlation_id: String,
    /// The acting component or user (e.g. `pipeline`, `retention`).
    pub actor: String,
    /// Extra facts (counts, stage, masked references); values must be PHI-free or masked.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub detail: std::collections::BTreeMap<String, String>,
}

impl AuditEvent {
    /// The idempotency key: one event per job, action and occurrence.
    ///
    /// The correlation id tells occurrences apart: the pipeline's events carry
    /// the id of the job's generation in the store (see
    /// [`Take::Taken::generation`]), which a deleted and resubmitted job gets
    /// anew while a redelivery of the same processing keeps it; so a replayed
    /// commit writes nothing twice, and a second deletion or completion of the
    /// same recording is a second event.
    pub fn key(&self) -> (JobId, AuditAction, String) {
        (
            self.job_id.clone(),
            self.action,
            self.correlation_id.clone(),
        )
    }
}

/// A failure of a store or sink, classed for retry and dead-letter routing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ComponentError {
    pub class: ErrorClass,
    /// What failed, without PHI.
    pub message: String,
}

impl ComponentError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
}

/// Counts removed by one retention purge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeCounts {
    pub jobs: u64,
    pub transcripts: u64,
    pub audio: u64,
    pub documents: u64,
}

/// What taking a job for processing found (see [`JobStore::take`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Recorded as processing before any work: `attempt` is this take's
    /// number (1 the first time); `generation` tells this record of the job
    /// from an earlier one that was deleted or purged.
    Taken { attempt: u32, generation: i64 },
    /// Completed or dead-lettered already, last changed at `since` (unix
    /// seconds; 0 if deleted meanwhile): nothing to do.
    Finished { since: i64 },
    /// Taken `attempts` times already without finishing: its workers stopped
    /// while processing it (killed, out of memory, aborted). It must not be
    /// taken again: dead-letter it.
    Exhausted { attempts: u32, generation: i64 },
}

/// A job a retention purge removes, with what its audit event names: the
/// tenant, and the generation (the record of the job: a job purged,
/// resubmitted and purged again is two purges, each audited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueJob {
    pub id: JobId,
    pub tenant: String,
    pub generation: i64,
}

/// A due job is the job of its id (listings compare to ids).
impl PartialEq<JobId> for DueJob {
    fn eq(&self, id: &JobId) -> bool {
        self.id == *id
    }
}

/// The reason a job is dead-lettered with after its workers stopped while
/// processing it `attempts` times.
pub fn worker_stopped_reason(attempts: u32) -> String {
    format!("worker stopped while processing it {attempts} times")
}

/// The job store: status of every job and its transcript. Writes are idempotent.
pub trait JobStore: Send {
    /// The job's status, if the store knows it.
    fn status(&mut self, id: &JobId) -> Result<Option<JobStatus>, ComponentError>;
    /// Records a newly received job as queued; `false` if it already existed.
    fn insert_queued(&mut self, meta: &JobMeta) -> Result<bool, ComponentError>;
    /// Takes the job for processing, durably, before any work: records it as
    /// queued if unknown, then, unless it is finished or was taken
    /// `max_takes` times already, moves it to processing and counts the take.
    /// A job left processing by a worker that stopped is taken again (until
    /// `max_takes`); one still processing elsewhere in this process must be
    /// told apart by the caller.
    fn take(&mut self, meta: &JobMeta, max_takes: u32) -> Result<Take, ComponentError>;
    /// Hands back a take that a stop on request (SIGTERM) may leave
    /// unfinished: a job still processing goes back to queued and its take is
    /// no longer counted, so that rollouts never add up to a poison job's
    /// count. Only a crash counts against a job. Returns whether it moved; a
    /// job that completes afterwards is completed all the same.
    fn release(&mut self, id: &JobId) -> Result<bool, ComponentError>;
    /// Moves a job to `status` if that is a forward transition; returns whether it moved.
    fn transition(&mut self, id: &JobId, status: JobStatus) -> Result<bool, ComponentError>;
    /// Stores the transcript and marks the job completed (idempotent).
    fn complete(&mut self, job: &CompletedJob) -> Result<(), ComponentError>;
    /// Marks the job dead-lettered with its reason (idempotent).
    fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), ComponentError>;
    /// Jobs received before `cutoff` (unix seconds); removed unless `dry_run`.
    fn purge_before(&mut self, cutoff: i64, dry_run: bool) -> Result<Vec<DueJob>, ComponentError>;
    /// Removes those of `ids` that are due at `cutoff` (and only those), and
    /// returns them: retention deletes a row only once its documents are
    /// gone, so a job that came due after the documents were purged keeps its
    /// row for the next run.
    fn purge_listed(
        &mut self,
        cutoff: i64,
        ids: &HashSet<JobId>,
    ) -> Result<Vec<DueJob>, ComponentError>;
}

/// Where finished documents go (FHIR `DocumentReference` files or a FHIR server).
pub trait DocumentSink: Send {
    /// Writes the job's document unless one with its id exists (idempotent).
    fn write(&mut self, job: &CompletedJob) -> Result<(), ComponentError>;
    /// Removes the documents of `ids` (retention); returns how many were removed.
    fn purge(&mut self, ids: &[JobId]) -> Result<u64, ComponentError>;
}

/// The audit trail.
pub trait AuditSink: Send {
    /// Appends the event unless one with the same key exists (idempotent).
    fn record(&mut self, event: &AuditEvent) -> Result<(), ComponentError>;
}

/// The dead-letter queue.
pub trait DeadLetterSink: Send {
    /// Sends the letter unless one for the same job and stage exists (idempotent).
    fn send(&mut self, letter: &DeadLetter) -> Result<(), ComponentError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_transitions_only_move_forward() {
        use JobStatus::*;
        assert!(Queued.can_become(Processing));
        assert!(Processing.can_become(Completed));
        assert!(Failed.can_become(Processing));
        assert!(!Completed.can_become(Processing));
        assert!(!Completed.can_become(Queued));
        assert!(!DeadLettered.can_become(Completed));
        assert!(!Processing.can_become(Queued));
        assert!(Completed.is_terminal() && DeadLettered.is_terminal() && !Failed.is_terminal());
    }
}
