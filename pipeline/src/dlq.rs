//! The dead-letter reprocessor of the embedded deployment (`mmt dlq`).
//!
//! A dead letter (`dlq.jsonl`) keeps ids and a classed reason, never the
//! audio. A retry therefore finds the audio again where the run read it: the
//! `--input` folder, by the letter's job id (the tenant and the content's
//! hash, or, for a file that could not be read at the time, its name). The
//! job is re-admitted in the store (dead-lettered → failed, its takes
//! counted afresh, its generation kept) and the folder's pipeline runs over
//! exactly those files; the store then says whether it completed. The
//! documents, audit events and store rows are idempotent by job id, so a job
//! that completes on retry has exactly one document however often it is
//! retried.
//!
//! Each letter's state (pending with its attempts and next due time,
//! parked, resolved) is kept in `dlq.state.json` under a file lock, so a
//! second reprocessor finds the lock taken and does nothing. Retryable
//! classes are retried up to `MAX_REPROCESS_ATTEMPTS` times, spaced by the
//! one backoff policy (`BACKOFF_BASE_SECONDS`, exponential with jitter);
//! other classes, and letters out of attempts, are parked and never retried
//! again. Every outcome is counted in the `reprocessor_*_total` metrics and
//! every resolution or parking is audited.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use mmt_connectors::envelope::{EnvelopeReader, MessageContext};
use mmt_connectors::files::{
    read_dead_letters, DeadLetterFileConfig, Disposition, DlqState, DlqStateFile, LetterState,
};
use mmt_connectors::rabbitmq::{DeadLetterQueue, DeadMessage, DeadVerdict};
use mmt_connectors::{ConnectorError, SqlJobStore, SqlJobStoreConfig};
use mmt_core::error::ErrorClass;
use mmt_core::job::{AuditAction, AuditEvent, AuditSink, DeadLetter, JobId, JobStatus};
use mmt_core::retry::RetryPolicy;
use mmt_core::telemetry::Metrics;
use mmt_operators::decode::{job_meta, unreadable_job_id};

use crate::run::source::{is_audio, DirectorySource};
use crate::run::OutputPaths;

/// The audit trail's actor for what the reprocessor does by itself.
pub const ACTOR: &str = "dlq-reprocessor";

/// The folder under `--out` where a retry's files are linked for the run.
pub const STAGING_DIR: &str = ".dlq-reprocess";

/// What can stop a reprocessor pass.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error("the input folder {path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the retry run: {0}")]
    Rerun(String),
    #[error("the audit trail: {0}")]
    Audit(mmt_core::job::ComponentError),
    #[error("no --input folder to find the dead-lettered recordings in")]
    NoInput,
    #[error("no dead letter of job {0}")]
    UnknownLetter(JobId),
}

impl DlqError {
    /// Who is at fault and whether another pass can help.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Connector(err) => err.class(),
            Self::Input { .. } | Self::Rerun(_) => ErrorClass::External { retryable: true },
            Self::Audit(err) => err.class,
            Self::NoInput | Self::UnknownLetter(_) => ErrorClass::UserInput,
        }
    }
}

/// How the reprocessor retries.
#[derive(Debug, Clone)]
pub struct ReprocessOptions {
    /// `MAX_REPROCESS_ATTEMPTS`: retries of one letter before it is parked.
    pub max_attempts: u32,
    /// Spacing of the retries (`BACKOFF_BASE_SECONDS`, with jitter).
    pub retry: RetryPolicy,
    /// The folder the dead-lettered jobs were read from (`mmt run --input`);
    /// a broker's dead letters are retried from their messages instead.
    pub input: Option<PathBuf>,
    /// The tenant of files without a sidecar naming one (`mmt run --tenant`).
    pub tenant: String,
}

/// Runs the pipeline over a folder of files (the retry); the store tells
/// afterwards which jobs completed.
pub trait Rerun {
    fn rerun(&mut self, dir: &Path) -> Result<(), DlqError>;
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Another reprocessor held the lock: nothing was done.
    pub busy: bool,
    /// Retries made.
    pub attempted: u64,
    /// Letters whose job completed (on retry, or meanwhile).
    pub resolved: u64,
    /// Retries that did not complete their job.
    pub failed: u64,
    /// Letters parked in this pass (permanent or out of attempts).
    pub parked: u64,
    /// Letters whose attempts ran out in this pass.
    pub exhausted: u64,
    /// Letters still pending after the pass.
    pub pending: u64,
    /// The earliest time (unix seconds) a pending letter is due, if any.
    pub next_due: Option<i64>,
}

