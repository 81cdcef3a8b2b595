//! Commit: the sinks of the dataflow (documents, audit trail, dead letters, job store).
//!
//! Every outcome is committed by one worker (worker 0), so the append-only sinks
//! have a single writer. An outcome is committed in this order: the document (or
//! dead letter), then the audit event, then the job store, which is the commit
//! point; each write is idempotent, so a crash in between is repaired by the
//! redelivery.
//!
//! A transient failure (a sink down, a 5xx, a full disk) is an outage, not a
//! dead letter: the outcome keeps its capability and is retried with the one
//! backoff policy (`mmt_core::retry`) for as long as the failure lasts, and the
//! outcomes behind it wait their turn. The frontier cannot pass its epoch, so
//! the driver feeds no new epochs past `max_epochs_in_flight` (the source is
//! paused) and never acknowledges a message whose result is not durable. The
//! `sink_outage` metrics and one log line at each end say so. Only a permanent
//! rejection of a transcript (a 4xx with its OperationOutcome) dead-letters it.

use crate::identity::correlation_id;
use crate::records::Outcome;
use mmt_core::job::{
    unix_now, AuditAction, AuditEvent, AuditSink, CompletedJob, ComponentError, DeadLetter,
    DeadLetterSink, DocumentSink, DueJob, JobId, JobStore, Stage,
};
use mmt_core::phi::mask_reference;
use mmt_core::retry::{Backoff, Outage, RetryPolicy};
use mmt_core::source::Settlement;
use mmt_core::telemetry::Metrics;
use mmt_core::trace::continue_trace;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

/// The sinks, as the `sink_outage` metrics and the outage log name them.
const DOCUMENTS: &str = "documents";
const AUDIT: &str = "audit";
const DEAD_LETTERS: &str = "dead_letters";
const STORE: &str = "store";

/// Audit detail key of the submitter's W3C `traceparent`, which job events
/// continue (see `mmt_connectors::rabbitmq`).
pub const TRACE_PARENT: &str = "traceparent";

/// The sinks one commit stage writes to.
pub struct Sinks {
    pub documents: Box<dyn DocumentSink>,
    pub audit: Box<dyn AuditSink>,
    pub dead_letters: Box<dyn DeadLetterSink>,
    pub store: Box<dyn JobStore>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sinks { .. }")
    }
}

/// Counters the driver reads for progress and the final summary.
#[derive(Debug, Default)]
pub struct CommitCounters {
    pub completed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub duplicates: AtomicU64,
    /// Redeliveries of jobs finished in an earlier run.
    pub already_finished: AtomicU64,
    /// Milliseconds of audio in completed jobs.
    pub audio_millis: AtomicU64,
    /// Outcomes left uncommitted because a stop came during a sink outage:
    /// once this is above 0 nothing more may be settled (acknowledged).
    pub abandoned: AtomicU64,
}

/// How the commit stage treats failures, and when it gives up waiting.
#[derive(Debug, Clone)]
pub struct CommitOptions {
    /// Backoff for transient sink failures, retried for as long as they last.
    pub retry: RetryPolicy,
    pub retention: Retention,
    /// Set when the process is asked to stop: during an outage the stage then
    /// abandons what it holds (unsettled, so a broker redelivers it) instead
    /// of waiting for the sink to come back.
    pub stop: Arc<AtomicBool>,
}

/// Longest the stage sleeps during an outage before it looks at `stop` again.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// The retention window the commit stage enforces while it runs.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Jobs, transcripts and documents older than this many days are purged.
    pub days: u32,
    /// Time between purges (each runs when the frontier next advances).
    pub interval: Duration,
}

/// Commits outcomes; the output carries the id of every committed job and how
/// its message settles (dead-lettered jobs are rejected to the broker's
/// dead-letter route, the rest acknowledged).
///
/// `sinks` is `Some` on worker 0 only: every outcome is routed there.
pub trait Commit<'scope> {
    fn commit(
        self,
        sinks: Option<Sinks>,
        options: CommitOptions,
        counters: Arc<CommitCounters>,
        metrics: Metrics,
    ) -> Stream<'scope, u64, Vec<(JobId, Settlement)>>;
}

struct Pending {
    capability: Capability<u64>,
    outcome: Outcome,
}

/// The stage while a sink fails transiently: nothing is written before `until`.
struct Blocked {
    until: Instant,
    backoff: Backoff,
}

