//! Dedupe: one job per tenant and audio content, across redeliveries and restarts.
//!
//! The job store is the exact record. An optional idempotency filter (a Bloom
//! filter in Redis, shared by every pod) saves the store lookup for jobs it has
//! certainly never seen; its "maybe seen" is always confirmed by the store, and
//! while it fails dedupe uses the store alone, so the filter can only make
//! dedupe faster, never drop or duplicate a job.

use crate::records::{route, DecodedJob, Outcome};
use mmt_core::idempotency::{FilterAnswer, IdempotencyFilter};
use mmt_core::job::{ComponentError, JobId, JobMeta, JobStatus, JobStore};
use mmt_core::telemetry::Metrics;
use std::collections::HashSet;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::Stream;

/// Routes jobs by id to the worker that owns them and drops repeats.
///
/// A job already finished in an earlier run (completed or dead-lettered in the
/// store) is a redelivery: it is only counted; a job seen twice in this run is
/// a duplicate submission and is reported (audited) once.
pub trait Dedupe<'scope> {
    /// `filter`: the idempotency pre-filter, if one is configured (see the module
    /// docs); its health is reported in `metrics`.
    fn dedupe(
        self,
        store: Box<dyn JobStore>,
        filter: Option<Box<dyn IdempotencyFilter>>,
        metrics: Metrics,
    ) -> (
        Stream<'scope, u64, Vec<DecodedJob>>,
        Stream<'scope, u64, Vec<Outcome>>,
    );
}

impl<'scope> Dedupe<'scope> for Stream<'scope, u64, Vec<DecodedJob>> {
    fn dedupe(
        self,
        mut store: Box<dyn JobStore>,
        filter: Option<Box<dyn IdempotencyFilter>>,
        metrics: Metrics,
    ) -> (
        Stream<'scope, u64, Vec<DecodedJob>>,
        Stream<'scope, u64, Vec<Outcome>>,
    ) {
        let mut seen: HashSet<JobId> = HashSet::new();
        let mut prefilter = Prefilter::new(filter, metrics);
        let verdicts: Stream<'scope, u64, Vec<Result<DecodedJob, Outcome>>> = self.unary(
            Exchange::new(|job: &DecodedJob| route(&job.meta.id)),
            "Dedupe",
            move |_capability, _info| {
                move |input, output| {
                    input.for_each(|capability, data| {
                        let mut session = output.session(&capability);
                        for job in data.drain(..) {
                            session.give(judge(job, &mut seen, store.as_mut(), &mut prefilter));
                        }
                    });
                }
            },
        );
        verdicts.ok_err(|verdict| verdict)
    }
}

/// Why dedupe went without the filter for a job (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FallbackReason {
    CheckFailed,
    InsertFailed,
}

impl FallbackReason {
    fn label(self) -> &'static str {
        match self {
            Self::CheckFailed => "check_failed",
            Self::InsertFailed => "insert_failed",
        }
    }
}

/// The idempotency filter as dedupe uses it: bypassed while it fails, with one
/// warning per outage (and a note when it recovers) rather than one per job.
struct Prefilter {
    filter: Option<Box<dyn IdempotencyFilter>>,
    metrics: Metrics,
    /// Whether the last call succeeded.
    available: bool,
}

impl Prefilter {
    fn new(filter: Option<Box<dyn IdempotencyFilter>>, metrics: Metrics) -> Self {
        metrics
            .idempotency_filter_available
            .set(i64::from(filter.is_some()));
        Self {
            filter,
            metrics,
            available: true,
        }
    }

    /// The filter's answer; `None` when there is no filter or it failed (then
    /// the store decides alone).
    fn check(&mut self, id: &JobId) -> Option<FilterAnswer> {
        let result = self.filter.as_mut()?.check(id);
        match result {
            Ok(answer) => {
                self.succeeded();
                Some(answer)
            }
            Err(error) => {
                self.failed(FallbackReason::CheckFailed, &error);
                None
            }
        }
    }

    /// Records `id` in the filter; a failure only costs a store lookup later.
    fn insert(&mut self, id: &JobId) {
        let Some(filter) = self.filter.as_mut() else {
            return;
        };
        match filter.insert(id) {
            Ok(()) => self.succeeded(),
            Err(error) => self.failed(FallbackReason::InsertFailed, &error),
        }
    }

    fn succeeded(&mut self) {
        if !self.available {
            self.available = true;
            self.metrics.idempotency_filter_available.set(1);
            tracing::info!(filter = self.kind(), "idempotency filter recovered");
        }
    }

