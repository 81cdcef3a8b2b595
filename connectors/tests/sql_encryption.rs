//! Transcripts sealed at rest in the SQLite job store: nothing of the text
//! on disk, clear rows from before encryption still read and then sealed by
//! a re-encryption pass, rotation, retired keys, rows moved between jobs.

mod common;

use std::sync::Arc;

use common::{completed, TRANSCRIPT_TEXT};
use mmt_connectors::{ConnectorError, SqlJobStore, SqlJobStoreConfig};
use mmt_core::crypt::{sealed_text_key_id, CryptError, KeyProvider, Keyring, Sealer};
use mmt_core::job::{JobStatus, JobStore};
use sqlx::Connection;

fn url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("jobs.db").display())
}

fn open(dir: &tempfile::TempDir, keyring: Option<&Keyring>) -> SqlJobStore {
    let sealer = keyring.map(|keyring| Sealer::new(Arc::new(keyring.clone())));
    SqlJobStoreConfig::new(url(dir))
        .build(false)
        .expect("connect")
        .with_sealer(sealer)
}

fn complete(store: &mut SqlJobStore, id: &str) -> mmt_core::job::CompletedJob {
    let job = completed(id, 100);
    store.insert_queued(&job.meta).expect("insert");
    store
        .transition(&job.meta.id, JobStatus::Processing)
        .expect("take");
    store.complete(&job).expect("complete");
    job
}

/// Runs `sql` beside the store; the stored transcript of `job` after it.
fn raw(dir: &tempfile::TempDir, sql: &str, job: &str) -> Option<String> {
    let url = url(dir);
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let mut conn = sqlx::SqliteConnection::connect(&url).await?;
            if !sql.0.is_empty() {
                sqlx::query(sql).execute(&mut conn).await?;
            }
            let stored = sqlx::query_scalar("SELECT transcript_json FROM jobs WHERE id = ?")
                .bind(job)
                .fetch_one(&mut conn)
                .await;
            conn.close().await?;
            stored
        })
        .expect("raw SQL")
}

/// Whether any file of the folder (database, WAL) holds `needle`.
fn on_disk(dir: &tempfile::TempDir, needle: &str) -> bool {
    std::fs::read_dir(dir.path()).expect("dir").any(|entry| {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    })
}

#[test]
fn sealed_transcripts_leave_no_text_on_disk_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keyring = Keyring::generate().expect("keyring");
    let mut store = open(&dir, Some(&keyring));
    let job = complete(&mut store, "a1");
    let row = store.get(&job.meta.id).expect("get").expect("row");
    assert_eq!(row.transcript.as_ref(), Some(&job.transcript));
    let stored = raw(&dir, "", "a1").expect("stored");
    assert_eq!(
        sealed_text_key_id(&stored).expect("sealed"),
        Some(keyring.current_key_id())
    );
    drop(store);
    assert!(
        !on_disk(&dir, "chest pain"),
        "transcript text in the store files"
    );
    assert!(TRANSCRIPT_TEXT.contains("chest pain"));

    // Without the keyring the row is refused, naming the variable.
    let err = open(&dir, None).get(&job.meta.id).expect_err("refused");
    assert!(err.to_string().contains("MMT_ENCRYPTION_KEYS"), "{err}");
}

#[test]
fn clear_rows_stay_readable_and_rotation_reseals_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = complete(&mut open(&dir, None), "clear");
    let mut keyring = Keyring::generate().expect("keyring");
    let first = keyring.current_key_id();
    let mut store = open(&dir, Some(&keyring));
    let sealed = complete(&mut store, "sealed");
    let row = store.get(&before.meta.id).expect("get").expect("row");
    assert_eq!(
        row.transcript.as_ref(),
        Some(&before.transcript),
        "clear text reads"
    );

    let second = keyring.rotate().expect("rotate");
    let mut store = open(&dir, Some(&keyring));
    let newer = complete(&mut store, "newer");
    assert_eq!(
        sealed_text_key_id(&raw(&dir, "", "newer").expect("stored")).expect("sealed"),
        Some(second.clone())
    );
    // Old jobs read back after the rotation, before any re-encryption.
    for job in [&before, &sealed, &newer] {
        let row = store.get(&job.meta.id).expect("get").expect("row");
        assert_eq!(row.transcript.as_ref(), Some(&job.transcript));
    }
    let report = store.reseal_transcripts(2).expect("reseal");
    assert_eq!((report.examined, report.resealed), (3, 2));
    assert!(report.failed.is_empty());
    for id in ["clear", "sealed", "newer"] {
        let stored = raw(&dir, "", id).expect("stored");
        assert_eq!(
            sealed_text_key_id(&stored).expect("sealed"),
            Some(second.clone())
        );
    }
    drop(store);
    assert!(!on_disk(&dir, "chest pain"), "the clear row was sealed");

    // The first key retired: nothing is left under it, everything reads.
    keyring.retire(&first).expect("retire");
    let mut store = open(&dir, Some(&keyring));
    for job in [&before, &sealed, &newer] {
        let row = store.get(&job.meta.id).expect("get").expect("row");
        assert_eq!(row.transcript.as_ref(), Some(&job.transcript));
    }
}

#[test]
fn a_retired_key_and_a_row_moved_to_another_job_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut keyring = Keyring::generate().expect("keyring");
    let first = keyring.current_key_id();
    let mut store = open(&dir, Some(&keyring));
    complete(&mut store, "a1");
    let b2 = complete(&mut store, "b2");

    // a1's ciphertext copied into b2's row: the AAD names the job.
    raw(
        &dir,
        "UPDATE jobs SET transcript_json = (SELECT transcript_json FROM jobs WHERE id = 'a1') \
         WHERE id = 'b2'",
        "b2",
    );
    let err = store.get(&b2.meta.id).expect_err("moved row refused");
    assert!(
        matches!(
            &err,
            ConnectorError::Crypt {
                source: CryptError::Tampered { .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("chest"), "no text in errors");

    keyring.rotate().expect("rotate");
    keyring.retire(&first).expect("retire");
    let mut store = open(&dir, Some(&keyring));
    let err = store
        .get(&mmt_core::job::JobId("a1".into()))
        .expect_err("retired key refused");
    assert!(err.to_string().contains("retired key"), "{err}");
    // A re-encryption pass leaves both rows, and names them.
    let report = store.reseal_transcripts(10).expect("reseal");
    assert_eq!(report.failed.len(), 2);
}