impl<'scope> Commit<'scope> for Stream<'scope, u64, Vec<Outcome>> {
    fn commit(
        self,
        mut sinks: Option<Sinks>,
        options: CommitOptions,
        counters: Arc<CommitCounters>,
        metrics: Metrics,
    ) -> Stream<'scope, u64, Vec<(JobId, Settlement)>> {
        let scope = self.scope();
        self.unary_frontier(Exchange::new(|_: &Outcome| 0), "Commit", move |_capability, info| {
            let activator = scope.activator_for(info.address);
            // Outcomes in arrival order; the first one blocks the others while
            // its sink fails, so they commit in order once it is back.
            let mut pending: VecDeque<Pending> = VecDeque::new();
            let mut blocked: Option<Blocked> = None;
            let mut outage = Outage::new(metrics.clone());
            // The first purge runs on the first frontier progress.
            let mut next_purge = Instant::now();
            let mut last_frontier: Option<u64> = None;
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    if let Some(capability) = capability.retain_least(0) {
                        pending.extend(data.drain(..).map(|outcome| Pending {
                            capability: capability.clone(),
                            outcome,
                        }));
                    }
                });
                let Some(sinks) = sinks.as_mut() else {
                    if let Some(item) = pending.front() {
                        // Outcomes are routed to worker 0, which owns the sinks.
                        tracing::error!(job = %item.outcome.job_id(), "outcome reached a worker without sinks");
                    }
                    return;
                };
                if options.stop.load(Ordering::Relaxed) && outage.is_ongoing() {
                    abandon(&mut pending, &counters);
                }
                let due = blocked.as_ref().is_none_or(|b| Instant::now() >= b.until);
                while let Some(item) = pending.front_mut().filter(|_| due) {
                    match commit_outcome(sinks, &item.outcome, &metrics) {
                        Ok(()) => {
                            outage.recovered();
                            blocked = None;
                            // A reception settles nothing: its job's outcome will.
                            if let Some(item) = pending
                                .pop_front()
                                .filter(|item| !matches!(item.outcome, Outcome::Received(_)))
                            {
                                let (capability, settled) = settle(item, &counters);
                                output.session(&capability).give(settled);
                            }
                        }
                        Err(failure) => match &item.outcome {
                            Outcome::Completed(job) if !failure.error.class.is_retryable() => {
                                // A permanent rejection (a 4xx with its
                                // OperationOutcome): the job goes to the DLQ.
                                tracing::warn!(job = %job.meta.id, sink = failure.sink, error = %failure.error, "a sink rejected the job");
                                item.outcome = rejected(job, &failure.error);
                            }
                            // A transient failure, or any failure to record a
                            // dead letter or a duplicate (they have nowhere
                            // else to go): wait for the sink.
                            _ => {
                                if options.stop.load(Ordering::Relaxed) {
                                    tracing::warn!(sink = failure.sink, error = %failure.error, "stopping while a sink fails");
                                    abandon(&mut pending, &counters);
                                    break;
                                }
                                let state = blocked.get_or_insert_with(|| Blocked {
                                    until: Instant::now(),
                                    backoff: options.retry.backoff(),
                                });
                                let wait = state.backoff.next().unwrap_or(options.retry.cap());
                                state.until = Instant::now() + wait;
                                outage.failed(failure.sink, &failure.error, wait);
                                break;
                            }
                        },
                    }
                }
                // Windowed purge: runs here because this operator is the single
                // writer of the sinks it rewrites; it waits for frontier progress
                // so that it never races the commits of an open epoch.
                let current = frontier.frontier().first().copied();
                if current != last_frontier {
                    last_frontier = current;
                    if Instant::now() >= next_purge && !outage.is_ongoing() {
                        next_purge = Instant::now() + options.retention.interval;
                        let cutoff = unix_now() - i64::from(options.retention.days) * 86_400;
                        if let Err(err) = purge(sinks, cutoff, false, &metrics) {
                            tracing::warn!(error = %err, "retention purge failed; retrying at the next window");
                        }
                    }
                }
                if let Some(state) = &blocked {
                    if !pending.is_empty() {
                        let wait = state.until.saturating_duration_since(Instant::now());
                        activator.activate_after(wait.min(STOP_CHECK));
                    }
                }
            }
        })
    }
}

/// A failed write and the sink it failed in (a bounded metric label).
#[derive(Debug)]
struct SinkFailure {
    sink: &'static str,
    error: ComponentError,
}

/// Labels the errors of one sink's writes.
fn sink(name: &'static str) -> impl Fn(ComponentError) -> SinkFailure {
    move |error| SinkFailure { sink: name, error }
}

