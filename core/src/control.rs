//! Job control: the narrow interface the REST API sees the runtime through.
//!
//! The API authenticates, validates and renders; everything it reads or
//! changes goes through [`JobControl`], which the pipeline implements over the
//! job store, the upload store and the intake (an in-process queue on the
//! embedded default, a broker in production). Every call names the caller's
//! tenant, and an implementation answers only with that tenant's jobs: another
//! tenant's job is "not found", never its data.
//!
//! The trait is synchronous (the stores are), so the API calls it from
//! `spawn_blocking`.

use crate::error::ErrorClass;
use crate::job::{JobId, JobStatus, Stage};
use crate::transcript::Transcript;
use serde::{Deserialize, Serialize};

pub use crate::spool::SpooledAudio;

/// Highest job priority (as the job envelope's and AMQP's 0–9 scale).
pub const MAX_PRIORITY: u8 = 9;

/// The encoded audio of a submission.
#[derive(Debug)]
pub enum SubmittedAudio {
    /// Held in memory.
    Bytes(Vec<u8>),
    /// An upload, or audio named by reference, streamed to a file in the
    /// spool folder ([`JobControl::spool_dir`]).
    Spooled(SpooledAudio),
}

impl Default for SubmittedAudio {
    fn default() -> Self {
        Self::Bytes(Vec::new())
    }
}

/// A job as submitted through the API.
#[derive(Debug, Default)]
pub struct Submission {
    pub tenant: String,
    /// The encoded audio.
    pub audio: SubmittedAudio,
    /// Container format hint (`wav`, `flac`, `mp3`, `ogg`, `opus`).
    pub format: Option<String>,
    /// Where the audio came from (upload file name or reference; may hold PHI: never logged).
    pub source: String,
    pub patient_reference: Option<String>,
    pub encounter_reference: Option<String>,
    /// 0–9, higher is transcribed sooner.
    pub priority: u8,
    /// Where to POST the job's outcome when it finishes (may hold tokens: never logged).
    pub callback_url: Option<String>,
    /// The client's `Idempotency-Key` and the hash of the request it came with.
    pub idempotency: Option<IdempotencyKey>,
    /// W3C `traceparent` of the request.
    pub trace_parent: Option<String>,
}

/// An `Idempotency-Key` with a fingerprint of the request that used it, so a
/// key reused for a different request is told apart from a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

/// What a submission led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub job_id: JobId,
    /// `false` when the submission named a job that already existed (the same
    /// audio from the same tenant, or a retried idempotency key).
    pub created: bool,
}

/// The recorded failure of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobFailureView {
    pub stage: Stage,
    pub class: ErrorClass,
    /// PHI-free reason.
    pub reason: String,
}

/// A job's state as the API shows it (no transcript).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant: String,
    pub status: JobStatus,
    pub priority: u8,
    /// Unix seconds.
    pub received_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub attempts: u32,
    pub failure: Option<JobFailureView>,
    pub audio_seconds: Option<f64>,
    pub patient_reference: Option<String>,
    pub encounter_reference: Option<String>,
}

/// Position in a listing: the last job of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub received_at: i64,
    pub id: JobId,
}

/// Which jobs to list, newest received first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    /// Received at or after (unix seconds).
    pub received_from: Option<i64>,
    /// Received before (unix seconds).
    pub received_before: Option<i64>,
    pub after: Option<ListCursor>,
    pub limit: u32,
}

/// One page of jobs and where the next one starts, if there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    pub next: Option<ListCursor>,
}

/// One dependency's readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// `job_store`, `intake`, `rabbitmq`.
    pub component: String,
    pub ready: bool,
    /// PHI-free and secret-free detail when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What the status page shows: the queue, recent throughput and recent jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// Jobs waiting to be transcribed (queued in the intake or the broker).
    pub queue_depth: u64,
    /// Jobs per status, of the caller's tenant.
    pub status_counts: Vec<(JobStatus, u64)>,
    /// Jobs completed in the last `window_seconds`, and their audio seconds.
    pub completed_recently: u64,
    pub audio_seconds_recently: f64,
    pub window_seconds: u64,
    pub recent: Vec<JobRecord>,
}

/// A completion callback that is due, with the job it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct DueCallback {
    pub job: JobRecord,
    /// May hold tokens: never logged.
    pub url: String,
    /// Deliveries tried so far.
    pub attempts: u32,
}

/// An access the API records in the audit trail (besides submissions and
/// deletions, which the job control audits itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// A caller read a transcript (in any format, FHIR included).
    TranscriptRead {
        tenant: String,
        job_id: JobId,
        /// The token's subject.
        subject: String,
        /// The format served (`json`, `text`, `srt`, `vtt`, `fhir`).
        format: String,
    },
    /// A request was refused for want of a valid token. Nothing the token
    /// claims is trusted or kept: only why it failed and where it came from.
    AuthenticationFailed {
        /// A bounded class (`missing`, `expired`, `bad_signature`, ...).
        reason: &'static str,
        /// The peer address of the connection, when known.
        client: Option<std::net::IpAddr>,
        /// The method and route template (`GET /v1/jobs/{id}`), never the path.
        route: String,
        /// Earlier failures not written one by one (see the API's limit on
        /// them), counted here.
        suppressed: u64,
    },
}

