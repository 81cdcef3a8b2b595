//! The job store on the real PostgreSQL and MariaDB/MySQL servers (and SQLite,
//! for the tests run on every store), each test in a scratch schema or
//! database of its own (`common/sql.rs`).

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::sql::{runtime, Scratch};
use common::{completed, letter, meta, require_service};
use mmt_connectors::sql::{
    Dialect, IdempotencyRecord, NewSubmission, PageQuery, SubmissionOutcome,
};
use mmt_connectors::SqlJobStoreConfig;
use mmt_core::error::ErrorClass;
use mmt_core::job::{unix_now, CompletedJob, JobId, JobMeta, JobStatus, JobStore, Stage};
use mmt_core::{Segment, Transcript};
use sqlx::Connection;

fn id(text: &str) -> JobId {
    JobId(text.to_owned())
}

/// A 32-hex job id, as the pipeline derives them.
fn hex_id(n: usize) -> String {
    format!("{n:032x}")
}

common::sql::on_servers!(
    migrations_run_twice_are_a_no_op,
    insert_is_idempotent_and_unknown_ids_have_no_status,
    transitions_only_move_forward,
    every_pair_of_statuses_follows_can_become,
    complete_stores_the_transcript,
    large_transcripts_fit,
    dead_letter_keeps_reason_stage_and_class,
    purge_removes_old_jobs_unless_dry_run,
    purge_deletes_in_chunks,
    list_filters_by_status_newest_first,
    racing_stores_agree_on_one_terminal_state,
    lock_contention_fails_retryably,
    api_submit_page_delete_and_callbacks,
    racing_submissions_agree_on_one_job,
    takes_are_counted_and_bounded,
    due_callbacks_are_bounded_per_tenant,
    a_released_take_is_no_longer_counted,
);

// And on SQLite, the embedded default.
common::sql::tests_on!(sqlite, Sqlite, [a_released_take_is_no_longer_counted]);

/// A graceful stop hands its takes back: the job is queued again with its
/// count as before the take, so stops never exhaust it; only a job still
/// processing moves.
fn a_released_take_is_no_longer_counted(scratch: &Scratch) {
    use mmt_core::job::Take;
    let job = hex_id(22);
    let mut store = scratch.store();
    assert!(
        !store.release(&id(&job)).expect("release"),
        "an unknown job has no take to hand back"
    );
    for _ in 0..5 {
        let taken = store.take(&meta(&job, 100), 2).expect("take");
        assert!(matches!(taken, Take::Taken { attempt: 1, .. }), "{taken:?}");
        assert!(store.release(&id(&job)).expect("release"));
        let row = store.get(&id(&job)).expect("get").expect("row");
        assert_eq!((row.status, row.attempts), (JobStatus::Queued, 0));
        assert!(
            !store.release(&id(&job)).expect("release"),
            "a queued job has no take to hand back"
        );
    }
    // A crash after a take leaves it counted; a finished job stays finished.
    assert!(matches!(
        store.take(&meta(&job, 100), 2).expect("take"),
        Take::Taken { attempt: 1, .. }
    ));
    store.complete(&completed(&job, 100)).expect("complete");
    assert!(!store.release(&id(&job)).expect("release"));
    let row = store.get(&id(&job)).expect("get").expect("row");
    assert_eq!((row.status, row.attempts), (JobStatus::Completed, 1));
}

