//! The file sinks across a simulated crash: one record per key, purge, no PHI
//! outside the documents.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use common::{completed, event, letter, TRANSCRIPT_TEXT};
use mmt_connectors::{AuditLogConfig, DeadLetterFileConfig, FhirNdjsonConfig, FhirNdjsonSink};
use mmt_core::job::{AuditAction, AuditSink, DeadLetterSink, DocumentSink, JobId, Stage};

fn lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

/// What a crash in the middle of an append leaves: half a record, no newline.
fn tear(path: &Path, partial: &str) {
    let mut file = OpenOptions::new().append(true).open(path).expect("open");
    file.write_all(partial.as_bytes()).expect("write");
}

#[test]
fn documents_survive_a_crash_with_one_record_per_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FhirNdjsonConfig {
        dir: dir.path().join("fhir"),
    };
    let path = dir.path().join("fhir/DocumentReference.ndjson");
    let mut sink = config.build().expect("open");
    sink.write(&completed("a1", 1_700_000_000)).expect("write");
    sink.write(&completed("a1", 1_700_000_000))
        .expect("idempotent");
    drop(sink);

    // Crash while appending b2: its half-written line stays behind.
    let b2 = serde_json::to_string(
        &mmt_connectors::fhir::document_reference(&completed("b2", 1)).expect("doc"),
    )
    .expect("json");
    tear(&path, &b2[..b2.len() / 2]);

    // Redelivery after restart: both jobs are written again.
    let mut sink = config.build().expect("reopen repairs");
    sink.write(&completed("a1", 1_700_000_000)).expect("write");
    sink.write(&completed("b2", 1)).expect("write");
    let docs = lines(&path);
    let ids: Vec<_> = docs.iter().map(|d| d["id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["a1", "b2"]);
    assert_eq!(docs[0]["resourceType"], "DocumentReference");
    assert_eq!(docs[0]["subject"]["reference"], "Patient/123");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "documents hold PHI");
    }
}

#[test]
fn purge_rewrites_the_document_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("DocumentReference.ndjson");
    let mut sink = FhirNdjsonSink::open(&path).expect("open");
    for job in ["a1", "b2", "c3"] {
        sink.write(&completed(job, 1)).expect("write");
    }
    let removed = sink
        .purge(&[JobId("b2".into()), JobId("zz".into())])
        .expect("purge");
    assert_eq!(removed, 1);
    let ids: Vec<_> = lines(&path)
        .iter()
        .map(|d| d["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, [Some("a1".to_owned()), Some("c3".to_owned())]);
    assert!(!sink.contains(&JobId("b2".into())));
    // The sink keeps appending to the rewritten file; a clone shares it.
    let mut clone = sink.clone();
    clone.write(&completed("d4", 1)).expect("write");
    sink.write(&completed("d4", 1))
        .expect("idempotent across clones");
    assert_eq!(lines(&path).len(), 3);
    let reopened = FhirNdjsonSink::open(&path).expect("reopen");
    assert!(reopened.contains(&JobId("d4".into())));
    assert!(!reopened.contains(&JobId("b2".into())));
}

#[test]
fn audit_log_survives_a_crash_and_never_holds_phi() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit/audit.jsonl");
    let config = AuditLogConfig::new(&path);
    let mut sink = config.build().expect("open");
    sink.record(&event("a1", AuditAction::JobReceived))
        .expect("record");
    sink.record(&event("a1", AuditAction::JobCompleted))
        .expect("record");
    sink.record(&event("a1", AuditAction::JobCompleted))
        .expect("idempotent");
    drop(sink);
    tear(&path, r#"{"at":1,"action":"job_rec"#);

    let mut sink = config.build().expect("reopen repairs");
    sink.record(&event("a1", AuditAction::JobCompleted))
        .expect("idempotent");
    sink.record(&event("b2", AuditAction::JobReceived))
        .expect("record");
    let events = lines(&path);
    let keys: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["job_id"].as_str().expect("id"),
                e["action"].as_str().expect("action"),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("a1", "job_received"),
            ("a1", "job_completed"),
            ("b2", "job_received")
        ]
    );
    let text = fs::read_to_string(&path).expect("read");
    assert!(!text.contains("Patient/123"), "references are masked");
    assert!(text.contains("Patient/***"));
    assert!(!text.contains(TRANSCRIPT_TEXT));
    // The line cut off after the crash left the chain whole.
    let verified = mmt_connectors::files::chain::verify(&path).expect("verify");
    assert!(verified.is_intact(), "{verified:?}");
    assert_eq!(verified.records, 3);
}

#[test]
fn dead_letters_survive_a_crash_with_one_per_job_and_stage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = DeadLetterFileConfig {
        dir: dir.path().to_owned(),
    };
    let path = dir.path().join("dlq.jsonl");
    let mut sink = config.build().expect("open");
    sink.send(&letter("a1", Stage::Decode, 1)).expect("send");
    sink.send(&letter("a1", Stage::Decode, 2))
        .expect("idempotent");
    sink.send(&letter("a1", Stage::Sink, 1))
        .expect("other stage");
    drop(sink);
    tear(&path, "{\"job_id\":\"b2\",\"ten");

    let mut sink = config.build().expect("reopen repairs");
    sink.send(&letter("a1", Stage::Sink, 3))
        .expect("idempotent");
    sink.send(&letter("b2", Stage::Inference, 1)).expect("send");
    let letters = lines(&path);
    let keys: Vec<_> = letters
        .iter()
        .map(|l| {
            (
                l["job_id"].as_str().expect("id"),
                l["stage"].as_str().expect("stage"),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [("a1", "decode"), ("a1", "sink"), ("b2", "inference")]
    );
    assert_eq!(letters[0]["attempts"], 1, "the first letter per key wins");
}

#[test]
fn a_corrupt_file_is_refused_not_appended_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dlq.jsonl");
    fs::write(&path, "garbage\n{\"also\": \"bad\"}\n").expect("write");
    let error = DeadLetterFileConfig {
        dir: dir.path().to_owned(),
    }
    .build()
    .expect_err("corrupt");
    let component: mmt_core::job::ComponentError = error.into();
    assert_eq!(component.class, mmt_core::ErrorClass::Internal);
    assert!(
        component.message.contains("line 1"),
        "{}",
        component.message
    );
}