/// One letter of the pass and where its retry stands.
struct Retry {
    letter: DeadLetter,
    file: PathBuf,
    target: JobId,
}

/// What judging one sweep's messages needs besides the state.
struct Sweep<'a> {
    reader: &'a EnvelopeReader,
    /// Letters due for a retry whose message was not seen yet.
    due: &'a mut HashMap<JobId, DeadLetter>,
    /// Letters whose message is still unreadable (failed attempts).
    unreadable: &'a mut Vec<JobId>,
    now: i64,
}

/// Where an input file's job ids point.
#[derive(Debug, Clone)]
struct Located {
    path: PathBuf,
    /// The job of its content; `None` while it cannot be read.
    content_job: Option<JobId>,
}

/// The reprocessor over one output folder's dead letters.
pub struct Reprocessor {
    dlq_path: PathBuf,
    state: DlqStateFile,
    staging: PathBuf,
    store: SqlJobStore,
    audit: Box<dyn AuditSink>,
    metrics: Metrics,
    options: ReprocessOptions,
}

impl std::fmt::Debug for Reprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reprocessor")
            .field("dlq_path", &self.dlq_path)
            .finish_non_exhaustive()
    }
}

impl Reprocessor {
    /// Opens the job store and audit trail of `paths`; the letters and their
    /// state are read afresh by every pass.
    pub fn open(
        paths: &OutputPaths,
        out: &Path,
        is_prod: bool,
        metrics: Metrics,
        options: ReprocessOptions,
    ) -> Result<Self, DlqError> {
        let store = SqlJobStoreConfig::new(&paths.database_url).build(is_prod)?;
        let audit = paths.audit().build()?;
        Ok(Self {
            dlq_path: paths.dead_letter_dir.join(DeadLetterFileConfig::FILE_NAME),
            state: DlqStateFile::in_dir(&paths.dead_letter_dir),
            staging: out.join(STAGING_DIR),
            store,
            audit: Box::new(audit),
            metrics,
            options,
        })
    }

    /// One pass at `now` (unix seconds): parks what cannot be retried,
    /// retries what is due, records the outcomes. Does nothing if another
    /// reprocessor holds the state's lock.
    pub fn pass(&mut self, now: i64, rerun: &mut dyn Rerun) -> Result<PassSummary, DlqError> {
        let Some(lock) = self.state.lock(false)? else {
            tracing::info!("another reprocessor holds the dead-letter state; skipping this pass");
            return Ok(PassSummary {
                busy: true,
                ..PassSummary::default()
            });
        };
        let _span = tracing::info_span!("dlq_reprocess").entered();
        let letters = read_dead_letters(&self.dlq_path)?;
        let mut state = lock.load()?;
        let mut summary = PassSummary::default();
        let due = self.triage(&letters, &mut state, now, &mut summary)?;
        lock.save(&state)?;
        if !due.is_empty() {
            let retries = self.prepare(due, &mut state, now, &mut summary)?;
            // Attempts are counted before the run: one that dies midway still used its try.
            lock.save(&state)?;
            if !retries.is_empty() {
                let outcome = self.run_retries(&retries, rerun);
                // The letters the retries wrote, if they failed again.
                let after = read_dead_letters(&self.dlq_path)?;
                for retry in &retries {
                    self.settle(retry, &after, &mut state, now, &mut summary)?;
                }
                lock.save(&state)?;
                outcome?;
            }
        }
        count_pending(&state, &mut summary);
        Ok(summary)
    }