fn takes_are_counted_and_bounded(scratch: &Scratch) {
    use mmt_core::job::Take;
    let job = hex_id(21);
    let mut generation = None;
    for expected in 1..=2 {
        // A new connection each time, as a restarted worker would have.
        let taken = scratch.store().take(&meta(&job, 100), 2).expect("take");
        let Take::Taken {
            attempt,
            generation: current,
        } = taken
        else {
            panic!("take {expected} refused: {taken:?}");
        };
        assert_eq!(attempt, expected);
        assert_eq!(*generation.get_or_insert(current), current);
    }
    let mut store = scratch.store();
    assert_eq!(
        store.take(&meta(&job, 100), 2).expect("take"),
        Take::Exhausted {
            attempts: 2,
            generation: generation.expect("taken"),
        }
    );
    let row = store.get(&id(&job)).expect("get").expect("row");
    assert_eq!((row.status, row.attempts), (JobStatus::Processing, 2));
    store.complete(&completed(&job, 100)).expect("complete");
    assert!(matches!(
        store.take(&meta(&job, 100), 2).expect("take"),
        Take::Finished { since } if since > 0
    ));
    assert!(store.delete(&id(&job)).expect("delete"));
    let taken = store.take(&meta(&job, 100), 2).expect("take");
    assert!(
        matches!(taken, Take::Taken { attempt: 1, generation: g } if Some(g) != generation),
        "deleted, the job is a new generation: {taken:?}"
    );
}

fn migrations_run_twice_are_a_no_op(scratch: &Scratch) {
    let mut first = scratch.store();
    assert_eq!(first.dialect(), scratch.dialect);
    first.health_check().expect("healthy");
    assert!(first.insert_queued(&meta(&hex_id(1), 100)).expect("insert"));
    // A second store (a second replica starting) runs the migrations again: a
    // no-op that keeps the data. `mariadb://` and `postgresql://` work as well.
    let url = match scratch.dialect {
        Dialect::Postgres => scratch.url.replacen("postgres://", "postgresql://", 1),
        _ => scratch.url.replacen("mysql://", "mariadb://", 1),
    };
    let mut second = SqlJobStoreConfig::new(url).build(true).expect("reconnect");
    second.health_check().expect("healthy");
    assert_eq!(
        second.status(&id(&hex_id(1))).expect("status"),
        Some(JobStatus::Queued)
    );
    let mut third = scratch.store();
    assert!(!third.insert_queued(&meta(&hex_id(1), 100)).expect("insert"));
    let indexes = scratch.job_indexes();
    for index in ["jobs_received_at", "jobs_status", "jobs_tenant_received"] {
        assert!(
            indexes.iter().any(|name| name == index),
            "{index} in {indexes:?}"
        );
    }
}

fn insert_is_idempotent_and_unknown_ids_have_no_status(scratch: &Scratch) {
    let mut store = scratch.store();
    let job = hex_id(7);
    assert!(store.insert_queued(&meta(&job, 100)).expect("insert"));
    assert!(!store.insert_queued(&meta(&job, 100)).expect("insert"));
    // A redelivery that differs in anything but the id is still the same job.
    assert!(!store.insert_queued(&meta(&job, 999)).expect("insert"));
    assert_eq!(
        store.status(&id(&job)).expect("status"),
        Some(JobStatus::Queued)
    );
    let row = store.get(&id(&job)).expect("get").expect("row");
    assert_eq!(row.meta, meta(&job, 100));
    assert_eq!(row.attempts, 0);
    assert_eq!(store.status(&id(&hex_id(8))).expect("status"), None);
    assert!(store.get(&id(&hex_id(8))).expect("get").is_none());
    // Ids compare exactly, as on SQLite: an upper-case id is another job.
    let upper = "ABCDEF".repeat(5) + "AB";
    let lower = upper.to_lowercase();
    assert!(store.insert_queued(&meta(&lower, 1)).expect("insert"));
    assert!(store.insert_queued(&meta(&upper, 1)).expect("insert"));
}