/// The dead letter of a completed job that a sink rejected for good.
fn rejected(job: &CompletedJob, error: &ComponentError) -> Outcome {
    Outcome::DeadLettered(DeadLetter {
        job_id: job.meta.id.clone(),
        tenant: job.meta.tenant.clone(),
        correlation_id: job.meta.correlation_id.clone(),
        stage: Stage::Sink,
        class: error.class,
        reason: format!("a sink rejected the job: {}", error.message),
        attempts: 1,
        at: unix_now(),
    })
}

/// Counts a committed outcome and says how its message settles.
fn settle(item: Pending, counters: &CommitCounters) -> (Capability<u64>, (JobId, Settlement)) {
    count(counters, &item.outcome);
    let settlement = match item.outcome {
        Outcome::DeadLettered(_) => Settlement::DeadLettered,
        _ => Settlement::Committed,
    };
    let job = item.outcome.job_id().clone();
    (item.capability, (job, settlement))
}

/// Drops every held outcome without committing it (a stop during an outage):
/// their capabilities go, so the dataflow can end, and the counter tells the
/// driver not to settle what is still open, so a broker redelivers it.
fn abandon(pending: &mut VecDeque<Pending>, counters: &CommitCounters) {
    if pending.is_empty() {
        return;
    }
    counters
        .abandoned
        .fetch_add(pending.len() as u64, Ordering::Relaxed);
    tracing::warn!(
        outcomes = pending.len(),
        "stopping during a sink outage: unfinished jobs are left unacknowledged for redelivery"
    );
    pending.clear();
}

