//! The job store over SQL, driven synchronously.
//!
//! sqlx is async and the pipeline calls the store from synchronous timely
//! operators, so the store owns a small current-thread tokio runtime and blocks
//! on each call. Do not call it from inside another tokio runtime (an axum
//! handler): use `spawn_blocking` there.
//!
//! Portability: statements use `?` placeholders (SQLite and MySQL; Postgres
//! needs `$1…`, a mechanical rewrite), `INSERT … ON CONFLICT (id) DO NOTHING`
//! (SQLite and Postgres; MySQL needs `INSERT IGNORE`), `CASE` rather than
//! `MAX(a, b)`/`GREATEST`, no `RETURNING`, and write transactions that begin
//! with `BEGIN IMMEDIATE` on SQLite only (see [`SqlJobStore::begin_write`]).

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mmt_core::job::{
    CompletedJob, ComponentError, DeadLetter, JobId, JobMeta, JobStatus, JobStore,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use tokio::runtime::Runtime;

use super::config::SqlJobStoreConfig;
use super::row::{
    class_from_text, class_to_text, parse_stage, parse_status, predecessors, JobFailure, JobRow,
};
use crate::error::{ConnectorError, Result};

/// The schema, embedded in the binary: nothing to ship beside it.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const COLUMNS: &str = "id, tenant, content_hash, source, patient_reference, encounter_reference, \
     correlation_id, status, attempts, error_stage, error_class, error_reason, transcript_json, \
     audio_seconds, received_at, updated_at, completed_at";

const INSERT_QUEUED: &str = "INSERT INTO jobs (id, tenant, content_hash, source, \
     patient_reference, encounter_reference, correlation_id, status, attempts, received_at, \
     updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?) ON CONFLICT (id) DO NOTHING";

/// A forward transition: `status IN (…)` holds the statuses that may become the
/// new one (from [`JobStatus::can_become`]), padded by repetition to four slots.
const TRANSITION: &str = "UPDATE jobs SET status = ?, attempts = attempts + ?, updated_at = ?, \
     completed_at = COALESCE(completed_at, ?) WHERE id = ? AND status IN (?, ?, ?, ?)";

const COMPLETE: &str = "UPDATE jobs SET status = ?, transcript_json = ?, audio_seconds = ?, \
     completed_at = ?, updated_at = ?, error_stage = NULL, error_class = NULL, \
     error_reason = NULL WHERE id = ? AND status IN (?, ?, ?, ?)";

const DEAD_LETTER: &str = "UPDATE jobs SET status = ?, error_stage = ?, error_class = ?, \
     error_reason = ?, attempts = CASE WHEN attempts < ? THEN ? ELSE attempts END, \
     updated_at = ? WHERE id = ? AND status IN (?, ?, ?, ?)";

const STATUS: &str = "SELECT status FROM jobs WHERE id = ?";

const PURGE_SELECT: &str = "SELECT id FROM jobs WHERE received_at < ? ORDER BY received_at, id";
const PURGE_DELETE: &str = "DELETE FROM jobs WHERE received_at < ?";

/// The job store on SQLite (Postgres and MySQL to come: see the module notes).
///
/// Every write is one atomic statement or transaction; status changes are
/// conditional updates, so they only move forward even with concurrent writers.
pub struct SqlJobStore {
    pool: SqlitePool,
    runtime: Runtime,
    url: String,
}

impl std::fmt::Debug for SqlJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlJobStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl SqlJobStore {
    /// Connects with `config` (already validated: see [`SqlJobStoreConfig::build`])
    /// and migrates the schema.
    pub fn connect(config: &SqlJobStoreConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ConnectorError::Runtime)?;
        let options = SqliteConnectOptions::from_str(&config.url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed job survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_millis(config.busy_timeout_ms));
        let in_memory = config.url.contains(":memory:") || config.url.contains("mode=memory");
        if !in_memory {
            create_parent_dir(options.get_filename())?;
        }
        let mut pool_options = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms));
        if in_memory {
            // An in-memory database lives as long as one connection holds it.
            pool_options = pool_options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = runtime.block_on(async {
            let pool = pool_options.connect_with(options).await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Ok::<_, ConnectorError>(pool)
        })?;
        Ok(Self {
            pool,
            runtime,
            url: config.redacted_url(),
        })
    }

    /// Checks that the database answers (`SELECT 1`).
    pub fn health_check(&mut self) -> Result<()> {
        self.runtime
            .block_on(sqlx::query("SELECT 1").execute(&self.pool))?;
        Ok(())
    }

    /// A write transaction. SQLite: `BEGIN IMMEDIATE` takes the write lock up
    /// front, so a read-then-write transaction waits on `busy_timeout` instead of
    /// failing when another writer got there first. Postgres/MySQL: plain `BEGIN`.
    async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The stored job, transcript included.
    pub fn get(&mut self, id: &JobId) -> Result<Option<JobRow>> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM jobs WHERE id = ?"));
        let row = self
            .runtime
            .block_on(sqlx::query(sql).bind(&id.0).fetch_optional(&self.pool))?;
        row.map(|row| decode_row(&row)).transpose()
    }

    /// Up to `limit` jobs, newest received first, optionally only those in `status`.
    pub fn list(&mut self, status: Option<JobStatus>, limit: u32) -> Result<Vec<JobRow>> {
        let filter = if status.is_some() {
            "WHERE status = ?"
        } else {
            ""
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs {filter} ORDER BY received_at DESC, id LIMIT ?"
        ));
        let mut query = sqlx::query(sql);
        if let Some(status) = status {
            query = query.bind(status.as_str());
        }
        let rows = self
            .runtime
            .block_on(query.bind(i64::from(limit)).fetch_all(&self.pool))?;
        rows.iter().map(decode_row).collect()
    }

    /// Records a newly received job as queued; `false` if it already existed.
    pub fn insert(&mut self, meta: &JobMeta) -> Result<bool> {
        let now = now();
        let inserted = self
            .runtime
            .block_on(insert_queued(meta, now).execute(&self.pool))?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Moves the job to `next` if that is a forward transition from where it
    /// stands (one conditional `UPDATE`); returns whether it moved.
    pub fn advance(&mut self, id: &JobId, next: JobStatus) -> Result<bool> {
        let from = predecessors(next);
        if from.is_empty() {
            return Ok(false);
        }
        let now = now();
        let query = sqlx::query(TRANSITION)
            .bind(next.as_str())
            .bind(i64::from(next == JobStatus::Processing))
            .bind(now)
            .bind((next == JobStatus::Completed).then_some(now))
            .bind(&id.0);
        let query = bind_statuses(query, &from);
        let result = self.runtime.block_on(query.execute(&self.pool))?;
        Ok(result.rows_affected() == 1)
    }

    /// The job's status, if stored.
    pub fn current_status(&mut self, id: &JobId) -> Result<Option<JobStatus>> {
        let row = self
            .runtime
            .block_on(sqlx::query(STATUS).bind(&id.0).fetch_optional(&self.pool))?;
        row.map(|row| {
            let text: String = row.try_get("status")?;
            parse_status(&text).ok_or_else(|| unreadable(id, "status", &text))
        })
        .transpose()
    }

    /// Stores the transcript and marks the job completed; inserts the job first
    /// if it was never recorded. Idempotent: a job already completed (or
    /// dead-lettered, which is final) is left as it is. Returns whether it changed.
    pub fn complete_job(&mut self, job: &CompletedJob) -> Result<bool> {
        let transcript =
            serde_json::to_string(&job.transcript).map_err(|source| ConnectorError::Serialize {
                what: "transcript",
                source,
            })?;
        let now = now();
        let from = predecessors(JobStatus::Completed);
        let pool = &self.pool;
        let changed = self.runtime.block_on(async {
            let mut tx = Self::begin_write(pool).await?;
            insert_queued(&job.meta, now).execute(&mut *tx).await?;
            let query = sqlx::query(COMPLETE)
                .bind(JobStatus::Completed.as_str())
                .bind(transcript)
                .bind(job.transcript.duration_seconds)
                .bind(job.completed_at)
                .bind(now)
                .bind(&job.meta.id.0);
            let result = bind_statuses(query, &from).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, ConnectorError>(result.rows_affected() == 1)
        })?;
        if !changed {
            tracing::debug!(job_id = %job.meta.id, "job already final; completion ignored");
        }
        Ok(changed)
    }

    /// Marks the job dead-lettered with the letter's stage, class and reason;
    /// inserts it first if it was never recorded (a job that failed to decode).
    /// Idempotent: a job already final is left as it is. Returns whether it changed.
    pub fn dead_letter_job(&mut self, letter: &DeadLetter) -> Result<bool> {
        let now = now();
        let from = predecessors(JobStatus::DeadLettered);
        let attempts = i64::from(letter.attempts);
        // What a dead letter knows of a job it never saw received.
        let meta = JobMeta {
            id: letter.job_id.clone(),
            tenant: letter.tenant.clone(),
            content_hash: String::new(),
            source: String::new(),
            patient_reference: None,
            encounter_reference: None,
            correlation_id: letter.correlation_id.clone(),
            received_at: letter.at,
        };
        let pool = &self.pool;
        let changed = self.runtime.block_on(async {
            let mut tx = Self::begin_write(pool).await?;
            insert_queued(&meta, now).execute(&mut *tx).await?;
            let query = sqlx::query(DEAD_LETTER)
                .bind(JobStatus::DeadLettered.as_str())
                .bind(letter.stage.as_str())
                .bind(class_to_text(letter.class))
                .bind(&letter.reason)
                .bind(attempts)
                .bind(attempts)
                .bind(now)
                .bind(&letter.job_id.0);
            let result = bind_statuses(query, &from).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, ConnectorError>(result.rows_affected() == 1)
        })?;
        Ok(changed)
    }

    /// Ids of the jobs received before `cutoff` (unix seconds), oldest first;
    /// unless `dry_run`, deletes them (rows and transcripts) in the same transaction.
    pub fn purge(&mut self, cutoff: i64, dry_run: bool) -> Result<Vec<JobId>> {
        let pool = &self.pool;
        self.runtime.block_on(async {
            let mut tx = Self::begin_write(pool).await?;
            let rows = sqlx::query(PURGE_SELECT)
                .bind(cutoff)
                .fetch_all(&mut *tx)
                .await?;
            let ids = rows
                .iter()
                .map(|row| row.try_get::<String, _>("id").map(JobId))
                .collect::<Result<Vec<_>, _>>()?;
            if dry_run || ids.is_empty() {
                tx.rollback().await?;
            } else {
                sqlx::query(PURGE_DELETE)
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok(ids)
        })
    }
}

impl Drop for SqlJobStore {
    fn drop(&mut self) {
        // Close the pool cleanly (SQLite checkpoints its WAL) unless dropped inside
        // another runtime, where blocking would panic; the connections close anyway.
        if tokio::runtime::Handle::try_current().is_err() {
            self.runtime.block_on(self.pool.close());
        }
    }
}

impl JobStore for SqlJobStore {
    fn status(&mut self, id: &JobId) -> Result<Option<JobStatus>, ComponentError> {
        self.current_status(id).map_err(Into::into)
    }

    fn insert_queued(&mut self, meta: &JobMeta) -> Result<bool, ComponentError> {
        self.insert(meta).map_err(Into::into)
    }

    fn transition(&mut self, id: &JobId, status: JobStatus) -> Result<bool, ComponentError> {
        self.advance(id, status).map_err(Into::into)
    }

    fn complete(&mut self, job: &CompletedJob) -> Result<(), ComponentError> {
        self.complete_job(job).map(drop).map_err(Into::into)
    }

    fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), ComponentError> {
        self.dead_letter_job(letter).map(drop).map_err(Into::into)
    }

    fn purge_before(&mut self, cutoff: i64, dry_run: bool) -> Result<Vec<JobId>, ComponentError> {
        self.purge(cutoff, dry_run).map_err(Into::into)
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

fn insert_queued(meta: &JobMeta, now: i64) -> SqliteQuery<'static> {
    sqlx::query(INSERT_QUEUED)
        .bind(meta.id.0.clone())
        .bind(meta.tenant.clone())
        .bind(meta.content_hash.clone())
        .bind(meta.source.clone())
        .bind(meta.patient_reference.clone())
        .bind(meta.encounter_reference.clone())
        .bind(meta.correlation_id.clone())
        .bind(meta.received_at)
        .bind(now)
}

/// Binds the four `status IN (?, ?, ?, ?)` slots, repeating the last status.
fn bind_statuses<'q>(mut query: SqliteQuery<'q>, statuses: &[JobStatus]) -> SqliteQuery<'q> {
    let last = statuses.last().copied().unwrap_or(JobStatus::Queued);
    for slot in 0..4 {
        let status = statuses.get(slot).copied().unwrap_or(last);
        query = query.bind(status.as_str());
    }
    query
}

