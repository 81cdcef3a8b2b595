//! The job store over SQL, driven synchronously.
//!
//! sqlx is async and the pipeline calls the store from synchronous timely
//! operators, so the store owns a small current-thread tokio runtime and blocks
//! on each call. Do not call it from inside another tokio runtime (an axum
//! handler): use `spawn_blocking` there.
//!
//! Dialects: the store holds one pool of the engine its URL names (`Pool`),
//! and each operation is written once and compiled for every driver by
//! `on_pool!`. The statements are shared text too, written with `?`
//! placeholders (SQLite and MySQL) and rewritten mechanically to `$1…` for
//! Postgres; "insert if absent" is `INSERT … ON CONFLICT (id) DO NOTHING` on
//! SQLite and Postgres and `INSERT IGNORE …` on MySQL (see `Statements`).
//! Otherwise the SQL keeps to what all three accept: `CASE` rather than
//! `MAX(a, b)`/`GREATEST`, no `RETURNING`, and every bound value a string, a
//! 64-bit integer or a double (hence BIGINT columns on the servers).
//!
//! Concurrency, with any number of writers in any number of processes: every
//! status change is a conditional `UPDATE … WHERE status IN (predecessors)`,
//! and each engine evaluates that condition on the latest committed row under
//! its write lock (Postgres re-checks it after waiting for the lock; InnoDB's
//! updates read the latest version), so a status only moves forward. Complete
//! and dead-letter are that update, and only if it moved nothing, an insert
//! if absent and the update again (`update_or_insert!`): statements that
//! each commit alone and lock one row, so writers of one job queue rather than
//! deadlock. The purge reads, then deletes exactly the ids it read, in one
//! transaction: `BEGIN IMMEDIATE` on SQLite (the write lock up front), plain
//! `BEGIN` elsewhere. MySQL sessions run READ COMMITTED, as Postgres does by
//! default (no gap locks). A write the server still rolls back for a deadlock
//! or serialisation conflict runs again (`retry_conflicts`).
//!
//! The REST API's writes are transactions too, opened the same way: a
//! submission records its idempotency key, its job and its callback together
//! (each an insert if absent; a key another caller inserted first is read back
//! in the same transaction, which on the servers sees every committed row), and
//! a delete removes a job with its keys and callback. Every transaction that
//! touches several of these tables locks them in one order (idempotency keys,
//! then jobs, then callbacks), so two of them wait for each other rather than
//! deadlock. Statements that filter or page on optional values keep one text
//! too: absent bounds are bound as `i64::MIN`/`i64::MAX` and status lists are
//! padded by repetition, so no statement binds a NULL of unknown type.
//! Callback URLs may hold tokens and are never logged.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mmt_core::crypt::{sealed_text_key_id, Opened, ResealReport, Sealer};
use mmt_core::job::{
    CompletedJob, ComponentError, DeadLetter, DueJob, JobId, JobMeta, JobStatus, JobStore, Take,
};
use mmt_core::owner_only;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, ColumnIndex, Decode, Row, SqlSafeStr, SqlStr, SqlitePool, Type};
use tokio::runtime::Runtime;

use super::api::{DueCallback, NewSubmission, PageQuery, SubmissionOutcome};
use super::config::{Dialect, SqlJobStoreConfig};
use super::row::{
    class_from_text, class_to_text, parse_stage, parse_status, predecessors, JobFailure, JobRow,
    ALL_STATUSES, MAX_PRIORITY,
};
use crate::config::ConfigProblem;
use crate::error::{is_transaction_conflict, ConnectorError, Result};

/// The schemas, embedded in the binary: nothing to ship beside it.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static MYSQL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

const COLUMNS: &str = "id, tenant, content_hash, source, patient_reference, encounter_reference, \
     correlation_id, status, attempts, error_stage, error_class, error_reason, transcript_json, \
     audio_seconds, received_at, updated_at, completed_at, priority, generation";

/// A queued job, less its dialect's "if absent" (see [`Statements::for_dialect`]).
const INSERT_QUEUED: &str = "INTO jobs (id, tenant, content_hash, source, \
     patient_reference, encounter_reference, correlation_id, status, attempts, priority, \
     received_at, updated_at, generation) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?, ?)";

/// An idempotency key, less its dialect's "if absent".
const INSERT_KEY: &str = "INTO idempotency_keys (tenant, idem_key, request_hash, job_id, \
     created_at) VALUES (?, ?, ?, ?, ?)";

const GET_KEY: &str =
    "SELECT request_hash, job_id FROM idempotency_keys WHERE tenant = ? AND idem_key = ?";

/// A job's callback, less its dialect's "if absent".
const INSERT_CALLBACK: &str =
    "INTO job_callbacks (job_id, url, attempts, next_attempt_at) VALUES (?, ?, 0, ?)";

/// Slots of the page's `status IN (…)` list: every status.
const PAGE_STATUS_SLOTS: usize = ALL_STATUSES.len();

/// A page of one tenant's jobs: statuses padded by repetition to five slots,
/// absent bounds and cursor bound as `i64::MIN`/`i64::MAX`.
const PAGE_WHERE: &str = "WHERE tenant = ? AND status IN (?, ?, ?, ?, ?) \
     AND received_at >= ? AND received_at < ? \
     AND (received_at < ? OR (received_at = ? AND id < ?)) \
     ORDER BY received_at DESC, id DESC LIMIT ?";

const COUNTS: &str = "SELECT status, COUNT(*) AS n FROM jobs";

const COMPLETED: &str = "SELECT COUNT(*) AS n, SUM(audio_seconds) AS seconds FROM jobs \
     WHERE status = ? AND completed_at >= ?";

/// Callbacks not yet delivered nor given up whose job is final (the two
/// terminal statuses bound), each ranked within its tenant, soonest due first.
const DUE_CALLBACKS_RANKED: &str = "FROM job_callbacks c JOIN jobs j ON j.id = c.job_id \
     WHERE c.delivered_at IS NULL AND c.gave_up_at IS NULL AND c.next_attempt_at <= ? \
     AND j.status IN (?, ?)";

/// Of those, at most a bound number per tenant, then at most a bound number
/// in all, soonest due first: one tenant's backlog (a receiver that is down)
/// never fills the page and hides the other tenants' callbacks.
const DUE_CALLBACKS_PAGE: &str = "WHERE tenant_rank <= ? ORDER BY callback_due, id LIMIT ?";

const CALLBACK_DELIVERED: &str =
    "UPDATE job_callbacks SET delivered_at = ? WHERE job_id = ? AND delivered_at IS NULL";

