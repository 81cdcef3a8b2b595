//! Dedupe: one job per tenant and audio content, across redeliveries and
//! restarts, and no job taken more often than the bound.
//!
//! The job store is the exact record. Every job is *taken* there before any
//! work (see [`JobStore::take`]): the take is counted durably, so a job whose
//! worker dies while processing it (killed, out of memory, aborted) is
//! dead-lettered once it was taken `max_takes` times, whatever brings it back
//! (a restart's re-queue, a broker's redelivery). A deleted or purged job is
//! new again, because the store no longer holds it.
//!
//! In memory dedupe keeps only the jobs it took that are still in flight in
//! this process (a window): their ids are dropped once the dataflow's output
//! frontier (`settled`) has passed the epoch they were taken in, so the state
//! is bounded by what is in flight, not by what the process ever saw.
//!
//! An optional idempotency filter (a Bloom filter in Redis, shared by every
//! pod) is consulted first and told of every job taken; while it fails dedupe
//! uses the store alone, so the filter can never drop or duplicate a job.

use crate::identity::correlation_id;
use crate::records::{route, IdentifiedRecord, Outcome};
use mmt_core::error::ErrorClass;
use mmt_core::idempotency::{FilterAnswer, IdempotencyFilter};
use mmt_core::job::{
    unix_now, worker_stopped_reason, ComponentError, DeadLetter, JobId, JobMeta, JobStatus,
    JobStore, Stage, Take,
};
use mmt_core::telemetry::Metrics;
use mmt_core::trace::continue_trace;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::{ProbeHandle, Stream};

/// How dedupe takes jobs and when it forgets them.
#[derive(Debug, Clone)]
pub struct DedupeConfig {
    /// Takes of one job before it is dead-lettered as a job that stops its
    /// workers (`MAX_REPROCESS_ATTEMPTS`; at least 1: every job is tried).
    pub max_takes: u32,
    /// The frontier of the dataflow's end (after the commit): a job taken in
    /// an epoch it has passed is committed, and leaves the window.
    pub settled: ProbeHandle<u64>,
    /// Jobs in this worker's window now (for tests and diagnostics).
    pub window: Arc<AtomicUsize>,
}

impl DedupeConfig {
    pub fn new(max_takes: u32, settled: ProbeHandle<u64>) -> Self {
        Self {
            max_takes: max_takes.max(1),
            settled,
            window: Arc::default(),
        }
    }
}

/// Routes jobs by id to the worker that owns them, takes them in the store,
/// and drops repeats. Jobs are taken before any work (dedupe runs before
/// decoding), so that a job whose decoding stops its worker is counted too.
///
/// A job already finished (completed or dead-lettered in the store) is a
/// redelivery: it is only counted; a job in flight in this process that
/// arrives again is a duplicate submission and is reported (audited).
pub trait Dedupe<'scope> {
    /// `filter`: the idempotency pre-filter, if one is configured (see the module
    /// docs); its health is reported in `metrics`.
    fn dedupe(
        self,
        store: Box<dyn JobStore>,
        filter: Option<Box<dyn IdempotencyFilter>>,
        metrics: Metrics,
        config: DedupeConfig,
    ) -> (
        Stream<'scope, u64, Vec<IdentifiedRecord>>,
        Stream<'scope, u64, Vec<Outcome>>,
    );
}

impl<'scope> Dedupe<'scope> for Stream<'scope, u64, Vec<IdentifiedRecord>> {
    fn dedupe(
        self,
        mut store: Box<dyn JobStore>,
        filter: Option<Box<dyn IdempotencyFilter>>,
        metrics: Metrics,
        config: DedupeConfig,
    ) -> (
        Stream<'scope, u64, Vec<IdentifiedRecord>>,
        Stream<'scope, u64, Vec<Outcome>>,
    ) {
        let mut taker = Taker {
            window: Window::default(),
            prefilter: Prefilter::new(filter, metrics),
            max_takes: config.max_takes,
            started_at: unix_now(),
        };
        let settled = config.settled;
        let window_size = config.window;
        let verdicts: Stream<'scope, u64, Vec<Result<IdentifiedRecord, Outcome>>> = self.unary(
            Exchange::new(|job: &IdentifiedRecord| route(&job.meta.id)),
            "Dedupe",
            move |_capability, _info| {
                move |jobs, output| {
                    taker.window.forget_settled(&settled);
                    jobs.for_each(|capability, data| {
                        let epoch = capability.least().copied().unwrap_or_default();
                        let mut session = output.session(&capability);
                        for job in data.drain(..) {
                            let verdict = taker.judge(job, epoch, store.as_mut());
                            if let Ok(taken) = &verdict {
                                session.give(Err(received(&taken.meta)));
                            }
                            session.give(verdict);
                        }
                    });
                    window_size.store(taker.window.len(), Ordering::Relaxed);
                }
            },
        );
        verdicts.ok_err(|verdict| verdict)
    }
}