    /// One pass over RabbitMQ's `<queue>.dead` (`mmt run --source rabbitmq`):
    /// settles the retries republished by earlier passes from the store,
    /// parks what cannot be retried, then goes through the dead messages:
    /// a due letter's message is republished to the job queue (its job
    /// re-admitted first), a parked one's moved to `<queue>.parked`, a
    /// resolved one's dropped, the rest kept.
    pub fn pass_broker(
        &mut self,
        now: i64,
        queue: &mut DeadLetterQueue,
        reader: &EnvelopeReader,
    ) -> Result<PassSummary, DlqError> {
        let Some(lock) = self.state.lock(false)? else {
            tracing::info!("another reprocessor holds the dead-letter state; skipping this pass");
            return Ok(PassSummary {
                busy: true,
                ..PassSummary::default()
            });
        };
        let _span = tracing::info_span!("dlq_reprocess", source = "rabbitmq").entered();
        let letters = read_dead_letters(&self.dlq_path)?;
        let mut state = lock.load()?;
        let mut summary = PassSummary::default();
        self.settle_in_flight(&letters, &mut state, now, &mut summary)?;
        let mut due: HashMap<JobId, DeadLetter> = self
            .triage(&letters, &mut state, now, &mut summary)?
            .into_iter()
            .map(|letter| (letter.job_id.clone(), letter))
            .collect();
        lock.save(&state)?;
        let mut unreadable = Vec::new();
        // On an error the state of the sweep is not saved: what it did not
        // acknowledge is still in the queue, and is judged again next pass.
        queue.sweep(|message| {
            let mut sweep = Sweep {
                reader,
                due: &mut due,
                unreadable: &mut unreadable,
                now,
            };
            self.judge(message, &mut sweep, &mut state, &mut summary)
        })?;
        let mut failures: Vec<(DeadLetter, &str)> = unreadable
            .into_iter()
            .filter_map(|id| letters.get(&id).cloned())
            .map(|letter| (letter, "its input is still unreadable"))
            .collect();
        for letter in due.into_values() {
            // Its message is not in the queue (consumed by hand, or never there).
            summary.attempted += 1;
            self.metrics.reprocessor_attempts_total.inc();
            if let Some(entry) = state.letters.get_mut(&letter.job_id) {
                entry.attempts += 1;
            }
            failures.push((letter, "its message is not in the dead-letter queue"));
        }
        for (letter, why) in failures {
            if let Some(entry) = state.letters.get_mut(&letter.job_id) {
                self.failed(&letter, entry, now, why, &mut summary)?;
            }
        }
        lock.save(&state)?;
        count_pending(&state, &mut summary);
        Ok(summary)
    }

    /// The outcome of each republished retry, once the store has it.
    fn settle_in_flight(
        &mut self,
        letters: &BTreeMap<JobId, DeadLetter>,
        state: &mut DlqState,
        now: i64,
        summary: &mut PassSummary,
    ) -> Result<(), DlqError> {
        for (id, entry) in state.letters.iter_mut() {
            let Some(letter) = letters
                .get(id)
                .filter(|_| entry.is_pending() && entry.in_flight)
            else {
                continue;
            };
            let target = entry.target.clone().unwrap_or_else(|| id.clone());
            match self.store.current_status(&target)? {
                Some(JobStatus::Completed) => {
                    entry.in_flight = false;
                    self.metrics.reprocessor_succeeded_total.inc();
                    self.resolve(letter, entry, now, &target)?;
                    summary.resolved += 1;
                }
                Some(JobStatus::DeadLettered) => {
                    entry.in_flight = false;
                    let again = letters.get(&target);
                    let why = "the retry was dead-lettered again";
                    self.retry_failed(letter, entry, now, why, again, summary)?;
                }
                // Still queued or processing.
                _ => {}
            }
        }
        Ok(())
    }