/// A failed delivery of a callback still pending; `{field}` is `next_attempt_at`
/// (another try) or `gave_up_at`.
const CALLBACK_FAILED: &str = "UPDATE job_callbacks SET attempts = attempts + 1, \
     last_error = ?, {field} = ? WHERE job_id = ? AND delivered_at IS NULL AND gave_up_at IS NULL";

/// Longest idempotency key and request hash, in characters (their columns').
const IDEM_KEY_MAX: usize = 255;
const REQUEST_HASH_MAX: usize = 128;

/// Longest `last_error` stored, in bytes.
const LAST_ERROR_MAX: usize = 1_000;

/// How often a submission tries to insert or read its idempotency key when the
/// row keeps vanishing between the two (its job deleted meanwhile).
const KEY_TRIES: u32 = 3;

/// A page of stored transcripts, by id, for re-encryption.
const TRANSCRIPTS_PAGE: &str = "SELECT id, tenant, transcript_json FROM jobs \
     WHERE transcript_json IS NOT NULL AND id > ? ORDER BY id LIMIT ?";

/// A transcript re-sealed, unless it changed since it was read (compare and set).
const RESEAL: &str = "UPDATE jobs SET transcript_json = ? WHERE id = ? AND transcript_json = ?";

/// Slots of the `status IN (…)` lists: a status never precedes itself, so at
/// most four precede any other.
const STATUS_SLOTS: usize = 4;

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

/// Re-admits a dead-lettered job for the reprocessor: `failed` may be taken
/// again, and its takes start over. Its generation stays, so a replayed
/// commit of the same processing still writes nothing twice.
const READMIT: &str = "UPDATE jobs SET status = 'failed', attempts = 0, updated_at = ?, \
     error_stage = NULL, error_class = NULL, error_reason = NULL \
     WHERE id = ? AND status = 'dead_lettered'";

/// A take: the job moves to processing and counts the take, unless it is
/// finished or was taken the bound number of times already.
const TAKE: &str = "UPDATE jobs SET status = 'processing', attempts = attempts + 1, \
     updated_at = ? WHERE id = ? AND status IN ('queued', 'processing', 'failed') \
     AND attempts < ?";

/// Hands a take back (a graceful stop): processing goes back to queued and
/// the take is uncounted.
const RELEASE: &str = "UPDATE jobs SET status = 'queued', attempts = attempts - 1, \
     updated_at = ? WHERE id = ? AND status = 'processing' AND attempts > 0";

/// Where a job stands after a take.
const TAKE_STATE: &str = "SELECT status, attempts, generation, updated_at FROM jobs WHERE id = ?";

const PURGE_SELECT: &str =
    "SELECT id, tenant, generation FROM jobs WHERE received_at < ? ORDER BY received_at, id";

/// Ids a purge deletes per statement (the list padded by repetition, so one
/// statement text serves every chunk).
const PURGE_CHUNK: usize = 100;

/// How often a write runs in all when the server keeps rolling it back to
/// resolve deadlocks or serialisation conflicts.
const TRANSACTION_TRIES: u32 = 3;

/// The connection pool, of the engine the URL names.
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    Mysql(MySqlPool),
}

/// Evaluates `$body` with `$pool` bound to the store's concrete pool: the body
/// is written once and compiled once per driver, so its queries, binds and
/// transactions are typed for that driver.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
            Pool::Mysql($p) => $body,
        }
    };
}

/// The statements of one dialect, built once at connect.
struct Statements {
    /// Opens a write transaction.
    begin_write: &'static str,
    get: SqlStr,
    list_all: SqlStr,
    list_by_status: SqlStr,
    insert_queued: SqlStr,
    transition: SqlStr,
    complete: SqlStr,
    dead_letter: SqlStr,
    status: SqlStr,
    readmit: SqlStr,
    take: SqlStr,
    release: SqlStr,
    take_state: SqlStr,
    purge_select: SqlStr,
    /// `DELETE … WHERE id IN (…)` with [`PURGE_CHUNK`] slots, of the purged
    /// jobs' idempotency keys, rows and callbacks.
    purge_delete_keys: SqlStr,
    purge_delete: SqlStr,
    purge_delete_callbacks: SqlStr,
    insert_key: SqlStr,
    get_key: SqlStr,
    insert_callback: SqlStr,
    page: SqlStr,
    delete_keys: SqlStr,
    delete_job: SqlStr,
    delete_callback: SqlStr,
    counts_all: SqlStr,
    counts_by_tenant: SqlStr,
    completed_all: SqlStr,
    completed_by_tenant: SqlStr,
    due_callbacks: SqlStr,
    callback_delivered: SqlStr,
    callback_retry: SqlStr,
    callback_give_up: SqlStr,
    transcripts_page: SqlStr,
    reseal: SqlStr,
}

impl Statements {
    fn for_dialect(dialect: Dialect) -> Self {
        let text = |sql: &str| {
            let sql = match dialect {
                Dialect::Postgres => numbered_placeholders(sql),
                Dialect::Sqlite | Dialect::Mysql => sql.to_owned(),
            };
            AssertSqlSafe(sql).into_sql_str()
        };
        // Insert if absent, on the conflict of `key`.
        let if_absent = |insert: &str, key: &str| match dialect {
            Dialect::Sqlite | Dialect::Postgres => {
                text(&format!("INSERT {insert} ON CONFLICT ({key}) DO NOTHING"))
            }
            // IGNORE also turns other errors of this one row into warnings; the
            // only values it could hit are ids, keys and names the callers bound.
            Dialect::Mysql => text(&format!("INSERT IGNORE {insert}")),
        };
        let slots = vec!["?"; PURGE_CHUNK].join(", ");
        // The job's columns under their own names, from `jobs j` joined to another table.
        let joined_columns = COLUMNS
            .split(", ")
            .map(|column| format!("j.{column} AS {column}"))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            // SQLite: take the write lock up front, so a read-then-write
            // transaction waits on the busy timeout instead of failing when
            // another writer got there first. The servers lock rows as they go.
            begin_write: match dialect {
                Dialect::Sqlite => "BEGIN IMMEDIATE",
                Dialect::Postgres | Dialect::Mysql => "BEGIN",
            },
            get: text(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?")),
            list_all: text(&format!(
                "SELECT {COLUMNS} FROM jobs ORDER BY received_at DESC, id LIMIT ?"
            )),
            list_by_status: text(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE status = ? ORDER BY received_at DESC, id LIMIT ?"
            )),
            insert_queued: if_absent(INSERT_QUEUED, "id"),
            transition: text(TRANSITION),
            complete: text(COMPLETE),
            dead_letter: text(DEAD_LETTER),
            status: text(STATUS),
            readmit: text(READMIT),
            take: text(TAKE),
            release: text(RELEASE),
            take_state: text(TAKE_STATE),
            purge_select: text(PURGE_SELECT),
            purge_delete_keys: text(&format!(
                "DELETE FROM idempotency_keys WHERE job_id IN ({slots})"
            )),
            purge_delete: text(&format!("DELETE FROM jobs WHERE id IN ({slots})")),
            purge_delete_callbacks: text(&format!(
                "DELETE FROM job_callbacks WHERE job_id IN ({slots})"
            )),
            insert_key: if_absent(INSERT_KEY, "tenant, idem_key"),
            get_key: text(GET_KEY),
            insert_callback: if_absent(INSERT_CALLBACK, "job_id"),
            page: text(&format!("SELECT {COLUMNS} FROM jobs {PAGE_WHERE}")),
            delete_keys: text("DELETE FROM idempotency_keys WHERE job_id = ?"),
            delete_job: text("DELETE FROM jobs WHERE id = ?"),
            delete_callback: text("DELETE FROM job_callbacks WHERE job_id = ?"),
            counts_all: text(&format!("{COUNTS} GROUP BY status")),
            counts_by_tenant: text(&format!("{COUNTS} WHERE tenant = ? GROUP BY status")),
            completed_all: text(COMPLETED),
            completed_by_tenant: text(&format!("{COMPLETED} AND tenant = ?")),
            due_callbacks: text(&format!(
                "SELECT * FROM (SELECT {joined_columns}, c.url AS callback_url, \
                 c.attempts AS callback_attempts, c.next_attempt_at AS callback_due, \
                 ROW_NUMBER() OVER (PARTITION BY j.tenant \
                 ORDER BY c.next_attempt_at, c.job_id) AS tenant_rank \
                 {DUE_CALLBACKS_RANKED}) due_now {DUE_CALLBACKS_PAGE}"
            )),
            callback_delivered: text(CALLBACK_DELIVERED),
            callback_retry: text(&CALLBACK_FAILED.replace("{field}", "next_attempt_at")),
            callback_give_up: text(&CALLBACK_FAILED.replace("{field}", "gave_up_at")),
            transcripts_page: text(TRANSCRIPTS_PAGE),
            reseal: text(RESEAL),
        }
    }
}

