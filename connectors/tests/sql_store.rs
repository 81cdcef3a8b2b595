//! The SQLite job store on a temporary file: transitions, idempotency, purge,
//! and the REST API's submissions, pages, deletes, counts and callbacks.

mod common;

use common::{completed, letter, meta};
use mmt_connectors::sql::{
    DueCallback, IdempotencyRecord, NewSubmission, PageQuery, SubmissionOutcome,
};
use mmt_connectors::{JobRow, SqlJobStore, SqlJobStoreConfig};
use mmt_core::error::ErrorClass;
use mmt_core::job::{unix_now, JobId, JobMeta, JobStatus, JobStore, Stage};
use sqlx::{AssertSqlSafe, Connection};
use std::collections::HashSet;

fn open(dir: &tempfile::TempDir) -> SqlJobStore {
    let url = format!("sqlite://{}", dir.path().join("db/jobs.db").display());
    SqlJobStoreConfig::new(url).build(false).expect("connect")
}

fn temp_store() -> (tempfile::TempDir, SqlJobStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Neither the folder nor the file exists yet: both are created.
    let store = open(&dir);
    (dir, store)
}

fn id(text: &str) -> JobId {
    JobId(text.to_owned())
}

#[test]
fn creates_the_file_in_wal_mode_and_answers_health_checks() {
    let (dir, mut store) = temp_store();
    store.health_check().expect("healthy");
    assert!(dir.path().join("db/jobs.db").exists());
    store.insert_queued(&meta("a1", 1)).expect("insert");
    // WAL mode keeps a -wal file beside the database while connections are open.
    assert!(dir.path().join("db/jobs.db-wal").exists());
    // The database holds PHI: owner-only, its WAL and shared memory too, and
    // the folder it made.
    use std::os::unix::fs::PermissionsExt;
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    };
    for file in ["db/jobs.db", "db/jobs.db-wal", "db/jobs.db-shm"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    assert_eq!(mode("db"), 0o700);
}

#[test]
fn an_existing_database_with_a_wide_mode_is_narrowed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    drop(
        SqlJobStoreConfig::new(format!("sqlite://{}", path.display()))
            .build(false)
            .expect("create"),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut store = SqlJobStoreConfig::new(format!("sqlite://{}", path.display()))
        .build(false)
        .expect("reopen");
    store.health_check().expect("healthy");
    let mode = std::fs::metadata(&path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn insert_is_idempotent() {
    let (_dir, mut store) = temp_store();
    assert!(store.insert_queued(&meta("a1", 100)).expect("insert"));
    assert!(!store.insert_queued(&meta("a1", 100)).expect("insert"));
    assert_eq!(
        store.status(&id("a1")).expect("status"),
        Some(JobStatus::Queued)
    );
    assert_eq!(store.status(&id("nope")).expect("status"), None);
}

#[test]
fn transitions_only_move_forward() {
    use JobStatus::*;
    let (_dir, mut store) = temp_store();
    store.insert_queued(&meta("a1", 100)).expect("insert");
    assert!(!store.transition(&id("a1"), Queued).expect("t"));
    assert!(store.transition(&id("a1"), Processing).expect("t"));
    assert!(!store.transition(&id("a1"), Processing).expect("t"));
    assert!(store.transition(&id("a1"), Failed).expect("t"));
    assert!(
        store.transition(&id("a1"), Processing).expect("t"),
        "a failed job is retried"
    );
    assert!(store.transition(&id("a1"), Completed).expect("t"));
    for next in [Queued, Processing, Failed, DeadLettered] {
        assert!(
            !store.transition(&id("a1"), next).expect("t"),
            "completed is final"
        );
    }
    assert_eq!(store.status(&id("a1")).expect("status"), Some(Completed));
    let row = store.get(&id("a1")).expect("get").expect("row");
    assert_eq!(row.attempts, 2, "two entries into processing");
    assert!(row.completed_at.is_some());
    // An unknown job does not move (and is not created).
    assert!(!store.transition(&id("ghost"), Processing).expect("t"));
    assert_eq!(store.status(&id("ghost")).expect("status"), None);
}

#[test]
fn every_pair_of_statuses_follows_can_become() {
    use JobStatus::*;
    let all = [Queued, Processing, Completed, Failed, DeadLettered];
    let (_dir, mut store) = temp_store();
    for (i, from) in all.into_iter().enumerate() {
        for (j, to) in all.into_iter().enumerate() {
            let job = format!("j{i}{j}");
            store.insert_queued(&meta(&job, 1)).expect("insert");
            // Bring the job to `from` along an allowed path.
            let path: &[JobStatus] = match from {
                Queued => &[],
                Processing => &[Processing],
                Completed => &[Completed],
                Failed => &[Failed],
                DeadLettered => &[DeadLettered],
            };
            for step in path {
                assert!(store.transition(&id(&job), *step).expect("t"));
            }
            let moved = store.transition(&id(&job), to).expect("t");
            assert_eq!(moved, from.can_become(to), "{from:?} -> {to:?}");
            let expected = if moved { to } else { from };
            assert_eq!(store.status(&id(&job)).expect("status"), Some(expected));
        }
    }
}

#[test]
fn complete_is_idempotent_and_keeps_the_transcript() {
    let (_dir, mut store) = temp_store();
    let job = completed("a1", 100);
    store.insert_queued(&job.meta).expect("insert");
    store
        .transition(&job.meta.id, JobStatus::Processing)
        .expect("t");
    store.complete(&job).expect("complete");
    store.complete(&job).expect("complete again");
    let row = store.get(&job.meta.id).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::Completed);
    assert_eq!(row.transcript.as_ref(), Some(&job.transcript));
    assert_eq!(row.audio_seconds, Some(4.5));
    assert_eq!(row.completed_at, Some(110));
    assert_eq!(row.meta, job.meta);
    assert!(row.failure.is_none());
}

#[test]
fn complete_records_a_job_never_inserted() {
    let (_dir, mut store) = temp_store();
    let job = completed("late", 100);
    store.complete(&job).expect("complete");
    let row = store.get(&job.meta.id).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::Completed);
    assert_eq!(row.meta, job.meta);
}

