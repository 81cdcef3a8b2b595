//! Commit: the sinks of the dataflow (documents, audit trail, dead letters, job store).
//!
//! Every outcome is committed by one worker (worker 0), so the append-only sinks
//! have a single writer. An outcome is committed in this order: the document (or
//! dead letter), then the audit event, then the job store, which is the commit
//! point; each write is idempotent, so a crash in between is repaired by the
//! redelivery. A failed commit keeps its capability and is retried with
//! exponential backoff: the frontier cannot pass its epoch, so the source never
//! acknowledges a message whose result is not durable.

use crate::records::Outcome;
use mmt_core::job::{
    unix_now, AuditAction, AuditEvent, AuditSink, ComponentError, DeadLetter, DeadLetterSink,
    DocumentSink, JobId, JobStore, Stage,
};
use mmt_core::phi::mask_reference;
use mmt_core::source::Settlement;
use mmt_core::telemetry::Metrics;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

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
}

/// Retry policy for sink writes.
#[derive(Debug, Clone, Copy)]
pub struct CommitRetry {
    /// Attempts at writing a completed job before it is dead-lettered.
    pub max_attempts: u32,
    /// First backoff; doubles on every attempt.
    pub base_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for CommitRetry {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }
}

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
        retry: CommitRetry,
        retention: Retention,
        counters: Arc<CommitCounters>,
        metrics: Metrics,
    ) -> Stream<'scope, u64, Vec<(JobId, Settlement)>>;
}

struct Pending {
    capability: Capability<u64>,
    outcome: Outcome,
    attempts: u32,
    not_before: Instant,
}

impl<'scope> Commit<'scope> for Stream<'scope, u64, Vec<Outcome>> {
    fn commit(
        self,
        mut sinks: Option<Sinks>,
        retry: CommitRetry,
        retention: Retention,
        counters: Arc<CommitCounters>,
        metrics: Metrics,
    ) -> Stream<'scope, u64, Vec<(JobId, Settlement)>> {
        let scope = self.scope();
        self.unary_frontier(Exchange::new(|_: &Outcome| 0), "Commit", move |_capability, info| {
            let activator = scope.activator_for(info.address);
            let mut pending: Vec<Pending> = Vec::new();
            // The first purge runs on the first frontier progress.
            let mut next_purge = Instant::now();
            let mut last_frontier: Option<u64> = None;
            move |(input, frontier), output| {
                input.for_each(|capability, data| {
                    if let Some(capability) = capability.retain_least(0) {
                        pending.extend(data.drain(..).map(|outcome| Pending {
                            capability: capability.clone(),
                            outcome,
                            attempts: 0,
                            not_before: Instant::now(),
                        }));
                    }
                });
                let now_instant = Instant::now();
                let mut waiting = Vec::new();
                for mut item in pending.drain(..) {
                    if item.not_before > now_instant {
                        waiting.push(item);
                        continue;
                    }
                    let Some(sinks) = sinks.as_mut() else {
                        // Outcomes are routed to worker 0, which owns the sinks.
                        tracing::error!(job = %item.outcome.job_id(), "outcome reached a worker without sinks");
                        waiting.push(item);
                        continue;
                    };
                    item.attempts += 1;
                    match commit_outcome(sinks, &item.outcome, &metrics) {
                        Ok(()) => {
                            count(&counters, &item.outcome);
                            let settlement = match item.outcome {
                                Outcome::DeadLettered(_) => Settlement::DeadLettered,
                                _ => Settlement::Committed,
                            };
                            output
                                .session(&item.capability)
                                .give((item.outcome.job_id().clone(), settlement));
                        }
                        Err(err) => {
                            tracing::warn!(job = %item.outcome.job_id(), attempt = item.attempts, error = %err, "commit failed");
                            item = next_attempt(item, err, &retry);
                            waiting.push(item);
                        }
                    }
                }
                pending = waiting;
                // Windowed purge: runs here because this operator is the single
                // writer of the sinks it rewrites; it waits for frontier progress
                // so that it never races the commits of an open epoch.
                let current = frontier.frontier().first().copied();
                if current != last_frontier {
                    last_frontier = current;
                    if let Some(sinks) = sinks.as_mut() {
                        if Instant::now() >= next_purge {
                            next_purge = Instant::now() + retention.interval;
                            let cutoff = unix_now() - i64::from(retention.days) * 86_400;
                            if let Err(err) = purge(sinks, cutoff, false, &metrics) {
                                tracing::warn!(error = %err, "retention purge failed; retrying at the next window");
                            }
                        }
                    }
                }
                if let Some(next) = pending.iter().map(|p| p.not_before).min() {
                    activator.activate_after(next.saturating_duration_since(Instant::now()));
                }
            }
        })
    }
}