    /// What becomes of one dead message. Attempts are counted here; what
    /// must be audited is left to the caller (`unreadable`).
    fn judge(
        &mut self,
        message: DeadMessage<'_>,
        sweep: &mut Sweep<'_>,
        state: &mut DlqState,
        summary: &mut PassSummary,
    ) -> Result<DeadVerdict, ConnectorError> {
        let context = MessageContext {
            message_id: message.message_id.unwrap_or_default().to_owned(),
            ..MessageContext::default()
        };
        let record = sweep.reader.read(message.body, context);
        let content = record.read_error.is_none().then(|| job_meta(&record).id);
        let by_name = unreadable_job_id(&record.tenant, &record.source);
        let named = [Some(by_name), content.clone()]
            .into_iter()
            .flatten()
            .find(|id| state.letters.contains_key(id));
        let Some((id, entry)) = named.and_then(|id| state.letters.get_mut(&id).map(|e| (id, e)))
        else {
            // No dead letter names it: an operator's to look at.
            return Ok(DeadVerdict::Keep);
        };
        match entry.disposition {
            Disposition::Parked => return Ok(DeadVerdict::Park),
            Disposition::Resolved => return Ok(DeadVerdict::Drop),
            Disposition::Pending => {}
        }
        if sweep.due.remove(&id).is_none() {
            return Ok(DeadVerdict::Keep);
        }
        entry.attempts += 1;
        entry.updated_at = sweep.now;
        summary.attempted += 1;
        self.metrics.reprocessor_attempts_total.inc();
        let Some(target) = content else {
            sweep.unreadable.push(id);
            return Ok(DeadVerdict::Keep);
        };
        self.store.readmit(&target)?;
        entry.target = (target != id).then_some(target);
        entry.in_flight = true;
        Ok(DeadVerdict::Retry)
    }

    /// Parks the letters no retry can help, and returns those due for one.
    fn triage(
        &mut self,
        letters: &BTreeMap<JobId, DeadLetter>,
        state: &mut DlqState,
        now: i64,
        summary: &mut PassSummary,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        // A retry that fails again may dead-letter the job it ran under its
        // own id (a file once unreadable, now read by its content): that is
        // the same letter, whose attempts are already counted.
        let retried: HashSet<JobId> = state
            .letters
            .iter()
            .filter_map(|(id, entry)| entry.target.clone().filter(|target| target != id))
            .collect();
        let mut due = Vec::new();
        for (id, letter) in letters {
            if retried.contains(id) {
                continue;
            }
            let entry = state
                .letters
                .entry(id.clone())
                .or_insert_with(|| LetterState::new(now));
            if !entry.is_pending() || entry.in_flight {
                continue;
            }
            if !letter.class.is_retryable() {
                let note = format!("permanent: a {} failure", letter.class.label());
                self.park(letter, entry, now, &note, ACTOR)?;
                summary.parked += 1;
            } else if entry.attempts >= self.options.max_attempts {
                self.exhaust(letter, entry, now, summary)?;
            } else if entry.next_at <= now {
                due.push(letter.clone());
            }
        }
        Ok(due)
    }

    /// Finds each due letter's audio and re-admits its job; counts the
    /// attempts. Letters whose job completed meanwhile are resolved.
    fn prepare(
        &mut self,
        due: Vec<DeadLetter>,
        state: &mut DlqState,
        now: i64,
        summary: &mut PassSummary,
    ) -> Result<Vec<Retry>, DlqError> {
        let located = self.locate_input()?;
        let mut retries = Vec::new();
        for letter in due {
            let Some(entry) = state.letters.get_mut(&letter.job_id) else {
                continue;
            };
            let found = located.get(&letter.job_id).cloned();
            if let Some(target) = found.as_ref().and_then(|f| f.content_job.clone()) {
                entry.target = (target != letter.job_id).then(|| target.clone());
                if self.store.current_status(&target)? == Some(JobStatus::Completed) {
                    self.resolve(&letter, entry, now, &target)?;
                    summary.resolved += 1;
                    continue;
                }
            }
            entry.attempts += 1;
            entry.updated_at = now;
            summary.attempted += 1;
            self.metrics.reprocessor_attempts_total.inc();
            match found {
                None => self.failed(
                    &letter,
                    entry,
                    now,
                    "its audio is not in the input folder",
                    summary,
                )?,
                Some(Located {
                    content_job: None, ..
                }) => self.failed(
                    &letter,
                    entry,
                    now,
                    "its input is still unreadable",
                    summary,
                )?,
                Some(Located {
                    path,
                    content_job: Some(target),
                }) => {
                    self.store.readmit(&target)?;
                    retries.push(Retry {
                        letter,
                        file: path,
                        target,
                    });
                }
            }
        }
        Ok(retries)
    }