fn transitions_only_move_forward(scratch: &Scratch) {
    use JobStatus::*;
    let mut store = scratch.store();
    let job = id(&hex_id(1));
    store.insert_queued(&meta(&job.0, 100)).expect("insert");
    assert!(!store.transition(&job, Queued).expect("t"));
    assert!(store.transition(&job, Processing).expect("t"));
    assert!(!store.transition(&job, Processing).expect("t"));
    assert!(store.transition(&job, Failed).expect("t"));
    assert!(
        store.transition(&job, Processing).expect("t"),
        "a failed job is retried"
    );
    assert!(store.transition(&job, Completed).expect("t"));
    for next in [Queued, Processing, Failed, DeadLettered] {
        assert!(
            !store.transition(&job, next).expect("t"),
            "completed is final"
        );
    }
    assert_eq!(store.status(&job).expect("status"), Some(Completed));
    let row = store.get(&job).expect("get").expect("row");
    assert_eq!(row.attempts, 2, "two entries into processing");
    assert!(row.completed_at.is_some());
    // A completed job never goes back to processing, even through complete().
    store.complete(&completed(&job.0, 100)).expect("complete");
    assert!(!store.transition(&job, Processing).expect("t"));
    assert_eq!(store.status(&job).expect("status"), Some(Completed));
    // An unknown job does not move (and is not created).
    let ghost = id(&hex_id(99));
    assert!(!store.transition(&ghost, Processing).expect("t"));
    assert_eq!(store.status(&ghost).expect("status"), None);
}

fn every_pair_of_statuses_follows_can_become(scratch: &Scratch) {
    use JobStatus::*;
    let all = [Queued, Processing, Completed, Failed, DeadLettered];
    let mut store = scratch.store();
    for (i, from) in all.into_iter().enumerate() {
        for (j, to) in all.into_iter().enumerate() {
            let job = id(&hex_id(i * 10 + j));
            store.insert_queued(&meta(&job.0, 1)).expect("insert");
            if from != Queued {
                assert!(store.transition(&job, from).expect("t"));
            }
            let moved = store.transition(&job, to).expect("t");
            assert_eq!(moved, from.can_become(to), "{from:?} -> {to:?}");
            let expected = if moved { to } else { from };
            assert_eq!(store.status(&job).expect("status"), Some(expected));
        }
    }
}

fn complete_stores_the_transcript(scratch: &Scratch) {
    let mut store = scratch.store();
    let job = completed(&hex_id(1), 100);
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
    assert_eq!(row.attempts, 1);
    assert!(row.failure.is_none());
    // A job completed without ever being recorded is recorded whole.
    let late = completed(&hex_id(2), 200);
    store.complete(&late).expect("complete");
    let row = store.get(&late.meta.id).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::Completed);
    assert_eq!(row.meta, late.meta);
    assert_eq!(row.transcript, Some(late.transcript));
}

fn large_transcripts_fit(scratch: &Scratch) {
    // An hour of dictation: far beyond MySQL's TEXT (64 KiB).
    let segments: Vec<Segment> = (0..2_000)
        .map(|n| Segment {
            id: n,
            // Halves: exact in JSON (serde_json's float parsing may be off by an ulp).
            start: n as f64 * 1.5,
            end: n as f64 * 1.5 + 1.5,
            text: format!("Segment {n}: the patient reports no change since the last visit."),
            avg_logprob: -0.25,
            no_speech_prob: 0.01,
            temperature: 0.0,
            confidence: 0.75,
        })
        .collect();
    let job = CompletedJob {
        meta: meta(&hex_id(1), 100),
        transcript: Transcript::from_segments(segments, 3_600.0, "en"),
        completed_at: 110,
    };
    assert!(serde_json::to_string(&job.transcript).expect("json").len() > 256 * 1024);
    let mut store = scratch.store();
    store.complete(&job).expect("complete");
    let row = store.get(&job.meta.id).expect("get").expect("row");
    // Not assert_eq!: a failure would print the whole transcript.
    let stored = row.transcript.expect("transcript");
    assert_eq!(stored.text.len(), job.transcript.text.len());
    assert!(
        stored == job.transcript,
        "the transcript changed on its way"
    );
}