fn decode_row(row: &SqliteRow) -> Result<JobRow> {
    let id = JobId(row.try_get("id")?);
    let status_text: String = row.try_get("status")?;
    let status =
        parse_status(&status_text).ok_or_else(|| unreadable(&id, "status", &status_text))?;
    let attempts: i64 = row.try_get("attempts")?;
    let failure = match (
        row.try_get::<Option<String>, _>("error_stage")?,
        row.try_get::<Option<String>, _>("error_class")?,
        row.try_get::<Option<String>, _>("error_reason")?,
    ) {
        (Some(stage), Some(class), reason) => Some(JobFailure {
            stage: parse_stage(&stage).ok_or_else(|| unreadable(&id, "error_stage", &stage))?,
            class: class_from_text(&class).ok_or_else(|| unreadable(&id, "error_class", &class))?,
            reason: reason.unwrap_or_default(),
        }),
        _ => None,
    };
    let transcript = row
        .try_get::<Option<String>, _>("transcript_json")?
        .map(|json| {
            serde_json::from_str(&json).map_err(|error| ConnectorError::StoredValue {
                job_id: id.0.clone(),
                column: "transcript_json",
                reason: format!(
                    "not a transcript (line {}, column {})",
                    error.line(),
                    error.column()
                ),
            })
        })
        .transpose()?;
    Ok(JobRow {
        meta: JobMeta {
            tenant: row.try_get("tenant")?,
            content_hash: row.try_get("content_hash")?,
            source: row.try_get("source")?,
            patient_reference: row.try_get("patient_reference")?,
            encounter_reference: row.try_get("encounter_reference")?,
            correlation_id: row.try_get("correlation_id")?,
            received_at: row.try_get("received_at")?,
            id,
        },
        status,
        attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
        failure,
        transcript,
        audio_seconds: row.try_get("audio_seconds")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
    })
}

/// A stored enum value this version does not know (the value is an enum's text,
/// never PHI, so it may be quoted).
fn unreadable(id: &JobId, column: &'static str, value: &str) -> ConnectorError {
    ConnectorError::StoredValue {
        job_id: id.0.clone(),
        column,
        reason: format!("unknown value {value:?}"),
    }
}

/// SQLite creates a missing database file but not its folder.
fn create_parent_dir(file: &Path) -> Result<()> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => std::fs::create_dir_all(dir)
            .map_err(|source| ConnectorError::io("creating directory", dir, source)),
        _ => Ok(()),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
