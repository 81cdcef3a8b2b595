//! A job as the store holds it, and the text encodings of its enums.

use mmt_core::error::ErrorClass;
use mmt_core::job::{JobMeta, JobStatus, Stage};
use mmt_core::Transcript;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Every status, for deriving SQL predecessor lists from [`JobStatus::can_become`].
pub(crate) const ALL_STATUSES: [JobStatus; 5] = [
    JobStatus::Queued,
    JobStatus::Processing,
    JobStatus::Completed,
    JobStatus::Failed,
    JobStatus::DeadLettered,
];

/// One job as stored: what was received, where it stands, and its transcript.
/// Holds PHI (references, source, transcript): for the CLI and tests, never logs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub meta: JobMeta,
    pub status: JobStatus,
    /// 0..9, higher is sooner (the job envelope's priority); 0 for jobs the
    /// pipeline recorded itself.
    pub priority: u8,
    /// Times the job entered `processing`, or the dead letter's count if higher.
    pub attempts: u32,
    /// Why the job was dead-lettered.
    pub failure: Option<JobFailure>,
    /// The transcript, once completed.
    pub transcript: Option<Transcript>,
    /// Duration of the transcribed audio, once completed.
    pub audio_seconds: Option<f64>,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// Unix seconds when the job completed.
    pub completed_at: Option<i64>,
    /// Which record of the job this is: set when the row is created, new
    /// after a deletion or purge (see [`mmt_core::job::Take`]).
    pub generation: i64,
}

/// The recorded failure of a dead-lettered job (PHI-free).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobFailure {
    pub stage: Stage,
    pub class: ErrorClass,
    pub reason: String,
}

/// The highest priority (the job envelope's, and the schema's CHECK).
pub(crate) const MAX_PRIORITY: u8 = 9;

/// The stored text of a status (its `as_str`).
pub(crate) fn parse_status(text: &str) -> Option<JobStatus> {
    ALL_STATUSES.into_iter().find(|s| s.as_str() == text)
}

/// The stored text of a stage (its `as_str`).
pub(crate) fn parse_stage(text: &str) -> Option<Stage> {
    parse_snake_case(text)
}

/// Error classes as stored: `user_input`, `external_retryable`,
/// `external_permanent`, `internal`.
pub(crate) fn class_to_text(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::UserInput => "user_input",
        ErrorClass::External { retryable: true } => "external_retryable",
        ErrorClass::External { retryable: false } => "external_permanent",
        ErrorClass::Internal => "internal",
    }
}

pub(crate) fn class_from_text(text: &str) -> Option<ErrorClass> {
    match text {
        "user_input" => Some(ErrorClass::UserInput),
        "external_retryable" => Some(ErrorClass::External { retryable: true }),
        "external_permanent" => Some(ErrorClass::External { retryable: false }),
        "internal" => Some(ErrorClass::Internal),
        _ => None,
    }
}

fn parse_snake_case<T: DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

/// The statuses a job may move to `next` from.
pub(crate) fn predecessors(next: JobStatus) -> Vec<JobStatus> {
    ALL_STATUSES
        .into_iter()
        .filter(|from| from.can_become(next))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        for status in ALL_STATUSES {
            assert_eq!(parse_status(status.as_str()), Some(status));
        }
        for stage in [
            Stage::Decode,
            Stage::Dedupe,
            Stage::Chunk,
            Stage::Inference,
            Stage::Assemble,
            Stage::Sink,
        ] {
            assert_eq!(parse_stage(stage.as_str()), Some(stage));
        }
        for class in [
            ErrorClass::UserInput,
            ErrorClass::External { retryable: true },
            ErrorClass::External { retryable: false },
            ErrorClass::Internal,
        ] {
            assert_eq!(class_from_text(class_to_text(class)), Some(class));
        }
        assert_eq!(parse_status("bogus"), None);
    }

    #[test]
    fn predecessors_follow_can_become() {
        use JobStatus::*;
        assert_eq!(predecessors(Queued), []);
        assert_eq!(predecessors(Processing), [Queued, Failed]);
        assert_eq!(predecessors(Completed), [Queued, Processing, Failed]);
        // The SQL has four slots: a status never precedes itself, so at most four.
        assert!(ALL_STATUSES.iter().all(|s| predecessors(*s).len() <= 4));
    }
}