fn dead_letter_keeps_reason_stage_and_class(scratch: &Scratch) {
    let mut store = scratch.store();
    let job = hex_id(1);
    store.insert_queued(&meta(&job, 100)).expect("insert");
    store
        .transition(&id(&job), JobStatus::Processing)
        .expect("t");
    let mut dead = letter(&job, Stage::Inference, 3);
    dead.class = ErrorClass::External { retryable: true };
    store.dead_letter(&dead).expect("dead letter");
    store.dead_letter(&dead).expect("dead letter again");
    let row = store.get(&id(&job)).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::DeadLettered);
    assert_eq!(row.attempts, 3);
    let failure = row.failure.expect("failure");
    assert_eq!(failure.stage, Stage::Inference);
    assert_eq!(failure.class, ErrorClass::External { retryable: true });
    assert_eq!(failure.reason, dead.reason);
    // Final: neither completed nor retried afterwards.
    store.complete(&completed(&job, 100)).expect("ignored");
    assert!(!store
        .transition(&id(&job), JobStatus::Processing)
        .expect("t"));
    let row = store.get(&id(&job)).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::DeadLettered);
    assert!(row.transcript.is_none());
    // A job that never decoded is recorded from the letter alone.
    let never = hex_id(2);
    store
        .dead_letter(&letter(&never, Stage::Decode, 1))
        .expect("dead letter");
    let row = store.get(&id(&never)).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::DeadLettered);
    assert_eq!(row.meta.tenant, "clinic-a");
    assert_eq!(row.meta.patient_reference, None);
    assert_eq!(row.failure.expect("failure").stage, Stage::Decode);
    // And a completed job cannot be dead-lettered.
    let done = hex_id(3);
    store.complete(&completed(&done, 100)).expect("complete");
    store
        .dead_letter(&letter(&done, Stage::Sink, 1))
        .expect("ignored");
    let row = store.get(&id(&done)).expect("get").expect("row");
    assert_eq!(row.status, JobStatus::Completed);
    assert!(row.failure.is_none());
}

fn purge_removes_old_jobs_unless_dry_run(scratch: &Scratch) {
    let mut store = scratch.store();
    let (old1, old2, new) = (hex_id(1), hex_id(2), hex_id(3));
    store.insert_queued(&meta(&old1, 10)).expect("insert");
    store.complete(&completed(&old2, 20)).expect("complete");
    store.insert_queued(&meta(&new, 1_000)).expect("insert");
    let dry = store.purge_before(500, true).expect("dry run");
    assert_eq!(dry, [id(&old1), id(&old2)]);
    assert_eq!(
        store.list(None, 10).expect("list").len(),
        3,
        "dry run deletes nothing"
    );
    let purged = store.purge_before(500, false).expect("purge");
    assert_eq!(purged, [id(&old1), id(&old2)]);
    assert!(
        store.get(&id(&old2)).expect("get").is_none(),
        "transcript gone with the row"
    );
    let left: Vec<_> = store
        .list(None, 10)
        .expect("list")
        .into_iter()
        .map(|r| r.meta.id)
        .collect();
    assert_eq!(left, [id(&new)]);
    assert!(store.purge_before(500, false).expect("purge").is_empty());
    assert!(store.purge_before(500, true).expect("dry run").is_empty());
}

fn purge_deletes_in_chunks(scratch: &Scratch) {
    // More old jobs than one DELETE takes, and not a multiple of it.
    let mut store = scratch.store();
    for n in 0..257 {
        store
            .insert_queued(&meta(&hex_id(n), 10 + n as i64))
            .expect("insert");
    }
    store
        .insert_queued(&meta(&hex_id(1_000), 5_000))
        .expect("insert");
    let purged = store.purge_before(1_000, false).expect("purge");
    let expected: Vec<_> = (0..257).map(|n| id(&hex_id(n))).collect();
    assert_eq!(purged, expected, "oldest first");
    let left = store.list(None, 1_000).expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].meta.id, id(&hex_id(1_000)));
}

fn list_filters_by_status_newest_first(scratch: &Scratch) {
    let mut store = scratch.store();
    for (n, at) in [(1, 1), (2, 2), (3, 3)] {
        store.insert_queued(&meta(&hex_id(n), at)).expect("insert");
    }
    store
        .transition(&id(&hex_id(2)), JobStatus::Processing)
        .expect("t");
    let ids = |rows: Vec<mmt_connectors::JobRow>| -> Vec<String> {
        rows.into_iter().map(|r| r.meta.id.0).collect()
    };
    assert_eq!(
        ids(store.list(None, 10).expect("list")),
        [hex_id(3), hex_id(2), hex_id(1)]
    );
    assert_eq!(
        ids(store.list(Some(JobStatus::Queued), 10).expect("list")),
        [hex_id(3), hex_id(1)]
    );
    assert_eq!(store.list(None, 1).expect("list").len(), 1);
}

