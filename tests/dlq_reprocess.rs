//! `mmt dlq`: dead letters of a retryable failure are repaired by
//! `mmt dlq reprocess` once the cause is fixed, each job completing exactly
//! once; permanent failures and letters out of attempts stay parked; the
//! metrics and the audit trail say so.
//!
//! The retryable failure is real: a recording whose sidecar cannot be read
//! is dead-lettered by the run as unreadable input (a retryable external
//! failure, as a file on a flaky volume is). The second case is a job
//! dead-lettered in the store under its own id for a retryable reason, as a
//! sink's failure leaves it: its letter and store row are written as the
//! commit stage writes them, and the retry must re-admit it.

mod common;

use common::{distinct_recordings, documents_per_id, model_options, model_ready, read_lines};
use mmt_connectors::files::DlqStateFile;
use mmt_connectors::{DeadLetterFileSink, SqlJobStoreConfig};
use mmt_core::error::ErrorClass;
use mmt_core::job::{unix_now, DeadLetter, JobStatus, JobStore, Stage};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

const MAX_REPROCESS_ATTEMPTS: &str = "2";

fn mmt(args: &[&str], out: &Path) -> Command {
    let model = model_options(1);
    let mut command = Command::new(env!("CARGO_BIN_EXE_mmt"));
    command
        .args(args)
        .arg("--out")
        .arg(out)
        .env("MMT_MODEL_DIR", &model.model_dir)
        .env("ORT_DYLIB_PATH", &model.ort_library)
        .env("MAX_REPROCESS_ATTEMPTS", MAX_REPROCESS_ATTEMPTS)
        // Due again at once: the test does not wait out the backoff.
        .env("BACKOFF_BASE_SECONDS", "0")
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE");
    command
}

fn run(input: &Path, out: &Path) -> Output {
    mmt(&["run", "--no-progress", "--workers", "1"], out)
        .arg("--input")
        .arg(input)
        .output()
        .expect("mmt run")
}

/// `mmt dlq reprocess` once; its metrics as name → value.
fn reprocess(input: &Path, out: &Path) -> (String, HashMap<String, f64>) {
    let textfile = out.join("reprocess.prom");
    let output = mmt(&["dlq", "reprocess", "--workers", "1"], out)
        .arg("--input")
        .arg(input)
        .arg("--metrics-textfile")
        .arg(&textfile)
        .output()
        .expect("mmt dlq reprocess");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let metrics = std::fs::read_to_string(&textfile)
        .expect("metrics textfile")
        .lines()
        .filter(|line| line.starts_with("reprocessor_"))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    (stdout, metrics)
}

fn metric(metrics: &HashMap<String, f64>, outcome: &str) -> f64 {
    metrics[&format!("reprocessor_{outcome}_total")]
}

fn states(out: &Path) -> HashMap<String, String> {
    let output = mmt(&["dlq", "list", "--json"], out)
        .output()
        .expect("mmt dlq list");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let view: serde_json::Value = serde_json::from_str(line).expect("json");
            let state = view["state"]["disposition"].as_str().unwrap_or("new");
            (
                view["job_id"].as_str().expect("id").to_owned(),
                state.to_owned(),
            )
        })
        .collect()
}

fn audit_actions(out: &Path, action: &str) -> Vec<serde_json::Value> {
    read_lines(&out.join("audit.jsonl"))
        .into_iter()
        .filter(|event| event["action"] == action)
        .collect()
}

const BAD_SIDECAR: &[u8] = b"{\"tenant\": ";

