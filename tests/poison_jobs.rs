//! Poison jobs: a recording that kills its worker every time is dead-lettered
//! after `MAX_REPROCESS_ATTEMPTS` takes, and every other job completes once.
//!
//! The failure is real, not simulated: the test build of `mmt` (feature
//! `failpoints`, on for tests only) aborts the process right after it took the
//! job whose content hash `MMT_FAILPOINT_ABORT_ON_CONTENT` names, as an
//! out-of-memory kill would. `mmt run` is started again after each crash, as
//! an orchestrator restarts a service.

mod common;

use common::{distinct_recordings, documents_per_id, model_options, model_ready, read_lines};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

const MAX_REPROCESS_ATTEMPTS: u32 = 3;

/// `mmt run` over `input` into `out`, aborting on the content `poison_hash`.
/// It runs in a scratch folder (`cwd`), so that a core dump lands there.
fn run(input: &Path, out: &Path, cwd: &Path, poison_hash: &str) -> Output {
    let model = model_options(1);
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["run", "--no-progress", "--workers", "2", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out)
        .current_dir(cwd)
        .env("MMT_MODEL_DIR", &model.model_dir)
        .env("ORT_DYLIB_PATH", &model.ort_library)
        .env("MAX_REPROCESS_ATTEMPTS", MAX_REPROCESS_ATTEMPTS.to_string())
        .env("MMT_FAILPOINT_ABORT_ON_CONTENT", poison_hash)
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE")
        .output()
        .expect("mmt run starts")
}

#[test]
fn a_job_that_aborts_its_worker_is_dead_lettered_after_max_takes() {
    if !model_ready() {
        return;
    }
    let input = tempfile::tempdir().expect("tempdir");
    let out = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    let recordings = distinct_recordings(6);
    for (name, bytes) in &recordings {
        std::fs::write(input.path().join(name), bytes).expect("write");
    }
    // In the middle of the folder: jobs before and after it share its process.
    let poison_hash = mmt_operators::identity::content_hash(&recordings[2].1);

    let mut exits = Vec::new();
    for _ in 0..MAX_REPROCESS_ATTEMPTS + 3 {
        let output = run(input.path(), out.path(), cwd.path(), &poison_hash);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        exits.push(output.status.code());
        if output.status.success() {
            break;
        }
    }
    let crashes = MAX_REPROCESS_ATTEMPTS as usize;
    assert!(
        exits[..crashes].iter().all(Option::is_none),
        "the first {crashes} runs are killed by the abort: {exits:?}"
    );
    assert_eq!(
        exits[crashes..],
        [Some(2), Some(0)],
        "then one run dead-letters the job (exit 2: dead letters) and the next \
         has nothing left to do: {exits:?}"
    );

    let letters = read_lines(&out.path().join("dlq.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(
        letter["reason"],
        format!("worker stopped while processing it {MAX_REPROCESS_ATTEMPTS} times")
    );
    assert_eq!(letter["attempts"], MAX_REPROCESS_ATTEMPTS);
    assert_eq!(letter["stage"], "dedupe");
    let poison_id = letter["job_id"].as_str().expect("job id").to_owned();

    // Every other job: one document, one completion event, never dead-lettered.
    let documents = documents_per_id(out.path());
    assert_eq!(documents.len(), recordings.len() - 1, "{documents:?}");
    assert!(documents.values().all(|&n| n == 1), "{documents:?}");
    assert!(!documents.contains_key(&poison_id));
    let mut completions: HashMap<String, usize> = HashMap::new();
    let mut dead_lettered = Vec::new();
    for event in read_lines(&out.path().join("audit.jsonl")) {
        let job = event["job_id"].as_str().expect("job id").to_owned();
        match event["action"].as_str() {
            Some("job_completed") => *completions.entry(job).or_default() += 1,
            Some("job_dead_lettered") => dead_lettered.push(job),
            _ => {}
        }
    }
    assert_eq!(completions.len(), recordings.len() - 1, "{completions:?}");
    assert!(completions.values().all(|&n| n == 1), "{completions:?}");
    assert_eq!(dead_lettered, [poison_id]);
}
