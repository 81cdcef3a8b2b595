//! `mmt run --source rabbitmq` end to end on the machine's RabbitMQ and
//! PostgreSQL: jobs published to a queue become exactly one completed row and
//! one FHIR document each, across a dropped broker connection and a killed
//! worker.

mod common;

use common::postgres::{psql, unique, Schema, POSTGRES};
use common::proxy::Proxy;
use common::{
    distinct_recordings, documents, documents_per_id, documents_written, model_ready,
    require_service, root,
};
use mmt_connectors::envelope::JobEnvelope;
use mmt_connectors::rabbitmq::{JobSubmitter, RabbitMqConfig};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BROKER: &str = "127.0.0.1:5672";

fn worker(broker: &str, queue: &str, database_url: &str, out: &Path, log: &Path) -> Child {
    worker_idling(broker, queue, database_url, out, log, "15")
}

/// A worker that exits once idle for `idle_exit` seconds.
fn worker_idling(
    broker: &str,
    queue: &str,
    database_url: &str,
    out: &Path,
    log: &Path,
    idle_exit: &str,
) -> Child {
    let log = std::fs::File::create(log).expect("worker log");
    Command::new(env!("CARGO_BIN_EXE_mmt"))
        .args(["run", "--source", "rabbitmq", "--no-progress"])
        .args(["--idle-exit", idle_exit])
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
    while documents_written(out) < documents_at_least {
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
    let cut_at = documents_written(out.path());
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

/// `--idle-exit` does not count a broker outage as idle time: a worker whose
/// connection stays down three times its idle limit is still there when the
/// broker is back, and takes the jobs published meanwhile. (It used to exit
/// 0 a few seconds into the outage, leaving the queue to no one.)
#[test]
fn idle_exit_waits_out_a_broker_outage_longer_than_its_limit() {
    if !model_ready()
        || !require_service("RabbitMQ", BROKER)
        || !require_service("PostgreSQL", POSTGRES)
    {
        return;
    }
    const IDLE_EXIT: Duration = Duration::from_secs(3);
    let queue = unique("mmt.test.idle");
    let schema = Schema::create(&unique("mmt_idle"));
    let out = tempfile::tempdir().expect("tempdir");
    let log = out.path().join("worker.log");
    let config = RabbitMqConfig::new(format!("amqp://guest:guest@{BROKER}/%2f")).with_queue(&queue);
    let submitter = JobSubmitter::connect(&config).expect("submitter");
    let proxy = Proxy::start(BROKER);
    let mut child = worker_idling(
        &proxy.address(),
        &queue,
        &schema.url(),
        out.path(),
        &log,
        &IDLE_EXIT.as_secs().to_string(),
    );
    // Up and consuming: every connection (source, event publisher) is open.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("starting the dataflow")
    {
        assert!(Instant::now() < deadline, "the worker never started");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the worker exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));

    proxy.refuse(true);
    proxy.sever();
    let cut = Instant::now();
    while cut.elapsed() < IDLE_EXIT * 3 {
        if let Some(status) = child.try_wait().expect("wait") {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "the worker exited ({status}) {:.1} s into the broker outage:\n{log}",
                cut.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let recordings = distinct_recordings(3);
    for (i, (_, audio)) in recordings.iter().enumerate() {
        let envelope = JobEnvelope::inline("clinic-idle", audio, Some("wav"));
        submitter
            .submit(&envelope, &format!("job-{i}"), None)
            .expect("publish");
    }
    proxy.refuse(false);

    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker never exited");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{log}");
    assert!(proxy.accepted() >= 2, "the worker reconnected:\n{log}");
    let per_id = documents_per_id(out.path());
    assert_eq!(
        per_id.len(),
        3,
        "the jobs published during the outage were done:\n{log}"
    );
    assert!(per_id.values().all(|&n| n == 1));
    assert_eq!(submitter.queue_depth().expect("depth"), 0);
    submitter.delete_queues().expect("clean up");
}