#[test]
fn retryable_dead_letters_complete_once_after_the_fix_and_permanent_ones_stay_parked() {
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let recordings = distinct_recordings(3);
    for (name, bytes) in &recordings {
        std::fs::write(input.path().join(name), bytes).expect("write");
    }
    let sidecar = |i: usize| input.path().join(format!("{}.json", recordings[i].0));
    // Two recordings unreadable (their sidecars), one not audio at all.
    std::fs::write(sidecar(0), BAD_SIDECAR).expect("write");
    std::fs::write(sidecar(1), BAD_SIDECAR).expect("write");
    std::fs::write(input.path().join("notes.mp3"), b"not audio\n").expect("write");

    let first = run(input.path(), out.path());
    assert_eq!(first.status.code(), Some(2), "dead letters exit 2");
    assert_eq!(documents_per_id(out.path()).len(), 1);
    let letters = read_lines(&out.path().join("dlq.jsonl"));
    assert_eq!(letters.len(), 3, "{letters:?}");

    // The inputs are still broken: the retries fail, the permanent one is parked.
    let (stdout, metrics) = reprocess(input.path(), out.path());
    assert!(stdout.contains("2 retried"), "{stdout}");
    assert_eq!(metric(&metrics, "attempts"), 2.0);
    assert_eq!(metric(&metrics, "failed"), 2.0);
    assert_eq!(metric(&metrics, "parked"), 1.0);
    assert_eq!(metric(&metrics, "succeeded"), 0.0);
    let after_first: Vec<String> = states(out.path()).into_values().collect();
    assert_eq!(after_first.iter().filter(|s| *s == "pending").count(), 2);
    assert_eq!(after_first.iter().filter(|s| *s == "parked").count(), 1);

    // One is fixed; the other fails its last attempt and is parked too.
    std::fs::remove_file(sidecar(0)).expect("fix");
    let (stdout, metrics) = reprocess(input.path(), out.path());
    assert_eq!(metric(&metrics, "attempts"), 2.0, "{stdout}");
    assert_eq!(metric(&metrics, "succeeded"), 1.0);
    assert_eq!(metric(&metrics, "failed"), 1.0);
    assert_eq!(metric(&metrics, "exhausted"), 1.0);
    assert_eq!(metric(&metrics, "parked"), 1.0);
    let docs = documents_per_id(out.path());
    assert_eq!(docs.len(), 2, "the fixed recording has its document");
    assert!(docs.values().all(|n| *n == 1), "exactly one each: {docs:?}");

    // Fixing the parked one changes nothing: parked letters are never retried.
    std::fs::remove_file(sidecar(1)).expect("fix");
    let (stdout, metrics) = reprocess(input.path(), out.path());
    assert_eq!(metric(&metrics, "attempts"), 0.0, "{stdout}");
    assert_eq!(documents_per_id(out.path()).len(), 2);
    let states = states(out.path());
    assert_eq!(states.values().filter(|s| *s == "resolved").count(), 1);
    assert_eq!(states.values().filter(|s| *s == "parked").count(), 2);

    let reprocessed = audit_actions(out.path(), "dead_letter_reprocessed");
    assert_eq!(reprocessed.len(), 1);
    let parked = audit_actions(out.path(), "dead_letter_parked");
    assert_eq!(parked.len(), 2);
    let reasons: Vec<&str> = parked
        .iter()
        .map(|e| e["detail"]["reason"].as_str().expect("reason"))
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("permanent")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("exhausted")),
        "{reasons:?}"
    );
    let trail = out.path().join("audit.jsonl");
    let (status, verified, _) =
        common::mmt(&["audit", "verify", "--file", trail.to_str().expect("utf-8")]);
    assert!(status.success(), "{verified}");
}

#[test]
fn a_job_dead_lettered_in_the_store_is_readmitted_and_completes_once() {
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let (name, bytes) = &distinct_recordings(1)[0];
    std::fs::write(input.path().join(name), bytes).expect("write");
    let hash = mmt_operators::identity::content_hash(bytes);
    let job = mmt_operators::identity::job_id("default", &hash);
    // What the commit stage writes for a job a sink failed: its dead letter,
    // then the store row (the run took it, then dead-lettered it).
    let letter = DeadLetter {
        job_id: job.clone(),
        tenant: "default".into(),
        correlation_id: "0123456789abcdef".into(),
        stage: Stage::Sink,
        class: ErrorClass::External { retryable: true },
        reason: "FHIR server unavailable".into(),
        attempts: 1,
        at: unix_now(),
    };
    let url = format!("sqlite://{}", out.path().join("mmt.db").display());
    let mut store = SqlJobStoreConfig::new(&url).build(false).expect("store");
    store.dead_letter(&letter).expect("store row");
    DeadLetterFileSink::open(&out.path().join("dlq.jsonl"))
        .expect("dlq")
        .send_letter(&letter)
        .expect("letter");
    // A plain rerun finds the job finished: dead letters are not retried by `mmt run`.
    let rerun = run(input.path(), out.path());
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(stdout.contains("0 transcribed"), "{stdout}\n{stderr}");
    assert!(documents_per_id(out.path()).is_empty());

    // A second reprocessor finds the state locked and does nothing.
    let held = DlqStateFile::in_dir(out.path())
        .lock(false)
        .expect("lock")
        .expect("free");
    let (stdout, metrics) = reprocess(input.path(), out.path());
    assert!(stdout.contains("another reprocessor"), "{stdout}");
    assert_eq!(metric(&metrics, "attempts"), 0.0);
    drop(held);

    let (stdout, metrics) = reprocess(input.path(), out.path());
    assert_eq!(metric(&metrics, "succeeded"), 1.0, "{stdout}");
    assert_eq!(
        store.status(&job).expect("status"),
        Some(JobStatus::Completed)
    );
    let docs = documents_per_id(out.path());
    assert_eq!(docs.get(&job.0), Some(&1), "{docs:?}");
    // Again: nothing to do, still one document and one completion.
    let (_, metrics) = reprocess(input.path(), out.path());
    assert_eq!(metric(&metrics, "attempts"), 0.0);
    assert_eq!(documents_per_id(out.path()).get(&job.0), Some(&1));
    assert_eq!(common::completed_events(out.path()), 1);
    assert_eq!(states(out.path())[&job.0], "resolved");
}