/// `?` placeholders as Postgres's `$1, $2, …`, leaving quoted literals alone.
fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut number = 0;
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                number += 1;
                out.push('$');
                out.push_str(&number.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

/// The `INSERT_QUEUED` statement bound to a job's metadata and priority (an `i64`).
macro_rules! insert_queued {
    ($sql:expr, $meta:expr, $priority:expr, $now:expr) => {
        insert_queued!($sql, $meta, $priority, $now, new_generation())
    };
    ($sql:expr, $meta:expr, $priority:expr, $now:expr, $generation:expr) => {{
        let meta: &JobMeta = $meta;
        let priority: i64 = $priority;
        sqlx::query($sql.insert_queued.clone())
            .bind(meta.id.0.as_str())
            .bind(meta.tenant.as_str())
            .bind(meta.content_hash.as_str())
            .bind(meta.source.as_str())
            .bind(meta.patient_reference.as_deref())
            .bind(meta.encounter_reference.as_deref())
            .bind(meta.correlation_id.as_str())
            .bind(priority)
            .bind(meta.received_at)
            .bind($now)
            .bind($generation)
    }};
}

/// Binds the four `status IN (?, ?, ?, ?)` slots of `$query`.
macro_rules! bind_statuses {
    ($query:expr, $statuses:expr) => {{
        let mut query = $query;
        for status in status_slots::<STATUS_SLOTS>($statuses) {
            query = query.bind(status);
        }
        query
    }};
}

/// Completes or dead-letters a job with `$update`, a conditional `UPDATE`;
/// if no row moved, records the job (if absent) from `$meta` and runs the update
/// again, against whatever a concurrent writer left. Each statement commits on
/// its own and locks one row while it runs, so writers on the same job queue
/// rather than deadlock (holding a lock from the insert while waiting for the
/// update's is how two InnoDB transactions deadlock); a crash between them
/// leaves the job queued, as received, for its redelivery to finish.
/// Evaluates to a future of whether the update moved the job.
macro_rules! update_or_insert {
    ($pool:expr, $sql:expr, $update:expr, $meta:expr, $now:expr) => {
        async {
            let pool = $pool;
            let update = &$update;
            let moved = retry_conflicts(|| update().execute(pool)).await?;
            if moved.rows_affected() == 1 {
                return Ok::<_, ConnectorError>(true);
            }
            retry_conflicts(|| insert_queued!($sql, $meta, 0, $now).execute(pool)).await?;
            let moved = retry_conflicts(|| update().execute(pool)).await?;
            Ok(moved.rows_affected() == 1)
        }
    };
}

/// The texts of `statuses` for `N` slots, the last one repeated.
fn status_slots<const N: usize>(statuses: &[JobStatus]) -> [&'static str; N] {
    let last = statuses.last().copied().unwrap_or(JobStatus::Queued);
    std::array::from_fn(|slot| statuses.get(slot).copied().unwrap_or(last).as_str())
}

/// The job store on PostgreSQL, MySQL/MariaDB or SQLite (see the module notes).
///
/// Every statement is atomic and the purge one transaction; status changes are
/// conditional updates, so they only move forward even with concurrent writers.
pub struct SqlJobStore {
    pool: Pool,
    sql: Statements,
    dialect: Dialect,
    runtime: Runtime,
    url: String,
    /// Seals transcripts (`MMT_ENCRYPTION_KEYS`); `None` stores them in clear.
    sealer: Option<Sealer>,
}

impl std::fmt::Debug for SqlJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlJobStore")
            .field("dialect", &self.dialect)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl SqlJobStore {
    /// Connects with `config` (already validated: see [`SqlJobStoreConfig::build`])
    /// and migrates the schema.
    pub fn connect(config: &SqlJobStoreConfig) -> Result<Self> {
        let dialect = config.dialect().ok_or_else(|| ConnectorError::Config {
            component: "SQL job store",
            problems: vec![ConfigProblem::new(
                "url",
                "must start with sqlite:, postgres:// or mysql://",
            )],
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ConnectorError::Runtime)?;
        let pool = match dialect {
            Dialect::Sqlite => Pool::Sqlite(runtime.block_on(connect_sqlite(config))?),
            Dialect::Postgres => Pool::Postgres(runtime.block_on(connect_postgres(config))?),
            Dialect::Mysql => Pool::Mysql(runtime.block_on(connect_mysql(config))?),
        };
        Ok(Self {
            pool,
            sql: Statements::for_dialect(dialect),
            dialect,
            runtime,
            url: config.redacted_url(),
            sealer: None,
        })
    }

    /// Seals transcripts with `sealer` from now on (`None`: in clear). Either
    /// way, sealed and clear transcripts already stored are read (sealed ones
    /// need the sealer's keyring).
    pub fn with_sealer(mut self, sealer: Option<Sealer>) -> Self {
        self.sealer = sealer;
        self
    }

    /// Re-seals every stored transcript that is not under the current key
    /// (sealed under an older key, or clear text from before encryption), in
    /// pages of `page` rows: the background half of a key rotation (`mmt keys
    /// reencrypt`). Each row is replaced only if it did not change meanwhile.
    /// A row that cannot be opened (a retired or unknown key, altered
    /// ciphertext) is left as it is and counted, by id, in the report.
    pub fn reseal_transcripts(&mut self, page: u32) -> Result<ResealReport> {
        let Some(sealer) = self.sealer.clone() else {
            return Err(ConnectorError::Config {
                component: "SQL job store",
                problems: vec![ConfigProblem::new(
                    "MMT_ENCRYPTION_KEYS",
                    "must name a keyring to re-encrypt transcripts",
                )],
            });
        };
        let current = sealer.current_key_id();
        let mut report = ResealReport::default();
        let mut after = String::new();
        loop {
            let rows: Vec<(String, String, String)> = on_pool!(&self.pool, |pool| {
                let rows = self.runtime.block_on(
                    sqlx::query(self.sql.transcripts_page.clone())
                        .bind(after.as_str())
                        .bind(i64::from(page.max(1)))
                        .fetch_all(pool),
                )?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.try_get("id")?,
                            row.try_get("tenant")?,
                            row.try_get("transcript_json")?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            let Some((last, _, _)) = rows.last() else {
                if report.resealed > 0 {
                    self.truncate_sqlite_wal()?;
                }
                return Ok(report);
            };
            after = last.clone();
            for (id, tenant, stored) in rows {
                report.examined += 1;
                let id = JobId(id);
                let sealed = match sealed_text_key_id(&stored) {
                    Ok(Some(key_id)) if key_id == current => continue,
                    Ok(_) => open_transcript_with(&sealer, &stored, &tenant, &id),
                    Err(err) => Err(err),
                };
                let resealed = sealed
                    .and_then(|text| sealer.seal_text(&text, &transcript_context(&tenant, &id.0)));
                let resealed = match resealed {
                    Ok(resealed) => resealed,
                    Err(err) => {
                        tracing::warn!(job_id = %id, error = %err, "transcript not re-encrypted");
                        report.failed.push(id);
                        continue;
                    }
                };
                let changed = on_pool!(&self.pool, |pool| {
                    self.runtime
                        .block_on(retry_conflicts(|| {
                            sqlx::query(self.sql.reseal.clone())
                                .bind(resealed.as_str())
                                .bind(id.0.as_str())
                                .bind(stored.as_str())
                                .execute(pool)
                        }))?
                        .rows_affected()
                });
                if changed > 0 {
                    report.resealed += 1;
                }
            }
        }
    }

    /// SQLite: copies the write-ahead log into the database and empties it,
    /// so that the page images it holds of rows since re-sealed (clear text
    /// from before encryption) do not outlive the re-encryption. Readers
    /// that hold old pages can keep part of it; the next checkpoint ends that.
    fn truncate_sqlite_wal(&mut self) -> Result<()> {
        if let Pool::Sqlite(pool) = &self.pool {
            self.runtime
                .block_on(sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool))?;
        }
        Ok(())
    }

    /// The engine this store runs on.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Checks that the database answers (`SELECT 1`).
    pub fn health_check(&mut self) -> Result<()> {
        on_pool!(&self.pool, |pool| {
            self.runtime
                .block_on(sqlx::query("SELECT 1").execute(pool))?;
        });
        Ok(())
    }

    /// The stored job, transcript included.
    pub fn get(&mut self, id: &JobId) -> Result<Option<JobRow>> {
        let query = self.sql.get.clone();
        on_pool!(&self.pool, |pool| {
            let row = self
                .runtime
                .block_on(sqlx::query(query).bind(id.0.as_str()).fetch_optional(pool))?;
            row.as_ref()
                .map(|row| decode_row(row, self.sealer.as_ref()))
                .transpose()
        })
    }

    /// Up to `limit` jobs, newest received first, optionally only those in `status`.
    pub fn list(&mut self, status: Option<JobStatus>, limit: u32) -> Result<Vec<JobRow>> {
        let sql = &self.sql;
        on_pool!(&self.pool, |pool| {
            let query = match status {
                Some(status) => sqlx::query(sql.list_by_status.clone()).bind(status.as_str()),
                None => sqlx::query(sql.list_all.clone()),
            };
            let rows = self
                .runtime
                .block_on(query.bind(i64::from(limit)).fetch_all(pool))?;
            rows.iter()
                .map(|row| decode_row(row, self.sealer.as_ref()))
                .collect()
        })
    }

    /// Records a newly received job as queued; `false` if it already existed.
    pub fn insert(&mut self, meta: &JobMeta) -> Result<bool> {
        let now = now();
        let sql = &self.sql;
        let inserted = on_pool!(&self.pool, |pool| {
            self.runtime
                .block_on(retry_conflicts(|| {
                    insert_queued!(sql, meta, 0, now).execute(pool)
                }))?
                .rows_affected()
        });
        Ok(inserted == 1)
    }

    /// Takes the job for processing (see [`JobStore::take`]): records it as
    /// queued if absent, then moves it to processing and counts the take in
    /// one conditional `UPDATE`, unless it is final or was taken `max_takes`
    /// (at least 1) times already. Each statement commits before any work
    /// starts, so a worker that dies while processing leaves its take counted.
    pub fn take_job(&mut self, meta: &JobMeta, max_takes: u32) -> Result<Take> {
        let now = now();
        let generation = new_generation();
        let max_takes = i64::from(max_takes.max(1));
        let sql = &self.sql;
        let id = meta.id.0.as_str();
        on_pool!(&self.pool, |pool| {
            self.runtime.block_on(async {
                let inserted =
                    retry_conflicts(|| insert_queued!(sql, meta, 0, now, generation).execute(pool))
                        .await?
                        .rows_affected()
                        == 1;
                let moved = retry_conflicts(|| {
                    sqlx::query(sql.take.clone())
                        .bind(now)
                        .bind(id)
                        .bind(max_takes)
                        .execute(pool)
                })
                .await?
                .rows_affected()
                    == 1;
                if inserted && moved {
                    return Ok(Take::Taken {
                        attempt: 1,
                        generation,
                    });
                }
                let Some(row) = sqlx::query(sql.take_state.clone())
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
                else {
                    // Deleted in between (an API deletion): nothing to process.
                    return Ok(Take::Finished { since: 0 });
                };
                let text: String = row.try_get("status")?;
                let status =
                    parse_status(&text).ok_or_else(|| unreadable(&meta.id, "status", &text))?;
                let attempts: i64 = row.try_get("attempts")?;
                let attempts = u32::try_from(attempts.max(0)).unwrap_or(u32::MAX);
                let generation: i64 = row.try_get("generation")?;
                Ok::<_, ConnectorError>(if moved {
                    Take::Taken {
                        attempt: attempts,
                        generation,
                    }
                } else if status.is_terminal() {
                    Take::Finished {
                        since: row.try_get("updated_at")?,
                    }
                } else {
                    Take::Exhausted {
                        attempts,
                        generation,
                    }
                })
            })
        })
    }

    /// Moves the job to `next` if that is a forward transition from where it
    /// stands (one conditional `UPDATE`); returns whether it moved.
    pub fn advance(&mut self, id: &JobId, next: JobStatus) -> Result<bool> {
        let from = predecessors(next);
        if from.is_empty() {
            return Ok(false);
        }
        let now = now();
        let sql = &self.sql;
        let from = from.as_slice();
        let moved = on_pool!(&self.pool, |pool| {
            let query = || {
                let query = sqlx::query(sql.transition.clone())
                    .bind(next.as_str())
                    .bind(i64::from(next == JobStatus::Processing))
                    .bind(now)
                    .bind((next == JobStatus::Completed).then_some(now))
                    .bind(id.0.as_str());
                bind_statuses!(query, from)
            };
            self.runtime
                .block_on(retry_conflicts(|| query().execute(pool)))?
                .rows_affected()
        });
        Ok(moved == 1)
    }

    /// Moves a dead-lettered job back to `failed` with no takes counted, so
    /// the next delivery of its audio takes it and runs it (the DLQ
    /// reprocessor's retry); returns whether it was dead-lettered. A job in
    /// any other state is left as it is.
    pub fn readmit(&mut self, id: &JobId) -> Result<bool> {
        let query = self.sql.readmit.clone();
        self.update_row(query, id)
    }

    /// Hands back the take of a job still processing (see
    /// [`JobStore::release`]); returns whether it moved.
    pub fn release_take(&mut self, id: &JobId) -> Result<bool> {
        let query = self.sql.release.clone();
        self.update_row(query, id)
    }

    /// Runs `query`, an `UPDATE jobs SET …, updated_at = ? WHERE id = ? …`
    /// of one job, with now and `id`; returns whether it moved the row.
    fn update_row(&mut self, query: SqlStr, id: &JobId) -> Result<bool> {
        let now = now();
        let moved = on_pool!(&self.pool, |pool| {
            self.runtime
                .block_on(retry_conflicts(|| {
                    sqlx::query(query.clone())
                        .bind(now)
                        .bind(id.0.as_str())
                        .execute(pool)
                }))?
                .rows_affected()
        });
        Ok(moved == 1)
    }

    /// The job's status, if stored.
    pub fn current_status(&mut self, id: &JobId) -> Result<Option<JobStatus>> {
        let query = self.sql.status.clone();
        let text: Option<String> = on_pool!(&self.pool, |pool| {
            let row = self
                .runtime
                .block_on(sqlx::query(query).bind(id.0.as_str()).fetch_optional(pool))?;
            row.map(|row| row.try_get("status")).transpose()?
        });
        text.map(|text| parse_status(&text).ok_or_else(|| unreadable(id, "status", &text)))
            .transpose()
    }

    /// Stores the transcript and marks the job completed; records the job first
    /// if it was never recorded. Idempotent: a job already completed (or
    /// dead-lettered, which is final) is left as it is. Returns whether it changed.
    pub fn complete_job(&mut self, job: &CompletedJob) -> Result<bool> {
        let transcript =
            serde_json::to_string(&job.transcript).map_err(|source| ConnectorError::Serialize {
                what: "transcript",
                source,
            })?;
        let transcript = match &self.sealer {
            Some(sealer) => sealer
                .seal_text(
                    &transcript,
                    &transcript_context(&job.meta.tenant, &job.meta.id.0),
                )
                .map_err(|source| ConnectorError::Crypt {
                    job_id: job.meta.id.0.clone(),
                    source,
                })?,
            None => transcript,
        };
        let transcript = transcript.as_str();
        let now = now();
        let from = predecessors(JobStatus::Completed);
        let from = from.as_slice();
        let sql = &self.sql;
        let changed = on_pool!(&self.pool, |pool| {
            let update = || {
                let query = sqlx::query(sql.complete.clone())
                    .bind(JobStatus::Completed.as_str())
                    .bind(transcript)
                    .bind(job.transcript.duration_seconds)
                    .bind(job.completed_at)
                    .bind(now)
                    .bind(job.meta.id.0.as_str());
                bind_statuses!(query, from)
            };
            self.runtime
                .block_on(update_or_insert!(pool, sql, update, &job.meta, now))?
        });
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
        let from = from.as_slice();
        let attempts = i64::from(letter.attempts);
        // What a dead letter knows of a job it never saw received.
        let meta = &letter.job_meta();
        let sql = &self.sql;
        let changed = on_pool!(&self.pool, |pool| {
            let update = || {
                let query = sqlx::query(sql.dead_letter.clone())
                    .bind(JobStatus::DeadLettered.as_str())
                    .bind(letter.stage.as_str())
                    .bind(class_to_text(letter.class))
                    .bind(letter.reason.as_str())
                    .bind(attempts)
                    .bind(attempts)
                    .bind(now)
                    .bind(letter.job_id.0.as_str());
                bind_statuses!(query, from)
            };
            self.runtime
                .block_on(update_or_insert!(pool, sql, update, meta, now))?
        });
        Ok(changed)
    }

    /// Ids of the jobs received before `cutoff` (unix seconds), oldest first;
    /// unless `dry_run`, deletes them (rows and transcripts, with their
    /// idempotency keys and callbacks) in the same transaction. Deletes by id, so exactly the ids returned are removed even
    /// if a late job with an old `received_at` arrives meanwhile.
    pub fn purge(&mut self, cutoff: i64, dry_run: bool) -> Result<Vec<DueJob>> {
        self.purge_where(cutoff, dry_run, None)
    }

    /// Removes those of `ids` that are due at `cutoff`, and returns them (see
    /// [`JobStore::purge_listed`]).
    pub fn purge_listed(&mut self, cutoff: i64, ids: &HashSet<JobId>) -> Result<Vec<DueJob>> {
        self.purge_where(cutoff, false, Some(ids))
    }

    /// The jobs due at `cutoff`, less those not in `only` when it is given;
    /// deleted (with their keys and callbacks) unless `dry_run`, in one
    /// transaction.
    fn purge_where(
        &mut self,
        cutoff: i64,
        dry_run: bool,
        only: Option<&HashSet<JobId>>,
    ) -> Result<Vec<DueJob>> {
        let sql = &self.sql;
        on_pool!(&self.pool, |pool| {
            self.runtime
                .block_on(retry_conflicts(|| async move {
                    let mut tx = pool.begin_with(sql.begin_write).await?;
                    let rows = sqlx::query(sql.purge_select.clone())
                        .bind(cutoff)
                        .fetch_all(&mut *tx)
                        .await?;
                    let due = rows
                        .iter()
                        .map(|row| {
                            Ok(DueJob {
                                id: JobId(row.try_get("id")?),
                                tenant: row.try_get("tenant")?,
                                generation: row.try_get("generation")?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()?;
                    let due: Vec<DueJob> = due
                        .into_iter()
                        .filter(|job| only.is_none_or(|only| only.contains(&job.id)))
                        .collect();
                    let ids: Vec<&str> = due.iter().map(|job| job.id.0.as_str()).collect();
                    if dry_run || ids.is_empty() {
                        tx.rollback().await?;
                    } else {
                        for chunk in ids.chunks(PURGE_CHUNK) {
                            // Keys, rows, callbacks: the order every transaction locks them in.
                            for delete in [
                                &sql.purge_delete_keys,
                                &sql.purge_delete,
                                &sql.purge_delete_callbacks,
                            ] {
                                let mut query = sqlx::query(delete.clone());
                                for slot in 0..PURGE_CHUNK {
                                    // Padded with the chunk's last id (chunks are never empty).
                                    let id = chunk.get(slot).or(chunk.last()).copied();
                                    query = query.bind(id);
                                }
                                query.execute(&mut *tx).await?;
                            }
                        }
                        tx.commit().await?;
                    }
                    Ok(due)
                }))
                .map_err(ConnectorError::from)
        })
    }

    /// Records an API submission, in one transaction: the idempotency key
    /// first, if given (used before by this tenant with the same request hash:
    /// `Existing` with the job the key names; with another hash: `KeyConflict`;
    /// nothing is written either way), then the job as queued with its
    /// priority (`Existing` if it was already recorded), then its callback, if
    /// a URL is given, due at once (kept as it is if the job has one already).
    /// Each is an insert if absent, and a key another caller inserted
    /// concurrently is read back, so any number of callers in any number of
    /// processes agree on one outcome per key.
    ///
    /// Refuses (as a caller's bug) a key over 255 or a request hash over 128
    /// characters, which MySQL's `INSERT IGNORE` would silently cut.
    pub fn submit(&mut self, submission: &NewSubmission<'_>) -> Result<SubmissionOutcome> {
        if let Some(record) = submission.idempotency {
            for (what, value, max) in [
                ("idempotency key", record.key, IDEM_KEY_MAX),
                ("request hash", record.request_hash, REQUEST_HASH_MAX),
            ] {
                if value.chars().count() > max {
                    return Err(ConnectorError::Database(sqlx::Error::InvalidArgument(
                        format!("{what} longer than {max} characters"),
                    )));
                }
            }
        }
        let now = now();
        let meta = submission.meta;
        let priority = i64::from(submission.priority.min(MAX_PRIORITY));
        let sql = &self.sql;
        on_pool!(&self.pool, |pool| {
            self.runtime
                .block_on(retry_conflicts(|| async move {
                    let mut tx = pool.begin_with(sql.begin_write).await?;
                    if let Some(record) = submission.idempotency {
                        let mut tries = 0;
                        loop {
                            let claimed = sqlx::query(sql.insert_key.clone())
                                .bind(meta.tenant.as_str())
                                .bind(record.key)
                                .bind(record.request_hash)
                                .bind(meta.id.0.as_str())
                                .bind(now)
                                .execute(&mut *tx)
                                .await?
                                .rows_affected()
                                == 1;
                            if claimed {
                                break;
                            }
                            // Used before, or by a concurrent caller that
                            // committed first: its row decides.
                            let used = sqlx::query(sql.get_key.clone())
                                .bind(meta.tenant.as_str())
                                .bind(record.key)
                                .fetch_optional(&mut *tx)
                                .await?;
                            if let Some(used) = used {
                                let hash: String = used.try_get("request_hash")?;
                                let outcome = if hash == record.request_hash {
                                    SubmissionOutcome::Existing {
                                        job_id: JobId(used.try_get("job_id")?),
                                    }
                                } else {
                                    SubmissionOutcome::KeyConflict
                                };
                                tx.rollback().await?;
                                return Ok(outcome);
                            }
                            // Deleted (with its job) between the insert and the read.
                            tries += 1;
                            if tries == KEY_TRIES {
                                return Err(sqlx::Error::Protocol(
                                    "idempotency key kept changing under a concurrent delete"
                                        .into(),
                                ));
                            }
                        }
                    }
                    let created = insert_queued!(sql, meta, priority, now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                    if let Some(url) = submission.callback_url {
                        sqlx::query(sql.insert_callback.clone())
                            .bind(meta.id.0.as_str())
                            .bind(url)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(if created {
                        SubmissionOutcome::Created
                    } else {
                        SubmissionOutcome::Existing {
                            job_id: meta.id.clone(),
                        }
                    })
                }))
                .map_err(ConnectorError::from)
        })
    }

    /// One page of a tenant's jobs, newest received first (`received_at`, then
    /// `id`, both descending), transcripts included. Pass the last row's
    /// `(received_at, id)` as `after` for the next page: keyset paging, so rows
    /// received meanwhile neither shift nor repeat the pages.
    pub fn page(&mut self, query: &PageQuery<'_>) -> Result<Vec<JobRow>> {
        let statuses = if query.statuses.is_empty() {
            &ALL_STATUSES[..]
        } else {
            query.statuses
        };
        let statuses = status_slots::<PAGE_STATUS_SLOTS>(statuses);
        let from = query.received_from.unwrap_or(i64::MIN);
        let before = query.received_before.unwrap_or(i64::MAX);
        // No cursor: before every row (a row received at i64::MAX is past any
        // `received_before` anyway).
        let (after_at, after_id) = query
            .after
            .map_or((i64::MAX, ""), |(at, id)| (at, id.0.as_str()));
        let sql = &self.sql;
        on_pool!(&self.pool, |pool| {
            let mut statement = sqlx::query(sql.page.clone()).bind(query.tenant);
            for status in statuses {
                statement = statement.bind(status);
            }
            let rows = self.runtime.block_on(
                statement
                    .bind(from)
                    .bind(before)
                    .bind(after_at)
                    .bind(after_at)
                    .bind(after_id)
                    .bind(i64::from(query.limit))
                    .fetch_all(pool),
            )?;
            rows.iter()
                .map(|row| decode_row(row, self.sealer.as_ref()))
                .collect()
        })
    }

    /// Deletes the job with its idempotency keys and callback, in one
    /// transaction; returns whether the job existed.
    pub fn delete(&mut self, id: &JobId) -> Result<bool> {
        let sql = &self.sql;
        let id = id.0.as_str();
        on_pool!(&self.pool, |pool| {
            self.runtime
                .block_on(retry_conflicts(|| async move {
                    let mut tx = pool.begin_with(sql.begin_write).await?;
                    // Keys, row, callback: the order every transaction locks them in.
                    sqlx::query(sql.delete_keys.clone())
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    let deleted = sqlx::query(sql.delete_job.clone())
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    sqlx::query(sql.delete_callback.clone())
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(deleted == 1)
                }))
                .map_err(ConnectorError::from)
        })
    }

    /// Number of jobs per status (keyed by [`JobStatus::as_str`]), of one
    /// tenant or of all (`None`). Statuses without jobs are absent.
    pub fn status_counts(&mut self, tenant: Option<&str>) -> Result<BTreeMap<&'static str, u64>> {
        let sql = &self.sql;
        let counts: Vec<(String, i64)> = on_pool!(&self.pool, |pool| {
            let query = match tenant {
                Some(tenant) => sqlx::query(sql.counts_by_tenant.clone()).bind(tenant),
                None => sqlx::query(sql.counts_all.clone()),
            };
            let rows = self.runtime.block_on(query.fetch_all(pool))?;
            rows.iter()
                .map(|row| Ok((row.try_get("status")?, row.try_get("n")?)))
                .collect::<Result<_, sqlx::Error>>()?
        });
        counts
            .into_iter()
            .map(|(text, count)| {
                let status = parse_status(&text).ok_or_else(|| ConnectorError::StoredValue {
                    job_id: "(any)".into(),
                    column: "status",
                    reason: format!("unknown value {text:?}"),
                })?;
                Ok((status.as_str(), u64::try_from(count).unwrap_or(0)))
            })
            .collect()
    }

    /// How many jobs completed at or after `since` (unix seconds), and their
    /// audio's total duration in seconds, of one tenant or of all (`None`).
    pub fn completed_since(&mut self, since: i64, tenant: Option<&str>) -> Result<(u64, f64)> {
        let sql = &self.sql;
        let completed = JobStatus::Completed.as_str();
        let (count, seconds): (i64, Option<f64>) = on_pool!(&self.pool, |pool| {
            let query = match tenant {
                Some(tenant) => sqlx::query(sql.completed_by_tenant.clone())
                    .bind(completed)
                    .bind(since)
                    .bind(tenant),
                None => sqlx::query(sql.completed_all.clone())
                    .bind(completed)
                    .bind(since),
            };
            let row = self.runtime.block_on(query.fetch_one(pool))?;
            (row.try_get("n")?, row.try_get("seconds")?)
        });
        Ok((u64::try_from(count).unwrap_or(0), seconds.unwrap_or(0.0)))
    }

    /// Callbacks to deliver now: of jobs final (completed or dead-lettered),
    /// neither delivered nor given up, due at or before `now`; the longest due
    /// first, at most `per_tenant` of each tenant and `limit` in all. Several
    /// deliverers polling at once may each get the same callback: delivery is
    /// at least once.
    pub fn due_callbacks(
        &mut self,
        now: i64,
        limit: u32,
        per_tenant: u32,
    ) -> Result<Vec<DueCallback>> {
        let sql = &self.sql;
        on_pool!(&self.pool, |pool| {
            let rows = self.runtime.block_on(
                sqlx::query(sql.due_callbacks.clone())
                    .bind(now)
                    .bind(JobStatus::Completed.as_str())
                    .bind(JobStatus::DeadLettered.as_str())
                    .bind(i64::from(per_tenant))
                    .bind(i64::from(limit))
                    .fetch_all(pool),
            )?;
            rows.iter()
                .map(|row| {
                    let attempts: i64 = row.try_get("callback_attempts")?;
                    Ok(DueCallback {
                        job: decode_row(row, self.sealer.as_ref())?,
                        url: row.try_get("callback_url")?,
                        attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
                    })
                })
                .collect()
        })
    }

    /// Marks the job's callback delivered at `at` (unix seconds); a callback
    /// already delivered keeps its first time.
    pub fn callback_delivered(&mut self, id: &JobId, at: i64) -> Result<()> {
        let query = self.sql.callback_delivered.clone();
        on_pool!(&self.pool, |pool| {
            self.runtime.block_on(retry_conflicts(|| {
                sqlx::query(query.clone())
                    .bind(at)
                    .bind(id.0.as_str())
                    .execute(pool)
            }))?;
        });
        Ok(())
    }

    /// Records a failed delivery of the job's callback: one more attempt and
    /// `error` (PHI-free text, cut to 1000 bytes); tried again at `retry_at`,
    /// or given up now if `None`. A callback already delivered or given up is
    /// left as it is.
    pub fn callback_failed(
        &mut self,
        id: &JobId,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<()> {
        let error = truncate(error, LAST_ERROR_MAX);
        let (query, at) = match retry_at {
            Some(at) => (self.sql.callback_retry.clone(), at),
            None => (self.sql.callback_give_up.clone(), now()),
        };
        on_pool!(&self.pool, |pool| {
            self.runtime.block_on(retry_conflicts(|| {
                sqlx::query(query.clone())
                    .bind(error)
                    .bind(at)
                    .bind(id.0.as_str())
                    .execute(pool)
            }))?;
        });
        Ok(())
    }
}

impl Drop for SqlJobStore {
    fn drop(&mut self) {
        // Close the pool cleanly (SQLite checkpoints its WAL; the servers see a
        // goodbye, not a dropped socket) unless dropped inside another runtime,
        // where blocking would panic; the connections close anyway.
        if tokio::runtime::Handle::try_current().is_err() {
            on_pool!(&self.pool, |pool| self.runtime.block_on(pool.close()));
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

    fn take(&mut self, meta: &JobMeta, max_takes: u32) -> Result<Take, ComponentError> {
        self.take_job(meta, max_takes).map_err(Into::into)
    }

    fn release(&mut self, id: &JobId) -> Result<bool, ComponentError> {
        self.release_take(id).map_err(Into::into)
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

    fn purge_before(&mut self, cutoff: i64, dry_run: bool) -> Result<Vec<DueJob>, ComponentError> {
        self.purge(cutoff, dry_run).map_err(Into::into)
    }

    fn purge_listed(
        &mut self,
        cutoff: i64,
        ids: &HashSet<JobId>,
    ) -> Result<Vec<DueJob>, ComponentError> {
        SqlJobStore::purge_listed(self, cutoff, ids).map_err(Into::into)
    }
}

/// Runs a write (a statement or a transaction), again (up to
/// [`TRANSACTION_TRIES`] times in all) while the server rolls it back to
/// resolve a deadlock or serialisation conflict: the rollback undid all of it,
/// so running it again is safe.
async fn retry_conflicts<T, F, Fut>(mut transaction: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 1;
    loop {
        match transaction().await {
            Err(error) if tries < TRANSACTION_TRIES && is_transaction_conflict(&error) => {
                tries += 1;
                tracing::debug!(tries, "transaction conflict; running it again");
            }
            result => return result,
        }
    }
}

/// SQLite: a file in WAL mode with full sync, or a shared in-memory database.
async fn connect_sqlite(config: &SqlJobStoreConfig) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(&config.url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a committed job survives power loss, not only a process crash.
        .synchronous(SqliteSynchronous::Full)
        // Deleted and overwritten content is zeroed, not left in free space:
        // a purged job, or a transcript re-sealed from clear text, leaves no
        // PHI behind in the file.
        .pragma("secure_delete", "ON")
        .busy_timeout(Duration::from_millis(config.busy_timeout_ms));
    let in_memory = config.url.contains(":memory:") || config.url.contains("mode=memory");
    if !in_memory {
        create_owner_only(options.get_filename())?;
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
    let pool = pool_options.connect_with(options).await?;
    SQLITE_MIGRATIONS.run(&pool).await?;
    Ok(pool)
}

/// PostgreSQL, with `lock_timeout` from the config's busy timeout.
async fn connect_postgres(config: &SqlJobStoreConfig) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(&config.driver_url())?
        .options([("lock_timeout", format!("{}ms", config.busy_timeout_ms))]);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .connect_with(options)
        .await?;
    POSTGRES_MIGRATIONS.run(&pool).await?;
    Ok(pool)
}

/// MySQL or MariaDB (utf8mb4, the driver's default), each session READ
/// COMMITTED with `innodb_lock_wait_timeout` from the config's busy timeout.
async fn connect_mysql(config: &SqlJobStoreConfig) -> Result<MySqlPool> {
    let options = MySqlConnectOptions::from_str(&config.driver_url())?;
    let lock_wait_seconds = config.busy_timeout_ms.div_ceil(1000).max(1);
    let session = format!(
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED; \
         SET SESSION innodb_lock_wait_timeout = {lock_wait_seconds}"
    );
    let pool = MySqlPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .after_connect(move |connection, _| {
            let session = AssertSqlSafe(session.clone());
            Box::pin(async move {
                sqlx::raw_sql(session).execute(connection).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    MYSQL_MIGRATIONS.run(&pool).await?;
    Ok(pool)
}

/// What a sealed transcript is bound to: its tenant and job. A sealed value
/// copied into another job's row does not open there.
fn transcript_context(tenant: &str, job_id: &str) -> Vec<u8> {
    [b"transcript\0", tenant.as_bytes(), b"\0", job_id.as_bytes()].concat()
}

/// A stored transcript's JSON text: opened when sealed, as it is when clear
/// text (stored before encryption was on).
fn open_transcript(
    stored: String,
    tenant: &str,
    id: &JobId,
    sealer: Option<&Sealer>,
) -> Result<String> {
    let crypt = |source| ConnectorError::Crypt {
        job_id: id.0.clone(),
        source,
    };
    match sealer {
        Some(sealer) => Ok(sealer
            .open_text(&stored, &transcript_context(tenant, &id.0))
            .map_err(crypt)?
            .into_text()),
        None => match sealed_text_key_id(&stored).map_err(crypt)? {
            None => Ok(stored),
            Some(key_id) => Err(crypt(mmt_core::crypt::CryptError::Keyring {
                reason: format!(
                    "the transcript is encrypted under key {key_id:?} and {} is not set",
                    mmt_core::crypt::KEYS_VARIABLE
                ),
            })),
        },
    }
}

/// A stored transcript's text, sealed or clear, opened with `sealer`.
fn open_transcript_with(
    sealer: &Sealer,
    stored: &str,
    tenant: &str,
    id: &JobId,
) -> std::result::Result<String, mmt_core::crypt::CryptError> {
    sealer
        .open_text(stored, &transcript_context(tenant, &id.0))
        .map(Opened::into_text)
}

/// A stored job from a row of `SELECT {COLUMNS}`, on any driver.
fn decode_row<R>(row: &R, sealer: Option<&Sealer>) -> Result<JobRow>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id = JobId(row.try_get("id")?);
    let status_text: String = row.try_get("status")?;
    let status =
        parse_status(&status_text).ok_or_else(|| unreadable(&id, "status", &status_text))?;
    let attempts: i64 = row.try_get("attempts")?;
    let priority: i64 = row.try_get("priority")?;
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
    let tenant: String = row.try_get("tenant")?;
    let transcript = row
        .try_get::<Option<String>, _>("transcript_json")?
        .map(|stored| open_transcript(stored, &tenant, &id, sealer))
        .transpose()?
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
            tenant,
            content_hash: row.try_get("content_hash")?,
            source: row.try_get("source")?,
            patient_reference: row.try_get("patient_reference")?,
            encounter_reference: row.try_get("encounter_reference")?,
            correlation_id: row.try_get("correlation_id")?,
            received_at: row.try_get("received_at")?,
            trace_parent: None,
            id,
        },
        status,
        priority: u8::try_from(priority.clamp(0, i64::from(MAX_PRIORITY))).unwrap_or(0),
        attempts: u32::try_from(attempts.max(0)).unwrap_or(u32::MAX),
        failure,
        transcript,
        audio_seconds: row.try_get("audio_seconds")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
        generation: row.try_get("generation")?,
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

/// The database holds PHI: its folder is made 0700 if missing, and the file
/// 0600 before SQLite opens it (SQLite would create it 0644, and gives its
/// `-wal` and `-shm` files the database file's mode). Files an older version
/// left with a wider mode are narrowed.
fn create_owner_only(file: &Path) -> Result<()> {
    if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        owner_only::create_dir_all(dir)
            .map_err(|source| ConnectorError::io("creating directory", dir, source))?;
    }
    owner_only::create_file(file).map_err(|source| ConnectorError::io("creating", file, source))?;
    for suffix in ["-wal", "-shm"] {
        let mut companion = file.as_os_str().to_owned();
        companion.push(suffix);
        let companion = Path::new(&companion);
        owner_only::restrict(companion).map_err(|source| {
            ConnectorError::io("restricting permissions of", companion, source)
        })?;
    }
    Ok(())
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A new row's generation: microseconds since the epoch. One job's rows are
/// created at least a deletion apart, so they never share one.
fn new_generation() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
