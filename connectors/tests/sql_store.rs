//! The SQLite job store on a temporary file: transitions, idempotency, purge.

mod common;

use common::{completed, letter, meta};
use mmt_connectors::{SqlJobStore, SqlJobStoreConfig};
use mmt_core::error::ErrorClass;
use mmt_core::job::{JobId, JobStatus, JobStore, Stage};

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