    /// Links the retries' files (and sidecars) into the staging folder and
    /// runs the pipeline over it.
    fn run_retries(&mut self, retries: &[Retry], rerun: &mut dyn Rerun) -> Result<(), DlqError> {
        let staging_error = |source| DlqError::Input {
            path: self.staging.clone(),
            source,
        };
        if self.staging.exists() {
            std::fs::remove_dir_all(&self.staging).map_err(staging_error)?;
        }
        mmt_core::owner_only::create_dir_all(&self.staging).map_err(staging_error)?;
        for retry in retries {
            let mut sidecar = retry.file.as_os_str().to_owned();
            sidecar.push(".json");
            let sidecar = PathBuf::from(sidecar);
            let mut links = vec![retry.file.clone()];
            if sidecar.is_file() {
                links.push(sidecar);
            }
            for file in links {
                let source = std::path::absolute(&file).map_err(staging_error)?;
                let link = self.staging.join(file.file_name().unwrap_or_default());
                std::os::unix::fs::symlink(&source, &link).map_err(staging_error)?;
            }
        }
        let _span = tracing::info_span!("dlq_retry", jobs = retries.len()).entered();
        let outcome = rerun.rerun(&self.staging);
        if let Err(err) = std::fs::remove_dir_all(&self.staging) {
            tracing::warn!(error = %err, "could not remove the reprocessor's staging folder");
        }
        outcome
    }

    /// Records a retry's outcome from the store.
    fn settle(
        &mut self,
        retry: &Retry,
        letters: &BTreeMap<JobId, DeadLetter>,
        state: &mut DlqState,
        now: i64,
        summary: &mut PassSummary,
    ) -> Result<(), DlqError> {
        let Some(entry) = state.letters.get_mut(&retry.letter.job_id) else {
            return Ok(());
        };
        let _span = tracing::info_span!("dlq_settle", job = %retry.letter.job_id, correlation_id = %retry.letter.correlation_id).entered();
        let status = self.store.current_status(&retry.target)?;
        if status == Some(JobStatus::Completed) {
            self.metrics.reprocessor_succeeded_total.inc();
            self.resolve(&retry.letter, entry, now, &retry.target)?;
            summary.resolved += 1;
        } else {
            let why = format!(
                "the retry left the job {}",
                status.map_or("unrecorded", JobStatus::as_str)
            );
            let again = letters.get(&retry.target);
            self.retry_failed(&retry.letter, entry, now, &why, again, summary)?;
        }
        Ok(())
    }

    /// A retry that failed: parked at once if it failed for good (`again`,
    /// its job's new dead letter, has a permanent class), else a failed attempt.
    fn retry_failed(
        &mut self,
        letter: &DeadLetter,
        entry: &mut LetterState,
        now: i64,
        why: &str,
        again: Option<&DeadLetter>,
        summary: &mut PassSummary,
    ) -> Result<(), DlqError> {
        let Some(again) = again.filter(|again| !again.class.is_retryable()) else {
            return self.failed(letter, entry, now, why, summary);
        };
        self.metrics.reprocessor_failed_total.inc();
        summary.failed += 1;
        summary.parked += 1;
        let note = format!(
            "permanent: the retry failed with a {} failure at {}",
            again.class.label(),
            again.stage.as_str()
        );
        self.park(letter, entry, now, &note, ACTOR)
    }

    /// A failed attempt: due again after the backoff, or parked when none is left.
    fn failed(
        &mut self,
        letter: &DeadLetter,
        entry: &mut LetterState,
        now: i64,
        why: &str,
        summary: &mut PassSummary,
    ) -> Result<(), DlqError> {
        self.metrics.reprocessor_failed_total.inc();
        summary.failed += 1;
        entry.note = Some(why.to_owned());
        tracing::warn!(job = %letter.job_id, attempts = entry.attempts, reason = why, "dead-letter retry failed");
        if entry.attempts >= self.options.max_attempts {
            return self.exhaust(letter, entry, now, summary);
        }
        let wait = self
            .options
            .retry
            .delay(entry.attempts)
            .unwrap_or(self.options.retry.cap());
        entry.next_at = now + wait.as_secs_f64().ceil() as i64;
        Ok(())
    }

