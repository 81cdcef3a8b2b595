//! `mmt run --source rabbitmq` end to end on the machine's RabbitMQ and
//! PostgreSQL: jobs published to a queue become exactly one completed row and
//! one FHIR document each, across a dropped broker connection and a killed
//! worker.

mod common;

use common::postgres::{psql, unique, Schema, POSTGRES};
use common::proxy::Proxy;
use common::{distinct_recordings, documents, model_ready, require_service, root};
use mmt_connectors::envelope::JobEnvelope;
use mmt_connectors::rabbitmq::{JobSubmitter, RabbitMqConfig};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BROKER: &str = "127.0.0.1:5672";

fn worker(broker: &str, queue: &str, database_url: &str, out: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("worker log");
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args([
            "run",
            "--source",
            "rabbitmq",
            "--no-progress",
            // Long enough to outlast the reconnection after the cut: a
            // worker idles while its connection is down, and under load the
            // reconnect backoff can pass 4 s (it exited 0 mid-test once).
            "--idle-exit",
            "15",
        ])
        .args(["--batch-size", "8", "--out"])
        .arg(out)
        .current_dir(root())
        .env("EXTERNAL_RABBITMQ_ENABLED", "true")
        .env("EXTERNAL_RABBITMQ_HOST", broker)
        .env("MMT_RABBITMQ_QUEUE", queue)
        .env("MMT_RABBITMQ_PREFETCH", "16")
        .env("DATABASE_URL", database_url)
        .env_remove("AUDIT_LOG_FILE")
        .env(
            "RUST_LOG",
            "mmt=info,mmt_connectors=info,mmt_pipeline=info,warn",
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn mmt run")
}

fn wait_until(child: &mut Child, out: &Path, documents_at_least: usize, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while documents(out).len() < documents_at_least {
        if let Some(status) = child.try_wait().expect("wait") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("the worker exited early ({status}):\n{log}");
        }
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_hundred_jobs_survive_a_dropped_connection_and_a_killed_worker() {
    if !model_ready()
        || !require_service("RabbitMQ", BROKER)
        || !require_service("PostgreSQL", POSTGRES)
    {
        return;
    }
    let queue = unique("mmt.test.e2e");
    let schema = Schema::create(&unique("mmt_e2e"));
    let out = tempfile::tempdir().expect("tempdir");

    // 180 distinct recordings and 20 resubmissions of some of them (10%).
    let recordings = distinct_recordings(180);
    let mut jobs: Vec<&[u8]> = recordings.iter().map(|(_, b)| b.as_slice()).collect();
    for i in 0..20 {
        jobs.insert(i * 10 + 5, &recordings[i * 7].1);
    }
    assert_eq!(jobs.len(), 200);
    let config = RabbitMqConfig::new(format!("amqp://guest:guest@{BROKER}/%2f")).with_queue(&queue);
    let submitter = JobSubmitter::connect(&config).expect("submitter");
    for (i, audio) in jobs.iter().enumerate() {
        let mut envelope = JobEnvelope::inline("clinic-e2e", audio, Some("wav"));
        envelope.patient_reference = Some(format!("Patient/p{}", i % 17));
        submitter
            .submit(&envelope, &format!("job-{i:03}"), None)
            .expect("publish");
    }
    assert_eq!(submitter.queue_depth().expect("depth"), 200);

    // First worker, through a proxy: its broker connection is cut mid-way,
    // then it is killed mid-way.
    let proxy = Proxy::start(BROKER);
    let logs = tempfile::tempdir().expect("tempdir");
    let first_log = logs.path().join("first.log");
    let mut first = worker(
        &proxy.address(),
        &queue,
        &schema.url(),
        out.path(),
        &first_log,
    );
    wait_until(&mut first, out.path(), 30, &first_log);
    proxy.sever();
    let cut_at = documents(out.path()).len();
    wait_until(&mut first, out.path(), cut_at + 40, &first_log);
    assert!(
        proxy.accepted() >= 3,
        "the worker reconnected after the cut"
    );
    first.kill().expect("kill");
    let _ = first.wait();
    let killed_at = documents(out.path()).len();
    eprintln!("connection cut at {cut_at} documents, worker killed at {killed_at}");
    assert!(killed_at < 180, "the kill happened mid-way");

    // A second worker finishes the queue and exits once it idles.
    let second_log = logs.path().join("second.log");
    let status = worker(BROKER, &queue, &schema.url(), out.path(), &second_log)
        .wait()
        .expect("second worker");
    let log = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(status.success(), "{log}");

    let mut per_id: HashMap<String, usize> = HashMap::new();
    for doc in documents(out.path()) {
        *per_id
            .entry(doc["id"].as_str().expect("id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), 180, "one document per distinct job");
    assert!(per_id.values().all(|&n| n == 1), "no duplicate documents");
    let table = format!("{}.jobs", schema.0);
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM {table} WHERE status = 'completed'"
        )),
        "180"
    );
    assert_eq!(psql(&format!("SELECT count(*) FROM {table}")), "180");
    assert_eq!(
        submitter.queue_depth().expect("depth"),
        0,
        "the queue is empty"
    );
    assert_eq!(submitter.dead_letter_depth().expect("depth"), 0);
    let completed = std::fs::read_to_string(out.path().join("audit.jsonl"))
        .expect("audit log")
        .lines()
        .filter(|line| line.contains("\"job_completed\""))
        .count();
    assert_eq!(completed, 180, "one completion event per job");
    submitter.delete_queues().expect("clean up");
}