/// The jobs this worker took that may still be in flight, by the epoch they
/// were taken in.
#[derive(Debug, Default)]
struct Window {
    epochs: HashMap<JobId, u64>,
    by_epoch: BTreeMap<u64, Vec<JobId>>,
}

impl Window {
    fn len(&self) -> usize {
        self.epochs.len()
    }

    fn contains(&self, id: &JobId) -> bool {
        self.epochs.contains_key(id)
    }

    fn insert(&mut self, id: JobId, epoch: u64) {
        if let Some(previous) = self.epochs.insert(id.clone(), epoch) {
            if previous == epoch {
                return;
            }
        }
        self.by_epoch.entry(epoch).or_default().push(id);
    }

    fn remove(&mut self, id: &JobId) {
        self.epochs.remove(id);
    }

    /// Drops the jobs of every epoch the end of the dataflow has passed:
    /// they are committed, and the store's record speaks for them.
    fn forget_settled(&mut self, settled: &ProbeHandle<u64>) {
        while let Some(entry) = self.by_epoch.first_entry() {
            let epoch = *entry.key();
            if settled.less_equal(&epoch) {
                break;
            }
            for id in entry.remove() {
                // Unless taken again in a later epoch.
                if self.epochs.get(&id) == Some(&epoch) {
                    self.epochs.remove(&id);
                }
            }
        }
    }
}

/// Dedupe's state on one worker.
struct Taker {
    window: Window,
    prefilter: Prefilter,
    max_takes: u32,
    /// Unix seconds when this process started taking jobs: a job finished
    /// after that second and submitted again is a duplicate of this run, one
    /// finished before it a redelivery of an earlier run's. The second itself
    /// counts as before: the previous run may have finished jobs in the very
    /// second this one started (a restart right after a run).
    started_at: i64,
}

impl Taker {
    /// The job to process, or why it needs no processing.
    fn judge(
        &mut self,
        mut job: IdentifiedRecord,
        epoch: u64,
        store: &mut dyn JobStore,
    ) -> Result<IdentifiedRecord, Outcome> {
        let span = tracing::info_span!("dedupe", job = %job.meta.id);
        continue_trace(&span, job.meta.trace_parent.as_deref());
        let _span = span.entered();
        if self.in_flight(&job.meta.id, store) {
            // A broker redelivers a message whose delivery it lost track of (a
            // dropped connection): that is the same submission again, not a
            // second one, so it is not audited as a duplicate.
            return Err(if job.redelivered() {
                Outcome::AlreadyFinished(job.meta.id)
            } else {
                Outcome::Duplicate(job.meta)
            });
        }
        match self.take(&job.meta, epoch, store) {
            Taken::Yes { generation } => {
                adopt_generation(&mut job.meta, generation);
                failpoint_after_take(&job.meta);
                Ok(job)
            }
            // Finished since this process started, and not a broker's
            // redelivery: the same audio submitted again in this run.
            Taken::Finished { in_this_run: true } if !job.redelivered() => {
                Err(Outcome::Duplicate(job.meta))
            }
            Taken::Finished { .. } => Err(Outcome::AlreadyFinished(job.meta.id)),
            Taken::Exhausted {
                attempts,
                generation,
            } => {
                adopt_generation(&mut job.meta, generation);
                Err(Outcome::DeadLettered(worker_stopped(&job.meta, attempts)))
            }
        }
    }

    /// Whether the job was taken by this worker and is still in flight. The
    /// store has the last word: a job deleted (or purged) and submitted again
    /// meanwhile is queued there, or absent, and is new.
    fn in_flight(&mut self, id: &JobId, store: &mut dyn JobStore) -> bool {
        if !self.window.contains(id) {
            return false;
        }
        match store.status(id) {
            Ok(None | Some(JobStatus::Queued)) => {
                self.window.remove(id);
                false
            }
            Ok(Some(_)) => true,
            // The window says in flight; without the store, trust it.
            Err(err) => {
                tracing::warn!(job = %id, error = %err, "store lookup failed; treating the job as in flight");
                true
            }
        }
    }