/// Why a job-control call failed. Messages name no PHI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The idempotency key was used before for a different request.
    #[error("the Idempotency-Key was already used for a different request")]
    IdempotencyConflict,
    /// The job is in a state that does not allow this (deleting a job in transcription).
    #[error("{0}")]
    Conflict(String),
    /// The request itself is unacceptable (an audio reference outside the root, ...).
    #[error("{0}")]
    Invalid(String),
    /// A dependency is down; the call may succeed later.
    #[error("{0}")]
    Unavailable(String),
    /// The job queue is full (all tenants together); retry after the given
    /// seconds. Nothing was recorded.
    #[error("the job queue is full; retry in {retry_after_seconds} s")]
    QueueFull { retry_after_seconds: u64 },
    /// The caller's tenant holds its whole share of the job queue; retry after
    /// the given seconds. Other tenants are still accepted. Nothing was recorded.
    #[error(
        "this tenant has its full share of the job queue waiting; retry in {retry_after_seconds} s"
    )]
    TenantShareFull { retry_after_seconds: u64 },
    /// Anything else (a bug, a corrupt row).
    #[error("{0}")]
    Internal(String),
}

/// The runtime as the API sees it. Every method is scoped to `tenant`.
pub trait JobControl: Send + Sync {
    /// Records the job and hands it to the intake.
    fn submit(&self, submission: Submission) -> Result<Submitted, ControlError>;

    /// Whether a submission from `tenant` would be taken now: `QueueFull`,
    /// `TenantShareFull` or `Unavailable` if not. Asked before a request's body
    /// is read, so a refused upload costs neither memory nor disk; `submit`
    /// checks again. An implementation without a bounded queue admits all.
    fn admits(&self, _tenant: &str) -> Result<(), ControlError> {
        Ok(())
    }

    /// The folder an upload is streamed into while it is received (the
    /// upload store's, so that keeping it is a rename).
    fn spool_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir()
    }

    /// The sealer of spooled uploads (`MMT_ENCRYPTION_KEYS`), `None` when
    /// they are kept in clear.
    fn spool_sealer(&self) -> Option<crate::crypt::Sealer> {
        None
    }

    /// Spools the audio `tenant` names by reference (a path relative to the
    /// tenant's folder under the reference root) into [`Self::spool_dir`],
    /// refusing a file over `max_bytes`. Every refusal that depends on the
    /// file system is one and the same `Invalid` answer, so that a reference
    /// cannot probe which files exist.
    fn read_reference(
        &self,
        tenant: &str,
        reference: &str,
        max_bytes: u64,
    ) -> Result<SpooledAudio, ControlError>;

    /// The job, if it exists and belongs to `tenant`.
    fn job(&self, tenant: &str, id: &JobId) -> Result<Option<JobRecord>, ControlError>;

    /// The job and its transcript (once completed), if it belongs to `tenant`.
    fn transcript(
        &self,
        tenant: &str,
        id: &JobId,
    ) -> Result<Option<(JobRecord, Option<Transcript>)>, ControlError>;

    /// The completed job's FHIR `DocumentReference` as JSON text, if the job
    /// exists, belongs to `tenant` and is completed.
    fn fhir_document(&self, tenant: &str, id: &JobId) -> Result<Option<String>, ControlError>;

    /// A page of `tenant`'s jobs.
    fn list(&self, tenant: &str, query: &ListQuery) -> Result<JobPage, ControlError>;

    /// Purges the job's audio, transcript and documents and records who did it
    /// in the audit trail; `false` if `tenant` has no such job.
    fn delete(&self, tenant: &str, id: &JobId, actor: &str) -> Result<bool, ControlError>;

    /// Records `access` in the audit trail. A transcript must not be served
    /// when its read cannot be recorded: the error fails the request.
    fn audit_access(&self, access: &Access) -> Result<(), ControlError>;

    /// Whether the store and the intake answer.
    fn readiness(&self) -> Vec<Readiness>;

    /// The status page's figures for `tenant`.
    fn overview(&self, tenant: &str, recent: u32) -> Result<Overview, ControlError>;

    /// Completion callbacks due now, the longest due first: at most `limit`
    /// in all and at most `per_tenant` of each tenant, so that one tenant's
    /// backlog never hides another tenant's callbacks.
    fn due_callbacks(&self, limit: u32, per_tenant: u32) -> Result<Vec<DueCallback>, ControlError>;

    /// Records a delivery attempt: `Ok` delivered; `Err(reason)` failed, to be
    /// retried at `retry_at` (unix seconds) or given up when `None`.
    fn callback_outcome(
        &self,
        id: &JobId,
        outcome: Result<(), String>,
        retry_at: Option<i64>,
    ) -> Result<(), ControlError>;
}