    fn failed(&mut self, reason: FallbackReason, error: &ComponentError) {
        self.metrics
            .idempotency_filter_fallback_total
            .with_label_values(&[reason.label()])
            .inc();
        if self.available {
            self.available = false;
            self.metrics.idempotency_filter_available.set(0);
            tracing::warn!(
                filter = self.kind(),
                error = %error,
                "idempotency filter failed; deduplicating with the job store alone until it recovers"
            );
        }
    }

    fn kind(&self) -> &'static str {
        self.filter.as_ref().map_or("none", |filter| filter.kind())
    }
}

/// The job to process, or why it needs no processing.
fn judge(
    job: DecodedJob,
    seen: &mut HashSet<JobId>,
    store: &mut dyn JobStore,
    prefilter: &mut Prefilter,
) -> Result<DecodedJob, Outcome> {
    if !seen.insert(job.meta.id.clone()) {
        // A broker redelivers a message whose delivery it lost track of (a
        // dropped connection): that is the same submission again, not a second
        // one, so it is not audited as a duplicate.
        return Err(if job.redelivered {
            Outcome::AlreadyFinished(job.meta.id)
        } else {
            Outcome::Duplicate(job.meta)
        });
    }
    let answer = prefilter.check(&job.meta.id);
    let recorded = if answer == Some(FilterAnswer::CertainlyNew) {
        // No store lookup: recording the job tells whether the store knew it.
        match store.insert_queued(&job.meta) {
            Ok(true) => start(store, &job.meta.id),
            // The store knew the job though the filter did not (its generation
            // expired, or Redis lost it): the store's record decides.
            Ok(false) => {
                if finished(store, &job.meta.id) {
                    return Err(Outcome::AlreadyFinished(job.meta.id));
                }
                start(store, &job.meta.id)
            }
            Err(err) => Err(err),
        }
    } else {
        // Maybe seen (perhaps a false positive), or no filter to ask: look it up.
        if finished(store, &job.meta.id) {
            return Err(Outcome::AlreadyFinished(job.meta.id));
        }
        record(store, &job.meta)
    };
    match recorded {
        // Only remember in the filter what the store holds; skip it while the
        // filter is down (its failure is already counted for this job).
        Ok(()) if answer.is_some() => prefilter.insert(&job.meta.id),
        Ok(()) => {}
        Err(err) => {
            tracing::warn!(job = %job.meta.id, error = %err, "could not record the job as processing");
        }
    }
    Ok(job)
}

/// Whether the store says the job reached an end state. A failed lookup counts
/// as "no": the sinks are idempotent, so processing again is safe; losing the
/// job is not.
fn finished(store: &mut dyn JobStore, id: &JobId) -> bool {
    match store.status(id) {
        Ok(Some(status)) if status.is_terminal() => {
            tracing::debug!(job = %id, status = status.as_str(), "already finished");
            true
        }
        Ok(_) => false,
        Err(err) => {
            tracing::warn!(job = %id, error = %err, "store lookup failed; processing anyway");
            false
        }
    }
}

/// Records the job as queued (unless known) and then processing.
fn record(store: &mut dyn JobStore, meta: &JobMeta) -> Result<(), ComponentError> {
    store.insert_queued(meta)?;
    start(store, &meta.id)
}