/// Schedules another attempt; a completed job that keeps failing becomes a dead letter.
fn next_attempt(mut item: Pending, err: ComponentError, retry: &CommitRetry) -> Pending {
    let give_up = !err.class.is_retryable() || item.attempts >= retry.max_attempts;
    if give_up {
        if let Outcome::Completed(job) = &item.outcome {
            item.outcome = Outcome::DeadLettered(DeadLetter {
                job_id: job.meta.id.clone(),
                tenant: job.meta.tenant.clone(),
                correlation_id: job.meta.correlation_id.clone(),
                stage: Stage::Sink,
                class: err.class,
                reason: format!(
                    "sink write failed after {} attempts: {}",
                    item.attempts, err.message
                ),
                attempts: item.attempts,
                at: unix_now(),
            });
            item.attempts = 0;
            item.not_before = Instant::now();
            return item;
        }
    }
    let exponent = item.attempts.saturating_sub(1).min(16);
    let backoff = retry
        .base_backoff
        .saturating_mul(1 << exponent)
        .min(retry.max_backoff);
    item.not_before = Instant::now() + backoff;
    item
}

fn count(counters: &CommitCounters, outcome: &Outcome) {
    match outcome {
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
) -> Result<(), ComponentError> {
    match outcome {
        Outcome::Completed(job) => {
            let _span = tracing::info_span!("commit", job = %job.meta.id, correlation_id = %job.meta.correlation_id).entered();
            sinks.documents.write(job)?;
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
            sinks.audit.record(&audit(
                &job.meta.id,
                &job.meta.tenant,
                &job.meta.correlation_id,
                AuditAction::JobCompleted,
                detail,
            ))?;
            sinks.store.complete(job)?;
            tracing::info!("job completed");
        }
        Outcome::DeadLettered(letter) => {
            let _span = tracing::info_span!("commit", job = %letter.job_id, correlation_id = %letter.correlation_id).entered();
            sinks.dead_letters.send(letter)?;
            let mut detail = BTreeMap::new();
            detail.insert("stage".into(), letter.stage.as_str().into());
            detail.insert("class".into(), letter.class.label().into());
            sinks.audit.record(&audit(
                &letter.job_id,
                &letter.tenant,
                &letter.correlation_id,
                AuditAction::JobDeadLettered,
                detail,
            ))?;
            sinks.store.dead_letter(letter)?;
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
            sinks.audit.record(&audit(
                &meta.id,
                &meta.tenant,
                &meta.correlation_id,
                AuditAction::JobDuplicate,
                detail,
            ))?;
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

/// Purges jobs received before `cutoff` (unix seconds) from the store and the
/// documents, with an audit event per job; a dry run only counts.
pub fn purge(
    sinks: &mut Sinks,
    cutoff: i64,
    dry_run: bool,
    metrics: &Metrics,
) -> Result<Purged, ComponentError> {
    let ids = sinks.store.purge_before(cutoff, dry_run)?;
    let mut purged = Purged {
        jobs: ids.len() as u64,
        documents: 0,
    };
    if dry_run || ids.is_empty() {
        return Ok(purged);
    }
    purged.documents = sinks.documents.purge(&ids)?;
    for id in &ids {
        let mut detail = BTreeMap::new();
        detail.insert("cutoff".into(), cutoff.to_string());
        let event = AuditEvent {
            actor: "retention".into(),
            ..audit(id, "", "", AuditAction::JobPurged, detail)
        };
        sinks.audit.record(&event)?;
    }
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
