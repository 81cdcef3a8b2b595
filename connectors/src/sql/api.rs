//! What the REST API asks of the job store, and what it answers: submissions
//! with idempotency keys and callbacks, pages of a tenant's jobs, and the
//! callbacks due for delivery (see the methods of [`SqlJobStore`]).
//!
//! [`SqlJobStore`]: super::SqlJobStore

use std::fmt;

use mmt_core::job::{JobId, JobMeta, JobStatus};

use super::JobRow;

/// An API client's `Idempotency-Key` and the hash of the request that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyRecord<'a> {
    /// The key, as the client sent it: at most 255 characters (longer ones are
    /// refused).
    pub key: &'a str,
    /// A hash of the request, at most 128 characters: the same key with another
    /// hash is another request, refused.
    pub request_hash: &'a str,
}

/// A job submitted through the API. Its `Debug` leaves the callback URL out.
#[derive(Clone, Copy, PartialEq)]
pub struct NewSubmission<'a> {
    pub meta: &'a JobMeta,
    /// 0..9, higher is sooner; higher values are stored as 9.
    pub priority: u8,
    pub idempotency: Option<IdempotencyRecord<'a>>,
    /// Where to notify the client once the job is final. May hold a token:
    /// never logged.
    pub callback_url: Option<&'a str>,
}

/// What [`submit`](super::SqlJobStore::submit) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmissionOutcome {
    /// A new job row was inserted (queued).
    Created,
    /// Nothing new: the job already existed (same tenant + audio => same job id), or the
    /// idempotency key was used before for the same request; carries the job it names.
    Existing { job_id: JobId },
    /// The idempotency key was used before by this tenant for a different request (other request_hash).
    KeyConflict,
}

/// One page of a tenant's jobs, newest received first (`received_at` then `id`,
/// both descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageQuery<'a> {
    pub tenant: &'a str,
    /// Only these statuses; empty = every status.
    pub statuses: &'a [JobStatus],
    /// received_at >= this, if set.
    pub received_from: Option<i64>,
    /// received_at < this, if set.
    pub received_before: Option<i64>,
    /// Keyset cursor: only rows strictly after this (received_at, id) in the order below.
    pub after: Option<(i64, &'a JobId)>,
    pub limit: u32,
}

/// A callback to deliver now: the final job, where to, and how often it failed
/// so far. Its `Debug` leaves the URL out.
#[derive(Clone, PartialEq)]
pub struct DueCallback {
    pub job: JobRow,
    /// May hold a token: never logged.
    pub url: String,
    /// Failed deliveries so far.
    pub attempts: u32,
}

/// What `Debug` shows of a callback URL: that there is one.
const REDACTED: &str = "***";

impl fmt::Debug for NewSubmission<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewSubmission")
            .field("meta", self.meta)
            .field("priority", &self.priority)
            .field("idempotency", &self.idempotency)
            .field("callback_url", &self.callback_url.map(|_| REDACTED))
            .finish()
    }
}

impl fmt::Debug for DueCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DueCallback")
            .field("job", &self.job)
            .field("url", &REDACTED)
            .field("attempts", &self.attempts)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_callback_urls() {
        let meta = JobMeta {
            id: JobId("a1".into()),
            tenant: "t".into(),
            content_hash: String::new(),
            source: String::new(),
            patient_reference: None,
            encounter_reference: None,
            correlation_id: "c".into(),
            received_at: 1,
            trace_parent: None,
        };
        let submission = NewSubmission {
            meta: &meta,
            priority: 1,
            idempotency: None,
            callback_url: Some("https://hooks.example/cb?token=s3cret"),
        };
        assert!(!format!("{submission:?}").contains("s3cret"));
    }
}
