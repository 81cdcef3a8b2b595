//! `mmt dlq reprocess --source rabbitmq` on the machine's RabbitMQ: a job
//! dead-lettered to `<queue>.dead` for a retryable reason (its referenced
//! audio was missing) is republished once the audio is there and completes
//! exactly once; a permanent failure is moved to `<queue>.parked`; the
//! metrics and the audit trail say so.

mod common;

use common::postgres::unique;
use common::{distinct_recordings, documents_per_id, model_options, model_ready, read_lines};
use common::{require_service, root};
use mmt_connectors::envelope::{AudioPayload, JobEnvelope};
use mmt_connectors::rabbitmq::{DeadLetterQueue, JobSubmitter, RabbitMqConfig};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

const BROKER: &str = "127.0.0.1:5672";
const TENANT: &str = "clinic-dlq";

fn mmt(args: &[&str], queue: &str, out: &Path, references: &Path) -> Output {
    let model = model_options(1);
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(args)
        .arg("--out")
        .arg(out)
        .current_dir(root())
        .env("MMT_MODEL_DIR", &model.model_dir)
        .env("ORT_DYLIB_PATH", &model.ort_library)
        .env("EXTERNAL_RABBITMQ_ENABLED", "true")
        .env("EXTERNAL_RABBITMQ_HOST", BROKER)
        .env("MMT_RABBITMQ_QUEUE", queue)
        .env("MMT_AUDIO_REFERENCE_ROOT", references)
        .env("MAX_REPROCESS_ATTEMPTS", "3")
        .env("BACKOFF_BASE_SECONDS", "0")
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE")
        .output()
        .expect("mmt runs")
}

fn run_worker(queue: &str, out: &Path, references: &Path) -> Output {
    let args = [
        "run",
        "--source",
        "rabbitmq",
        "--no-progress",
        "--workers",
        "1",
        "--idle-exit",
        "3",
    ];
    mmt(&args, queue, out, references)
}

fn reprocess(queue: &str, out: &Path, references: &Path) -> HashMap<String, f64> {
    let textfile = out.join("reprocess.prom");
    let textfile_arg = textfile.to_str().expect("utf-8");
    let args = [
        "dlq",
        "reprocess",
        "--source",
        "rabbitmq",
        "--metrics-textfile",
        textfile_arg,
    ];
    let output = mmt(&args, queue, out, references);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    std::fs::read_to_string(&textfile)
        .expect("metrics")
        .lines()
        .filter(|line| line.starts_with("reprocessor_"))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((
                name.trim_end_matches("_total").to_owned(),
                value.parse().ok()?,
            ))
        })
        .collect()
}

fn actions(out: &Path, action: &str) -> usize {
    read_lines(&out.join("audit.jsonl"))
        .iter()
        .filter(|event| event["action"] == action)
        .count()
}

#[test]
fn a_dead_message_is_republished_once_its_audio_is_back_and_a_permanent_one_parked() {
    if !model_ready() || !require_service("RabbitMQ", BROKER) {
        return;
    }
    let queue = unique("mmt.test.dlq");
    let out = tempfile::tempdir().expect("tempdir");
    let references = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(references.path().join(TENANT)).expect("tenant folder");
    let recordings = distinct_recordings(2);

    let config = RabbitMqConfig::new(format!("amqp://guest:guest@{BROKER}/%2f")).with_queue(&queue);
    let submitter = JobSubmitter::connect(&config).expect("submitter");
    let inline = JobEnvelope::inline(TENANT, &recordings[0].1, Some("wav"));
    let mut missing = JobEnvelope::inline(TENANT, b"", Some("wav"));
    missing.audio = AudioPayload::Reference {
        url: "later.wav".into(),
        format: Some("wav".into()),
    };
    let not_audio = JobEnvelope::inline(TENANT, b"not audio at all\n", Some("wav"));
    for (i, envelope) in [inline, missing, not_audio].iter().enumerate() {
        submitter
            .submit(envelope, &format!("dlq-{i}"), None)
            .expect("publish");
    }

    let first = run_worker(&queue, out.path(), references.path());
    assert_eq!(first.status.code(), Some(2), "dead letters exit 2");
    assert_eq!(documents_per_id(out.path()).len(), 1);
    assert_eq!(submitter.dead_letter_depth().expect("depth"), 2);

    // The referenced audio arrives; the reprocessor republishes its message
    // and moves the permanent failure aside.
    std::fs::write(
        references.path().join(TENANT).join("later.wav"),
        &recordings[1].1,
    )
    .expect("write");
    let metrics = reprocess(&queue, out.path(), references.path());
    assert_eq!(metrics["reprocessor_attempts"], 1.0, "{metrics:?}");
    assert_eq!(metrics["reprocessor_parked"], 1.0);
    assert_eq!(submitter.dead_letter_depth().expect("depth"), 0);
    assert_eq!(submitter.queue_depth().expect("depth"), 1);
    let dead = DeadLetterQueue::connect(&config).expect("dead-letter queue");
    assert_eq!(dead.parked_depth().expect("parked"), 1);

    // The worker transcribes the retried job; the next pass sees it completed.
    let second = run_worker(&queue, out.path(), references.path());
    assert_eq!(second.status.code(), Some(0), "{:?}", second);
    let metrics = reprocess(&queue, out.path(), references.path());
    assert_eq!(metrics["reprocessor_succeeded"], 1.0, "{metrics:?}");
    assert_eq!(metrics["reprocessor_attempts"], 0.0);
    let docs = documents_per_id(out.path());
    assert_eq!(docs.len(), 2, "{docs:?}");
    assert!(docs.values().all(|n| *n == 1), "exactly one each: {docs:?}");
    assert_eq!(actions(out.path(), "dead_letter_reprocessed"), 1);
    assert_eq!(actions(out.path(), "dead_letter_parked"), 1);

    // Nothing left to do: a further pass retries nothing and parks nothing more.
    let metrics = reprocess(&queue, out.path(), references.path());
    assert_eq!(metrics["reprocessor_attempts"], 0.0);
    assert_eq!(dead.parked_depth().expect("parked"), 1);

    dead.delete_parked().expect("delete parked");
    submitter.delete_queues().expect("delete queues");
}