#[test]
fn dead_letter_is_idempotent_and_final() {
    let (_dir, mut store) = temp_store();
    store.insert_queued(&meta("a1", 100)).expect("insert");
    store
        .transition(&id("a1"), JobStatus::Processing)
        .expect("t");
    let letter = letter("a1", Stage::Inference, 3);
    store.dead_letter(&letter).expect("dead letter");
    store.dead_letter(&letter).expect("dead letter again");
    let row = store.get(&id("a1")).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::DeadLettered);
    assert_eq!(row.attempts, 3);
    let failure = row.failure.expect("failure");
    assert_eq!(failure.stage, Stage::Inference);
    assert_eq!(failure.class, ErrorClass::UserInput);
    assert_eq!(failure.reason, letter.reason);
    // A dead-lettered job cannot be completed afterwards.
    store.complete(&completed("a1", 100)).expect("ignored");
    let row = store.get(&id("a1")).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::DeadLettered);
    assert!(row.transcript.is_none());
    // And a completed job cannot be dead-lettered.
    store.complete(&completed("b2", 100)).expect("complete");
    store.dead_letter(&letter_for("b2")).expect("ignored");
    assert_eq!(
        store.status(&id("b2")).expect("s"),
        Some(JobStatus::Completed)
    );
}

#[test]
fn a_readmitted_dead_letter_is_taken_afresh_once() {
    use mmt_core::job::Take;
    let (_dir, mut store) = temp_store();
    let job = meta("r1", 100);
    let Take::Taken { generation, .. } = store.take(&job, 2).expect("take") else {
        panic!("a new job is taken");
    };
    store
        .dead_letter(&letter("r1", Stage::Decode, 2))
        .expect("dead letter");
    assert!(matches!(
        store.take(&job, 2).expect("take"),
        Take::Finished { .. }
    ));
    assert!(store.readmit(&id("r1")).expect("readmit"));
    assert!(
        !store.readmit(&id("r1")).expect("once"),
        "only from dead_lettered"
    );
    let row = store.get(&id("r1")).expect("get").expect("row");
    assert_eq!((row.status, row.attempts), (JobStatus::Failed, 0));
    assert!(row.failure.is_none());
    // Taken again, in the same generation: its commit is the one it never made.
    assert_eq!(
        store.take(&job, 2).expect("take"),
        Take::Taken {
            attempt: 1,
            generation
        }
    );
    store.complete(&completed("r1", 100)).expect("complete");
    assert!(!store.readmit(&id("r1")).expect("completed stays"));
    assert!(!store.readmit(&id("unknown")).expect("unknown"));
    assert_eq!(
        store.status(&id("r1")).expect("s"),
        Some(JobStatus::Completed)
    );
}

fn letter_for(job: &str) -> mmt_core::job::DeadLetter {
    letter(job, Stage::Sink, 1)
}

#[test]
fn dead_letter_records_a_job_that_never_decoded() {
    let (_dir, mut store) = temp_store();
    store
        .dead_letter(&letter("bad", Stage::Decode, 1))
        .expect("dead letter");
    let row = store.get(&id("bad")).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::DeadLettered);
    assert_eq!(row.meta.tenant, "clinic-a");
    assert_eq!(row.meta.patient_reference, None);
}