fn racing_stores_agree_on_one_terminal_state(scratch: &Scratch) {
    use JobStatus::*;
    const JOBS: usize = 40;
    let jobs: Arc<Vec<String>> = Arc::new((0..JOBS).map(hex_id).collect());
    // Half the jobs are recorded first; the other half are first seen by a
    // terminal write, so two writers race to insert them too.
    let mut setup = scratch.store();
    for job in jobs.iter().step_by(2) {
        setup.insert_queued(&meta(job, 100)).expect("insert");
    }
    drop(setup);
    let barrier = Arc::new(Barrier::new(3));
    let worker = |completes: bool| {
        // Its own store: its own pool and connections, as another replica has.
        let mut store = scratch.store();
        let jobs = Arc::clone(&jobs);
        let barrier = Arc::clone(&barrier);
        std::thread::spawn(move || {
            barrier.wait();
            for job in jobs.iter() {
                store.transition(&id(job), Processing).expect("processing");
                if completes {
                    store.complete(&completed(job, 100)).expect("complete");
                } else {
                    store.transition(&id(job), Failed).expect("failed");
                    store
                        .dead_letter(&letter(job, Stage::Inference, 2))
                        .expect("dead letter");
                }
                // Whichever write won, the job is final now: no way back.
                assert!(!store.transition(&id(job), Processing).expect("t"));
                assert!(!store.transition(&id(job), Queued).expect("t"));
            }
        })
    };
    let completer = worker(true);
    let dead_letterer = worker(false);
    // A third store watches: no status it sees ever moves backwards.
    let mut watcher = scratch.store();
    barrier.wait();
    let mut seen: Vec<Option<JobStatus>> = vec![None; JOBS];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(completer.is_finished() && dead_letterer.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "racing writers took over a minute"
        );
        for (n, job) in jobs.iter().enumerate() {
            let now = watcher.status(&id(job)).expect("status");
            if let (Some(before), Some(after)) = (seen[n], now) {
                assert!(
                    before == after || reachable(before, after),
                    "{job}: {before:?} then {after:?}"
                );
            }
            assert!(now.is_some() || seen[n].is_none(), "{job} vanished");
            seen[n] = now.or(seen[n]);
        }
    }
    completer.join().expect("completer");
    dead_letterer.join().expect("dead letterer");
    let (mut done, mut dead) = (0, 0);
    for job in jobs.iter() {
        let row = watcher.get(&id(job)).expect("get").expect("row");
        match row.status {
            Completed => {
                done += 1;
                assert!(
                    row.transcript.is_some(),
                    "{job}: completed without transcript"
                );
                assert!(row.failure.is_none(), "{job}: completed with a failure");
            }
            DeadLettered => {
                dead += 1;
                assert!(
                    row.transcript.is_none(),
                    "{job}: dead letter with transcript"
                );
                assert_eq!(row.failure.expect("failure").stage, Stage::Inference);
            }
            other => panic!("{job} ended {other:?}"),
        }
    }
    assert_eq!(done + dead, JOBS);
}

/// Whether a job in `from` can ever be seen in `to` (the transitive closure of
/// `can_become`: a failed job is retried, so processing reaches processing).
fn reachable(from: JobStatus, to: JobStatus) -> bool {
    from.can_become(to)
        || [JobStatus::Processing, JobStatus::Failed]
            .into_iter()
            .any(|via| from.can_become(via) && via.can_become(to))
}