    /// Takes the job in the store and remembers it in the window.
    fn take(&mut self, meta: &JobMeta, epoch: u64, store: &mut dyn JobStore) -> Taken {
        let answer = self.prefilter.check(&meta.id);
        let taken = match store.take(meta, self.max_takes) {
            Ok(Take::Taken {
                attempt,
                generation,
            }) => {
                if attempt > 1 {
                    tracing::info!(job = %meta.id, attempt, "taking a job again that did not finish");
                }
                Taken::Yes { generation }
            }
            Ok(Take::Finished { since }) => {
                tracing::debug!(job = %meta.id, "already finished");
                return Taken::Finished {
                    in_this_run: since > self.started_at,
                };
            }
            Ok(Take::Exhausted {
                attempts,
                generation,
            }) => {
                tracing::warn!(job = %meta.id, attempts, "the job stopped its workers every time; dead-lettering it");
                Taken::Exhausted {
                    attempts,
                    generation,
                }
            }
            // Processing without the count is safe (the sinks are
            // idempotent); losing the job is not.
            Err(err) => {
                tracing::warn!(job = %meta.id, error = %err, "could not take the job in the store; processing anyway");
                Taken::Yes {
                    generation: meta.received_at,
                }
            }
        };
        self.window.insert(meta.id.clone(), epoch);
        // Only remember in the filter what the store holds; skip it while the
        // filter is down (its failure is already counted for this job).
        if answer.is_some() {
            self.prefilter.insert(&meta.id);
        }
        taken
    }
}

/// What a take decided, less what the caller need not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    Yes {
        generation: i64,
    },
    /// `in_this_run`: finished since this process started.
    Finished {
        in_this_run: bool,
    },
    Exhausted {
        attempts: u32,
        generation: i64,
    },
}

/// The reception of a job taken in the store, for the audit trail: every
/// take of a record emits it, and the trail keeps the first (its key is the
/// job, the action and the record's correlation id), so a redelivery or a
/// take after a crash adds nothing. This is the one place `job_received` is
/// written, whatever the job came from (the API, a broker, a folder).
fn received(meta: &JobMeta) -> Outcome {
    Outcome::Received(meta.clone())
}

/// The job's events carry its generation's correlation id: the same for every
/// redelivery of this record of the job, another once it is deleted and
/// submitted again (the audit trail's key, see `AuditEvent::key`).
fn adopt_generation(meta: &mut JobMeta, generation: i64) {
    meta.correlation_id = correlation_id(&meta.id, generation as u64);
}

/// The dead letter of a job taken too often without finishing.
fn worker_stopped(meta: &JobMeta, attempts: u32) -> DeadLetter {
    DeadLetter {
        job_id: meta.id.clone(),
        tenant: meta.tenant.clone(),
        correlation_id: meta.correlation_id.clone(),
        stage: Stage::Dedupe,
        // Whatever in the job stops its workers, retrying cannot help.
        class: ErrorClass::UserInput,
        reason: worker_stopped_reason(attempts),
        attempts,
        at: unix_now(),
    }
}

