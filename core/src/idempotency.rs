//! The idempotency pre-filter the dedupe stage consults before the job store.
//!
//! A filter answers "maybe seen" or "certainly new". "Certainly new" lets dedupe
//! skip the store lookup; "maybe seen" is only a hint and is always confirmed
//! by the store's exact record before anything is dropped, so a false positive
//! never loses a job. A filter that fails (Redis down) is bypassed: dedupe then
//! relies on the store alone, which is exact but slower.
//!
//! Implementations must answer or fail within a bounded time (about a second at
//! most: dedupe calls them once per job on the dataflow's thread) and fail with
//! a retryable [`ErrorClass::External`](crate::error::ErrorClass) error while
//! their service is unreachable. A filter may forget (a TTL, a flushed Redis):
//! dedupe then still finds the job in the store when it records it.

use crate::job::{ComponentError, JobId};

/// Whether a filter may have seen a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAnswer {
    /// Not inserted within the filter's memory (its lifetime or TTL window).
    CertainlyNew,
    /// Possibly inserted: confirm with the job store.
    MaybeSeen,
}

/// A probabilistic set of job ids (a Bloom filter), shared between workers and pods.
pub trait IdempotencyFilter: Send {
    /// Whether `id` may have been inserted.
    fn check(&mut self, id: &JobId) -> Result<FilterAnswer, ComponentError>;
    /// Records `id` as seen.
    fn insert(&mut self, id: &JobId) -> Result<(), ComponentError>;
    /// A short name for logs and metric labels (e.g. `redisbloom`, `redis-bitmap`).
    fn kind(&self) -> &'static str;
}