    fn exhaust(
        &mut self,
        letter: &DeadLetter,
        entry: &mut LetterState,
        now: i64,
        summary: &mut PassSummary,
    ) -> Result<(), DlqError> {
        self.metrics.reprocessor_exhausted_total.inc();
        summary.exhausted += 1;
        summary.parked += 1;
        let note = format!(
            "exhausted: {} attempts (MAX_REPROCESS_ATTEMPTS)",
            entry.attempts
        );
        self.park(letter, entry, now, &note, ACTOR)
    }

    fn resolve(
        &mut self,
        letter: &DeadLetter,
        entry: &mut LetterState,
        now: i64,
        target: &JobId,
    ) -> Result<(), DlqError> {
        let mut detail = letter_detail(letter, entry);
        detail.insert("completed_job".into(), target.0.clone());
        self.audit
            .record(&event(
                letter,
                AuditAction::DeadLetterReprocessed,
                ACTOR,
                detail,
            ))
            .map_err(DlqError::Audit)?;
        entry.disposition = Disposition::Resolved;
        entry.updated_at = now;
        entry.note = None;
        tracing::info!(job = %letter.job_id, attempts = entry.attempts, "dead letter reprocessed");
        Ok(())
    }

    /// Parks a letter for good, audited as done by `actor`.
    fn park(
        &mut self,
        letter: &DeadLetter,
        entry: &mut LetterState,
        now: i64,
        note: &str,
        actor: &str,
    ) -> Result<(), DlqError> {
        park_entry(
            self.audit.as_mut(),
            &self.metrics,
            letter,
            entry,
            now,
            note,
            actor,
        )
    }

    /// Every audio file of the input folder by the job ids a letter may name:
    /// its content's, and, for a file unreadable at the time, its name's.
    fn locate_input(&self) -> Result<HashMap<JobId, Located>, DlqError> {
        let Some(input) = &self.options.input else {
            return Err(DlqError::NoInput);
        };
        let source = DirectorySource::new(input, self.options.tenant.clone());
        let entries = std::fs::read_dir(input).map_err(|source| DlqError::Input {
            path: input.clone(),
            source,
        })?;
        let mut located = HashMap::new();
        for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
            if !is_audio(&path) || !path.is_file() {
                continue;
            }
            let content_job = source
                .read(&path, 0)
                .ok()
                .map(|record| job_meta(&record).id);
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let by_name = unreadable_job_id(&self.options.tenant, &name);
            let found = Located { path, content_job };
            if let Some(id) = &found.content_job {
                located.insert(id.clone(), found.clone());
            }
            located.insert(by_name, found);
        }
        Ok(located)
    }
}

/// Counts the letters still pending and when the first is due.
fn count_pending(state: &DlqState, summary: &mut PassSummary) {
    for entry in state.letters.values().filter(|entry| entry.is_pending()) {
        summary.pending += 1;
        summary.next_due = Some(
            summary
                .next_due
                .map_or(entry.next_at, |due| due.min(entry.next_at)),
        );
    }
}

/// Parks `letter` (an operator's `mmt dlq park`, or the reprocessor's own
/// decision): audited, counted, never retried again.
fn park_entry(
    audit: &mut dyn AuditSink,
    metrics: &Metrics,
    letter: &DeadLetter,
    entry: &mut LetterState,
    now: i64,
    note: &str,
    actor: &str,
) -> Result<(), DlqError> {
    let mut detail = letter_detail(letter, entry);
    detail.insert("reason".into(), note.to_owned());
    audit
        .record(&event(letter, AuditAction::DeadLetterParked, actor, detail))
        .map_err(DlqError::Audit)?;
    metrics.reprocessor_parked_total.inc();
    entry.disposition = Disposition::Parked;
    entry.updated_at = now;
    entry.note = Some(note.to_owned());
    tracing::warn!(job = %letter.job_id, reason = note, "dead letter parked");
    Ok(())
}