#[test]
fn purge_removes_old_jobs_unless_dry_run() {
    let (_dir, mut store) = temp_store();
    store.insert_queued(&meta("old1", 10)).expect("insert");
    store.complete(&completed("old2", 20)).expect("complete");
    store.insert_queued(&meta("new", 1_000)).expect("insert");
    let dry = store.purge_before(500, true).expect("dry run");
    assert_eq!(dry, [id("old1"), id("old2")]);
    assert_eq!(
        store.list(None, 10).expect("list").len(),
        3,
        "dry run deletes nothing"
    );
    let purged = store.purge_before(500, false).expect("purge");
    assert_eq!(purged, [id("old1"), id("old2")]);
    assert!(
        store.get(&id("old2")).expect("get").is_none(),
        "transcript gone with the row"
    );
    let left: Vec<_> = store
        .list(None, 10)
        .expect("list")
        .into_iter()
        .map(|r| r.meta.id)
        .collect();
    assert_eq!(left, [id("new")]);
    assert!(store.purge_before(500, false).expect("purge").is_empty());
}

#[test]
fn purge_listed_deletes_only_the_listed_jobs_that_are_due() {
    let (_dir, mut store) = temp_store();
    for (job, at) in [("purged", 10), ("came-due-later", 20), ("new", 1_000)] {
        store.insert_queued(&meta(job, at)).expect("insert");
    }
    // Retention purged the documents of "purged" only; "new" is listed by
    // mistake but is not due.
    let listed: HashSet<JobId> = [id("purged"), id("new")].into_iter().collect();
    let deleted = store.purge_listed(500, &listed).expect("purge");
    assert_eq!(deleted, [id("purged")]);
    let left: Vec<_> = store
        .list(None, 10)
        .expect("list")
        .into_iter()
        .map(|r| r.meta.id)
        .collect();
    assert_eq!(
        left,
        [id("new"), id("came-due-later")],
        "a due job whose documents were not purged keeps its row for the next run"
    );
}

#[test]
fn list_filters_by_status_newest_first() {
    let (_dir, mut store) = temp_store();
    for (job, at) in [("a", 1), ("b", 2), ("c", 3)] {
        store.insert_queued(&meta(job, at)).expect("insert");
    }
    store
        .transition(&id("b"), JobStatus::Processing)
        .expect("t");
    let all: Vec<_> = store
        .list(None, 10)
        .expect("list")
        .into_iter()
        .map(|r| r.meta.id.0)
        .collect();
    assert_eq!(all, ["c", "b", "a"]);
    let queued: Vec<_> = store
        .list(Some(JobStatus::Queued), 10)
        .expect("list")
        .into_iter()
        .map(|r| r.meta.id.0)
        .collect();
    assert_eq!(queued, ["c", "a"]);
    assert_eq!(store.list(None, 1).expect("list").len(), 1);
}

#[test]
fn data_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = completed("a1", 100);
    {
        let mut store = open(&dir);
        store.complete(&job).expect("complete");
    }
    // Reopening runs the (already applied) migrations again: a no-op.
    let mut store = open(&dir);
    let row = store.get(&job.meta.id).expect("get").expect("row");
    assert_eq!(row.transcript, Some(job.transcript));
}

#[test]
fn in_memory_database_works_for_tests() {
    let mut store = SqlJobStoreConfig::new("sqlite::memory:")
        .build(false)
        .expect("connect");
    store.insert_queued(&meta("a1", 1)).expect("insert");
    assert_eq!(
        store.status(&id("a1")).expect("status"),
        Some(JobStatus::Queued)
    );
}

#[test]
fn sqlite_is_refused_in_prod() {
    let error = SqlJobStoreConfig::new("sqlite::memory:")
        .build(true)
        .expect_err("refused");
    let component: mmt_core::job::ComponentError = error.into();
    assert_eq!(component.class, ErrorClass::Internal);
    assert!(component.message.contains("development only"));
}

#[test]
fn the_store_is_a_trait_object() {
    let (_dir, store) = temp_store();
    let mut boxed: Box<dyn JobStore> = Box::new(store);
    assert!(boxed.insert_queued(&meta("a1", 1)).expect("insert"));
}

// The REST API's calls: submissions, pages, deletes, counts and callbacks.

/// A job of `tenant` received at `at`.
fn tenant_meta(tenant: &str, job: &str, at: i64) -> JobMeta {
    JobMeta {
        tenant: tenant.to_owned(),
        ..meta(job, at)
    }
}

fn submission<'a>(
    meta: &'a JobMeta,
    key: Option<(&'a str, &'a str)>,
    callback_url: Option<&'a str>,
) -> NewSubmission<'a> {
    NewSubmission {
        meta,
        priority: 0,
        idempotency: key.map(|(key, request_hash)| IdempotencyRecord { key, request_hash }),
        callback_url,
    }
}

fn existing(job: &str) -> SubmissionOutcome {
    SubmissionOutcome::Existing { job_id: id(job) }
}

