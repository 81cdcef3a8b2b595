//! `mmt serve`: the REST API and the dataflow in one process.
//!
//! The API sees the runtime through [`JobControl`], implemented here by
//! [`ServiceControl`] over the job store, the upload store, the sinks and the
//! intake. The intake is where accepted jobs wait for the dataflow:
//!
//! | intake | where jobs wait | who transcribes |
//! |---|---|---|
//! | embedded (default) | [`intake::ApiQueue`] in this process | this process's dataflow |
//! | RabbitMQ | the job queue (envelopes with inline audio) | every `mmt run --source rabbitmq` or `mmt serve --intake rabbitmq` |
//!
//! A submission is crash-safe: its upload is stored durably first, its job
//! row second, and only then is it queued and answered 202. A crash between
//! the steps leaves an upload without a row (removed at the next start) or a
//! row with its upload (queued again at the next start); rows left without
//! an upload by older versions are removed at start ([`open`]).
//!
//! When the dataflow stops unexpectedly, [`ServiceControl::mark_dataflow_stopped`]
//! turns readiness and submissions to 503 until the process exits.

pub mod intake;
pub mod uploads;

use crate::config::Config;
use crate::run::plan::{
    amqp_config, envelope_reader, open_resources_for, open_shared_sinks, SharedSinks,
};
use crate::run::{setup, OutputPaths, Resources, RunError};
use intake::{ApiQueue, ApiQueueSource, QueueLimits, Refusal, RETRY_AFTER_SECONDS};
use mmt_connectors::envelope::{message_id_for, JobEnvelope};
use mmt_connectors::fhir::document_reference;
use mmt_connectors::rabbitmq::{JobSubmitter, RabbitMqSource};
use mmt_connectors::reference::{ReferenceConfig, ReferenceError, ReferenceResolver};
use mmt_connectors::sql::{
    DueCallback as StoredCallback, IdempotencyRecord, JobRow, NewSubmission, PageQuery,
    SqlJobStore, SqlJobStoreConfig, SubmissionOutcome,
};
use mmt_core::control::{
    Access, ControlError, DueCallback, JobControl, JobFailureView, JobPage, JobRecord, ListCursor,
    ListQuery, Overview, Readiness, SpooledAudio, Submission, Submitted, SubmittedAudio,
};
use mmt_core::job::{
    unix_now, AuditAction, AuditEvent, AuditSink, CompletedJob, DocumentSink, JobId, JobStatus,
};
use mmt_core::source::JobSource;
use mmt_core::telemetry::Metrics;
use mmt_core::Transcript;
use mmt_operators::decode::job_meta;
use mmt_operators::identity::{correlation_id, job_id};
use mmt_operators::records::SourceRecord;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uploads::UploadStore;

/// Job-store connections the API spreads its calls over.
const API_STORE_CONNECTIONS: usize = 4;

/// The window of the status page's throughput figures.
const THROUGHPUT_WINDOW_SECONDS: u64 = 300;

/// The actor of audit events this module records, before the caller's subject.
const ACTOR_PREFIX: &str = "api:";

/// The actor of a refused request: nobody the API could identify. (Without
/// the prefix, so no token's subject can spell it.)
const UNAUTHENTICATED: &str = "unauthenticated";

/// Locks that serialize submissions of the same job id (by hash), so two
/// concurrent uploads of one recording never interleave their steps.
const SUBMISSION_LOCKS: usize = 16;

/// Most unfinished rows looked at when reconciling at start-up.
const RECONCILE_ROW_LIMIT: u32 = 100_000;

/// Where accepted jobs wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeChoice {
    /// In this process (the embedded default).
    Embedded,
    /// The RabbitMQ job queue of the configuration.
    RabbitMq,
}

enum Intake {
    Embedded(Arc<ApiQueue>),
    RabbitMq(Box<Mutex<JobSubmitter>>),
}

/// The runtime as the API sees it.
pub struct ServiceControl {
    stores: Vec<Mutex<SqlJobStore>>,
    next_store: AtomicUsize,
    intake: Intake,
    uploads: UploadStore,
    documents: Mutex<Box<dyn DocumentSink>>,
    audit: Mutex<Box<dyn AuditSink>>,
    /// Audio references, per tenant under `MMT_AUDIO_REFERENCE_ROOT`; `None` refuses them.
    references: Option<ReferenceResolver>,
    metrics: Metrics,
    /// Bounds a broker intake by its queue depth (the embedded queue holds its own).
    limits: QueueLimits,
    submission_locks: Vec<Mutex<()>>,
    /// Set when the dataflow stopped while the service was meant to run.
    dataflow_stopped: AtomicBool,
    /// Tells audited accesses apart (see [`ServiceControl::next_occurrence`]).
    occurrences: AtomicU64,
}