/// Parks one letter by hand (`mmt dlq park`), waiting for a running
/// reprocessor's pass to end first. Returns whether it was pending.
pub fn park_by_operator(
    paths: &OutputPaths,
    metrics: &Metrics,
    job: &JobId,
    now: i64,
) -> Result<bool, DlqError> {
    let letters = read_dead_letters(&paths.dead_letter_dir.join(DeadLetterFileConfig::FILE_NAME))?;
    let letter = letters
        .get(job)
        .ok_or_else(|| DlqError::UnknownLetter(job.clone()))?;
    let file = DlqStateFile::in_dir(&paths.dead_letter_dir);
    let Some(lock) = file.lock(true)? else {
        return Ok(false);
    };
    let mut state = lock.load()?;
    let entry = state
        .letters
        .entry(job.clone())
        .or_insert_with(|| LetterState::new(now));
    if !entry.is_pending() {
        return Ok(false);
    }
    let mut audit = paths.audit().build()?;
    park_entry(
        &mut audit,
        metrics,
        letter,
        entry,
        now,
        "parked by an operator",
        "operator",
    )?;
    lock.save(&state)?;
    Ok(true)
}

/// One dead letter as `mmt dlq list`/`show` print it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LetterView {
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// The reprocessor's state; `None` until its first pass saw the letter.
    pub state: Option<LetterState>,
}

/// The dead letters of `paths` with their states, oldest first.
pub fn list_letters(paths: &OutputPaths) -> Result<Vec<LetterView>, DlqError> {
    let letters = read_dead_letters(&paths.dead_letter_dir.join(DeadLetterFileConfig::FILE_NAME))?;
    let state = DlqStateFile::in_dir(&paths.dead_letter_dir).read()?;
    let mut views: Vec<LetterView> = letters
        .into_values()
        .map(|letter| LetterView {
            state: state.letters.get(&letter.job_id).cloned(),
            letter,
        })
        .collect();
    views.sort_by(|a, b| (a.letter.at, &a.letter.job_id).cmp(&(b.letter.at, &b.letter.job_id)));
    Ok(views)
}

fn letter_detail(letter: &DeadLetter, entry: &LetterState) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("stage".to_owned(), letter.stage.as_str().to_owned()),
        ("class".to_owned(), letter.class.label().to_owned()),
        ("attempts".to_owned(), entry.attempts.to_string()),
    ])
}