fn lock_contention_fails_retryably(scratch: &Scratch) {
    let job = hex_id(1);
    let mut store = scratch
        .config()
        .busy_timeout(Duration::from_millis(300))
        .build(true)
        .expect("connect");
    store.insert_queued(&meta(&job, 100)).expect("insert");
    // Another writer holds the job's row lock in an open transaction.
    let runtime = runtime();
    let lock = "SELECT id FROM jobs WHERE id = ? FOR UPDATE";
    let started = Instant::now();
    let error = match scratch.dialect {
        Dialect::Postgres => {
            let mut conn = runtime
                .block_on(sqlx::PgConnection::connect(&scratch.url))
                .expect("connect");
            let mut tx = runtime.block_on(conn.begin()).expect("begin");
            runtime
                .block_on(
                    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
                        .bind(&job)
                        .fetch_one(&mut *tx),
                )
                .expect("lock");
            let error = store
                .transition(&id(&job), JobStatus::Processing)
                .expect_err("lock timeout");
            runtime.block_on(tx.rollback()).expect("rollback");
            error
        }
        _ => {
            let mut conn = runtime
                .block_on(sqlx::MySqlConnection::connect(&scratch.url))
                .expect("connect");
            let mut tx = runtime.block_on(conn.begin()).expect("begin");
            runtime
                .block_on(sqlx::query(lock).bind(&job).fetch_one(&mut *tx))
                .expect("lock");
            let error = store
                .transition(&id(&job), JobStatus::Processing)
                .expect_err("lock wait timeout");
            runtime.block_on(tx.rollback()).expect("rollback");
            error
        }
    };
    assert_eq!(
        error.class,
        ErrorClass::External { retryable: true },
        "{}",
        error.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the busy timeout bounds the wait"
    );
    // Once the lock is gone, the same call succeeds.
    assert!(store
        .transition(&id(&job), JobStatus::Processing)
        .expect("t"));
}

#[test]
fn connection_failures_are_retryable_and_never_show_the_password() {
    // Nothing listens on port 1: the connect fails at once, retryably, and the
    // error names neither the password nor the URL holding it.
    for url in [
        "postgres://mmt:s3cret@127.0.0.1:1/mmt",
        "mysql://mmt:s3cret@127.0.0.1:1/mmt",
    ] {
        let error = SqlJobStoreConfig::new(url)
            .acquire_timeout(Duration::from_millis(500))
            .build(true)
            .expect_err("nothing listens");
        let component: mmt_core::job::ComponentError = error.into();
        assert!(
            component.class.is_retryable(),
            "{url}: {}",
            component.message
        );
        assert!(
            !component.message.contains("s3cret"),
            "{}",
            component.message
        );
    }
}

#[test]
fn a_missing_service_is_skipped_outside_ci() {
    // With CI=true the same call fails the test, which is the point of it.
    if std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1") {
        return;
    }
    assert!(!require_service("Nothing", "127.0.0.1:1"));
    assert!(!require_service("Nothing", "no-such-host.invalid:1"));
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

