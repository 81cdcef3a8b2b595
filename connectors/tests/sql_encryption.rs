//! Transcripts sealed at rest in the job store, on SQLite, PostgreSQL and
//! MariaDB (`common/sql.rs`): nothing of the text stored, clear rows from
//! before encryption still read and then sealed by a re-encryption pass,
//! rotation, retired keys, rows moved between jobs.

mod common;

use std::sync::Arc;

use common::sql::Scratch;
use common::{completed, TRANSCRIPT_TEXT};
use mmt_connectors::{ConnectorError, SqlJobStore};
use mmt_core::crypt::{sealed_text_key_id, CryptError, KeyProvider, Keyring, Sealer};
use mmt_core::job::{JobStatus, JobStore};

common::sql::on_every_store!(
    sealed_transcripts_leave_no_text_stored_and_read_back,
    clear_rows_stay_readable_and_rotation_reseals_everything,
    a_retired_key_and_a_row_moved_to_another_job_are_refused,
);

fn open(db: &Scratch, keyring: Option<&Keyring>) -> SqlJobStore {
    let sealer = keyring.map(|keyring| Sealer::new(Arc::new(keyring.clone())));
    db.store().with_sealer(sealer)
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

/// The key id job `id`'s stored transcript is sealed under.
fn key_of(db: &Scratch, id: &str) -> Option<String> {
    let stored = db.stored_transcript(id).expect("stored");
    sealed_text_key_id(&stored).expect("sealed")
}

fn sealed_transcripts_leave_no_text_stored_and_read_back(db: &Scratch) {
    let keyring = Keyring::generate().expect("keyring");
    let mut store = open(db, Some(&keyring));
    let job = complete(&mut store, "a1");
    let row = store.get(&job.meta.id).expect("get").expect("row");
    assert_eq!(row.transcript.as_ref(), Some(&job.transcript));
    assert_eq!(key_of(db, "a1"), Some(keyring.current_key_id()));
    drop(store);
    assert!(!db.holds("chest pain"), "transcript text in the store");
    assert!(TRANSCRIPT_TEXT.contains("chest pain"));

    // Without the keyring the row is refused, naming the variable.
    let err = open(db, None).get(&job.meta.id).expect_err("refused");
    assert!(err.to_string().contains("MMT_ENCRYPTION_KEYS"), "{err}");
}

fn clear_rows_stay_readable_and_rotation_reseals_everything(db: &Scratch) {
    let before = complete(&mut open(db, None), "clear");
    assert!(db.holds("chest pain"), "the search finds clear text");
    let mut keyring = Keyring::generate().expect("keyring");
    let first = keyring.current_key_id();
    let mut store = open(db, Some(&keyring));
    let sealed = complete(&mut store, "sealed");
    let row = store.get(&before.meta.id).expect("get").expect("row");
    assert_eq!(
        row.transcript.as_ref(),
        Some(&before.transcript),
        "clear text reads"
    );

    let second = keyring.rotate().expect("rotate");
    let mut store = open(db, Some(&keyring));
    let newer = complete(&mut store, "newer");
    assert_eq!(key_of(db, "newer"), Some(second.clone()));
    // Old jobs read back after the rotation, before any re-encryption.
    for job in [&before, &sealed, &newer] {
        let row = store.get(&job.meta.id).expect("get").expect("row");
        assert_eq!(row.transcript.as_ref(), Some(&job.transcript));
    }
    let report = store.reseal_transcripts(2).expect("reseal");
    assert_eq!((report.examined, report.resealed), (3, 2));
    assert!(report.failed.is_empty());
    for id in ["clear", "sealed", "newer"] {
        assert_eq!(key_of(db, id), Some(second.clone()));
    }
    drop(store);
    assert!(!db.holds("chest pain"), "the clear row was sealed");

    // The first key retired: nothing is left under it, everything reads.
    keyring.retire(&first).expect("retire");
    let mut store = open(db, Some(&keyring));
    for job in [&before, &sealed, &newer] {
        let row = store.get(&job.meta.id).expect("get").expect("row");
        assert_eq!(row.transcript.as_ref(), Some(&job.transcript));
    }
}

fn a_retired_key_and_a_row_moved_to_another_job_are_refused(db: &Scratch) {
    let mut keyring = Keyring::generate().expect("keyring");
    let first = keyring.current_key_id();
    let mut store = open(db, Some(&keyring));
    complete(&mut store, "a1");
    let b2 = complete(&mut store, "b2");

    // a1's ciphertext copied into b2's row: the AAD names the job.
    let a1 = db.stored_transcript("a1").expect("stored");
    db.set_stored_transcript("b2", &a1);
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
    let mut store = open(db, Some(&keyring));
    let err = store
        .get(&mmt_core::job::JobId("a1".into()))
        .expect_err("retired key refused");
    assert!(err.to_string().contains("retired key"), "{err}");
    // A re-encryption pass leaves both rows, and names them.
    let report = store.reseal_transcripts(10).expect("reseal");
    assert_eq!(report.failed.len(), 2);
}