fn event(
    letter: &DeadLetter,
    action: AuditAction,
    actor: &str,
    detail: BTreeMap<String, String>,
) -> AuditEvent {
    AuditEvent {
        at: mmt_core::job::unix_now(),
        action,
        job_id: letter.job_id.clone(),
        tenant: letter.tenant.clone(),
        correlation_id: letter.correlation_id.clone(),
        actor: actor.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmt_connectors::DeadLetterFileSink;
    use mmt_core::job::{CompletedJob, JobStore, Stage};
    use mmt_core::transcript::Transcript;
    use std::time::Duration;

    /// Stands in for the pipeline run (the model is not needed to test the
    /// bookkeeping; tests/dlq_reprocess.rs runs the real one): completes the
    /// jobs whose file names are listed, in the store.
    struct CompleteNamed {
        store: SqlJobStore,
        complete: Vec<&'static str>,
        runs: u32,
        tenant: String,
    }

    impl Rerun for CompleteNamed {
        fn rerun(&mut self, dir: &Path) -> Result<(), DlqError> {
            self.runs += 1;
            let source = DirectorySource::new(dir, self.tenant.clone());
            for entry in std::fs::read_dir(dir).expect("staging").flatten() {
                let path = entry.path();
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if !self.complete.contains(&name.as_str()) {
                    continue;
                }
                let record = source.read(&path, 1).expect("readable");
                let job = CompletedJob {
                    meta: job_meta(&record),
                    transcript: Transcript {
                        text: String::new(),
                        segments: Vec::new(),
                        duration_seconds: 1.0,
                        language: "en".into(),
                    },
                    completed_at: 1,
                };
                self.store.complete(&job).expect("complete");
            }
            Ok(())
        }
    }

    fn letter(job: &JobId, retryable: bool) -> DeadLetter {
        DeadLetter {
            job_id: job.clone(),
            tenant: "default".into(),
            correlation_id: "0123456789abcdef".into(),
            stage: Stage::Decode,
            class: ErrorClass::External { retryable },
            reason: "cannot read the input".into(),
            attempts: 1,
            at: 1,
        }
    }

    #[test]
    fn retries_back_off_exhaust_and_park_and_a_fixed_job_resolves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in");
        std::fs::create_dir(&input).expect("input");
        for name in ["fixed.wav", "broken.wav"] {
            std::fs::write(input.join(name), name.as_bytes()).expect("write");
        }
        let paths = OutputPaths {
            database_url: format!("sqlite://{}", dir.path().join("mmt.db").display()),
            audit_log: dir.path().join("audit.jsonl"),
            audit_rotate_bytes: None,
            documents_dir: dir.path().join("fhir"),
            dead_letter_dir: dir.path().to_owned(),
        };
        let mut dlq = DeadLetterFileSink::open(&dir.path().join("dlq.jsonl")).expect("dlq");
        let fixed = unreadable_job_id("default", "fixed.wav");
        let broken = unreadable_job_id("default", "broken.wav");
        let permanent = JobId("0".repeat(32));
        for (job, retryable) in [(&fixed, true), (&broken, true), (&permanent, false)] {
            dlq.send_letter(&letter(job, retryable)).expect("letter");
        }
        let metrics = Metrics::new().expect("metrics");
        let options = ReprocessOptions {
            max_attempts: 2,
            retry: RetryPolicy::from_base(Duration::from_secs(10)),
            input: Some(input),
            tenant: "default".into(),
        };
        let mut reprocessor =
            Reprocessor::open(&paths, dir.path(), false, metrics.clone(), options).expect("open");
        let store = SqlJobStoreConfig::new(&paths.database_url)
            .build(false)
            .expect("store");
        let mut rerun = CompleteNamed {
            store,
            complete: vec![],
            runs: 0,
            tenant: "default".into(),
        };

        let first = reprocessor.pass(100, &mut rerun).expect("pass");
        assert_eq!((first.attempted, first.resolved, first.parked), (2, 0, 1));
        assert_eq!((first.failed, first.pending), (2, 2));
        let next = first.next_due.expect("due later");
        assert!((110..=120).contains(&next), "backoff from 10 s: {next}");
        // Not due yet: nothing is retried.
        let early = reprocessor.pass(105, &mut rerun).expect("pass");
        assert_eq!((early.attempted, rerun.runs), (0, 1));

        rerun.complete = vec!["fixed.wav"];
        let second = reprocessor.pass(next.max(120), &mut rerun).expect("pass");
        assert_eq!((second.attempted, second.resolved), (2, 1));
        assert_eq!((second.exhausted, second.parked, second.pending), (1, 1, 0));
        // Parked and resolved letters are never retried.
        let third = reprocessor.pass(10_000, &mut rerun).expect("pass");
        assert_eq!((third.attempted, third.pending, rerun.runs), (0, 0, 2));

        assert_eq!(metrics.reprocessor_attempts_total.get(), 4);
        assert_eq!(metrics.reprocessor_succeeded_total.get(), 1);
        assert_eq!(metrics.reprocessor_failed_total.get(), 3);
        assert_eq!(metrics.reprocessor_exhausted_total.get(), 1);
        assert_eq!(metrics.reprocessor_parked_total.get(), 2);
        let views = list_letters(&paths).expect("list");
        let state_of = |job: &JobId| {
            views
                .iter()
                .find(|view| &view.letter.job_id == job)
                .and_then(|view| view.state.as_ref())
                .map(|state| (state.disposition, state.attempts))
        };
        assert_eq!(state_of(&fixed), Some((Disposition::Resolved, 2)));
        assert_eq!(state_of(&broken), Some((Disposition::Parked, 2)));
        assert_eq!(state_of(&permanent), Some((Disposition::Parked, 0)));
        assert!(!dir.path().join(STAGING_DIR).exists(), "staging removed");

        // An operator parks nothing twice, and names only letters that exist.
        assert!(!park_by_operator(&paths, &metrics, &fixed, 1).expect("park"));
        assert!(matches!(
            park_by_operator(&paths, &metrics, &JobId("nope".into()), 1),
            Err(DlqError::UnknownLetter(_))
        ));
        let audit = std::fs::read_to_string(&paths.audit_log).expect("audit");
        assert_eq!(audit.matches("dead_letter_parked").count(), 2);
        assert_eq!(audit.matches("dead_letter_reprocessed").count(), 1);
    }
}