fn api_submit_page_delete_and_callbacks(scratch: &Scratch) {
    use SubmissionOutcome::{Created, KeyConflict};
    let mut store = scratch.store();
    // Submissions: created once, then existing; keys replay or conflict.
    let first = meta(&hex_id(1), 100);
    let mut submit = submission(&first, Some(("key-1", "hash-1")), Some("https://cb/1?t=x"));
    submit.priority = 5;
    assert_eq!(store.submit(&submit).expect("submit"), Created);
    assert_eq!(store.submit(&submit).expect("submit"), existing(&hex_id(1)));
    let second = meta(&hex_id(2), 100);
    assert_eq!(
        store
            .submit(&submission(&second, Some(("key-1", "hash-1")), None))
            .expect("submit"),
        existing(&hex_id(1))
    );
    assert_eq!(
        store
            .submit(&submission(
                &second,
                Some(("key-1", "hash-2")),
                Some("https://cb/2")
            ))
            .expect("submit"),
        KeyConflict
    );
    assert!(store.get(&id(&hex_id(2))).expect("get").is_none());
    assert_eq!(
        store
            .submit(&submission(&first, Some(("key-2", "hash-3")), None))
            .expect("submit"),
        existing(&hex_id(1))
    );
    let row = store.get(&id(&hex_id(1))).expect("get").expect("row");
    assert_eq!(row.priority, 5);
    assert_eq!(row.meta, first);
    assert_eq!(scratch.rows_in("idempotency_keys"), 2);
    assert_eq!(scratch.rows_in("job_callbacks"), 1);

    // Pages: runs of equal received_at across pages, no row skipped or repeated.
    let mut expected = vec![(100, hex_id(1))];
    for n in 10..27 {
        let at = 200 + (n as i64 % 4);
        store
            .submit(&submission(&meta(&hex_id(n), at), None, None))
            .expect("submit");
        expected.push((at, hex_id(n)));
    }
    let mut other = meta(&hex_id(99), 201);
    other.tenant = "clinic-b".into();
    store
        .submit(&submission(&other, None, None))
        .expect("submit");
    expected.sort_by(|a, b| b.cmp(a));
    let expected: Vec<String> = expected.into_iter().map(|(_, job)| job).collect();
    for limit in [1, 4, 5, 18, 100] {
        let mut seen = Vec::new();
        let mut cursor: Option<(i64, JobId)> = None;
        loop {
            let page = store
                .page(&PageQuery {
                    tenant: "clinic-a",
                    statuses: &[],
                    received_from: None,
                    received_before: None,
                    after: cursor.as_ref().map(|(at, job)| (*at, job)),
                    limit,
                })
                .expect("page");
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
    store
        .transition(&id(&hex_id(10)), JobStatus::Processing)
        .expect("t");
    let filtered = store
        .page(&PageQuery {
            tenant: "clinic-a",
            statuses: &[JobStatus::Processing, JobStatus::Completed],
            received_from: Some(200),
            received_before: Some(203),
            after: None,
            limit: 10,
        })
        .expect("page");
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].meta.id, id(&hex_id(10)));
    let theirs = store
        .page(&PageQuery {
            tenant: "clinic-b",
            statuses: &[],
            received_from: None,
            received_before: None,
            after: None,
            limit: 10,
        })
        .expect("page");
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].meta.id, id(&hex_id(99)));

    // Counts.
    let counts = store.status_counts(Some("clinic-a")).expect("counts");
    assert_eq!(counts.get("queued"), Some(&17));
    assert_eq!(counts.get("processing"), Some(&1));
    assert_eq!(
        store
            .status_counts(None)
            .expect("counts")
            .values()
            .sum::<u64>(),
        19
    );

    // Callbacks: due once the job is final; retried, then delivered.
    let now = unix_now();
    assert!(store
        .due_callbacks(now + 60, 10, 10)
        .expect("due")
        .is_empty());
    let mut done = completed(&hex_id(1), 100);
    done.completed_at = now;
    store.complete(&done).expect("complete");
    assert_eq!(
        store.completed_since(now, Some("clinic-a")).expect("since"),
        (1, 4.5)
    );
    assert_eq!(
        store.completed_since(now + 1, None).expect("since"),
        (0, 0.0)
    );
    let due = store.due_callbacks(now + 60, 10, 10).expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].url, "https://cb/1?t=x");
    assert_eq!(due[0].attempts, 0);
    assert_eq!(due[0].job.status, JobStatus::Completed);
    assert!(due[0].job.transcript.is_some());
    store
        .callback_failed(&id(&hex_id(1)), "HTTP 502", Some(now + 120))
        .expect("failed");
    assert!(store
        .due_callbacks(now + 60, 10, 10)
        .expect("due")
        .is_empty());
    let due = store.due_callbacks(now + 120, 10, 10).expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    store
        .callback_delivered(&id(&hex_id(1)), now + 121)
        .expect("delivered");
    assert!(store
        .due_callbacks(i64::MAX, 10, 10)
        .expect("due")
        .is_empty());
    // A dead letter's callback is due too; giving up ends it.
    let dead = meta(&hex_id(3), 100);
    store
        .submit(&submission(&dead, None, Some("https://cb/3")))
        .expect("submit");
    store
        .dead_letter(&letter(&hex_id(3), Stage::Decode, 1))
        .expect("dead letter");
    let due = store.due_callbacks(now + 60, 10, 10).expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].job.status, JobStatus::DeadLettered);
    store
        .callback_failed(&id(&hex_id(3)), "HTTP 410", None)
        .expect("give up");
    assert!(store
        .due_callbacks(i64::MAX, 10, 10)
        .expect("due")
        .is_empty());

    // Delete: the row, its keys and its callback, in one go.
    assert!(store.delete(&id(&hex_id(1))).expect("delete"));
    assert!(!store.delete(&id(&hex_id(1))).expect("delete again"));
    assert!(store.get(&id(&hex_id(1))).expect("get").is_none());
    assert_eq!(scratch.rows_in("idempotency_keys"), 0);
    assert_eq!(scratch.rows_in("job_callbacks"), 1, "the dead letter's");
    assert_eq!(
        store
            .submit(&submission(&second, Some(("key-1", "hash-2")), None))
            .expect("submit"),
        Created,
        "the key is free again"
    );
    // Purge: keys and callbacks go with their jobs.
    let purged = store.purge_before(150, false).expect("purge");
    assert_eq!(purged, [id(&hex_id(2)), id(&hex_id(3))]);
    assert_eq!(scratch.rows_in("idempotency_keys"), 0);
    assert_eq!(scratch.rows_in("job_callbacks"), 0);
}