/// A page of every status and time.
fn page_all(
    store: &mut SqlJobStore,
    tenant: &str,
    after: Option<(i64, &JobId)>,
    limit: u32,
) -> Vec<JobRow> {
    store
        .page(&PageQuery {
            tenant,
            statuses: &[],
            received_from: None,
            received_before: None,
            after,
            limit,
        })
        .expect("page")
}

fn ids(rows: &[JobRow]) -> Vec<&str> {
    rows.iter().map(|row| row.meta.id.0.as_str()).collect()
}

/// Rows of `table` in the store's database, read beside the store.
fn rows_in(dir: &tempfile::TempDir, table: &str) -> i64 {
    let url = format!("sqlite://{}", dir.path().join("db/jobs.db").display());
    let sql = AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let mut conn = sqlx::SqliteConnection::connect(&url).await?;
            let count = sqlx::query_scalar(sql).fetch_one(&mut conn).await;
            conn.close().await?;
            count
        })
        .expect("count")
}

/// A callback's last error, read beside the store.
fn last_error(dir: &tempfile::TempDir, job: &str) -> Option<String> {
    let url = format!("sqlite://{}", dir.path().join("db/jobs.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let mut conn = sqlx::SqliteConnection::connect(&url).await?;
            let error = sqlx::query_scalar("SELECT last_error FROM job_callbacks WHERE job_id = ?")
                .bind(job)
                .fetch_one(&mut conn)
                .await;
            conn.close().await?;
            error
        })
        .expect("last error")
}

#[test]
fn submit_creates_once_and_keeps_the_priority() {
    let (_dir, mut store) = temp_store();
    let job = meta("a1", 100);
    let mut first = submission(&job, None, None);
    first.priority = 7;
    assert_eq!(
        store.submit(&first).expect("submit"),
        SubmissionOutcome::Created
    );
    // The same audio of the same tenant again: the same job, left as it was.
    let mut again = submission(&job, None, None);
    again.priority = 1;
    assert_eq!(store.submit(&again).expect("submit"), existing("a1"));
    let row = store.get(&id("a1")).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::Queued);
    assert_eq!(row.priority, 7);
    assert_eq!(row.meta, job);
    // A job the pipeline recorded itself has priority 0, and is Existing too.
    store.insert_queued(&meta("p1", 100)).expect("insert");
    assert_eq!(store.get(&id("p1")).expect("get").expect("row").priority, 0);
    assert_eq!(
        store
            .submit(&submission(&meta("p1", 100), None, None))
            .expect("submit"),
        existing("p1")
    );
    // Priorities above 9 are stored as 9.
    let high = meta("h1", 100);
    let mut loud = submission(&high, None, None);
    loud.priority = 200;
    assert_eq!(
        store.submit(&loud).expect("submit"),
        SubmissionOutcome::Created
    );
    assert_eq!(store.get(&id("h1")).expect("get").expect("row").priority, 9);
    assert_eq!(
        store.list(None, 10).expect("list").len(),
        3,
        "one row per job"
    );
}

#[test]
fn idempotency_keys_replay_or_conflict() {
    let (dir, mut store) = temp_store();
    let a1 = meta("a1", 100);
    assert_eq!(
        store
            .submit(&submission(&a1, Some(("key-1", "hash-1")), None))
            .expect("submit"),
        SubmissionOutcome::Created
    );
    // The same key and request: the job the key named, whatever the request says now.
    assert_eq!(
        store
            .submit(&submission(&a1, Some(("key-1", "hash-1")), None))
            .expect("submit"),
        existing("a1")
    );
    let b2 = meta("b2", 100);
    assert_eq!(
        store
            .submit(&submission(&b2, Some(("key-1", "hash-1")), None))
            .expect("submit"),
        existing("a1")
    );
    // The same key for another request: refused, and nothing is written.
    assert_eq!(
        store
            .submit(&submission(
                &b2,
                Some(("key-1", "hash-2")),
                Some("https://cb/b2")
            ))
            .expect("submit"),
        SubmissionOutcome::KeyConflict
    );
    assert!(store.get(&id("b2")).expect("get").is_none());
    assert_eq!(rows_in(&dir, "job_callbacks"), 0);
    assert_eq!(rows_in(&dir, "idempotency_keys"), 1);
    // Keys belong to their tenant: another tenant's key-1 is another key.
    let other = tenant_meta("clinic-b", "c3", 100);
    assert_eq!(
        store
            .submit(&submission(&other, Some(("key-1", "hash-9")), None))
            .expect("submit"),
        SubmissionOutcome::Created
    );
    // A new key for a job already recorded names that job from now on.
    assert_eq!(
        store
            .submit(&submission(&a1, Some(("key-2", "hash-3")), None))
            .expect("submit"),
        existing("a1")
    );
    assert_eq!(
        store
            .submit(&submission(&b2, Some(("key-2", "hash-3")), None))
            .expect("submit"),
        existing("a1")
    );
    assert_eq!(
        store
            .submit(&submission(&b2, Some(("key-2", "hash-4")), None))
            .expect("submit"),
        SubmissionOutcome::KeyConflict
    );
}