impl std::fmt::Debug for ServiceControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceControl")
            .field("stores", &self.stores.len())
            .field("uploads", &self.uploads)
            .finish_non_exhaustive()
    }
}

/// Opens what `mmt serve` needs: the dataflow's resources, fed by the intake,
/// and the API's control over the same stores and sinks. Re-queues the
/// uploads of jobs that had not finished when the process last stopped.
pub fn open(
    config: &Config,
    paths: &OutputPaths,
    uploads_dir: &std::path::Path,
    workers: usize,
    intake: IntakeChoice,
    metrics: &Metrics,
) -> Result<(Resources, Arc<ServiceControl>), RunError> {
    let sealer = crate::run::plan::sealer(config)?;
    let uploads = UploadStore::open(uploads_dir)
        .map_err(|e| setup("upload store", e))?
        .with_sealer(sealer.clone());
    let limits = QueueLimits::from_config(&config.intake);
    let SharedSinks {
        sinks,
        documents,
        audit,
    } = open_shared_sinks(config, paths)?;
    let (source, intake): (Box<dyn JobSource>, Intake) = match intake {
        IntakeChoice::Embedded => {
            let queue = ApiQueue::new(limits);
            let source = ApiQueueSource::new(Arc::clone(&queue), uploads.clone());
            (Box::new(source), Intake::Embedded(queue))
        }
        IntakeChoice::RabbitMq => {
            let amqp = amqp_config(config);
            let source = RabbitMqSource::connect(&amqp, envelope_reader(config))
                .map_err(|e| setup("RabbitMQ source", e))?;
            let submitter =
                JobSubmitter::connect(&amqp).map_err(|e| setup("RabbitMQ intake", e))?;
            (
                Box::new(source),
                Intake::RabbitMq(Box::new(Mutex::new(submitter))),
            )
        }
    };
    let publish_events = matches!(intake, Intake::RabbitMq(_));
    let resources = open_resources_for(
        config,
        source,
        sinks,
        publish_events,
        paths,
        workers,
        metrics,
    )?;
    let stores = (0..API_STORE_CONNECTIONS)
        .map(|_| {
            SqlJobStoreConfig::new(&paths.database_url)
                .build(config.environment.is_prod())
                .map(|store| Mutex::new(store.with_sealer(sealer.clone())))
                .map_err(|e| setup("job store", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let control = Arc::new(ServiceControl {
        stores,
        next_store: AtomicUsize::new(0),
        intake,
        uploads,
        documents: Mutex::new(documents),
        audit: Mutex::new(audit),
        references: config
            .sinks
            .audio_reference_root
            .clone()
            .map(|root| ReferenceConfig::new(root).build()),
        metrics: metrics.clone(),
        limits,
        submission_locks: (0..SUBMISSION_LOCKS).map(|_| Mutex::new(())).collect(),
        dataflow_stopped: AtomicBool::new(false),
        occurrences: AtomicU64::new(unix_nanos()),
    });
    control
        .remove_rows_without_upload()
        .map_err(|e| setup("job store", e))?;
    control
        .requeue_unfinished()
        .map_err(|e| setup("upload store", e))?;
    Ok((resources, control))
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent across a panic (each call is one
    // statement or one file append), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> ControlError {
    ControlError::Unavailable(format!("{what}: {err}"))
}

fn refused(refusal: Refusal) -> ControlError {
    match refusal {
        Refusal::QueueFull => ControlError::QueueFull {
            retry_after_seconds: RETRY_AFTER_SECONDS,
        },
        Refusal::TenantShareFull => ControlError::TenantShareFull {
            retry_after_seconds: RETRY_AFTER_SECONDS,
        },
    }
}

const DATAFLOW_STOPPED: &str = "the transcription dataflow has stopped; the service is restarting";

impl ServiceControl {
    /// One of the API's store connections, in turn.
    fn store(&self) -> MutexGuard<'_, SqlJobStore> {
        let index = self.next_store.fetch_add(1, Ordering::Relaxed) % self.stores.len();
        lock(&self.stores[index])
    }

    /// Queues again every stored upload whose job has not finished (the
    /// embedded queue lives in memory); drops uploads of deleted jobs, and
    /// uploads whose row was never written (a submission cut short).
    /// Lazily: only ids wait in memory; the audio is read when the dataflow
    /// takes the job.
    fn requeue_unfinished(&self) -> Result<usize, String> {
        let Intake::Embedded(queue) = &self.intake else {
            return Ok(0);
        };
        let mut requeued = 0;
        for id in self.uploads.ids().map_err(|e| e.to_string())? {
            let status = self
                .store()
                .current_status(&id)
                .map_err(|e| e.to_string())?;
            match status {
                None => {
                    self.uploads.delete(&id).map_err(|e| e.to_string())?;
                }
                Some(status) if status.is_terminal() => {}
                Some(_) => {
                    let stored = self
                        .uploads
                        .tenant_and_priority(&id)
                        .map_err(|e| e.to_string())?;
                    if let Some((tenant, priority)) = stored {
                        queue.restore(id, &tenant, priority);
                        requeued += 1;
                    }
                }
            }
        }
        if requeued > 0 {
            tracing::info!(jobs = requeued, "re-queued unfinished uploads");
        }
        self.report_depth();
        Ok(requeued)
    }

    /// Removes unfinished job rows that have no upload: a submission cut
    /// short between its row and its upload by a version that wrote the row
    /// first. Such a job can never run, and its client was never told it was
    /// accepted; once removed, the same recording can be submitted again.
    fn remove_rows_without_upload(&self) -> Result<usize, String> {
        if !matches!(self.intake, Intake::Embedded(_)) {
            // With a broker, jobs of other processes have no upload here.
            return Ok(0);
        }
        let mut removed = 0;
        for status in [JobStatus::Queued, JobStatus::Processing] {
            let rows = self
                .store()
                .list(Some(status), RECONCILE_ROW_LIMIT)
                .map_err(|e| e.to_string())?;
            for row in rows {
                if !self.uploads.exists(&row.meta.id)
                    && self
                        .store()
                        .delete(&row.meta.id)
                        .map_err(|e| e.to_string())?
                {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::warn!(
                jobs = removed,
                "removed unfinished jobs whose upload was never stored"
            );
        }
        Ok(removed)
    }

    fn report_depth(&self) {
        if let Intake::Embedded(queue) = &self.intake {
            self.metrics.async_task_queue_size.set(queue.depth() as i64);
        }
    }

    /// Hands a recorded job to the broker (the embedded queue takes it
    /// through its reservation instead).
    /// The broker's envelope carries the audio inline: it is read from the
    /// upload store, where the submission saved it.
    fn publish(&self, id: &JobId, priority: u8) -> Result<(), ControlError> {
        match &self.intake {
            Intake::Embedded(_) => Ok(()),
            Intake::RabbitMq(submitter) => {
                let record = self
                    .uploads
                    .load(id)
                    .map_err(|e| {
                        ControlError::Internal(format!("reading the upload: {}", e.kind()))
                    })?
                    .ok_or_else(|| ControlError::Internal("the upload is missing".to_owned()))?
                    .record;
                let mut envelope =
                    JobEnvelope::inline(&record.tenant, &record.bytes, record.extension.as_deref());
                envelope.patient_reference = record.patient_reference;
                envelope.encounter_reference = record.encounter_reference;
                envelope.priority = priority;
                let message_id = message_id_for(&record.bytes);
                lock(submitter)
                    .submit(&envelope, &message_id, record.trace_parent.as_deref())
                    .map_err(|e| unavailable("the job queue", e))
            }
        }
    }

    /// The lock that serializes submissions of job `id`.
    fn submission_lock(&self, id: &JobId) -> MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.0.hash(&mut hasher);
        let index = (hasher.finish() % self.submission_locks.len() as u64) as usize;
        lock(&self.submission_locks[index])
    }

    /// Records the dataflow's unexpected stop: readiness fails and every
    /// submission is refused (503) until the process exits.
    pub fn mark_dataflow_stopped(&self) {
        self.dataflow_stopped.store(true, Ordering::SeqCst);
    }

    fn dataflow_running(&self) -> bool {
        !self.dataflow_stopped.load(Ordering::SeqCst)
    }

    /// Jobs waiting for the dataflow.
    pub fn queued_jobs(&self) -> Result<u64, ControlError> {
        self.queue_depth()
    }

    fn queue_depth(&self) -> Result<u64, ControlError> {
        match &self.intake {
            Intake::Embedded(queue) => Ok(queue.depth() as u64),
            Intake::RabbitMq(submitter) => lock(submitter)
                .queue_depth()
                .map(u64::from)
                .map_err(|e| unavailable("the job queue", e)),
        }
    }

    /// The tenant's stored job.
    fn row(&self, tenant: &str, id: &JobId) -> Result<Option<JobRow>, ControlError> {
        let row = self
            .store()
            .get(id)
            .map_err(|e| unavailable("the job store", e))?;
        // Another tenant's job is, to this caller, no job at all.
        Ok(row.filter(|row| row.meta.tenant == tenant))
    }

    /// Records the deletion in the audit trail; a failure fails the request.
    fn audit_deletion(
        &self,
        row: &JobRow,
        actor: &str,
        audio_present: bool,
    ) -> Result<(), ControlError> {
        let detail = BTreeMap::from([
            (
                "audio".to_owned(),
                if audio_present { "purged" } else { "none" }.to_owned(),
            ),
            ("transcript".to_owned(), "purged".to_owned()),
            ("documents".to_owned(), "purged".to_owned()),
            ("status".to_owned(), row.status.as_str().to_owned()),
        ]);
        let event = AuditEvent {
            at: unix_now(),
            action: AuditAction::JobDeleted,
            job_id: row.meta.id.clone(),
            tenant: row.meta.tenant.clone(),
            // The generation's, as the pipeline's events of this record of
            // the job: one deletion event per record, however often retried.
            correlation_id: correlation_id(&row.meta.id, row.generation as u64),
            actor: format!("{ACTOR_PREFIX}{actor}"),
            detail,
        };
        lock(&self.audit).record(&event).map_err(|err| {
            tracing::error!(job = %row.meta.id, error = %err, "the deletion could not be audited");
            unavailable("the audit trail", err)
        })
    }
}

/// Nanoseconds since the Unix epoch (wrapping in the year 2554).
fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

impl ServiceControl {
    /// A number no other audited access of this trail has: a counter that
    /// starts at the start-up time in nanoseconds, so a restart (however
    /// busy the run before it) starts past every number already used.
    fn next_occurrence(&self) -> u64 {
        self.occurrences.fetch_add(1, Ordering::Relaxed)
    }

    /// The audit event of `access`.
    fn access_event(&self, access: &Access) -> AuditEvent {
        let occurrence = self.next_occurrence();
        match access {
            Access::TranscriptRead {
                tenant,
                job_id,
                subject,
                format,
            } => AuditEvent {
                at: unix_now(),
                action: AuditAction::TranscriptRead,
                job_id: job_id.clone(),
                tenant: tenant.clone(),
                correlation_id: correlation_id(job_id, occurrence),
                actor: format!("{ACTOR_PREFIX}{subject}"),
                detail: BTreeMap::from([("format".to_owned(), format.clone())]),
            },
            Access::AuthenticationFailed {
                reason,
                client,
                route,
                suppressed,
            } => {
                let mut detail = BTreeMap::from([
                    ("reason".to_owned(), (*reason).to_owned()),
                    (
                        "client".to_owned(),
                        client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
                    ),
                    ("route".to_owned(), route.clone()),
                ]);
                if *suppressed > 0 {
                    detail.insert("suppressed_before".to_owned(), suppressed.to_string());
                }
                let nobody = JobId(String::new());
                AuditEvent {
                    at: unix_now(),
                    action: AuditAction::AuthenticationFailed,
                    correlation_id: correlation_id(&nobody, occurrence),
                    job_id: nobody,
                    tenant: String::new(),
                    actor: UNAUTHENTICATED.to_owned(),
                    detail,
                }
            }
        }
    }
}

/// A stored job as the API shows it.
fn record_of(row: &JobRow) -> JobRecord {
    JobRecord {
        id: row.meta.id.clone(),
        tenant: row.meta.tenant.clone(),
        status: row.status,
        priority: row.priority,
        received_at: row.meta.received_at,
        updated_at: row.updated_at,
        completed_at: row.completed_at,
        attempts: row.attempts,
        failure: row.failure.as_ref().map(|f| JobFailureView {
            stage: f.stage,
            class: f.class,
            reason: f.reason.clone(),
        }),
        audio_seconds: row.audio_seconds,
        patient_reference: row.meta.patient_reference.clone(),
        encounter_reference: row.meta.encounter_reference.clone(),
    }
}

impl JobControl for ServiceControl {
    /// Stores the upload durably, then records the job, then queues it: a
    /// crash at any point leaves nothing that start-up cannot reconcile.
    fn submit(&self, submission: Submission) -> Result<Submitted, ControlError> {
        if !self.dataflow_running() {
            return Err(ControlError::Unavailable(DATAFLOW_STOPPED.to_owned()));
        }
        let (bytes, spooled) = match submission.audio {
            SubmittedAudio::Bytes(bytes) => (bytes, None),
            SubmittedAudio::Spooled(spooled) => (Vec::new(), Some(spooled)),
        };
        let record = SourceRecord {
            tenant: submission.tenant,
            source: submission.source,
            bytes,
            extension: submission.format,
            patient_reference: submission.patient_reference,
            encounter_reference: submission.encounter_reference,
            received_at: unix_now(),
            trace_parent: submission.trace_parent,
            ..SourceRecord::default()
        };
        let mut meta = job_meta(&record);
        if let Some(spooled) = &spooled {
            // The same identity `job_meta` derives from the bytes, from the
            // hash taken while they were spooled.
            meta.content_hash = spooled.content_hash().to_owned();
            meta.id = job_id(&meta.tenant, &meta.content_hash);
            meta.correlation_id = correlation_id(&meta.id, record.received_at as u64);
        }
        let id = meta.id.clone();
        let _same_job = self.submission_lock(&id);
        // A place in the queue first: a refused submission records nothing.
        let reservation = match &self.intake {
            Intake::Embedded(queue) => Some(queue.reserve(&record.tenant).map_err(refused)?),
            Intake::RabbitMq(_) => {
                self.admits(&record.tenant)?;
                None
            }
        };
        // An upload already here with a row belongs to this job's earlier
        // submission: it is left as it is (a retry must not rewrite its
        // metadata). One without a row is a leftover, replaced.
        let had_upload = self.uploads.exists(&id)
            && self
                .store()
                .current_status(&id)
                .map_err(|e| unavailable("the job store", e))?
                .is_some();
        if !had_upload {
            match spooled {
                Some(spooled) => {
                    self.uploads
                        .save_spooled(&id, spooled, &record, submission.priority)
                }
                None => self.uploads.save(&id, &record, submission.priority),
            }
            .map_err(|e| ControlError::Internal(format!("storing the upload: {}", e.kind())))?;
        }
        // (A spooled upload of a job that kept its own is dropped: its file is removed.)
        let discard_upload = || {
            if !had_upload {
                if let Err(err) = self.uploads.delete(&id) {
                    tracing::error!(job = %id, error = %err.kind(), "could not remove an unrecorded upload");
                }
            }
        };
        let outcome = self
            .store()
            .submit(&NewSubmission {
                meta: &meta,
                priority: submission.priority,
                idempotency: submission
                    .idempotency
                    .as_ref()
                    .map(|key| IdempotencyRecord {
                        key: &key.key,
                        request_hash: &key.request_hash,
                    }),
                callback_url: submission.callback_url.as_deref(),
            })
            .map_err(|e| {
                discard_upload();
                unavailable("the job store", e)
            })?;
        match outcome {
            SubmissionOutcome::KeyConflict => {
                discard_upload();
                Err(ControlError::IdempotencyConflict)
            }
            SubmissionOutcome::Existing { job_id } => {
                // The job kept its own upload (or, finished, needs none).
                discard_upload();
                Ok(Submitted {
                    job_id,
                    created: false,
                })
            }
            SubmissionOutcome::Created => {
                if let Some(reservation) = reservation {
                    reservation.commit(id.clone(), submission.priority);
                    self.report_depth();
                } else if let Err(err) = self.publish(&id, submission.priority) {
                    // Undo, so that a retry of this request is a new submission
                    // rather than a job that exists and never runs.
                    discard_upload();
                    if let Err(undo) = self.store().delete(&id) {
                        tracing::error!(job = %id, error = %undo, "could not undo a failed submission");
                    }
                    return Err(err);
                }
                tracing::info!(job = %id, priority = submission.priority, "job accepted");
                Ok(Submitted {
                    job_id: id,
                    created: true,
                })
            }
        }
    }

    fn admits(&self, tenant: &str) -> Result<(), ControlError> {
        if !self.dataflow_running() {
            return Err(ControlError::Unavailable(DATAFLOW_STOPPED.to_owned()));
        }
        match &self.intake {
            Intake::Embedded(queue) => queue.admits(tenant).map_err(refused),
            // The broker's queue is shared and has no tenants: only its depth is bounded.
            Intake::RabbitMq(_) => {
                if self.queue_depth()? >= self.limits.max_jobs as u64 {
                    Err(refused(Refusal::QueueFull))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The upload folder: a received upload is kept by a rename, and a
    /// crash's leftovers are removed when the folder is next opened.
    fn spool_dir(&self) -> std::path::PathBuf {
        self.uploads.dir().to_path_buf()
    }

    fn spool_sealer(&self) -> Option<mmt_core::crypt::Sealer> {
        self.uploads.sealer().cloned()
    }

    /// Streams the referenced file into the upload folder (a rename keeps it).
    fn read_reference(
        &self,
        tenant: &str,
        reference: &str,
        max_bytes: u64,
    ) -> Result<SpooledAudio, ControlError> {
        let Some(references) = &self.references else {
            return Err(ControlError::Invalid(
                "this server accepts no audio references (MMT_AUDIO_REFERENCE_ROOT is not set)"
                    .to_owned(),
            ));
        };
        references
            .open(tenant, reference, max_bytes)
            .and_then(|audio| audio.spool_sealed_into(self.uploads.dir(), self.uploads.sealer()))
            .map_err(|err| match err {
                ReferenceError::Refused => ControlError::Invalid(err.to_string()),
                ReferenceError::Spool(kind) => {
                    tracing::error!(error = %kind, "a referenced file could not be spooled to disk");
                    ControlError::Unavailable(
                        "the referenced audio could not be stored; retry later".to_owned(),
                    )
                }
            })
    }

    fn job(&self, tenant: &str, id: &JobId) -> Result<Option<JobRecord>, ControlError> {
        Ok(self.row(tenant, id)?.as_ref().map(record_of))
    }

    fn transcript(
        &self,
        tenant: &str,
        id: &JobId,
    ) -> Result<Option<(JobRecord, Option<Transcript>)>, ControlError> {
        Ok(self
            .row(tenant, id)?
            .map(|row| (record_of(&row), row.transcript)))
    }

    fn fhir_document(&self, tenant: &str, id: &JobId) -> Result<Option<String>, ControlError> {
        let Some(row) = self.row(tenant, id)? else {
            return Ok(None);
        };
        let (Some(transcript), Some(completed_at)) = (row.transcript, row.completed_at) else {
            return Ok(None);
        };
        let job = CompletedJob {
            meta: row.meta,
            transcript,
            completed_at,
        };
        let document =
            document_reference(&job).map_err(|e| ControlError::Internal(e.to_string()))?;
        serde_json::to_string(&document)
            .map(Some)
            .map_err(|e| ControlError::Internal(e.to_string()))
    }

    fn list(&self, tenant: &str, query: &ListQuery) -> Result<JobPage, ControlError> {
        let statuses: Vec<JobStatus> = query.status.into_iter().collect();
        let limit = query.limit.max(1);
        // One more than asked tells whether there is a next page.
        let mut rows = self
            .store()
            .page(&PageQuery {
                tenant,
                statuses: &statuses,
                received_from: query.received_from,
                received_before: query.received_before,
                after: query.after.as_ref().map(|c| (c.received_at, &c.id)),
                limit: limit + 1,
            })
            .map_err(|e| unavailable("the job store", e))?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = more.then(|| rows.last()).flatten().map(|row| ListCursor {
            received_at: row.meta.received_at,
            id: row.meta.id.clone(),
        });
        Ok(JobPage {
            jobs: rows.iter().map(record_of).collect(),
            next,
        })
    }

    fn delete(&self, tenant: &str, id: &JobId, actor: &str) -> Result<bool, ControlError> {
        let Some(row) = self.row(tenant, id)? else {
            return Ok(false);
        };
        let mut dequeued = false;
        if !row.status.is_terminal() {
            // A waiting job can be taken out of the embedded queue; one being
            // transcribed (or waiting on a broker) would be written back by
            // the dataflow after the deletion.
            dequeued = match &self.intake {
                Intake::Embedded(queue) => queue.remove(id),
                Intake::RabbitMq(_) => false,
            };
            if !dequeued {
                return Err(ControlError::Conflict(format!(
                    "the job is {}; delete it once it has finished",
                    row.status.as_str()
                )));
            }
            self.report_depth();
        }
        // Audited before anything is removed: if the audit fails the request
        // fails with the job as it was (back in the queue), to delete again.
        // Once audited, a failure further on is finished by a retry, which
        // the trail keeps once (the event's key is this record's).
        let audio_present = self.uploads.exists(id);
        if let Err(err) = self.audit_deletion(&row, actor, audio_present) {
            if dequeued {
                if let Intake::Embedded(queue) = &self.intake {
                    queue.restore(id.clone(), &row.meta.tenant, row.priority);
                    self.report_depth();
                }
            }
            return Err(err);
        }
        self.uploads
            .delete(id)
            .map_err(|e| ControlError::Internal(format!("removing the upload: {}", e.kind())))?;
        lock(&self.documents)
            .purge(std::slice::from_ref(id))
            .map_err(|e| unavailable("the document sink", e))?;
        self.store()
            .delete(id)
            .map_err(|e| unavailable("the job store", e))?;
        tracing::info!(job = %id, "job deleted");
        Ok(true)
    }

    fn audit_access(&self, access: &Access) -> Result<(), ControlError> {
        let event = self.access_event(access);
        lock(&self.audit).record(&event).map_err(|err| {
            tracing::error!(action = ?event.action, error = %err, "an access could not be audited");
            unavailable("the audit trail", err)
        })
    }

    fn readiness(&self) -> Vec<Readiness> {
        let store = self.store().health_check();
        let intake = self.queue_depth().map(drop);
        let component = |name: &str, result: Result<(), String>| Readiness {
            component: name.to_owned(),
            ready: result.is_ok(),
            detail: result.err(),
        };
        let dataflow = if self.dataflow_running() {
            Ok(())
        } else {
            Err(DATAFLOW_STOPPED.to_owned())
        };
        vec![
            component("dataflow", dataflow),
            component(
                "job_store",
                store.map_err(|_| "the job store does not answer".to_owned()),
            ),
            component(
                match self.intake {
                    Intake::Embedded(_) => "intake",
                    Intake::RabbitMq(_) => "rabbitmq",
                },
                intake.map_err(|_| "the job queue does not answer".to_owned()),
            ),
        ]
    }

    fn overview(&self, tenant: &str, recent: u32) -> Result<Overview, ControlError> {
        let queue_depth = self.queue_depth()?;
        let mut store = self.store();
        let counts = store
            .status_counts(Some(tenant))
            .map_err(|e| unavailable("the job store", e))?;
        let since = unix_now() - THROUGHPUT_WINDOW_SECONDS as i64;
        let (completed_recently, audio_seconds_recently) = store
            .completed_since(since, Some(tenant))
            .map_err(|e| unavailable("the job store", e))?;
        let rows = store
            .page(&PageQuery {
                tenant,
                statuses: &[],
                received_from: None,
                received_before: None,
                after: None,
                limit: recent,
            })
            .map_err(|e| unavailable("the job store", e))?;
        let status_counts = [
            JobStatus::Queued,
            JobStatus::Processing,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::DeadLettered,
        ]
        .into_iter()
        .map(|status| (status, counts.get(status.as_str()).copied().unwrap_or(0)))
        .collect();
        Ok(Overview {
            queue_depth,
            status_counts,
            completed_recently,
            audio_seconds_recently,
            window_seconds: THROUGHPUT_WINDOW_SECONDS,
            recent: rows.iter().map(record_of).collect(),
        })
    }

    fn due_callbacks(&self, limit: u32, per_tenant: u32) -> Result<Vec<DueCallback>, ControlError> {
        let due = self
            .store()
            .due_callbacks(unix_now(), limit, per_tenant)
            .map_err(|e| unavailable("the job store", e))?;
        Ok(due
            .into_iter()
            .map(|StoredCallback { job, url, attempts }| DueCallback {
                job: record_of(&job),
                url,
                attempts,
            })
            .collect())
    }

    fn callback_outcome(
        &self,
        id: &JobId,
        outcome: Result<(), String>,
        retry_at: Option<i64>,
    ) -> Result<(), ControlError> {
        let mut store = self.store();
        match outcome {
            Ok(()) => store.callback_delivered(id, unix_now()),
            Err(reason) => store.callback_failed(id, &reason, retry_at),
        }
        .map_err(|e| unavailable("the job store", e))
    }
}

impl ServiceControl {
    /// Removes uploads older than `cutoff` (retention); how many.
    pub fn purge_uploads_before(&self, cutoff: i64) -> std::io::Result<u64> {
        self.uploads.purge_before(cutoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmt_core::error::ErrorClass;
    use mmt_core::job::ComponentError;
    use std::sync::atomic::AtomicU32;

    /// The real audit trail behind a wrapper that fails while
    /// `failures_left` is above zero, as a full disk would (a disk cannot be
    /// filled on purpose here).
    struct FailingAudit {
        inner: Box<dyn AuditSink>,
        failures_left: Arc<AtomicU32>,
    }

    impl AuditSink for FailingAudit {
        fn record(&mut self, event: &AuditEvent) -> Result<(), ComponentError> {
            let failing = self
                .failures_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(ComponentError::new(
                    ErrorClass::External { retryable: true },
                    "appending to audit.jsonl: No space left on device (os error 28)",
                ));
            }
            self.inner.record(event)
        }
    }

    fn submission(tenant: &str) -> Submission {
        // A WAV header is all the control needs: it stores, it does not decode.
        let mut wav = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        wav.extend_from_slice(&[0; 64]);
        Submission {
            tenant: tenant.to_owned(),
            audio: SubmittedAudio::Bytes(wav),
            format: Some("wav".to_owned()),
            source: "upload".to_owned(),
            patient_reference: None,
            encounter_reference: None,
            priority: 0,
            callback_url: None,
            idempotency: None,
            trace_parent: None,
        }
    }

    /// A failed audit write fails the deletion (the API answers the
    /// `Unavailable` with 503) and leaves the job to delete again; the retry
    /// is audited once.
    #[test]
    fn a_deletion_that_cannot_be_audited_fails_and_keeps_the_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = Config::default();
        let paths = OutputPaths::resolve(&config, dir.path());
        let metrics = Metrics::new().expect("metrics");
        let (resources, control) = open(
            &config,
            &paths,
            &dir.path().join("uploads"),
            1,
            IntakeChoice::Embedded,
            &metrics,
        )
        .expect("open");
        drop(resources);
        let failures_left = Arc::new(AtomicU32::new(1));
        // The dataflow's handle is gone: the trail is reopened behind the
        // wrapper, and the control's own handle dropped.
        *lock(&control.audit) = Box::new(FailingAudit {
            inner: Box::new(mmt_connectors::AuditLogSink::open(&paths.audit_log).expect("reopen")),
            failures_left: Arc::clone(&failures_left),
        });
        let submitted = control.submit(submission("clinic-a")).expect("submit");
        let id = submitted.job_id;

        let refused = control.delete("clinic-a", &id, "admin-1");
        assert!(
            matches!(&refused, Err(ControlError::Unavailable(reason)) if reason.contains("audit trail")),
            "{refused:?}"
        );
        assert!(
            control.job("clinic-a", &id).expect("read").is_some(),
            "the job is still there to delete again"
        );
        assert_eq!(
            control.queued_jobs().expect("depth"),
            1,
            "and still queued for transcription, with its upload"
        );
        assert!(control.uploads.exists(&id));
        assert!(control.delete("clinic-a", &id, "admin-1").expect("retry"));
        assert!(control.job("clinic-a", &id).expect("read").is_none());
        assert!(!control.uploads.exists(&id));
        assert_eq!(control.queued_jobs().expect("depth"), 0);

        let trail = std::fs::read_to_string(&paths.audit_log).expect("trail");
        let deletions: Vec<&str> = trail
            .lines()
            .filter(|line| line.contains("\"job_deleted\""))
            .collect();
        assert_eq!(deletions.len(), 1, "{trail}");
        assert!(
            deletions[0].contains("\"actor\":\"api:admin-1\""),
            "{trail}"
        );
        assert!(deletions[0].contains("\"tenant\":\"clinic-a\""), "{trail}");
    }
}