/// A tenant's backlog of due callbacks takes at most its share of a page:
/// the other tenant's callback is on the page however far behind it is due.
fn due_callbacks_are_bounded_per_tenant(scratch: &Scratch) {
    let mut store = scratch.store();
    let mut jobs = Vec::new();
    for (n, tenant) in [
        (1, "clinic-a"),
        (2, "clinic-a"),
        (3, "clinic-a"),
        (4, "clinic-b"),
    ] {
        let job = JobMeta {
            tenant: tenant.to_owned(),
            ..meta(&hex_id(n), 100)
        };
        store
            .submit(&submission(&job, None, Some("https://cb/x")))
            .expect("submit");
        jobs.push(job);
    }
    for job in &jobs {
        store
            .complete(&completed(&job.id.0, 100))
            .expect("complete");
    }
    let now = unix_now() + 60;
    let tenants = |due: &[mmt_connectors::sql::DueCallback]| {
        due.iter()
            .map(|d| d.job.meta.tenant.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(store.due_callbacks(now, 10, 10).expect("due").len(), 4);
    let page = store.due_callbacks(now, 10, 2).expect("due");
    assert_eq!(tenants(&page), ["clinic-a", "clinic-a", "clinic-b"]);
    let page = store.due_callbacks(now, 2, 1).expect("due");
    let mut seen = tenants(&page);
    seen.sort();
    assert_eq!(seen, ["clinic-a", "clinic-b"]);
}

fn racing_submissions_agree_on_one_job(scratch: &Scratch) {
    const JOBS: usize = 20;
    const WORKERS: usize = 4;
    let barrier = Arc::new(Barrier::new(WORKERS));
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            // Its own store: its own pool and connections, as another replica has.
            let mut store = scratch.store();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                (0..JOBS)
                    .map(|n| {
                        let job = meta(&hex_id(n), 100);
                        // Two workers share a key; the other two use their own.
                        let key = if worker < 2 {
                            format!("shared-{n}")
                        } else {
                            format!("own-{n}-{worker}")
                        };
                        let url = format!("https://cb/{worker}");
                        store
                            .submit(&submission(&job, Some((&key, "hash")), Some(&url)))
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
    for n in 0..JOBS {
        let created = outcomes
            .iter()
            .filter(|of| of[n] == SubmissionOutcome::Created)
            .count();
        assert_eq!(created, 1, "job {n} created once");
        for of in &outcomes {
            assert!(
                of[n] == SubmissionOutcome::Created || of[n] == existing(&hex_id(n)),
                "job {n}: {:?}",
                of[n]
            );
        }
    }
    assert_eq!(scratch.rows_in("jobs"), JOBS as i64);
    assert_eq!(scratch.rows_in("idempotency_keys"), (JOBS * 3) as i64);
    assert_eq!(scratch.rows_in("job_callbacks"), JOBS as i64);
}