fn start(store: &mut dyn JobStore, id: &JobId) -> Result<(), ComponentError> {
    store.transition(id, JobStatus::Processing).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmt_core::error::ErrorClass;
    use mmt_core::job::{CompletedJob, DeadLetter};
    use std::collections::HashMap;

    /// A job store in memory that counts its status lookups.
    #[derive(Default)]
    struct MemoryStore {
        jobs: HashMap<JobId, JobStatus>,
        lookups: usize,
    }

    impl JobStore for MemoryStore {
        fn status(&mut self, id: &JobId) -> Result<Option<JobStatus>, ComponentError> {
            self.lookups += 1;
            Ok(self.jobs.get(id).copied())
        }
        fn insert_queued(&mut self, meta: &JobMeta) -> Result<bool, ComponentError> {
            if self.jobs.contains_key(&meta.id) {
                return Ok(false);
            }
            self.jobs.insert(meta.id.clone(), JobStatus::Queued);
            Ok(true)
        }
        fn transition(&mut self, id: &JobId, status: JobStatus) -> Result<bool, ComponentError> {
            match self.jobs.get_mut(id) {
                Some(current) if current.can_become(status) => {
                    *current = status;
                    Ok(true)
                }
                _ => Ok(false),
            }
        }
        fn complete(&mut self, job: &CompletedJob) -> Result<(), ComponentError> {
            self.jobs.insert(job.meta.id.clone(), JobStatus::Completed);
            Ok(())
        }
        fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), ComponentError> {
            self.jobs
                .insert(letter.job_id.clone(), JobStatus::DeadLettered);
            Ok(())
        }
        fn purge_before(&mut self, _: i64, _: bool) -> Result<Vec<JobId>, ComponentError> {
            Ok(Vec::new())
        }
    }

    /// A filter double: an exact set, plus ids it falsely claims, and a switch
    /// that makes every call fail like an unreachable Redis.
    #[derive(Default)]
    struct MemoryFilter {
        inserted: HashSet<JobId>,
        false_positives: HashSet<JobId>,
        down: bool,
    }

    struct Shared(std::sync::Arc<std::sync::Mutex<MemoryFilter>>);

    impl IdempotencyFilter for Shared {
        fn check(&mut self, id: &JobId) -> Result<FilterAnswer, ComponentError> {
            let filter = self.0.lock().expect("lock");
            if filter.down {
                return Err(unreachable_redis());
            }
            Ok(
                if filter.inserted.contains(id) || filter.false_positives.contains(id) {
                    FilterAnswer::MaybeSeen
                } else {
                    FilterAnswer::CertainlyNew
                },
            )
        }
        fn insert(&mut self, id: &JobId) -> Result<(), ComponentError> {
            let mut filter = self.0.lock().expect("lock");
            if filter.down {
                return Err(unreachable_redis());
            }
            filter.inserted.insert(id.clone());
            Ok(())
        }
        fn kind(&self) -> &'static str {
            "memory"
        }
    }

    fn unreachable_redis() -> ComponentError {
        ComponentError::new(
            ErrorClass::External { retryable: true },
            "redis: Connection refused (os error 111)",
        )
    }

    type Handle = std::sync::Arc<std::sync::Mutex<MemoryFilter>>;

    fn setup() -> (Prefilter, Handle, Metrics) {
        let handle = Handle::default();
        let metrics = Metrics::new().expect("metrics");
        let prefilter = Prefilter::new(
            Some(Box::new(Shared(std::sync::Arc::clone(&handle)))),
            metrics.clone(),
        );
        (prefilter, handle, metrics)
    }

    fn job(id: &str) -> DecodedJob {
        DecodedJob {
            meta: JobMeta {
                id: JobId(id.to_owned()),
                tenant: "clinic-a".into(),
                content_hash: "ab".repeat(32),
                source: "smith_john.wav".into(),
                patient_reference: None,
                encounter_reference: None,
                correlation_id: format!("corr-{id}"),
                received_at: 1_700_000_000,
                trace_parent: None,
            },
            audio: Default::default(),
            redelivered: false,
        }
    }

    fn fallbacks(metrics: &Metrics, reason: &str) -> u64 {
        metrics
            .idempotency_filter_fallback_total
            .with_label_values(&[reason])
            .get()
    }

    #[test]
    fn certainly_new_skips_the_store_lookup() {
        let (mut prefilter, handle, metrics) = setup();
        let mut store = MemoryStore::default();
        let mut seen = HashSet::new();
        assert!(judge(job("a1"), &mut seen, &mut store, &mut prefilter).is_ok());
        assert_eq!(store.lookups, 0, "certainly new: no status lookup");
        assert_eq!(store.jobs[&JobId("a1".into())], JobStatus::Processing);
        assert!(handle
            .lock()
            .expect("lock")
            .inserted
            .contains(&JobId("a1".into())));
        assert_eq!(metrics.idempotency_filter_available.get(), 1);
        // A duplicate in the same run never reaches the filter or the store.
        assert!(matches!(
            judge(job("a1"), &mut seen, &mut store, &mut prefilter),
            Err(Outcome::Duplicate(_))
        ));
    }

    #[test]
    fn a_redelivered_repeat_is_not_a_duplicate_submission() {
        let (mut prefilter, _handle, _metrics) = setup();
        let mut store = MemoryStore::default();
        let mut seen = HashSet::new();
        assert!(judge(job("r1"), &mut seen, &mut store, &mut prefilter).is_ok());
        let mut again = job("r1");
        again.redelivered = true;
        assert!(matches!(
            judge(again, &mut seen, &mut store, &mut prefilter),
            Err(Outcome::AlreadyFinished(_))
        ));
    }

    #[test]
    fn a_false_positive_is_confirmed_and_still_processed() {
        let (mut prefilter, handle, _metrics) = setup();
        handle
            .lock()
            .expect("lock")
            .false_positives
            .insert(JobId("b1".into()));
        let mut store = MemoryStore::default();
        let verdict = judge(job("b1"), &mut HashSet::new(), &mut store, &mut prefilter);
        assert!(verdict.is_ok(), "a false positive must never drop a job");
        assert_eq!(store.lookups, 1, "maybe seen: confirmed by the store");
        assert_eq!(store.jobs[&JobId("b1".into())], JobStatus::Processing);
    }

    #[test]
    fn a_true_positive_of_a_finished_job_is_not_processed_again() {
        let (mut prefilter, _handle, _metrics) = setup();
        let mut store = MemoryStore::default();
        assert!(judge(job("c1"), &mut HashSet::new(), &mut store, &mut prefilter).is_ok());
        store.jobs.insert(JobId("c1".into()), JobStatus::Completed);
        // A redelivery in a later run (a fresh `seen`).
        let verdict = judge(job("c1"), &mut HashSet::new(), &mut store, &mut prefilter);
        assert!(matches!(verdict, Err(Outcome::AlreadyFinished(_))));
        assert_eq!(store.lookups, 1);
    }

    #[test]
    fn a_job_the_filter_forgot_is_still_caught_by_the_store() {
        // The filter's generation expired (or Redis was flushed) but the store knows.
        let (mut prefilter, _handle, _metrics) = setup();
        let mut store = MemoryStore::default();
        store
            .jobs
            .insert(JobId("d1".into()), JobStatus::DeadLettered);
        let verdict = judge(job("d1"), &mut HashSet::new(), &mut store, &mut prefilter);
        assert!(matches!(verdict, Err(Outcome::AlreadyFinished(_))));
        store.jobs.insert(JobId("d2".into()), JobStatus::Failed);
        let verdict = judge(job("d2"), &mut HashSet::new(), &mut store, &mut prefilter);
        assert!(verdict.is_ok(), "a failed job is retried");
        assert_eq!(store.jobs[&JobId("d2".into())], JobStatus::Processing);
    }

    #[test]
    fn a_filter_error_falls_back_to_the_store_and_keeps_correctness() {
        let (mut prefilter, handle, metrics) = setup();
        let mut store = MemoryStore::default();
        store
            .jobs
            .insert(JobId("e-done".into()), JobStatus::Completed);
        handle.lock().expect("lock").down = true;

        let mut seen = HashSet::new();
        let finished = judge(job("e-done"), &mut seen, &mut store, &mut prefilter);
        assert!(matches!(finished, Err(Outcome::AlreadyFinished(_))));
        assert!(judge(job("e-new"), &mut seen, &mut store, &mut prefilter).is_ok());
        assert_eq!(
            store.lookups, 2,
            "every job checked exactly while the filter is down"
        );
        assert_eq!(store.jobs[&JobId("e-new".into())], JobStatus::Processing);
        assert_eq!(fallbacks(&metrics, "check_failed"), 2);
        assert_eq!(
            fallbacks(&metrics, "insert_failed"),
            0,
            "no insert tried while down"
        );
        assert_eq!(metrics.idempotency_filter_available.get(), 0);
        assert!(!prefilter.available);

        handle.lock().expect("lock").down = false;
        assert!(judge(job("e-later"), &mut seen, &mut store, &mut prefilter).is_ok());
        assert_eq!(metrics.idempotency_filter_available.get(), 1, "recovered");
        assert!(prefilter.available);
        assert_eq!(store.lookups, 2, "certainly new again: no lookup");
    }

    #[test]
    fn without_a_filter_the_store_decides_alone() {
        let metrics = Metrics::new().expect("metrics");
        let mut prefilter = Prefilter::new(None, metrics.clone());
        let mut store = MemoryStore::default();
        assert!(judge(job("f1"), &mut HashSet::new(), &mut store, &mut prefilter).is_ok());
        assert_eq!(store.lookups, 1);
        assert_eq!(metrics.idempotency_filter_available.get(), 0);
        assert_eq!(
            fallbacks(&metrics, "check_failed"),
            0,
            "no filter is not an outage"
        );
    }
}
