//! `mmt run --source kafka` end to end on a tansu broker (see
//! `tests/common/tansu.rs`) and the embedded sinks: job envelopes on a topic
//! become one FHIR document and one completion event per distinct job, and the
//! offsets are committed, so a second run over the same group finds nothing.

mod common;
#[path = "common/tansu.rs"]
mod tansu;

use common::{
    completed_events, distinct_recordings, documents_per_id, model_ready, read_lines, root,
};
use mmt_connectors::envelope::JobEnvelope;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tansu::Tansu;

const TOPIC: &str = "mmt.jobs.e2e";
const GROUP: &str = "mmt-e2e";
/// `--idle-exit`: long enough for the consumer to join its group (a few
/// seconds on tansu with the worker's 10 s session timeout) before the idle
/// clock can run out.
const IDLE_EXIT: &str = "12";

/// Publishes `bodies` in order and waits until the broker has them all.
fn produce(bootstrap: &str, bodies: &[Vec<u8>]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    for body in bodies {
        producer
            .send(BaseRecord::<(), _>::to(TOPIC).partition(0).payload(body))
            .map_err(|(e, _)| e)
            .expect("enqueued");
    }
    producer
        .flush(Duration::from_secs(15))
        .expect("delivered to the broker");
}

/// One `mmt run --source kafka` until it idles for `IDLE_EXIT` s, on SQLite under `out`.
fn run_worker(bootstrap: &str, out: &Path) -> Output {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args([
            "run",
            "--source",
            "kafka",
            "--no-progress",
            "--idle-exit",
            IDLE_EXIT,
        ])
        .arg("--out")
        .arg(out)
        .current_dir(root())
        .env("MMT_KAFKA_BROKERS", bootstrap)
        .env("MMT_KAFKA_TOPIC", TOPIC)
        .env("MMT_KAFKA_GROUP", GROUP)
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_LOG_FILE")
        .env_remove("ENABLE_REDIS_BLOOM_IDEMPOTENCY")
        .env_remove("EXTERNAL_REDIS_ENABLED")
        .env_remove("EXTERNAL_RABBITMQ_ENABLED")
        .env(
            "RUST_LOG",
            "mmt=info,mmt_connectors=info,mmt_pipeline=info,warn",
        )
        .stdin(Stdio::null())
        .output()
        .expect("mmt run");
    eprintln!("mmt run took {:.1} s", started.elapsed().as_secs_f64());
    output
}

#[test]
fn kafka_jobs_become_one_document_each_and_offsets_are_committed() {
    if !model_ready() {
        return;
    }
    let Some(tansu) = Tansu::start() else { return };
    tansu.create_topic(TOPIC, 1);

    // 20 distinct recordings and 4 resubmissions of some of them.
    let recordings = distinct_recordings(20);
    let mut jobs: Vec<&[u8]> = recordings.iter().map(|(_, b)| b.as_slice()).collect();
    for i in 0..4 {
        jobs.insert(i * 6 + 5, &recordings[i * 3].1);
    }
    assert_eq!(jobs.len(), 24);
    let bodies: Vec<Vec<u8>> = jobs
        .iter()
        .map(|audio| {
            serde_json::to_vec(&JobEnvelope::inline("clinic-kafka", audio, Some("wav")))
                .expect("json")
        })
        .collect();
    produce(&tansu.bootstrap, &bodies);

    let out = tempfile::tempdir().expect("tempdir");
    let first = run_worker(&tansu.bootstrap, out.path());
    let stderr = String::from_utf8_lossy(&first.stderr);
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "first run: {}\n{stdout}\n{stderr}\nbroker log:\n{}",
        first.status,
        tansu.log_text()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let per_id = documents_per_id(out.path());
    assert_eq!(
        per_id.len(),
        20,
        "one document per distinct job\n{stdout}\n{stderr}"
    );
    assert!(
        per_id.values().all(|&n| n == 1),
        "no duplicate documents: {per_id:?}"
    );
    assert_eq!(
        completed_events(out.path()),
        20,
        "one completion event per job"
    );
    let audit_before = read_lines(&out.path().join("audit.jsonl")).len();

    // The same topic, group and output again: the offsets were committed, so
    // nothing is delivered (and were it redelivered, the store knows the jobs).
    let second = run_worker(&tansu.bootstrap, out.path());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "second run: {stderr}");
    assert_eq!(
        documents_per_id(out.path()),
        per_id,
        "the second run wrote no document\n{stderr}"
    );
    assert_eq!(completed_events(out.path()), 20, "no new completion event");
    assert_eq!(
        read_lines(&out.path().join("audit.jsonl")).len(),
        audit_before,
        "no audit event at all: no message was delivered again\n{stderr}"
    );
    let dlq = read_lines(&out.path().join("dlq.jsonl"));
    assert!(dlq.is_empty(), "no dead letters: {dlq:?}");
}