/// Test builds only (feature `failpoints`): aborts the process right after it
/// took the job whose content hash `MMT_FAILPOINT_ABORT_ON_CONTENT` names, as
/// a worker killed while processing it would stop.
#[cfg(feature = "failpoints")]
fn failpoint_after_take(meta: &JobMeta) {
    if std::env::var("MMT_FAILPOINT_ABORT_ON_CONTENT").is_ok_and(|hash| hash == meta.content_hash) {
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
fn failpoint_after_take(_meta: &JobMeta) {}

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

#[cfg(test)]
mod tests {
    use super::*;
    use mmt_core::job::CompletedJob;
    use std::collections::HashSet;

    /// A job store in memory (a unit-test double; the SQL store's take is
    /// tested against SQLite and the servers in `connectors/tests`).
    #[derive(Default)]
    struct MemoryStore {
        jobs: HashMap<JobId, (JobStatus, u32, i64)>,
        next_generation: i64,
        /// What the store reports as the time of every finish.
        now: i64,
    }

    impl JobStore for MemoryStore {
        fn status(&mut self, id: &JobId) -> Result<Option<JobStatus>, ComponentError> {
            Ok(self.jobs.get(id).map(|job| job.0))
        }
        fn insert_queued(&mut self, meta: &JobMeta) -> Result<bool, ComponentError> {
            if self.jobs.contains_key(&meta.id) {
                return Ok(false);
            }
            self.next_generation += 1;
            self.jobs.insert(
                meta.id.clone(),
                (JobStatus::Queued, 0, self.next_generation),
            );
            Ok(true)
        }
        fn take(&mut self, meta: &JobMeta, max_takes: u32) -> Result<Take, ComponentError> {
            self.insert_queued(meta)?;
            let job = self.jobs.get_mut(&meta.id).expect("inserted");
            Ok(if job.0.is_terminal() {
                Take::Finished { since: self.now }
            } else if job.1 >= max_takes {
                Take::Exhausted {
                    attempts: job.1,
                    generation: job.2,
                }
            } else {
                job.0 = JobStatus::Processing;
                job.1 += 1;
                Take::Taken {
                    attempt: job.1,
                    generation: job.2,
                }
            })
        }
        fn release(&mut self, id: &JobId) -> Result<bool, ComponentError> {
            Ok(match self.jobs.get_mut(id) {
                Some(job) if job.0 == JobStatus::Processing && job.1 > 0 => {
                    job.0 = JobStatus::Queued;
                    job.1 -= 1;
                    true
                }
                _ => false,
            })
        }
        fn transition(&mut self, _: &JobId, _: JobStatus) -> Result<bool, ComponentError> {
            Ok(false)
        }
        fn complete(&mut self, job: &CompletedJob) -> Result<(), ComponentError> {
            if let Some(stored) = self.jobs.get_mut(&job.meta.id) {
                stored.0 = JobStatus::Completed;
            }
            Ok(())
        }
        fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), ComponentError> {
            if let Some(stored) = self.jobs.get_mut(&letter.job_id) {
                stored.0 = JobStatus::DeadLettered;
            }
            Ok(())
        }
        fn purge_before(
            &mut self,
            _: i64,
            _: bool,
        ) -> Result<Vec<mmt_core::job::DueJob>, ComponentError> {
            Ok(Vec::new())
        }
        fn purge_listed(
            &mut self,
            _: i64,
            _: &HashSet<JobId>,
        ) -> Result<Vec<mmt_core::job::DueJob>, ComponentError> {
            Ok(Vec::new())
        }
    }

    /// A filter double: an exact set, and a switch that makes every call fail
    /// like an unreachable Redis.
    #[derive(Default)]
    struct MemoryFilter {
        inserted: HashSet<JobId>,
        down: bool,
    }

    struct Shared(std::sync::Arc<std::sync::Mutex<MemoryFilter>>);

    impl IdempotencyFilter for Shared {
        fn check(&mut self, id: &JobId) -> Result<FilterAnswer, ComponentError> {
            let filter = self.0.lock().expect("lock");
            if filter.down {
                return Err(unreachable_redis());
            }
            Ok(if filter.inserted.contains(id) {
                FilterAnswer::MaybeSeen
            } else {
                FilterAnswer::CertainlyNew
            })
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

    fn new_taker(max_takes: u32) -> (Taker, Handle, Metrics) {
        let handle = Handle::default();
        let metrics = Metrics::new().expect("metrics");
        let prefilter = Prefilter::new(
            Some(Box::new(Shared(std::sync::Arc::clone(&handle)))),
            metrics.clone(),
        );
        let taker = Taker {
            window: Window::default(),
            prefilter,
            max_takes,
            started_at: 1_000,
        };
        (taker, handle, metrics)
    }

    fn job(id: &str) -> IdentifiedRecord {
        IdentifiedRecord {
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
            record: Default::default(),
        }
    }

    fn id(text: &str) -> JobId {
        JobId(text.to_owned())
    }

    #[test]
    fn a_job_is_taken_once_per_run_and_a_repeat_in_flight_is_a_duplicate() {
        let (mut taker, handle, metrics) = new_taker(5);
        let mut store = MemoryStore::default();
        let taken = taker.judge(job("a1"), 0, &mut store).expect("taken");
        assert_eq!(store.jobs[&id("a1")].0, JobStatus::Processing);
        assert_eq!(store.jobs[&id("a1")].1, 1, "the take is counted");
        assert_eq!(
            taken.meta.correlation_id,
            correlation_id(&id("a1"), 1),
            "events carry the generation's correlation id"
        );
        assert!(handle.lock().expect("lock").inserted.contains(&id("a1")));
        assert_eq!(metrics.idempotency_filter_available.get(), 1);
        assert!(matches!(
            taker.judge(job("a1"), 1, &mut store),
            Err(Outcome::Duplicate(_))
        ));
        let mut again = job("a1");
        again.record.redelivered = true;
        assert!(matches!(
            taker.judge(again, 1, &mut store),
            Err(Outcome::AlreadyFinished(_))
        ));
        assert_eq!(store.jobs[&id("a1")].1, 1, "repeats in flight take nothing");
    }

    #[test]
    fn a_job_that_keeps_stopping_its_worker_is_dead_lettered_after_max_takes() {
        let mut store = MemoryStore::default();
        // Each process takes the job and dies: a fresh window each time.
        for attempt in 1..=3 {
            let (mut taker, _, _) = new_taker(3);
            assert!(taker.judge(job("p1"), 0, &mut store).is_ok());
            assert_eq!(store.jobs[&id("p1")].1, attempt);
        }
        let (mut taker, _, _) = new_taker(3);
        let Err(Outcome::DeadLettered(letter)) = taker.judge(job("p1"), 0, &mut store) else {
            panic!("the fourth take must dead-letter the job");
        };
        assert_eq!(letter.reason, "worker stopped while processing it 3 times");
        assert_eq!(letter.attempts, 3);
        assert_eq!(letter.stage, Stage::Dedupe);
        assert!(!letter.class.is_retryable());
        // Once dead-lettered in the store, nothing takes it again.
        store.dead_letter(&letter).expect("dead letter");
        let (mut taker, _, _) = new_taker(3);
        assert!(matches!(
            taker.judge(job("p1"), 0, &mut store),
            Err(Outcome::AlreadyFinished(_))
        ));
        assert_eq!(store.jobs[&id("p1")].1, 3);
    }

    #[test]
    fn a_deleted_job_submitted_again_is_new_even_while_in_the_window() {
        let (mut taker, _, _) = new_taker(5);
        let mut store = MemoryStore::default();
        let first = taker.judge(job("d1"), 0, &mut store).expect("taken");
        store.jobs.remove(&id("d1"));
        let second = taker.judge(job("d1"), 1, &mut store).expect("new again");
        assert_ne!(
            first.meta.correlation_id, second.meta.correlation_id,
            "another generation, another occurrence"
        );
        // Finished and still in the window: a repeat, not new work.
        store.jobs.get_mut(&id("d1")).expect("stored").0 = JobStatus::Completed;
        assert!(matches!(
            taker.judge(job("d1"), 2, &mut store),
            Err(Outcome::Duplicate(_))
        ));
    }

    #[test]
    fn the_window_forgets_what_the_end_of_the_dataflow_passed() {
        let (mut taker, _, _) = new_taker(5);
        let mut store = MemoryStore::default();
        for n in 0..10 {
            assert!(taker.judge(job(&format!("w{n}")), n, &mut store).is_ok());
        }
        assert_eq!(taker.window.len(), 10);
        // A probe of nothing has an empty frontier: every epoch has passed.
        taker.window.forget_settled(&ProbeHandle::new());
        assert_eq!(taker.window.len(), 0);
        assert!(taker.window.by_epoch.is_empty());
        // Finished in an earlier run, a later arrival is a redelivery.
        store.jobs.get_mut(&id("w3")).expect("stored").0 = JobStatus::Completed;
        assert!(matches!(
            taker.judge(job("w3"), 11, &mut store),
            Err(Outcome::AlreadyFinished(_))
        ));
        // Finished in this run, the same audio again is a duplicate
        // submission, unless the broker says it is a redelivery.
        store.now = taker.started_at + 1;
        assert!(matches!(
            taker.judge(job("w3"), 12, &mut store),
            Err(Outcome::Duplicate(_))
        ));
        let mut redelivered = job("w3");
        redelivered.record.redelivered = true;
        assert!(matches!(
            taker.judge(redelivered, 12, &mut store),
            Err(Outcome::AlreadyFinished(_))
        ));
    }

    #[test]
    fn a_filter_error_falls_back_to_the_store_and_keeps_correctness() {
        let (mut taker, handle, metrics) = new_taker(5);
        let mut store = MemoryStore::default();
        handle.lock().expect("lock").down = true;
        assert!(taker.judge(job("e1"), 0, &mut store).is_ok());
        assert_eq!(store.jobs[&id("e1")].0, JobStatus::Processing);
        let fallbacks = |reason: &str| {
            metrics
                .idempotency_filter_fallback_total
                .with_label_values(&[reason])
                .get()
        };
        assert_eq!(fallbacks("check_failed"), 1);
        assert_eq!(fallbacks("insert_failed"), 0, "no insert tried while down");
        assert_eq!(metrics.idempotency_filter_available.get(), 0);
        handle.lock().expect("lock").down = false;
        assert!(taker.judge(job("e2"), 0, &mut store).is_ok());
        assert_eq!(metrics.idempotency_filter_available.get(), 1, "recovered");
        assert!(handle.lock().expect("lock").inserted.contains(&id("e2")));
    }
}