#[test]
fn oversized_keys_are_refused_not_cut() {
    let (dir, mut store) = temp_store();
    let job = meta("a1", 100);
    let long = "k".repeat(256);
    let error = store
        .submit(&submission(&job, Some((&long, "h")), None))
        .expect_err("too long");
    let component: mmt_core::job::ComponentError = error.into();
    assert_eq!(component.class, ErrorClass::Internal);
    assert!(!component.message.contains(&long), "{}", component.message);
    let hash = "h".repeat(129);
    assert!(store
        .submit(&submission(&job, Some(("k", &hash)), None))
        .is_err());
    assert_eq!(rows_in(&dir, "jobs"), 0, "nothing recorded");
    // The longest allowed, in characters (not bytes).
    let longest = "é".repeat(255);
    assert_eq!(
        store
            .submit(&submission(&job, Some((&longest, &"h".repeat(128))), None))
            .expect("submit"),
        SubmissionOutcome::Created
    );
}

#[test]
fn concurrent_submissions_agree_on_one_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(open(&dir));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let mut store = open(&dir);
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                (0..20)
                    .map(|n| {
                        let job = meta(&format!("j{n}"), 100);
                        // Two workers share a key; the other two use their own.
                        let key = if worker < 2 {
                            format!("shared-{n}")
                        } else {
                            format!("own-{n}-{worker}")
                        };
                        store
                            .submit(&submission(&job, Some((&key, "hash")), None))
                            .expect("submit")
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<Vec<SubmissionOutcome>> = workers
        .into_iter()
        .map(|worker| worker.join().expect("worker"))
        .collect();
    for n in 0..20 {
        let created = outcomes
            .iter()
            .filter(|of| of[n] == SubmissionOutcome::Created)
            .count();
        assert_eq!(created, 1, "j{n} created once");
        for of in &outcomes {
            assert!(
                of[n] == SubmissionOutcome::Created || of[n] == existing(&format!("j{n}")),
                "j{n}: {:?}",
                of[n]
            );
        }
    }
    assert_eq!(rows_in(&dir, "jobs"), 20);
    assert_eq!(rows_in(&dir, "idempotency_keys"), 20 * 3);
}

#[test]
fn pages_are_newest_first_and_filtered() {
    let (_dir, mut store) = temp_store();
    for (job, at) in [("a", 10), ("b", 20), ("c", 30), ("d", 40)] {
        store.insert_queued(&meta(job, at)).expect("insert");
    }
    store
        .insert_queued(&tenant_meta("clinic-b", "z", 25))
        .expect("insert");
    store
        .transition(&id("b"), JobStatus::Processing)
        .expect("t");
    store.complete(&completed("c", 30)).expect("complete");
    assert_eq!(
        ids(&page_all(&mut store, "clinic-a", None, 10)),
        ["d", "c", "b", "a"]
    );
    // Tenants see only their own jobs.
    assert_eq!(ids(&page_all(&mut store, "clinic-b", None, 10)), ["z"]);
    assert!(page_all(&mut store, "clinic-c", None, 10).is_empty());
    let mut query = PageQuery {
        tenant: "clinic-a",
        statuses: &[JobStatus::Queued, JobStatus::Completed],
        received_from: None,
        received_before: None,
        after: None,
        limit: 10,
    };
    assert_eq!(ids(&store.page(&query).expect("page")), ["d", "c", "a"]);
    query.statuses = &[JobStatus::Processing];
    assert_eq!(ids(&store.page(&query).expect("page")), ["b"]);
    query.statuses = &[JobStatus::DeadLettered];
    assert!(store.page(&query).expect("page").is_empty());
    // [from, before): from is in, before is out.
    query.statuses = &[];
    query.received_from = Some(20);
    query.received_before = Some(40);
    assert_eq!(ids(&store.page(&query).expect("page")), ["c", "b"]);
    query.received_before = None;
    assert_eq!(ids(&store.page(&query).expect("page")), ["d", "c", "b"]);
    query.received_from = None;
    query.received_before = Some(30);
    assert_eq!(ids(&store.page(&query).expect("page")), ["b", "a"]);
    query.limit = 0;
    assert!(store.page(&query).expect("page").is_empty());
    // The whole row comes back, transcript and priority included.
    let rows = page_all(&mut store, "clinic-a", None, 10);
    assert!(rows[1].transcript.is_some());
    assert_eq!(rows[1].priority, 0);
}

#[test]
fn cursor_pages_neither_skip_nor_repeat_rows() {
    let (_dir, mut store) = temp_store();
    // Runs of equal received_at, split across pages by the page size.
    let mut expected = Vec::new();
    for n in 0..23 {
        let at = 100 + (n / 5) as i64;
        let job = format!("j{n:02}");
        store.insert_queued(&meta(&job, at)).expect("insert");
        expected.push((at, job));
    }
    store
        .insert_queued(&tenant_meta("clinic-b", "j99", 101))
        .expect("insert");
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<&str> = expected.iter().map(|(_, job)| job.as_str()).collect();
    for limit in [1, 2, 3, 4, 5, 7, 23, 50] {
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<(i64, JobId)> = None;
        loop {
            let after = cursor.as_ref().map(|(at, job)| (*at, job));
            let page = page_all(&mut store, "clinic-a", after, limit);
            assert!(page.len() <= limit as usize);
            seen.extend(page.iter().map(|row| row.meta.id.0.clone()));
            match page.last() {
                Some(last) if page.len() == limit as usize => {
                    cursor = Some((last.meta.received_at, last.meta.id.clone()));
                }
                _ => break,
            }
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    // A cursor with filters: only what follows it and matches.
    let query = PageQuery {
        tenant: "clinic-a",
        statuses: &[JobStatus::Queued],
        received_from: Some(101),
        received_before: Some(103),
        after: Some((102, &id("j12"))),
        limit: 100,
    };
    assert_eq!(
        ids(&store.page(&query).expect("page")),
        ["j11", "j10", "j09", "j08", "j07", "j06", "j05"]
    );
}

#[test]
fn delete_removes_the_job_its_keys_and_its_callback() {
    let (dir, mut store) = temp_store();
    let a1 = meta("a1", 100);
    store
        .submit(&submission(
            &a1,
            Some(("key-1", "h")),
            Some("https://cb/a1"),
        ))
        .expect("submit");
    store
        .submit(&submission(&a1, Some(("key-2", "h")), None))
        .expect("submit");
    let keep = meta("k1", 100);
    store
        .submit(&submission(
            &keep,
            Some(("key-3", "h")),
            Some("https://cb/k1"),
        ))
        .expect("submit");
    assert_eq!(rows_in(&dir, "idempotency_keys"), 3);
    assert_eq!(rows_in(&dir, "job_callbacks"), 2);
    assert!(store.delete(&id("a1")).expect("delete"));
    assert!(store.get(&id("a1")).expect("get").is_none());
    assert_eq!(rows_in(&dir, "idempotency_keys"), 1);
    assert_eq!(rows_in(&dir, "job_callbacks"), 1);
    assert!(!store.delete(&id("a1")).expect("delete again"));
    assert!(!store.delete(&id("never")).expect("delete unknown"));
    // The keys are free again: the same key now records a new job.
    assert_eq!(
        store
            .submit(&submission(
                &meta("b2", 100),
                Some(("key-1", "other")),
                None
            ))
            .expect("submit"),
        SubmissionOutcome::Created
    );
    // The other job is untouched.
    assert!(store.get(&id("k1")).expect("get").is_some());
    assert_eq!(
        store
            .submit(&submission(&keep, Some(("key-3", "h")), None))
            .expect("submit"),
        existing("k1")
    );
}

#[test]
fn counts_by_status_and_completed_audio() {
    let (_dir, mut store) = temp_store();
    store.insert_queued(&meta("q1", 100)).expect("insert");
    store.insert_queued(&meta("q2", 100)).expect("insert");
    store.insert_queued(&meta("p1", 100)).expect("insert");
    store
        .transition(&id("p1"), JobStatus::Processing)
        .expect("t");
    // completed_at = received_at + 10: 110, 210 and (clinic-b) 310.
    store.complete(&completed("c1", 100)).expect("complete");
    store.complete(&completed("c2", 200)).expect("complete");
    let mut other = completed("c3", 300);
    other.meta.tenant = "clinic-b".into();
    store.complete(&other).expect("complete");
    store
        .dead_letter(&letter("d1", Stage::Decode, 1))
        .expect("dead letter");
    let counts = store.status_counts(Some("clinic-a")).expect("counts");
    assert_eq!(counts.get("queued"), Some(&2));
    assert_eq!(counts.get("processing"), Some(&1));
    assert_eq!(counts.get("completed"), Some(&2));
    assert_eq!(counts.get("dead_lettered"), Some(&1));
    assert_eq!(counts.get("failed").copied().unwrap_or(0), 0);
    let all = store.status_counts(None).expect("counts");
    assert_eq!(all.get("completed"), Some(&3));
    assert_eq!(all.values().sum::<u64>(), 7);
    assert!(store
        .status_counts(Some("nobody"))
        .expect("counts")
        .values()
        .all(|n| *n == 0));
    assert_eq!(
        store.completed_since(0, Some("clinic-a")).expect("since"),
        (2, 9.0)
    );
    assert_eq!(
        store.completed_since(210, Some("clinic-a")).expect("since"),
        (1, 4.5)
    );
    assert_eq!(
        store.completed_since(211, Some("clinic-a")).expect("since"),
        (0, 0.0)
    );
    assert_eq!(store.completed_since(0, None).expect("since"), (3, 13.5));
    assert_eq!(store.completed_since(300, None).expect("since"), (1, 4.5));
}

#[test]
fn callbacks_are_due_once_the_job_is_final() {
    let (dir, mut store) = temp_store();
    let now = unix_now();
    for job in ["done", "dead", "busy", "failed", "quiet"] {
        let meta = meta(job, 100);
        let url = format!("https://hooks.example/{job}?token=t");
        let callback = (job != "quiet").then_some(url.as_str());
        store
            .submit(&submission(&meta, None, callback))
            .expect("submit");
    }
    // Nothing is final yet.
    assert!(store
        .due_callbacks(now + 60, 10, 10)
        .expect("due")
        .is_empty());
    store.complete(&completed("done", 100)).expect("complete");
    store
        .dead_letter(&letter("dead", Stage::Inference, 2))
        .expect("dead letter");
    store
        .transition(&id("busy"), JobStatus::Processing)
        .expect("t");
    store
        .transition(&id("failed"), JobStatus::Failed)
        .expect("t");
    store.complete(&completed("quiet", 100)).expect("complete");
    // Due from the submission on, not before.
    assert!(store
        .due_callbacks(now - 60, 10, 10)
        .expect("due")
        .is_empty());
    let due = store.due_callbacks(now + 60, 10, 10).expect("due");
    let mut jobs: Vec<_> = due.iter().map(|d| d.job.meta.id.0.as_str()).collect();
    jobs.sort_unstable();
    assert_eq!(jobs, ["dead", "done"]);
    let done = due
        .iter()
        .find(|d| d.job.meta.id == id("done"))
        .expect("done");
    assert_eq!(done.url, "https://hooks.example/done?token=t");
    assert_eq!(done.attempts, 0);
    assert_eq!(done.job.status, JobStatus::Completed);
    assert!(done.job.transcript.is_some());
    assert!(
        !format!("{done:?}").contains("token"),
        "Debug hides the URL"
    );
    assert_eq!(store.due_callbacks(now + 60, 1, 1).expect("due").len(), 1);
    // A failed delivery is tried again at the time given, not before.
    store
        .callback_failed(&id("done"), "HTTP 503", Some(now + 300))
        .expect("failed");
    assert_eq!(last_error(&dir, "done").as_deref(), Some("HTTP 503"));
    assert_eq!(
        ids_of(&store.due_callbacks(now + 60, 10, 10).expect("due")),
        ["dead"]
    );
    let later = store.due_callbacks(now + 300, 10, 10).expect("due");
    // Oldest due first: "dead" has been due since the submission.
    assert_eq!(ids_of(&later), ["dead", "done"]);
    assert_eq!(later[1].attempts, 1);
    // Delivered: never due again, and later failures of it change nothing.
    store
        .callback_delivered(&id("done"), now + 301)
        .expect("delivered");
    store
        .callback_failed(&id("done"), "late", None)
        .expect("failed");
    assert_eq!(last_error(&dir, "done").as_deref(), Some("HTTP 503"));
    // Given up: never due again either.
    let long = "é".repeat(2_000);
    store
        .callback_failed(&id("dead"), &long, None)
        .expect("give up");
    assert!(store
        .due_callbacks(i64::MAX, 10, 10)
        .expect("due")
        .is_empty());
    let stored = last_error(&dir, "dead").expect("error");
    assert!(stored.len() <= 1_000 && stored.chars().all(|c| c == 'é'));
    // Unknown jobs are no error.
    store
        .callback_delivered(&id("ghost"), now)
        .expect("delivered");
    store
        .callback_failed(&id("ghost"), "x", Some(now))
        .expect("failed");
}

#[test]
fn due_callbacks_are_bounded_per_tenant() {
    let (_dir, mut store) = temp_store();
    for (job, tenant) in [
        ("a1", "clinic-a"),
        ("a2", "clinic-a"),
        ("a3", "clinic-a"),
        ("b1", "clinic-b"),
    ] {
        let meta = tenant_meta(tenant, job, 100);
        store
            .submit(&submission(&meta, None, Some("https://hooks.example/x")))
            .expect("submit");
        store.complete(&completed(job, 100)).expect("complete");
    }
    let now = unix_now() + 60;
    assert_eq!(
        ids_of(&store.due_callbacks(now, 10, 10).expect("due")),
        ["a1", "a2", "a3", "b1"]
    );
    // Tenant a's backlog takes at most its share; b is on the page.
    assert_eq!(
        ids_of(&store.due_callbacks(now, 10, 2).expect("due")),
        ["a1", "a2", "b1"]
    );
    assert_eq!(
        ids_of(&store.due_callbacks(now, 2, 1).expect("due")),
        ["a1", "b1"]
    );
}

fn ids_of(due: &[DueCallback]) -> Vec<&str> {
    due.iter().map(|d| d.job.meta.id.0.as_str()).collect()
}

#[test]
fn purge_removes_keys_and_callbacks_too() {
    let (dir, mut store) = temp_store();
    for (job, at) in [("old1", 10), ("old2", 20), ("new", 1_000)] {
        let key = format!("key-{job}");
        store
            .submit(&submission(
                &meta(job, at),
                Some((&key, "h")),
                Some("https://cb/x"),
            ))
            .expect("submit");
    }
    assert_eq!(rows_in(&dir, "idempotency_keys"), 3);
    assert_eq!(rows_in(&dir, "job_callbacks"), 3);
    store.purge_before(500, true).expect("dry run");
    assert_eq!(rows_in(&dir, "idempotency_keys"), 3, "dry run keeps them");
    assert_eq!(rows_in(&dir, "job_callbacks"), 3);
    let purged = store.purge_before(500, false).expect("purge");
    assert_eq!(purged, [id("old1"), id("old2")]);
    assert_eq!(rows_in(&dir, "idempotency_keys"), 1);
    assert_eq!(rows_in(&dir, "job_callbacks"), 1);
    assert_eq!(rows_in(&dir, "jobs"), 1);
    // The purged keys are free; the kept one still names its job.
    assert_eq!(
        store
            .submit(&submission(
                &meta("x1", 2_000),
                Some(("key-old1", "other")),
                None
            ))
            .expect("submit"),
        SubmissionOutcome::Created
    );
    assert_eq!(
        store
            .submit(&submission(
                &meta("x2", 2_000),
                Some(("key-new", "h")),
                None
            ))
            .expect("submit"),
        existing("new")
    );
}

#[test]
fn takes_are_counted_durably_and_bounded() {
    use mmt_core::job::Take;
    let (dir, mut store) = temp_store();
    let job = meta("t1", 100);
    let mut generations = std::collections::HashSet::new();
    for expected in 1..=3 {
        let Take::Taken {
            attempt,
            generation,
        } = store.take(&job, 3).expect("take")
        else {
            panic!("take {expected} refused");
        };
        assert_eq!(attempt, expected);
        generations.insert(generation);
    }
    assert_eq!(generations.len(), 1, "one record, one generation");
    // Counted in the file before any work: another process sees every take.
    drop(store);
    let mut store = open(&dir);
    let taken = store.take(&job, 3).expect("take");
    let Take::Exhausted {
        attempts,
        generation,
    } = taken
    else {
        panic!("a fourth take must be refused: {taken:?}");
    };
    assert_eq!(attempts, 3);
    assert!(generations.contains(&generation));
    let row = store.get(&id("t1")).expect("get").expect("row");
    assert_eq!((row.status, row.attempts), (JobStatus::Processing, 3));
    // Dead-lettered, it is finished for good.
    store
        .dead_letter(&letter("t1", Stage::Dedupe, attempts))
        .expect("dead letter");
    assert!(matches!(
        store.take(&job, 3).expect("take"),
        Take::Finished { since } if since > 0
    ));
    assert_eq!(store.get(&id("t1")).expect("get").expect("row").attempts, 3);
}

#[test]
fn a_deleted_job_is_taken_again_as_a_new_generation() {
    use mmt_core::job::Take;
    let (_dir, mut store) = temp_store();
    // Submitted through the API (queued, attempts 0), then taken.
    assert_eq!(
        store
            .submit(&submission(&meta("g1", 100), None, None))
            .expect("submit"),
        SubmissionOutcome::Created
    );
    let stored = store.get(&id("g1")).expect("get").expect("row").generation;
    let first = store.take(&meta("g1", 100), 5).expect("take");
    assert_eq!(
        first,
        Take::Taken {
            attempt: 1,
            generation: stored
        }
    );
    store.complete(&completed("g1", 100)).expect("complete");
    assert!(matches!(
        store.take(&meta("g1", 100), 5).expect("take"),
        Take::Finished { since } if since > 0
    ));
    assert!(store.delete(&id("g1")).expect("delete"));
    let Take::Taken {
        attempt,
        generation,
    } = store.take(&meta("g1", 200), 5).expect("take")
    else {
        panic!("a deleted job is new again");
    };
    assert_eq!(attempt, 1, "a new record counts its takes from 1");
    assert_ne!(generation, stored, "and is another generation");
}