fn count(counters: &CommitCounters, outcome: &Outcome) {
    match outcome {
        Outcome::Received(_) => {}
        Outcome::Completed(job) => {
            counters.completed.fetch_add(1, Ordering::Relaxed);
            let millis = (job.transcript.duration_seconds * 1000.0) as u64;
            counters.audio_millis.fetch_add(millis, Ordering::Relaxed);
        }
        Outcome::DeadLettered(_) => {
            counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Duplicate(_) => {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::AlreadyFinished(_) => {
            counters.already_finished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes one outcome to every sink it concerns, store last.
fn commit_outcome(
    sinks: &mut Sinks,
    outcome: &Outcome,
    metrics: &Metrics,
) -> Result<(), SinkFailure> {
    match outcome {
        Outcome::Received(meta) => {
            let mut detail = BTreeMap::new();
            detail.insert("received_at".into(), meta.received_at.to_string());
            if let Some(trace_parent) = &meta.trace_parent {
                detail.insert(TRACE_PARENT.into(), trace_parent.clone());
            }
            sinks
                .audit
                .record(&audit(
                    &meta.id,
                    &meta.tenant,
                    &meta.correlation_id,
                    AuditAction::JobReceived,
                    detail,
                ))
                .map_err(sink(AUDIT))?;
        }
        Outcome::Completed(job) => {
            let span = tracing::info_span!("commit", job = %job.meta.id, correlation_id = %job.meta.correlation_id);
            continue_trace(&span, job.meta.trace_parent.as_deref());
            let _span = span.entered();
            sinks.documents.write(job).map_err(sink(DOCUMENTS))?;
            let mut detail = BTreeMap::new();
            detail.insert(
                "audio_seconds".into(),
                format!("{:.1}", job.transcript.duration_seconds),
            );
            detail.insert("segments".into(), job.transcript.segments.len().to_string());
            if let Some(patient) = &job.meta.patient_reference {
                detail.insert("patient".into(), mask_reference(patient));
            }
            if let Some(trace_parent) = &job.meta.trace_parent {
                detail.insert(TRACE_PARENT.into(), trace_parent.clone());
            }
            sinks
                .audit
                .record(&audit(
                    &job.meta.id,
                    &job.meta.tenant,
                    &job.meta.correlation_id,
                    AuditAction::JobCompleted,
                    detail,
                ))
                .map_err(sink(AUDIT))?;
            sinks.store.complete(job).map_err(sink(STORE))?;
            tracing::info!("job completed");
        }
        Outcome::DeadLettered(letter) => {
            let _span = tracing::info_span!("commit", job = %letter.job_id, correlation_id = %letter.correlation_id).entered();
            sinks
                .dead_letters
                .send(letter)
                .map_err(sink(DEAD_LETTERS))?;
            let mut detail = BTreeMap::new();
            detail.insert("stage".into(), letter.stage.as_str().into());
            detail.insert("class".into(), letter.class.label().into());
            sinks
                .audit
                .record(&audit(
                    &letter.job_id,
                    &letter.tenant,
                    &letter.correlation_id,
                    AuditAction::JobDeadLettered,
                    detail,
                ))
                .map_err(sink(AUDIT))?;
            sinks.store.dead_letter(letter).map_err(sink(STORE))?;
            metrics
                .dlq_messages_total
                .with_label_values(&[letter.stage.as_str(), letter.class.label()])
                .inc();
            tracing::warn!(stage = letter.stage.as_str(), "job dead-lettered");
        }
        Outcome::Duplicate(meta) => {
            let detail = meta
                .trace_parent
                .iter()
                .map(|trace_parent| (TRACE_PARENT.to_owned(), trace_parent.clone()))
                .collect();
            sinks
                .audit
                .record(&audit(
                    &meta.id,
                    &meta.tenant,
                    &meta.correlation_id,
                    AuditAction::JobDuplicate,
                    detail,
                ))
                .map_err(sink(AUDIT))?;
        }
        Outcome::AlreadyFinished(_) => {}
    }
    Ok(())
}

/// What one retention purge removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub jobs: u64,
    pub documents: u64,
}

/// Rounds of listing the due jobs again before their rows go (see [`purge`]).
const PURGE_LISTINGS: usize = 3;

/// Purges jobs received before `cutoff` (unix seconds) from the documents and
/// then the store, with an audit event per job; a dry run only counts.
///
/// The store's rows are the record of what is still to purge, so they go
/// last: the documents first, then the audit events, then the rows. A purge
/// that fails on the way (a FHIR 5xx, a full disk) leaves every row in place,
/// and the next purge finds the same jobs due and does it all again (each step
/// is idempotent): no document can outlive its row and RETENTION_DAYS.
pub fn purge(
    sinks: &mut Sinks,
    cutoff: i64,
    dry_run: bool,
    metrics: &Metrics,
) -> Result<Purged, ComponentError> {
    let mut due = sinks.store.purge_before(cutoff, true)?;
    if dry_run || due.is_empty() {
        return Ok(Purged {
            jobs: due.len() as u64,
            documents: 0,
        });
    }
    let mut done: HashSet<JobId> = HashSet::new();
    let mut documents = 0;
    // A job can come due while this runs (an old message redelivered): list
    // again until the listing holds nothing new. Only rows whose documents
    // are gone are deleted; one that came due after the last listing keeps
    // its row, and so its id, for the next run.
    for _ in 0..PURGE_LISTINGS {
        let fresh: Vec<DueJob> = due
            .into_iter()
            .filter(|job| !done.contains(&job.id))
            .collect();
        if fresh.is_empty() {
            break;
        }
        documents += purge_documents(sinks, &fresh, cutoff)?;
        done.extend(fresh.into_iter().map(|job| job.id));
        due = sinks.store.purge_before(cutoff, true)?;
    }
    let deleted = sinks.store.purge_listed(cutoff, &done)?;
    let purged = Purged {
        jobs: deleted.len() as u64,
        documents,
    };
    metrics
        .retention_purged_total
        .with_label_values(&["job"])
        .inc_by(purged.jobs);
    metrics
        .retention_purged_total
        .with_label_values(&["document"])
        .inc_by(purged.documents);
    tracing::info!(
        jobs = purged.jobs,
        documents = purged.documents,
        cutoff,
        "retention purge"
    );
    Ok(purged)
}

/// Removes the documents of `jobs` and audits their purge; the rows stay.
///
/// Each event carries the purged record's tenant and its generation's
/// correlation id (as the job's other events of that record): a job purged,
/// resubmitted and purged again is two events, while a purge retried after a
/// failure repeats the same one (which the audit trail keeps once).
fn purge_documents(sinks: &mut Sinks, jobs: &[DueJob], cutoff: i64) -> Result<u64, ComponentError> {
    let ids: Vec<JobId> = jobs.iter().map(|job| job.id.clone()).collect();
    let documents = sinks.documents.purge(&ids)?;
    for job in jobs {
        let mut detail = BTreeMap::new();
        detail.insert("cutoff".into(), cutoff.to_string());
        let correlation = correlation_id(&job.id, job.generation as u64);
        let event = AuditEvent {
            actor: "retention".into(),
            ..audit(
                &job.id,
                &job.tenant,
                &correlation,
                AuditAction::JobPurged,
                detail,
            )
        };
        sinks.audit.record(&event)?;
    }
    Ok(documents)
}

fn audit(
    job_id: &JobId,
    tenant: &str,
    correlation_id: &str,
    action: AuditAction,
    detail: BTreeMap<String, String>,
) -> AuditEvent {
    AuditEvent {
        at: unix_now(),
        action,
        job_id: job_id.clone(),
        tenant: tenant.to_owned(),
        correlation_id: correlation_id.to_owned(),
        actor: "pipeline".into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmt_core::error::ErrorClass;
    use mmt_core::job::{JobMeta, JobStatus, Take};
    use mmt_core::Transcript;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::Mutex;
    use timely::container::CapacityContainerBuilder;
    use timely::dataflow::operators::core::{Inspect, Probe};
    use timely::dataflow::operators::Input;
    use timely::dataflow::{InputHandle, ProbeHandle};

    /// What the sinks saw. The sinks are test doubles: the point is to fail
    /// on demand (a store down for N writes, a 4xx for one job), which the
    /// real connectors do only with their services, in `tests/store_outage.rs`.
    #[derive(Default)]
    struct Seen {
        documents: Vec<String>,
        completed: Vec<String>,
        dead_letters: Vec<String>,
        store_failures_left: u32,
    }

    type Shared = Arc<Mutex<Seen>>;

    fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Seen> {
        shared.lock().expect("lock")
    }

    struct Documents(Shared);

    impl DocumentSink for Documents {
        fn write(&mut self, job: &CompletedJob) -> Result<(), ComponentError> {
            if job.meta.id.0 == "rejected" {
                let permanent = ErrorClass::External { retryable: false };
                return Err(ComponentError::new(permanent, "HTTP 422 (error invalid)"));
            }
            lock(&self.0).documents.push(job.meta.id.0.clone());
            Ok(())
        }

        fn purge(&mut self, _ids: &[JobId]) -> Result<u64, ComponentError> {
            Ok(0)
        }
    }

    struct Audit;

    impl AuditSink for Audit {
        fn record(&mut self, _event: &AuditEvent) -> Result<(), ComponentError> {
            Ok(())
        }
    }

    struct Letters(Shared);

    impl DeadLetterSink for Letters {
        fn send(&mut self, letter: &DeadLetter) -> Result<(), ComponentError> {
            lock(&self.0).dead_letters.push(letter.job_id.0.clone());
            Ok(())
        }
    }

    struct Store(Shared);

    impl JobStore for Store {
        fn status(&mut self, _id: &JobId) -> Result<Option<JobStatus>, ComponentError> {
            Ok(None)
        }

        fn insert_queued(&mut self, _meta: &JobMeta) -> Result<bool, ComponentError> {
            Ok(true)
        }

        fn take(&mut self, _meta: &JobMeta, _max_takes: u32) -> Result<Take, ComponentError> {
            Ok(Take::Taken {
                attempt: 1,
                generation: 1,
            })
        }

        fn release(&mut self, _id: &JobId) -> Result<bool, ComponentError> {
            Ok(false)
        }

        fn transition(&mut self, _id: &JobId, _status: JobStatus) -> Result<bool, ComponentError> {
            Ok(true)
        }

        fn complete(&mut self, job: &CompletedJob) -> Result<(), ComponentError> {
            let mut seen = lock(&self.0);
            if seen.store_failures_left > 0 {
                seen.store_failures_left -= 1;
                let transient = ErrorClass::External { retryable: true };
                return Err(ComponentError::new(transient, "connection refused"));
            }
            seen.completed.push(job.meta.id.0.clone());
            Ok(())
        }

        fn dead_letter(&mut self, _letter: &DeadLetter) -> Result<(), ComponentError> {
            Ok(())
        }

        fn purge_before(
            &mut self,
            _cutoff: i64,
            _dry: bool,
        ) -> Result<Vec<DueJob>, ComponentError> {
            Ok(Vec::new())
        }

        fn purge_listed(
            &mut self,
            _cutoff: i64,
            _ids: &HashSet<JobId>,
        ) -> Result<Vec<DueJob>, ComponentError> {
            Ok(Vec::new())
        }
    }

    fn completed(id: &str) -> Outcome {
        Outcome::Completed(Box::new(CompletedJob {
            meta: JobMeta {
                id: JobId(id.into()),
                tenant: "t".into(),
                content_hash: "h".into(),
                source: "a.wav".into(),
                patient_reference: None,
                encounter_reference: None,
                correlation_id: "c".into(),
                received_at: unix_now(),
                trace_parent: None,
            },
            transcript: Transcript::from_segments(vec![], 1.0, "en"),
            completed_at: unix_now(),
        }))
    }

    struct Ran {
        seen: Shared,
        settled: Vec<(JobId, Settlement)>,
        counters: Arc<CommitCounters>,
        metrics: Metrics,
    }

    /// Commits `ids` through one commit stage whose store fails the first
    /// `store_failures` writes; `stop` is set before the run starts.
    fn commit_all(ids: &[&str], store_failures: u32, stop: bool) -> Ran {
        let seen: Shared = Arc::new(Mutex::new(Seen {
            store_failures_left: store_failures,
            ..Seen::default()
        }));
        let sinks = Sinks {
            documents: Box::new(Documents(Arc::clone(&seen))),
            audit: Box::new(Audit),
            dead_letters: Box::new(Letters(Arc::clone(&seen))),
            store: Box::new(Store(Arc::clone(&seen))),
        };
        let options = CommitOptions {
            retry: RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(8))
                .expect("valid"),
            retention: Retention {
                days: 36_500,
                interval: Duration::from_secs(3600),
            },
            stop: Arc::new(AtomicBool::new(stop)),
        };
        let counters = Arc::new(CommitCounters::default());
        let metrics = Metrics::new().expect("metrics");
        let outcomes: Vec<Outcome> = ids.iter().map(|id| completed(id)).collect();
        let (counters_in, metrics_in) = (Arc::clone(&counters), metrics.clone());
        // The closure must be Sync; the sinks are only Send.
        let held = Mutex::new(Some((sinks, outcomes)));
        let settled = timely::execute_directly(move |worker| {
            let (sinks, outcomes) = held.lock().expect("lock").take().expect("one worker");
            let mut input: InputHandle<u64, CapacityContainerBuilder<Vec<Outcome>>> =
                InputHandle::new();
            let probe = ProbeHandle::new();
            let settled = Rc::new(RefCell::new(Vec::new()));
            let settled_in = Rc::clone(&settled);
            worker.dataflow::<u64, _, _>(|scope| {
                scope
                    .input_from(&mut input)
                    .commit(Some(sinks), options, counters_in, metrics_in)
                    .inspect(move |item| settled_in.borrow_mut().push(item.clone()))
                    .probe_with(&probe);
            });
            for outcome in outcomes {
                input.send(outcome);
            }
            input.close();
            while !probe.done() {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            settled.take()
        });
        Ran {
            seen,
            settled,
            counters,
            metrics,
        }
    }

    #[test]
    fn a_store_outage_is_waited_out_and_dead_letters_nothing() {
        // Far more failures than the old five tries allowed.
        let ran = commit_all(&["a", "b", "c"], 40, false);
        let seen = lock(&ran.seen);
        assert_eq!(
            seen.completed,
            ["a", "b", "c"],
            "in order, once the store is back"
        );
        assert!(seen.dead_letters.is_empty());
        assert_eq!(seen.store_failures_left, 0);
        assert!(ran
            .settled
            .iter()
            .all(|(_, settlement)| *settlement == Settlement::Committed));
        assert_eq!(ran.counters.completed.load(Ordering::Relaxed), 3);
        let outages = ran.metrics.sink_outage_total.with_label_values(&[STORE]);
        assert_eq!(outages.get(), 1, "one outage");
        assert_eq!(ran.metrics.sink_outage.with_label_values(&[STORE]).get(), 0);
    }

    #[test]
    fn only_a_permanent_rejection_dead_letters() {
        let ran = commit_all(&["a", "rejected", "c"], 3, false);
        let seen = lock(&ran.seen);
        assert_eq!(seen.completed, ["a", "c"]);
        assert_eq!(seen.dead_letters, ["rejected"]);
        let rejected = ran.settled.iter().find(|(id, _)| id.0 == "rejected");
        assert_eq!(rejected.map(|(_, s)| *s), Some(Settlement::DeadLettered));
        assert_eq!(ran.counters.dead_lettered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_stop_during_an_outage_abandons_what_it_holds_unsettled() {
        let ran = commit_all(&["a", "b"], u32::MAX, true);
        let seen = lock(&ran.seen);
        assert!(seen.completed.is_empty() && seen.dead_letters.is_empty());
        assert!(ran.settled.is_empty(), "nothing to acknowledge");
        assert_eq!(ran.counters.abandoned.load(Ordering::Relaxed), 2);
    }
}
